//! `GET /v1/functions/{name}/logs[?follow=true][&limit=N]`: a function's output.
//!
//! Without `follow`: the captured output of its `limit` (default 20, at most 100) latest
//! invocations, as JSON. With `follow=true`: server-sent events, one `log` event per invocation
//! of the function that finishes after the stream opened, on any node of the bus (nodes publish
//! each invocation's output through [`fnmesh_bus::Bus::publish_logs`]; over NATS that is
//! a core-NATS subject every gateway can subscribe to). The event's `id` is the invocation id
//! and its data a [`FunctionLogs`] object. Output arrives when the invocation finishes, not line
//! by line while it runs. A follower that falls far behind misses entries (the logs stay
//! readable by invocation id). At most [`MAX_FOLLOWERS`] streams are open per gateway, and at
//! most [`GatewayConfig::max_log_streams_per_key`] per key lineage (429 `concurrency_limited`
//! past that). A stream checks every [`GatewayConfig::key_recheck_interval`] that its key is
//! still live, and ends when it was revoked or expired; all end when the gateway shuts down.
//!
//! [`GatewayConfig::max_log_streams_per_key`]: crate::GatewayConfig::max_log_streams_per_key
//! [`GatewayConfig::key_recheck_interval`]: crate::GatewayConfig::key_recheck_interval

use std::convert::Infallible;
use std::time::Duration;

use fnmesh_core::invocation::FunctionLogs;
use fnmesh_store::InvocationFilter;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::sse::Event;
use warp::Reply;

use super::parse_name;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::{State, MAX_FOLLOWERS};

/// Default number of invocations listed without `follow`.
const DEFAULT_LIMIT: u32 = 20;
/// Most invocations listed without `follow`.
const MAX_LIMIT: u32 = 100;
/// Interval of keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `?follow=true&limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// Stream output of invocations finishing from now on.
    pub follow: Option<bool>,
    /// Without `follow`: how many of the latest invocations.
    pub limit: Option<u32>,
}

/// Handles the request.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "functions", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), LogsQuery), responses((status = 200, description = "Output of the latest invocations; with follow=true a text/event-stream of `log` events", body = crate::openapi::FunctionLogsBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    query: LogsQuery,
) -> Result<Response, ApiError> {
    let name = parse_name(&raw_name)?;
    principal.authorize_function(Action::Read, &name)?;
    let store = &state.backends.store;
    if store
        .get_function(&principal.namespace, &name, None)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            name.as_str()
        )));
    }
    if !query.follow.unwrap_or(false) {
        return recent(&state, &principal, name, query.limit).await;
    }
    if query.limit.is_some() {
        return Err(ApiError::InvalidQuery(
            "limit does not apply to follow=true".to_owned(),
        ));
    }
    let followers = &state.log_followers;
    if followers.stop.is_cancelled() {
        return Err(ApiError::Unavailable(
            "the gateway is shutting down".to_owned(),
        ));
    }
    let key_permits = &state.log_stream_permits;
    let Some(key_permit) = key_permits.try_acquire(&principal.root_id) else {
        state.metrics.observe_concurrency_limited("log_stream");
        return Err(ApiError::ConcurrencyLimited(format!(
            "this key (with the keys minted from it) has {} log streams open already",
            key_permits.limit()
        )));
    };
    let permit = followers.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "too many log streams are open on this gateway (at most {MAX_FOLLOWERS})"
        ))
    })?;
    let feed = state
        .backends
        .bus
        .follow_logs(&principal.namespace, &name)
        .await?;
    tracing::debug!(function.name = %name, "log stream opened");
    let stop = followers.stop.clone();
    let key_gone = key_no_longer_live(state.clone(), principal.key_id.clone());
    let ended = async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = key_gone => {}
        }
    };
    let events = feed.take_until(ended).map(move |logs: FunctionLogs| {
        // Held as long as the stream is.
        let _held = (&permit, &key_permit);
        Ok::<_, Infallible>(event_of(&logs))
    });
    // warp 0.4 needs a Sync body stream; the stream is only ever polled by one task.
    let events = sync_wrapper::SyncStream::new(events);
    Ok(
        warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events))
            .into_response(),
    )
}

/// Resolves once key `key_id` is no longer live (revoked, expired, deleted), checking every
/// `key_recheck_interval`. A failing store keeps the stream open (the check is retried).
async fn key_no_longer_live(state: State, key_id: String) {
    let period = state
        .config
        .key_recheck_interval
        .max(Duration::from_millis(10));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the key was live when the stream opened.
    every.tick().await;
    loop {
        every.tick().await;
        match state.authenticator.recheck_key(&key_id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(key.id = %key_id, "log stream ended: its key is no longer live");
                return;
            }
            Err(e) => {
                tracing::warn!(key.id = %key_id, error = %e, "re-checking a log stream's key failed; keeping it open");
            }
        }
    }
}

/// One `log` event.
fn event_of(logs: &FunctionLogs) -> Event {
    let event = Event::default()
        .event("log")
        .id(logs.invocation_id.to_string());
    match serde_json::to_string(logs) {
        Ok(data) => event.data(data),
        Err(e) => Event::default().comment(format!("unencodable log entry: {e}")),
    }
}

/// The output of the latest `limit` invocations of `name`.
async fn recent(
    state: &State,
    principal: &Principal,
    name: fnmesh_core::FunctionName,
    limit: Option<u32>,
) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let store = &state.backends.store;
    let filter = InvocationFilter {
        function: Some(name),
        status: None,
    };
    let page = store
        .list_invocations(&principal.namespace, &filter, limit, None)
        .await?;
    let mut entries = Vec::with_capacity(page.items.len());
    for record in page.items {
        let logs = store
            .get_logs(&principal.namespace, &record.id)
            .await?
            .unwrap_or_default();
        entries.push(json!({
            "invocation_id": record.id,
            "version": record.version,
            "status": record.status,
            "node_id": record.node_id,
            "created_at": record.created_at,
            "text": logs.text,
            "truncated": logs.truncated,
        }));
    }
    Ok(warp::reply::json(&json!({ "entries": entries })).into_response())
}
