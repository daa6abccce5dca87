//! The fleet: agents connected over `AgentService.Connect`.
//!
//! - [`snapshots`]: each group of agents with the same labels shares one
//!   snapshot, rebuilt when the catalog changes; unchanged groups hear
//!   nothing.
//! - [`session`]: one agent's stream: hello, snapshots down (latest only, one
//!   in flight), ACK/NACK and telemetry up.
//! - [`agents`]: the agents of this replica, written to the store in batches
//!   so every replica sees the whole fleet.
//! - [`telemetry`]: reports merged per policy, version, backend and window,
//!   written to the store every flush.
//!
//! Background loops ([`Fleet::run`]): read the catalog at start and on every
//! change notice (coalescing bursts), flush agents and telemetry, prune old
//! rows; at shutdown, end every stream, flush, and mark this replica's agents
//! disconnected.

pub mod agents;
pub mod session;
pub mod snapshots;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::{Store, StoreError};
use agents::AgentTable;
use snapshots::Snapshots;
use telemetry::Aggregator;

/// Settings of the fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// This replica's name in the fleet view.
    pub replica: String,
    /// How often agent records and telemetry are written to the store (and
    /// this replica says it is alive).
    pub flush_interval: Duration,
    /// A replica not heard of for this long has lost its agents.
    pub replica_timeout: Duration,
    /// Pause after a change notice, so a burst of writes is one rebuild.
    pub debounce: Duration,
    /// Most agents being handed their first snapshot at once; more wait.
    pub max_connecting: usize,
    /// Longest wait for a turn; past it the agent is told to retry later.
    pub admission_wait: Duration,
    /// Time an agent has to send its hello.
    pub hello_timeout: Duration,
    /// Length of a telemetry window.
    pub telemetry_window: Duration,
    /// How long telemetry windows are kept.
    pub telemetry_retention: Duration,
    /// How long disconnected agents stay listed.
    pub agent_retention: Duration,
    /// Most telemetry windows pending in memory while the store is down.
    pub max_pending_windows: usize,
    /// How often the leading replica judges active rollouts.
    pub analysis_interval: Duration,
    /// Silence from selected agents for this long during a stage is an event.
    pub stale_telemetry_after: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            replica: default_replica_name(),
            flush_interval: Duration::from_secs(1),
            replica_timeout: Duration::from_secs(15),
            debounce: Duration::from_millis(20),
            max_connecting: 256,
            admission_wait: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            telemetry_window: Duration::from_secs(1),
            telemetry_retention: Duration::from_secs(24 * 3600),
            agent_retention: Duration::from_secs(7 * 24 * 3600),
            max_pending_windows: 100_000,
            analysis_interval: Duration::from_millis(250),
            stale_telemetry_after: Duration::from_secs(10),
        }
    }
}

/// The host's name and a random suffix, so two replicas on one host differ.
pub fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Locks a mutex; a panic elsewhere while it was held does not poison the
/// data for the rest of the fleet.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The fleet as this replica serves it.
pub struct Fleet {
    pub(crate) store: Arc<dyn Store>,
    pub options: FleetOptions,
    pub snapshots: Snapshots,
    pub agents: AgentTable,
    pub telemetry: Aggregator,
    /// Counters for `/metrics`.
    pub counters: Arc<crate::metrics::Counters>,
    admission: Arc<Semaphore>,
    /// Ends every stream (shutdown).
    pub(crate) stopping: CancellationToken,
    /// Counts catalog reads: a change here means the store changed
    /// (policies or rollouts, written by any replica).
    reads: tokio::sync::watch::Sender<u64>,
    last_session: AtomicI64,
    /// An agent's urgent report is pending: the next flush announces it.
    urgent: AtomicBool,
    /// Wakes the flush loop for an urgent report.
    flush_now: Notify,
    /// Bumped to ask every agent of this replica for a report at once.
    report_now: tokio::sync::watch::Sender<u64>,
    /// When agents were last asked, in microseconds since the Unix epoch.
    last_asked: AtomicI64,
}

/// Shortest time between two requests for every agent's report.
pub const REPORT_NOW_GAP: Duration = Duration::from_millis(250);

/// Shortest time between two flushes when urgent reports call for them.
pub const URGENT_FLUSH_GAP: Duration = Duration::from_millis(50);

impl Fleet {
    pub fn new(store: Arc<dyn Store>, options: FleetOptions) -> Arc<Self> {
        Arc::new(Self {
            store,
            snapshots: Snapshots::default(),
            agents: AgentTable::default(),
            telemetry: Aggregator::new(options.telemetry_window, options.max_pending_windows),
            counters: Arc::default(),
            admission: Arc::new(Semaphore::new(options.max_connecting.max(1))),
            stopping: CancellationToken::new(),
            reads: tokio::sync::watch::channel(0).0,
            last_session: AtomicI64::new(0),
            urgent: AtomicBool::new(false),
            flush_now: Notify::new(),
            report_now: tokio::sync::watch::channel(0).0,
            last_asked: AtomicI64::new(0),
            options,
        })
    }

    /// An agent sent an urgent or requested report (already absorbed):
    /// write it at once, and have the analysis leader hear of it.
    pub(crate) fn urgent_report(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.flush_now.notify_one();
    }

