//! [`AccessStore`] on SQLite: key management, refresh tokens, namespace quotas.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::SqliteRow;
use sqlx::AssertSqlSafe;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{parse_ts, to_json, ts, SqliteStore};
use crate::access::{AccessStore, NamespaceQuota, NamespaceUsage, RefreshTokenRecord};
use crate::common::from_json;
use crate::common::{
    clamp_limit, decode_cursor, is_unique_violation, page_from_extra_row, ApiKeyColumns,
    API_KEY_COLUMNS,
};
use crate::{ApiKeyRecord, Page, StoreError};
use fnmesh_core::names::{FunctionName, Namespace};

/// Cursor prefix of key listings.
const KEY_CURSOR: &str = "k:";

const REFRESH_COLUMNS: &str =
    "token_hash, family_id, key_id, created_at, expires_at, used_at, revoked_at";

fn refresh_from_row(row: &SqliteRow) -> Result<RefreshTokenRecord, StoreError> {
    let optional = |column: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.as_deref().map(|t| parse_ts(column, t)).transpose()
    };
    let created_at: String = row.try_get("created_at")?;
    let expires_at: String = row.try_get("expires_at")?;
    Ok(RefreshTokenRecord {
        token_hash: row.try_get("token_hash")?,
        family_id: row.try_get("family_id")?,
        key_id: row.try_get("key_id")?,
        created_at: parse_ts("created_at", &created_at)?,
        expires_at: parse_ts("expires_at", &expires_at)?,
        used_at: optional("used_at")?,
        revoked_at: optional("revoked_at")?,
    })
}

fn quota_from_row(row: &SqliteRow) -> Result<NamespaceQuota, StoreError> {
    let namespace: String = row.try_get("namespace")?;
    let limit = |column: &str| -> Result<Option<u32>, StoreError> {
        let value: Option<i64> = row.try_get(column)?;
        value
            .map(|v| {
                u32::try_from(v).map_err(|_| StoreError::Backend(format!("decode {column}: {v}")))
            })
            .transpose()
    };
    let updated_at: String = row.try_get("updated_at")?;
    Ok(NamespaceQuota {
        namespace: Namespace::parse(&namespace)
            .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))?,
        max_functions: limit("max_functions")?,
        max_memory_mb: limit("max_memory_mb")?,
        max_concurrency: limit("max_concurrency")?,
        updated_at: parse_ts("updated_at", &updated_at)?,
    })
}

/// Binds an API key's columns in [`API_KEY_COLUMNS`] order; `functions` is the JSON of its
/// grants (see [`functions_json`]).
fn bind_api_key<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    key: &'q ApiKeyRecord,
    functions: Option<String>,
) -> Query<'q, Sqlite, SqliteArguments> {
    query
        .bind(&key.id)
        .bind(&key.key_hash)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(key.namespace.as_str())
        .bind(ts(&key.created_at))
        .bind(key.expires_at.as_ref().map(ts))
        .bind(key.revoked_at.as_ref().map(ts))
        .bind(functions)
}

