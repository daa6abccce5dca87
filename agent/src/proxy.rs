//! The request path: route -> split (inference requests only; the rest go
//! to the baseline) -> per backend in the plan: breaker gate -> faults ->
//! attempt with per-try timeout -> read and classify the answer
//! ([`crate::outcome`]) -> retry with backoff -> fall back -> deliver.
//!
//! Plain answers are read whole (up to [`MAX_CHECKED_ANSWER`]) and judged
//! before their head goes to the app: an LLM answer is complete before it
//! is sent anyway. A valid answer, or the app's own mistake, is delivered;
//! a backend failure is retried or falls back, and the app sees it only
//! when nothing else can serve the request. Rejected and malformed answers
//! fall back at once, without a retry on the same backend and without
//! drawing on the retry budget. Streams are delivered as they start (retry
//! and fallback end there) and judged when they end.
//!
//! When the agent retried or fell back and still answers an error, the
//! answer says `x-should-retry: false`, so SDKs do not multiply the retries.
//!
//! Request bodies are read whole (up to the size limit) so they can be
//! replayed and their `model` rewritten; bodies above the retry limit are
//! sent once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, request, response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Dialect, Usage, is_sse};
pub use crate::attempt::SHADOW_HEADER;
use crate::attempt::{Attempt, Charged, Outgoing, Tried, send};
use crate::breaker::{Health, Permit};
use crate::errors::{self, ErrorKind};
use crate::fault;
use crate::outcome::{self, Outcome};
use crate::retry;
use crate::runtime::{LivePolicy, Table};
use crate::shadow;
use crate::spend_cap;
use crate::split;
use crate::stream::{InflightGuard, ObservedBody, ProxyBody, Watch};
use crate::telemetry::AgentStats;
use crate::trace::{self, BodySpans};
use crate::translate::{self, Crossing, Refusal};
use crate::upstream::Lease;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Larger bodies get 413.
    pub max_request_body: usize,
    /// Larger bodies are sent once: no retry, no fallback after a send.
    pub retry_body_limit: usize,
    /// More requests in flight get 503.
    pub max_concurrent: usize,
    /// Answers read whole carry their cost in `x-shepherd-cost`.
    pub cost_header: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body: 16 << 20,
            retry_body_limit: 4 << 20,
            max_concurrent: 1024,
            cost_header: false,
        }
    }
}

/// Longest plain answer read whole and checked before it goes to the app;
/// a longer one is passed through as it comes, unchecked.
pub const MAX_CHECKED_ANSWER: usize = 8 << 20;

/// Headers the agent names the outcome with.
pub const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-shepherd-backend");
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-shepherd-attempts");
pub const POLICY_HEADER: HeaderName = HeaderName::from_static("x-shepherd-policy");
/// The cost of an answer read whole ("0.0065 USD", or "unpriced"), when the
/// agent runs with `--cost-header` and the backend has prices.
pub const COST_HEADER: HeaderName = HeaderName::from_static("x-shepherd-cost");
/// Tells the official OpenAI and Anthropic SDKs not to retry an error the
/// agent already retried or fell back from.
pub const SHOULD_RETRY_HEADER: HeaderName = HeaderName::from_static("x-should-retry");

/// Response headers never passed to the app.
const DROPPED_RESPONSE_HEADERS: [HeaderName; 6] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
];

/// The proxy: a routing table swapped by reloads, limits, counters.
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    limits: Limits,
    stats: Arc<AgentStats>,
    /// Cancelled when the drain time at shutdown runs out: streams still
    /// running end with an error event.
    pub closing: CancellationToken,
}

impl Proxy {
    /// The proxy listener's connections.
    pub fn connections(&self) -> &shepherd_observe::conns::Connections {
        &self.stats.connections
    }
}

/// The last failure seen, answered to the app when nothing else serves.
enum LastFailure {
    /// A backend's own answer, read whole: (head, body, backend, attempts).
    Answer(response::Parts, Bytes, usize, u32),
    Fault(StatusCode, Option<Duration>, usize, u32),
    /// No answer to pass on.
    Failed(Outcome),
    BreakerOpen,
}

/// One request on its way through its policy's backends.
struct Call<'a> {
    parts: &'a request::Parts,
    body: &'a Bytes,
    live: &'a Arc<LivePolicy>,
    api: Api,
    deadline: Instant,
    replayable: bool,
    span: &'a tracing::Span,
    mirrored: bool,
    /// Answers read whole carry `x-shepherd-cost`.
    cost_header: bool,
    /// The drain's end, which streams still running are cut at.
    closing: &'a CancellationToken,
}

