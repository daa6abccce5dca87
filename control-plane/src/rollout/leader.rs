//! The analysis loop. One replica leads (with Postgres, the holder of an
//! advisory lock; with SQLite, the only replica): each interval it reads the
//! active rollouts, what their agents applied and the telemetry of their
//! current stage, judges them and writes what changed. A replica that loses
//! the lock stops at once; any write it still makes from an older state is
//! refused by the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use shepherd_proto::v1;
use shepherd_proto::validate::labels_match;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, warn};

use super::model::{EventKind, Rollout, State};
use super::{AnalysisOptions, Observed, Quorum, tick};
use shepherd_proto::telemetry::{merge_backend, merge_shadow};

use crate::analysis::{Judgement, Side, Tally, Window};
use crate::metrics::Counters;
use crate::policy::StoredPolicy;
use crate::store::fleet::list_all_agents;
use crate::store::{Leadership, Store, StoreError, TelemetryRow};

/// Shortest time between two judgements when urgent telemetry calls for
/// them.
pub const URGENT_TICK_GAP: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs the analysis loop until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
    options: AnalysisOptions,
    replica_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut leadership: Option<Box<dyn Leadership>> = None;
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Urgent telemetry (from any replica) is judged at once, not at the
    // next tick, but at most once per URGENT_TICK_GAP.
    let mut urgent = store.urgent_telemetry();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            alive = urgent.changed() => {
                if !alive {
                    return;
                }
                if leadership.is_none() {
                    continue;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(last + URGENT_TICK_GAP) => {}
                }
            }
        }
        last = tokio::time::Instant::now();
        match leadership.as_mut() {
            Some(l) => {
                if let Err(why) = l.holds().await {
                    warn!(reason = %why, "lost the analysis lead; another replica (or this one, once the database answers) takes it");
                    store
                        .health()
                        .down(&format!("the analysis lead was lost: {why}"));
                    leadership = None;
                    continue;
                }
            }
            None => {
                let asked = store.try_lead().await;
                store.health().saw(&asked);
                match asked {
                    Ok(Some(l)) => {
                        info!(replica = %options.replica, "leading the rollout analysis");
                        leadership = Some(l);
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        // An unreachable database is logged once by the
                        // health tracker; anything else here.
                        if !e.is_retryable() {
                            warn!(error = %e, "cannot ask for the analysis lead");
                        }
                        continue;
                    }
                }
            }
        }
        let judged = judge_all(store.as_ref(), &counters, &options, replica_timeout).await;
        store.health().saw(&judged);
        if let Err(e) = judged
            && !e.is_retryable()
        {
            warn!(error = %e, "rollout analysis failed this tick; decisions wait");
        }
    }
}

