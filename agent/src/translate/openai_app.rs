//! An app written for OpenAI's chat completions, served by a backend that
//! speaks Anthropic's Messages API: the request out, the answer, the error
//! and the stream back.

use std::borrow::Cow;

use crate::api::Api;
use crate::api::anthropic::messages::{
    self as an, Block, Choice, Delta, Event, Image, StartBlock, ToolResult,
};
use crate::api::openai::chat::{self as oa, Content, Part, Role, ToolChoice};
use crate::api::parse::{Invalid, Raw, Str, Unsupported, document, value};
use crate::json::{Reader, Writer};
use crate::policy::Backend;

use super::{Crossing, DEFAULT_MAX_TOKENS, Refusal, Translated, now, sse, translated};

/// The name of the tool standing in for `response_format: json_object`.
const JSON_TOOL: &str = "json_answer";

/// Translates an OpenAI chat completion request into a Messages request.
pub fn request(body: &[u8], backend: &Backend) -> Result<Translated, Refusal> {
    let mut unsupported = Unsupported::default();
    let q = document(body, |r| oa::Request::read(r, &mut unsupported)).map_err(Refusal::Invalid)?;
    let (mut out, json_tool) = to_messages(&q, &mut unsupported).map_err(Refusal::Invalid)?;
    let dropped = super::settle_unsupported(unsupported.0, backend, "Anthropic's Messages API")?;
    // Dropped fields that were kept in the request's types are taken out.
    for d in &dropped {
        if d.field == "temperature" {
            out.temperature = None;
        }
    }
    if out.max_tokens.is_none() {
        out.max_tokens = Some(backend.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    }
    let crossing = Crossing {
        app: Api::ChatCompletions,
        backend: Api::Messages,
        json_tool,
        include_usage: q.include_usage == Some(true),
    };
    let write = |w: &mut Writer, model: Option<&str>| out.write(w, model);
    Ok(translated(
        backend,
        q.model.as_ref(),
        body.len(),
        write,
        dropped,
        crossing,
    ))
}

/// The Messages request for an OpenAI request, and the name of the tool
/// standing in for its `response_format`, if it asks for JSON. Fields with
/// no counterpart are noted in `unsupported`.
pub fn to_messages<'a>(
    q: &oa::Request<'a>,
    unsupported: &mut Unsupported,
) -> Result<(an::Request<'a>, Option<String>), Invalid> {
    let mut out = an::Request {
        model: q.model.clone(),
        max_tokens: q.max_completion_tokens.or(q.max_tokens),
        stop_sequences: q.stop.clone(),
        temperature: q.temperature.clone(),
        top_p: q.top_p.clone(),
        stream: q.stream,
        user_id: q.user.clone(),
        ..an::Request::default()
    };
    if let Some(t) = &q.temperature
        && value(t).is_some_and(|v| v > 1.0)
    {
        unsupported.note(
            "",
            b"temperature",
            "above 1, the most Anthropic's Messages API takes",
        );
    }
    // System and developer messages become the system prompt, in order.
    let system: Vec<&oa::Message<'a>> = q
        .messages
        .iter()
        .filter(|m| matches!(m.role, Role::System | Role::Developer))
        .collect();
    out.system = match system.as_slice() {
        [] => None,
        [only] if matches!(only.content, Content::Text(_)) && only.role == Role::System => {
            match &only.content {
                Content::Text(t) => Some(an::System::Text(t.clone())),
                _ => None,
            }
        }
        all => {
            let mut blocks = Vec::new();
            for m in all {
                match &m.content {
                    Content::Text(t) => blocks.push(t.clone()),
                    Content::Parts(parts) => {
                        for p in parts {
                            if let Part::Text(t) | Part::Refusal(t) = p {
                                blocks.push(t.clone());
                            }
                        }
                    }
                    Content::None => {}
                }
            }
            Some(an::System::Blocks(blocks))
        }
    };
    // Tool results gather into one user message.
    let mut results: Vec<Block<'a>> = Vec::new();
    let flush = |results: &mut Vec<Block<'a>>, out: &mut an::Request<'a>| {
        if !results.is_empty() {
            out.messages.push(an::Message {
                role: an::Role::User,
                content: an::Content::Blocks(std::mem::take(results)),
            });
        }
    };
    for (i, m) in q.messages.iter().enumerate() {
        let at = |e: Invalid| e.index(i).key("messages");
        match m.role {
            Role::System | Role::Developer => {}
            Role::Tool => {
                let content = match &m.content {
                    Content::Text(t) => ToolResult::Text(t.clone()),
                    Content::Parts(parts) => ToolResult::Blocks(
                        parts
                            .iter()
                            .filter_map(|p| match p {
                                Part::Text(t) => Some(t.clone()),
                                _ => None,
                            })
                            .collect(),
                    ),
                    Content::None => ToolResult::None,
                };
                let id = m.tool_call_id.clone().unwrap_or(Str(Cow::Borrowed(b"")));
                results.push(Block::ToolResult {
                    tool_use_id: id,
                    content,
                });
            }
            Role::User => {
                flush(&mut results, &mut out);
                let content = match &m.content {
                    Content::Text(t) => an::Content::Text(t.clone()),
                    Content::Parts(parts) => {
                        let mut blocks = Vec::with_capacity(parts.len());
                        for (j, p) in parts.iter().enumerate() {
                            blocks.push(match p {
                                Part::Text(t) | Part::Refusal(t) => Block::Text(t.clone()),
                                Part::Image(url) => Block::Image(
                                    image(url, unsupported, i, j)
                                        .map_err(|e| at(e.index(j).key("content")))?,
                                ),
                            });
                        }
                        an::Content::Blocks(blocks)
                    }
                    Content::None => an::Content::Text(Str(Cow::Borrowed(b""))),
                };
                out.messages.push(an::Message {
                    role: an::Role::User,
                    content,
                });
            }
            Role::Assistant => {
                flush(&mut results, &mut out);
                let mut blocks = Vec::new();
                match &m.content {
                    Content::Text(t) if !t.is_empty() => blocks.push(Block::Text(t.clone())),
                    Content::Parts(parts) => {
                        for p in parts {
                            if let Part::Text(t) | Part::Refusal(t) = p {
                                blocks.push(Block::Text(t.clone()));
                            }
                        }
                    }
                    _ => {}
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let input = arguments(&call.arguments).map_err(|e| {
                        at(e.key("arguments")
                            .key("function")
                            .index(j)
                            .key("tool_calls"))
                    })?;
                    blocks.push(Block::ToolUse {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        input,
                    });
                }
                let content = match (blocks.as_slice(), &m.content) {
                    ([Block::Text(_)], Content::Text(t)) => an::Content::Text(t.clone()),
                    _ => an::Content::Blocks(blocks),
                };
                out.messages.push(an::Message {
                    role: an::Role::Assistant,
                    content,
                });
            }
        }
    }
    flush(&mut results, &mut out);

    out.tools = q
        .tools
        .iter()
        .map(|t| an::Tool {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t
                .parameters
                .clone()
                .unwrap_or(Raw(Cow::Borrowed(br#"{"type":"object","properties":{}}"#))),
        })
        .collect();
    let kind = q.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => Choice::Auto,
        ToolChoice::None => Choice::None,
        ToolChoice::Required => Choice::Any,
        ToolChoice::Function(name) => Choice::Tool(name.clone()),
    });
    let disable = q.parallel_tool_calls.map(|p| !p);
    out.tool_choice = match (kind, disable) {
        (None, None) => None,
        (kind, disable) => Some(an::ToolChoice {
            kind: kind.unwrap_or(Choice::Auto),
            disable_parallel_tool_use: disable,
        }),
    };

    // JSON output: a forced tool whose input is the answer.
    let json_tool = match &q.response_format {
        None | Some(oa::ResponseFormat::Text) => None,
        Some(format) => {
            if !q.tools.is_empty() {
                return Err(Invalid::new(
                    "cannot cross to Anthropic's Messages API together with tools",
                )
                .key("response_format"));
            }
            let (name, description, schema) = match format {
                oa::ResponseFormat::JsonSchema {
                    name,
                    description,
                    schema,
                } => (name.clone(), description.clone(), schema.clone()),
                _ => (Str::from_text(JSON_TOOL), None, None),
            };
            let tool_name = name.text().map(Cow::into_owned).unwrap_or_default();
            out.tools = vec![an::Tool {
                name: name.clone(),
                description: Some(
                    description
                        .unwrap_or_else(|| Str::from_text("Give the answer as this tool's input.")),
                ),
                input_schema: schema.unwrap_or(Raw(Cow::Borrowed(br#"{"type":"object"}"#))),
            }];
            out.tool_choice = Some(an::ToolChoice {
                kind: Choice::Tool(name),
                disable_parallel_tool_use: None,
            });
            Some(tool_name)
        }
    };
    Ok((out, json_tool))
}

/// An image part's URL as an Anthropic image source: a `data:` URL becomes
/// base64 data with its media type; an http(s) URL stays a URL.
fn image<'a>(
    url: &Str<'a>,
    unsupported: &mut Unsupported,
    i: usize,
    j: usize,
) -> Result<Image<'a>, Invalid> {
    let raw = url.raw();
    if let Some(rest) = raw.strip_prefix(b"data:") {
        let Some(at) = memchr::memmem::find(rest, b";base64,") else {
            unsupported.note(
                format!("messages[{i}].content[{j}].image_url"),
                b"url",
                "a data: URL must be base64 to cross to Anthropic's Messages API",
            );
            return Ok(Image::Url(url.clone()));
        };
        let slice = |range: std::ops::Range<usize>| match &url.0 {
            Cow::Borrowed(b) => Str(Cow::Borrowed(&b[5 + range.start..5 + range.end])),
            Cow::Owned(b) => Str(Cow::Owned(b[5 + range.start..5 + range.end].to_vec())),
        };
        return Ok(Image::Base64 {
            media_type: slice(0..at),
            data: slice(at + 8..rest.len()),
        });
    }
    if raw.starts_with(b"http://") || raw.starts_with(b"https://") {
        return Ok(Image::Url(url.clone()));
    }
    Err(Invalid::new("must be an http(s) URL or a data: URL")
        .key("url")
        .key("image_url"))
}

/// A tool call's arguments (a string holding a JSON object) as a tool
/// input (the object itself). An empty string is an empty object.
pub fn arguments<'a>(args: &Str<'a>) -> Result<Raw<'a>, Invalid> {
    let rule = || Invalid::new("must hold a JSON object to cross to Anthropic's Messages API");
    if args.is_empty() {
        return Ok(Raw(Cow::Borrowed(b"{}")));
    }
    let bytes = args.bytes().ok_or_else(rule)?;
    let mut r = Reader::new(&bytes);
    if r.peek() != Some(b'{') || r.skip().is_err() || r.done().is_err() {
        return Err(rule());
    }
    Ok(Raw(match (bytes, &args.0) {
        (Cow::Borrowed(_), Cow::Borrowed(b)) => Cow::Borrowed(*b),
        (bytes, _) => Cow::Owned(bytes.into_owned()),
    }))
}

