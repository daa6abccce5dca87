//! The APIs apps call through the agent: one home for what each means.
//!
//! - [`Api::of_path`] decides a request's API from its path; it is the one
//!   rule the whole agent uses (the split, error shapes, answer checks,
//!   translation, shadow comparison, traces).
//! - [`openai`] and [`anthropic`]: each API family's own rules (valid
//!   answers, stream events, error shapes, credential header, paths).
//! - [`check_document`] checks a complete (non-streamed) successful answer;
//!   [`StreamCheck`] checks a server-sent event stream event by event as it
//!   passes. Either says what is wrong with an answer that is not a valid
//!   answer of its API ([`Malformed`]), and can collect the answer's text for
//!   the shadow comparison.
//! - [`Usage`] reads token counts the same way for both families.
//! - [`SseEvents`] splits a server-sent event stream into events;
//!   [`is_sse`] tells a stream from a plain answer.
//! - [`ErrorBody`] reads the `type`, `code` and `param` of an error answer
//!   (OpenAI's `{"error": {...}}`, Anthropic's `{"type": "error", "error":
//!   {...}}`, and the bare objects some OpenAI-compatible servers send).
//!
//! Everything reads with the forward-only [`crate::json::Reader`], so
//! checking a typical answer costs one pass over its bytes.

use std::borrow::Cow;

use std::sync::LazyLock;

use memchr::memmem;

use crate::json::{Bad, Reader, unescape};

pub mod anthropic;
pub mod openai;
pub mod parse;

pub use anthropic::ANTHROPIC_STOP;
pub use openai::OPENAI_FINISH;

/// The API family a request belongs to, which decides the shape of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// The header a backend of this family takes its key in, and the
    /// header's value for `key`.
    pub fn credential(self, key: &str) -> (http::HeaderName, String) {
        match self {
            Dialect::OpenAi => (openai::CREDENTIAL_HEADER, format!("Bearer {key}")),
            Dialect::Anthropic => (anthropic::CREDENTIAL_HEADER, key.to_string()),
        }
    }
}

/// The API of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions (`.../chat/completions`).
    ChatCompletions,
    /// OpenAI legacy completions (`.../completions`).
    Completions,
    /// OpenAI embeddings (`.../embeddings`).
    Embeddings,
    /// OpenAI Responses (`.../responses`); answers are not checked.
    Responses,
    /// Anthropic Messages (`.../v1/messages`).
    Messages,
    /// Anything else: model lists, files, batches, token counting.
    Other(Dialect),
}

impl Api {
    /// The API of a path (its query left off): by the API path it ends with,
    /// so base paths in front (`/openai/deployments/x/chat/completions`) do
    /// not matter.
    pub fn of_path(path: &str) -> Api {
        let p = path.strip_suffix('/').unwrap_or(path);
        if p.ends_with("/chat/completions") {
            Api::ChatCompletions
        } else if p.ends_with("/v1/messages") {
            Api::Messages
        } else if p.ends_with("/completions") {
            Api::Completions
        } else if p.ends_with("/embeddings") {
            Api::Embeddings
        } else if p.ends_with("/responses") {
            Api::Responses
        } else if p.contains("/v1/messages/") {
            Api::Other(Dialect::Anthropic)
        } else {
            Api::Other(Dialect::OpenAi)
        }
    }

    /// The dialect errors to the app take.
    pub fn dialect(self) -> Dialect {
        match self {
            Api::Messages | Api::Other(Dialect::Anthropic) => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// True for a model call (a POST to a generation or embedding API): the
    /// requests a rollout splits. Everything else goes to the baseline.
    pub fn is_inference(self, method: &http::Method) -> bool {
        method == http::Method::POST && !matches!(self, Api::Other(_))
    }

    /// The GenAI operation name (OpenTelemetry conventions).
    pub fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::Messages | Api::Responses => "chat",
            Api::Completions => "text_completion",
            Api::Embeddings => "embeddings",
            Api::Other(_) => "request",
        }
    }
}

