//! A rollout in domain types: its state (an enum carrying what each state
//! needs), its plan of stages, the verdicts and figures of its judgements
//! and the events that record them. The state machine ([`super::tick`],
//! [`super::command`]) and the analysis speak only these; the wire types
//! appear at the API and store edges, converted in [`super::convert`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use shepherd_proto::v1;

/// What a stage's judgement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Too little data or time so far.
    Wait,
    /// Every gate holds, with enough data and time: promote.
    Pass,
    /// A gate failed: roll back or pause, per the plan.
    Fail,
    /// No decision was possible within the stage's time limit: pause.
    Inconclusive,
}

impl Verdict {
    /// "PASS".
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Wait => "WAIT",
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "INCONCLUSIVE",
        }
    }
}

/// The name of a rollout's state, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Running,
    Paused,
    RollingBack,
    Succeeded,
    RolledBack,
    Aborted,
}

impl Phase {
    /// "ROLLING_BACK", as events, errors and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "RUNNING",
            Phase::Paused => "PAUSED",
            Phase::RollingBack => "ROLLING_BACK",
            Phase::Succeeded => "SUCCEEDED",
            Phase::RolledBack => "ROLLED_BACK",
            Phase::Aborted => "ABORTED",
        }
    }

    /// Whether a rollout in this state still steers traffic.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused | Phase::RollingBack)
    }
}

/// Where a rollout is, with what that state needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Judged every tick. The stage's clock starts once a quorum of agents
    /// applied its weight (`None` until then); `stale` is set between a
    /// TELEMETRY_STALE event and the TELEMETRY_RESUMED one.
    Running {
        clock: Option<DateTime<Utc>>,
        stale: bool,
    },
    /// Held at its weight; the clock it had is kept for the record (a
    /// resumed stage starts over).
    Paused {
        clock: Option<DateTime<Utc>>,
    },
    /// Stepping the weight down; the next step is due at `next_step`.
    RollingBack {
        next_step: DateTime<Utc>,
    },
    Succeeded {
        ended: DateTime<Utc>,
    },
    RolledBack {
        ended: DateTime<Utc>,
    },
    Aborted {
        ended: DateTime<Utc>,
    },
}

impl State {
    pub fn phase(&self) -> Phase {
        match self {
            State::Running { .. } => Phase::Running,
            State::Paused { .. } => Phase::Paused,
            State::RollingBack { .. } => Phase::RollingBack,
            State::Succeeded { .. } => Phase::Succeeded,
            State::RolledBack { .. } => Phase::RolledBack,
            State::Aborted { .. } => Phase::Aborted,
        }
    }

    /// A new stage's state: running, waiting for its quorum.
    pub fn new_stage() -> Self {
        State::Running {
            clock: None,
            stale: false,
        }
    }

    /// The state a rollout ends in.
    pub fn ended(phase: Phase, at: DateTime<Utc>) -> Self {
        match phase {
            Phase::Succeeded => State::Succeeded { ended: at },
            Phase::Aborted => State::Aborted { ended: at },
            _ => State::RolledBack { ended: at },
        }
    }
}

/// One step of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The candidate's weight, in basis points (0: shadow only).
    pub weight: u32,
    /// Shortest time the stage runs before it can pass.
    pub min_bake: Duration,
    /// Fewest candidate requests before it can pass.
    pub min_requests: u64,
    /// Longest time it may run without a decision (`None`: no limit).
    pub max_time: Option<Duration>,
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    RollBack,
    Pause,
}

/// How a rollback proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// Straight to 0.
    Immediate,
    /// Down through the earlier stages' weights, one step per `step`.
    Gradual { step: Duration },
}

/// What a stage waits for before it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassRule {
    /// Once no gate shows a regression.
    #[default]
    NoRegression,
    /// Once every comparative gate proves the candidate not worse than the
    /// baseline by more than its margin.
    ProvenNotWorse,
}

/// How a rollout proceeds and is judged: the policy's rollout spec as it
/// was when the rollout started, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    /// The policy's gates (validated settings, shared with the policy).
    pub gates: v1::Gates,
    pub on_failure: OnFailure,
    pub rollback: Rollback,
    /// Percentage of the selected agents that must apply a stage before its
    /// clock starts.
    pub quorum_percent: f64,
    /// Longest wait for that quorum.
    pub ack_timeout: Duration,
    pub pass_rule: PassRule,
}

/// Defaults of a rollout spec's optional fields.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ROLLBACK_STEP: Duration = Duration::from_secs(10);
pub const DEFAULT_QUORUM_PERCENT: f64 = 100.0;

/// One rollout of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub policy: String,
    /// 1, 2, ... per policy (0 until the store numbers it).
    pub number: i64,
    pub state: State,
    /// Index of the current stage in `plan.stages`.
    pub stage: u32,
    /// The candidate's effective weight now, in basis points.
    pub weight: u32,
    pub baseline: String,
    pub candidate: String,
    /// The policy revision the rollout started from.
    pub policy_revision: i64,
    pub plan: Plan,
    /// The snapshot version that carries the current weight (set by the
    /// store).
    pub stage_version: u64,
    /// When the current weight was set.
    pub stage_set: DateTime<Utc>,
    /// Why the rollout is in its state.
    pub reason: String,
    /// The last event's sequence.
    pub sequence: i64,
    /// Set by the store.
    pub created: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
    /// The rollout this one retries (0: none).
    pub retry_of: i64,
    /// The candidate's hourly spend cap trips already told by an event.
    pub spend_capped: CapTrips,
}

