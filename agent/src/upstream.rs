//! Pooled keep-alive clients to upstreams: HTTPS with rustls (HTTP/2 or
//! HTTP/1.1 by ALPN) and plain HTTP/1.1, one pool per backend address and
//! connect timeout.
//!
//! Connections normally go over TCP. A [`Connector::Memory`] connector opens
//! in-process pipes instead, so the whole proxy can run under a paused clock
//! in tests.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::DuplexStream;
use tokio::net::TcpStream;

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

impl tower_service::Service<Uri> for Connector {
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

/// A pooled client for one upstream address.
pub type UpstreamClient = Client<Connector, Full<Bytes>>;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index`: its requests use that
/// worker's connection pools.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// One pooled client per worker thread, so a connection is only ever used on
/// the thread (and single-threaded runtime) that opened it: a request never
/// waits on another thread.
#[derive(Clone)]
pub struct Clients(Arc<[UpstreamClient]>);

impl Clients {
    /// `workers` clients on `connector`.
    pub fn new(connector: &Connector, workers: usize) -> Self {
        Self(
            (0..workers.max(1))
                .map(|_| client(connector.clone()))
                .collect(),
        )
    }

    /// The current worker's client.
    pub fn current(&self) -> &UpstreamClient {
        let i = WORKER.with(std::cell::Cell::get);
        &self.0[i % self.0.len()]
    }
}

/// Builds a pooled keep-alive client on `connector`.
pub fn client(connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        // The proxy sets `host` itself, from a value made once per backend.
        .set_host(false)
        .build(connector)
}
