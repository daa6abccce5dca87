//! Anthropic's Messages API as plain types: the request, the answer and a
//! stream event, read from JSON ([`Request::read`], [`Answer::read`],
//! [`Event::read`]) and written back ([`Request::write`],
//! [`Answer::write`]). Only what crosses to another API family is kept;
//! a request field with no counterpart is noted as it is read
//! ([`Unsupported`]), never silently lost. `cache_control` marks are the
//! exception: OpenAI caches prompts by itself, so they are let go.

use crate::api::parse::{
    Invalid, Json, Raw, Str, Unsupported, boolean, count, document, list, null, number, object,
    opt_string, put, put_list, put_model, put_or_null, raw, raw_object, string, unmapped,
};
use crate::json::{Reader, Writer};

/// Why a field has no counterpart in OpenAI's chat completions.
const NO_COUNTERPART: &str = "has no counterpart in OpenAI's chat completions";

/// A Messages request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request<'a> {
    pub model: Option<Str<'a>>,
    pub system: Option<System<'a>>,
    pub messages: Vec<Message<'a>>,
    pub max_tokens: Option<u64>,
    pub stop_sequences: Vec<Str<'a>>,
    pub temperature: Option<Raw<'a>>,
    pub top_p: Option<Raw<'a>>,
    pub stream: Option<bool>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    /// `metadata.user_id`.
    pub user_id: Option<Str<'a>>,
}

