//! A small HTTP client for tests: requests to the agent (over TCP or
//! in-process pipes) with the whole answer read, or the response kept open to
//! read a stream frame by frame.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

use shepherd_agent::upstream::{Connector, Pool};

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that answered (`x-shepherd-backend`).
    pub fn backend(&self) -> &str {
        self.header("x-shepherd-backend").unwrap_or("")
    }
}

enum Inner {
    Tcp(Box<Legacy<HttpConnector, Full<Bytes>>>),
    Pipe(Arc<Pool>),
}

/// An HTTP/1.1 client.
pub struct Client {
    inner: Inner,
    base: String,
}

impl Client {
    /// A client over TCP to `base`, e.g. `http://127.0.0.1:4000`.
    pub fn tcp(base: &str) -> Self {
        Self {
            inner: Inner::Tcp(Box::new(Legacy::builder(TokioExecutor::new()).build_http())),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// A client over in-process pipes made by `connector`.
    pub fn pipe(connector: Connector) -> Self {
        Self {
            inner: Inner::Pipe(Arc::new(Pool::new(connector))),
            base: "http://agent".into(),
        }
    }

    /// Sends a request; the body stays unread.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Response<Incoming> {
        if req.uri().scheme().is_none() {
            *req.uri_mut() = format!("{}{}", self.base, req.uri()).parse().unwrap();
        }
        match &self.inner {
            Inner::Tcp(c) => c
                .request(req)
                .await
                .unwrap_or_else(|e| panic!("request failed: {e:?}")),
            // The connection closes once this response is read (its lease
            // is not returned), which is all a test needs.
            Inner::Pipe(pool) => {
                pool.send(req)
                    .await
                    .unwrap_or_else(|e| panic!("request failed: {e}"))
                    .0
            }
        }
    }

    /// POSTs `body` (JSON) with extra headers and reads the whole answer.
    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::post(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::try_from(*k).unwrap(),
                http::HeaderValue::try_from(*v).unwrap(),
            );
        }
        read(self.send(req).await).await
    }

    /// GETs `path` and reads the whole answer.
    pub async fn get(&self, path: &str) -> Reply {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        read(self.send(req).await).await
    }
}

/// Reads a whole answer (a body that ends with an error is kept up to there).
pub async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, mut body) = resp.into_parts();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    bytes.extend_from_slice(&d);
                }
            }
            Err(_) => break,
        }
    }
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(bytes),
    }
}

/// How a streamed body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The body ended cleanly.
    Clean,
    /// The body ended with an error (the connection was aborted).
    Aborted,
}

/// Reads a streamed body to its end: the bytes, and how it ended.
pub async fn read_stream(resp: Response<Incoming>) -> (String, StreamEnd) {
    let mut body = resp.into_body();
    let mut text = String::new();
    loop {
        match body.frame().await {
            None => return (text, StreamEnd::Clean),
            Some(Err(_)) => return (text, StreamEnd::Aborted),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
        }
    }
}
