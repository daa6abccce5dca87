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
    ($store:ty, $conn:ty, $db:ty) => {
        type PolicyTuple = (
            String,
            i64,
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
            i64,
            String,
        );

        type AgentTuple = (
            String,
            String,
            String,
            String,
            String,
            i64,
            bool,
            chrono::DateTime<chrono::Utc>,
            i64,
            i64,
            String,
            Option<chrono::DateTime<chrono::Utc>>,
            i64,
            Option<chrono::DateTime<chrono::Utc>>,
        );

        fn agent_row(row: AgentTuple) -> super::fleet::ListedAgent {
            let (
                agent_id,
                hostname,
                labels,
                build_version,
                replica,
                session,
                connected,
                since,
                applied_version,
                nack_version,
                nack_reason,
                last_report_time,
                reports_lost,
                replica_heartbeat,
            ) = row;
            super::fleet::ListedAgent {
                record: super::fleet::AgentRecord {
                    agent_id,
                    hostname,
                    labels: super::fleet::labels_from_json(&labels),
                    build_version,
                    replica,
                    session,
                    connected,
                    since,
                    applied_version,
                    nack_version,
                    nack_reason,
                    last_report_time,
                    reports_lost,
                },
                replica_heartbeat,
            }
        }

        fn policy_row(row: PolicyTuple) -> Result<crate::policy::StoredPolicy, StoreError> {
            let (name, revision, generation, spec, create_time, update_time) = row;
            super::PolicyRow {
                name,
                revision,
                generation,
                spec,
                create_time,
                update_time,
            }
            .into_policy()
        }

        fn revision_row(row: RevisionTuple) -> Result<crate::policy::Revision, StoreError> {
            let (
                name,
                revision,
                change,
                spec,
                reason,
                create_time,
                policy_create_time,
                generation,
                actor,
            ) = row;
            super::RevisionRow {
                name,
                revision,
                generation,
                change,
                spec,
                reason,
                actor,
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
            author: super::Author<'_>,
        ) -> Result<(i64, chrono::DateTime<chrono::Utc>, i64), StoreError> {
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
            let generation =
                record_revision(conn, name, revision, change, spec, author, now, create_time)
                    .await?;
            Ok((revision, create_time, generation))
        }

        /// Records one write of a policy: takes the next generation (which
        /// orders every write, and so every snapshot), stamps the head row
        /// with it, inserts the row of the policy's history, and tells other
        /// replicas (delivered when the transaction commits).
        #[allow(clippy::too_many_arguments)]
        async fn record_revision(
            conn: &mut $conn,
            name: &str,
            revision: i64,
            change: &str,
            spec: Option<&str>,
            author: super::Author<'_>,
            now: chrono::DateTime<chrono::Utc>,
            policy_create_time: chrono::DateTime<chrono::Utc>,
        ) -> Result<i64, StoreError> {
            let generation = next_generation(conn).await?;
            sqlx::query(super::flow::common_sql::STAMP_HEAD)
                .bind(name)
                .bind(generation)
                .execute(&mut *conn)
                .await?;
            sqlx::query(sql::INSERT_REVISION)
                .bind(name)
                .bind(revision)
                .bind(change)
                .bind(spec)
                .bind(author.reason)
                .bind(now)
                .bind(policy_create_time)
                .bind(generation)
                .bind(author.actor)
                .execute(&mut *conn)
                .await?;
            announce(conn, &generation.to_string()).await?;
            Ok(generation)
        }

        /// Takes the next generation (the row lock orders concurrent writers).
        async fn next_generation(conn: &mut $conn) -> Result<i64, StoreError> {
            let (generation,): (i64,) = sqlx::query_as(super::flow::common_sql::NEXT_GENERATION)
                .fetch_one(&mut *conn)
                .await?;
            Ok(generation)
        }

        /// Tells every replica that the store changed (delivered when the
        /// transaction commits; listeners only count notices).
        async fn announce(conn: &mut $conn, payload: &str) -> Result<(), StoreError> {
            if let Some(notify) = sql::NOTIFY {
                sqlx::query(notify).bind(payload).execute(&mut *conn).await?;
            }
            Ok(())
        }

        #[async_trait::async_trait]
        impl super::Store for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                super::migrator(MIGRATIONS).run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                let result = sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from);
                self.health.saw(&result);
                result
            }

            fn health(&self) -> &super::health::DbHealth {
                &self.health
            }

            async fn create_policy(
                &self,
                spec: &crate::policy::PolicySpec,
                author: super::Author<'_>,
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
                let generation = record_revision(
                    &mut tx,
                    name,
                    revision,
                    "created",
                    Some(&json),
                    author,
                    now,
                    now,
                )
                .await?;
                tx.commit().await?;
                self.changed();
                Ok(crate::policy::StoredPolicy {
                    spec: spec.clone(),
                    revision,
                    generation,
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
                super::readable(rows.into_iter().map(policy_row))
            }

            async fn update_policy(
                &self,
                spec: &crate::policy::PolicySpec,
                expected_revision: i64,
                author: super::Author<'_>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<crate::policy::StoredPolicy, StoreError> {
                let now = super::stored_time(now);
                let json = super::spec_json(spec)?;
                let name = spec.name();
                let mut tx = self.begin_write().await?;
                let (revision, create_time, generation) = bump_and_record(
                    &mut tx,
                    sql::BUMP_FOR_UPDATE,
                    name,
                    Some(expected_revision),
                    now,
                    "updated",
                    Some(&json),
                    author,
                )
                .await?;
                tx.commit().await?;
                self.changed();
                Ok(crate::policy::StoredPolicy {
                    spec: spec.clone(),
                    revision,
                    generation,
                    create_time,
                    update_time: now,
                })
            }

            async fn delete_policy(
                &self,
                name: &str,
                expected_revision: Option<i64>,
                author: super::Author<'_>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<i64, StoreError> {
                let now = super::stored_time(now);
                let mut tx = self.begin_write().await?;
                let (revision, _, _) = bump_and_record(
                    &mut tx,
                    sql::BUMP_FOR_DELETE,
                    name,
                    expected_revision,
                    now,
                    "deleted",
                    None,
                    author,
                )
                .await?;
                tx.commit().await?;
                self.changed();
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

            async fn load_catalog(&self) -> Result<super::fleet::Catalog, StoreError> {
                let mut tx = self.begin_read().await?;
                let (generation,): (i64,) = sqlx::query_as(super::flow::common_sql::GENERATION)
                    .fetch_one(&mut *tx)
                    .await?;
                let rows: Vec<PolicyTuple> = sqlx::query_as(sql::LIST_LIVE)
                    .fetch_all(&mut *tx)
                    .await?;
                let rollouts: Vec<(String,)> =
                    sqlx::query_as(super::flow_rollouts::sql::ACTIVE_ROLLOUTS)
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(super::fleet::Catalog {
                    generation,
                    policies: super::readable(rows.into_iter().map(policy_row))?,
                    rollouts: rollouts
                        .iter()
                        .map(|(body,)| super::rollouts::rollout_from_json(body))
                        .collect::<Result<_, _>>()?,
                })
            }

            fn changes(&self) -> super::fleet::ChangeFeed {
                self.change_feed()
            }

            async fn save_agents(
                &self,
                replica: &str,
                now: chrono::DateTime<chrono::Utc>,
                agents: &[super::fleet::AgentRecord],
            ) -> Result<(), StoreError> {
                let now = super::stored_time(now);
                let mut tx = self.pool.begin().await?;
                sqlx::query(super::flow::common_sql::HEARTBEAT)
                    .bind(replica)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // 14 binds a row, well under both engines' limits per statement.
                for chunk in agents.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agents (agent_id, hostname, labels, build_version, replica, \
                         session, connected, since, applied_version, nack_version, nack_reason, \
                         last_report_time, reports_lost, update_time) ",
                    );
                    q.push_values(chunk, |mut b, a| {
                        b.push_bind(a.agent_id.clone())
                            .push_bind(a.hostname.clone())
                            .push_bind(super::fleet::labels_json(&a.labels))
                            .push_bind(a.build_version.clone())
                            .push_bind(a.replica.clone())
                            .push_bind(a.session)
                            .push_bind(a.connected)
                            .push_bind(super::stored_time(a.since))
                            .push_bind(a.applied_version)
                            .push_bind(a.nack_version)
                            .push_bind(a.nack_reason.clone())
                            .push_bind(a.last_report_time.map(super::stored_time))
                            .push_bind(a.reports_lost)
                            .push_bind(now);
                    });
                    q.push(super::flow::common_sql::UPSERT_AGENT_TAIL);
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_agents(
                &self,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<super::fleet::ListedAgent>, StoreError> {
                let rows: Vec<AgentTuple> = sqlx::query_as(sql::LIST_AGENTS)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(agent_row).collect())
            }

            async fn release_replica(
                &self,
                replica: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StoreError> {
                let now = super::stored_time(now);
                let mut tx = self.pool.begin().await?;
                sqlx::query(super::flow::common_sql::RELEASE_AGENTS)
                    .bind(replica)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(super::flow::common_sql::DELETE_REPLICA)
                    .bind(replica)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn write_telemetry(
                &self,
                rows: &[super::fleet::TelemetryRow],
                urgent: bool,
            ) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                if urgent && let Some(notify) = sql::NOTIFY_TELEMETRY {
                    sqlx::query(notify).execute(&mut *tx).await?;
                }
                for chunk in rows.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO telemetry_windows (policy, snapshot_version, backend, \
                         window_start, replica, reports, data) ",
                    );
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(r.policy.clone())
                            .push_bind(r.snapshot_version)
                            .push_bind(r.backend.clone())
                            .push_bind(r.window_start_ms)
                            .push_bind(r.replica.clone())
                            .push_bind(r.reports)
                            .push_bind(prost::Message::encode_to_vec(&r.data));
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                if urgent {
                    self.urgent.send_modify(|n| *n += 1);
                }
                Ok(())
            }

            fn urgent_telemetry(&self) -> super::fleet::ChangeFeed {
                self.urgent_feed()
            }

            async fn read_telemetry(
                &self,
                policy: &str,
                from_ms: i64,
                to_ms: i64,
            ) -> Result<Vec<super::fleet::TelemetryRow>, StoreError> {
                let rows: Vec<(String, i64, String, i64, String, i64, Vec<u8>)> =
                    sqlx::query_as(super::flow::common_sql::READ_TELEMETRY)
                        .bind(policy)
                        .bind(from_ms)
                        .bind(to_ms)
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter()
                    .map(|(policy, snapshot_version, backend, window_start_ms, replica, reports, data)| {
                        let data = <shepherd_proto::v1::BackendTelemetry as prost::Message>::decode(
                            data.as_slice(),
                        )
                        .map_err(|e| StoreError::Internal(format!("telemetry row: {e}")))?;
                        Ok(super::fleet::TelemetryRow {
                            policy,
                            snapshot_version,
                            backend,
                            window_start_ms,
                            replica,
                            reports,
                            data,
                        })
                    })
                    .collect()
            }

            async fn prune(
                &self,
                telemetry_before_ms: i64,
                agents_before: chrono::DateTime<chrono::Utc>,
            ) -> Result<(u64, u64), StoreError> {
                let windows = sqlx::query(super::flow::common_sql::PRUNE_TELEMETRY)
                    .bind(telemetry_before_ms)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                let agents = sqlx::query(super::flow::common_sql::PRUNE_AGENTS)
                    .bind(super::stored_time(agents_before))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                sqlx::query(super::flow::common_sql::PRUNE_REPLICAS)
                    .bind(super::stored_time(agents_before))
                    .execute(&self.pool)
                    .await?;
                Ok((windows, agents))
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
    /// Takes the next generation (the row lock orders concurrent writers).
    pub const NEXT_GENERATION: &str = "UPDATE config_generation SET generation = generation + 1 \
         WHERE id = 1 RETURNING generation";
    pub const GENERATION: &str = "SELECT generation FROM config_generation WHERE id = 1";
    pub const HEARTBEAT: &str = "INSERT INTO replicas (id, heartbeat_time) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_time = excluded.heartbeat_time";
    /// An agent's row follows its latest stream: a connect wins over an older
    /// session; other news of a session only lands while it is still the row's.
    pub const UPSERT_AGENT_TAIL: &str = " ON CONFLICT (agent_id) DO UPDATE SET \
         hostname = excluded.hostname, labels = excluded.labels, \
         build_version = excluded.build_version, replica = excluded.replica, \
         session = excluded.session, connected = excluded.connected, since = excluded.since, \
         applied_version = excluded.applied_version, nack_version = excluded.nack_version, \
         nack_reason = excluded.nack_reason, last_report_time = excluded.last_report_time, \
         reports_lost = excluded.reports_lost, update_time = excluded.update_time \
         WHERE excluded.session > agents.session \
         OR (excluded.session = agents.session AND excluded.replica = agents.replica)";
    pub const RELEASE_AGENTS: &str = "UPDATE agents SET connected = FALSE, since = $2, update_time = $2 \
         WHERE replica = $1 AND connected";
    pub const DELETE_REPLICA: &str = "DELETE FROM replicas WHERE id = $1";
    pub const READ_TELEMETRY: &str = "SELECT policy, snapshot_version, backend, window_start, replica, \
         reports, data FROM telemetry_windows \
         WHERE policy = $1 AND window_start >= $2 AND window_start < $3 ORDER BY window_start, id";
    pub const PRUNE_TELEMETRY: &str = "DELETE FROM telemetry_windows WHERE window_start < $1";
    /// Agents with no news since the cutoff that are disconnected, or whose
    /// replica has been silent since then too.
    pub const PRUNE_AGENTS: &str = "DELETE FROM agents WHERE update_time < $1 AND (NOT connected \
         OR replica NOT IN (SELECT id FROM replicas WHERE heartbeat_time >= $1))";
    pub const PRUNE_REPLICAS: &str = "DELETE FROM replicas WHERE heartbeat_time < $1";
    pub const STAMP_HEAD: &str = "UPDATE policies SET generation = $2 WHERE name = $1";
    pub const BUMP_FOR_UPDATE: &str = "UPDATE policies SET revision = revision + 1, update_time = $3 \
         WHERE name = $1 AND revision = $2 AND NOT deleted RETURNING revision, create_time";
}
