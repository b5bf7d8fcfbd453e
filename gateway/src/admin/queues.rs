//! `GET /v1/admin/queues`: the bus's queue depths ([`fnmesh_bus::QueueStats`]):
//! invocations and node events waiting, and per function what is pending, in flight and
//! allowed in flight.

use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/admin/queues", tag = "admin", responses((status = 200, description = "Bus depths", body = fnmesh_bus::QueueStats), crate::openapi::Errors))]
pub(crate) async fn handle(state: State, principal: Principal) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let stats = state.backends.bus.queue_stats().await?;
    Ok(warp::reply::json(&stats).into_response())
}