/// The system prompt: a string, or text blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum System<'a> {
    Text(Str<'a>),
    Blocks(Vec<Str<'a>>),
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Content<'a>,
}

/// A message's content: a string, or blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content<'a> {
    Text(Str<'a>),
    Blocks(Vec<Block<'a>>),
}

/// A content block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block<'a> {
    Text(Str<'a>),
    Image(Image<'a>),
    ToolUse {
        id: Str<'a>,
        name: Str<'a>,
        /// The arguments: a JSON object.
        input: Raw<'a>,
    },
    ToolResult {
        tool_use_id: Str<'a>,
        content: ToolResult<'a>,
    },
}

/// An image's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image<'a> {
    Base64 { media_type: Str<'a>, data: Str<'a> },
    Url(Str<'a>),
}

/// What a tool returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolResult<'a> {
    None,
    Text(Str<'a>),
    /// Text blocks.
    Blocks(Vec<Str<'a>>),
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool<'a> {
    pub name: Str<'a>,
    pub description: Option<Str<'a>>,
    pub input_schema: Raw<'a>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolChoice<'a> {
    pub kind: Choice<'a>,
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<'a> {
    Auto,
    Any,
    None,
    Tool(Str<'a>),
}

/// Skips a `cache_control` mark (let go: OpenAI caches by itself) or notes
/// another field with no counterpart.
fn other(
    r: &mut Reader<'_>,
    unsupported: &mut Unsupported,
    at: impl std::fmt::Display,
    key: &[u8],
) -> Result<(), Invalid> {
    if key == b"cache_control" || key == b"citations" {
        return Ok(r.skip()?);
    }
    unmapped(r, unsupported, at, key, NO_COUNTERPART)
}

impl<'a> Request<'a> {
    /// Reads a request, noting each field with no counterpart.
    pub fn read(r: &mut Reader<'a>, unsupported: &mut Unsupported) -> Result<Self, Invalid> {
        let mut q = Request::default();
        let mut messages = false;
        object(r, |r, key| {
            match key {
                b"model" => q.model = Some(string(r).map_err(|e| e.key("model"))?),
                b"system" => {
                    q.system = System::read(r, unsupported).map_err(|e| e.key("system"))?
                }
                b"messages" => {
                    messages = true;
                    list(r, |r, i| {
                        q.messages.push(Message::read(r, i, unsupported)?);
                        Ok(())
                    })
                    .map_err(|e| e.key("messages"))?;
                }
                b"max_tokens" => q.max_tokens = count(r).map_err(|e| e.key("max_tokens"))?,
                b"stop_sequences" => {
                    if !null(r)? {
                        list(r, |r, _| {
                            q.stop_sequences.push(string(r)?);
                            Ok(())
                        })
                        .map_err(|e| e.key("stop_sequences"))?;
                    }
                }
                b"temperature" => q.temperature = number(r).map_err(|e| e.key("temperature"))?,
                b"top_p" => q.top_p = number(r).map_err(|e| e.key("top_p"))?,
                b"stream" => q.stream = boolean(r).map_err(|e| e.key("stream"))?,
                b"tools" => {
                    if !null(r)? {
                        list(r, |r, i| {
                            if let Some(t) = Tool::read(r, i, unsupported)? {
                                q.tools.push(t);
                            }
                            Ok(())
                        })
                        .map_err(|e| e.key("tools"))?;
                    }
                }
                b"tool_choice" => {
                    q.tool_choice = ToolChoice::read(r).map_err(|e| e.key("tool_choice"))?;
                }
                b"metadata" => {
                    if !null(r)? {
                        object(r, |r, key| {
                            if key == b"user_id" {
                                q.user_id = opt_string(r).map_err(|e| e.key("user_id"))?;
                                Ok(())
                            } else {
                                unmapped(r, unsupported, "metadata", key, NO_COUNTERPART)
                            }
                        })
                        .map_err(|e| e.key("metadata"))?;
                    }
                }
                _ => unmapped(r, unsupported, "", key, NO_COUNTERPART)?,
            }
            Ok(())
        })?;
        if !messages {
            return Err(Invalid::new("required").key("messages"));
        }
        Ok(q)
    }

    /// Writes the request, with `model` in place of its own when given.
    pub fn write(&self, w: &mut Writer, model: Option<&str>) {
        w.begin_object();
        put_model(w, model, self.model.as_ref());
        match &self.system {
            Some(System::Text(t)) => {
                w.key("system");
                t.write(w);
            }
            Some(System::Blocks(blocks)) => {
                w.key("system").begin_array();
                for b in blocks {
                    text_block(w, b);
                }
                w.end_array();
            }
            None => {}
        }
        w.key("messages").begin_array();
        for m in &self.messages {
            w.begin_object().key("role").str(match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            });
            w.key("content");
            match &m.content {
                Content::Text(t) => {
                    t.write(w);
                }
                Content::Blocks(blocks) => {
                    w.begin_array();
                    for b in blocks {
                        b.write(w);
                    }
                    w.end_array();
                }
            }
            w.end_object();
        }
        w.end_array();
        put(w, "max_tokens", self.max_tokens.as_ref());
        put_list(w, "stop_sequences", &self.stop_sequences);
        put(w, "temperature", self.temperature.as_ref());
        put(w, "top_p", self.top_p.as_ref());
        put(w, "stream", self.stream.as_ref());
        if !self.tools.is_empty() {
            w.key("tools").begin_array();
            for t in &self.tools {
                w.begin_object().key("name");
                t.name.write(w);
                put(w, "description", t.description.as_ref());
                w.key("input_schema");
                t.input_schema.write(w);
                w.end_object();
            }
            w.end_array();
        }
        if let Some(c) = &self.tool_choice {
            w.key("tool_choice").begin_object().key("type");
            match &c.kind {
                Choice::Auto => {
                    w.str("auto");
                }
                Choice::Any => {
                    w.str("any");
                }
                Choice::None => {
                    w.str("none");
                }
                Choice::Tool(name) => {
                    w.str("tool").key("name");
                    name.write(w);
                }
            }
            put(
                w,
                "disable_parallel_tool_use",
                c.disable_parallel_tool_use.as_ref(),
            );
            w.end_object();
        }
        if let Some(u) = &self.user_id {
            w.key("metadata").begin_object().key("user_id");
            u.write(w);
            w.end_object();
        }
        w.end_object();
    }
}

fn text_block(w: &mut Writer, text: &Str<'_>) {
    w.begin_object().key("type").str("text").key("text");
    text.write(w);
    w.end_object();
}

/// Text blocks (`{"type": "text", "text": ...}`), as system prompts and
/// tool results hold them.
fn text_blocks<'a>(
    r: &mut Reader<'a>,
    unsupported: &mut Unsupported,
    at: &dyn Fn(usize) -> String,
) -> Result<Vec<Str<'a>>, Invalid> {
    let mut all = Vec::new();
    list(r, |r, i| {
        let mut kind = None;
        let mut text = None;
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"text" => text = Some(string(r).map_err(|e| e.key("text"))?),
                _ => other(r, unsupported, at(i), key)?,
            }
            Ok(())
        })?;
        match kind {
            Some(k) if k.is("text") => {
                all.push(text.ok_or_else(|| Invalid::new("required").key("text"))?);
            }
            Some(k) => unsupported.note(
                at(i),
                format!("type \"{}\"", String::from_utf8_lossy(k.raw())).as_bytes(),
                NO_COUNTERPART,
            ),
            None => return Err(Invalid::new("required").key("type")),
        }
        Ok(())
    })?;
    Ok(all)
}

