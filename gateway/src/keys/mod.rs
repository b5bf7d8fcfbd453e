//! `/v1/keys`: API key management, one module per operation.
//!
//! Admins manage keys of every namespace; developers only of their own, and only keys no
//! stronger than theirs (role covered by their own, functions within their own grants);
//! invokers none. A key is shown once, when created; listings show everything but the key
//! (and never its hash).

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
        }
    }
}

/// Whether `principal` may hold power over `key`: its role covers the key's, and its grants
/// (if any) include all of the key's functions.
pub(crate) fn covers(
    principal: &Principal,
    role: Role,
    functions: Option<&[FunctionName]>,
) -> bool {
    if !principal.role.covers(role) {
        return false;
    }
    match (&principal.functions, functions) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(own), Some(theirs)) => theirs.iter().all(|f| own.contains(f)),
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
