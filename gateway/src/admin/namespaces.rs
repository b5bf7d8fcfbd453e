//! Namespace quotas (admins only):
//!
//! - `PUT /v1/admin/namespaces/{ns}` `{"max_functions","max_memory_mb","max_concurrency"}`
//!   (each a number, or null/absent for unlimited) stores the namespace's quota;
//! - `GET /v1/admin/namespaces/{ns}`: its quota (all null when none was set) and usage;
//! - `GET /v1/admin/namespaces`: every quota set.
//!
//! Quotas are enforced at deploy and update ([`crate::functions::quota`]); lowering one below
//! what a namespace already uses refuses its next deploy, it does not remove anything.

use bytes::Bytes;
use chrono::Utc;
use fnmesh_core::Namespace;
use fnmesh_store::NamespaceQuota;
use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::state::State;

/// The PUT body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct PutQuota {
    /// Most functions.
    #[serde(default)]
    pub max_functions: Option<u32>,
    /// Largest `memory_mb` of one function.
    #[serde(default)]
    pub max_memory_mb: Option<u32>,
    /// Largest sum of the functions' `max_concurrency`.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

/// `PUT /v1/admin/namespaces/{ns}`.
#[utoipa::path(put, path = "/v1/admin/namespaces/{ns}", tag = "admin", params(("ns" = String, Path, description = "Namespace", pattern = "^[a-z][a-z0-9-]{0,62}$")), request_body = PutQuota, responses((status = 200, description = "The quota", body = fnmesh_store::NamespaceQuota), crate::openapi::Errors))]
pub(crate) async fn put(
    state: State,
    principal: Principal,
    raw_ns: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    state.catalog.check_writable()?;
    let namespace = Namespace::parse(&raw_ns)?;
    let req: PutQuota = parse_json(&body)?;
    let quota = NamespaceQuota {
        namespace,
        max_functions: req.max_functions,
        max_memory_mb: req.max_memory_mb,
        max_concurrency: req.max_concurrency,
        updated_at: Utc::now(),
    };
    state.backends.store.put_namespace_quota(&quota).await?;
    state
        .catalog
        .changed(fnmesh_core::subjects::CatalogKey::Quota(
            quota.namespace.clone(),
        ));
    tracing::info!(
        namespace = %quota.namespace,
        quota.max_functions = ?quota.max_functions,
        quota.max_memory_mb = ?quota.max_memory_mb,
        quota.max_concurrency = ?quota.max_concurrency,
        key.id = %principal.key_id,
        "namespace quota set"
    );
    Ok(warp::reply::json(&quota).into_response())
}

/// `GET /v1/admin/namespaces/{ns}`.
#[utoipa::path(get, path = "/v1/admin/namespaces/{ns}", tag = "admin", params(("ns" = String, Path, description = "Namespace", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "Quota and usage", body = crate::openapi::NamespaceView), crate::openapi::Errors))]
pub(crate) async fn get(
    state: State,
    principal: Principal,
    raw_ns: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let namespace = Namespace::parse(&raw_ns)?;
    let store = &state.backends.store;
    let quota = store.get_namespace_quota(&namespace).await?;
    let usage = store.namespace_usage(&namespace, None).await?;
    Ok(warp::reply::json(&json!({
        "namespace": namespace,
        "max_functions": quota.as_ref().and_then(|q| q.max_functions),
        "max_memory_mb": quota.as_ref().and_then(|q| q.max_memory_mb),
        "max_concurrency": quota.as_ref().and_then(|q| q.max_concurrency),
        "updated_at": quota.as_ref().map(|q| q.updated_at),
        "usage": usage,
    }))
    .into_response())
}

/// `GET /v1/admin/namespaces`.
#[utoipa::path(get, path = "/v1/admin/namespaces", tag = "admin", responses((status = 200, description = "Quotas", body = crate::openapi::QuotaList), crate::openapi::Errors))]
pub(crate) async fn list(state: State, principal: Principal) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let quotas = state.backends.store.list_namespace_quotas().await?;
    Ok(warp::reply::json(&json!({ "items": quotas })).into_response())
}
