//! The metadata store: functions and their versions, invocation records, logs, dead letters,
//! API keys and tokens, quotas, the audit log and sealed secrets.
//!
//! [`MetadataStore`] is implemented by [`sqlite::SqliteStore`] (embedded) and by
//! [`postgres::PostgresStore`] (production); both must pass [`conformance`]. The SQL is written
//! once, in `sql/`, for both engines.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use fnmesh_core::names::{FunctionName, Namespace};

pub mod access;
mod audit;
mod common;
mod deliveries;
mod functions;
mod invocations;
pub mod postgres;
mod secrets;
mod sql;
pub mod sqlite;

pub use access::{AccessStore, NamespaceQuota, NamespaceUsage, RefreshTokenRecord};
pub use audit::{AuditEntry, AuditFilter, AuditOutcome, AuditStore};
pub use deliveries::{ClaimedDelivery, DeliveryStore, Settle};
pub use functions::FunctionStore;
pub use invocations::{
    FinishedInvocation, InvocationFilter, InvocationStore, Keyed, StoreSize, Written,
};
pub use secrets::{RegistryCredentialInfo, SecretInfo, SecretStore};

/// Every store trait, for calling store methods on a concrete store (`SqliteStore`,
/// `PostgresStore`): `use fnmesh_store::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AccessStore, AuditStore, DeliveryStore, FunctionStore, InvocationStore, MetadataStore,
        SecretStore,
    };
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance_audit;

/// Errors of a metadata store.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The database cannot be reached (no connection within the acquire timeout, the
    /// connection broke): nothing was written, or it is not known whether it was; retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
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
    /// The key that minted this one (`None`: made by an operator or the bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// The root of its lineage, which rate limits and caps are counted under (`None`: the key
    /// is its own root; see [`ApiKeyRecord::lineage_root`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
}

impl ApiKeyRecord {
    /// The id rate limits and per-key caps of this key are counted under: its lineage's root,
    /// or its own id.
    pub fn lineage_root(&self) -> &str {
        self.root_id.as_deref().unwrap_or(&self.id)
    }
}

/// Storage of everything but code: every domain store, plus a health check.
///
/// Every method taking a namespace is scoped by it: a row of another namespace is
/// indistinguishable from an absent one. Each domain lives in its own supertrait ([`FunctionStore`], [`InvocationStore`],
/// [`DeliveryStore`], [`AccessStore`], [`AuditStore`], [`SecretStore`]); on `dyn MetadataStore` their methods are
/// callable without importing them, on a concrete store import them (see [`prelude`]).
#[async_trait]
pub trait MetadataStore:
    FunctionStore
    + InvocationStore
    + DeliveryStore
    + AccessStore
    + AuditStore
    + SecretStore
    + Send
    + Sync
    + 'static
{
    /// Checks the backend is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}
