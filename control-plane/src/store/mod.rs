//! Durable state: the [`Store`] trait and its two implementations,
//! [`postgres::PgStore`] (production, several replicas) and
//! [`sqlite::SqliteStore`] (embedded default, one replica).
//!
//! Both run the same test suite. SQL lives in each implementation; migrations
//! live in `migrations/<engine>` and are embedded in the binary.

pub mod fleet;
mod flow;
mod flow_rollouts;
pub mod health;
pub mod postgres;
pub mod rollouts;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::policy::{PolicySpec, Revision, StoredPolicy};
pub use fleet::{AgentRecord, Catalog, ChangeFeed, ListedAgent, TelemetryRow};
pub use rollouts::{Leadership, PolicyWrite, RolloutStore, RolloutWrite};

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("policy {name:?} not found")]
    NotFound { name: String },
    #[error("policy {name:?} has no revision {revision}")]
    RevisionNotFound { name: String, revision: i64 },
    #[error("policy {name:?} already exists")]
    AlreadyExists { name: String },
    /// Optimistic concurrency: the caller's revision is not the latest.
    #[error(
        "policy {name:?} is at revision {actual}, not {expected}: it changed since it was read; read it again and reapply the change"
    )]
    RevisionMismatch {
        name: String,
        expected: i64,
        actual: i64,
    },
    #[error("{}", rollout_not_found(policy, *number))]
    RolloutNotFound { policy: String, number: Option<i64> },
    /// At most one rollout of a policy is active.
    #[error("policy {policy:?} already has an active rollout: {policy}#{number}")]
    RolloutActive { policy: String, number: i64 },
    /// Optimistic concurrency: the rollout moved on since it was read.
    #[error("rollout {policy}#{number} changed since it was read; read it again")]
    RolloutConflict { policy: String, number: i64 },
    /// The database cannot be reached or is overloaded; the call may succeed
    /// later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored policy this control plane cannot read (written by another
    /// version, or changed by hand). Only that policy is affected: lists and
    /// the agents' snapshots leave it out.
    #[error(
        "policy {name:?} at revision {revision} is stored in a form that cannot be read ({message}); write it again with UpdatePolicy at that revision, or delete it"
    )]
    Unreadable {
        name: String,
        revision: i64,
        message: String,
    },
    /// Anything else: a bug, or data the store cannot read.
    #[error("store error: {0}")]
    Internal(String),
}

fn rollout_not_found(policy: &str, number: Option<i64>) -> String {
    match number {
        Some(n) => format!("policy {policy:?} has no rollout {n}"),
        None => format!("policy {policy:?} has no rollout"),
    }
}

impl StoreError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(db.message().to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// Database error codes that mean "try again later": Postgres class 08
/// (connection), 53 (resources), 57P (shutdown), 40001/40P01 (serialization,
/// deadlock); SQLite 5/6 (busy, locked).
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c == "5"
                || c == "6"
                || c == "517"
                || c == "261"
        }
        None => false,
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => StoreError::Internal(format!("migration failed: {other}")),
        }
    }
}

/// Durable home of policies and their revisions.
///
/// Every write stores a new revision in one transaction; a write that fails
/// changes nothing.
/// Who writes a revision and why, recorded with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Author<'a> {
    /// `operator:<token name>`, `operator` (no token configured) or the
    /// control-plane replica deciding a rollout.
    pub actor: &'a str,
    /// Why, when the server itself writes; empty for an operator's write.
    pub reason: &'a str,
}

impl<'a> Author<'a> {
    /// An operator's write.
    pub fn operator(actor: &'a str) -> Self {
        Self { actor, reason: "" }
    }
}

