//! Conversions between the rollout model and its wire form, used only at the
//! edges: the API (what callers send and see) and the store (which keeps
//! the wire form's JSON). Reading a stored or sent rollout checks what the
//! model needs and names the field that lacks it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shepherd_proto::cost::{exact, parse_exact};
use shepherd_proto::v1;

use super::model::{
    CapTrips, DEFAULT_ACK_TIMEOUT, DEFAULT_QUORUM_PERCENT, DEFAULT_ROLLBACK_STEP, Event, EventKind,
    Figures, GateResult, OnFailure, PassRule, Phase, Plan, Rollback, Rollout, SideCost,
    SideFigures, Stage, State, Verdict,
};

fn time(t: Option<&pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::try_from(*t).ok())
}

fn stamp(t: DateTime<Utc>) -> Option<pbjson_types::Timestamp> {
    Some(t.into())
}

fn duration(d: Option<&pbjson_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(*d).ok())
}

fn wire_duration(d: Duration) -> Option<pbjson_types::Duration> {
    Some(d.into())
}

impl From<&v1::Stage> for Stage {
    fn from(s: &v1::Stage) -> Self {
        Stage {
            weight: s.weight,
            min_bake: duration(s.min_bake_time.as_ref()).unwrap_or_default(),
            min_requests: s.min_requests,
            max_time: duration(s.max_stage_time.as_ref()),
        }
    }
}

impl From<&Stage> for v1::Stage {
    fn from(s: &Stage) -> Self {
        v1::Stage {
            weight: s.weight,
            min_bake_time: wire_duration(s.min_bake),
            min_requests: s.min_requests,
            max_stage_time: s.max_time.and_then(wire_duration),
        }
    }
}

impl From<&v1::RolloutSpec> for Plan {
    fn from(s: &v1::RolloutSpec) -> Self {
        Plan {
            stages: s.stages.iter().map(Stage::from).collect(),
            gates: s.gates.unwrap_or_default(),
            on_failure: match s.on_failure() {
                v1::FailureAction::Pause => OnFailure::Pause,
                v1::FailureAction::Unspecified | v1::FailureAction::Rollback => OnFailure::RollBack,
            },
            rollback: match s.rollback_mode() {
                v1::RollbackMode::Gradual => Rollback::Gradual {
                    step: duration(s.rollback_step_time.as_ref()).unwrap_or(DEFAULT_ROLLBACK_STEP),
                },
                v1::RollbackMode::Unspecified | v1::RollbackMode::Immediate => Rollback::Immediate,
            },
            quorum_percent: s.ack_quorum_percent.unwrap_or(DEFAULT_QUORUM_PERCENT),
            ack_timeout: duration(s.ack_timeout.as_ref()).unwrap_or(DEFAULT_ACK_TIMEOUT),
            pass_rule: match s.pass_rule() {
                v1::PassRule::ProvenNotWorse => PassRule::ProvenNotWorse,
                v1::PassRule::Unspecified | v1::PassRule::NoRegression => PassRule::NoRegression,
            },
        }
    }
}

impl From<&Plan> for v1::RolloutSpec {
    fn from(p: &Plan) -> Self {
        let (mode, step) = match p.rollback {
            Rollback::Immediate => (v1::RollbackMode::Immediate, None),
            Rollback::Gradual { step } => (v1::RollbackMode::Gradual, wire_duration(step)),
        };
        v1::RolloutSpec {
            stages: p.stages.iter().map(v1::Stage::from).collect(),
            gates: Some(p.gates),
            on_failure: match p.on_failure {
                OnFailure::RollBack => v1::FailureAction::Rollback,
                OnFailure::Pause => v1::FailureAction::Pause,
            } as i32,
            rollback_mode: mode as i32,
            rollback_step_time: step,
            ack_quorum_percent: Some(p.quorum_percent),
            ack_timeout: wire_duration(p.ack_timeout),
            pass_rule: match p.pass_rule {
                PassRule::NoRegression => v1::PassRule::NoRegression,
                PassRule::ProvenNotWorse => v1::PassRule::ProvenNotWorse,
            } as i32,
        }
    }
}

