//! `GET /v1/admin/regions`: every region this gateway knows of, its own first, with the state
//! of the link to it and the lag of what replicates over it
//! ([`crate::uplink::status::RegionStatus`]): at an edge, its hub and the hub's catalog
//! mirrored here; at a hub, each edge and its records sourced here. A gateway without NATS
//! (`fnmesh up`) has one local region.

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/admin/regions", tag = "admin", responses((status = 200, description = "The regions this gateway knows", body = crate::openapi::RegionList), crate::openapi::Errors))]
pub(crate) async fn list(state: State, principal: Principal) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let items = match state.catalog.regions() {
        Some(view) => serde_json::to_value(view.list().await).unwrap_or_default(),
        None => json!([{ "name": "local", "role": "standalone", "link": "local" }]),
    };
    Ok(warp::reply::json(&json!({ "items": items })).into_response())
}
