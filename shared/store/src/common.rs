//! Helpers the SQL stores share that need no database: page limits, opaque cursors, paging
//! from the extra row, record deserialisation, dead-lettering rules and error mapping. The
//! statements and row decoders are in `sql/`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::StoreError;
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, ErrorKind, InvocationError, InvocationResult, InvocationStatus,
};
use fnmesh_core::names::{FunctionName, Namespace};

/// Largest page a listing returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Cursor prefix of function listings (so one kind of cursor is refused by the other listing).
pub(crate) const FUNCTION_CURSOR: &str = "f:";
/// Cursor prefix of invocation listings.
pub(crate) const INVOCATION_CURSOR: &str = "i:";
/// Cursor prefix of dead-letter listings.
pub(crate) const DEAD_LETTER_CURSOR: &str = "d:";
/// The terminal statuses, as an SQL list.
pub(crate) const TERMINAL_SQL: &str =
    "('succeeded', 'failed', 'timeout', 'dead_lettered', 'cancelled')";

/// The answer of a fenced update that changed no row: `false` (fenced off) if the record is
/// `present`, `NotFound` if not.
pub(crate) fn fenced_off(record: &InvocationResult, present: bool) -> Result<bool, StoreError> {
    if !present {
        return Err(StoreError::NotFound(format!("invocation {}", record.id)));
    }
    tracing::debug!(
        invocation.id = %record.id,
        invocation.attempt = record.attempt,
        invocation.status = record.status.as_str(),
        "stale invocation update fenced off"
    );
    Ok(false)
}

/// The answers of a batched read by `(namespace, id)` keys, in key order: for each key, the
/// record of `found` with that id, if it is in the key's namespace.
pub(crate) fn records_per_key(
    keys: &[(Namespace, InvocationId)],
    found: Vec<InvocationResult>,
) -> Vec<Option<InvocationResult>> {
    let by_id: std::collections::HashMap<InvocationId, InvocationResult> =
        found.into_iter().map(|r| (r.id, r)).collect();
    keys.iter()
        .map(|(namespace, id)| by_id.get(id).filter(|r| &r.namespace == namespace).cloned())
        .collect()
}

/// For each key, in order, whether `found` (invocation id → namespace, as text) holds it in
/// the key's namespace.
pub(crate) fn present_per_key(
    keys: &[(Namespace, InvocationId)],
    found: Vec<(String, String)>,
) -> Vec<bool> {
    let found: std::collections::HashMap<String, String> = found.into_iter().collect();
    keys.iter()
        .map(|(namespace, id)| {
            found
                .get(&id.to_string())
                .is_some_and(|ns| ns == namespace.as_str())
        })
        .collect()
}

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

/// The error a dead-lettered invocation is recorded with: the last attempt's error, or a
/// generic `crashed` one when no node reported any.
pub(crate) fn dead_letter_error(dead: &DeadLetterRecord) -> InvocationError {
    dead.last_error.clone().unwrap_or_else(|| InvocationError {
        kind: ErrorKind::Crashed,
        message: format!("attempts exhausted after {} deliveries", dead.attempts),
    })
}

/// `record` turned `dead_lettered` by `dead`: its attempt is the highest seen, its error the
/// dead letter's, completed when it was dead-lettered.
fn dead_lettered_record(mut record: InvocationResult, dead: &DeadLetterRecord) -> InvocationResult {
    record.status = InvocationStatus::DeadLettered;
    record.attempt = record.attempt.max(dead.attempts);
    record.error = Some(dead_letter_error(dead));
    record.result = None;
    record.completed_at = Some(dead.dead_lettered_at);
    record
}

/// What [`super::InvocationStore::put_dead_letter`] writes over the stored record of its
/// invocation (`namespace`, `status`, JSON `body`, and whether a dead letter of it is stored):
/// the `dead_lettered` record, or `None` when the record is terminal and must be kept (a
/// result that raced in, or a dead letter already replayed or deleted). A record that is
/// already `dead_lettered` with its dead letter stored is replaced (the put is idempotent).
pub(crate) fn dead_letter_target(
    dead: &DeadLetterRecord,
    namespace: &str,
    status: &str,
    body: &str,
    dead_letter_stored: bool,
) -> Result<Option<InvocationResult>, StoreError> {
    if namespace != dead.namespace.as_str() {
        return Err(StoreError::Conflict(format!(
            "invocation {} in another namespace",
            dead.id
        )));
    }
    let status = InvocationStatus::parse(status)
        .ok_or_else(|| StoreError::Backend(format!("decode status: unknown {status:?}")))?;
    let keep = match status {
        InvocationStatus::DeadLettered => !dead_letter_stored,
        other => other.is_terminal(),
    };
    if keep {
        return Ok(None);
    }
    let current: InvocationResult = from_json(body)?;
    Ok(Some(dead_lettered_record(current, dead)))
}

/// The invocation id after which a listing keyed by invocation id (`prefix`: invocations,
/// dead letters) resumes, from its cursor.
pub(crate) fn invocation_id_cursor(
    prefix: &str,
    cursor: Option<&str>,
) -> Result<Option<InvocationId>, StoreError> {
    cursor
        .map(|c| {
            let id = decode_cursor(prefix, c)?;
            id.parse::<InvocationId>()
                .map_err(|_| StoreError::InvalidCursor)
        })
        .transpose()
}

/// The function name after which a function listing resumes, from its cursor.
pub(crate) fn function_cursor(cursor: Option<&str>) -> Result<Option<String>, StoreError> {
    cursor
        .map(|c| {
            let name = decode_cursor(FUNCTION_CURSOR, c)?;
            FunctionName::parse(&name).map_err(|_| StoreError::InvalidCursor)?;
            Ok(name)
        })
        .transpose()
}

/// A page of at most `limit` items from `items`, fetched with `LIMIT limit + 1`: the extra row
/// only says there is a next page, which resumes after the last item kept (`key` of it).
pub(crate) fn page_from_extra_row<T>(
    mut items: Vec<T>,
    limit: u32,
    cursor_prefix: &str,
    key: impl Fn(&T) -> String,
) -> super::Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|item| encode_cursor(cursor_prefix, &key(item)))
    } else {
        None
    };
    super::Page { items, next_cursor }
}

/// Whether a database error is a foreign-key violation.
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Cursor prefix of audit listings.
pub(crate) const AUDIT_CURSOR: &str = "a:";
