//! [`InvocationStore`] on any [`SqlEngine`]: invocation records, logs and dead letters. The
//! fenced updates and the batches are the engine's own (see [`SqlEngine`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    execute, fetch_all, fetch_one, fetch_optional, fetch_page, newest_first, Conn, Listing, Sql,
    SqlEngine, SqlRow,
};
use crate::common::TERMINAL_SQL;
use crate::common::{
    clamp_limit, dead_letter_target, from_json, invocation_id_cursor, is_unique_violation,
    present_per_key, records_per_key, DEAD_LETTER_CURSOR, INVOCATION_CURSOR,
};
use crate::{
    FinishedInvocation, InvocationFilter, InvocationStore, Keyed, Page, StoreError, StoreSize,
    Written,
};
use fnmesh_core::idempotency::IdempotencyKey;
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, ErrorKind, InvocationError, InvocationLogs, InvocationRequest,
    InvocationResult, InvocationStatus,
};
use fnmesh_core::names::{FunctionName, Namespace};

/// Stores (replaces) one invocation's logs. Binds: id, text, truncated.
pub(crate) const PUT_LOGS_SQL: &str =
    "INSERT INTO invocation_logs (id, text, truncated) VALUES ($1::uuid, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET text = excluded.text, truncated = excluded.truncated";

/// Invocations of a namespace, newest first.
const INVOCATIONS: Listing<InvocationResult> =
    newest_first(INVOCATION_CURSOR, |r| r.id.to_string());

/// Dead letters, newest first.
const DEAD_LETTERS: Listing<DeadLetterRecord> =
    newest_first(DEAD_LETTER_CURSOR, |d| d.id.to_string());

/// The columns of `dead_letters`, as [`dead_letter_from_row`] reads them.
const DEAD_LETTER_COLUMNS: &str = "id::text AS id, namespace, function, version, attempts, \
     last_error::text AS last_error, request::text AS request, dead_lettered_at";

/// A `dead_letters` row of [`DEAD_LETTER_COLUMNS`], decoded.
fn dead_letter_from_row<R: SqlRow>(row: &R) -> Result<DeadLetterRecord, StoreError> {
    let bad = |column: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("decode dead letter {column}: {e}"))
    };
    Ok(DeadLetterRecord {
        id: row.text("id")?.parse().map_err(|e| bad("id", &e))?,
        namespace: Namespace::parse(&row.text("namespace")?).map_err(|e| bad("namespace", &e))?,
        function: FunctionName::parse(&row.text("function")?).map_err(|e| bad("function", &e))?,
        version: u32::try_from(row.int("version")?).map_err(|e| bad("version", &e))?,
        attempts: u32::try_from(row.int("attempts")?).map_err(|e| bad("attempts", &e))?,
        last_error: row
            .opt_text("last_error")?
            .as_deref()
            .map(from_json)
            .transpose()?,
        request: from_json(&row.text("request")?)?,
        dead_lettered_at: row.time("dead_lettered_at")?,
    })
}

/// Rows of one `body` column, decoded.
fn bodies<R: SqlRow, T: serde::de::DeserializeOwned>(
    rows: &[R],
    column: &str,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| from_json(&row.text(column)?))
        .collect()
}

/// `sql`, whose `$1` is an invocation id and `$2` its namespace, with both bound.
fn of_invocation(sql: &'static str, namespace: &Namespace, id: &InvocationId) -> Sql {
    Sql::new(sql).bind(id.to_string()).bind(namespace.as_str())
}

/// The `queued` record of `request` and the statement inserting it with its request.
fn insert_queued<E: SqlEngine>(
    request: &InvocationRequest,
    now: DateTime<Utc>,
) -> Result<(InvocationResult, Sql), StoreError> {
    let record = InvocationResult::queued(request);
    let sql = Sql::new(
        "INSERT INTO invocations \
         (id, namespace, function, version, status, attempt, body, request, created_at, \
         updated_at, destinations) \
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11)",
    )
    .bind(record.id.to_string())
    .bind(record.namespace.as_str())
    .bind(record.function.as_str())
    .bind(i64::from(record.version))
    .bind(record.status.as_str())
    .bind(i64::from(record.attempt))
    .bind(E::to_json(&record)?)
    .bind(E::to_json(request)?)
    .bind(record.created_at)
    .bind(now)
    .bind(request.notify_destinations);
    Ok((record, sql))
}

