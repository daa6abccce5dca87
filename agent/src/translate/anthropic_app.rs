//! An app written for Anthropic's Messages API, served by a backend that
//! speaks OpenAI's chat completions: the request out, the answer, the
//! error and the stream back.

use std::borrow::Cow;

use crate::api::Api;
use crate::api::anthropic::messages::{self as an, Block, Choice, Image, ToolResult};
use crate::api::openai::chat::{self as oa, Chunk, Content, Part, Role, ToolChoice};
use crate::api::parse::{Invalid, Str, Unsupported, document};
use crate::json::{Reader, Writer};
use crate::policy::Backend;

use super::openai_app::arguments;
use super::{Crossing, Refusal, Translated, sse, translated};

/// The most stop sequences OpenAI takes.
const MAX_STOP: usize = 4;

/// Translates a Messages request into an OpenAI chat completion request.
pub fn request(body: &[u8], backend: &Backend) -> Result<Translated, Refusal> {
    let mut unsupported = Unsupported::default();
    let q = document(body, |r| an::Request::read(r, &mut unsupported)).map_err(Refusal::Invalid)?;
    if q.max_tokens.is_none() {
        return Err(Refusal::Invalid(Invalid::new("required").key("max_tokens")));
    }
    let mut out = to_chat(&q, &mut unsupported);
    let dropped = super::settle_unsupported(unsupported.0, backend, "OpenAI's chat completions")?;
    if dropped.iter().any(|d| d.field == "stop_sequences") {
        out.stop.truncate(MAX_STOP);
    }
    let crossing = Crossing {
        app: Api::Messages,
        backend: Api::ChatCompletions,
        json_tool: None,
        include_usage: false,
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

/// The chat completion request for a Messages request. Fields with no
/// counterpart are noted in `unsupported`.
pub fn to_chat<'a>(q: &an::Request<'a>, unsupported: &mut Unsupported) -> oa::Request<'a> {
    let mut out = oa::Request {
        model: q.model.clone(),
        max_completion_tokens: q.max_tokens,
        temperature: q.temperature.clone(),
        top_p: q.top_p.clone(),
        stop: q.stop_sequences.clone(),
        stream: q.stream,
        // Usage comes at the end of a stream only when asked for.
        include_usage: (q.stream == Some(true)).then_some(true),
        user: q.user_id.clone(),
        ..oa::Request::default()
    };
    if q.stop_sequences.len() > MAX_STOP {
        unsupported.note(
            "",
            b"stop_sequences",
            "more than 4, the most OpenAI's chat completions take",
        );
    }
    match &q.system {
        Some(an::System::Text(t)) => out
            .messages
            .push(message(Role::System, Content::Text(t.clone()))),
        Some(an::System::Blocks(blocks)) => out.messages.push(message(
            Role::System,
            Content::Parts(blocks.iter().cloned().map(Part::Text).collect()),
        )),
        None => {}
    }
    for m in &q.messages {
        match (m.role, &m.content) {
            (an::Role::User, an::Content::Text(t)) => {
                out.messages
                    .push(message(Role::User, Content::Text(t.clone())));
            }
            (an::Role::Assistant, an::Content::Text(t)) => {
                out.messages
                    .push(message(Role::Assistant, Content::Text(t.clone())));
            }
            (an::Role::User, an::Content::Blocks(blocks)) => {
                // Tool results first: they answer the assistant's calls.
                let mut parts = Vec::new();
                for b in blocks {
                    match b {
                        Block::ToolResult {
                            tool_use_id,
                            content,
                        } => out.messages.push(oa::Message {
                            role: Role::Tool,
                            content: match content {
                                ToolResult::Text(t) => Content::Text(t.clone()),
                                ToolResult::Blocks(texts) => {
                                    Content::Parts(texts.iter().cloned().map(Part::Text).collect())
                                }
                                ToolResult::None => Content::Text(Str(Cow::Borrowed(b""))),
                            },
                            tool_calls: Vec::new(),
                            tool_call_id: Some(tool_use_id.clone()),
                        }),
                        Block::Text(t) => parts.push(Part::Text(t.clone())),
                        Block::Image(image) => parts.push(Part::Image(image_url(image))),
                        Block::ToolUse { .. } => {}
                    }
                }
                if !parts.is_empty() {
                    out.messages
                        .push(message(Role::User, Content::Parts(parts)));
                }
            }
            (an::Role::Assistant, an::Content::Blocks(blocks)) => {
                let mut texts = Vec::new();
                let mut calls = Vec::new();
                for b in blocks {
                    match b {
                        Block::Text(t) => texts.push(t.clone()),
                        Block::ToolUse { id, name, input } => calls.push(oa::ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            arguments: Str::of_json(input.bytes()),
                        }),
                        Block::Image(_) | Block::ToolResult { .. } => {}
                    }
                }
                let content = match texts.len() {
                    0 => Content::None,
                    1 => Content::Text(texts.remove(0)),
                    _ => Content::Parts(texts.into_iter().map(Part::Text).collect()),
                };
                out.messages.push(oa::Message {
                    role: Role::Assistant,
                    content,
                    tool_calls: calls,
                    tool_call_id: None,
                });
            }
        }
    }
    out.tools = q
        .tools
        .iter()
        .map(|t| oa::Tool {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: Some(t.input_schema.clone()),
        })
        .collect();
    if let Some(c) = &q.tool_choice {
        out.tool_choice = Some(match &c.kind {
            Choice::Auto => ToolChoice::Auto,
            Choice::Any => ToolChoice::Required,
            Choice::None => ToolChoice::None,
            Choice::Tool(name) => ToolChoice::Function(name.clone()),
        });
        out.parallel_tool_calls = c.disable_parallel_tool_use.map(|d| !d);
    }
    out
}

