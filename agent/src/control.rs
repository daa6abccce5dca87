//! The agent's side of `AgentService.Connect`.
//!
//! One stream at a time, to one of the configured control-plane addresses
//! (tried in turn from a random start). The agent says hello with the
//! snapshot it runs; the control plane answers with snapshots; each is
//! applied atomically and ACKed, or refused with a NACK naming the policy and
//! field (the previous one keeps serving). Applied snapshots are written to
//! the state directory. Telemetry is reported every interval through a
//! bounded queue: reports that do not fit while the control plane is out of
//! reach are counted and the count travels with every report delivered.
//! A failed or ended stream is retried with exponential backoff and full
//! jitter. After `loss_ttl` without the control plane, faults and shadow
//! traffic are dropped; weights stay.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use shepherd_proto::v1;
use shepherd_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, error, info, warn};

use crate::Agent;
use crate::lock;
use crate::state::StateDir;
use crate::telemetry::Calls;

/// How the agent reaches the control plane.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Control-plane addresses (http:// or https://), tried in turn.
    pub endpoints: Vec<String>,
    /// The agent token; never logged.
    pub token: Option<TokenSource>,
    /// TLS settings of https:// endpoints.
    pub tls: ClientTls,
    pub agent_id: String,
    pub hostname: String,
    pub state: Option<StateDir>,
    pub report_interval: Duration,
    /// Failures of one backend since the last report (at least a quarter of
    /// its attempts) that send the next report at once (a breaker opening
    /// always does); 0: only breakers.
    pub urgent_failures: u64,
    /// Shortest time between two reports when urgent ones are called for.
    pub urgent_min_interval: Duration,
    /// Reports kept while the control plane is out of reach.
    pub report_queue: usize,
    /// Time without the control plane after which faults and shadow stop.
    pub loss_ttl: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    /// Largest snapshot accepted.
    pub max_snapshot_bytes: usize,
}

impl ControlSettings {
    /// Defaults for everything but the addresses and identity.
    pub fn new(endpoints: Vec<String>, agent_id: String) -> Self {
        Self {
            endpoints,
            token: None,
            tls: ClientTls::default(),
            agent_id,
            hostname: hostname(),
            state: None,
            report_interval: Duration::from_secs(1),
            urgent_failures: 3,
            urgent_min_interval: Duration::from_millis(100),
            report_queue: 300,
            loss_ttl: Duration::from_secs(300),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_snapshot_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A secret whose `Debug` form never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

/// Where the agent token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Value(Secret),
    /// Re-read at each connection, so a rotated token is used from the next.
    File(std::path::PathBuf),
}

impl TokenSource {
    /// The token now; an error names the file and the rule.
    pub fn read(&self) -> Result<Secret, String> {
        let raw = match self {
            TokenSource::Value(s) => s.0.clone(),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("agent token file {}: {e}", path.display()))?,
        };
        let token = shepherd_proto::validate::check_token(&raw)
            .map_err(|rule| format!("agent token: {rule}"))?;
        Ok(Secret(token.to_string()))
    }
}

impl From<String> for TokenSource {
    fn from(value: String) -> Self {
        TokenSource::Value(Secret(value))
    }
}

/// The TLS files of https:// control-plane endpoints, read at each
/// connection.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CAs to verify the control plane with; the public web roots without.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key, for a control plane taking agents by
    /// certificate.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// The TLS settings for `endpoints`, read from the files now; `None`
    /// when no endpoint is https://. An error names the file.
    pub fn config(
        &self,
        endpoints: &[String],
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if !endpoints.iter().any(|e| e.starts_with("https://")) {
            if self.ca.is_some() || self.cert.is_some() {
                return Err(
                    "--control-plane-ca and --control-plane-cert need an https:// control-plane address"
                        .into(),
                );
            }
            return Ok(None);
        }
        let read = |path: &std::path::Path, what: &str, marker: &str| {
            let pem = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            if !pem.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                return Err(format!(
                    "{what} {}: no PEM \"{marker}\" block in it",
                    path.display()
                ));
            }
            Ok(pem)
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(
                ca,
                "control-plane CA",
                "BEGIN CERTIFICATE",
            )?)),
            None => config.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate", "BEGIN CERTIFICATE")?,
                read(key, "client key", "PRIVATE KEY")?,
            ));
        }
        Ok(Some(config))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// This host's name ("unknown" if it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Reports waiting to be sent, oldest first, bounded.
