//! Outcome classes: what one attempt's answer means from the app's point of
//! view, decided here and nowhere else. Retry, breaker, fallback,
//! telemetry, shadow comparison, metrics and traces all read this one
//! classification.
//!
//! | class | answers |
//! | --- | --- |
//! | `ok` | 2xx that is a valid answer of its API |
//! | `app_error` | a 4xx the request itself caused (the baseline would say the same) |
//! | `backend_rejected` | the backend will not serve this app: 401, 402, 403, 404, a 3xx, quota exhausted (429 `insufficient_quota`, billing errors), 400/422 naming the model or an unsupported parameter |
//! | `rate_limited` | a transient 429 |
//! | `server_error` | 5xx |
//! | `timeout` | no answer within the per-try timeout; 408 |
//! | `connect` | no connection |
//! | `stream_broken` | the body broke or stalled |
//! | `malformed` | 2xx that is not a valid answer of its API |
//!
//! Three more classes describe attempts that got no upstream answer of
//! their own: `breaker_rejected`, `fault_injected` and `cancelled`.

use http::StatusCode;

use crate::api::{Api, ErrorBody, Malformed, Usage};
use crate::retry::Failure;

/// The class of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    AppError,
    BackendRejected,
    RateLimited,
    ServerError,
    Timeout,
    Connect,
    StreamBroken,
    Malformed,
    /// The breaker was open: nothing was sent.
    BreakerRejected,
    /// A fault answered instead of the backend.
    FaultInjected,
    /// The app went away before the response ended.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Ok,
        Outcome::AppError,
        Outcome::BackendRejected,
        Outcome::RateLimited,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Connect,
        Outcome::StreamBroken,
        Outcome::Malformed,
        Outcome::BreakerRejected,
        Outcome::FaultInjected,
        Outcome::Cancelled,
    ];

    /// The class's name in metrics, traces and reports.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AppError => "app_error",
            Outcome::BackendRejected => "backend_rejected",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::StreamBroken => "stream_broken",
            Outcome::Malformed => "malformed",
            Outcome::BreakerRejected => "breaker_rejected",
            Outcome::FaultInjected => "fault_injected",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// True when the answer can go to the app as the request's answer: it
    /// served the request, or the request was the app's own mistake.
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::AppError)
    }

    /// True for a failure of the backend (what a rollout's error rate
    /// counts): 5xx, timeouts, connect errors, broken streams, rejected and
    /// malformed answers, breaker rejections and injected faults.
    pub fn is_backend_failure(self) -> bool {
        matches!(
            self,
            Outcome::ServerError
                | Outcome::Timeout
                | Outcome::Connect
                | Outcome::StreamBroken
                | Outcome::BackendRejected
                | Outcome::Malformed
                | Outcome::BreakerRejected
                | Outcome::FaultInjected
        )
    }

    /// What the backend's breaker learns from this outcome.
    pub fn health(self, quota: bool) -> Health {
        match self {
            Outcome::BackendRejected if quota => Health::Exhausted,
            Outcome::BackendRejected | Outcome::Malformed => Health::Broken,
            Outcome::ServerError | Outcome::Timeout | Outcome::Connect | Outcome::StreamBroken => {
                Health::Failure
            }
            _ => Health::Success,
        }
    }

    /// The retry class of a failure worth trying again on the same backend;
    /// `None` for outcomes that are never retried there (the backend will
    /// say the same again: rejections, malformed answers), or are not
    /// failures.
    pub fn retry_class(self) -> Option<Failure> {
        match self {
            Outcome::Connect => Some(Failure::Connect),
            Outcome::Timeout => Some(Failure::Timeout),
            Outcome::RateLimited => Some(Failure::RateLimited),
            Outcome::ServerError | Outcome::StreamBroken => Some(Failure::ServerError),
            _ => None,
        }
    }

    /// True when a fallback after this outcome is free of the retry budget:
    /// the failed backend is not asked again, so the fallback multiplies no
    /// load on it.
    pub fn falls_back_freely(self) -> bool {
        matches!(
            self,
            Outcome::BackendRejected | Outcome::Malformed | Outcome::BreakerRejected
        )
    }
}

/// What a breaker learns from an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Success,
    Failure,
    /// The backend cannot serve (rejected or malformed answers): trip now.
    Broken,
    /// Quota exhausted: trip now, for the long quota open time.
    Exhausted,
}

/// The class of an answer, and what it says of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classified {
    pub outcome: Option<Outcome>,
    /// Quota or credit exhausted (a kind of `backend_rejected`).
    pub quota: bool,
    /// The error's short name (code or type), or what is wrong with a
    /// malformed answer: the example reports carry.
    pub detail: Option<String>,
    /// The tokens a successful answer reports (read in the same pass).
    pub usage: Usage,
}

impl Classified {
    fn of(outcome: Outcome, detail: Option<String>) -> Self {
        Self {
            outcome: Some(outcome),
            quota: false,
            detail,
            usage: Usage::default(),
        }
    }

    /// The outcome (an unset one reads as ok).
    pub fn outcome(&self) -> Outcome {
        self.outcome.unwrap_or(Outcome::Ok)
    }
}