/// Rows one multi-row statement of [`insert_queued_rows`] or [`put_logs_rows`] carries at most
/// (11 parameters a row: far below SQLite's 32,766 and PostgreSQL's 65,535).
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// One multi-row statement inserting `rows` (a record, its request's JSON if it keeps one,
/// and whether it has destination deliveries) that skips ids that exist and returns (column
/// `id`) the ids it inserted.
fn insert_records_sql<E: SqlEngine>(
    rows: &[(&InvocationResult, Option<String>, bool)],
    now: DateTime<Utc>,
) -> Result<Sql, StoreError> {
    let mut sql = Sql::new(
        "INSERT INTO invocations \
         (id, namespace, function, version, status, attempt, body, request, created_at, \
         updated_at, destinations) VALUES ",
    );
    for (i, (record, request, destinations)) in rows.iter().enumerate() {
        sql.push(if i == 0 { "(" } else { ", (" })
            .push_bind(record.id.to_string())
            .push("::uuid, ")
            .push_bind(record.namespace.as_str())
            .push(", ")
            .push_bind(record.function.as_str())
            .push(", ")
            .push_bind(i64::from(record.version))
            .push(", ")
            .push_bind(record.status.as_str())
            .push(", ")
            .push_bind(i64::from(record.attempt))
            .push(", ")
            .push_bind(E::to_json(*record)?)
            .push("::jsonb, ")
            .push_bind(request.clone())
            .push("::jsonb, ")
            .push_bind(record.created_at)
            .push(", ")
            .push_bind(now)
            .push(", ")
            .push_bind(*destinations)
            .push(")");
    }
    sql.push(" ON CONFLICT (id) DO NOTHING RETURNING id::text AS id");
    Ok(sql)
}