/// OpenAI's finish reason for an Anthropic stop reason.
pub fn finish_reason(stop: &[u8]) -> &'static str {
    match stop {
        b"max_tokens" | b"model_context_window_exceeded" => "length",
        b"tool_use" => "tool_calls",
        b"refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's token counts for Anthropic's: the prompt counts cache reads
/// and writes too.
pub fn tokens(t: &an::Tokens) -> oa::Tokens {
    oa::Tokens {
        prompt: t.input + t.cache_read + t.cache_creation,
        completion: t.output,
        cached: t.cache_read,
    }
}

/// Writes the chat completion for a Messages answer (read and checked);
/// `model`, when given, is the model it names.
pub fn write_completion(c: &Crossing, a: &an::Answer<'_>, model: Option<&str>) -> Vec<u8> {
    let mut out = to_completion(a, c.json_tool.as_deref());
    if let Some(m) = model {
        out.model = Some(Str::from_text(m));
    }
    let mut w = Writer::with_capacity(256);
    out.write(&mut w, now());
    w.finish()
}

/// The chat completion for a Messages answer; with `json_tool`, that
/// tool's input is the content.
pub fn to_completion<'a>(a: &an::Answer<'a>, json_tool: Option<&str>) -> oa::Answer<'a> {
    let mut text: Option<Str<'a>> = None;
    let mut tool_calls = Vec::new();
    let mut json = false;
    for b in &a.content {
        match b {
            Block::Text(t) => {
                text = Some(match text.take() {
                    None => t.clone(),
                    Some(before) => {
                        let mut joined = before.0.into_owned();
                        joined.extend_from_slice(t.raw());
                        Str(Cow::Owned(joined))
                    }
                });
            }
            Block::ToolUse { id, name, input } => {
                if json_tool.is_some_and(|j| name.is(j) || name.text().as_deref() == Some(j)) {
                    text = Some(Str::of_json(input.bytes()));
                    json = true;
                } else {
                    tool_calls.push(oa::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: Str::of_json(input.bytes()),
                    });
                }
            }
            Block::Image(_) | Block::ToolResult { .. } => {}
        }
    }
    let finish = match a.stop_reason.as_ref() {
        _ if json => "stop",
        Some(s) => finish_reason(s.raw()),
        None => "stop",
    };
    let refusal = a.stop_reason.as_ref().is_some_and(|s| s.is("refusal"));
    oa::Answer {
        id: a.id.clone(),
        model: a.model.clone(),
        refusal: if refusal { text.clone() } else { None },
        content: if refusal { None } else { text },
        tool_calls,
        finish_reason: Some(Str(Cow::Borrowed(finish.as_bytes()))),
        usage: a.usage.as_ref().map(tokens),
    }
}

