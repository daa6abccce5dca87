//! Policies as the control plane holds them: a validated spec plus the
//! server-set revision and times.
//!
//! The control plane interprets only a few parts of a policy (the selector,
//! the traffic split, the rollout spec); the rest is checked here and passed
//! to agents as written. [`PolicySpec`] can only be made by validation, so
//! nothing unvalidated reaches the store.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use shepherd_proto::v1;
use shepherd_proto::validate::{PolicyError, validate_policy};

/// A policy spec that passed every rule, with the server-set fields cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec(v1::Policy);

impl PolicySpec {
    /// Validates a policy as written by an operator at time `now`. Server-set
    /// fields (revision, times) are ignored and cleared.
    pub fn validate(mut policy: v1::Policy, now: SystemTime) -> Result<Self, PolicyError> {
        clear_server_fields(&mut policy);
        validate_policy(&policy, Some(now))?;
        Ok(Self(policy))
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The spec in wire form.
    pub fn as_proto(&self) -> &v1::Policy {
        &self.0
    }

    /// A copy changed by the server itself (a rollout's final weights),
    /// checked against the structural rules (faults may have expired since
    /// the operator wrote them; they are passed on as they are).
    pub fn revise(&self, change: impl FnOnce(&mut v1::Policy)) -> Result<Self, PolicyError> {
        let mut policy = self.0.clone();
        change(&mut policy);
        clear_server_fields(&mut policy);
        validate_policy(&policy, None)?;
        Ok(Self(policy))
    }

    /// The stored form: the protobuf JSON mapping, with proto field names.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.0)
    }

    /// Reads the stored form back. Only structural rules are checked again:
    /// a stored fault may have expired since it was written.
    pub fn from_stored_json(json: &str) -> Result<Self, StoredSpecError> {
        let mut policy: v1::Policy =
            serde_json::from_str(json).map_err(|e| StoredSpecError(e.to_string()))?;
        clear_server_fields(&mut policy);
        validate_policy(&policy, None).map_err(|e| StoredSpecError(e.to_string()))?;
        Ok(Self(policy))
    }
}

/// A stored spec that cannot be read back (written by a newer version, or
/// changed by hand).
#[derive(Debug, thiserror::Error)]
#[error("stored policy spec is unreadable: {0}")]
pub struct StoredSpecError(pub String);

fn clear_server_fields(policy: &mut v1::Policy) {
    policy.revision = 0;
    policy.create_time = None;
    policy.update_time = None;
}

/// The live revision of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub spec: PolicySpec,
    /// Increases by one with every write of this policy.
    pub revision: i64,
    /// The store-wide generation of that write: snapshots of version
    /// `generation` or later include it.
    pub generation: i64,
    /// When this policy (since its last deletion, if any) was created.
    pub create_time: DateTime<Utc>,
    /// When `revision` was written.
    pub update_time: DateTime<Utc>,
}

impl StoredPolicy {
    /// The wire form, server-set fields filled in.
    pub fn to_proto(&self) -> v1::Policy {
        let mut policy = self.spec.as_proto().clone();
        policy.revision = self.revision;
        policy.create_time = Some(self.create_time.into());
        policy.update_time = Some(self.update_time.into());
        policy
    }
}

/// What a revision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Change::Created),
            "updated" => Some(Change::Updated),
            "deleted" => Some(Change::Deleted),
            _ => None,
        }
    }
}

/// One stored revision of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub name: String,
    pub revision: i64,
    /// The store-wide generation of this write.
    pub generation: i64,
    pub change: Change,
    /// When this revision was written.
    pub create_time: DateTime<Utc>,
    /// When the policy's incarnation this revision belongs to was created.
    pub policy_create_time: DateTime<Utc>,
    /// The spec as of this revision; `None` for a deletion.
    pub spec: Option<PolicySpec>,
    /// Why the server wrote it, when it did so itself.
    pub reason: String,
    /// Who wrote it (see [`crate::store::Author`]).
    pub actor: String,
}

impl Revision {
    /// The policy as of this revision, server-set fields filled in; `None` for
    /// a deletion.
    pub fn to_policy(&self) -> Option<StoredPolicy> {
        self.spec.as_ref().map(|spec| StoredPolicy {
            spec: spec.clone(),
            revision: self.revision,
            generation: self.generation,
            create_time: self.policy_create_time,
            update_time: self.create_time,
        })
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::PolicyRevision {
        v1::PolicyRevision {
            revision: self.revision,
            change: match self.change {
                Change::Created => v1::ChangeKind::Created,
                Change::Updated => v1::ChangeKind::Updated,
                Change::Deleted => v1::ChangeKind::Deleted,
            } as i32,
            create_time: Some(self.create_time.into()),
            policy: self.to_policy().map(|p| p.to_proto()),
            reason: self.reason.clone(),
            actor: self.actor.clone(),
        }
    }
}
