//! The APIs apps call through the agent, and what a valid answer of each
//! looks like.
//!
//! - [`Api::of`] decides a request's API from its method and path; it is the
//!   one rule the whole agent uses (the split, error shapes, answer checks,
//!   shadow comparison, traces).
//! - [`check_document`] checks a complete (non-streamed) successful answer;
//!   [`StreamCheck`] checks a server-sent event stream event by event as it
//!   passes. Either says what is wrong with an answer that is not a valid
//!   answer of its API ([`Malformed`]), and can collect the answer's text for
//!   the shadow comparison.
//! - [`ErrorBody`] reads the `type`, `code` and `param` of an error answer
//!   (OpenAI's `{"error": {...}}`, Anthropic's `{"type": "error", "error":
//!   {...}}`, and the bare objects some OpenAI-compatible servers send).
//!
//! The checks parse with borrowed serde structs that skip what they do not
//! look at, so checking a typical answer costs one pass over its bytes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The API family a request belongs to, which decides the shape of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
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

/// Finish reasons of OpenAI answers: the values the official SDKs' types
/// allow.
pub const OPENAI_FINISH: [&str; 5] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
];
/// Finish reasons of legacy completions.
const COMPLETION_FINISH: [&str; 3] = ["stop", "length", "content_filter"];
/// Stop reasons of Anthropic messages.
pub const ANTHROPIC_STOP: [&str; 7] = [
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
];

fn known(value: Option<&str>, allowed: &[&str], field: &str) -> Result<(), Malformed> {
    match value {
        Some(v) if allowed.contains(&v) => Ok(()),
        Some(v) => Err(malformed(format!(
            "{field}: unknown value {:?}",
            shepherd_proto::validate::clip(v)
        ))),
        None => Err(malformed(format!("{field}: required"))),
    }
}

/// A JSON string's text (escapes decoded).
fn text_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
}

/// Adds a JSON string's text to the collected text, when collecting.
fn add_text(text: Option<&mut String>, raw: &RawValue) {
    if let (Some(t), Some(s)) = (text, text_of(raw)) {
        t.push_str(&s);
    }
}

fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

fn is_array(raw: &RawValue) -> bool {
    raw.get().starts_with('[')
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Malformed> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| body[i]) != Some(b'{') {
        return Err(malformed(format!("{what}: not a JSON object")));
    }
    serde_json::from_slice(body).map_err(|e| malformed(format!("{what}: not valid JSON ({e})")))
}

/// A document with the one list field a check starts from (`choices`,
/// `data` or `content`), read raw so a wrong type gets a clear message.
#[derive(Deserialize)]
struct Listing<'a> {
    #[serde(borrow)]
    choices: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// The items of a required, non-empty list field.
fn items<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    field: &str,
) -> Result<Vec<T>, Malformed> {
    let rule = || malformed(format!("{field}: must be a non-empty list"));
    let raw = raw.filter(|r| is_array(r)).ok_or_else(rule)?;
    let items: Vec<T> = serde_json::from_str(raw.get())
        .map_err(|e| malformed(format!("{field}: not valid ({e})")))?;
    if items.is_empty() {
        return Err(rule());
    }
    Ok(items)
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow)]
    message: Option<ChatMessage<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Embedding<'a> {
    #[serde(borrow)]
    embedding: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// Checks a complete successful answer of `api`; with `text`, collects the