/// The statements inserting the `queued` records of `requests` with their requests, one per
/// chunk of [`ROWS_PER_STATEMENT`] ([`insert_records_sql`]). See [`inserted_flags`].
fn insert_queued_rows<E: SqlEngine>(
    requests: &[&InvocationRequest],
    now: DateTime<Utc>,
) -> Result<Vec<Sql>, StoreError> {
    let mut statements = Vec::new();
    for chunk in requests.chunks(ROWS_PER_STATEMENT) {
        let records: Vec<InvocationResult> =
            chunk.iter().map(|r| InvocationResult::queued(r)).collect();
        let rows = records
            .iter()
            .zip(chunk)
            .map(|(record, request)| {
                Ok((
                    record,
                    Some(E::to_json(*request)?),
                    request.notify_destinations,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        statements.push(insert_records_sql::<E>(&rows, now)?);
    }
    Ok(statements)
}

/// Per request, in order: whether its id is among those `returned` by
/// [`insert_queued_rows`] (a repeated id counts once, for its first request).
fn inserted_flags(
    requests: &[&InvocationRequest],
    mut returned: std::collections::HashSet<String>,
) -> Vec<bool> {
    requests
        .iter()
        .map(|request| returned.remove(&request.id.to_string()))
        .collect()
}

/// The statements storing (replacing) these logs, one per chunk of [`ROWS_PER_STATEMENT`];
/// for a repeated id only its last logs (PostgreSQL lets one statement touch a row once).
fn put_logs_rows(logs: &[(InvocationId, &InvocationLogs)]) -> Vec<Sql> {
    let mut last: Vec<(InvocationId, &InvocationLogs)> = Vec::with_capacity(logs.len());
    for (id, entry) in logs.iter().rev() {
        if !last.iter().any(|(seen, _)| seen == id) {
            last.push((*id, entry));
        }
    }
    // In id order: concurrent batches take row locks in the same order.
    last.sort_unstable_by_key(|(id, _)| *id);
    last.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut sql = Sql::new("INSERT INTO invocation_logs (id, text, truncated) VALUES ");
            for (i, (id, entry)) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" })
                    .push_bind(id.to_string())
                    .push("::uuid, ")
                    .push_bind(entry.text.as_str())
                    .push(", ")
                    .push_bind(entry.truncated)
                    .push(")");
            }
            sql.push(
                " ON CONFLICT (id) DO UPDATE SET text = excluded.text, \
                 truncated = excluded.truncated",
            );
            sql
        })
        .collect()
}

/// Inserts the `queued` records of `requests` with their requests on `conn` (inside the
/// caller's transaction), skipping ids that exist: per request, whether it was inserted (a
/// repeated id counts once, for its first request).
pub(crate) async fn insert_queued_in<E: SqlEngine>(
    conn: &mut Conn<E>,
    requests: &[&InvocationRequest],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, StoreError> {
    let mut returned = std::collections::HashSet::with_capacity(requests.len());
    for sql in insert_queued_rows::<E>(requests, now)? {
        for row in E::fetch_all(conn, sql).await? {
            returned.insert(row.text("id")?);
        }
    }
    let inserted = inserted_flags(requests, returned);
    if requests.iter().any(|r| r.notify_destinations) {
        let new: Vec<&InvocationRequest> = requests
            .iter()
            .zip(&inserted)
            .filter(|(_, &inserted)| inserted)
            .map(|(request, _)| *request)
            .collect();
        super::deliveries::insert_deliveries_in::<E>(conn, &new, now).await?;
    }
    Ok(inserted)
}

/// Inserts on `conn` (inside the caller's transaction) the records of `updates` that no record
/// has the id of, as they are (without a request, so they are never published again): the
/// one write of a sync invocation, stored once finished, or an outcome whose gateway never
/// wrote it. Per update, whether it was inserted (the first of a repeated id); the others are
/// then applied as fenced updates, in order. Rows go in id order, so concurrent batches take
/// their locks in the same order.
pub(crate) async fn insert_absent_in<E: SqlEngine>(
    conn: &mut Conn<E>,
    updates: &[(&InvocationResult, Option<&InvocationLogs>)],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, StoreError> {
    let mut inserted = vec![false; updates.len()];
    let mut first: Vec<usize> = Vec::with_capacity(updates.len());
    let mut seen = std::collections::HashSet::with_capacity(updates.len());
    for (i, (record, _)) in updates.iter().enumerate() {
        if seen.insert(record.id) {
            first.push(i);
        }
    }
    first.sort_unstable_by_key(|&i| updates[i].0.id);
    for chunk in first.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(&InvocationResult, Option<String>, bool)> =
            chunk.iter().map(|&i| (updates[i].0, None, false)).collect();
        let mut returned = std::collections::HashSet::new();
        for row in E::fetch_all(conn, insert_records_sql::<E>(&rows, now)?).await? {
            returned.insert(row.text("id")?);
        }
        for &i in chunk {
            inserted[i] = returned.contains(&updates[i].0.id.to_string());
        }
    }
    Ok(inserted)
}

/// Stores on `conn` (inside the caller's transaction) the logs of the `updates` that
/// `applied`.
pub(crate) async fn put_applied_logs_in<E: SqlEngine>(
    conn: &mut Conn<E>,
    updates: &[(&InvocationResult, Option<&InvocationLogs>)],
    applied: &[bool],
) -> Result<(), StoreError> {
    let logs: Vec<(InvocationId, &InvocationLogs)> = updates
        .iter()
        .zip(applied)
        .filter(|(_, &applied)| applied)
        .filter_map(|((record, logs), _)| Some((record.id, (*logs)?)))
        .collect();
    for sql in put_logs_rows(&logs) {
        E::execute(conn, sql).await?;
    }
    Ok(())
}

#[async_trait]
impl<E: SqlEngine> InvocationStore for E {
    async fn write_invocations(
        &self,
        inserts: &[&InvocationRequest],
        outcomes: &[(&InvocationResult, Option<&InvocationLogs>)],
    ) -> Result<Written, StoreError> {
        if inserts.is_empty() && outcomes.is_empty() {
            return Ok(Written::default());
        }
        self.apply_writes(inserts, outcomes).await
    }

    async fn insert_invocation(
        &self,
        request: &InvocationRequest,
    ) -> Result<InvocationResult, StoreError> {
        // One statement: the record and its request are committed together (with its
        // deliveries, when it has destinations, in one transaction).
        let now = Utc::now();
        let (record, insert) = insert_queued::<E>(request, now)?;
        let conflict = |e: sqlx::Error| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("invocation {}", record.id))
            } else {
                e.into()
            }
        };
        if !request.notify_destinations {
            execute(self, insert).await.map_err(conflict)?;
            return Ok(record);
        }
        let mut tx = self.begin_write().await?;
        E::execute(&mut tx, insert).await.map_err(conflict)?;
        super::deliveries::insert_deliveries_in::<E>(&mut tx, &[request], now).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn insert_keyed_invocation(
        &self,
        request: &InvocationRequest,
        key: &IdempotencyKey,
        fingerprint: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Keyed, StoreError> {
        let now = Utc::now();
        let namespace = request.function.namespace.as_str();
        let mut tx = self.begin_write().await?;
        // An expired key is free again, and so is one whose invocation retention removed or
        // that was refused before any node had it (failed at attempt 0: "not run").
        E::execute(
            &mut tx,
            Sql::new(
                "DELETE FROM idempotency_keys WHERE namespace = $1 AND key = $2 \
                 AND (created_at < $3 \
                 OR NOT EXISTS (SELECT 1 FROM invocations i \
                                WHERE i.id = idempotency_keys.invocation_id) \
                 OR EXISTS (SELECT 1 FROM invocations i \
                            WHERE i.id = idempotency_keys.invocation_id \
                            AND i.status = 'failed' AND i.attempt = 0))",
            )
            .bind(namespace)
            .bind(key.as_str())
            .bind(expired_before),
        )
        .await?;
        let taken = E::execute(
            &mut tx,
            Sql::new(
                "INSERT INTO idempotency_keys \
                 (namespace, key, fingerprint, invocation_id, created_at) \
                 VALUES ($1, $2, $3, $4::uuid, $5) ON CONFLICT (namespace, key) DO NOTHING",
            )
            .bind(namespace)
            .bind(key.as_str())
            .bind(fingerprint)
            .bind(request.id.to_string())
            .bind(now),
        )
        .await?;
        if taken == 0 {
            let row = fetch_one::<E>(
                &mut tx,
                Sql::new(
                    "SELECT invocation_id::text AS invocation_id, fingerprint \
                     FROM idempotency_keys WHERE namespace = $1 AND key = $2",
                )
                .bind(namespace)
                .bind(key.as_str()),
            )
            .await?;
            let invocation_id = row
                .text("invocation_id")?
                .parse()
                .map_err(|e| StoreError::Backend(format!("decode invocation id: {e}")))?;
            return Ok(Keyed::Existing {
                invocation_id,
                fingerprint: row.text("fingerprint")?,
            });
        }
        let (record, insert) = insert_queued::<E>(request, now)?;
        match E::execute(&mut tx, insert).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("invocation {}", record.id)))
            }
            Err(e) => return Err(e.into()),
        }
        super::deliveries::insert_deliveries_in::<E>(&mut tx, &[request], now).await?;
        tx.commit().await?;
        Ok(Keyed::Inserted)
    }

    async fn cancel_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
        message: &str,
    ) -> Result<Option<(InvocationResult, bool)>, StoreError> {
        let now = Utc::now();
        // The row lock: no node update slips in between reading the record and replacing it.
        let mut tx = self.begin_write().await?;
        let row = E::fetch_optional(
            &mut tx,
            Sql::new(format!(
                "SELECT i.body::text AS body FROM invocations i \
                 WHERE i.id = $1::uuid AND i.namespace = $2{}",
                E::LOCK_ROW
            ))
            .bind(id.to_string())
            .bind(namespace.as_str()),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record: InvocationResult = from_json(&row.text("body")?)?;
        if record.status.is_terminal() {
            return Ok(Some((record, false)));
        }
        record.status = InvocationStatus::Cancelled;
        record.error = Some(InvocationError {
            kind: ErrorKind::Cancelled,
            message: message.to_owned(),
        });
        record.result = None;
        record.completed_at = Some(now);
        E::execute(
            &mut tx,
            Sql::new(
                "UPDATE invocations SET status = $1, body = $2::jsonb, updated_at = $3, \
                 request = NULL WHERE id = $4::uuid",
            )
            .bind(record.status.as_str())
            .bind(E::to_json(&record)?)
            .bind(now)
            .bind(id.to_string()),
        )
        .await?;
        tx.commit().await?;
        Ok(Some((record, true)))
    }

    async fn update_invocation(&self, record: &InvocationResult) -> Result<bool, StoreError> {
        self.apply_update(record).await
    }

    async fn update_invocations(
        &self,
        records: &[InvocationResult],
    ) -> Result<Vec<bool>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_updates(records).await
    }

    async fn replace_queued_request(
        &self,
        request: &InvocationRequest,
    ) -> Result<bool, StoreError> {
        let replaced = execute(
            self,
            Sql::new(
                "UPDATE invocations SET request = $1::jsonb \
                 WHERE id = $2::uuid AND namespace = $3 AND status = 'queued' \
                 AND request IS NOT NULL",
            )
            .bind(E::to_json(request)?)
            .bind(request.id.to_string())
            .bind(request.function.namespace.as_str()),
        )
        .await?;
        Ok(replaced > 0)
    }

    async fn stale_queued(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InvocationRequest>, StoreError> {
        // Served by the partial index `invocations_queued`. SQLite's `created_at` is
        // fixed-width RFC 3339 text (nanoseconds, `Z`), so there text order is time order.
        let rows = fetch_all(
            self,
            Sql::new(
                "SELECT request::text AS request FROM invocations \
                 WHERE status = 'queued' AND created_at < $1 AND request IS NOT NULL \
                 ORDER BY created_at, id LIMIT $2",
            )
            .bind(older_than)
            .bind(i64::from(clamp_limit(limit))),
        )
        .await?;
        bodies(&rows, "request")
    }

    async fn prune_invocations(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        // Served by the partial index `invocations_finished`; the ids are read and deleted in
        // one write transaction, so the logs and the records removed are the same invocations.
        let mut tx = self.begin_write().await?;
        let rows = E::fetch_all(
            &mut tx,
            Sql::new(format!(
                "SELECT id::text AS id FROM invocations \
                 WHERE status IN {TERMINAL_SQL} AND updated_at < $1 \
                 ORDER BY updated_at, id LIMIT $2"
            ))
            .bind(before)
            .bind(i64::from(clamp_limit(limit))),
        )
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids = rows
            .iter()
            .map(|row| row.text("id"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut removed = 0;
        for (table, column) in [
            ("idempotency_keys", "invocation_id"),
            ("destination_deliveries", "invocation_id"),
            ("invocation_logs", "id"),
            ("invocations", "id"),
        ] {
            let mut sql = Sql::new(format!("DELETE FROM {table} WHERE {column} IN ("));
            for (i, id) in ids.iter().enumerate() {
                sql.push(if i == 0 { "" } else { ", " })
                    .push_bind(id.as_str())
                    .push("::uuid");
            }
            sql.push(")");
            removed = E::execute(&mut tx, sql).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn finished_after(
        &self,
        after: Option<(DateTime<Utc>, InvocationId)>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<FinishedInvocation>, StoreError> {
        // Served by the partial index `invocations_finished` (updated_at, id).
        let mut query = Sql::new(format!(
            "SELECT i.body::text AS body, i.updated_at, l.text AS log_text, \
             l.truncated AS log_truncated \
             FROM invocations i LEFT JOIN invocation_logs l ON l.id = i.id \
             WHERE i.status IN {TERMINAL_SQL} AND i.updated_at < $1"
        ))
        .bind(before);
        if let Some((time, id)) = after {
            query
                .push(" AND (i.updated_at > ")
                .push_bind(time)
                .push(" OR (i.updated_at = ")
                .push_bind(time)
                .push(" AND i.id > ")
                .push_bind(id.to_string())
                .push("::uuid))");
        }
        query
            .push(" ORDER BY i.updated_at, i.id LIMIT ")
            .push_bind(i64::from(clamp_limit(limit)));
        let rows = fetch_all(self, query).await?;
        let mut finished = Vec::with_capacity(rows.len());
        for row in &rows {
            let record: InvocationResult = from_json(&row.text("body")?)?;
            let logs = match row.opt_text("log_text")? {
                Some(text) => Some(InvocationLogs {
                    text,
                    truncated: row.flag("log_truncated")?,
                }),
                None => None,
            };
            let dead_letter = if record.status == InvocationStatus::DeadLettered {
                self.get_dead_letter(None, &record.id).await?
            } else {
                None
            };
            finished.push(FinishedInvocation {
                updated_at: row.time("updated_at")?,
                record,
                logs,
                dead_letter,
            });
        }
        Ok(finished)
    }

    async fn import_finished(&self, items: &[FinishedInvocation]) -> Result<Vec<bool>, StoreError> {
        let mut changed = Vec::with_capacity(items.len());
        for item in items {
            let record = &item.record;
            if !record.status.is_terminal() {
                return Err(StoreError::Conflict(format!(
                    "invocation {} is {}, not finished",
                    record.id,
                    record.status.as_str()
                )));
            }
            let applied = match &item.dead_letter {
                // Inserts the record from the dead letter's request if absent.
                Some(dead) => {
                    let held = self.get_dead_letter(None, &dead.id).await?;
                    held.as_ref() != Some(dead) && self.put_dead_letter(dead).await?
                }
                None => {
                    let inserted = fetch_optional(
                        self,
                        Sql::new(
                            "INSERT INTO invocations (id, namespace, function, version, status, \
                             attempt, body, request, created_at, updated_at) \
                             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, NULL, $8, $9) \
                             ON CONFLICT (id) DO NOTHING RETURNING id::text AS id",
                        )
                        .bind(record.id.to_string())
                        .bind(record.namespace.as_str())
                        .bind(record.function.as_str())
                        .bind(i64::from(record.version))
                        .bind(record.status.as_str())
                        .bind(i64::from(record.attempt))
                        .bind(E::to_json(record)?)
                        .bind(record.created_at)
                        .bind(item.updated_at),
                    )
                    .await?
                    .is_some();
                    inserted || self.apply_update(record).await?
                }
            };
            if let (true, Some(logs)) = (applied, &item.logs) {
                self.put_logs(&record.id, logs).await?;
            }
            changed.push(applied);
        }
        Ok(changed)
    }

    async fn store_size(&self) -> Result<StoreSize, StoreError> {
        self.size().await
    }

    async fn running_invocations(&self, limit: u32) -> Result<Vec<InvocationResult>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new(
                "SELECT body::text AS body FROM invocations WHERE status = 'running' \
                 ORDER BY created_at, id LIMIT $1",
            )
            .bind(i64::from(clamp_limit(limit))),
        )
        .await?;
        bodies(&rows, "body")
    }

    async fn get_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationResult>, StoreError> {
        let sql = "SELECT body::text AS body FROM invocations \
                   WHERE id = $1::uuid AND namespace = $2";
        let row = fetch_optional(self, of_invocation(sql, namespace, id)).await?;
        row.map(|row| from_json(&row.text("body")?)).transpose()
    }

    async fn get_invocations(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<Option<InvocationResult>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<InvocationId> = keys.iter().map(|(_, id)| *id).collect();
        let found = self
            .invocations_by_id(&ids)
            .await?
            .iter()
            .map(|body| from_json(body))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(records_per_key(keys, found))
    }

    async fn list_invocations(
        &self,
        namespace: &Namespace,
        filter: &InvocationFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<InvocationResult>, StoreError> {
        let limit = clamp_limit(limit);
        let before = invocation_id_cursor(INVOCATION_CURSOR, cursor)?;
        let mut query = Sql::new("SELECT body::text AS body FROM invocations WHERE namespace = $1")
            .bind(namespace.as_str());
        if let Some(function) = &filter.function {
            query.push(" AND function = ").push_bind(function.as_str());
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        let after = before.map(|id| id.to_string());
        let body = |row: &E::Row| from_json(&row.text("body")?);
        fetch_page(self, query, &INVOCATIONS, after, limit, body).await
    }

    async fn put_logs(&self, id: &InvocationId, logs: &InvocationLogs) -> Result<(), StoreError> {
        execute(
            self,
            Sql::new(PUT_LOGS_SQL)
                .bind(id.to_string())
                .bind(logs.text.as_str())
                .bind(logs.truncated),
        )
        .await?;
        Ok(())
    }

    async fn put_logs_batch(
        &self,
        logs: &[(InvocationId, InvocationLogs)],
    ) -> Result<(), StoreError> {
        if logs.is_empty() {
            return Ok(());
        }
        self.store_logs(logs).await
    }

    async fn logs_stored(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<InvocationId> = keys.iter().map(|(_, id)| *id).collect();
        Ok(present_per_key(keys, self.logs_by_id(&ids).await?))
    }

    async fn get_logs(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationLogs>, StoreError> {
        let sql = "SELECT l.text, l.truncated FROM invocation_logs l \
                   JOIN invocations i ON i.id = l.id WHERE l.id = $1::uuid AND i.namespace = $2";
        let row = fetch_optional(self, of_invocation(sql, namespace, id)).await?;
        row.map(|row| {
            Ok(InvocationLogs {
                text: row.text("text")?,
                truncated: row.flag("truncated")?,
            })
        })
        .transpose()
    }

    async fn put_dead_letter(&self, dead: &DeadLetterRecord) -> Result<bool, StoreError> {
        let id = dead.id.to_string();
        let now = Utc::now();
        // A write transaction and the row lock: no node update can slip in between reading
        // the record and replacing it.
        let mut tx = self.begin_write().await?;
        // An absent record is inserted first, as `insert_invocation` would have.
        let (_, mut insert) = insert_queued::<E>(&dead.request, now)?;
        insert.push(" ON CONFLICT (id) DO NOTHING");
        E::execute(&mut tx, insert).await?;
        let row = fetch_one::<E>(
            &mut tx,
            Sql::new(format!(
                "SELECT i.namespace, i.status, i.body::text AS body, \
                 EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = i.id) AS dead \
                 FROM invocations i WHERE i.id = $1::uuid{}",
                E::LOCK_ROW
            ))
            .bind(id.as_str()),
        )
        .await?;
        let (namespace, status) = (row.text("namespace")?, row.text("status")?);
        let (body, stored) = (row.text("body")?, row.flag("dead")?);
        let Some(record) = dead_letter_target(dead, &namespace, &status, &body, stored)? else {
            // Dropping the transaction rolls it back.
            return Ok(false);
        };
        E::execute(
            &mut tx,
            Sql::new(
                "UPDATE invocations SET status = $1, attempt = $2, body = $3::jsonb, \
                 updated_at = $4, request = NULL WHERE id = $5::uuid",
            )
            .bind(record.status.as_str())
            .bind(i64::from(record.attempt))
            .bind(E::to_json(&record)?)
            .bind(now)
            .bind(id.as_str()),
        )
        .await?;
        E::execute(
            &mut tx,
            Sql::new(
                "INSERT INTO dead_letters \
                 (id, namespace, function, version, attempts, last_error, request, \
                 dead_lettered_at) \
                 VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8) \
                 ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, \
                 function = excluded.function, version = excluded.version, \
                 attempts = excluded.attempts, last_error = excluded.last_error, \
                 request = excluded.request, dead_lettered_at = excluded.dead_lettered_at",
            )
            .bind(id.as_str())
            .bind(dead.namespace.as_str())
            .bind(dead.function.as_str())
            .bind(i64::from(dead.version))
            .bind(i64::from(dead.attempts))
            .bind(dead.last_error.as_ref().map(E::to_json).transpose()?)
            .bind(E::to_json(&dead.request)?)
            .bind(dead.dead_lettered_at),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_dead_letters(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<DeadLetterRecord>, StoreError> {
        let limit = clamp_limit(limit);
        let before = invocation_id_cursor(DEAD_LETTER_CURSOR, cursor)?;
        let mut query = Sql::new(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE true"
        ));
        if let Some(namespace) = namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        let after = before.map(|id| id.to_string());
        fetch_page(
            self,
            query,
            &DEAD_LETTERS,
            after,
            limit,
            dead_letter_from_row,
        )
        .await
    }

    async fn get_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                 WHERE id = $1::uuid AND ($2::text IS NULL OR namespace = $2)"
            ))
            .bind(id.to_string())
            .bind(namespace.map(Namespace::as_str)),
        )
        .await?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    async fn delete_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<bool, StoreError> {
        let deleted = execute(
            self,
            Sql::new(
                "DELETE FROM dead_letters \
                 WHERE id = $1::uuid AND ($2::text IS NULL OR namespace = $2)",
            )
            .bind(id.to_string())
            .bind(namespace.map(Namespace::as_str)),
        )
        .await?;
        Ok(deleted > 0)
    }
}
