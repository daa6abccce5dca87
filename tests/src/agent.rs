//! Agents for tests: [`TestAgent`] on real TCP listeners (proxy and admin),
//! and [`PipeAgent`] reached through in-process pipes with its upstreams on
//! pipes too ([`PipeNet`]), so whole requests run under a paused clock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shepherd_agent::proxy::Limits;
use shepherd_agent::runtime::Registry;
use shepherd_agent::server::ServerSettings;
use shepherd_agent::upstream::{Connector, MemoryDial, Tls};
use shepherd_agent::{Agent, admin, policy, server};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::Client;
use crate::mock::MockProvider;

/// An agent on `127.0.0.1:0`, its policy in a temporary file.
pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub policy_file: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

/// How to start a [`TestAgent`].
#[derive(Default)]
pub struct AgentOptions {
    pub limits: Limits,
    pub settings: ServerSettings,
    pub labels: BTreeMap<String, String>,
    /// Extra CA certificates for https upstreams.
    pub ca_file: Option<PathBuf>,
}

impl TestAgent {
    /// Starts an agent with default limits running `policy` (JSON).
    pub async fn start(policy: &str) -> Self {
        Self::start_with(policy, AgentOptions::default()).await
    }

    /// Starts an agent with `options`.
    pub async fn start_with(policy: &str, options: AgentOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policy.json");
        std::fs::write(&policy_file, policy).unwrap();
        let agent = Arc::new(Agent::new(
            Registry::new(Tls::new(options.ca_file.as_deref()).unwrap()),
            options.limits,
            options.labels,
        ));
        agent
            .apply_file(policy::load_file(&policy_file).unwrap())
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(admin::serve(
            admin_listener,
            agent.clone(),
            shutdown.clone(),
        ));
        let server = tokio::spawn(server::serve(
            listener,
            agent.proxy.clone(),
            options.settings,
            shutdown.clone(),
        ));
        Self {
            agent,
            addr,
            admin_addr,
            policy_file,
            _dir: dir,
            shutdown,
            server,
        }
    }

    /// A client for the proxy.
    pub fn client(&self) -> Client {
        Client::tcp(&format!("http://{}", self.addr))
    }

    /// A client for the admin endpoints.
    pub fn admin(&self) -> Client {
        Client::tcp(&format!("http://{}", self.admin_addr))
    }

    /// Writes a new policy file and reloads it.
    pub fn reload(&self, policy: &str) -> Result<u64, String> {
        std::fs::write(&self.policy_file, policy).unwrap();
        shepherd_agent::reload::reload(&self.agent, &self.policy_file)
    }

    /// Starts the shutdown: no new connections; returns when drained.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops the agent and waits for the drain to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap();
    }
}

/// In-process "network" of mock providers, each under a host name.
#[derive(Clone, Default)]
pub struct PipeNet {
    providers: Arc<Mutex<HashMap<String, MockProvider>>>,
}

impl PipeNet {
    /// Serves `provider` at `http://{host}`.
    pub fn add(&self, host: &str, provider: &MockProvider) {
        self.providers
            .lock()
            .unwrap()
            .insert(host.to_string(), provider.clone());
    }

    /// Dials the provider of a URI's host through a fresh pipe.
    pub fn dial(&self) -> MemoryDial {
        let providers = self.providers.clone();
        Arc::new(move |uri: &http::Uri| {
            let host = uri.host().unwrap_or_default().to_string();
            let provider = providers
                .lock()
                .unwrap()
                .get(&host)
                .cloned()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("no host {host}"),
                    )
                })?;
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                provider
                    .serve_io(hyper_util::rt::TokioIo::new(server))
                    .await
            });
            Ok(client)
        })
    }
}

/// An agent reached through in-process pipes, its upstreams on a [`PipeNet`].
pub struct PipeAgent {
    pub agent: Arc<Agent>,
    client: Client,
}

impl PipeAgent {
    /// An agent running `policy` (JSON) with upstreams on `net`.
    pub fn start(policy: &str, net: &PipeNet) -> Self {
        let agent = Arc::new(Agent::new(
            Registry::in_memory(Tls::new(None).unwrap(), net.dial()),
            Limits::default(),
            BTreeMap::new(),
        ));
        agent.apply_file(policy::parse(policy).unwrap()).unwrap();
        let proxy = agent.proxy.clone();
        let dial: MemoryDial = Arc::new(move |_uri: &http::Uri| {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                server::serve_connection(server, proxy, &ServerSettings::default()).await
            });
            Ok(client)
        });
        Self {
            agent,
            client: Client::pipe(Connector::Memory(dial)),
        }
    }

    /// A client for the proxy.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