/// Finds the `usage` key in a document or event.
pub static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// True when a response's head says it is a server-sent event stream.
pub fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Token counts read from `usage`, the same way for both API families:
/// `input` counts every prompt token, cached ones included.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// Of `input`: tokens read from the provider's prompt cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, Anthropic's
    /// `cache_read_input_tokens`).
    pub cache_read: u64,
    /// Of `input`: tokens written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`).
    pub cache_write: u64,
    /// The answer reported a `usage` object at all: one that did not is
    /// unpriced, never free.
    pub reported: bool,
}

impl Usage {
    /// The larger of each count.
    pub fn max_of(self, other: Usage) -> Usage {
        Usage {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: self.cache_read.max(other.cache_read),
            cache_write: self.cache_write.max(other.cache_write),
            reported: self.reported || other.reported,
        }
    }

    /// The tokens by how they are charged.
    pub fn tokens(&self) -> shepherd_proto::cost::Tokens {
        let cached = self.cache_read.saturating_add(self.cache_write);
        shepherd_proto::cost::Tokens {
            input: self.input.saturating_sub(cached),
            output: self.output,
            cache_read: self.cache_read.min(self.input),
            cache_write: self
                .cache_write
                .min(self.input.saturating_sub(self.cache_read)),
        }
    }

    /// Folds in the `usage` object of one JSON document (a response, or one
    /// event). It is found by its last `"usage"` key, so the rest of the
    /// document is not read (a key inside a JSON string would be escaped
    /// and cannot match), and only its top-level integer fields are.
    /// Counts only grow: Anthropic's streamed output count is cumulative.
    pub fn absorb(&mut self, json: &[u8]) {
        static USAGE: LazyLock<memmem::FinderRev<'static>> =
            LazyLock::new(|| memmem::FinderRev::new(b"\"usage\""));
        let Some(at) = USAGE.rfind(json) else {
            return;
        };
        let mut r = Reader::new(&json[at + 7..]);
        if r.peek() != Some(b':') {
            return;
        }
        let mut r = Reader::new(&json[at + 7 + r.position() + 1..]);
        // What was read before a malformed part counts.
        let _ = self.read(&mut r);
    }

    /// Reads a `usage` value at the reader (an object, or null): the first
    /// integer of `prompt_tokens`/`input_tokens` and of
    /// `completion_tokens`/`output_tokens`.
    fn read(&mut self, r: &mut Reader<'_>) -> Result<(), Bad> {
        if r.peek() != Some(b'{') {
            return r.skip();
        }
        r.open(b'{')?;
        self.reported = true;
        let (mut input, mut output) = (None, None);
        // Anthropic counts cache reads and writes apart from its input;
        // OpenAI's prompt count holds its cached tokens.
        let (mut cache_read, mut cache_write, mut cached) = (0, 0, 0);
        let mut first = true;
        while let Some(key) = r.key(&mut first)? {
            let value = match r.peek() {
                Some(b'0'..=b'9') => r.number()?,
                Some(b'{') if key == b"prompt_tokens_details" => {
                    cached = Self::cached_tokens(r)?;
                    None
                }
                _ => {
                    r.skip()?;
                    None
                }
            };
            match key {
                b"prompt_tokens" | b"input_tokens" => input = input.or(value),
                b"completion_tokens" | b"output_tokens" => output = output.or(value),
                b"cache_read_input_tokens" => cache_read = value.unwrap_or(0),
                b"cache_creation_input_tokens" => cache_write = value.unwrap_or(0),
                _ => {}
            }
            // Fold as read, so a malformed rest keeps what came before.
            let all_input = input.map(|n| n.saturating_add(cache_read).saturating_add(cache_write));
            self.input = self.input.max(all_input.unwrap_or(0));
            self.output = self.output.max(output.unwrap_or(0));
            self.cache_read = self.cache_read.max(cache_read.saturating_add(cached));
            self.cache_write = self.cache_write.max(cache_write);
        }
        Ok(())
    }

