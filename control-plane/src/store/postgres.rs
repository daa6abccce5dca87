//! The Postgres store: the production store, shared by several control-plane
//! replicas. Two replicas racing on one policy cannot both win: every write
//! is a conditional statement in a transaction (see [`super::flow`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::fleet::{AbortOnDrop, ChangeFeed};
use super::flow::impl_sql_store;
use super::flow_rollouts::impl_rollout_store;
use super::health::DbHealth;
use super::rollouts::Leadership;
use super::{StoreError, StoreOptions};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "policies",
        include_str!("../../../migrations/postgres/0001_policies.sql"),
    ),
    (
        2,
        "fleet",
        include_str!("../../../migrations/postgres/0002_fleet.sql"),
    ),
    (
        3,
        "rollouts",
        include_str!("../../../migrations/postgres/0003_rollouts.sql"),
    ),
    (
        4,
        "revision actor",
        include_str!("../../../migrations/postgres/0004_revision_actor.sql"),
    ),
];

/// The channel policy writes are announced on.
const CHANNEL: &str = "shepherd_changes";
/// The channel urgent telemetry writes are announced on.
const TELEMETRY_CHANNEL: &str = "shepherd_telemetry";

/// The statements of [`super::flow`], in Postgres' dialect.
mod sql {
    macro_rules! policy_select {
        () => {
            "SELECT p.name, p.revision, p.generation, r.spec::text, p.create_time, p.update_time \
             FROM policies p JOIN policy_revisions r ON r.name = p.name AND r.revision = p.revision "
        };
    }
    macro_rules! revision_select {
        () => {
            "SELECT name, revision, change, spec::text, reason, create_time, policy_create_time, generation, actor \
             FROM policy_revisions "
        };
    }
    pub use super::super::flow::common_sql::{BUMP_FOR_UPDATE, HEAD, INSERT_HEAD, REVIVE};
    /// Delivered to every listening replica when the write commits.
    pub const NOTIFY: Option<&str> = Some("SELECT pg_notify('shepherd_changes', $1)");
    /// Urgent telemetry, for the analysis leader wherever it runs.
    pub const NOTIFY_TELEMETRY: Option<&str> = Some("SELECT pg_notify('shepherd_telemetry', '')");
    pub const INSERT_REVISION: &str = "INSERT INTO policy_revisions \
         (name, revision, change, spec, reason, create_time, policy_create_time, generation, actor) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9)";
    pub const BUMP_FOR_DELETE: &str = "UPDATE policies SET revision = revision + 1, deleted = TRUE, update_time = $3 \
         WHERE name = $1 AND NOT deleted AND ($2::bigint IS NULL OR revision = $2) \
         RETURNING revision, create_time";
    pub const GET_POLICY: &str = concat!(policy_select!(), "WHERE p.name = $1 AND NOT p.deleted");
    pub const LIST_POLICIES: &str = concat!(
        policy_select!(),
        "WHERE NOT p.deleted AND ($1::text IS NULL OR p.name > $1) ORDER BY p.name LIMIT $2"
    );
    pub const LIST_LIVE: &str = concat!(policy_select!(), "WHERE NOT p.deleted ORDER BY p.name");
    pub const LIST_AGENTS: &str = "SELECT a.agent_id, a.hostname, a.labels, a.build_version, \
         a.replica, a.session, a.connected, a.since, a.applied_version, a.nack_version, \
         a.nack_reason, a.last_report_time, a.reports_lost, r.heartbeat_time \
         FROM agents a LEFT JOIN replicas r ON r.id = a.replica \
         WHERE ($1::text IS NULL OR a.agent_id > $1) ORDER BY a.agent_id LIMIT $2";
    pub const LIST_ROLLOUTS: &str = "SELECT body FROM rollouts \
         WHERE ($1::text IS NULL OR policy = $1) AND (NOT $2 OR active) \
         AND ($3::text IS NULL OR policy > $3 OR (policy = $3 AND number < $4)) \
         ORDER BY policy, number DESC LIMIT $5";
    pub const GET_REVISION: &str = concat!(revision_select!(), "WHERE name = $1 AND revision = $2");
    pub const LIST_REVISIONS: &str = concat!(
        revision_select!(),
        "WHERE name = $1 AND ($2::bigint IS NULL OR revision < $2) ORDER BY revision DESC LIMIT $3"
    );
}

/// Policies in Postgres.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    notices: Arc<watch::Sender<u64>>,
    /// Urgent telemetry written by this replica or, by NOTIFY, any other.
    urgent: Arc<watch::Sender<u64>>,
    health: Arc<super::health::DbHealth>,
    listener: Arc<std::sync::Mutex<std::sync::Weak<AbortOnDrop>>>,
}

