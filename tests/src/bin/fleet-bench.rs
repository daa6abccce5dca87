//! Fleet benchmark: many simulated agents against one control-plane process.
//!
//!   fleet-bench --cp-bin PATH [--agents N] [--rounds R] [--report-seconds S]
//!               [--database-url URL]
//!
//! Starts the control plane (its own process, so its memory and CPU are its
//! own), writes a policy, then:
//! 1. connects N simulated agents at once (a reconnect storm) over N/100
//!    HTTP/2 connections and times until every one has ACKed its snapshot;
//!    the control plane's memory growth divided by N is the memory per
//!    connected agent;
//! 2. R times, updates the policy and times from `UpdatePolicy` returning to
//!    the last agent's ACK (p50, p99, max);
//! 3. for S seconds, every agent sends one telemetry report per second; the
//!    reports merged into the database are counted against those sent, with
//!    the control plane's CPU time.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shepherd_control_plane::store::{self, StoreOptions};
use shepherd_proto::v1;
use shepherd_tests::control_plane::{channel_to, clients_of, update_latest};
use shepherd_tests::fixtures::minimal_policy;
use shepherd_tests::fleet_sim::SimAgent;
use shepherd_tests::process::Spawned;

struct Args {
    cp_bin: String,
    agents: usize,
    rounds: usize,
    report_seconds: u64,
    database_url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cp_bin: "target/release/shepherd-control-plane".into(),
        agents: 1000,
        rounds: 20,
        report_seconds: 10,
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--cp-bin" => args.cp_bin = value.clone(),
            "--agents" => args.agents = number()? as usize,
            "--rounds" => args.rounds = number()? as usize,
            "--report-seconds" => args.report_seconds = number()?,
            "--database-url" => args.database_url = Some(value.clone()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Resident memory and CPU time (user + system) of a process.
fn usage(pid: u32) -> (u64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss_kib * 1024, Duration::from_millis(ticks * 10))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("fleet.db").display()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cp = Spawned::start(
        &args.cp_bin,
        &[
            "--listen",
            &listen,
            "--database-url",
            &url,
            "--database-max-connections",
            "4",
        ],
        &[("SHEPHERD_LOG", "warn,shepherd_control_plane::server=info")],
    );
    cp.wait_for_line("control plane listening", 0);
    let (mut policies, mut fleet) = clients_of(&listen, None).await;
    let mut policy = minimal_policy("bench");
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(policy.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, _) = usage(cp.pid());

    // 1. Everyone at once.
    let per_channel = 100;
    let mut channels = Vec::new();
    for _ in 0..args.agents.div_ceil(per_channel) {
        channels.push(channel_to(&listen).await);
    }
    let started = Instant::now();
    let connects = (0..args.agents).map(|i| {
        let channel = channels[i / per_channel].clone();
        async move {
            let mut sim = SimAgent::connect(channel, None, format!("sim-{i:05}"), BTreeMap::new())
                .await
                .unwrap();
            sim.acked(1).await;
            sim
        }
    });
    let mut sims: Vec<SimAgent> = futures::future::join_all(connects).await;
    let storm = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, _) = usage(cp.pid());
    let per_agent = rss_after.saturating_sub(rss_before) as f64 / args.agents as f64;
    println!(
        "agents={} storm_all_acked_ms={} rss_before_mib={:.1} rss_after_mib={:.1} per_agent_kib={:.1}",
        args.agents,
        ms(storm),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_agent / 1024.0
    );

    // 2. Time from UpdatePolicy returning to the last ACK.
    let mut times = Vec::new();
    for round in 0..args.rounds {
        policy.backends[0]
            .headers
            .insert("x-round".into(), round.to_string());
        update_latest(&mut policies, policy.clone()).await;
        let returned = Instant::now();
        let target = fleet
            .get_policy_status(v1::GetPolicyStatusRequest {
                name: "bench".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .since_version;
        let mut last = returned;
        for sim in &mut sims {
            last = last.max(sim.acked(target).await);
        }
        times.push(last.saturating_duration_since(returned));
    }
    times.sort();
    println!(
        "update_to_last_ack_ms p50={} p99={} max={} rounds={}",
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.99)),
        ms(*times.last().unwrap()),
        times.len()
    );

    // 3. Telemetry: one report per agent per second.
    let (_, cpu_before) = usage(cp.pid());
    let report = |sequence: u64| v1::TelemetryReport {
        sequence,
        urgent: false,
        requested: false,
        start_time: None,
        end_time: None,
        policies: vec![v1::PolicyTelemetry {
            policy: "bench".into(),
            snapshot_version: 1,
            requests: 10,
            backends: vec![v1::BackendTelemetry {
                backend: "primary".into(),
                outcomes: Some(v1::Outcomes {
                    success: 9,
                    server_error: 1,
                    ..Default::default()
                }),
                latency: Some(v1::Histogram {
                    buckets: vec![60, 70, 80],
                    counts: vec![5, 4, 1],
                    sum_us: 1_000_000,
                }),
                selected: 10,
                ..Default::default()
            }],
        }],
        reports_lost: 0,
    };
    let telemetry_start = Instant::now();
    let mut sent = 0u64;
    for second in 0..args.report_seconds {
        let tick = Instant::now();
        // Spread each second's reports over the second.
        let batch = sims.len().div_ceil(10);
        for chunk in sims.chunks(batch) {
            for sim in chunk {
                if sim.report(report(second + 1)).await {
                    sent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed() / 10))
                .await;
        }
        let left = Duration::from_secs(1).saturating_sub(tick.elapsed());
        tokio::time::sleep(left).await;
    }
    let elapsed = telemetry_start.elapsed();
    // Let the last flush land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, cpu_after) = usage(cp.pid());
    let store = store::open(&url, &StoreOptions::default()).await.unwrap();
    let rows = store.read_telemetry("bench", 0, i64::MAX).await.unwrap();
    let merged: i64 = rows.iter().map(|r| r.reports).sum();
    println!(
        "reports_sent={sent} reports_per_s={:.0} reports_merged={merged} rows={} cp_cpu_ms={} cp_cpu_per_report_us={:.1}",
        sent as f64 / elapsed.as_secs_f64(),
        rows.len(),
        ms(cpu_after - cpu_before),
        (cpu_after - cpu_before).as_secs_f64() * 1e6 / sent.max(1) as f64
    );
    for sim in sims {
        sim.close();
    }
    let (_, log) = cp.terminate();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    if !errors.is_empty() {
        eprintln!("control-plane errors:\n{}", errors.join("\n"));
    }
}
