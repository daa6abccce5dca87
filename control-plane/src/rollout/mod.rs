//! Rollouts: the state machine that moves a policy's traffic stage by stage
//! and takes it back, written as pure functions of a rollout, what was
//! observed and the time ([`tick`], [`command`]) over the domain types of
//! [`model`], and the leader loop that feeds them from the store
//! ([`leader`]). Wire types appear only at the API and store edges
//! ([`convert`]).
//!
//! Every change is a [`RolloutWrite`] made from the state at one event
//! sequence: if the rollout moved on meanwhile (another replica acted, an
//! operator's command landed), the write changes nothing and the next tick
//! starts from the new state. That is what rules out double actions.

pub mod convert;
pub mod leader;
pub mod model;

use std::time::Duration;

use chrono::{DateTime, Utc};
use shepherd_proto::v1;

use crate::analysis::{
    Judgement, Side, StageInput, Statistics, Window, judge_shadow_stage, judge_stage,
};
use crate::policy::StoredPolicy;
use crate::store::{Author, PolicyWrite, RolloutWrite};
use model::{
    CapTrips, Event, EventKind, Figures, OnFailure, Phase, Plan, Rollback, Rollout, State, Verdict,
};

pub use model::{DEFAULT_ACK_TIMEOUT, DEFAULT_QUORUM_PERCENT, DEFAULT_ROLLBACK_STEP};

/// Actor of commands.
pub const OPERATOR: &str = "operator";

/// Why a rollout cannot be started or a command does not apply. Each is a
/// failed precondition: the request is well formed, the rollout or policy
/// is not in a state to take it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The rollout's state does not take this command.
    #[error("rollout {rollout} is {}; {rule}", .state.name())]
    WrongState {
        rollout: String,
        state: Phase,
        /// Which states do, as a sentence.
        rule: &'static str,
    },
    /// A rollout to retry that is not the policy's latest.
    #[error("rollout {rollout} is not the policy's latest ({latest} is)")]
    NotLatest { rollout: String, latest: String },
    #[error("policy {0:?} was deleted")]
    PolicyDeleted(String),
    #[error("policy {0:?} has no rollout spec (field \"rollout\")")]
    NoRolloutSpec(String),
    #[error("policy {0:?} has no candidate (traffic.candidate) to roll out")]
    NoCandidate(String),
}

/// Whether `previous` may be retried, the policy's latest rollout being
/// `latest`: only a rolled-back or aborted rollout, and only the latest.
pub fn check_retry(previous: &Rollout, latest: &Rollout) -> Result<(), CommandError> {
    if !matches!(previous.phase(), Phase::RolledBack | Phase::Aborted) {
        return Err(CommandError::WrongState {
            rollout: previous.name(),
            state: previous.phase(),
            rule: "only a rolled-back or aborted rollout can be retried",
        });
    }
    if latest.number != previous.number {
        return Err(CommandError::NotLatest {
            rollout: previous.name(),
            latest: latest.name(),
        });
    }
    Ok(())
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The agents behind a stage's quorum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quorum {
    /// Connected agents the policy selects.
    pub selected: u32,
    /// Of those, agents that applied the stage's snapshot version.
    pub acked: u32,
}

/// What the leader saw of one rollout's stage.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub quorum: Quorum,
    /// Sums over the stage's windows.
    pub candidate: Side,
    pub baseline: Side,
    /// Each side per telemetry window, oldest first (for the onset test).
    pub windows: Vec<Window>,
    /// Shadow figures of the backend the policy mirrors to.
    pub shadow: v1::ShadowTelemetry,
    /// End of the newest telemetry window under the stage's version (or
    /// now, for the window still open): the latest telemetry can be no
    /// older than this.
    pub latest_window: Option<DateTime<Utc>>,
}

/// Settings of the analysis.
#[derive(Debug, Clone)]
pub struct AnalysisOptions {
    /// How often active rollouts are judged.
    pub interval: Duration,
    /// Selected agents sending no telemetry for this long is an event.
    pub stale_after: Duration,
    /// The replica's name, the actor of its decisions.
    pub replica: String,
    /// Length of the telemetry windows (a window's rows hold reports up to
    /// its end).
    pub telemetry_window: Duration,
}

fn event(r: &Rollout, kind: EventKind, now: DateTime<Utc>, actor: &str, reason: String) -> Event {
    Event {
        sequence: 0,
        time: now,
        kind,
        phase: r.phase(),
        stage: r.stage,
        weight: r.weight,
        verdict: None,
        reason,
        actor: actor.into(),
        figures: None,
    }
}

fn judged_event(
    r: &Rollout,
    kind: EventKind,
    now: DateTime<Utc>,
    actor: &str,
    j: &Judgement,
) -> Event {
    let mut e = event(r, kind, now, actor, j.reason.clone());
    e.verdict = Some(j.verdict);
    e.figures = Some(j.figures.clone());
    e
}

/// A change being assembled.
struct Change {
    rollout: Rollout,
    expected: i64,
    events: Vec<Event>,
    new_stage: bool,
    policy: Option<PolicyWrite>,
}

impl Change {
    fn of(r: &Rollout) -> Self {
        Self {
            rollout: r.clone(),
            expected: r.sequence,
            events: Vec::new(),
            new_stage: false,
            policy: None,
        }
    }

    fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    fn set_state(&mut self, state: State, reason: &str) {
        self.rollout.state = state;
        self.rollout.reason = reason.into();
    }

    /// The clock of the current stage, if it started.
    fn clock(&self) -> Option<DateTime<Utc>> {
        match self.rollout.state {
            State::Running { clock, .. } | State::Paused { clock } => clock,
            _ => None,
        }
    }

    /// Sets a new weight at stage `stage`: a new snapshot version. A
    /// running stage's clock waits for the agents again.
    fn set_stage(&mut self, stage: u32, weight: u32, now: DateTime<Utc>) {
        self.rollout.stage = stage;
        self.rollout.weight = weight;
        self.rollout.stage_set = now;
        if let State::Running { .. } = self.rollout.state {
            self.rollout.state = State::new_stage();
        }
        self.new_stage = true;
    }

