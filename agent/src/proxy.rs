//! The request path: route -> split -> (per backend in the plan: breaker gate
//! -> faults -> attempt with per-try timeout -> classify -> retry with
//! backoff) -> fall back -> deliver the response as it streams.
//!
//! Retries and fallback happen only before a response head is passed to the
//! app. Request bodies are read whole (up to the size limit) so they can be
//! replayed and their `model` rewritten; bodies above the retry limit are sent
//! once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::breaker::Permit;
use crate::errors::{self, ErrorKind, Shape};
use crate::fault;
use crate::policy::Backend;
use crate::retry::{self, Failure, RetrySettings};
use crate::runtime::{LiveBackend, LivePolicy, Table};
use crate::shadow;
use crate::split;
use crate::stream::{Attempt, InflightGuard, ObservedBody, ProxyBody, Watch};
use crate::telemetry::{AgentStats, Outcome};
use crate::trace::{self, BodySpans};
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body: 16 << 20,
            retry_body_limit: 4 << 20,
            max_concurrent: 1024,
        }
    }
}

/// Headers the agent names the outcome with.
pub const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-shepherd-backend");
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-shepherd-attempts");
pub const POLICY_HEADER: HeaderName = HeaderName::from_static("x-shepherd-policy");
/// Marks shadow requests (sent by the agent, never by apps).
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-shepherd-shadow");

/// Request headers never forwarded upstream: hop-by-hop headers, the app's
/// own credentials (each backend sends its own), and the agent's headers.
const DROPPED_REQUEST_HEADERS: [HeaderName; 13] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

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
}

/// What one attempt came to.
pub(crate) enum Tried {
    /// The upstream answered (on a lent connection, for HTTP/1.1).
    Response(Response<Incoming>, Option<Lease>),
    /// A fault answered in its place.
    Fault(StatusCode, Option<Duration>),
    /// No answer.
    Failed(Failure, String),
}

/// The last failure seen, answered to the app when nothing succeeds.
enum LastFailure {
    Response(Response<Incoming>, Option<Lease>, usize, u32),
    Fault(StatusCode, Option<Duration>, usize, u32),
    Failed(Failure),
    BreakerOpen,
}