impl From<Phase> for v1::RolloutState {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Running => v1::RolloutState::Running,
            Phase::Paused => v1::RolloutState::Paused,
            Phase::RollingBack => v1::RolloutState::RollingBack,
            Phase::Succeeded => v1::RolloutState::Succeeded,
            Phase::RolledBack => v1::RolloutState::RolledBack,
            Phase::Aborted => v1::RolloutState::Aborted,
        }
    }
}

impl TryFrom<v1::RolloutState> for Phase {
    type Error = String;
    fn try_from(s: v1::RolloutState) -> Result<Self, String> {
        Ok(match s {
            v1::RolloutState::Running => Phase::Running,
            v1::RolloutState::Paused => Phase::Paused,
            v1::RolloutState::RollingBack => Phase::RollingBack,
            v1::RolloutState::Succeeded => Phase::Succeeded,
            v1::RolloutState::RolledBack => Phase::RolledBack,
            v1::RolloutState::Aborted => Phase::Aborted,
            v1::RolloutState::Unspecified => return Err("state: must be set".into()),
        })
    }
}

impl From<Verdict> for v1::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Wait => v1::Verdict::Wait,
            Verdict::Pass => v1::Verdict::Pass,
            Verdict::Fail => v1::Verdict::Fail,
            Verdict::Inconclusive => v1::Verdict::Inconclusive,
        }
    }
}

/// A wire verdict; `None` for one not set.
fn verdict_of(v: v1::Verdict) -> Option<Verdict> {
    match v {
        v1::Verdict::Unspecified => None,
        v1::Verdict::Wait => Some(Verdict::Wait),
        v1::Verdict::Pass => Some(Verdict::Pass),
        v1::Verdict::Fail => Some(Verdict::Fail),
        v1::Verdict::Inconclusive => Some(Verdict::Inconclusive),
    }
}

const KINDS: [(EventKind, v1::RolloutEventKind); 14] = [
    (EventKind::Started, v1::RolloutEventKind::Started),
    (EventKind::ClockStarted, v1::RolloutEventKind::ClockStarted),
    (EventKind::Promoted, v1::RolloutEventKind::Promoted),
    (EventKind::Succeeded, v1::RolloutEventKind::Succeeded),
    (EventKind::Failed, v1::RolloutEventKind::Failed),
    (EventKind::RollbackStep, v1::RolloutEventKind::RollbackStep),
    (EventKind::RolledBack, v1::RolloutEventKind::RolledBack),
    (EventKind::Paused, v1::RolloutEventKind::Paused),
    (EventKind::Resumed, v1::RolloutEventKind::Resumed),
    (EventKind::Inconclusive, v1::RolloutEventKind::Inconclusive),
    (EventKind::Aborted, v1::RolloutEventKind::Aborted),
    (
        EventKind::TelemetryStale,
        v1::RolloutEventKind::TelemetryStale,
    ),
    (
        EventKind::TelemetryResumed,
        v1::RolloutEventKind::TelemetryResumed,
    ),
    (EventKind::SpendCapped, v1::RolloutEventKind::SpendCapped),
];

impl From<EventKind> for v1::RolloutEventKind {
    fn from(k: EventKind) -> Self {
        KINDS
            .iter()
            .find(|(m, _)| *m == k)
            .map_or(v1::RolloutEventKind::Unspecified, |(_, w)| *w)
    }
}

impl TryFrom<v1::RolloutEventKind> for EventKind {
    type Error = String;
    fn try_from(k: v1::RolloutEventKind) -> Result<Self, String> {
        KINDS
            .iter()
            .find(|(_, w)| *w == k)
            .map(|(m, _)| *m)
            .ok_or_else(|| "kind: must be set".to_string())
    }
}