fn message(role: Role, content: Content<'_>) -> oa::Message<'_> {
    oa::Message {
        role,
        content,
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

/// An Anthropic image source as an OpenAI image URL: base64 data becomes
/// a `data:` URL.
fn image_url<'a>(image: &Image<'a>) -> Str<'a> {
    match image {
        Image::Url(url) => url.clone(),
        Image::Base64 { media_type, data } => {
            let mut url = Vec::with_capacity(media_type.raw().len() + data.raw().len() + 13);
            url.extend_from_slice(b"data:");
            url.extend_from_slice(media_type.raw());
            url.extend_from_slice(b";base64,");
            url.extend_from_slice(data.raw());
            Str(Cow::Owned(url))
        }
    }
}

/// Anthropic's stop reason for an OpenAI finish reason.
pub fn stop_reason(finish: &[u8]) -> &'static str {
    match finish {
        b"length" => "max_tokens",
        b"tool_calls" | b"function_call" => "tool_use",
        b"content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's token counts for OpenAI's: the input leaves cache reads
/// out.
pub fn tokens(t: &oa::Tokens) -> an::Tokens {
    an::Tokens {
        input: t.prompt.saturating_sub(t.cached),
        output: t.completion,
        cache_read: t.cached,
        cache_creation: 0,
    }
}

/// Turns a chat completion into a Messages answer.
pub fn answer(body: &[u8], model: Option<&str>) -> Result<Vec<u8>, Invalid> {
    let a = document(body, oa::Answer::read)?;
    let mut out = to_message(&a)?;
    if let Some(m) = model {
        out.model = Some(Str::from_text(m));
    }
    let mut w = Writer::with_capacity(body.len() + 128);
    out.write(&mut w);
    Ok(w.finish())
}

/// The Messages answer for a chat completion.
pub fn to_message<'a>(a: &oa::Answer<'a>) -> Result<an::Answer<'a>, Invalid> {
    let mut content = Vec::new();
    if let Some(t) = a.content.as_ref().or(a.refusal.as_ref())
        && !t.is_empty()
    {
        content.push(Block::Text(t.clone()));
    }
    for (j, call) in a.tool_calls.iter().enumerate() {
        content.push(Block::ToolUse {
            id: call.id.clone(),
            name: call.name.clone(),
            input: arguments(&call.arguments).map_err(|e| {
                e.key("arguments")
                    .key("function")
                    .index(j)
                    .key("tool_calls")
                    .key("message")
                    .index(0)
                    .key("choices")
            })?,
        });
    }
    let stop = a
        .finish_reason
        .as_ref()
        .map_or("end_turn", |f| stop_reason(f.raw()));
    Ok(an::Answer {
        id: a.id.clone(),
        model: a.model.clone(),
        content,
        stop_reason: Some(Str(Cow::Borrowed(stop.as_bytes()))),
        stop_sequence: None,
        usage: a.usage.as_ref().map(tokens),
    })
}

/// What is open in the Anthropic stream being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    /// A tool-use block: its Anthropic index, for OpenAI tool call `k`.
    Tool(u64, u64),
}

/// An OpenAI stream turned into Anthropic events as its chunks arrive.
#[derive(Default)]
pub struct Stream {
    started: bool,
    open: Option<Open>,
    next_block: u64,
    /// OpenAI tool-call index to Anthropic block index.
    tools: Vec<(u64, u64)>,
    stop: Option<&'static str>,
    usage: oa::Tokens,
    done: bool,
}

impl Stream {
    fn start(&mut self, chunk: &Chunk<'_>, out: &mut Vec<u8>) {
        self.started = true;
        let mut w = Writer::with_capacity(256);
        w.begin_object().key("type").str("message_start");
        w.key("message").begin_object();
        w.key("id");
        match &chunk.id {
            Some(id) => id.write(&mut w),
            None => {
                w.str("");
            }
        }
        w.key("type").str("message").key("role").str("assistant");
        w.key("model");
        match &chunk.model {
            Some(m) => m.write(&mut w),
            None => {
                w.str("");
            }
        }
        w.key("content").begin_array().end_array();
        w.key("stop_reason").null().key("stop_sequence").null();
        w.key("usage");
        an::Tokens::default().write(&mut w);
        w.end_object().end_object();
        sse(out, Some("message_start"), &w);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let index = match self.open.take() {
            Some(Open::Text(i) | Open::Tool(i, _)) => i,
            None => return,
        };
        let mut w = Writer::with_capacity(64);
        w.begin_object().key("type").str("content_block_stop");
        w.key("index").u64(index).end_object();
        sse(out, Some("content_block_stop"), &w);
    }

