//! The audit log and function secrets in PostgreSQL (`migrations/postgres/0004_audit_secrets.sql`).

use chrono::Utc;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::super::common::{clamp_limit, decode_cursor, encode_cursor, is_unique_violation};
use super::super::{AuditEntry, AuditFilter, AuditOutcome, Page, SecretInfo, StoreError};
use super::replace_nul;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::secrets::{SealedSecret, SealedSecrets, SealedValue, SecretName};

/// Cursor prefix of audit listings.
const AUDIT_CURSOR: &str = "a:";

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

fn bad(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("decode audit {column}: {e}"))
}

fn audit_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    let namespace: Option<String> = row.try_get("namespace")?;
    let outcome: String = row.try_get("outcome")?;
    let status: i32 = row.try_get("status")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        namespace: namespace
            .as_deref()
            .map(Namespace::parse)
            .transpose()
            .map_err(|e| bad("namespace", e))?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| bad("outcome", &outcome))?,
        status: u16::try_from(status).map_err(|e| bad("status", e))?,
        source: row.try_get("source")?,
    })
}

pub(super) async fn append_audit(pool: &PgPool, e: &AuditEntry) -> Result<(), StoreError> {
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

pub(super) async fn list_audit(
    pool: &PgPool,
    filter: &AuditFilter,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Page<AuditEntry>, StoreError> {
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
    if let Some(actor) = &filter.actor {
        query.push(" AND actor = ").push_bind(actor.clone());
    }
    if let Some(namespace) = &filter.namespace {
        query
            .push(" AND namespace = ")
            .push_bind(namespace.as_str().to_owned());
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(outcome) = filter.outcome {
        query.push(" AND outcome = ").push_bind(outcome.as_str());
    }
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
    let mut items = rows
        .iter()
        .map(audit_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| encode_cursor(AUDIT_CURSOR, &e.id))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

pub(super) async fn put_secret(
    pool: &PgPool,
    namespace: &Namespace,
    function: &FunctionName,
    name: &SecretName,
    value: &SealedValue,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "INSERT INTO function_secrets \
         (namespace, function, name, key_id, nonce, ciphertext, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (namespace, function, name) DO UPDATE SET key_id = excluded.key_id, \
         nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
         updated_at = excluded.updated_at",
    )
    .bind(namespace.as_str())
    .bind(function.as_str())
    .bind(name.as_str())
    .bind(&value.key_id)
    .bind(&value.nonce)
    .bind(&value.ciphertext)
    .bind(Utc::now())
    .execute(pool)
    .await;
    match done {
        Ok(_) => Ok(()),
        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::NotFound(
            super::super::common::function_label(namespace, function),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_secrets(
    pool: &PgPool,
    namespace: &Namespace,
    function: &FunctionName,
) -> Result<Vec<SecretInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, updated_at FROM function_secrets \
         WHERE namespace = $1 AND function = $2 ORDER BY name",
    )
    .bind(namespace.as_str())
    .bind(function.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("name")?;

            Ok(SecretInfo {
                name: SecretName::parse(&name)
                    .map_err(|e| StoreError::Backend(format!("decode secret name: {e}")))?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

pub(super) async fn sealed_secrets(
    pool: &PgPool,
    namespace: &Namespace,
    function: &FunctionName,
) -> Result<SealedSecrets, StoreError> {
    let rows = sqlx::query(
        "SELECT name, key_id, nonce, ciphertext FROM function_secrets \
         WHERE namespace = $1 AND function = $2 ORDER BY name",
    )
    .bind(namespace.as_str())
    .bind(function.as_str())
    .fetch_all(pool)
    .await?;
    let items = rows
        .iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            Ok(SealedSecret {
                name: SecretName::parse(&name)
                    .map_err(|e| StoreError::Backend(format!("decode secret name: {e}")))?,
                value: SealedValue {
                    key_id: row.try_get("key_id")?,
                    nonce: row.try_get("nonce")?,
                    ciphertext: row.try_get("ciphertext")?,
                },
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(SealedSecrets(items))
}

pub(super) async fn delete_secret(
    pool: &PgPool,
    namespace: &Namespace,
    function: &FunctionName,
    name: &SecretName,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM function_secrets WHERE namespace = $1 AND function = $2 AND name = $3",
    )
    .bind(namespace.as_str())
    .bind(function.as_str())
    .bind(name.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}