    fn end(&mut self, phase: Phase, reason: &str, now: DateTime<Utc>) {
        self.set_state(State::ended(phase, now), reason);
        self.new_stage = true;
    }

    fn done(self) -> RolloutWrite {
        RolloutWrite {
            rollout: self.rollout,
            expected_sequence: self.expected,
            events: self.events,
            new_stage: self.new_stage,
            policy: self.policy,
        }
    }
}

/// A new rollout of `policy` at its first stage (`retry_of` names the one it
/// retries). The store numbers it and sets its stage version.
pub fn start(
    policy: &StoredPolicy,
    now: DateTime<Utc>,
    by: Author<'_>,
    retry_of: i64,
) -> Result<(Rollout, Event), CommandError> {
    let reason = by.reason;
    let p = policy.spec.as_proto();
    let spec = p
        .rollout
        .as_ref()
        .ok_or_else(|| CommandError::NoRolloutSpec(p.name.clone()))?;
    let traffic = p.traffic.clone().unwrap_or_default();
    if traffic.candidate.is_empty() {
        return Err(CommandError::NoCandidate(p.name.clone()));
    }
    let plan = Plan::from(spec);
    let first = plan.stages.first().map_or(0, |s| s.weight);
    let rollout = Rollout {
        policy: p.name.clone(),
        number: 0,
        state: State::new_stage(),
        stage: 0,
        weight: first,
        baseline: traffic.baseline.clone(),
        candidate: traffic.candidate.clone(),
        policy_revision: policy.revision,
        plan,
        stage_version: 0,
        stage_set: now,
        reason: if reason.is_empty() {
            "started".into()
        } else {
            reason.into()
        },
        sequence: 0,
        created: None,
        updated: None,
        retry_of,
        spend_capped: CapTrips::default(),
    };
    let why = format!(
        "{} from {} to {} at stage 1 ({}){}",
        if retry_of > 0 {
            "retrying rollout"
        } else {
            "rolling out"
        },
        traffic.baseline,
        traffic.candidate,
        weight_text(first),
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        }
    );
    let e = event(&rollout, EventKind::Started, now, by.actor, why);
    Ok((rollout, e))
}

/// A weight in basis points as a percentage, or "shadow only" for 0.
pub fn weight_text(weight: u32) -> String {
    if weight == 0 {
        "shadow only".into()
    } else {
        format!("{}%", f64::from(weight) / 100.0)
    }
}

/// The policy revision that makes a rollout's end the policy's own state:
/// after a rollback the candidate's weight is 0; after success the candidate
/// is the baseline, with no candidate. A shadow that mirrored to the
/// candidate is kept, following the candidate (so it rests until the next
/// one is set): the rollout spec stays for the next migration and its
/// shadow-only stages still have their shadow. Returns the write and, when
/// the candidate could not be made the baseline, why.
fn final_policy(
    policy: &StoredPolicy,
    r: &Rollout,
    succeeded: bool,
    actor: &str,
    reason: &str,
) -> (Option<PolicyWrite>, Option<String>) {
    let write = |spec| PolicyWrite {
        spec,
        expected_revision: policy.revision,
        actor: actor.to_string(),
        reason: reason.to_string(),
    };
    if !succeeded {
        let weight = policy
            .spec
            .as_proto()
            .traffic
            .as_ref()
            .map_or(0, |t| t.candidate_weight);
        if weight == 0 {
            return (None, None);
        }
        let revised = policy.spec.revise(|p| {
            if let Some(t) = p.traffic.as_mut() {
                t.candidate_weight = 0;
            }
        });
        return match revised {
            Ok(spec) => (Some(write(spec)), None),
            Err(e) => {
                tracing::error!(policy = %r.policy, error = %e, "cannot write the rolled-back weight");
                (None, Some(e.to_string()))
            }
        };
    }
    let promoted = policy.spec.revise(|p| {
        if let Some(t) = p.traffic.as_mut() {
            t.baseline = r.candidate.clone();
            t.candidate.clear();
            t.candidate_weight = 0;
        }
        if let Some(s) = p.shadow.as_mut()
            && s.backend == r.candidate
        {
            s.backend.clear();
        }
    });
    match promoted {
        Ok(spec) => (Some(write(spec)), None),
        // Keep everything on the candidate if the swap is refused.
        Err(e) => {
            tracing::error!(policy = %r.policy, error = %e, "cannot make the candidate the baseline; keeping it at 100%");
            let kept = policy.spec.revise(|p| {
                if let Some(t) = p.traffic.as_mut() {
                    t.candidate_weight = 10_000;
                }
            });
            (kept.ok().map(write), Some(e.to_string()))
        }
    }
}

/// The policy the rollout still applies to, or why there is none: it was
/// deleted, or its baseline or candidate changed.
fn current_policy<'a>(
    policy: Option<&'a StoredPolicy>,
    r: &Rollout,
) -> Result<&'a StoredPolicy, String> {
    let Some(p) = policy else {
        return Err(format!("policy {:?} was deleted", r.policy));
    };
    let t = p.spec.as_proto().traffic.clone().unwrap_or_default();
    if t.baseline != r.baseline || t.candidate != r.candidate {
        return Err(format!(
            "the policy's traffic changed under the rollout: baseline {:?} and candidate {:?} are now {:?} and {:?}",
            r.baseline, r.candidate, t.baseline, t.candidate
        ));
    }
    Ok(p)
}

