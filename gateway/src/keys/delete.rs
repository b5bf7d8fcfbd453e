//! `DELETE /v1/keys/{id}`: revokes a key and every key minted below it, in one step (204).
//! Each revoked API key stops working at once everywhere
//! (keys are checked against the store on every request); access tokens minted from it stop
//! at once on this gateway and within the key-check TTL (≤ 60 s) on the others; its refresh
//! tokens stop at once. A key of another namespace is 404 for non-admins; a stronger key is
//! 403.

use chrono::Utc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{covers, Powers};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "Key id")), responses((status = 204, description = "Revoked with every key minted below it"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    id: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::ManageKeys)?;
    state.catalog.check_writable()?;
    let not_found = || ApiError::NotFound(format!("key {:?} not found", truncate(&id)));
    let store = &state.backends.store;
    let key = store
        .get_api_key(&id)
        .await?
        .filter(|k| principal.is_admin() || k.namespace == principal.namespace)
        .ok_or_else(not_found)?;
    if !covers(&principal, Powers::from(&key)) {
        return Err(ApiError::Forbidden(
            "a key can only revoke keys no stronger than itself".into(),
        ));
    }
    let revoked = store.revoke_api_key_tree(&key.id, Utc::now()).await?;
    state.authenticator.forget_key(&key.id);
    if let Some(catalog_key) = fnmesh_core::subjects::CatalogKey::api_key(&key.id) {
        state.catalog.changed(catalog_key);
    }
    for id in &revoked {
        state.authenticator.forget_key(id);
        if let Some(key) = fnmesh_core::subjects::CatalogKey::api_key(id) {
            state.catalog.changed(key);
        }
    }
    if !revoked.is_empty() {
        tracing::info!(
            key.id = %key.id,
            keys.revoked = revoked.len(),
            by.key_id = %principal.key_id,
            "api key revoked with the keys minted below it"
        );
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn truncate(id: &str) -> String {
    id.chars().take(64).collect()
}
