//! The SQL stores written once: every domain trait ([`crate::FunctionStore`],
//! [`crate::InvocationStore`], [`crate::AccessStore`], [`crate::AuditStore`],
//! [`crate::SecretStore`] and [`crate::MetadataStore`]) is implemented here for any
//! [`SqlEngine`], i.e. for both [`crate::sqlite::SqliteStore`] and
//! [`crate::postgres::PostgresStore`].
//!
//! Statements are written in the PostgreSQL dialect with numbered parameters (`$1`), which
//! SQLite reads too; the SQLite engine drops what only PostgreSQL needs ([`strip_postgres`]).
//! Values are bound as [`Arg`]s, which each engine converts to its column types (timestamps
//! are RFC 3339 text in SQLite, `timestamptz` in PostgreSQL), and rows are read through
//! [`SqlRow`]; listings page through [`fetch_page`]. What the engines really do differently is
//! theirs: write transactions ([`SqlEngine::begin_write`]), and the fenced update and batches
//! ([`EngineInvocations`]).

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Pool, Row, Transaction, Type};

use crate::common::page_from_extra_row;
use crate::{MetadataStore, Page, StoreError};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{InvocationLogs, InvocationRequest, InvocationResult};

mod access;
mod audit;
mod deliveries;
mod functions;
mod invocations;
mod secrets;

pub(crate) use invocations::{
    insert_absent_in, insert_queued_in, put_applied_logs_in, PUT_LOGS_SQL, ROWS_PER_STATEMENT,
};

/// A value bound to a statement parameter.
#[derive(Debug, Clone)]
pub enum Arg {
    /// Text (or NULL).
    Text(Option<String>),
    /// An integer (or NULL).
    Int(Option<i64>),
    /// A boolean.
    Bool(bool),
    /// A point in time (or NULL), stored the engine's way.
    Time(Option<DateTime<Utc>>),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::Time(v)
    }
}
impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Arg::Bytes(v.to_vec())
    }
}

/// A statement (PostgreSQL dialect, `$n` parameters) and the values of its parameters, in
/// order. Built from a constant with [`Sql::new`] and [`Sql::bind`], or piece by piece with
/// [`Sql::push`] and [`Sql::push_bind`] (which numbers the parameter itself).
#[derive(Debug, Clone)]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Arg>,
}

impl Sql {
    /// A statement with no parameter bound yet.
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Binds the next parameter (`$1`, then `$2`, …).
    pub fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.to_mut().push_str(text);
        self
    }

    /// Appends a parameter placeholder (`$n`) and binds it.
    pub fn push_bind(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.args.push(arg.into());
        let placeholder = format!("${}", self.args.len());
        self.push(&placeholder)
    }

    /// The statement text and the parameters' values.
    pub fn into_parts(self) -> (Cow<'static, str>, Vec<Arg>) {
        (self.text, self.args)
    }
}

/// A result row, read by column name into the types the stores use. Implemented for the rows
/// of every sqlx database that decodes these types (SQLite reads its RFC 3339 text as
/// timestamps, and its integers as booleans).
pub trait SqlRow: Send + Sync {
    /// A text column.
    fn text(&self, column: &str) -> Result<String, StoreError>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// A boolean column.
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    /// A bytes column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    /// A timestamp column.
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError>;
    /// A nullable timestamp column.
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
}

impl<R> SqlRow for R
where
    R: Row + Send + Sync,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// A listing walked by its key (keyset pagination): how it resumes after a cursor's key, its
/// order, the prefix of its cursors and the key of an item.
pub struct Listing<T> {
    /// Appended, then the key bound, when resuming: e.g. ` AND id < `.
    pub seek: &'static str,
    /// Appended after the bound key (a cast).
    pub cast: &'static str,
    /// The order, up to `LIMIT`: e.g. ` ORDER BY id DESC LIMIT `.
    pub order: &'static str,
    /// The prefix of its cursors (so one listing's cursor is refused by another).
    pub cursor: &'static str,
    /// An item's key, which its cursor resumes after.
    pub key: fn(&T) -> String,
}

/// A listing newest first by a UUIDv7 `id`.
pub const fn newest_first<T>(cursor: &'static str, key: fn(&T) -> String) -> Listing<T> {
    Listing {
        seek: " AND id < ",
        cast: "::uuid",
        order: " ORDER BY id DESC LIMIT ",
        cursor,
        key,
    }
}

/// One page of `listing`: `query` (a `SELECT … WHERE …`) resumed after `after`, fetched with
/// `LIMIT limit + 1` and cut by [`page_from_extra_row`] (`limit` is already clamped).
pub async fn fetch_page<E: SqlEngine, T: Send>(
    engine: &E,
    mut query: Sql,
    listing: &Listing<T>,
    after: Option<String>,
    limit: u32,
    decode: impl Fn(&E::Row) -> Result<T, StoreError> + Send,
) -> Result<Page<T>, StoreError> {
    if let Some(after) = after {
        query.push(listing.seek).push_bind(after).push(listing.cast);
    }
    query.push(listing.order).push_bind(i64::from(limit) + 1);
    let rows = fetch_all(engine, query).await?;
    let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok(page_from_extra_row(
        items,
        limit,
        listing.cursor,
        listing.key,
    ))
}

/// A connection of an engine (pooled or inside a transaction).
pub type Conn<E> = <<E as SqlEngine>::Db as Database>::Connection;

