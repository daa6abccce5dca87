//! Telemetry per policy and backend: attempt outcomes by class (see
//! [`crate::outcome`]), an example answer of each failure class, latency and
//! time-to-first-token histograms (the shared buckets of
//! [`shepherd_proto::histogram`]), tokens from `usage`, retries, fallbacks.
//! Recording is a few relaxed atomic adds. Counters live in a registry keyed
//! by (policy, backend, snapshot version): reports to the control plane say
//! which version requests ran under, and Prometheus totals continue across
//! reloads.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shepherd_proto::cost::Spend;
use shepherd_proto::histogram::{AtomicHistogram, Histogram};
use shepherd_proto::prometheus::{escape as esc, header, histogram};
use shepherd_proto::telemetry::{SIMILARITY_BUCKETS, similarity_bucket};
use shepherd_proto::v1;

use crate::lock;
pub use crate::outcome::Outcome;

/// Counters of one backend within one policy, under one snapshot version.
#[derive(Debug, Default)]
pub struct BackendStats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Where failures call for an early report.
    urgency: Arc<Urgency>,
    /// Attempts (low 32 bits) and failures (high 32 bits) since the last
    /// report, in one word so both move together.
    recent: AtomicU64,
    /// Time from sending an attempt to the end of its response.
    pub latency: AtomicHistogram,
    /// The part of `latency` whose attempt did not succeed.
    pub latency_failed: AtomicHistogram,
    /// Time from sending an attempt to the first byte of a streamed body.
    pub ttft: AtomicHistogram,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Breaker rejections while rejected or malformed answers held the
    /// breaker open (a part of the breaker_rejected outcome).
    pub breaker_rejected_broken: AtomicU64,
    /// Times this backend was tried as a fallback.
    pub fallbacks: AtomicU64,
    /// Requests the split sent to this backend first.
    pub selected: AtomicU64,
    /// Faults injected, by kind.
    pub faults_abort: AtomicU64,
    pub faults_delay: AtomicU64,
    pub faults_cut: AtomicU64,
    /// Requests translated into this backend's API family, refused (with
    /// a field that has no counterpart) and fields dropped from them.
    pub translated: AtomicU64,
    pub translation_refused: AtomicU64,
    pub dropped_fields: AtomicU64,
    /// This backend as the shadow of its policy.
    pub shadow: ShadowStats,
    /// An example answer of each failure class.
    pub examples: Examples,
    /// Money spent, by [`SpendKind`] (exact sums do not fit an atomic).
    cost: Mutex<[Spend; SpendKind::ALL.len()]>,
    /// Times this backend's hourly spend cap was reached, and requests sent
    /// elsewhere (or not mirrored) while it was.
    pub spend_cap_trips: AtomicU64,
    pub spend_capped: AtomicU64,
    /// Cool-downs started by a 429 with `Retry-After`, and requests sent
    /// elsewhere at once during one.
    pub cooldowns: AtomicU64,
    pub cooled: AtomicU64,
}

/// What a backend's answer was for, as its cost is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendKind {
    /// An answer that reached the app.
    Served,
    /// An answer billed but retried or fallen back from.
    Failed,
    /// The answer to a mirrored request.
    Shadow,
}

impl SpendKind {
    pub const ALL: [SpendKind; 3] = [SpendKind::Served, SpendKind::Failed, SpendKind::Shadow];

    pub fn label(self) -> &'static str {
        match self {
            SpendKind::Served => "served",
            SpendKind::Failed => "failed",
            SpendKind::Shadow => "shadow",
        }
    }
}

/// Shadow counters, by index into [`ShadowStats::counters`].
pub mod shadow_counter {
    pub const MIRRORED: usize = 0;
    pub const SKIPPED_RATE: usize = 1;
    pub const SKIPPED_TOKENS: usize = 2;
    pub const SHED: usize = 3;
    pub const CANCELLED: usize = 4;
    pub const COMPARED: usize = 5;
    pub const STATUS_MISMATCH: usize = 6;
    pub const PRIMARY_SCHEMA_ERRORS: usize = 7;
    pub const SHADOW_SCHEMA_ERRORS: usize = 8;
    pub const DIVERGED: usize = 9;
    pub const INPUT_TOKENS: usize = 10;
    pub const OUTPUT_TOKENS: usize = 11;
    pub const PRIMARY_INPUT_TOKENS: usize = 12;
    pub const PRIMARY_OUTPUT_TOKENS: usize = 13;
    pub const CLIENT_ERRORS: usize = 14;
    pub const PRIMARY_CLIENT_ERRORS: usize = 15;
    pub const COUNT: usize = 16;
    /// Names in metrics, same order.
    pub const NAMES: [&str; COUNT] = [
        "mirrored",
        "skipped_rate",
        "skipped_tokens",
        "shed",
        "cancelled",
        "compared",
        "status_mismatch",
        "primary_schema_errors",
        "shadow_schema_errors",
        "diverged",
        "input_tokens",
        "output_tokens",
        "primary_input_tokens",
        "primary_output_tokens",
        "client_errors",
        "primary_client_errors",
    ];
}