    fn text(&mut self, t: &Str<'_>, out: &mut Vec<u8>) {
        if t.is_empty() {
            return;
        }
        let index = match self.open {
            Some(Open::Text(i)) => i,
            _ => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                let mut w = Writer::with_capacity(96);
                w.begin_object().key("type").str("content_block_start");
                w.key("index").u64(i);
                w.key("content_block")
                    .begin_object()
                    .key("type")
                    .str("text")
                    .key("text")
                    .str("")
                    .end_object()
                    .end_object();
                sse(out, Some("content_block_start"), &w);
                self.open = Some(Open::Text(i));
                i
            }
        };
        let mut w = Writer::with_capacity(64 + t.raw().len());
        w.begin_object().key("type").str("content_block_delta");
        w.key("index").u64(index);
        w.key("delta").begin_object().key("type").str("text_delta");
        w.key("text");
        t.write(&mut w);
        w.end_object().end_object();
        sse(out, Some("content_block_delta"), &w);
    }

    fn tool(&mut self, d: &oa::ToolDelta<'_>, out: &mut Vec<u8>) {
        let known = self
            .tools
            .iter()
            .find(|(k, _)| *k == d.index)
            .map(|(_, i)| *i);
        let index = match known {
            Some(i) => i,
            None => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                self.tools.push((d.index, i));
                let mut w = Writer::with_capacity(128);
                w.begin_object().key("type").str("content_block_start");
                w.key("index").u64(i);
                w.key("content_block").begin_object();
                w.key("type").str("tool_use").key("id");
                match &d.id {
                    Some(id) => id.write(&mut w),
                    None => {
                        w.str("");
                    }
                }
                w.key("name");
                match &d.name {
                    Some(n) => n.write(&mut w),
                    None => {
                        w.str("");
                    }
                }
                w.key("input").begin_object().end_object();
                w.end_object().end_object();
                sse(out, Some("content_block_start"), &w);
                self.open = Some(Open::Tool(i, d.index));
                i
            }
        };
        if let Some(args) = d.arguments.as_ref().filter(|a| !a.is_empty()) {
            let mut w = Writer::with_capacity(80 + args.raw().len());
            w.begin_object().key("type").str("content_block_delta");
            w.key("index").u64(index);
            w.key("delta")
                .begin_object()
                .key("type")
                .str("input_json_delta");
            w.key("partial_json");
            args.write(&mut w);
            w.end_object().end_object();
            sse(out, Some("content_block_delta"), &w);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let mut w = Writer::with_capacity(192);
        w.begin_object().key("type").str("message_delta");
        w.key("delta")
            .begin_object()
            .key("stop_reason")
            .str(self.stop.unwrap_or("end_turn"))
            .key("stop_sequence")
            .null()
            .end_object();
        w.key("usage");
        tokens(&self.usage).write(&mut w);
        w.end_object();
        sse(out, Some("message_delta"), &w);
        let mut w = Writer::with_capacity(32);
        w.begin_object()
            .key("type")
            .str("message_stop")
            .end_object();
        sse(out, Some("message_stop"), &w);
    }

    /// One event of the OpenAI stream.
    pub fn event(&mut self, _name: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>) {
        if data == b"[DONE]" {
            if !self.done {
                self.done = true;
                if !self.started {
                    self.start(&Chunk::default(), out);
                }
                self.finish(out);
            }
            return;
        }
        let mut r = Reader::new(data);
        // Chunks that cannot be read pass nothing on; the stream's check
        // judges them.
        let Ok(chunk) = Chunk::read(&mut r) else {
            return;
        };
        if let Some(error) = &chunk.error {
            let mut w = Writer::with_capacity(error.bytes().len() + 32);
            w.begin_object().key("type").str("error").key("error");
            error.write(&mut w);
            w.end_object();
            sse(out, Some("error"), &w);
            return;
        }
        if !self.started {
            self.start(&chunk, out);
        }
        if let Some(t) = chunk.content.as_ref().or(chunk.refusal.as_ref()) {
            self.text(t, out);
        }
        for d in &chunk.tool_calls {
            self.tool(d, out);
        }
        if let Some(f) = &chunk.finish_reason {
            self.stop = Some(stop_reason(f.raw()));
            self.close(out);
        }
        if let Some(u) = chunk.usage {
            self.usage = u;
        }
    }
}

/// Translates a whole OpenAI stream at once (as the tests read it).
#[cfg(test)]
pub fn whole_stream(body: &[u8]) -> Vec<u8> {
    let mut s = Stream::default();
    let mut out = Vec::new();
    let mut events = crate::api::SseEvents::default();
    events.feed(body, |name, data| s.event(name, data, &mut out));
    events.finish(|name, data| s.event(name, data, &mut out));
    out
}
