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
//! - [`split`], [`retry`], [`breaker`], [`fault`]: the generic pieces, each
//!   reading plain settings.
//! - [`upstream`]: pooled HTTPS/HTTP clients.
//! - [`stream`]: response bodies passed through and watched (SSE end, idle
//!   timeout, usage, time to first token).
//! - [`errors`]: the agent's own errors in the app's API shape.
//! - [`telemetry`]: counters and histograms, rendered for Prometheus.
//! - [`server`], [`admin`], [`reload`]: the listeners and hot reload.
//! - [`config`], [`logging`]: flags and logs.

pub mod admin;
pub mod breaker;
pub mod config;
pub mod errors;
pub mod fault;
pub mod logging;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod runtime;
pub mod server;
pub mod split;
pub mod stream;
pub mod telemetry;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::policy::Policy;
use crate::proxy::{Limits, Proxy};
use crate::runtime::{ApplyError, Registry, Table};
use crate::telemetry::AgentStats;

/// An agent: its routing table, the proxy serving it, and its counters.
pub struct Agent {
    pub registry: Arc<Registry>,
    pub table: Arc<ArcSwap<Table>>,
    pub proxy: Arc<Proxy>,
    pub stats: Arc<AgentStats>,
    labels: BTreeMap<String, String>,
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
        Ok(())
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

    /// Marks the agent as stopping (readiness fails from now on).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Prometheus text of every counter.
    pub fn render_metrics(&self) -> String {
        let table = self.table.load();
        self.registry.refresh_breaker_gauges(&table);
        self.registry.stats.render(&self.stats, table.version)
    }
}
