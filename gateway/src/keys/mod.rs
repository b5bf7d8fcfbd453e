//! `/v1/keys`: API key management, one module per operation.
//!
//! Admins manage keys of every namespace; developers only of their own, and only keys no
//! stronger than theirs (role covered by their own, functions within their own grants, and an
//! expiry no later than their own); invokers none. A key is shown once, when created; listings
//! show everything but the key (and never its hash).
//!
//! Minted keys form trees: each remembers the key that minted it (`parent_id`) and the root of
//! its lineage (`root_id`). A child never outlives its minter (a later or missing `expires_at`
//! is refused, 422 `expires_after_minter`, rather than clamped, so the caller learns the real
//! expiry), revoking a key revokes its whole tree, and keys minted by a non-admin share their
//! root's rate limit and concurrency caps, so minting cannot multiply them. A key minted by an
//! admin starts a lineage of its own (an admin can make independent keys anyway).

use chrono::{DateTime, Utc};
use fnmesh_core::{FunctionName, Namespace};
use fnmesh_store::{ApiKeyRecord, Role};
use serde::Serialize;

use crate::auth::Principal;
use crate::error::ApiError;

pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod list;

/// A key as the API shows it: no key, no hash.
#[derive(Debug, Serialize)]
pub(crate) struct KeyView<'a> {
    /// Public id (`key_…`).
    pub id: &'a str,
    /// Label.
    pub name: &'a str,
    /// Role.
    pub role: Role,
    /// Namespace.
    pub namespace: &'a Namespace,
    /// Function grants, if limited.
    pub functions: Option<&'a [FunctionName]>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Expires at.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked at.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that minted it, if one did.
    pub parent_id: Option<&'a str>,
    /// The root of its lineage (its own id if it is one).
    pub root_id: &'a str,
}

impl<'a> From<&'a ApiKeyRecord> for KeyView<'a> {
    fn from(key: &'a ApiKeyRecord) -> Self {
        Self {
            id: &key.id,
            name: &key.name,
            role: key.role,
            namespace: &key.namespace,
            functions: key.functions.as_deref(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            parent_id: key.parent_id.as_deref(),
            root_id: key.lineage_root(),
        }
    }
}

/// What a key may do and for how long: what [`covers`] compares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Powers<'a> {
    /// Its role.
    pub role: Role,
    /// Its grants (`None`: every function of its namespace).
    pub functions: Option<&'a [FunctionName]>,
    /// Its expiry (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a ApiKeyRecord> for Powers<'a> {
    fn from(key: &'a ApiKeyRecord) -> Self {
        Self {
            role: key.role,
            functions: key.functions.as_deref(),
            expires_at: key.expires_at,
        }
    }
}

/// Whether `principal` may hold power over a key with `powers`: its role covers the key's,
/// its grants (if any) include all of the key's functions, and the key expires no later than
/// the principal's own key (an expiring principal covers no key that never expires). Admins
/// cover every key's lifetime: they can revoke any key.
pub(crate) fn covers(principal: &Principal, powers: Powers<'_>) -> bool {
    if !principal.role.covers(powers.role) {
        return false;
    }
    let functions = match (&principal.functions, powers.functions) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(own), Some(theirs)) => theirs.iter().all(|f| own.contains(f)),
    };
    functions && (principal.is_admin() || outlived_by(principal, powers.expires_at))
}

/// Whether a key expiring at `expires_at` ends no later than the principal's key.
pub(crate) fn outlived_by(principal: &Principal, expires_at: Option<DateTime<Utc>>) -> bool {
    match (principal.expires_at, expires_at) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(own), Some(theirs)) => theirs <= own,
    }
}

/// The namespace a key request addresses: a non-admin may only name its own (403 otherwise).
pub(crate) fn requested_namespace(
    principal: &Principal,
    raw: Option<&str>,
) -> Result<Option<Namespace>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let namespace = Namespace::parse(raw)?;
    if !principal.is_admin() && namespace != principal.namespace {
        return Err(ApiError::Forbidden(format!(
            "role {} may not manage keys of namespace {:?}",
            principal.role.as_str(),
            namespace.as_str()
        )));
    }
    Ok(Some(namespace))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use chrono::Duration;

    fn principal(role: Role, expires_at: Option<DateTime<Utc>>) -> Principal {
        Principal {
            key_id: "key_p".into(),
            role,
            namespace: Namespace::default_ns(),
            functions: None,
            credential: CredentialKind::ApiKey,
            root_id: "key_p".into(),
            expires_at,
        }
    }

    fn powers(role: Role, expires_at: Option<DateTime<Utc>>) -> Powers<'static> {
        Powers {
            role,
            functions: None,
            expires_at,
        }
    }

    #[test]
    fn a_key_covers_no_stronger_role() {
        let dev = principal(Role::Developer, None);
        assert!(covers(&dev, powers(Role::Developer, None)));
        assert!(covers(&dev, powers(Role::Invoker, None)));
        assert!(!covers(&dev, powers(Role::Admin, None)));
        let invoker = principal(Role::Invoker, None);
        assert!(!covers(&invoker, powers(Role::Developer, None)));
    }

    #[test]
    fn an_expiring_key_covers_only_keys_that_end_no_later() {
        let soon = Utc::now() + Duration::hours(1);
        let dev = principal(Role::Developer, Some(soon));
        assert!(covers(&dev, powers(Role::Invoker, Some(soon))));
        assert!(covers(
            &dev,
            powers(Role::Invoker, Some(soon - Duration::minutes(1)))
        ));
        assert!(!covers(
            &dev,
            powers(Role::Invoker, Some(soon + Duration::minutes(1)))
        ));
        assert!(!covers(&dev, powers(Role::Invoker, None)), "never expires");
        assert!(covers(
            &principal(Role::Developer, None),
            powers(Role::Invoker, Some(soon))
        ));
        // Admins can revoke any key, whatever its lifetime.
        assert!(covers(
            &principal(Role::Admin, Some(soon)),
            powers(Role::Developer, None)
        ));
    }
}
