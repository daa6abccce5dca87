//! Shadow traffic: a share of requests (sticky by key, like the split) is
//! also sent to the shadow backend, in the background, after the primary's
//! answer has started; its answer is read to the end, compared with the
//! primary's and discarded. The app's response never waits for it.
//!
//! Bounded: at most `max_concurrency` shadow requests run at once and as many
//! wait for a slot; more are shed (counted). A request rate cap and a token
//! cap (tokens per minute, from the shadow answers' usage) skip mirroring
//! when reached (counted). Shadow work stops with the agent.
//!
//! The comparison: the outcome classes of both answers (the agent's one
//! classification, [`crate::outcome`]), the response schema of each side
//! (the answer checks of [`crate::api`]; streamed or not), 4xx answers on
//! each side, tokens, latency and time to first token, and a content
//! similarity (token-set overlap of the answers' text). Mismatches are sampled, with the request
//! id, into a bounded list an operator reads on the admin endpoint.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, SseEvents, StreamCheck, Usage, check_document, is_sse};
use crate::attempt::{Outgoing, Tried};
use crate::outcome::Outcome;
use crate::runtime::LivePolicy;
use crate::shadow_gate::{Admission, Sample, Samples};
use crate::telemetry::SpendKind;
use crate::telemetry::shadow_counter as c;
use crate::translate::Refusal;

/// Largest answer body kept for comparison (each side).
pub const MAX_COMPARED_BODY: usize = 1 << 20;
/// What the app got from the primary, for comparison.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The API the body is in (the backend's, when the stream was
    /// translated as it passed).
    pub api: Api,
    pub status: u16,
    pub sse: bool,
    /// The body as passed to the app (up to [`MAX_COMPARED_BODY`]).
    pub body: Bytes,
    /// The body ended properly and was kept whole.
    pub complete: bool,
}

/// Collects a copy of the primary's body as it passes to the app.
pub struct Tap {
    api: Api,
    status: u16,
    sse: bool,
    buf: Vec<u8>,
    truncated: bool,
    tx: Option<oneshot::Sender<Seen>>,
}

