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

/// Rollout states that still steer traffic.
pub fn is_active(state: v1::RolloutState) -> bool {
    matches!(
        state,
        v1::RolloutState::Running | v1::RolloutState::Paused | v1::RolloutState::RollingBack
    )
}

/// A change of a rollout: its new state and the events that explain it.
#[derive(Debug, Clone)]
pub struct RolloutWrite {
    /// The rollout as it is after the change.
    pub rollout: v1::Rollout,
    /// The sequence of the state this change was made from; if the rollout
    /// moved on since, nothing is written.
    pub expected_sequence: i64,
    /// Events, in order; the store numbers them.
    pub events: Vec<v1::RolloutEvent>,
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
        rollout: v1::Rollout,
        events: Vec<v1::RolloutEvent>,
        now: DateTime<Utc>,
    ) -> Result<v1::Rollout, StoreError>;

    /// Writes a change of a rollout made from the state at
    /// `write.expected_sequence`.
    async fn write_rollout(
        &self,
        write: RolloutWrite,
        now: DateTime<Utc>,
    ) -> Result<v1::Rollout, StoreError>;

    /// One rollout; `None` for the policy's latest.
    async fn get_rollout(
        &self,
        policy: &str,
        number: Option<i64>,
    ) -> Result<v1::Rollout, StoreError>;

    /// Rollouts by policy and, within a policy, newest first.
    async fn list_rollouts(
        &self,
        policy: Option<&str>,
        active_only: bool,
        after: Option<RolloutCursor>,
        limit: u32,
    ) -> Result<Vec<v1::Rollout>, StoreError>;

    /// A rollout's events with sequences above `after`, in order, at most
    /// `limit`.
    async fn rollout_events(
        &self,
        policy: &str,
        number: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<v1::RolloutEvent>, StoreError>;

    /// Tries to become the replica that runs the analysis loop; `None` while
    /// another replica is.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError>;
}

/// A rollout in its stored form.
pub(crate) fn rollout_json(r: &v1::Rollout) -> Result<String, StoreError> {
    serde_json::to_string(r)
        .map_err(|e| StoreError::Internal(format!("cannot encode rollout: {e}")))
}

pub(crate) fn rollout_from_json(json: &str) -> Result<v1::Rollout, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Internal(format!("stored rollout: {e}")))
}

pub(crate) fn event_json(e: &v1::RolloutEvent) -> Result<String, StoreError> {
    serde_json::to_string(e).map_err(|e| StoreError::Internal(format!("cannot encode event: {e}")))
}

pub(crate) fn event_from_json(json: &str) -> Result<v1::RolloutEvent, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Internal(format!("stored event: {e}")))
}

/// Numbers `events` after `sequence` and stamps them with the rollout's
/// identity; returns the last sequence.
pub(crate) fn number_events(
    rollout: &v1::Rollout,
    sequence: i64,
    events: &mut [v1::RolloutEvent],
) -> i64 {
    let mut s = sequence;
    for e in events.iter_mut() {
        s += 1;
        e.sequence = s;
        e.policy = rollout.policy.clone();
        e.number = rollout.number;
    }
    s
}

/// A wire timestamp as a time (an absent or invalid one is `None`).
pub fn from_timestamp(t: Option<&pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::try_from(*t).ok())
}
