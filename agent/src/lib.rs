//! The Shepherd agent: a sidecar proxy that sends an app's LLM API traffic to
//! the baseline or the candidate of a rollout, and protects every request.
//!
//! The data path, module by module:
//! - [`policy`]: policies as the agent runs them, converted from the wire
//!   `Policy` (a policy file uses its JSON mapping).
//! - [`runtime`]: the live routing table (swapped atomically on reload) and the
//!   registry of clients, breakers, budgets and counters that outlive it.
//! - [`proxy`]: route, split, faults, breaker gate, attempts, retries,
//!   fallback, delivery.
//! - [`api`]: which API a request belongs to (one rule, by its path), and
//!   per API family ([`api::openai`], [`api::anthropic`]) what a valid
//!   answer looks like, how errors are shaped and how a key is sent.
//! - [`attempt`]: one attempt at a backend (the request as sent, the
//!   per-try timeout, the bookkeeping of its outcome), for the proxy and the
//!   shadow alike.
//! - [`json`]: a forward-only JSON reader for the request path (answer
//!   checks, `usage`, error bodies, the model rewrite), one pass, no copies.
//! - [`model`]: the request's `model` through a backend's model map, and
//!   the answer's back to the requested one when the backend asks.
//! - [`outcome`]: the one classification of every answer (ok, app error,
//!   backend rejected, rate limited, server error, timeout, connect, broken
//!   stream, malformed) that retries, breakers, fallback, telemetry, shadow,
//!   metrics and traces read.
//! - [`split`], [`retry`], [`breaker`], [`fault`]: the generic pieces, each
//!   reading plain settings.
//! - [`shadow`]: mirrored requests to the shadow backend, compared with the
//!   primary's answers in the background; [`shadow_gate`]: which requests
//!   are mirrored, within which bounds.
//! - [`upstream`]: pooled HTTPS/HTTP clients.
//! - [`stream`]: response bodies passed through and watched (SSE end, idle
//!   timeout, usage, time to first token).
//! - [`errors`]: the agent's own errors in the app's API shape.
//! - [`trace`]: the spans of a request and its attempts.
//! - [`telemetry`]: counters and histograms, rendered for Prometheus.
//! - [`server`], [`admin`], [`reload`]: the listeners and hot reload.
//! - [`control`], [`state`]: the control-plane stream (snapshots down,
//!   ACK/NACK and telemetry up) and the last snapshot on disk.
//! - [`config`] and its command-line flags.

pub mod admin;
pub mod api;
pub mod attempt;
pub mod breaker;
pub mod config;
pub mod control;
pub mod errors;
pub mod fault;
pub mod fuzzing;
pub mod json;
pub mod model;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod runtime;
pub mod server;
pub mod shadow;
pub mod shadow_gate;
pub mod spend_cap;
pub mod split;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod trace;
pub mod translate;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use shepherd_proto::v1;

use crate::policy::Policy;
use crate::proxy::{Limits, Proxy};
use crate::runtime::{ApplyError, Registry, Table};
use crate::telemetry::AgentStats;

/// A snapshot in force.
struct Running {
    snapshot: v1::Snapshot,
    /// Faults and shadow were dropped (control plane out of reach).
    degraded: bool,
}

/// Locks a mutex; a panic elsewhere while it was held does not poison the
/// data for the rest of the agent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// An agent: its routing table, the proxy serving it, and its counters.
pub struct Agent {
    pub registry: Arc<Registry>,
    pub table: Arc<ArcSwap<Table>>,
    pub proxy: Arc<Proxy>,
    pub stats: Arc<AgentStats>,
    labels: BTreeMap<String, String>,
    /// The control plane's snapshot in force, when it came from there.
    running: Mutex<Option<Running>>,
    /// The version of the table in force, for watchers.
    applied: tokio::sync::watch::Sender<u64>,
    next_version: AtomicU64,
    loaded: AtomicBool,
    stopping: AtomicBool,
}

