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

use super::{AnalysisOptions, Observed, Quorum, tick};
use crate::analysis::{Judgement, backend_sums, shadow_figures};
use crate::metrics::Counters;
use crate::policy::StoredPolicy;
use crate::store::fleet::list_all_agents;
use crate::store::rollouts::from_timestamp;
use crate::store::{Leadership, Store, StoreError};

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
        let event_kinds: Vec<v1::RolloutEventKind> =
            write.events.iter().map(v1::RolloutEvent::kind).collect();
        let kinds: Vec<&str> = event_kinds
            .iter()
            .map(|k| k.as_str_name().trim_start_matches("ROLLOUT_EVENT_KIND_"))
            .collect();
        let kinds = kinds.join(",");
        let span = decision_span(&rollout, judgement.as_ref(), &kinds);
        match store
            .write_rollout(write, now)
            .instrument(span.clone())
            .await
        {
            Ok(r) => {
                counters.decided(&r.policy, &event_kinds);
                span.record("shepherd.rollout.state", r.state().as_str_name());
                span.record("shepherd.rollout.weight", r.weight);
                span.record("shepherd.rollout.stage", r.stage);
                info!(
                policy = %r.policy,
                number = r.number,
                state = r.state().as_str_name(),
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
fn decision_span(rollout: &v1::Rollout, judgement: Option<&Judgement>, kinds: &str) -> Span {
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
        span.record("shepherd.rollout.verdict", j.verdict.as_str_name());
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
    r: &v1::Rollout,
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
    let from = from_timestamp(r.stage_set_time.as_ref()).unwrap_or(now);
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
    Ok(Observed {
        quorum,
        candidate: backend_sums(&rows, &r.candidate, version),
        baseline: backend_sums(&rows, &r.baseline, version),
        shadow: shadow_figures(&rows, &shadow_backend, version),
        latest_window,
    })
}
