//! `/v1/functions/{name}/aliases[/{alias}[/rollback]]`: named pointers to a version, or a
//! weighted split over several (a canary).
//!
//! - `PUT …/aliases/{alias}` with `{"version": N}` or `{"versions": {"3": 90, "4": 10}}`
//!   (weights 1..=100 adding up to 100, at most 10 versions) makes or moves the alias in one
//!   write; 200 with the alias.
//! - `GET …/aliases` lists them by name, `GET …/aliases/{alias}` shows one, `DELETE` removes
//!   one (204).
//! - `POST …/aliases/{alias}/rollback` points it back at what it pointed at before its last
//!   change (a second rollback steps forward again); 409 if it never changed.
//!
//! Invoking `?alias=prod` picks a version by weight ([`resolve`]); the record names the alias
//! and the version that ran. A change here is seen at once by this gateway and within
//! [`crate::lookups::LOOKUP_TTL`] by the others; an edge follows its hub's aliases through the
//! catalog and refuses changes of its own.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use fnmesh_core::alias::{Alias, Routing};
use fnmesh_core::subjects::CatalogKey;
use fnmesh_core::{AliasName, FunctionName, Namespace};
use fnmesh_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{parse_json, parse_name};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// The body of `PUT …/aliases/{alias}`: exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct AliasTarget {
    /// Every invocation to this version.
    #[serde(default)]
    pub version: Option<u32>,
    /// A weighted split: version → percentage, adding up to 100.
    #[serde(default)]
    pub versions: Option<BTreeMap<u32, u8>>,
}

impl AliasTarget {
    /// The routing it asks for: `invalid_json` unless exactly one form is given, and
    /// `invalid_config` for weights that do not add up.
    fn routing(self) -> Result<Routing, ApiError> {
        let routing = match (self.version, self.versions) {
            (Some(version), None) => Routing::single(version),
            (None, Some(weights)) => Routing::split(weights),
            _ => {
                return Err(ApiError::InvalidJson(
                    "give either \"version\": N or \"versions\": {\"N\": weight, …}".into(),
                ))
            }
        };
        routing.map_err(|e| ApiError::InvalidConfig(format!("invalid alias target: {e}")))
    }
}

/// An alias as the API shows it: `version` is set when it points at one version.
#[derive(Debug, Serialize)]
pub(crate) struct AliasView<'a> {
    name: &'a AliasName,
    function: &'a FunctionName,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    versions: &'a Routing,
    previous: Option<&'a Routing>,
    revision: u64,
    created_at: chrono::DateTime<Utc>,
    updated_at: chrono::DateTime<Utc>,
}

impl<'a> From<&'a Alias> for AliasView<'a> {
    fn from(alias: &'a Alias) -> Self {
        Self {
            name: &alias.name,
            function: &alias.function,
            version: alias.routing.single_version(),
            versions: &alias.routing,
            previous: alias.previous.as_ref(),
            revision: alias.revision,
            created_at: alias.created_at,
            updated_at: alias.updated_at,
        }
    }
}

/// Validates an alias name from a path or query.
pub(crate) fn parse_alias(raw: &str) -> Result<AliasName, ApiError> {
    Ok(AliasName::parse(raw)?)
}

fn not_found(name: &FunctionName, alias: &AliasName) -> ApiError {
    ApiError::NotFound(format!(
        "alias {:?} of function {:?} not found",
        alias.as_str(),
        name.as_str()
    ))
}

/// The function of a path, which the principal may `action`.
fn function_of(
    principal: &Principal,
    action: Action,
    raw_name: &str,
) -> Result<FunctionName, ApiError> {
    principal.authorize(action)?;
    let name = parse_name(raw_name)?;
    principal.authorize_function(action, &name)?;
    Ok(name)
}

/// After a change committed: forget the cached alias and tell the catalog (edges follow it).
fn changed(state: &State, namespace: &Namespace, name: &FunctionName, alias: &AliasName) {
    state.lookups.forget_alias(namespace, name, alias);
    state
        .catalog
        .changed(CatalogKey::Function(namespace.clone(), name.clone()));
}

/// A store error of a change: an absent function or version is 404, the rest as usual.
fn change_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
        StoreError::Conflict(what) => ApiError::Conflict(what),
        other => other.into(),
    }
}