/// Classifies an answer from its status and whole body. `api` is the
/// API the body is in (a successful body is checked against it).
pub fn classify(api: Api, status: StatusCode, body: &[u8]) -> Classified {
    classify_with(api, status, body, |body, usage| {
        crate::api::check_document(api, body, None, usage)
    })
    .0
}

/// Classifies an answer as [`classify`] does, checking a successful body
/// with `check` (which reads its usage, and may give something it read on
/// the way, as a translated answer does).
pub fn classify_with<T>(
    api: Api,
    status: StatusCode,
    body: &[u8],
    check: impl FnOnce(&[u8], &mut Usage) -> Result<T, Malformed>,
) -> (Classified, Option<T>) {
    if status.is_success() {
        let mut usage = Usage::default();
        let (mut c, read) = match check(body, &mut usage) {
            Ok(read) => (Classified::of(Outcome::Ok, None), Some(read)),
            Err(m) => {
                // The check stopped at the problem; a malformed answer is
                // billed all the same, so find its usage.
                if !usage.reported {
                    usage.absorb(body);
                }
                (Classified::of(Outcome::Malformed, Some(m.0)), None)
            }
        };
        c.usage = usage;
        return (c, read);
    }
    (classify_error(api, status, body), None)
}

/// Classifies an answer that is not a success.
fn classify_error(api: Api, status: StatusCode, body: &[u8]) -> Classified {
    if status.is_informational() || status.is_redirection() {
        // The agent follows no redirect: a base URL that redirects (http to
        // https, a moved path) is the backend's misconfiguration.
        return Classified::of(
            Outcome::BackendRejected,
            Some(format!("redirect {}", status.as_u16())),
        );
    }
    let error = ErrorBody::parse(body);
    let name = error.name();
    let of = |outcome| Classified::of(outcome, name.clone());
    match status.as_u16() {
        401..=403 => {
            let mut c = of(Outcome::BackendRejected);
            c.quota = status == StatusCode::PAYMENT_REQUIRED || is_quota(&error);
            c
        }
        404 if matches!(api, Api::Other(_))
            && !names_model(&error)
            && error != ErrorBody::default() =>
        {
            // A missing file or batch: the app asked for something that
            // is not there.
            of(Outcome::AppError)
        }
        404 => of(Outcome::BackendRejected),
        408 => of(Outcome::Timeout),
        429 if is_quota(&error) => {
            let mut c = of(Outcome::BackendRejected);
            c.quota = true;
            c
        }
        429 => of(Outcome::RateLimited),
        400 | 422 if is_quota(&error) => {
            let mut c = of(Outcome::BackendRejected);
            c.quota = true;
            c
        }
        400 | 422 if names_model(&error) || is_unsupported(&error) => of(Outcome::BackendRejected),
        400..=499 => of(Outcome::AppError),
        _ => of(Outcome::ServerError),
    }
}

/// The class of a status alone (an injected fault's answer has no body).
pub fn classify_status(api: Api, status: StatusCode) -> Outcome {
    classify(api, status, b"").outcome()
}

fn any(values: [Option<&str>; 3], patterns: &[&str]) -> bool {
    values
        .iter()
        .flatten()
        .any(|v| patterns.iter().any(|p| v.contains(p)))
}

/// Quota or credit exhausted: OpenAI's `insufficient_quota`, Anthropic's
/// `billing_error` and "credit balance is too low".
fn is_quota(e: &ErrorBody) -> bool {
    any(
        [e.code.as_deref(), e.kind.as_deref(), None],
        &["insufficient_quota", "billing", "quota_exceeded"],
    ) || e.message.as_deref().is_some_and(|m| {
        m.contains("exceeded your current quota")
            || m.contains("credit balance")
            || m.contains("insufficient credit")
            || m.contains("billing")
    })
}

/// The error names the model: an unknown model, or one this key may not use.
fn names_model(e: &ErrorBody) -> bool {
    e.param.as_deref() == Some("model")
        || any(
            [e.code.as_deref(), e.kind.as_deref(), None],
            &[
                "model_not_found",
                "invalid_model",
                "model_not_available",
                "unknown_model",
            ],
        )
        || e.message.as_deref().is_some_and(|m| {
            (m.starts_with("model:") || m.contains("model"))
                && (m.contains("does not exist")
                    || m.contains("not found")
                    || m.contains("not_found")
                    || m.contains("invalid model")
                    || m.contains("unknown model")
                    || m.contains("not supported")
                    || m.starts_with("model:"))
        })
}

