//! What PostgreSQL does its own way in [`crate::InvocationStore`]: the fenced update in one
//! round trip, and batches as `UNNEST`ed or `ANY` arrays, one statement per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::{replace_nul, to_json, PostgresStore};
use crate::common::{fenced_off, TERMINAL_SQL};
use crate::sql::{insert_absent_in, insert_queued_in, put_applied_logs_in, EngineInvocations};
use crate::{StoreError, StoreSize, Written};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{InvocationLogs, InvocationRequest, InvocationResult};

/// The fencing condition of an update, over the stored row `i` and the update `u`
/// (columns `status`, `attempt`, `terminal`); over a `cancelled` record only a node's own
/// report of the cancellation applies (its logs and timings join the record).
fn fencing_sql(stored: &str, update: &str) -> String {
    format!(
        "(({stored}.status IN {TERMINAL_SQL} AND {stored}.status <> 'cancelled' \
             AND {update}.attempt > {stored}.attempt) \
         OR ({stored}.status = 'cancelled' AND {update}.status = 'cancelled' \
             AND {update}.attempt >= {stored}.attempt) \
         OR ({stored}.status NOT IN {TERMINAL_SQL} \
             AND ({update}.attempt >= {stored}.attempt OR {update}.terminal)))"
    )
}

/// Splits a batch into rounds in which every id occurs at most once, keeping order: round `k`
/// holds the `k`-th update of each id. Applying the rounds one after the other is applying
/// the batch in order. Each round is a list of indexes into `records`.
fn rounds(records: &[&InvocationResult]) -> Vec<Vec<usize>> {
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

/// The fenced updates of `records` (see [`crate::InvocationStore::update_invocations`]) on
/// `conn`, inside the caller's transaction: one `UPDATE … FROM UNNEST` per round (see
/// [`rounds`]). Whether each applied.
async fn updates_in(
    conn: &mut PgConnection,
    records: &[&InvocationResult],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<bool>, StoreError> {
    let mut applied = vec![false; records.len()];
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
            .fetch_all(&mut *conn)
            .await?;
        for id in updated {
            if let Some(slot) = index_of.get(&id).and_then(|&i| applied.get_mut(i)) {
                *slot = true;
            }
        }
    }
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

#[async_trait]
impl EngineInvocations for PostgresStore {
    /// [`crate::InvocationStore::update_invocation`].
    async fn apply_update(&self, record: &InvocationResult) -> Result<bool, StoreError> {
        // Fenced in one atomic UPDATE (re-evaluated on the latest row version if a concurrent
        // update committed first); the second EXISTS tells "fenced off" from "absent" in the
        // same round trip. A terminal record drops the stored request.
        let body = to_json(record)?;
        let sql = format!(
            "WITH u AS (SELECT $2::text AS status, $3::bigint AS attempt, \
                             $8::boolean AS terminal), \
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
        if row.try_get("applied")? {
            return Ok(true);
        }
        fenced_off(record, row.try_get("present")?)
    }

    /// [`crate::InvocationStore::update_invocations`]: one transaction of [`updates_in`].
    async fn apply_updates(&self, records: &[InvocationResult]) -> Result<Vec<bool>, StoreError> {
        let records: Vec<&InvocationResult> = records.iter().collect();
        let mut tx = self.pool.begin().await?;
        let applied = updates_in(&mut tx, &records, Utc::now()).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// [`crate::InvocationStore::write_invocations`]: one transaction of a multi-row insert,
    /// [`updates_in`] and one `INSERT` of the applied outcomes' logs.
    async fn apply_writes(
        &self,
        inserts: &[&InvocationRequest],
        outcomes: &[(&InvocationResult, Option<&InvocationLogs>)],
    ) -> Result<Written, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let inserted = insert_queued_in::<Self>(&mut tx, inserts, now).await?;
        // Absent records first (one statement); the rest are fenced updates, in order.
        let mut applied = if outcomes.is_empty() {
            Vec::new()
        } else {
            insert_absent_in::<Self>(&mut tx, outcomes, now).await?
        };
        let rest: Vec<usize> = (0..outcomes.len()).filter(|&i| !applied[i]).collect();
        let records: Vec<&InvocationResult> = rest.iter().map(|&i| outcomes[i].0).collect();
        for (i, done) in rest
            .into_iter()
            .zip(updates_in(&mut tx, &records, now).await?)
        {
            applied[i] = done;
        }
        put_applied_logs_in::<Self>(&mut tx, outcomes, &applied).await?;
        tx.commit().await?;
        Ok(Written { inserted, applied })
    }

    /// [`crate::InvocationStore::store_size`]: the database's size and the planner's estimate
    /// of records (a count would scan the table on every scrape).
    async fn size(&self) -> Result<StoreSize, StoreError> {
        let (bytes, invocations): (i64, i64) = sqlx::query_as(
            "SELECT pg_database_size(current_database()), \
             GREATEST(reltuples, 0)::bigint FROM pg_class \
             WHERE oid = 'invocations'::regclass",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreSize {
            bytes: u64::try_from(bytes).unwrap_or(0),
            invocations: u64::try_from(invocations).unwrap_or(0),
        })
    }

    /// The bodies of the invocations with these ids.
    async fn invocations_by_id(&self, ids: &[InvocationId]) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        Ok(
            sqlx::query_scalar("SELECT body::text FROM invocations WHERE id = ANY($1::uuid[])")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// [`crate::InvocationStore::put_logs_batch`].
    async fn store_logs(&self, logs: &[(InvocationId, InvocationLogs)]) -> Result<(), StoreError> {
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

    /// `(id, namespace)` of the invocations among `ids` whose logs are stored.
    async fn logs_by_id(&self, ids: &[InvocationId]) -> Result<Vec<(String, String)>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        Ok(sqlx::query_as(
            "SELECT l.id::text, i.namespace FROM invocation_logs l \
             JOIN invocations i ON i.id = l.id WHERE l.id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnmesh_core::names::{FunctionName, Namespace};

    #[test]
    fn rounds_keep_order_and_unique_ids() {
        let ns = Namespace::parse("default").unwrap();
        let req = |id| InvocationResult { id, ..record(&ns) };
        let (a, b) = (InvocationId::new(), InvocationId::new());
        let batch = [req(a), req(b), req(a), req(a), req(b)];
        let batch: Vec<&InvocationResult> = batch.iter().collect();
        assert_eq!(rounds(&batch), vec![vec![0, 1], vec![2, 4], vec![3]]);
        assert!(rounds(&[]).is_empty());
    }

    fn record(ns: &Namespace) -> InvocationResult {
        InvocationResult {
            id: InvocationId::new(),
            namespace: ns.clone(),
            function: FunctionName::parse("f").unwrap(),
            version: 1,
            alias: None,
            priority: Default::default(),
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
