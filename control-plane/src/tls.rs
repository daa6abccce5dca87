//! TLS for the control plane's gRPC and admin listeners (rustls), with
//! client certificates (mTLS) when a client CA is configured, and the
//! accept loop both listeners' connections come through.
//!
//! Certificates, keys and the client CA are re-read when their files change
//! (see [`crate::reload`]); the new settings serve the next handshake, and
//! connections already made keep theirs. A client certificate is optional at
//! the handshake, so operators can use grpcurl with a bearer token alone; the
//! agent stream is where a certificate is required (see
//! [`PeerNames`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use shepherd_observe::conns::{self, Connections};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The files of the server's TLS settings.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CAs whose client certificates are accepted (PEM); agents must then
    /// present one naming their agent id.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.cert.clone(), self.key.clone()];
        out.extend(self.client_ca.clone());
        out
    }
}

/// The TLS settings in force, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct TlsServer {
    files: TlsFiles,
    grpc: Arc<ArcSwap<ServerConfig>>,
    admin: Arc<ArcSwap<ServerConfig>>,
}

/// Which listener a configuration serves: gRPC speaks HTTP/2 only (gRPC
/// clients insist on ALPN "h2"), the admin listener HTTP/1.1.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    Grpc,
    Admin,
}

impl TlsServer {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let (grpc, admin) = configs(&files)?;
        Ok(Self {
            files,
            grpc: Arc::new(ArcSwap::from_pointee(grpc)),
            admin: Arc::new(ArcSwap::from_pointee(admin)),
        })
    }

    /// Reads the files again; on an error the settings in force stay.
    pub fn reload(&self) -> Result<String, String> {
        let (grpc, admin) = configs(&self.files)?;
        self.grpc.store(Arc::new(grpc));
        self.admin.store(Arc::new(admin));
        Ok(format!(
            "certificate {}{}",
            self.files.cert.display(),
            match &self.files.client_ca {
                Some(ca) => format!(", client CA {}", ca.display()),
                None => String::new(),
            }
        ))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients may present certificates (a client CA is set).
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self, listener: Listener) -> TlsAcceptor {
        let config = match listener {
            Listener::Grpc => self.grpc.load_full(),
            Listener::Admin => self.admin.load_full(),
        };
        TlsAcceptor::from(config)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn configs(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), String> {
    let certs = read_certs(&files.cert, "TLS certificate")?;
    let key_pem = read(&files.key, "TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "TLS key {}: {e} (expected a PEM private key)",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match &files.client_ca {
        None => None,
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "TLS client CA")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?,
            )
        }
    };
    let build = |alpn: &[&[u8]]| -> Result<ServerConfig, String> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "TLS certificate {} and key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    };
    Ok((build(&[b"h2"])?, build(&[b"http/1.1"])?))
}

/// The names a verified client certificate carries: its DNS and URI subject
/// alternative names. An agent presenting a certificate may only connect as
/// an agent id among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(pub Vec<String>);

impl PeerNames {
    /// The names of the end-entity certificate `der`.
    pub fn of_cert(der: &[u8]) -> Self {
        Self(subject_alt_names(der).unwrap_or_default())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

/// One DER element: its tag, its contents and what follows it. Only what a
/// certificate uses is read: one-byte tags, lengths of up to four bytes.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed DER value, in order.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, rest) = der(input)?;
        input = rest;
        Some((tag, content))
    })
}

/// The DNS and URI subject alternative names of a certificate; `None` if
/// its DER cannot be read this far.
pub fn subject_alt_names(cert: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3;
    const OID: u8 = 0x06;
    const OCTETS: u8 = 0x04;
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    const DNS: u8 = 0x82;
    const URI: u8 = 0x86;
    let (tag, cert, _) = der(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, extensions) = elements(tbs).find(|(tag, _)| *tag == EXTENSIONS)?;
    let (tag, extensions, _) = der(extensions)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut names = Vec::new();
    for (tag, extension) in elements(extensions) {
        if tag != SEQUENCE {
            continue;
        }
        let mut parts = elements(extension);
        if parts.next() != Some((OID, SAN)) {
            continue;
        }
        let Some((_, value)) = parts.find(|(tag, _)| *tag == OCTETS) else {
            continue;
        };
        let (tag, general_names, _) = der(value)?;
        if tag != SEQUENCE {
            return None;
        }
        for (tag, name) in elements(general_names) {
            if matches!(tag, DNS | URI)
                && let Ok(name) = std::str::from_utf8(name)
            {
                names.push(name.to_string());
            }
        }
    }
    Some(names)
}

/// The HTTP/2 connection preface every gRPC client opens with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A byte stream: plain TCP, or TLS over it.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection accepted by [`incoming`] once it has sent the HTTP/2
/// preface, which it hands to the server again before the rest. It holds
/// its room under the listener's connection cap until it is dropped.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    /// Bytes of the preface not yet handed on again.
    replay: usize,
    _room: Option<Arc<conns::Conn>>,
}

