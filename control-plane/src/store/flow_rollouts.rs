//! The rollout half of the SQL stores, instantiated per engine with
//! [`impl_rollout_store!`] beside [`super::flow::impl_sql_store!`] (whose
//! revision, generation and notice helpers it uses). The statements are written alike in both
//! dialects.

macro_rules! impl_rollout_store {
    ($store:ty, $conn:ty) => {
        /// Inserts events and tells every replica (on commit).
        async fn record_events(
            conn: &mut $conn,
            rollout: &crate::rollout::model::Rollout,
            events: &[crate::rollout::model::Event],
        ) -> Result<(), StoreError> {
            for e in events {
                sqlx::query(super::flow_rollouts::sql::INSERT_EVENT)
                    .bind(&rollout.policy)
                    .bind(rollout.number)
                    .bind(e.sequence)
                    .bind(super::rollouts::event_json(e, rollout)?)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        #[async_trait::async_trait]
        impl super::rollouts::RolloutStore for $store {
            async fn create_rollout(
                &self,
                mut rollout: crate::rollout::model::Rollout,
                mut events: Vec<crate::rollout::model::Event>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<crate::rollout::model::Rollout, StoreError> {
                use super::flow_rollouts::sql as rsql;
                let now = super::stored_time(now);
                let mut tx = self.begin_write().await?;
                // Taking the generation first orders concurrent starts.
                let generation = next_generation(&mut tx).await?;
                let active: Option<(i64,)> = sqlx::query_as(rsql::ACTIVE_NUMBER)
                    .bind(&rollout.policy)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some((number,)) = active {
                    return Err(StoreError::RolloutActive {
                        policy: rollout.policy.clone(),
                        number,
                    });
                }
                let head: Option<(i64, bool)> = sqlx::query_as(sql::HEAD)
                    .bind(&rollout.policy)
                    .fetch_optional(&mut *tx)
                    .await?;
                match head {
                    None | Some((_, true)) => {
                        return Err(StoreError::NotFound {
                            name: rollout.policy.clone(),
                        });
                    }
                    Some((actual, false)) if actual != rollout.policy_revision => {
                        return Err(StoreError::RevisionMismatch {
                            name: rollout.policy.clone(),
                            expected: rollout.policy_revision,
                            actual,
                        });
                    }
                    Some(_) => {}
                }
                let (number,): (i64,) = sqlx::query_as(rsql::NEXT_NUMBER)
                    .bind(&rollout.policy)
                    .fetch_one(&mut *tx)
                    .await?;
                rollout.number = number;
                rollout.stage_version = u64::try_from(generation).unwrap_or(0);
                rollout.sequence = super::rollouts::number_events(0, &mut events);
                rollout.created = Some(now);
                rollout.updated = Some(now);
                let active = rollout.phase().is_active();
                sqlx::query(rsql::INSERT_ROLLOUT)
                    .bind(&rollout.policy)
                    .bind(number)
                    .bind(active)
                    .bind(rollout.sequence)
                    .bind(super::rollouts::rollout_json(&rollout)?)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                record_events(&mut tx, &rollout, &events).await?;
                announce(&mut tx, &generation.to_string()).await?;
                tx.commit().await?;
                self.changed();
                Ok(rollout)
            }

            async fn write_rollout(
                &self,
                write: super::rollouts::RolloutWrite,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<crate::rollout::model::Rollout, StoreError> {
                use super::flow_rollouts::sql as rsql;
                let now = super::stored_time(now);
                let super::rollouts::RolloutWrite {
                    mut rollout,
                    expected_sequence,
                    mut events,
                    new_stage,
                    policy,
                } = write;
                let mut tx = self.begin_write().await?;
                let mut generation = None;
                if let Some(p) = &policy {
                    let json = super::spec_json(&p.spec)?;
                    let (_, _, g) = bump_and_record(
                        &mut tx,
                        sql::BUMP_FOR_UPDATE,
                        p.spec.name(),
                        Some(p.expected_revision),
                        now,
                        "updated",
                        Some(&json),
                        super::Author {
                            actor: &p.actor,
                            reason: &p.reason,
                        },
                    )
                    .await?;
                    generation = Some(g);
                } else if new_stage {
                    generation = Some(next_generation(&mut tx).await?);
                }
                if new_stage && let Some(g) = generation {
                    rollout.stage_version = u64::try_from(g).unwrap_or(0);
                }
                rollout.sequence = super::rollouts::number_events(expected_sequence, &mut events);
                rollout.updated = Some(now);
                let active = rollout.phase().is_active();
                let updated = sqlx::query(rsql::UPDATE_ROLLOUT)
                    .bind(&rollout.policy)
                    .bind(rollout.number)
                    .bind(expected_sequence)
                    .bind(active)
                    .bind(rollout.sequence)
                    .bind(super::rollouts::rollout_json(&rollout)?)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    let exists: Option<(i64,)> = sqlx::query_as(rsql::SEQUENCE_OF)
                        .bind(&rollout.policy)
                        .bind(rollout.number)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Err(match exists {
                        None => StoreError::RolloutNotFound {
                            policy: rollout.policy.clone(),
                            number: Some(rollout.number),
                        },
                        Some(_) => StoreError::RolloutConflict {
                            policy: rollout.policy.clone(),
                            number: rollout.number,
                        },
                    });
                }
                record_events(&mut tx, &rollout, &events).await?;
                // A policy write announced itself already.
                if policy.is_none() {
                    announce(&mut tx, "rollout").await?;
                }
                tx.commit().await?;
                self.changed();
                Ok(rollout)
            }

            async fn get_rollout(
                &self,
                policy: &str,
                number: Option<i64>,
            ) -> Result<crate::rollout::model::Rollout, StoreError> {
                use super::flow_rollouts::sql as rsql;
                let row: Option<(String,)> = match number {
                    Some(n) => {
                        sqlx::query_as(rsql::GET_ROLLOUT)
                            .bind(policy)
                            .bind(n)
                            .fetch_optional(&self.pool)
                            .await?
                    }
                    None => {
                        sqlx::query_as(rsql::LATEST_ROLLOUT)
                            .bind(policy)
                            .fetch_optional(&self.pool)
                            .await?
                    }
                };
                let (body,) = row.ok_or_else(|| StoreError::RolloutNotFound {
                    policy: policy.into(),
                    number,
                })?;
                super::rollouts::rollout_from_json(&body)
            }

            async fn list_rollouts(
                &self,
                policy: Option<&str>,
                active_only: bool,
                after: Option<super::rollouts::RolloutCursor>,
                limit: u32,
            ) -> Result<Vec<crate::rollout::model::Rollout>, StoreError> {
                let (after_policy, after_number) = match after {
                    Some((p, n)) => (Some(p), Some(n)),
                    None => (None, None),
                };
                let rows: Vec<(String,)> = sqlx::query_as(sql::LIST_ROLLOUTS)
                    .bind(policy)
                    .bind(active_only)
                    .bind(after_policy)
                    .bind(after_number)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|(body,)| super::rollouts::rollout_from_json(body))
                    .collect()
            }

            async fn rollout_events(
                &self,
                policy: &str,
                number: i64,
                after: i64,
                limit: u32,
            ) -> Result<Vec<crate::rollout::model::Event>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(super::flow_rollouts::sql::EVENTS)
                    .bind(policy)
                    .bind(number)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|(body,)| super::rollouts::event_from_json(body))
                    .collect()
            }

            async fn try_lead(
                &self,
            ) -> Result<Option<Box<dyn super::rollouts::Leadership>>, StoreError> {
                self.lead().await
            }
        }
    };
}

