//! Translation between API families: an app written for OpenAI's chat
//! completions served by a backend that speaks Anthropic's Messages API,
//! and the reverse. The request goes out in the backend's API; its answer,
//! its error or its stream comes back in the app's.
//!
//! - [`request`] reads the app's request into the plain types of its API
//!   ([`crate::api::openai::chat`], [`crate::api::anthropic::messages`]),
//!   maps them and writes the backend's request. A field with no
//!   counterpart is refused ([`Refusal::Untranslatable`], a 400 in the
//!   app's API naming the field), or dropped and counted when the backend
//!   says `drop_unsupported`. A request that breaks its own API's rules is
//!   the app's mistake ([`Refusal::Invalid`]).
//! - [`answer`] and [`error`] turn a plain answer or an error back;
//!   [`Stream`] turns a stream back event by event, as it arrives.
//! - [`openai_app`] holds the mappings for an OpenAI app on an Anthropic
//!   backend, [`anthropic_app`] for an Anthropic app on an OpenAI backend.
//!
//! Same-API traffic never comes here: it passes byte for byte. The mapping
//! tables are in the README ("Moving between API families").

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::StatusCode;

use crate::api::parse::{Invalid, Str, Unmapped};
use crate::api::{Api, Dialect, Malformed, Usage, anthropic, openai};
use crate::json::Writer;
use crate::policy::Backend;
use crate::telemetry::BackendStats;

pub mod anthropic_app;
pub mod openai_app;

/// True when a request of `api` must be translated for a backend speaking
/// `protocol`.
pub fn crosses(api: Api, protocol: Dialect) -> bool {
    matches!(api, Api::ChatCompletions | Api::Messages) && api.dialect() != protocol
}

/// True when a backend speaking `protocol` can serve a request of `api`:
/// its own family's APIs, and chat across families. (An Anthropic backend
/// cannot serve embeddings, for one.)
pub fn serves(protocol: Dialect, api: Api) -> bool {
    api.dialect() == protocol || matches!(api, Api::ChatCompletions | Api::Messages)
}

/// The path (after the backend's base path) a translated request goes to.
pub fn path(protocol: Dialect) -> &'static str {
    match protocol {
        Dialect::OpenAi => openai::CHAT_PATH,
        Dialect::Anthropic => anthropic::MESSAGES_PATH,
    }
}

/// The default `max_tokens` of a request to Anthropic that names none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A request translated for a backend.
#[derive(Debug)]
pub struct Translated {
    pub body: Bytes,
    /// Fields dropped (the backend says `drop_unsupported`).
    pub dropped: Vec<Unmapped>,
    /// The model the app asked for, when the backend's model map changed it.
    pub requested_model: Option<String>,
    /// The model sent, when the backend's prices depend on it.
    pub sent_model: Option<String>,
    /// What the answer needs to be turned back.
    pub crossing: Crossing,
}

/// How an answer is turned back into the app's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// The app's API.
    pub app: Api,
    /// The backend's.
    pub backend: Api,
    /// The forced tool standing in for an OpenAI app's `response_format`:
    /// its input is the answer's content.
    pub json_tool: Option<String>,
    /// The OpenAI app asked for usage at the end of its stream.
    pub include_usage: bool,
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request breaks a rule of the app's own API: the app's mistake,
    /// which any backend would refuse too.
    Invalid(Invalid),
    /// The request asks for something the backend's API cannot do.
    Untranslatable { field: String, message: String },
}

impl Refusal {
    /// The 400 the app gets, in its API's shape.
    pub fn answer(&self, app: Dialect) -> Bytes {
        let (message, param, code) = match self {
            Refusal::Invalid(e) => (
                e.to_string(),
                Some(e.path.to_string()).filter(|p| !p.is_empty()),
                None,
            ),
            Refusal::Untranslatable { field, message } => (
                message.clone(),
                Some(field.clone()),
                Some("unsupported_parameter"),
            ),
        };
        match app {
            Dialect::OpenAi => {
                openai::error_body(&message, "invalid_request_error", param.as_deref(), code)
            }
            Dialect::Anthropic => anthropic::error_body("invalid_request_error", &message),
        }
    }
}

