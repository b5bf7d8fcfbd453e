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
