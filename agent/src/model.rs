//! Model names on the way out and back: the request's `model` rewritten by a
//! backend's model map, and the answer's `model` set back to the name the
//! app asked for when the backend's `answer_model` says so (plain answers
//! whole, streams as their events pass, without holding any event back).
//!
//! Both edit the bytes in place around the value: every other byte of the
//! document, key order included, stays as it was.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use crate::api::Api;
use crate::json::{Reader, unescape};
use crate::policy::Backend;

/// `body` with `range` replaced by the JSON string `value`.
fn splice(body: &[u8], range: Range<usize>, value: &str) -> Option<Bytes> {
    let quoted = serde_json::to_string(value).ok()?;
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(body.get(..range.start)?);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(body.get(range.end..)?);
    Some(out.freeze())
}

/// Finds a `stream` key (or the word in a string: then the body is read).
static STREAM_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"stream\""));

/// A request of the app's own API family made ready for a backend.
#[derive(Debug, PartialEq, Eq)]
pub struct ForBackend {
    pub body: Bytes,
    /// The model the app asked for, when the model map changed it.
    pub requested_model: Option<String>,
    /// The model sent, when the backend's prices depend on it.
    pub sent_model: Option<String>,
    /// `stream_options.include_usage` was set on the app's behalf, so that
    /// the stream is priced: its usage chunk is kept from the app.
    pub usage_asked: bool,
}

/// What the top level of a request says, as far as the edits care.
#[derive(Default)]
struct Top {
    model: Option<(Range<usize>, String)>,
    stream: bool,
    /// Where `stream_options`' value is, and its shape.
    stream_options: Option<(Range<usize>, Options)>,
    /// Where `stream_options.include_usage`'s value is, and the value.
    include_usage: Option<(Range<usize>, bool)>,
    /// Just after the top level's `{`.
    open: usize,
}

/// The shape of a request's `stream_options`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Options {
    Object {
        empty: bool,
    },
    Null,
    /// Anything else: left alone (the backend refuses it).
    Other,
}

/// Reads a request's top level: only its `model` when `all` is false.
fn top(body: &[u8], all: bool) -> Option<Top> {
    let mut r = Reader::new(body);
    r.open(b'{').ok()?;
    let mut t = Top {
        open: r.position(),
        ..Top::default()
    };
    let mut first = true;
    while let Some(key) = r.key(&mut first).ok()? {
        let _ = r.peek();
        let start = r.position();
        match key {
            b"model" if r.peek() == Some(b'"') && t.model.is_none() => {
                let model = unescape(r.str().ok()?)?.into_owned();
                t.model = Some((start..r.position(), model));
                if !all {
                    return Some(t);
                }
                continue;
            }
            b"stream" => t.stream = r.peek() == Some(b't'),
            b"stream_options" if r.peek() == Some(b'{') => {
                r.open(b'{').ok()?;
                let mut inner_first = true;
                let mut empty = true;
                while let Some(k) = r.key(&mut inner_first).ok()? {
                    empty = false;
                    if k == b"include_usage" && matches!(r.peek(), Some(b't' | b'f')) {
                        let at = r.position();
                        let value = r.peek() == Some(b't');
                        r.skip().ok()?;
                        t.include_usage = Some((at..r.position(), value));
                    } else {
                        r.skip().ok()?;
                    }
                }
                t.stream_options = Some((start..r.position(), Options::Object { empty }));
                continue;
            }
            b"stream_options" => {
                let shape = if r.peek() == Some(b'n') {
                    Options::Null
                } else {
                    Options::Other
                };
                r.skip().ok()?;
                t.stream_options = Some((start..r.position(), shape));
                continue;
            }
            _ => {}
        }
        r.skip().ok()?;
    }
    Some(t)
}

fn top_model(body: &[u8]) -> Option<(Range<usize>, String)> {
    top(body, false)?.model
}

