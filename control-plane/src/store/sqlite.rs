//! The SQLite store: the embedded default, so the control plane runs with no
//! database to set up. One replica only. Write transactions take SQLite's
//! write lock at once (`BEGIN IMMEDIATE`), so concurrent writers queue on the
//! busy timeout instead of failing when a read lock cannot be upgraded.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use tokio::sync::watch;

use super::fleet::ChangeFeed;
use super::flow::impl_sql_store;
use super::flow_rollouts::impl_rollout_store;
use super::rollouts::Leadership;
use super::{StoreError, StoreOptions};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policies",
        include_str!("../../../migrations/sqlite/0001_policies.sql"),
    ),
    (
        2,
        "fleet",
        include_str!("../../../migrations/sqlite/0002_fleet.sql"),
    ),
    (
        3,
        "rollouts",
        include_str!("../../../migrations/sqlite/0003_rollouts.sql"),
    ),
    (
        4,
        "revision actor",
        include_str!("../../../migrations/sqlite/0004_revision_actor.sql"),
    ),
];

/// The statements of [`super::flow`], in SQLite's dialect.
mod sql {
    macro_rules! policy_select {
        () => {
            "SELECT p.name, p.revision, p.generation, r.spec, p.create_time, p.update_time \
             FROM policies p JOIN policy_revisions r ON r.name = p.name AND r.revision = p.revision "
        };
    }
    macro_rules! revision_select {
        () => {
            "SELECT name, revision, change, spec, reason, create_time, policy_create_time, generation, actor \
             FROM policy_revisions "
        };
    }
    pub use super::super::flow::common_sql::{BUMP_FOR_UPDATE, HEAD, INSERT_HEAD, REVIVE};
    /// One replica only: the notice is in-process.
    pub const NOTIFY: Option<&str> = None;
    pub const NOTIFY_TELEMETRY: Option<&str> = None;
    pub const INSERT_REVISION: &str = "INSERT INTO policy_revisions \
         (name, revision, change, spec, reason, create_time, policy_create_time, generation, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    pub const BUMP_FOR_DELETE: &str = "UPDATE policies SET revision = revision + 1, deleted = TRUE, update_time = $3 \
         WHERE name = $1 AND NOT deleted AND ($2 IS NULL OR revision = $2) \
         RETURNING revision, create_time";
    pub const GET_POLICY: &str = concat!(policy_select!(), "WHERE p.name = $1 AND NOT p.deleted");
    pub const LIST_POLICIES: &str = concat!(
        policy_select!(),
        "WHERE NOT p.deleted AND ($1 IS NULL OR p.name > $1) ORDER BY p.name LIMIT $2"
    );
    pub const LIST_LIVE: &str = concat!(policy_select!(), "WHERE NOT p.deleted ORDER BY p.name");
    pub const LIST_AGENTS: &str = "SELECT a.agent_id, a.hostname, a.labels, a.build_version, \
         a.replica, a.session, a.connected, a.since, a.applied_version, a.nack_version, \
         a.nack_reason, a.last_report_time, a.reports_lost, r.heartbeat_time \
         FROM agents a LEFT JOIN replicas r ON r.id = a.replica \
         WHERE ($1 IS NULL OR a.agent_id > $1) ORDER BY a.agent_id LIMIT $2";
    pub const LIST_ROLLOUTS: &str = "SELECT body FROM rollouts \
         WHERE ($1 IS NULL OR policy = $1) AND (NOT $2 OR active) \
         AND ($3 IS NULL OR policy > $3 OR (policy = $3 AND number < $4)) \
         ORDER BY policy, number DESC LIMIT $5";
    pub const GET_REVISION: &str = concat!(revision_select!(), "WHERE name = $1 AND revision = $2");
    pub const LIST_REVISIONS: &str = concat!(
        revision_select!(),
        "WHERE name = $1 AND ($2 IS NULL OR revision < $2) ORDER BY revision DESC LIMIT $3"
    );
}

/// Policies in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    notices: Arc<watch::Sender<u64>>,
    /// Urgent telemetry written (one replica: nothing to listen to).
    urgent: Arc<watch::Sender<u64>>,
    health: Arc<super::health::DbHealth>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file of a `sqlite:` URL.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(options.acquire_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(Self {
            pool,
            notices: Arc::new(watch::channel(0).0),
            urgent: Arc::new(watch::channel(0).0),
            health: Arc::default(),
        })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A read transaction: one consistent view (WAL snapshot).
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    fn changed(&self) {
        self.notices.send_modify(|n| *n += 1);
    }

    /// One replica only: it always leads.
    async fn lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(SoleReplica)))
    }

    fn change_feed(&self) -> ChangeFeed {
        ChangeFeed::new(self.notices.subscribe(), None)
    }

    fn urgent_feed(&self) -> ChangeFeed {
        ChangeFeed::new(self.urgent.subscribe(), None)
    }
}

struct SoleReplica;

#[async_trait::async_trait]
impl Leadership for SoleReplica {
    async fn holds(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl_rollout_store!(SqliteStore, sqlx::SqliteConnection);
impl_sql_store!(SqliteStore, sqlx::SqliteConnection, sqlx::Sqlite);
