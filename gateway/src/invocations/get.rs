//! `GET /v1/invocations/{id}`: one invocation record.

use warp::reply::Response;
use warp::Reply;

use super::parse_id;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let id = parse_id(&raw_id)?;
    let record = state
        .backends
        .store
        .get_invocation(&principal.namespace, &id)
        .await?
        .filter(|r| principal.can_see_function(&r.function))
        .ok_or_else(|| ApiError::NotFound(format!("invocation {id} not found")))?;
    Ok(warp::reply::json(&record).into_response())
}