/// Hourly spend cap trips counted under one stage version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapTrips {
    pub stage_version: u64,
    pub trips: u64,
}

impl Rollout {
    /// "chat#3".
    pub fn name(&self) -> String {
        format!("{}#{}", self.policy, self.number)
    }

    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// The current stage of the plan, if the index names one.
    pub fn current_stage(&self) -> Option<&Stage> {
        self.plan.stages.get(self.stage as usize)
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Started,
    ClockStarted,
    Promoted,
    Succeeded,
    Failed,
    RollbackStep,
    RolledBack,
    Paused,
    Resumed,
    Inconclusive,
    Aborted,
    TelemetryStale,
    TelemetryResumed,
    SpendCapped,
}

impl EventKind {
    /// "CLOCK_STARTED".
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Started => "STARTED",
            EventKind::ClockStarted => "CLOCK_STARTED",
            EventKind::Promoted => "PROMOTED",
            EventKind::Succeeded => "SUCCEEDED",
            EventKind::Failed => "FAILED",
            EventKind::RollbackStep => "ROLLBACK_STEP",
            EventKind::RolledBack => "ROLLED_BACK",
            EventKind::Paused => "PAUSED",
            EventKind::Resumed => "RESUMED",
            EventKind::Inconclusive => "INCONCLUSIVE",
            EventKind::Aborted => "ABORTED",
            EventKind::TelemetryStale => "TELEMETRY_STALE",
            EventKind::TelemetryResumed => "TELEMETRY_RESUMED",
            EventKind::SpendCapped => "SPEND_CAPPED",
        }
    }
}

/// One transition of a rollout, or a notable observation, with the numbers
/// it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 1, 2, ... per rollout (0 until the store numbers it).
    pub sequence: i64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    /// The rollout's state, stage and weight after the event.
    pub phase: Phase,
    pub stage: u32,
    pub weight: u32,
    /// The verdict behind the event, if one was.
    pub verdict: Option<Verdict>,
    pub reason: String,
    /// "operator" for commands, else the replica that decided.
    pub actor: String,
    pub figures: Option<Figures>,
}

/// What a stage's telemetry says, over its window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    pub candidate: Option<SideFigures>,
    pub baseline: Option<SideFigures>,
    /// The candidate's shadow figures, for shadow stages.
    pub shadow: Option<v1::ShadowTelemetry>,
    /// Time since the stage's clock started.
    pub elapsed: Duration,
    /// Agents that applied the stage's snapshot, of those selected.
    pub acked_agents: u32,
    pub selected_agents: u32,
    /// Each gate checked, with its value and limit.
    pub gates: Vec<GateResult>,
    /// What a full move would do to the bill, when both sides are priced.
    pub cost_projection: Option<String>,
}

/// One backend's figures over a stage's window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SideFigures {
    pub backend: String,
    /// Attempts judged (cancelled ones excluded).
    pub requests: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub error_rate_percent: f64,
    pub rate_limited_percent: f64,
    pub latency_p95: Option<Duration>,
    pub latency_p99: Option<Duration>,
    pub ttft_p95: Option<Duration>,
    pub app_errors: u64,
    pub backend_rejected: u64,
    pub malformed: u64,
    pub rejected_rate_percent: f64,
    pub client_error_rate_percent: f64,
    /// One example answer per failure class seen.
    pub examples: Vec<v1::FailureExample>,
    /// What its answers cost, when its backend has prices.
    pub cost: Option<SideCost>,
    /// Hourly spend cap trips, and requests sent elsewhere while capped.
    pub spend_cap_trips: u64,
    pub spend_capped: u64,
}

/// One backend's spend over a stage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SideCost {
    pub currency: String,
    /// Answers served and billed failures, in pico-units.
    pub spend: u128,
    /// Shadow answers, in pico-units.
    pub shadow_spend: u128,
    /// Answers served that were priced, and billed answers that were not.
    pub priced: u64,
    pub unpriced: u64,
    /// Spend on answers served per priced answer, in units.
    pub per_request: f64,
    /// Spend on answers served per 1,000 output tokens, in units.
    pub per_1k_output_tokens: f64,
    /// Monthly spend (30 days) at the policy's request rate, were this
    /// backend to take every request, in units.
    pub monthly_at_full: f64,
}

/// One gate checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GateResult {
    /// The gate's field name in the policy's gates.
    pub gate: String,
    /// For a ceiling, the observed value and the ceiling; for a comparison,
    /// the e-value of its test and the e-value that proves it.
    pub value: f64,
    pub limit: f64,
    pub verdict: Verdict,
    pub detail: String,
}