impl Agent {
    pub fn new(registry: Registry, limits: Limits, labels: BTreeMap<String, String>) -> Self {
        let table = Arc::new(ArcSwap::from_pointee(Table::empty()));
        let stats = Arc::new(AgentStats::default());
        let proxy = Arc::new(Proxy::new(table.clone(), limits, stats.clone()));
        Self {
            registry: Arc::new(registry),
            table,
            proxy,
            stats,
            labels,
            running: Mutex::new(None),
            applied: tokio::sync::watch::channel(0).0,
            next_version: AtomicU64::new(1),
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// The agent's labels, which policies select on.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Applies the policies of a file (those selecting this agent) as the next
    /// local version; on error the running table stays.
    pub fn apply_file(&self, policies: Vec<Policy>) -> Result<u64, ApplyError> {
        let version = self.next_version.load(Ordering::Relaxed);
        self.apply(policies, version)?;
        self.next_version.store(version + 1, Ordering::Relaxed);
        Ok(version)
    }

    /// Builds and swaps in the table for `policies` at `version`. In-flight
    /// requests finish on the table they started with.
    pub fn apply(&self, policies: Vec<Policy>, version: u64) -> Result<(), ApplyError> {
        let selected = runtime::selected(policies, &self.labels);
        let table = self.registry.build(selected, version)?;
        self.table.store(Arc::new(table));
        self.loaded.store(true, Ordering::Release);
        self.applied.send_replace(version);
        Ok(())
    }

    /// Sees the version of each table applied.
    pub fn watch_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Applies a snapshot from the control plane (or from disk): every
    /// policy converts and every credential resolves, or nothing changes and
    /// the reason names the policy and field.
    pub fn apply_snapshot(&self, snapshot: v1::Snapshot) -> Result<(), String> {
        let policies = snapshot
            .policies
            .iter()
            .map(|p| {
                Policy::try_from(p).map(|mut policy| {
                    policy.rollout_stage = snapshot
                        .rollout_stages
                        .get(&p.name)
                        .map(|s| s.as_str().into());
                    policy
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mut running = lock(&self.running);
        self.apply(policies, snapshot.version)
            .map_err(|e| e.to_string())?;
        *running = Some(Running {
            snapshot,
            degraded: false,
        });
        Ok(())
    }

    /// The version and content hash of the snapshot in force, as the
    /// control plane should hear of it: (0, 0) for none; hash 0 when faults
    /// and shadow were dropped, so the control plane sends it again.
    pub fn running(&self) -> (u64, u64) {
        match &*lock(&self.running) {
            None => (0, 0),
            Some(r) if r.degraded => (r.snapshot.version, 0),
            Some(r) => (r.snapshot.version, r.snapshot.content_hash),
        }
    }

    /// Without the control plane for too long: drops faults and shadow
    /// traffic (weights stay) under the same version. Returns whether
    /// anything was dropped.
    pub fn drop_experiments(&self) -> Result<bool, String> {
        let mut running = lock(&self.running);
        let Some(r) = running.as_mut() else {
            return Ok(false);
        };
        if r.degraded {
            return Ok(false);
        }
        let had = r
            .snapshot
            .policies
            .iter()
            .any(|p| !p.faults.is_empty() || p.shadow.is_some());
        r.degraded = true;
        if !had {
            return Ok(false);
        }
        let stripped: Vec<Policy> = r
            .snapshot
            .policies
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.faults.clear();
                p.shadow = None;
                Policy::try_from(&p)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        self.apply(stripped, r.snapshot.version)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Ready when a snapshot is loaded and the agent is not stopping.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Err("shutting down")
        } else if !self.loaded.load(Ordering::Acquire) {
            Err("no policies loaded yet")
        } else {
            Ok(())
        }
    }

    /// Marks the agent as stopping (readiness fails from now on) and stops
    /// shadow work.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.registry.shadow_stop.cancel();
    }

    /// Prometheus text of every counter.
    pub fn render_metrics(&self) -> String {
        let table = self.table.load();
        let breakers = Registry::breaker_gauges(&table);
        self.registry
            .stats
            .render(&self.stats, table.version, &breakers)
    }
}
