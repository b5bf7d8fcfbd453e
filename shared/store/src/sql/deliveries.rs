//! [`DeliveryStore`] on any [`SqlEngine`], and the insert of an invocation's deliveries with
//! its `queued` record ([`insert_deliveries_in`]). The trigger that makes them due lives in
//! the migrations (`0012_destinations.sql` / `0011_destinations.sql`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{execute, Conn, Sql, SqlEngine, SqlRow, ROWS_PER_STATEMENT};
use crate::common::{clamp_limit, from_json};
use crate::{ClaimedDelivery, DeliveryStore, Settle, StoreError};
use fnmesh_core::destination::{DeliveryCondition, DeliveryState, DeliveryStatus};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{InvocationRequest, InvocationResult};
use fnmesh_core::names::Namespace;

/// Inserts on `conn` (inside the caller's transaction) the deliveries of the `requests` that
/// ask for them (`notify_destinations`), `waiting` for their records to finish.
pub(crate) async fn insert_deliveries_in<E: SqlEngine>(
    conn: &mut Conn<E>,
    requests: &[&InvocationRequest],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for request in requests.iter().filter(|r| r.notify_destinations) {
        let Some(destinations) = &request.function.config.destinations else {
            continue;
        };
        for (on, target) in destinations.targets() {
            rows.push((request, on, E::to_json(&target)?));
        }
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::new(
            "INSERT INTO destination_deliveries (id, invocation_id, namespace, on_status, \
             target, state, attempts, next_at, last_error, delivered_at, created_at) VALUES ",
        );
        for (i, (request, on, target)) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" })
                .push_bind(uuid::Uuid::now_v7().to_string())
                .push("::uuid, ")
                .push_bind(request.id.to_string())
                .push("::uuid, ")
                .push_bind(request.function.namespace.as_str())
                .push(", ")
                .push_bind(on.as_str())
                .push(", ")
                .push_bind(target.clone())
                .push("::jsonb, ")
                .push_bind(DeliveryState::Waiting.as_str())
                .push(", 0, ")
                .push_bind(now)
                .push(", NULL, NULL, ")
                .push_bind(now)
                .push(")");
        }
        E::execute(conn, sql).await?;
    }
    Ok(())
}

fn decode_err(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("decode delivery {column}: {e}"))
}

fn condition<R: SqlRow>(row: &R) -> Result<DeliveryCondition, StoreError> {
    let raw = row.text("on_status")?;
    DeliveryCondition::parse(&raw).ok_or_else(|| decode_err("on_status", raw))
}

fn attempts<R: SqlRow>(row: &R) -> Result<u32, StoreError> {
    u32::try_from(row.int("attempts")?).map_err(|e| decode_err("attempts", e))
}

#[async_trait]
impl<E: SqlEngine> DeliveryStore for E {
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // PostgreSQL: gateways claiming at once skip each other's rows; SQLite's write
        // transaction is the lock.
        let skip_locked = if E::LOCK_ROW.is_empty() {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        // Most passes find nothing due: a read, without taking the write lock.
        let due = super::fetch_optional(
            self,
            Sql::new(
                "SELECT id::text AS id FROM destination_deliveries \
                 WHERE state = 'pending' AND next_at <= $1 LIMIT 1",
            )
            .bind(now),
        )
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let rows = E::fetch_all(
            &mut tx,
            Sql::new(format!(
                "UPDATE destination_deliveries SET next_at = $1, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM destination_deliveries \
                              WHERE state = 'pending' AND next_at <= $2 \
                              ORDER BY next_at LIMIT $3{skip_locked}) \
                 RETURNING id::text AS id, invocation_id::text AS invocation_id, namespace, \
                 on_status, target::text AS target, attempts"
            ))
            .bind(lease_until)
            .bind(now)
            .bind(i64::from(clamp_limit(limit))),
        )
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    id: row.text("id")?,
                    invocation_id: row
                        .text("invocation_id")?
                        .parse()
                        .map_err(|e| decode_err("invocation_id", e))?,
                    namespace: Namespace::parse(&row.text("namespace")?)
                        .map_err(|e| decode_err("namespace", e))?,
                    on: condition(row)?,
                    target: from_json(&row.text("target")?)?,
                    attempt: attempts(row)?,
                })
            })
            .collect()
    }

    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settle: &Settle,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (state, next_at, error, delivered_at) = match settle {
            Settle::Delivered => (DeliveryState::Delivered, now, None, Some(now)),
            Settle::Retry { at, error } => (DeliveryState::Pending, *at, Some(error), None),
            Settle::Failed { error } => (DeliveryState::Failed, now, Some(error), None),
        };
        let changed = execute(
            self,
            Sql::new(
                "UPDATE destination_deliveries SET state = $1, next_at = $2, \
                 last_error = COALESCE($3, last_error), delivered_at = $4 \
                 WHERE id = $5::uuid AND attempts = $6 AND state = 'pending'",
            )
            .bind(state.as_str())
            .bind(next_at)
            .bind(error.cloned())
            .bind(delivered_at)
            .bind(id)
            .bind(i64::from(attempt)),
        )
        .await?;
        Ok(changed > 0)
    }

    async fn invocation_with_deliveries(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<(InvocationResult, Vec<DeliveryStatus>)>, StoreError> {
        let row = super::fetch_optional(
            self,
            Sql::new(
                "SELECT body::text AS body, \
                 CASE WHEN destinations THEN 'y' ELSE 'n' END AS destinations \
                 FROM invocations WHERE id = $1::uuid AND namespace = $2",
            )
            .bind(id.to_string())
            .bind(namespace.as_str()),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record: InvocationResult = from_json(&row.text("body")?)?;
        let deliveries = if row.text("destinations")? == "y" {
            self.deliveries_of(namespace, id).await?
        } else {
            Vec::new()
        };
        Ok(Some((record, deliveries)))
    }

    async fn deliveries_of(
        &self,
        namespace: &Namespace,
        invocation: &InvocationId,
    ) -> Result<Vec<DeliveryStatus>, StoreError> {
        let rows = super::fetch_all(
            self,
            Sql::new(
                "SELECT id::text AS id, on_status, target::text AS target, state, attempts, \
                 next_at, last_error, delivered_at FROM destination_deliveries \
                 WHERE invocation_id = $1::uuid AND namespace = $2 ORDER BY id",
            )
            .bind(invocation.to_string())
            .bind(namespace.as_str()),
        )
        .await?;
        rows.iter()
            .map(|row| {
                let raw = row.text("state")?;
                let state = DeliveryState::parse(&raw).ok_or_else(|| decode_err("state", raw))?;
                Ok(DeliveryStatus {
                    id: row.text("id")?,
                    on: condition(row)?,
                    target: from_json(&row.text("target")?)?,
                    state,
                    attempts: attempts(row)?,
                    last_error: row.opt_text("last_error")?,
                    next_attempt_at: (state == DeliveryState::Pending)
                        .then(|| row.time("next_at"))
                        .transpose()?,
                    delivered_at: row.opt_time("delivered_at")?,
                })
            })
            .collect()
    }
}
