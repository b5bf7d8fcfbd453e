//! The metadata store: functions and their versions, invocation records, logs and API keys.
//!
//! [`MetadataStore`] is implemented by [`sqlite::SqliteStore`] (embedded) and by
//! [`postgres::PostgresStore`] (production); both must pass [`conformance`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use fnmesh_core::function::Function;
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, InvocationLogs, InvocationRequest, InvocationResult, InvocationStatus,
};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::secrets::{SealedSecrets, SealedValue, SecretName};

pub mod access;
mod audit;
mod common;
pub mod postgres;
pub mod sqlite;

pub use access::{AccessStore, NamespaceQuota, NamespaceUsage, RefreshTokenRecord};
pub use audit::{AuditEntry, AuditFilter, AuditOutcome, SecretInfo};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance_audit;

/// Errors of a metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists (a function name, a version, an invocation id).
    #[error("{0} already exists")]
    Conflict(String),
    /// The row to update does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A cursor that this store did not issue.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The backend failed.
    #[error("metadata store: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Filter of [`MetadataStore::list_invocations`].
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    /// Only this function.
    pub function: Option<FunctionName>,
    /// Only this status.
    pub status: Option<InvocationStatus>,
}

/// What a key may do. Each role can do everything the roles below it can:
/// `admin` ⊇ `developer` ⊇ `invoker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Deploy, update, delete, invoke and read in its namespace.
    Developer,
    /// Invoke and read results in its namespace.
    Invoker,
}

impl Role {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Invoker => "invoker",
        }
    }

    /// Whether this role can do everything `other` can (a key may only mint keys whose role
    /// its own covers).
    pub fn covers(self, other: Role) -> bool {
        self.rank() >= other.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Admin => 2,
            Role::Developer => 1,
            Role::Invoker => 0,
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "invoker" => Some(Role::Invoker),
            _ => None,
        }
    }
}

/// A stored API key: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id of the key.
    pub id: String,
    /// Human label.
    pub name: String,
    /// Hex SHA-256 of the full key.
    pub key_hash: String,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub namespace: Namespace,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Expires at, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked at, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The only functions it may touch (`None`: every function of its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<FunctionName>>,
}

