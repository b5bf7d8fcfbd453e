//! `POST /v1/invocations/{id}/cancel`: a queued invocation never runs, a running one is
//! killed; either way its record becomes `cancelled`, which is final.
//!
//! The record is changed first, in one write that also drops the stored request
//! ([`fnmesh_store::InvocationStore::cancel_invocation`]): from then on nothing a node reports
//! replaces it and the reconciler never publishes it again. Then the region's nodes are told
//! ([`fnmesh_bus::Bus::cancel`]): a node running it kills its sandbox, and a node that is
//! handed it later settles it unrun. A node that did not hear the cancellation (it was
//! disconnected) may still run it; what it reports is discarded.
//!
//! Idempotent: cancelling a cancelled invocation answers 200 again (and tells the nodes
//! again); a finished one is 409. A sync invocation can be cancelled once it has a record: a
//! keyed one from the start, any other once its caller's wait ended (504). Audited as
//! `invocation.cancel`.

use warp::reply::Response;
use warp::Reply;

use super::parse_id;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(post, path = "/v1/invocations/{id}/cancel", tag = "invocations", params(("id" = String, Path, description = "Invocation id", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), responses((status = 200, description = "The record, now cancelled", body = fnmesh_core::InvocationResult), (status = 409, description = "It finished already", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_id: String,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Invoke)?;
    let id = parse_id(&raw_id)?;
    let not_found = || ApiError::NotFound(format!("invocation {id} not found"));
    if let Some(outcome) = state.writes.recent(&principal.namespace, &id) {
        // Finished here a moment ago, its write still queued.
        return Err(finished(&outcome.result));
    }
    let store = &state.backends.store;
    let record = store
        .get_invocation(&principal.namespace, &id)
        .await?
        .filter(|r| principal.can_see_function(&r.function))
        .ok_or_else(not_found)?;
    principal.authorize_function(Action::Invoke, &record.function)?;
    let message = format!("cancelled by key {}", principal.key_id);
    let (record, changed) = store
        .cancel_invocation(&principal.namespace, &id, &message)
        .await?
        .ok_or_else(not_found)?;
    if record.status != fnmesh_core::InvocationStatus::Cancelled {
        return Err(finished(&record));
    }
    if changed {
        tracing::info!(invocation.id = %id, function.name = %record.function, key.id = %principal.key_id, "invocation cancelled");
    }
    if let Err(e) = state.backends.bus.cancel(&id).await {
        // The record is final already: a node that runs it anyway reports into the void.
        tracing::warn!(invocation.id = %id, error = %e, "could not tell the nodes of a cancellation");
    }
    Ok(warp::reply::json(&record).into_response())
}

fn finished(record: &fnmesh_core::InvocationResult) -> ApiError {
    ApiError::Conflict(format!(
        "invocation {} already finished ({}); only queued or running invocations can be cancelled",
        record.id,
        record.status.as_str()
    ))
}
