//! The control plane's Prometheus metrics, on the admin listener
//! (`--admin-listen`, `GET /metrics`), with `/healthz`.
//!
//! Fleet figures are this replica's own (its agents, the snapshots it sent);
//! rollout figures come from the store, so every replica shows the same
//! ones; decisions are counted by the replica that made them (the leader).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use shepherd_observe::admin::{PLAIN, text};
use shepherd_observe::conns::Connections;
use shepherd_proto::histogram::AtomicHistogram;
use shepherd_proto::prometheus::{CONTENT_TYPE, escape, header, histogram, sample};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, lock};
use crate::rollout::model::{EventKind, Phase};
use crate::store::Store;

/// Counters kept as things happen.
#[derive(Default)]
pub struct Counters {
    pub snapshots_sent: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub reports: AtomicU64,
    pub reports_refused: AtomicU64,
    /// Urgent reports (a backend's failures jumped), written at once.
    pub urgent_reports: AtomicU64,
    /// From sending a snapshot to the agent's ACK of it.
    pub ack_lag: AtomicHistogram,
    /// Rollout events written by this replica's analysis, by (policy, kind).
    decisions: Mutex<BTreeMap<(String, String), u64>>,
}

impl Counters {
    /// Counts the events of a rollout change this replica wrote.
    pub fn decided(&self, policy: &str, kinds: &[EventKind]) {
        let mut d = lock(&self.decisions);
        for &kind in kinds {
            *d.entry((policy.to_string(), event_label(kind)))
                .or_default() += 1;
        }
    }
}

/// `ROLLED_BACK` -> `rolled_back`.
fn event_label(kind: EventKind) -> String {
    kind.name().to_ascii_lowercase()
}

/// `ROLLING_BACK` -> `rolling_back`.
fn state_label(state: Phase) -> String {
    state.name().to_ascii_lowercase()
}

