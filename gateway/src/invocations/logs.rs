//! `GET /v1/invocations/{id}/logs`: captured output (empty until recorded).

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::parse_id;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/invocations/{id}/logs", tag = "invocations", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 200, description = "Its captured output", body = crate::openapi::InvocationLogsBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let id = parse_id(&raw_id)?;
    // A sync outcome this gateway answered with and has yet to commit.
    if let Some(outcome) = state
        .writes
        .recent(&principal.namespace, &id)
        .filter(|o| principal.can_see_function(&o.result.function))
    {
        return Ok(warp::reply::json(&json!({
            "id": id,
            "logs": outcome.logs.text,
            "truncated": outcome.logs.truncated,
        }))
        .into_response());
    }
    let store = &state.backends.store;
    if !store
        .get_invocation(&principal.namespace, &id)
        .await?
        .is_some_and(|r| principal.can_see_function(&r.function))
    {
        return Err(ApiError::NotFound(format!("invocation {id} not found")));
    }
    let logs = store
        .get_logs(&principal.namespace, &id)
        .await?
        .unwrap_or_default();
    Ok(warp::reply::json(&json!({
        "id": id,
        "logs": logs.text,
        "truncated": logs.truncated,
    }))
    .into_response())
}
