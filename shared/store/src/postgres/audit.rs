//! [`AuditStore`]: the audit log in PostgreSQL (`migrations/postgres/0004_audit_secrets.sql`).

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{replace_nul, PostgresStore};
use crate::common::{
    clamp_limit, decode_cursor, is_unique_violation, page_from_extra_row, push_audit_filter,
    AuditColumns, AUDIT_CURSOR,
};
use crate::{AuditEntry, AuditFilter, AuditStore, Page, StoreError};
use fnmesh_core::names::Namespace;

fn audit_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    AuditColumns {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        namespace: row.try_get("namespace")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        status: i64::from(row.try_get::<i32, _>("status")?),
        source: row.try_get("source")?,
    }
    .decode()
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let pool = &self.pool;
        let id = Uuid::parse_str(&e.id)
            .map_err(|err| StoreError::Backend(format!("audit entry id {:?}: {err}", e.id)))?;
        let inserted = sqlx::query(
            "INSERT INTO audit_log \
             (id, at, actor, namespace, action, target, outcome, status, source) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.to_string())
        .bind(e.at)
        .bind(replace_nul(&e.actor))
        .bind(e.namespace.as_ref().map(Namespace::as_str))
        .bind(replace_nul(&e.action))
        .bind(e.target.as_deref().map(replace_nul))
        .bind(e.outcome.as_str())
        .bind(i32::from(e.status))
        .bind(e.source.as_deref().map(replace_nul))
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
        let before = cursor
            .map(|c| {
                let id = decode_cursor(AUDIT_CURSOR, c)?;
                Uuid::parse_str(&id).map_err(|_| StoreError::InvalidCursor)
            })
            .transpose()?;
        let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id::text AS id, at, actor, namespace, action, target, outcome, status, source \
             FROM audit_log WHERE 1 = 1",
        );
        push_audit_filter(&mut query, filter);
        if let Some(since) = &filter.since {
            query.push(" AND at >= ").push_bind(*since);
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
