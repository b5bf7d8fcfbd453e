//! `GET /v1/registries`: `{"items":[{"host","updated_at"}]}`, hosts only.

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::authorize;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/registries", tag = "registries", responses((status = 200, description = "Hosts only", body = crate::openapi::RegistryList), crate::openapi::Errors))]
pub(crate) async fn handle(state: State, principal: Principal) -> Result<Response, ApiError> {
    authorize(&principal, Action::Deploy)?;
    let items = state
        .backends
        .store
        .list_registry_credentials(&principal.namespace)
        .await?;
    Ok(warp::reply::json(&json!({ "items": items })).into_response())
}