    /// `cached_tokens` of OpenAI's `prompt_tokens_details` object.
    fn cached_tokens(r: &mut Reader<'_>) -> Result<u64, Bad> {
        r.open(b'{')?;
        let mut cached = 0;
        let mut first = true;
        while let Some(key) = r.key(&mut first)? {
            match (key, r.peek()) {
                (b"cached_tokens", Some(b'0'..=b'9')) => cached = r.number()?.unwrap_or(0),
                _ => r.skip()?,
            }
        }
        Ok(cached)
    }
}

/// Why a successful answer is not a valid answer of its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

fn known(
    value: Option<&[u8]>,
    allowed: &[&str],
    field: &dyn std::fmt::Display,
) -> Result<(), Malformed> {
    match value {
        Some(v) if allowed.iter().any(|a| a.as_bytes() == v) => Ok(()),
        Some(v) => Err(malformed(format!(
            "{field}: unknown value {:?}",
            shepherd_proto::validate::clip(&String::from_utf8_lossy(v))
        ))),
        None => Err(malformed(format!("{field}: required"))),
    }
}

impl From<Bad> for Malformed {
    fn from(bad: Bad) -> Self {
        Malformed(bad.to_string())
    }
}

/// Adds a string's text to the collected text, when collecting.
fn add_text(text: &mut Option<&mut String>, raw: &[u8]) {
    if let Some(t) = text.as_deref_mut()
        && let Some(s) = unescape(raw)
    {
        t.push_str(&s);
    }
}

/// What a field holds, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held<'a> {
    Absent,
    Null,
    Text(&'a [u8]),
    List,
    Other,
}

impl<'a> Held<'a> {
    /// Reads a value, keeping a string's raw bytes.
    fn read(r: &mut Reader<'a>) -> Result<Self, Bad> {
        Ok(match r.peek() {
            Some(b'"') => Held::Text(r.str()?),
            Some(b'n') if r.null()? => Held::Null,
            Some(b'[') => {
                r.skip()?;
                Held::List
            }
            _ => {
                r.skip()?;
                Held::Other
            }
        })
    }

    /// Present and not null.
    fn is_set(self) -> bool {
        !matches!(self, Held::Absent | Held::Null)
    }

    fn text(self) -> Option<&'a [u8]> {
        match self {
            Held::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Enters the object a document must be.
fn document(r: &mut Reader<'_>, what: &str) -> Result<(), Malformed> {
    if r.peek() != Some(b'{') {
        return Err(malformed(format!("{what}: not a JSON object")));
    }
    r.open(b'{')?;
    Ok(())
}

/// Reads a list field, each item with `each`; it must not be empty unless
/// `empty_ok`. Returns how many items it held.
fn list<'a>(
    r: &mut Reader<'a>,
    field: &str,
    empty_ok: bool,
    mut each: impl FnMut(&mut Reader<'a>, usize) -> Result<(), Malformed>,
) -> Result<usize, Malformed> {
    let rule = || {
        malformed(if empty_ok {
            format!("{field}: must be a list")
        } else {
            format!("{field}: must be a non-empty list")
        })
    };
    if r.peek() != Some(b'[') {
        return Err(rule());
    }
    r.open(b'[')?;
    let mut first = true;
    let mut n = 0;
    while r.item(&mut first)? {
        each(r, n)?;
        n += 1;
    }
    if n == 0 && !empty_ok {
        return Err(rule());
    }
    Ok(n)
}

/// Enters an item that must be an object.
fn item_object(r: &mut Reader<'_>, at: &dyn std::fmt::Display) -> Result<(), Malformed> {
    if r.peek() != Some(b'{') {
        return Err(malformed(format!("{at}: must be an object")));
    }
    r.open(b'{')?;
    Ok(())
}

/// Why the body of a model call cannot be sent on: it is not one JSON
/// object, or its `stream` is not a boolean (null, which the providers read
/// as absent, passes). Read once, values skipped, nothing kept.
pub fn check_request(body: &[u8]) -> Result<(), String> {
    let bad = |b: Bad| format!("the request body is {b}");
    let mut r = Reader::new(body);
    if r.peek() != Some(b'{') {
        return Err("the request body must be a JSON object".into());
    }
    r.open(b'{').map_err(bad)?;
    let mut first = true;
    while let Some(key) = r.key(&mut first).map_err(bad)? {
        if key == b"stream" && !matches!(r.peek(), Some(b't' | b'f' | b'n')) {
            return Err("stream: must be a boolean (true or false)".into());
        }
        r.skip().map_err(bad)?;
    }
    r.done().map_err(bad)
}

/// Checks a complete successful answer of `api`, reading its `usage` on
/// the way (one pass); with `text`, collects the answer's text into it.
pub fn check_document(
    api: Api,
    body: &[u8],
    text: Option<&mut String>,
    usage: &mut Usage,
) -> Result<(), Malformed> {
    let mut r = Reader::new(body);
    let mut read = Read { text, usage };
    match api {
        Api::ChatCompletions => openai::chat_completion(&mut r, &mut read)?,
        Api::Completions => openai::completion(&mut r, &mut read)?,
        Api::Embeddings => openai::embeddings(&mut r, &mut read)?,
        Api::Messages => anthropic::message(&mut r, &mut read, None)?,
        Api::Responses | Api::Other(_) => {
            read.usage.absorb(body);
            return Ok(());
        }
    }
    r.done()?;
    Ok(())
}

/// Checks a successful Anthropic answer as [`check_document`] does and
/// reads it into its plain type in the same pass, with its usage.
pub fn read_message<'a>(
    body: &'a [u8],
    usage: &mut Usage,
) -> Result<anthropic::messages::Answer<'a>, Malformed> {
    let mut r = Reader::new(body);
    let mut answer = anthropic::messages::Answer::default();
    let mut read = Read { text: None, usage };
    anthropic::message(&mut r, &mut read, Some(&mut answer))?;
    r.done()?;
    Ok(answer)
}

