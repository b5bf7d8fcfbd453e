//! Authentication and authorization.
//!
//! A request's credential ([`Credential`], parsed from `Authorization`) is turned into a
//! [`Principal`] by the [`Authenticator`], which has one method per credential kind (API keys
//! today; JWTs slot in as another variant and method). What a principal may do is decided by
//! [`Principal::authorize`], the single place roles are checked.
//!
//! API keys are `fnm_` plus 40 base62 characters. Only their SHA-256 is stored; a presented key
//! is hashed, looked up by hash and compared in constant time. Unknown, revoked and expired
//! keys all answer the same 401. Keys are never logged.

use std::sync::Arc;

use chrono::Utc;
use fnmesh_shared::store::{ApiKeyRecord, MetadataStore, Role, StoreError};
use fnmesh_shared::Namespace;
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Prefix of every generated key.
pub const KEY_PREFIX: &str = "fnm_";
/// Random characters after the prefix.
pub const KEY_RANDOM_CHARS: usize = 40;
/// Id of the key `fnmesh up` bootstraps.
pub const BOOTSTRAP_ADMIN_ID: &str = "bootstrap-admin";
/// Longest credential accepted (anything longer is refused without hashing).
const MAX_CREDENTIAL_LEN: usize = 512;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key that cannot be used (empty, too long, whitespace).
    #[error("invalid API key: must be 1..=512 printable characters without spaces")]
    InvalidKey,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh API key: `fnm_` + 40 random base62 characters (~238 bits).
pub fn generate_key() -> String {
    let random: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

/// Hex SHA-256 of a key: what the store keeps.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn usable_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_CREDENTIAL_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Upserts the bootstrap admin key (id `bootstrap-admin`, role admin, namespace `default`).
pub async fn ensure_admin_key(store: &dyn MetadataStore, key: &str) -> Result<(), AuthError> {
    if !usable_key(key) {
        return Err(AuthError::InvalidKey);
    }
    let record = ApiKeyRecord {
        id: BOOTSTRAP_ADMIN_ID.to_owned(),
        name: "bootstrap admin".to_owned(),
        key_hash: hash_key(key),
        role: Role::Admin,
        namespace: Namespace::default_ns(),
        created_at: Utc::now(),
        expires_at: None,
        revoked_at: None,
    };
    store.upsert_api_key(&record).await?;
    tracing::info!(key.id = BOOTSTRAP_ADMIN_ID, "bootstrap admin key stored");
    Ok(())
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's (public) id; also the rate-limit key.
    pub key_id: String,
    /// What it may do.
    pub role: Role,
    /// Where: every lookup is scoped by it.
    pub namespace: Namespace,
}

/// What a request wants to do, for [`Principal::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create, update or delete functions.
    Deploy,
    /// Invoke functions.
    Invoke,
    /// Read functions, invocations and logs.
    Read,
    /// Operate the platform, across namespaces (`/v1/admin/...`): admins only.
    Administer,
}

impl Principal {
    /// Whether this principal may do `action` (within its namespace).
    pub fn authorize(&self, action: Action) -> Result<(), ApiError> {
        let allowed = match self.role {
            Role::Admin => true,
            Role::Developer => action != Action::Administer,
            Role::Invoker => matches!(action, Action::Invoke | Action::Read),
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not {}",
                self.role.as_str(),
                match action {
                    Action::Deploy => "deploy functions",
                    Action::Invoke => "invoke functions",
                    Action::Read => "read",
                    Action::Administer => "use the admin API",
                }
            )))
        }
    }
}

/// A presented credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <api key>`.
    ApiKey(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

impl Credential {
    /// Parses an `Authorization` header value. `None` when absent or malformed.
    pub fn from_authorization(header: Option<&str>) -> Option<Self> {
        let (scheme, value) = header?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let value = value.trim();
        usable_key(value).then(|| Self::ApiKey(value.to_owned()))
    }
}

/// Turns credentials into principals.
pub struct Authenticator {
    store: Arc<dyn MetadataStore>,
}

impl Authenticator {
    /// An authenticator over the key store.
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self { store }
    }

    /// Authenticates an `Authorization` header.
    pub async fn authenticate_header(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        match Credential::from_authorization(header) {
            Some(credential) => self.authenticate(&credential).await,
            None => Err(ApiError::Unauthorized),
        }
    }

    /// Authenticates any credential kind.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Principal, ApiError> {
        match credential {
            Credential::ApiKey(key) => self.api_key(key).await,
        }
    }

    /// Looks a key up by its hash and checks it is live.
    async fn api_key(&self, key: &str) -> Result<Principal, ApiError> {
        let hash = hash_key(key);
        let Some(record) = self.store.find_api_key(&hash).await? else {
            tracing::debug!("api key not found");
            return Err(ApiError::Unauthorized);
        };
        if !bool::from(record.key_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(ApiError::Unauthorized);
        }
        let now = Utc::now();
        if record.revoked_at.is_some_and(|t| t <= now) {
            tracing::debug!(key.id = %record.id, "api key revoked");
            return Err(ApiError::Unauthorized);
        }
        if record.expires_at.is_some_and(|t| t <= now) {
            tracing::debug!(key.id = %record.id, "api key expired");
            return Err(ApiError::Unauthorized);
        }
        Ok(Principal {
            key_id: record.id,
            role: record.role,
            namespace: record.namespace,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 40);
        assert!(a.starts_with("fnm_"));
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn parses_bearer_headers_only() {
        assert_eq!(
            Credential::from_authorization(Some("Bearer fnm_abc")),
            Some(Credential::ApiKey("fnm_abc".into()))
        );
        assert_eq!(
            Credential::from_authorization(Some("bearer  fnm_abc ")),
            Some(Credential::ApiKey("fnm_abc".into()))
        );
        for bad in [
            None,
            Some(""),
            Some("Basic x"),
            Some("Bearer"),
            Some("Bearer "),
        ] {
            assert_eq!(Credential::from_authorization(bad), None, "{bad:?}");
        }
        assert!(!format!("{:?}", Credential::ApiKey("secret".into())).contains("secret"));
    }

    #[test]
    fn invokers_cannot_deploy() {
        let p = Principal {
            key_id: "k".into(),
            role: Role::Invoker,
            namespace: Namespace::default_ns(),
        };
        assert!(p.authorize(Action::Invoke).is_ok());
        assert!(p.authorize(Action::Deploy).is_err());
    }

    #[test]
    fn only_admins_administer() {
        let p = |role| Principal {
            key_id: "k".into(),
            role,
            namespace: Namespace::default_ns(),
        };
        assert!(p(Role::Admin).authorize(Action::Administer).is_ok());
        assert!(p(Role::Developer).authorize(Action::Administer).is_err());
        assert!(p(Role::Developer).authorize(Action::Deploy).is_ok());
        assert!(p(Role::Invoker).authorize(Action::Administer).is_err());
    }
}