/// The body for a backend of the app's API family: `model` rewritten by
/// its model map and, when the backend has prices and the request is an
/// OpenAI stream that does not ask for usage, `stream_options.include_usage`
/// set. Every other byte stays as it was.
pub fn for_backend(backend: &Backend, api: Api, body: &Bytes) -> ForBackend {
    let by_model = backend.pricing.as_ref().is_some_and(|p| p.by_model());
    // Only a body that names "stream" can be a stream (most are not: they
    // are not read past their model).
    let may_ask = backend.pricing.is_some()
        && backend.protocol == crate::api::Dialect::OpenAi
        && matches!(api, Api::ChatCompletions | Api::Completions)
        && STREAM_KEY.find(body).is_some();
    let unchanged = || ForBackend {
        body: body.clone(),
        requested_model: None,
        sent_model: None,
        usage_asked: false,
    };
    if !backend.rewrites_model() && !by_model && !may_ask {
        return unchanged();
    }
    let Some(t) = top(body, may_ask) else {
        return unchanged();
    };
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    let mut requested_model = None;
    let mut sent_model = t.model.as_ref().map(|(_, m)| m.clone());
    if let Some((range, model)) = &t.model
        && let Some(mapped) = backend.map_model(model).filter(|m| m != model)
        && let Ok(quoted) = serde_json::to_string(mapped)
    {
        edits.push((range.clone(), quoted.into_bytes()));
        requested_model = Some(model.clone());
        sent_model = Some(mapped.to_string());
    }
    let usage_asked = may_ask
        && t.stream
        && !matches!(t.include_usage, Some((_, true)))
        && !matches!(t.stream_options, Some((_, Options::Other)));
    if usage_asked {
        const ASK: &[u8] = br#""include_usage":true"#;
        edits.push(match (&t.include_usage, &t.stream_options) {
            (Some((at, _)), _) => (at.clone(), b"true".to_vec()),
            (None, Some((at, Options::Object { empty }))) => {
                let at = at.start + 1..at.start + 1;
                (
                    at,
                    if *empty {
                        ASK.to_vec()
                    } else {
                        [ASK, b","].concat()
                    },
                )
            }
            (None, Some((at, _))) => (at.clone(), [b"{", ASK, b"}"].concat()),
            (None, None) => (
                t.open..t.open,
                [br#""stream_options":{"#, ASK, b"},"].concat(),
            ),
        });
    }
    if edits.is_empty() && !by_model {
        return unchanged();
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = BytesMut::with_capacity(body.len() + 48);
    let mut at = 0;
    for (range, with) in &edits {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(with);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    ForBackend {
        body: if edits.is_empty() {
            body.clone()
        } else {
            out.freeze()
        },
        requested_model,
        sent_model: sent_model.filter(|_| by_model),
        usage_asked,
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
        let for_b = |b: &Backend, body: &Bytes| {
            let f = for_backend(b, Api::ChatCompletions, body);
            (f.body, f.requested_model)
        };
        let (out, asked) = for_b(&b, &body);
        assert_eq!(
            out,
            r#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"model":"mistral-large","n":1}"#
        );
        assert_eq!(asked.as_deref(), Some("gpt-4o"));
        let (out, asked) = for_b(&b, &Bytes::from_static(br#"{"model":"other"}"#));
        assert_eq!(
            (out.as_ref(), asked.as_deref()),
            (&br#"{"model":"small"}"#[..], Some("other"))
        );
        let none = backend(&[]);
        let (out, asked) = for_b(&none, &body);
        assert_eq!((out, asked), (body.clone(), None));
        let (out, _) = for_b(&b, &Bytes::from_static(b"not json"));
        assert_eq!(out, "not json");
    }

    fn priced(extra: serde_json::Value) -> Backend {
        let mut b = serde_json::json!({
            "prices": {"input_per_million": 1.0, "output_per_million": 2.0}
        });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        crate::policy::test_backend(b)
    }

    /// A priced backend's OpenAI streams ask for usage, whatever shape the
    /// app's `stream_options` has; every other byte stays.
    #[test]
    fn asks_priced_streams_for_usage() {
        let b = priced(serde_json::json!({}));
        let ask = |body: &'static str| {
            let f = for_backend(
                &b,
                Api::ChatCompletions,
                &Bytes::from_static(body.as_bytes()),
            );
            if f.usage_asked {
                let v: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
                assert_eq!(v["stream_options"]["include_usage"], true, "{body}");
            }
            (String::from_utf8(f.body.to_vec()).unwrap(), f.usage_asked)
        };
        assert_eq!(
            ask(r#"{"model":"m","stream":true}"#),
            (
                r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#.into(),
                true
            )
        );
        assert_eq!(
            ask(r#"{"stream":true,"stream_options":{}}"#),
            (
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#.into(),
                true
            )
        );
        assert_eq!(
            ask(r#"{"stream":true,"stream_options":{"x":1}}"#),
            (
                r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#.into(),
                true
            )
        );
        assert_eq!(
            ask(r#"{"stream": true, "stream_options": {"include_usage": false}}"#),
            (
                r#"{"stream": true, "stream_options": {"include_usage": true}}"#.into(),
                true
            )
        );
        assert_eq!(
            ask(r#"{"stream":true,"stream_options":null}"#),
            (
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#.into(),
                true
            )
        );
        // Already asked, not a stream, or not a shape to edit: unchanged.
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"stream":true,"stream_options":"x"}"#,
            "not json",
        ] {
            let (out, asked) = ask(body);
            assert_eq!(out, body);
            assert!(!asked, "{body}");
        }
        // Embeddings and unpriced backends are left alone.
        let body = Bytes::from_static(br#"{"stream":true}"#);
        assert!(!for_backend(&b, Api::Embeddings, &body).usage_asked);
        assert!(!for_backend(&backend(&[]), Api::ChatCompletions, &body).usage_asked);
    }

    /// The model sent is known when the price depends on it, and the map
    /// and the usage ask combine in one pass.
    #[test]
    fn names_the_model_sent_when_prices_depend_on_it() {
        let b = priced(serde_json::json!({
            "model_map": {"gpt-4o": "mini"},
            "model_prices": {"mini": {"input_per_million": 0.1, "output_per_million": 0.4}}
        }));
        let f = for_backend(
            &b,
            Api::ChatCompletions,
            &Bytes::from_static(br#"{"model":"gpt-4o","stream":true}"#),
        );
        assert_eq!(
            f,
            ForBackend {
                body: Bytes::from_static(
                    br#"{"stream_options":{"include_usage":true},"model":"mini","stream":true}"#
                ),
                requested_model: Some("gpt-4o".into()),
                sent_model: Some("mini".into()),
                usage_asked: true,
            }
        );
        let f = for_backend(
            &b,
            Api::Embeddings,
            &Bytes::from_static(br#"{"model":"e"}"#),
        );
        assert_eq!((f.sent_model.as_deref(), f.usage_asked), (Some("e"), false));
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
