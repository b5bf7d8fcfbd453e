//! `GET /v1/admin/nodes`: the live worker nodes of the gateway's region, from the node
//! registry ([`fnmesh_core::registry`]): `{"items":[NodeInfo…]}`, ordered by id. A node
//! killed without leaving drops out within three of its heartbeats; one that shut down
//! cleanly is gone as soon as it has drained.

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
pub(crate) async fn list(state: State, principal: Principal) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let nodes = state.backends.registry.list().await?;
    Ok(warp::reply::json(&json!({ "items": nodes })).into_response())
}