/// One tick over every active rollout.
pub async fn judge_all(
    store: &dyn Store,
    counters: &Counters,
    options: &AnalysisOptions,
    replica_timeout: std::time::Duration,
) -> Result<(), StoreError> {
    let active = store.list_rollouts(None, true, None, 1000).await?;
    if active.is_empty() {
        return Ok(());
    }
    let agents = connected_agents(store, replica_timeout).await?;
    for rollout in active {
        let policy = match store.get_policy(&rollout.policy).await {
            Ok(p) => Some(p),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let now = Utc::now();
        let seen = match &policy {
            Some(p) => observe(store, &rollout, p, &agents, now, options.telemetry_window).await?,
            None => Observed::default(),
        };
        let (write, judgement) = tick(&rollout, policy.as_ref(), &seen, now, options);
        if let Some(j) = &judgement {
            debug!(policy = %rollout.policy, number = rollout.number, verdict = ?j.verdict, reason = %j.reason, "stage judged");
        }
        let Some(write) = write else { continue };
        let event_kinds: Vec<EventKind> = write.events.iter().map(|e| e.kind).collect();
        let kinds: Vec<&str> = event_kinds.iter().map(|k| k.name()).collect();
        let kinds = kinds.join(",");
        let span = decision_span(&rollout, judgement.as_ref(), &kinds);
        match store
            .write_rollout(write, now)
            .instrument(span.clone())
            .await
        {
            Ok(r) => {
                counters.decided(&r.policy, &event_kinds);
                span.record(
                    "shepherd.rollout.state",
                    v1::RolloutState::from(r.phase()).as_str_name(),
                );
                span.record("shepherd.rollout.weight", r.weight);
                span.record("shepherd.rollout.stage", r.stage);
                info!(
                policy = %r.policy,
                number = r.number,
                state = r.phase().name(),
                stage = r.stage,
                weight = r.weight,
                events = %kinds,
                reason = %r.reason,
                "rollout changed"
                );
            }
            // Someone acted first; the next tick starts from their state.
            Err(StoreError::RolloutConflict { .. } | StoreError::RevisionMismatch { .. }) => {
                span.record("shepherd.rollout.outcome", "conflict");
                debug!(policy = %rollout.policy, "rollout moved on meanwhile");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The span of one rollout decision (a change the analysis writes): the
/// rollout, the events, the verdict and its reason.
fn decision_span(rollout: &Rollout, judgement: Option<&Judgement>, kinds: &str) -> Span {
    let span = tracing::info_span!(
        target: "shepherd::trace",
        "rollout decision",
        otel.name = format!("rollout {}#{} {}", rollout.policy, rollout.number, kinds.to_ascii_lowercase()),
        shepherd.policy = %rollout.policy,
        shepherd.rollout.number = rollout.number,
        shepherd.rollout.events = kinds,
        shepherd.rollout.from_stage = rollout.stage,
        shepherd.rollout.from_weight = rollout.weight,
        shepherd.rollout.verdict = tracing::field::Empty,
        shepherd.rollout.reason = tracing::field::Empty,
        shepherd.rollout.state = tracing::field::Empty,
        shepherd.rollout.stage = tracing::field::Empty,
        shepherd.rollout.weight = tracing::field::Empty,
        shepherd.rollout.outcome = tracing::field::Empty,
    );
    if let Some(j) = judgement {
        span.record(
            "shepherd.rollout.verdict",
            v1::Verdict::from(j.verdict).as_str_name(),
        );
        span.record("shepherd.rollout.reason", j.reason.as_str());
    }
    span
}

/// Labels and applied versions of every connected agent.
async fn connected_agents(
    store: &dyn Store,
    replica_timeout: std::time::Duration,
) -> Result<Vec<(BTreeMap<String, String>, u64)>, StoreError> {
    let alive_after =
        Utc::now() - chrono::Duration::from_std(replica_timeout).unwrap_or(chrono::Duration::MAX);
    Ok(list_all_agents(store)
        .await?
        .into_iter()
        .map(|a| a.effective(alive_after))
        .filter(|a| a.connected)
        .map(|a| (a.labels, u64::try_from(a.applied_version).unwrap_or(0)))
        .collect())
}

async fn observe(
    store: &dyn Store,
    r: &Rollout,
    policy: &StoredPolicy,
    agents: &[(BTreeMap<String, String>, u64)],
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<Observed, StoreError> {
    let p = policy.spec.as_proto();
    let selector = p
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    let mut quorum = Quorum::default();
    for (labels, applied) in agents {
        if labels_match(&selector, labels) {
            quorum.selected += 1;
            if *applied >= r.stage_version {
                quorum.acked += 1;
            }
        }
    }
    let from = r.stage_set;
    // Windows start on whole seconds (or the window length): one before the
    // stage was set may hold its first reports.
    let from_ms = from.timestamp_millis() - 60_000;
    let rows = store
        .read_telemetry(&r.policy, from_ms, now.timestamp_millis() + 60_000)
        .await?;
    let version = i64::try_from(r.stage_version).unwrap_or(i64::MAX);
    let shadow_backend = p
        .shadow
        .as_ref()
        .map(|s| s.backend.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| r.candidate.clone());
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(0);
    let latest_window = rows
        .iter()
        .filter(|row| row.snapshot_version >= version)
        .map(|row| row.window_start_ms)
        .max()
        .and_then(|start| DateTime::from_timestamp_millis(start.saturating_add(window_ms)))
        .map(|end| end.min(now));
    let windows = match r.state {
        State::Running {
            clock: Some(clock), ..
        } => stage_windows(&rows, r, version, clock.timestamp_millis(), window_ms),
        _ => Vec::new(),
    };
    Ok(Observed {
        quorum,
        candidate: backend_sums(&rows, &r.candidate, version),
        baseline: backend_sums(&rows, &r.baseline, version),
        windows,
        shadow: shadow_figures(&rows, &shadow_backend, version),
        latest_window,
    })
}

/// The rows of one backend recorded under `since_version` or later.
fn stage_rows<'a>(
    rows: &'a [TelemetryRow],
    backend: &'a str,
    since_version: i64,
) -> impl Iterator<Item = &'a TelemetryRow> {
    rows.iter()
        .filter(move |r| r.backend == backend && r.snapshot_version >= since_version)
}

/// The shadow figures of one policy's backend, summed over the windows
/// recorded under `since_version` or later.
pub fn shadow_figures(
    rows: &[TelemetryRow],
    backend: &str,
    since_version: i64,
) -> v1::ShadowTelemetry {
    let mut sum = v1::ShadowTelemetry::default();
    for r in stage_rows(rows, backend, since_version) {
        if let Some(s) = &r.data.shadow {
            // Rows were checked when they were merged; a bad one adds nothing.
            let _ = merge_shadow(&mut sum, s);
        }
    }
    sum
}

/// Figures summed over a stage's windows: each backend's, from the stage's
/// snapshot version on.
pub fn backend_sums(rows: &[TelemetryRow], backend: &str, since_version: i64) -> Side {
    let mut sum = v1::BackendTelemetry {
        backend: backend.into(),
        ..Default::default()
    };
    for r in stage_rows(rows, backend, since_version) {
        // Rows were checked when they were merged; a bad one adds nothing.
        let _ = merge_backend(&mut sum, &r.data);
    }
    Side::of(&sum)
}

/// Each side's failures and attempts per telemetry window of the stage
/// (rows under `since_version` or later), indexed from the window the
/// stage's clock started in (`clock_ms`): 1 for it and any before it.
pub fn stage_windows(
    rows: &[TelemetryRow],
    r: &Rollout,
    since_version: i64,
    clock_ms: i64,
    window_ms: i64,
) -> Vec<Window> {
    let window_ms = window_ms.max(1);
    // Windows start on whole multiples of their length.
    let first = clock_ms - clock_ms.rem_euclid(window_ms);
    let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
    for row in rows
        .iter()
        .filter(|row| row.snapshot_version >= since_version)
    {
        let candidate = row.backend == r.candidate;
        if !candidate && row.backend != r.baseline {
            continue;
        }
        let since = (row.window_start_ms - first).div_euclid(window_ms);
        let index = u64::try_from(since).unwrap_or(0) + 1;
        let w = windows.entry(index).or_insert(Window {
            index,
            ..Default::default()
        });
        let tally = Tally::of(&row.data.outcomes.unwrap_or_default());
        if candidate {
            w.candidate.add(tally);
        } else {
            w.baseline.add(tally);
        }
    }
    windows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures add up over the windows of the stage's version and later,
    /// per backend.
    #[test]
    fn sums_figures_from_the_stage_version_on() {
        let row = |version: i64, backend: &str, n: u64| TelemetryRow {
            policy: "chat".into(),
            snapshot_version: version,
            backend: backend.into(),
            window_start_ms: 0,
            replica: "r".into(),
            reports: 1,
            data: v1::BackendTelemetry {
                backend: backend.into(),
                outcomes: Some(v1::Outcomes {
                    success: n,
                    server_error: 1,
                    ..Default::default()
                }),
                shadow: Some(v1::ShadowTelemetry {
                    mirrored: n,
                    compared: n,
                    status_mismatch: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let rows = [
            row(4, "b", 100),
            row(5, "b", 10),
            row(6, "b", 20),
            row(6, "a", 7),
        ];
        let s = shadow_figures(&rows, "b", 5);
        assert_eq!((s.compared, s.status_mismatch), (30, 2));
        let b = backend_sums(&rows, "b", 5);
        assert_eq!(b.backend, "b");
        assert_eq!((b.outcomes.success, b.outcomes.server_error), (30, 2));
        let a = backend_sums(&rows, "a", 5);
        assert_eq!((a.outcomes.success, a.outcomes.server_error), (7, 1));
    }

    /// Windows are indexed from the one the stage's clock started in (1,
    /// and any before it), each side summed per window.
    #[test]
    fn windows_are_indexed_from_the_clock() {
        let row = |start_ms: i64, backend: &str, errors: u64| TelemetryRow {
            policy: "chat".into(),
            snapshot_version: 5,
            backend: backend.into(),
            window_start_ms: start_ms,
            replica: "r".into(),
            reports: 1,
            data: v1::BackendTelemetry {
                backend: backend.into(),
                outcomes: Some(v1::Outcomes {
                    success: 10,
                    server_error: errors,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let policy = crate::policy::StoredPolicy {
            spec: crate::policy::PolicySpec::validate(
                serde_json::from_value(serde_json::json!({
                    "name": "chat",
                    "match": {"path_prefix": "/v1/"},
                    "backends": [
                        {"name": "a", "base_url": "http://127.0.0.1:1"},
                        {"name": "b", "base_url": "http://127.0.0.1:2"}
                    ],
                    "traffic": {"baseline": "a", "candidate": "b"},
                    "rollout": {"stages": [{"weight": 10000, "min_bake_time": "1s", "max_stage_time": "9s"}]}
                }))
                .unwrap(),
                t0.into(),
            )
            .unwrap(),
            revision: 1,
            generation: 1,
            create_time: t0,
            update_time: t0,
        };
        let (r, _) =
            super::super::start(&policy, t0, crate::store::Author::operator("operator"), 0)
                .unwrap();
        let clock = 10_500;
        let rows = [
            row(9_000, "b", 1),
            row(10_000, "b", 2),
            row(10_000, "a", 3),
            row(11_000, "b", 4),
            row(11_000, "b", 5),
            row(13_000, "c", 6),
        ];
        let windows = stage_windows(&rows, &r, 5, clock, 1000);
        let summary: Vec<(u64, u64, u64)> = windows
            .iter()
            .map(|w| (w.index, w.candidate.errors, w.baseline.errors))
            .collect();
        assert_eq!(summary, [(1, 3, 3), (2, 9, 0)]);
        assert_eq!(windows[1].candidate.requests, 29);
    }
}
