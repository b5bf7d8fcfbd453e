//! `POST /v1/functions/{name}/invoke[?version=N|?alias=A][&async=true]`.
//!
//! An async invocation is committed `queued` (with its request) before it is published, so an
//! accepted invocation is always retrievable and the reconciler publishes it again if the
//! publish is lost; it answers 202 at once. A sync invocation is written once, when it has
//! finished: the caller waits on an inbox for the outcome up to the function's timeout plus a
//! grace, the outcome is queued for writing with its logs (inserted: there is no record
//! before) and the answer is 200 whatever the function did; a GET right after sees it (from
//! [`crate::writes::Writes::recent`] until the write commits). Nothing is stored
//! before: a sync caller is answered with the outcome or an error, and what a node ran also
//! reaches the recorder as a `Finished` event, which stores it if its gateway did not (it
//! died meanwhile). A sync invocation still running at the end of the wait answers 504 with
//! its id, and is stored `queued` then, so the id can be fetched: without a request when it
//! was queued on the bus (the queue holds it), with it when it was sent straight to a node
//! (`FNMESH_DIRECT_SYNC`: nothing else holds it, so the reconciler queues it again if no
//! outcome comes). Writes go through the group commit of [`crate::writes`]:
//! concurrent requests share their transactions. When the bus refuses the publish, a stored
//! record is marked failed: nothing accepted is dropped silently.
//!
//! An invocation with an `Idempotency-Key` (HTTP header, or the NATS request header of that
//! name) is stored before it runs, sync too: its key is taken in the transaction that commits
//! its `queued` record ([`fnmesh_store::InvocationStore::insert_keyed_invocation`]), so across
//! gateways and restarts one key makes one invocation, whose id is also its `Nats-Msg-Id` (the
//! bus drops a second publish of it). Within 24 hours the same key with the same function and
//! payload ([`fnmesh_core::idempotency::fingerprint`]) answers with that invocation
//! (`Idempotent-Replayed: true`): async, its id; sync, its outcome once it has finished (as
//! long as the first caller would wait). The same key with another function or payload is 422
//! `idempotency_key_reused`.
//!
//! [`invoke`] is that whole path behind the HTTP handler; NATS requests
//! ([`crate::nats_api`]) go through it too, so both front ends decide the same way.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use fnmesh_core::idempotency::{self, KeyError, IDEMPOTENCY_TTL};
use fnmesh_core::{
    AliasName, ErrorKind, FunctionName, IdempotencyKey, InvocationError, InvocationId,
    InvocationOutcome, InvocationRequest, InvocationResult, InvocationStatus, Namespace, Priority,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument as _;
use warp::http::header::LOCATION;
use warp::http::StatusCode;
use warp::http::{HeaderMap, HeaderValue};
use warp::reply::Response;
use warp::Reply;

use fnmesh_bus::{BusError, Sent};
use fnmesh_store::Keyed;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::parse_name;
use crate::state::State;

/// `?version=N&async=true`, or `?alias=prod&async=true`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InvokeQuery {
    /// Run this version instead of the latest.
    pub version: Option<u32>,
    /// Run the version this alias picks.
    pub alias: Option<String>,
    /// Answer 202 at once instead of waiting.
    #[serde(rename = "async")]
    pub asynchronous: Option<bool>,
    /// `high`, `normal` or `low`: capped at the function's.
    pub priority: Option<String>,
}

/// A priority as a caller named it (`?priority=`, the NATS header `Fnmesh-Priority`).
pub(crate) fn parse_priority(raw: Option<&str>) -> Result<Option<Priority>, ApiError> {
    raw.map(|p| {
        Priority::parse(p.trim()).map_err(|e| ApiError::InvalidQuery(format!("{e} (got {p:?})")))
    })
    .transpose()
}

/// Which version of a function an invocation runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Selector {
    /// The latest.
    #[default]
    Latest,
    /// This one.
    Version(u32),
    /// The one this alias picks (by its weights).
    Alias(AliasName),
}

impl Selector {
    /// From a version and an alias as the caller gave them: at most one of the two.
    pub(crate) fn parse(version: Option<u32>, alias: Option<&str>) -> Result<Self, ApiError> {
        match (version, alias) {
            (None, None) => Ok(Self::Latest),
            (Some(version), None) => Ok(Self::Version(version)),
            (None, Some(alias)) => Ok(Self::Alias(crate::functions::aliases::parse_alias(alias)?)),
            (Some(_), Some(_)) => Err(ApiError::InvalidQuery(
                "give a version or an alias, not both".into(),
            )),
        }
    }
}

