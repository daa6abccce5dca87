//! A mock LLM provider: OpenAI-compatible JSON and SSE
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`) and Anthropic's `/v1/messages` (JSON and SSE).
//!
//! It can be told to fail with a status (a number of times, or a fraction),
//! rate-limit with `Retry-After`, slow down, hold requests at a gate, stall,
//! cut or truncate streams, and answer as a misconfigured provider does
//! ([`Mode`]: a wrong key, no access, an unknown model, an unsupported
//! parameter, exhausted quota, a malformed answer, no choices), in the
//! error shape of the API asked (OpenAI or Anthropic). It records every
//! request it received (headers, model, body, time). It serves over TCP or
//! in-process pipes (for paused-clock tests).
//!
//! Like the real APIs, it refuses a chat completion or a message without
//! `messages` with a 400 (the app's own mistake).
//!
//! [`MockProvider::new`] answers both API families on any base path.
//! [`MockProvider::openai`] and [`MockProvider::anthropic`] serve one API
//! strictly, as a real provider does ([`Api`]): the Anthropic mock serves
//! `/v1/messages` only, requires `x-api-key` and `anthropic-version`,
//! refuses fields the Messages API does not have and answers with
//! Anthropic-shaped errors; the OpenAI mock serves only OpenAI's paths,
//! requires a bearer key and refuses unknown request arguments. Either can
//! answer with tool calls (streamed as argument deltas) when the request
//! offers tools, and report cached prompt tokens ([`Behavior::cached_tokens`]).
//!
//! A request can also ask for a failure itself (the agent forwards app
//! headers): `x-mock-status: 500` answers with that status,
//! `x-mock-mode: unauthorized` (any [`Mode`] name) answers in that mode, and
//! `x-mock-cut-after: N` breaks a stream after N events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, std::io::Error>;

/// A failure the mock answers with.
#[derive(Debug, Clone)]
pub struct Fail {
    pub status: u16,
    pub retry_after: Option<String>,
    /// How many requests fail; `None`: all of them.
    pub times: Option<u32>,
}

/// How a misconfigured provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 401: the key is wrong (`invalid_api_key`; Anthropic
    /// `authentication_error`).
    Unauthorized,
    /// 403: the key may not use this (`permission_denied`; Anthropic
    /// `permission_error`).
    Forbidden,
    /// 404: no such model (`model_not_found`; Anthropic `not_found_error`).
    ModelNotFound,
    /// 400: a parameter the provider does not take
    /// (`unsupported_parameter`; Anthropic "Extra inputs are not
    /// permitted").
    UnsupportedParameter,
    /// Quota or credit exhausted: 429 `insufficient_quota` (Anthropic: 400
    /// "credit balance is too low").
    QuotaExhausted,
    /// 200 with JSON that is not an answer (`choices` is not a list); a
    /// streamed request gets a stream of such chunks, ended properly.
    Malformed,
    /// 200 with no choices (Anthropic: no content); a streamed request gets
    /// a stream that never gives a finish (stop) reason, ended properly.
    EmptyChoices,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Unauthorized,
        Mode::Forbidden,
        Mode::ModelNotFound,
        Mode::UnsupportedParameter,
        Mode::QuotaExhausted,
        Mode::Malformed,
        Mode::EmptyChoices,
    ];

    /// The name used by `--mode` and `x-mock-mode`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unauthorized => "unauthorized",
            Mode::Forbidden => "forbidden",
            Mode::ModelNotFound => "model-not-found",
            Mode::UnsupportedParameter => "unsupported-parameter",
            Mode::QuotaExhausted => "quota-exhausted",
            Mode::Malformed => "malformed",
            Mode::EmptyChoices => "empty-choices",
        }
    }

    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The events of a streamed answer in this mode, for the modes that
    /// answer 200.
    fn events(self, anthropic: bool) -> Option<Vec<String>> {
        let data = |v: serde_json::Value| format!("data: {v}\n\n");
        let event = |kind: &str, v: serde_json::Value| format!("event: {kind}\ndata: {v}\n\n");
        use serde_json::json;
        match (self, anthropic) {
            (Mode::Malformed, false) => Some(vec![
                data(json!({"id": "bad", "choices": "not a list"})),
                "data: [DONE]\n\n".into(),
            ]),
            (Mode::Malformed, true) => Some(vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "bad"}}),
                ),
                "event: content_block_delta\ndata: not json\n\n".into(),
                event("message_stop", json!({"type": "message_stop"})),
            ]),
            (Mode::EmptyChoices, false) => Some(vec![
                data(json!({"id": "empty", "choices": []})),
                "data: [DONE]\n\n".into(),
            ]),
            (Mode::EmptyChoices, true) => Some(vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "empty"}}),
                ),
                event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {}}),
                ),
                event("message_stop", json!({"type": "message_stop"})),
            ]),
            _ => None,
        }
    }

    /// The answer in this mode, in the shape of `anthropic`'s API or
    /// OpenAI's.
    fn answer(self, anthropic: bool, model: &str, n: u64) -> Response<Body> {
        use serde_json::json;
        let openai_error = |message: String, kind: &str, param: serde_json::Value, code: &str| json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
        let anthropic_error = |kind: &str, message: &str| json!({"type": "error", "error": {"type": kind, "message": message}});
        let (status, body) = match (self, anthropic) {
            (Mode::Unauthorized, false) => (401, openai_error("Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.".into(), "invalid_request_error", serde_json::Value::Null, "invalid_api_key")),
            (Mode::Unauthorized, true) => (401, anthropic_error("authentication_error", "invalid x-api-key")),
            (Mode::Forbidden, false) => (403, openai_error("You are not allowed to use this model.".into(), "permission_error", serde_json::Value::Null, "permission_denied")),
            (Mode::Forbidden, true) => (403, anthropic_error("permission_error", "Your API key does not have permission to use the specified resource.")),
            (Mode::ModelNotFound, false) => (404, openai_error(format!("The model `{model}` does not exist or you do not have access to it."), "invalid_request_error", serde_json::Value::Null, "model_not_found")),
            (Mode::ModelNotFound, true) => (404, anthropic_error("not_found_error", &format!("model: {model}"))),
            (Mode::UnsupportedParameter, false) => (400, openai_error("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into(), "invalid_request_error", json!("max_tokens"), "unsupported_parameter")),
            (Mode::UnsupportedParameter, true) => (400, anthropic_error("invalid_request_error", "top_k: Extra inputs are not permitted")),
            (Mode::QuotaExhausted, false) => (429, openai_error("You exceeded your current quota, please check your plan and billing details.".into(), "insufficient_quota", serde_json::Value::Null, "insufficient_quota")),
            (Mode::QuotaExhausted, true) => (400, anthropic_error("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.")),
            (Mode::Malformed, _) => (200, json!({"id": format!("bad-{n}"), "object": "chat.completion", "choices": "not a list"})),
            (Mode::EmptyChoices, false) => (200, json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion", "model": model, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}})),
            (Mode::EmptyChoices, true) => (200, json!({"id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 11, "output_tokens": 0}})),
        };
        json_response(StatusCode::from_u16(status).unwrap(), body)
    }
}

/// The one API a strict mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    pub fn parse(name: &str) -> Option<Api> {
        match name {
            "openai" => Some(Api::OpenAi),
            "anthropic" => Some(Api::Anthropic),
            _ => None,
        }
    }
}

/// Top-level fields of an Anthropic Messages request.
const ANTHROPIC_FIELDS: [&str; 15] = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
    "container",
];

/// Top-level fields of an OpenAI chat completion request.
const OPENAI_CHAT_FIELDS: [&str; 33] = [
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "web_search_options",
];

/// An error body in the shape of the API asked.
fn error_json(anthropic: bool, status: u16, message: &str) -> serde_json::Value {
    if anthropic {
        let kind = match status {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 | 503 => "overloaded_error",
            _ => "api_error",
        };
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let kind = match status {
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
    }
}

/// Refuses what the strict API would refuse: another API's path, a
/// missing key or version header, a field the API does not have.
fn strict_refusal(
    api: Api,
    parts: &http::request::Parts,
    path: &str,
    json: Option<&serde_json::Value>,
) -> Option<Response<Body>> {
    let anthropic = api == Api::Anthropic;
    let refuse = |status: u16, message: String| {
        Some(json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error_json(anthropic, status, &message),
        ))
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let served: &[&str] = if anthropic {
        &["/v1/messages", "/v1/models"]
    } else {
        &[
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
        ]
    };
    if !served.contains(&path) {
        return refuse(
            404,
            format!("Invalid URL ({} {})", parts.method, parts.uri.path()),
        );
    }
    if anthropic {
        if header("x-api-key").is_none() {
            return refuse(401, "x-api-key header is required".into());
        }
        if header("anthropic-version").is_none() {
            return refuse(400, "anthropic-version: header is required".into());
        }
        if header("authorization").is_some() {
            return refuse(400, "authorization: unexpected header".into());
        }
    } else if !header("authorization").is_some_and(|v| v.starts_with("Bearer ")) {
        return refuse(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.".into(),
        );
    }
    if parts.method != http::Method::POST {
        return None;
    }
    let Some(body) = json.and_then(|j| j.as_object()) else {
        return refuse(400, "the request body is not a JSON object".into());
    };
    if anthropic {
        if let Some(key) = body
            .keys()
            .find(|k| !ANTHROPIC_FIELDS.contains(&k.as_str()))
        {
            return refuse(400, format!("{key}: Extra inputs are not permitted"));
        }
        if !body.contains_key("max_tokens") {
            return refuse(400, "max_tokens: Field required".into());
        }
        if body
            .get("temperature")
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|t| t > 1.0)
        {
            return refuse(
                400,
                "temperature: Input should be less than or equal to 1".into(),
            );
        }
        let roles_ok = body
            .get("messages")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|m| {
                m.iter()
                    .all(|m| matches!(m["role"].as_str(), Some("user" | "assistant")))
            });
        if !roles_ok {
            return refuse(
                400,
                "messages: roles must be \"user\" or \"assistant\"".into(),
            );
        }
    } else if path == "/v1/chat/completions"
        && let Some(key) = body
            .keys()
            .find(|k| !OPENAI_CHAT_FIELDS.contains(&k.as_str()))
    {
        return refuse(
            400,
            format!("Unrecognized request argument supplied: {key}"),
        );
    }
    None
}

/// The tool call the mock answers with, when a request offers tools and
/// its last message is not a tool's result: the forced tool, or the first.
fn tool_call(json: Option<&serde_json::Value>, anthropic: bool) -> Option<(String, String)> {
    let json = json?;
    let tools = json.get("tools")?.as_array()?;
    let name_of = |t: &serde_json::Value| {
        t.pointer("/function/name")
            .or_else(|| t.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let last = json.get("messages")?.as_array()?.last()?;
    let answered = last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    if answered {
        return None;
    }
    let choice = json.get("tool_choice");
    if choice.is_some_and(|c| c == "none" || c["type"] == "none") {
        return None;
    }
    let forced = choice.and_then(|c| {
        c.pointer("/function/name")
            .or_else(|| if anthropic { c.get("name") } else { None })
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    });
    let name = forced.or_else(|| tools.first().and_then(name_of))?;
    Some((name, r#"{"city":"Paris","days":2}"#.to_string()))
}

/// What a tool's result said, when the request's last message is one.
fn tool_result(json: Option<&serde_json::Value>) -> Option<String> {
    let last = json?.get("messages")?.as_array()?.last()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<String>(),
        ),
        _ => None,
    };
    if last["role"] == "tool" {
        return text(&last["content"]);
    }
    last["content"].as_array()?.iter().find_map(|b| {
        (b["type"] == "tool_result")
            .then(|| text(&b["content"]))
            .flatten()
    })
}

/// How the mock behaves; change it with [`MockProvider::set`].
#[derive(Debug, Clone)]
pub struct Behavior {
    pub fail: Option<Fail>,
    /// Fail exactly floor(n * rate) of the first n requests, evenly spread,
    /// with `error_status`.
    pub error_rate: Option<f64>,
    pub error_status: u16,
    /// The `Retry-After` of the `error_rate` failures, if any.
    pub error_retry_after: Option<String>,
    /// Wait before the response head.
    pub delay: Duration,
    /// How many requests get `delay`; `None`: all of them.
    pub delay_times: Option<u32>,
    /// Content chunks of a streamed answer.
    pub chunks: u32,
    /// Wait between streamed chunks.
    pub chunk_delay: Duration,
    /// Break the connection after this many streamed events.
    pub cut_after: Option<u32>,
    /// Stop sending (keep the connection open) after this many events.
    pub stall_after: Option<u32>,
    /// Answer plain (non-streamed) chat requests with a 200 head and the
    /// start of a body, then send nothing more (keep the connection open).
    pub stall_after_head: bool,
    /// End streams cleanly but without the final event.
    pub omit_final_event: bool,
    /// Hold each request until [`MockProvider::release`].
    pub gated: bool,
    /// Answer every request as a misconfigured provider does.
    pub mode: Option<Mode>,
    /// Prompt tokens reported as read from the cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, Anthropic's
    /// `cache_read_input_tokens`).
    pub cached_tokens: u32,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            fail: None,
            error_rate: None,
            error_status: 503,
            error_retry_after: None,
            delay: Duration::ZERO,
            delay_times: None,
            chunks: 5,
            chunk_delay: Duration::ZERO,
            cut_after: None,
            stall_after: None,
            stall_after_head: false,
            omit_final_event: false,
            gated: false,
            mode: None,
            cached_tokens: 0,
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    pub version: http::Version,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The `model` of a JSON body.
    pub model: Option<String>,
    pub at: Instant,
}

struct State {
    name: String,
    /// The one API served, strictly; `None`: both, leniently.
    strict: Option<Api>,
    behavior: Mutex<Behavior>,
    received: Mutex<Vec<Received>>,
    counter: AtomicU64,
    /// Streams that ran to their end.
    streams_completed: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    gate: Semaphore,
    arrived: Notify,
}

/// A mock provider. Clones share state.
#[derive(Clone)]
pub struct MockProvider {
    state: Arc<State>,
}

impl MockProvider {
    /// A provider whose answers say `name`, answering both API families.
    pub fn new(name: &str) -> Self {
        Self::serving(name, None)
    }

    /// A provider that serves OpenAI's APIs only, strictly.
    pub fn openai(name: &str) -> Self {
        Self::serving(name, Some(Api::OpenAi))
    }

    /// A provider that serves Anthropic's Messages API only, strictly.
    pub fn anthropic(name: &str) -> Self {
        Self::serving(name, Some(Api::Anthropic))
    }

    /// A provider serving `strict`'s API only (or both, leniently).
    pub fn serving(name: &str, strict: Option<Api>) -> Self {
        Self {
            state: Arc::new(State {
                name: name.into(),
                strict,
                behavior: Mutex::new(Behavior::default()),
                received: Mutex::new(Vec::new()),
                counter: AtomicU64::new(0),
                streams_completed: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                gate: Semaphore::new(0),
                arrived: Notify::new(),
            }),
        }
    }

    /// Changes the behavior.
    pub fn set(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut self.state.behavior.lock().unwrap());
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.state.received.lock().unwrap().clear();
    }

    /// Streams that were sent to their end.
    pub fn streams_completed(&self) -> u64 {
        self.state.streams_completed.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.state.arrived.notified();
            if self.count() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Lets `n` gated requests proceed.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// Serves on `127.0.0.1:0` until the runtime ends; returns the address.
    pub async fn serve_tcp(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(self.clone().serve_listener(listener));
        addr
    }

    /// Serves every connection of `listener`.
    pub async fn serve_listener(self, listener: TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move { me.serve_io(TokioIo::new(stream)).await });
        }
    }

    /// Serves HTTPS on `127.0.0.1:0` with a fresh self-signed certificate for
    /// "localhost"; returns the address and the certificate (PEM) to trust.
    pub async fn serve_tls(&self) -> (SocketAddr, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = certified.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (me, acceptor) = (me.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        me.serve_io(TokioIo::new(tls)).await;
                    }
                });
            }
        });
        (addr, cert_pem)
    }

    /// Serves one connection on any byte stream.
    pub async fn serve_io<I>(&self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        self.state.connections.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        let service = service_fn(move |req| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.answer(req).await) }
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let model = json
            .as_ref()
            .and_then(|j| j.get("model"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let stream = json
            .as_ref()
            .and_then(|j| j.get("stream"))
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        let include_usage = json
            .as_ref()
            .and_then(|j| j.pointer("/stream_options/include_usage"))
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        self.state.received.lock().unwrap().push(Received {
            method: parts.method.clone(),
            version: parts.version,
            path: parts.uri.path().to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
            model: model.clone(),
            at: Instant::now(),
        });
        self.state.arrived.notify_waiters();
        let n = self.state.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut behavior = {
            let mut b = self.state.behavior.lock().unwrap();
            let snapshot = b.clone();
            if let Some(left) = b.delay_times.as_mut() {
                *left = left.saturating_sub(1);
            }
            snapshot
        };
        if behavior.delay_times == Some(0) {
            behavior.delay = Duration::ZERO;
        }
        let asked = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        };
        if let Some(cut) = asked("x-mock-cut-after") {
            behavior.cut_after = Some(cut);
        }

        if behavior.gated
            && let Ok(permit) = self.state.gate.acquire().await
        {
            permit.forget();
        }
        if !behavior.delay.is_zero() {
            tokio::time::sleep(behavior.delay).await;
        }
        let model = model.unwrap_or_else(|| "mock-model".into());
        // Served under any base path: match on the API path it ends with.
        let full_path = parts.uri.path();
        let path = [
            "/v1/models",
            "/v1/messages",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
        ]
        .into_iter()
        .find(|p| full_path.ends_with(p))
        .unwrap_or(full_path);
        let anthropic = match self.state.strict {
            Some(api) => api == Api::Anthropic,
            None => path == "/v1/messages",
        };
        if let Some(api) = self.state.strict
            && let Some(resp) = strict_refusal(api, &parts, path, json.as_ref())
        {
            return resp;
        }
        if let Some(resp) = self.failure(&behavior, n, anthropic) {
            return resp;
        }
        let mode = parts
            .headers
            .get("x-mock-mode")
            .and_then(|v| v.to_str().ok())
            .and_then(Mode::parse)
            .or(behavior.mode);
        if let Some(mode) = mode {
            return match mode.events(anthropic).filter(|_| stream) {
                Some(events) => self.stream(behavior, events),
                None => mode.answer(anthropic, &model, n),
            };
        }
        let chat = parts.method == http::Method::POST
            && matches!(path, "/v1/messages" | "/v1/chat/completions");
        if chat && json.as_ref().and_then(|j| j.get("messages")).is_none() {
            // The request's own mistake, as the real APIs answer it.
            let body = if anthropic {
                serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: Field required"}})
            } else {
                serde_json::json!({"error": {"message": "'messages' is a required property", "type": "invalid_request_error", "param": "messages", "code": null}})
            };
            return json_response(StatusCode::BAD_REQUEST, body);
        }
        if let Some(status) = asked("x-mock-status") {
            let status = u16::try_from(status).unwrap_or(500);
            return json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                error_json(
                    anthropic,
                    status,
                    &format!("{} failed on request", self.state.name),
                ),
            );
        }
        if chat && !stream && behavior.stall_after_head {
            return stalled_after_head();
        }
        let call = tool_call(json.as_ref(), anthropic);
        let text = match tool_result(json.as_ref()) {
            Some(said) => format!("reply from {}: the tool said {said}", self.state.name),
            None => format!("reply from {}", self.state.name),
        };
        let cached = behavior.cached_tokens;
        match (parts.method.as_str(), path) {
            ("GET", "/v1/models") => json_response(
                StatusCode::OK,
                serde_json::json!({"object": "list", "data": [{"id": model, "object": "model", "owned_by": self.state.name}]}),
            ),
            ("POST", "/v1/messages") if stream => {
                let events =
                    anthropic_events(&self.state.name, &model, behavior.chunks, call, cached);
                self.stream(behavior, events)
            }
            ("POST", "/v1/messages") => {
                let mut content = vec![serde_json::json!({"type": "text", "text": text})];
                if let Some((name, args)) = &call {
                    let input: serde_json::Value = serde_json::from_str(args).unwrap_or_default();
                    content.push(serde_json::json!({"type": "tool_use", "id": format!("toolu_{n}"), "name": name, "input": input}));
                }
                let mut usage = serde_json::json!({"input_tokens": 11, "output_tokens": 7});
                if cached > 0 {
                    usage["cache_read_input_tokens"] = cached.into();
                }
                json_response(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": model,
                        "content": content,
                        "stop_reason": if call.is_some() { "tool_use" } else { "end_turn" },
                        "stop_sequence": null,
                        "usage": usage
                    }),
                )
            }
            ("POST", "/v1/chat/completions") if stream => {
                let events = openai_events(
                    &self.state.name,
                    &model,
                    behavior.chunks,
                    include_usage,
                    call,
                    cached,
                );
                self.stream(behavior, events)
            }
            ("POST", "/v1/chat/completions") => {
                let mut message = serde_json::json!({"role": "assistant", "content": text});
                if let Some((name, args)) = &call {
                    message["content"] = serde_json::Value::Null;
                    message["tool_calls"] = serde_json::json!([{"id": format!("call_{n}"), "type": "function", "function": {"name": name, "arguments": args}}]);
                }
                let mut usage = serde_json::json!({"prompt_tokens": 10 + cached, "completion_tokens": 5, "total_tokens": 15 + cached});
                if cached > 0 {
                    usage["prompt_tokens_details"] = serde_json::json!({"cached_tokens": cached});
                }
                json_response(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 1_700_000_000, "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": if call.is_some() { "tool_calls" } else { "stop" }}],
                        "usage": usage
                    }),
                )
            }
            ("POST", "/v1/completions") => json_response(
                StatusCode::OK,
                serde_json::json!({
                    "id": format!("cmpl-{n}"), "object": "text_completion", "model": model,
                    "choices": [{"index": 0, "text": format!("reply from {}", self.state.name), "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
                }),
            ),
            ("POST", "/v1/embeddings") => json_response(
                StatusCode::OK,
                serde_json::json!({
                    "object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}
                }),
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                error_json(
                    anthropic,
                    404,
                    &format!("mock has no {} {path}", parts.method),
                ),
            ),
        }
    }

    /// Takes one failure off the `fail` setting, if it still has any.
    fn take_failure(&self) -> Option<(u16, Option<String>)> {
        let mut behavior = self.state.behavior.lock().unwrap();
        let fail = behavior.fail.as_mut()?;
        match &mut fail.times {
            Some(0) => None,
            Some(left) => {
                *left -= 1;
                Some((fail.status, fail.retry_after.clone()))
            }
            None => Some((fail.status, fail.retry_after.clone())),
        }
    }

    fn failure(&self, behavior: &Behavior, n: u64, anthropic: bool) -> Option<Response<Body>> {
        let due = |k: u64, rate: f64| (k as f64 * rate).floor() as u64;
        let status = match (self.take_failure(), behavior.error_rate) {
            (Some(f), _) => Some(f),
            (None, Some(rate)) if due(n, rate) > due(n - 1, rate) => {
                Some((behavior.error_status, behavior.error_retry_after.clone()))
            }
            _ => None,
        }?;
        let (status, retry_after) = status;
        let mut resp = json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_json(
                anthropic,
                status,
                &format!("{} failed on purpose", self.state.name),
            ),
        );
        if let Some(ra) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, ra.parse().unwrap());
        }
        Some(resp)
    }

    fn stream(&self, behavior: Behavior, events: Vec<String>) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let last = events.len();
            for (i, event) in events.into_iter().enumerate() {
                let sent = i as u32;
                if behavior.cut_after == Some(sent) {
                    let _ = tx.send(Err(std::io::Error::other("cut on purpose"))).await;
                    return;
                }
                if behavior.stall_after == Some(sent) {
                    // Keep the stream open, never finish it.
                    tx.closed().await;
                    return;
                }
                if behavior.omit_final_event && i + 1 == last {
                    break;
                }
                if i > 0 && !behavior.chunk_delay.is_zero() {
                    tokio::time::sleep(behavior.chunk_delay).await;
                }
                if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                    return;
                }
            }
            state.streams_completed.fetch_add(1, Ordering::SeqCst);
        });
        let body = FlushBeforeError {
            inner: StreamBody::new(ReceiverStream::new(rx)),
            pending_error: None,
        };
        let mut resp = Response::new(BodyExt::boxed(body));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        resp.headers_mut()
            .insert(http::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        resp
    }
}

/// Passes a body through, but lets the server flush what it sent before an
/// error ends the connection (otherwise the events before a cut are lost).
struct FlushBeforeError<B> {
    inner: B,
    pending_error: Option<std::io::Error>,
}

impl<B> http_body::Body for FlushBeforeError<B>
where
    B: http_body::Body<Data = Bytes, Error = std::io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if let Some(e) = self.pending_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.pending_error = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    resp
}

/// The events of a streamed chat completion, ending with `data: [DONE]`;
/// with `call`, a tool call whose arguments arrive in pieces.
fn openai_events(
    name: &str,
    model: &str,
    chunks: u32,
    include_usage: bool,
    call: Option<(String, String)>,
    cached: u32,
) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for i in 0..chunks {
        events.push(chunk(
            serde_json::json!({"content": format!("{name}-{i} ")}),
            serde_json::Value::Null,
        ));
    }
    let finish = match &call {
        Some((tool, args)) => {
            events.push(chunk(
                serde_json::json!({"tool_calls": [{"index": 0, "id": "call_s", "type": "function", "function": {"name": tool, "arguments": ""}}]}),
                serde_json::Value::Null,
            ));
            for piece in pieces(args) {
                events.push(chunk(
                    serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    serde_json::Value::Null,
                ));
            }
            "tool_calls"
        }
        None => "stop",
    };
    events.push(chunk(serde_json::json!({}), serde_json::json!(finish)));
    if include_usage {
        let mut usage = serde_json::json!({"prompt_tokens": 10 + cached, "completion_tokens": chunks, "total_tokens": 10 + cached + chunks});
        if cached > 0 {
            usage["prompt_tokens_details"] = serde_json::json!({"cached_tokens": cached});
        }
        events.push(format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

/// A tool call's arguments in three pieces, as providers stream them.
fn pieces(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    chars.chunks(third).map(|c| c.iter().collect()).collect()
}

/// The events of a streamed Anthropic message, ending with `message_stop`;
/// with `call`, a tool-use block whose input arrives in pieces.
fn anthropic_events(
    name: &str,
    model: &str,
    chunks: u32,
    call: Option<(String, String)>,
    cached: u32,
) -> Vec<String> {
    let event = |kind: &str, data: serde_json::Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut usage = serde_json::json!({"input_tokens": 11, "output_tokens": 1});
    if cached > 0 {
        usage["cache_read_input_tokens"] = cached.into();
    }
    let mut events = vec![
        event(
            "message_start",
            serde_json::json!({"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        ),
        event(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for i in 0..chunks {
        events.push(event(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("{name}-{i} ")}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    ));
    let stop = match &call {
        Some((tool, args)) => {
            events.push(event(
                "content_block_start",
                serde_json::json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_s", "name": tool, "input": {}}}),
            ));
            for piece in pieces(args) {
                events.push(event(
                    "content_block_delta",
                    serde_json::json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            events.push(event(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 1}),
            ));
            "tool_use"
        }
        None => "end_turn",
    };
    events.push(event("message_delta", serde_json::json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": chunks}})));
    events.push(event(
        "message_stop",
        serde_json::json!({"type": "message_stop"}),
    ));
    events
}

/// A 200 JSON head and the start of its body, and then nothing: the
/// connection stays open (a provider stalling after its head).
fn stalled_after_head() -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        if tx
            .send(Ok(Frame::data(Bytes::from_static(b"{\"id\":\"stalled\","))))
            .await
            .is_ok()
        {
            tx.closed().await;
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    resp
}
