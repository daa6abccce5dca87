//! `shepherd.v1.AgentService`: the agents' Connect stream (agent token) and
//! the fleet view for operators (admin token).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use shepherd_proto::v1;
use shepherd_proto::v1::agent_service_server::AgentService;
use shepherd_proto::validate::{check_name, labels_match};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{invalid, page};
use crate::fleet::{Fleet, session};
use crate::store::fleet::list_all_agents;
use crate::store::{AgentRecord, ListedAgent, Store};
use crate::tls::ConnInfo;

/// Serves AgentService.
#[derive(Clone)]
pub struct AgentApi {
    fleet: Arc<Fleet>,
    store: Arc<dyn Store>,
    by_cert: bool,
}

impl AgentApi {
    /// `by_cert`: agents must present a client certificate naming their id.
    pub fn new(fleet: Arc<Fleet>, store: Arc<dyn Store>, by_cert: bool) -> Self {
        Self {
            fleet,
            store,
            by_cert,
        }
    }

    /// A replica's heartbeat must be newer than this for its agents to
    /// count as connected.
    fn alive_after(&self) -> chrono::DateTime<Utc> {
        Utc::now()
            - chrono::Duration::from_std(self.fleet.options.replica_timeout)
                .unwrap_or(chrono::Duration::MAX)
    }

    /// A page of the agents the store knows of, as operators should see
    /// them: records of this replica's agents (`local`) are taken from
    /// memory, being fresher.
    async fn agents_page(
        &self,
        after: Option<&str>,
        limit: u32,
        local: &HashMap<String, AgentRecord>,
    ) -> Result<Vec<AgentRecord>, Status> {
        let alive_after = self.alive_after();
        let listed = self.store.list_agents(after, limit).await?;
        Ok(listed
            .into_iter()
            .map(|l| overlay(l, local, alive_after))
            .collect())
    }

    /// Every agent, local records overlaid, including those not written yet.
    async fn all_agents(&self) -> Result<Vec<AgentRecord>, Status> {
        let local = self.fleet.agents.records();
        let alive_after = self.alive_after();
        let mut all: HashMap<String, AgentRecord> = list_all_agents(self.store.as_ref())
            .await?
            .into_iter()
            .map(|l| overlay(l, &local, alive_after))
            .map(|a| (a.agent_id.clone(), a))
            .collect();
        for (id, mine) in local {
            if all.get(&id).is_none_or(|a| a.session <= mine.session) {
                all.insert(id, mine);
            }
        }
        Ok(all.into_values().collect())
    }
}

/// A listed agent as operators should see it: this replica's record when it
/// is at least as new.
fn overlay(
    listed: ListedAgent,
    local: &HashMap<String, AgentRecord>,
    alive_after: chrono::DateTime<Utc>,
) -> AgentRecord {
    match local.get(&listed.record.agent_id) {
        Some(mine) if mine.session >= listed.record.session => mine.clone(),
        _ => listed.effective(alive_after),
    }
}

fn agent_info(a: AgentRecord) -> v1::AgentInfo {
    v1::AgentInfo {
        agent_id: a.agent_id,
        hostname: a.hostname,
        labels: a.labels,
        build_version: a.build_version,
        replica: a.replica,
        connected: a.connected,
        since: Some(a.since.into()),
        applied_version: u64::try_from(a.applied_version).unwrap_or(0),
        nack_version: u64::try_from(a.nack_version).unwrap_or(0),
        nack_reason: a.nack_reason,
        last_report_time: a.last_report_time.map(Into::into),
        reports_lost: u64::try_from(a.reports_lost).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = ReceiverStream<Result<v1::ControlMessage, Status>>;

    #[tracing::instrument(skip_all, fields(rpc = "Connect"))]
    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        // With mTLS, the certificate's names are the ids this caller may
        // connect as (checked against its hello).
        let identity = if self.by_cert {
            let names = request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.peer.clone())
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "this control plane admits agents by client certificate (mTLS): \
                         present one issued by its client CA, naming the agent id",
                    )
                })?;
            Some(names)
        } else {
            None
        };
        if self.fleet.stopping.is_cancelled() {
            return Err(Status::unavailable(
                "control plane replica shutting down; reconnect to another",
            ));
        }
        let permit = self.fleet.admit().await.ok_or_else(|| {
            Status::resource_exhausted("too many agents connecting at once; retry after a backoff")
        })?;
        let (out, rx) = mpsc::channel(1);
        tokio::spawn(session::run(
            self.fleet.clone(),
            request.into_inner(),
            out,
            permit,
            identity,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAgents"))]
    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        const SCOPE: &str = "agents";
        let request = request.into_inner();
        let size = page::page_size(request.page_size)?;
        let after = page::decode(SCOPE, &request.page_token)?;
        let local = self.fleet.agents.records();
        let mut found = self.agents_page(after.as_deref(), size + 1, &local).await?;
        let next_page_token = if found.len() > size as usize {
            found.truncate(size as usize);
            found
                .last()
                .map(|a| page::encode(SCOPE, &a.agent_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListAgentsResponse {
            agents: found.into_iter().map(agent_info).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetPolicyStatus"))]
    async fn get_policy_status(
        &self,
        request: Request<v1::GetPolicyStatusRequest>,
    ) -> Result<Response<v1::PolicyStatus>, Status> {
        let request = request.into_inner();
        check_name(&request.name).map_err(|rule| invalid("name", rule))?;
        let policy = self.store.get_policy(&request.name).await?;
        let since = u64::try_from(policy.generation).unwrap_or(0);
        let selector = policy
            .spec
            .as_proto()
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default();
        let mut status = v1::PolicyStatus {
            name: request.name,
            revision: policy.revision,
            since_version: since,
            ..Default::default()
        };
        for a in self.all_agents().await? {
            if !a.connected || !labels_match(&selector, &a.labels) {
                continue;
            }
            status.selected_agents += 1;
            if u64::try_from(a.applied_version).unwrap_or(0) >= since {
                status.current_agents += 1;
            } else if a.nack_version >= policy.generation && a.nack_version > a.applied_version {
                status.nacking_agents += 1;
            }
        }
        Ok(Response::new(status))
    }
}
