//! One attempt at a backend: the request as sent (its URL, headers and
//! credentials), sent with the per-try timeout, and the bookkeeping settled
//! once with the attempt's outcome. The proxy and the shadow both send
//! through here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, request};
use http_body_util::Full;
use hyper::body::Incoming;
use shepherd_proto::cost::{self, Rate};
use tokio::time::Instant;

use crate::api::{Dialect, Usage};
use crate::breaker::{Breaker, Permit};
use crate::outcome::Health;
use crate::outcome::Outcome;
use crate::policy::Backend;
use crate::runtime::LiveBackend;
use crate::spend_cap::HourCap;
use crate::telemetry::{BackendStats, SpendKind};
use crate::upstream::Lease;

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
    crate::api::openai::CREDENTIAL_HEADER,
    crate::api::anthropic::CREDENTIAL_HEADER,
    HeaderName::from_static("api-key"),
];

/// What one attempt came to.
pub enum Tried {
    /// The upstream answered (on a lent connection, for HTTP/1.1).
    Response(Response<Incoming>, Option<Lease>),
    /// A fault answered in its place.
    Fault(StatusCode, Option<Duration>),
    /// No answer: [`Outcome::Connect`] or [`Outcome::Timeout`].
    Failed(Outcome, String),
}

/// Sends one attempt, with the per-try timeout (bounded by the deadline).
/// `span` is the attempt's span: its context goes upstream as `traceparent`.
pub async fn send(
    out: Outgoing<'_>,
    backend: &Backend,
    lb: &LiveBackend,
    deadline: Instant,
    span: &tracing::Span,
) -> Tried {
    let mut request = match upstream_request(out, backend, lb) {
        Ok(r) => r,
        Err(e) => {
            return Tried::Failed(Outcome::Connect, format!("cannot build the request: {e}"));
        }
    };
    shepherd_observe::inject(span, request.headers_mut());
    let limit = backend
        .timeouts
        .per_try
        .min(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(limit, lb.clients.current().send(request)).await {
        Err(_) => Tried::Failed(
            Outcome::Timeout,
            format!("no response within {}", humantime::format_duration(limit)),
        ),
        Ok(Ok((resp, lease))) => Tried::Response(resp, lease),
        Ok(Err(e)) => Tried::Failed(Outcome::Connect, e.to_string()),
    }
}

/// What one attempt sends.
pub struct Outgoing<'a> {
    /// The app's request head.
    pub parts: &'a request::Parts,
    /// The body for this backend (its model mapped, perhaps translated).
    pub body: Bytes,
    /// The body was translated into the backend's API family: it goes to
    /// that API's path, without the app's query or the other family's
    /// headers.
    pub translated: bool,
    /// A shadow request (marked with [`SHADOW_HEADER`]).
    pub shadow: bool,
}

/// Headers of one API family that mean nothing to the other.
const ANTHROPIC_ONLY: [HeaderName; 2] = [
    crate::api::anthropic::VERSION_HEADER,
    HeaderName::from_static("anthropic-beta"),
];

