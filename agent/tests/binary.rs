//! The `shepherd-agent` binary as an operator runs it: a policy file with
//! credentials from the environment, reload on change and on SIGHUP, a
//! refused reload, SIGTERM, and refused start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shepherd_tests::http::Client;
use shepherd_tests::mock::MockProvider;
use shepherd_tests::process::{Spawned, logged_addr};

const BIN: &str = env!("CARGO_BIN_EXE_shepherd-agent");
const KEY: &str = "sk-live-test-secret-0123456789";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

fn policy(addr: std::net::SocketAddr, weight: u32) -> String {
    json!({
        "name": "chat", "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": format!("http://{addr}"), "credentials": "env:SHEPHERD_TEST_PROVIDER_KEY"},
            {"name": "b", "base_url": format!("http://{addr}"), "credentials": "env:SHEPHERD_TEST_PROVIDER_KEY",
             "model_map": {"gpt-4o": "other-model"}}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": weight}
    })
    .to_string()
}

fn start(file: &std::path::Path) -> (Spawned, String, String) {
    start_with(file, &[])
}

fn start_with(file: &std::path::Path, extra: &[&str]) -> (Spawned, String, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--policy-file",
        file.to_str().unwrap(),
        "--policy-poll",
        "50ms",
    ];
    args.extend_from_slice(extra);
    let agent = Spawned::start(
        BIN,
        &args,
        &[
            ("SHEPHERD_TEST_PROVIDER_KEY", KEY),
            ("SHEPHERD_LOG", "debug"),
        ],
    );
    let line = agent.wait_for_line("agent listening", 0);
    let (proxy, admin) = (logged_addr(&line, "proxy"), logged_addr(&line, "admin"));
    (agent, proxy, admin)
}

/// Serves from the file with the key from the environment, reloads on change
/// and on SIGHUP, keeps the running policy when a reload is bad, stops on
/// SIGTERM, and never logs the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reloads_and_stops() {
    let provider = MockProvider::new("p");
    let addr = provider.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy(addr, 0)).unwrap();
    let (agent, proxy, admin) = start(&file);
    let c = Client::tcp(&format!("http://{proxy}"));

    let r = c
        .post(
            "/v1/chat/completions",
            BODY,
            &[("authorization", "Bearer app-key")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "a");
    assert_eq!(
        provider.received()[0].headers["authorization"],
        format!("Bearer {KEY}")
    );

    // A change of the file is picked up.
    let seen = agent.line_count();
    std::fs::write(&file, policy(addr, 10_000)).unwrap();
    let applied = agent.wait_for_line("policies applied", seen);
    assert!(applied.contains("version=2"), "{applied}");
    let r = c.post("/v1/chat/completions", BODY, &[]).await;
    assert_eq!(r.backend(), "b");
    assert_eq!(
        provider.received().last().unwrap().model.as_deref(),
        Some("other-model")
    );

    // A bad file is refused with its reason; the running policy stays.
    let seen = agent.line_count();
    std::fs::write(&file, "{\"name\": \"chat\", \"backends\": []}").unwrap();
    agent.signal("HUP");
    let refused = agent.wait_for_line("policy file refused", seen);
    assert!(refused.contains("the running policies stay"), "{refused}");
    assert_eq!(
        c.post("/v1/chat/completions", BODY, &[]).await.backend(),
        "b"
    );

    // SIGHUP reloads a good file.
    let seen = agent.line_count();
    std::fs::write(&file, policy(addr, 0)).unwrap();
    agent.signal("HUP");
    agent.wait_for_line("policies applied", seen);
    assert_eq!(
        c.post("/v1/chat/completions", BODY, &[]).await.backend(),
        "a"
    );

    let metrics = Client::tcp(&format!("http://{admin}"))
        .get("/metrics")
        .await;
    // Every refusal is counted (the poller and SIGHUP may both have read
    // the bad file).
    let refusals = agent.log().matches("policy file refused").count();
    assert!(refusals >= 1);
    assert!(
        metrics.text().contains(&format!(
            "shepherd_agent_policy_reloads_total{{result=\"failed\"}} {refusals}"
        )),
        "{refusals} refusals logged"
    );

    let (status, log) = agent.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("agent stopped"), "{log}");
    assert!(!log.contains(KEY), "the key reached the log:\n{log}");
    assert!(
        !log.contains("app-key"),
        "the app's key reached the log:\n{log}"
    );
}