/// Counters of mirrored requests to one backend.
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub counters: [AtomicU64; shadow_counter::COUNT],
    pub outcomes: [AtomicU64; Outcome::ALL.len()],
    pub latency: AtomicHistogram,
    pub ttft: AtomicHistogram,
    pub similarity: [AtomicU64; SIMILARITY_BUCKETS],
    /// An example shadow answer of each failure class.
    pub examples: Examples,
}

impl ShadowStats {
    pub fn bump(&self, counter: usize) {
        self.add(counter, 1);
    }

    pub fn add(&self, counter: usize, n: u64) {
        if n > 0 {
            self.counters[counter].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_similarity(&self, score: f64) {
        self.similarity[similarity_bucket(score)].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> ShadowCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShadowCounts {
            counters: std::array::from_fn(|i| load(&self.counters[i])),
            outcomes: std::array::from_fn(|i| load(&self.outcomes[i])),
            latency: self.latency.snapshot(),
            ttft: self.ttft.snapshot(),
            similarity: std::array::from_fn(|i| load(&self.similarity[i])),
        }
    }
}

/// A copy of [`ShadowStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowCounts {
    pub counters: [u64; shadow_counter::COUNT],
    pub outcomes: [u64; Outcome::ALL.len()],
    pub latency: Histogram,
    pub ttft: Histogram,
    pub similarity: [u64; SIMILARITY_BUCKETS],
}

fn add_arrays<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn sub_arrays<const N: usize>(a: &[u64; N], b: &[u64; N]) -> [u64; N] {
    std::array::from_fn(|i| a[i].saturating_sub(b[i]))
}

fn outcomes_wire(o: &[u64; Outcome::ALL.len()]) -> v1::Outcomes {
    let get = |x: Outcome| o[x.index()];
    v1::Outcomes {
        success: get(Outcome::Ok),
        app_error: get(Outcome::AppError),
        backend_rejected: get(Outcome::BackendRejected),
        rate_limited: get(Outcome::RateLimited),
        server_error: get(Outcome::ServerError),
        timeout: get(Outcome::Timeout),
        connect_error: get(Outcome::Connect),
        stream_broken: get(Outcome::StreamBroken),
        malformed: get(Outcome::Malformed),
        breaker_rejected: get(Outcome::BreakerRejected),
        fault_injected: get(Outcome::FaultInjected),
        cancelled: get(Outcome::Cancelled),
        breaker_rejected_broken: 0,
    }
}

/// One example answer of each failure class (status and short detail),
/// kept until the next report takes them.
#[derive(Debug, Default)]
pub struct Examples {
    slots: Mutex<Vec<v1::FailureExample>>,
}

impl Examples {
    /// Keeps the first answer of its class this interval.
    pub fn offer(&self, outcome: Outcome, status: u16, detail: Option<&str>) {
        let mut slots = lock(&self.slots);
        if slots.iter().any(|e| e.outcome == outcome.label()) {
            return;
        }
        slots.push(v1::FailureExample {
            outcome: outcome.label().to_string(),
            status: u32::from(status),
            detail: detail
                .map(|d| shepherd_proto::validate::clip(d).into_owned())
                .unwrap_or_default(),
        });
    }

    /// Takes the examples kept so far.
    pub fn take(&self) -> Vec<v1::FailureExample> {
        std::mem::take(&mut *lock(&self.slots))
    }
}

impl ShadowCounts {
    pub fn get(&self, counter: usize) -> u64 {
        self.counters[counter]
    }

    fn add(&mut self, other: &ShadowCounts) {
        add_arrays(&mut self.counters, &other.counters);
        add_arrays(&mut self.outcomes, &other.outcomes);
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
        add_arrays(&mut self.similarity, &other.similarity);
    }

    fn since(&self, earlier: &ShadowCounts) -> ShadowCounts {
        ShadowCounts {
            counters: sub_arrays(&self.counters, &earlier.counters),
            outcomes: sub_arrays(&self.outcomes, &earlier.outcomes),
            latency: self.latency.since(&earlier.latency),
            ttft: self.ttft.since(&earlier.ttft),
            similarity: sub_arrays(&self.similarity, &earlier.similarity),
        }
    }

    fn is_empty(&self) -> bool {
        self.counters.iter().all(|n| *n == 0) && self.outcomes.iter().all(|n| *n == 0)
    }

