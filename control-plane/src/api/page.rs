//! Page tokens: opaque to callers, tied to the call and the collection they
//! came from, so a token from another call is refused instead of misread.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;

use super::invalid;

/// Default and largest page sizes.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;

/// The page size a call asked for: 0 is the default, above the maximum is the
/// maximum, negative is an error.
pub(crate) fn page_size(requested: i32) -> Result<u32, Status> {
    match u32::try_from(requested) {
        Err(_) => Err(invalid(
            "page_size",
            format!("must be 0 to {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})"),
        )),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// Encodes where the next page starts; `scope` names the call and collection.
pub(crate) fn encode(scope: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}\n{position}"))
}

/// Decodes a token made by [`encode`] with the same `scope`; empty is the
/// first page.
pub(crate) fn decode(scope: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let refused = || invalid("page_token", "not a next_page_token returned by this call");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| refused())?;
    let text = String::from_utf8(bytes).map_err(|_| refused())?;
    match text.split_once('\n') {
        Some((s, position)) if s == scope => Ok(Some(position.to_string())),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token round-trips in its own scope and is refused in another.
    #[test]
    fn tokens_are_scoped() {
        let t = encode("policies", "chat");
        assert_eq!(decode("policies", &t).unwrap(), Some("chat".into()));
        assert_eq!(decode("policies", "").unwrap(), None);
        let err = decode("revisions/chat", &t).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("page_token: "));
        assert!(decode("policies", "%%%").is_err());
    }

    /// Page sizes: 0 is the default, large is capped, negative is refused.
    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5).unwrap(), 5);
        assert_eq!(page_size(1_000_000).unwrap(), MAX_PAGE_SIZE);
        assert!(
            page_size(-1)
                .unwrap_err()
                .message()
                .starts_with("page_size: ")
        );
    }
}
