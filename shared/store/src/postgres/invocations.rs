//! [`InvocationStore`] on PostgreSQL: invocation records, fenced and batched updates, logs
//! and dead letters.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::AssertSqlSafe;
use sqlx::{Postgres, QueryBuilder, Row};

use super::{replace_nul, to_json, PostgresStore};
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

/// The columns of `dead_letters` as [`dead_letter_from_row`] reads them.
const DEAD_LETTER_COLUMNS: &str = "id::text AS id, namespace, function, version, attempts, \
     last_error::text AS last_error, request::text AS request, dead_lettered_at";

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetterRecord, StoreError> {
    DeadLetterColumns {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        function: row.try_get("function")?,
        version: row.try_get("version")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        request: row.try_get("request")?,
        dead_lettered_at: row.try_get("dead_lettered_at")?,
    }
    .decode()
}

/// The fencing condition of an update, over the stored row `i` and the update `u`
/// (columns `attempt`, `terminal`).
fn fencing_sql(stored: &str, update: &str) -> String {
    format!(
        "(({stored}.status IN {TERMINAL_SQL} AND {update}.attempt > {stored}.attempt) \
         OR ({stored}.status NOT IN {TERMINAL_SQL} \
             AND ({update}.attempt >= {stored}.attempt OR {update}.terminal)))"
    )
}

/// Splits a batch into rounds in which every id occurs at most once, keeping order: round `k`
/// holds the `k`-th update of each id. Applying the rounds one after the other is applying
/// the batch in order. Each round is a list of indexes into `records`.
fn rounds(records: &[InvocationResult]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<InvocationId, usize> = HashMap::with_capacity(records.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let count = seen.entry(record.id).or_insert(0);
        if rounds.len() <= *count {
            rounds.push(Vec::new());
        }
        if let Some(round) = rounds.get_mut(*count) {
            round.push(index);
        }
        *count += 1;
    }
    rounds
}

#[async_trait]
impl InvocationStore for PostgresStore {
    async fn insert_invocation(
        &self,
        request: &InvocationRequest,
    ) -> Result<InvocationResult, StoreError> {
        let record = InvocationResult::queued(request);
        let body = to_json(&record)?;
        let request_json = to_json(request)?;
        // One statement: the record and its request are committed together.
        let inserted = sqlx::query(
            "INSERT INTO invocations \
             (id, namespace, function, version, status, attempt, body, request, created_at, \
             updated_at) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, now())",
        )
        .bind(record.id.to_string())
        .bind(record.namespace.as_str())
        .bind(record.function.as_str())
        .bind(i64::from(record.version))
        .bind(record.status.as_str())
        .bind(i64::from(record.attempt))
        .bind(body)
        .bind(request_json)
        .bind(record.created_at)
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
        // Fenced in one atomic UPDATE (re-evaluated on the latest row version if a concurrent
        // update committed first); the second EXISTS tells "fenced off" from "absent" in the
        // same round trip. A terminal record drops the stored request.
        let body = to_json(record)?;
        let sql = format!(
            "WITH u AS (SELECT $3::bigint AS attempt, $8::boolean AS terminal), \
             updated AS ( \
               UPDATE invocations AS i SET version = $1, status = $2, attempt = u.attempt, \
                 body = $4::jsonb, updated_at = $5, \
                 request = CASE WHEN u.terminal THEN NULL ELSE i.request END \
               FROM u \
               WHERE i.id = $6::uuid AND i.namespace = $7 AND {fence} \
               RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM updated) AS applied, \
               EXISTS (SELECT 1 FROM invocations WHERE id = $6::uuid AND namespace = $7) \
                 AS present",
            fence = fencing_sql("i", "u"),
        );
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(i64::from(record.version))
            .bind(record.status.as_str())
            .bind(i64::from(record.attempt))
            .bind(body)
            .bind(Utc::now())
            .bind(record.id.to_string())
            .bind(record.namespace.as_str())
            .bind(record.status.is_terminal())
            .fetch_one(&self.pool)
            .await?;
        let applied: bool = row.try_get("applied")?;
        let present: bool = row.try_get("present")?;
        if applied {
            Ok(true)
        } else if present {
            tracing::debug!(
                invocation.id = %record.id,
                invocation.attempt = record.attempt,
                invocation.status = record.status.as_str(),
                "stale invocation update fenced off"
            );
            Ok(false)
        } else {
            Err(StoreError::NotFound(format!("invocation {}", record.id)))
        }
    }

