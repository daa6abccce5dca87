//! The Postgres store: the production store, shared by several control-plane
//! replicas. Two replicas racing on one policy cannot both win: every write
//! is a conditional statement in a transaction (see [`super::flow`]).

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::flow::impl_sql_store;
use super::{StoreError, StoreOptions};

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "policies",
    include_str!("../../../migrations/postgres/0001_policies.sql"),
)];

/// The statements of [`super::flow`], in Postgres' dialect.
mod sql {
    macro_rules! policy_select {
        () => {
            "SELECT p.name, p.revision, r.spec::text, p.create_time, p.update_time \
             FROM policies p JOIN policy_revisions r ON r.name = p.name AND r.revision = p.revision "
        };
    }
    macro_rules! revision_select {
        () => {
            "SELECT name, revision, change, spec::text, reason, create_time, policy_create_time \
             FROM policy_revisions "
        };
    }
    pub use super::super::flow::common_sql::{BUMP_FOR_UPDATE, HEAD, INSERT_HEAD, REVIVE};
    pub const INSERT_REVISION: &str = "INSERT INTO policy_revisions \
         (name, revision, change, spec, reason, create_time, policy_create_time) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)";
    pub const BUMP_FOR_DELETE: &str = "UPDATE policies SET revision = revision + 1, deleted = TRUE, update_time = $3 \
         WHERE name = $1 AND NOT deleted AND ($2::bigint IS NULL OR revision = $2) \
         RETURNING revision, create_time";
    pub const GET_POLICY: &str = concat!(policy_select!(), "WHERE p.name = $1 AND NOT p.deleted");
    pub const LIST_POLICIES: &str = concat!(
        policy_select!(),
        "WHERE NOT p.deleted AND ($1::text IS NULL OR p.name > $1) ORDER BY p.name LIMIT $2"
    );
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
}

impl PgStore {
    /// Connects a pool to `url` (it is not migrated).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// The pool, for the parts of the control plane that need Postgres itself
    /// (LISTEN/NOTIFY, advisory locks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

impl_sql_store!(PgStore, sqlx::PgConnection);