    fn to_wire(&self) -> v1::ShadowTelemetry {
        use shadow_counter as c;
        let g = |i: usize| self.counters[i];
        v1::ShadowTelemetry {
            mirrored: g(c::MIRRORED),
            skipped_rate: g(c::SKIPPED_RATE),
            skipped_tokens: g(c::SKIPPED_TOKENS),
            shed: g(c::SHED),
            cancelled: g(c::CANCELLED),
            compared: g(c::COMPARED),
            status_mismatch: g(c::STATUS_MISMATCH),
            primary_schema_errors: g(c::PRIMARY_SCHEMA_ERRORS),
            shadow_schema_errors: g(c::SHADOW_SCHEMA_ERRORS),
            diverged: g(c::DIVERGED),
            outcomes: Some(outcomes_wire(&self.outcomes)),
            latency: (self.latency.count() > 0).then(|| self.latency.to_wire()),
            ttft: (self.ttft.count() > 0).then(|| self.ttft.to_wire()),
            input_tokens: g(c::INPUT_TOKENS),
            output_tokens: g(c::OUTPUT_TOKENS),
            primary_input_tokens: g(c::PRIMARY_INPUT_TOKENS),
            primary_output_tokens: g(c::PRIMARY_OUTPUT_TOKENS),
            client_errors: g(c::CLIENT_ERRORS),
            primary_client_errors: g(c::PRIMARY_CLIENT_ERRORS),
            examples: Vec::new(),
            similarity: if self.similarity.iter().any(|n| *n > 0) {
                self.similarity.to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

impl BackendStats {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Cancelled {
            return;
        }
        if outcome.is_backend_failure() {
            let recent = self.recent.fetch_add((1 << 32) + 1, Ordering::Relaxed) + (1 << 32) + 1;
            self.urgency.failure(recent >> 32, recent & 0xffff_ffff);
        } else {
            self.recent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The backend's breaker opened: report at once.
    pub fn breaker_opened(&self) {
        self.urgency.raise();
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    /// Counts one billed answer of `kind`: its cost, or `None` when it
    /// could not be priced.
    pub fn charge(&self, kind: SpendKind, cost: Option<u128>) {
        lock(&self.cost)[kind as usize].charge(cost);
    }

    pub fn add_tokens(&self, input: u64, output: u64) {
        if input > 0 {
            self.input_tokens.fetch_add(input, Ordering::Relaxed);
        }
        if output > 0 {
            self.output_tokens.fetch_add(output, Ordering::Relaxed);
        }
    }

    /// Records an attempt's time to the end of its response, and whether
    /// it succeeded.
    pub fn record_latency(&self, d: Duration, ok: bool) {
        self.latency.record(d);
        if !ok {
            self.latency_failed.record(d);
        }
    }

    /// The counters as they are now.
    pub fn counts(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            outcomes: std::array::from_fn(|i| load(&self.outcomes[i])),
            latency: self.latency.snapshot(),
            latency_failed: self.latency_failed.snapshot(),
            ttft: self.ttft.snapshot(),
            input_tokens: load(&self.input_tokens),
            output_tokens: load(&self.output_tokens),
            retries: load(&self.retries),
            breaker_rejected_broken: load(&self.breaker_rejected_broken),
            fallbacks: load(&self.fallbacks),
            selected: load(&self.selected),
            faults: [
                load(&self.faults_abort),
                load(&self.faults_delay),
                load(&self.faults_cut),
            ],
            translation: [
                load(&self.translated),
                load(&self.translation_refused),
                load(&self.dropped_fields),
            ],
            shadow: self.shadow.counts(),
            cost: *lock(&self.cost),
            spend_cap: [load(&self.spend_cap_trips), load(&self.spend_capped)],
            cooldown: [load(&self.cooldowns), load(&self.cooled)],
        }
    }
}

/// A copy of [`BackendStats`] that can be added and subtracted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub outcomes: [u64; Outcome::ALL.len()],
    pub latency: Histogram,
    pub latency_failed: Histogram,
    pub ttft: Histogram,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub retries: u64,
    pub breaker_rejected_broken: u64,
    pub fallbacks: u64,
    pub selected: u64,
    /// Abort, delay, stream cut.
    pub faults: [u64; 3],
    /// Translated, refused, dropped fields.
    pub translation: [u64; 3],
    pub shadow: ShadowCounts,
    /// By [`SpendKind`].
    pub cost: [Spend; SpendKind::ALL.len()],
    /// Hourly spend cap: trips, requests sent elsewhere.
    pub spend_cap: [u64; 2],
    /// 429 cool-downs: started, requests sent elsewhere.
    pub cooldown: [u64; 2],
}

impl Counts {
    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()]
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.outcomes.iter_mut().zip(&other.outcomes) {
            *a += b;
        }
        self.latency.merge(&other.latency);
        self.latency_failed.merge(&other.latency_failed);
        self.ttft.merge(&other.ttft);
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.retries += other.retries;
        self.breaker_rejected_broken += other.breaker_rejected_broken;
        self.fallbacks += other.fallbacks;
        self.selected += other.selected;
        for (a, b) in self.faults.iter_mut().zip(&other.faults) {
            *a += b;
        }
        for (a, b) in self.translation.iter_mut().zip(&other.translation) {
            *a += b;
        }
        self.shadow.add(&other.shadow);
        for (a, b) in self.cost.iter_mut().zip(&other.cost) {
            a.add(b);
        }
        for (a, b) in self.spend_cap.iter_mut().zip(&other.spend_cap) {
            *a += b;
        }
        for (a, b) in self.cooldown.iter_mut().zip(&other.cooldown) {
            *a += b;
        }
    }

    /// What was added since `earlier`, a copy of the same counters.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            outcomes: std::array::from_fn(|i| self.outcomes[i].saturating_sub(earlier.outcomes[i])),
            latency: self.latency.since(&earlier.latency),
            latency_failed: self.latency_failed.since(&earlier.latency_failed),
            ttft: self.ttft.since(&earlier.ttft),
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            retries: self.retries.saturating_sub(earlier.retries),
            breaker_rejected_broken: self
                .breaker_rejected_broken
                .saturating_sub(earlier.breaker_rejected_broken),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            selected: self.selected.saturating_sub(earlier.selected),
            faults: std::array::from_fn(|i| self.faults[i].saturating_sub(earlier.faults[i])),
            translation: std::array::from_fn(|i| {
                self.translation[i].saturating_sub(earlier.translation[i])
            }),
            shadow: self.shadow.since(&earlier.shadow),
            cost: std::array::from_fn(|i| self.cost[i].since(&earlier.cost[i])),
            spend_cap: std::array::from_fn(|i| {
                self.spend_cap[i].saturating_sub(earlier.spend_cap[i])
            }),
            cooldown: std::array::from_fn(|i| self.cooldown[i].saturating_sub(earlier.cooldown[i])),
        }
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.selected == 0
            && self.retries == 0
            && self.fallbacks == 0
            && self.outcomes.iter().all(|n| *n == 0)
            && self.shadow.is_empty()
            && self.cost.iter().all(Spend::is_empty)
            && self.spend_cap.iter().all(|n| *n == 0)
    }

