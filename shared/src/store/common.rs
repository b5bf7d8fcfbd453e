//! Helpers every SQL store shares: page limits, opaque cursors, record (de)serialisation and
//! error mapping. Dialect-specific SQL stays in each engine's module.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::StoreError;
use crate::names::{FunctionName, Namespace};

/// Largest page a listing returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Cursor prefix of function listings (so one kind of cursor is refused by the other listing).
pub(crate) const FUNCTION_CURSOR: &str = "f:";
/// Cursor prefix of invocation listings.
pub(crate) const INVOCATION_CURSOR: &str = "i:";
/// The terminal statuses, as an SQL list.
pub(crate) const TERMINAL_SQL: &str = "('succeeded', 'failed', 'timeout')";

/// A requested page size within 1..=[`MAX_PAGE_LIMIT`].
pub(crate) fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_PAGE_LIMIT)
}

/// An opaque cursor for the listing `prefix` that resumes after `key`.
pub(crate) fn encode_cursor(prefix: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{prefix}{key}"))
}

/// The key of a cursor issued by [`encode_cursor`] for the same listing.
pub(crate) fn decode_cursor(prefix: &str, cursor: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    text.strip_prefix(prefix)
        .map(str::to_owned)
        .ok_or(StoreError::InvalidCursor)
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Decodes a stored JSON body.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("decode record: {e}")))
}

/// How errors name a function.
pub(crate) fn function_label(namespace: &Namespace, name: &FunctionName) -> String {
    format!("function \"{namespace}/{name}\"")
}