/// What a check collects as it reads: the text (when asked) and the usage.
struct Read<'t, 'u> {
    text: Option<&'t mut String>,
    usage: &'u mut Usage,
}

impl Read<'_, '_> {
    fn text(&mut self, raw: &[u8]) {
        add_text(&mut self.text, raw);
    }

    /// A top-level key no check looks at: `usage` is read, the rest
    /// skipped.
    fn other(&mut self, r: &mut Reader<'_>, key: &[u8]) -> Result<(), Bad> {
        if key == b"usage" {
            self.usage.read(r)
        } else {
            r.skip()
        }
    }
}

/// `choices[i]` in messages, built only when one is due.
struct At(&'static str, usize, &'static str);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]{}", self.0, self.1, self.2)
    }
}

/// Checks a server-sent event stream event by event: every event is JSON of
/// its API's shape, a finish (stop) reason arrives and is known, and the
/// stream ends with its final event (`data: [DONE]`, Anthropic's
/// `message_stop`, or the Responses API's `response.completed`).
#[derive(Debug)]
pub struct StreamCheck {
    api: Api,
    /// The first problem found; later events are not checked.
    problem: Option<Malformed>,
    started: bool,
    finished: bool,
    terminal: bool,
    events: u32,
}

impl StreamCheck {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            problem: None,
            started: false,
            finished: false,
            terminal: false,
            events: 0,
        }
    }

    /// The API whose events this checks.
    pub fn api(&self) -> Api {
        self.api
    }

    /// True once the stream's final event has passed.
    pub fn saw_terminal(&self) -> bool {
        self.terminal
    }

    /// One complete event: its `event:` name (if any) and its data (the
    /// `data:` lines joined). With `text`, collects the answer's text.
    pub fn event(&mut self, name: Option<&[u8]>, data: &[u8], text: Option<&mut String>) {
        let i = self.events;
        self.events = self.events.saturating_add(1);
        if data == b"[DONE]" {
            self.terminal = true;
            return;
        }
        if matches!(
            name,
            Some(b"message_stop" | b"response.completed" | b"response.incomplete")
        ) {
            self.terminal = true;
        }
        if self.problem.is_some() || data.is_empty() {
            return;
        }
        if let Err(problem) = self.check(i, name, data, text) {
            self.problem = Some(problem);
        }
    }

    fn check(
        &mut self,
        i: u32,
        name: Option<&[u8]>,
        data: &[u8],
        mut text: Option<&mut String>,
    ) -> Result<(), Malformed> {
        let mut r = Reader::new(data);
        let located = |m: Malformed| Malformed(format!("event {i}: {}", m.0));
        match self.api {
            Api::ChatCompletions | Api::Completions => {
                openai::chunk(self, &mut r, &mut text).map_err(located)?;
            }
            Api::Messages => anthropic::event_of(self, &mut r, name, &mut text).map_err(located)?,
            Api::Embeddings | Api::Responses | Api::Other(_) => return Ok(()),
        }
        r.done().map_err(|b| located(b.into()))
    }

    /// The verdict on a stream that ended with its final event.
    pub fn verdict(&self) -> Result<(), Malformed> {
        if let Some(p) = &self.problem {
            return Err(p.clone());
        }
        match self.api {
            Api::ChatCompletions | Api::Completions if !self.finished => {
                Err(malformed("no event gave a finish_reason"))
            }
            Api::Messages if !self.started => Err(malformed("no message_start event")),
            Api::Messages if !self.finished => Err(malformed("no stop_reason")),
            _ => Ok(()),
        }
    }
}