impl<'a> System<'a> {
    fn read(r: &mut Reader<'a>, unsupported: &mut Unsupported) -> Result<Option<Self>, Invalid> {
        match r.peek() {
            Some(b'n') if r.null()? => Ok(None),
            Some(b'"') => Ok(Some(System::Text(string(r)?))),
            Some(b'[') => Ok(Some(System::Blocks(text_blocks(r, unsupported, &|i| {
                format!("system[{i}]")
            })?))),
            _ => Err(Invalid::new("must be a string or a list of text blocks")),
        }
    }
}

impl<'a> Message<'a> {
    fn read(r: &mut Reader<'a>, i: usize, unsupported: &mut Unsupported) -> Result<Self, Invalid> {
        let mut role = None;
        let mut content = None;
        object(r, |r, key| {
            match key {
                b"role" => {
                    let s = string(r).map_err(|e| e.key("role"))?;
                    role = Some(match s.raw() {
                        b"user" => Role::User,
                        b"assistant" => Role::Assistant,
                        _ => return Err(Invalid::new("must be user or assistant").key("role")),
                    });
                }
                b"content" => {
                    content = Some(match r.peek() {
                        Some(b'"') => Content::Text(string(r)?),
                        Some(b'[') => {
                            let mut blocks = Vec::new();
                            list(r, |r, j| {
                                if let Some(b) = Block::read(r, unsupported, &|| {
                                    format!("messages[{i}].content[{j}]")
                                })? {
                                    blocks.push(b);
                                }
                                Ok(())
                            })
                            .map_err(|e| e.key("content"))?;
                            Content::Blocks(blocks)
                        }
                        _ => {
                            return Err(
                                Invalid::new("must be a string or a list of blocks").key("content")
                            );
                        }
                    });
                }
                _ => other(r, unsupported, format!("messages[{i}]"), key)?,
            }
            Ok(())
        })?;
        Ok(Message {
            role: role.ok_or_else(|| Invalid::new("required").key("role"))?,
            content: content.ok_or_else(|| Invalid::new("required").key("content"))?,
        })
    }
}