/// Whether the caller waits for the outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait for the outcome, up to the function's timeout plus the sync grace.
    #[default]
    Sync,
    /// Answer as soon as the invocation is queued.
    Async,
}

/// How a caller asked for an invocation, beside the function and the payload.
#[derive(Debug, Clone, Default)]
pub(crate) struct Call {
    /// Which version runs.
    pub selector: Selector,
    /// Whether the caller waits.
    pub mode: Mode,
    /// The caller's idempotency key: a retry with it is the same invocation.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The priority the caller asked for (the function's when `None`; never above it).
    pub priority: Option<Priority>,
}

/// What an accepted invocation turned into.
#[derive(Debug)]
pub(crate) enum Invoked {
    /// Queued ([`Mode::Async`]); fetch it later by id.
    Queued(InvocationId),
    /// Finished ([`Mode::Sync`]), whatever the function did.
    Finished(Box<InvocationResult>),
}

/// What [`invoke`] answers.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The invocation.
    pub invoked: Invoked,
    /// Whether it is the invocation an earlier call with the same idempotency key made
    /// (nothing new ran).
    pub replayed: bool,
}

/// The HTTP header of a client's idempotency key.
pub(crate) const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The HTTP header set on an answer that is an earlier call's invocation.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The idempotency key of a request, if it has one: given once, printable ASCII, at most 255
/// bytes (`invalid_idempotency_key` otherwise).
pub(crate) fn idempotency_key<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "the Idempotency-Key header is given more than once".into(),
        ));
    }
    let key = std::str::from_utf8(value)
        .ok()
        .and_then(|v| IdempotencyKey::parse(v).ok())
        .ok_or_else(|| ApiError::InvalidIdempotencyKey(KeyError.to_string()))?;
    Ok(Some(key))
}

/// Handles the request.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invocations", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), InvokeQuery, ("Idempotency-Key" = Option<String>, Header, description = "≤ 255 printable ASCII: a retry within 24 h is the same invocation")), request_body(content = Object, description = "The JSON payload (the event)", content_type = "application/json"), responses((status = 200, description = "Sync: the finished record", body = fnmesh_core::InvocationResult), (status = 202, description = "Async: queued", body = crate::openapi::Accepted), (status = 413, description = "Payload over the cap", body = crate::openapi::ErrorBody), (status = 422, description = "Idempotency key reused with another payload or function", body = crate::openapi::ErrorBody), (status = 504, description = "Sync: still running when the wait ended", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    query: InvokeQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = parse_name(&raw_name)?;
    let call = Call {
        selector: Selector::parse(query.version, query.alias.as_deref())?,
        mode: if query.asynchronous.unwrap_or(false) {
            Mode::Async
        } else {
            Mode::Sync
        },
        idempotency_key: idempotency_key(
            headers
                .get_all(IDEMPOTENCY_KEY_HEADER)
                .iter()
                .map(|v| v.as_bytes()),
        )?,
        priority: parse_priority(query.priority.as_deref())?,
    };
    let accepted = invoke(&state, &principal, &name, &call, &body).await?;
    let mut response = match accepted.invoked {
        Invoked::Queued(id) => {
            let location = format!("/v1/invocations/{id}");
            let reply = warp::reply::with_status(
                warp::reply::json(&json!({ "id": id, "status": InvocationStatus::Queued })),
                StatusCode::ACCEPTED,
            );
            warp::reply::with_header(reply, LOCATION, location).into_response()
        }
        Invoked::Finished(result) => {
            let mut response = warp::reply::json(&result).into_response();
            crate::metrics::add_timing_headers(&mut response, &result);
            response
        }
    };
    if accepted.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Invokes `name` (the version `selector` picks) in the principal's namespace with the JSON
