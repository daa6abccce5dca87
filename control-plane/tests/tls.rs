//! TLS and mTLS on the control plane's gRPC listener: operators with a
//! token over TLS, agents by client certificate bound to their id, and
//! certificates replaced without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use shepherd_control_plane::auth::{Authenticator, Token};
use shepherd_control_plane::server::ServerOptions;
use shepherd_control_plane::tls::{TlsFiles, TlsServer};
use shepherd_proto::v1;
use shepherd_proto::v1::agent_service_client::AgentServiceClient;
use shepherd_proto::v1::policy_service_client::PolicyServiceClient;
use shepherd_tests::agent::{FleetAgent, FleetAgentOptions};
use shepherd_tests::control_plane::{Bearer, TestControlPlane};
use shepherd_tests::fixtures::minimal_policy;
use shepherd_tests::pki::Ca;
use shepherd_tests::stores::TestStore;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ADMIN: &str = "tls-admin-token";

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// Opens a Connect stream as `agent_id` and returns the status the stream
/// ends with (or OK once a snapshot arrives).
async fn connect_as(channel: Channel, agent_id: &str) -> tonic::Status {
    let mut client = AgentServiceClient::new(channel);
    let hello = v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            agent_id: agent_id.into(),
            hostname: "h".into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound = match client.connect(stream).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    let first = inbound.message().await;
    drop(tx);
    match first {
        Ok(Some(_)) => tonic::Status::ok("snapshot received"),
        Ok(None) => tonic::Status::unknown("stream ended"),
        Err(status) => status,
    }
}

/// Operators reach a TLS control plane with their token and no
/// certificate; agents must present a certificate naming their id; a
/// plaintext client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_bound_to_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("shepherd test CA");
    let ca_file = ca.write_ca(dir.path(), "ca");
    let (cert, key) = ca.write(dir.path(), "server", &["127.0.0.1", "localhost"]);
    let (a_cert, a_key) = ca.write(dir.path(), "agent-a", &["agent-a.shop"]);
    let (b_cert, b_key) = ca.write(dir.path(), "agent-b", &["spiffe://prod/agent-b"]);
    let stranger = Ca::new("someone else");
    let (s_cert, s_key) = stranger.write(dir.path(), "stranger", &["agent-a.shop"]);

    let store = TestStore::sqlite().await;
    let tls = TlsServer::load(TlsFiles {
        cert,
        key,
        client_ca: Some(ca_file.clone()),
    })
    .unwrap();
    let options = ServerOptions {
        auth: Authenticator::new(Some(Token::new(ADMIN).unwrap()), None),
        tls: Some(tls),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let addr = cp.addr.to_string();

    // An operator: TLS, a token, no certificate.
    let channel = tls_channel(&addr, &ca_file, None).await.unwrap();
    let mut policies = PolicyServiceClient::with_interceptor(channel, Bearer::new(Some(ADMIN)));
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(minimal_policy("chat")),
            validate_only: false,
        })
        .await
        .unwrap();

    // Plaintext to the TLS port fails.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut c = PolicyServiceClient::with_interceptor(plain, Bearer::new(Some(ADMIN)));
        assert!(
            c.list_policies(v1::ListPoliciesRequest::default())
                .await
                .is_err()
        );
    }

    // An agent whose certificate names it connects and gets its snapshot.
    let state = tempfile::tempdir().unwrap();
    let mut options =
        FleetAgentOptions::new(&[format!("https://{addr}")], "agent-a.shop", state.path());
    options.tls = shepherd_agent::control::ClientTls {
        ca: Some(ca_file.clone()),
        cert: Some(a_cert.clone()),
        key: Some(a_key.clone()),
    };
    let agent = FleetAgent::start(options).await;
    agent.wait_version(|v| v > 0).await;
    agent.stop().await;

    // URI names count too.
    let b = tls_channel(&addr, &ca_file, Some((&b_cert, &b_key)))
        .await
        .unwrap();
    assert_eq!(
        connect_as(b, "spiffe://prod/agent-b").await.code(),
        Code::Ok
    );

    // Another agent's certificate cannot speak for agent-a.
    let b = tls_channel(&addr, &ca_file, Some((&b_cert, &b_key)))
        .await
        .unwrap();
    let refused = connect_as(b, "agent-a.shop").await;
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("spiffe://prod/agent-b"),
        "{refused:?}"
    );

    // No certificate: refused before any hello is read.
    let none = tls_channel(&addr, &ca_file, None).await.unwrap();
    let refused = connect_as(none, "agent-a.shop").await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused:?}"
    );

    // A certificate from another CA fails the handshake.
    let stranger = match tls_channel(&addr, &ca_file, Some((&s_cert, &s_key))).await {
        Ok(channel) => connect_as(channel, "agent-a.shop").await.code(),
        Err(_) => Code::Unavailable,
    };
    assert_ne!(stranger, Code::Ok);
    cp.stop().await;
}

