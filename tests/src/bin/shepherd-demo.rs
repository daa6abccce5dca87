//! The demo: a control plane on SQLite, an agent and two mock providers on
//! this machine, steady traffic through the agent, then two rollouts
//! watched live with `shepherdctl rollout watch`: a healthy candidate
//! promoted to 100%, and a failing one rolled back. Ends with a summary.
//!
//! Run it with `deploy/demo` (which builds the binaries first). The other
//! binaries are looked for beside this one (or in `--bin-dir`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use shepherd_tests::http::Client;
use shepherd_tests::load::{BODY, Load};
use shepherd_tests::mock::MockProvider;
use shepherd_tests::process::{Spawned, logged_addr};

const TOKEN: &str = "demo-admin-token";
const AGENT_TOKEN: &str = "demo-agent-token";

struct Options {
    bin_dir: PathBuf,
    /// Shorter stages (for the test of the demo).
    fast: bool,
    /// Requests per second through the agent.
    rate: u64,
}

fn parse_args() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut options = Options {
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        fast: false,
        rate: 40,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fast" => options.fast = true,
            "--bin-dir" => options.bin_dir = args.next().ok_or("--bin-dir needs a path")?.into(),
            "--rate" => {
                options.rate = args
                    .next()
                    .and_then(|r| r.parse().ok())
                    .filter(|&r| r > 0)
                    .ok_or("--rate needs a positive number")?
            }
            "-h" | "--help" => {
                println!(
                    "shepherd-demo [--rate N] [--fast] [--bin-dir DIR]\n\n\
                     Starts a control plane (SQLite), an agent and two mock providers, sends N \
                     requests/s (default 40) through the agent, and runs two rollouts: a healthy \
                     candidate to 100%, then a failing one that is rolled back."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    for bin in ["shepherd-control-plane", "shepherd-agent", "shepherdctl"] {
        if !options.bin_dir.join(bin).is_file() {
            return Err(format!(
                "{bin} is not in {}: build it first (deploy/demo does: cargo build --release --bins)",
                options.bin_dir.display()
            ));
        }
    }
    Ok(options)
}

fn policy(baseline: (&str, &str), candidate: (&str, &str), fast: bool) -> serde_json::Value {
    let bake = if fast { "1s" } else { "4s" };
    let stage = |weight: u32| json!({"weight": weight, "min_bake_time": bake, "min_requests": 20, "max_stage_time": "60s"});
    json!({
        "name": "chat",
        "selector": {"match_labels": {"app": "demo"}},
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": baseline.0, "base_url": baseline.1},
            {"name": candidate.0, "base_url": candidate.1}
        ],
        "traffic": {"baseline": baseline.0, "candidate": candidate.0, "candidate_weight": 0},
        "retry": {"max_attempts": 2, "backoff_base": "0.01s"},
        "fallback": [baseline.0],
        "rollout": {
            "stages": [stage(1000), stage(5000), stage(10000)],
            "gates": {"max_error_rate_percent": 5.0, "significance": 0.01, "min_error_rate_effect_percent": 1.0},
            "ack_timeout": "5s"
        }
    })
}

struct Demo {
    options: Options,
    dir: tempfile::TempDir,
    server: String,
}

impl Demo {
    fn bin(&self, name: &str) -> String {
        self.options.bin_dir.join(name).display().to_string()
    }

    /// shepherdctl with the demo's server and token.
    fn shepherdctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin("shepherdctl"));
        cmd.args(args)
            .env("SHEPHERD_SERVER", &self.server)
            .env(
                "SHEPHERD_ADMIN_TOKEN_FILE",
                self.dir.path().join("admin-token"),
            )
            .env_remove("SHEPHERD_ADMIN_TOKEN")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs shepherdctl; its output goes to this terminal.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let status = self
            .shepherdctl(args)
            .status()
            .map_err(|e| format!("cannot run shepherdctl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("shepherdctl {} failed", args.join(" ")))
        }
    }

    /// Runs shepherdctl and returns its standard output.
    fn ctl_output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .shepherdctl(args)
            .output()
            .map_err(|e| format!("cannot run shepherdctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "shepherdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, policy: &serde_json::Value) -> Result<(), String> {
        let file = self.dir.path().join("policy.json");
        std::fs::write(&file, policy.to_string()).map_err(|e| e.to_string())?;
        self.ctl(&["policy", "apply", "-f", file.to_str().unwrap_or_default()])
    }

    /// Starts the rollout of "chat", follows it live to its end; returns the
    /// final state and how long it took.
    fn rollout(&self, reason: &str) -> Result<(String, Duration), String> {
        let started = Instant::now();
        self.ctl(&["rollout", "start", "chat", "--reason", reason, "--watch"])?;
        let status = self.ctl_output(&["rollout", "status", "chat", "-o", "json"])?;
        let status: serde_json::Value = serde_json::from_str(&status).map_err(|e| e.to_string())?;
        let state = status["state"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("ROLLOUT_STATE_")
            .to_string();
        Ok((state, started.elapsed()))
    }
}

async fn run(options: Options) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("admin-token"), TOKEN).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("agent-token"), AGENT_TOKEN).map_err(|e| e.to_string())?;

    println!("== starting two mock providers, a control plane (SQLite) and an agent");
    let openai = MockProvider::new("openai");
    let mistral = MockProvider::new("mistral");
    let openai_url = format!("http://{}", openai.serve_tcp().await);
    let mistral_url = format!("http://{}", mistral.serve_tcp().await);
    println!("   mock provider openai  at {openai_url}");
    println!("   mock provider mistral at {mistral_url}");

    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let admin_token = dir.path().join("admin-token").display().to_string();
    let agent_token = dir.path().join("agent-token").display().to_string();
    let cp = Spawned::start(
        &options
            .bin_dir
            .join("shepherd-control-plane")
            .display()
            .to_string(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--admin-token-file",
            &admin_token,
            "--agent-token-file",
            &agent_token,
        ],
        &[],
    );
    let line = cp.wait_for_line("control plane listening", 0);
    let server = logged_addr(&line, "addr");
    let cp_metrics = logged_addr(&cp.wait_for_line("admin endpoints listening", 0), "admin");
    println!("   control plane at {server} (metrics: http://{cp_metrics}/metrics)");

    let state_dir = dir.path().join("agent-state");
    let agent = Spawned::start(
        &options.bin_dir.join("shepherd-agent").display().to_string(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-plane",
            &format!("http://{server}"),
            "--agent-token-file",
            &agent_token,
            "--agent-id",
            "demo-agent",
            "--labels",
            "app=demo",
            "--state-dir",
            state_dir.to_str().unwrap_or_default(),
            "--report-interval",
            "250ms",
        ],
        &[],
    );
    let line = agent.wait_for_line("agent listening", 0);
    let proxy = logged_addr(&line, "proxy");
    let agent_admin = logged_addr(&line, "admin");
    println!("   agent at {proxy} (metrics: http://{agent_admin}/metrics)");

    let demo = Demo {
        options,
        dir,
        server: server.clone(),
    };
    demo.apply(&policy(
        ("openai", &openai_url),
        ("mistral", &mistral_url),
        demo.options.fast,
    ))?;
    // Traffic starts once the agent serves the policy.
    let probe = Client::tcp(&format!("http://{proxy}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.post("/v1/chat/completions", BODY, &[]).await.status == 404 {
        if Instant::now() > deadline {
            return Err("the agent did not get the policy within 30s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (load, traffic) = Load::start(&format!("http://{proxy}"), demo.options.rate);
    println!(
        "   sending {} requests/s through the agent",
        demo.options.rate
    );

    println!("\n== rollout 1: openai -> mistral, a healthy candidate");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = demo.rollout("demo: move chat to mistral")?;
    let after_first = load.counts();

    println!("\n== rollout 2: mistral -> openai-next, a candidate failing 30% of requests");
    openai.set(|b| {
        b.error_rate = Some(0.3);
        b.error_status = 503;
    });
    demo.apply(&policy(
        ("mistral", &mistral_url),
        ("openai-next", &openai_url),
        demo.options.fast,
    ))?;
    let second = demo.rollout("demo: try openai-next")?;

    load.finish(traffic).await;
    let (sent, failed) = load.counts();

    println!("\n== summary");
    println!(
        "   rollout 1 (healthy candidate mistral):   {:<12} in {:.0?}",
        first.0, first.1
    );
    println!(
        "   rollout 2 (failing candidate openai-next): {:<12} in {:.0?}",
        second.0, second.1
    );
    println!(
        "   app requests: {sent} sent, {failed} failed ({} during rollout 1); the agent retried or fell back for the rest",
        after_first.1
    );
    println!(
        "   upstream requests: openai {}, mistral {}",
        openai.count(),
        mistral.count()
    );
    println!("\n   policy history:");
    for line in demo.ctl_output(&["policy", "history", "chat"])?.lines() {
        println!("     {line}");
    }
    let ok = first.0 == "SUCCEEDED" && second.0 == "ROLLED_BACK";
    println!(
        "\n   {}",
        if ok {
            "as expected: the healthy candidate reached 100%, the failing one was rolled back"
        } else {
            "NOT as expected: see the events above"
        }
    );
    drop(agent);
    drop(cp);
    Ok(ok)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            println!("shepherd-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("shepherd-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
