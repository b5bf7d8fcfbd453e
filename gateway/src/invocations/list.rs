//! `GET /v1/invocations?function=&status=&limit=&cursor=`: records, newest first.

use fnmesh_core::InvocationStatus;
use fnmesh_store::InvocationFilter;
use serde::Deserialize;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::{parse_name, PageQuery};
use crate::state::State;

/// The listing's query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListInvocationsQuery {
    /// Only this function.
    pub function: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/invocations", tag = "invocations", params(ListInvocationsQuery), responses((status = 200, description = "Records, newest first", body = crate::openapi::InvocationPage), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    query: ListInvocationsQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let function = query.function.as_deref().map(parse_name).transpose()?;
    if let Some(name) = &function {
        principal.authorize_function(Action::Read, name)?;
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(raw) => Some(InvocationStatus::parse(raw).ok_or_else(|| {
            ApiError::InvalidQuery(format!(
                "unknown status {:?}: expected queued, running, succeeded, failed, timeout or dead_lettered",
                raw.chars().take(40).collect::<String>()
            ))
        })?),
    };
    let page_query = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page_query.limit()?;
    let mut page = state
        .backends
        .store
        .list_invocations(
            &principal.namespace,
            &InvocationFilter { function, status },
            limit,
            page_query.cursor.as_deref(),
        )
        .await?;
    // A key limited to some functions sees only theirs (a page may then be short).
    page.items
        .retain(|r| principal.can_see_function(&r.function));
    Ok(warp::reply::json(&page).into_response())
}
