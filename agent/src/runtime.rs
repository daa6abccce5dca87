//! The live routing table: the policies in force, each with its backends'
//! clients, resolved credentials, breakers, retry budget and counters.
//!
//! A [`Table`] is immutable and swapped atomically (`ArcSwap`); a request keeps
//! the table it started with, so a reload never disturbs it. The [`Registry`]
//! outlives tables and hands the same client pools, breakers, budgets and
//! counters to the next table when their settings did not change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, BreakerSettings};
use crate::lock;
use crate::policy::{Backend, Policy, SecretRef, ShadowSettings};
use crate::retry::{CoolDown, RetryBudget};
use crate::shadow_gate::{Samples, ShadowGate};
use crate::spend_cap::{CapKind, HourCap};
use crate::telemetry::{BackendStats, StatsRegistry};
use crate::upstream::{self, Clients, Connector, Tls};

/// A backend ready to take requests.
pub struct LiveBackend {
    pub clients: Clients,
    /// The backend's name, as sent in `x-shepherd-backend`.
    pub name_header: HeaderValue,
    /// The `host` header of its requests.
    pub host: HeaderValue,
    /// The credential header, resolved on this host (marked sensitive).
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub breaker: Option<Arc<Breaker>>,
    pub stats: Arc<BackendStats>,
    /// The policy's hourly cap on this backend's spend, as its candidate.
    pub cap: Option<Arc<HourCap>>,
    /// Its cool-down after a 429 with `Retry-After`.
    pub cooldown: Arc<CoolDown>,
}

/// A policy ready to take requests.
pub struct LivePolicy {
    pub policy: Policy,
    /// The policy's name, as sent in `x-shepherd-policy`.
    pub name_header: HeaderValue,
    /// Same order as `policy.backends`.
    pub backends: Vec<LiveBackend>,
    pub budget: Arc<RetryBudget>,
    pub requests: Arc<AtomicU64>,
    /// Mirroring to the shadow backend, if on.
    pub shadow: Option<LiveShadow>,
    /// Version of the snapshot this was built from.
    pub version: u64,
}

/// A policy's shadow traffic: its admission gate (kept across reloads while
/// the settings stay), and the agent-wide samples and stop signal.
pub struct LiveShadow {
    pub gate: Arc<ShadowGate>,
    /// The hourly cap on shadow spend.
    pub cap: Option<Arc<HourCap>>,
    pub samples: Arc<Samples>,
    pub stop: CancellationToken,
}

/// The policies in force, in matching order.
pub struct Table {
    /// Version of the snapshot this table was built from.
    pub version: u64,
    policies: Vec<Arc<LivePolicy>>,
}

impl Table {
    /// A table with no policies.
    pub fn empty() -> Self {
        Self {
            version: 0,
            policies: Vec::new(),
        }
    }

    /// The policy handling a request: the longest matching path prefix, a
    /// header match before none, then by name.
    pub fn route(&self, path: &str, headers: &HeaderMap) -> Option<&Arc<LivePolicy>> {
        self.policies.iter().find(|p| {
            let route = &p.policy.route;
            path.starts_with(route.path_prefix.as_str())
                && route
                    .header
                    .as_ref()
                    .is_none_or(|(name, value)| headers.get(name) == Some(value))
        })
    }

    pub fn policies(&self) -> &[Arc<LivePolicy>] {
        &self.policies
    }
}

/// A snapshot that cannot be applied; the previous table stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?}: {field}: {message}")]
pub struct ApplyError {
    pub policy: String,
    pub field: String,
    pub message: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    scheme: String,
    authority: String,
    connect: Duration,
}

/// A policy's retry budget with the settings it was made for.
struct BudgetEntry {
    ratio_bits: u64,
    floor: u32,
    budget: Arc<RetryBudget>,
}

/// Runtime objects shared by successive tables.
pub struct Registry {
    tls: Tls,
    memory: Option<upstream::MemoryDial>,
    /// Worker threads, each with its own connection pools.
    workers: usize,
    clients: Mutex<HashMap<ClientKey, Clients>>,
    breakers: Mutex<HashMap<(String, String), Arc<Breaker>>>,
    cooldowns: Mutex<HashMap<(String, String), Arc<CoolDown>>>,
    budgets: Mutex<HashMap<String, BudgetEntry>>,
    shadows: Mutex<HashMap<String, Arc<ShadowGate>>>,
    caps: Mutex<HashMap<(String, CapKind), Arc<HourCap>>>,
    pub stats: Arc<StatsRegistry>,
    /// Sampled shadow mismatches.
    pub samples: Arc<Samples>,
    /// Stops all shadow work (shutdown).
    pub shadow_stop: CancellationToken,
}