/// Moves a rollout to the next stage, or to success after the last.
fn promote(
    c: &mut Change,
    policy: &StoredPolicy,
    now: DateTime<Utc>,
    actor: &str,
    judgement: Option<&Judgement>,
    reason: &str,
    full: bool,
) {
    let stages = c.rollout.plan.stages.len();
    let next = c.rollout.stage as usize + 1;
    let judged = |mut e: Event| {
        if let Some(j) = judgement {
            e.verdict = Some(j.verdict);
            e.figures = Some(j.figures.clone());
        }
        e
    };
    if full || next >= stages {
        c.rollout.weight = 10_000;
        c.rollout.stage = u32::try_from(stages.saturating_sub(1)).unwrap_or(0);
        let (write, refused) = final_policy(
            policy,
            &c.rollout,
            true,
            actor,
            &format!("rollout {} succeeded", c.rollout.number),
        );
        let why = match refused {
            None => format!("{} is the baseline now: {reason}", c.rollout.candidate),
            Some(e) => format!(
                "{} takes all traffic but could not be made the baseline ({e}): {reason}",
                c.rollout.candidate
            ),
        };
        c.end(Phase::Succeeded, &why, now);
        c.policy = write;
        let e = event(&c.rollout, EventKind::Succeeded, now, actor, why);
        c.push(judged(e));
        return;
    }
    let weight = c.rollout.plan.stages[next].weight;
    c.set_state(State::new_stage(), reason);
    c.set_stage(u32::try_from(next).unwrap_or(0), weight, now);
    let why = format!(
        "stage {} of {stages} at {}: {reason}",
        next + 1,
        weight_text(weight)
    );
    let e = event(&c.rollout, EventKind::Promoted, now, actor, why);
    c.push(judged(e));
}

/// Ends a rollout at weight 0, as `phase` (rolled back or aborted).
fn roll_back_now(
    c: &mut Change,
    policy: Option<&StoredPolicy>,
    now: DateTime<Utc>,
    actor: &str,
    phase: Phase,
    reason: &str,
) {
    c.rollout.weight = 0;
    c.end(phase, reason, now);
    // A policy that is gone (or no longer the same) gets no revision.
    c.policy = policy.and_then(|policy| {
        final_policy(
            policy,
            &c.rollout,
            false,
            actor,
            &format!("rollout {} ended: {reason}", c.rollout.number),
        )
        .0
    });
    let kind = if phase == Phase::Aborted {
        EventKind::Aborted
    } else {
        EventKind::RolledBack
    };
    c.push(event(&c.rollout, kind, now, actor, reason.into()));
}

/// One step down of a gradual rollback: to the previous stage's weight, or
/// to 0 (the end) from the first stage.
fn step_down(c: &mut Change, policy: &StoredPolicy, now: DateTime<Utc>, actor: &str) {
    let plan = &c.rollout.plan;
    let previous = (c.rollout.stage as usize)
        .checked_sub(1)
        .and_then(|i| plan.stages.get(i).map(|st| (i, st.weight)))
        .filter(|(_, w)| *w > 0 && *w < c.rollout.weight);
    let step = match plan.rollback {
        Rollback::Gradual { step } => step,
        Rollback::Immediate => DEFAULT_ROLLBACK_STEP,
    };
    match previous {
        Some((i, weight)) => {
            c.rollout.state = State::RollingBack {
                next_step: now + chrono_dur(step),
            };
            c.set_stage(u32::try_from(i).unwrap_or(0), weight, now);
            c.push(event(
                &c.rollout,
                EventKind::RollbackStep,
                now,
                actor,
                format!("rolling back: down to {}", weight_text(weight)),
            ));
        }
        None => {
            let reason = c.rollout.reason.clone();
            roll_back_now(c, Some(policy), now, actor, Phase::RolledBack, &reason);
        }
    }
}

/// What a failed gate does, per the plan.
fn on_failure(
    c: &mut Change,
    policy: &StoredPolicy,
    now: DateTime<Utc>,
    actor: &str,
    j: &Judgement,
) {
    let reason = format!("gate failed at stage {}: {}", c.rollout.stage + 1, j.reason);
    if c.rollout.plan.on_failure == OnFailure::Pause {
        let clock = c.clock();
        c.set_state(State::Paused { clock }, &reason);
        c.push(judged_event(&c.rollout, EventKind::Failed, now, actor, j));
        return;
    }
    c.push(judged_event(&c.rollout, EventKind::Failed, now, actor, j));
    if let Rollback::Gradual { .. } = c.rollout.plan.rollback {
        c.set_state(State::RollingBack { next_step: now }, &reason);
        step_down(c, policy, now, actor);
    } else {
        roll_back_now(c, Some(policy), now, actor, Phase::RolledBack, &reason);
    }
}

/// Starts a stage's clock once a quorum of the selected agents applied its
/// weight, or its wait for them timed out. Returns the change, if any.
fn start_clock(
    mut c: Change,
    seen: &Observed,
    now: DateTime<Utc>,
    actor: &str,
) -> Option<RolloutWrite> {
    let r = &c.rollout;
    let q = seen.quorum;
    let reached = q.selected > 0
        && f64::from(q.acked) * 100.0 >= r.plan.quorum_percent * f64::from(q.selected);
    let timeout = r.plan.ack_timeout;
    let timed_out = now - r.stage_set >= chrono_dur(timeout);
    if !reached && !timed_out {
        return None;
    }
    let why = if reached {
        format!(
            "{} of {} selected agents applied snapshot version {}",
            q.acked, q.selected, r.stage_version
        )
    } else {
        format!(
            "quorum not reached in {}: starting with the {} of {} selected agents that applied snapshot version {}",
            humantime::format_duration(timeout),
            q.acked,
            q.selected,
            r.stage_version
        )
    };
    if let State::Running { clock, .. } = &mut c.rollout.state {
        *clock = Some(now);
    }
    let mut e = event(&c.rollout, EventKind::ClockStarted, now, actor, why);
    e.figures = Some(Figures {
        acked_agents: q.acked,
        selected_agents: q.selected,
        ..Default::default()
    });
    c.push(e);
    Some(c.done())
}

