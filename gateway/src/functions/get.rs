//! `GET /v1/functions/{name}[?version=N]`: the latest (or a given) version.

use serde::Deserialize;
use warp::reply::Response;
use warp::Reply;

use super::parse_name;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// `?version=N`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct VersionQuery {
    /// A specific version.
    pub version: Option<u32>,
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), VersionQuery), responses((status = 200, description = "The version", body = fnmesh_core::Function), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    query: VersionQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let name = parse_name(&raw_name)?;
    principal.authorize_function(Action::Read, &name)?;
    let function = state
        .backends
        .store
        .get_function(&principal.namespace, &name, query.version)
        .await?
        .ok_or_else(|| match query.version {
            Some(v) => ApiError::NotFound(format!(
                "version {v} of function {:?} not found",
                name.as_str()
            )),
            None => ApiError::NotFound(format!("function {:?} not found", name.as_str())),
        })?;
    Ok(warp::reply::json(&function).into_response())
}
