//! [`AuditStore`]: the audit log in SQLite (`migrations/sqlite/0005_audit_secrets.sql`).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{parse_ts, ts, SqliteStore};
use crate::common::{
    clamp_limit, decode_cursor, is_unique_violation, page_from_extra_row, push_audit_filter,
    AuditColumns, AUDIT_CURSOR,
};
use crate::{AuditEntry, AuditFilter, AuditStore, Page, StoreError};
use fnmesh_core::names::Namespace;

fn audit_from_row(row: &SqliteRow) -> Result<AuditEntry, StoreError> {
    let at: String = row.try_get("at")?;
    AuditColumns {
        id: row.try_get("id")?,
        at: parse_ts("at", &at)?,
        actor: row.try_get("actor")?,
        namespace: row.try_get("namespace")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        status: row.try_get("status")?,
        source: row.try_get("source")?,
    }
    .decode()
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let pool = &self.pool;
        let inserted = sqlx::query(
            "INSERT INTO audit_log \
             (id, at, actor, namespace, action, target, outcome, status, source) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(ts(&e.at))
        .bind(&e.actor)
        .bind(e.namespace.as_ref().map(Namespace::as_str))
        .bind(&e.action)
        .bind(&e.target)
        .bind(e.outcome.as_str())
        .bind(i64::from(e.status))
        .bind(&e.source)
        .execute(pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => {
                Err(StoreError::Conflict(format!("audit entry {}", e.id)))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let pool = &self.pool;
        let limit = clamp_limit(limit);
        let before = cursor.map(|c| decode_cursor(AUDIT_CURSOR, c)).transpose()?;
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, at, actor, namespace, action, target, outcome, status, source \
             FROM audit_log WHERE 1 = 1",
        );
        push_audit_filter(&mut query, filter);
        if let Some(since) = &filter.since {
            // Fixed-width RFC 3339 text: text order is time order.
            query.push(" AND at >= ").push_bind(ts(since));
        }
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(pool).await?;
        let items = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_extra_row(items, limit, AUDIT_CURSOR, |e| {
            e.id.clone()
        }))
    }
}
