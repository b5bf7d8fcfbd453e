//! Authentication and authorization.
//!
//! A request's credential ([`Credential`], parsed from `Authorization: Bearer …`) is turned
//! into a [`Principal`] by the [`Authenticator`], which has one method per credential kind: an
//! API key, or an access token ([`jwt`]; told apart by shape: three base64url segments). What
//! a principal may do is decided here, in [`Principal::authorize`] (roles),
//! [`Principal::authorize_function`] and [`Principal::can_see_function`] (per-function
//! grants) and [`Principal::acting_in`] (which namespace a request addresses).
//!
//! Roles: `admin` does everything in every namespace; `developer` deploys, invokes, reads and
//! manages keys (no stronger than its own) in its namespace; `invoker` invokes and reads. A key
//! may also be limited to named functions. Another namespace's data is 404, as if absent; a
//! forbidden action in one's own namespace is 403.
//!
//! API keys are `fnm_` plus 40 base62 characters. Only their SHA-256 is stored; a presented key
//! is hashed, looked up by hash and compared in constant time. Unknown, revoked and expired
//! keys, and tokens that do not verify or whose key is no longer live, all answer the same 401.
//! Keys and tokens are never logged.

pub mod jwt;
pub mod key_status;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fnmesh_core::{FunctionName, Namespace};
use fnmesh_store::{ApiKeyRecord, MetadataStore, Role, StoreError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use self::jwt::{TokenConfig, Tokens, MAX_KEY_CHECK_TTL};
use self::key_status::KeyStatusCache;
use crate::error::ApiError;

/// Prefix of every generated key.
pub const KEY_PREFIX: &str = "fnm_";
/// Random characters after the prefix.
pub const KEY_RANDOM_CHARS: usize = 40;
/// Id of the key `fnmesh up` bootstraps.
pub const BOOTSTRAP_ADMIN_ID: &str = "bootstrap-admin";
/// Prefix of the public id of keys made by `POST /v1/keys`.
pub const KEY_ID_PREFIX: &str = "key_";
/// Random characters of a key id after the prefix.
const KEY_ID_RANDOM_CHARS: usize = 20;
/// The header an admin names another namespace with.
pub const NAMESPACE_HEADER: &str = "x-fnmesh-namespace";
/// Longest credential accepted (anything longer is refused without hashing).
const MAX_CREDENTIAL_LEN: usize = 512;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key that cannot be used (empty, too long, whitespace).
    #[error("invalid API key: must be 1..=512 printable characters without spaces")]
    InvalidKey,
    /// The configured admin key was revoked; a restart does not bring it back.
    #[error(
        "the configured admin key (FNMESH_ADMIN_KEY) was revoked as {0:?}: configure a new one"
    )]
    AdminKeyRevoked(String),
    /// The configured admin key is the value of another (non-bootstrap) key.
    #[error("the configured admin key (FNMESH_ADMIN_KEY) is already another API key's: configure a new one")]
    AdminKeyInUse,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh API key: `fnm_` + 40 random base62 characters (~238 bits).
pub fn generate_key() -> String {
    format!(
        "{KEY_PREFIX}{}",
        fnmesh_core::random::base62(KEY_RANDOM_CHARS)
    )
}

/// A fresh public key id: `key_` + 20 random base62 characters.
pub fn generate_key_id() -> String {
    format!(
        "{KEY_ID_PREFIX}{}",
        fnmesh_core::random::base62(KEY_ID_RANDOM_CHARS)
    )
}

