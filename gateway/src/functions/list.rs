//! `GET /v1/functions?limit=&cursor=`: latest versions, by name, one page at a time.

use warp::reply::Response;
use warp::Reply;

use super::PageQuery;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", params(crate::functions::PageQuery), responses((status = 200, description = "Latest versions", body = crate::openapi::FunctionPage), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    query: PageQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Read)?;
    let limit = query.limit()?;
    let mut page = state
        .backends
        .store
        .list_functions(&principal.namespace, limit, query.cursor.as_deref())
        .await?;
    // A key limited to some functions sees only those (a page may then be short).
    page.items.retain(|f| principal.can_see_function(&f.name));
    Ok(warp::reply::json(&page).into_response())
}
