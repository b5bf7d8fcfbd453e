//! `GET /v1/functions/{name}/secrets`: `{"items":[{"name","updated_at"}]}`, names only.

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::{authorize, require_function};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/functions/{name}/secrets", tag = "secrets", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "Names only", body = crate::openapi::SecretList), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
) -> Result<Response, ApiError> {
    let name = authorize(&principal, &raw_name)?;
    require_function(&state, &principal, &name).await?;
    let items = state
        .backends
        .store
        .list_secrets(&principal.namespace, &name)
        .await?;
    Ok(warp::reply::json(&json!({ "items": items })).into_response())
}
