//! Errors the agent itself answers with, in the dialect of the app's API: an
//! OpenAI `error` object, or an Anthropic error for `/v1/messages`. Each has a
//! stable `type` (`shepherd_*`) and a message that names what happened, never
//! an upstream secret.

use bytes::Bytes;
use http::StatusCode;

use crate::api::{self, Dialect};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No policy matches the request.
    NoRoute,
    /// The request body is larger than the limit.
    RequestTooLarge,
    /// The body could not be read.
    BadRequest,
    /// Too many requests in flight: shed.
    Overloaded,
    /// No backend could be reached (connect errors, open breakers).
    UpstreamUnavailable,
    /// No backend answered in time.
    UpstreamTimeout,
    /// An injected fault answered.
    FaultInjected,
    /// A streamed response broke after it started.
    StreamBroken,
    /// A streamed response stalled past the idle timeout.
    StreamIdleTimeout,
    /// The agent's drain time ran out with the response still running.
    ShuttingDown,
}

impl ErrorKind {
    /// The stable `type` of the error object.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "shepherd_no_route",
            ErrorKind::RequestTooLarge => "shepherd_request_too_large",
            ErrorKind::BadRequest => "shepherd_bad_request",
            ErrorKind::Overloaded => "shepherd_overloaded",
            ErrorKind::UpstreamUnavailable => "shepherd_upstream_unavailable",
            ErrorKind::UpstreamTimeout => "shepherd_upstream_timeout",
            ErrorKind::FaultInjected => "shepherd_fault_injected",
            ErrorKind::StreamBroken => "shepherd_stream_broken",
            ErrorKind::StreamIdleTimeout => "shepherd_stream_idle_timeout",
            ErrorKind::ShuttingDown => "shepherd_shutting_down",
        }
    }

    /// The HTTP status of the error (injected faults carry their own).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::StreamBroken | ErrorKind::StreamIdleTimeout => StatusCode::BAD_GATEWAY,
            ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The JSON body of an error.
pub fn body(dialect: Dialect, kind: ErrorKind, message: &str) -> Bytes {
    match dialect {
        Dialect::OpenAi => api::openai::error_body(
            message,
            kind.type_name(),
            None,
            Some(kind.type_name().trim_start_matches("shepherd_")),
        ),
        Dialect::Anthropic => api::anthropic::error_body(kind.type_name(), message),
    }
}

/// A server-sent event carrying an error, ending a broken stream.
pub fn sse_event(dialect: Dialect, kind: ErrorKind, message: &str) -> Bytes {
    let data = body(dialect, kind, message);
    let mut event = Vec::with_capacity(data.len() + 24);
    event.extend_from_slice(b"event: error\ndata: ");
    event.extend_from_slice(&data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenAI-shaped errors carry message, type and code.
    #[test]
    fn openai_shape() {
        let b = body(
            Dialect::OpenAi,
            ErrorKind::NoRoute,
            "no policy matches POST /x",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "shepherd_no_route");
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["message"], "no policy matches POST /x");
    }

    /// Anthropic-shaped errors follow its error envelope; SSE errors are one event.
    #[test]
    fn anthropic_shape_and_sse() {
        let b = body(Dialect::Anthropic, ErrorKind::Overloaded, "busy");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "shepherd_overloaded");
        let e = sse_event(Dialect::OpenAi, ErrorKind::StreamBroken, "cut");
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: error\ndata: {"));
        assert!(text.ends_with("}\n\n"));
    }
}