/// How far a request got: its attempts, whether it fell back, its last
/// failure and the notes that explain a final error.
#[derive(Default)]
struct Progress {
    attempts: u32,
    fell_back: bool,
    last: Option<LastFailure>,
    /// The class of the last attempt's outcome.
    last_outcome: Option<Outcome>,
    notes: Vec<String>,
    guard: Option<InflightGuard>,
    /// The last backend is cooling down after a 429: the next goes at once,
    /// free of the retry budget.
    cooling: bool,
    /// The last backend was skipped (cooling down) without being sent to.
    skipped: bool,
}

impl Call<'_> {
    /// Records on the request's span that `backend` answered with `status`.
    fn answered(&self, backend: &str, attempts: u32, status: StatusCode) {
        trace::answered(self.span, Some(backend), attempts, self.mirrored, status);
    }
}

impl Progress {
    fn failed(&mut self, failure: LastFailure) {
        let keep = matches!(failure, LastFailure::BreakerOpen)
            && matches!(
                self.last,
                Some(LastFailure::Answer(..) | LastFailure::Fault(..))
            );
        if !keep {
            self.last = Some(failure);
        }
    }
}

impl Proxy {
    pub fn new(table: Arc<ArcSwap<Table>>, limits: Limits, stats: Arc<AgentStats>) -> Self {
        Self {
            table,
            limits,
            stats,
            closing: CancellationToken::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves one request from the app.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let dialect = Api::of_path(req.uri().path()).dialect();
        let Some(guard) = InflightGuard::acquire(&self.stats, self.limits.max_concurrent) else {
            bump(&self.stats.shed);
            let mut resp = error_response(
                dialect,
                ErrorKind::Overloaded,
                &format!(
                    "the agent has {} requests in flight, its limit; retry shortly",
                    self.limits.max_concurrent
                ),
            );
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        };
        let (parts, body) = req.into_parts();
        let max = self.limits.max_request_body;
        let declared = content_length(&parts.headers);
        if declared.is_some_and(|n| n > max as u64) {
            bump(&self.stats.too_large);
            return Ok(too_large(dialect, max));
        }
        let body = match read_body(body, max).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => {
                bump(&self.stats.too_large);
                return Ok(too_large(dialect, max));
            }
            Err(ReadError::Broken(e)) => {
                bump(&self.stats.bad_request);
                return Ok(error_response(
                    dialect,
                    ErrorKind::BadRequest,
                    &format!("could not read the request body: {e}"),
                ));
            }
        };
        Ok(self.forward(parts, body, guard).await)
    }

