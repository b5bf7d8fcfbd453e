//! `DELETE /v1/functions/{name}`: removes the function and all its versions.
//!
//! Code blobs are content-addressed and may be shared, so they are left in the code store;
//! invocation records stay readable.

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::parse_name;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 204, description = "Deleted with every version"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Deploy)?;
    let name = parse_name(&raw_name)?;
    principal.authorize_function(Action::Deploy, &name)?;
    state.catalog.check_writable()?;
    let deleted = state
        .backends
        .store
        .delete_function(&principal.namespace, &name)
        .await?;
    state.lookups.forget_function(&principal.namespace, &name);
    for key in [
        fnmesh_core::subjects::CatalogKey::Function(principal.namespace.clone(), name.clone()),
        fnmesh_core::subjects::CatalogKey::Secrets(principal.namespace.clone(), name.clone()),
    ] {
        state.catalog.changed(key);
    }
    if !deleted {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            name.as_str()
        )));
    }
    tracing::info!(function.name = %name, key.id = %principal.key_id, "function deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