/// A policy file that cannot be used stops the start with the reason.
#[test]
fn refuses_to_start_with_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, r#"{"name": "Chat"}"#).unwrap();
    let agent = Spawned::start(
        BIN,
        &[
            "--policy-file",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let (status, log) = agent.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot start with the policy file"), "{log}");
    assert!(log.contains("name: must be lowercase letters"), "{log}");
    assert!(
        !log.contains("the running policies stay"),
        "nothing was running yet: {log}"
    );

    let agent = Spawned::start(BIN, &["--policy-file", "/nonexistent/policy.json"], &[]);
    let (status, log) = agent.wait();
    assert_eq!(status.code(), Some(1));
    assert!(
        log.contains("cannot read /nonexistent/policy.json"),
        "{log}"
    );
}

/// With neither a policy file nor a control plane the agent would answer
/// 404 forever: it refuses to start, naming both flags.
#[test]
fn refuses_to_start_without_policies() {
    let agent = Spawned::start(
        BIN,
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[],
    );
    let (status, log) = agent.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--control-plane") && log.contains("--policy-file"),
        "{log}"
    );
    assert!(!log.contains("agent listening"), "{log}");
}

/// `--help` documents the flags with their variables.
#[test]
fn help_lists_flags_and_variables() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "SHEPHERD_AGENT_LISTEN",
        "--admin-listen",
        "--policy-file",
        "SHEPHERD_AGENT_POLICY_FILE",
        "--labels",
        "--max-request-bytes",
        "--retry-body-limit",
        "--max-concurrent",
        "--header-read-timeout",
        "--shutdown-grace",
        "--upstream-ca-file",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

/// With --control-plane the agent takes its policies from the control plane
/// with the agent token (never logged), saves each snapshot in the state
/// directory, and starts from it when the control plane is gone. The token
/// file is read again at each connection: refused with a stale token, the
/// agent gets in once the file holds the current one, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_control_plane_and_restarts_from_disk() {
    use shepherd_control_plane::auth::{Authenticator, Token};
    use shepherd_control_plane::server::ServerOptions;
    use shepherd_proto::v1;
    use shepherd_tests::control_plane::TestControlPlane;

    const AGENT_TOKEN: &str = "agent-token-for-binary-test";
    let provider = MockProvider::new("p");
    let addr = provider.serve_tcp().await;
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let cp = TestControlPlane::start(
        store.store.clone(),
        ServerOptions {
            auth: Authenticator::new(None, Some(Token::new(AGENT_TOKEN).unwrap())),
            ..ServerOptions::default()
        },
    )
    .await;
    let policy: v1::Policy = serde_json::from_str(&policy(addr, 0)).unwrap();
    cp.policy_client(None)
        .await
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(policy),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token_file = dir.path().join("token");
    const STALE_TOKEN: &str = "a-stale-agent-token-for-binary-test";
    std::fs::write(&token_file, STALE_TOKEN).unwrap();
    let cp_url = format!("http://{}", cp.addr);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--control-plane",
        &cp_url,
        "--agent-token-file",
        token_file.to_str().unwrap(),
        "--agent-id",
        "binary-agent",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let envs = [
        ("SHEPHERD_TEST_PROVIDER_KEY", KEY),
        ("SHEPHERD_LOG", "debug"),
    ];
    let agent = Spawned::start(BIN, &args, &envs);
    agent.wait_for_line("the control plane refused this agent", 0);
    let refused = agent.line_count();
    std::fs::write(&token_file, format!("{AGENT_TOKEN}\n")).unwrap();
    // The policy was written moments before; the first snapshot may predate it.
    agent.wait_for_line("policies=1", refused);
    let line = agent.wait_for_line("agent listening", 0);
    let proxy = logged_addr(&line, "proxy");
    let c = Client::tcp(&format!("http://{proxy}"));
    let r = c.post("/v1/chat/completions", BODY, &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), agent.log());
    assert!(state.join("snapshot.json").exists());
    let (_, log) = agent.terminate();
    assert!(!log.contains(AGENT_TOKEN), "the agent token was logged");
    assert!(!log.contains(STALE_TOKEN), "the stale token was logged");

    // The control plane goes away; a new agent process serves from disk.
    cp.stop().await;
    let agent = Spawned::start(BIN, &args, &envs);
    agent.wait_for_line("serving the last snapshot saved on disk", 0);
    let line = agent.wait_for_line("agent listening", 0);
    let c = Client::tcp(&format!("http://{}", logged_addr(&line, "proxy")));
    assert_eq!(c.post("/v1/chat/completions", BODY, &[]).await.status, 200);
    let (status, _) = agent.terminate();
    assert!(status.success());
}