    /// Sends a request (its body already read) to the backends of its policy.
    pub async fn forward(
        &self,
        parts: request::Parts,
        body: Bytes,
        guard: InflightGuard,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let api = Api::of_path(parts.uri.path());
        let live = {
            let table = self.table.load();
            match table.route(parts.uri.path(), &parts.headers) {
                Some(p) => p.clone(),
                None => {
                    bump(&self.stats.no_route);
                    return error_response(
                        api.dialect(),
                        ErrorKind::NoRoute,
                        &format!("no policy matches {} {}", parts.method, parts.uri.path()),
                    );
                }
            }
        };
        // A model call must be a JSON object with a boolean `stream`: any
        // backend would refuse it, so it is answered here, sent nowhere.
        let inference = api.is_inference(&parts.method);
        if inference && let Err(why) = crate::api::check_request(&body) {
            bump(&self.stats.bad_request);
            return error_response(api.dialect(), ErrorKind::BadRequest, &why);
        }
        bump(&live.requests);
        live.budget.deposit();
        let policy = &live.policy;
        let span = trace::request(&parts, &body, &live, api);

        // Only model calls are split (and mirrored); a model list or a file
        // goes to the baseline.
        let sticky = policy
            .sticky_header
            .as_ref()
            .and_then(|h| parts.headers.get(h));
        let (chosen, bucket) = if inference {
            let bucket = match sticky {
                Some(key) => split::bucket(&policy.name, key.as_bytes()),
                None => split::random_bucket(),
            };
            // A candidate of the other API family serves chat only (an
            // Anthropic backend has no embeddings): the rest stay on the
            // baseline.
            let chosen = match policy.candidate {
                Some(c)
                    if split::to_candidate(bucket, policy.candidate_weight)
                        && translate::serves(policy.backends[c].protocol, api) =>
                {
                    // Past its hourly spend cap the candidate's share goes
                    // to the baseline until the hour ends.
                    let lb = &live.backends[c];
                    match &lb.cap {
                        Some(cap) if cap.closed(spend_cap::now_secs()) => {
                            bump(&lb.stats.spend_capped);
                            policy.baseline
                        }
                        _ => c,
                    }
                }
                _ => policy.baseline,
            };
            (chosen, Some(bucket))
        } else {
            (policy.baseline, None)
        };
        bump(&live.backends[chosen].stats.selected);
        trace::split(&span, &live, bucket, sticky.is_some(), chosen);
        let mirror = if inference {
            plan_mirror(&live, api, &parts, &body, chosen)
        } else {
            None
        };

        let call = Call {
            parts: &parts,
            body: &body,
            live: &live,
            api,
            deadline: started + policy.backends[chosen].timeouts.overall,
            replayable: body.len() <= self.limits.retry_body_limit,
            span: &span,
            mirrored: mirror.is_some(),
            cost_header: self.limits.cost_header,
            closing: &self.closing,
        };
        let mut progress = Progress {
            guard: Some(guard),
            ..Progress::default()
        };
        let plan: Vec<usize> =
            std::iter::once(chosen)
                .chain(policy.fallback.iter().copied().filter(|&i| {
                    i != chosen && translate::serves(policy.backends[i].protocol, api)
                }))
                .collect();
        for (step, &index) in plan.iter().enumerate() {
            if step > 0 {
                if !may_fall_back(&call, &progress) {
                    break;
                }
                progress.fell_back = true;
                bump(&live.backends[index].stats.fallbacks);
            }
            let last = step + 1 == plan.len();
            if let Some(served) = try_backend(&call, index, step, last, &mut progress).await {
                return with_mirror(mirror, api, served);
            }
        }
        let answer = last_answer(&call, &mut progress);
        with_mirror(mirror, api, answer)
    }
}

/// Whether to try the next backend of the plan after the last failure:
/// within the deadline and, when the request was sent, within the replay
/// limit; and within the retry budget unless the failed backend is not
/// asked again anyway (an open breaker, a rejected or malformed answer).
fn may_fall_back(c: &Call<'_>, p: &Progress) -> bool {
    let last = p.last_outcome.unwrap_or(Outcome::BreakerRejected);
    let sent = last != Outcome::BreakerRejected && !p.skipped;
    // A backend cooling down is not asked again: falling back from it adds
    // no load to it, so it is free of the retry budget.
    Instant::now() < c.deadline
        && (!sent || c.replayable)
        && (last.falls_back_freely() || p.cooling || c.live.budget.try_withdraw())
}

