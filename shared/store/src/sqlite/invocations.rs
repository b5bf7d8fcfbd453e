//! [`InvocationStore`] on SQLite: invocation records, fenced and batched updates, logs and
//! dead letters.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::AssertSqlSafe;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{parse_ts, to_json, ts, SqliteStore};
use crate::common::{
    clamp_limit, dead_letter_target, from_json, invocation_id_cursor, is_unique_violation,
    logs_from_row, page_from_extra_row, present_per_key, records_per_key, DeadLetterColumns,
    DEAD_LETTER_CURSOR, INVOCATION_CURSOR, TERMINAL_SQL,
};
use crate::{InvocationFilter, InvocationStore, Page, StoreError};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, InvocationLogs, InvocationRequest, InvocationResult,
};
use fnmesh_core::names::Namespace;

/// Stores (replaces) one invocation's logs. Binds: id, text, truncated.
const PUT_LOGS_SQL: &str = "INSERT INTO invocation_logs (id, text, truncated) VALUES (?, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET text = excluded.text, truncated = excluded.truncated";

/// Keys or rows one batched statement carries at most.
const BATCH_CHUNK: usize = 500;

/// The fenced update of one invocation record (see [`InvocationStore::update_invocation`]), in
/// one statement so it is atomic:
/// - over a terminal record, only a higher attempt applies;
/// - over a non-terminal record, the same or a higher attempt applies, and a lower attempt
///   only if it brings a terminal result (a slow attempt that did finish).
///
/// A terminal record drops the stored request: it will never be re-published. Binds: version,
/// status, attempt, body, updated_at, id, namespace, terminal.
fn update_invocation_sql() -> String {
    format!(
        "UPDATE invocations SET version = ?1, status = ?2, attempt = ?3, body = ?4, \
         updated_at = ?5, request = CASE WHEN ?8 THEN NULL ELSE request END \
         WHERE id = ?6 AND namespace = ?7 AND ( \
           (status IN {TERMINAL_SQL} AND ?3 > attempt) \
           OR (status NOT IN {TERMINAL_SQL} AND (?3 >= attempt OR ?8)) \
         )"
    )
}

/// The columns of `dead_letters`, in the order [`dead_letter_from_row`] reads them.
const DEAD_LETTER_COLUMNS: &str =
    "id, namespace, function, version, attempts, last_error, request, dead_lettered_at";

fn dead_letter_from_row(row: &SqliteRow) -> Result<DeadLetterRecord, StoreError> {
    let dead_lettered_at: String = row.try_get("dead_lettered_at")?;
    DeadLetterColumns {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        function: row.try_get("function")?,
        version: row.try_get("version")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        request: row.try_get("request")?,
        dead_lettered_at: parse_ts("dead_lettered_at", &dead_lettered_at)?,
    }
    .decode()
}