#[derive(Default)]
pub struct ReportQueue {
    inner: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    reports: VecDeque<v1::TelemetryReport>,
    /// Dropped in all.
    lost: u64,
}

impl ReportQueue {
    /// Queues a report, dropping (and counting) the oldest beyond `capacity`.
    /// Returns how many were dropped.
    pub fn push(&self, report: v1::TelemetryReport, capacity: usize) -> u64 {
        let mut q = lock(&self.inner);
        q.reports.push_back(report);
        let mut dropped = 0;
        while q.reports.len() > capacity.max(1) {
            q.reports.pop_front();
            dropped += 1;
        }
        q.lost += dropped;
        drop(q);
        self.ready.notify_one();
        dropped
    }

    /// The oldest report, carrying the count of those dropped so far.
    pub fn pop(&self) -> Option<v1::TelemetryReport> {
        let mut q = lock(&self.inner);
        let mut report = q.reports.pop_front()?;
        report.reports_lost = q.lost;
        Some(report)
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.inner).reports.is_empty()
    }
}

/// Exponential backoff with full jitter: a random delay up to
/// `base * 2^attempt`, capped.
pub fn backoff(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Shared between the stream loop and the timers.
struct Link {
    /// When the control plane was last heard from (or the agent started).
    last_contact: Mutex<SystemTime>,
    /// Since when the stream is lost, while it is (a reconnection says how
    /// long it lasted).
    lost: Mutex<Option<tokio::time::Instant>>,
}

/// What the agent serves meanwhile, for log lines.
fn serving(agent: &Agent) -> String {
    let policies = agent.table.load().policies().len();
    match (agent.running().0, policies) {
        (_, 0) => "no policies yet: requests get 404 until some arrive".into(),
        (version, n) => format!("serving snapshot version {version} ({n} policies) meanwhile"),
    }
}

/// Runs the control-plane link until `shutdown`: the stream (reconnected
/// as needed), the reporter, and the loss timer.
pub async fn run(agent: Arc<Agent>, settings: ControlSettings, shutdown: CancellationToken) {
    let queue = Arc::new(ReportQueue::default());
    let mut start = SystemTime::now();
    if let Some(state) = &settings.state {
        match state.load() {
            Ok(Some(saved)) => {
                let version = saved.snapshot.version;
                match agent.apply_snapshot(saved.snapshot) {
                    Ok(()) => {
                        info!(version, file = %state.path().display(), "serving the last snapshot saved on disk until the control plane answers");
                        // Faults and shadow expire counting from when it was saved.
                        start = saved.written;
                    }
                    Err(e) => {
                        warn!(version, error = %e, "the snapshot saved on disk cannot be applied; waiting for the control plane")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the saved snapshot"),
        }
    }
    let link = Arc::new(Link {
        last_contact: Mutex::new(start),
        lost: Mutex::new(None),
    });
    let reporter = tokio::spawn(report_loop(
        agent.clone(),
        queue.clone(),
        settings.clone(),
        shutdown.clone(),
    ));
    let timer = tokio::spawn(loss_timer(
        agent.clone(),
        link.clone(),
        settings.loss_ttl,
        shutdown.clone(),
    ));
    connect_loop(&agent, &settings, &queue, &link, &shutdown).await;
    let _ = reporter.await;
    let _ = timer.await;
}

async fn connect_loop(
    agent: &Agent,
    settings: &ControlSettings,
    queue: &ReportQueue,
    link: &Link,
    shutdown: &CancellationToken,
) {
    if settings.endpoints.is_empty() {
        return;
    }
    let mut next = rand::random_range(0..settings.endpoints.len());
    let mut failures: u32 = 0;
    loop {
        let endpoint = &settings.endpoints[next % settings.endpoints.len()];
        next = next.wrapping_add(1);
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = stream(agent, settings, endpoint, queue, link, shutdown) => outcome,
        };
        let was_up = agent
            .stats
            .control_plane_connected
            .swap(0, Ordering::Relaxed)
            == 1;
        if was_up && !matches!(outcome, Ok(false)) {
            // The stream was up: its loss is logged once, here; the
            // reconnection says how long it lasted.
            *lock(&link.lost) = Some(tokio::time::Instant::now());
            match &outcome {
                Err(e) => {
                    warn!(control_plane = %endpoint, error = %e, "lost the control plane; {}", serving(agent))
                }
                _ => {
                    info!(control_plane = %endpoint, "the control-plane stream ended; reconnecting")
                }
            }
        }
        match outcome {
            Ok(true) => failures = 0,
            Ok(false) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                let reported = was_up || (failures > 1 && !failures.is_multiple_of(10));
                if reported {
                    debug!(control_plane = %endpoint, error = %e, failures, "cannot reach the control plane");
                } else {
                    warn!(control_plane = %endpoint, error = %e, failures, "cannot reach the control plane; {}", serving(agent));
                }
            }
        }
        let delay = backoff(
            settings.backoff_base,
            settings.backoff_cap,
            failures,
            rand::random::<f64>(),
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream. `Ok(true)`: it was up and ended; `Ok(false)`: shutdown;
/// `Err`: it could not be set up or failed.
async fn stream(
    agent: &Agent,
    settings: &ControlSettings,
    endpoint: &str,
    queue: &ReportQueue,
    link: &Link,
    shutdown: &CancellationToken,
) -> Result<bool, String> {
    let mut channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("control-plane address {endpoint:?}: {e}"))?;
    if endpoint.starts_with("https://")
        && let Some(tls) = settings.tls.config(&[endpoint.to_string()])?
    {
        channel = channel
            .tls_config(tls)
            .map_err(|e| format!("control-plane TLS settings: {e}"))?;
    }
    let channel = channel
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {}", shepherd_observe::error_chain(&e)))?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(settings.max_snapshot_bytes)
        .max_encoding_message_size(4 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(16);
    let (version, hash) = agent.running();
    let hello = v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            agent_id: settings.agent_id.clone(),
            hostname: settings.hostname.clone(),
            labels: agent.labels().clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot_version: version,
            snapshot_hash: hash,
        })),
    };
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = &settings.token {
        let token = token.read()?;
        let mut value: tonic::metadata::MetadataValue<_> = format!("Bearer {}", token.0.trim())
            .parse()
            .map_err(|_| "the agent token holds characters not allowed in a header".to_string())?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .connect(request)
        .await
        .map_err(|status| describe(&status))?
        .into_inner();
    match lock(&link.lost).take() {
        Some(since) => info!(
            control_plane = %endpoint,
            version,
            after = %humantime::format_duration(Duration::from_millis(
                u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
            )),
            "reconnected to the control plane"
        ),
        None => info!(control_plane = %endpoint, version, "connected to the control plane"),
    }
    agent
        .stats
        .control_plane_connected
        .store(1, Ordering::Relaxed);
    *lock(&link.last_contact) = SystemTime::now();
    loop {
        let has_reports = !queue.is_empty();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            message = inbound.message() => {
                *lock(&link.last_contact) = SystemTime::now();
                match message {
                    Ok(Some(v1::ControlMessage { kind: Some(v1::control_message::Kind::Snapshot(snapshot)) })) => {
                        let reply = apply(agent, settings, snapshot);
                        if tx.send(reply).await.is_err() {
                            return Ok(true);
                        }
                    }
                    Ok(Some(v1::ControlMessage { kind: Some(v1::control_message::Kind::ReportNow(_)) })) => {
                        agent.registry.stats.urgency.request();
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(true),
                    Err(status) => return Err(describe(&status)),
                }
            }
            slot = tx.reserve(), if has_reports => {
                let Ok(slot) = slot else { return Ok(true) };
                if let Some(report) = queue.pop() {
                    slot.send(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Report(report)) });
                }
            }
            () = queue.ready.notified(), if !has_reports => {}
        }
    }
}

