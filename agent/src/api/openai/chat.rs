//! OpenAI chat completions as plain types: the request, the answer and a
//! stream chunk, read from JSON ([`Request::read`], [`Answer::read`],
//! [`Chunk::read`]) and written back ([`Request::write`],
//! [`Answer::write`]). Only what crosses to another API family is kept;
//! a request field with no counterpart is noted as it is read
//! ([`Unsupported`]), never silently lost.

use crate::api::parse::{
    Invalid, Json, Raw, Str, Unsupported, boolean, count, list, number, object, opt_string, put,
    put_list, put_model, put_or_null, raw, raw_object, string, unmapped, value,
};
use crate::json::{Reader, Writer};

/// Why a field has no counterpart in Anthropic's Messages API.
const NO_COUNTERPART: &str = "has no counterpart in Anthropic's Messages API";

/// A chat completion request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request<'a> {
    pub model: Option<Str<'a>>,
    pub messages: Vec<Message<'a>>,
    pub stream: Option<bool>,
    /// `stream_options.include_usage`.
    pub include_usage: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<Raw<'a>>,
    pub top_p: Option<Raw<'a>>,
    /// `stop`, a string or a list (a string reads as a list of one).
    pub stop: Vec<Str<'a>>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<Str<'a>>,
    pub response_format: Option<ResponseFormat<'a>>,
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Content<'a>,
    /// An assistant's tool calls.
    pub tool_calls: Vec<ToolCall<'a>>,
    /// The call a tool message answers.
    pub tool_call_id: Option<Str<'a>>,
}

/// A message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content<'a> {
    /// Absent or null (an assistant message with tool calls).
    None,
    Text(Str<'a>),
    Parts(Vec<Part<'a>>),
}

/// A content part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    Text(Str<'a>),
    /// `image_url.url`: an http(s) URL or a `data:` URL.
    Image(Str<'a>),
    /// An assistant's refusal.
    Refusal(Str<'a>),
}

/// A function call, of an assistant message or an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall<'a> {
    pub id: Str<'a>,
    pub name: Str<'a>,
    /// The arguments: a JSON object, as a string.
    pub arguments: Str<'a>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool<'a> {
    pub name: Str<'a>,
    pub description: Option<Str<'a>>,
    /// The JSON schema of the arguments.
    pub parameters: Option<Raw<'a>>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(Str<'a>),
}

/// The form of the answer's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseFormat<'a> {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that fits a schema.
    JsonSchema {
        name: Str<'a>,
        description: Option<Str<'a>>,
        schema: Option<Raw<'a>>,
    },
}