/// An Anthropic stream turned into OpenAI chunks as its events arrive.
pub struct Stream {
    id: Vec<u8>,
    model: Vec<u8>,
    created: u64,
    include_usage: bool,
    json_tool: Option<String>,
    /// The Anthropic block index of the forced JSON tool.
    json_block: Option<u64>,
    /// Anthropic block index to OpenAI tool-call index.
    tools: Vec<(u64, u64)>,
    usage: an::Tokens,
    finish: Option<&'static str>,
}

impl Stream {
    pub fn new(c: &Crossing) -> Self {
        Self {
            id: Vec::new(),
            model: Vec::new(),
            created: now(),
            include_usage: c.include_usage,
            json_tool: c.json_tool.clone(),
            json_block: None,
            tools: Vec::new(),
            usage: an::Tokens::default(),
            finish: None,
        }
    }

    /// Starts a chunk: `{"id":..,"object":..,"created":..,"model":..,`.
    fn chunk(&self) -> Writer {
        let mut w = Writer::with_capacity(160 + self.id.len() + self.model.len());
        w.begin_object().key("id").raw_str(&self.id);
        w.key("object").str("chat.completion.chunk");
        w.key("created").u64(self.created);
        w.key("model").raw_str(&self.model);
        w
    }

    /// Writes a chunk whose first choice has the delta `delta` writes.
    fn delta(&self, out: &mut Vec<u8>, finish: Option<&str>, delta: impl FnOnce(&mut Writer)) {
        let mut w = self.chunk();
        w.key("choices").begin_array().begin_object();
        w.key("index").u64(0);
        w.key("delta").begin_object();
        delta(&mut w);
        w.end_object();
        w.key("logprobs").null();
        w.key("finish_reason");
        match finish {
            Some(f) => w.str(f),
            None => w.null(),
        };
        w.end_object().end_array().end_object();
        sse(out, None, &w);
    }