impl Tap {
    pub fn new(api: Api, status: u16, sse: bool, tx: oneshot::Sender<Seen>) -> Self {
        Self {
            api,
            status,
            sse,
            buf: Vec::new(),
            truncated: false,
            tx: Some(tx),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() > MAX_COMPARED_BODY {
            self.truncated = true;
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The body ended with `outcome`. When the app went away first there is
    /// nothing to compare: the shadow side hears nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        if outcome == Outcome::Cancelled {
            return;
        }
        let _ = tx.send(Seen {
            api: self.api,
            status: self.status,
            sse: self.sse,
            body: Bytes::from(std::mem::take(&mut self.buf)),
            complete: outcome.is_final() && !self.truncated,
        });
    }
}

/// A request to mirror.
pub struct Mirror {
    pub admission: Admission,
    pub live: Arc<LivePolicy>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_id: String,
    pub stop: CancellationToken,
    pub samples: Arc<Samples>,
}

/// Runs a mirrored request in the background: waits for a slot, sends it,
/// reads the answer, compares it with the primary's (from `primary`).
pub fn spawn(mirror: Mirror, primary: oneshot::Receiver<Seen>) {
    tokio::spawn(async move {
        let stop = mirror.stop.clone();
        let live = mirror.live.clone();
        let index = mirror.admission.gate().settings.backend;
        tokio::select! {
            () = stop.cancelled() => live.backends[index].stats.shadow.bump(c::CANCELLED),
            () = run(mirror, primary) => {}
        }
    });
}

async fn run(mirror: Mirror, primary: oneshot::Receiver<Seen>) {
    let gate = mirror.admission.gate().clone();
    let live = &mirror.live;
    let index = gate.settings.backend;
    let backend = &live.policy.backends[index];
    let lb = &live.backends[index];
    let stats = &lb.stats.shadow;
    let Some(_slot) = gate.slot().await else {
        return;
    };
    stats.bump(c::MIRRORED);

    // Marked as shadow traffic (`x-shepherd-shadow: 1`) on the way out.
    let mut parts = http::Request::new(());
    *parts.method_mut() = mirror.method.clone();
    *parts.uri_mut() = mirror.uri.clone();
    *parts.headers_mut() = mirror.headers.clone();
    let (parts, ()) = parts.into_parts();
    let app = Api::of_path(mirror.uri.path());
    let mut rate = None;
    let shadow = match crate::translate::prepare(app, &mirror.body, backend, &lb.stats) {
        Ok(prepared) => {
            let api = prepared.backend_api(app);
            rate = (backend.pricing.as_ref()).map(|p| p.rate(prepared.sent_model.as_deref()));
            let out = Outgoing {
                parts: &parts,
                body: prepared.body,
                translated: prepared.crossing.is_some(),
                shadow: true,
            };
            send_and_read(out, backend, lb, stats)
                .await
                .map(|(status, sse, body, ended)| (status, inspect(api, status, sse, &body, ended)))
        }
        // Not sent: the app's mistake, or a field the shadow's API has no
        // counterpart for.
        Err(refusal) => Some((
            400,
            Inspected {
                outcome: match refusal {
                    Refusal::Invalid(_) => Outcome::AppError,
                    Refusal::Untranslatable { .. } => Outcome::BackendRejected,
                },
                detail: Some(match refusal {
                    Refusal::Invalid(e) => e.to_string(),
                    Refusal::Untranslatable { field, .. } => format!("untranslatable: {field}"),
                }),
                checked: false,
                schema_error: None,
                text: String::new(),
                usage: Usage::default(),
            },
        )),
    };
    if let Some((status, parsed)) = &shadow {
        stats.record(parsed.outcome);
        if parsed.outcome != Outcome::Ok {
            stats
                .examples
                .offer(parsed.outcome, *status, parsed.detail.as_deref());
        }
    }
    if let Some((status, a)) = &shadow {
        crate::attempt::charge(
            &lb.stats,
            SpendKind::Shadow,
            rate,
            *status,
            a.outcome,
            &a.usage,
            live.shadow.as_ref().and_then(|s| s.cap.as_deref()),
        );
        stats.add(c::INPUT_TOKENS, a.usage.input);
        stats.add(c::OUTPUT_TOKENS, a.usage.output);
        gate.used_tokens(a.usage.input + a.usage.output);
    }

    // The primary's answer; none if its body was dropped unread.
    let Ok(seen) = primary.await else {
        return;
    };
    let theirs = inspect(seen.api, seen.status, seen.sse, &seen.body, seen.complete);
    stats.bump(c::COMPARED);
    stats.add(c::PRIMARY_INPUT_TOKENS, theirs.usage.input);
    stats.add(c::PRIMARY_OUTPUT_TOKENS, theirs.usage.output);
    if theirs.is_client_error() {
        stats.bump(c::PRIMARY_CLIENT_ERRORS);
    }
    if shadow.as_ref().is_some_and(|(_, a)| a.is_client_error()) {
        stats.bump(c::CLIENT_ERRORS);
    }
    let shadow_outcome = shadow.as_ref().map(|(_, a)| a.outcome);
    let status_mismatch = shadow_outcome != Some(theirs.outcome);
    if status_mismatch {
        stats.bump(c::STATUS_MISMATCH);
    }
    if theirs.schema_error.is_some() {
        stats.bump(c::PRIMARY_SCHEMA_ERRORS);
    }
    let shadow_schema = shadow.as_ref().and_then(|(_, a)| a.schema_error.clone());
    if shadow_schema.is_some() {
        stats.bump(c::SHADOW_SCHEMA_ERRORS);
    }
    let schema_diverged = shadow_schema.is_some() && theirs.schema_error.is_none();
    if status_mismatch || schema_diverged {
        stats.bump(c::DIVERGED);
    }
    if let Some((_, a)) = &shadow
        && a.checked
        && theirs.checked
    {
        stats.record_similarity(similarity(&theirs.text, &a.text));
    }
    if status_mismatch || shadow_schema.is_some() {
        let reason = match (&shadow, &shadow_schema) {
            (None, _) => "the shadow got no answer".to_string(),
            (_, Some(e)) => format!("the shadow's answer breaks the schema: {e}"),
            (Some((s, a)), None) => format!(
                "{} (HTTP {s}) from the shadow, {} (HTTP {}) from the primary",
                a.outcome.label(),
                theirs.outcome.label(),
                seen.status
            ),
        };
        mirror.samples.push(Sample {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            policy: live.policy.name.to_string(),
            backend: backend.name.to_string(),
            request_id: mirror.request_id.clone(),
            primary_status: seen.status,
            shadow_status: shadow.as_ref().map_or(0, |(s, _)| *s),
            reason,
            request: gate
                .settings
                .keep_prompts
                .then(|| String::from_utf8_lossy(&mirror.body).into_owned()),
        });
    }
}

/// Sends a shadow request and reads its answer whole: its status, whether
/// it is a stream, the body kept and whether it ended properly. `None`
/// when no answer came (counted).
async fn send_and_read(
    out: Outgoing<'_>,
    backend: &crate::policy::Backend,
    lb: &crate::runtime::LiveBackend,
    stats: &crate::telemetry::ShadowStats,
) -> Option<(u16, bool, Bytes, bool)> {
    let started = Instant::now();
    let deadline = started + backend.timeouts.overall;
    match crate::attempt::send(out, backend, lb, deadline, &tracing::Span::none()).await {
        Tried::Response(resp, lease) => {
            let status = resp.status();
            let sse = is_sse(resp.headers());
            let (body, ttft, ended) = read_all(
                resp.into_body(),
                backend.timeouts.stream_idle,
                deadline,
                started,
            )
            .await;
            if ended && let Some(lease) = lease {
                lease.release();
            }
            stats.latency.record(started.elapsed());
            if sse && let Some(t) = ttft {
                stats.ttft.record(t);
            }
            Some((status.as_u16(), sse, body, ended))
        }
        Tried::Failed(outcome, _) => {
            stats.record(outcome);
            None
        }
        Tried::Fault(..) => None,
    }
}

/// Reads a body to its end (or the deadline, or an idle gap); returns what
/// was kept, the time to the first byte, and whether it ended properly.
async fn read_all(
    mut body: hyper::body::Incoming,
    idle: Duration,
    deadline: Instant,
    started: Instant,
) -> (Bytes, Option<Duration>, bool) {
    let mut buf = Vec::new();
    let mut ttft = None;
    loop {
        let limit = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(limit, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if ttft.is_none() && !data.is_empty() {
                        ttft = Some(started.elapsed());
                    }
                    if buf.len() + data.len() <= MAX_COMPARED_BODY {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            Ok(None) => return (Bytes::from(buf), ttft, true),
            Ok(Some(Err(_))) | Err(_) => return (Bytes::from(buf), ttft, false),
        }
    }
}

/// What an answer says, as far as the comparison cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    /// The answer's class.
    pub outcome: Outcome,
    /// What the class rests on: the error's name, or what is wrong.
    pub detail: Option<String>,
    /// A successful answer whose schema was checked.
    pub checked: bool,
    /// Why a successful answer breaks the schema.
    pub schema_error: Option<String>,
    /// The answer's text.
    pub text: String,
    pub usage: Usage,
}

impl Inspected {
    /// A 4xx the app or the backend is to blame for.
    fn is_client_error(&self) -> bool {
        matches!(self.outcome, Outcome::AppError | Outcome::BackendRejected)
    }
}

/// Classifies and reads an answer with the agent's one classification
/// ([`crate::outcome`]) and answer checks ([`crate::api`]); an answer cut
/// short is broken, and a successful one is checked against its API.
pub fn inspect(api: Api, status: u16, sse: bool, body: &[u8], complete: bool) -> Inspected {
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let mut out = Inspected {
        outcome: Outcome::Ok,
        detail: None,
        checked: false,
        schema_error: None,
        text: String::new(),
        usage: Usage::default(),
    };
    if !status.is_success() {
        out.usage.absorb(body);
        let class = crate::outcome::classify(api, status, body);
        out.outcome = class.outcome();
        out.detail = class.detail;
        return out;
    }
    out.checked = true;
    let result = if !complete {
        if !sse {
            out.usage.absorb(body);
        }
        out.outcome = Outcome::StreamBroken;
        Err("the answer did not end properly".to_string())
    } else if sse {
        let mut events = SseEvents::default();
        let mut check = StreamCheck::new(api);
        let (text, usage) = (&mut out.text, &mut out.usage);
        let mut on_event = |name: Option<&[u8]>, data: &[u8]| {
            if crate::api::USAGE_KEY.find(data).is_some() {
                usage.absorb(data);
            }
            check.event(name, data, Some(text));
        };
        events.feed(body, &mut on_event);
        events.finish(&mut on_event);
        if check.saw_terminal() {
            check.verdict().map_err(|m| m.0)
        } else {
            out.outcome = Outcome::StreamBroken;
            Err("the stream did not end with its final event".to_string())
        }
    } else {
        check_document(api, body, Some(&mut out.text), &mut out.usage).map_err(|m| m.0)
    };
    if let Err(e) = result {
        if out.outcome == Outcome::Ok {
            out.outcome = Outcome::Malformed;
        }
        out.detail = Some(e.clone());
        out.schema_error = Some(e);
    }
    out
}

/// Token-set overlap (Jaccard) of two texts' lowercase words; 1 when both
/// are empty.
pub fn similarity(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> HashSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (a, b) = (words(a), words(b));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let common = a.intersection(&b).count();
    common as f64 / (a.len() + b.len() - common) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2}}"#;

    /// Answers are classified and read with the agent's one classification:
    /// valid ones with their text and usage, malformed ones with what is
    /// wrong, cut ones as broken, errors by what they say.
    #[test]
    fn inspects_answers_with_the_one_classification() {
        let chat = Api::ChatCompletions;
        let ok = inspect(chat, 200, false, CHAT.as_bytes(), true);
        assert_eq!(
            (ok.outcome, ok.schema_error.as_deref()),
            (Outcome::Ok, None)
        );
        assert_eq!(ok.text, "Hello there");
        assert_eq!((ok.usage.input, ok.usage.output), (10, 2));
        let bad = inspect(chat, 200, false, br#"{"choices": []}"#, true);
        assert_eq!(bad.outcome, Outcome::Malformed);
        assert!(bad.schema_error.unwrap().contains("choices"));
        let cut = inspect(chat, 200, false, CHAT.as_bytes(), false);
        assert_eq!(cut.outcome, Outcome::StreamBroken);
        let rejected = inspect(
            chat,
            401,
            false,
            br#"{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}"#,
            true,
        );
        assert_eq!(rejected.outcome, Outcome::BackendRejected);
        assert_eq!(rejected.detail.as_deref(), Some("invalid_api_key"));
        assert!(rejected.is_client_error() && !rejected.checked);
        let err = inspect(chat, 503, false, b"oops", true);
        assert_eq!((err.outcome, err.checked), (Outcome::ServerError, false));

        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n\
                      data: [DONE]\n\n";
        let ok = inspect(chat, 200, true, stream.as_bytes(), true);
        assert_eq!(
            (ok.outcome, ok.text.as_str(), ok.usage.output),
            (Outcome::Ok, "Hi", 2)
        );
        let unended = stream.replace("data: [DONE]\n\n", "");
        let broken = inspect(chat, 200, true, unended.as_bytes(), true);
        assert_eq!(broken.outcome, Outcome::StreamBroken);
        let anthropic = br#"{"type":"message","role":"assistant","content":[{"type":"text","text":"Yes"}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":1}}"#;
        let a = inspect(Api::Messages, 200, false, anthropic, true);
        assert_eq!((a.outcome, a.text.as_str()), (Outcome::Ok, "Yes"));
    }

    /// Similarity is the overlap of word sets.
    #[test]
    fn similarity_is_token_set_overlap() {
        assert_eq!(similarity("Hello, world", "hello WORLD"), 1.0);
        assert_eq!(similarity("reply from a", "reply from b"), 0.5);
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("x", ""), 0.0);
    }

    /// The primary's copy reaches the shadow side when its body ends, cut
    /// short or not; when the app went away first, nothing is compared.
    #[test]
    fn the_tap_hands_over_the_primary_answer() {
        let (tx, mut rx) = oneshot::channel();
        let mut tap = Tap::new(Api::ChatCompletions, 200, false, tx);
        tap.push(b"{}");
        tap.finish(Outcome::Ok);
        let seen = rx.try_recv().unwrap();
        assert!(seen.complete);
        assert_eq!(seen.body, "{}");
        let (tx, mut rx) = oneshot::channel();
        let mut tap = Tap::new(Api::ChatCompletions, 200, true, tx);
        tap.finish(Outcome::StreamBroken);
        assert!(!rx.try_recv().unwrap().complete);
        let (tx, mut rx) = oneshot::channel();
        let mut tap = Tap::new(Api::ChatCompletions, 200, false, tx);
        tap.finish(Outcome::Cancelled);
        assert!(rx.try_recv().is_err());
    }
}
