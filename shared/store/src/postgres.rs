//! The production metadata store: PostgreSQL, the source of truth of a multi-node deployment.
//!
//! The schema lives in `migrations/postgres/` and is applied by [`PostgresStore::migrate`]
//! (idempotent; concurrent runs serialise on sqlx's advisory lock). As in the SQLite store,
//! every record's full JSON is kept in a `body` column (jsonb here) and the other columns carry
//! keys, fencing state and listing order; listings use keyset pagination on the primary keys,
//! so a walk never repeats or skips a row while rows are inserted.
//!
//! Fencing of node updates is one conditional `UPDATE` (see
//! [`MetadataStore::update_invocation`]); batches go through `UNNEST`ed arrays, one statement
//! per batch, sent in id order so that concurrent batches lock rows in the same order (a
//! deadlock PostgreSQL still detects is an error, and the recorder's retry absorbs it).
//!
//! PostgreSQL cannot store U+0000 in `text` or `jsonb`: it is written as U+FFFD, so a handler
//! printing a NUL byte cannot make its result or logs unwritable.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::AssertSqlSafe;
use sqlx::{Postgres, QueryBuilder, Row};

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

/// Embedded migrations (`migrations/postgres/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub use super::common::MAX_PAGE_LIMIT;

/// Connections in the pool by default: enough for a gateway's handlers, recorder and
/// reconciler, well under PostgreSQL's default `max_connections` of 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a free connection before the store reports an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`MetadataStore`] in a PostgreSQL database (or one schema of it).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The schema this store was scoped to by [`PostgresStore::connect_in_schema`].
    schema: Option<String>,
}

impl PostgresStore {
    /// Connects a pool of [`DEFAULT_MAX_CONNECTIONS`] to `url`
    /// (`postgres://user[:password]@host[:port]/database[?options]`). Does not migrate.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(parse_url(url)?, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Connects with explicit options and pool size. Does not migrate.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.application_name("fnmesh"))
            .await
            .map_err(|e| StoreError::Backend(format!("connect to {target}: {e}")))?;
        tracing::debug!(database = %target, max_connections, "postgres metadata store connected");
        Ok(Self { pool, schema: None })
    }

    /// [`PostgresStore::connect`], then [`PostgresStore::migrate`].
    pub async fn connect_and_migrate(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects with every connection's `search_path` set to `schema`, creating the schema if
    /// it does not exist, so several deployments, tests or benchmarks can share one database.
    /// `schema` must be a lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes). Does not
    /// migrate (the migration bookkeeping then lives in the schema too).
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        if !is_identifier(schema) {
            return Err(StoreError::Backend(format!(
                "invalid schema name {schema:?}: expected [a-z_][a-z0-9_]*, at most 63 bytes"
            )));
        }
        let options = parse_url(url)?;
        {
            let setup = Self::connect_with(options.clone(), 1).await?;
            // The name is a checked identifier: quoting it is enough.
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&setup.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("create schema {schema}: {e}")))?;
            setup.close().await;
        }
        let options = options.options([("search_path", schema)]);
        let mut store = Self::connect_with(options, DEFAULT_MAX_CONNECTIONS).await?;
        store.schema = Some(schema.to_owned());
        Ok(store)
    }

    /// Drops the schema this store was scoped to by [`PostgresStore::connect_in_schema`],
    /// with everything in it, and closes the pool. Does nothing to an unscoped store but close.
    pub async fn drop_schema(self) -> Result<(), StoreError> {
        if let Some(schema) = &self.schema {
            let failed = |e: sqlx::Error| StoreError::Backend(format!("drop schema {schema}: {e}"));
            let mut tx = self.pool.begin().await.map_err(failed)?;
            // Not a notice per dropped table.
            sqlx::query("SET LOCAL client_min_messages = warning")
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
        }
        self.close().await;
        Ok(())
    }

    /// Applies pending migrations of `migrations/postgres/`; a no-op when up to date.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrate: {e}")))
    }

    /// Closes every connection (waits for checked-out ones to return).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|e| {
        // The URL may hold a password: never echo it.
        StoreError::Backend(format!("invalid database url: {e}"))
    })
}

/// `host:port/database`, without credentials, for messages.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// JSON text for a jsonb column: U+0000 (which jsonb refuses) becomes U+FFFD.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    let encode = |e: serde_json::Error| StoreError::Backend(format!("encode record: {e}"));
    let text = serde_json::to_string(value).map_err(encode)?;
    // serde_json writes U+0000 only as this escape; a false positive (an escaped backslash
    // before "u0000") just takes the slow path, which changes nothing then.
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    let mut tree = serde_json::to_value(value).map_err(encode)?;
    replace_nul_in_json(&mut tree);
    serde_json::to_string(&tree).map_err(encode)
}

