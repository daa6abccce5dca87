//! Response bodies on their way to the app.
//!
//! Plain answers are read whole and checked before their head goes to the
//! app (see the proxy); [`ObservedBody`] passes the rest through frame by
//! frame (nothing is buffered whole) and watches them: server-sent event
//! streams, and plain bodies too long to check. It measures time to first
//! byte, enforces the idle timeout between frames and the stream-cut
//! fault, reads `usage`, and for streams reads every event
//! ([`crate::api::SseEvents`]) and checks it ([`crate::api::StreamCheck`]):
//! a stream that ends without its final event is broken, one whose events
//! are not its API's is malformed. A stream that breaks, stalls or ends
//! early is finished with an SSE error event and then aborted, so the app
//! never sees a clean end; it counts as a failure of its backend.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use memchr::memmem;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub use crate::api::Usage;
use crate::api::{Api, SseEvents, StreamCheck};
use crate::attempt::{Attempt, Charged};
use crate::errors::{self, ErrorKind};
use crate::model::StreamModel;
use crate::outcome::Outcome;
use crate::shadow::Tap;
use crate::telemetry::AgentStats;
use crate::trace::BodySpans;
use crate::translate::{self, Crossing};
use crate::upstream::Lease;

/// Counts a request in flight until dropped (it travels with the response body).
#[derive(Debug)]
pub struct InflightGuard(Arc<AgentStats>);

impl InflightGuard {
    /// Admits a request if fewer than `max` are in flight.
    pub fn acquire(stats: &Arc<AgentStats>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let n = stats.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        if n > i64::try_from(max).unwrap_or(i64::MAX) {
            stats.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(stats.clone()))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The body of a response to the app.
// The observed variant is the one every proxied response uses; boxing it
// would cost an allocation per response to save bytes on error answers.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// A body the agent made (errors).
    Full(Option<Bytes>),
    /// An upstream body passed through.
    Observed(ObservedBody),
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody::Full(Some(bytes))
    }
}

/// Why a body ended with an error.
#[derive(Debug)]
pub struct BodyError(pub &'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Observed(o) => o.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Observed(o) => matches!(o.state, State::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Observed(o) if !o.is_sse() && o.prefix.is_none() => o.inner.size_hint(),
            ProxyBody::Observed(_) => SizeHint::default(),
        }
    }
}

static EVENT_END: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\n\n"));

/// Longest plain body kept to read its `usage`.
const USAGE_BODY_LIMIT: usize = 1 << 20;

/// Reads `usage` from a plain body as it passes: its frames (cheap clones)
/// are kept, while under the limit, and read at the end.
#[derive(Default)]
struct PlainUsage {
    frames: Vec<Bytes>,
    len: usize,
    overflow: bool,
}

impl PlainUsage {
    fn feed(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        self.len += data.len();
        if self.len > USAGE_BODY_LIMIT {
            self.overflow = true;
            self.frames.clear();
            return;
        }
        self.frames.push(data.clone());
    }

    fn finish(&mut self, usage: &mut Usage) {
        match self.frames.len() {
            0 => {}
            1 => usage.absorb(&self.frames[0]),
            _ => usage.absorb(&self.frames.concat()),
        }
        self.frames.clear();
    }
}