/// A request made ready for one backend.
#[derive(Debug)]
pub struct Prepared {
    pub body: Bytes,
    /// The model the app asked for, when the backend's model map changed it.
    pub requested_model: Option<String>,
    /// The model sent, when the backend's prices depend on it.
    pub sent_model: Option<String>,
    /// Usage was asked for on the app's behalf: the stream's usage chunk is
    /// kept from the app.
    pub usage_asked: bool,
    /// How the answer is turned back, when the request was translated.
    pub crossing: Option<Crossing>,
}

impl Prepared {
    /// The API the backend answers in.
    pub fn backend_api(&self, app: Api) -> Api {
        self.crossing.as_ref().map_or(app, |c| c.backend)
    }
}

/// Makes the app's request (of `app`) ready for `backend`: its model
/// mapped and, when the backend speaks the other API family, translated
/// (counted in `stats`). Same-API requests pass byte for byte, but for
/// their model.
pub fn prepare(
    app: Api,
    body: &Bytes,
    backend: &Backend,
    stats: &BackendStats,
) -> Result<Prepared, Refusal> {
    if !crosses(app, backend.protocol) {
        let f = crate::model::for_backend(backend, app, body);
        return Ok(Prepared {
            body: f.body,
            requested_model: f.requested_model,
            sent_model: f.sent_model,
            usage_asked: f.usage_asked,
            crossing: None,
        });
    }
    match request(app, body, backend) {
        Ok(t) => {
            stats.translated.fetch_add(1, Ordering::Relaxed);
            if !t.dropped.is_empty() {
                stats
                    .dropped_fields
                    .fetch_add(t.dropped.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    backend = %backend.name,
                    fields = ?t.dropped.iter().map(|d| d.field.as_str()).collect::<Vec<_>>(),
                    "dropped fields with no counterpart"
                );
            }
            Ok(Prepared {
                body: t.body,
                requested_model: t.requested_model,
                sent_model: t.sent_model,
                usage_asked: false,
                crossing: Some(t.crossing),
            })
        }
        Err(refusal) => {
            if matches!(refusal, Refusal::Untranslatable { .. }) {
                stats.translation_refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal)
        }
    }
}

/// An error answer turned back into the app's API: its status and body
/// (see [`error`]). Its head loses the length (the body changed) and says
/// JSON.
pub fn turn_back_error(
    c: &Crossing,
    mut parts: http::response::Parts,
    body: &[u8],
) -> (http::response::Parts, Bytes) {
    let (status, body) = error(c, parts.status, body);
    parts.status = status;
    (json_head(parts), body)
}

/// A head for a body the agent rewrote as JSON.
pub fn json_head(mut parts: http::response::Parts) -> http::response::Parts {
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    parts
}

/// Translates the app's request (of `app`, a chat API) for `backend`.
pub fn request(app: Api, body: &[u8], backend: &Backend) -> Result<Translated, Refusal> {
    match app {
        Api::ChatCompletions => openai_app::request(body, backend),
        _ => anthropic_app::request(body, backend),
    }
}

/// Refuses the first field with no counterpart, or drops them all when
/// the backend says so.
fn settle_unsupported(
    unsupported: Vec<Unmapped>,
    backend: &Backend,
    api: &str,
) -> Result<Vec<Unmapped>, Refusal> {
    match unsupported.first() {
        Some(first) if !backend.drop_unsupported => Err(Refusal::Untranslatable {
            field: first.field.clone(),
            message: format!(
                "{}: {} (backend {:?} speaks {api}; set drop_unsupported on it to drop such fields)",
                first.field, first.why, backend.name
            ),
        }),
        _ => Ok(unsupported),
    }
}

/// The translated request: `write` writes it with the model for `backend`
/// (its model map's name for the app's `requested` model).
fn translated(
    backend: &Backend,
    requested: Option<&Str<'_>>,
    capacity: usize,
    write: impl FnOnce(&mut Writer, Option<&str>),
    dropped: Vec<Unmapped>,
    crossing: Crossing,
) -> Translated {
    let requested = requested.and_then(Str::text);
    let (model, requested_model) = model_for(backend, requested.as_deref());
    let mut w = Writer::with_capacity(capacity + 256);
    write(&mut w, model.as_deref());
    let by_model = backend.pricing.as_ref().is_some_and(|p| p.by_model());
    let sent_model = by_model
        .then(|| model.or_else(|| requested.map(std::borrow::Cow::into_owned)))
        .flatten();
    Translated {
        body: w.finish().into(),
        dropped,
        requested_model,
        sent_model,
        crossing,
    }
}