/// Hex SHA-256 of a key: what the store keeps.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn usable_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_CREDENTIAL_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Makes `key` the bootstrap admin key (role admin, namespace `default`), on every start of a
/// process configured with one (`FNMESH_ADMIN_KEY`):
/// - a key already stored as a bootstrap key is left as it is; if it was revoked, this fails
///   ([`AuthError::AdminKeyRevoked`]): a revoked key never comes back by a restart;
/// - a new key value retires the bootstrap keys before it (revoked, so their access and
///   refresh tokens stop too) and is stored under a fresh id: `bootstrap-admin` the first
///   time, `bootstrap-admin-<first 12 hex of its hash>` after that, so no id that was ever
///   revoked is live again;
/// - a key value that is some other key's is refused ([`AuthError::AdminKeyInUse`]).
pub async fn ensure_admin_key(store: &dyn MetadataStore, key: &str) -> Result<(), AuthError> {
    if !usable_key(key) {
        return Err(AuthError::InvalidKey);
    }
    let hash = hash_key(key);
    if let Some(existing) = store.find_api_key(&hash).await? {
        if !is_bootstrap_id(&existing.id) {
            return Err(AuthError::AdminKeyInUse);
        }
        if existing.revoked_at.is_some() {
            return Err(AuthError::AdminKeyRevoked(existing.id));
        }
        return Ok(());
    }
    let now = Utc::now();
    let namespace = Namespace::default_ns();
    let mut cursor = None;
    let mut fixed_id_taken = false;
    loop {
        let page = store
            .list_api_keys(Some(&namespace), 1000, cursor.as_deref())
            .await?;
        for old in page.items.iter().filter(|k| is_bootstrap_id(&k.id)) {
            fixed_id_taken |= old.id == BOOTSTRAP_ADMIN_ID;
            // (Another gateway starting with this same key may have stored it meanwhile.)
            let retire = old.revoked_at.is_none() && old.key_hash != hash;
            if retire && store.revoke_api_key(&old.id, now).await? {
                tracing::warn!(key.id = %old.id, "bootstrap admin key replaced by a new FNMESH_ADMIN_KEY: revoked");
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let id = if fixed_id_taken {
        format!("{BOOTSTRAP_ADMIN_ID}-{}", &hash[..12])
    } else {
        BOOTSTRAP_ADMIN_ID.to_owned()
    };
    let record = ApiKeyRecord {
        id: id.clone(),
        name: "bootstrap admin".to_owned(),
        key_hash: hash,
        role: Role::Admin,
        namespace,
        created_at: now,
        expires_at: None,
        revoked_at: None,
        functions: None,
        parent_id: None,
        root_id: None,
    };
    match store.create_api_key(&record).await {
        Ok(()) => {}
        // Another gateway starting with the same key stored it first.
        Err(StoreError::Conflict(_))
            if store
                .find_api_key(&record.key_hash)
                .await?
                .is_some_and(|k| is_bootstrap_id(&k.id) && k.revoked_at.is_none()) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(key.id = %id, "bootstrap admin key stored");
    Ok(())
}

/// Whether `id` is one [`ensure_admin_key`] gives.
pub(crate) fn is_bootstrap_id(id: &str) -> bool {
    id == BOOTSTRAP_ADMIN_ID
        || id
            .strip_prefix(BOOTSTRAP_ADMIN_ID)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|hex| hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An API key.
    ApiKey,
    /// An access token minted from an API key.
    AccessToken,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's (public) id — also what an access token's `sub` names; the rate-limit key.
    pub key_id: String,
    /// What it may do.
    pub role: Role,
    /// Where: every lookup is scoped by it. The key's namespace, or the one an admin named
    /// with `X-Fnmesh-Namespace` ([`Principal::acting_in`]).
    pub namespace: Namespace,
    /// The only functions it may touch (`None`: all of its namespace).
    pub functions: Option<Vec<FunctionName>>,
    /// How it authenticated.
    pub credential: CredentialKind,
    /// The root of the key's lineage ([`ApiKeyRecord::lineage_root`]): what rate limits and
    /// per-key caps count under, so keys it mints share them.
    pub root_id: String,
    /// When the key expires (for an access token: its key's expiry), if ever.
    pub expires_at: Option<DateTime<Utc>>,
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
    /// Create, list and revoke API keys (developers: in their namespace, no stronger than
    /// their own).
    ManageKeys,
}

impl Principal {
    /// A principal with the key's own settings.
    pub fn from_key(record: &ApiKeyRecord, credential: CredentialKind) -> Self {
        Self {
            key_id: record.id.clone(),
            role: record.role,
            namespace: record.namespace.clone(),
            functions: record.functions.clone(),
            credential,
            root_id: record.lineage_root().to_owned(),
            expires_at: record.expires_at,
        }
    }

    /// Whether this principal is an admin (all namespaces).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

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
                    Action::ManageKeys => "manage API keys",
                }
            )))
        }
    }

    /// Whether this principal's grants include function `name` (no grants: every function).
    pub fn can_see_function(&self, name: &FunctionName) -> bool {
        self.functions
            .as_ref()
            .is_none_or(|granted| granted.contains(name))
    }

    /// [`Principal::authorize`], then the grants: a key limited to other functions gets 403.
    pub fn authorize_function(&self, action: Action, name: &FunctionName) -> Result<(), ApiError> {
        self.authorize(action)?;
        if self.can_see_function(name) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not use function {:?}",
                name.as_str()
            )))
        }
    }

    /// The principal addressing namespace `requested` (the `X-Fnmesh-Namespace` header):
    /// admins may name any namespace; anyone else only their own (another one is 403).
    pub fn acting_in(mut self, requested: Option<&str>) -> Result<Self, ApiError> {
        let Some(raw) = requested else {
            return Ok(self);
        };
        let namespace = Namespace::parse(raw.trim())?;
        if namespace == self.namespace {
            return Ok(self);
        }
        if !self.is_admin() {
            return Err(ApiError::Forbidden(format!(
                "role {} may not address namespace {:?}",
                self.role.as_str(),
                namespace.as_str()
            )));
        }
        self.namespace = namespace;
        Ok(self)
    }
}

/// A presented credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <api key>`.
    ApiKey(String),
    /// `Authorization: Bearer <access token>` (three base64url segments).
    AccessToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Self::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
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
        if jwt::looks_like_jwt(value) {
            // Tokens can be longer than keys, but not unboundedly.
            return (value.len() <= MAX_TOKEN_LEN).then(|| Self::AccessToken(value.to_owned()));
        }
        usable_key(value).then(|| Self::ApiKey(value.to_owned()))
    }
}