/// Splits a server-sent event stream into events as its bytes arrive, across
/// frames: each event's name and its data lines joined with '\n'.
#[derive(Debug, Default)]
pub struct SseEvents {
    /// The incomplete last line of the bytes so far.
    partial: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

/// Longest line kept across frames; a longer line is dropped (its event
/// reads as broken).
const MAX_LINE: usize = 4 << 20;

impl SseEvents {
    /// Feeds bytes; calls `on_event(name, data)` for each event completed.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(Option<&[u8]>, &[u8])) {
        let mut rest = bytes;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if self.partial.is_empty() {
                self.line(piece, &mut on_event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                if line.len() + piece.len() <= MAX_LINE {
                    line.extend_from_slice(piece);
                }
                self.line(&line, &mut on_event);
                line.clear();
                self.partial = line;
            }
        }
        if !rest.is_empty() && self.partial.len() + rest.len() <= MAX_LINE {
            self.partial.extend_from_slice(rest);
        }
    }

    /// The stream ended: an event not yet closed by a blank line counts.
    pub fn finish(&mut self, mut on_event: impl FnMut(Option<&[u8]>, &[u8])) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, &mut on_event);
        }
        self.dispatch(&mut on_event);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Option<&[u8]>, &[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[..0]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Option<&[u8]>, &[u8])) {
        if self.has_data || !self.name.is_empty() {
            let name = (!self.name.is_empty()).then_some(self.name.as_slice());
            on_event(name, &self.data);
        }
        self.name.clear();
        self.data.clear();
        self.has_data = false;
    }
}

/// A string's text, or a number as written; other values read as none.
fn scalar(r: &mut Reader<'_>, body: &[u8]) -> Result<Option<String>, Bad> {
    match r.peek() {
        Some(b'"') => Ok(unescape(r.str()?).map(Cow::into_owned)),
        Some(b'-' | b'0'..=b'9') => {
            let start = r.position();
            r.number()?;
            Ok(std::str::from_utf8(&body[start..r.position()])
                .ok()
                .map(str::to_string))
        }
        _ => r.skip().map(|()| None),
    }
}

/// What an error answer says of itself: its `error` object (or the body's
/// own fields when there is none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error.type` (OpenAI: `invalid_request_error`; Anthropic:
    /// `authentication_error`, `billing_error`, ...).
    pub kind: Option<String>,
    /// `error.code` (OpenAI: `model_not_found`, `insufficient_quota`, ...);
    /// a number is kept as text.
    pub code: Option<String>,
    /// `error.param`: the request field the error is about.
    pub param: Option<String>,
    /// `error.message`, lowercased, for the rules that read it. Never
    /// reported anywhere: messages can quote parts of keys.
    pub message: Option<String>,
    /// `error.message` as written, for an error translated into another
    /// API's shape (the app gets the backend's message either way).
    pub text: Option<String>,
}