/// Tries one backend, with its retries. Returns the response for the app
/// when the backend served the request (or its answer is the one the app
/// gets, as for a stream or an answer too long to check); `None` to go on.
async fn try_backend(
    c: &Call<'_>,
    index: usize,
    step: usize,
    last: bool,
    p: &mut Progress,
) -> Option<Response<ProxyBody>> {
    let live = c.live;
    let policy = &live.policy;
    let backend = &policy.backends[index];
    let lb = &live.backends[index];
    let prepared = match translate::prepare(c.api, c.body, backend, &lb.stats) {
        Ok(prepared) => prepared,
        Err(refusal) => return refused(c, index, refusal, p),
    };
    // The API the backend answers in (the app's, unless translated).
    let backend_api = prepared.backend_api(c.api);
    let crossing = prepared.crossing.as_ref();
    // The model the app's answer names, when the backend asks to keep the
    // app's own.
    let answer_model = prepared
        .requested_model
        .as_deref()
        .filter(|_| backend.answer_requested_model);
    // Cooling down after a 429: with somewhere else to go, go there at once.
    if !last && let Some(left) = lb.cooldown.remaining(Instant::now()) {
        bump(&lb.stats.cooled);
        p.notes.push(format!(
            "{}: cooling down after a 429 for {}",
            backend.name,
            humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
        ));
        (p.cooling, p.skipped) = (true, true);
        return None;
    }
    (p.cooling, p.skipped) = (false, false);
    let mut tries = 0u32;
    loop {
        let permit = match &lb.breaker {
            None => Permit::unlimited(),
            Some(b) => match b.try_acquire() {
                Ok(p) => p,
                Err(cause) => {
                    lb.stats.record(Outcome::BreakerRejected);
                    let why = if cause == Health::Failure {
                        ""
                    } else {
                        bump(&lb.stats.breaker_rejected_broken);
                        " (it rejects requests or answers malformed ones)"
                    };
                    p.notes
                        .push(format!("{}: circuit breaker open{why}", backend.name));
                    p.failed(LastFailure::BreakerOpen);
                    p.last_outcome = Some(Outcome::BreakerRejected);
                    return None;
                }
            },
        };
        p.attempts += 1;
        tries += 1;
        if tries > 1 {
            bump(&lb.stats.retries);
        }
        let mut cool = None;
        let attempt_span = trace::attempt(c.span, live, index, p.attempts, tries > 1, step > 0);
        let mut attempt = Attempt {
            stats: lb.stats.clone(),
            breaker: lb.breaker.clone(),
            permit,
            started: Instant::now(),
            status: 0,
            rate: backend
                .pricing
                .as_ref()
                .map(|p| p.rate(prepared.sent_model.as_deref())),
            usage: Usage::default(),
            cap: lb.cap.clone(),
        };
        let decision = policy
            .active_faults(index, SystemTime::now())
            .map(|f| fault::decide(f, SystemTime::now(), || rand::random_range(0.0..100.0)))
            .unwrap_or_default();
        if let Some(delay) = decision.delay {
            bump(&lb.stats.faults_delay);
            tokio::time::sleep_until((Instant::now() + delay).min(c.deadline)).await;
        }
        let tried = match decision.abort {
            Some((status, retry_after)) => Tried::Fault(status, retry_after),
            None => {
                let out = Outgoing {
                    parts: c.parts,
                    body: prepared.body.clone(),
                    translated: crossing.is_some(),
                    shadow: false,
                };
                send(out, backend, lb, c.deadline, &attempt_span).await
            }
        };

        let (outcome, retry_after) = match tried {
            Tried::Response(resp, lease) => {
                let status = resp.status();
                attempt.status = status.as_u16();
                if status.is_success() && is_sse(resp.headers()) {
                    let delivery = Delivery {
                        attempts: p.attempts,
                        api: c.api,
                        crossing,
                        hide_usage: prepared.usage_asked,
                        closing: c.closing,
                        cut_after: decision.cut_after,
                        answer_model,
                        outcome: Outcome::Ok,
                        attempt: Some(attempt),
                        lease,
                        spans: BodySpans::of(c.span.clone(), attempt_span),
                    };
                    c.answered(&backend.name, p.attempts, status);
                    return Some(deliver(
                        resp,
                        Bytes::new(),
                        live,
                        index,
                        delivery,
                        p.guard.take(),
                    ));
                }
                match read_answer(resp, lease, backend.timeouts.stream_idle, c.deadline).await {
                    Read::Whole(parts, bytes) => {
                        // A translated answer is checked and turned back in
                        // one pass.
                        let (class, translated) = match crossing {
                            None => (outcome::classify(backend_api, status, &bytes), None),
                            Some(x) => {
                                outcome::classify_with(backend_api, status, &bytes, |b, usage| {
                                    translate::answer(x, b, answer_model, usage)
                                })
                            }
                        };
                        let outcome = class.outcome();
                        let detail = class.detail;
                        if outcome.is_final() {
                            let (parts, bytes) = match (crossing, translated) {
                                (None, _) => (
                                    parts,
                                    match answer_model {
                                        Some(model) => crate::model::in_answer(&bytes, model),
                                        None => bytes,
                                    },
                                ),
                                (Some(_), Some(answer)) => (translate::json_head(parts), answer),
                                (Some(x), None) => translate::turn_back_error(x, parts, &bytes),
                            };
                            trace::attempt_outcome(&attempt_span, outcome, Some(status));
                            let usage = class.usage;
                            let charged = attempt.settle(outcome, detail.as_deref(), None, usage);
                            let currency = || shepherd_proto::cost::currency_of(&policy.source);
                            if let Some(spans) = BodySpans::of(c.span.clone(), attempt_span) {
                                spans.finish(outcome, usage, charged, currency());
                            }
                            c.answered(&backend.name, p.attempts, parts.status);
                            let mut answer = whole_answer(parts, bytes, live, index, p.attempts);
                            if c.cost_header {
                                cost_header(answer.headers_mut(), charged, currency());
                            }
                            return Some(answer);
                        }
                        let retry_after = retry::retry_after(&parts.headers, SystemTime::now());
                        if outcome == Outcome::RateLimited {
                            cool = retry_after;
                        }
                        match crossing {
                            None => p.failed(LastFailure::Answer(parts, bytes, index, p.attempts)),
                            // A malformed answer cannot be translated.
                            Some(_) if status.is_success() => {
                                p.failed(LastFailure::Failed(outcome));
                            }
                            Some(x) => {
                                let (parts, bytes) = translate::turn_back_error(x, parts, &bytes);
                                p.failed(LastFailure::Answer(parts, bytes, index, p.attempts));
                            }
                        }
                        trace::attempt_outcome(&attempt_span, outcome, Some(status));
                        attempt.usage = class.usage;
                        attempt.fail(outcome, class.quota, detail.as_deref());
                        p.notes.push(match (&detail, outcome) {
                            (Some(why), Outcome::Malformed) => {
                                format!(
                                    "{}: HTTP {} ({}: {why})",
                                    backend.name,
                                    status.as_u16(),
                                    outcome.label()
                                )
                            }
                            _ => format!(
                                "{}: HTTP {} ({})",
                                backend.name,
                                status.as_u16(),
                                outcome.label()
                            ),
                        });
                        (outcome, retry_after)
                    }
                    Read::TooLong(_, _, _, _) if crossing.is_some() => {
                        let why = format!(
                            "the answer is longer than {MAX_CHECKED_ANSWER} bytes, too long to translate"
                        );
                        trace::attempt_outcome(&attempt_span, Outcome::Malformed, Some(status));
                        attempt.fail(Outcome::Malformed, false, Some(&why));
                        p.notes.push(format!("{}: {why}", backend.name));
                        p.failed(LastFailure::Failed(Outcome::Malformed));
                        (Outcome::Malformed, None)
                    }
                    Read::TooLong(head, prefix, rest, lease) => {
                        // Too long to check: passed on as it comes.
                        let delivery = Delivery {
                            attempts: p.attempts,
                            api: c.api,
                            crossing: None,
                            hide_usage: false,
                            closing: c.closing,
                            cut_after: None,
                            answer_model: None,
                            outcome: outcome::classify_status(c.api, status),
                            attempt: Some(attempt),
                            lease,
                            spans: BodySpans::of(c.span.clone(), attempt_span),
                        };
                        c.answered(&backend.name, p.attempts, status);
                        let resp = Response::from_parts(head, rest);
                        return Some(deliver(resp, prefix, live, index, delivery, p.guard.take()));
                    }
                    Read::Broken(message) => {
                        trace::attempt_outcome(&attempt_span, Outcome::StreamBroken, Some(status));
                        attempt.fail(Outcome::StreamBroken, false, Some(&message));
                        p.notes.push(format!("{}: {message}", backend.name));
                        p.failed(LastFailure::Failed(Outcome::StreamBroken));
                        (Outcome::StreamBroken, None)
                    }
                }
            }
            Tried::Fault(status, ra) => {
                lb.stats.record(Outcome::FaultInjected);
                trace::attempt_outcome(&attempt_span, Outcome::FaultInjected, Some(status));
                bump(&lb.stats.faults_abort);
                // Says nothing about the backend.
                drop(attempt);
                let outcome = outcome::classify_status(c.api, status);
                if outcome.is_final() {
                    c.answered(&backend.name, p.attempts, status);
                    return Some(fault_response(
                        c.api.dialect(),
                        live,
                        index,
                        p.attempts,
                        status,
                        ra,
                    ));
                }
                p.notes.push(format!(
                    "{}: injected HTTP {}",
                    backend.name,
                    status.as_u16()
                ));
                p.failed(LastFailure::Fault(status, ra, index, p.attempts));
                (outcome, ra)
            }
            Tried::Failed(outcome, message) => {
                trace::attempt_outcome(&attempt_span, outcome, None);
                attempt.fail(outcome, false, None);
                p.notes.push(format!("{}: {message}", backend.name));
                p.failed(LastFailure::Failed(outcome));
                (outcome, None)
            }
        };
        p.last_outcome = Some(outcome);
        // A 429 with Retry-After cools the backend down for every request of
        // the agent; this one goes on to the next backend at once.
        if let Some(ra) = cool.take() {
            lb.cooldown
                .start(Instant::now() + ra.min(policy.retry.retry_after_max));
            bump(&lb.stats.cooldowns);
            if !last {
                p.cooling = true;
                return None;
            }
        }
        let remaining = c.deadline.saturating_duration_since(Instant::now());
        let wait = retry::next_wait(
            &policy.retry,
            outcome.retry_class(),
            retry_after,
            tries,
            c.replayable,
            remaining,
            rand::random(),
        );
        match wait {
            Some(wait) if live.budget.try_withdraw() => tokio::time::sleep(wait).await,
            _ => return None,
        }
    }
}