impl From<&Rollout> for v1::Rollout {
    fn from(r: &Rollout) -> Self {
        let mut w = v1::Rollout {
            policy: r.policy.clone(),
            number: r.number,
            state: v1::RolloutState::from(r.phase()) as i32,
            stage: r.stage,
            weight: r.weight,
            baseline: r.baseline.clone(),
            candidate: r.candidate.clone(),
            policy_revision: r.policy_revision,
            spec: Some(v1::RolloutSpec::from(&r.plan)),
            stage_version: r.stage_version,
            stage_set_time: stamp(r.stage_set),
            reason: r.reason.clone(),
            sequence: r.sequence,
            create_time: r.created.and_then(stamp),
            update_time: r.updated.and_then(stamp),
            retry_of: r.retry_of,
            spend_cap_trips: r.spend_capped.trips,
            spend_cap_stage_version: r.spend_capped.stage_version,
            ..Default::default()
        };
        match r.state {
            State::Running { clock, stale } => {
                w.clock_start_time = clock.and_then(stamp);
                w.telemetry_stale = stale;
            }
            State::Paused { clock } => w.clock_start_time = clock.and_then(stamp),
            State::RollingBack { next_step } => w.next_step_time = stamp(next_step),
            State::Succeeded { ended } | State::RolledBack { ended } | State::Aborted { ended } => {
                w.end_time = stamp(ended);
            }
        }
        w
    }
}

impl TryFrom<&v1::Rollout> for Rollout {
    type Error = String;
    /// A rollout as the store keeps it. The times each state needs must be
    /// there, except the next step of a gradual rollback (absent: due now).
    fn try_from(w: &v1::Rollout) -> Result<Self, String> {
        let stage_set =
            time(w.stage_set_time.as_ref()).ok_or("stage_set_time: must be a valid time")?;
        let clock = time(w.clock_start_time.as_ref());
        let ended = || time(w.end_time.as_ref()).ok_or("end_time: must be set once a rollout ends");
        let state = match Phase::try_from(w.state())? {
            Phase::Running => State::Running {
                clock,
                stale: w.telemetry_stale,
            },
            Phase::Paused => State::Paused { clock },
            Phase::RollingBack => State::RollingBack {
                next_step: time(w.next_step_time.as_ref()).unwrap_or(stage_set),
            },
            Phase::Succeeded => State::Succeeded { ended: ended()? },
            Phase::RolledBack => State::RolledBack { ended: ended()? },
            Phase::Aborted => State::Aborted { ended: ended()? },
        };
        let spec = w.spec.as_ref().ok_or("spec: must be set")?;
        Ok(Rollout {
            policy: w.policy.clone(),
            number: w.number,
            state,
            stage: w.stage,
            weight: w.weight,
            baseline: w.baseline.clone(),
            candidate: w.candidate.clone(),
            policy_revision: w.policy_revision,
            plan: Plan::from(spec),
            stage_version: w.stage_version,
            stage_set,
            reason: w.reason.clone(),
            sequence: w.sequence,
            created: time(w.create_time.as_ref()),
            updated: time(w.update_time.as_ref()),
            retry_of: w.retry_of,
            spend_capped: CapTrips {
                stage_version: w.spend_cap_stage_version,
                trips: w.spend_cap_trips,
            },
        })
    }
}

impl From<&SideFigures> for v1::SideFigures {
    fn from(s: &SideFigures) -> Self {
        v1::SideFigures {
            backend: s.backend.clone(),
            requests: s.requests,
            errors: s.errors,
            rate_limited: s.rate_limited,
            error_rate_percent: s.error_rate_percent,
            rate_limited_percent: s.rate_limited_percent,
            latency_p95: s.latency_p95.and_then(wire_duration),
            latency_p99: s.latency_p99.and_then(wire_duration),
            ttft_p95: s.ttft_p95.and_then(wire_duration),
            app_errors: s.app_errors,
            backend_rejected: s.backend_rejected,
            malformed: s.malformed,
            rejected_rate_percent: s.rejected_rate_percent,
            client_error_rate_percent: s.client_error_rate_percent,
            examples: s.examples.clone(),
            spend_cap_trips: s.spend_cap_trips,
            spend_capped: s.spend_capped,
            cost: s.cost.as_ref().map(|c| v1::SideCost {
                currency: c.currency.clone(),
                spend: exact(c.spend),
                shadow_spend: exact(c.shadow_spend),
                priced: c.priced,
                unpriced: c.unpriced,
                per_request: c.per_request,
                per_1k_output_tokens: c.per_1k_output_tokens,
                monthly_at_full: c.monthly_at_full,
            }),
        }
    }
}