/// The model for a backend: its model map's name for the app's model, and
/// the app's own when the map changed it.
fn model_for(backend: &Backend, requested: Option<&str>) -> (Option<String>, Option<String>) {
    match requested {
        Some(m) => match backend.map_model(m).filter(|mapped| *mapped != m) {
            Some(mapped) => (Some(mapped.to_string()), Some(m.to_string())),
            None => (None, None),
        },
        None => (backend.model_default.clone(), None),
    }
}

/// Checks a successful plain answer of the backend's API (as the answer
/// check does, reading its usage into `usage`) and turns it back into the
/// app's API; `model`, when given, is the model it names. An answer that
/// is not a valid answer of its API, or cannot be expressed in the app's,
/// is malformed.
pub fn answer(
    c: &Crossing,
    body: &[u8],
    model: Option<&str>,
    usage: &mut Usage,
) -> Result<Bytes, Malformed> {
    let untranslatable = |e: Invalid| Malformed(format!("the answer cannot be translated: {e}"));
    match c.app {
        Api::ChatCompletions => {
            // One pass: the check reads the answer into its plain type.
            let a = crate::api::read_message(body, usage)?;
            Ok(openai_app::write_completion(c, &a, model).into())
        }
        _ => {
            crate::api::check_document(c.backend, body, None, usage)?;
            anthropic_app::answer(body, model)
                .map(Bytes::from)
                .map_err(untranslatable)
        }
    }
}

/// Turns an error answer back into the app's API: its status (Anthropic's
/// 529 is OpenAI's 503, and back) and its body, whose message keeps the
/// backend's own error type.
pub fn error(c: &Crossing, status: StatusCode, body: &[u8]) -> (StatusCode, Bytes) {
    let e = crate::api::ErrorBody::parse(body);
    let text = e.text.clone().unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(body);
        let raw = raw.trim();
        if raw.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            shepherd_proto::validate::clip(raw).to_string()
        }
    });
    match c.app {
        Api::ChatCompletions => {
            let kind = e.kind.as_deref().unwrap_or("api_error");
            let status = if status.as_u16() == 529 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                status
            };
            let code = if kind == "billing_error" {
                "insufficient_quota"
            } else {
                kind
            };
            let message = format!("{kind}: {text}");
            (status, openai::error_body(&message, kind, None, Some(code)))
        }
        _ => {
            let name = e.code.as_deref().or(e.kind.as_deref());
            let quota = name.is_some_and(|n| n.contains("quota"));
            let (status, kind) = match status.as_u16() {
                503 => (
                    StatusCode::from_u16(529).unwrap_or(status),
                    "overloaded_error",
                ),
                400 if quota => (status, "billing_error"),
                429 if quota => (status, "billing_error"),
                400 | 422 => (status, "invalid_request_error"),
                401 => (status, "authentication_error"),
                402 => (status, "billing_error"),
                403 => (status, "permission_error"),
                404 => (status, "not_found_error"),
                408 | 504 => (status, "timeout_error"),
                413 => (status, "request_too_large"),
                429 => (status, "rate_limit_error"),
                s if s >= 500 => (status, "api_error"),
                _ => (status, "invalid_request_error"),
            };
            let message = match name {
                Some(n) => format!("{n}: {text}"),
                None => text,
            };
            (status, anthropic::error_body(kind, &message))
        }
    }
}

/// Turns a stream back into the app's API event by event.
pub enum Stream {
    /// An OpenAI app's stream from an Anthropic backend.
    ToOpenAi(Box<openai_app::Stream>),
    /// An Anthropic app's stream from an OpenAI backend.
    ToAnthropic(Box<anthropic_app::Stream>),
}

impl Stream {
    pub fn new(c: &Crossing) -> Self {
        match c.app {
            Api::ChatCompletions => Stream::ToOpenAi(Box::new(openai_app::Stream::new(c))),
            _ => Stream::ToAnthropic(Box::default()),
        }
    }

    /// One event of the backend's stream (its name and data); what the app
    /// gets for it is written to `out`.
    pub fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>) {
        match self {
            Stream::ToOpenAi(s) => s.event(data, out),
            Stream::ToAnthropic(s) => s.event(name, data, out),
        }
    }
}

/// Writes one server-sent event: its name (if any) and its data.
fn sse(out: &mut Vec<u8>, name: Option<&str>, data: &Writer) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.bytes());
    out.extend_from_slice(b"\n\n");
}

/// The time now, in Unix seconds (OpenAI's `created`).
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
