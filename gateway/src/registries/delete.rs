//! `DELETE /v1/registries/{host}`: removes the namespace's credential (204; 404 if absent).
//! Images already pulled stay cached on nodes; new pulls go without it.

use fnmesh_core::subjects::CatalogKey;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{authorize, parse_host};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(delete, path = "/v1/registries/{host}", tag = "registries", params(("host" = String, Path, description = "Registry host[:port]")), responses((status = 204, description = "Removed"), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_host: String,
) -> Result<Response, ApiError> {
    authorize(&principal, Action::Deploy)?;
    state.catalog.check_writable()?;
    let host = parse_host(&raw_host)?;
    let deleted = state
        .backends
        .store
        .delete_registry_credential(&principal.namespace, &host)
        .await?;
    state
        .lookups
        .forget_registry_credential(&principal.namespace, &host);
    state.catalog.changed(CatalogKey::Registry(
        principal.namespace.clone(),
        host.clone(),
    ));
    if !deleted {
        return Err(ApiError::NotFound(format!(
            "no credential for registry {:?} in this namespace",
            host.as_str()
        )));
    }
    tracing::info!(registry.host = %host, key.id = %principal.key_id, "registry credential deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