impl<'a> Request<'a> {
    /// Reads a request, noting each field with no counterpart.
    pub fn read(r: &mut Reader<'a>, unsupported: &mut Unsupported) -> Result<Self, Invalid> {
        let mut q = Request::default();
        let mut messages = false;
        object(r, |r, key| {
            match key {
                b"model" => q.model = Some(string(r).map_err(|e| e.key("model"))?),
                b"messages" => {
                    messages = true;
                    list(r, |r, i| {
                        q.messages.push(Message::read(r, i, unsupported)?);
                        Ok(())
                    })
                    .map_err(|e| e.key("messages"))?;
                }
                b"stream" => q.stream = boolean(r).map_err(|e| e.key("stream"))?,
                b"stream_options" => {
                    if !crate::api::parse::null(r)? {
                        object(r, |r, key| match key {
                            b"include_usage" => {
                                q.include_usage = boolean(r).map_err(|e| e.key("include_usage"))?;
                                Ok(())
                            }
                            _ => unmapped(r, unsupported, "stream_options", key, NO_COUNTERPART),
                        })
                        .map_err(|e| e.key("stream_options"))?;
                    }
                }
                b"max_tokens" => q.max_tokens = count(r).map_err(|e| e.key("max_tokens"))?,
                b"max_completion_tokens" => {
                    q.max_completion_tokens =
                        count(r).map_err(|e| e.key("max_completion_tokens"))?;
                }
                b"temperature" => q.temperature = number(r).map_err(|e| e.key("temperature"))?,
                b"top_p" => q.top_p = number(r).map_err(|e| e.key("top_p"))?,
                b"stop" => q.stop = stop(r).map_err(|e| e.key("stop"))?,
                b"tools" => {
                    if !crate::api::parse::null(r)? {
                        list(r, |r, i| {
                            q.tools.push(Tool::read(r, i, unsupported)?);
                            Ok(())
                        })
                        .map_err(|e| e.key("tools"))?;
                    }
                }
                b"tool_choice" => {
                    q.tool_choice = ToolChoice::read(r).map_err(|e| e.key("tool_choice"))?;
                }
                b"parallel_tool_calls" => {
                    q.parallel_tool_calls = boolean(r).map_err(|e| e.key("parallel_tool_calls"))?;
                }
                b"user" => q.user = opt_string(r).map_err(|e| e.key("user"))?,
                b"response_format" => {
                    q.response_format =
                        ResponseFormat::read(r).map_err(|e| e.key("response_format"))?;
                }
                // Values that ask for nothing beyond the default.
                b"n" | b"logprobs" | b"store" | b"frequency_penalty" | b"presence_penalty" => {
                    let v = raw(r)?;
                    let default = match key {
                        b"n" => v.bytes() == b"1",
                        b"logprobs" | b"store" => v.bytes() == b"false",
                        _ => value(&v) == Some(0.0),
                    };
                    if !default && v.bytes() != b"null" {
                        unsupported.note("", key, NO_COUNTERPART);
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
        w.key("messages").begin_array();
        for m in &self.messages {
            m.write(w);
        }
        w.end_array();
        put(w, "max_tokens", self.max_tokens.as_ref());
        put(
            w,
            "max_completion_tokens",
            self.max_completion_tokens.as_ref(),
        );
        put(w, "temperature", self.temperature.as_ref());
        put(w, "top_p", self.top_p.as_ref());
        put_list(w, "stop", &self.stop);
        put(w, "stream", self.stream.as_ref());
        if let Some(u) = self.include_usage {
            w.key("stream_options")
                .begin_object()
                .key("include_usage")
                .bool(u)
                .end_object();
        }
        if !self.tools.is_empty() {
            w.key("tools").begin_array();
            for t in &self.tools {
                w.begin_object().key("type").str("function");
                w.key("function").begin_object().key("name");
                t.name.write(w);
                put(w, "description", t.description.as_ref());
                put(w, "parameters", t.parameters.as_ref());
                w.end_object().end_object();
            }
            w.end_array();
        }
        if let Some(c) = &self.tool_choice {
            w.key("tool_choice");
            match c {
                ToolChoice::Auto => w.str("auto"),
                ToolChoice::None => w.str("none"),
                ToolChoice::Required => w.str("required"),
                ToolChoice::Function(name) => {
                    w.begin_object().key("type").str("function");
                    w.key("function").begin_object().key("name");
                    name.write(w);
                    w.end_object().end_object()
                }
            };
        }
        put(w, "parallel_tool_calls", self.parallel_tool_calls.as_ref());
        put(w, "user", self.user.as_ref());
        if let Some(f) = &self.response_format {
            w.key("response_format").begin_object().key("type");
            match f {
                ResponseFormat::Text => {
                    w.str("text");
                }
                ResponseFormat::JsonObject => {
                    w.str("json_object");
                }
                ResponseFormat::JsonSchema {
                    name,
                    description,
                    schema,
                } => {
                    w.str("json_schema").key("json_schema").begin_object();
                    w.key("name");
                    name.write(w);
                    if let Some(d) = description {
                        w.key("description");
                        d.write(w);
                    }
                    if let Some(s) = schema {
                        w.key("schema");
                        s.write(w);
                    }
                    w.end_object();
                }
            }
            w.end_object();
        }
        w.end_object();
    }
}

/// `stop`: a string, or a list of them.
fn stop<'a>(r: &mut Reader<'a>) -> Result<Vec<Str<'a>>, Invalid> {
    match r.peek() {
        Some(b'n') if r.null()? => Ok(Vec::new()),
        Some(b'"') => Ok(vec![string(r)?]),
        _ => {
            let mut all = Vec::new();
            list(r, |r, _| {
                all.push(string(r)?);
                Ok(())
            })
            .map_err(|e| Invalid::new(format!("{e}; must be a string or a list of strings")))?;
            Ok(all)
        }
    }
}

impl<'a> Message<'a> {
    fn read(r: &mut Reader<'a>, i: usize, unsupported: &mut Unsupported) -> Result<Self, Invalid> {
        let at = || format!("messages[{i}]");
        let mut role = None;
        let mut content = Content::None;
        let mut tool_calls = Vec::new();
        let mut tool_call_id = None;
        object(r, |r, key| {
            match key {
                b"role" => {
                    let s = string(r).map_err(|e| e.key("role"))?;
                    role = Some(match s.raw() {
                        b"system" => Role::System,
                        b"developer" => Role::Developer,
                        b"user" => Role::User,
                        b"assistant" => Role::Assistant,
                        b"tool" => Role::Tool,
                        _ => {
                            return Err(Invalid::new(
                                "must be system, developer, user, assistant or tool",
                            )
                            .key("role"));
                        }
                    });
                }
                b"content" => {
                    content = Content::read(r, unsupported, &at).map_err(|e| e.key("content"))?;
                }
                b"tool_calls" => {
                    if !crate::api::parse::null(r)? {
                        list(r, |r, _| {
                            tool_calls.push(ToolCall::read(r)?);
                            Ok(())
                        })
                        .map_err(|e| e.key("tool_calls"))?;
                    }
                }
                b"tool_call_id" => {
                    tool_call_id = Some(string(r).map_err(|e| e.key("tool_call_id"))?);
                }
                // An assistant message's own refusal: said again in its text.
                b"refusal" => {
                    if let Some(text) = opt_string(r).map_err(|e| e.key("refusal"))? {
                        match &mut content {
                            Content::Parts(parts) => parts.push(Part::Refusal(text)),
                            _ => {
                                let mut parts = Vec::new();
                                if let Content::Text(t) = &content {
                                    parts.push(Part::Text(t.clone()));
                                }
                                parts.push(Part::Refusal(text));
                                content = Content::Parts(parts);
                            }
                        }
                    }
                }
                _ => unmapped(r, unsupported, at(), key, NO_COUNTERPART)?,
            }
            Ok(())
        })?;
        let Some(role) = role else {
            return Err(Invalid::new("required").key("role"));
        };
        match (role, &content) {
            (Role::Assistant, _) | (_, Content::Text(_) | Content::Parts(_)) => {}
            (_, Content::None) => return Err(Invalid::new("required").key("content")),
        }
        if role == Role::Tool && tool_call_id.is_none() {
            return Err(Invalid::new("required").key("tool_call_id"));
        }
        if role == Role::Assistant && content == Content::None && tool_calls.is_empty() {
            return Err(Invalid::new("required (or tool_calls)").key("content"));
        }
        Ok(Message {
            role,
            content,
            tool_calls,
            tool_call_id,
        })
    }

    fn write(&self, w: &mut Writer) {
        w.begin_object().key("role").str(self.role.name());
        let refusal = match &self.content {
            Content::Parts(parts) => parts.iter().find_map(|p| match p {
                Part::Refusal(r) => Some(r),
                _ => None,
            }),
            _ => None,
        };
        match &self.content {
            Content::None => {
                w.key("content").null();
            }
            Content::Text(t) => {
                w.key("content");
                t.write(w);
            }
            Content::Parts(parts) => {
                w.key("content").begin_array();
                for p in parts {
                    match p {
                        Part::Text(t) => {
                            w.begin_object().key("type").str("text").key("text");
                            t.write(w);
                            w.end_object();
                        }
                        Part::Image(url) => {
                            w.begin_object().key("type").str("image_url");
                            w.key("image_url").begin_object().key("url");
                            url.write(w);
                            w.end_object().end_object();
                        }
                        Part::Refusal(_) => {}
                    }
                }
                w.end_array();
            }
        }
        if let Some(r) = refusal {
            w.key("refusal");
            r.write(w);
        }
        put_list(w, "tool_calls", &self.tool_calls);
        put(w, "tool_call_id", self.tool_call_id.as_ref());
        w.end_object();
    }
}

impl<'a> Content<'a> {
    fn read(
        r: &mut Reader<'a>,
        unsupported: &mut Unsupported,
        at: &dyn Fn() -> String,
    ) -> Result<Self, Invalid> {
        match r.peek() {
            Some(b'n') if r.null()? => Ok(Content::None),
            Some(b'"') => Ok(Content::Text(string(r)?)),
            Some(b'[') => {
                let mut parts = Vec::new();
                list(r, |r, j| {
                    if let Some(p) =
                        Part::read(r, unsupported, &|| format!("{}.content[{j}]", at()))?
                    {
                        parts.push(p);
                    }
                    Ok(())
                })?;
                Ok(Content::Parts(parts))
            }
            _ => Err(Invalid::new("must be a string or a list of parts")),
        }
    }
}

impl<'a> Part<'a> {
    /// A part; `None` for a kind with no counterpart (noted).
    fn read(
        r: &mut Reader<'a>,
        unsupported: &mut Unsupported,
        at: &dyn Fn() -> String,
    ) -> Result<Option<Self>, Invalid> {
        let mut kind = None;
        let mut text = None;
        let mut url = None;
        let mut other = None;
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"text" => text = Some(string(r).map_err(|e| e.key("text"))?),
                b"refusal" => text = Some(string(r).map_err(|e| e.key("refusal"))?),
                b"image_url" => {
                    object(r, |r, key| {
                        match key {
                            b"url" => url = Some(string(r).map_err(|e| e.key("url"))?),
                            b"detail" => {
                                let d = opt_string(r)?;
                                if d.is_some_and(|d| !d.is("auto")) {
                                    unsupported.note(
                                        format!("{}.image_url", at()),
                                        key,
                                        "has no counterpart in Anthropic's Messages API (only \"auto\")",
                                    );
                                }
                            }
                            _ => unmapped(
                                r,
                                unsupported,
                                format!("{}.image_url", at()),
                                key,
                                NO_COUNTERPART,
                            )?,
                        }
                        Ok(())
                    })
                    .map_err(|e| e.key("image_url"))?;
                }
                _ => {
                    r.skip()?;
                    other = Some(key);
                }
            }
            Ok(())
        })?;
        let Some(kind) = kind else {
            return Err(Invalid::new("required").key("type"));
        };
        let need = |v: Option<Str<'a>>, field: &'static str| {
            v.ok_or_else(|| Invalid::new("required").key(field))
        };
        Ok(Some(match kind.raw() {
            b"text" => Part::Text(need(text, "text")?),
            b"refusal" => Part::Refusal(need(text, "refusal")?),
            b"image_url" => Part::Image(need(url, "image_url")?),
            _ => {
                unsupported.note(
                    at(),
                    format!("type \"{}\"", String::from_utf8_lossy(kind.raw())).as_bytes(),
                    NO_COUNTERPART,
                );
                return Ok(None);
            }
        }))
        .inspect(|_| {
            if let Some(key) = other {
                unsupported.note(at(), key, NO_COUNTERPART);
            }
        })
    }
}

