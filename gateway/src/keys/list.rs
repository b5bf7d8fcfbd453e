//! `GET /v1/keys?namespace=&limit=&cursor=`: keys by id — of the caller's namespace, or for
//! admins of every namespace (or the one named).

use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::{requested_namespace, KeyView};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::PageQuery;
use crate::state::State;

/// `?namespace=&limit=&cursor=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeysQuery {
    /// Only this namespace (admins; others may only name their own).
    pub namespace: Option<String>,
    /// Page size (1..=1000, default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(KeysQuery), responses((status = 200, description = "Keys, never the key", body = crate::openapi::KeyPage), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    query: KeysQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::ManageKeys)?;
    let namespace = match requested_namespace(&principal, query.namespace.as_deref())? {
        Some(ns) => Some(ns),
        None if principal.is_admin() => None,
        None => Some(principal.namespace.clone()),
    };
    let page_query = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page_query.limit()?;
    let page = state
        .backends
        .store
        .list_api_keys(namespace.as_ref(), limit, page_query.cursor.as_deref())
        .await?;
    let items: Vec<KeyView<'_>> = page.items.iter().map(KeyView::from).collect();
    Ok(
        warp::reply::json(&json!({ "items": items, "next_cursor": page.next_cursor }))
            .into_response(),
    )
}