impl<'a> Block<'a> {
    /// A block; `None` for a kind with no counterpart (noted).
    fn read(
        r: &mut Reader<'a>,
        unsupported: &mut Unsupported,
        at: &dyn Fn() -> String,
    ) -> Result<Option<Self>, Invalid> {
        let mut kind = None;
        let (mut text, mut id, mut name, mut input, mut source) = (None, None, None, None, None);
        let (mut tool_use_id, mut result) = (None, ToolResult::None);
        let mut is_error = false;
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"text" => text = Some(string(r).map_err(|e| e.key("text"))?),
                b"id" => id = Some(string(r).map_err(|e| e.key("id"))?),
                b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                b"input" => input = Some(raw_object(r).map_err(|e| e.key("input"))?),
                b"source" => source = Some(r.raw()?),
                b"tool_use_id" => {
                    tool_use_id = Some(string(r).map_err(|e| e.key("tool_use_id"))?);
                }
                b"content" => {
                    result = match r.peek() {
                        Some(b'n') if r.null()? => ToolResult::None,
                        Some(b'"') => ToolResult::Text(string(r)?),
                        Some(b'[') => ToolResult::Blocks(
                            text_blocks(r, unsupported, &|k| format!("{}.content[{k}]", at()))
                                .map_err(|e| e.key("content"))?,
                        ),
                        _ => {
                            return Err(
                                Invalid::new("must be a string or a list of blocks").key("content")
                            );
                        }
                    };
                }
                b"is_error" => is_error = boolean(r)?.unwrap_or(false),
                _ => other(r, unsupported, at(), key)?,
            }
            Ok(())
        })?;
        let kind = kind.ok_or_else(|| Invalid::new("required").key("type"))?;
        let need = |v: Option<Str<'a>>, field: &'static str| {
            v.ok_or_else(|| Invalid::new("required").key(field))
        };
        Ok(Some(match kind.raw() {
            b"text" => Block::Text(need(text, "text")?),
            b"image" => {
                let source = source.ok_or_else(|| Invalid::new("required").key("source"))?;
                Block::Image(document(source, Image::read).map_err(|e| e.key("source"))?)
            }
            b"tool_use" => Block::ToolUse {
                id: need(id, "id")?,
                name: need(name, "name")?,
                input: input.unwrap_or(Raw(std::borrow::Cow::Borrowed(b"{}"))),
            },
            b"tool_result" => {
                if is_error {
                    unsupported.note(at(), b"is_error", NO_COUNTERPART);
                }
                Block::ToolResult {
                    tool_use_id: need(tool_use_id, "tool_use_id")?,
                    content: result,
                }
            }
            _ => {
                unsupported.note(
                    at(),
                    format!("type \"{}\"", String::from_utf8_lossy(kind.raw())).as_bytes(),
                    NO_COUNTERPART,
                );
                return Ok(None);
            }
        }))
    }

    pub fn write(&self, w: &mut Writer) {
        match self {
            Block::Text(t) => text_block(w, t),
            Block::Image(image) => {
                w.begin_object().key("type").str("image");
                w.key("source").begin_object();
                match image {
                    Image::Base64 { media_type, data } => {
                        w.key("type").str("base64").key("media_type");
                        media_type.write(w);
                        w.key("data");
                        data.write(w);
                    }
                    Image::Url(url) => {
                        w.key("type").str("url").key("url");
                        url.write(w);
                    }
                }
                w.end_object().end_object();
            }
            Block::ToolUse { id, name, input } => {
                w.begin_object().key("type").str("tool_use").key("id");
                id.write(w);
                w.key("name");
                name.write(w);
                w.key("input");
                input.write(w);
                w.end_object();
            }
            Block::ToolResult {
                tool_use_id,
                content,
            } => {
                w.begin_object().key("type").str("tool_result");
                w.key("tool_use_id");
                tool_use_id.write(w);
                match content {
                    ToolResult::None => {}
                    ToolResult::Text(t) => {
                        w.key("content");
                        t.write(w);
                    }
                    ToolResult::Blocks(blocks) => {
                        w.key("content").begin_array();
                        for b in blocks {
                            text_block(w, b);
                        }
                        w.end_array();
                    }
                }
                w.end_object();
            }
        }
    }
}

impl<'a> Image<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, Invalid> {
        let (mut kind, mut media_type, mut data, mut url) = (None, None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"media_type" => media_type = Some(string(r).map_err(|e| e.key("media_type"))?),
                b"data" => data = Some(string(r).map_err(|e| e.key("data"))?),
                b"url" => url = Some(string(r).map_err(|e| e.key("url"))?),
                _ => r.skip()?,
            }
            Ok(())
        })?;
        let need = |v: Option<Str<'a>>, field: &'static str| {
            v.ok_or_else(|| Invalid::new("required").key(field))
        };
        match kind {
            Some(k) if k.is("base64") => Ok(Image::Base64 {
                media_type: need(media_type, "media_type")?,
                data: need(data, "data")?,
            }),
            Some(k) if k.is("url") => Ok(Image::Url(need(url, "url")?)),
            _ => Err(Invalid::new("must be \"base64\" or \"url\"").key("type")),
        }
    }
}

impl<'a> Tool<'a> {
    /// A client tool; `None` for a server tool (noted).
    fn read(
        r: &mut Reader<'a>,
        i: usize,
        unsupported: &mut Unsupported,
    ) -> Result<Option<Self>, Invalid> {
        let (mut kind, mut name, mut description, mut schema) = (None, None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = opt_string(r).map_err(|e| e.key("type"))?,
                b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                b"description" => description = opt_string(r).map_err(|e| e.key("description"))?,
                b"input_schema" => {
                    schema = Some(raw_object(r).map_err(|e| e.key("input_schema"))?);
                }
                _ => other(r, unsupported, format!("tools[{i}]"), key)?,
            }
            Ok(())
        })?;
        if let Some(k) = kind.filter(|k| !k.is("custom")) {
            unsupported.note(
                format!("tools[{i}]"),
                format!("type \"{}\"", String::from_utf8_lossy(k.raw())).as_bytes(),
                NO_COUNTERPART,
            );
            return Ok(None);
        }
        Ok(Some(Tool {
            name: name.ok_or_else(|| Invalid::new("required").key("name"))?,
            description,
            input_schema: schema.ok_or_else(|| Invalid::new("required").key("input_schema"))?,
        }))
    }
}

