//! `GET /v1/invocations/{id}`: one invocation record, with the state of its destination
//! deliveries (async invocations of functions with `config.destinations`).

use warp::reply::Response;
use warp::Reply;

use super::parse_id;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 200, description = "The record, with its destination deliveries", body = InvocationView), crate::openapi::Errors))]
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
    let found = match recent {
        // A sync outcome: no destinations.
        Some(record) => Some((record, Vec::new())),
        None => {
            state
                .backends
                .store
                .invocation_with_deliveries(&principal.namespace, &id)
                .await?
        }
    };
    let (record, destinations) = found
        .filter(|(r, _)| principal.can_see_function(&r.function))
        .ok_or_else(|| ApiError::NotFound(format!("invocation {id} not found")))?;
    Ok(warp::reply::json(&InvocationView {
        record,
        destinations,
    })
    .into_response())
}

/// An invocation record as `GET` shows it: the record, and its destination deliveries.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InvocationView {
    #[serde(flatten)]
    record: fnmesh_core::InvocationResult,
    /// Where the record is sent, and how that went (absent when it goes nowhere).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    destinations: Vec<fnmesh_core::destination::DeliveryStatus>,
}
