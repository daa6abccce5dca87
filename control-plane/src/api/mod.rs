//! The gRPC services, and the one place where domain errors become
//! `tonic::Status`.

mod agent;
mod page;
mod policy;
mod rollout;
pub mod trace;

pub use agent::AgentApi;
pub use policy::PolicyApi;
pub use rollout::RolloutApi;

use shepherd_proto::validate::PolicyError;
use tonic::Status;

use crate::store::StoreError;

/// INVALID_ARGUMENT naming the field and the rule.
pub(crate) fn invalid(field: &str, rule: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}

/// INVALID_ARGUMENT listing every rule a policy breaks.
pub(crate) fn invalid_policy(e: PolicyError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A command that does not apply: FAILED_PRECONDITION with why (the one
/// place rollout command errors become statuses).
impl From<crate::rollout::CommandError> for Status {
    fn from(e: crate::rollout::CommandError) -> Self {
        Status::failed_precondition(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } | StoreError::RevisionNotFound { .. } => {
                Status::not_found(e.to_string())
            }
            StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
            StoreError::RevisionMismatch { .. } | StoreError::RolloutConflict { .. } => {
                Status::aborted(e.to_string())
            }
            StoreError::RolloutNotFound { .. } => Status::not_found(e.to_string()),
            StoreError::RolloutActive { .. } => Status::failed_precondition(e.to_string()),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                Status::unavailable(format!("{e}; nothing was changed, try again"))
            }
            StoreError::Unreadable { .. } => {
                tracing::error!(error = %e, "stored policy unreadable");
                Status::data_loss(e.to_string())
            }
            StoreError::Internal(_) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(e.to_string())
            }
        }
    }
}
