//! The dead-letter queue: invocations whose delivery attempts ran out (their records are
//! `dead_lettered`), kept with their payload until an admin replays or deletes them.
//!
//! - `GET /v1/admin/dlq?limit=&cursor=&namespace=`: newest first, of every namespace or one;
//! - `GET /v1/admin/dlq/{id}`: one;
//! - `POST /v1/admin/dlq/{id}/replay`: runs the same function snapshot with the same payload
//!   again as a new async invocation (202 with its id), then removes the dead letter;
//! - `DELETE /v1/admin/dlq/{id}`: removes it (204); the record stays `dead_lettered`.
//!
//! Admins only. For anyone else, a dead letter of another namespace (or of a function outside
//! their grants) is 404, as if absent, and one of their own namespace is 403: visibility is
//! checked before the role.
//!
//! A replay is accepted like an async invocation: its record is committed `queued` before it
//! is published (the reconciler re-publishes it if the gateway dies in between), and the dead
//! letter is removed only once the new invocation is published, so a crash can at worst leave
//! a dead letter that was already replayed, never lose one.

use chrono::{DateTime, Utc};
use fnmesh_core::{
    DeadLetterRecord, FunctionName, InvocationError, InvocationId, InvocationRequest,
    InvocationStatus, Namespace,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::PageQuery;
use crate::invocations::invoke::refused;
use crate::invocations::parse_id;
use crate::state::State;

/// `?limit=&cursor=&namespace=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqQuery {
    /// Page size (1..=1000, default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Only this namespace (all by default).
    pub namespace: Option<String>,
}

/// A dead letter as the API shows it: the request's payload, not its whole function snapshot.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetterView<'a> {
    /// The dead-lettered invocation.
    pub id: InvocationId,
    /// Its namespace.
    pub namespace: &'a Namespace,
    /// Its function.
    pub function: &'a FunctionName,
    /// The version that was tried (and that a replay runs).
    pub version: u32,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last attempt's error, when a node reported one.
    pub last_error: Option<&'a InvocationError>,
    /// When the invocation was accepted.
    pub created_at: DateTime<Utc>,
    /// When its attempts ran out.
    pub dead_lettered_at: DateTime<Utc>,
    /// The payload a replay sends again.
    #[schema(value_type = Object)]
    pub payload: &'a Value,
}

impl<'a> From<&'a DeadLetterRecord> for DeadLetterView<'a> {
    fn from(dead: &'a DeadLetterRecord) -> Self {
        Self {
            id: dead.id,
            namespace: &dead.namespace,
            function: &dead.function,
            version: dead.version,
            attempts: dead.attempts,
            last_error: dead.last_error.as_ref(),
            created_at: dead.request.created_at,
            dead_lettered_at: dead.dead_lettered_at,
            payload: &dead.request.payload,
        }
    }
}

fn not_found(id: &InvocationId) -> ApiError {
    ApiError::NotFound(format!("dead letter {id} not found"))
}

/// The dead letter `id` if `principal` may see it (404 otherwise) and administer it (403
/// otherwise): non-admins see only their own namespace and functions.
async fn administered(
    state: &State,
    principal: &Principal,
    id: &InvocationId,
) -> Result<DeadLetterRecord, ApiError> {
    let scope = (!principal.is_admin()).then_some(&principal.namespace);
    let dead = state
        .backends
        .store
        .get_dead_letter(scope, id)
        .await?
        .filter(|dead| principal.can_see_function(&dead.function))
        .ok_or_else(|| not_found(id))?;
    principal.authorize(Action::Administer)?;
    Ok(dead)
}