/// The JSON of a key's grants (`None`: no restriction).
fn functions_json(functions: &Option<Vec<FunctionName>>) -> Result<Option<String>, StoreError> {
    functions.as_ref().map(to_json).transpose()
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
    let created_at: String = row.try_get("created_at")?;
    let expires_at: Option<String> = row.try_get("expires_at")?;
    let revoked_at: Option<String> = row.try_get("revoked_at")?;
    let functions: Option<String> = row.try_get("functions")?;
    ApiKeyColumns {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        role: row.try_get("role")?,
        namespace: row.try_get("namespace")?,
        created_at: parse_ts("created_at", &created_at)?,
        expires_at: expires_at
            .as_deref()
            .map(|t| parse_ts("expires_at", t))
            .transpose()?,
        revoked_at: revoked_at
            .as_deref()
            .map(|t| parse_ts("revoked_at", t))
            .transpose()?,
        functions: functions.as_deref().map(from_json).transpose()?,
    }
    .decode()
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO api_keys \
             (id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, \
             functions) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        let inserted = bind_api_key(query, key, functions_json(&key.functions)?)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("api key {:?}", key.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn upsert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO api_keys \
             (id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, \
             functions) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, \
             name = excluded.name, role = excluded.role, namespace = excluded.namespace, \
             created_at = excluded.created_at, expires_at = excluded.expires_at, \
             revoked_at = excluded.revoked_at, functions = excluded.functions",
        );
        let inserted = bind_api_key(query, key, functions_json(&key.functions)?)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            // Another key already has this hash.
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "api key hash of {:?}",
                key.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, \
             functions FROM api_keys WHERE key_hash = ?",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        let limit = clamp_limit(limit);
        let after = cursor.map(|c| decode_cursor(KEY_CURSOR, c)).transpose()?;
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        query
            .push(API_KEY_COLUMNS)
            .push(" FROM api_keys WHERE 1 = 1");
        if let Some(namespace) = namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        if let Some(after) = after {
            query.push(" AND id > ").push_bind(after);
        }
        query
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(api_key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_extra_row(items, limit, KEY_CURSOR, |k| {
            k.id.clone()
        }))
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(ts(&at))
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        insert_refresh(&self.pool, token).await
    }

    async fn find_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = ?");
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(refresh_from_row).transpose()
    }

    async fn rotate_refresh_token(
        &self,
        used_hash: &str,
        next: &RefreshTokenRecord,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ? \
             WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(ts(&at))
        .bind(used_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_refresh(&mut *tx, next).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        )
        .bind(ts(&at))
        .bind(family_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn put_namespace_quota(&self, quota: &NamespaceQuota) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO namespace_quotas \
             (namespace, max_functions, max_memory_mb, max_concurrency, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (namespace) DO UPDATE SET max_functions = excluded.max_functions, \
             max_memory_mb = excluded.max_memory_mb, \
             max_concurrency = excluded.max_concurrency, updated_at = excluded.updated_at",
        )
        .bind(quota.namespace.as_str())
        .bind(quota.max_functions.map(i64::from))
        .bind(quota.max_memory_mb.map(i64::from))
        .bind(quota.max_concurrency.map(i64::from))
        .bind(ts(&quota.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_namespace_quota(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceQuota>, StoreError> {
        let row = sqlx::query("SELECT * FROM namespace_quotas WHERE namespace = ?")
            .bind(namespace.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(quota_from_row).transpose()
    }

    async fn list_namespace_quotas(&self) -> Result<Vec<NamespaceQuota>, StoreError> {
        let rows = sqlx::query("SELECT * FROM namespace_quotas ORDER BY namespace")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(quota_from_row).collect()
    }

    async fn namespace_usage(
        &self,
        namespace: &Namespace,
        except: Option<&FunctionName>,
    ) -> Result<NamespaceUsage, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS functions, \
             COALESCE(SUM(json_extract(v.body, '$.config.max_concurrency')), 0) AS concurrency \
             FROM functions f JOIN function_versions v \
             ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version \
             WHERE f.namespace = ?1 AND (?2 IS NULL OR f.name <> ?2)",
        )
        .bind(namespace.as_str())
        .bind(except.map(FunctionName::as_str))
        .fetch_one(&self.pool)
        .await?;
        let functions: i64 = row.try_get("functions")?;
        let concurrency: i64 = row.try_get("concurrency")?;
        Ok(NamespaceUsage {
            functions: u64::try_from(functions).unwrap_or_default(),
            max_concurrency: u64::try_from(concurrency).unwrap_or_default(),
        })
    }
}

async fn insert_refresh<'e, E>(executor: E, token: &RefreshTokenRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let inserted = sqlx::query(
        "INSERT INTO refresh_tokens \
         (token_hash, family_id, key_id, created_at, expires_at, used_at, revoked_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&token.token_hash)
    .bind(&token.family_id)
    .bind(&token.key_id)
    .bind(ts(&token.created_at))
    .bind(ts(&token.expires_at))
    .bind(token.used_at.as_ref().map(ts))
    .bind(token.revoked_at.as_ref().map(ts))
    .execute(executor)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("refresh token".into())),
        Err(e) => Err(e.into()),
    }
}