/// Over TLS with a client certificate (mTLS): the agent binary verifies the
/// control plane against `--control-plane-ca`, presents
/// `--control-plane-cert`, which names its agent id, and gets its policy;
/// with another agent's certificate it is refused and serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_control_plane_over_mtls() {
    use shepherd_control_plane::server::ServerOptions;
    use shepherd_control_plane::tls::{TlsFiles, TlsServer};
    use shepherd_proto::v1;
    use shepherd_tests::control_plane::TestControlPlane;

    let provider = MockProvider::new("p");
    let addr = provider.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = shepherd_tests::pki::Ca::new("agent test CA");
    let ca_file = ca.write_ca(dir.path(), "ca");
    let (cert, key) = ca.write(dir.path(), "server", &["127.0.0.1"]);
    let (mine, mine_key) = ca.write(dir.path(), "mine", &["binary-agent"]);
    let (other, other_key) = ca.write(dir.path(), "other", &["another-agent"]);
    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let tls = TlsServer::load(TlsFiles {
        cert,
        key,
        client_ca: Some(ca_file.clone()),
    })
    .unwrap();
    let cp = TestControlPlane::start(
        store.store.clone(),
        ServerOptions {
            tls: Some(tls),
            ..ServerOptions::default()
        },
    )
    .await;
    let policy: v1::Policy = serde_json::from_str(&policy(addr, 0)).unwrap();
    store
        .store
        .create_policy(
            &shepherd_control_plane::policy::PolicySpec::validate(
                policy,
                std::time::SystemTime::now(),
            )
            .unwrap(),
            shepherd_control_plane::store::Author::default(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let cp_url = format!("https://{}", cp.addr);
    let run = |cert: &std::path::Path, key: &std::path::Path, state: &str| {
        let state = dir.path().join(state);
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-plane",
            &cp_url,
            "--control-plane-ca",
            ca_file.to_str().unwrap(),
            "--control-plane-cert",
            cert.to_str().unwrap(),
            "--control-plane-key",
            key.to_str().unwrap(),
            "--agent-id",
            "binary-agent",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        Spawned::start(BIN, &args, &[("SHEPHERD_TEST_PROVIDER_KEY", KEY)])
    };
    let agent = run(&mine, &mine_key, "state-a");
    let line = agent.wait_for_line("agent listening", 0);
    agent.wait_for_line("policies=1", 0);
    let c = Client::tcp(&format!("http://{}", logged_addr(&line, "proxy")));
    assert_eq!(c.post("/v1/chat/completions", BODY, &[]).await.status, 200);
    let (status, _) = agent.terminate();
    assert!(status.success());

    let agent = run(&other, &other_key, "state-b");
    agent.wait_for_line("is not a name of the client certificate", 0);
    let (_, log) = agent.terminate();
    assert!(!log.contains("snapshot applied"), "{log}");
    cp.stop().await;
}

/// A bad control-plane address or agent id is refused at start, naming the
/// flag.
#[test]
fn refuses_bad_control_plane_settings() {
    for (flag, value, expected) in [
        ("--control-plane", "127.0.0.1:4100", "--control-plane"),
        ("--agent-id", "two words", "--agent-id"),
        (
            "--control-plane-ca",
            "/tmp/ca.pem",
            "need an https:// control-plane address",
        ),
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        if flag != "--control-plane" {
            args.extend(["--control-plane", "http://127.0.0.1:4100"]);
        }
        args.extend([flag, value]);
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(expected), "{text}");
    }
}