/// `GET /v1/admin/dlq`.
#[utoipa::path(get, path = "/v1/admin/dlq", tag = "admin", params(DlqQuery), responses((status = 200, description = "Dead letters, newest first", body = crate::openapi::DeadLetterPage<'static>), crate::openapi::Errors))]
pub(crate) async fn list(
    state: State,
    principal: Principal,
    query: DlqQuery,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Administer)?;
    let namespace = query
        .namespace
        .as_deref()
        .map(Namespace::parse)
        .transpose()?;
    let page_query = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page_query.limit()?;
    let page = state
        .backends
        .store
        .list_dead_letters(namespace.as_ref(), limit, page_query.cursor.as_deref())
        .await?;
    let items: Vec<DeadLetterView<'_>> = page.items.iter().map(DeadLetterView::from).collect();
    Ok(
        warp::reply::json(&json!({ "items": items, "next_cursor": page.next_cursor }))
            .into_response(),
    )
}

/// `GET /v1/admin/dlq/{id}`.
#[utoipa::path(get, path = "/v1/admin/dlq/{id}", tag = "admin", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 200, description = "One dead letter", body = DeadLetterView<'static>), crate::openapi::Errors))]
pub(crate) async fn get(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let dead = administered(&state, &principal, &id).await?;
    Ok(warp::reply::json(&DeadLetterView::from(&dead)).into_response())
}

/// `POST /v1/admin/dlq/{id}/replay`: 202 `{"id", "replay_of", "status": "queued"}`.
#[utoipa::path(post, path = "/v1/admin/dlq/{id}/replay", tag = "admin", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 202, description = "Queued again as a new invocation", body = crate::openapi::Accepted), crate::openapi::Errors))]
pub(crate) async fn replay(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let store = &state.backends.store;
    let dead = administered(&state, &principal, &id).await?;
    // The version that was tried, with the secrets it was invoked with (sealed for that very
    // version and code): a replay runs what was accepted, never an old snapshot with the
    // function's current secrets.
    let request = InvocationRequest {
        id: InvocationId::new(),
        function: dead.request.function,
        payload: dead.request.payload,
        created_at: Utc::now(),
        trace_id: None,
        traceparent: None,
        secrets: dead.request.secrets,
        registry_auth: dead.request.registry_auth,
        forwarded_to: None,
        alias: dead.request.alias,
        priority: dead.request.priority,
        notify_destinations: dead.request.notify_destinations,
    };
    // Nodes read code from the NATS replica: put it back if it went missing (cached, cheap).
    if let Err(e) = state
        .backends
        .code
        .ensure_replicated(&request.function.code.checksum)
        .await
    {
        tracing::warn!(code.checksum = %request.function.code.checksum, error = %e, "code could not be replicated for nodes");
    }
    store.insert_invocation(&request).await?;
    crate::failpoint::hit(crate::failpoint::AFTER_COMMIT_BEFORE_PUBLISH);
    if let Err(e) = state.backends.bus.publish_invocation(&request, None).await {
        // The dead letter stays: the replay can be tried again.
        return Err(refused(&state, &request, e.into()).await);
    }
    match store.delete_dead_letter(None, &id).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(invocation.id = %id, "dead letter removed by another request while it was replayed");
        }
        Err(e) => {
            tracing::warn!(invocation.id = %id, error = %e, "removing a replayed dead letter failed; it stays listed");
        }
    }
    tracing::info!(
        invocation.id = %request.id,
        replay_of = %id,
        function.name = %request.function.name,
        key.id = %principal.key_id,
        "dead letter replayed"
    );
    let body = json!({
        "id": request.id,
        "replay_of": id,
        "status": InvocationStatus::Queued,
    });
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response())
}

/// `DELETE /v1/admin/dlq/{id}`: 204.
#[utoipa::path(delete, path = "/v1/admin/dlq/{id}", tag = "admin", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 204, description = "Dropped"), crate::openapi::Errors))]
pub(crate) async fn delete(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    administered(&state, &principal, &id).await?;
    if !state.backends.store.delete_dead_letter(None, &id).await? {
        return Err(not_found(&id));
    }
    tracing::info!(invocation.id = %id, key.id = %principal.key_id, "dead letter deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
