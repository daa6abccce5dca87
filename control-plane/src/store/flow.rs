//! The transaction flow of the SQL stores, written once and instantiated per
//! engine with [`impl_sql_store!`]. Each engine module provides:
//!
//! - `struct X { pool }` with `async fn begin_write(&self)` (a transaction
//!   that takes the write lock at once where the engine needs that);
//! - a `sql` module with the statements named below, in its own dialect
//!   (those written alike in both come from [`common_sql`]);
//! - `MIGRATIONS`, the embedded migration files.
//!
//! Every write is one transaction of conditional statements: a stale
//! revision, a taken name or a racing writer touches no row, and the reason is
//! then read from the head row.

macro_rules! impl_sql_store {
    ($store:ty, $conn:ty) => {
        type PolicyTuple = (
            String,
            i64,
            String,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        );
        type RevisionTuple = (
            String,
            i64,
            String,
            Option<String>,
            String,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        );

        fn policy_row(row: PolicyTuple) -> Result<crate::policy::StoredPolicy, StoreError> {
            let (name, revision, spec, create_time, update_time) = row;
            super::PolicyRow {
                name,
                revision,
                spec,
                create_time,
                update_time,
            }
            .into_policy()
        }

        fn revision_row(row: RevisionTuple) -> Result<crate::policy::Revision, StoreError> {
            let (name, revision, change, spec, reason, create_time, policy_create_time) = row;
            super::RevisionRow {
                name,
                revision,
                change,
                spec,
                reason,
                create_time,
                policy_create_time,
            }
            .into_revision()
        }

        /// Moves the head row to its next revision with `bump` (a conditional
        /// update binding name, expected revision and time, returning the new
        /// revision and the incarnation's creation time) and records that
        /// revision. A bump that touches no row is explained from the head.
        #[allow(clippy::too_many_arguments)]
        async fn bump_and_record(
            conn: &mut $conn,
            bump: &'static str,
            name: &str,
            expected: Option<i64>,
            now: chrono::DateTime<chrono::Utc>,
            change: &str,
            spec: Option<&str>,
            reason: &str,
        ) -> Result<(i64, chrono::DateTime<chrono::Utc>), StoreError> {
            let bumped: Option<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(bump)
                .bind(name)
                .bind(expected)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
            let Some((revision, create_time)) = bumped else {
                let head: Option<(i64, bool)> = sqlx::query_as(sql::HEAD)
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?;
                return Err(super::explain_miss(name, head, expected));
            };
            record_revision(conn, name, revision, change, spec, reason, now, create_time).await?;
            Ok((revision, create_time))
        }

        /// Inserts one row of a policy's history.
        #[allow(clippy::too_many_arguments)]
        async fn record_revision(
            conn: &mut $conn,
            name: &str,
            revision: i64,
            change: &str,
            spec: Option<&str>,
            reason: &str,
            now: chrono::DateTime<chrono::Utc>,
            policy_create_time: chrono::DateTime<chrono::Utc>,
        ) -> Result<(), StoreError> {
            sqlx::query(sql::INSERT_REVISION)
                .bind(name)
                .bind(revision)
                .bind(change)
                .bind(spec)
                .bind(reason)
                .bind(now)
                .bind(policy_create_time)
                .execute(conn)
                .await?;
            Ok(())
        }

        #[async_trait::async_trait]
        impl super::Store for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                super::migrator(MIGRATIONS).run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_policy(
                &self,
                spec: &crate::policy::PolicySpec,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<crate::policy::StoredPolicy, StoreError> {
                let now = super::stored_time(now);
                let json = super::spec_json(spec)?;
                let name = spec.name();
                let mut tx = self.begin_write().await?;
                // A deleted name is revived at the revision after its deletion.
                let revived: Option<(i64,)> = sqlx::query_as(sql::REVIVE)
                    .bind(name)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let revision = match revived {
                    Some((r,)) => r,
                    None => {
                        let inserted: Option<(i64,)> = sqlx::query_as(sql::INSERT_HEAD)
                            .bind(name)
                            .bind(now)
                            .fetch_optional(&mut *tx)
                            .await?;
                        inserted
                            .ok_or_else(|| StoreError::AlreadyExists { name: name.into() })?
                            .0
                    }
                };
                record_revision(
                    &mut tx,
                    name,
                    revision,
                    "created",
                    Some(&json),
                    "",
                    now,
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok(crate::policy::StoredPolicy {
                    spec: spec.clone(),
                    revision,
                    create_time: now,
                    update_time: now,
                })
            }

            async fn get_policy(
                &self,
                name: &str,
            ) -> Result<crate::policy::StoredPolicy, StoreError> {
                let row: Option<PolicyTuple> = sqlx::query_as(sql::GET_POLICY)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                policy_row(row.ok_or_else(|| StoreError::NotFound { name: name.into() })?)
            }

            async fn get_revision(
                &self,
                name: &str,
                revision: i64,
            ) -> Result<crate::policy::Revision, StoreError> {
                let row: Option<RevisionTuple> = sqlx::query_as(sql::GET_REVISION)
                    .bind(name)
                    .bind(revision)
                    .fetch_optional(&self.pool)
                    .await?;
                if let Some(row) = row {
                    return revision_row(row);
                }
                let head: Option<(i64, bool)> = sqlx::query_as(sql::HEAD)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Err(match head {
                    None => StoreError::NotFound { name: name.into() },
                    Some(_) => StoreError::RevisionNotFound {
                        name: name.into(),
                        revision,
                    },
                })
            }

            async fn list_policies(
                &self,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<crate::policy::StoredPolicy>, StoreError> {
                let rows: Vec<PolicyTuple> = sqlx::query_as(sql::LIST_POLICIES)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(policy_row).collect()
            }

            async fn update_policy(
                &self,
                spec: &crate::policy::PolicySpec,
                expected_revision: i64,
                reason: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<crate::policy::StoredPolicy, StoreError> {
                let now = super::stored_time(now);
                let json = super::spec_json(spec)?;
                let name = spec.name();
                let mut tx = self.begin_write().await?;
                let (revision, create_time) = bump_and_record(
                    &mut tx,
                    sql::BUMP_FOR_UPDATE,
                    name,
                    Some(expected_revision),
                    now,
                    "updated",
                    Some(&json),
                    reason,
                )
                .await?;
                tx.commit().await?;
                Ok(crate::policy::StoredPolicy {
                    spec: spec.clone(),
                    revision,
                    create_time,
                    update_time: now,
                })
            }

            async fn delete_policy(
                &self,
                name: &str,
                expected_revision: Option<i64>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<i64, StoreError> {
                let now = super::stored_time(now);
                let mut tx = self.begin_write().await?;
                let (revision, _) = bump_and_record(
                    &mut tx,
                    sql::BUMP_FOR_DELETE,
                    name,
                    expected_revision,
                    now,
                    "deleted",
                    None,
                    "",
                )
                .await?;
                tx.commit().await?;
                Ok(revision)
            }

            async fn list_revisions(
                &self,
                name: &str,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<crate::policy::Revision>, StoreError> {
                let rows: Vec<RevisionTuple> = sqlx::query_as(sql::LIST_REVISIONS)
                    .bind(name)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                if rows.is_empty() && before.is_none() {
                    return Err(StoreError::NotFound { name: name.into() });
                }
                rows.into_iter().map(revision_row).collect()
            }
        }
    };
}

pub(crate) use impl_sql_store;

/// Statements both dialects write the same way.
pub(crate) mod common_sql {
    pub const HEAD: &str = "SELECT revision, deleted FROM policies WHERE name = $1";
    pub const REVIVE: &str = "UPDATE policies SET revision = revision + 1, deleted = FALSE, \
         create_time = $2, update_time = $2 WHERE name = $1 AND deleted RETURNING revision";
    pub const INSERT_HEAD: &str = "INSERT INTO policies (name, revision, deleted, create_time, update_time) \
         VALUES ($1, 1, FALSE, $2, $2) ON CONFLICT (name) DO NOTHING RETURNING revision";
    pub const BUMP_FOR_UPDATE: &str = "UPDATE policies SET revision = revision + 1, update_time = $3 \
         WHERE name = $1 AND revision = $2 AND NOT deleted RETURNING revision, create_time";
}
