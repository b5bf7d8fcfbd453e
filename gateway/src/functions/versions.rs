//! `GET /v1/functions/{name}/versions`: every version, oldest first.

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::parse_name;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, description = "Every version", body = crate::openapi::FunctionVersions), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let name = parse_name(&raw_name)?;
    principal.authorize_function(Action::Read, &name)?;
    let versions = state
        .backends
        .store
        .list_versions(&principal.namespace, &name)
        .await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            name.as_str()
        )));
    }
    Ok(warp::reply::json(&json!({ "items": versions })).into_response())
}
