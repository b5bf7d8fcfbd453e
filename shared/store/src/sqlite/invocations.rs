//! What SQLite does its own way in [`crate::InvocationStore`]: the fenced update, and batches
//! (one transaction of single statements, or `IN` lists in chunks, where PostgreSQL sends
//! arrays).

use async_trait::async_trait;
use chrono::Utc;

use super::SqliteStore;
use crate::common::{fenced_off, TERMINAL_SQL};
use crate::sql::{
    execute, fetch_all, fetch_optional, insert_absent_in, insert_queued_in, put_applied_logs_in,
    EngineInvocations, Sql, SqlEngine, SqlRow, PUT_LOGS_SQL, ROWS_PER_STATEMENT,
};
use crate::{StoreError, StoreSize, Written};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{InvocationLogs, InvocationRequest, InvocationResult};

/// Keys or rows one batched statement carries at most (SQLite allows 32,766 bound
/// parameters: chunks stay far below).
const BATCH_CHUNK: usize = 500;

/// The fenced update of one invocation record (see [`crate::InvocationStore::update_invocation`]),
/// in one statement so it is atomic:
/// - over a terminal record, only a higher attempt applies (over `cancelled`, only a node's
///   own report of the cancellation, whose logs and timings join the record);
/// - over a non-terminal record, the same or a higher attempt applies, and a lower attempt
///   only if it brings a terminal result (a slow attempt that did finish).
///
/// A terminal record drops the stored request: it will never be re-published.
fn update_sql(record: &InvocationResult, now: chrono::DateTime<Utc>) -> Result<Sql, StoreError> {
    Ok(Sql::new(format!(
        "UPDATE invocations SET version = $1, status = $2, attempt = $3, body = $4, \
         updated_at = $5, request = CASE WHEN $8 THEN NULL ELSE request END \
         WHERE id = $6 AND namespace = $7 AND ( \
           (status IN {TERMINAL_SQL} AND status <> 'cancelled' AND $3 > attempt) \
           OR (status = 'cancelled' AND $2 = 'cancelled' AND $3 >= attempt) \
           OR (status NOT IN {TERMINAL_SQL} AND ($3 >= attempt OR $8)) \
         )"
    ))
    .bind(i64::from(record.version))
    .bind(record.status.as_str())
    .bind(i64::from(record.attempt))
    .bind(SqliteStore::to_json(record)?)
    .bind(now)
    .bind(record.id.to_string())
    .bind(record.namespace.as_str())
    .bind(record.status.is_terminal()))
}

/// `query` (ending in `IN (`) for each chunk of `ids`, the list closed; every row.
async fn in_chunks(
    store: &SqliteStore,
    query: &'static str,
    ids: &[InvocationId],
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH_CHUNK) {
        let mut sql = Sql::new(query);
        for (i, id) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "" } else { ", " })
                .push_bind(id.to_string());
        }
        sql.push(")");
        rows.extend(fetch_all(store, sql).await?);
    }
    Ok(rows)
}

#[async_trait]
impl EngineInvocations for SqliteStore {
    /// [`crate::InvocationStore::update_invocation`].
    async fn apply_update(&self, record: &InvocationResult) -> Result<bool, StoreError> {
        if execute(self, update_sql(record, Utc::now())?).await? > 0 {
            return Ok(true);
        }
        let exists = fetch_optional(
            self,
            Sql::new("SELECT 1 FROM invocations WHERE id = $1 AND namespace = $2")
                .bind(record.id.to_string())
                .bind(record.namespace.as_str()),
        )
        .await?;
        fenced_off(record, exists.is_some())
    }

    /// [`crate::InvocationStore::update_invocations`]: one transaction, so one write lock and
    /// one commit for the whole batch (each statement on its own would be a commit, and a hop to
    /// the connection's thread, apiece).
    async fn apply_updates(&self, records: &[InvocationResult]) -> Result<Vec<bool>, StoreError> {
        let mut applied = Vec::with_capacity(records.len());
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        for record in records {
            applied.push(SqliteStore::execute(&mut tx, update_sql(record, now)?).await? > 0);
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// [`crate::InvocationStore::write_invocations`]: one write transaction (one commit, and a
    /// hop to the connection's thread per statement: the inserts and the logs are one
    /// multi-row statement each). A batch of inserts alone that fits one statement is that
    /// statement on the writer connection without `BEGIN` and `COMMIT` (a statement is atomic
    /// by itself): one hop to the connection's thread instead of three.
    async fn apply_writes(
        &self,
        inserts: &[&InvocationRequest],
        outcomes: &[(&InvocationResult, Option<&InvocationLogs>)],
    ) -> Result<Written, StoreError> {
        let now = Utc::now();
        if outcomes.is_empty() && inserts.len() <= ROWS_PER_STATEMENT {
            let mut conn = self.writer.acquire().await?;
            let inserted = insert_queued_in::<Self>(&mut *conn, inserts, now).await?;
            return Ok(Written {
                inserted,
                applied: Vec::new(),
            });
        }
        let mut tx = self.begin_write().await?;
        let inserted = insert_queued_in::<Self>(&mut tx, inserts, now).await?;
        // Absent records first (one statement); the rest are fenced updates, in order.
        let mut applied = if outcomes.is_empty() {
            Vec::new()
        } else {
            insert_absent_in::<Self>(&mut tx, outcomes, now).await?
        };
        for (i, (record, _)) in outcomes.iter().enumerate() {
            if !applied[i] {
                applied[i] = SqliteStore::execute(&mut tx, update_sql(record, now)?).await? > 0;
            }
        }
        put_applied_logs_in::<Self>(&mut tx, outcomes, &applied).await?;
        tx.commit().await?;
        Ok(Written { inserted, applied })
    }

    /// [`crate::InvocationStore::store_size`]: the main file's pages (the WAL is not counted)
    /// and an exact count of records.
    async fn size(&self) -> Result<StoreSize, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(
                "SELECT (SELECT page_count FROM pragma_page_count()) \
                 * (SELECT page_size FROM pragma_page_size()) AS bytes, \
                 (SELECT count(*) FROM invocations) AS invocations",
            ),
        )
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
        Ok(StoreSize {
            bytes: u64::try_from(row.int("bytes")?).unwrap_or(0),
            invocations: u64::try_from(row.int("invocations")?).unwrap_or(0),
        })
    }

    /// The bodies of the invocations with these ids.
    async fn invocations_by_id(&self, ids: &[InvocationId]) -> Result<Vec<String>, StoreError> {
        let rows = in_chunks(self, "SELECT body FROM invocations WHERE id IN (", ids).await?;
        rows.iter().map(|row| row.text("body")).collect()
    }

    /// [`crate::InvocationStore::put_logs_batch`]: in slice order, so for a repeated id the last
    /// one wins; one transaction.
    async fn store_logs(&self, logs: &[(InvocationId, InvocationLogs)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, entry) in logs {
            let sql = Sql::new(PUT_LOGS_SQL)
                .bind(id.to_string())
                .bind(entry.text.as_str())
                .bind(entry.truncated);
            SqliteStore::execute(&mut tx, sql).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `(id, namespace)` of the invocations among `ids` whose logs are stored.
    async fn logs_by_id(&self, ids: &[InvocationId]) -> Result<Vec<(String, String)>, StoreError> {
        let rows = in_chunks(
            self,
            "SELECT l.id, i.namespace FROM invocation_logs l \
             JOIN invocations i ON i.id = l.id WHERE l.id IN (",
            ids,
        )
        .await?;
        rows.iter()
            .map(|row| Ok((row.text("id")?, row.text("namespace")?)))
            .collect()
    }
}