impl Proxy {
    pub fn new(table: Arc<ArcSwap<Table>>, limits: Limits, stats: Arc<AgentStats>) -> Self {
        Self {
            table,
            limits,
            stats,
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
        let shape = Shape::of_path(req.uri().path());
        let Some(guard) = InflightGuard::acquire(&self.stats, self.limits.max_concurrent) else {
            bump(&self.stats.shed);
            let mut resp = error_response(
                shape,
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
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            bump(&self.stats.too_large);
            return Ok(too_large(shape, max));
        }
        let body = match read_body(body, max).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => {
                bump(&self.stats.too_large);
                return Ok(too_large(shape, max));
            }
            Err(ReadError::Broken(e)) => {
                bump(&self.stats.bad_request);
                return Ok(error_response(
                    shape,
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
        let shape = Shape::of_path(parts.uri.path());
        let live = {
            let table = self.table.load();
            match table.route(parts.uri.path(), &parts.headers) {
                Some(p) => p.clone(),
                None => {
                    bump(&self.stats.no_route);
                    return error_response(
                        shape,
                        ErrorKind::NoRoute,
                        &format!("no policy matches {} {}", parts.method, parts.uri.path()),
                    );
                }
            }
        };
        bump(&live.requests);
        live.budget.deposit();
        let policy = &live.policy;
        let span = trace::request(&parts, &body, &live);

        let sticky = policy
            .sticky_header
            .as_ref()
            .and_then(|h| parts.headers.get(h));
        let bucket = match sticky {
            Some(key) => split::bucket(&policy.name, key.as_bytes()),
            None => split::random_bucket(),
        };
        let chosen = match policy.candidate {
            Some(c) if split::to_candidate(bucket, policy.candidate_weight) => c,
            _ => policy.baseline,
        };
        bump(&live.backends[chosen].stats.selected);
        trace::split(&span, &live, bucket, sticky.is_some(), chosen);
        let mirror = plan_mirror(&live, &parts, &body, chosen);
        let mirrored = mirror.is_some();

        let deadline = started + policy.backends[chosen].timeouts.overall;
        let replayable = body.len() <= self.limits.retry_body_limit;
        let mut attempts = 0u32;
        let mut last: Option<LastFailure> = None;
        let mut notes: Vec<String> = Vec::new();
        let plan =
            std::iter::once(chosen).chain(policy.fallback.iter().copied().filter(|&i| i != chosen));

        for (step, index) in plan.enumerate() {
            if step > 0 {
                // Fall back only after a retryable failure, within the
                // deadline, and (when the request was sent) within the
                // retry budget and the replay limit.
                let sent = !matches!(last, Some(LastFailure::BreakerOpen));
                if Instant::now() >= deadline
                    || (sent && (!replayable || !live.budget.try_withdraw()))
                {
                    break;
                }
                bump(&live.backends[index].stats.fallbacks);
            }
            let backend = &policy.backends[index];
            let lb = &live.backends[index];
            let payload = rewrite_model(backend, &body);
            let mut tries = 0u32;
            loop {
                let permit = match &lb.breaker {
                    None => Permit::unlimited(),
                    Some(b) => match b.try_acquire() {
                        Some(p) => p,
                        None => {
                            lb.stats.record(Outcome::BreakerRejected);
                            notes.push(format!("{}: circuit breaker open", backend.name));
                            if !matches!(
                                last,
                                Some(LastFailure::Response(..) | LastFailure::Fault(..))
                            ) {
                                last = Some(LastFailure::BreakerOpen);
                            }
                            break;
                        }
                    },
                };
                attempts += 1;
                tries += 1;
                if tries > 1 {
                    bump(&lb.stats.retries);
                }
                let attempt_span =
                    trace::attempt(&span, &live, index, attempts, tries > 1, step > 0);
                let attempt_started = Instant::now();
                let decision = policy
                    .active_faults(index, SystemTime::now())
                    .map(|f| fault::decide(f, SystemTime::now(), || rand::random_range(0.0..100.0)))
                    .unwrap_or_default();
                if let Some(delay) = decision.delay {
                    bump(&lb.stats.faults_delay);
                    tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
                }
                let tried = match decision.abort {
                    Some((status, retry_after)) => Tried::Fault(status, retry_after),
                    None => {
                        send(
                            &parts,
                            backend,
                            lb,
                            payload.clone(),
                            deadline,
                            false,
                            &attempt_span,
                        )
                        .await
                    }
                };

                let (failure, headers_retry_after) = match tried {
                    Tried::Response(resp, lease) => {
                        let status = resp.status();
                        trace::attempt_outcome(
                            &attempt_span,
                            Outcome::of_status(status),
                            Some(status),
                        );
                        let Some(class) = retry::classify_status(status) else {
                            trace::answered(&span, Some(&backend.name), attempts, mirrored, status);
                            let attempt = Attempt {
                                stats: lb.stats.clone(),
                                breaker: lb.breaker.clone(),
                                permit,
                                started: attempt_started,
                                outcome: Outcome::of_status(status),
                            };
                            let delivery = Delivery {
                                attempts,
                                shape,
                                cut_after: decision.cut_after,
                                attempt: Some(attempt),
                                lease,
                                spans: BodySpans::of(span, attempt_span),
                            };
                            return with_mirror(
                                mirror,
                                deliver(resp, &live, index, delivery, guard),
                            );
                        };
                        lb.stats.record(Outcome::of_status(status));
                        permit.record(lb.breaker.as_deref(), class == Failure::RateLimited);
                        let ra = retry::retry_after(resp.headers(), SystemTime::now());
                        notes.push(format!("{}: HTTP {}", backend.name, status.as_u16()));
                        last = Some(LastFailure::Response(resp, lease, index, attempts));
                        (class, ra)
                    }
                    Tried::Fault(status, ra) => {
                        lb.stats.record(Outcome::FaultInjected);
                        trace::attempt_outcome(&attempt_span, Outcome::FaultInjected, Some(status));
                        bump(&lb.stats.faults_abort);
                        drop(permit);
                        let Some(class) = retry::classify_status(status) else {
                            trace::answered(&span, Some(&backend.name), attempts, mirrored, status);
                            return with_mirror(
                                mirror,
                                fault_response(shape, &live, index, attempts, status, ra),
                            );
                        };
                        notes.push(format!(
                            "{}: injected HTTP {}",
                            backend.name,
                            status.as_u16()
                        ));
                        last = Some(LastFailure::Fault(status, ra, index, attempts));
                        (class, ra)
                    }
                    Tried::Failed(class, message) => {
                        let outcome = match class {
                            Failure::Timeout => Outcome::Timeout,
                            _ => Outcome::Connect,
                        };
                        lb.stats.record(outcome);
                        trace::attempt_outcome(&attempt_span, outcome, None);
                        permit.record(lb.breaker.as_deref(), false);
                        notes.push(format!("{}: {message}", backend.name));
                        last = Some(LastFailure::Failed(class));
                        (class, None)
                    }
                };

                match plan_retry(
                    &policy.retry,
                    failure,
                    headers_retry_after,
                    tries,
                    replayable,
                    deadline,
                ) {
                    Some(wait) if live.budget.try_withdraw() => {
                        tokio::time::sleep(wait).await;
                    }
                    _ => break,
                }
            }
        }

        let answered_by = match &last {
            Some(LastFailure::Response(_, _, index, _) | LastFailure::Fault(_, _, index, _)) => {
                Some(&*policy.backends[*index].name)
            }
            _ => None,
        };
        let span_of_answer = span.clone();
        let answer = match last {
            Some(LastFailure::Response(resp, lease, index, n)) => {
                let delivery = Delivery {
                    attempts: n,
                    shape,
                    cut_after: None,
                    attempt: None,
                    lease,
                    spans: BodySpans::of(span, tracing::Span::none()),
                };
                deliver(resp, &live, index, delivery, guard)
            }
            Some(LastFailure::Fault(status, ra, index, n)) => {
                fault_response(shape, &live, index, n, status, ra)
            }
            Some(LastFailure::Failed(Failure::Timeout)) => error_response(
                shape,
                ErrorKind::UpstreamTimeout,
                &format!("no backend answered in time ({})", notes.join("; ")),
            ),
            Some(LastFailure::Failed(_) | LastFailure::BreakerOpen) | None => error_response(
                shape,
                ErrorKind::UpstreamUnavailable,
                &format!("no backend could take the request ({})", notes.join("; ")),
            ),
        }
        .with_attempts(attempts);
        trace::answered(
            &span_of_answer,
            answered_by,
            attempts,
            mirrored,
            answer.status(),
        );
        with_mirror(mirror, answer)
    }
}

/// Whether to mirror a request to the policy's shadow backend (never when
/// the shadow is the backend chosen for it); admits it if so.
fn plan_mirror(
    live: &Arc<LivePolicy>,
    parts: &request::Parts,
    body: &Bytes,
    chosen: usize,
) -> Option<shadow::Mirror> {
    let sh = live.shadow.as_ref()?;
    let index = sh.gate.settings.backend;
    if index == chosen {
        return None;
    }
    let key = live
        .policy
        .sticky_header
        .as_ref()
        .and_then(|h| parts.headers.get(h))
        .map(HeaderValue::as_bytes);
    let admission = sh
        .gate
        .admit(sh.gate.bucket(key), &live.backends[index].stats.shadow)?;
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
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(mirror) = mirror else {
        return resp;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let status = resp.status().as_u16();
    match resp.body_mut() {
        ProxyBody::Observed(o) => o.set_tap(shadow::Tap::new(status, o.is_sse(), tx)),
        ProxyBody::Full(bytes) => {
            let _ = tx.send(shadow::Seen {
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

/// Reads a request body whole, up to `max` bytes. A body that arrives in one
/// frame (the usual case) is kept as it is, without copying.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Broken)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > max {
            return Err(ReadError::TooLarge);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut buf = bytes::BytesMut::with_capacity(len.max(head.len() * 2));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(b), None) => b,
        (None, None) => Bytes::new(),
    })
}

/// How long to wait before retrying on the same backend, or `None` to stop
/// retrying there.
fn plan_retry(
    settings: &RetrySettings,
    failure: Failure,
    retry_after: Option<Duration>,
    tries: u32,
    replayable: bool,
    deadline: Instant,
) -> Option<Duration> {
    if tries >= settings.max_attempts || !settings.retry_on.covers(failure) || !replayable {
        return None;
    }
    let wait = match retry_after {
        Some(ra) if ra > settings.retry_after_max => return None,
        Some(ra) => ra,
        None => retry::backoff(settings, tries - 1, rand::random()),
    };
    (Instant::now() + wait < deadline).then_some(wait)
}

/// Sends one attempt, with the per-try timeout (bounded by the deadline).
/// `span` is the attempt's span: its context goes upstream as `traceparent`.
pub(crate) async fn send(
    parts: &request::Parts,
    backend: &Backend,
    lb: &LiveBackend,
    body: Bytes,
    deadline: Instant,
    shadow: bool,
    span: &tracing::Span,
) -> Tried {
    let mut request = match upstream_request(parts, backend, lb, body, shadow) {
        Ok(r) => r,
        Err(e) => return Tried::Failed(Failure::Connect, format!("cannot build the request: {e}")),
    };
    shepherd_observe::inject(span, request.headers_mut());
    let limit = backend
        .timeouts
        .per_try
        .min(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(limit, lb.clients.current().send(request)).await {
        Err(_) => Tried::Failed(
            Failure::Timeout,
            format!("no response within {}", humantime::format_duration(limit)),
        ),
        Ok(Ok((resp, lease))) => Tried::Response(resp, lease),
        Ok(Err(e)) => Tried::Failed(Failure::Connect, e.to_string()),
    }
}

/// The request as sent to a backend: its URL, the app's headers minus the
/// dropped ones, the backend's extra headers and credentials.
fn upstream_request(
    parts: &request::Parts,
    backend: &Backend,
    lb: &LiveBackend,
    body: Bytes,
    shadow: bool,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let base = &backend.base;
    let target = match (
        base.path.is_empty(),
        &base.query,
        parts.uri.path_and_query(),
    ) {
        // The usual case: the app's target as it is (no copy).
        (true, None, Some(pq)) => pq.clone(),
        _ => {
            let path = parts.uri.path();
            let mut pq = String::with_capacity(base.path.len() + path.len() + 32);
            pq.push_str(&base.path);
            pq.push_str(path);
            match (parts.uri.query(), base.query.as_deref()) {
                (Some(q), Some(b)) => {
                    pq.push('?');
                    pq.push_str(b);
                    pq.push('&');
                    pq.push_str(q);
                }
                (Some(q), None) | (None, Some(q)) => {
                    pq.push('?');
                    pq.push_str(q);
                }
                (None, None) => {}
            }
            http::uri::PathAndQuery::try_from(pq)?
        }
    };
    let uri = Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(target)
        .build()?;
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + backend.headers.len() + 3);
    for (name, value) in &parts.headers {
        if !DROPPED_REQUEST_HEADERS.contains(name) && !name.as_str().starts_with("x-shepherd-") {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(http::header::HOST, lb.host.clone());
    if shadow {
        headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    }
    // Bodies are watched on the way back; ask for them uncompressed.
    headers.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for (name, value) in &backend.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some((name, value)) = &lb.auth {
        headers.insert(name.clone(), value.clone());
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The body for a backend: `model` rewritten by its model map, or as sent.
pub(crate) fn rewrite_model(backend: &Backend, body: &Bytes) -> Bytes {
    if !backend.rewrites_model() || body.first() != Some(&b'{') {
        return body.clone();
    }
    type Fields<'a> = std::collections::BTreeMap<&'a str, &'a serde_json::value::RawValue>;
    let Ok(fields) = serde_json::from_slice::<Fields<'_>>(body) else {
        return body.clone();
    };
    let Some(model) = fields
        .get("model")
        .and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok())
    else {
        return body.clone();
    };
    let Some(mapped) = backend.map_model(model) else {
        return body.clone();
    };
    let Ok(mapped_raw) = serde_json::value::to_raw_value(mapped) else {
        return body.clone();
    };
    let mut fields = fields;
    fields.insert("model", &mapped_raw);
    match serde_json::to_vec(&fields) {
        Ok(v) => Bytes::from(v),
        Err(_) => body.clone(),
    }
}

/// How an upstream response is handed to the app.
struct Delivery {
    attempts: u32,
    shape: Shape,
    /// Cut the stream after this many events (an injected fault).
    cut_after: Option<u32>,
    /// Settled when the body ends; `None` when it was settled already.
    attempt: Option<Attempt>,
    /// The connection, returned to its pool when the body ends.
    lease: Option<Lease>,
    /// The spans that end with the body (tracing on).
    spans: Option<BodySpans>,
}

/// Passes an upstream response to the app, watching its body.
fn deliver(
    resp: Response<Incoming>,
    live: &LivePolicy,
    index: usize,
    delivery: Delivery,
    guard: InflightGuard,
) -> Response<ProxyBody> {
    let Delivery {
        attempts,
        shape,
        cut_after,
        attempt,
        lease,
        spans,
    } = delivery;
    let (mut parts, body) = resp.into_parts();
    // Upstreams rarely send hop-by-hop headers: look before removing.
    if parts
        .headers
        .keys()
        .any(|k| DROPPED_RESPONSE_HEADERS.contains(k))
    {
        for name in &DROPPED_RESPONSE_HEADERS {
            parts.headers.remove(name);
        }
    }
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        // An error event may be added at the end.
        parts.headers.remove(CONTENT_LENGTH);
    }
    let backend = &live.policy.backends[index];
    name_outcome(&mut parts.headers, live, index, attempts);
    let watch = Watch {
        sse,
        shape,
        idle_timeout: backend.timeouts.stream_idle,
        cut_after,
    };
    let mut body = ObservedBody::new(body, watch, attempt, lease, Some(guard));
    if let Some(spans) = spans {
        body.set_spans(spans);
    }
    Response::from_parts(parts, ProxyBody::Observed(body))
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
    shape: Shape,
    live: &LivePolicy,
    index: usize,
    attempts: u32,
    status: StatusCode,
    retry_after: Option<Duration>,
) -> Response<ProxyBody> {
    let backend = &live.policy.backends[index].name;
    let mut resp = error_response(
        shape,
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
pub fn error_response(shape: Shape, kind: ErrorKind, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(errors::body(shape, kind, message)));
    *resp.status_mut() = kind.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn too_large(shape: Shape, max: usize) -> Response<ProxyBody> {
    error_response(
        shape,
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
