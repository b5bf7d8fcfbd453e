//! `POST /v1/keys` `{"name","role","namespace"?,"functions"?,"expires_at"?}` → 201 with the
//! key, shown this once.
//!
//! The new key is no stronger than its minter ([`covers`]) and ends no later: when the minter's
//! key expires, an `expires_at` after that, or none, is 422 `expires_after_minter`. The new key
//! records its minter as its parent and inherits its lineage root (see [`super`]).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fnmesh_core::FunctionName;
use fnmesh_store::{ApiKeyRecord, Role};
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{covers, outlived_by, requested_namespace, KeyView, Powers};
use crate::auth::{generate_key, generate_key_id, hash_key, Action, Principal};
use crate::error::ApiError;
use crate::functions::{parse_json, parse_name};
use crate::state::State;

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Most functions a key may be limited to.
const MAX_GRANTS: usize = 100;

/// The create body. Ids, hashes and timestamps are not for the caller to set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct CreateKey {
    /// Human label.
    pub name: String,
    /// `admin`, `developer` or `invoker`.
    pub role: String,
    /// Default: the caller's (an admin's `X-Fnmesh-Namespace`, if given).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Limit the key to these functions.
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    /// RFC 3339; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Handles the request.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey, responses((status = 201, description = "The key (shown only here)", body = crate::openapi::KeyCreated), (status = 422, description = "Outlives or outranks its minter", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.authorize(Action::ManageKeys)?;
    state.catalog.check_writable()?;
    let req: CreateKey = parse_json(&body)?;
    let name = req.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "key name must be 1..={MAX_NAME_CHARS} characters without control characters"
        )));
    }
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown role {:?}: expected admin, developer or invoker",
            req.role.chars().take(40).collect::<String>()
        ))
    })?;
    let namespace = requested_namespace(&principal, req.namespace.as_deref())?
        .unwrap_or_else(|| principal.namespace.clone());
    let functions = req.functions.as_deref().map(parse_grants).transpose()?;
    let now = Utc::now();
    if req.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::BadRequest(
            "expires_at must be in the future".into(),
        ));
    }
    if !outlived_by(&principal, req.expires_at) {
        return Err(ApiError::ExpiresAfterMinter(format!(
            "a key may not outlive the key minting it: give an expires_at no later than {}",
            principal
                .expires_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        )));
    }
    let powers = Powers {
        role,
        functions: functions.as_deref(),
        expires_at: req.expires_at,
    };
    if !covers(&principal, powers) {
        return Err(ApiError::Forbidden(format!(
            "a {} key{} may not mint this key: a key can only mint keys no stronger than itself",
            principal.role.as_str(),
            if principal.functions.is_some() {
                " limited to functions"
            } else {
                ""
            }
        )));
    }
    let key = generate_key();
    let record = ApiKeyRecord {
        id: generate_key_id(),
        name: name.to_owned(),
        key_hash: hash_key(&key),
        role,
        namespace,
        created_at: now,
        expires_at: req.expires_at,
        revoked_at: None,
        functions,
        parent_id: Some(principal.key_id.clone()),
        // Rate limits and caps of a non-admin's keys are its root's; an admin's start anew.
        root_id: (!principal.is_admin()).then(|| principal.root_id.clone()),
    };
    state.backends.store.create_api_key(&record).await?;
    if let Some(key) = fnmesh_core::subjects::CatalogKey::api_key(&record.id) {
        state.catalog.changed(key);
    }
    tracing::info!(
        key.id = %record.id,
        key.role = record.role.as_str(),
        key.namespace = %record.namespace,
        key.root_id = record.lineage_root(),
        by.key_id = %principal.key_id,
        "api key created"
    );
    let mut body = json!(KeyView::from(&record));
    body["key"] = json!(key);
    let reply = warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED);
    let mut response = reply.into_response();
    response.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Validated, de-duplicated grants; at least one.
fn parse_grants(raw: &[String]) -> Result<Vec<FunctionName>, ApiError> {
    if raw.is_empty() || raw.len() > MAX_GRANTS {
        return Err(ApiError::BadRequest(format!(
            "functions must name 1..={MAX_GRANTS} functions (omit it for all)"
        )));
    }
    let mut names = raw
        .iter()
        .map(|n| parse_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    names.dedup();
    Ok(names)
}