impl Json for ToolCall<'_> {
    fn write_to(&self, w: &mut Writer) {
        self.write(w);
    }
}

impl<'a> ToolCall<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, Invalid> {
        let (mut id, mut name, mut arguments) = (None, None, None);
        object(r, |r, key| {
            match key {
                b"id" => id = Some(string(r).map_err(|e| e.key("id"))?),
                b"function" => object(r, |r, key| {
                    match key {
                        b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                        b"arguments" => {
                            arguments = Some(string(r).map_err(|e| e.key("arguments"))?);
                        }
                        _ => r.skip()?,
                    }
                    Ok(())
                })
                .map_err(|e| e.key("function"))?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(ToolCall {
            id: id.ok_or_else(|| Invalid::new("required").key("id"))?,
            name: name.ok_or_else(|| Invalid::new("required").key("name").key("function"))?,
            arguments: arguments.unwrap_or_else(|| Str::borrowed(b"{}")),
        })
    }

    pub fn write(&self, w: &mut Writer) {
        w.begin_object().key("id");
        self.id.write(w);
        w.key("type").str("function");
        w.key("function").begin_object().key("name");
        self.name.write(w);
        w.key("arguments");
        self.arguments.write(w);
        w.end_object().end_object();
    }
}

impl<'a> Tool<'a> {
    fn read(r: &mut Reader<'a>, i: usize, unsupported: &mut Unsupported) -> Result<Self, Invalid> {
        let mut kind = None;
        let (mut name, mut description, mut parameters) = (None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"function" => object(r, |r, key| {
                    match key {
                        b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                        b"description" => {
                            description = opt_string(r).map_err(|e| e.key("description"))?;
                        }
                        b"parameters" => {
                            parameters = Some(raw_object(r).map_err(|e| e.key("parameters"))?);
                        }
                        b"strict" => {
                            if boolean(r)? == Some(true) {
                                unsupported.note(
                                    format!("tools[{i}].function"),
                                    key,
                                    NO_COUNTERPART,
                                );
                            }
                        }
                        _ => unmapped(
                            r,
                            unsupported,
                            format!("tools[{i}].function"),
                            key,
                            NO_COUNTERPART,
                        )?,
                    }
                    Ok(())
                })
                .map_err(|e| e.key("function"))?,
                _ => unmapped(r, unsupported, format!("tools[{i}]"), key, NO_COUNTERPART)?,
            }
            Ok(())
        })?;
        if kind.as_ref().is_some_and(|k| !k.is("function")) {
            return Err(
                Invalid::new("only \"function\" tools cross to Anthropic's Messages API")
                    .key("type"),
            );
        }
        Ok(Tool {
            name: name.ok_or_else(|| Invalid::new("required").key("name").key("function"))?,
            description,
            parameters,
        })
    }
}