/// `PUT /v1/functions/{name}/aliases/{alias}`.
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("alias" = String, Path, description = "Alias name", pattern = "^[a-z][a-z0-9-]{0,62}$")), request_body = AliasTarget, responses((status = 200, description = "The alias as it is now", body = crate::openapi::AliasBody), (status = 409, description = "Read-only region", body = crate::openapi::ErrorBody), (status = 422, description = "Weights that do not add up, or a missing version", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn put(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_alias: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = function_of(&principal, Action::Deploy, &raw_name)?;
    let alias = parse_alias(&raw_alias)?;
    state.catalog.check_writable()?;
    let routing = parse_json::<AliasTarget>(&body)?.routing()?;
    let stored = state
        .backends
        .store
        .put_alias(&principal.namespace, &name, &alias, &routing, Utc::now())
        .await
        .map_err(change_error)?;
    changed(&state, &principal.namespace, &name, &alias);
    tracing::info!(function.name = %name, alias = %alias, alias.revision = stored.revision, key.id = %principal.key_id, "alias set");
    Ok(warp::reply::json(&AliasView::from(&stored)).into_response())
}

/// `POST /v1/functions/{name}/aliases/{alias}/rollback`.
#[utoipa::path(post, path = "/v1/functions/{name}/aliases/{alias}/rollback", tag = "aliases", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("alias" = String, Path, description = "Alias name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "Back to its previous target", body = crate::openapi::AliasBody), (status = 409, description = "It never changed", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn rollback(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_alias: String,
) -> Result<Response, ApiError> {
    let name = function_of(&principal, Action::Deploy, &raw_name)?;
    let alias = parse_alias(&raw_alias)?;
    state.catalog.check_writable()?;
    let stored = state
        .backends
        .store
        .rollback_alias(&principal.namespace, &name, &alias, Utc::now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found(&name, &alias),
            other => change_error(other),
        })?;
    changed(&state, &principal.namespace, &name, &alias);
    tracing::info!(function.name = %name, alias = %alias, alias.revision = stored.revision, key.id = %principal.key_id, "alias rolled back");
    Ok(warp::reply::json(&AliasView::from(&stored)).into_response())
}

/// `GET /v1/functions/{name}/aliases/{alias}`.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("alias" = String, Path, description = "Alias name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "The alias", body = crate::openapi::AliasBody), crate::openapi::Errors))]
pub(crate) async fn get(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_alias: String,
) -> Result<Response, ApiError> {
    let name = function_of(&principal, Action::Read, &raw_name)?;
    let alias = parse_alias(&raw_alias)?;
    let found = state
        .backends
        .store
        .get_alias(&principal.namespace, &name, &alias)
        .await?
        .ok_or_else(|| not_found(&name, &alias))?;
    Ok(warp::reply::json(&AliasView::from(&found)).into_response())
}

/// `GET /v1/functions/{name}/aliases`: `{"items": […]}` by name; 404 for an unknown function.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "aliases", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "The aliases", body = crate::openapi::AliasList), crate::openapi::Errors))]
pub(crate) async fn list(
    state: State,
    principal: Principal,
    raw_name: String,
) -> Result<Response, ApiError> {
    let name = function_of(&principal, Action::Read, &raw_name)?;
    let store = &state.backends.store;
    if store
        .get_function(&principal.namespace, &name, None)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            name.as_str()
        )));
    }
    let aliases = store.list_aliases(&principal.namespace, &name).await?;
    let items: Vec<AliasView<'_>> = aliases.iter().map(AliasView::from).collect();
    Ok(warp::reply::json(&json!({ "items": items })).into_response())
}

/// `DELETE /v1/functions/{name}/aliases/{alias}`: 204, or 404 if there was none.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("alias" = String, Path, description = "Alias name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 204, description = "Removed"), crate::openapi::Errors))]
pub(crate) async fn delete(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_alias: String,
) -> Result<Response, ApiError> {
    let name = function_of(&principal, Action::Deploy, &raw_name)?;
    let alias = parse_alias(&raw_alias)?;
    state.catalog.check_writable()?;
    let deleted = state
        .backends
        .store
        .delete_alias(&principal.namespace, &name, &alias)
        .await?;
    changed(&state, &principal.namespace, &name, &alias);
    if !deleted {
        return Err(not_found(&name, &alias));
    }
    tracing::info!(function.name = %name, alias = %alias, key.id = %principal.key_id, "alias deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The function version an invocation of `alias` runs: one picked by the alias's weights.
/// `NotFound` if the function has no such alias.
pub(crate) async fn resolve(
    state: &State,
    namespace: &Namespace,
    name: &FunctionName,
    alias: &AliasName,
) -> Result<u32, ApiError> {
    let found = state
        .lookups
        .alias(state.backends.store.as_ref(), namespace, name, alias)
        .await?
        .ok_or_else(|| not_found(name, alias))?;
    Ok(found.routing.pick_random())
}