/// Writes one event in the server-sent event format.
fn write_event(name: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name);
        out.push(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// What a server-sent event stream's events said so far, and, when the
/// stream is translated, what the app gets for them.
struct Events {
    reader: SseEvents,
    check: StreamCheck,
    translate: Option<translate::Stream>,
    /// Keep usage-only chunks from the app (asked for on its behalf): the
    /// other events are written out again as they complete.
    hide_usage: bool,
    /// Translated (or rewritten) events not yet passed on.
    out: Vec<u8>,
}

impl Events {
    /// Events of the backend's API `api`; with `crossing`, turned back into
    /// the app's.
    fn new(api: Api, crossing: Option<&Crossing>, hide_usage: bool) -> Self {
        Self {
            reader: SseEvents::default(),
            check: StreamCheck::new(api),
            translate: crossing.map(translate::Stream::new),
            hide_usage: hide_usage && crossing.is_none(),
            out: Vec::new(),
        }
    }

    /// True when the app gets `out` rather than the upstream's bytes.
    fn rewrites(&self) -> bool {
        self.translate.is_some() || self.hide_usage
    }

    /// Reads the events completed by `data` (all that are left, at the end).
    fn feed(&mut self, data: Option<&[u8]>, usage: &mut Usage) {
        let check = &mut self.check;
        let (translate, out) = (&mut self.translate, &mut self.out);
        let hide_usage = self.hide_usage;
        let mut on_event = |name: Option<&[u8]>, event: &[u8]| {
            let has_usage = crate::api::USAGE_KEY.find(event).is_some();
            if has_usage {
                usage.absorb(event);
            }
            check.event(name, event, None);
            if let Some(t) = translate {
                t.event(name, event, out);
            } else if hide_usage && !(has_usage && crate::api::openai::is_usage_chunk(event)) {
                write_event(name, event, out);
            }
        };
        match data {
            Some(bytes) => self.reader.feed(bytes, on_event),
            None => self.reader.finish(&mut on_event),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Streaming,
    /// An error event is due, then an abort.
    SendError(Bytes),
    /// The error event is buffered: let the connection flush it, then abort.
    Flush,
    /// Abort next.
    Abort,
    Done,
}

/// An upstream body passed through and watched (see the module docs).
pub struct ObservedBody {
    inner: Incoming,
    /// Bytes read from the upstream before the body was handed over (a
    /// plain answer too long to check), passed first.
    prefix: Option<Bytes>,
    state: State,
    /// The events of a server-sent event stream; `None` for a plain body.
    events: Option<Box<Events>>,
    plain: PlainUsage,
    api: Api,
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    /// SSE events (or frames, for other bodies) passed so far.
    passed: u32,
    cut_after: Option<u32>,
    usage: Usage,
    first_byte: Option<Duration>,
    attempt: Option<Attempt>,
    /// The outcome of a body that ends properly, before its events are
    /// judged (a plain body too long to check has only its status).
    outcome: Outcome,
    /// The upstream connection, returned to its pool at a proper end.
    lease: Option<Lease>,
    /// A copy for the shadow comparison, when the request is mirrored.
    tap: Option<Box<Tap>>,
    /// The request's spans, which end with the body (tracing on), and the
    /// currency its cost is in.
    spans: Option<Box<(BodySpans, String)>>,
    /// Sets the stream's model to the app's own.
    answer_model: Option<Box<StreamModel>>,
    /// The end of the agent's drain at shutdown: a stream still running
    /// then ends with an error event.
    closing: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _inflight: Option<InflightGuard>,
}

/// How to watch a body.
pub struct Watch {
    pub sse: bool,
    /// The app's API: the shape of the error event that ends a broken
    /// stream, and (unless translated) what its events must look like.
    pub api: Api,
    /// The stream is in the backend's API, turned back into the app's as
    /// it passes.
    pub crossing: Option<Crossing>,
    /// The stream's usage chunk was asked for on the app's behalf: it is
    /// read, and kept from the app.
    pub hide_usage: bool,
    pub idle_timeout: Duration,
    /// Cut the stream after this many events (an injected fault).
    pub cut_after: Option<u32>,
    /// The outcome of the body if it ends properly (its answer's class).
    pub outcome: Outcome,
}

impl ObservedBody {
    pub fn new(
        inner: Incoming,
        watch: Watch,
        attempt: Option<Attempt>,
        lease: Option<Lease>,
        inflight: Option<InflightGuard>,
    ) -> Self {
        Self {
            inner,
            prefix: None,
            state: State::Streaming,
            events: watch.sse.then(|| {
                let api = watch.crossing.as_ref().map_or(watch.api, |c| c.backend);
                Box::new(Events::new(api, watch.crossing.as_ref(), watch.hide_usage))
            }),
            plain: PlainUsage::default(),
            api: watch.api,
            idle_timeout: watch.idle_timeout,
            idle: None,
            passed: 0,
            cut_after: watch.cut_after,
            usage: Usage::default(),
            first_byte: None,
            attempt,
            outcome: watch.outcome,
            lease,
            tap: None,
            spans: None,
            answer_model: None,
            closing: None,
            _inflight: inflight,
        }
    }

    /// Sets the `model` of the stream's events to `model` as they pass.
    pub fn set_answer_model(&mut self, model: &str) {
        self.answer_model = Some(Box::new(StreamModel::new(model)));
    }

    /// Passes `prefix` (already read from the upstream) before the rest.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }

    /// Ends the stream with an error event when `closing` is cancelled.
    pub fn set_closing(&mut self, closing: &CancellationToken) {
        self.closing = Some(Box::pin(closing.clone().cancelled_owned()));
    }

    /// Copies the body, as it passes, for the shadow comparison.
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(Box::new(tap));
    }

    /// Ends the request's spans with the body; its cost is in `currency`.
    pub fn set_spans(&mut self, spans: BodySpans, currency: &str) {
        self.spans = Some(Box::new((spans, currency.to_owned())));
    }

    /// True for a server-sent event stream.
    pub fn is_sse(&self) -> bool {
        self.events.is_some()
    }

    fn settle(&mut self, outcome: Outcome, detail: Option<&str>) {
        if let Some(tap) = &mut self.tap {
            tap.finish(outcome);
        }
        let mut charged = Charged::Nothing;
        if let Some(attempt) = self.attempt.take() {
            let ttft = if self.events.is_some() {
                self.first_byte
            } else {
                None
            };
            charged = attempt.settle(outcome, detail, ttft, self.usage);
        }
        if let Some(spans) = self.spans.take() {
            let (spans, currency) = *spans;
            spans.finish(outcome, self.usage, charged, &currency);
        }
    }

    /// Ends the body with an error: an SSE error event first when the
    /// response is a stream, then an abort.
    fn fail(&mut self, kind: ErrorKind, outcome: Outcome, message: &str) {
        self.settle(outcome, Some(message));
        self.state = if self.events.is_some() {
            State::SendError(errors::sse_event(self.api.dialect(), kind, message))
        } else {
            State::Abort
        };
    }

    /// Counts the events in `data`; with a cut due, returns how many bytes of
    /// `data` to pass before cutting.
    fn count_events(&mut self, data: &[u8]) -> Option<usize> {
        if self.events.is_none() {
            self.passed += 1;
            return match self.cut_after {
                Some(n) if self.passed > n => Some(0),
                _ => None,
            };
        }
        for end in EVENT_END.find_iter(data) {
            self.passed += 1;
            if self.cut_after == Some(self.passed) {
                return Some(end + 2);
            }
        }
        match self.cut_after {
            Some(0) => Some(0),
            _ => None,
        }
    }

    /// The upstream body ended: a stream without its final event is broken;
    /// one whose events are not its API's is malformed. Returns what the
    /// last events translate to, if anything.
    fn end(&mut self) -> Option<Bytes> {
        let mut outcome = self.outcome;
        let mut detail = None;
        let mut rest = None;
        match self.events.as_mut() {
            Some(events) => {
                events.feed(None, &mut self.usage);
                if !events.out.is_empty() {
                    rest = Some(Bytes::from(std::mem::take(&mut events.out)));
                }
                if !events.check.saw_terminal() {
                    self.fail(
                        ErrorKind::StreamBroken,
                        Outcome::StreamBroken,
                        "the upstream stream ended without its final event",
                    );
                    return rest;
                }
                if let Err(m) = events.check.verdict() {
                    outcome = Outcome::Malformed;
                    detail = Some(m.0);
                }
            }
            None => self.plain.finish(&mut self.usage),
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.settle(outcome, detail.as_deref());
        self.state = State::Done;
        rest
    }

    /// Watches one frame of data on its way to the app; returns what the
    /// app gets for it (the frame itself, unless translated).
    fn observe(&mut self, data: Bytes) -> Bytes {
        if let Some(tap) = &mut self.tap {
            tap.push(&data);
        }
        match self.events.as_mut() {
            Some(events) => {
                events.feed(Some(&data), &mut self.usage);
                if events.rewrites() {
                    return Bytes::from(std::mem::take(&mut events.out));
                }
            }
            None => self.plain.feed(&data),
        }
        data
    }

    /// The API the body is in, as the backend sent it.
    pub fn backend_api(&self) -> Api {
        self.events.as_ref().map_or(self.api, |e| e.check.api())
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match std::mem::replace(&mut self.state, State::Streaming) {
            State::Done => {
                self.state = State::Done;
                return Poll::Ready(None);
            }
            State::SendError(event) => {
                self.state = State::Flush;
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            State::Flush => {
                // The server writes out what it buffered when the body is
                // pending; an abort right away would drop the error event.
                self.state = State::Abort;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Abort => {
                self.state = State::Done;
                return Poll::Ready(Some(Err(BodyError("upstream response ended abnormally"))));
            }
            State::Streaming => {}
        }
        if let Some(closing) = self.closing.as_mut()
            && closing.as_mut().poll(cx).is_ready()
        {
            self.closing = None;
            // Says nothing about the backend: settled as cancelled.
            self.fail(
                ErrorKind::ShuttingDown,
                Outcome::Cancelled,
                "the agent is shutting down and its drain time ran out",
            );
            return self.poll(cx);
        }
        if let Some(prefix) = self.prefix.take() {
            let prefix = self.observe(prefix);
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers are not passed on (the stream state says it all).
                    return self.poll(cx);
                };
                if let Some(idle) = &mut self.idle {
                    idle.as_mut().reset(Instant::now() + self.idle_timeout);
                }
                if self.first_byte.is_none() && !data.is_empty() {
                    self.first_byte = self.attempt.as_ref().map(|a| a.started.elapsed());
                }
                if let Some(keep) = self.count_events(&data) {
                    if let Some(a) = &self.attempt {
                        a.stats
                            .faults_cut
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let passed = data.split_to(keep.min(data.len()));
                    let message = format!(
                        "the response stream was cut by an injected fault after {} chunks",
                        self.cut_after.unwrap_or(0)
                    );
                    self.fail(ErrorKind::StreamBroken, Outcome::FaultInjected, &message);
                    let passed = self.observe(passed);
                    if passed.is_empty() {
                        return self.poll(cx);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(passed))));
                }
                let mut data = match self.answer_model.as_mut() {
                    Some(m) => m.feed(&data),
                    None => data,
                };
                // A body of known length is not polled past its last byte:
                // settle now.
                let last = self.inner.is_end_stream();
                if last && let Some(rest) = self.answer_model.as_mut().and_then(|m| m.finish()) {
                    data = [data, rest].concat().into();
                }
                if data.is_empty() && !last {
                    return self.poll(cx);
                }
                let mut data = self.observe(data);
                if last && let Some(rest) = self.end() {
                    data = [data, rest].concat().into();
                }
                if data.is_empty() && !last {
                    // Events that translate to nothing (pings).
                    return self.poll(cx);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                let message = format!("the upstream response broke off: {e}");
                self.fail(ErrorKind::StreamBroken, Outcome::StreamBroken, &message);
                self.poll(cx)
            }
            Poll::Ready(None) => {
                let mut out = match self.answer_model.as_mut().and_then(|m| m.finish()) {
                    Some(rest) => self.observe(rest),
                    None => Bytes::new(),
                };
                if let Some(rest) = self.end() {
                    out = [out, rest].concat().into();
                }
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                self.poll(cx)
            }
            Poll::Pending => {
                let timeout = self.idle_timeout;
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    let message = format!(
                        "the upstream response stalled for {}",
                        humantime::format_duration(timeout)
                    );
                    self.fail(
                        ErrorKind::StreamIdleTimeout,
                        Outcome::StreamBroken,
                        &message,
                    );
                    return self.poll(cx);
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The app went away before the end.
        self.settle(Outcome::Cancelled, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested objects, strings and other values around the counts are skipped.
    #[test]
    fn reads_usage_fields_among_others() {
        let mut u = Usage::default();
        u.absorb(
            br#"{"usage": {"prompt_tokens_details": {"cached_tokens": 99, "x": [1, {"y": "}"}]},
            "service_tier": "standard \"q\" }", "prompt_tokens": 7, "completion_tokens": 3}}"#,
        );
        // OpenAI's cached tokens are part of its prompt count.
        assert_eq!(
            u,
            Usage {
                input: 7,
                output: 3,
                cache_read: 99,
                reported: true,
                ..Default::default()
            }
        );
        let mut none = Usage::default();
        none.absorb(br#"{"usage": null}"#);
        assert_eq!(none, Usage::default(), "null is no usage: unpriced");
        none.absorb(br#"{"usage": {"prompt_tokens": "#);
        assert_eq!((none.input, none.output), (0, 0));
    }

    /// Usage is read from OpenAI and Anthropic documents, streamed or not.
    #[test]
    fn reads_usage() {
        let mut u = Usage::default();
        u.absorb(br#"{"id":"x","usage":{"prompt_tokens":24,"completion_tokens":12}}"#);
        assert_eq!(
            u,
            Usage {
                input: 24,
                output: 12,
                reported: true,
                ..Default::default()
            }
        );
        // Anthropic's cache reads and writes count as input, as they do in
        // OpenAI's prompt count.
        let mut cached = Usage::default();
        cached.absorb(br#"{"usage":{"input_tokens":5,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":3}}"#);
        assert_eq!(
            cached,
            Usage {
                input: 115,
                output: 3,
                cache_read: 100,
                cache_write: 10,
                reported: true,
            }
        );
        let mut a = Usage::default();
        a.absorb(br#"{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}"#);
        a.absorb(br#"{"type":"message_delta","usage":{"output_tokens":15}}"#);
        assert_eq!(
            a,
            Usage {
                input: 25,
                output: 15,
                reported: true,
                ..Default::default()
            }
        );
    }

    /// Tokens by how they are charged: OpenAI's cached tokens come out of
    /// its prompt count; Anthropic's cache reads and writes are counted
    /// apart from its input; counts that do not add up never underflow.
    #[test]
    fn tokens_by_how_they_are_charged() {
        use shepherd_proto::cost::Tokens;
        let mut o = Usage::default();
        o.absorb(br#"{"usage":{"prompt_tokens":1000,"completion_tokens":50,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":800}}}"#);
        assert_eq!(
            o.tokens(),
            Tokens {
                input: 200,
                output: 50,
                cache_read: 800,
                cache_write: 0
            }
        );
        let mut a = Usage::default();
        a.absorb(br#"{"usage":{"input_tokens":5,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":3}}"#);
        assert_eq!(
            a.tokens(),
            Tokens {
                input: 5,
                output: 3,
                cache_read: 100,
                cache_write: 10
            }
        );
        let odd = Usage {
            input: 10,
            cache_read: 50,
            cache_write: 50,
            reported: true,
            ..Default::default()
        };
        assert_eq!(
            odd.tokens(),
            Tokens {
                input: 0,
                output: 0,
                cache_read: 10,
                cache_write: 0
            }
        );
        assert!(!Usage::default().reported);
    }

    /// SSE usage is found even when its line is split across frames.
    #[test]
    fn sse_usage_across_frames() {
        let mut events = Events::new(Api::ChatCompletions, None, false);
        let mut usage = Usage::default();
        events.feed(
            Some(b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_"),
            &mut usage,
        );
        events.feed(
            Some(b"tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n"),
            &mut usage,
        );
        events.feed(None, &mut usage);
        assert_eq!(
            usage,
            Usage {
                input: 7,
                output: 3,
                reported: true,
                ..Default::default()
            }
        );
        assert!(events.check.saw_terminal());
    }

    /// Usage asked for on the app's behalf is read, and its chunk is kept
    /// from the app; every other event passes as it was, split anywhere.
    #[test]
    fn hides_the_usage_chunk_it_asked_for() {
        let stream: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[ ],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
        let usage_chunk = b"\"choices\":[ ]";
        let expected: Vec<u8> = stream
            .split(|b| *b == b'\n')
            .filter(|l| !l.windows(usage_chunk.len()).any(|w| w == usage_chunk))
            .collect::<Vec<_>>()
            .join(&b'\n');
        // The usage event's line and its blank line went; restore the shape.
        let expected = String::from_utf8(expected)
            .unwrap()
            .replace("\n\n\n", "\n\n");
        for split in [1, 7, 50, stream.len()] {
            let mut events = Events::new(Api::ChatCompletions, None, true);
            let mut usage = Usage::default();
            let mut out = Vec::new();
            for part in stream.chunks(split) {
                events.feed(Some(part), &mut usage);
                out.append(&mut events.out);
            }
            events.feed(None, &mut usage);
            out.append(&mut events.out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split {split}");
            assert_eq!((usage.input, usage.output, usage.reported), (9, 2, true));
            assert!(events.check.saw_terminal());
            assert_eq!(events.check.verdict(), Ok(()));
        }
        // Without the ask, nothing is rewritten.
        assert!(!Events::new(Api::ChatCompletions, None, false).rewrites());
    }

    #[test]
    fn knows_the_usage_chunk() {
        use crate::api::openai::is_usage_chunk;
        assert!(is_usage_chunk(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(is_usage_chunk(br#"{"usage":{},"choices":[ ]}"#));
        assert!(!is_usage_chunk(
            br#"{"choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_usage_chunk(br#"{"choices":[],"usage":null}"#));
        assert!(!is_usage_chunk(br#"{"usage":{}}"#));
        assert!(!is_usage_chunk(b"[DONE]"));
    }
}
