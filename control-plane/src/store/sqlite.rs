//! The SQLite store: the embedded default, so the control plane runs with no
//! database to set up. One replica only. Write transactions take SQLite's
//! write lock at once (`BEGIN IMMEDIATE`), so concurrent writers queue on the
//! busy timeout instead of failing when a read lock cannot be upgraded.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::flow::impl_sql_store;
use super::{StoreError, StoreOptions};

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "policies",
    include_str!("../../../migrations/sqlite/0001_policies.sql"),
)];

/// The statements of [`super::flow`], in SQLite's dialect.
mod sql {
    macro_rules! policy_select {
        () => {
            "SELECT p.name, p.revision, r.spec, p.create_time, p.update_time \
             FROM policies p JOIN policy_revisions r ON r.name = p.name AND r.revision = p.revision "
        };
    }
    macro_rules! revision_select {
        () => {
            "SELECT name, revision, change, spec, reason, create_time, policy_create_time \
             FROM policy_revisions "
        };
    }
    pub use super::super::flow::common_sql::{BUMP_FOR_UPDATE, HEAD, INSERT_HEAD, REVIVE};
    pub const INSERT_REVISION: &str = "INSERT INTO policy_revisions \
         (name, revision, change, spec, reason, create_time, policy_create_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub const BUMP_FOR_DELETE: &str = "UPDATE policies SET revision = revision + 1, deleted = TRUE, update_time = $3 \
         WHERE name = $1 AND NOT deleted AND ($2 IS NULL OR revision = $2) \
         RETURNING revision, create_time";
    pub const GET_POLICY: &str = concat!(policy_select!(), "WHERE p.name = $1 AND NOT p.deleted");
    pub const LIST_POLICIES: &str = concat!(
        policy_select!(),
        "WHERE NOT p.deleted AND ($1 IS NULL OR p.name > $1) ORDER BY p.name LIMIT $2"
    );
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
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl_sql_store!(SqliteStore, sqlx::SqliteConnection);
