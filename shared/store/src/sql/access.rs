//! [`AccessStore`] on any [`SqlEngine`]: key management, refresh tokens, namespace quotas.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    execute, fetch_all, fetch_optional, fetch_page, Conn, Listing, Sql, SqlEngine, SqlRow,
};
use crate::access::{AccessStore, NamespaceQuota, NamespaceUsage, RefreshTokenRecord};
use crate::common::{clamp_limit, decode_cursor, from_json, is_unique_violation};
use crate::{ApiKeyRecord, Page, Role, StoreError};
use fnmesh_core::names::{FunctionName, Namespace};

/// Keys by id, in byte order (as the cursor compares ids).
const API_KEYS: Listing<ApiKeyRecord> = Listing {
    seek: " AND id COLLATE \"C\" > ",
    cast: "",
    order: " ORDER BY id COLLATE \"C\" LIMIT ",
    cursor: "k:",
    key: |k| k.id.clone(),
};

/// The columns of `api_keys`, in the order [`insert_api_key`] binds them.
const API_KEY_COLUMNS: &str =
    "id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, \
     functions::text AS functions, parent_id, root_id";

const REFRESH_COLUMNS: &str =
    "token_hash, family_id, key_id, created_at, expires_at, used_at, revoked_at";

fn refresh_from_row<R: SqlRow>(row: &R) -> Result<RefreshTokenRecord, StoreError> {
    Ok(RefreshTokenRecord {
        token_hash: row.text("token_hash")?,
        family_id: row.text("family_id")?,
        key_id: row.text("key_id")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
        used_at: row.opt_time("used_at")?,
        revoked_at: row.opt_time("revoked_at")?,
    })
}

fn quota_from_row<R: SqlRow>(row: &R) -> Result<NamespaceQuota, StoreError> {
    let limit = |column: &str| -> Result<Option<u32>, StoreError> {
        row.opt_int(column)?
            .map(|v| {
                u32::try_from(v).map_err(|_| StoreError::Backend(format!("decode {column}: {v}")))
            })
            .transpose()
    };
    Ok(NamespaceQuota {
        namespace: Namespace::parse(&row.text("namespace")?)
            .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))?,
        max_functions: limit("max_functions")?,
        max_memory_mb: limit("max_memory_mb")?,
        max_concurrency: limit("max_concurrency")?,
        updated_at: row.time("updated_at")?,
    })
}

fn api_key_from_row<R: SqlRow>(row: &R) -> Result<ApiKeyRecord, StoreError> {
    let role = row.text("role")?;
    Ok(ApiKeyRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        key_hash: row.text("key_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("decode role: unknown {role:?}")))?,
        namespace: Namespace::parse(&row.text("namespace")?)
            .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        revoked_at: row.opt_time("revoked_at")?,
        functions: row
            .opt_text("functions")?
            .as_deref()
            .map(from_json)
            .transpose()?,
        parent_id: row.opt_text("parent_id")?,
        root_id: row.opt_text("root_id")?,
    })
}

/// The insert of a key, then `on_conflict` (empty, or an `ON CONFLICT` clause).
fn insert_api_key<E: SqlEngine>(key: &ApiKeyRecord, on_conflict: &str) -> Result<Sql, StoreError> {
    let mut sql = Sql::new(
        "INSERT INTO api_keys \
         (id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, functions, \
         parent_id, root_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)",
    );
    sql.push(on_conflict);
    Ok(sql
        .bind(key.id.as_str())
        .bind(key.key_hash.as_str())
        .bind(key.name.as_str())
        .bind(key.role.as_str())
        .bind(key.namespace.as_str())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(key.functions.as_ref().map(E::to_json).transpose()?)
        .bind(key.parent_id.as_deref())
        .bind(key.root_id.as_deref()))
}

