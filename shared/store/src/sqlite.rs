//! The embedded metadata store: one SQLite file (WAL mode), for `fnmesh up` and single-node
//! deployments.
//!
//! The schema lives in `migrations/sqlite/` and is applied by [`SqliteStore::open`]. Every
//! record's full JSON is kept in a `body` column; the other columns carry keys, fencing state
//! and listing order. Listings use keyset pagination with opaque cursors (base64 of the last
//! key seen), so walking all pages never repeats or skips a row, even while rows are inserted.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::AssertSqlSafe;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::common::{
    clamp_limit, dead_letter_cursor, dead_letter_page, dead_letter_target, decode_cursor,
    encode_cursor, from_json, function_label, is_unique_violation, present_per_key,
    records_per_key, DeadLetterColumns, FUNCTION_CURSOR, INVOCATION_CURSOR, TERMINAL_SQL,
};
use super::{ApiKeyRecord, InvocationFilter, MetadataStore, Page, Role, StoreError};
use super::{AuditEntry, AuditFilter, SecretInfo};
use fnmesh_core::function::Function;
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, InvocationLogs, InvocationRequest, InvocationResult,
};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::secrets::{SealedSecrets, SealedValue, SecretName};

mod audit;

mod access;

/// Embedded migrations (`migrations/sqlite/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub use super::common::MAX_PAGE_LIMIT;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool (SQLite serialises writers; readers run in parallel in WAL mode).
const MAX_CONNECTIONS: u32 = 8;

/// A [`MetadataStore`] in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode with foreign keys on, and
    /// applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrate {}: {e}", path.display())))?;
        tracing::debug!(path = %path.display(), "sqlite metadata store opened");
        Ok(Self { pool })
    }

    /// Closes every connection (waits for checked-out ones to return).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Stores (replaces) one invocation's logs. Binds: id, text, truncated.
const PUT_LOGS_SQL: &str = "INSERT INTO invocation_logs (id, text, truncated) VALUES (?, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET text = excluded.text, truncated = excluded.truncated";

/// Keys or rows one batched statement carries at most.
const BATCH_CHUNK: usize = 500;

/// The fenced update of one invocation record (see [`MetadataStore::update_invocation`]), in
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

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encode record: {e}")))
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_ts(column: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Backend(format!("decode {column}: {e}")))
}

