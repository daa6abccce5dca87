//! Pieces shared by the end-to-end suites: control-plane processes that can
//! be killed and restarted on their port, agents, policies and load.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use shepherd_proto::v1;
use shepherd_tests::agent::{FleetAgent, FleetAgentOptions};
use shepherd_tests::control_plane::{AgentClient, PolicyClient, clients_of};
use shepherd_tests::process::Spawned;

pub const BIN: &str = env!("CARGO_BIN_EXE_shepherd-control-plane");
pub const ADMIN: &str = "fleet-admin-token";
pub const AGENT: &str = "fleet-agent-token";
pub const CHAT: &str = "/v1/chat/completions";
pub const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
/// A request every API refuses (no `messages`): the app's own mistake.
pub const BAD_BODY: &str = r#"{"model":"gpt-4o"}"#;

/// A control-plane process on a fixed port, so it can be killed and started
/// again where agents expect it.
pub struct Cp {
    pub process: Option<Spawned>,
    pub port: u16,
    pub replica: String,
    pub database_url: String,
    pub extra: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cp {
    pub fn start(database_url: &str, replica: &str) -> Cp {
        Self::start_with(database_url, replica, &[])
    }

    /// Starts a replica with extra flags.
    pub fn start_with(database_url: &str, replica: &str, extra: &[&str]) -> Cp {
        Self::start_with_env(database_url, replica, extra, &[])
    }

    /// Starts a replica with extra flags and environment variables.
    pub fn start_with_env(
        database_url: &str,
        replica: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Cp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin"), ADMIN).unwrap();
        std::fs::write(dir.path().join("agent"), AGENT).unwrap();
        let mut cp = Cp {
            process: None,
            port: free_port(),
            replica: replica.into(),
            database_url: database_url.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        cp.restart();
        cp
    }

    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        let listen = format!("127.0.0.1:{}", self.port);
        let admin = self.dir.path().join("admin");
        let agent = self.dir.path().join("agent");
        let mut args: Vec<&str> = vec![
            "--listen",
            &listen,
            "--database-url",
            &self.database_url,
            "--replica-id",
            &self.replica,
            "--fleet-flush-interval",
            "100ms",
            "--admin-token-file",
            admin.to_str().unwrap(),
            "--agent-token-file",
            agent.to_str().unwrap(),
        ];
        if !self.extra.iter().any(|a| a == "--admin-listen") {
            args.extend(["--admin-listen", "127.0.0.1:0"]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p = Spawned::start(BIN, &args, &env);
        p.wait_for_line("control plane listening", 0);
        self.process = Some(p);
    }

    /// SIGKILL: no goodbye to agents or the database.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub async fn clients(&self) -> (PolicyClient, AgentClient) {
        clients_of(&self.addr(), Some(ADMIN)).await
    }
}

pub fn chat_policy(
    a: SocketAddr,
    b: SocketAddr,
    weight: u32,
    extra: serde_json::Value,
) -> v1::Policy {
    let mut p = json!({
        "name": "chat",
        "selector": {"match_labels": {"app": "chat"}},
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{a}")},
            {"name": "b", "base_url": format!("http://{b}")}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": weight}
    });
    let mut extra = extra;
    // Prices by backend name ("backend_prices": {"a": {...}}): merged into
    // the backends, which `extra` cannot reach by name.
    if let Some(prices) = extra
        .as_object_mut()
        .and_then(|e| e.remove("backend_prices"))
    {
        for backend in p["backends"].as_array_mut().unwrap() {
            if let Some(price) = prices.get(backend["name"].as_str().unwrap()) {
                backend["prices"] = price.clone();
            }
        }
    }
    shepherd_tests::fixtures::merge_json(&mut p, extra);
    serde_json::from_value(p).unwrap()
}

pub fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into()
}

pub async fn start_agent(endpoints: &[String], id: &str, app: &str, state: &Path) -> FleetAgent {
    let mut options = FleetAgentOptions::new(endpoints, id, state);
    options.token = Some(AGENT.into());
    options.labels = labels(app);
    options.report_interval = Duration::from_millis(100);
    options.report_queue = 5;
    FleetAgent::start(options).await
}

/// Polls `check` (every 50 ms, for up to 30 s, a guard against hangs) until
/// it returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends requests through every agent until told to stop, counting failures
/// (answers other than 200, or other than 400 for the app's own bad
/// requests).
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(agents: &[&FleetAgent]) -> Load {
        Self::with_bad_requests(agents, None)
    }

    /// Like [`Load::start`], with every `bad_every`-th request of each agent
    /// a bad one ([`BAD_BODY`], which should get 400).
    pub fn with_bad_requests(agents: &[&FleetAgent], bad_every: Option<u64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = agents
            .iter()
            .map(|a| {
                let client = a.client();
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let bad = bad_every.is_some_and(|k| n.is_multiple_of(k));
                        let (body, expected) = if bad { (BAD_BODY, 400) } else { (BODY, 200) };
                        let r = client.post(CHAT, body, &[]).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.status != expected {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Waits until `n` more requests were sent.
    pub async fn run_for(&self, n: u64) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        eventually("requests flowing", || async {
            let sent = self.sent.load(Ordering::Relaxed);
            if sent >= target {
                Ok(())
            } else {
                Err(format!("{sent} of {target}"))
            }
        })
        .await
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
