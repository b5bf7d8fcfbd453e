//! `GET /v1/admin/nodes`: the live worker nodes of the gateway's region, from the node
//! registry ([`fnmesh_core::registry`]), and at a hub those of every edge too, read through
//! the leaf links: `{"items":[NodeInfo + "link"…],"regions":[{"name","link","error"?}…]}`,
//! ordered by region (its own first) then id. A node killed without leaving drops out within
//! three of its heartbeats; one that shut down cleanly is gone as soon as it has drained. An
//! edge whose link is down is listed in `regions` with `"link":"down"` and no nodes.

use serde_json::{json, Value};
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;
use crate::uplink::status::Link;

/// A node's entry with the state of the link to its region.
fn with_link(node: &fnmesh_bus::registry::NodeInfo, link: Link) -> Value {
    let mut value = serde_json::to_value(node).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.insert("link".to_owned(), json!(link));
    }
    value
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/admin/nodes", tag = "admin", responses((status = 200, description = "Live worker nodes", body = crate::openapi::NodeList), crate::openapi::Errors))]
pub(crate) async fn list(state: State, principal: Principal) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let own = state.backends.registry.list().await?;
    let mut items: Vec<Value> = own.iter().map(|n| with_link(n, Link::Local)).collect();
    let mut regions = Vec::new();
    if let Some(view) = state.catalog.regions() {
        for remote in view.remote_nodes().await {
            match remote.nodes {
                Ok(nodes) => {
                    items.extend(nodes.iter().map(|n| with_link(n, Link::Up)));
                    regions.push(json!({"name": remote.region.as_str(), "link": Link::Up}));
                }
                Err(error) => regions.push(json!({
                    "name": remote.region.as_str(),
                    "link": Link::Down,
                    "error": error,
                })),
            }
        }
    }
    Ok(warp::reply::json(&json!({ "items": items, "regions": regions })).into_response())
}