async fn insert_refresh<E: SqlEngine>(
    conn: &mut Conn<E>,
    token: &RefreshTokenRecord,
) -> Result<(), StoreError> {
    let inserted = E::execute(
        conn,
        Sql::new(
            "INSERT INTO refresh_tokens \
             (token_hash, family_id, key_id, created_at, expires_at, used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.token_hash.as_str())
        .bind(token.family_id.as_str())
        .bind(token.key_id.as_str())
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.used_at)
        .bind(token.revoked_at),
    )
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("refresh token".into())),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl<E: SqlEngine> AccessStore for E {
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        match execute(self, insert_api_key::<E>(key, "")?).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("api key {:?}", key.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn upsert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let upsert = insert_api_key::<E>(
            key,
            " ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, \
             name = excluded.name, role = excluded.role, namespace = excluded.namespace, \
             created_at = excluded.created_at, expires_at = excluded.expires_at, \
             revoked_at = excluded.revoked_at, functions = excluded.functions, \
             parent_id = excluded.parent_id, root_id = excluded.root_id",
        )?;
        match execute(self, upsert).await {
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
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        let row = fetch_optional(self, Sql::new(sql).bind(key_hash)).await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        let limit = clamp_limit(limit);
        let after = cursor
            .map(|c| decode_cursor(API_KEYS.cursor, c))
            .transpose()?;
        let mut query = Sql::new("SELECT ");
        query
            .push(API_KEY_COLUMNS)
            .push(" FROM api_keys WHERE true");
        if let Some(namespace) = namespace {
            query
                .push(" AND namespace = ")
                .push_bind(namespace.as_str());
        }
        fetch_page(self, query, &API_KEYS, after, limit, api_key_from_row).await
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = fetch_optional(self, Sql::new(sql).bind(id)).await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let revoked = execute(
            self,
            Sql::new("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(id),
        )
        .await?;
        Ok(revoked > 0)
    }

    async fn revoke_api_key_tree(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        // One statement: the tree is walked and revoked atomically, so a key minted from a
        // descendant concurrently either is in the walk or was minted by a revoked key.
        let rows = fetch_all(
            self,
            Sql::new(
                "WITH RECURSIVE tree(id) AS ( \
                 SELECT id FROM api_keys WHERE id = $1 \
                 UNION SELECT k.id FROM api_keys k JOIN tree t ON k.parent_id = t.id) \
                 UPDATE api_keys SET revoked_at = $2 \
                 WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL \
                 RETURNING id",
            )
            .bind(id)
            .bind(at),
        )
        .await?;
        let mut ids = rows
            .iter()
            .map(|row| row.text("id"))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        insert_refresh::<E>(&mut conn, token).await
    }

    async fn find_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1");
        let row = fetch_optional(self, Sql::new(sql).bind(token_hash)).await?;
        row.as_ref().map(refresh_from_row).transpose()
    }

    async fn rotate_refresh_token(
        &self,
        used_hash: &str,
        next: &RefreshTokenRecord,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // In PostgreSQL the row lock taken by the UPDATE makes a concurrent rotation of the
        // same token wait and then find it used (SQLite has one writer at a time).
        let used = E::execute(
            &mut tx,
            Sql::new(
                "UPDATE refresh_tokens SET used_at = $1 \
                 WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(used_hash),
        )
        .await?;
        if used == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_refresh::<E>(&mut tx, next).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn refresh_family_started(
        &self,
        family_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(
                "SELECT created_at FROM refresh_tokens WHERE family_id = $1 \
                 ORDER BY created_at LIMIT 1",
            )
            .bind(family_id),
        )
        .await?;
        row.as_ref().map(|r| r.time("created_at")).transpose()
    }

    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(execute(
            self,
            Sql::new(
                "UPDATE refresh_tokens SET revoked_at = $1 \
                 WHERE family_id = $2 AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(family_id),
        )
        .await?)
    }

    async fn put_namespace_quota(&self, quota: &NamespaceQuota) -> Result<(), StoreError> {
        execute(
            self,
            Sql::new(
                "INSERT INTO namespace_quotas \
                 (namespace, max_functions, max_memory_mb, max_concurrency, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (namespace) DO UPDATE SET max_functions = excluded.max_functions, \
                 max_memory_mb = excluded.max_memory_mb, \
                 max_concurrency = excluded.max_concurrency, updated_at = excluded.updated_at",
            )
            .bind(quota.namespace.as_str())
            .bind(quota.max_functions.map(i64::from))
            .bind(quota.max_memory_mb.map(i64::from))
            .bind(quota.max_concurrency.map(i64::from))
            .bind(quota.updated_at),
        )
        .await?;
        Ok(())
    }

    async fn get_namespace_quota(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceQuota>, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new("SELECT * FROM namespace_quotas WHERE namespace = $1")
                .bind(namespace.as_str()),
        )
        .await?;
        row.as_ref().map(quota_from_row).transpose()
    }

    async fn list_namespace_quotas(&self) -> Result<Vec<NamespaceQuota>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new("SELECT * FROM namespace_quotas ORDER BY namespace"),
        )
        .await?;
        rows.iter().map(quota_from_row).collect()
    }

    async fn namespace_usage(
        &self,
        namespace: &Namespace,
        except: Option<&FunctionName>,
    ) -> Result<NamespaceUsage, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(
                "SELECT COUNT(*)::bigint AS functions, \
                 COALESCE(SUM((v.body->'config'->>'max_concurrency')::bigint), 0)::bigint \
                 AS concurrency \
                 FROM functions f JOIN function_versions v \
                 ON v.namespace = f.namespace AND v.name = f.name \
                 AND v.version = f.latest_version \
                 WHERE f.namespace = $1 AND ($2::text IS NULL OR f.name <> $2)",
            )
            .bind(namespace.as_str())
            .bind(except.map(FunctionName::as_str)),
        )
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
        Ok(NamespaceUsage {
            functions: u64::try_from(row.int("functions")?).unwrap_or_default(),
            max_concurrency: u64::try_from(row.int("concurrency")?).unwrap_or_default(),
        })
    }
}