/// Storage of everything but code.
///
/// Every method is scoped by namespace: a row of another namespace is indistinguishable from
/// an absent one. Key management, refresh tokens and quotas are in the supertrait
/// [`AccessStore`].
#[async_trait]
pub trait MetadataStore: AccessStore + Send + Sync + 'static {
    /// Checks the backend is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts version 1 of a new function. `Conflict` if the name exists in the namespace.
    async fn create_function(&self, function: &Function) -> Result<(), StoreError>;

    /// Appends a version. `function.version` must be the latest + 1 (`Conflict` otherwise,
    /// e.g. a concurrent update won); `NotFound` if the function does not exist.
    async fn add_version(&self, function: &Function) -> Result<(), StoreError>;

    /// The latest version, or the given one.
    async fn get_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
        version: Option<u32>,
    ) -> Result<Option<Function>, StoreError>;

    /// Latest versions of the namespace's functions, by name.
    async fn list_functions(
        &self,
        namespace: &Namespace,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Function>, StoreError>;

    /// All versions of one function, oldest first (empty if it does not exist).
    async fn list_versions(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<Vec<Function>, StoreError>;

    /// Deletes a function and all its versions; `false` if it did not exist.
    async fn delete_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<bool, StoreError>;

    /// Accepts an invocation: commits its `queued` record (`InvocationResult::queued(request)`)
    /// together with the full request (function snapshot and payload) in one transaction, so
    /// accepted work can be re-published by [`MetadataStore::stale_queued`] until it finishes.
    /// Returns the record. `Conflict` if the id exists.
    async fn insert_invocation(
        &self,
        request: &InvocationRequest,
    ) -> Result<InvocationResult, StoreError>;

    /// Applies an update from a node. Fenced, in one atomic step:
    /// - over a terminal record, only a higher attempt applies;
    /// - over a non-terminal record, the same or a higher attempt applies, and a lower attempt
    ///   only if it brings a terminal result (a slow attempt that did finish).
    ///
    /// Once a terminal record is applied the stored request is dropped. Returns whether the
    /// update was applied; `NotFound` if the record does not exist.
    async fn update_invocation(&self, record: &InvocationResult) -> Result<bool, StoreError>;

    /// Applies several updates, as if by [`MetadataStore::update_invocation`] one after the
    /// other in slice order (same fencing; several updates of one id are fine). Returns, per
    /// update, whether it was applied; a record that does not exist is `false`, not an error,
    /// so one unknown id cannot fail a batch. Backends override this with one round trip.
    async fn update_invocations(
        &self,
        records: &[InvocationResult],
    ) -> Result<Vec<bool>, StoreError> {
        let mut applied = Vec::with_capacity(records.len());
        for record in records {
            applied.push(match self.update_invocation(record).await {
                Ok(done) => done,
                Err(StoreError::NotFound(_)) => false,
                Err(e) => return Err(e),
            });
        }
        Ok(applied)
    }

    /// Requests whose record is still `queued` (in any namespace) and was created before
    /// `older_than`, oldest first, at most `limit` (clamped to 1..=1000). For re-publishing
    /// under the same invocation id.
    async fn stale_queued(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InvocationRequest>, StoreError>;

    /// Records still `running` in any namespace, oldest first, at most `limit` (clamped to
    /// 1..=1000). For marking what a dead single-process platform was running when it stopped.
    async fn running_invocations(&self, limit: u32) -> Result<Vec<InvocationResult>, StoreError>;

    /// One invocation.
    async fn get_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationResult>, StoreError>;

    /// Several invocations by `(namespace, id)`, in slice order (`None` where absent or in
    /// another namespace). Backends override this with one round trip.
    async fn get_invocations(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<Option<InvocationResult>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for (namespace, id) in keys {
            found.push(self.get_invocation(namespace, id).await?);
        }
        Ok(found)
    }

    /// Invocations, newest first.
    async fn list_invocations(
        &self,
        namespace: &Namespace,
        filter: &InvocationFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<InvocationResult>, StoreError>;

    /// Stores (replaces) the captured logs of an invocation.
    async fn put_logs(&self, id: &InvocationId, logs: &InvocationLogs) -> Result<(), StoreError>;

    /// Stores several invocations' logs, as if by [`MetadataStore::put_logs`] in slice order
    /// (for a repeated id the last one wins). Backends override this with one round trip.
    async fn put_logs_batch(
        &self,
        logs: &[(InvocationId, InvocationLogs)],
    ) -> Result<(), StoreError> {
        for (id, entry) in logs {
            self.put_logs(id, entry).await?;
        }
        Ok(())
    }

    /// Per key, in slice order: whether logs of that invocation (in that namespace) are
    /// stored. Backends override this with one round trip.
    async fn logs_stored(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut stored = Vec::with_capacity(keys.len());
        for (namespace, id) in keys {
            stored.push(self.get_logs(namespace, id).await?.is_some());
        }
        Ok(stored)
    }

    /// The captured logs, if any were stored.
    async fn get_logs(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationLogs>, StoreError>;

    /// Stores a key. `Conflict` if the id or hash exists.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Replaces the key with this id (or inserts it).
    async fn upsert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key whose hash is `key_hash`, revoked or not.
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Dead-letters an invocation in one transaction: stores (or replaces) `dead` and sets the
    /// invocation's record to `dead_lettered` with `dead.last_error`, `dead.attempts` and
    /// `completed_at`, unless the record is already terminal (a result that raced in wins:
    /// then nothing is stored and `false` is returned). An absent record is inserted first
    /// (from `dead.request`), so a dead letter is never lost. Idempotent on the id.
    async fn put_dead_letter(&self, dead: &DeadLetterRecord) -> Result<bool, StoreError>;

    /// Dead letters, newest first, of one namespace or (admins) of all; at most `limit`
    /// (clamped to 1..=1000), continuing after `cursor`.
    async fn list_dead_letters(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<DeadLetterRecord>, StoreError>;

    /// One dead letter (`None` if absent or in another namespace, when one is given).
    async fn get_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterRecord>, StoreError>;

    /// Removes a dead letter (its invocation record stays `dead_lettered`); whether it existed.
    async fn delete_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<bool, StoreError>;
    /// Records one audit entry (append-only).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// Audit entries matching `filter`, newest first, at most `limit` (clamped to 1..=1000),
    /// continuing after `cursor`.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<AuditEntry>, StoreError>;

    /// Stores (or replaces) a sealed secret of a function. `NotFound` if the function does
    /// not exist. Secrets go with their function when it is deleted.
    async fn put_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &SealedValue,
    ) -> Result<(), StoreError>;

    /// The names of a function's secrets (never their values), by name.
    async fn list_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<SecretInfo>, StoreError>;

    /// A function's secrets, sealed, by name: what an invocation carries to the node.
    async fn sealed_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<SealedSecrets, StoreError>;

    /// Removes a secret; whether it existed.
    async fn delete_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
    ) -> Result<bool, StoreError>;
}