    /// The wire form, for a telemetry report.
    pub fn to_wire(&self, backend: &str) -> v1::BackendTelemetry {
        let mut outcomes = outcomes_wire(&self.outcomes);
        outcomes.breaker_rejected_broken = self.breaker_rejected_broken;
        v1::BackendTelemetry {
            backend: backend.to_string(),
            outcomes: Some(outcomes),
            latency: (self.latency.count() > 0).then(|| self.latency.to_wire()),
            ttft: (self.ttft.count() > 0).then(|| self.ttft.to_wire()),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            retries: self.retries,
            fallbacks: self.fallbacks,
            selected: self.selected,
            shadow: (!self.shadow.is_empty()).then(|| self.shadow.to_wire()),
            examples: Vec::new(),
            cost: (!self.cost.iter().all(Spend::is_empty)).then(|| {
                let spend = |k: SpendKind| {
                    let s = &self.cost[k as usize];
                    (!s.is_empty()).then(|| s.to_wire())
                };
                v1::Cost {
                    served: spend(SpendKind::Served),
                    failed: spend(SpendKind::Failed),
                    shadow: spend(SpendKind::Shadow),
                }
            }),
            spend_cap_trips: self.spend_cap[0],
            spend_capped: self.spend_cap[1],
        }
    }
}

/// Agent-wide counters.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// The proxy listener's open connections (its cap and what it closed).
    pub connections: shepherd_observe::conns::Connections,
    /// Requests refused because too many were in flight.
    pub shed: AtomicU64,
    /// Requests refused as too large.
    pub too_large: AtomicU64,
    /// Requests no policy matched.
    pub no_route: AtomicU64,
    /// Requests whose body could not be read.
    pub bad_request: AtomicU64,
    pub inflight: AtomicI64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Telemetry reports dropped because the control plane was out of reach
    /// for longer than the report queue holds.
    pub reports_lost: AtomicU64,
    /// Whether the control-plane stream is up (0 or 1).
    pub control_plane_connected: AtomicU64,
}

/// When telemetry should be reported before its interval is up: a
/// backend's breaker opened, or one backend failed `threshold` times since
/// the last report, in at least [`URGENT_FAILURE_SHARE`] of its attempts (a
/// jump, not the steady trickle of a healthy backend's errors under heavy
/// traffic). The report loop waits on [`Urgency::raised`] and limits how
/// often it answers.
#[derive(Debug, Default)]
pub struct Urgency {
    /// Failures of one backend since the last report that call for one at
    /// once; 0: never.
    threshold: AtomicU64,
    /// This agent saw a backend's failures jump.
    urgent: AtomicBool,
    /// The control plane asked for a report (ReportNow).
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

/// Why a report goes before its interval is up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub urgent: bool,
    pub requested: bool,
}

/// The share of a backend's attempts since the last report that must have
/// failed for its failures to call for an urgent report, in percent.
pub const URGENT_FAILURE_SHARE: u64 = 25;

impl Urgency {
    /// Sets the number of a backend's failures since the last report that
    /// calls for an early one (0 turns that off).
    pub fn set_threshold(&self, failures: u64) {
        self.threshold.store(failures, Ordering::Relaxed);
    }