/// A status as a log line; auth failures say what to fix.
fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            error!(
                message = status.message(),
                "the control plane refused this agent; check SHEPHERD_AGENT_TOKEN(_FILE), or its client certificate"
            );
            format!("refused: {}", status.message())
        }
        code => format!("{code:?}: {}", status.message()),
    }
}

/// Applies a snapshot and says how it went.
fn apply(agent: &Agent, settings: &ControlSettings, snapshot: v1::Snapshot) -> v1::AgentMessage {
    use v1::agent_message::Kind;
    let version = snapshot.version;
    let policies = snapshot.policies.len();
    let saved = snapshot.clone();
    match agent.apply_snapshot(snapshot) {
        Ok(()) => {
            agent.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            if let Some(state) = &settings.state
                && let Err(e) = state.save(&saved)
            {
                warn!(error = %e, "cannot save the snapshot; a restart without the control plane would serve an older one");
            }
            // Logged once saved, so the line means both.
            info!(version, policies, "snapshot applied");
            v1::AgentMessage {
                kind: Some(Kind::Ack(v1::Ack { version })),
            }
        }
        Err(reason) => {
            agent.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!(version, %reason, "snapshot refused; the previous one stays in force");
            v1::AgentMessage {
                kind: Some(Kind::Nack(v1::Nack { version, reason })),
            }
        }
    }
}

