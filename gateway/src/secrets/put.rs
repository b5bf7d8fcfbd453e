//! `PUT /v1/functions/{name}/secrets/{key}` `{"value":"…"}`: sets a secret (204).
//!
//! The value is sealed before it is stored; at most
//! [`MAX_SECRETS_PER_FUNCTION`] secrets of at most [`MAX_SECRET_VALUE_BYTES`] each per function.
//! New invocations carry it; sandboxes started with the old value are not reused.

use bytes::Bytes;
use fnmesh_core::secrets::{MAX_SECRETS_PER_FUNCTION, MAX_SECRET_VALUE_BYTES};
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{authorize, keyring, parse_secret_name, require_function};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::state::State;

/// The body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct PutSecret {
    value: String,
}

/// Handles the request.
#[utoipa::path(put, path = "/v1/functions/{name}/secrets/{key}", tag = "secrets", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "Secret name")), request_body = PutSecret, responses((status = 204, description = "Set"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_key: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = authorize(&principal, &raw_name)?;
    state.catalog.check_writable()?;
    let key = parse_secret_name(&raw_key)?;
    let ring = keyring(&state)?;
    let body: PutSecret = parse_json(&body)?;
    if body.value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "a secret value is at most {MAX_SECRET_VALUE_BYTES} bytes"
        )));
    }
    if body.value.contains('\0') {
        return Err(ApiError::BadRequest(
            "a secret value cannot contain NUL characters".to_owned(),
        ));
    }
    require_function(&state, &principal, &name).await?;
    let store = &state.backends.store;
    let existing = store.list_secrets(&principal.namespace, &name).await?;
    if existing.len() >= MAX_SECRETS_PER_FUNCTION && !existing.iter().any(|s| s.name == key) {
        return Err(ApiError::BadRequest(format!(
            "a function has at most {MAX_SECRETS_PER_FUNCTION} secrets"
        )));
    }
    let sealed = ring
        .seal_secret(&principal.namespace, &name, &key, &body.value)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    store
        .put_secret(&principal.namespace, &name, &key, &sealed)
        .await?;
    state.lookups.forget_function(&principal.namespace, &name);
    state
        .catalog
        .changed(fnmesh_core::subjects::CatalogKey::Secrets(
            principal.namespace.clone(),
            name.clone(),
        ));
    tracing::info!(
        function.name = %name,
        secret.name = %key,
        secret.key_id = %sealed.key_id,
        key.id = %principal.key_id,
        "secret set"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
