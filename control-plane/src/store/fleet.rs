//! What the store keeps of the fleet: the policy catalog replicas build
//! snapshots from, the change feed that tells them to rebuild, agents and
//! replicas, and telemetry windows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shepherd_proto::v1;
use tokio::sync::watch;

use crate::policy::StoredPolicy;

/// Every live policy, read in one consistent view.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The generation of the last write the view includes.
    pub generation: i64,
    /// Live policies, by name.
    pub policies: Vec<StoredPolicy>,
    /// Active rollouts (they set their policies' weights), by policy.
    pub rollouts: Vec<crate::rollout::model::Rollout>,
}

/// Notices that policies may have changed. The value only ever grows; a
/// change of it means "read the catalog again". With Postgres, notices come
/// from every replica (LISTEN/NOTIFY), and a lost listener connection counts
/// as a notice once it is back.
pub struct ChangeFeed {
    receiver: watch::Receiver<u64>,
    /// The listener task behind the feed, shared by the store's feeds; it
    /// stops when the last of them is dropped.
    _listener: Option<std::sync::Arc<AbortOnDrop>>,
}

impl ChangeFeed {
    pub(crate) fn new(
        receiver: watch::Receiver<u64>,
        listener: Option<std::sync::Arc<AbortOnDrop>>,
    ) -> Self {
        Self {
            receiver,
            _listener: listener,
        }
    }

    /// Waits for the next notice; `false` once the store is gone.
    pub async fn changed(&mut self) -> bool {
        self.receiver.changed().await.is_ok()
    }

    /// Notices so far (this replica's own count of them).
    pub fn seen(&self) -> u64 {
        *self.receiver.borrow()
    }
}

/// Aborts a background task when dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the control plane knows of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub build_version: String,
    /// The replica holding (or last holding) its stream.
    pub replica: String,
    /// When that stream began, Unix microseconds.
    pub session: i64,
    pub connected: bool,
    /// Since when connected, or disconnected.
    pub since: DateTime<Utc>,
    pub applied_version: i64,
    pub nack_version: i64,
    pub nack_reason: String,
    pub last_report_time: Option<DateTime<Utc>>,
    pub reports_lost: i64,
}

/// An agent as listed: its record and the last heartbeat of its replica
/// (none when the replica is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAgent {
    pub record: AgentRecord,
    pub replica_heartbeat: Option<DateTime<Utc>>,
}

impl ListedAgent {
    /// The record as an operator should see it: an agent whose replica has
    /// not been heard of since `alive_after` is not connected any more.
    pub fn effective(mut self, alive_after: DateTime<Utc>) -> AgentRecord {
        if self.record.connected {
            match self.replica_heartbeat {
                Some(t) if t >= alive_after => {}
                heartbeat => {
                    self.record.connected = false;
                    self.record.since = heartbeat.unwrap_or(self.record.since);
                }
            }
        }
        self.record
    }
}

/// Telemetry for one backend of one policy under one snapshot version, as
/// merged by one replica over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    pub policy: String,
    pub snapshot_version: i64,
    pub backend: String,
    /// Start of the window, Unix milliseconds.
    pub window_start_ms: i64,
    pub replica: String,
    /// Agent reports merged into it.
    pub reports: i64,
    pub data: v1::BackendTelemetry,
}

/// Labels in their stored form.
pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn labels_from_json(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Every agent the store knows of, read a page at a time.
pub async fn list_all_agents(
    store: &dyn super::Store,
) -> Result<Vec<ListedAgent>, super::StoreError> {
    const PAGE: u32 = 1000;
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|a: &ListedAgent| a.record.agent_id.clone());
        let page = store.list_agents(after.as_deref(), PAGE).await?;
        let done = page.len() < PAGE as usize;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}
