//! `GET /v1/admin/audit?actor=&namespace=&action=&outcome=&since=&limit=&cursor=`: the audit
//! log ([`crate::audit`]), newest first, admins only.

use chrono::{DateTime, Utc};
use fnmesh_core::Namespace;
use fnmesh_store::{AuditFilter, AuditOutcome};
use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::PageQuery;
use crate::state::State;

/// The query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only this actor (key id, token subject or `anonymous`).
    pub actor: Option<String>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this action (e.g. `function.delete`).
    pub action: Option<String>,
    /// Only `ok`, `denied` or `error`.
    pub outcome: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Page size (1..=1000, default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery), responses((status = 200, description = "The audit log, newest first", body = crate::openapi::AuditPage), crate::openapi::Errors))]
pub(crate) async fn list(
    state: State,
    principal: Principal,
    query: AuditQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let outcome = query
        .outcome
        .as_deref()
        .map(|o| {
            AuditOutcome::parse(o).ok_or_else(|| {
                ApiError::InvalidQuery(format!(
                    "outcome {:?} is not one of ok, denied, error",
                    o.chars().take(20).collect::<String>()
                ))
            })
        })
        .transpose()?;
    let since = query
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::InvalidQuery(format!("since is not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let filter = AuditFilter {
        actor: query.actor,
        namespace: query
            .namespace
            .as_deref()
            .map(Namespace::parse)
            .transpose()?,
        action: query.action,
        outcome,
        since,
    };
    let page_query = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page_query.limit()?;
    let page = state
        .backends
        .store
        .list_audit(&filter, limit, page_query.cursor.as_deref())
        .await?;
    Ok(
        warp::reply::json(&json!({ "items": page.items, "next_cursor": page.next_cursor }))
            .into_response(),
    )
}
