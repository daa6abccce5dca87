//! The spans of a request: one per request from the app (continuing the
//! app's `traceparent`), one per upstream attempt beneath it (its context is
//! the `traceparent` the upstream gets). Attribute names follow the
//! OpenTelemetry HTTP and GenAI conventions where they fit, and
//! `shepherd.*` otherwise.
//!
//! With tracing off the spans are disabled at their call sites: nothing is
//! recorded or parsed, and the app's `traceparent` passes upstream as it came.

use std::borrow::Cow;

use http::request;
use tracing::Span;
use tracing::field::Empty;

use crate::breaker::BreakerState;
use crate::runtime::{LiveBackend, LivePolicy};
use crate::stream::Usage;
use crate::telemetry::Outcome;

/// The span of one request from the app.
pub fn request(parts: &request::Parts, body: &[u8], live: &LivePolicy) -> Span {
    let span = tracing::info_span!(
        target: "shepherd::trace",
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %parts.method,
        url.path = parts.uri.path(),
        http.response.status_code = Empty,
        error.type = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        shepherd.policy = &*live.policy.name,
        shepherd.snapshot_version = live.version,
        shepherd.rollout.stage = Empty,
        shepherd.split.weight = live.policy.candidate_weight,
        shepherd.split.bucket = Empty,
        shepherd.split.decision = Empty,
        shepherd.backend.selected = Empty,
        shepherd.backend = Empty,
        shepherd.breaker = Empty,
        shepherd.attempts = Empty,
        shepherd.shadow = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    shepherd_observe::continue_trace(&span, &parts.headers);
    let operation = operation(parts.uri.path());
    span.record("gen_ai.operation.name", operation);
    match model(body) {
        Some(model) => {
            span.record("otel.name", format!("{operation} {model}"));
            span.record("gen_ai.request.model", &*model);
        }
        None => {
            span.record("otel.name", operation);
        }
    }
    if let Some(stage) = &live.policy.rollout_stage {
        span.record("shepherd.rollout.stage", &**stage);
    }
    span
}

/// Records how the split chose a backend.
pub fn split(span: &Span, live: &LivePolicy, bucket: u32, sticky: bool, chosen: usize) {
    if span.is_disabled() {
        return;
    }
    let policy = &live.policy;
    let weight = policy.candidate_weight;
    let how = if sticky { "sticky key" } else { "random" };
    let decision = match policy.candidate {
        None => "baseline: no candidate".to_string(),
        Some(c) if c == chosen => format!("candidate: {how} bucket {bucket} < weight {weight}"),
        Some(_) => format!("baseline: {how} bucket {bucket} >= weight {weight}"),
    };
    span.record("shepherd.split.bucket", bucket);
    span.record("shepherd.split.decision", decision);
    span.record("shepherd.backend.selected", &*policy.backends[chosen].name);
    if let Some(b) = &live.backends[chosen].breaker {
        span.record("shepherd.breaker", breaker_label(b.state()));
    }
}

/// Records the end of a request: the backend that answered (if any), the
/// attempts, whether it was mirrored, the status.
pub fn answered(
    span: &Span,
    backend: Option<&str>,
    attempts: u32,
    shadow: bool,
    status: http::StatusCode,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(b) = backend {
        span.record("shepherd.backend", b);
    }
    span.record("shepherd.attempts", attempts);
    span.record("shepherd.shadow", shadow);
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
        span.record("error.type", status.as_str());
    }
}

/// The span of one upstream attempt, beneath `parent`.
pub fn attempt(
    parent: &Span,
    live: &LivePolicy,
    index: usize,
    number: u32,
    retry: bool,
    fallback: bool,
) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    let backend = &live.policy.backends[index];
    let lb: &LiveBackend = &live.backends[index];
    tracing::info_span!(
        target: "shepherd::trace",
        parent: parent,
        "attempt",
        otel.name = format!("attempt {}", backend.name),
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = backend.base.authority.as_str(),
        http.response.status_code = Empty,
        error.type = Empty,
        shepherd.backend = &*backend.name,
        shepherd.attempt = number,
        shepherd.retry = retry,
        shepherd.fallback = fallback,
        shepherd.breaker = lb.breaker.as_ref().map(|b| breaker_label(b.state())),
        shepherd.outcome = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
    )
}

/// Records an attempt's outcome (and status, when the upstream answered).
pub fn attempt_outcome(span: &Span, outcome: Outcome, status: Option<http::StatusCode>) {
    if span.is_disabled() {
        return;
    }
    span.record("shepherd.outcome", outcome.label());
    if let Some(s) = status {
        span.record("http.response.status_code", s.as_u16());
    }
    if outcome != Outcome::Success {
        span.record("otel.status_code", "error");
        span.record("error.type", outcome.label());
    }
}

/// The spans that end with the response body, and what they learn from it.
pub struct BodySpans {
    pub request: Span,
    pub attempt: Span,
}

impl BodySpans {
    /// The spans to end with the body; none when tracing is off.
    pub fn of(request: Span, attempt: Span) -> Option<BodySpans> {
        (!request.is_disabled()).then_some(BodySpans { request, attempt })
    }

    /// Records how the body ended and the tokens it reported, and ends both
    /// spans.
    pub fn finish(self, outcome: Outcome, usage: Usage) {
        for span in [&self.request, &self.attempt] {
            if usage.input > 0 || usage.output > 0 {
                span.record("gen_ai.usage.input_tokens", usage.input);
                span.record("gen_ai.usage.output_tokens", usage.output);
            }
            if !matches!(outcome, Outcome::Success) {
                span.record("otel.status_code", "error");
                span.record("error.type", outcome.label());
            }
        }
        if !matches!(outcome, Outcome::Success) {
            self.attempt.record("shepherd.outcome", outcome.label());
        }
    }
}

fn breaker_label(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// The GenAI operation of an API path.
fn operation(path: &str) -> &'static str {
    if path.ends_with("/chat/completions") || path.ends_with("/messages") {
        "chat"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/completions") {
        "text_completion"
    } else {
        "request"
    }
}

/// The `model` of a JSON request body.
fn model(body: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    if body.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Request<'_>>(body).ok()?.model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations_and_models() {
        assert_eq!(operation("/v1/chat/completions"), "chat");
        assert_eq!(operation("/v1/messages"), "chat");
        assert_eq!(operation("/v1/embeddings"), "embeddings");
        assert_eq!(operation("/v1/completions"), "text_completion");
        assert_eq!(operation("/v1/models"), "request");
        assert_eq!(
            model(br#"{"messages":[],"model":"gpt-4o"}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model(br#"{"messages":[]}"#), None);
        assert_eq!(model(b"not json"), None);
    }
}