impl<'a> ToolChoice<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Option<Self>, Invalid> {
        if null(r)? {
            return Ok(None);
        }
        let (mut kind, mut name, mut disable) = (None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                b"disable_parallel_tool_use" => disable = boolean(r)?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        let kind = match kind {
            Some(k) if k.is("auto") => Choice::Auto,
            Some(k) if k.is("any") => Choice::Any,
            Some(k) if k.is("none") => Choice::None,
            Some(k) if k.is("tool") => {
                Choice::Tool(name.ok_or_else(|| Invalid::new("required").key("name"))?)
            }
            _ => {
                return Err(
                    Invalid::new("must be \"auto\", \"any\", \"none\" or \"tool\"").key("type"),
                );
            }
        };
        Ok(Some(ToolChoice {
            kind,
            disable_parallel_tool_use: disable,
        }))
    }
}

/// Token counts of an answer: `input_tokens` (cache reads and writes not
/// included), `output_tokens`, `cache_read_input_tokens` and
/// `cache_creation_input_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

impl From<Tokens> for crate::api::Usage {
    /// Every prompt token counts as input, cached ones included.
    fn from(t: Tokens) -> Self {
        crate::api::Usage {
            input: t.input + t.cache_read + t.cache_creation,
            output: t.output,
            cache_read: t.cache_read,
            cache_write: t.cache_creation,
            reported: true,
        }
    }
}

impl Json for Tokens {
    fn write_to(&self, w: &mut Writer) {
        self.write(w);
    }
}

impl Tokens {
    /// Reads `usage`.
    pub fn read(r: &mut Reader<'_>) -> Result<Tokens, Invalid> {
        let mut t = Tokens::default();
        Tokens::read_into(r, &mut t)?;
        Ok(t)
    }

    /// Reads `usage`; fields it lacks stay as they were (a stream's counts
    /// arrive in pieces).
    fn read_into(r: &mut Reader<'_>, t: &mut Tokens) -> Result<(), Invalid> {
        if null(r)? {
            return Ok(());
        }
        object(r, |r, key| {
            let field = match key {
                b"input_tokens" => &mut t.input,
                b"output_tokens" => &mut t.output,
                b"cache_read_input_tokens" => &mut t.cache_read,
                b"cache_creation_input_tokens" => &mut t.cache_creation,
                _ => return Ok(r.skip()?),
            };
            if let Some(n) = count(r)? {
                *field = n;
            }
            Ok(())
        })
        .map_err(|e| e.key("usage"))
    }

    pub fn write(&self, w: &mut Writer) {
        w.begin_object()
            .key("input_tokens")
            .u64(self.input)
            .key("output_tokens")
            .u64(self.output)
            .key("cache_read_input_tokens")
            .u64(self.cache_read)
            .key("cache_creation_input_tokens")
            .u64(self.cache_creation)
            .end_object();
    }
}

/// A (non-streamed) message answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer<'a> {
    pub id: Option<Str<'a>>,
    pub model: Option<Str<'a>>,
    /// Text and tool-use blocks (others, such as thinking, are let go).
    pub content: Vec<Block<'a>>,
    pub stop_reason: Option<Str<'a>>,
    pub stop_sequence: Option<Str<'a>>,
    pub usage: Option<Tokens>,
}

impl<'a> Answer<'a> {
    /// Reads an answer, checking it as the answer check does (see
    /// [`crate::api::read_message`]).
    pub fn read(body: &'a [u8]) -> Result<Self, Invalid> {
        crate::api::read_message(body, &mut crate::api::Usage::default())
            .map_err(|m| Invalid::new(m.0))
    }

    pub fn write(&self, w: &mut Writer) {
        w.begin_object();
        put(w, "id", self.id.as_ref());
        w.key("type").str("message").key("role").str("assistant");
        put(w, "model", self.model.as_ref());
        w.key("content").begin_array();
        for b in &self.content {
            b.write(w);
        }
        w.end_array();
        put_or_null(w, "stop_reason", self.stop_reason.as_ref());
        put_or_null(w, "stop_sequence", self.stop_sequence.as_ref());
        put(w, "usage", self.usage.as_ref());
        w.end_object();
    }
}