pub(crate) use impl_rollout_store;

/// Statements both dialects write the same way.
pub(crate) mod sql {
    pub const ACTIVE_NUMBER: &str = "SELECT number FROM rollouts WHERE policy = $1 AND active";
    pub const NEXT_NUMBER: &str =
        "SELECT COALESCE(MAX(number), 0) + 1 FROM rollouts WHERE policy = $1";
    pub const INSERT_ROLLOUT: &str = "INSERT INTO rollouts \
         (policy, number, active, sequence, body, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)";
    pub const UPDATE_ROLLOUT: &str = "UPDATE rollouts SET active = $4, sequence = $5, body = $6, \
         update_time = $7 WHERE policy = $1 AND number = $2 AND sequence = $3";
    pub const SEQUENCE_OF: &str = "SELECT sequence FROM rollouts WHERE policy = $1 AND number = $2";
    pub const GET_ROLLOUT: &str = "SELECT body FROM rollouts WHERE policy = $1 AND number = $2";
    pub const LATEST_ROLLOUT: &str =
        "SELECT body FROM rollouts WHERE policy = $1 ORDER BY number DESC LIMIT 1";
    pub const ACTIVE_ROLLOUTS: &str = "SELECT body FROM rollouts WHERE active ORDER BY policy";
    pub const INSERT_EVENT: &str =
        "INSERT INTO rollout_events (policy, number, sequence, body) VALUES ($1, $2, $3, $4)";
    pub const EVENTS: &str = "SELECT body FROM rollout_events \
         WHERE policy = $1 AND number = $2 AND sequence > $3 ORDER BY sequence LIMIT $4";
}
