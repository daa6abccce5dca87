//! The proxy listener: HTTP/1.1 and h2c (prior knowledge) on one port, a
//! header read timeout, bounded header size, and a graceful drain at shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use shepherd_observe::admin::AcceptBackoff;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::proxy::Proxy;

/// Connection settings of the proxy listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head (and HTTP/1 read buffer).
    pub max_header_bytes: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            h2_max_streams: 256,
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
        .keep_alive_interval(Some(Duration::from_secs(30)));
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
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(&settings));
    let graceful = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    // Connections that sent their first bytes in time, to be served.
    let (spoke, mut speaking) = tokio::sync::mpsc::channel::<TcpStream>(64);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(stream) = speaking.recv() => stream,
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        // The header-read timeout counts from the first
                        // bytes on; a connection that sends none within it
                        // (whatever its protocol) is closed.
                        let (spoke, timeout) = (spoke.clone(), settings.header_read_timeout);
                        tokio::spawn(async move {
                            if first_bytes(&stream, timeout).await {
                                let _ = spoke.send(stream).await;
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        backoff.failed(&e, "proxy").await;
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let service = service_fn(move |req| proxy.clone().handle(req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    info!(
        connections = open,
        "proxy listener closed; draining in-flight requests"
    );
    let drained = graceful.shutdown();
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

/// True once a connection has sent its first byte within `timeout`; false
/// when it sent none (or closed, or failed): it is then dropped, closed.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// How long streams cut at the end of the drain have to write their error
/// event.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);