/// The error names a parameter the backend does not take.
fn is_unsupported(e: &ErrorBody) -> bool {
    any(
        [e.code.as_deref(), e.kind.as_deref(), None],
        &[
            "unsupported_parameter",
            "unsupported_value",
            "unknown_parameter",
        ],
    ) || e.message.as_deref().is_some_and(|m| {
        m.contains("unsupported parameter")
            || m.contains("unrecognized request argument")
            || m.contains("unknown parameter")
            || m.contains("extra inputs are not permitted")
            || m.contains("is not supported")
            || m.contains("not supported with this model")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Dialect;

    fn class(status: u16, body: &str) -> (Outcome, bool, Option<String>) {
        class_on(Api::ChatCompletions, status, body)
    }

    fn class_on(api: Api, status: u16, body: &str) -> (Outcome, bool, Option<String>) {
        let c = classify(api, StatusCode::from_u16(status).unwrap(), body.as_bytes());
        (c.outcome(), c.quota, c.detail)
    }

    /// What a migration gets wrong (key, model, protocol, parameters, quota)
    /// is the backend's failure; the request's own mistakes are the app's.
    #[test]
    fn classifies_answers_as_the_app_sees_them() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}"#;
        assert_eq!(class(200, ok).0, Outcome::Ok);
        let (o, _, why) = class(200, r#"{"choices":[]}"#);
        assert_eq!(o, Outcome::Malformed);
        assert!(why.unwrap().contains("choices"));
        for (status, body, want, quota, name) in [
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-a***","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                Outcome::BackendRejected,
                false,
                Some("invalid_api_key"),
            ),
            (
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"no access"}}"#,
                Outcome::BackendRejected,
                false,
                Some("permission_error"),
            ),
            (402, "", Outcome::BackendRejected, true, None),
            (
                404,
                r#"{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#,
                Outcome::BackendRejected,
                false,
                Some("model_not_found"),
            ),
            (
                404,
                "<html>not found</html>",
                Outcome::BackendRejected,
                false,
                None,
            ),
            (
                400,
                r#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#,
                Outcome::BackendRejected,
                false,
                Some("unsupported_parameter"),
            ),
            (
                400,
                r#"{"error":{"message":"Unrecognized request argument supplied: top_k","type":"invalid_request_error","param":null,"code":null}}"#,
                Outcome::BackendRejected,
                false,
                Some("invalid_request_error"),
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"top_k: Extra inputs are not permitted"}}"#,
                Outcome::BackendRejected,
                false,
                Some("invalid_request_error"),
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"model: claude-9"}}"#,
                Outcome::BackendRejected,
                false,
                Some("invalid_request_error"),
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
                Outcome::BackendRejected,
                true,
                Some("invalid_request_error"),
            ),
            (
                422,
                r#"{"object":"error","message":"Invalid model: x","type":"invalid_model","code":"1500"}"#,
                Outcome::BackendRejected,
                false,
                Some("1500"),
            ),
            (
                429,
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                Outcome::BackendRejected,
                true,
                Some("insufficient_quota"),
            ),
            (
                429,
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                Outcome::RateLimited,
                false,
                Some("rate_limit_exceeded"),
            ),
            (
                400,
                r#"{"error":{"message":"'messages' is a required property","type":"invalid_request_error","param":"messages","code":null}}"#,
                Outcome::AppError,
                false,
                Some("invalid_request_error"),
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
                Outcome::AppError,
                false,
                Some("context_length_exceeded"),
            ),
            (413, "", Outcome::AppError, false, None),
            (408, "", Outcome::Timeout, false, None),
            (500, "oops", Outcome::ServerError, false, None),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                Outcome::ServerError,
                false,
                Some("overloaded_error"),
            ),
            (
                301,
                "",
                Outcome::BackendRejected,
                false,
                Some("redirect 301"),
            ),
        ] {
            let got = class(status, body);
            assert_eq!(
                got,
                (want, quota, name.map(str::to_string)),
                "{status} {body}"
            );
        }
        // A missing file is the app's mistake; a missing model is not.
        let missing =
            r#"{"error":{"message":"No such File object: file-x","type":"invalid_request_error"}}"#;
        assert_eq!(
            class_on(Api::Other(Dialect::OpenAi), 404, missing).0,
            Outcome::AppError
        );
        assert_eq!(
            class_on(Api::Other(Dialect::OpenAi), 404, "").0,
            Outcome::BackendRejected
        );
    }

    /// Rejections and malformed answers are never retried on the same
    /// backend and trip its breaker; quota trips it for longer.
    #[test]
    fn decisions_follow_the_class() {
        assert_eq!(Outcome::BackendRejected.retry_class(), None);
        assert_eq!(Outcome::Malformed.retry_class(), None);
        assert_eq!(Outcome::AppError.retry_class(), None);
        assert_eq!(
            Outcome::RateLimited.retry_class(),
            Some(Failure::RateLimited)
        );
        assert_eq!(
            Outcome::StreamBroken.retry_class(),
            Some(Failure::ServerError)
        );
        assert_eq!(Outcome::BackendRejected.health(true), Health::Exhausted);
        assert_eq!(Outcome::Malformed.health(false), Health::Broken);
        assert_eq!(Outcome::AppError.health(false), Health::Success);
        assert_eq!(Outcome::RateLimited.health(false), Health::Success);
        assert_eq!(Outcome::Timeout.health(false), Health::Failure);
        assert!(Outcome::AppError.is_final() && Outcome::Ok.is_final());
        assert!(!Outcome::Malformed.is_final());
        assert_eq!(
            Outcome::ALL.iter().map(|o| o.index()).collect::<Vec<_>>(),
            (0..12).collect::<Vec<_>>()
        );
    }
}