impl ErrorBody {
    /// Reads an error body; anything that is not such JSON reads as empty.
    pub fn parse(body: &[u8]) -> ErrorBody {
        let mut r = Reader::new(body);
        Self::read(&mut r, body, true).unwrap_or_default()
    }

    /// The fields of an error object: its nested `error` object's when it
    /// has one (or its `error` string as the message), else its own.
    fn read(r: &mut Reader<'_>, body: &[u8], top: bool) -> Result<ErrorBody, Bad> {
        r.open(b'{')?;
        let mut own = ErrorBody::default();
        let mut nested = None;
        let mut first = true;
        while let Some(key) = r.key(&mut first)? {
            match key {
                b"error" if top && r.peek() == Some(b'{') => {
                    nested = Some(Self::read(r, body, false)?);
                }
                b"error" if top => own.message = own.message.or(scalar(r, body)?),
                b"type" => own.kind = scalar(r, body)?,
                b"code" => own.code = scalar(r, body)?,
                b"param" => own.param = scalar(r, body)?,
                b"message" => own.message = scalar(r, body)?,
                _ => r.skip()?,
            }
        }
        let mut fields = nested.unwrap_or(own);
        if top {
            fields.text = fields.message.clone();
            fields.message = fields.message.map(|m| m.to_lowercase());
        }
        Ok(fields)
    }

