//! The spans of a request: one per request from the app (continuing the
//! app's `traceparent`), one per upstream attempt beneath it (its context is
//! the `traceparent` the upstream gets). Attribute names follow the
//! OpenTelemetry HTTP and GenAI conventions where they fit, and
//! `shepherd.*` otherwise.
//!
//! With tracing off, or a request not sampled, nothing is recorded or
//! parsed, and the app's `traceparent` passes upstream as it came.

use std::borrow::Cow;

use http::request;
use shepherd_observe::{KeyValue, Status, TraceContextExt};
use tracing::Span;

use crate::api::{Api, Usage};
use crate::attempt::Charged;
use crate::breaker::BreakerState;
use crate::outcome::Outcome;
use crate::runtime::{LiveBackend, LivePolicy};

/// The span of one request from the app.
pub fn request(parts: &request::Parts, body: &[u8], live: &LivePolicy, api: Api) -> Span {
    let span = tracing::info_span!(target: "shepherd::trace", "request", otel.kind = "server");
    if span.is_disabled() {
        return span;
    }
    shepherd_observe::continue_trace(&span, &parts.headers);
    let Some(cx) = shepherd_observe::recording(&span) else {
        // Not recorded: nothing more to do, and the app's traceparent
        // passes upstream as it came.
        return Span::none();
    };
    let operation = api.operation();
    let model = model(body);
    cx.span().update_name(match &model {
        Some(m) => format!("{operation} {m}"),
        None => operation.to_string(),
    });
    let policy = &live.policy;
    let mut attributes = vec![
        KeyValue::new("http.request.method", parts.method.as_str().to_string()),
        KeyValue::new("url.path", parts.uri.path().to_string()),
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("shepherd.policy", policy.name.to_string()),
        KeyValue::new("shepherd.snapshot_version", live.version as i64),
        KeyValue::new("shepherd.split.weight", i64::from(policy.candidate_weight)),
    ];
    if let Some(m) = model {
        attributes.push(KeyValue::new("gen_ai.request.model", m.into_owned()));
    }
    if let Some(stage) = &policy.rollout_stage {
        attributes.push(KeyValue::new("shepherd.rollout.stage", stage.to_string()));
    }
    cx.span().set_attributes(attributes);
    span
}

/// Sets attributes of a recorded span in one go; with `error`, marks it
/// failed with that `error.type`.
fn record(span: &Span, mut attributes: Vec<KeyValue>, error: Option<&str>) {
    let Some(cx) = shepherd_observe::recording(span) else {
        return;
    };
    let otel = cx.span();
    if let Some(kind) = error {
        otel.set_status(Status::error(""));
        attributes.push(KeyValue::new("error.type", kind.to_string()));
    }
    otel.set_attributes(attributes);
}

