//! The audit log: its types and [`AuditStore`]. The SQL lives in `sql/audit.rs`, once for
//! both engines.
//!
//! An [`AuditEntry`] says who did what to which thing, from where, and how it ended. It never
//! holds a request body, a credential or a secret value: only ids and names.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Page, StoreError};
use fnmesh_core::names::Namespace;

/// Longest `actor`, `action`, `target` or `source` stored (longer ones are cut).
pub const MAX_AUDIT_FIELD_CHARS: usize = 256;

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuditOutcome {
    /// It succeeded (2xx).
    Ok,
    /// Authentication or authorization refused it (401, 403).
    Denied,
    /// It failed otherwise (4xx, 5xx).
    Error,
}

impl AuditOutcome {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Self::Ok),
            "denied" => Some(Self::Denied),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=399 => Self::Ok,
            401 | 403 => Self::Denied,
            _ => Self::Error,
        }
    }
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// A UUIDv7: entries list newest first by it.
    pub id: String,
    /// When the call was answered.
    pub at: DateTime<Utc>,
    /// Who: a key id, a token subject, or `anonymous`.
    pub actor: String,
    /// The namespace the call acted in (`None` when the caller was not authenticated).
    pub namespace: Option<Namespace>,
    /// What, e.g. `function.create`, `secret.put`, `auth.failure`.
    pub action: String,
    /// On what, e.g. `function/resize`, `secret/resize/DB_PASSWORD`, `dlq/<id>`.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The HTTP status answered.
    pub status: u16,
    /// The remote address the call came from (IP only).
    pub source: Option<String>,
    /// How many calls the entry stands for: 1, or the number of authentication failures of one
    /// source and action aggregated into it (then `id` and `at` are the first one's).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// Cuts `s` to [`MAX_AUDIT_FIELD_CHARS`] and replaces control characters.
pub fn clean_field(s: &str) -> String {
    s.chars()
        .take(MAX_AUDIT_FIELD_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl AuditEntry {
    /// A new entry stamped now, with a fresh id; fields are cleaned.
    pub fn new(
        actor: &str,
        namespace: Option<Namespace>,
        action: &str,
        target: Option<&str>,
        status: u16,
        source: Option<&str>,
    ) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            at: Utc::now(),
            actor: clean_field(actor),
            namespace,
            action: clean_field(action),
            target: target.map(clean_field),
            outcome: AuditOutcome::of_status(status),
            status,
            source: source.map(clean_field),
            count: 1,
        }
    }
}

/// Filter of [`AuditStore::list_audit`]; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this namespace.
    pub namespace: Option<Namespace>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// The append-only audit log, a supertrait of [`super::MetadataStore`].
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
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
}