/// answer's text into it.
pub fn check_document(
    api: Api,
    body: &[u8],
    mut text: Option<&mut String>,
) -> Result<(), Malformed> {
    let mut add = |raw: &RawValue| add_text(text.as_deref_mut(), raw);
    match api {
        Api::ChatCompletions => {
            let doc: Listing<'_> = parse(body, "answer")?;
            let choices: Vec<ChatChoice<'_>> = items(doc.choices, "choices")?;
            for (i, c) in choices.iter().enumerate() {
                let m = c
                    .message
                    .as_ref()
                    .ok_or_else(|| malformed(format!("choices[{i}].message: required")))?;
                if m.role.as_deref() != Some("assistant") {
                    return Err(malformed(format!(
                        "choices[{i}].message.role: must be \"assistant\""
                    )));
                }
                match m.content {
                    Some(raw) if is_string(raw) => add(raw),
                    None if m.tool_calls.is_some_and(is_array)
                        || m.function_call.is_some()
                        || m.refusal.is_some()
                        || m.audio.is_some() => {}
                    _ => {
                        return Err(malformed(format!(
                            "choices[{i}].message.content: must be text (or null with tool_calls)"
                        )));
                    }
                }
                known(
                    c.finish_reason.as_deref(),
                    &OPENAI_FINISH,
                    &format!("choices[{i}].finish_reason"),
                )?;
            }
            Ok(())
        }
        Api::Completions => {
            let doc: Listing<'_> = parse(body, "answer")?;
            let choices: Vec<CompletionChoice<'_>> = items(doc.choices, "choices")?;
            for (i, c) in choices.iter().enumerate() {
                match c.text {
                    Some(raw) if is_string(raw) => add(raw),
                    _ => return Err(malformed(format!("choices[{i}].text: must be text"))),
                }
                known(
                    c.finish_reason.as_deref(),
                    &COMPLETION_FINISH,
                    &format!("choices[{i}].finish_reason"),
                )?;
            }
            Ok(())
        }
        Api::Embeddings => {
            let doc: Listing<'_> = parse(body, "answer")?;
            let data: Vec<Embedding<'_>> = items(doc.data, "data")?;
            for (i, e) in data.iter().enumerate() {
                if !e.embedding.is_some_and(|r| is_array(r) || is_string(r)) {
                    return Err(malformed(format!(
                        "data[{i}].embedding: must be a list of numbers (or base64)"
                    )));
                }
            }
            Ok(())
        }
        Api::Messages => {
            let doc: Listing<'_> = parse(body, "answer")?;
            if doc.kind.as_deref() != Some("message") {
                return Err(malformed("type: must be \"message\""));
            }
            if doc.role.as_deref() != Some("assistant") {
                return Err(malformed("role: must be \"assistant\""));
            }
            let content: Vec<Block<'_>> = items(doc.content, "content")?;
            for (i, block) in content.iter().enumerate() {
                match block.kind.as_deref() {
                    Some("text") => match block.text {
                        Some(raw) if is_string(raw) => add(raw),
                        _ => return Err(malformed(format!("content[{i}].text: required"))),
                    },
                    Some(_) => {}
                    None => return Err(malformed(format!("content[{i}].type: required"))),
                }
            }
            known(doc.stop_reason.as_deref(), &ANTHROPIC_STOP, "stop_reason")
        }
        Api::Responses | Api::Other(_) => Ok(()),
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    delta: Option<EventDelta<'a>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
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
        let mut add = |raw: &RawValue| add_text(text.as_deref_mut(), raw);
        let what = format!("event {i}");
        match self.api {
            Api::ChatCompletions | Api::Completions => {
                let chunk: Chunk<'_> = parse(data, &what)?;
                if chunk.error.is_some() {
                    return Err(malformed(format!("{what}: an error in the stream")));
                }
                let choices = chunk
                    .choices
                    .ok_or_else(|| malformed(format!("{what}: choices: must be a list")))?;
                self.started = true;
                let allowed: &[&str] = if self.api == Api::Completions {
                    &COMPLETION_FINISH
                } else {
                    &OPENAI_FINISH
                };
                for c in &choices {
                    if let Some(d) = &c.delta
                        && let Some(raw) = d.content.filter(|r| is_string(r))
                    {
                        add(raw);
                    }
                    if let Some(raw) = c.text.filter(|r| is_string(r)) {
                        add(raw);
                    }
                    if let Some(r) = &c.finish_reason {
                        known(Some(r), allowed, &format!("{what}: finish_reason"))?;
                        self.finished = true;
                    }
                }
                Ok(())
            }
            Api::Messages => {
                let event: Event<'_> = parse(data, &what)?;
                let kind = event
                    .kind
                    .as_deref()
                    .map(str::as_bytes)
                    .or(name)
                    .unwrap_or_default();
                match kind {
                    b"message_start" => self.started = true,
                    b"content_block_delta" => {
                        if let Some(raw) = event.delta.as_ref().and_then(|d| d.text) {
                            add(raw);
                        }
                    }
                    b"message_delta" => {
                        if let Some(r) = event.delta.as_ref().and_then(|d| d.stop_reason.as_deref())
                        {
                            known(Some(r), &ANTHROPIC_STOP, &format!("{what}: stop_reason"))?;
                            self.finished = true;
                        }
                    }
                    b"message_stop" => self.terminal = true,
                    b"error" => return Err(malformed(format!("{what}: an error in the stream"))),
                    _ => {}
                }
                Ok(())
            }
            Api::Embeddings | Api::Responses | Api::Other(_) => Ok(()),
        }
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

#[derive(Deserialize)]
struct ErrorFields<'a> {
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    param: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
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
}

impl ErrorBody {
    /// Reads an error body; anything that is not such JSON reads as empty.
    pub fn parse(body: &[u8]) -> ErrorBody {
        let Ok(top) = serde_json::from_slice::<ErrorFields<'_>>(body) else {
            return ErrorBody::default();
        };
        let scalar = |raw: Option<&RawValue>| -> Option<String> {
            let raw = raw?;
            if is_string(raw) {
                text_of(raw).map(Cow::into_owned)
            } else if raw
                .get()
                .starts_with(|c: char| c.is_ascii_digit() || c == '-')
            {
                Some(raw.get().to_string())
            } else {
                None
            }
        };
        let nested = top
            .error
            .filter(|e| e.get().starts_with('{'))
            .and_then(|e| serde_json::from_str::<ErrorFields<'_>>(e.get()).ok());
        match nested {
            Some(e) => ErrorBody {
                kind: scalar(e.kind),
                code: scalar(e.code),
                param: scalar(e.param),
                message: scalar(e.message).map(|m| m.to_lowercase()),
            },
            // `{"error": "text"}`, or the fields at the top.
            None => ErrorBody {
                kind: scalar(top.kind),
                code: scalar(top.code),
                param: scalar(top.param),
                message: scalar(top.message)
                    .or_else(|| scalar(top.error))
                    .map(|m| m.to_lowercase()),
            },
        }
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
        check_document(api, body.as_bytes(), Some(&mut text))
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
            (r#"{"choices":[1]}"#, "choices: not valid"),
            ("{", "answer: not valid JSON"),
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
