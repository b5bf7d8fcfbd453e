//! `PUT /v1/registries/{host}` `{"username":"…","password":"…"}`: sets the namespace's
//! credential for a registry (204). Sealed before it is stored; deploys and pulls from then
//! on use it (within the lookup cache's bound, 1 s, on other gateways).

use bytes::Bytes;
use fnmesh_core::registry::RegistryCredential;
use fnmesh_core::subjects::CatalogKey;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{authorize, keyring, parse_host};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Registry credentials a namespace keeps at most.
pub(crate) const MAX_REGISTRIES_PER_NAMESPACE: usize = 64;

/// Handles the request.
#[utoipa::path(put, path = "/v1/registries/{host}", tag = "registries", params(("host" = String, Path, description = "Registry host[:port]")), request_body = fnmesh_core::registry::RegistryCredential, responses((status = 204, description = "Set"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_host: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&principal, Action::Deploy)?;
    state.catalog.check_writable()?;
    let host = parse_host(&raw_host)?;
    let ring = keyring(&state)?;
    // Not `parse_json`: serde's messages may quote a value, and this one is a password.
    let credential: RegistryCredential = serde_json::from_slice(&body).map_err(|_| {
        ApiError::InvalidJson(
            "invalid body: expected {\"username\":\"…\",\"password\":\"…\"}".to_owned(),
        )
    })?;
    credential
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let store = &state.backends.store;
    let existing = store
        .list_registry_credentials(&principal.namespace)
        .await?;
    if existing.len() >= MAX_REGISTRIES_PER_NAMESPACE && !existing.iter().any(|c| c.host == host) {
        return Err(ApiError::BadRequest(format!(
            "a namespace keeps credentials for at most {MAX_REGISTRIES_PER_NAMESPACE} registries"
        )));
    }
    let sealed = ring
        .seal_registry_credential(&principal.namespace, &host, &credential)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    store
        .put_registry_credential(&principal.namespace, &host, &sealed)
        .await?;
    state
        .lookups
        .forget_registry_credential(&principal.namespace, &host);
    state.catalog.changed(CatalogKey::Registry(
        principal.namespace.clone(),
        host.clone(),
    ));
    tracing::info!(
        registry.host = %host,
        secret.key_id = %sealed.key_id,
        key.id = %principal.key_id,
        "registry credential set"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