/// Records how the split chose a backend (`bucket` is `None` for a request
/// that is not split: not a model call).
pub fn split(span: &Span, live: &LivePolicy, bucket: Option<u32>, sticky: bool, chosen: usize) {
    if span.is_disabled() {
        return;
    }
    let policy = &live.policy;
    let weight = policy.candidate_weight;
    let how = if sticky { "sticky key" } else { "random" };
    let decision = match (policy.candidate, bucket) {
        (_, None) => "baseline: not an inference request".to_string(),
        (None, _) => "baseline: no candidate".to_string(),
        (Some(c), Some(bucket)) if c == chosen => {
            format!("candidate: {how} bucket {bucket} < weight {weight}")
        }
        (Some(_), Some(bucket)) => format!("baseline: {how} bucket {bucket} >= weight {weight}"),
    };
    let mut attributes = vec![KeyValue::new("shepherd.split.decision", decision)];
    if let Some(bucket) = bucket {
        attributes.push(KeyValue::new("shepherd.split.bucket", i64::from(bucket)));
    }
    attributes.extend([KeyValue::new(
        "shepherd.backend.selected",
        policy.backends[chosen].name.to_string(),
    )]);
    if let Some(b) = &live.backends[chosen].breaker {
        attributes.push(KeyValue::new("shepherd.breaker", breaker_label(b.state())));
    }
    record(span, attributes, None);
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
    let mut attributes = vec![
        KeyValue::new("shepherd.attempts", i64::from(attempts)),
        KeyValue::new("shepherd.shadow", shadow),
        KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
    ];
    if let Some(b) = backend {
        attributes.push(KeyValue::new("shepherd.backend", b.to_string()));
    }
    let error = status.is_server_error().then(|| status.as_str());
    record(span, attributes, error);
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
    let span = tracing::info_span!(
        target: "shepherd::trace",
        parent: parent,
        "attempt",
        otel.name = format!("attempt {}", backend.name),
        otel.kind = "client",
    );
    let mut attributes = vec![
        KeyValue::new(
            "server.address",
            backend.base.authority.as_str().to_string(),
        ),
        KeyValue::new("shepherd.backend", backend.name.to_string()),
        KeyValue::new("shepherd.attempt", i64::from(number)),
        KeyValue::new("shepherd.retry", retry),
        KeyValue::new("shepherd.fallback", fallback),
    ];
    if let Some(b) = &lb.breaker {
        attributes.push(KeyValue::new("shepherd.breaker", breaker_label(b.state())));
    }
    record(&span, attributes, None);
    span
}

/// Records an attempt's outcome (and status, when the upstream answered).
pub fn attempt_outcome(span: &Span, outcome: Outcome, status: Option<http::StatusCode>) {
    if span.is_disabled() {
        return;
    }
    let mut attributes = vec![KeyValue::new("shepherd.outcome", outcome.label())];
    if let Some(s) = status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(s.as_u16()),
        ));
    }
    let error = (outcome != Outcome::Ok).then(|| outcome.label());
    record(span, attributes, error);
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

    /// Records how the body ended, the tokens it reported (the OpenTelemetry
    /// GenAI attributes) and what it cost, and ends both spans.
    pub fn finish(self, outcome: Outcome, usage: Usage, charged: Charged, currency: &str) {
        let error = (outcome != Outcome::Ok).then(|| outcome.label());
        for (span, attempt) in [(&self.request, false), (&self.attempt, true)] {
            let mut attributes = Vec::with_capacity(7);
            if usage.input > 0 || usage.output > 0 {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    usage.input as i64,
                ));
                attributes.push(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    usage.output as i64,
                ));
            }
            if usage.cache_read > 0 {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.cache_read.input_tokens",
                    usage.cache_read as i64,
                ));
            }
            if usage.cache_write > 0 {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.cache_creation.input_tokens",
                    usage.cache_write as i64,
                ));
            }
            match charged {
                Charged::Nothing => {}
                Charged::Unpriced => attributes.push(KeyValue::new("shepherd.cost", "unpriced")),
                Charged::Cost(picos) => {
                    attributes.push(KeyValue::new(
                        "shepherd.cost",
                        shepherd_proto::cost::exact(picos),
                    ));
                    attributes.push(KeyValue::new("shepherd.cost.currency", currency.to_owned()));
                }
            }
            if attempt && error.is_some() {
                attributes.push(KeyValue::new("shepherd.outcome", outcome.label()));
            }
            if !attributes.is_empty() || error.is_some() {
                record(span, attributes, error);
            }
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

    /// Operations follow the request's API; the model comes from the body.
    #[test]
    fn names_operations_and_models() {
        assert_eq!(Api::of_path("/v1/chat/completions").operation(), "chat");
        assert_eq!(Api::of_path("/v1/messages").operation(), "chat");
        assert_eq!(Api::of_path("/v1/embeddings").operation(), "embeddings");
        assert_eq!(
            Api::of_path("/v1/completions").operation(),
            "text_completion"
        );
        assert_eq!(Api::of_path("/v1/models").operation(), "request");
        assert_eq!(
            model(br#"{"messages":[],"model":"gpt-4o"}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model(br#"{"messages":[]}"#), None);
        assert_eq!(model(b"not json"), None);
    }
}
