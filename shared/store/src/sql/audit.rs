//! [`AuditStore`] on any [`SqlEngine`]: the append-only audit log.

use async_trait::async_trait;
use uuid::Uuid;

use super::{execute, fetch_page, newest_first, Listing, Sql, SqlEngine, SqlRow};
use crate::common::{clamp_limit, decode_cursor, is_unique_violation, AUDIT_CURSOR};
use crate::{AuditEntry, AuditFilter, AuditOutcome, AuditStore, Page, StoreError};
use fnmesh_core::names::Namespace;

/// Audit entries, newest first.
const AUDIT: Listing<AuditEntry> = newest_first(AUDIT_CURSOR, |e| e.id.clone());

fn audit_from_row<R: SqlRow>(row: &R) -> Result<AuditEntry, StoreError> {
    let bad = |column: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("decode audit {column}: {e}"))
    };
    let outcome = row.text("outcome")?;
    Ok(AuditEntry {
        id: row.text("id")?,
        at: row.time("at")?,
        actor: row.text("actor")?,
        namespace: row
            .opt_text("namespace")?
            .as_deref()
            .map(Namespace::parse)
            .transpose()
            .map_err(|e| bad("namespace", &e))?,
        action: row.text("action")?,
        target: row.opt_text("target")?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| bad("outcome", &outcome))?,
        status: u16::try_from(row.int("status")?).map_err(|e| bad("status", &e))?,
        source: row.opt_text("source")?,
        count: u32::try_from(row.int("count")?).map_err(|e| bad("count", &e))?,
    })
}

#[async_trait]
impl<E: SqlEngine> AuditStore for E {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        if E::UUID_AUDIT_IDS {
            Uuid::parse_str(&e.id)
                .map_err(|err| StoreError::Backend(format!("audit entry id {:?}: {err}", e.id)))?;
        }
        let inserted = execute(
            self,
            Sql::new(
                "INSERT INTO audit_log \
                 (id, at, actor, namespace, action, target, outcome, status, source, count) \
                 VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8::integer, $9, $10::integer)",
            )
            .bind(e.id.as_str())
            .bind(e.at)
            .bind(e.actor.as_str())
            .bind(e.namespace.as_ref().map(Namespace::as_str))
            .bind(e.action.as_str())
            .bind(e.target.as_deref())
            .bind(e.outcome.as_str())
            .bind(i64::from(e.status))
            .bind(e.source.as_deref())
            .bind(i64::from(e.count)),
        )
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
        let limit = clamp_limit(limit);
        let before = cursor
            .map(|c| {
                let id = decode_cursor(AUDIT_CURSOR, c)?;
                if E::UUID_AUDIT_IDS && Uuid::parse_str(&id).is_err() {
                    return Err(StoreError::InvalidCursor);
                }
                Ok(id)
            })
            .transpose()?;
        let mut query = Sql::new(
            "SELECT id::text AS id, at, actor, namespace, action, target, outcome, \
             status::bigint AS status, source, count::bigint AS count FROM audit_log WHERE true",
        );
        if let Some(actor) = &filter.actor {
            query.push(" AND actor = ").push_bind(actor);
        }
        if let Some(namespace) = &filter.namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        if let Some(action) = &filter.action {
            query.push(" AND action = ").push_bind(action);
        }
        if let Some(outcome) = filter.outcome {
            query.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(since) = filter.since {
            // SQLite's `at` is fixed-width RFC 3339 text: text order is time order.
            query.push(" AND at >= ").push_bind(since);
        }
        fetch_page(self, query, &AUDIT, before, limit, audit_from_row).await
    }
}