impl Registry {
    /// A registry whose clients connect over TCP (TLS for https).
    pub fn new(tls: Tls) -> Self {
        Self {
            tls,
            memory: None,
            workers: 1,
            clients: Mutex::default(),
            breakers: Mutex::default(),
            cooldowns: Mutex::default(),
            budgets: Mutex::default(),
            shadows: Mutex::default(),
            caps: Mutex::default(),
            stats: Arc::default(),
            samples: Arc::default(),
            shadow_stop: CancellationToken::new(),
        }
    }

    /// Gives each of `workers` threads its own connection pools.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// A registry whose clients connect through in-process pipes (tests).
    pub fn in_memory(tls: Tls, dial: upstream::MemoryDial) -> Self {
        let mut r = Self::new(tls);
        r.memory = Some(dial);
        r
    }

    /// Builds the table for a snapshot: resolves every credential (failing
    /// the whole snapshot if one cannot be), reuses runtime objects whose
    /// settings did not change, and drops those no longer used.
    pub fn build(&self, policies: Vec<Policy>, version: u64) -> Result<Table, ApplyError> {
        let mut live = Vec::with_capacity(policies.len());
        let mut used_clients = Vec::new();
        let mut used_breakers = Vec::new();
        let mut used_budgets = Vec::new();
        let mut used_shadows = Vec::new();
        let mut used_caps = Vec::new();
        let mut used_cooldowns = Vec::new();
        for policy in policies {
            let mut cap = |kind: CapKind, limit: Option<f64>| {
                let key = (policy.name.to_string(), kind);
                let cap = self.cap(&key, limit?);
                used_caps.push(key);
                Some(cap)
            };
            let candidate_cap = cap(CapKind::Candidate, policy.candidate_spend_per_hour);
            let shadow_cap = cap(
                CapKind::Shadow,
                policy.shadow.as_ref().and_then(|s| s.max_spend_per_hour),
            );
            let mut backends = Vec::with_capacity(policy.backends.len());
            for (i, b) in policy.backends.iter().enumerate() {
                let auth = resolve_credentials(b).map_err(|message| ApplyError {
                    policy: policy.name.to_string(),
                    field: format!("backends[{i}].credentials"),
                    message,
                })?;
                let key = ClientKey {
                    scheme: b.base.scheme.to_string(),
                    authority: b.base.authority.to_string(),
                    connect: b.timeouts.connect,
                };
                let clients = self.clients(&key);
                used_clients.push(key);
                let breaker = policy.breaker.as_ref().map(|settings| {
                    let key = (policy.name.to_string(), b.name.to_string());
                    let breaker = self.breaker(&key, settings);
                    used_breakers.push(key);
                    breaker
                });
                let header = |v: &str, field: &str| {
                    HeaderValue::try_from(v).map_err(|e| ApplyError {
                        policy: policy.name.to_string(),
                        field: format!("backends[{i}].{field}"),
                        message: e.to_string(),
                    })
                };
                backends.push(LiveBackend {
                    name_header: header(&b.name, "name")?,
                    host: header(b.base.authority.as_str(), "base_url")?,
                    clients,
                    auth,
                    breaker,
                    stats: self.stats.backend(&policy.name, &b.name, version),
                    cap: candidate_cap
                        .clone()
                        .filter(|_| policy.candidate == Some(i)),
                    cooldown: {
                        let key = (policy.name.to_string(), b.name.to_string());
                        let c = lock(&self.cooldowns)
                            .entry(key.clone())
                            .or_default()
                            .clone();
                        used_cooldowns.push(key);
                        c
                    },
                });
            }
            let budget = self.budget(&policy);
            used_budgets.push(policy.name.to_string());
            let name_header =
                HeaderValue::try_from(policy.name.as_ref()).map_err(|e| ApplyError {
                    policy: policy.name.to_string(),
                    field: "name".into(),
                    message: e.to_string(),
                })?;
            let shadow = policy.shadow.as_ref().map(|settings| {
                used_shadows.push(policy.name.to_string());
                LiveShadow {
                    gate: self.shadow_gate(&policy.name, settings),
                    cap: shadow_cap.clone(),
                    samples: self.samples.clone(),
                    stop: self.shadow_stop.clone(),
                }
            });
            live.push(Arc::new(LivePolicy {
                name_header,
                requests: self.stats.policy_requests(&policy.name),
                backends,
                budget,
                shadow,
                version,
                policy,
            }));
        }
        live.sort_by(|a, b| {
            let (ra, rb) = (&a.policy.route, &b.policy.route);
            rb.path_prefix
                .len()
                .cmp(&ra.path_prefix.len())
                .then(rb.header.is_some().cmp(&ra.header.is_some()))
                .then(a.policy.name.cmp(&b.policy.name))
        });
        lock(&self.clients).retain(|k, _| used_clients.contains(k));
        lock(&self.breakers).retain(|k, _| used_breakers.contains(k));
        lock(&self.budgets).retain(|k, _| used_budgets.contains(k));
        lock(&self.shadows).retain(|k, _| used_shadows.contains(k));
        lock(&self.caps).retain(|k, _| used_caps.contains(k));
        lock(&self.cooldowns).retain(|k, _| used_cooldowns.contains(k));
        Ok(Table {
            version,
            policies: live,
        })
    }