#[async_trait]
pub trait Store: RolloutStore + Send + Sync + 'static {
    /// Applies pending migrations. Safe to run from several replicas at once.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The database's reachability as this replica sees it; every part that
    /// talks to the database reports into it.
    fn health(&self) -> &health::DbHealth;

    /// Stores a new policy: revision 1, or for a deleted name the revision
    /// after its deletion.
    async fn create_policy(
        &self,
        spec: &PolicySpec,
        author: Author<'_>,
        now: DateTime<Utc>,
    ) -> Result<StoredPolicy, StoreError>;

    /// The live revision of a policy.
    async fn get_policy(&self, name: &str) -> Result<StoredPolicy, StoreError>;

    /// One stored revision of a policy, deletions included.
    async fn get_revision(&self, name: &str, revision: i64) -> Result<Revision, StoreError>;

    /// Live policies with names after `after`, by name, at most `limit`.
    async fn list_policies(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredPolicy>, StoreError>;

    /// Replaces a policy if its latest revision is `expected_revision`.
    async fn update_policy(
        &self,
        spec: &PolicySpec,
        expected_revision: i64,
        author: Author<'_>,
        now: DateTime<Utc>,
    ) -> Result<StoredPolicy, StoreError>;

    /// Deletes a policy (if `expected_revision` is given, only at that
    /// revision) and returns the revision recording the deletion.
    async fn delete_policy(
        &self,
        name: &str,
        expected_revision: Option<i64>,
        author: Author<'_>,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;

    /// Revisions of a policy below `before`, newest first, at most `limit`.
    async fn list_revisions(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Revision>, StoreError>;

    /// Every live policy and the generation they are as of, in one
    /// consistent read.
    async fn load_catalog(&self) -> Result<Catalog, StoreError>;

    /// Notices of policy writes (this replica's and, with Postgres, every
    /// replica's). Subscribe before reading the catalog.
    fn changes(&self) -> ChangeFeed;

    /// Records that `replica` is alive and writes its agents' records.
    async fn save_agents(
        &self,
        replica: &str,
        now: DateTime<Utc>,
        agents: &[AgentRecord],
    ) -> Result<(), StoreError>;

    /// Agents with ids after `after`, by id, at most `limit`.
    async fn list_agents(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ListedAgent>, StoreError>;

    /// A replica stops: its agents are disconnected as of `now`.
    async fn release_replica(&self, replica: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Appends merged telemetry windows. `urgent`: they hold an agent's
    /// urgent report, and the analysis leader, wherever it runs, hears of
    /// them at once ([`Store::urgent_telemetry`]).
    async fn write_telemetry(&self, rows: &[TelemetryRow], urgent: bool) -> Result<(), StoreError>;

    /// Notices of urgent telemetry writes (this replica's and, with
    /// Postgres, every replica's, by NOTIFY on `shepherd_telemetry`).
    fn urgent_telemetry(&self) -> ChangeFeed;

    /// A policy's telemetry rows with windows starting in `[from_ms, to_ms)`.
    async fn read_telemetry(
        &self,
        policy: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<TelemetryRow>, StoreError>;

    /// Deletes telemetry windows before `telemetry_before_ms`, and agents
    /// with no news since `agents_before` that are disconnected or whose
    /// replica is silent too (and such replicas); returns how many windows
    /// and agents.
    async fn prune(
        &self,
        telemetry_before_ms: i64,
        agents_before: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError>;
}

/// Which engine a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// The engine of a URL: `postgres://`/`postgresql://` or `sqlite:`.
    pub fn of_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else {
            Err(format!(
                "database URL {:?}: must start with postgres://, postgresql:// or sqlite:",
                redact_url(url)
            ))
        }
    }
}

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most open connections.
    pub max_connections: u32,
    /// Longest wait for a free connection; past it a call fails UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens the store a URL selects (without migrating it).
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let engine = Engine::of_url(url).map_err(StoreError::Internal)?;
    Ok(match engine {
        Engine::Postgres => Arc::new(postgres::PgStore::connect(url, options).await?),
        Engine::Sqlite => Arc::new(sqlite::SqliteStore::connect(url, options).await?),
    })
}

/// A database URL with any password replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        None => authority.to_string(),
    };
    // Query parameters can carry a password too.
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?..."),
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A revision as read from a row, before its spec is parsed.
pub(crate) struct RevisionRow {
    pub name: String,
    pub revision: i64,
    pub generation: i64,
    pub change: String,
    pub spec: Option<String>,
    pub reason: String,
    pub actor: String,
    pub create_time: DateTime<Utc>,
    pub policy_create_time: DateTime<Utc>,
}

impl RevisionRow {
    pub(crate) fn into_revision(self) -> Result<Revision, StoreError> {
        let change = crate::policy::Change::parse(&self.change).ok_or_else(|| {
            StoreError::Internal(format!("unknown change kind {:?}", self.change))
        })?;
        let spec = self
            .spec
            .as_deref()
            .map(PolicySpec::from_stored_json)
            .transpose()
            .map_err(|e| StoreError::Unreadable {
                name: self.name.clone(),
                revision: self.revision,
                message: e.0,
            })?;
        Ok(Revision {
            name: self.name,
            revision: self.revision,
            generation: self.generation,
            change,
            create_time: self.create_time,
            policy_create_time: self.policy_create_time,
            spec,
            reason: self.reason,
            actor: self.actor,
        })
    }
}

/// A live policy as read from a row, before its spec is parsed.
pub(crate) struct PolicyRow {
    pub name: String,
    pub revision: i64,
    pub generation: i64,
    pub spec: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl PolicyRow {
    pub(crate) fn into_policy(self) -> Result<StoredPolicy, StoreError> {
        let spec =
            PolicySpec::from_stored_json(&self.spec).map_err(|e| StoreError::Unreadable {
                name: self.name.clone(),
                revision: self.revision,
                message: e.0,
            })?;
        Ok(StoredPolicy {
            spec,
            revision: self.revision,
            generation: self.generation,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

/// Why a conditional write touched no row, found by reading the head row.
pub(crate) fn explain_miss(
    name: &str,
    head: Option<(i64, bool)>,
    expected: Option<i64>,
) -> StoreError {
    match head {
        None | Some((_, true)) => StoreError::NotFound { name: name.into() },
        Some((actual, false)) => StoreError::RevisionMismatch {
            name: name.into(),
            expected: expected.unwrap_or(actual),
            actual,
        },
    }
}

/// The policies of rows that can be read; an unreadable one is logged,
/// naming the policy, and left out, so one bad row never hides the rest.
pub(crate) fn readable(
    rows: impl IntoIterator<Item = Result<StoredPolicy, StoreError>>,
) -> Result<Vec<StoredPolicy>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        match row {
            Ok(p) => out.push(p),
            Err(e @ StoreError::Unreadable { .. }) => {
                tracing::error!(error = %e, "skipping a stored policy that cannot be read");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A time as both engines store it: to the microsecond, so what a write
/// returns equals what a later read returns.
pub(crate) fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

/// Serialises a spec for storage.
pub(crate) fn spec_json(spec: &PolicySpec) -> Result<String, StoreError> {
    spec.to_json()
        .map_err(|e| StoreError::Internal(format!("cannot encode policy: {e}")))
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "postgres",
            Engine::Sqlite => "sqlite",
        })
    }
}

/// Builds a migrator from migrations embedded at compile time.
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            sqlx::migrate::Migration::new(
                *version,
                (*description).into(),
                sqlx::migrate::MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    sqlx::migrate::Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords in database URLs never reach a log line.
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://shepherd:s3cret@db:5432/shepherd?sslmode=require&password=x"),
            "postgres://shepherd:***@db:5432/shepherd?..."
        );
        assert_eq!(
            redact_url("postgres://db/shepherd"),
            "postgres://db/shepherd"
        );
        assert_eq!(redact_url("sqlite://shepherd.db"), "sqlite://shepherd.db");
    }

    /// Only Postgres and SQLite URLs are accepted, with a clear error.
    #[test]
    fn engine_of_url() {
        assert_eq!(Engine::of_url("postgresql://x/y"), Ok(Engine::Postgres));
        assert_eq!(Engine::of_url("sqlite::memory:"), Ok(Engine::Sqlite));
        let err = Engine::of_url("mysql://u:pw@x/y").unwrap_err();
        assert!(err.contains("must start with postgres://"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }
}