/// A request not sent to a backend because it could not be translated
/// into the backend's API. The app's own mistake is answered (any backend
/// would refuse it); a field with no counterpart makes the backend one
/// that cannot serve this request: a rejection, which falls back freely
/// and leaves the breaker alone.
fn refused(
    c: &Call<'_>,
    index: usize,
    refusal: Refusal,
    p: &mut Progress,
) -> Option<Response<ProxyBody>> {
    let backend = &c.live.policy.backends[index];
    let stats = &c.live.backends[index].stats;
    let body = refusal.answer(c.api.dialect());
    let head = || {
        let mut head = Response::new(()).into_parts().0;
        head.status = StatusCode::BAD_REQUEST;
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        head
    };
    match refusal {
        Refusal::Invalid(_) => {
            stats.record(Outcome::AppError);
            c.answered(&backend.name, p.attempts, StatusCode::BAD_REQUEST);
            Some(whole_answer(head(), body, c.live, index, p.attempts))
        }
        Refusal::Untranslatable { field, message } => {
            stats.record(Outcome::BackendRejected);
            stats.examples.offer(
                Outcome::BackendRejected,
                400,
                Some(&format!("untranslatable: {field}")),
            );
            p.notes.push(format!("{}: {message}", backend.name));
            p.failed(LastFailure::Answer(head(), body, index, p.attempts));
            p.last_outcome = Some(Outcome::BackendRejected);
            None
        }
    }
}