/// Judges a rollout's current stage from what was observed. Returns the
/// change to write, if any.
pub fn tick(
    r: &Rollout,
    policy: Option<&StoredPolicy>,
    seen: &Observed,
    now: DateTime<Utc>,
    options: &AnalysisOptions,
) -> (Option<RolloutWrite>, Option<Judgement>) {
    let actor = options.replica.as_str();
    let mut c = Change::of(r);
    let policy = match current_policy(policy, r) {
        Ok(p) => p,
        Err(why) => {
            roll_back_now(&mut c, None, now, actor, Phase::Aborted, &why);
            return (Some(c.done()), None);
        }
    };
    let (clock, stale) = match r.state {
        State::RollingBack { next_step } => {
            if now >= next_step {
                step_down(&mut c, policy, now, actor);
                return (Some(c.done()), None);
            }
            return (None, None);
        }
        State::Running { clock: None, .. } => return (start_clock(c, seen, now, actor), None),
        State::Running {
            clock: Some(clock),
            stale,
        } => (clock, stale),
        _ => return (None, None),
    };
    let Some(stage) = r.current_stage() else {
        return (None, None);
    };
    let elapsed = (now - clock).to_std().unwrap_or_default();
    let gates = &r.plan.gates;
    let mut j = if stage.weight == 0 {
        let shadow_spend = seen.candidate.cost.map_or(0, |c| c.shadow.picos);
        judge_shadow_stage(stage, gates, elapsed, &seen.shadow, shadow_spend)
    } else {
        judge_stage(&StageInput {
            stage,
            gates,
            elapsed,
            candidate: &seen.candidate,
            baseline: &seen.baseline,
            windows: &seen.windows,
            rule: r.plan.pass_rule,
            statistics: Statistics::Sequential,
            currency: shepherd_proto::cost::currency_of(policy.spec.as_proto()),
        })
    };
    j.figures.acked_agents = seen.quorum.acked;
    j.figures.selected_agents = seen.quorum.selected;
    match j.verdict {
        Verdict::Fail => {
            on_failure(&mut c, policy, now, actor, &j);
            (Some(c.done()), Some(j))
        }
        Verdict::Pass => {
            let reason = j.reason.clone();
            promote(&mut c, policy, now, actor, Some(&j), &reason, false);
            (Some(c.done()), Some(j))
        }
        _ if stage.max_time.is_some_and(|max| elapsed >= max) => {
            j.verdict = Verdict::Inconclusive;
            let why = format!(
                "stage {} reached its time limit without a decision: {}",
                r.stage + 1,
                j.reason
            );
            j.reason = why.clone();
            c.set_state(State::Paused { clock: Some(clock) }, &why);
            c.push(judged_event(
                &c.rollout,
                EventKind::Inconclusive,
                now,
                actor,
                &j,
            ));
            (Some(c.done()), Some(j))
        }
        _ => {
            let stale_for = now - seen.latest_window.unwrap_or(clock);
            let now_stale =
                seen.quorum.selected > 0 && stale_for >= chrono_dur(options.stale_after);
            let trips = seen.candidate.spend_cap_trips;
            let told = match r.spend_capped {
                CapTrips {
                    stage_version,
                    trips,
                } if stage_version == r.stage_version => trips,
                _ => 0,
            };
            if now_stale == stale && trips <= told {
                return (None, Some(j));
            }
            if trips > told {
                c.rollout.spend_capped = CapTrips {
                    stage_version: r.stage_version,
                    trips,
                };
                let why = format!(
                    "an hourly spend cap on the candidate was reached {} more time(s) at the agents ({trips} in this stage): there its share goes to the baseline, or its mirroring stops, until the hour ends",
                    trips - told
                );
                c.push(event(&c.rollout, EventKind::SpendCapped, now, actor, why));
            }
            if now_stale != stale {
                c.rollout.state = State::Running {
                    clock: Some(clock),
                    stale: now_stale,
                };
                let (kind, why) = if now_stale {
                    (
                        EventKind::TelemetryStale,
                        format!(
                            "no telemetry for {}s from the {} selected agents; decisions wait",
                            stale_for.num_seconds(),
                            seen.quorum.selected
                        ),
                    )
                } else {
                    (
                        EventKind::TelemetryResumed,
                        "telemetry arrives again".to_string(),
                    )
                };
                c.push(event(&c.rollout, kind, now, actor, why));
            }
            (Some(c.done()), Some(j))
        }
    }
}

/// An operator's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote { full: bool },
    Abort,
}

