//! `shepherd.v1.PolicyService`.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::Utc;
use shepherd_proto::v1;
use shepherd_proto::v1::policy_service_server::PolicyService;
use shepherd_proto::validate::check_name;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{invalid, invalid_policy, page};
use crate::auth::Caller;
use crate::policy::{Change, PolicySpec};
use crate::store::{Author, Store};

/// Serves PolicyService from a [`Store`].
#[derive(Clone)]
pub struct PolicyApi {
    store: Arc<dyn Store>,
}

impl PolicyApi {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn required_policy(policy: Option<v1::Policy>) -> Result<v1::Policy, Status> {
    policy.ok_or_else(|| invalid("policy", "required"))
}

fn valid_name(field: &str, name: &str) -> Result<(), Status> {
    check_name(name).map_err(|rule| invalid(field, rule))
}

fn revision_arg(field: &str, revision: i64) -> Result<Option<i64>, Status> {
    match revision {
        0 => Ok(None),
        r if r > 0 => Ok(Some(r)),
        _ => Err(invalid(field, "must be positive (0 for the latest)")),
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreatePolicy"))]
    async fn create_policy(
        &self,
        request: Request<v1::CreatePolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let actor = Caller::of(&request).actor();
        let request = request.into_inner();
        let spec = PolicySpec::validate(required_policy(request.policy)?, SystemTime::now())
            .map_err(invalid_policy)?;
        if request.validate_only {
            return Ok(Response::new(spec.as_proto().clone()));
        }
        let stored = self
            .store
            .create_policy(&spec, Author::operator(&actor), Utc::now())
            .await?;
        info!(
            policy = spec.name(),
            revision = stored.revision,
            "policy created"
        );
        Ok(Response::new(stored.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetPolicy"))]
    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let request = request.into_inner();
        valid_name("name", &request.name)?;
        let policy = match revision_arg("revision", request.revision)? {
            None => self.store.get_policy(&request.name).await?,
            Some(revision) => {
                let found = self.store.get_revision(&request.name, revision).await?;
                found.to_policy().ok_or_else(|| {
                    Status::not_found(format!(
                        "revision {revision} of policy {:?} records its deletion; list revisions to see the others",
                        request.name
                    ))
                })?
            }
        };
        Ok(Response::new(policy.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListPolicies"))]
    async fn list_policies(
        &self,
        request: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        const SCOPE: &str = "policies";
        let request = request.into_inner();
        let size = page::page_size(request.page_size)?;
        let after = page::decode(SCOPE, &request.page_token)?;
        let mut found = self.store.list_policies(after.as_deref(), size + 1).await?;
        let next_page_token = if found.len() > size as usize {
            found.truncate(size as usize);
            found
                .last()
                .map(|p| page::encode(SCOPE, p.spec.name()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListPoliciesResponse {
            policies: found.iter().map(|p| p.to_proto()).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdatePolicy"))]
    async fn update_policy(
        &self,
        request: Request<v1::UpdatePolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let actor = Caller::of(&request).actor();
        let request = request.into_inner();
        let policy = required_policy(request.policy)?;
        let expected = match policy.revision {
            r if r > 0 => r,
            0 => {
                return Err(invalid(
                    "policy.revision",
                    "required: the revision this update replaces, as returned by GetPolicy",
                ));
            }
            _ => return Err(invalid("policy.revision", "must be positive")),
        };
        let spec = PolicySpec::validate(policy, SystemTime::now()).map_err(invalid_policy)?;
        if request.validate_only {
            let current = self.store.get_policy(spec.name()).await?;
            if current.revision != expected {
                return Err(crate::store::StoreError::RevisionMismatch {
                    name: spec.name().into(),
                    expected,
                    actual: current.revision,
                }
                .into());
            }
            return Ok(Response::new(spec.as_proto().clone()));
        }
        let stored = self
            .store
            .update_policy(&spec, expected, Author::operator(&actor), Utc::now())
            .await?;
        info!(
            policy = spec.name(),
            revision = stored.revision,
            "policy updated"
        );
        Ok(Response::new(stored.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeletePolicy"))]
    async fn delete_policy(
        &self,
        request: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        let actor = Caller::of(&request).actor();
        let request = request.into_inner();
        valid_name("name", &request.name)?;
        let expected = revision_arg("revision", request.revision)?;
        let revision = self
            .store
            .delete_policy(
                &request.name,
                expected,
                Author::operator(&actor),
                Utc::now(),
            )
            .await?;
        info!(policy = %request.name, revision, "policy deleted");
        Ok(Response::new(v1::DeletePolicyResponse { revision }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListPolicyRevisions"))]
    async fn list_policy_revisions(
        &self,
        request: Request<v1::ListPolicyRevisionsRequest>,
    ) -> Result<Response<v1::ListPolicyRevisionsResponse>, Status> {
        let request = request.into_inner();
        valid_name("name", &request.name)?;
        let scope = format!("revisions/{}", request.name);
        let size = page::page_size(request.page_size)?;
        let before = page::decode(&scope, &request.page_token)?
            .map(|p| p.parse::<i64>())
            .transpose()
            .map_err(|_| invalid("page_token", "not a next_page_token returned by this call"))?;
        let mut found = self
            .store
            .list_revisions(&request.name, before, size + 1)
            .await?;
        let next_page_token = if found.len() > size as usize {
            found.truncate(size as usize);
            found
                .last()
                .map(|r| page::encode(&scope, &r.revision.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        debug_assert!(
            found
                .iter()
                .all(|r| (r.change == Change::Deleted) == r.spec.is_none())
        );
        Ok(Response::new(v1::ListPolicyRevisionsResponse {
            revisions: found.iter().map(|r| r.to_proto()).collect(),
            next_page_token,
        }))
    }
}
