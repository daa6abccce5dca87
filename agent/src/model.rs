//! Model names on the way out and back: the request's `model` rewritten by a
//! backend's model map, and the answer's `model` set back to the name the
//! app asked for when the backend's `answer_model` says so (plain answers
//! whole, streams as their events pass, without holding any event back).
//!
//! Both edit the bytes in place around the value: every other byte of the
//! document, key order included, stays as it was.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use crate::json::{Reader, unescape};
use crate::policy::Backend;

/// Where a JSON object's top-level `model` string value is (quotes
/// included), and the model.
fn top_model(body: &[u8]) -> Option<(Range<usize>, String)> {
    let mut r = Reader::new(body);
    r.open(b'{').ok()?;
    let mut first = true;
    while let Some(key) = r.key(&mut first).ok()? {
        if key == b"model" && r.peek() == Some(b'"') {
            let start = r.position();
            let model = unescape(r.str().ok()?)?.into_owned();
            return Some((start..r.position(), model));
        }
        r.skip().ok()?;
    }
    None
}

/// `body` with `range` replaced by the JSON string `value`.
fn splice(body: &[u8], range: Range<usize>, value: &str) -> Option<Bytes> {
    let quoted = serde_json::to_string(value).ok()?;
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(body.get(..range.start)?);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(body.get(range.end..)?);
    Some(out.freeze())
}

/// The body for a backend, with `model` rewritten by its model map, and the
/// model the app asked for when it was rewritten.
pub fn for_backend(backend: &Backend, body: &Bytes) -> (Bytes, Option<String>) {
    if !backend.rewrites_model() {
        return (body.clone(), None);
    }
    let Some((range, model)) = top_model(body) else {
        return (body.clone(), None);
    };
    match backend
        .map_model(&model)
        .filter(|mapped| *mapped != model)
        .and_then(|mapped| splice(body, range, mapped))
    {
        Some(rewritten) => (rewritten, Some(model)),
        None => (body.clone(), None),
    }
}

/// A plain answer with its top-level `model` set to `model` (unchanged if
/// it has none).
pub fn in_answer(body: &Bytes, model: &str) -> Bytes {
    top_model(body)
        .and_then(|(range, _)| splice(body, range, model))
        .unwrap_or_else(|| body.clone())
}

/// Sets every `"model": "..."` of a stream's events to the requested model
/// as the bytes pass (OpenAI chunks carry it at the top, Anthropic's
/// `message_start` in its message). A key inside a JSON string has its
/// quotes escaped and cannot match. Bytes that may begin a match split
/// across frames are held until the next frame.
pub struct StreamModel {
    /// The requested model as a JSON string, quotes included.
    value: Vec<u8>,
    held: Vec<u8>,
}

const KEY: &[u8] = b"\"model\":";

impl StreamModel {
    pub fn new(requested: &str) -> Self {
        Self {
            value: serde_json::to_string(requested)
                .unwrap_or_default()
                .into_bytes(),
            held: Vec::new(),
        }
    }

    /// Rewrites a frame; returns what can be passed on now.
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(data);
        let mut out = Vec::with_capacity(input.len() + 32);
        let mut at = 0;
        let finder = memmem::Finder::new(KEY);
        while let Some(found) = finder.find(&input[at..]) {
            let key = at + found;
            let mut v = key + KEY.len();
            while input.get(v).is_some_and(u8::is_ascii_whitespace) {
                v += 1;
            }
            match input.get(v) {
                None => {
                    // The value is in the next frame.
                    out.extend_from_slice(&input[at..key]);
                    self.held = input[key..].to_vec();
                    return Bytes::from(out);
                }
                Some(b'"') => match string_end(&input, v) {
                    Some(end) => {
                        out.extend_from_slice(&input[at..v]);
                        out.extend_from_slice(&self.value);
                        at = end;
                    }
                    None => {
                        out.extend_from_slice(&input[at..key]);
                        self.held = input[key..].to_vec();
                        return Bytes::from(out);
                    }
                },
                Some(_) => {
                    out.extend_from_slice(&input[at..v]);
                    at = v;
                }
            }
        }
        // A tail that could begin the key waits for the next frame.
        let keep = (1..KEY.len())
            .rev()
            .find(|&n| input.len() - at >= n && input.ends_with(&KEY[..n]))
            .unwrap_or(0);
        let cut = input.len() - keep;
        out.extend_from_slice(&input[at..cut]);
        self.held = input[cut..].to_vec();
        Bytes::from(out)
    }

    /// The stream ended: what was held back.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.held)))
    }
}

