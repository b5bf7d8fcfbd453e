//! `POST /v1/functions/{name}/invoke[?version=N][&async=true]`.
//!
//! The record is committed `queued` before the request is published, so an accepted invocation
//! is always retrievable. Async calls answer 202 at once; sync calls wait on an inbox for the
//! outcome up to the function's timeout plus a grace, write it through (the recorder also
//! does, fenced and idempotent) and answer 200 whatever the function did, or 504 with the id.
//! When the bus refuses the publish, the record is marked failed: nothing accepted is dropped
//! silently.

use bytes::Bytes;
use chrono::Utc;
use fnmesh_shared::{
    ErrorKind, InvocationError, InvocationId, InvocationOutcome, InvocationRequest,
    InvocationResult, InvocationStatus,
};
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::header::LOCATION;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::parse_name;
use crate::state::State;

/// `?version=N&async=true`.
#[derive(Debug, Default, Deserialize)]
pub struct InvokeQuery {
    /// Run this version instead of the latest.
    pub version: Option<u32>,
    /// Answer 202 at once instead of waiting.
    #[serde(rename = "async")]
    pub asynchronous: Option<bool>,
}

/// Handles the request.
pub async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    query: InvokeQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Invoke)?;
    let name = parse_name(&raw_name)?;
    let payload = parse_payload(&body)?;
    let store = &state.backends.store;
    let function = store
        .get_function(&principal.namespace, &name, query.version)
        .await?
        .ok_or_else(|| match query.version {
            Some(v) => ApiError::NotFound(format!(
                "version {v} of function {:?} not found",
                name.as_str()
            )),
            None => ApiError::NotFound(format!("function {:?} not found", name.as_str())),
        })?;
    crate::ratelimit::check_function(&state, &function).await?;
    let timeout = std::time::Duration::from_millis(function.config.timeout_ms);
    let request = InvocationRequest {
        id: InvocationId::new(),
        function,
        payload,
        created_at: Utc::now(),
        trace_id: None,
    };
    let id = request.id;
    store.insert_invocation(&request).await?;
    crate::failpoint::hit(crate::failpoint::AFTER_COMMIT_BEFORE_PUBLISH);
    let bus = &state.backends.bus;

    if query.asynchronous.unwrap_or(false) {
        if let Err(e) = bus.publish_invocation(&request, None).await {
            return Err(refused(&state, &request, e.into()).await);
        }
        tracing::info!(invocation.id = %id, function.name = %name, mode = "async", "invocation queued");
        let location = format!("/v1/invocations/{id}");
        let reply = warp::reply::with_status(
            warp::reply::json(&json!({ "id": id, "status": InvocationStatus::Queued })),
            StatusCode::ACCEPTED,
        );
        return Ok(warp::reply::with_header(reply, LOCATION, location).into_response());
    }

    let mut inbox = match bus.open_inbox().await {
        Ok(inbox) => inbox,
        Err(e) => return Err(refused(&state, &request, e.into()).await),
    };
    if let Err(e) = bus
        .publish_invocation(&request, Some(&inbox.reply_to))
        .await
    {
        return Err(refused(&state, &request, e.into()).await);
    }
    tracing::debug!(invocation.id = %id, function.name = %name, mode = "sync", "invocation queued");
    let wait = timeout + state.config.sync_grace;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, inbox.receiver.recv()).await {
            Ok(Some(outcome)) if outcome.result.id == id => {
                record(&state, &outcome).await;
                return Ok(warp::reply::json(&outcome.result).into_response());
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    invocation.id = %id,
                    other.id = %other.result.id,
                    "inbox received another invocation's outcome; ignored"
                );
            }
            Ok(None) => {
                return Err(ApiError::Unavailable(format!(
                    "the reply inbox closed before invocation {id} finished; fetch it later by id"
                )))
            }
            Err(_) => {
                tracing::info!(
                    invocation.id = %id,
                    wait_ms = wait.as_millis() as u64,
                    "sync invocation did not finish in time"
                );
                return Err(ApiError::GatewayTimeout { invocation_id: id });
            }
        }
    }
}

/// An empty body is `null`; anything else must be JSON.
fn parse_payload(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidPayload(format!("the payload is not JSON: {e}")))
}

/// Writes a sync outcome through, so a GET right after the answer sees it. Failures are
/// logged: the recorder applies the same outcome from the event stream.
async fn record(state: &State, outcome: &InvocationOutcome) {
    let store = &state.backends.store;
    let id = outcome.result.id;
    if let Err(e) = store.update_invocation(&outcome.result).await {
        tracing::warn!(invocation.id = %id, error = %e, "writing a sync outcome failed; the recorder will");
        return;
    }
    if let Err(e) = store.put_logs(&id, &outcome.logs).await {
        tracing::warn!(invocation.id = %id, error = %e, "writing sync logs failed; the recorder will");
    }
}

/// Marks an accepted invocation failed after the bus refused it, and returns the error to
/// answer with.
async fn refused(state: &State, request: &InvocationRequest, error: ApiError) -> ApiError {
    let mut record = InvocationResult::queued(request);
    record.status = InvocationStatus::Failed;
    record.error = Some(InvocationError {
        kind: ErrorKind::Crashed,
        message: format!("not run: {error}"),
    });
    record.completed_at = Some(Utc::now());
    if let Err(e) = state.backends.store.update_invocation(&record).await {
        tracing::error!(
            invocation.id = %request.id,
            error = %e,
            "marking a refused invocation failed did not work; its record stays queued"
        );
    }
    tracing::warn!(invocation.id = %request.id, error = %error, "the bus refused an invocation");
    error
}
