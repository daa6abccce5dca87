//! `shepherdctl` against a real control plane: policies from YAML and JSON,
//! bad input refused with nothing stored, the token required, a rollout
//! started, steered and watched to its end, agents listed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use shepherd_control_plane::auth::{Authenticator, Token};
use shepherd_control_plane::server::ServerOptions;
use shepherd_tests::control_plane::TestControlPlane;
use shepherd_tests::stores::TestStore;

const BIN: &str = env!("CARGO_BIN_EXE_shepherdctl");
const TOKEN: &str = "cli-admin-token";

struct Ctl {
    server: String,
    token_file: std::path::PathBuf,
}

impl Ctl {
    /// Runs shepherdctl with the token file; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_with(args, true)
    }

    fn run_with(&self, args: &[&str], token: bool) -> (bool, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("SHEPHERD_ADMIN_TOKEN")
            .env_remove("SHEPHERD_ADMIN_TOKEN_FILE")
            .env("SHEPHERD_SERVER", &self.server);
        if token {
            cmd.env("SHEPHERD_ADMIN_TOKEN_FILE", &self.token_file);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "shepherdctl {args:?} failed:\n{out}\n{err}");
        out
    }
}

const POLICY: &str = r#"
name: chat
match:
  path_prefix: /v1/
backends:
  - name: openai
    base_url: http://127.0.0.1:9
  - name: mistral
    base_url: http://127.0.0.1:9
traffic:
  baseline: openai
  candidate: mistral
rollout:
  stages:
    - {weight: 1000, min_bake_time: 60s, min_requests: 100, max_stage_time: 600s}
    - {weight: 10000, min_bake_time: 60s, min_requests: 100, max_stage_time: 600s}
  gates:
    max_error_rate_percent: 5
  ack_timeout: 60s
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_policies_rollouts_and_agents() {
    let store = TestStore::sqlite().await;
    let options = ServerOptions {
        auth: Authenticator::new(Some(Token::new(TOKEN).unwrap()), None),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let ctl = Ctl {
        server: cp.addr.to_string(),
        token_file,
    };
    let yaml = dir.path().join("chat.yaml");
    std::fs::write(&yaml, POLICY).unwrap();
    let file = yaml.to_str().unwrap();

    // Without the token: refused, with a hint.
    let (ok, _, err) = ctl.run_with(&["policy", "list"], false);
    assert!(!ok);
    assert!(
        err.contains("Unauthenticated") && err.contains("SHEPHERD_ADMIN_TOKEN"),
        "{err}"
    );

    // A dry run stores nothing; apply creates, then updates.
    let out = ctl.ok(&["policy", "apply", "-f", file, "--dry-run"]);
    assert!(out.contains("is valid; it would be created"), "{out}");
    let (ok, _, err) = ctl.run(&["policy", "get", "chat"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    assert!(
        ctl.ok(&["policy", "apply", "-f", file])
            .contains("created: revision 1")
    );
    assert!(
        ctl.ok(&["policy", "apply", "-f", file])
            .contains("updated: revision 2")
    );

    // The agent's list form applies every policy in it; a type error in
    // one names its index and field, and nothing is sent.
    let list = dir.path().join("list.json");
    let two = format!(
        "[{}, {}]",
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/chat-policy.json"
        ))
        .unwrap()
        .replace("\"name\": \"chat\"", "\"name\": \"chat-a\""),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/chat-policy.json"
        ))
        .unwrap()
        .replace("\"name\": \"chat\"", "\"name\": \"chat-b\"")
    );
    std::fs::write(&list, &two).unwrap();
    let out = ctl.ok(&["policy", "apply", "-f", list.to_str().unwrap()]);
    assert!(
        out.contains("policy \"chat-a\" created: revision 1")
            && out.contains("policy \"chat-b\" created: revision 1"),
        "{out}"
    );
    std::fs::write(
        &list,
        two.replace("\"candidate_weight\": 0", "\"candidate_weight\": \"10%\""),
    )
    .unwrap();
    let (ok, _, err) = ctl.run(&["policy", "apply", "-f", list.to_str().unwrap()]);
    assert!(
        !ok && err.contains("[0].traffic.candidate_weight: "),
        "{err}"
    );
    let kept: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["policy", "get", "chat-a"])).unwrap();
    assert_eq!(kept["revision"], "1", "nothing was sent");

    // A bad policy names the field and changes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, POLICY_JSON_BAD).unwrap();
    let (ok, _, err) = ctl.run(&["policy", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("backends[0].base_url"),
        "{err}"
    );
    let (ok, _, err) = ctl.run(&["policy", "apply", "-f", "/nonexistent.yaml"]);
    assert!(
        !ok && err.contains("cannot read /nonexistent.yaml"),
        "{err}"
    );

    let got: serde_json::Value = serde_json::from_str(&ctl.ok(&["policy", "get", "chat"])).unwrap();
    assert_eq!(got["revision"], "2");
    let list = ctl.ok(&["policy", "list"]);
    assert!(list.lines().nth(1).unwrap().starts_with("chat"), "{list}");
    let history = ctl.ok(&["policy", "history", "chat"]);
    assert_eq!(history.lines().count(), 3, "{history}");

    // A rollout: start, status, pause, resume, abort, then watch to its end.
    let out = ctl.ok(&["rollout", "start", "chat", "--reason", "try mistral"]);
    assert!(
        out.contains("rollout chat#1: RUNNING at stage 1, weight 10.00%"),
        "{out}"
    );
    let (ok, _, err) = ctl.run(&["rollout", "start", "chat"]);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("chat#1"),
        "{err}"
    );
    let status = ctl.ok(&["rollout", "status", "chat"]);
    assert!(status.contains("[>] 1"), "{status}");
    assert!(status.contains("[ ] 2"), "{status}");
    assert!(status.contains("STARTED"), "{status}");
    assert!(ctl.ok(&["rollout", "pause", "chat"]).contains("PAUSED"));
    assert!(ctl.ok(&["rollout", "resume", "chat"]).contains("RUNNING"));
    let out = ctl.ok(&["rollout", "abort", "chat", "--reason", "enough"]);
    assert!(out.contains("ABORTED at stage 1, weight 0.00%"), "{out}");
    let watched = ctl.ok(&["rollout", "watch", "chat"]);
    let kinds: Vec<&str> = watched
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        kinds[..4],
        ["STARTED", "PAUSED", "RESUMED", "ABORTED"],
        "{watched}"
    );
    assert!(
        watched.contains("rollout chat#1 ended: ABORTED"),
        "{watched}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["rollout", "status", "chat", "-o", "json"])).unwrap();
    assert_eq!(json["state"], "ROLLOUT_STATE_ABORTED");
    let out = ctl.ok(&["rollout", "retry", "chat"]);
    assert!(out.contains("rollout chat#2: RUNNING"), "{out}");

    let agents = ctl.ok(&["agents", "list"]);
    assert!(agents.starts_with("AGENT"), "{agents}");
    assert_eq!(ctl.ok(&["agents", "list", "-o", "json"]).trim(), "[]");

    assert!(
        ctl.ok(&["policy", "delete", "chat"])
            .contains("deleted: revision")
    );
    cp.stop().await;
}

