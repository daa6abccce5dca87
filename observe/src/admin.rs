//! A small HTTP/1.1 listener for the admin endpoints of both binaries
//! (`/metrics`, health).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conns::Connections;

/// Plain text.
pub const PLAIN: &str = "text/plain; charset=utf-8";

/// A response with a body and its content type.
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// A connection's byte stream, plain or wrapped (TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Turns an accepted connection into the stream HTTP is served on (a TLS
/// handshake).
pub type Handshake = Arc<
    dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>
        + Send
        + Sync,
>;

/// Serves `respond` on `listener` until `shutdown`. Only GET and HEAD are
/// taken; anything else gets 405.
pub async fn serve<F, Fut>(listener: TcpListener, respond: F, shutdown: CancellationToken)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_with(listener, None, respond, shutdown).await;
}

/// Most connections the admin listener keeps open (scrapers and probes
/// need few); past it the oldest that has sent no request is closed.
pub const MAX_CONNECTIONS: usize = 64;

/// Time an admin connection has to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// [`serve`], each connection first going through `handshake` when given.
pub async fn serve_with<F, Fut>(
    listener: TcpListener,
    handshake: Option<Handshake>,
    respond: F,
    shutdown: CancellationToken,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let respond = Arc::new(respond);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(FIRST_REQUEST_TIMEOUT);
    let builder = Arc::new(builder);
    let connections = Connections::new(MAX_CONNECTIONS);
    let mut backoff = AcceptBackoff::default();
    while let Some(stream) = backoff.accept(&listener, "admin", &shutdown).await {
        let Some(guard) = connections.admit() else {
            continue;
        };
        let respond = respond.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let handshake = handshake.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + FIRST_REQUEST_TIMEOUT;
            let stream: Box<dyn Io> = match handshake {
                None => Box::new(stream),
                Some(h) => match tokio::time::timeout_at(deadline, h(stream)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "admin handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
            };
            let guard = Arc::new(guard);
            let asked = guard.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                asked.asked();
                let respond = respond.clone();
                async move {
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return Ok::<_, Infallible>(text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            PLAIN,
                            "only GET\n",
                        ));
                    }
                    Ok(respond(req).await)
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let close = crate::conns::close_signal(guard, left, shutdown);
            tokio::pin!(conn, close);
            tokio::select! {
                biased;
                _ = conn.as_mut() => {}
                why = &mut close => {
                    conn.as_mut().graceful_shutdown();
                    match why {
                        crate::conns::Closing::Idle => {
                            let _ = tokio::time::timeout(crate::conns::IDLE_GRACE, conn).await;
                        }
                        crate::conns::Closing::Drain => {
                            let _ = conn.await;
                        }
                    }
                }
            }
        });
    }
}

/// What a listener does after a failed accept (out of file descriptors and
/// the like): it waits, 10 ms at first and twice as long after each failure
/// in a row, up to 1 s, so it does not spin; the next success starts over.
/// The first failure of a run is logged, then one line a second at most.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    logged: Option<tokio::time::Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            delay: Self::FIRST,
            failures: 0,
            logged: None,
        }
    }
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// An accept failed with `error` on the `listener` named: logs it (at
    /// most once a second) and waits before the next accept.
    pub async fn failed(&mut self, error: &std::io::Error, listener: &str) {
        self.failures += 1;
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                listener,
                error = %error,
                failures = self.failures,
                retry_in = ?self.delay,
                "accept failed; backing off"
            );
            self.logged = Some(now);
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    /// The next connection of `listener` (named in the log), waiting out
    /// failed accepts; `None` once `shutdown` fires.
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Option<TcpStream> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        self.succeeded();
                        return Some(stream);
                    }
                    Err(e) => self.failed(&e, name).await,
                },
            }
        }
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            *self = Self::default();
        }
    }

    /// The wait after the next failure.
    pub fn next_delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// Failures in a row wait 10 ms, 20 ms, ... up to 1 s; a success starts
    /// over.
    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let mut waits = Vec::new();
        for _ in 0..9 {
            let t = tokio::time::Instant::now();
            b.failed(&e, "test").await;
            waits.push(t.elapsed().as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }
}