    async fn update_invocations(
        &self,
        records: &[InvocationResult],
    ) -> Result<Vec<bool>, StoreError> {
        let mut applied = vec![false; records.len()];
        if records.is_empty() {
            return Ok(applied);
        }
        // Each round is sent in id order: the primary-key probes then lock rows in that order,
        // the same in every concurrent batch. (An explicit `ORDER BY id FOR UPDATE` pass would
        // guarantee it whatever the plan, at about 1.5x the cost of the whole statement.)
        let sql = format!(
            "UPDATE invocations AS i SET version = u.version, status = u.status, \
               attempt = u.attempt, body = u.body, updated_at = $8, \
               request = CASE WHEN u.terminal THEN NULL ELSE i.request END \
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
               $6::jsonb[], $7::boolean[]) \
               AS u (id, namespace, version, status, attempt, body, terminal) \
             WHERE i.id = u.id AND i.namespace = u.namespace AND {fence} \
             RETURNING i.id::text",
            fence = fencing_sql("i", "u"),
        );
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        for mut round in rounds(records) {
            round.sort_unstable_by_key(|&i| records.get(i).map(|r| r.id));
            let mut ids = Vec::with_capacity(round.len());
            let mut namespaces = Vec::with_capacity(round.len());
            let mut versions = Vec::with_capacity(round.len());
            let mut statuses = Vec::with_capacity(round.len());
            let mut attempts = Vec::with_capacity(round.len());
            let mut bodies = Vec::with_capacity(round.len());
            let mut terminals = Vec::with_capacity(round.len());
            let mut index_of = HashMap::with_capacity(round.len());
            for &index in &round {
                let Some(record) = records.get(index) else {
                    continue;
                };
                let id = record.id.to_string();
                index_of.insert(id.clone(), index);
                ids.push(id);
                namespaces.push(record.namespace.as_str().to_owned());
                versions.push(i64::from(record.version));
                statuses.push(record.status.as_str().to_owned());
                attempts.push(i64::from(record.attempt));
                bodies.push(to_json(record)?);
                terminals.push(record.status.is_terminal());
            }
            let updated: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                .bind(ids)
                .bind(namespaces)
                .bind(versions)
                .bind(statuses)
                .bind(attempts)
                .bind(bodies)
                .bind(terminals)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            for id in updated {
                if let Some(slot) = index_of.get(&id).and_then(|&i| applied.get_mut(i)) {
                    *slot = true;
                }
            }
        }
        tx.commit().await?;
        let fenced = applied.iter().filter(|a| !**a).count();
        if fenced > 0 {
            tracing::debug!(
                batch.size = records.len(),
                batch.not_applied = fenced,
                "batched invocation updates: some fenced off or absent"
            );
        }
        Ok(applied)
    }

    async fn stale_queued(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InvocationRequest>, StoreError> {
        // Served by the partial index `invocations_queued`.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT request::text FROM invocations \
             WHERE status = 'queued' AND created_at < $1 AND request IS NOT NULL \
             ORDER BY created_at, id LIMIT $2",
        )
        .bind(older_than)
        .bind(i64::from(clamp_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_json(r)).collect()
    }

    async fn running_invocations(&self, limit: u32) -> Result<Vec<InvocationResult>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM invocations WHERE status = 'running' \
             ORDER BY created_at, id LIMIT $1",
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
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body::text FROM invocations WHERE id = $1::uuid AND namespace = $2",
        )
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = keys.iter().map(|(_, id)| id.to_string()).collect();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body::text FROM invocations WHERE id = ANY($1::uuid[])")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        let found = rows
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
        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new("SELECT body::text FROM invocations WHERE namespace = ");
        query.push_bind(namespace.as_str());
        if let Some(function) = &filter.function {
            query.push(" AND function = ").push_bind(function.as_str());
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = before {
            query
                .push(" AND id < ")
                .push_bind(before.to_string())
                .push("::uuid");
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
        sqlx::query(
            "INSERT INTO invocation_logs (id, text, truncated) VALUES ($1::uuid, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, truncated = excluded.truncated",
        )
        .bind(id.to_string())
        .bind(replace_nul(&logs.text))
        .bind(logs.truncated)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_logs_batch(
        &self,
        logs: &[(InvocationId, InvocationLogs)],
    ) -> Result<(), StoreError> {
        // ON CONFLICT may touch a row once per statement: keep the last logs of each id, and
        // write them in id order (consistent lock order across concurrent batches).
        let mut last: HashMap<InvocationId, &InvocationLogs> = HashMap::with_capacity(logs.len());
        for (id, entry) in logs {
            last.insert(*id, entry);
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<_> = last.into_iter().collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        let mut ids = Vec::with_capacity(entries.len());
        let mut texts = Vec::with_capacity(entries.len());
        let mut truncated = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            ids.push(id.to_string());
            texts.push(replace_nul(&entry.text).into_owned());
            truncated.push(entry.truncated);
        }
        sqlx::query(
            "INSERT INTO invocation_logs (id, text, truncated) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::boolean[]) \
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, truncated = excluded.truncated",
        )
        .bind(ids)
        .bind(texts)
        .bind(truncated)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn logs_stored(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = keys.iter().map(|(_, id)| id.to_string()).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT l.id::text, i.namespace FROM invocation_logs l \
             JOIN invocations i ON i.id = l.id WHERE l.id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(present_per_key(keys, rows))
    }

    async fn get_logs(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationLogs>, StoreError> {
        let row = sqlx::query(
            "SELECT l.text, l.truncated FROM invocation_logs l \
             JOIN invocations i ON i.id = l.id \
             WHERE l.id = $1::uuid AND i.namespace = $2",
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
        let mut tx = self.pool.begin().await?;
        // An absent record is inserted first, as `insert_invocation` would have; then the row
        // is locked, so no node update slips in between reading it and replacing it.
        sqlx::query(
            "INSERT INTO invocations \
             (id, namespace, function, version, status, attempt, body, request, created_at, \
             updated_at) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, now()) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(queued.namespace.as_str())
        .bind(queued.function.as_str())
        .bind(i64::from(queued.version))
        .bind(queued.status.as_str())
        .bind(i64::from(queued.attempt))
        .bind(to_json(&queued)?)
        .bind(to_json(&dead.request)?)
        .bind(queued.created_at)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT i.namespace, i.status, i.body::text AS body, \
             EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = i.id) AS dead \
             FROM invocations i WHERE i.id = $1::uuid FOR UPDATE OF i",
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
            "UPDATE invocations SET status = $1, attempt = $2, body = $3::jsonb, \
             updated_at = now(), request = NULL WHERE id = $4::uuid",
        )
        .bind(record.status.as_str())
        .bind(i64::from(record.attempt))
        .bind(to_json(&record)?)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO dead_letters \
             (id, namespace, function, version, attempts, last_error, request, \
             dead_lettered_at) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8) \
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
        .bind(dead.dead_lettered_at)
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
        let mut query: QueryBuilder<Postgres> = QueryBuilder::new("SELECT ");
        query
            .push(DEAD_LETTER_COLUMNS)
            .push(" FROM dead_letters WHERE true");
        if let Some(namespace) = namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        if let Some(before) = before {
            query
                .push(" AND id < ")
                .push_bind(before.to_string())
                .push("::uuid");
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
             WHERE id = $1::uuid AND ($2::text IS NULL OR namespace = $2)"
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
            "DELETE FROM dead_letters \
             WHERE id = $1::uuid AND ($2::text IS NULL OR namespace = $2)",
        )
        .bind(id.to_string())
        .bind(namespace.map(Namespace::as_str))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnmesh_core::names::FunctionName;

    #[test]
    fn rounds_keep_order_and_unique_ids() {
        let ns = Namespace::parse("default").unwrap();
        let req = |id| InvocationResult { id, ..record(&ns) };
        let (a, b) = (InvocationId::new(), InvocationId::new());
        let batch = vec![req(a), req(b), req(a), req(a), req(b)];
        assert_eq!(rounds(&batch), vec![vec![0, 1], vec![2, 4], vec![3]]);
        assert!(rounds(&[]).is_empty());
    }

    fn record(ns: &Namespace) -> InvocationResult {
        InvocationResult {
            id: InvocationId::new(),
            namespace: ns.clone(),
            function: FunctionName::parse("f").unwrap(),
            version: 1,
            status: fnmesh_core::invocation::InvocationStatus::Queued,
            result: None,
            error: None,
            metrics: None,
            node_id: None,
            attempt: 0,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
        }
    }
}