/// The columns of `api_keys`, in the order [`bind_api_key`] binds them.
const API_KEY_COLUMNS: &str =
    "id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, functions";

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
    let role: String = row.try_get("role")?;
    let namespace: String = row.try_get("namespace")?;
    let created_at: String = row.try_get("created_at")?;
    let expires_at: Option<String> = row.try_get("expires_at")?;
    let revoked_at: Option<String> = row.try_get("revoked_at")?;
    let functions: Option<String> = row.try_get("functions")?;
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("decode role: unknown {role:?}")))?,
        namespace: Namespace::parse(&namespace)
            .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))?,
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
    })
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
impl MetadataStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT INTO functions (namespace, name, id, latest_version, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(function.id.to_string())
        .bind(i64::from(function.version))
        .bind(ts(&function.created_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(label)),
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO function_versions (namespace, name, version, body, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(i64::from(function.version))
        .bind(body)
        .bind(ts(&function.updated_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_version(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let version = i64::from(function.version);
        // BEGIN IMMEDIATE takes the write lock up front: the check-and-bump below cannot
        // interleave with another writer, so of two concurrent n+1 updates exactly one wins.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let bumped = sqlx::query(
            "UPDATE functions SET latest_version = ? \
             WHERE namespace = ? AND name = ? AND latest_version = ?",
        )
        .bind(version)
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(version - 1)
        .execute(&mut *tx)
        .await?;
        if bumped.rows_affected() == 0 {
            let latest: Option<i64> = sqlx::query_scalar(
                "SELECT latest_version FROM functions WHERE namespace = ? AND name = ?",
            )
            .bind(function.namespace.as_str())
            .bind(function.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match latest {
                None => StoreError::NotFound(label),
                Some(latest) => StoreError::Conflict(format!(
                    "{label} version {} (latest is {latest})",
                    function.version
                )),
            });
        }
        sqlx::query(
            "INSERT INTO function_versions (namespace, name, version, body, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(version)
        .bind(body)
        .bind(ts(&function.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("{label} version {}", function.version))
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
        version: Option<u32>,
    ) -> Result<Option<Function>, StoreError> {
        let body: Option<String> = match version {
            Some(version) => {
                sqlx::query_scalar(
                    "SELECT body FROM function_versions \
                     WHERE namespace = ? AND name = ? AND version = ?",
                )
                .bind(namespace.as_str())
                .bind(name.as_str())
                .bind(i64::from(version))
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT v.body FROM functions f JOIN function_versions v \
                     ON v.namespace = f.namespace AND v.name = f.name \
                     AND v.version = f.latest_version \
                     WHERE f.namespace = ? AND f.name = ?",
                )
                .bind(namespace.as_str())
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?
            }
        };
        body.as_deref().map(from_json).transpose()
    }

    async fn list_functions(
        &self,
        namespace: &Namespace,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Function>, StoreError> {
        let limit = clamp_limit(limit);
        let after = match cursor {
            Some(c) => {
                let name = decode_cursor(FUNCTION_CURSOR, c)?;
                FunctionName::parse(&name).map_err(|_| StoreError::InvalidCursor)?;
                Some(name)
            }
            None => None,
        };
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT v.body FROM functions f JOIN function_versions v \
             ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version \
             WHERE f.namespace = ? AND (? IS NULL OR f.name > ?) \
             ORDER BY f.name LIMIT ?",
        )
        .bind(namespace.as_str())
        .bind(after.as_deref())
        .bind(after.as_deref())
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(|b| from_json::<Function>(b))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|f| encode_cursor(FUNCTION_CURSOR, f.name.as_str()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn list_versions(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<Vec<Function>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM function_versions WHERE namespace = ? AND name = ? \
             ORDER BY version",
        )
        .bind(namespace.as_str())
        .bind(name.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|b| from_json(b)).collect()
    }

    async fn delete_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<bool, StoreError> {
        // Versions go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM functions WHERE namespace = ? AND name = ?")
            .bind(namespace.as_str())
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

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
        let before = match cursor {
            Some(c) => {
                let id = decode_cursor(INVOCATION_CURSOR, c)?;
                Some(InvocationId::from_str(&id).map_err(|_| StoreError::InvalidCursor)?)
            }
            None => None,
        };
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
        let mut items = rows
            .iter()
            .map(|b| from_json::<InvocationResult>(b))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|r| encode_cursor(INVOCATION_CURSOR, &r.id.to_string()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
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
        row.map(|row| {
            Ok(InvocationLogs {
                text: row.try_get("text")?,
                truncated: row.try_get("truncated")?,
            })
        })
        .transpose()
    }

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
        let before = dead_letter_cursor(cursor)?;
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
        Ok(dead_letter_page(items, limit))
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
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        audit::append_audit(&self.pool, entry).await
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<AuditEntry>, StoreError> {
        audit::list_audit(&self.pool, filter, limit, cursor).await
    }

    async fn put_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &SealedValue,
    ) -> Result<(), StoreError> {
        audit::put_secret(&self.pool, namespace, function, name, value).await
    }

    async fn list_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        audit::list_secrets(&self.pool, namespace, function).await
    }

    async fn sealed_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<SealedSecrets, StoreError> {
        audit::sealed_secrets(&self.pool, namespace, function).await
    }

    async fn delete_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
    ) -> Result<bool, StoreError> {
        audit::delete_secret(&self.pool, namespace, function, name).await
    }
}