fn replace_nul_in_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = replace_nul(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(replace_nul_in_json),
        Value::Object(map) => {
            for (key, mut item) in std::mem::take(map) {
                replace_nul_in_json(&mut item);
                map.insert(replace_nul(&key).into_owned(), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `text` with U+0000 (which PostgreSQL text refuses) replaced by U+FFFD.
fn replace_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The columns of `api_keys`, in the order [`bind_api_key`] binds them.
const API_KEY_COLUMNS: &str =
    "id, key_hash, name, role, namespace, created_at, expires_at, revoked_at, functions";

/// Binds an API key's columns in [`API_KEY_COLUMNS`] order; `functions` is the JSON of its
/// grants (see [`functions_json`]).
fn bind_api_key<'q>(
    query: Query<'q, Postgres, PgArguments>,
    key: &'q ApiKeyRecord,
    functions: Option<Value>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&key.id)
        .bind(&key.key_hash)
        .bind(replace_nul(&key.name))
        .bind(key.role.as_str())
        .bind(key.namespace.as_str())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(functions)
}

/// The JSON of a key's grants (`None`: no restriction).
fn functions_json(functions: &Option<Vec<FunctionName>>) -> Result<Option<Value>, StoreError> {
    functions
        .as_ref()
        .map(|f| {
            serde_json::to_value(f)
                .map_err(|e| StoreError::Backend(format!("encode key functions: {e}")))
        })
        .transpose()
}

fn api_key_from_row(row: &PgRow) -> Result<ApiKeyRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let namespace: String = row.try_get("namespace")?;
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("decode role: unknown {role:?}")))?,
        namespace: Namespace::parse(&namespace)
            .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        functions: row
            .try_get::<Option<Value>, _>("functions")?
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| StoreError::Backend(format!("decode key functions: {e}")))
            })
            .transpose()?,
    })
}

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
impl MetadataStore for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO functions (namespace, name, id, latest_version, created_at) \
             VALUES ($1, $2, $3::uuid, $4, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(function.id.to_string())
        .bind(i64::from(function.version))
        .bind(function.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(label)),
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO function_versions (namespace, name, version, body, created_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(i64::from(function.version))
        .bind(body)
        .bind(function.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_version(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let version = i64::from(function.version);
        let mut tx = self.pool.begin().await?;
        // The row lock of this UPDATE serialises concurrent updates: a second n+1 waits, then
        // re-checks `latest_version` on the committed row and matches nothing.
        let bumped = sqlx::query(
            "UPDATE functions SET latest_version = $1 \
             WHERE namespace = $2 AND name = $3 AND latest_version = $1 - 1",
        )
        .bind(version)
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .execute(&mut *tx)
        .await?;
        if bumped.rows_affected() == 0 {
            let latest: Option<i64> = sqlx::query_scalar(
                "SELECT latest_version FROM functions WHERE namespace = $1 AND name = $2",
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
             VALUES ($1, $2, $3, $4::jsonb, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(version)
        .bind(body)
        .bind(function.updated_at)
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
                    "SELECT body::text FROM function_versions \
                     WHERE namespace = $1 AND name = $2 AND version = $3",
                )
                .bind(namespace.as_str())
                .bind(name.as_str())
                .bind(i64::from(version))
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT v.body::text FROM functions f JOIN function_versions v \
                     ON v.namespace = f.namespace AND v.name = f.name \
                     AND v.version = f.latest_version \
                     WHERE f.namespace = $1 AND f.name = $2",
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
            "SELECT v.body::text FROM functions f JOIN function_versions v \
             ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version \
             WHERE f.namespace = $1 AND ($2::text IS NULL OR f.name > $2) \
             ORDER BY f.name LIMIT $3",
        )
        .bind(namespace.as_str())
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
            "SELECT body::text FROM function_versions WHERE namespace = $1 AND name = $2 \
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
        let done = sqlx::query("DELETE FROM functions WHERE namespace = $1 AND name = $2")
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
        let before = match cursor {
            Some(c) => {
                let id = decode_cursor(INVOCATION_CURSOR, c)?;
                Some(InvocationId::from_str(&id).map_err(|_| StoreError::InvalidCursor)?)
            }
            None => None,
        };
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
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
             functions FROM api_keys WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
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
        let before = dead_letter_cursor(cursor)?;
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
        Ok(dead_letter_page(items, limit))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_in_json_strings_and_keys() {
        let value = serde_json::json!({ "a\u{0}": ["x\u{0}y", 1, null], "b": "\\u0000" });
        let text = to_json(&value).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            serde_json::json!({ "a\u{FFFD}": ["x\u{FFFD}y", 1, null], "b": "\\u0000" })
        );
        assert_eq!(to_json(&"plain").unwrap(), "\"plain\"");
    }

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

    #[test]
    fn schema_names_are_checked() {
        assert!(is_identifier("bench_0a1b"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("Bench"));
        assert!(!is_identifier("1abc"));
        assert!(!is_identifier("a\"; drop"));
        assert!(!is_identifier(""));
        assert!(!is_identifier(&"a".repeat(64)));
    }
}