    fn content(&self, out: &mut Vec<u8>, text: &Str<'_>) {
        if text.is_empty() {
            return;
        }
        self.delta(out, None, |w| {
            w.key("content");
            text.write(w);
        });
    }

    /// One event of the Anthropic stream.
    pub fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut r = Reader::new(data);
        // Events that cannot be read pass nothing on; the stream's check
        // judges them.
        let Ok(event) = Event::read(&mut r, &self.usage) else {
            return;
        };
        match event {
            Event::MessageStart { id, model, usage } => {
                self.id = id.map(|s| s.0.into_owned()).unwrap_or_default();
                self.model = model.map(|s| s.0.into_owned()).unwrap_or_default();
                self.usage = usage;
                self.delta(out, None, |w| {
                    w.key("role").str("assistant").key("content").str("");
                });
            }
            Event::BlockStart { index, block } => match block {
                StartBlock::Text(Some(t)) => self.content(out, &t),
                StartBlock::ToolUse { id, name } => {
                    if self
                        .json_tool
                        .as_deref()
                        .is_some_and(|j| name.text().as_deref() == Some(j))
                    {
                        self.json_block = Some(index);
                        return;
                    }
                    let k = self.tools.len() as u64;
                    self.tools.push((index, k));
                    self.delta(out, None, |w| {
                        w.key("tool_calls").begin_array().begin_object();
                        w.key("index").u64(k).key("id");
                        id.write(w);
                        w.key("type").str("function");
                        w.key("function").begin_object().key("name");
                        name.write(w);
                        w.key("arguments").str("");
                        w.end_object().end_object().end_array();
                    });
                }
                StartBlock::Text(None) | StartBlock::Other => {}
            },
            Event::BlockDelta { index, delta } => match delta {
                Delta::Text(t) => self.content(out, &t),
                Delta::Json(part) if self.json_block == Some(index) => self.content(out, &part),
                Delta::Json(part) => {
                    let Some(&(_, k)) = self.tools.iter().find(|(i, _)| *i == index) else {
                        return;
                    };
                    if part.is_empty() {
                        return;
                    }
                    self.delta(out, None, |w| {
                        w.key("tool_calls").begin_array().begin_object();
                        w.key("index").u64(k);
                        w.key("function").begin_object().key("arguments");
                        part.write(w);
                        w.end_object().end_object().end_array();
                    });
                }
                Delta::Other => {}
            },
            Event::MessageDelta {
                stop_reason, usage, ..
            } => {
                self.usage = usage;
                if let Some(stop) = stop_reason {
                    let finish = if self.json_block.is_some() {
                        "stop"
                    } else {
                        finish_reason(stop.raw())
                    };
                    self.finish = Some(finish);
                    self.delta(out, Some(finish), |_| {});
                }
            }
            Event::MessageStop => {
                if self.include_usage {
                    let mut w = self.chunk();
                    w.key("choices").begin_array().end_array();
                    w.key("usage");
                    tokens(&self.usage).write(&mut w);
                    w.end_object();
                    sse(out, None, &w);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Event::Error(error) => {
                let mut w = Writer::with_capacity(error.bytes().len() + 16);
                w.begin_object().key("error");
                error.write(&mut w);
                w.end_object();
                sse(out, None, &w);
            }
            Event::BlockStop { .. } | Event::Ping | Event::Other => {}
        }
    }
}

/// Translates a whole Anthropic stream at once (as the tests read it).
#[cfg(test)]
pub fn whole_stream(c: &Crossing, body: &[u8]) -> Vec<u8> {
    let mut s = Stream::new(c);
    let mut out = Vec::new();
    let mut events = crate::api::SseEvents::default();
    events.feed(body, |_, data| s.event(data, &mut out));
    events.finish(|_, data| s.event(data, &mut out));
    out
}