    /// A backend failed: `failures` of its `attempts` since the last report.
    fn failure(&self, failures: u64, attempts: u64) {
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold > 0
            && failures >= threshold
            && failures * 100 >= attempts * URGENT_FAILURE_SHARE
        {
            self.raise();
        }
    }

    /// Asks for an urgent report at once.
    pub fn raise(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// The control plane asked for a report at once.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// What was called for since the last time, and clears it.
    pub fn take(&self) -> Calls {
        Calls {
            urgent: self.urgent.swap(false, Ordering::Relaxed),
            requested: self.requested.swap(false, Ordering::Relaxed),
        }
    }

    /// Resolves once a report is called for.
    pub async fn raised(&self) {
        self.notify.notified().await;
    }
}

/// Counters under one version, and what of them was already reported.
#[derive(Debug)]
struct VersionEntry {
    live: Arc<BackendStats>,
    reported: Counts,
}

type BackendKey = (String, String);

/// Counters of every (policy, backend), kept per snapshot version so reports
/// say which version the requests ran under. A version no table uses any
/// more is folded into a running total once its last figures are reported,
/// so Prometheus counters continue across reloads.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    /// When a report should go before its interval is up.
    pub urgency: Arc<Urgency>,
    versions: Mutex<BTreeMap<(BackendKey, u64), VersionEntry>>,
    retired: Mutex<HashMap<BackendKey, Counts>>,
    policies: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl StatsRegistry {
    /// The counters of a backend within a policy, under a snapshot version.
    pub fn backend(&self, policy: &str, backend: &str, version: u64) -> Arc<BackendStats> {
        lock(&self.versions)
            .entry(((policy.to_string(), backend.to_string()), version))
            .or_insert_with(|| VersionEntry {
                live: Arc::new(BackendStats {
                    urgency: self.urgency.clone(),
                    ..BackendStats::default()
                }),
                reported: Counts::default(),
            })
            .live
            .clone()
    }

    /// The request counter of a policy.
    pub fn policy_requests(&self, policy: &str) -> Arc<AtomicU64> {
        lock(&self.policies)
            .entry(policy.to_string())
            .or_default()
            .clone()
    }

    /// What was counted since the last call, per policy and version; counters
    /// of versions no table holds any more are retired after their last
    /// figures are taken.
    pub fn collect(&self) -> Vec<v1::PolicyTelemetry> {
        let mut out: Vec<v1::PolicyTelemetry> = Vec::new();
        let mut retiring = Vec::new();
        {
            let mut versions = lock(&self.versions);
            for (((policy, backend), version), entry) in versions.iter_mut() {
                let now = entry.live.counts();
                entry.live.recent.store(0, Ordering::Relaxed);
                let delta = now.since(&entry.reported);
                entry.reported = now;
                // A sum too large for one report's field waits for the next.
                for (kept, sent) in entry.reported.cost.iter_mut().zip(&delta.cost) {
                    kept.picos -= sent.picos.saturating_sub(u128::from(u64::MAX));
                }
                if Arc::strong_count(&entry.live) == 1 {
                    retiring.push(((policy.clone(), backend.clone()), *version));
                }
                if delta.is_empty() {
                    continue;
                }
                let mut wire = delta.to_wire(backend);
                wire.examples = entry.live.examples.take();
                if let Some(shadow) = wire.shadow.as_mut() {
                    shadow.examples = entry.live.shadow.examples.take();
                }
                match out
                    .iter_mut()
                    .find(|p| p.policy == *policy && p.snapshot_version == *version)
                {
                    Some(p) => {
                        p.requests += wire.selected;
                        p.backends.push(wire);
                    }
                    None => out.push(v1::PolicyTelemetry {
                        policy: policy.clone(),
                        snapshot_version: *version,
                        requests: wire.selected,
                        backends: vec![wire],
                    }),
                }
            }
            let mut retired = lock(&self.retired);
            for key in retiring {
                if let Some(entry) = versions.remove(&key) {
                    retired.entry(key.0).or_default().add(&entry.reported);
                }
            }
        }
        out
    }

    /// Totals per (policy, backend) over every version, for Prometheus.
    pub fn totals(&self) -> BTreeMap<BackendKey, Counts> {
        let mut totals: BTreeMap<BackendKey, Counts> = lock(&self.retired)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((key, _), entry) in lock(&self.versions).iter() {
            totals
                .entry(key.clone())
                .or_default()
                .add(&entry.live.counts());
        }
        totals
    }

    /// Renders every counter in the Prometheus text format. `breakers`
    /// holds the breaker state gauge of each (policy, backend) in force.
    pub fn render(
        &self,
        agent: &AgentStats,
        snapshot_version: u64,
        breakers: &BTreeMap<BackendKey, u64>,
    ) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let backends = self.totals();
        let mut policies: Vec<_> = lock(&self.policies)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        policies.sort();

        header(
            &mut out,
            "shepherd_agent_requests_total",
            "counter",
            "Requests matched to a policy.",
        );
        for (policy, n) in &policies {
            let _ = writeln!(
                out,
                "shepherd_agent_requests_total{{policy=\"{}\"}} {n}",
                esc(policy)
            );
        }
        header(
            &mut out,
            "shepherd_agent_attempts_total",
            "counter",
            "Attempts sent to a backend (or refused or faulted), by outcome class.",
        );
        for ((policy, backend), s) in &backends {
            for o in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "shepherd_agent_attempts_total{{policy=\"{}\",backend=\"{}\",outcome=\"{}\"}} {}",
                    esc(policy),
                    esc(backend),
                    o.label(),
                    s.outcome(o)
                );
            }
        }
        type Getter = fn(&Counts) -> u64;
        let simple: [(&str, &str, Getter); 10] = [
            (
                "shepherd_agent_selected_total",
                "Requests the split sent to a backend first.",
                |s| s.selected,
            ),
            (
                "shepherd_agent_retries_total",
                "Attempts that were retries.",
                |s| s.retries,
            ),
            (
                "shepherd_agent_fallbacks_total",
                "Times a backend was tried as a fallback.",
                |s| s.fallbacks,
            ),
            (
                "shepherd_agent_rate_limit_cooldowns_total",
                "Cool-downs of a backend started by a 429 with Retry-After.",
                |s| s.cooldown[0],
            ),
            (
                "shepherd_agent_cooldown_skipped_total",
                "Requests sent to the next backend at once because this one was cooling down after a 429.",
                |s| s.cooldown[1],
            ),
            (
                "shepherd_agent_spend_cap_trips_total",
                "Times a backend's hourly spend cap was reached (as the candidate, or as the shadow).",
                |s| s.spend_cap[0],
            ),
            (
                "shepherd_agent_spend_capped_total",
                "Requests sent to the baseline instead of the candidate, or not mirrored to the shadow, while its hourly spend cap was reached.",
                |s| s.spend_cap[1],
            ),
            (
                "shepherd_agent_translated_requests_total",
                "Requests translated into a backend's API family (OpenAI chat completions to Anthropic messages, or back).",
                |s| s.translation[0],
            ),
            (
                "shepherd_agent_translation_refused_total",
                "Requests not sent to a backend because a field has no counterpart in its API family (a backend_rejected outcome).",
                |s| s.translation[1],
            ),
            (
                "shepherd_agent_translation_dropped_fields_total",
                "Fields with no counterpart dropped from translated requests (backends with drop_unsupported).",
                |s| s.translation[2],
            ),
        ];
        for (name, help, get) in simple {
            header(&mut out, name, "counter", help);
            for ((policy, backend), s) in &backends {
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{}\",backend=\"{}\"}} {}",
                    esc(policy),
                    esc(backend),
                    get(s)
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_breaker_state",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        );
        for ((policy, backend), state) in breakers {
            let _ = writeln!(
                out,
                "shepherd_agent_breaker_state{{policy=\"{}\",backend=\"{}\"}} {state}",
                esc(policy),
                esc(backend),
            );
        }
        header(
            &mut out,
            "shepherd_agent_tokens_total",
            "counter",
            "Tokens reported in usage, by kind.",
        );
        for ((policy, backend), s) in &backends {
            for (kind, v) in [("input", s.input_tokens), ("output", s.output_tokens)] {
                let _ = writeln!(
                    out,
                    "shepherd_agent_tokens_total{{policy=\"{}\",backend=\"{}\",kind=\"{kind}\"}} {v}",
                    esc(policy),
                    esc(backend),
                );
            }
        }
        type SpendValue = fn(&Spend) -> String;
        let spends: [(&str, &str, SpendValue); 2] = [
            (
                "shepherd_agent_cost_total",
                "Money spent on a backend's answers, in its policy's currency, by kind: served (reached the app), failed (billed, then retried or fallen back from), shadow (mirrored).",
                |s| shepherd_proto::cost::exact(s.picos),
            ),
            (
                "shepherd_agent_unpriced_answers_total",
                "Billed answers of a priced backend that could not be priced (no usage reported, cut off before the end, or no price for the model), by kind.",
                |s| s.unpriced.to_string(),
            ),
        ];
        let priced = |s: &&Counts| s.cost.iter().any(|c| !c.is_empty());
        for (name, help, value) in spends {
            header(&mut out, name, "counter", help);
            for ((policy, backend), s) in backends.iter().filter(|(_, s)| priced(s)) {
                for kind in SpendKind::ALL {
                    let _ = writeln!(
                        out,
                        "{name}{{policy=\"{}\",backend=\"{}\",kind=\"{}\"}} {}",
                        esc(policy),
                        esc(backend),
                        kind.label(),
                        value(&s.cost[kind as usize])
                    );
                }
            }
        }
        header(
            &mut out,
            "shepherd_agent_faults_injected_total",
            "counter",
            "Faults injected, by kind.",
        );
        for ((policy, backend), s) in &backends {
            for (kind, v) in ["abort", "delay", "stream_cut"].into_iter().zip(s.faults) {
                let _ = writeln!(
                    out,
                    "shepherd_agent_faults_injected_total{{policy=\"{}\",backend=\"{}\",kind=\"{kind}\"}} {v}",
                    esc(policy),
                    esc(backend),
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_shadow_total",
            "counter",
            "Shadow (mirrored) requests to a backend: what happened to them and how their answers compared.",
        );
        for ((policy, backend), s) in &backends {
            if s.shadow.is_empty() {
                continue;
            }
            for (i, kind) in shadow_counter::NAMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "shepherd_agent_shadow_total{{policy=\"{}\",backend=\"{}\",kind=\"{kind}\"}} {}",
                    esc(policy),
                    esc(backend),
                    s.shadow.get(i)
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_attempt_duration_seconds",
            "histogram",
            "Time from sending an attempt to the end of its response, by outcome (ok: a valid answer; error: any other).",
        );
        for ((policy, backend), s) in &backends {
            let labels = format!("policy=\"{}\",backend=\"{}\"", esc(policy), esc(backend));
            for (outcome, h) in [
                ("ok", &s.latency.since(&s.latency_failed)),
                ("error", &s.latency_failed),
            ] {
                histogram(
                    &mut out,
                    "shepherd_agent_attempt_duration_seconds",
                    &format!("{labels},outcome=\"{outcome}\""),
                    h,
                );
            }
        }
        header(
            &mut out,
            "shepherd_agent_time_to_first_token_seconds",
            "histogram",
            "Time from sending an attempt to the first byte of its streamed body.",
        );
        for ((policy, backend), s) in &backends {
            histogram(
                &mut out,
                "shepherd_agent_time_to_first_token_seconds",
                &format!("policy=\"{}\",backend=\"{}\"", esc(policy), esc(backend)),
                &s.ttft,
            );
        }
        let conns = agent.connections.counts();
        header(
            &mut out,
            "shepherd_agent_connections_closed_total",
            "counter",
            "Proxy connections the agent closed: refused (at the cap, every connection busy), evicted (the oldest that had sent no request, to make room), first_request_timeout (no request within the header-read timeout).",
        );
        for (reason, v) in [
            ("refused", conns.refused),
            ("evicted", conns.evicted),
            ("first_request_timeout", conns.timed_out),
        ] {
            let _ = writeln!(
                out,
                "shepherd_agent_connections_closed_total{{reason=\"{reason}\"}} {v}"
            );
        }
        for (name, kind, help, v) in [
            (
                "shepherd_agent_connections_open",
                "gauge",
                "Open proxy connections.",
                conns.open as u64,
            ),
            (
                "shepherd_agent_connections_max",
                "gauge",
                "Most proxy connections open at once (--max-connections).",
                conns.cap as u64,
            ),
            (
                "shepherd_agent_inflight_requests",
                "gauge",
                "Requests in flight.",
                agent.inflight.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "shepherd_agent_shed_total",
                "counter",
                "Requests refused because too many were in flight.",
                agent.shed.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_request_too_large_total",
                "counter",
                "Requests refused as too large.",
                agent.too_large.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_no_route_total",
                "counter",
                "Requests no policy matched.",
                agent.no_route.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_bad_request_total",
                "counter",
                "Requests whose body could not be read.",
                agent.bad_request.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_snapshot_version",
                "gauge",
                "Version of the policy snapshot in use.",
                snapshot_version,
            ),
            (
                "shepherd_agent_control_plane_connected",
                "gauge",
                "1 while the control-plane stream is up.",
                agent.control_plane_connected.load(Ordering::Relaxed),
            ),
            (
                "shepherd_agent_telemetry_reports_lost_total",
                "counter",
                "Telemetry reports dropped while the control plane was out of reach.",
                agent.reports_lost.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        header(
            &mut out,
            "shepherd_agent_policy_reloads_total",
            "counter",
            "Policy reloads, by result.",
        );
        let _ = writeln!(
            out,
            "shepherd_agent_policy_reloads_total{{result=\"ok\"}} {}",
            agent.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "shepherd_agent_policy_reloads_total{{result=\"failed\"}} {}",
            agent.reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendering carries the recorded values with Prometheus conventions.
    #[test]
    fn renders_prometheus_text() {
        let reg = StatsRegistry::default();
        let s = reg.backend("chat", "openai", 7);
        s.record(Outcome::Ok);
        s.record(Outcome::Ok);
        s.record(Outcome::ServerError);
        s.record_latency(Duration::from_millis(3), true);
        s.record_latency(Duration::from_millis(30), false);
        s.add_tokens(24, 12);
        reg.policy_requests("chat").fetch_add(3, Ordering::Relaxed);
        let breakers = [(("chat".to_string(), "openai".to_string()), 1)].into();
        let text = reg.render(&AgentStats::default(), 7, &breakers);
        for line in [
            "shepherd_agent_requests_total{policy=\"chat\"} 3",
            "shepherd_agent_attempts_total{policy=\"chat\",backend=\"openai\",outcome=\"ok\"} 2",
            "shepherd_agent_attempts_total{policy=\"chat\",backend=\"openai\",outcome=\"server_error\"} 1",
            "shepherd_agent_tokens_total{policy=\"chat\",backend=\"openai\",kind=\"input\"} 24",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",outcome=\"ok\",le=\"0.0025\"} 0",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",outcome=\"ok\",le=\"0.005\"} 1",
            "shepherd_agent_attempt_duration_seconds_count{policy=\"chat\",backend=\"openai\",outcome=\"ok\"} 1",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",outcome=\"error\",le=\"0.025\"} 0",
            "shepherd_agent_attempt_duration_seconds_bucket{policy=\"chat\",backend=\"openai\",outcome=\"error\",le=\"0.05\"} 1",
            "shepherd_agent_attempt_duration_seconds_count{policy=\"chat\",backend=\"openai\",outcome=\"error\"} 1",
            "shepherd_agent_snapshot_version 7",
            "shepherd_agent_breaker_state{policy=\"chat\",backend=\"openai\"} 1",
            "# TYPE shepherd_agent_attempts_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // The same key gives the same counters.
        assert!(Arc::ptr_eq(&s, &reg.backend("chat", "openai", 7)));
    }

    /// Reports carry what was counted since the last one, per version; a
    /// version no table holds is reported one last time, then retired into
    /// the totals, which keep counting across versions.
    #[test]
    fn collects_deltas_per_version_and_retires() {
        let reg = StatsRegistry::default();
        let v1 = reg.backend("chat", "openai", 1);
        v1.record(Outcome::Ok);
        bump(&v1.selected);
        let first = reg.collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].snapshot_version, 1);
        assert_eq!(first[0].requests, 1);
        assert!(reg.collect().is_empty(), "nothing new, nothing reported");

        let v2 = reg.backend("chat", "openai", 2);
        v1.record(Outcome::ServerError);
        v2.record(Outcome::Ok);
        drop(v1);
        let second = reg.collect();
        let versions: Vec<u64> = second.iter().map(|p| p.snapshot_version).collect();
        assert_eq!(versions, vec![1, 2]);
        let o = second[0].backends[0].outcomes.as_ref().unwrap();
        assert_eq!((o.success, o.server_error), (0, 1));
        // Version 1 is retired; its counts stay in the totals.
        assert!(reg.collect().is_empty());
        let totals = reg.totals();
        let t = &totals[&("chat".to_string(), "openai".to_string())];
        assert_eq!(t.outcome(Outcome::Ok), 2);
        assert_eq!(t.outcome(Outcome::ServerError), 1);
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }

    /// Spend is reported per kind, exactly and only once; a sum past what
    /// one report's field holds is carried to the next report, not lost.
    #[test]
    fn reports_spend_and_carries_what_does_not_fit() {
        let reg = StatsRegistry::default();
        let s = reg.backend("chat", "openai", 1);
        s.charge(SpendKind::Served, Some(65_000_000));
        s.charge(SpendKind::Served, None);
        s.charge(SpendKind::Shadow, Some(7));
        let first = reg.collect();
        let cost = first[0].backends[0].cost.unwrap();
        assert_eq!(
            cost.served,
            Some(v1::Spend {
                picos: 65_000_000,
                priced: 1,
                unpriced: 1,
                squares: 65_000_000f64 * 65_000_000f64,
            })
        );
        assert_eq!(cost.failed, None);
        assert_eq!(cost.shadow.map(|s| s.picos), Some(7));
        assert!(reg.collect().is_empty());

        let huge = u128::from(u64::MAX) + 5;
        s.charge(SpendKind::Failed, Some(huge));
        let sent = reg.collect()[0].backends[0].cost.unwrap().failed.unwrap();
        assert_eq!((sent.picos, sent.priced), (u64::MAX, 1));
        let rest = reg.collect()[0].backends[0].cost.unwrap().failed.unwrap();
        assert_eq!((rest.picos, rest.priced), (5, 0));
        assert!(reg.collect().is_empty());
        // Prometheus shows the exact total, in units of the currency.
        let text = reg.render(&AgentStats::default(), 1, &BTreeMap::new());
        for line in [
            "shepherd_agent_cost_total{policy=\"chat\",backend=\"openai\",kind=\"served\"} 0.000065",
            "shepherd_agent_cost_total{policy=\"chat\",backend=\"openai\",kind=\"failed\"} 18446744.07370955162",
            "shepherd_agent_cost_total{policy=\"chat\",backend=\"openai\",kind=\"shadow\"} 0.000000000007",
            "shepherd_agent_unpriced_answers_total{policy=\"chat\",backend=\"openai\",kind=\"served\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