    /// Asks every agent of this replica for a report at once (ReportNow),
    /// so the analysis sees the whole fleet's figures and not only the
    /// agent that noticed first; at most once per [`REPORT_NOW_GAP`].
    pub(crate) fn ask_for_reports(&self) {
        let now = Utc::now().timestamp_micros();
        let gap = i64::try_from(REPORT_NOW_GAP.as_micros()).unwrap_or(i64::MAX);
        let last = self.last_asked.load(Ordering::Relaxed);
        if now - last >= gap
            && self
                .last_asked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.report_now.send_modify(|n| *n += 1);
        }
    }

    /// Changes each time agents are asked for a report at once.
    pub(crate) fn report_requests(&self) -> tokio::sync::watch::Receiver<u64> {
        self.report_now.subscribe()
    }

    /// A turn to connect, waiting up to the admission wait.
    pub(crate) async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(
            self.options.admission_wait,
            self.admission.clone().acquire_owned(),
        )
        .await
        .ok()?
        .ok()
    }

    /// Changes each time the store was seen to change.
    pub fn store_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reads.subscribe()
    }

    /// A session id: the time in microseconds, strictly increasing here.
    pub(crate) fn next_session(&self) -> i64 {
        let now = Utc::now().timestamp_micros();
        let previous = self
            .last_session
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(previous + 1)
    }

    /// Runs the background loops until `shutdown`, then ends every stream,
    /// flushes, and marks this replica's agents disconnected.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let catalog = tokio::spawn(self.clone().watch_catalog(shutdown.clone()));
        let flush = tokio::spawn(self.clone().flush_loop(shutdown.clone()));
        let prune = tokio::spawn(self.clone().prune_loop(shutdown.clone()));
        shutdown.cancelled().await;
        self.stopping.cancel();
        self.agents.cancel_all();
        let _ = catalog.await;
        let _ = flush.await;
        let _ = prune.await;
        // Sessions mark their agents disconnected as they end; write that.
        self.flush().await;
        if let Err(e) = self
            .store
            .release_replica(&self.options.replica, Utc::now())
            .await
        {
            warn!(error = %e, "cannot mark this replica's agents disconnected; they will read as disconnected once its heartbeat is stale");
        }
    }

    /// Reads the catalog at start and after every change notice.
    async fn watch_catalog(self: Arc<Self>, shutdown: CancellationToken) {
        let mut feed = self.store.changes();
        let mut backoff = Duration::from_millis(100);
        loop {
            let loaded = self.store.load_catalog().await;
            self.saw(
                &loaded,
                "cannot read policies; agents keep their snapshots; retrying",
            );
            match loaded {
                Ok(catalog) => {
                    backoff = Duration::from_millis(100);
                    let generation = catalog.generation;
                    let changed = self.snapshots.update(catalog);
                    debug!(generation, groups_changed = changed, "catalog read");
                    self.reads.send_modify(|n| *n += 1);
                }
                Err(_) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                alive = feed.changed() => if !alive { return },
            }
            // Let a burst of writes land; notices meanwhile are one rebuild.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.options.debounce) => {}
            }
        }
    }

    async fn flush_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.options.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                () = self.flush_now.notified() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(last + URGENT_FLUSH_GAP) => {}
                    }
                }
            }
            last = tokio::time::Instant::now();
            self.flush().await;
        }
    }

    /// Writes changed agent records (and this replica's heartbeat) and
    /// pending telemetry. What fails to be written waits for the next flush.
    pub async fn flush(&self) {
        let records = self.agents.take_dirty();
        let saved = self
            .store
            .save_agents(&self.options.replica, Utc::now(), &records)
            .await;
        self.saw(&saved, "cannot write agent records; will retry");
        match saved {
            Ok(()) => self.agents.flushed(&records),
            Err(_) => self.agents.unflushed(&records),
        }
        let dropped = self
            .telemetry
            .dropped
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                dropped,
                "telemetry dropped: too many windows pending while the database could not be written"
            );
        }
        let urgent = self.urgent.swap(false, Ordering::Relaxed);
        let rows = self.telemetry.take(&self.options.replica);
        if !rows.is_empty() {
            let written = self.store.write_telemetry(&rows, urgent).await;
            self.saw(&written, "cannot write telemetry; will retry");
            if written.is_err() {
                self.telemetry.restore(rows);
                if urgent {
                    self.urgent.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reports a database call's result to the store's health (an
    /// unreachable database is logged there, once per outage); other
    /// errors are logged with `what`.
    fn saw<T>(&self, result: &Result<T, StoreError>, what: &str) {
        self.store.health().saw(result);
        if let Err(e) = result
            && !e.is_retryable()
        {
            warn!(error = %e, "{what}");
        }
    }

    async fn prune_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = Utc::now();
            let retention = chrono::Duration::from_std(self.options.telemetry_retention)
                .unwrap_or(chrono::Duration::MAX);
            let agents = chrono::Duration::from_std(self.options.agent_retention)
                .unwrap_or(chrono::Duration::MAX);
            let telemetry_before = now
                .checked_sub_signed(retention)
                .map_or(0, |t| t.timestamp_millis());
            let agents_before = now
                .checked_sub_signed(agents)
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
            match self.store.prune(telemetry_before, agents_before).await {
                Ok((0, 0)) => {}
                Ok((windows, agents)) => info!(windows, agents, "pruned old telemetry and agents"),
                Err(e) => warn!(error = %e, "cannot prune old telemetry and agents"),
            }
        }
    }
}