/// The index just past the JSON string starting at `start` (its quote).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(map: &[(&str, &str)]) -> Backend {
        let map: std::collections::BTreeMap<_, _> = map.iter().copied().collect();
        crate::policy::test_backend(serde_json::json!({ "model_map": map }))
    }

    /// The request's model is rewritten in place (key order kept); nested
    /// "model" keys and unmapped models are left alone.
    #[test]
    fn rewrites_the_request_model_in_place() {
        let b = backend(&[("gpt-4o", "mistral-large"), ("*", "small")]);
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"model":"gpt-4o","n":1}"#,
        );
        let (out, asked) = for_backend(&b, &body);
        assert_eq!(
            out,
            r#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"model":"mistral-large","n":1}"#
        );
        assert_eq!(asked.as_deref(), Some("gpt-4o"));
        let (out, asked) = for_backend(&b, &Bytes::from_static(br#"{"model":"other"}"#));
        assert_eq!(
            (out.as_ref(), asked.as_deref()),
            (&br#"{"model":"small"}"#[..], Some("other"))
        );
        let none = backend(&[]);
        let (out, asked) = for_backend(&none, &body);
        assert_eq!((out, asked), (body.clone(), None));
        let (out, _) = for_backend(&b, &Bytes::from_static(b"not json"));
        assert_eq!(out, "not json");
    }

    /// A plain answer's model is set back to the requested one.
    #[test]
    fn sets_the_answer_model() {
        let a = Bytes::from_static(br#"{"id":"x","model":"mistral-large-2411","choices":[]}"#);
        assert_eq!(
            in_answer(&a, "gpt-4o"),
            r#"{"id":"x","model":"gpt-4o","choices":[]}"#
        );
        let none = Bytes::from_static(br#"{"id":"x"}"#);
        assert_eq!(in_answer(&none, "gpt-4o"), none);
    }

    /// Streams: every event's model is set as the bytes pass, whatever the
    /// frame boundaries; nothing else changes and nothing is held beyond a
    /// possible start of the key.
    #[test]
    fn sets_the_model_in_streams_across_frames() {
        let stream = "data: {\"id\":\"c\",\"model\":\"served-1\",\"choices\":[{\"delta\":{\"content\":\"\\\"model\\\":\\\"no\\\"\"}}]}\n\n\
                      event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\": \"served-2\"}}\n\n\
                      data: [DONE]\n\n";
        let want = stream
            .replace("\"served-1\"", "\"gpt-4o\"")
            .replace("\"served-2\"", "\"gpt-4o\"");
        for size in [1, 3, 7, 16, 1000] {
            let mut m = StreamModel::new("gpt-4o");
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(size) {
                out.extend_from_slice(&m.feed(piece));
            }
            if let Some(rest) = m.finish() {
                out.extend_from_slice(&rest);
            }
            assert_eq!(String::from_utf8(out).unwrap(), want, "frames of {size}");
        }
        // A frame ending with a whole event passes whole at once.
        let mut m = StreamModel::new("gpt-4o");
        let frame = b"data: {\"model\":\"x\",\"choices\":[]}\n\n";
        assert_eq!(
            m.feed(frame),
            "data: {\"model\":\"gpt-4o\",\"choices\":[]}\n\n"
        );
        assert!(m.finish().is_none());
    }
}