impl From<&v1::SideFigures> for SideFigures {
    fn from(s: &v1::SideFigures) -> Self {
        SideFigures {
            backend: s.backend.clone(),
            requests: s.requests,
            errors: s.errors,
            rate_limited: s.rate_limited,
            error_rate_percent: s.error_rate_percent,
            rate_limited_percent: s.rate_limited_percent,
            latency_p95: duration(s.latency_p95.as_ref()),
            latency_p99: duration(s.latency_p99.as_ref()),
            ttft_p95: duration(s.ttft_p95.as_ref()),
            app_errors: s.app_errors,
            backend_rejected: s.backend_rejected,
            malformed: s.malformed,
            rejected_rate_percent: s.rejected_rate_percent,
            client_error_rate_percent: s.client_error_rate_percent,
            examples: s.examples.clone(),
            spend_cap_trips: s.spend_cap_trips,
            spend_capped: s.spend_capped,
            // Written by this code: a spend that does not parse reads as 0.
            cost: s.cost.as_ref().map(|c| SideCost {
                currency: c.currency.clone(),
                spend: parse_exact(&c.spend).unwrap_or(0),
                shadow_spend: parse_exact(&c.shadow_spend).unwrap_or(0),
                priced: c.priced,
                unpriced: c.unpriced,
                per_request: c.per_request,
                per_1k_output_tokens: c.per_1k_output_tokens,
                monthly_at_full: c.monthly_at_full,
            }),
        }
    }
}

impl From<&GateResult> for v1::GateResult {
    fn from(g: &GateResult) -> Self {
        v1::GateResult {
            gate: g.gate.clone(),
            value: g.value,
            limit: g.limit,
            verdict: v1::Verdict::from(g.verdict) as i32,
            detail: g.detail.clone(),
        }
    }
}

impl From<&Figures> for v1::Figures {
    fn from(f: &Figures) -> Self {
        v1::Figures {
            candidate: f.candidate.as_ref().map(v1::SideFigures::from),
            baseline: f.baseline.as_ref().map(v1::SideFigures::from),
            error_rate_z: None,
            error_rate_z_critical: None,
            shadow: f.shadow.clone(),
            elapsed_seconds: f.elapsed.as_secs_f64(),
            acked_agents: f.acked_agents,
            selected_agents: f.selected_agents,
            gates: f.gates.iter().map(v1::GateResult::from).collect(),
            cost_projection: f.cost_projection.clone().unwrap_or_default(),
        }
    }
}

impl From<&v1::Figures> for Figures {
    fn from(f: &v1::Figures) -> Self {
        Figures {
            candidate: f.candidate.as_ref().map(SideFigures::from),
            baseline: f.baseline.as_ref().map(SideFigures::from),
            shadow: f.shadow.clone(),
            elapsed: Duration::try_from_secs_f64(f.elapsed_seconds).unwrap_or_default(),
            acked_agents: f.acked_agents,
            selected_agents: f.selected_agents,
            gates: f
                .gates
                .iter()
                .map(|g| GateResult {
                    gate: g.gate.clone(),
                    value: g.value,
                    limit: g.limit,
                    verdict: verdict_of(g.verdict()).unwrap_or(Verdict::Wait),
                    detail: g.detail.clone(),
                })
                .collect(),
            cost_projection: (!f.cost_projection.is_empty()).then(|| f.cost_projection.clone()),
        }
    }
}

