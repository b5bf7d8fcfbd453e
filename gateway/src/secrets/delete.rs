//! `DELETE /v1/functions/{name}/secrets/{key}`: removes a secret (204; 404 if absent).

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{authorize, parse_secret_name};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(delete, path = "/v1/functions/{name}/secrets/{key}", tag = "secrets", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "Secret name")), responses((status = 204, description = "Removed"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    raw_key: String,
) -> Result<Response, ApiError> {
    let name = authorize(&principal, &raw_name)?;
    state.catalog.check_writable()?;
    let key = parse_secret_name(&raw_key)?;
    let deleted = state
        .backends
        .store
        .delete_secret(&principal.namespace, &name, &key)
        .await?;
    state.lookups.forget_function(&principal.namespace, &name);
    state
        .catalog
        .changed(fnmesh_core::subjects::CatalogKey::Secrets(
            principal.namespace.clone(),
            name.clone(),
        ));
    if !deleted {
        return Err(ApiError::NotFound(format!(
            "secret {:?} of function {:?} not found",
            key.as_str(),
            name.as_str()
        )));
    }
    tracing::info!(function.name = %name, secret.name = %key, key.id = %principal.key_id, "secret deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
