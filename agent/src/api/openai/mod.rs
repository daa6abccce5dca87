//! OpenAI's APIs: chat completions, legacy completions and embeddings.
//! What a valid answer of each looks like, how errors are shaped and how a
//! key is sent.

use bytes::Bytes;
use http::HeaderName;

pub mod chat;

use super::{
    At, Held, Malformed, Read, StreamCheck, add_text, document, item_object, known, list, malformed,
};
use crate::json::Reader;

/// The header an OpenAI key goes in (as `Bearer <key>`).
pub const CREDENTIAL_HEADER: HeaderName = http::header::AUTHORIZATION;

/// The chat completions path, as the agent sends translated requests.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// An error body in OpenAI's shape: `{"error": {"message", "type",
/// "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let value = serde_json::json!({
        "error": {"message": message, "type": kind, "param": param, "code": code}
    });
    Bytes::from(value.to_string())
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
pub(super) const COMPLETION_FINISH: [&str; 3] = ["stop", "length", "content_filter"];

/// An answer whose one required field is the non-empty list `field`, each
/// item checked by `each` (reading the answer's text into `read`); the
/// other keys are skipped, `usage` read.
fn answer_with_list<'a>(
    r: &mut Reader<'a>,
    read: &mut Read<'_, '_>,
    field: &'static str,
    mut each: impl FnMut(&mut Reader<'a>, usize, &mut Read<'_, '_>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    document(r, "answer")?;
    let mut first = true;
    let mut items = 0;
    while let Some(key) = r.key(&mut first)? {
        if key == field.as_bytes() {
            items = list(r, field, false, |r, i| each(r, i, read))?;
        } else {
            read.other(r, key)?;
        }
    }
    if items == 0 {
        return Err(malformed(format!("{field}: must be a non-empty list")));
    }
    Ok(())
}

pub(super) fn chat_completion(
    r: &mut Reader<'_>,
    read: &mut Read<'_, '_>,
) -> Result<(), Malformed> {
    answer_with_list(r, read, "choices", |r, i, read| {
        chat_choice(r, i, &mut read.text)
    })
}

fn chat_choice(
    r: &mut Reader<'_>,
    i: usize,
    text: &mut Option<&mut String>,
) -> Result<(), Malformed> {
    item_object(r, &At("choices", i, ""))?;
    let mut first = true;
    let mut message = false;
    let mut finish = Held::Absent;
    while let Some(key) = r.key(&mut first)? {
        match key {
            b"message" => {
                chat_message(r, i, text)?;
                message = true;
            }
            b"finish_reason" => finish = Held::read(r)?,
            _ => r.skip()?,
        }
    }
    if !message {
        return Err(malformed(format!(
            "{}: required",
            At("choices", i, ".message")
        )));
    }
    known(
        finish.text(),
        &OPENAI_FINISH,
        &At("choices", i, ".finish_reason"),
    )
}

fn chat_message(
    r: &mut Reader<'_>,
    i: usize,
    text: &mut Option<&mut String>,
) -> Result<(), Malformed> {
    item_object(r, &At("choices", i, ".message"))?;
    let mut first = true;
    let (mut role, mut content, mut tool_calls, mut other) =
        (Held::Absent, Held::Absent, Held::Absent, false);
    while let Some(key) = r.key(&mut first)? {
        match key {
            b"role" => role = Held::read(r)?,
            b"content" => content = Held::read(r)?,
            b"tool_calls" => tool_calls = Held::read(r)?,
            b"function_call" | b"refusal" | b"audio" => other |= Held::read(r)?.is_set(),
            _ => r.skip()?,
        }
    }
    if role.text() != Some(b"assistant") {
        return Err(malformed(format!(
            "{}: must be \"assistant\"",
            At("choices", i, ".message.role")
        )));
    }
    match content {
        Held::Text(t) => add_text(text, t),
        Held::Absent | Held::Null if tool_calls == Held::List || other => {}
        _ => {
            return Err(malformed(format!(
                "{}: must be text (or null with tool_calls)",
                At("choices", i, ".message.content")
            )));
        }
    }
    Ok(())
}

