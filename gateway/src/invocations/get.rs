//! `GET /v1/invocations/{id}`: one invocation record.

use warp::reply::Response;
use warp::Reply;

use super::parse_id;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 200, description = "The record", body = fnmesh_core::InvocationResult), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let id = parse_id(&raw_id)?;
    // A sync outcome this gateway answered with and has yet to commit.
    let recent = state
        .writes
        .recent(&principal.namespace, &id)
        .map(|o| o.result.clone());
    let record = match recent {
        Some(record) => Some(record),
        None => {
            state
                .backends
                .store
                .get_invocation(&principal.namespace, &id)
                .await?
        }
    };
    let record = record
        .filter(|r| principal.can_see_function(&r.function))
        .ok_or_else(|| ApiError::NotFound(format!("invocation {id} not found")))?;
    Ok(warp::reply::json(&record).into_response())
}
