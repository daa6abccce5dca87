//! A TCP relay whose link can be cut and restored, to make a dependency (the
//! database, the control plane) unreachable without stopping it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Relays connections from `addr` to a target while the link is up.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    // Bumped on every cut, so open connections close.
    cuts: watch::Sender<u64>,
    /// Connections closed at once while the link was cut.
    refused: Arc<AtomicU64>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let refused = Arc::new(AtomicU64::new(0));
        let relay = Relay {
            addr,
            up: up.clone(),
            cuts: cuts.clone(),
            refused: refused.clone(),
        };
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        relay
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections closed at once while the link was cut (attempts to get
    /// through).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A loopback address whose connections are refused, for as long as this
/// lives: a socket bound to the port and not listening. A port merely
/// closed again may be handed to another test's listener meanwhile, which
/// would then answer in its place.
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        RefusedPort {
            addr: socket.local_addr().unwrap(),
            _socket: socket,
        }
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}
