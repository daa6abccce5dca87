//! How fast a candidate failing hard is rolled back, end to end: a control
//! plane (SQLite) and an agent run as their release binaries with their
//! default settings (reports every second, flushes every second, analysis
//! every 250 ms), two mock providers answer, and steady traffic goes
//! through the agent. Each trial starts a rollout with the candidate at 10%,
//! lets its stage run healthy for a while (10 s), then makes the candidate
//! answer every request with 503 (the onset) and measures the time from the
//! onset to the rollback decision (the rollout's end time, set by the
//! control plane when it decides).
//!
//! Usage: reaction-bench [TRIALS] [RATE] [HEALTHY] [-- AGENT FLAGS...]
//! (default 30 trials at 400 requests/s, 10 healthy seconds each). Agent flags are passed on, for
//! example `-- --urgent-report-failures 0` to see the reaction without
//! urgent reports (a breaker opening still sends one; the policy here has
//! none).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use shepherd_proto::v1;
use shepherd_tests::control_plane::{RolloutClient, clients_of, rollout_client_of};
use shepherd_tests::http::Client;
use shepherd_tests::load::{BODY, Load};
use shepherd_tests::mock::{Fail, MockProvider};
use shepherd_tests::process::{Spawned, logged_addr};

const TOKEN: &str = "bench-admin-token";
const AGENT_TOKEN: &str = "bench-agent-token";

/// The rollout `number` of the chat policy as it is now.
async fn rollout(client: &mut RolloutClient, number: i64) -> v1::Rollout {
    client
        .get_rollout(v1::GetRolloutRequest {
            policy: "chat".into(),
            number,
        })
        .await
        .unwrap()
        .into_inner()
}

fn policy(baseline: &str, candidate: &str) -> v1::Policy {
    let stage = |weight: u32| json!({"weight": weight, "min_bake_time": "3600s", "min_requests": 20, "max_stage_time": "7200s"});
    serde_json::from_value(json!({
        "name": "chat",
        "selector": {"match_labels": {"app": "bench"}},
        "match": {"path_prefix": "/v1/"},
        "backends": [
            {"name": "a", "base_url": baseline},
            {"name": "b", "base_url": candidate}
        ],
        "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 0},
        "rollout": {
            "stages": [stage(1000), stage(10000)],
            "gates": {"max_error_rate_percent": 5.0, "significance": 0.01, "min_error_rate_effect_percent": 1.0},
            "ack_timeout": "5s"
        }
    }))
    .unwrap()
}

fn seconds(t: &pbjson_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn run(trials: usize, rate: u64, healthy: u64, agent_flags: Vec<String>) {
    let bin_dir: PathBuf = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let admin_token = dir.path().join("admin-token");
    let agent_token = dir.path().join("agent-token");
    std::fs::write(&admin_token, TOKEN).unwrap();
    std::fs::write(&agent_token, AGENT_TOKEN).unwrap();
    let baseline = MockProvider::new("a");
    let candidate = MockProvider::new("b");
    let baseline_url = format!("http://{}", baseline.serve_tcp().await);
    let candidate_url = format!("http://{}", candidate.serve_tcp().await);

    let db = format!("sqlite://{}", dir.path().join("shepherd.db").display());
    let cp = Spawned::start(
        &bin_dir.join("shepherd-control-plane").display().to_string(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--database-url",
            &db,
            "--admin-token-file",
            admin_token.to_str().unwrap(),
            "--agent-token-file",
            agent_token.to_str().unwrap(),
        ],
        &[],
    );
    let server = logged_addr(&cp.wait_for_line("control plane listening", 0), "addr");
    let state_dir = dir.path().join("agent-state");
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--control-plane",
        &format!("http://{server}"),
        "--agent-token-file",
        agent_token.to_str().unwrap(),
        "--agent-id",
        "bench-agent",
        "--labels",
        "app=bench",
        "--state-dir",
        state_dir.to_str().unwrap(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(agent_flags.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Spawned::start(
        &bin_dir.join("shepherd-agent").display().to_string(),
        &args,
        &[],
    );
    let proxy = logged_addr(&agent.wait_for_line("agent listening", 0), "proxy");

    let (mut policies, _) = clients_of(&server, Some(TOKEN)).await;
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(policy(&baseline_url, &candidate_url)),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut rollouts = rollout_client_of(&server, Some(TOKEN)).await;
    let probe = Client::tcp(&format!("http://{proxy}"));
    while probe.post("/v1/chat/completions", BODY, &[]).await.status == 404 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (load, traffic) = Load::start(&format!("http://{proxy}"), rate);

    let mut times = Vec::new();
    for trial in 0..trials {
        candidate.set(|b| b.fail = None);
        let started = if trial == 0 {
            rollouts
                .start_rollout(v1::StartRolloutRequest {
                    policy: "chat".into(),
                    reason: "bench".into(),
                })
                .await
        } else {
            rollouts
                .retry_rollout(v1::RolloutCommand {
                    policy: "chat".into(),
                    ..Default::default()
                })
                .await
        }
        .unwrap()
        .into_inner();
        let number = started.number;
        // Wait for the stage's clock, then the healthy seconds.
        loop {
            if rollout(&mut rollouts, number)
                .await
                .clock_start_time
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(healthy)).await;
        let onset = SystemTime::now();
        let began = Instant::now();
        candidate.set(|b| {
            b.fail = Some(Fail {
                status: 503,
                retry_after: None,
                times: None,
            });
        });
        let ended = loop {
            let r = rollout(&mut rollouts, number).await;
            if let Some(end) = r.end_time {
                assert_eq!(r.state(), v1::RolloutState::RolledBack, "{}", r.reason);
                break end;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "not rolled back within 60s: {}",
                r.reason
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = seconds(&ended) - unix(onset);
        println!(
            "trial {}: rolled back {took:.3} s after the onset",
            trial + 1
        );
        times.push(took);
    }
    load.finish(traffic).await;
    let (sent, failed) = load.counts();
    println!(
        "{trials} trials at {rate} req/s, candidate at 10%, {healthy} s healthy first: onset to rollback p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} of {} app requests failed)",
        quantile(&mut times, 0.5),
        quantile(&mut times, 0.99),
        quantile(&mut times, 1.0),
        failed,
        sent
    );
    drop(agent);
    drop(cp);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut agent_flags = Vec::new();
    let mut passing = false;
    for a in args.by_ref() {
        if passing {
            agent_flags.push(a);
        } else if a == "--" {
            passing = true;
        } else {
            positional.push(a);
        }
    }
    let trials = positional
        .first()
        .map_or(30, |a| a.parse().expect("TRIALS must be a number"));
    let rate = positional
        .get(1)
        .map_or(400, |a| a.parse().expect("RATE must be a number"));
    let healthy = positional.get(2).map_or(10, |a| {
        a.parse().expect("HEALTHY must be a number of seconds")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(trials, rate, healthy, agent_flags));
}