/// `payload`: the one path every front end (HTTP, NATS requests) goes through. Checks the
/// principal may invoke, the namespace's and the function's own rate limits; the caller has
/// authenticated the principal and counted the request against its key's limit.
pub(crate) async fn invoke(
    state: &State,
    principal: &Principal,
    name: &FunctionName,
    call: &Call,
    payload: &[u8],
) -> Result<Accepted, ApiError> {
    let mode = call.mode;
    principal.authorize_function(Action::Invoke, name)?;
    crate::ratelimit::check_namespace(state, &principal.namespace).await?;
    let payload = parse_payload(payload)?;
    let store = &state.backends.store;
    let (version, alias) = match &call.selector {
        Selector::Latest => (None, None),
        Selector::Version(version) => (Some(*version), None),
        Selector::Alias(alias) => {
            let version =
                crate::functions::aliases::resolve(state, &principal.namespace, name, alias)
                    .await?;
            (Some(version), Some(alias.clone()))
        }
    };
    let function = state
        .lookups
        .function(store.as_ref(), &principal.namespace, name, version)
        .await?
        .ok_or_else(|| match version {
            Some(v) => ApiError::NotFound(format!(
                "version {v} of function {:?} not found",
                name.as_str()
            )),
            None => ApiError::NotFound(format!("function {:?} not found", name.as_str())),
        })?;
    crate::ratelimit::check_function(state, &function).await?;
    // Nodes read code from the NATS replica: put it back if it went missing (cached, cheap).
    if let Err(e) = state
        .backends
        .code
        .ensure_replicated(&function.code.checksum)
        .await
    {
        tracing::warn!(code.checksum = %function.code.checksum, error = %e, "code could not be replicated for nodes");
    }
    // Sealed for this version and code: only the node that runs the invocation opens them.
    let stored = state
        .lookups
        .sealed_secrets(store.as_ref(), &principal.namespace, name)
        .await?;
    let secrets = state.invocation_secrets.for_invocation(
        state.config.secrets_keyring.as_deref(),
        &function,
        &stored,
    )?;
    // The namespace's credential for the image's registry, for a node that has to pull it.
    let registry_auth = crate::registries::for_invocation(state, &function).await?;
    // Edge-first: an edge with no live node for the runtime has its hub run it
    // (`crate::overflow`), decided once, here, and stored with the request.
    let forwarded_to = match state.catalog.overflow() {
        Some(overflow) => overflow
            .target(state.backends.registry.as_ref(), function.runtime.as_str())
            .await
            .map(|hub| hub.to_string()),
        None => None,
    };
    let priority = call
        .priority
        .unwrap_or(function.config.priority)
        .capped_at(function.config.priority);
    // Destinations are for async invocations (a sync caller has the outcome already): the
    // store keeps their deliveries with the `queued` record.
    let notify_destinations = mode == Mode::Async
        && function
            .config
            .destinations
            .as_ref()
            .is_some_and(|d| !d.is_empty());
    let id = InvocationId::new();
    // Commit + publish. The request carries this span's context (built here, never copied from
    // a client's header), so the node's spans join the trace; the function sees its trace id.
    let publish_span =
        tracing::info_span!("invocation.publish", invocation.id = %id, function.name = %name);
    let traceparent = fnmesh_core::trace::traceparent_of(&publish_span);
    let request = Arc::new(InvocationRequest {
        id,
        function,
        payload,
        created_at: Utc::now(),
        trace_id: traceparent.map(|tp| tp.trace_id_hex()),
        traceparent,
        secrets,
        registry_auth,
        forwarded_to,
        alias,
        priority,
        notify_destinations,
    });
    // A keyed invocation takes its key with its `queued` record, in one write; a key that is
    // taken already answers with the invocation it made.
    let committed = match &call.idempotency_key {
        None => false,
        Some(key) => {
            let fingerprint = idempotency::fingerprint(name, &request.payload);
            let expired_before = Utc::now() - IDEMPOTENCY_TTL;
            let keyed = store
                .insert_keyed_invocation(&request, key, &fingerprint, expired_before)
                .instrument(publish_span.clone())
                .await?;
            match keyed {
                Keyed::Inserted => true,
                Keyed::Existing {
                    invocation_id,
                    fingerprint: bound,
                } => {
                    if bound != fingerprint {
                        return Err(ApiError::IdempotencyKeyReused(format!(
                            "idempotency key {:?} was used for invocation {invocation_id} of \
                             another function or payload",
                            key.as_str()
                        )));
                    }
                    let wait = std::time::Duration::from_millis(request.function.config.timeout_ms)
                        + state.config.sync_grace;
                    let invoked =
                        replay(state, &principal.namespace, invocation_id, mode, wait).await?;
                    tracing::info!(invocation.id = %invocation_id, function.name = %name, "idempotency key replayed");
                    return Ok(Accepted {
                        invoked,
                        replayed: true,
                    });
                }
            }
        }
    };
    let dispatched = dispatch(state, request, mode, publish_span, committed).await?;
    let invoked = match dispatched {
        Dispatched::Queued(id) => {
            tracing::info!(invocation.id = %id, function.name = %name, mode = "async", "invocation queued");
            Invoked::Queued(id)
        }
        Dispatched::Finished(outcome) => {
            let result = Arc::try_unwrap(outcome)
                .map_or_else(|shared| shared.result.clone(), |outcome| outcome.result);
            Invoked::Finished(Box::new(result))
        }
    };
    Ok(Accepted {
        invoked,
        replayed: false,
    })
}

