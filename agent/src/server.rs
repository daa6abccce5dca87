//! The proxy listener: HTTP/1.1 and h2c (prior knowledge) on one port, a
//! header read timeout, bounded header size, and a graceful drain at shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shepherd_observe::admin::AcceptBackoff;
use shepherd_observe::conns;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::proxy::Proxy;

/// Connection settings of the proxy listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Time a client has to send a request's headers, and a new
    /// connection its first request (whatever its protocol).
    pub header_read_timeout: Duration,
    /// Largest request head (and HTTP/1 read buffer).
    pub max_header_bytes: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_streams: u32,
    /// Most connections open at once (all workers together).
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            h2_max_streams: 256,
            max_connections: conns::default_cap(),
        }
    }
}

fn builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Binds `count` listeners on `addr` sharing the port (`SO_REUSEPORT`), one
/// per worker: the kernel spreads connections over them. Port 0 picks a free
/// port for all. Must run inside a tokio runtime; the listeners come back as
/// std sockets, to be registered on each worker's own runtime.
pub fn bind_shared(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        addr = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Serves one connection (any byte stream) until it closes.
pub async fn serve_connection<I>(io: I, proxy: Arc<Proxy>, settings: &ServerSettings)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| proxy.clone().handle(req));
    if let Err(e) = builder(settings)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections until `shutdown`, then lets in-flight requests finish
/// for up to the grace period.
///
/// Each connection has the header-read timeout to send its first request,
/// whatever its protocol (see [`shepherd_observe::conns`]); at most
/// `max_connections` are open at once, the oldest that has sent no request
/// making room for a new one.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(&settings));
    let connections = proxy.connections().clone();
    connections.set_cap(settings.max_connections);
    let drain = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    // Failed accepts (out of file descriptors and the like) back off.
    while let Some(stream) = backoff.accept(&listener, "proxy", &shutdown).await {
        // At the cap with every connection busy: closed at once.
        let Some(guard) = connections.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let guard = Arc::new(guard);
        let asked = guard.clone();
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            asked.asked();
            proxy.clone().handle(req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let close = conns::close_signal(guard, settings.header_read_timeout, drain.clone());
        tasks.spawn(async move {
            tokio::pin!(conn, close);
            let result = tokio::select! {
                biased;
                result = conn.as_mut() => result,
                why = &mut close => {
                    conn.as_mut().graceful_shutdown();
                    match why {
                        conns::Closing::Idle => {
                            tokio::time::timeout(conns::IDLE_GRACE, conn).await.unwrap_or(Ok(()))
                        }
                        conns::Closing::Drain => conn.await,
                    }
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!(
        connections = connections.counts().open,
        "proxy listener closed; draining in-flight requests"
    );
    drain.cancel();
    tasks.close();
    let drained = tasks.wait();
    tokio::pin!(drained);
    tokio::select! {
        () = &mut drained => info!("all connections drained"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            warn!(grace = ?settings.shutdown_grace, "in-flight requests did not finish in time; closing them");
            // Streams still running end with an error event; their
            // connections get a moment to write it.
            proxy.closing.cancel();
            let _ = tokio::time::timeout(CLOSING_FLUSH, drained).await;
        }
    }
}

/// How long streams cut at the end of the drain have to write their error
/// event.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);
