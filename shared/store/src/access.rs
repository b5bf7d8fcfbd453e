//! Storage of access control: API keys, refresh tokens and namespace quotas.
//!
//! [`AccessStore`] is a supertrait of [`super::MetadataStore`], so every metadata store is
//! also an access store and `Arc<dyn MetadataStore>` reaches these methods too. It is split
//! out only to keep the trait and its implementation readable by domain; the SQL lives in
//! `sql/access.rs`, once for both engines, and [`conformance`] checks both.
//!
//! A key minted by another key remembers its parent and the root of its lineage
//! ([`ApiKeyRecord::lineage_root`]); [`AccessStore::revoke_api_key_tree`] revokes a key with all
//! its descendants.
//!
//! Refresh tokens are opaque; only their SHA-256 is stored. Each belongs to a *family* (the
//! chain of rotations that started with one `POST /v1/auth/token`): rotating marks the
//! presented token used and inserts its successor in one step, and presenting a used token
//! again revokes the whole family.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiKeyRecord, Page, StoreError};
use fnmesh_core::names::{FunctionName, Namespace};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// A stored refresh token: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The rotation chain it belongs to.
    pub family_id: String,
    /// The API key it was minted from.
    pub key_id: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Not accepted from this time on.
    pub expires_at: DateTime<Utc>,
    /// When it was rotated (a used token presented again revokes its family).
    pub used_at: Option<DateTime<Utc>>,
    /// When its family was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Limits of one namespace; `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceQuota {
    /// The namespace.
    pub namespace: Namespace,
    /// Most functions.
    pub max_functions: Option<u32>,
    /// Largest `memory_mb` of one function.
    pub max_memory_mb: Option<u32>,
    /// Largest sum of the functions' `max_concurrency`: what the namespace can run at once
    /// across the cluster.
    pub max_concurrency: Option<u32>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

/// What a namespace uses, for quota checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceUsage {
    /// Functions in the namespace.
    pub functions: u64,
    /// Sum of the latest versions' `max_concurrency`.
    pub max_concurrency: u64,
}

/// Access-control storage; see the module doc.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Stores a key. `Conflict` if the id or hash exists.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Replaces the key with this id (or inserts it).
    async fn upsert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key whose hash is `key_hash`, revoked or not.
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Keys of one namespace, or (admins) of all, by id; at most `limit` (clamped to
    /// 1..=1000), continuing after `cursor`. Revoked keys are listed too.
    async fn list_api_keys(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<ApiKeyRecord>, StoreError>;

    /// The key with this public id, revoked or not.
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked at `at`; `false` if it does not exist or was already revoked.
    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Revokes key `id` and every key minted below it (children, their children, … by
    /// `parent_id`, in any namespace) at `at`, in one statement: the ids it revoked (those
    /// already revoked are left as they were, and their descendants are still revoked).
    /// Empty if `id` does not exist or its whole tree was revoked already.
    async fn revoke_api_key_tree(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// Stores a new refresh token. `Conflict` if the hash exists.
    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError>;

    /// The refresh token whose hash is `token_hash`, in whatever state.
    async fn find_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError>;

    /// Rotates in one step: marks `used_hash` used at `at` if it is neither used nor revoked,
    /// and then stores `next`. `false` (and nothing stored) if the token was already used or
    /// revoked, e.g. by a concurrent rotation.
    async fn rotate_refresh_token(
        &self,
        used_hash: &str,
        next: &RefreshTokenRecord,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// When the family's first token was made (`None` for an unknown family): a family lives
    /// at most a fixed time from then, however often it rotates.
    async fn refresh_family_started(
        &self,
        family_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Revokes every token of a family not revoked yet; how many it revoked.
    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Stores (replaces) a namespace's quota.
    async fn put_namespace_quota(&self, quota: &NamespaceQuota) -> Result<(), StoreError>;

    /// A namespace's quota, if one was set.
    async fn get_namespace_quota(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceQuota>, StoreError>;

    /// Every quota set, by namespace.
    async fn list_namespace_quotas(&self) -> Result<Vec<NamespaceQuota>, StoreError>;

    /// What the namespace's functions use, leaving out `except` (the function being updated).
    async fn namespace_usage(
        &self,
        namespace: &Namespace,
        except: Option<&FunctionName>,
    ) -> Result<NamespaceUsage, StoreError>;
}