impl<'a> ToolChoice<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Option<Self>, Invalid> {
        match r.peek() {
            Some(b'n') if r.null()? => Ok(None),
            Some(b'"') => {
                let s = string(r)?;
                Ok(Some(match s.raw() {
                    b"auto" => ToolChoice::Auto,
                    b"none" => ToolChoice::None,
                    b"required" => ToolChoice::Required,
                    _ => {
                        return Err(Invalid::new(
                            "must be \"auto\", \"none\", \"required\" or a function",
                        ));
                    }
                }))
            }
            _ => {
                let mut name = None;
                object(r, |r, key| {
                    match key {
                        b"function" => object(r, |r, key| {
                            if key == b"name" {
                                name = Some(string(r).map_err(|e| e.key("name"))?);
                            } else {
                                r.skip()?;
                            }
                            Ok(())
                        })
                        .map_err(|e| e.key("function"))?,
                        _ => r.skip()?,
                    }
                    Ok(())
                })?;
                let name =
                    name.ok_or_else(|| Invalid::new("required").key("name").key("function"))?;
                Ok(Some(ToolChoice::Function(name)))
            }
        }
    }
}

impl<'a> ResponseFormat<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Option<Self>, Invalid> {
        if crate::api::parse::null(r)? {
            return Ok(None);
        }
        let mut kind = None;
        let (mut name, mut description, mut schema) = (None, None, None);
        object(r, |r, key| {
            match key {
                b"type" => kind = Some(string(r).map_err(|e| e.key("type"))?),
                b"json_schema" => object(r, |r, key| {
                    match key {
                        b"name" => name = Some(string(r).map_err(|e| e.key("name"))?),
                        b"description" => {
                            description = opt_string(r).map_err(|e| e.key("description"))?;
                        }
                        b"schema" => {
                            schema = Some(raw_object(r).map_err(|e| e.key("schema"))?);
                        }
                        _ => r.skip()?,
                    }
                    Ok(())
                })
                .map_err(|e| e.key("json_schema"))?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        let kind = kind.ok_or_else(|| Invalid::new("required").key("type"))?;
        Ok(Some(match kind.raw() {
            b"text" => ResponseFormat::Text,
            b"json_object" => ResponseFormat::JsonObject,
            b"json_schema" => ResponseFormat::JsonSchema {
                name: name
                    .ok_or_else(|| Invalid::new("required").key("name").key("json_schema"))?,
                description,
                schema,
            },
            _ => {
                return Err(
                    Invalid::new("must be \"text\", \"json_object\" or \"json_schema\"")
                        .key("type"),
                );
            }
        }))
    }
}

/// Token counts of an answer: `prompt_tokens` (cached ones included),
/// `completion_tokens` and `prompt_tokens_details.cached_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

impl Json for Tokens {
    fn write_to(&self, w: &mut Writer) {
        self.write(w);
    }
}

impl Tokens {
    fn read(r: &mut Reader<'_>) -> Result<Option<Self>, Invalid> {
        if crate::api::parse::null(r)? {
            return Ok(None);
        }
        let mut t = Tokens::default();
        object(r, |r, key| {
            match key {
                b"prompt_tokens" => t.prompt = count(r)?.unwrap_or(0),
                b"completion_tokens" => t.completion = count(r)?.unwrap_or(0),
                b"prompt_tokens_details" => {
                    if !crate::api::parse::null(r)? {
                        object(r, |r, key| {
                            if key == b"cached_tokens" {
                                t.cached = count(r)?.unwrap_or(0);
                            } else {
                                r.skip()?;
                            }
                            Ok(())
                        })?;
                    }
                }
                _ => r.skip()?,
            }
            Ok(())
        })
        .map_err(|e| e.key("usage"))?;
        Ok(Some(t))
    }

    pub fn write(&self, w: &mut Writer) {
        w.begin_object()
            .key("prompt_tokens")
            .u64(self.prompt)
            .key("completion_tokens")
            .u64(self.completion)
            .key("total_tokens")
            .u64(self.prompt + self.completion);
        w.key("prompt_tokens_details")
            .begin_object()
            .key("cached_tokens")
            .u64(self.cached)
            .end_object();
        w.end_object();
    }
}

/// A (non-streamed) chat completion: its first choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer<'a> {
    pub id: Option<Str<'a>>,
    pub model: Option<Str<'a>>,
    pub content: Option<Str<'a>>,
    pub refusal: Option<Str<'a>>,
    pub tool_calls: Vec<ToolCall<'a>>,
    pub finish_reason: Option<Str<'a>>,
    pub usage: Option<Tokens>,
}