/// The answer when no backend served the request: the last backend's own
/// answer (or injected fault) as it was, or the agent's error naming what
/// each backend did. After a retry or a fallback it says
/// `x-should-retry: false`: the agent already tried what there was to try.
fn last_answer(c: &Call<'_>, p: &mut Progress) -> Response<ProxyBody> {
    let dialect = c.api.dialect();
    let answered_by = match &p.last {
        Some(LastFailure::Answer(_, _, index, _) | LastFailure::Fault(_, _, index, _)) => {
            Some(&*c.live.policy.backends[*index].name)
        }
        _ => None,
    };
    let mut answer = match p.last.take() {
        Some(LastFailure::Answer(parts, bytes, index, n)) => {
            whole_answer(parts, bytes, c.live, index, n)
        }
        Some(LastFailure::Fault(status, ra, index, n)) => {
            fault_response(dialect, c.live, index, n, status, ra)
        }
        Some(LastFailure::Failed(Outcome::Timeout)) => error_response(
            dialect,
            ErrorKind::UpstreamTimeout,
            &format!("no backend answered in time ({})", p.notes.join("; ")),
        ),
        Some(LastFailure::Failed(_) | LastFailure::BreakerOpen) | None => error_response(
            dialect,
            ErrorKind::UpstreamUnavailable,
            &format!("no backend could take the request ({})", p.notes.join("; ")),
        ),
    }
    .with_attempts(p.attempts);
    if (p.attempts > 1 || p.fell_back) && answer.status().as_u16() >= 400 {
        answer
            .headers_mut()
            .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    }
    trace::answered(c.span, answered_by, p.attempts, c.mirrored, answer.status());
    answer
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A plain answer, read.
enum Read {
    /// Whole (the connection went back to its pool).
    Whole(response::Parts, Bytes),
    /// Longer than [`MAX_CHECKED_ANSWER`]: what was read, and the rest.
    TooLong(response::Parts, Bytes, Incoming, Option<Lease>),
    /// The body broke off or stalled.
    Broken(String),
}

/// Reads a plain answer whole, each frame within the backend's idle time
/// and all of it within the request's deadline.
async fn read_answer(
    resp: Response<Incoming>,
    lease: Option<Lease>,
    idle: Duration,
    deadline: Instant,
) -> Read {
    let (parts, mut body) = resp.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > MAX_CHECKED_ANSWER as u64) {
        return Read::TooLong(parts, Bytes::new(), body, lease);
    }
    let mut collect = Collect::default();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Read::Broken(format!(
                    "the answer stalled for {}",
                    humantime::format_duration(wait)
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Read::Broken(format!("the answer broke off: {e}")),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if collect.len + data.len() > MAX_CHECKED_ANSWER {
                    let mut read = collect.finish().to_vec();
                    read.extend_from_slice(&data);
                    return Read::TooLong(parts, Bytes::from(read), body, lease);
                }
                collect.push(data);
            }
        }
    }
    if let Some(lease) = lease {
        lease.release();
    }
    Read::Whole(parts, collect.finish())
}