fn relaxed(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Renders every metric.
pub async fn render(fleet: &Fleet, conns: &Connections, store: &dyn Store) -> String {
    let mut out = String::with_capacity(8 * 1024);
    render_connections(&mut out, conns);
    let c = &fleet.counters;
    let records = fleet.agents.records();
    let groups = fleet.snapshots.versions();
    let connected: Vec<_> = records.values().filter(|r| r.connected).collect();

    header(
        &mut out,
        "shepherd_control_plane_connected_agents",
        "gauge",
        "Agents with an open Connect stream to this replica.",
    );
    sample(
        &mut out,
        "shepherd_control_plane_connected_agents",
        "",
        connected.len(),
    );
    header(
        &mut out,
        "shepherd_control_plane_agents_behind",
        "gauge",
        "Connected agents that have not applied their group's latest snapshot.",
    );
    let behind = connected
        .iter()
        .filter(|r| {
            groups
                .get(&r.labels)
                .is_some_and(|&v| r.applied_version < i64::try_from(v).unwrap_or(i64::MAX))
        })
        .count();
    sample(&mut out, "shepherd_control_plane_agents_behind", "", behind);
    header(
        &mut out,
        "shepherd_control_plane_snapshot_version",
        "gauge",
        "The latest snapshot version of each group of agents (by label set) served here.",
    );
    for (labels, version) in &groups {
        let group: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sample(
            &mut out,
            "shepherd_control_plane_snapshot_version",
            &format!("group=\"{}\"", escape(&group.join(","))),
            version,
        );
    }
    for (name, help, value) in [
        (
            "shepherd_control_plane_snapshots_sent_total",
            "Snapshots sent to agents.",
            relaxed(&c.snapshots_sent),
        ),
        (
            "shepherd_control_plane_snapshot_acks_total",
            "Snapshots agents applied (ACK).",
            relaxed(&c.acks),
        ),
        (
            "shepherd_control_plane_snapshot_nacks_total",
            "Snapshots agents refused (NACK).",
            relaxed(&c.nacks),
        ),
        (
            "shepherd_control_plane_telemetry_reports_total",
            "Telemetry reports taken from agents.",
            relaxed(&c.reports),
        ),
        (
            "shepherd_control_plane_telemetry_reports_refused_total",
            "Telemetry reports refused as malformed.",
            relaxed(&c.reports_refused),
        ),
        (
            "shepherd_control_plane_urgent_reports_total",
            "Urgent telemetry reports (a backend's failures jumped), written and judged at once.",
            relaxed(&c.urgent_reports),
        ),
    ] {
        header(&mut out, name, "counter", help);
        sample(&mut out, name, "", value);
    }
    header(
        &mut out,
        "shepherd_control_plane_ack_lag_seconds",
        "histogram",
        "Time from sending a snapshot to the agent's ACK of it.",
    );
    histogram(
        &mut out,
        "shepherd_control_plane_ack_lag_seconds",
        &format!("replica=\"{}\"", escape(&fleet.options.replica)),
        &c.ack_lag.snapshot(),
    );

    render_rollouts(&mut out, c, store).await;
    out
}

/// The gRPC listener's connections.
fn render_connections(out: &mut String, conns: &Connections) {
    let counts = conns.counts();
    header(
        out,
        "shepherd_control_plane_connections_closed_total",
        "counter",
        "gRPC connections closed before they were served: refused (at the cap, every connection past its handshake and preface), evicted (the oldest still on its handshake or preface, to make room), first_bytes_timeout (no TLS handshake and HTTP/2 preface within 10 s).",
    );
    for (reason, v) in [
        ("refused", counts.refused),
        ("evicted", counts.evicted),
        ("first_bytes_timeout", counts.timed_out),
    ] {
        sample(
            out,
            "shepherd_control_plane_connections_closed_total",
            &format!("reason=\"{reason}\""),
            v,
        );
    }
    for (name, help, v) in [
        (
            "shepherd_control_plane_connections_open",
            "Open gRPC connections.",
            counts.open,
        ),
        (
            "shepherd_control_plane_connections_max",
            "Most gRPC connections open at once (--max-connections).",
            counts.cap,
        ),
    ] {
        header(out, name, "gauge", help);
        sample(out, name, "", v);
    }
}

async fn render_rollouts(out: &mut String, c: &Counters, store: &dyn Store) {
    header(
        out,
        "shepherd_control_plane_store_up",
        "gauge",
        "1 when the database answered this scrape's reads.",
    );
    let active = store.list_rollouts(None, true, None, 1000).await;
    sample(
        out,
        "shepherd_control_plane_store_up",
        "",
        u8::from(active.is_ok()),
    );
    let active = active.unwrap_or_default();
    header(
        out,
        "shepherd_rollout_state",
        "gauge",
        "1 for each active rollout, labelled with its state.",
    );
    for r in &active {
        sample(
            out,
            "shepherd_rollout_state",
            &format!(
                "policy=\"{}\",rollout=\"{}\",state=\"{}\"",
                escape(&r.policy),
                r.number,
                state_label(r.phase())
            ),
            1,
        );
    }
    let weights: Vec<u64> = active.iter().map(|r| u64::from(r.weight)).collect();
    let stages: Vec<u64> = active.iter().map(|r| u64::from(r.stage)).collect();
    for (name, help, values) in [
        (
            "shepherd_rollout_weight_basis_points",
            "The candidate weight an active rollout has set, in basis points (10000 = 100%).",
            &weights,
        ),
        (
            "shepherd_rollout_stage",
            "The stage an active rollout is at (0-based).",
            &stages,
        ),
    ] {
        header(out, name, "gauge", help);
        for (r, value) in active.iter().zip(values) {
            sample(
                out,
                name,
                &format!("policy=\"{}\",rollout=\"{}\"", escape(&r.policy), r.number),
                value,
            );
        }
    }
    header(
        out,
        "shepherd_rollout_decisions_total",
        "counter",
        "Rollout events this replica's analysis wrote, by kind (promoted, rolled_back, paused, ...).",
    );
    for ((policy, kind), n) in lock(&c.decisions).iter() {
        sample(
            out,
            "shepherd_rollout_decisions_total",
            &format!("policy=\"{}\",kind=\"{kind}\"", escape(policy)),
            n,
        );
    }
}

/// Answers one admin request.
async fn respond(
    fleet: &Fleet,
    conns: &Connections,
    store: &dyn Store,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/metrics" => text(
            StatusCode::OK,
            CONTENT_TYPE,
            render(fleet, conns, store).await,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /healthz or /metrics\n",
        ),
    }
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::tls::TlsServer>,
    conns: Connections,
    fleet: Arc<Fleet>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    let handshake = tls.map(|tls| -> shepherd_observe::admin::Handshake {
        Arc::new(move |stream| {
            let acceptor = tls.acceptor(crate::tls::Listener::Admin);
            Box::pin(async move {
                let io: Box<dyn shepherd_observe::admin::Io> =
                    Box::new(acceptor.accept(stream).await?);
                Ok(io)
            })
        })
    });
    shepherd_observe::admin::serve_with(
        listener,
        handshake,
        move |req| {
            let (fleet, conns, store) = (fleet.clone(), conns.clone(), store.clone());
            async move { respond(&fleet, &conns, store.as_ref(), &req).await }
        },
        shutdown,
    )
    .await;
}
