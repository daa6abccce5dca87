//! `shepherd.v1.RolloutService`: starting rollouts and operators' commands
//! (which act at once, from any replica), and watching a rollout's events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shepherd_proto::v1;
use shepherd_proto::v1::rollout_service_server::RolloutService;
use shepherd_proto::validate::check_name;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{invalid, page};
use crate::auth::Caller;
use crate::fleet::Fleet;
use crate::rollout::convert::event_to_wire;
use crate::rollout::model::Rollout;
use crate::rollout::{self, Command};
use crate::store::{Author, Store, StoreError};

/// Serves RolloutService.
#[derive(Clone)]
pub struct RolloutApi {
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
}

impl RolloutApi {
    pub fn new(store: Arc<dyn Store>, fleet: Arc<Fleet>) -> Self {
        Self { store, fleet }
    }

    /// Applies a command, reading the rollout again if it moved on meanwhile
    /// (the leader acted between the read and the write).
    async fn act(
        &self,
        policy: &str,
        number: i64,
        cmd: Command,
        by: Author<'_>,
    ) -> Result<Response<v1::Rollout>, Status> {
        valid_policy(policy)?;
        let number = number_arg(number)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = self.store.get_rollout(policy, number).await?;
            let stored = match self.store.get_policy(policy).await {
                Ok(p) => Some(p),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let write = rollout::command(&current, stored.as_ref(), &cmd, by, Utc::now())?;
            match self.store.write_rollout(write, Utc::now()).await {
                Ok(r) => {
                    info!(policy = %r.policy, number = r.number, command = ?cmd, state = r.phase().name(), weight = r.weight, "rollout command");
                    return Ok(wire(&r));
                }
                Err(StoreError::RolloutConflict { .. } | StoreError::RevisionMismatch { .. })
                    if attempts < 5 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn start(
        &self,
        policy: &str,
        by: Author<'_>,
        retry_of: i64,
    ) -> Result<Response<v1::Rollout>, Status> {
        let stored = self.store.get_policy(policy).await?;
        let (r, e) = rollout::start(&stored, Utc::now(), by, retry_of)?;
        let r = self.store.create_rollout(r, vec![e], Utc::now()).await?;
        info!(policy = %r.policy, number = r.number, weight = r.weight, "rollout started");
        Ok(wire(&r))
    }
}

/// An operator's command: who sent it and why.
fn by<'a>(actor: &'a str, reason: &'a str) -> Author<'a> {
    Author { actor, reason }
}

/// A rollout as callers see it.
fn wire(r: &Rollout) -> Response<v1::Rollout> {
    Response::new(v1::Rollout::from(r))
}

fn valid_policy(name: &str) -> Result<(), Status> {
    check_name(name).map_err(|rule| invalid("policy", rule))
}

fn number_arg(number: i64) -> Result<Option<i64>, Status> {
    match number {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n)),
        _ => Err(invalid("number", "must be positive (0 for the latest)")),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::RolloutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RolloutService for RolloutApi {
    #[tracing::instrument(skip_all, fields(rpc = "StartRollout"))]
    async fn start_rollout(
        &self,
        request: Request<v1::StartRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let request = request.into_inner();
        valid_policy(&request.policy)?;
        self.start(&request.policy, by(&actor, &request.reason), 0)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetRollout"))]
    async fn get_rollout(
        &self,
        request: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let request = request.into_inner();
        valid_policy(&request.policy)?;
        let number = number_arg(request.number)?;
        Ok(wire(
            &self.store.get_rollout(&request.policy, number).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListRollouts"))]
    async fn list_rollouts(
        &self,
        request: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        const SCOPE: &str = "rollouts";
        let request = request.into_inner();
        if !request.policy.is_empty() {
            valid_policy(&request.policy)?;
        }
        let size = page::page_size(request.page_size)?;
        let after = match page::decode(SCOPE, &request.page_token)? {
            None => None,
            Some(position) => {
                let parsed = position
                    .split_once('\n')
                    .and_then(|(p, n)| Some((p.to_string(), n.parse::<i64>().ok()?)));
                Some(parsed.ok_or_else(|| {
                    invalid("page_token", "not a next_page_token returned by this call")
                })?)
            }
        };
        let policy = (!request.policy.is_empty()).then_some(request.policy.as_str());
        let mut found = self
            .store
            .list_rollouts(policy, request.active_only, after, size + 1)
            .await?;
        let next_page_token = if found.len() > size as usize {
            found.truncate(size as usize);
            found
                .last()
                .map(|r| page::encode(SCOPE, &format!("{}\n{}", r.policy, r.number)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListRolloutsResponse {
            rollouts: found.iter().map(v1::Rollout::from).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "PauseRollout"))]
    async fn pause_rollout(
        &self,
        request: Request<v1::RolloutCommand>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let r = request.into_inner();
        self.act(&r.policy, r.number, Command::Pause, by(&actor, &r.reason))
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResumeRollout"))]
    async fn resume_rollout(
        &self,
        request: Request<v1::RolloutCommand>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let r = request.into_inner();
        self.act(&r.policy, r.number, Command::Resume, by(&actor, &r.reason))
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "PromoteRollout"))]
    async fn promote_rollout(
        &self,
        request: Request<v1::PromoteRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let r = request.into_inner();
        self.act(
            &r.policy,
            r.number,
            Command::Promote { full: r.full },
            by(&actor, &r.reason),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "AbortRollout"))]
    async fn abort_rollout(
        &self,
        request: Request<v1::RolloutCommand>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let r = request.into_inner();
        self.act(&r.policy, r.number, Command::Abort, by(&actor, &r.reason))
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RetryRollout"))]
    async fn retry_rollout(
        &self,
        request: Request<v1::RolloutCommand>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let actor = Caller::of(&request).actor();
        let r = request.into_inner();
        valid_policy(&r.policy)?;
        let number = number_arg(r.number)?;
        let latest = self.store.get_rollout(&r.policy, None).await?;
        let previous = match number {
            Some(n) if n != latest.number => self.store.get_rollout(&r.policy, Some(n)).await?,
            _ => latest.clone(),
        };
        rollout::check_retry(&previous, &latest)?;
        self.start(&r.policy, by(&actor, &r.reason), previous.number)
            .await
    }

    type WatchRolloutStream = EventStream;

    #[tracing::instrument(skip_all, fields(rpc = "WatchRollout"))]
    async fn watch_rollout(
        &self,
        request: Request<v1::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let request = request.into_inner();
        valid_policy(&request.policy)?;
        let number = number_arg(request.number)?;
        if request.after_sequence < 0 {
            return Err(invalid("after_sequence", "must not be negative"));
        }
        let rollout = self.store.get_rollout(&request.policy, number).await?;
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let mut changes = self.fleet.store_changes();
        tokio::spawn(async move {
            let mut after = request.after_sequence;
            loop {
                // Read the state first: events up to its sequence are then
                // all in the table.
                let state = match store
                    .get_rollout(&rollout.policy, Some(rollout.number))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                loop {
                    match store
                        .rollout_events(&rollout.policy, rollout.number, after, 500)
                        .await
                    {
                        Ok(events) if events.is_empty() => break,
                        Ok(events) => {
                            for e in events {
                                after = e.sequence;
                                let e = event_to_wire(&e, &rollout.policy, rollout.number);
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    }
                }
                if !state.phase().is_active() && after >= state.sequence {
                    return;
                }
                // A change notice, or a slow poll in case one was missed.
                tokio::select! {
                    () = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