/// Bytes collected from frames; a body that arrives in one frame (the usual
/// case) is kept as it is, without copying.
#[derive(Default)]
struct Collect {
    first: Option<Bytes>,
    rest: Option<bytes::BytesMut>,
    len: usize,
}

impl Collect {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(head), None) => {
                let mut buf = bytes::BytesMut::with_capacity(self.len.max(head.len() * 2));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                self.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }

    fn finish(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(b), None) => b,
            (None, None) => Bytes::new(),
        }
    }
}

/// Whether to mirror a request to the policy's shadow backend (never when
/// the shadow is the backend chosen for it); admits it if so.
fn plan_mirror(
    live: &Arc<LivePolicy>,
    api: Api,
    parts: &request::Parts,
    body: &Bytes,
    chosen: usize,
) -> Option<shadow::Mirror> {
    let sh = live.shadow.as_ref()?;
    let index = sh.gate.settings.backend;
    if index == chosen || !translate::serves(live.policy.backends[index].protocol, api) {
        return None;
    }
    let key = live
        .policy
        .sticky_header
        .as_ref()
        .and_then(|h| parts.headers.get(h))
        .map(HeaderValue::as_bytes);
    let bucket = sh.gate.bucket(key);
    let stats = &live.backends[index].stats;
    if bucket >= sh.gate.settings.basis_points {
        return None;
    }
    // Past its hourly spend cap the shadow rests until the hour ends.
    if sh
        .cap
        .as_ref()
        .is_some_and(|c| c.closed(spend_cap::now_secs()))
    {
        bump(&stats.spend_capped);
        return None;
    }
    let admission = sh.gate.admit(bucket, &stats.shadow)?;
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string);
    Some(shadow::Mirror {
        admission,
        live: live.clone(),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        request_id,
        stop: sh.stop.clone(),
        samples: sh.samples.clone(),
    })
}

/// Starts the shadow request of a mirrored request, handing it what the app
/// gets (a copy of the body as it passes, or the agent's own answer).
fn with_mirror(
    mirror: Option<shadow::Mirror>,
    api: Api,
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(mirror) = mirror else {
        return resp;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let status = resp.status().as_u16();
    match resp.body_mut() {
        ProxyBody::Observed(o) => {
            let tap = shadow::Tap::new(o.backend_api(), status, o.is_sse(), tx);
            o.set_tap(tap);
        }
        ProxyBody::Full(bytes) => {
            let _ = tx.send(shadow::Seen {
                api,
                status,
                sse: false,
                body: bytes.clone().unwrap_or_default(),
                complete: true,
            });
        }
    }
    shadow::spawn(mirror, rx);
    resp
}

/// Why a request body could not be read.
enum ReadError {
    TooLarge,
    Broken(hyper::Error),
}

/// Reads a request body whole, up to `max` bytes.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let mut collect = Collect::default();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Broken)?.into_data() else {
            continue;
        };
        if collect.len + data.len() > max {
            return Err(ReadError::TooLarge);
        }
        collect.push(data);
    }
    Ok(collect.finish())
}

/// How an upstream response is handed to the app.
struct Delivery<'a> {
    attempts: u32,
    api: Api,
    /// How the stream is turned back into the app's API, when translated.
    crossing: Option<&'a Crossing>,
    /// Keep the usage chunk asked for on the app's behalf from the app.
    hide_usage: bool,
    /// The drain's end: a stream still running then ends with an error
    /// event.
    closing: &'a CancellationToken,
    /// Cut the stream after this many events (an injected fault).
    cut_after: Option<u32>,
    /// Set the stream's model to this one (the app's own).
    answer_model: Option<&'a str>,
    /// The outcome if the body ends properly.
    outcome: Outcome,
    /// Settled when the body ends.
    attempt: Option<Attempt>,
    /// The connection, returned to its pool when the body ends.
    lease: Option<Lease>,
    /// The spans that end with the body (tracing on).
    spans: Option<BodySpans>,
}

/// Strips the headers never passed to the app; `length` says whether the
/// upstream's content-length still holds.
fn app_headers(headers: &mut HeaderMap, length: bool) {
    // Upstreams rarely send hop-by-hop headers: look before removing.
    if headers.keys().any(|k| DROPPED_RESPONSE_HEADERS.contains(k)) {
        for name in &DROPPED_RESPONSE_HEADERS {
            headers.remove(name);
        }
    }
    if !length {
        headers.remove(CONTENT_LENGTH);
    }
}