/// The request as sent to a backend: its URL, the app's headers minus the
/// dropped ones, the backend's extra headers and credentials.
fn upstream_request(
    out: Outgoing<'_>,
    backend: &Backend,
    lb: &LiveBackend,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let Outgoing {
        parts,
        body,
        translated,
        shadow,
    } = out;
    let base = &backend.base;
    let target = match (
        base.path.is_empty(),
        &base.query,
        parts.uri.path_and_query(),
        translated,
    ) {
        // The usual case: the app's target as it is (no copy).
        (true, None, Some(pq), false) => pq.clone(),
        _ => {
            let (path, query) = if translated {
                (crate::translate::path(backend.protocol), None)
            } else {
                (parts.uri.path(), parts.uri.query())
            };
            let mut pq = String::with_capacity(base.path.len() + path.len() + 32);
            pq.push_str(&base.path);
            pq.push_str(path);
            match (query, base.query.as_deref()) {
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
    if translated {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if backend.protocol == Dialect::OpenAi {
            for name in &ANTHROPIC_ONLY {
                headers.remove(name);
            }
        }
    }
    if backend.protocol == Dialect::Anthropic {
        let version = crate::api::anthropic::VERSION_HEADER;
        match &backend.anthropic_version {
            Some(v) => {
                headers.insert(version, v.clone());
            }
            None if !headers.contains_key(&version) => {
                headers.insert(
                    version,
                    HeaderValue::from_static(crate::api::anthropic::DEFAULT_VERSION),
                );
            }
            None => {}
        }
    }
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

/// Bookkeeping of one attempt, settled once with its outcome: when its
/// answer was judged, or when the body delivered to the app ends (or the
/// app goes away).
pub struct Attempt {
    pub stats: Arc<BackendStats>,
    pub breaker: Option<Arc<Breaker>>,
    pub permit: Permit,
    pub started: Instant,
    /// The answer's status.
    pub status: u16,
    /// What the backend charges for this request's answer; `None` when it
    /// names no prices.
    pub rate: Option<Rate>,
    /// The tokens an answer not passed on reported (see [`Attempt::fail`]).
    pub usage: Usage,
    /// The hourly spend cap this backend's answers count against.
    pub cap: Option<Arc<HourCap>>,
}

/// What an answer cost, as far as its spans and headers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Not billed (not a success), or the backend names no prices.
    Nothing,
    /// Billed, but it could not be priced.
    Unpriced,
    /// Its exact cost, in pico-units.
    Cost(u128),
}

/// True for the outcome of an answer that was read to its end, whose usage
/// is complete. An answer cut off (cancelled, broken) is billed too but
/// its usage, if any came, is not the whole: it is unpriced.
fn complete(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Ok | Outcome::Malformed)
}

/// Counts a backend's answer of `kind` in `stats`, and against `cap`: only
/// successful answers are billed; one is priced from the usage it reported
/// at `rate`.
#[allow(clippy::too_many_arguments)]
pub fn charge(
    stats: &BackendStats,
    kind: SpendKind,
    rate: Option<Rate>,
    status: u16,
    outcome: Outcome,
    usage: &Usage,
    cap: Option<&HourCap>,
) -> Charged {
    let Some(rate) = rate else {
        return Charged::Nothing;
    };
    if !(200..300).contains(&status) {
        return Charged::Nothing;
    }
    let tokens = (usage.reported && complete(outcome)).then(|| usage.tokens());
    let cost = cost::cost_of(rate, tokens.as_ref());
    stats.charge(kind, cost);
    if let (Some(cap), Some(cost)) = (cap, cost)
        && cap.add(cost, crate::spend_cap::now_secs())
    {
        stats.spend_cap_trips.fetch_add(1, Ordering::Relaxed);
    }
    cost.map_or(Charged::Unpriced, Charged::Cost)
}

impl Attempt {
    /// Settles an answer delivered to the app: its outcome, its latency and
    /// time to first token, its tokens and cost, and what the breaker
    /// learns. `detail` names what was wrong, for the failure example.
    pub fn settle(
        self,
        outcome: Outcome,
        detail: Option<&str>,
        ttft: Option<Duration>,
        usage: Usage,
    ) -> Charged {
        let charged = charge(
            &self.stats,
            SpendKind::Served,
            self.rate,
            self.status,
            outcome,
            &usage,
            self.cap.as_deref(),
        );
        if outcome == Outcome::Cancelled {
            // Says nothing about the backend: give a probe slot back.
            self.stats.record(outcome);
            return charged;
        }
        self.stats
            .record_latency(self.started.elapsed(), outcome == Outcome::Ok);
        if let Some(t) = ttft {
            self.stats.ttft.record(t);
        }
        self.stats.add_tokens(usage.input, usage.output);
        self.record(outcome, false, detail);
        charged
    }

    /// Settles an attempt whose answer did not reach the app (a failure
    /// retried or fallen back from): its outcome, its failure example, what
    /// the breaker learns, and its cost when it was billed (a successful
    /// answer found malformed, with the usage set in `self.usage`).
    pub fn fail(self, outcome: Outcome, quota: bool, detail: Option<&str>) {
        charge(
            &self.stats,
            SpendKind::Failed,
            self.rate,
            self.status,
            outcome,
            &self.usage,
            self.cap.as_deref(),
        );
        self.record(outcome, quota, detail);
    }

    fn record(self, outcome: Outcome, quota: bool, detail: Option<&str>) {
        let Attempt {
            stats,
            breaker,
            permit,
            status,
            ..
        } = self;
        stats.record(outcome);
        if outcome != Outcome::Ok && status != 0 {
            stats.examples.offer(outcome, status, detail);
        }
        // A 429 is the backend failing to serve, unless the policy says not.
        let health = match breaker.as_deref() {
            Some(b) if outcome == Outcome::RateLimited && b.settings().count_rate_limited => {
                Health::Failure
            }
            _ => outcome.health(quota),
        };
        if permit.record(breaker.as_deref(), health) {
            stats.breaker_opened();
        }
    }
}