/// What a SQL engine supplies for the stores of this module to run on it: its pool, how it
/// runs a [`Sql`] statement, and (in [`EngineInvocations`]) the few operations it writes its
/// own way.
#[async_trait]
pub trait SqlEngine: EngineInvocations + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;
    /// Its rows.
    type Row: SqlRow;

    /// Whether ids of the audit log are `uuid` columns (then only UUIDs are accepted, as ids
    /// and in cursors).
    const UUID_AUDIT_IDS: bool;
    /// What locks the row an `UPDATE` will replace in a transaction opened by
    /// [`SqlEngine::begin_write`] (appended to the `SELECT`); empty where the transaction
    /// holds the write lock already.
    const LOCK_ROW: &'static str;

    /// The pool.
    fn pool(&self) -> &Pool<Self::Db>;

    /// JSON text of a record, as this engine stores it.
    fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError>;

    /// Runs a statement; how many rows it changed.
    async fn execute(conn: &mut Conn<Self>, sql: Sql) -> Result<u64, sqlx::Error>;

    /// Runs a query; every row.
    async fn fetch_all(conn: &mut Conn<Self>, sql: Sql) -> Result<Vec<Self::Row>, sqlx::Error>;

    /// Runs a query; its first row, if any.
    async fn fetch_optional(
        conn: &mut Conn<Self>,
        sql: Sql,
    ) -> Result<Option<Self::Row>, sqlx::Error>;

    /// A transaction that will write: one whose reads no other writer can change before it
    /// commits, together with [`SqlEngine::LOCK_ROW`].
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

/// The parts of [`crate::InvocationStore`] each engine writes its own way: the fenced update
/// (in one statement where the engine can) and batches (arrays or chunked `IN` lists).
/// Empty batches never reach these.
#[async_trait]
pub trait EngineInvocations {
    /// [`crate::InvocationStore::update_invocation`]: the fenced update, and whether it was
    /// applied (`NotFound` if the record does not exist).
    async fn apply_update(&self, record: &InvocationResult) -> Result<bool, StoreError>;

    /// [`crate::InvocationStore::update_invocations`].
    async fn apply_updates(&self, records: &[InvocationResult]) -> Result<Vec<bool>, StoreError>;

    /// [`crate::InvocationStore::write_invocations`] (with at least one item), in one
    /// transaction.
    async fn apply_writes(
        &self,
        inserts: &[&InvocationRequest],
        outcomes: &[(&InvocationResult, Option<&InvocationLogs>)],
    ) -> Result<crate::Written, StoreError>;

    /// [`crate::InvocationStore::store_size`].
    async fn size(&self) -> Result<crate::StoreSize, StoreError>;

    /// The bodies of the invocations with these ids, in any order (of any namespace).
    async fn invocations_by_id(&self, ids: &[InvocationId]) -> Result<Vec<String>, StoreError>;

    /// [`crate::InvocationStore::put_logs_batch`] (with at least one entry).
    async fn store_logs(&self, logs: &[(InvocationId, InvocationLogs)]) -> Result<(), StoreError>;

    /// `(id, namespace)` of the invocations among `ids` whose logs are stored.
    async fn logs_by_id(&self, ids: &[InvocationId]) -> Result<Vec<(String, String)>, StoreError>;
}

/// Runs a statement on a connection of the pool; how many rows it changed.
pub async fn execute<E: SqlEngine>(engine: &E, sql: Sql) -> Result<u64, sqlx::Error> {
    let mut conn = engine.pool().acquire().await?;
    E::execute(&mut conn, sql).await
}

/// Runs a query on a connection of the pool; every row.
pub async fn fetch_all<E: SqlEngine>(engine: &E, sql: Sql) -> Result<Vec<E::Row>, sqlx::Error> {
    let mut conn = engine.pool().acquire().await?;
    E::fetch_all(&mut conn, sql).await
}

/// Runs a query on a connection of the pool; its first row, if any.
pub async fn fetch_optional<E: SqlEngine>(
    engine: &E,
    sql: Sql,
) -> Result<Option<E::Row>, sqlx::Error> {
    let mut conn = engine.pool().acquire().await?;
    E::fetch_optional(&mut conn, sql).await
}

/// Runs a query that returns one row.
pub async fn fetch_one<E: SqlEngine>(conn: &mut Conn<E>, sql: Sql) -> Result<E::Row, sqlx::Error> {
    E::fetch_optional(conn, sql)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

#[async_trait]
impl<E: SqlEngine> MetadataStore for E {
    async fn ping(&self) -> Result<(), StoreError> {
        execute(self, Sql::new("SELECT 1")).await?;
        Ok(())
    }
}

/// Strips what only PostgreSQL reads from a statement, for SQLite: `::type` casts (SQLite
/// columns are dynamically typed) and `COLLATE "C"` (SQLite compares text bytewise anyway).
pub fn strip_postgres(sql: &str) -> Cow<'_, str> {
    const COLLATE_C: &str = " COLLATE \"C\"";
    if !sql.contains("::") && !sql.contains(COLLATE_C) {
        return Cow::Borrowed(sql);
    }
    let sql = sql.replace(COLLATE_C, "");
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql.as_str();
    while let Some(at) = rest.find("::") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '[' || c == ']'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_only_syntax_is_stripped() {
        assert_eq!(
            strip_postgres(
                "SELECT id::text AS id FROM t WHERE id = $1::uuid AND n COLLATE \"C\" > $2 \
                 AND x = ANY($3::uuid[])"
            ),
            "SELECT id AS id FROM t WHERE id = $1 AND n > $2 AND x = ANY($3)"
        );
        assert!(matches!(strip_postgres("SELECT 1"), Cow::Borrowed(_)));
    }
}