/// Collects telemetry every interval and queues it as a report; sooner,
/// as an urgent report, when a backend's breaker opens or backends failed
/// `urgent_failures` times since the last report, but never sooner than
/// `urgent_min_interval` after the last one.
async fn report_loop(
    agent: Arc<Agent>,
    queue: Arc<ReportQueue>,
    settings: ControlSettings,
    shutdown: CancellationToken,
) {
    let urgency = agent.registry.stats.urgency.clone();
    urgency.set_threshold(settings.urgent_failures);
    let mut ticker = tokio::time::interval(settings.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut sequence = 0u64;
    let mut start = SystemTime::now();
    let mut last = tokio::time::Instant::now();
    loop {
        let early = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => false,
            () = urgency.raised() => true,
        };
        if early {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(last + settings.urgent_min_interval) => {}
            }
        }
        // What called for it (a tick may come with a call pending: the
        // report answers that too, and the wake-up it left is spent).
        let calls = urgency.take();
        if early && calls == Calls::default() {
            continue;
        }
        last = tokio::time::Instant::now();
        let end = SystemTime::now();
        let policies = agent.registry.stats.collect();
        sequence += 1;
        let report = v1::TelemetryReport {
            sequence,
            start_time: Some(timestamp(start)),
            end_time: Some(timestamp(end)),
            policies,
            reports_lost: 0,
            urgent: calls.urgent,
            requested: calls.requested,
        };
        if early {
            // The regular report follows a whole interval after this one.
            ticker.reset();
        }
        start = end;
        let dropped = queue.push(report, settings.report_queue);
        if dropped > 0 {
            agent
                .stats
                .reports_lost
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// Without a control plane, counters of versions no table uses any more
/// are still folded into the totals now and then (nothing is reported).
pub async fn retire_counters(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                agent.registry.stats.collect();
            }
        }
    }
}

fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Drops faults and shadow once the control plane has been out of reach
/// for `ttl`.
async fn loss_timer(
    agent: Arc<Agent>,
    link: Arc<Link>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker =
        tokio::time::interval(Duration::from_secs(1).min(ttl.max(Duration::from_millis(10))));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if agent.stats.control_plane_connected.load(Ordering::Relaxed) == 1 {
            continue;
        }
        let since = *lock(&link.last_contact);
        if SystemTime::now().duration_since(since).unwrap_or_default() < ttl {
            continue;
        }
        match agent.drop_experiments() {
            Ok(true) => warn!(
                ttl = ?ttl,
                "no control plane for longer than the loss TTL: faults and shadow traffic stopped; weights stay"
            ),
            Ok(false) => {}
            Err(e) => error!(error = %e, "cannot drop faults and shadow traffic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::outcome::Outcome;

    fn report(sequence: u64) -> v1::TelemetryReport {
        v1::TelemetryReport {
            sequence,
            ..Default::default()
        }
    }

    fn reporting_agent() -> Arc<Agent> {
        let tls = crate::upstream::Tls::new(None).unwrap();
        Arc::new(Agent::new(
            crate::runtime::Registry::new(tls),
            crate::proxy::Limits::default(),
            BTreeMap::new(),
        ))
    }

    async fn next_report(queue: &ReportQueue) -> v1::TelemetryReport {
        loop {
            if let Some(r) = queue.pop() {
                return r;
            }
            queue.ready.notified().await;
        }
    }

    fn failures(r: &v1::TelemetryReport) -> u64 {
        r.policies
            .iter()
            .flat_map(|p| &p.backends)
            .filter_map(|b| b.outcomes.as_ref())
            .map(|o| o.server_error)
            .sum()
    }

    /// A backend's failures past the threshold (and a quarter of its
    /// attempts), or its breaker opening, send a report at once, marked
    /// urgent, but never sooner than the minimum interval after the last
    /// one; the regular reports follow a whole interval later.
    #[tokio::test(start_paused = true)]
    async fn failures_send_urgent_reports() {
        let agent = reporting_agent();
        let queue = Arc::new(ReportQueue::default());
        let mut settings = ControlSettings::new(vec![], "a".into());
        settings.report_interval = Duration::from_secs(60);
        settings.urgent_failures = 3;
        settings.urgent_min_interval = Duration::from_millis(250);
        let shutdown = CancellationToken::new();
        let loop_task = tokio::spawn(report_loop(
            agent.clone(),
            queue.clone(),
            settings,
            shutdown.clone(),
        ));
        // Let the loop start and pass its first (immediate) tick.
        tokio::task::yield_now().await;
        let stats = agent.registry.stats.backend("chat", "b", 1);
        let began = tokio::time::Instant::now();
        stats.record(Outcome::ServerError);
        stats.record(Outcome::Ok);
        stats.record(Outcome::ServerError);
        assert!(queue.is_empty(), "two failures are not enough");
        stats.record(Outcome::ServerError);
        let first = next_report(&queue).await;
        assert!(first.urgent);
        assert_eq!(failures(&first), 3);
        // The first urgent report waits out the minimum interval from the
        // loop's start, no more.
        assert!(began.elapsed() <= Duration::from_millis(250));
        // A breaker opening calls for another at once: it waits for the
        // minimum interval after the first.
        let sent = tokio::time::Instant::now();
        stats.record(Outcome::ServerError);
        stats.breaker_opened();
        let second = next_report(&queue).await;
        assert!(second.urgent);
        assert_eq!(failures(&second), 1);
        assert_eq!(sent.elapsed(), Duration::from_millis(250));
        // Failures that are a small share of the backend's attempts (a
        // healthy backend's trickle under heavy traffic) call for nothing:
        // the regular report comes a whole interval later.
        for _ in 0..20 {
            stats.record(Outcome::Ok);
        }
        for _ in 0..4 {
            stats.record(Outcome::ServerError);
        }
        let regular = next_report(&queue).await;
        assert!(!regular.urgent);
        assert_eq!(failures(&regular), 4);
        assert_eq!(
            sent.elapsed(),
            Duration::from_millis(250) + Duration::from_secs(60)
        );
        // The control plane asks for a report (ReportNow): it goes once the
        // minimum interval is up, marked requested, not urgent.
        stats.record(Outcome::Ok);
        agent.registry.stats.urgency.request();
        let requested = next_report(&queue).await;
        assert!(requested.requested && !requested.urgent);
        assert_eq!(
            sent.elapsed(),
            Duration::from_millis(500) + Duration::from_secs(60)
        );
        shutdown.cancel();
        loop_task.await.unwrap();
    }

    /// Overflow drops the oldest reports; every report delivered carries the
    /// count so far.
    #[test]
    fn queue_counts_what_it_drops() {
        let q = ReportQueue::default();
        for i in 1..=5 {
            q.push(report(i), 3);
        }
        let first = q.pop().unwrap();
        assert_eq!(first.sequence, 3);
        assert_eq!(first.reports_lost, 2);
        let next = q.pop().unwrap();
        assert_eq!(
            (next.sequence, next.reports_lost),
            (4, 2),
            "the count is a total"
        );
    }

    /// Backoff grows from the base, stays under the cap, and is jittered.
    #[test]
    fn backoff_is_capped_full_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        assert_eq!(backoff(base, cap, 0, 1.0), base);
        assert_eq!(backoff(base, cap, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(base, cap, 30, 1.0), cap);
        assert_eq!(backoff(base, cap, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(base, cap, 3, 0.5), Duration::from_millis(400));
    }
}