/// An event of rollout `number` of `policy`, as callers see it.
pub fn event_to_wire(e: &Event, policy: &str, number: i64) -> v1::RolloutEvent {
    v1::RolloutEvent {
        policy: policy.into(),
        number,
        sequence: e.sequence,
        time: stamp(e.time),
        kind: v1::RolloutEventKind::from(e.kind) as i32,
        state: v1::RolloutState::from(e.phase) as i32,
        stage: e.stage,
        weight: e.weight,
        verdict: e
            .verdict
            .map_or(v1::Verdict::Unspecified, v1::Verdict::from) as i32,
        reason: e.reason.clone(),
        actor: e.actor.clone(),
        figures: e.figures.as_ref().map(v1::Figures::from),
    }
}

impl TryFrom<&v1::RolloutEvent> for Event {
    type Error = String;
    fn try_from(e: &v1::RolloutEvent) -> Result<Self, String> {
        Ok(Event {
            sequence: e.sequence,
            time: time(e.time.as_ref()).ok_or("time: must be a valid time")?,
            kind: EventKind::try_from(e.kind())?,
            phase: Phase::try_from(e.state())?,
            stage: e.stage,
            weight: e.weight,
            verdict: verdict_of(e.verdict()),
            reason: e.reason.clone(),
            actor: e.actor.clone(),
            figures: e.figures.as_ref().map(Figures::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn rollout(state: State) -> Rollout {
        Rollout {
            policy: "chat".into(),
            number: 3,
            state,
            stage: 1,
            weight: 5000,
            baseline: "a".into(),
            candidate: "b".into(),
            policy_revision: 7,
            plan: Plan {
                stages: vec![
                    Stage {
                        weight: 1000,
                        min_bake: Duration::from_secs(10),
                        min_requests: 20,
                        max_time: Some(Duration::from_secs(60)),
                    },
                    Stage {
                        weight: 10_000,
                        min_bake: Duration::from_millis(1500),
                        min_requests: 0,
                        max_time: None,
                    },
                ],
                gates: v1::Gates {
                    significance: Some(0.01),
                    ..Default::default()
                },
                on_failure: OnFailure::Pause,
                rollback: Rollback::Gradual {
                    step: Duration::from_secs(5),
                },
                quorum_percent: 80.0,
                ack_timeout: Duration::from_secs(12),
                pass_rule: PassRule::ProvenNotWorse,
            },
            stage_version: 42,
            stage_set: at(1),
            reason: "why".into(),
            sequence: 9,
            created: Some(at(0)),
            updated: Some(at(2)),
            retry_of: 2,
            spend_capped: CapTrips {
                stage_version: 7,
                trips: 3,
            },
        }
    }

    /// Every state, with its data, survives the wire form the store keeps
    /// and callers see.
    #[test]
    fn rollouts_round_trip_in_every_state() {
        let states = [
            State::Running {
                clock: None,
                stale: false,
            },
            State::Running {
                clock: Some(at(3)),
                stale: true,
            },
            State::Paused { clock: Some(at(3)) },
            State::Paused { clock: None },
            State::RollingBack { next_step: at(8) },
            State::Succeeded { ended: at(9) },
            State::RolledBack { ended: at(9) },
            State::Aborted { ended: at(9) },
        ];
        for state in states {
            let r = rollout(state);
            let wire = v1::Rollout::from(&r);
            let json = serde_json::to_string(&wire).unwrap();
            let back: v1::Rollout = serde_json::from_str(&json).unwrap();
            assert_eq!(Rollout::try_from(&back), Ok(r), "{state:?}");
        }
        let wire = v1::Rollout::from(&rollout(State::RolledBack { ended: at(9) }));
        assert_eq!(wire.state(), v1::RolloutState::RolledBack);
        assert_eq!(wire.end_time, stamp(at(9)));
        assert_eq!(wire.next_step_time, None);
    }

    /// A spec as written, with its optional fields unset, reads with the
    /// documented defaults.
    #[test]
    fn a_sparse_spec_takes_the_defaults() {
        let spec: v1::RolloutSpec = serde_json::from_value(serde_json::json!({
            "stages": [{"weight": 10000, "min_bake_time": "10s", "max_stage_time": "60s"}],
            "rollback_mode": "ROLLBACK_MODE_GRADUAL"
        }))
        .unwrap();
        let plan = Plan::from(&spec);
        assert_eq!(plan.on_failure, OnFailure::RollBack);
        assert_eq!(
            plan.rollback,
            Rollback::Gradual {
                step: DEFAULT_ROLLBACK_STEP
            }
        );
        assert_eq!(plan.quorum_percent, DEFAULT_QUORUM_PERCENT);
        assert_eq!(plan.ack_timeout, DEFAULT_ACK_TIMEOUT);
        assert_eq!(plan.pass_rule, PassRule::NoRegression);
        assert_eq!(plan.stages[0].max_time, Some(Duration::from_secs(60)));
    }

    /// What a state needs and the wire form lacks is refused, naming the
    /// field.
    #[test]
    fn a_rollout_missing_what_its_state_needs_is_refused() {
        let good = v1::Rollout::from(&rollout(State::Succeeded { ended: at(9) }));
        let mut no_end = good.clone();
        no_end.end_time = None;
        assert_eq!(
            Rollout::try_from(&no_end),
            Err("end_time: must be set once a rollout ends".into())
        );
        let mut no_set = good.clone();
        no_set.stage_set_time = None;
        assert_eq!(
            Rollout::try_from(&no_set),
            Err("stage_set_time: must be a valid time".into())
        );
        let mut no_state = good.clone();
        no_state.state = 0;
        assert_eq!(
            Rollout::try_from(&no_state),
            Err("state: must be set".into())
        );
        let mut no_spec = good;
        no_spec.spec = None;
        assert_eq!(Rollout::try_from(&no_spec), Err("spec: must be set".into()));
        // A gradual rollback without its next step is due at once.
        let mut rolling = v1::Rollout::from(&rollout(State::RollingBack { next_step: at(8) }));
        rolling.next_step_time = None;
        assert_eq!(
            Rollout::try_from(&rolling).unwrap().state,
            State::RollingBack { next_step: at(1) }
        );
    }

    /// Events keep their kind, verdict and figures through the wire form.
    #[test]
    fn events_round_trip() {
        for (kind, _) in KINDS {
            for verdict in [None, Some(Verdict::Fail), Some(Verdict::Inconclusive)] {
                let e = Event {
                    sequence: 4,
                    time: at(5),
                    kind,
                    phase: Phase::Paused,
                    stage: 1,
                    weight: 5000,
                    verdict,
                    reason: "because".into(),
                    actor: "r1".into(),
                    figures: Some(Figures {
                        candidate: Some(SideFigures {
                            backend: "b".into(),
                            requests: 100,
                            errors: 3,
                            latency_p95: Some(Duration::from_millis(250)),
                            cost: Some(SideCost {
                                currency: "EUR".into(),
                                spend: 6_500_000_000_007,
                                shadow_spend: 3,
                                priced: 97,
                                unpriced: 1,
                                per_request: 0.067,
                                per_1k_output_tokens: 0.5,
                                monthly_at_full: 1240.5,
                            }),
                            ..Default::default()
                        }),
                        baseline: None,
                        shadow: None,
                        elapsed: Duration::from_millis(12_500),
                        acked_agents: 2,
                        selected_agents: 3,
                        gates: vec![GateResult {
                            gate: "significance".into(),
                            value: 120.0,
                            limit: 111.1,
                            verdict: Verdict::Fail,
                            detail: "e-value".into(),
                        }],
                        cost_projection: Some("at 100% ...".into()),
                    }),
                };
                let wire = event_to_wire(&e, "chat", 3);
                assert_eq!((wire.policy.as_str(), wire.number), ("chat", 3));
                assert_eq!(Event::try_from(&wire), Ok(e));
            }
        }
    }
}