impl<'a> Answer<'a> {
    pub fn read(r: &mut Reader<'a>) -> Result<Self, Invalid> {
        let mut a = Answer::default();
        let mut choices = 0;
        object(r, |r, key| {
            match key {
                b"id" => a.id = opt_string(r).map_err(|e| e.key("id"))?,
                b"model" => a.model = opt_string(r).map_err(|e| e.key("model"))?,
                b"usage" => a.usage = Tokens::read(r)?,
                b"choices" => list(r, |r, i| {
                    choices += 1;
                    if i > 0 {
                        // One choice is asked for (n > 1 does not cross).
                        return Ok(r.skip()?);
                    }
                    object(r, |r, key| {
                        match key {
                            b"finish_reason" => {
                                a.finish_reason =
                                    opt_string(r).map_err(|e| e.key("finish_reason"))?;
                            }
                            b"message" => object(r, |r, key| {
                                match key {
                                    b"content" => {
                                        a.content = opt_string(r).map_err(|e| e.key("content"))?;
                                    }
                                    b"refusal" => {
                                        a.refusal = opt_string(r).map_err(|e| e.key("refusal"))?;
                                    }
                                    b"tool_calls" => {
                                        if !crate::api::parse::null(r)? {
                                            list(r, |r, _| {
                                                a.tool_calls.push(ToolCall::read(r)?);
                                                Ok(())
                                            })
                                            .map_err(|e| e.key("tool_calls"))?;
                                        }
                                    }
                                    _ => r.skip()?,
                                }
                                Ok(())
                            })
                            .map_err(|e| e.key("message"))?,
                            _ => r.skip()?,
                        }
                        Ok(())
                    })
                })
                .map_err(|e| e.key("choices"))?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        if choices == 0 {
            return Err(Invalid::new("must be a non-empty list").key("choices"));
        }
        Ok(a)
    }

    /// Writes the answer; `created` is its time (Unix seconds).
    pub fn write(&self, w: &mut Writer, created: u64) {
        w.begin_object();
        put(w, "id", self.id.as_ref());
        w.key("object").str("chat.completion");
        w.key("created").u64(created);
        put(w, "model", self.model.as_ref());
        w.key("choices").begin_array().begin_object();
        w.key("index").u64(0);
        w.key("message").begin_object().key("role").str("assistant");
        put_or_null(w, "content", self.content.as_ref());
        put_or_null(w, "refusal", self.refusal.as_ref());
        put_list(w, "tool_calls", &self.tool_calls);
        w.end_object();
        w.key("logprobs").null();
        put_or_null(w, "finish_reason", self.finish_reason.as_ref());
        w.end_object().end_array();
        put(w, "usage", self.usage.as_ref());
        w.end_object();
    }
}

/// One streamed chunk: its first choice's delta, or usage, or an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub id: Option<Str<'a>>,
    pub model: Option<Str<'a>>,
    pub content: Option<Str<'a>>,
    pub refusal: Option<Str<'a>>,
    pub tool_calls: Vec<ToolDelta<'a>>,
    pub finish_reason: Option<Str<'a>>,
    pub usage: Option<Tokens>,
    /// An error sent in the stream (its `error` object).
    pub error: Option<Raw<'a>>,
}

/// A piece of a streamed tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolDelta<'a> {
    pub index: u64,
    pub id: Option<Str<'a>>,
    pub name: Option<Str<'a>>,
    pub arguments: Option<Str<'a>>,
}

impl<'a> Chunk<'a> {
    pub fn read(r: &mut Reader<'a>) -> Result<Self, Invalid> {
        let mut c = Chunk::default();
        object(r, |r, key| {
            match key {
                b"id" => c.id = opt_string(r)?,
                b"model" => c.model = opt_string(r)?,
                b"usage" => c.usage = Tokens::read(r)?,
                b"error" => {
                    if !crate::api::parse::null(r)? {
                        c.error = Some(raw(r)?);
                    }
                }
                b"choices" => list(r, |r, i| {
                    if i > 0 {
                        return Ok(r.skip()?);
                    }
                    object(r, |r, key| {
                        match key {
                            b"finish_reason" => c.finish_reason = opt_string(r)?,
                            b"delta" => object(r, |r, key| {
                                match key {
                                    b"content" => c.content = opt_string(r)?,
                                    b"refusal" => c.refusal = opt_string(r)?,
                                    b"tool_calls" => {
                                        if !crate::api::parse::null(r)? {
                                            list(r, |r, _| {
                                                c.tool_calls.push(ToolDelta::read(r)?);
                                                Ok(())
                                            })?;
                                        }
                                    }
                                    _ => r.skip()?,
                                }
                                Ok(())
                            })?,
                            _ => r.skip()?,
                        }
                        Ok(())
                    })
                })?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(c)
    }
}

impl<'a> ToolDelta<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, Invalid> {
        let mut d = ToolDelta::default();
        object(r, |r, key| {
            match key {
                b"index" => d.index = count(r)?.unwrap_or(0),
                b"id" => d.id = opt_string(r)?,
                b"function" => object(r, |r, key| {
                    match key {
                        b"name" => d.name = opt_string(r)?,
                        b"arguments" => d.arguments = opt_string(r)?,
                        _ => r.skip()?,
                    }
                    Ok(())
                })?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(d)
    }
}