/// Longest access token accepted.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Turns credentials into principals.
pub struct Authenticator {
    store: Arc<dyn MetadataStore>,
    tokens: Tokens,
    key_status: KeyStatusCache,
    /// API keys by hash, cached for [`crate::lookups::LOOKUP_TTL`].
    keys: crate::lookups::ApiKeys,
}

impl Authenticator {
    /// An authenticator over the key store, verifying access tokens with `tokens`.
    pub fn new(store: Arc<dyn MetadataStore>, tokens: TokenConfig) -> Self {
        let ttl = tokens.key_check_ttl.min(MAX_KEY_CHECK_TTL);
        Self {
            store,
            tokens: Tokens::new(tokens),
            key_status: KeyStatusCache::new(ttl),
            keys: crate::lookups::ApiKeys::default(),
        }
    }

    /// Mints and verifies access tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Forgets the cached liveness of key `id` (after revoking it on this gateway), and every
    /// cached key record (a revocation may cover a whole tree of keys).
    pub fn forget_key(&self, id: &str) {
        self.key_status.forget(id);
        self.keys.forget_all();
    }

    /// Whether key `id` is still live (not revoked, expired or deleted), read from the store:
    /// what open log streams check periodically.
    pub async fn recheck_key(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self
            .key_status
            .recheck(self.store.as_ref(), id)
            .await?
            .is_some())
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
            Credential::AccessToken(token) => self.access_token(token).await,
        }
    }

    /// Verifies an access token, then that its key is still live (cached, see
    /// [`key_status`]).
    async fn access_token(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = match self.tokens.verify(token) {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(error = %e, "access token refused");
                return Err(ApiError::Unauthorized);
            }
        };
        let Some(facts) = self
            .key_status
            .live_facts(self.store.as_ref(), &claims.sub)
            .await?
        else {
            tracing::debug!(key.id = %claims.sub, "access token of a key that is no longer live");
            return Err(ApiError::Unauthorized);
        };
        Ok(Principal {
            key_id: claims.sub,
            role: claims.role,
            namespace: claims.ns,
            functions: claims.fns,
            credential: CredentialKind::AccessToken,
            root_id: facts.root_id,
            expires_at: facts.expires_at,
        })
    }

    /// Looks a key up by its hash and checks it is live.
    async fn api_key(&self, key: &str) -> Result<Principal, ApiError> {
        let hash = hash_key(key);
        let Some(record) = self.keys.get(self.store.as_ref(), &hash).await? else {
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
        Ok(Principal::from_key(&record, CredentialKind::ApiKey))
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

    fn principal(role: Role) -> Principal {
        Principal {
            key_id: "k".into(),
            role,
            namespace: Namespace::default_ns(),
            functions: None,
            credential: CredentialKind::ApiKey,
            root_id: "k".into(),
            expires_at: None,
        }
    }

    #[test]
    fn invokers_cannot_deploy() {
        let p = principal(Role::Invoker);
        assert!(p.authorize(Action::Invoke).is_ok());
        assert!(p.authorize(Action::Deploy).is_err());
    }

    #[test]
    fn only_admins_administer() {
        let p = principal;
        assert!(p(Role::Admin).authorize(Action::Administer).is_ok());
        assert!(p(Role::Developer).authorize(Action::Administer).is_err());
        assert!(p(Role::Developer).authorize(Action::Deploy).is_ok());
        assert!(p(Role::Invoker).authorize(Action::Administer).is_err());
        assert!(p(Role::Invoker).authorize(Action::ManageKeys).is_err());
        assert!(p(Role::Developer).authorize(Action::ManageKeys).is_ok());
    }

    #[test]
    fn grants_limit_functions() {
        let resize = FunctionName::parse("resize").unwrap();
        let other = FunctionName::parse("other").unwrap();
        let mut p = principal(Role::Developer);
        assert!(p.authorize_function(Action::Invoke, &other).is_ok());
        p.functions = Some(vec![resize.clone()]);
        assert!(p.authorize_function(Action::Invoke, &resize).is_ok());
        assert!(matches!(
            p.authorize_function(Action::Invoke, &other),
            Err(ApiError::Forbidden(_))
        ));
        assert!(!p.can_see_function(&other));
    }

    #[test]
    fn only_admins_address_other_namespaces() {
        let admin = principal(Role::Admin).acting_in(Some("team-b")).unwrap();
        assert_eq!(admin.namespace.as_str(), "team-b");
        let dev = principal(Role::Developer);
        assert!(dev.clone().acting_in(Some("default")).is_ok());
        assert!(matches!(
            dev.clone().acting_in(Some("team-b")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            dev.acting_in(Some("../x")),
            Err(ApiError::InvalidName(_))
        ));
    }

    #[test]
    fn bearer_values_shaped_like_jwts_are_tokens() {
        assert!(matches!(
            Credential::from_authorization(Some("Bearer a.b.c")),
            Some(Credential::AccessToken(_))
        ));
        assert!(!format!("{:?}", Credential::AccessToken("a.b.c".into())).contains("a.b.c"));
    }
}