/// A policy file and a control plane are exclusive.
#[test]
fn policy_file_and_control_plane_conflict() {
    let out = std::process::Command::new(BIN)
        .args([
            "--policy-file",
            "/nonexistent.json",
            "--control-plane",
            "http://127.0.0.1:4100",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("cannot be used with"), "{text}");
}

/// An agent that loses its control plane says so once (naming what it
/// serves meanwhile), stays quiet while it retries, and says once that it
/// is back and after how long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_losing_and_regaining_the_control_plane() {
    use shepherd_control_plane::server::ServerOptions;
    use shepherd_tests::control_plane::TestControlPlane;

    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let cp = TestControlPlane::start(store.store.clone(), ServerOptions::default()).await;
    let link = shepherd_tests::net::Relay::start(cp.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}", link.addr);
    let state = dir.path().join("state");
    let agent = Spawned::start(
        BIN,
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-plane",
            &url,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    agent.wait_for_line("connected to the control plane", 0);
    let before = agent.line_count();
    link.cut();
    let lost = agent.wait_for_line("lost the control plane", before);
    assert!(
        lost.contains("no policies yet: requests get 404 until some arrive"),
        "{lost}"
    );
    // It tries again and again, without a line per attempt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while link.refused() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnection attempts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    link.restore();
    let back = agent.wait_for_line("reconnected to the control plane", before);
    assert!(back.contains("after="), "{back}");
    let (_, log) = agent.terminate();
    assert_eq!(log.matches("lost the control plane").count(), 1, "{log}");
    assert_eq!(
        log.matches("cannot reach the control plane").count(),
        0,
        "{log}"
    );
    assert_eq!(
        log.matches("reconnected to the control plane").count(),
        1,
        "{log}"
    );
    cp.stop().await;
}

/// With a pre-stop delay, SIGTERM turns readiness off at once while the
/// agent still serves; the listener closes after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_not_ready_before_it_stops_serving() {
    let provider = MockProvider::new("p");
    let addr = provider.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy(addr, 0)).unwrap();
    let (agent, proxy, admin) = start_with(&file, &["--shutdown-delay", "5s"]);
    let (c, admin) = (
        Client::tcp(&format!("http://{proxy}")),
        Client::tcp(&format!("http://{admin}")),
    );
    assert_eq!(admin.get("/readyz").await.status, 200);
    let seen = agent.line_count();
    agent.signal("TERM");
    agent.wait_for_line("the listener closes after the delay", seen);
    assert_eq!(admin.get("/readyz").await.status, 503);
    let r = c.post("/v1/chat/completions", BODY, &[]).await;
    assert_eq!(r.status, 200, "still serving during the delay");
    let (status, log) = agent.wait();
    assert!(status.success(), "exit {status:?}\n{log}");
    let delayed = log.find("the listener closes after the delay").unwrap();
    let closed = log.find("proxy listener closed").unwrap();
    assert!(delayed < closed, "{log}");
}