    fn clients(&self, key: &ClientKey) -> Clients {
        lock(&self.clients)
            .entry(key.clone())
            .or_insert_with(|| {
                let connector = match &self.memory {
                    Some(dial) => Connector::Memory(dial.clone()),
                    None => Connector::net(&self.tls, key.connect),
                };
                Clients::new(&connector, self.workers)
            })
            .clone()
    }

    fn breaker(&self, key: &(String, String), settings: &BreakerSettings) -> Arc<Breaker> {
        let mut breakers = lock(&self.breakers);
        match breakers.get(key) {
            Some(b) if b.settings() == settings => b.clone(),
            _ => {
                let b = Arc::new(Breaker::new(settings.clone()));
                breakers.insert(key.clone(), b.clone());
                b
            }
        }
    }

    fn shadow_gate(&self, policy: &str, settings: &ShadowSettings) -> Arc<ShadowGate> {
        let mut gates = lock(&self.shadows);
        match gates.get(policy) {
            Some(g) if g.settings == *settings => g.clone(),
            _ => {
                let g = Arc::new(ShadowGate::new(policy, settings.clone()));
                gates.insert(policy.to_string(), g.clone());
                g
            }
        }
    }

    /// A policy's hourly spend cap, kept (with the hour's spend) across
    /// reloads; a new limit applies at once.
    fn cap(&self, key: &(String, CapKind), limit: f64) -> Arc<HourCap> {
        let mut caps = lock(&self.caps);
        match caps.get(key) {
            Some(c) => {
                c.set_limit(limit, crate::spend_cap::now_secs());
                c.clone()
            }
            None => {
                let c = Arc::new(HourCap::new(&key.0, key.1, limit));
                caps.insert(key.clone(), c.clone());
                c
            }
        }
    }

    fn budget(&self, policy: &Policy) -> Arc<RetryBudget> {
        let ratio_bits = policy.retry.budget_ratio.to_bits();
        let floor = policy.retry.budget_min_per_second;
        let mut budgets = lock(&self.budgets);
        match budgets.get(policy.name.as_ref()) {
            Some(e) if e.ratio_bits == ratio_bits && e.floor == floor => e.budget.clone(),
            _ => {
                let budget = Arc::new(RetryBudget::new(policy.retry.budget_ratio, floor));
                let entry = BudgetEntry {
                    ratio_bits,
                    floor,
                    budget: budget.clone(),
                };
                budgets.insert(policy.name.to_string(), entry);
                budget
            }
        }
    }

    /// The breaker state gauge of each (policy, backend) of a table.
    pub fn breaker_gauges(table: &Table) -> BTreeMap<(String, String), u64> {
        let mut gauges = BTreeMap::new();
        for p in table.policies() {
            for (b, settings) in p.backends.iter().zip(&p.policy.backends) {
                if let Some(breaker) = &b.breaker {
                    gauges.insert(
                        (p.policy.name.to_string(), settings.name.to_string()),
                        u64::from(breaker.state().as_gauge()),
                    );
                }
            }
        }
        gauges
    }
}

/// Reads a backend's key and makes its credential header: `authorization:
/// Bearer` for OpenAI, `x-api-key` for Anthropic.
fn resolve_credentials(b: &Backend) -> Result<Option<(HeaderName, HeaderValue)>, String> {
    let Some(reference) = &b.credentials else {
        return Ok(None);
    };
    let key = match reference {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| {
            format!("environment variable {name} is not set (or not UTF-8) on this agent")
        })?,
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("the secret is empty".into());
    }
    let (name, value) = b.protocol.credential(key);
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| "the secret holds characters not allowed in a header".to_string())?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// Which of `policies` select an agent with `labels`.
pub fn selected(policies: Vec<Policy>, labels: &BTreeMap<String, String>) -> Vec<Policy> {
    policies.into_iter().filter(|p| p.selects(labels)).collect()
}
