//! The production metadata store: PostgreSQL, the source of truth of a multi-node deployment.
//!
//! The schema lives in `migrations/postgres/` and is applied by [`PostgresStore::migrate`]
//! (idempotent; concurrent runs serialise on sqlx's advisory lock). As in the SQLite store,
//! every record's full JSON is kept in a `body` column (jsonb here) and the other columns carry
//! keys, fencing state and listing order; listings use keyset pagination on the primary keys,
//! so a walk never repeats or skips a row while rows are inserted.
//!
//! Fencing of node updates is one conditional `UPDATE` (see
//! [`crate::InvocationStore::update_invocation`]); batches go through `UNNEST`ed arrays, one statement
//! per batch, sent in id order so that concurrent batches lock rows in the same order (a
//! deadlock PostgreSQL still detects is an error, and the recorder's retry absorbs it).
//!
//! PostgreSQL cannot store U+0000 in `text` or `jsonb`: it is written as U+FFFD, so a handler
//! printing a NUL byte cannot make its result or logs unwritable.
//!
//! The statements are those of `sql/`, shared with SQLite; this module binds values the
//! PostgreSQL way and `invocations.rs` holds what PostgreSQL does its own way.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::sql::{Arg, Sql, SqlEngine};
use super::StoreError;

mod invocations;

/// Embedded migrations (`migrations/postgres/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub use super::common::MAX_PAGE_LIMIT;

/// Connections in the pool by default: enough for a gateway's handlers, recorder and
/// reconciler, well under PostgreSQL's default `max_connections` of 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a free connection before the store reports itself
/// unavailable ([`StoreError::Unavailable`]: the API answers 503 with `Retry-After`). While the
/// server is down every acquire waits this long, so it bounds how long a request hangs in an
/// outage (the API promises an answer within 2 s); under overload it sheds load the same way.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1_500);

/// A [`crate::MetadataStore`] in a PostgreSQL database (or one schema of it).
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
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
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

/// The statement PostgreSQL runs for `sql`, with its values bound (text with U+0000 replaced,
/// see [`replace_nul`]).
fn query(sql: Sql) -> Query<'static, Postgres, PgArguments> {
    let (text, args) = sql.into_parts();
    args.into_iter()
        .fold(sqlx::query(AssertSqlSafe(text)), |query, arg| match arg {
            Arg::Text(v) => query.bind(v.map(|t| match replace_nul(&t) {
                Cow::Borrowed(_) => t,
                Cow::Owned(clean) => clean,
            })),
            Arg::Int(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
        })
}

#[async_trait]
impl SqlEngine for PostgresStore {
    type Db = Postgres;
    type Row = PgRow;

    const UUID_AUDIT_IDS: bool = true;
    const LOCK_ROW: &'static str = " FOR UPDATE OF i";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
        to_json(value)
    }

    async fn execute(conn: &mut PgConnection, sql: Sql) -> Result<u64, sqlx::Error> {
        Ok(query(sql).execute(conn).await?.rows_affected())
    }

    async fn fetch_all(conn: &mut PgConnection, sql: Sql) -> Result<Vec<PgRow>, sqlx::Error> {
        query(sql).fetch_all(conn).await
    }

    async fn fetch_optional(
        conn: &mut PgConnection,
        sql: Sql,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query(sql).fetch_optional(conn).await
    }

    /// A plain transaction: its writers lock the rows they change, and reads that must not
    /// change take [`SqlEngine::LOCK_ROW`].
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
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
