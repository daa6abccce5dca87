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

/// An agent's proxy and admin listeners on `127.0.0.1:0`, served until
/// `shutdown`.
struct Served {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

async fn serve_on_loopback(agent: &Arc<Agent>, settings: ServerSettings) -> Served {
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
        settings,
        shutdown.clone(),
    ));
    Served {
        addr,
        admin_addr,
        shutdown,
        server,
    }
}

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
        let Served {
            addr,
            admin_addr,
            shutdown,
            server,
        } = serve_on_loopback(&agent, options.settings).await;
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

    /// The value of the first `/metrics` line that starts with
    /// `line_start`; fails the test when there is none.
    pub async fn metric(&self, line_start: &str) -> u64 {
        let text = self.admin().get("/metrics").await;
        text.text()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric line starting {line_start:?}"))
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

/// How to start a [`FleetAgent`].
pub struct FleetAgentOptions {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    /// Where the last snapshot is saved (kept across restarts of the agent).
    pub state_dir: PathBuf,
    pub report_interval: std::time::Duration,
    pub report_queue: usize,
    pub loss_ttl: std::time::Duration,
    /// TLS files of https:// endpoints.
    pub tls: shepherd_agent::control::ClientTls,
}

impl FleetAgentOptions {
    /// An agent of `endpoints` with short intervals for tests.
    pub fn new(endpoints: &[String], agent_id: &str, state_dir: &std::path::Path) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            token: None,
            agent_id: agent_id.into(),
            labels: BTreeMap::new(),
            state_dir: state_dir.to_path_buf(),
            report_interval: std::time::Duration::from_millis(100),
            report_queue: 300,
            loss_ttl: std::time::Duration::from_secs(300),
            tls: shepherd_agent::control::ClientTls::default(),
        }
    }
}

/// An agent on `127.0.0.1:0` taking its policies from the control plane.
pub struct FleetAgent {
    pub agent: Arc<Agent>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    control: JoinHandle<()>,
}

impl FleetAgent {
    pub async fn start(options: FleetAgentOptions) -> Self {
        use shepherd_agent::control::{self, ControlSettings, TokenSource};
        use shepherd_agent::state::StateDir;
        let agent = Arc::new(Agent::new(
            Registry::new(Tls::new(None).unwrap()),
            Limits::default(),
            options.labels,
        ));
        let mut settings = ControlSettings::new(options.endpoints, options.agent_id);
        settings.token = options.token.map(TokenSource::from);
        settings.state = Some(StateDir::open(&options.state_dir).unwrap());
        settings.report_interval = options.report_interval;
        settings.report_queue = options.report_queue;
        settings.loss_ttl = options.loss_ttl;
        settings.tls = options.tls;
        settings.backoff_base = std::time::Duration::from_millis(50);
        settings.backoff_cap = std::time::Duration::from_millis(500);
        let Served {
            addr,
            admin_addr,
            shutdown,
            server,
        } = serve_on_loopback(&agent, ServerSettings::default()).await;
        let control = tokio::spawn(control::run(agent.clone(), settings, shutdown.clone()));
        Self {
            agent,
            addr,
            admin_addr,
            shutdown,
            server,
            control,
        }
    }

    /// A client for the proxy.
    pub fn client(&self) -> Client {
        Client::tcp(&format!("http://{}", self.addr))
    }

    /// The version of the snapshot in force.
    pub fn version(&self) -> u64 {
        self.agent.running().0
    }

    /// Waits (up to a minute, a guard against hangs) until the agent applies
    /// a snapshot whose version satisfies `ok`; returns that version.
    pub async fn wait_version(&self, ok: impl Fn(u64) -> bool) -> u64 {
        let mut watch = self.agent.watch_version();
        let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            *watch.wait_for(|v| ok(*v)).await.unwrap()
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "agent never reached the expected version; it runs {}",
                self.version()
            )
        })
    }

    /// Stops the agent: the proxy drains, the control stream ends.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap();
        self.control.await.unwrap();
    }
}