/// Where the listener delivers the notices of each channel.
struct Notices {
    changes: Arc<watch::Sender<u64>>,
    urgent: Arc<watch::Sender<u64>>,
}

impl Notices {
    fn all(&self) {
        self.changes.send_modify(|n| *n += 1);
        self.urgent.send_modify(|n| *n += 1);
    }
}

impl PgStore {
    /// Connects a pool to `url` (it is not migrated).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            notices: Arc::new(watch::channel(0).0),
            urgent: Arc::new(watch::channel(0).0),
            health: Arc::default(),
            listener: Arc::default(),
        })
    }

    /// The pool, for the parts of the control plane that need Postgres itself
    /// (LISTEN/NOTIFY, advisory locks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction reading one consistent view of the database.
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// Tells this replica's own subscribers at once (other replicas hear of
    /// the write through NOTIFY).
    fn changed(&self) {
        self.notices.send_modify(|n| *n += 1);
    }

    /// Takes the leader's advisory lock on a connection of its own, if no
    /// other session holds it. The lock lives as long as that connection:
    /// if this process dies or loses the database, another replica gets it.
    async fn lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        Ok(taken.then(|| Box::new(PgLeadership { conn: Some(conn) }) as Box<dyn Leadership>))
    }

    /// A feed of this replica's writes and every replica's NOTIFY.
    fn change_feed(&self) -> ChangeFeed {
        ChangeFeed::new(self.notices.subscribe(), Some(self.listener()))
    }

    /// A feed of this replica's urgent telemetry writes and every
    /// replica's NOTIFY of them.
    fn urgent_feed(&self) -> ChangeFeed {
        ChangeFeed::new(self.urgent.subscribe(), Some(self.listener()))
    }

    /// The one listener of this store (one connection, both channels),
    /// started by the first feed and stopped with the last.
    fn listener(&self) -> Arc<AbortOnDrop> {
        let mut shared = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = shared.upgrade() {
            return running;
        }
        let task = Arc::new(AbortOnDrop(tokio::spawn(listen(
            self.pool.clone(),
            Notices {
                changes: self.notices.clone(),
                urgent: self.urgent.clone(),
            },
            self.health.clone(),
        ))));
        *shared = Arc::downgrade(&task);
        task
    }
}

/// The advisory lock key of the analysis leader ("shepherd" in ASCII).
const LEADER_LOCK: i64 = 0x7368_6570_6865_7264;

/// The leader's lock, held by its connection.
struct PgLeadership {
    conn: Option<sqlx::PgConnection>,
}

#[async_trait::async_trait]
impl Leadership for PgLeadership {
    async fn holds(&mut self) -> Result<(), String> {
        let Some(conn) = self.conn.as_mut() else {
            return Err("its database connection was closed".into());
        };
        let check = sqlx::query_as::<_, (bool,)>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted)",
        )
        .fetch_one(&mut *conn);
        let why = match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok((true,))) => return Ok(()),
            Ok(Ok((false,))) => "the advisory lock is no longer held".to_string(),
            Ok(Err(e)) => format!("its database connection failed: {e}"),
            Err(_) => "the database did not answer within 2s".to_string(),
        };
        // Closing the connection releases the lock if the server still
        // holds it for us.
        self.conn = None;
        Err(why)
    }
}

/// Turns NOTIFY on both channels into notices until aborted, over one
/// connection. Every (re)connection counts as a notice on both, since
/// writes may have been missed while no connection listened.
/// A lost connection is reported to `health` (logged once per outage).
async fn listen(pool: PgPool, notices: Notices, health: Arc<DbHealth>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                health.down(&format!("the change listener cannot connect: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen_all([CHANNEL, TELEMETRY_CHANNEL]).await {
            health.down(&format!("the change listener cannot listen: {e}"));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        health.up();
        backoff = Duration::from_millis(100);
        notices.all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    health.up();
                    let to = if n.channel() == TELEMETRY_CHANNEL {
                        &notices.urgent
                    } else {
                        &notices.changes
                    };
                    to.send_modify(|n| *n += 1);
                }
                // The connection was lost; the next call reconnects (and
                // reports to `health` if it cannot).
                Ok(None) => notices.all(),
                Err(e) => {
                    health.down(&format!("the change listener failed: {e}"));
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

impl_rollout_store!(PgStore, sqlx::PgConnection);
impl_sql_store!(PgStore, sqlx::PgConnection, sqlx::Postgres);
