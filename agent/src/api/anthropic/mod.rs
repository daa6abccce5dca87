//! Anthropic's Messages API: what a valid answer looks like, how errors
//! are shaped, how a key is sent and which version is asked for.

use bytes::Bytes;
use http::HeaderName;

pub mod messages;

use super::{
    At, Held, Malformed, Read, StreamCheck, add_text, document, item_object, known, list, malformed,
};
use crate::api::parse::{Raw, Str};
use crate::json::Reader;

/// The header an Anthropic key goes in (the key as it is).
pub const CREDENTIAL_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The header naming the API version a request is written for.
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// The version sent when a backend names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// The Messages path, as the agent sends translated requests.
pub const MESSAGES_PATH: &str = "/v1/messages";

/// An error body in Anthropic's shape: `{"type": "error", "error":
/// {"type", "message"}}`.
pub fn error_body(kind: &str, message: &str) -> Bytes {
    let value = serde_json::json!({
        "type": "error",
        "error": {"type": kind, "message": message},
    });
    Bytes::from(value.to_string())
}

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

/// Checks a message answer (reading its usage, and its text when asked);
/// with `into`, reads it into its plain type in the same pass, for its
/// translation.
pub(super) fn message<'a>(
    r: &mut Reader<'a>,
    read: &mut Read<'_, '_>,
    mut into: Option<&mut messages::Answer<'a>>,
) -> Result<(), Malformed> {
    document(r, "answer")?;
    let mut first = true;
    let (mut kind, mut role, mut stop) = (Held::Absent, Held::Absent, Held::Absent);
    let mut content = 0;
    while let Some(key) = r.key(&mut first)? {
        match (key, into.as_deref_mut()) {
            (b"type", _) => kind = Held::read(r)?,
            (b"role", _) => role = Held::read(r)?,
            (b"stop_reason", _) => stop = Held::read(r)?,
            (b"content", mut into) => {
                content = list(r, "content", false, |r, i| {
                    content_block(r, i, &mut read.text, into.as_deref_mut())
                })?;
            }
            (b"id", Some(a)) => a.id = text_of(Held::read(r)?),
            (b"model", Some(a)) => a.model = text_of(Held::read(r)?),
            (b"stop_sequence", Some(a)) => a.stop_sequence = text_of(Held::read(r)?),
            (b"usage", Some(a)) => {
                let tokens = messages::Tokens::read(r).map_err(|e| malformed(e.to_string()))?;
                *read.usage = (*read.usage).max_of(tokens.into());
                a.usage = Some(tokens);
            }
            _ => read.other(r, key)?,
        }
    }
    if kind.text() != Some(b"message") {
        return Err(malformed("type: must be \"message\""));
    }
    if role.text() != Some(b"assistant") {
        return Err(malformed("role: must be \"assistant\""));
    }
    if content == 0 {
        return Err(malformed("content: must be a non-empty list"));
    }
    known(stop.text(), &ANTHROPIC_STOP, &"stop_reason")?;
    if let Some(a) = into {
        a.stop_reason = text_of(stop);
    }
    Ok(())
}

/// A string's raw text, as the plain types hold it.
fn text_of(held: Held<'_>) -> Option<Str<'_>> {
    held.text().map(Str::borrowed)
}

fn content_block<'a>(
    r: &mut Reader<'a>,
    i: usize,
    text: &mut Option<&mut String>,
    into: Option<&mut messages::Answer<'a>>,
) -> Result<(), Malformed> {
    item_object(r, &At("content", i, ""))?;
    let mut first = true;
    let (mut block, mut t) = (Held::Absent, Held::Absent);
    let (mut id, mut name, mut input) = (Held::Absent, Held::Absent, None);
    let capture = into.is_some();
    while let Some(key) = r.key(&mut first)? {
        match key {
            b"type" => block = Held::read(r)?,
            b"text" => t = Held::read(r)?,
            b"id" if capture => id = Held::read(r)?,
            b"name" if capture => name = Held::read(r)?,
            b"input" if capture && r.peek() == Some(b'{') => input = Some(r.raw()?),
            _ => r.skip()?,
        }
    }
    match (block.text(), t) {
        (Some(b"text"), Held::Text(raw)) => {
            add_text(text, raw);
            if let Some(a) = into {
                a.content.push(messages::Block::Text(Str::borrowed(raw)));
            }
            Ok(())
        }
        (Some(b"text"), _) => Err(malformed(format!(
            "{}: required",
            At("content", i, ".text")
        ))),
        (Some(b"tool_use"), _) if capture => {
            let (Some(id), Some(name)) = (text_of(id), text_of(name)) else {
                return Err(malformed(format!(
                    "{}: a tool use needs its id and name",
                    At("content", i, "")
                )));
            };
            if let Some(a) = into {
                a.content.push(messages::Block::ToolUse {
                    id,
                    name,
                    input: Raw(std::borrow::Cow::Borrowed(input.unwrap_or(b"{}"))),
                });
            }
            Ok(())
        }
        // Thinking and other blocks: valid, with nothing to carry across.
        (Some(_), _) => Ok(()),
        (None, _) => Err(malformed(format!(
            "{}: required",
            At("content", i, ".type")
        ))),
    }
}

/// An Anthropic event: its type (or the event's name), text deltas,
/// and a known stop reason.
pub(super) fn event_of(
    check: &mut StreamCheck,
    r: &mut Reader<'_>,
    name: Option<&[u8]>,
    text: &mut Option<&mut String>,
) -> Result<(), Malformed> {
    document(r, "the event")?;
    let mut first = true;
    let (mut kind, mut delta_text, mut stop) = (Held::Absent, Held::Absent, Held::Absent);
    while let Some(key) = r.key(&mut first)? {
        match key {
            b"type" => kind = Held::read(r)?,
            b"delta" if r.peek() == Some(b'{') => {
                r.open(b'{')?;
                let mut first = true;
                while let Some(key) = r.key(&mut first)? {
                    match key {
                        b"text" => delta_text = Held::read(r)?,
                        b"stop_reason" => stop = Held::read(r)?,
                        _ => r.skip()?,
                    }
                }
            }
            _ => r.skip()?,
        }
    }
    match kind.text().or(name).unwrap_or_default() {
        b"message_start" => check.started = true,
        b"content_block_delta" => {
            if let Held::Text(t) = delta_text {
                add_text(text, t);
            }
        }
        b"message_delta" if stop.is_set() => {
            known(stop.text(), &ANTHROPIC_STOP, &"stop_reason")?;
            check.finished = true;
        }
        b"message_stop" => check.terminal = true,
        b"error" => return Err(malformed("an error in the stream")),
        _ => {}
    }
    Ok(())
}