const POLICY_JSON_BAD: &str = r#"{"name": "broken", "backends": [{"name": "a", "base_url": "not a url"}], "traffic": {"baseline": "a"}}"#;

/// Against a control plane serving TLS: `https://` with the CA file works,
/// with a named token line in the token file; without the CA the
/// certificate is refused; `--ca-file` with a plain address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_tls_with_a_ca_file() {
    use shepherd_control_plane::tls::{TlsFiles, TlsServer};
    let dir = tempfile::tempdir().unwrap();
    let ca = shepherd_tests::pki::Ca::new("cli CA");
    let ca_file = ca.write_ca(dir.path(), "ca");
    let (cert, key) = ca.write(dir.path(), "server", &["127.0.0.1"]);
    let store = TestStore::sqlite().await;
    let options = ServerOptions {
        auth: Authenticator::new(Some(Token::new(TOKEN).unwrap()), None),
        tls: Some(
            TlsServer::load(TlsFiles {
                cert,
                key,
                client_ca: None,
            })
            .unwrap(),
        ),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("# mine\nops {TOKEN}\n")).unwrap();
    let ctl = Ctl {
        server: format!("https://{}", cp.addr),
        token_file,
    };
    let ca_arg = ca_file.to_str().unwrap();
    let out = ctl.ok(&["--ca-file", ca_arg, "policy", "list"]);
    assert!(!out.contains("error"), "{out}");
    let (ok, _, err) = ctl.run(&["policy", "list"]);
    assert!(!ok, "no CA given, yet it connected");
    assert!(err.contains("cannot reach the control plane"), "{err}");
    let plain = Ctl {
        server: cp.addr.to_string(),
        token_file: ctl.token_file.clone(),
    };
    let (ok, _, err) = plain.run(&["--ca-file", ca_arg, "policy", "list"]);
    assert!(!ok && err.contains("--ca-file needs an https://"), "{err}");
    cp.stop().await;
}