    /// The error's short name for reports: its code, else its type, as
    /// letters, digits, '_', '-' and '.', at most 64 of them. Never the
    /// message.
    pub fn name(&self) -> Option<String> {
        let raw = self
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .or(self.kind.as_deref())?;
        let clean: String = raw
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(64)
            .collect();
        (!clean.is_empty()).then_some(clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model call's body: one JSON object whose top-level `stream`, if
    /// any, is a boolean or null; a nested `stream` is the app's business.
    #[test]
    fn request_bodies() {
        for ok in [
            r#"{"model":"m"}"#,
            " \n{\"stream\": true}\n",
            r#"{"stream":false,"messages":[{"stream":"x"}]}"#,
            r#"{"stream":null}"#,
        ] {
            assert_eq!(check_request(ok.as_bytes()), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "must be a JSON object"),
            ("null", "must be a JSON object"),
            (r#"{"stream":"true"}"#, "stream: must be a boolean"),
            (r#"{"stream":0}"#, "stream: must be a boolean"),
            (r#"{"stream":tru}"#, "not valid JSON"),
            (r#"{"a":1,}"#, "not valid JSON at byte 7"),
            (r#"{"a":1}{}"#, "not valid JSON at byte 7"),
        ] {
            let e = check_request(bad.as_bytes()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// One rule decides a path's API, with or without a base path in front.
    #[test]
    fn apis_by_path() {
        assert_eq!(Api::of_path("/v1/chat/completions"), Api::ChatCompletions);
        assert_eq!(
            Api::of_path("/openai/deployments/x/chat/completions"),
            Api::ChatCompletions
        );
        assert_eq!(Api::of_path("/v1/completions"), Api::Completions);
        assert_eq!(Api::of_path("/v1/embeddings"), Api::Embeddings);
        assert_eq!(Api::of_path("/v1/responses"), Api::Responses);
        assert_eq!(Api::of_path("/v1/messages"), Api::Messages);
        assert_eq!(Api::of_path("/anthropic/v1/messages/"), Api::Messages);
        assert_eq!(
            Api::of_path("/v1/messages/count_tokens"),
            Api::Other(Dialect::Anthropic)
        );
        // OpenAI's threads have messages too; they are not Anthropic's API.
        assert_eq!(
            Api::of_path("/v1/threads/t1/messages"),
            Api::Other(Dialect::OpenAi)
        );
        assert_eq!(Api::of_path("/v1/models"), Api::Other(Dialect::OpenAi));
        assert_eq!(Api::Messages.dialect(), Dialect::Anthropic);
        assert!(Api::ChatCompletions.is_inference(&http::Method::POST));
        assert!(!Api::ChatCompletions.is_inference(&http::Method::GET));
        assert!(!Api::of_path("/v1/models/gpt-4o").is_inference(&http::Method::POST));
    }

    const CHAT: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"there\""},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2}}"#;

    fn check(api: Api, body: &str) -> Result<String, String> {
        let mut text = String::new();
        check_document(api, body.as_bytes(), Some(&mut text), &mut Usage::default())
            .map(|()| text)
            .map_err(|m| m.0)
    }

    /// A valid chat completion passes with its text; each broken rule is
    /// named.
    #[test]
    fn checks_chat_completions() {
        assert_eq!(
            check(Api::ChatCompletions, CHAT).unwrap(),
            "Hello \"there\""
        );
        let tools = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"t"}]},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(check(Api::ChatCompletions, tools).unwrap(), "");
        for (body, why) in [
            (r#"{"choices":[]}"#, "choices: must be a non-empty list"),
            (r#"{"choices":"x"}"#, "choices: must be a non-empty list"),
            (r#"{"choices":[1]}"#, "choices[0]: must be an object"),
            ("{", "not valid JSON at byte 1: expected"),
            (
                r#"{"choices":[{"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]} trailing"#,
                "not valid JSON at byte",
            ),
            (r#"{"id":"x"}"#, "choices: must be a non-empty list"),
            ("<html>", "answer: not a JSON object"),
            ("[1]", "answer: not a JSON object"),
            (
                r#"{"choices":[{"finish_reason":"stop"}]}"#,
                "choices[0].message: required",
            ),
            (
                r#"{"choices":[{"message":{"role":"user","content":"x"},"finish_reason":"stop"}]}"#,
                "role: must be",
            ),
            (
                r#"{"choices":[{"message":{"role":"assistant"},"finish_reason":"stop"}]}"#,
                "content: must be text",
            ),
            (
                &CHAT.replace("\"stop\"", "\"exploded\""),
                "choices[0].finish_reason: unknown value \"exploded\"",
            ),
            (
                &CHAT.replace(",\"finish_reason\":\"stop\"", ""),
                "choices[0].finish_reason: required",
            ),
        ] {
            let e = check(Api::ChatCompletions, body).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    /// Anthropic messages, legacy completions and embeddings have their own
    /// required fields; other APIs are not checked.
    #[test]
    fn checks_other_apis() {
        let msg = r#"{"type":"message","role":"assistant","content":[{"type":"text","text":"Yes"},{"type":"tool_use","id":"t"}],"stop_reason":"end_turn"}"#;
        assert_eq!(check(Api::Messages, msg).unwrap(), "Yes");
        for (body, why) in [
            (
                r#"{"type":"message","role":"assistant","content":[],"stop_reason":"end_turn"}"#,
                "content: must be a non-empty list",
            ),
            (
                r#"{"type":"message","role":"assistant","content":[{"type":"text"}],"stop_reason":"end_turn"}"#,
                "content[0].text: required",
            ),
            (
                &msg.replace("end_turn", "boom"),
                "stop_reason: unknown value",
            ),
            (r#"{"type":"error"}"#, "type: must be \"message\""),
        ] {
            let e = check(Api::Messages, body).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
        let completion = r#"{"choices":[{"text":"hi","finish_reason":"length"}]}"#;
        assert_eq!(check(Api::Completions, completion).unwrap(), "hi");
        assert!(
            check(
                Api::Completions,
                r#"{"choices":[{"finish_reason":"stop"}]}"#
            )
            .is_err()
        );
        let emb = r#"{"data":[{"embedding":[0.1,0.2]},{"embedding":"AAAA"}]}"#;
        assert!(check(Api::Embeddings, emb).is_ok());
        assert!(check(Api::Embeddings, r#"{"data":[{}]}"#).is_err());
        assert!(check(Api::Embeddings, r#"{"data":[]}"#).is_err());
        assert!(check(Api::Other(Dialect::OpenAi), "not json").is_ok());
        assert!(check(Api::Responses, "{}").is_ok());
    }

    fn stream(api: Api, body: &str) -> (Result<(), Malformed>, bool, String) {
        let mut events = SseEvents::default();
        let mut check = StreamCheck::new(api);
        let mut text = String::new();
        // Fed in small pieces: events and lines cross frames.
        for piece in body.as_bytes().chunks(7) {
            events.feed(piece, |name, data| check.event(name, data, Some(&mut text)));
        }
        events.finish(|name, data| check.event(name, data, Some(&mut text)));
        (check.verdict(), check.saw_terminal(), text)
    }

    /// OpenAI streams need chunks with choices, a known finish reason and
    /// [DONE]; the usage chunk has no choices and is fine.
    #[test]
    fn checks_openai_streams() {
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
                 : a comment\n\n\
                 data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" you\"},\"finish_reason\":\"stop\"}]}\r\n\r\n\
                 data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n\
                 data: [DONE]\n\n";
        let (verdict, terminal, text) = stream(Api::ChatCompletions, s);
        assert_eq!(verdict, Ok(()));
        assert!(terminal);
        assert_eq!(text, "Hi you");
        let (verdict, terminal, _) = stream(Api::ChatCompletions, &s.replace("\"stop\"", "null"));
        assert!(terminal);
        assert!(
            verdict
                .unwrap_err()
                .0
                .contains("no event gave a finish_reason")
        );
        let (verdict, _, _) = stream(Api::ChatCompletions, &s.replace("\"stop\"", "\"nope\""));
        assert!(
            verdict
                .unwrap_err()
                .0
                .contains("event 1: finish_reason: unknown")
        );
        let (verdict, _, _) = stream(
            Api::ChatCompletions,
            &s.replace("{\"choices\":[]", "{\"x\":[]"),
        );
        assert!(verdict.unwrap_err().0.contains("choices: must be a list"));
        let (_, terminal, _) = stream(Api::ChatCompletions, &s.replace("data: [DONE]\n\n", ""));
        assert!(!terminal);
        // A [DONE] with no blank line after it still ends the stream.
        let (_, terminal, _) = stream(Api::ChatCompletions, s.trim_end());
        assert!(terminal);
    }

    /// Anthropic streams run from message_start to message_stop with a known
    /// stop reason.
    #[test]
    fn checks_anthropic_streams() {
        let s = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9}}}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hey\"}}\n\n\
                 event: ping\ndata: {\"type\":\"ping\"}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n\
                 event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (verdict, terminal, text) = stream(Api::Messages, s);
        assert_eq!((verdict, terminal, text.as_str()), (Ok(()), true, "Hey"));
        let (verdict, _, _) = stream(Api::Messages, &s.replace("end_turn", "weird"));
        assert!(verdict.unwrap_err().0.contains("stop_reason: unknown"));
        let (_, terminal, _) = stream(Api::Messages, &s.replace("message_stop", "ping"));
        assert!(!terminal);
        let no_start = s.replace("message_start", "ping");
        assert!(
            stream(Api::Messages, &no_start)
                .0
                .unwrap_err()
                .0
                .contains("message_start")
        );
    }

    /// Error bodies of either API, and bare ones, give their type, code and
    /// param; the short name never comes from the message.
    #[test]
    fn reads_error_bodies() {
        let openai = ErrorBody::parse(
            br#"{"error":{"message":"Incorrect API key provided: sk-abc***","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(openai.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(openai.param, None);
        assert_eq!(openai.name().as_deref(), Some("invalid_api_key"));
        assert!(openai.message.unwrap().contains("incorrect api key"));
        let anthropic = ErrorBody::parse(
            br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#,
        );
        assert_eq!(anthropic.name().as_deref(), Some("not_found_error"));
        let vllm = ErrorBody::parse(
            br#"{"object":"error","message":"The model x does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        );
        assert_eq!(vllm.code.as_deref(), Some("404"));
        assert_eq!(vllm.kind.as_deref(), Some("NotFoundError"));
        assert_eq!(
            ErrorBody::parse(b"<html>bad gateway</html>"),
            ErrorBody::default()
        );
        let odd = ErrorBody::parse(br#"{"error":{"code":"a b\"<c>"}}"#);
        assert_eq!(odd.name().as_deref(), Some("abc"));
    }
}
