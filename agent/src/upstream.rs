//! Pooled keep-alive connections to upstreams: HTTPS with rustls (HTTP/2 or
//! HTTP/1.1 by ALPN) and plain HTTP/1.1, one pool per backend address,
//! connect timeout and worker thread.
//!
//! Connections normally go over TCP. A [`Connector::Memory`] connector opens
//! in-process pipes instead, so the whole proxy can run under a paused clock
//! in tests.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::DuplexStream;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use crate::lock;

/// Opens an in-process connection to the server for a URI.
pub type MemoryDial = Arc<dyn Fn(&Uri) -> io::Result<DuplexStream> + Send + Sync>;

/// How upstream connections are made.
#[derive(Clone)]
pub enum Connector {
    /// TCP, with TLS for https URLs.
    Net(HttpsConnector<HttpConnector>),
    /// In-process pipes (tests).
    Memory(MemoryDial),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Net(_) => "Connector::Net",
            Connector::Memory(_) => "Connector::Memory",
        })
    }
}

/// TLS settings for upstreams.
#[derive(Debug, Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    /// Trusts the Mozilla root certificates, plus those in `extra_ca_file`
    /// (PEM) if given.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("CA file {}: no certificate in it", path.display()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }
}

impl Connector {
    /// A TCP connector with the given connect timeout.
    pub fn net(tls: &Tls, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.0).clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Connector::Net(https)
    }
}

/// A connection made by a [`Connector`].
// The TLS stream is the large, common variant; boxing it would add an
// indirection to every read and write to save bytes on test pipes.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Net(MaybeHttpsStream<TokioIo<TcpStream>>),
    Memory(TokioIo<DuplexStream>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Net(s) => s.connected(),
            Conn::Memory(_) => Connected::new(),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Net(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Net(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Net(s) => Pin::new(s).poll_flush(cx),
            Conn::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Net(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Net(s) => s.is_write_vectored(),
            Conn::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Net(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Net(c) => c.poll_ready(cx),
            Connector::Memory(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Connector::Net(c) => {
                let fut = c.call(uri);
                Box::pin(async move { fut.await.map(Conn::Net) })
            }
            Connector::Memory(dial) => {
                let result = dial(&uri).map(|s| Conn::Memory(TokioIo::new(s)));
                Box::pin(async move { result.map_err(Into::into) })
            }
        }
    }
}

/// Idle connections older than this are closed instead of reused: servers
/// commonly drop keep-alive connections after a minute.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Most idle connections kept per upstream address and worker.
const MAX_IDLE: usize = 256;

type Http1Sender = http1::SendRequest<Full<Bytes>>;
type Http2Sender = http2::SendRequest<Full<Bytes>>;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (TCP, TLS, or the HTTP handshake).
    Connect(BoxError),
    /// The connection failed while the request was under way.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause: &(dyn std::error::Error + 'static) = match self {
            SendError::Connect(e) => e.as_ref(),
            SendError::Failed(e) => e,
        };
        let mut root = cause;
        while let Some(next) = root.source() {
            root = next;
        }
        match self {
            SendError::Connect(_) => write!(f, "cannot connect: {root}"),
            SendError::Failed(_) => write!(f, "connection failed: {root}"),
        }
    }
}

struct Idle {
    sender: Http1Sender,
    since: Instant,
}

/// Connections to one upstream address, used by one worker thread: idle
/// HTTP/1.1 connections (newest first), or one multiplexed HTTP/2 connection
/// when TLS negotiated it. Connection tasks run on the worker's own runtime.
pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<Http2Sender>>,
}

/// An HTTP/1.1 connection lent for one request. Give it back with
/// [`Lease::release`] once the response body has been read to its end; an
/// unfinished response leaves the connection unusable, so dropping the lease
/// closes it.
pub struct Lease {
    pool: Arc<Pool>,
    sender: Http1Sender,
}

impl Lease {
    /// Returns the connection to its pool.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.pool.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// The request with an origin-form target (`/path?query`), as HTTP/1.1
/// servers expect.
fn origin_form(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(target);
    req
}

impl Pool {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    fn take_idle(&self) -> Option<Http1Sender> {
        let mut idle = lock(&self.idle);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Sends a request (absolute URI) on a pooled or new connection. A
    /// pooled connection found closed before the request went out is
    /// replaced transparently. The lease (HTTP/1.1 only) must be released
    /// when the response body is done.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let h2 = lock(&self.h2).clone();
        if let Some(mut sender) = h2 {
            if sender.is_closed() {
                lock(&self.h2).take();
            } else {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, None)),
                    Err(mut e) => match e.take_message() {
                        Some(back) => {
                            lock(&self.h2).take();
                            req = back;
                        }
                        None => return Err(SendError::Failed(e.into_error())),
                    },
                }
            }
        }
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(origin_form(req)).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: self.clone(),
                        sender,
                    };
                    return Ok((resp, Some(lease)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection went away; put the absolute
                    // URI back and try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        // Connecting is rare and its state large (TCP, TLS, handshake):
        // boxed, it does not bloat every request's future.
        Box::pin(self.send_on_new(req)).await
    }

    async fn send_on_new(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let conn = self
            .connector
            .clone()
            .call(req.uri().clone())
            .await
            .map_err(SendError::Connect)?;
        if conn.connected().is_negotiated_h2() {
            let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(conn)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            tokio::spawn(connection);
            *lock(&self.h2) = Some(sender.clone());
            let mut req = req;
            req.headers_mut().remove(http::header::HOST);
            let resp = sender.send_request(req).await.map_err(SendError::Failed)?;
            return Ok((resp, None));
        }
        let (mut sender, connection) = http1::Builder::new()
            .handshake(conn)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(connection);
        let resp = sender
            .send_request(origin_form(req))
            .await
            .map_err(SendError::Failed)?;
        Ok((
            resp,
            Some(Lease {
                pool: self.clone(),
                sender,
            }),
        ))
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index`: its requests use that
/// worker's connection pools.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// One pool per worker thread, so a connection is only ever used on the
/// thread (and single-threaded runtime) that opened it: a request never waits
/// on another thread.
#[derive(Clone)]
pub struct Clients(Arc<[Arc<Pool>]>);

impl Clients {
    /// `workers` pools on `connector`.
    pub fn new(connector: &Connector, workers: usize) -> Self {
        Self(
            (0..workers.max(1))
                .map(|_| Arc::new(Pool::new(connector.clone())))
                .collect(),
        )
    }

    /// The current worker's pool.
    pub fn current(&self) -> &Arc<Pool> {
        let i = WORKER.with(std::cell::Cell::get);
        &self.0[i % self.0.len()]
    }
}