/// A stream event, as far as translation reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    MessageStart {
        id: Option<Str<'a>>,
        model: Option<Str<'a>>,
        usage: Tokens,
    },
    BlockStart {
        index: u64,
        block: StartBlock<'a>,
    },
    BlockDelta {
        index: u64,
        delta: Delta<'a>,
    },
    BlockStop {
        index: u64,
    },
    MessageDelta {
        stop_reason: Option<Str<'a>>,
        /// The counts this event gives (the rest stay as they were).
        usage: Tokens,
        has_usage: bool,
    },
    MessageStop,
    Ping,
    /// An error sent in the stream (its `error` object).
    Error(Raw<'a>),
    Other,
}

/// The kind of a content block starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartBlock<'a> {
    Text(Option<Str<'a>>),
    ToolUse {
        id: Str<'a>,
        name: Str<'a>,
    },
    /// Thinking and other blocks with no counterpart.
    Other,
}

/// A piece of a content block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta<'a> {
    Text(Str<'a>),
    /// A piece of a tool call's input JSON.
    Json(Str<'a>),
    Other,
}

impl<'a> Event<'a> {
    /// Reads an event's data; `usage` holds the counts so far and is
    /// updated by the counts it gives.
    pub fn read(r: &mut Reader<'a>, usage: &Tokens) -> Result<Self, Invalid> {
        let mut kind = None;
        let (mut id, mut model, mut index) = (None, None, 0);
        let mut tokens = *usage;
        let mut has_usage = false;
        let (mut start, mut delta, mut stop, mut error) = (None, None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r)?),
                b"index" => index = count(r)?.unwrap_or(0),
                b"message" => object(r, |r, key| {
                    match key {
                        b"id" => id = opt_string(r)?,
                        b"model" => model = opt_string(r)?,
                        b"usage" => Tokens::read_into(r, &mut tokens)?,
                        _ => r.skip()?,
                    }
                    Ok(())
                })?,
                b"usage" => {
                    has_usage = true;
                    Tokens::read_into(r, &mut tokens)?;
                }
                b"content_block" => {
                    let (mut k, mut text, mut bid, mut name) = (None, None, None, None);
                    object(r, |r, key| {
                        match key {
                            b"type" => k = Some(string(r)?),
                            b"text" => text = opt_string(r)?,
                            b"id" => bid = Some(string(r)?),
                            b"name" => name = Some(string(r)?),
                            _ => r.skip()?,
                        }
                        Ok(())
                    })?;
                    start = Some(match (k, bid, name) {
                        (Some(k), _, _) if k.is("text") => StartBlock::Text(text),
                        (Some(k), Some(id), Some(name)) if k.is("tool_use") => {
                            StartBlock::ToolUse { id, name }
                        }
                        _ => StartBlock::Other,
                    });
                }
                b"delta" => {
                    let (mut k, mut text, mut json) = (None, None, None);
                    object(r, |r, key| {
                        match key {
                            b"type" => k = Some(string(r)?),
                            b"text" => text = opt_string(r)?,
                            b"partial_json" => json = opt_string(r)?,
                            b"stop_reason" => stop = opt_string(r)?,
                            _ => r.skip()?,
                        }
                        Ok(())
                    })?;
                    delta = Some(match (k, text, json) {
                        (Some(k), Some(t), _) if k.is("text_delta") => Delta::Text(t),
                        (Some(k), _, Some(j)) if k.is("input_json_delta") => Delta::Json(j),
                        _ => Delta::Other,
                    });
                }
                b"error" => error = Some(raw(r)?),
                _ => r.skip()?,
            }
            Ok(())
        })?;
        let Some(kind) = kind else {
            return Err(Invalid::new("required").key("type"));
        };
        Ok(match kind.raw() {
            b"message_start" => Event::MessageStart {
                id,
                model,
                usage: tokens,
            },
            b"content_block_start" => Event::BlockStart {
                index,
                block: start.unwrap_or(StartBlock::Other),
            },
            b"content_block_delta" => Event::BlockDelta {
                index,
                delta: delta.unwrap_or(Delta::Other),
            },
            b"content_block_stop" => Event::BlockStop { index },
            b"message_delta" => Event::MessageDelta {
                stop_reason: stop,
                usage: tokens,
                has_usage,
            },
            b"message_stop" => Event::MessageStop,
            b"ping" => Event::Ping,
            b"error" => Event::Error(error.unwrap_or(Raw(std::borrow::Cow::Borrowed(b"{}")))),
            _ => Event::Other,
        })
    }
}