/// A replaced certificate serves the next handshake: clients trusting only
/// the new CA fail before the reload and succeed after; a reload from
/// broken files keeps the certificate in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let old_file = old_ca.write_ca(dir.path(), "old-ca");
    let new_file = new_ca.write_ca(dir.path(), "new-ca");
    let (cert, key) = old_ca.write(dir.path(), "server", &["127.0.0.1"]);
    let tls = TlsServer::load(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    })
    .unwrap();
    let store = TestStore::sqlite().await;
    let options = ServerOptions {
        tls: Some(tls.clone()),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let addr = cp.addr.to_string();
    let list = |channel: Channel| async move {
        PolicyServiceClient::new(channel)
            .list_policies(v1::ListPoliciesRequest::default())
            .await
            .is_ok()
    };
    assert!(list(tls_channel(&addr, &old_file, None).await.unwrap()).await);
    assert!(tls_channel(&addr, &new_file, None).await.is_err());

    // The renewed certificate, from the new CA.
    let (new_cert, new_key) = new_ca.issue(&["127.0.0.1"]);
    std::fs::write(&cert, new_cert).unwrap();
    std::fs::write(&key, "half written").unwrap();
    assert!(tls.reload().is_err());
    assert!(list(tls_channel(&addr, &old_file, None).await.unwrap()).await);
    std::fs::write(&key, new_key).unwrap();
    tls.reload().unwrap();
    assert!(list(tls_channel(&addr, &new_file, None).await.unwrap()).await);
    assert!(tls_channel(&addr, &old_file, None).await.is_err());
    cp.stop().await;
}

/// A gRPC connection has the first-bytes timeout to send the HTTP/2
/// preface: one that sends nothing or half of it is dropped when the time
/// is up, one that sends something else (HTTP/1.1) at once; gRPC clients
/// are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_preface_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store = TestStore::sqlite().await;
    let options = ServerOptions {
        first_bytes_timeout: std::time::Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let sends: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: cp\r\n\r\n",
    ];
    let mut open = Vec::new();
    for bytes in sends {
        let mut s = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        open.push(s);
    }
    for s in &mut open {
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut got));
        let read = read.await.expect("the connection was left open");
        assert!(read.is_err() || got.is_empty(), "{got:?}");
    }
    let mut policies = PolicyServiceClient::new(cp.channel().await);
    policies
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap();
    cp.stop().await;
}

/// At `--max-connections` a new gRPC connection closes the oldest one still
/// short of its HTTP/2 preface; once every open connection has sent it, a
/// new one is closed at once. Connections being served are never closed
/// to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_makes_room_from_silent_connections() {
    use shepherd_observe::conns::Connections;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// Reads until the server closes `s`; fails if it stays open.
    async fn closed(s: &mut TcpStream) {
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut got));
        let read = read.await.expect("the connection was left open");
        assert!(read.is_err() || got.is_empty(), "{got:?}");
    }
    async fn served(channel: &Channel) {
        PolicyServiceClient::new(channel.clone())
            .list_policies(v1::ListPoliciesRequest::default())
            .await
            .unwrap();
    }

    let store = TestStore::sqlite().await;
    let conns = Connections::new(2);
    let options = ServerOptions {
        connections: conns.clone(),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    // Accepted in this order: the listener's backlog is first in, first out.
    let mut silent_1 = TcpStream::connect(cp.addr).await.unwrap();
    let mut silent_2 = TcpStream::connect(cp.addr).await.unwrap();
    let first = cp.channel().await;
    served(&first).await;
    closed(&mut silent_1).await;
    let second = cp.channel().await;
    served(&second).await;
    closed(&mut silent_2).await;
    // Both open connections are being served: a third is refused.
    let mut third = TcpStream::connect(cp.addr).await.unwrap();
    closed(&mut third).await;
    served(&first).await;
    served(&second).await;
    let counts = conns.counts();
    assert_eq!(
        (counts.open, counts.evicted, counts.refused),
        (2, 2, 1),
        "{counts:?}"
    );
    drop((first, second));
    cp.stop().await;
}
