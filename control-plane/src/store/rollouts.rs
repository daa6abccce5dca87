//! What the store keeps of rollouts: each rollout's state (the protobuf JSON
//! of `shepherd.v1.Rollout`) and its events, written together in one
//! transaction that names the event sequence it read, so two writers (a
//! leader and an operator's command, or two leaders) can never both act on
//! the same state.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shepherd_proto::v1;

use super::StoreError;
use crate::policy::PolicySpec;
use crate::rollout::convert::event_to_wire;
use crate::rollout::model::{Event, Rollout};

/// A change of a rollout: its new state and the events that explain it.
#[derive(Debug, Clone)]
pub struct RolloutWrite {
    /// The rollout as it is after the change.
    pub rollout: Rollout,
    /// The sequence of the state this change was made from; if the rollout
    /// moved on since, nothing is written.
    pub expected_sequence: i64,
    /// Events, in order; the store numbers them.
    pub events: Vec<Event>,
    /// The weight changed: the write takes a new generation, recorded as
    /// the rollout's stage version, so agents get a new snapshot.
    pub new_stage: bool,
    /// A policy revision written in the same transaction (a rollout that
    /// ends makes its final weights the policy's own).
    pub policy: Option<PolicyWrite>,
}

/// A policy revision a rollout writes.
#[derive(Debug, Clone)]
pub struct PolicyWrite {
    pub spec: PolicySpec,
    pub expected_revision: i64,
    /// Who made the change: the operator's token, or the deciding replica.
    pub actor: String,
    pub reason: String,
}

/// Where a page of rollouts starts: after this policy and number.
pub type RolloutCursor = (String, i64);

/// The right to run the analysis loop, held until dropped.
#[async_trait]
pub trait Leadership: Send {
    /// `Ok` while it is still held; why not, once it is lost.
    async fn holds(&mut self) -> Result<(), String>;
}

/// Durable home of rollouts and their events.
#[async_trait]
pub trait RolloutStore {
    /// Stores a new rollout of `rollout.policy` (its number is the next one
    /// for the policy) with its first events, if no other rollout of the
    /// policy is active and the policy is still at `rollout.policy_revision`.
    /// Its stage version is the generation of this write.
    async fn create_rollout(
        &self,
        rollout: Rollout,
        events: Vec<Event>,
        now: DateTime<Utc>,
    ) -> Result<Rollout, StoreError>;

    /// Writes a change of a rollout made from the state at
    /// `write.expected_sequence`.
    async fn write_rollout(
        &self,
        write: RolloutWrite,
        now: DateTime<Utc>,
    ) -> Result<Rollout, StoreError>;

    /// One rollout; `None` for the policy's latest.
    async fn get_rollout(&self, policy: &str, number: Option<i64>) -> Result<Rollout, StoreError>;

    /// Rollouts by policy and, within a policy, newest first.
    async fn list_rollouts(
        &self,
        policy: Option<&str>,
        active_only: bool,
        after: Option<RolloutCursor>,
        limit: u32,
    ) -> Result<Vec<Rollout>, StoreError>;

    /// A rollout's events with sequences above `after`, in order, at most
    /// `limit`.
    async fn rollout_events(
        &self,
        policy: &str,
        number: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;

    /// Tries to become the replica that runs the analysis loop; `None` while
    /// another replica is.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError>;
}

/// A rollout in its stored form: the JSON of its wire form.
pub(crate) fn rollout_json(r: &Rollout) -> Result<String, StoreError> {
    serde_json::to_string(&v1::Rollout::from(r))
        .map_err(|e| StoreError::Internal(format!("cannot encode rollout: {e}")))
}

pub(crate) fn rollout_from_json(json: &str) -> Result<Rollout, StoreError> {
    let wire: v1::Rollout = serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("stored rollout: {e}")))?;
    Rollout::try_from(&wire).map_err(|e| {
        StoreError::Internal(format!(
            "stored rollout {}#{}: {e}",
            wire.policy, wire.number
        ))
    })
}

pub(crate) fn event_json(e: &Event, rollout: &Rollout) -> Result<String, StoreError> {
    serde_json::to_string(&event_to_wire(e, &rollout.policy, rollout.number))
        .map_err(|e| StoreError::Internal(format!("cannot encode event: {e}")))
}

pub(crate) fn event_from_json(json: &str) -> Result<Event, StoreError> {
    let wire: v1::RolloutEvent = serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("stored event: {e}")))?;
    Event::try_from(&wire).map_err(|e| {
        StoreError::Internal(format!(
            "stored event {} of {}#{}: {e}",
            wire.sequence, wire.policy, wire.number
        ))
    })
}

/// Numbers `events` after `sequence`; returns the last sequence.
pub(crate) fn number_events(sequence: i64, events: &mut [Event]) -> i64 {
    let mut s = sequence;
    for e in events.iter_mut() {
        s += 1;
        e.sequence = s;
    }
    s
}