impl Conn {
    /// Finishes the TLS handshake with `acceptor`, if any, and reads the
    /// preface: the connection, ready to serve, or why it cannot be. The
    /// caller bounds the time this takes.
    async fn accept(stream: TcpStream, acceptor: Option<TlsAcceptor>) -> Result<Conn, String> {
        use tokio::io::AsyncReadExt;
        let io = match acceptor {
            None => Io::Plain(stream),
            Some(acceptor) => Io::Tls(Box::new(
                acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?,
            )),
        };
        let mut conn = Conn {
            io,
            replay: PREFACE.len(),
            _room: None,
        };
        let mut got = [0u8; PREFACE.len()];
        match conn.read_exact(&mut got).await {
            Ok(_) if &got == PREFACE => {
                conn.replay = 0;
                Ok(conn)
            }
            Ok(_) => Err("not an HTTP/2 preface".into()),
            Err(e) => Err(format!("no HTTP/2 preface: {e}")),
        }
    }
}

/// What the gRPC services learn of a connection (in each request's
/// extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The names of the client's verified certificate; `None` without one.
    pub peer: Option<Arc<PeerNames>>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match &self.io {
            Io::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                peer: None,
            },
            Io::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    peer: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(PeerNames::of_cert(c))),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay < PREFACE.len() {
            let n = (PREFACE.len() - this.replay).min(buf.remaining());
            buf.put_slice(&PREFACE[this.replay..this.replay + n]);
            this.replay += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Longest a new connection may take to finish its TLS handshake and send
/// the HTTP/2 preface; one that stalls there, or sends anything else, is
/// dropped.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of `listener`, each once it has finished its TLS
/// handshake (with `tls`) and sent the HTTP/2 preface within `timeout`
/// (each waits on its own, so a slow client holds up no other). At the cap
/// of `conns`, a new connection makes room by closing the oldest one still
/// on its handshake or preface, or is closed at once when every open
/// connection is past them. Failed accepts back off; connections dropped
/// are logged at debug and counted in `conns`. Ends at `shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Option<(TlsServer, Listener)>,
    timeout: Duration,
    conns: Connections,
    shutdown: CancellationToken,
) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<Conn, io::Error>>(64);
    tokio::spawn(async move {
        let mut backoff = shepherd_observe::admin::AcceptBackoff::default();
        while let Some(stream) = backoff.accept(&listener, "grpc", &shutdown).await {
            let peer = stream.peer_addr().ok();
            let Some(room) = conns.admit() else {
                debug!(
                    ?peer,
                    "at the connection cap with every connection in use; closed"
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.as_ref().map(|(server, which)| server.acceptor(*which));
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Evicted to make room, out of time (counted), or shut down.
                let room = Arc::new(room);
                let closing = conns::close_signal(room.clone(), timeout, shutdown);
                let accepted = tokio::select! {
                    biased;
                    accepted = Conn::accept(stream, acceptor) => accepted,
                    why = closing => {
                        debug!(?peer, ?why, "closed before its TLS handshake and HTTP/2 preface");
                        return;
                    }
                };
                match accepted {
                    Ok(mut conn) => {
                        room.asked();
                        conn._room = Some(room);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(why) => debug!(?peer, "{why}; connection dropped"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SAN reader finds DNS and URI names, and reads nothing out of
    /// bytes that are not a certificate.
    #[test]
    fn reads_subject_alt_names() {
        let mut params = rcgen::CertificateParams::new(vec!["agent-7.shop".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://prod/agent-7".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = PeerNames::of_cert(cert.der());
        assert_eq!(
            names.0,
            vec![
                "agent-7.shop".to_string(),
                "spiffe://prod/agent-7".to_string()
            ]
        );
        assert!(names.contains("agent-7.shop"));
        assert!(!names.contains("agent-8.shop"));
        for junk in [&b""[..], b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x04\x00"] {
            assert_eq!(PeerNames::of_cert(junk), PeerNames::default());
        }
        // Every truncation of a real certificate reads without a panic.
        for n in 0..cert.der().len() {
            let _ = subject_alt_names(&cert.der()[..n]);
        }
    }

    /// Bad files are refused naming the file and the problem.
    #[test]
    fn bad_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let err = TlsServer::load(files.clone()).unwrap_err();
        assert!(
            err.contains("cert.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&cert, params.self_signed(&pair).unwrap().pem()).unwrap();
        let err = TlsServer::load(files.clone()).unwrap_err();
        assert!(err.contains("key.pem"), "{err}");

        std::fs::write(&key, pair.serialize_pem()).unwrap();
        let server = TlsServer::load(files).unwrap();
        assert!(!server.verifies_clients());
        // A reload that fails keeps what was loaded.
        std::fs::write(&key, "gone bad").unwrap();
        assert!(server.reload().is_err());
        let missing = TlsFiles {
            cert,
            key: dir.path().join("absent.pem"),
            client_ca: None,
        };
        let err = TlsServer::load(missing).unwrap_err();
        assert!(err.contains("absent.pem"), "{err}");
    }
}