pub(super) fn completion(r: &mut Reader<'_>, read: &mut Read<'_, '_>) -> Result<(), Malformed> {
    answer_with_list(r, read, "choices", |r, i, read| {
        item_object(r, &At("choices", i, ""))?;
        let mut first = true;
        let (mut t, mut finish) = (Held::Absent, Held::Absent);
        while let Some(key) = r.key(&mut first)? {
            match key {
                b"text" => t = Held::read(r)?,
                b"finish_reason" => finish = Held::read(r)?,
                _ => r.skip()?,
            }
        }
        match t {
            Held::Text(raw) => read.text(raw),
            _ => {
                return Err(malformed(format!(
                    "{}: must be text",
                    At("choices", i, ".text")
                )));
            }
        }
        known(
            finish.text(),
            &COMPLETION_FINISH,
            &At("choices", i, ".finish_reason"),
        )
    })
}

pub(super) fn embeddings(r: &mut Reader<'_>, read: &mut Read<'_, '_>) -> Result<(), Malformed> {
    answer_with_list(r, read, "data", |r, i, _| {
        item_object(r, &At("data", i, ""))?;
        let mut first = true;
        let mut embedding = Held::Absent;
        while let Some(key) = r.key(&mut first)? {
            if key == b"embedding" {
                embedding = Held::read(r)?;
            } else {
                r.skip()?;
            }
        }
        if matches!(embedding, Held::List | Held::Text(_)) {
            Ok(())
        } else {
            Err(malformed(format!(
                "{}: must be a list of numbers (or base64)",
                At("data", i, ".embedding")
            )))
        }
    })
}

/// True for the chunk that carries a stream's usage when asked for with
/// `stream_options.include_usage`: an empty `choices` list and a `usage`
/// object.
pub fn is_usage_chunk(data: &[u8]) -> bool {
    let mut r = Reader::new(data);
    if r.open(b'{').is_err() {
        return false;
    }
    let (mut no_choices, mut usage) = (false, false);
    let mut first = true;
    while let Ok(Some(key)) = r.key(&mut first) {
        match (key, r.peek()) {
            (b"choices", Some(b'[')) => {
                let empty = r.raw().is_ok_and(|raw| {
                    raw[1..raw.len() - 1]
                        .iter()
                        .all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
                });
                no_choices = empty;
            }
            (b"usage", Some(b'{')) => {
                usage = true;
                if r.skip().is_err() {
                    return false;
                }
            }
            _ => {
                if r.skip().is_err() {
                    return false;
                }
            }
        }
    }
    no_choices && usage
}

/// An OpenAI chunk: its choices (perhaps none, as the usage chunk),
/// their text, and a known finish reason.
pub(super) fn chunk(
    check: &mut StreamCheck,
    r: &mut Reader<'_>,
    text: &mut Option<&mut String>,
) -> Result<(), Malformed> {
    document(r, "the chunk")?;
    let allowed: &[&str] = if check.api == super::Api::Completions {
        &COMPLETION_FINISH
    } else {
        &OPENAI_FINISH
    };
    let mut first = true;
    let mut choices = false;
    let mut finished = false;
    while let Some(key) = r.key(&mut first)? {
        match key {
            b"choices" => {
                list(r, "choices", true, |r, c| {
                    item_object(r, &At("choices", c, ""))?;
                    let mut first = true;
                    while let Some(key) = r.key(&mut first)? {
                        match key {
                            b"delta" if r.peek() == Some(b'{') => {
                                r.open(b'{')?;
                                let mut first = true;
                                while let Some(key) = r.key(&mut first)? {
                                    if let (b"content", Held::Text(t)) = (key, Held::read(r)?) {
                                        add_text(text, t);
                                    }
                                }
                            }
                            b"text" => {
                                if let Held::Text(t) = Held::read(r)? {
                                    add_text(text, t);
                                }
                            }
                            b"finish_reason" => match Held::read(r)? {
                                Held::Null => {}
                                finish => {
                                    known(finish.text(), allowed, &"finish_reason")?;
                                    finished = true;
                                }
                            },
                            _ => r.skip()?,
                        }
                    }
                    Ok(())
                })?;
                choices = true;
            }
            b"error" if Held::read(r)?.is_set() => {
                return Err(malformed("an error in the stream"));
            }
            _ => r.skip()?,
        }
    }
    if !choices {
        return Err(malformed("choices: must be a list"));
    }
    check.started = true;
    check.finished |= finished;
    Ok(())
}