/// Passes an upstream response to the app as it comes (after `prefix`, the
/// bytes already read from it), watching its body.
fn deliver(
    resp: Response<Incoming>,
    prefix: Bytes,
    live: &LivePolicy,
    index: usize,
    delivery: Delivery<'_>,
    guard: Option<InflightGuard>,
) -> Response<ProxyBody> {
    let Delivery {
        attempts,
        api,
        crossing,
        hide_usage,
        closing,
        cut_after,
        answer_model,
        outcome,
        attempt,
        lease,
        spans,
    } = delivery;
    let (mut parts, body) = resp.into_parts();
    let sse = is_sse(&parts.headers);
    // A stream may get an error event at its end.
    app_headers(&mut parts.headers, !sse);
    let backend = &live.policy.backends[index];
    name_outcome(&mut parts.headers, live, index, attempts);
    let watch = Watch {
        sse,
        api,
        crossing: crossing.cloned(),
        hide_usage,
        idle_timeout: backend.timeouts.stream_idle,
        cut_after,
        outcome,
    };
    let currency = shepherd_proto::cost::currency_of(&live.policy.source);
    let mut body = ObservedBody::new(body, watch, attempt, lease, guard).with_prefix(prefix);
    if sse {
        body.set_closing(closing);
    }
    if let Some(model) = answer_model {
        body.set_answer_model(model);
    }
    if let Some(spans) = spans {
        body.set_spans(spans, currency);
    }
    Response::from_parts(parts, ProxyBody::Observed(body))
}

/// A plain answer read whole, handed to the app as it was.
fn whole_answer(
    mut parts: response::Parts,
    body: Bytes,
    live: &LivePolicy,
    index: usize,
    attempts: u32,
) -> Response<ProxyBody> {
    // The length is the body's own (it may have been edited).
    app_headers(&mut parts.headers, false);
    name_outcome(&mut parts.headers, live, index, attempts);
    Response::from_parts(parts, ProxyBody::full(body))
}

/// Sets `x-shepherd-cost` to what an answer cost (nothing when it was not
/// billed or its backend names no prices).
fn cost_header(headers: &mut HeaderMap, charged: Charged, currency: &str) {
    let value = match charged {
        Charged::Nothing => return,
        Charged::Unpriced => HeaderValue::from_static("unpriced"),
        Charged::Cost(picos) => {
            match HeaderValue::try_from(format!(
                "{} {currency}",
                shepherd_proto::cost::exact(picos)
            )) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
    };
    headers.insert(COST_HEADER, value);
}

fn name_outcome(headers: &mut HeaderMap, live: &LivePolicy, index: usize, attempts: u32) {
    headers.insert(BACKEND_HEADER, live.backends[index].name_header.clone());
    headers.insert(POLICY_HEADER, live.name_header.clone());
    headers.insert(ATTEMPTS_HEADER, attempts_value(attempts));
}

/// The `x-shepherd-attempts` value; small counts need no allocation.
fn attempts_value(attempts: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempts as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(attempts),
    }
}

/// The answer of an injected abort fault.
fn fault_response(
    dialect: Dialect,
    live: &LivePolicy,
    index: usize,
    attempts: u32,
    status: StatusCode,
    retry_after: Option<Duration>,
) -> Response<ProxyBody> {
    let backend = &live.policy.backends[index].name;
    let mut resp = error_response(
        dialect,
        ErrorKind::FaultInjected,
        &format!(
            "fault injected for backend {backend:?}: HTTP {}",
            status.as_u16()
        ),
    );
    *resp.status_mut() = status;
    if let Some(ra) = retry_after {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(ra.as_secs().max(1)),
        );
    }
    name_outcome(resp.headers_mut(), live, index, attempts);
    resp
}

/// An error the agent answers itself.
pub fn error_response(dialect: Dialect, kind: ErrorKind, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(errors::body(dialect, kind, message)));
    *resp.status_mut() = kind.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn too_large(dialect: Dialect, max: usize) -> Response<ProxyBody> {
    error_response(
        dialect,
        ErrorKind::RequestTooLarge,
        &format!("the request body is larger than the limit of {max} bytes"),
    )
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

trait WithAttempts {
    fn with_attempts(self, attempts: u32) -> Self;
}

impl WithAttempts for Response<ProxyBody> {
    fn with_attempts(mut self, attempts: u32) -> Self {
        self.headers_mut()
            .entry(ATTEMPTS_HEADER)
            .or_insert_with(|| attempts_value(attempts));
        self
    }
}
