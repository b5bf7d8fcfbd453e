//! The embedded metadata store: one SQLite file (WAL mode), for `fnmesh up` and single-node
//! deployments.
//!
//! The schema lives in `migrations/sqlite/` and is applied by [`SqliteStore::open`]. Every
//! record's full JSON is kept in a `body` column; the other columns carry keys, fencing state
//! and listing order. Listings use keyset pagination with opaque cursors (base64 of the last
//! key seen), so walking all pages never repeats or skips a row, even while rows are inserted.
//!
//! The statements are those of `sql/`, shared with PostgreSQL (this engine strips the casts
//! only PostgreSQL reads); this module binds values the SQLite way (timestamps as fixed-width
//! RFC 3339 text) and `invocations.rs` holds what SQLite does its own way.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Sqlite, Transaction};

use super::sql::{strip_postgres, Arg, Sql, SqlEngine};
use super::StoreError;

mod invocations;

/// Embedded migrations (`migrations/sqlite/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub use super::common::MAX_PAGE_LIMIT;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool (SQLite serialises writers; readers run in parallel in WAL mode).
const MAX_CONNECTIONS: u32 = 8;

/// A [`crate::MetadataStore`] in one SQLite database file.
///
/// Write transactions ([`SqlEngine::begin_write`]) take the one connection of a pool of their
/// own, so they queue for it in the process (woken as soon as the previous one commits) instead
/// of contending for SQLite's write lock across connections: a `BEGIN IMMEDIATE` that finds the
/// lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, … ms between tries, so
/// two writers (the invocation path's group commit and the recorder) made each other wait
/// milliseconds for transactions that take a fraction of one. Reads, and the rare writes
/// outside a transaction, use the other pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
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
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrate {}: {e}", path.display())))?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        tracing::debug!(path = %path.display(), "sqlite metadata store opened");
        Ok(Self { pool, writer })
    }

    /// Closes every connection (waits for checked-out ones to return).
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// Timestamps are stored as fixed-width RFC 3339 text (nanoseconds, `Z`): text order is time
/// order.
fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The statement SQLite runs for `sql` (see [`strip_postgres`] and [`anonymous_parameters`]),
/// with its values bound.
fn query(sql: Sql) -> Query<'static, Sqlite, SqliteArguments> {
    let (text, args) = sql.into_parts();
    let stripped = match strip_postgres(&text) {
        Cow::Borrowed(_) => None,
        Cow::Owned(stripped) => Some(stripped),
    };
    let text = stripped.map_or(text, Cow::Owned);
    let text = anonymous_parameters(&text).map_or(text, Cow::Owned);
    args.into_iter()
        .fold(sqlx::query(AssertSqlSafe(text)), |query, arg| match arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v.as_ref().map(ts)),
            Arg::Bytes(v) => query.bind(v),
        })
}

/// `sql` with its numbered parameters (`$1`, `$2`, …) made anonymous (`?`) when they appear
/// in order, each once (a statement built with [`Sql::push_bind`] always does); `None` when
/// they do not (a parameter used twice, or out of order), or there are none.
///
/// For each parameter sqlx asks SQLite its name (`sqlite3_bind_parameter_name`), which walks
/// the statement's list of named parameters: with numbered ones that is quadratic in their
/// count, ~2.5% of a gateway's CPU at c=64 for the multi-row inserts of the group commit
/// (11 per row). Anonymous parameters have no names, so the walk is empty.
fn anonymous_parameters(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut next = 1u64;
    let mut copied = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            // Inside a literal or quoted name: a `$` there is text ('' and "" escape a quote
            // by closing and reopening, which this handles as two literals).
            Some(q) => {
                if b == q {
                    quote = None;
                }
                i += 1;
            }
            None if b == b'\'' || b == b'"' => {
                quote = Some(b);
                i += 1;
            }
            None if b == b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .count();
                if digits == 0 {
                    i += 1;
                    continue;
                }
                let n: u64 = sql[i + 1..i + 1 + digits].parse().ok()?;
                if n != next {
                    return None;
                }
                next += 1;
                out.push_str(&sql[copied..i]);
                out.push('?');
                i += 1 + digits;
                copied = i;
            }
            None => i += 1,
        }
    }
    if next == 1 {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

#[async_trait]
impl SqlEngine for SqliteStore {
    type Db = Sqlite;
    type Row = SqliteRow;

    const UUID_AUDIT_IDS: bool = false;
    // The write transaction holds the database's write lock already.
    const LOCK_ROW: &'static str = "";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encode record: {e}")))
    }

    async fn execute(conn: &mut SqliteConnection, sql: Sql) -> Result<u64, sqlx::Error> {
        Ok(query(sql).execute(conn).await?.rows_affected())
    }

    async fn fetch_all(
        conn: &mut SqliteConnection,
        sql: Sql,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        query(sql).fetch_all(conn).await
    }

    async fn fetch_optional(
        conn: &mut SqliteConnection,
        sql: Sql,
    ) -> Result<Option<SqliteRow>, sqlx::Error> {
        query(sql).fetch_optional(conn).await
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so what the transaction reads cannot
    /// change under it.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

#[cfg(test)]
mod tests {
    use super::anonymous_parameters;

    #[test]
    fn parameters_in_order_each_once_become_anonymous() {
        assert_eq!(
            anonymous_parameters("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)").as_deref(),
            Some("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)")
        );
        assert_eq!(
            anonymous_parameters("SELECT * FROM t WHERE a = $1 AND b > $2 LIMIT $3").as_deref(),
            Some("SELECT * FROM t WHERE a = ? AND b > ? LIMIT ?")
        );
        // `$10` is one parameter, not `$1` then `0`.
        let many: Vec<String> = (1..=12).map(|n| format!("${n}")).collect();
        let text = format!("VALUES ({})", many.join(", "));
        assert_eq!(
            anonymous_parameters(&text),
            Some(format!("VALUES ({})", ["?"; 12].join(", ")))
        );
    }

    #[test]
    fn reused_or_reordered_parameters_and_literals_are_left_alone() {
        // Used twice: `?` would need two values.
        assert_eq!(
            anonymous_parameters("UPDATE t SET a = $1 WHERE b = $2 OR c = $1"),
            None
        );
        // Out of order.
        assert_eq!(anonymous_parameters("SELECT $2, $1"), None);
        // None at all.
        assert_eq!(anonymous_parameters("SELECT 1"), None);
        // A `$` in a literal or a quoted name is text; `$` without digits is text too.
        assert_eq!(
            anonymous_parameters("SELECT '$1', \"$2\", json_extract(x, '$.a') FROM t WHERE a = $1")
                .as_deref(),
            Some("SELECT '$1', \"$2\", json_extract(x, '$.a') FROM t WHERE a = ?")
        );
        assert_eq!(
            anonymous_parameters("SELECT 'it''s $1' WHERE a = $1").as_deref(),
            Some("SELECT 'it''s $1' WHERE a = ?")
        );
    }
}