/// Applies a command to a rollout, or says why it does not apply.
pub fn command(
    r: &Rollout,
    policy: Option<&StoredPolicy>,
    cmd: &Command,
    by: Author<'_>,
    now: DateTime<Utc>,
) -> Result<RolloutWrite, CommandError> {
    let reason = by.reason;
    let actor = by.actor;
    let phase = r.phase();
    let not = |rule: &'static str| {
        Err(CommandError::WrongState {
            rollout: r.name(),
            state: phase,
            rule,
        })
    };
    let why = |default: &str| {
        if reason.is_empty() {
            default.to_string()
        } else {
            format!("{default}: {reason}")
        }
    };
    let mut c = Change::of(r);
    match cmd {
        Command::Pause => {
            let State::Running { clock, .. } = r.state else {
                return not("only a running rollout can be paused");
            };
            let why = why("paused by an operator");
            c.set_state(State::Paused { clock }, &why);
            c.push(event(&c.rollout, EventKind::Paused, now, actor, why));
        }
        Command::Resume => {
            if phase != Phase::Paused {
                return not("only a paused rollout can be resumed");
            }
            let why = why("resumed by an operator; the stage starts over");
            c.set_state(State::new_stage(), &why);
            c.set_stage(r.stage, r.weight, now);
            c.push(event(&c.rollout, EventKind::Resumed, now, actor, why));
        }
        Command::Promote { full } => {
            if !matches!(phase, Phase::Running | Phase::Paused) {
                return not("only a running or paused rollout can be promoted");
            }
            let Some(policy) = policy else {
                return Err(CommandError::PolicyDeleted(r.policy.clone()));
            };
            let text = if *full {
                why("promoted all the way by an operator")
            } else {
                why("promoted by an operator")
            };
            promote(&mut c, policy, now, actor, None, &text, *full);
        }
        Command::Abort => {
            if !phase.is_active() {
                return not("only an active rollout can be aborted");
            }
            let why = why("aborted by an operator");
            roll_back_now(&mut c, policy, now, actor, Phase::Aborted, &why);
        }
    }
    Ok(c.done())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySpec;

    /// A state of each phase, with its times at `t`.
    fn state_of(phase: Phase, t: DateTime<Utc>) -> State {
        match phase {
            Phase::Running => State::Running {
                clock: Some(t),
                stale: false,
            },
            Phase::Paused => State::Paused { clock: Some(t) },
            Phase::RollingBack => State::RollingBack { next_step: t },
            ended => State::ended(ended, t),
        }
    }

    /// The policies of every example file in deploy/ (one policy or a list).
    fn example_policies() -> Vec<(String, v1::Policy)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut out = Vec::new();
        for dir in ["examples", "compose"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.display().to_string();
                if text.trim_start().starts_with('[') {
                    let list: Vec<v1::Policy> = serde_json::from_str(&text).unwrap();
                    out.extend(list.into_iter().map(|p| (name.clone(), p)));
                } else {
                    out.push((name, serde_json::from_str(&text).unwrap()));
                }
            }
        }
        out
    }

    fn stored(p: v1::Policy, now: DateTime<Utc>) -> StoredPolicy {
        StoredPolicy {
            spec: PolicySpec::validate(p, now.into()).unwrap(),
            revision: 3,
            generation: 7,
            create_time: now,
            update_time: now,
        }
    }

    /// An example policy that can be rolled out (a candidate and stages).
    fn rollable(now: DateTime<Utc>) -> StoredPolicy {
        let (_, p) = example_policies()
            .into_iter()
            .find(|(_, p)| {
                p.rollout.as_ref().is_some_and(|r| r.stages.len() >= 2)
                    && p.traffic.as_ref().is_some_and(|t| !t.candidate.is_empty())
            })
            .expect("an example policy with a rollout");
        stored(p, now)
    }

    /// Every command in every state: what it leads to, or the rule that
    /// refuses it, named in the error.
    #[test]
    fn commands_in_every_state() {
        use Phase as S;
        let now = Utc::now();
        let policy = rollable(now);
        let (started, _) = start(&policy, now, Author::operator(OPERATOR), 0).unwrap();
        let stages = started.plan.stages.len();
        let in_state = |state: S| {
            let mut r = started.clone();
            r.number = 4;
            r.state = state_of(state, now);
            r
        };
        let promote = Command::Promote { full: false };
        let full = Command::Promote { full: true };
        // (state, command, the state it leads to or the refusal's rule)
        let table: [(S, &Command, Result<S, &str>); 16] = [
            (S::Running, &Command::Pause, Ok(S::Paused)),
            (
                S::Paused,
                &Command::Pause,
                Err("only a running rollout can be paused"),
            ),
            (S::Paused, &Command::Resume, Ok(S::Running)),
            (
                S::Running,
                &Command::Resume,
                Err("only a paused rollout can be resumed"),
            ),
            (S::Running, &promote, Ok(S::Running)),
            (S::Paused, &promote, Ok(S::Running)),
            (S::Running, &full, Ok(S::Succeeded)),
            (
                S::RollingBack,
                &promote,
                Err("only a running or paused rollout can be promoted"),
            ),
            (
                S::Succeeded,
                &full,
                Err("only a running or paused rollout can be promoted"),
            ),
            (S::Running, &Command::Abort, Ok(S::Aborted)),
            (S::Paused, &Command::Abort, Ok(S::Aborted)),
            (S::RollingBack, &Command::Abort, Ok(S::Aborted)),
            (
                S::Succeeded,
                &Command::Abort,
                Err("only an active rollout can be aborted"),
            ),
            (
                S::RolledBack,
                &Command::Abort,
                Err("only an active rollout can be aborted"),
            ),
            (
                S::Aborted,
                &Command::Pause,
                Err("only a running rollout can be paused"),
            ),
            (
                S::RolledBack,
                &Command::Resume,
                Err("only a paused rollout can be resumed"),
            ),
        ];
        for (state, cmd, want) in table {
            let r = in_state(state);
            let got = command(
                &r,
                Some(&policy),
                cmd,
                Author {
                    actor: OPERATOR,
                    reason: "why",
                },
                now,
            );
            match (want, got) {
                (Ok(next), Ok(write)) => {
                    assert_eq!(write.rollout.phase(), next, "{state:?} {cmd:?}");
                    assert_eq!(write.expected_sequence, r.sequence);
                    assert_eq!(write.events.len(), 1, "{state:?} {cmd:?}");
                    assert!(
                        write.events[0].reason.ends_with(": why"),
                        "{:?}",
                        write.events[0]
                    );
                }
                (Err(rule), Err(e)) => {
                    assert_eq!(
                        e,
                        CommandError::WrongState {
                            rollout: "{}#4".replace("{}", &r.policy),
                            state,
                            rule,
                        }
                    );
                    assert!(e.to_string().contains(state.name()), "{e}");
                }
                (want, got) => panic!("{state:?} {cmd:?}: wanted {want:?}, got {got:?}"),
            }
        }
        // Promote moves one stage; resume starts the stage over.
        let next = command(
            &in_state(S::Running),
            Some(&policy),
            &promote,
            Author::operator(OPERATOR),
            now,
        )
        .unwrap();
        assert_eq!(
            next.rollout.stage,
            1.min(u32::try_from(stages - 1).unwrap())
        );
        assert!(next.new_stage);
        assert_eq!(next.rollout.state, State::new_stage());
        // Promote needs the policy; abort does not.
        assert_eq!(
            command(
                &in_state(S::Running),
                None,
                &promote,
                Author::operator(OPERATOR),
                now
            )
            .unwrap_err(),
            CommandError::PolicyDeleted(started.policy.clone())
        );
        let aborted = command(
            &in_state(S::Running),
            None,
            &Command::Abort,
            Author::operator(OPERATOR),
            now,
        )
        .unwrap();
        assert_eq!(aborted.rollout.state, State::Aborted { ended: now });
        assert!(aborted.policy.is_none(), "no revision of a deleted policy");
    }

    /// A policy of three stages (10%, 50%, 100%; 10 s bake, 20 requests,
    /// 60 s at most) with a 5% error ceiling, and `rollout` set as given.
    fn staged(now: DateTime<Utc>, rollout: serde_json::Value) -> StoredPolicy {
        let mut spec = serde_json::json!({
            "stages": [
                {"weight": 1000, "min_bake_time": "10s", "min_requests": 20, "max_stage_time": "60s"},
                {"weight": 5000, "min_bake_time": "10s", "min_requests": 20, "max_stage_time": "60s"},
                {"weight": 10000, "min_bake_time": "10s", "min_requests": 20, "max_stage_time": "60s"}
            ],
            "gates": {"max_error_rate_percent": 5.0, "max_client_error_excess_percent": 100.0},
            "ack_timeout": "30s"
        });
        if let (Some(spec), Some(more)) = (spec.as_object_mut(), rollout.as_object()) {
            spec.extend(more.clone());
        }
        let p: v1::Policy = serde_json::from_value(serde_json::json!({
            "name": "chat",
            "match": {"path_prefix": "/v1/"},
            "backends": [
                {"name": "a", "base_url": "http://127.0.0.1:1"},
                {"name": "b", "base_url": "http://127.0.0.1:2"}
            ],
            "traffic": {"baseline": "a", "candidate": "b", "candidate_weight": 0},
            "rollout": spec
        }))
        .unwrap();
        stored(p, now)
    }

    fn options() -> AnalysisOptions {
        AnalysisOptions {
            interval: Duration::from_millis(250),
            stale_after: Duration::from_secs(10),
            replica: "r1".into(),
            telemetry_window: Duration::from_secs(1),
        }
    }

    /// What the leader saw: `acked` of 2 agents, the candidate's and the
    /// baseline's figures, and the end of the newest telemetry window.
    fn seen(
        acked: u32,
        candidate: (u64, u64),
        baseline: (u64, u64),
        latest: DateTime<Utc>,
    ) -> Observed {
        Observed {
            quorum: Quorum { selected: 2, acked },
            candidate: Side::with_server_errors(candidate.0, candidate.1),
            baseline: Side::with_server_errors(baseline.0, baseline.1),
            windows: Vec::new(),
            shadow: v1::ShadowTelemetry::default(),
            latest_window: Some(latest),
        }
    }

    fn secs(t: DateTime<Utc>, s: i64) -> DateTime<Utc> {
        t + chrono::Duration::seconds(s)
    }

    fn kinds(w: &RolloutWrite) -> Vec<EventKind> {
        w.events.iter().map(|e| e.kind).collect()
    }

    /// Every transition of `tick`, table-driven, with the time given (the
    /// judge is a pure function of the rollout, what was seen and the
    /// time): the stage's clock waits for its quorum or its timeout; a
    /// stage waits, passes (to the next stage, or to success at the last),
    /// fails (rolling back, pausing, or stepping down gradually) or is
    /// inconclusive; telemetry going stale and coming back are events, said
    /// once, and so are the candidate's hourly spend cap trips, per stage
    /// version; a deleted policy aborts the rollout; a paused one is left
    /// alone.
    #[test]
    fn tick_transitions() {
        use EventKind as K;
        let t0 = Utc::now();
        let at = |s: i64| secs(t0, s);
        let o = options();
        let plain = staged(t0, serde_json::json!({}));
        let pausing = staged(
            t0,
            serde_json::json!({"on_failure": "FAILURE_ACTION_PAUSE"}),
        );
        let gradual = staged(
            t0,
            serde_json::json!({"rollback_mode": "ROLLBACK_MODE_GRADUAL", "rollback_step_time": "5s"}),
        );
        let (mut started, _) = start(&plain, t0, Author::operator(OPERATOR), 0).unwrap();
        started.number = 1;
        started.sequence = 1;
        let with = |policy: &StoredPolicy, stage: u32, weight: u32, state: State| Rollout {
            plan: Plan::from(policy.spec.as_proto().rollout.as_ref().unwrap()),
            stage,
            weight,
            state,
            ..started.clone()
        };
        let running = |stale| State::Running {
            clock: Some(t0),
            stale,
        };
        let clocked = |t| State::Running {
            clock: Some(t),
            stale: false,
        };
        // What the leader saw: (acked agents of 2, candidate and baseline
        // (requests, errors), the newest telemetry window's end).
        let healthy = |s| seen(2, (100, 0), (900, 0), at(s));
        let failing = seen(2, (100, 50), (900, 0), at(3));
        let few = |s| seen(2, (5, 0), (900, 0), at(s));
        let waiting = seen(1, (0, 0), (0, 0), t0);
        let capped = |trips| {
            let mut s = few(5);
            s.candidate.spend_cap_trips = trips;
            s
        };

        struct Row<'a> {
            name: &'a str,
            rollout: Rollout,
            policy: Option<&'a StoredPolicy>,
            seen: Observed,
            now: DateTime<Utc>,
            /// The verdict, if the stage was judged.
            verdict: Option<Verdict>,
            /// The events written and the state, stage and weight after
            /// them; `None`: nothing written.
            wrote: Option<(Vec<EventKind>, State, u32, u32)>,
        }
        let table = [
            Row {
                name: "the clock waits for the quorum",
                rollout: started.clone(),
                policy: Some(&plain),
                seen: waiting.clone(),
                now: at(1),
                verdict: None,
                wrote: None,
            },
            Row {
                name: "the clock starts with the quorum",
                rollout: started.clone(),
                policy: Some(&plain),
                seen: healthy(0),
                now: at(2),
                verdict: None,
                wrote: Some((vec![K::ClockStarted], clocked(at(2)), 0, 1000)),
            },
            Row {
                name: "the clock starts at the ACK timeout without it",
                rollout: started.clone(),
                policy: Some(&plain),
                seen: waiting,
                now: at(30),
                verdict: None,
                wrote: Some((vec![K::ClockStarted], clocked(at(30)), 0, 1000)),
            },
            Row {
                name: "WAIT while baking",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: healthy(5),
                now: at(5),
                verdict: Some(Verdict::Wait),
                wrote: None,
            },
            Row {
                name: "PASS: the next stage",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: healthy(11),
                now: at(11),
                verdict: Some(Verdict::Pass),
                wrote: Some((vec![K::Promoted], State::new_stage(), 1, 5000)),
            },
            Row {
                name: "PASS at the last stage: success",
                rollout: with(&plain, 2, 10_000, running(false)),
                policy: Some(&plain),
                seen: healthy(11),
                now: at(11),
                verdict: Some(Verdict::Pass),
                wrote: Some((
                    vec![K::Succeeded],
                    State::Succeeded { ended: at(11) },
                    2,
                    10_000,
                )),
            },
            Row {
                name: "FAIL rolls back",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: failing.clone(),
                now: at(3),
                verdict: Some(Verdict::Fail),
                wrote: Some((
                    vec![K::Failed, K::RolledBack],
                    State::RolledBack { ended: at(3) },
                    0,
                    0,
                )),
            },
            Row {
                name: "FAIL pauses when the plan says so",
                rollout: with(&pausing, 0, 1000, running(false)),
                policy: Some(&pausing),
                seen: failing.clone(),
                now: at(3),
                verdict: Some(Verdict::Fail),
                wrote: Some((vec![K::Failed], State::Paused { clock: Some(t0) }, 0, 1000)),
            },
            Row {
                name: "FAIL steps down a gradual rollback",
                rollout: with(&gradual, 1, 5000, running(false)),
                policy: Some(&gradual),
                seen: failing.clone(),
                now: at(3),
                verdict: Some(Verdict::Fail),
                wrote: Some((
                    vec![K::Failed, K::RollbackStep],
                    State::RollingBack { next_step: at(8) },
                    0,
                    1000,
                )),
            },
            Row {
                name: "the next step waits for its time",
                rollout: with(&gradual, 0, 1000, State::RollingBack { next_step: at(8) }),
                policy: Some(&gradual),
                seen: failing.clone(),
                now: at(7),
                verdict: None,
                wrote: None,
            },
            Row {
                name: "the last step ends at 0",
                rollout: with(&gradual, 0, 1000, State::RollingBack { next_step: at(8) }),
                policy: Some(&gradual),
                seen: failing.clone(),
                now: at(8),
                verdict: None,
                wrote: Some((
                    vec![K::RolledBack],
                    State::RolledBack { ended: at(8) },
                    0,
                    0,
                )),
            },
            Row {
                name: "WAIT with too few requests before the time limit",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: few(59),
                now: at(59),
                verdict: Some(Verdict::Wait),
                wrote: None,
            },
            Row {
                name: "INCONCLUSIVE at the time limit: paused",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: few(60),
                now: at(60),
                verdict: Some(Verdict::Inconclusive),
                wrote: Some((
                    vec![K::Inconclusive],
                    State::Paused { clock: Some(t0) },
                    0,
                    1000,
                )),
            },
            Row {
                name: "telemetry 10 s old is stale",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: few(20),
                now: at(30),
                verdict: Some(Verdict::Wait),
                wrote: Some((vec![K::TelemetryStale], running(true), 0, 1000)),
            },
            Row {
                name: "stale telemetry is said once",
                rollout: with(&plain, 0, 1000, running(true)),
                policy: Some(&plain),
                seen: few(20),
                now: at(31),
                verdict: Some(Verdict::Wait),
                wrote: None,
            },
            Row {
                name: "fresh telemetry again",
                rollout: with(&plain, 0, 1000, running(true)),
                policy: Some(&plain),
                seen: few(31),
                now: at(31),
                verdict: Some(Verdict::Wait),
                wrote: Some((vec![K::TelemetryResumed], running(false), 0, 1000)),
            },
            Row {
                name: "a spend cap reached at the agents is an event",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: Some(&plain),
                seen: capped(2),
                now: at(5),
                verdict: Some(Verdict::Wait),
                wrote: Some((vec![K::SpendCapped], running(false), 0, 1000)),
            },
            Row {
                name: "spend cap trips already told are not told again",
                rollout: Rollout {
                    spend_capped: CapTrips {
                        stage_version: started.stage_version,
                        trips: 2,
                    },
                    ..with(&plain, 0, 1000, running(false))
                },
                policy: Some(&plain),
                seen: capped(2),
                now: at(5),
                verdict: Some(Verdict::Wait),
                wrote: None,
            },
            Row {
                name: "trips told under another stage version count afresh",
                rollout: Rollout {
                    spend_capped: CapTrips {
                        stage_version: started.stage_version + 1,
                        trips: 2,
                    },
                    ..with(&plain, 0, 1000, running(false))
                },
                policy: Some(&plain),
                seen: capped(1),
                now: at(5),
                verdict: Some(Verdict::Wait),
                wrote: Some((vec![K::SpendCapped], running(false), 0, 1000)),
            },
            Row {
                name: "a deleted policy aborts the rollout",
                rollout: with(&plain, 0, 1000, running(false)),
                policy: None,
                seen: healthy(3),
                now: at(3),
                verdict: None,
                wrote: Some((vec![K::Aborted], State::Aborted { ended: at(3) }, 0, 0)),
            },
            Row {
                name: "a paused rollout is left alone",
                rollout: with(&plain, 0, 1000, State::Paused { clock: Some(t0) }),
                policy: Some(&plain),
                seen: failing,
                now: at(3),
                verdict: None,
                wrote: None,
            },
        ];
        for row in table {
            let (w, j) = tick(&row.rollout, row.policy, &row.seen, row.now, &o);
            assert_eq!(j.map(|j| j.verdict), row.verdict, "{}", row.name);
            let got = w
                .as_ref()
                .map(|w| (kinds(w), w.rollout.state, w.rollout.stage, w.rollout.weight));
            assert_eq!(got, row.wrote, "{}", row.name);
            if let Some(w) = w {
                assert_eq!(w.expected_sequence, row.rollout.sequence, "{}", row.name);
                let moved = w.rollout.weight != row.rollout.weight
                    || w.rollout.stage != row.rollout.stage
                    || !w.rollout.phase().is_active();
                assert_eq!(w.new_stage, moved, "{}: a new snapshot", row.name);
            }
        }

        // The cap's event says how often, and the rollout keeps the count.
        let (w, _) = tick(
            &with(&plain, 0, 1000, running(false)),
            Some(&plain),
            &capped(3),
            at(5),
            &o,
        );
        let w = w.unwrap();
        assert!(
            w.events[0]
                .reason
                .starts_with("an hourly spend cap on the candidate was reached 3 more time(s)"),
            "{}",
            w.events[0].reason
        );
        assert_eq!(w.rollout.spend_capped.trips, 3);

        // What the events and revisions say.
        let (w, _) = tick(
            &started,
            Some(&plain),
            &seen(1, (0, 0), (0, 0), t0),
            at(30),
            &o,
        );
        let reason = &w.unwrap().events[0].reason;
        assert!(reason.starts_with("quorum not reached in 30s"), "{reason}");
        let (w, _) = tick(
            &with(&plain, 2, 10_000, running(false)),
            Some(&plain),
            &healthy(11),
            at(11),
            &o,
        );
        let t = w
            .unwrap()
            .policy
            .unwrap()
            .spec
            .as_proto()
            .traffic
            .clone()
            .unwrap();
        assert_eq!((t.baseline.as_str(), t.candidate.as_str()), ("b", ""));
        let (w, _) = tick(
            &with(&plain, 0, 1000, running(false)),
            None,
            &healthy(3),
            at(3),
            &o,
        );
        let w = w.unwrap();
        assert!(
            w.rollout.reason.contains("was deleted"),
            "{}",
            w.rollout.reason
        );
        assert!(w.policy.is_none(), "no revision of a deleted policy");
    }

    /// Only the latest rolled-back or aborted rollout may be retried.
    #[test]
    fn retry_rules() {
        use Phase as S;
        let now = Utc::now();
        let (r, _) = start(&rollable(now), now, Author::operator(OPERATOR), 0).unwrap();
        let at = |number: i64, state: S| Rollout {
            number,
            state: state_of(state, now),
            ..r.clone()
        };
        assert_eq!(
            check_retry(&at(3, S::RolledBack), &at(3, S::RolledBack)),
            Ok(())
        );
        assert_eq!(check_retry(&at(3, S::Aborted), &at(3, S::Aborted)), Ok(()));
        let e = check_retry(&at(3, S::Running), &at(3, S::Running)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "rollout {}#3 is RUNNING; only a rolled-back or aborted rollout can be retried",
                r.policy
            )
        );
        let e = check_retry(&at(2, S::RolledBack), &at(3, S::Succeeded)).unwrap_err();
        assert_eq!(
            e,
            CommandError::NotLatest {
                rollout: format!("{}#2", r.policy),
                latest: format!("{}#3", r.policy),
            }
        );
    }

    /// A policy without a rollout spec or a candidate cannot be rolled out.
    #[test]
    fn start_needs_a_spec_and_a_candidate() {
        let now = Utc::now();
        let mut p = rollable(now).spec.as_proto().clone();
        p.rollout = None;
        let e = start(&stored(p.clone(), now), now, Author::operator(OPERATOR), 0).unwrap_err();
        assert_eq!(e, CommandError::NoRolloutSpec(p.name.clone()));
        let mut p = rollable(now).spec.as_proto().clone();
        if let Some(t) = p.traffic.as_mut() {
            t.candidate.clear();
            t.candidate_weight = 0;
        }
        let e = start(&stored(p.clone(), now), now, Author::operator(OPERATOR), 0).unwrap_err();
        assert_eq!(e, CommandError::NoCandidate(p.name.clone()));
    }

    /// Every example policy that can be rolled out ends its rollout with a
    /// valid revision: promoted all the way, the candidate is the baseline
    /// (a shadow that followed the candidate rests, the spec stays for the
    /// next migration); aborted at a stage, the candidate is back at 0.
    #[test]
    fn every_example_policy_ends_with_a_valid_revision() {
        let now = Utc::now();
        let mut checked = 0;
        for (file, p) in example_policies() {
            let candidate = p.traffic.clone().unwrap_or_default().candidate;
            if p.rollout.is_none() || candidate.is_empty() {
                continue;
            }
            let policy = stored(p.clone(), now);
            let (rollout, _) = start(&policy, now, Author::operator(OPERATOR), 0).unwrap();
            let done = command(
                &rollout,
                Some(&policy),
                &Command::Promote { full: true },
                Author::operator(OPERATOR),
                now,
            )
            .unwrap();
            assert_eq!(done.rollout.phase(), Phase::Succeeded, "{file}");
            assert!(
                done.rollout.reason.contains("is the baseline now"),
                "{file}: {}",
                done.rollout.reason
            );
            let next = done.policy.expect("a revision").spec;
            // Valid as written, the way the store would read it back.
            let next = PolicySpec::from_stored_json(&next.to_json().unwrap()).unwrap();
            let t = next.as_proto().traffic.clone().unwrap();
            assert_eq!(
                (t.baseline.as_str(), t.candidate.as_str()),
                (candidate.as_str(), ""),
                "{file}"
            );
            assert_eq!(next.as_proto().rollout, p.rollout, "{file}: the spec stays");
            if p.shadow.is_some() {
                let shadow = next.as_proto().shadow.clone().unwrap();
                assert!(
                    shadow.backend.is_empty(),
                    "{file}: the shadow follows the next candidate"
                );
            }

            // Aborted at a live stage: back to 0.
            let mut at_weight = p.clone();
            at_weight.traffic.as_mut().unwrap().candidate_weight = 1000;
            let policy = stored(at_weight, now);
            let (rollout, _) = start(&policy, now, Author::operator(OPERATOR), 0).unwrap();
            let aborted = command(
                &rollout,
                Some(&policy),
                &Command::Abort,
                Author::operator(OPERATOR),
                now,
            )
            .unwrap();
            let next = aborted.policy.expect("a revision").spec;
            assert_eq!(
                next.as_proto().traffic.clone().unwrap().candidate_weight,
                0,
                "{file}"
            );
            checked += 1;
        }
        assert!(checked >= 2, "{checked} example policies with a rollout");
    }
}