/// The invocation an idempotency key made, for a call with the same key: async, its id at
/// once; sync, its record once it has finished (read as a GET would: this gateway's outcome
/// not yet written, else the store), waiting up to `wait` as its first caller did, then 504
/// with its id.
async fn replay(
    state: &State,
    namespace: &Namespace,
    id: InvocationId,
    mode: Mode,
    wait: std::time::Duration,
) -> Result<Invoked, ApiError> {
    if mode == Mode::Async {
        return Ok(Invoked::Queued(id));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        if let Some(outcome) = state.writes.recent(namespace, &id) {
            return Ok(Invoked::Finished(Box::new(outcome.result.clone())));
        }
        match state.backends.store.get_invocation(namespace, &id).await? {
            Some(record) if record.status.is_terminal() => {
                return Ok(Invoked::Finished(Box::new(record)))
            }
            Some(_) => {}
            // Removed by retention meanwhile: the key is free again, but this call was made
            // with it in use.
            None => {
                return Err(ApiError::Conflict(format!(
                    "invocation {id} of this idempotency key is gone; retry"
                )))
            }
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(ApiError::GatewayTimeout { invocation_id: id });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}

/// What [`dispatch`] made of an invocation.
#[derive(Debug)]
pub(crate) enum Dispatched {
    /// Queued ([`Mode::Async`]).
    Queued(InvocationId),
    /// Finished ([`Mode::Sync`]), with its logs, written through.
    Finished(Arc<InvocationOutcome>),
}

/// Commits an accepted invocation (`queued`, with its request) and has it run: published to
/// this region's nodes, or forwarded to the hub when it was placed there
/// (`request.forwarded_to`, or when its function's lane here is full); for
/// [`Mode::Sync`] waits for the outcome and writes it through. `Conflict` if the id exists.
/// The commit and the publish run in `publish_span`.
pub(crate) async fn dispatch(
    state: &State,
    request: Arc<InvocationRequest>,
    mode: Mode,
    publish_span: tracing::Span,
    committed: bool,
) -> Result<Dispatched, ApiError> {
    let id = request.id;
    let timeout = std::time::Duration::from_millis(request.function.config.timeout_ms);
    // Stored before it runs: async work (a 202 promises it is durable), work placed in
    // another region (the hub's record is what makes a forward run once) and keyed work
    // (`committed`: its record was written with its key). A sync invocation run here is
    // stored once, finished (see the module doc).
    let stored = committed || mode == Mode::Async || request.forwarded_to.is_some();
    if stored && !committed {
        // Committed with the requests arriving meanwhile (group commit, `crate::writes`).
        state
            .writes
            .insert(request.clone())
            .instrument(publish_span.clone())
            .await?;
        crate::failpoint::hit(crate::failpoint::AFTER_COMMIT_BEFORE_PUBLISH);
    }
    let overflow = state.catalog.overflow();
    if let (Some(overflow), Some(_)) = (overflow, &request.forwarded_to) {
        return overflow.run(state, &request, mode).await;
    }
    let bus = &state.backends.bus;

    if mode == Mode::Async {
        match bus
            .publish_invocation(&request, None)
            .instrument(publish_span)
            .await
        {
            Ok(()) => {}
            // Committed as `queued` already: accepted. The reconciler publishes it (same id,
            // so a copy that did land is deduplicated) once the broker is back.
            Err(BusError::Unavailable(detail)) => {
                tracing::warn!(invocation.id = %id, error = %detail, "broker unavailable: invocation stored, published when it returns");
            }
            // The lane here is full: the hub runs it instead.
            Err(BusError::LaneFull(lane)) => {
                return match overflow {
                    Some(overflow) => overflow.take_over(state, &request, mode, lane, true).await,
                    None => Err(refused(state, &request, BusError::LaneFull(lane).into()).await),
                }
            }
            Err(e) => return Err(refused(state, &request, e.into()).await),
        }
        return Ok(Dispatched::Queued(id));
    }

    // Only a stored record is marked failed; otherwise the caller's error is all there is.
    let refuse = |error: ApiError| async {
        if stored {
            refused(state, &request, error).await
        } else {
            error
        }
    };
    let mut inbox = match bus.open_inbox().await {
        Ok(inbox) => inbox,
        Err(e) => return Err(refuse(e.into()).await),
    };
    let sent = match bus
        .send_sync(&request, &inbox.reply_to)
        .instrument(publish_span)
        .await
    {
        Ok(sent) => sent,
        // The lane here is full: the hub runs it instead (the caller waits either way).
        Err(BusError::LaneFull(lane)) => {
            return match overflow {
                Some(overflow) => {
                    overflow
                        .take_over(state, &request, mode, lane, stored)
                        .await
                }
                None => Err(refuse(BusError::LaneFull(lane).into()).await),
            }
        }
        Err(e) => return Err(refuse(e.into()).await),
    };
    tracing::debug!(invocation.id = %id, mode = "sync", sent = ?sent, "invocation sent");
    state.metrics.observe_sync_sent(match sent {
        Sent::Direct => "direct",
        Sent::Queued => "queued",
    });
    let wait = timeout + state.config.sync_grace;
    let deadline = tokio::time::Instant::now() + wait;
    let wait_span = tracing::info_span!("invocation.wait", invocation.id = %id);
    loop {
        let received = tokio::time::timeout_at(deadline, inbox.receiver.recv())
            .instrument(wait_span.clone())
            .await;
        match received {
            Ok(Some(outcome)) if outcome.result.id == id => {
                drop(wait_span);
                let outcome = Arc::new(outcome);
                // Answered before its write commits: see `crate::writes`.
                state
                    .writes
                    .outcome_behind(outcome.clone())
                    .instrument(tracing::info_span!("invocation.record", invocation.id = %id))
                    .await;
                return Ok(Dispatched::Finished(outcome));
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    invocation.id = %id,
                    other.id = %other.result.id,
                    "inbox received another invocation's outcome; ignored"
                );
            }
            Ok(None) => {
                if !stored {
                    store_unfinished(state, &request, sent).await;
                }
                return Err(ApiError::Unavailable(format!(
                    "the reply inbox closed before invocation {id} finished; fetch it later by id"
                )));
            }
            Err(_) => {
                tracing::info!(
                    invocation.id = %id,
                    wait_ms = wait.as_millis() as u64,
                    "sync invocation did not finish in time"
                );
                if !stored {
                    store_unfinished(state, &request, sent).await;
                }
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

/// Stores a sync invocation that was not stored before and whose caller stops waiting: its
/// caller is given the id to fetch later. `queued`; without a request when it was queued on
/// the bus (the queue holds it: the reconciler must not publish it again), with it when it was
/// sent straight to a node ([`Sent::Direct`]: nothing else holds it, and a lost node would
/// lose it, so the reconciler queues it again if no outcome comes — it may then run twice when
/// the node was only slow). An outcome the recorder stored meanwhile is kept (the store's
/// fence), and one that comes later applies over it.
async fn store_unfinished(state: &State, request: &Arc<InvocationRequest>, sent: Sent) {
    if sent == Sent::Direct {
        // A conflict is an outcome stored first: nothing to do.
        if let Err(e) = state.writes.insert(request.clone()).await {
            tracing::debug!(invocation.id = %request.id, error = %e, "storing an unfinished direct sync invocation: not stored");
        }
        return;
    }
    let placeholder = InvocationOutcome {
        result: InvocationResult::queued(request),
        logs: Default::default(),
    };
    if let Err(e) = state.writes.outcome(Arc::new(placeholder)).await {
        tracing::warn!(invocation.id = %request.id, error = %e, "storing an unfinished sync invocation failed; its outcome is stored when it comes");
    }
}

/// Marks an accepted invocation failed after the bus refused it, and returns the error to
/// answer with.
pub(crate) async fn refused(
    state: &State,
    request: &InvocationRequest,
    error: ApiError,
) -> ApiError {
    mark_refused(state.backends.store.as_ref(), request, &error).await;
    error
}

/// Marks an accepted invocation `failed` ("not run: `reason`") because it will not run.
pub(crate) async fn mark_refused(
    store: &dyn fnmesh_store::MetadataStore,
    request: &InvocationRequest,
    reason: &(dyn std::fmt::Display + Sync),
) {
    let mut record = InvocationResult::queued(request);
    record.status = InvocationStatus::Failed;
    record.error = Some(InvocationError {
        kind: ErrorKind::Crashed,
        message: format!("not run: {reason}"),
    });
    record.completed_at = Some(Utc::now());
    if let Err(e) = store.update_invocation(&record).await {
        tracing::error!(
            invocation.id = %request.id,
            error = %e,
            "marking a refused invocation failed did not work; its record stays queued"
        );
    }
    tracing::warn!(invocation.id = %request.id, reason = %reason, "an invocation was refused");
}