#[async_trait]
impl InvocationStore for SqliteStore {
    async fn insert_invocation(
        &self,
        request: &InvocationRequest,
    ) -> Result<InvocationResult, StoreError> {
        let record = InvocationResult::queued(request);
        let body = to_json(&record)?;
        let request_json = to_json(request)?;
        let now = ts(&Utc::now());
        // One statement: the record and its request are committed together.
        let inserted = sqlx::query(
            "INSERT INTO invocations \
             (id, namespace, function, version, status, attempt, body, request, created_at, \
             updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.id.to_string())
        .bind(record.namespace.as_str())
        .bind(record.function.as_str())
        .bind(i64::from(record.version))
        .bind(record.status.as_str())
        .bind(i64::from(record.attempt))
        .bind(body)
        .bind(request_json)
        .bind(ts(&record.created_at))
        .bind(now)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(record),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("invocation {}", record.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update_invocation(&self, record: &InvocationResult) -> Result<bool, StoreError> {
        let body = to_json(record)?;
        let sql = update_invocation_sql();
        let done = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(i64::from(record.version))
            .bind(record.status.as_str())
            .bind(i64::from(record.attempt))
            .bind(body)
            .bind(ts(&Utc::now()))
            .bind(record.id.to_string())
            .bind(record.namespace.as_str())
            .bind(record.status.is_terminal())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM invocations WHERE id = ? AND namespace = ?")
                .bind(record.id.to_string())
                .bind(record.namespace.as_str())
                .fetch_optional(&self.pool)
                .await?;
        match exists {
            Some(_) => {
                tracing::debug!(
                    invocation.id = %record.id,
                    invocation.attempt = record.attempt,
                    invocation.status = record.status.as_str(),
                    "stale invocation update fenced off"
                );
                Ok(false)
            }
            None => Err(StoreError::NotFound(format!("invocation {}", record.id))),
        }
    }

    async fn update_invocations(
        &self,
        records: &[InvocationResult],
    ) -> Result<Vec<bool>, StoreError> {
        // One transaction: one write lock and one commit for the whole batch (each statement
        // on its own would be a commit, and a hop to the connection's thread, apiece).
        let mut applied = Vec::with_capacity(records.len());
        if records.is_empty() {
            return Ok(applied);
        }
        let sql = update_invocation_sql();
        let now = ts(&Utc::now());
        let mut tx = self.pool.begin().await?;
        for record in records {
            let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(i64::from(record.version))
                .bind(record.status.as_str())
                .bind(i64::from(record.attempt))
                .bind(to_json(record)?)
                .bind(&now)
                .bind(record.id.to_string())
                .bind(record.namespace.as_str())
                .bind(record.status.is_terminal())
                .execute(&mut *tx)
                .await?;
            applied.push(done.rows_affected() > 0);
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn stale_queued(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InvocationRequest>, StoreError> {
        // `created_at` is fixed-width RFC 3339 (nanoseconds, `Z`), so text order is time order.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT request FROM invocations \
             WHERE status = 'queued' AND created_at < ? AND request IS NOT NULL \
             ORDER BY created_at, id LIMIT ?",
        )
        .bind(ts(&older_than))
        .bind(i64::from(clamp_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_json(r)).collect()
    }

    async fn running_invocations(&self, limit: u32) -> Result<Vec<InvocationResult>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM invocations WHERE status = 'running' \
             ORDER BY created_at, id LIMIT ?",
        )
        .bind(i64::from(clamp_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_json(r)).collect()
    }

    async fn get_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationResult>, StoreError> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM invocations WHERE id = ? AND namespace = ?")
                .bind(id.to_string())
                .bind(namespace.as_str())
                .fetch_optional(&self.pool)
                .await?;
        body.as_deref().map(from_json).transpose()
    }

    async fn get_invocations(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<Option<InvocationResult>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        // SQLite allows 32,766 bound parameters: chunks stay far below.
        for chunk in keys.chunks(BATCH_CHUNK) {
            let mut query: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT body FROM invocations WHERE id IN (");
            let mut ids = query.separated(", ");
            for (_, id) in chunk {
                ids.push_bind(id.to_string());
            }
            ids.push_unseparated(")");
            let rows: Vec<String> = query.build_query_scalar().fetch_all(&self.pool).await?;
            for body in rows {
                found.push(from_json(&body)?);
            }
        }
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
        let mut query: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT body FROM invocations WHERE namespace = ");
        query.push_bind(namespace.as_str());
        if let Some(function) = &filter.function {
            query.push(" AND function = ").push_bind(function.as_str());
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before.to_string());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows: Vec<String> = query.build_query_scalar().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|b| from_json::<InvocationResult>(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_extra_row(items, limit, INVOCATION_CURSOR, |r| {
            r.id.to_string()
        }))
    }

    async fn put_logs(&self, id: &InvocationId, logs: &InvocationLogs) -> Result<(), StoreError> {
        sqlx::query(PUT_LOGS_SQL)
            .bind(id.to_string())
            .bind(&logs.text)
            .bind(logs.truncated)
            .execute(&self.pool)
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
        // In slice order, so for a repeated id the last one wins; one transaction.
        let mut tx = self.pool.begin().await?;
        for (id, entry) in logs {
            sqlx::query(PUT_LOGS_SQL)
                .bind(id.to_string())
                .bind(&entry.text)
                .bind(entry.truncated)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn logs_stored(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_CHUNK) {
            let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT l.id, i.namespace FROM invocation_logs l \
                 JOIN invocations i ON i.id = l.id WHERE l.id IN (",
            );
            let mut ids = query.separated(", ");
            for (_, id) in chunk {
                ids.push_bind(id.to_string());
            }
            ids.push_unseparated(")");
            let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&self.pool).await?;
            found.extend(rows);
        }
        Ok(present_per_key(keys, found))
    }

    async fn get_logs(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationLogs>, StoreError> {
        let row = sqlx::query(
            "SELECT l.text, l.truncated FROM invocation_logs l \
             JOIN invocations i ON i.id = l.id \
             WHERE l.id = ? AND i.namespace = ?",
        )
        .bind(id.to_string())
        .bind(namespace.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(logs_from_row).transpose()
    }

    async fn put_dead_letter(&self, dead: &DeadLetterRecord) -> Result<bool, StoreError> {
        let id = dead.id.to_string();
        let queued = InvocationResult::queued(&dead.request);
        let now = ts(&Utc::now());
        // BEGIN IMMEDIATE: no update can slip in between reading the record and replacing it.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // An absent record is inserted first, as `insert_invocation` would have.
        sqlx::query(
            "INSERT INTO invocations \
             (id, namespace, function, version, status, attempt, body, request, created_at, \
             updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(queued.namespace.as_str())
        .bind(queued.function.as_str())
        .bind(i64::from(queued.version))
        .bind(queued.status.as_str())
        .bind(i64::from(queued.attempt))
        .bind(to_json(&queued)?)
        .bind(to_json(&dead.request)?)
        .bind(ts(&queued.created_at))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT namespace, status, body, \
             EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = i.id) AS dead \
             FROM invocations i WHERE i.id = ?",
        )
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        let namespace: String = row.try_get("namespace")?;
        let status: String = row.try_get("status")?;
        let body: String = row.try_get("body")?;
        let stored: bool = row.try_get("dead")?;
        let Some(record) = dead_letter_target(dead, &namespace, &status, &body, stored)? else {
            // Dropping the transaction rolls it back.
            return Ok(false);
        };
        sqlx::query(
            "UPDATE invocations SET status = ?, attempt = ?, body = ?, updated_at = ?, \
             request = NULL WHERE id = ?",
        )
        .bind(record.status.as_str())
        .bind(i64::from(record.attempt))
        .bind(to_json(&record)?)
        .bind(&now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO dead_letters \
             (id, namespace, function, version, attempts, last_error, request, \
             dead_lettered_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, \
             function = excluded.function, version = excluded.version, \
             attempts = excluded.attempts, last_error = excluded.last_error, \
             request = excluded.request, dead_lettered_at = excluded.dead_lettered_at",
        )
        .bind(&id)
        .bind(dead.namespace.as_str())
        .bind(dead.function.as_str())
        .bind(i64::from(dead.version))
        .bind(i64::from(dead.attempts))
        .bind(dead.last_error.as_ref().map(to_json).transpose()?)
        .bind(to_json(&dead.request)?)
        .bind(ts(&dead.dead_lettered_at))
        .execute(&mut *tx)
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
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        query
            .push(DEAD_LETTER_COLUMNS)
            .push(" FROM dead_letters WHERE 1 = 1");
        if let Some(namespace) = namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before.to_string());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(dead_letter_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_extra_row(items, limit, DEAD_LETTER_CURSOR, |d| {
            d.id.to_string()
        }))
    }

    async fn get_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
             WHERE id = ?1 AND (?2 IS NULL OR namespace = ?2)"
        );
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(id.to_string())
            .bind(namespace.map(Namespace::as_str))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    async fn delete_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM dead_letters WHERE id = ?1 AND (?2 IS NULL OR namespace = ?2)",
        )
        .bind(id.to_string())
        .bind(namespace.map(Namespace::as_str))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
