//! Edge-first placement with overflow to the hub (issue #14, item 3).
//!
//! An edge gateway (`FNMESH_HUB_REGION`) runs what it accepts on its own region's nodes. When
//! its region has **no live node for the function's runtime** (the node registry, read at most
//! once per [`LIVE_NODES_TTL`]), it decides, before committing the invocation, to have the hub
//! run it: the request is stored with `forwarded_to = <hub>` (so every later publish of it goes
//! there too: the decision is made once) and sent, whole and under its own id, to the hub's
//! gateways on `fnmesh.v1.<hub>.fwd` (core NATS request/reply over the leaf link; only
//! gateways may publish or subscribe there). An invocation, sync or async, that its
//! function's **full lane** at the edge refuses goes the same way at once (its stored request
//! is replaced by one naming the hub): the bound on waiting at the edge is the lane's
//! capacity (`FNMESH_FUNCTION_QUEUE_CAPACITY` queued or running).
//!
//! A hub gateway ([`serve`]) checks that the function version exists there with the same id
//! and code, then dispatches the request like one of its own (commit, publish to its nodes,
//! for sync wait for the outcome) and answers with the outcome, or (async, or an id it already
//! has) with its current record and logs. The hub's store makes it run once: a second forward
//! of one id finds the record instead of inserting it. The edge writes a sync outcome through
//! as for its own nodes; an async one it fetches by forwarding the request again (answered
//! with the hub's record) with pauses growing from 100 ms to 5 s until it finished or its
//! timeout passed, and else when its reconciler forwards the still-queued request (after
//! `reconcile_after`, every `reconcile_interval`). With the link cut, a sync overflow answers 503 (nothing ran); an async one
//! is accepted (stored) and forwarded by the reconciler once the link is back: it runs at the
//! hub, once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_bus::registry::{NodeInfo, NodeRegistry, NodeState};
use fnmesh_core::invocation::{InvocationLogs, InvocationOutcome, InvocationResult};
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_core::InvocationRequest;
use fnmesh_store::{FinishedInvocation, MetadataStore};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::invocations::invoke::{dispatch, Dispatched, Mode};
use crate::state::State;

/// How long an edge reuses its list of live nodes.
pub(crate) const LIVE_NODES_TTL: Duration = Duration::from_secs(1);
/// How long an async forward waits for the hub to accept it.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);
/// Added to a sync forward's wait for the hops to the hub and back.
const HOP_MARGIN: Duration = Duration::from_secs(2);
/// Forwarded invocations a hub gateway handles at once (more wait in the subscription).
const MAX_IN_FLIGHT: usize = 1024;
/// Async overflowed invocations whose outcome an edge fetches at once (beyond: its
/// reconciler does, later).
const MAX_WATCHES: usize = 1024;
/// The longest pause between two fetches of a watched outcome.
const MAX_WATCH_PAUSE: Duration = Duration::from_secs(5);
/// The queue group of the hub's gateways.
const QUEUE_GROUP: &str = "fnmesh-gateways";

/// What an edge gateway sends its hub.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    /// The invocation, as the edge accepted and stored it.
    request: InvocationRequest,
    /// Whether the edge waits for the outcome.
    sync: bool,
}

/// What the hub answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Answer {
    /// A sync invocation finished (whatever the function did).
    Finished {
        /// Its outcome, with logs.
        outcome: Box<InvocationOutcome>,
    },
    /// Accepted (async), or already known: the hub's record now.
    Record {
        /// The record.
        record: Box<InvocationResult>,
        /// Its logs, once stored.
        logs: Option<InvocationLogs>,
    },
    /// Refused.
    Error {
        /// The error code (`not_found`, …).
        code: String,
        /// Why.
        message: String,
    },
}

/// The edge side: decides and forwards.
pub(crate) struct Overflow {
    client: async_nats::Client,
    hub: BusPrefix,
    live: tokio::sync::Mutex<Option<(Instant, Vec<NodeInfo>)>>,
    /// Async invocations whose outcome is being fetched from the hub.
    watches: Arc<tokio::sync::Semaphore>,
}

impl Overflow {
    /// Overflow to hub region `hub` over `client`.
    pub(crate) fn new(client: async_nats::Client, hub: BusPrefix) -> Self {
        Overflow {
            client,
            hub,
            live: tokio::sync::Mutex::new(None),
            watches: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHES)),
        }
    }

    /// The hub, when the region has no live node that runs `runtime` (a registry that cannot
    /// be read counts as nodes: the edge's own NATS is then down, and the hub out of reach).
    pub(crate) async fn target(
        &self,
        registry: &dyn NodeRegistry,
        runtime: &str,
    ) -> Option<&BusPrefix> {
        let mut live = self.live.lock().await;
        let fresh = live
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < LIVE_NODES_TTL);
        if !fresh {
            match registry.list().await {
                Ok(nodes) => *live = Some((Instant::now(), nodes)),
                Err(e) => {
                    tracing::debug!(error = %e, "node registry unreadable; not overflowing");
                    return None;
                }
            }
        }
        let nodes = live
            .as_ref()
            .map(|(_, nodes)| nodes.as_slice())
            .unwrap_or_default();
        let runs_it = nodes.iter().any(|n| {
            n.state == NodeState::Active
                && n.slots_total > 0
                && n.runtimes.iter().any(|r| r == runtime)
        });
        (!runs_it).then_some(&self.hub)
    }

    /// Sends `request` to the hub and waits up to `wait` for the answer.
    async fn send(
        &self,
        request: &InvocationRequest,
        sync: bool,
        wait: Duration,
    ) -> Result<Answer, ApiError> {
        let body = serde_json::to_vec(&Forward {
            request: request.clone(),
            sync,
        })
        .map_err(|e| ApiError::Internal(format!("encoding a forward: {e}")))?;
        let sent = self
            .client
            .send_request(
                subjects::forwards(&self.hub),
                async_nats::Request::new()
                    .payload(body.into())
                    .timeout(Some(wait)),
            )
            .await;
        let message = match sent {
            Ok(message) => message,
            Err(e) => {
                use async_nats::RequestErrorKind;
                return Err(match e.kind() {
                    RequestErrorKind::TimedOut => ApiError::GatewayTimeout {
                        invocation_id: request.id,
                    },
                    _ => ApiError::Unavailable(format!("overflow to hub region {}: {e}", self.hub)),
                });
            }
        };
        serde_json::from_slice(&message.payload)
            .map_err(|e| ApiError::Internal(format!("the hub's answer to a forward: {e}")))
    }

    /// Places an invocation that its function's full lane here refused at the hub: its
    /// stored request (`stored`; else a new record, as a sync invocation here has none yet) is
    /// one naming the hub (so the reconciler forwards it, never publishes it here), then it
    /// runs there. A request that cannot be placed is refused as the lane refused it.
    pub(crate) async fn take_over(
        self: &Arc<Self>,
        state: &State,
        request: &Arc<InvocationRequest>,
        mode: Mode,
        lane: fnmesh_bus::Lane,
        stored: bool,
    ) -> Result<Dispatched, ApiError> {
        let mut placed = InvocationRequest::clone(request);
        placed.forwarded_to = Some(self.hub.to_string());
        let placed = Arc::new(placed);
        let done = if stored {
            state.backends.store.replace_queued_request(&placed).await
        } else {
            state.writes.insert(placed.clone()).await.map(|()| true)
        };
        match done {
            Ok(true) => {
                tracing::debug!(invocation.id = %request.id, hub = %self.hub, "lane full: overflowing to the hub");
                return self.run(state, &placed, mode).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(invocation.id = %request.id, error = %e, "placing an invocation at the hub failed");
            }
        }
        let refusal = ApiError::LaneFull(lane);
        Err(if stored {
            crate::invocations::invoke::refused(state, request, refusal).await
        } else {
            refusal
        })
    }

    /// Runs a committed invocation at the hub; what the edge answers its caller.
    pub(crate) async fn run(
        self: &Arc<Self>,
        state: &State,
        request: &Arc<InvocationRequest>,
        mode: Mode,
    ) -> Result<Dispatched, ApiError> {
        let id = request.id;
        let sync = mode == Mode::Sync;
        let timeout = Duration::from_millis(request.function.config.timeout_ms);
        let wait = if sync {
            timeout + state.config.sync_grace + HOP_MARGIN
        } else {
            ACCEPT_WAIT
        };
        let span = tracing::info_span!("invocation.overflow", invocation.id = %id, hub = %self.hub);
        match self.send(request, sync, wait).instrument(span).await {
            Ok(Answer::Finished { outcome }) => {
                let outcome = Arc::new(*outcome);
                if let Err(e) = state.writes.outcome(outcome.clone()).await {
                    tracing::warn!(invocation.id = %id, error = %e, "writing an overflowed outcome failed; the reconciler fetches it again");
                }
                Ok(Dispatched::Finished(outcome))
            }
            Ok(Answer::Record { record, logs }) => {
                let finished = record.status.is_terminal();
                if finished {
                    import(state.backends.store.as_ref(), *record.clone(), logs.clone()).await;
                }
                match mode {
                    Mode::Async => {
                        if !finished {
                            self.watch(state.backends.store.clone(), request.clone());
                        }
                        Ok(Dispatched::Queued(id))
                    }
                    Mode::Sync if finished => {
                        Ok(Dispatched::Finished(Arc::new(InvocationOutcome {
                            result: *record,
                            logs: logs.unwrap_or_default(),
                        })))
                    }
                    Mode::Sync => Err(ApiError::GatewayTimeout { invocation_id: id }),
                }
            }
            Ok(Answer::Error { code, message }) => {
                let error = if code == "not_found" {
                    ApiError::NotFound(format!("at hub region {}: {message}", self.hub))
                } else {
                    ApiError::Unavailable(format!("hub region {} refused: {message}", self.hub))
                };
                Err(crate::invocations::invoke::refused(state, request, error).await)
            }
            // Nothing ran at the hub: a sync caller is told so; async work stays stored and
            // is forwarded again by the reconciler.
            Err(ApiError::Unavailable(detail)) if mode == Mode::Async => {
                tracing::warn!(invocation.id = %id, error = %detail, "hub unreachable: overflowed invocation stored, forwarded when the link returns");
                Ok(Dispatched::Queued(id))
            }
            Err(e @ ApiError::Unavailable(_)) => {
                Err(crate::invocations::invoke::refused(state, request, e).await)
            }
            // It may have run: the record stays queued, and the reconciler asks the hub again.
            Err(e) if mode == Mode::Async => {
                tracing::warn!(invocation.id = %id, error = %e, "forward not confirmed; the reconciler asks the hub again");
                Ok(Dispatched::Queued(id))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches the outcome of an async invocation the hub accepted, with growing pauses, until
    /// it finished or its timeout (plus a margin) passed; the reconciler covers the rest.
    fn watch(self: &Arc<Self>, store: Arc<dyn MetadataStore>, request: Arc<InvocationRequest>) {
        let Ok(permit) = self.watches.clone().try_acquire_owned() else {
            return;
        };
        let this = self.clone();
        let timeout = Duration::from_millis(request.function.config.timeout_ms);
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout + ACCEPT_WAIT * 2;
            let mut pause = Duration::from_millis(100);
            while Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                if this.refresh(store.as_ref(), &request).await == Some(true) {
                    break;
                }
                pause = (pause * 2).min(MAX_WATCH_PAUSE);
            }
            drop(permit);
        });
    }

    /// Forwards a stored request again (the hub runs it if it never got it) and stores the
    /// hub's record once it finished. `None` if the hub did not answer, else whether it
    /// finished (a refusal counts as finished: asking again changes nothing).
    pub(crate) async fn refresh(
        &self,
        store: &dyn MetadataStore,
        request: &InvocationRequest,
    ) -> Option<bool> {
        match self.send(request, false, ACCEPT_WAIT).await {
            Ok(Answer::Record { record, logs }) => {
                let finished = record.status.is_terminal();
                if finished {
                    import(store, *record, logs).await;
                }
                Some(finished)
            }
            Ok(Answer::Finished { outcome }) => {
                let outcome = *outcome;
                import(store, outcome.result, Some(outcome.logs)).await;
                Some(true)
            }
            Ok(Answer::Error { code, message }) => {
                tracing::warn!(invocation.id = %request.id, code, message, "the hub refused a forwarded invocation");
                let reason = format!("hub region {} refused it: {message}", self.hub);
                crate::invocations::invoke::mark_refused(store, request, &reason).await;
                Some(true)
            }
            Err(e) => {
                tracing::debug!(invocation.id = %request.id, error = %e, "forwarding again failed");
                None
            }
        }
    }
}

/// Stores a record the hub finished at the edge (fenced like a node's update).
async fn import(store: &dyn MetadataStore, record: InvocationResult, logs: Option<InvocationLogs>) {
    let id = record.id;
    let item = FinishedInvocation {
        record,
        updated_at: chrono::Utc::now(),
        logs,
        dead_letter: None,
    };
    if let Err(e) = store.import_finished(std::slice::from_ref(&item)).await {
        tracing::warn!(invocation.id = %id, error = %e, "storing the hub's record of an overflowed invocation failed");
    }
}

/// The hub side: serves forwarded invocations of region `region` until `stop`.
pub(crate) async fn serve(
    client: async_nats::Client,
    region: BusPrefix,
    state: State,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, crate::catalog::CatalogError> {
    let subject = subjects::forwards(&region);
    let mut requests = client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| crate::catalog::CatalogError::JetStream {
            what: format!("subscribing to {subject}"),
            detail: e.to_string(),
        })?;
    Ok(tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                next = requests.next() => match next {
                    Some(message) => message,
                    None => break,
                },
            };
            let Some(reply) = message
                .reply
                .clone()
                .filter(|r| subjects::is_reply_inbox(r))
            else {
                tracing::warn!("a forward without a reply inbox; dropped");
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (client, state, region) = (client.clone(), state.clone(), region.clone());
            tasks.spawn(async move {
                let answer = answer(&state, &region, &message.payload).await;
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = client.publish(reply, body.into()).await {
                    tracing::warn!(error = %e, "answering a forward failed");
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        let _ = requests.unsubscribe().await;
        while tasks.join_next().await.is_some() {}
    }))
}

/// Runs one forwarded invocation at the hub.
async fn answer(state: &State, region: &BusPrefix, payload: &[u8]) -> Answer {
    let refuse = |code: &str, message: String| Answer::Error {
        code: code.to_owned(),
        message,
    };
    let forward: Forward = match serde_json::from_slice(payload) {
        Ok(forward) => forward,
        Err(e) => return refuse("bad_request", format!("not a forwarded invocation: {e}")),
    };
    let mut request = forward.request;
    if request.forwarded_to.as_deref() != Some(region.as_str()) {
        return refuse("bad_request", format!("not forwarded to region {region}"));
    }
    // Run the hub's own copy of the version, which must be the one the edge accepted.
    let store = &state.backends.store;
    let at_hub = state
        .lookups
        .function(
            store.as_ref(),
            &request.function.namespace,
            &request.function.name,
            Some(request.function.version),
        )
        .await;
    match at_hub {
        Ok(Some(function))
            if function.id == request.function.id
                && function.code.checksum == request.function.code.checksum =>
        {
            request.function = function;
        }
        Ok(_) => {
            return refuse(
                "not_found",
                format!(
                    "version {} of function {:?} is not the hub's",
                    request.function.version,
                    request.function.name.as_str()
                ),
            )
        }
        Err(e) => return refuse("unavailable", e.to_string()),
    }
    let mode = if forward.sync {
        Mode::Sync
    } else {
        Mode::Async
    };
    // The accepting region sends the destinations, once its record has the outcome: the
    // hub keeps no deliveries of its own for it.
    request.notify_destinations = false;
    let (namespace, id) = (request.function.namespace.clone(), request.id);
    let request = Arc::new(request);
    let span = tracing::info_span!("invocation.publish", invocation.id = %id, forwarded = true);
    match dispatch(state, request.clone(), mode, span, false).await {
        Ok(Dispatched::Finished(outcome)) => Answer::Finished {
            outcome: Box::new(Arc::unwrap_or_clone(outcome)),
        },
        Ok(Dispatched::Queued(_)) => Answer::Record {
            record: Box::new(InvocationResult::queued(&request)),
            logs: None,
        },
        // Forwarded before: the hub's record as it is (a sync outcome still being written:
        // that outcome).
        Err(ApiError::Conflict(_)) => {
            if let Some(outcome) = state.writes.recent(&namespace, &id) {
                return Answer::Finished {
                    outcome: Box::new(InvocationOutcome::clone(&outcome)),
                };
            }
            let record = store.get_invocation(&namespace, &id).await;
            let logs = store.get_logs(&namespace, &id).await.ok().flatten();
            match record {
                Ok(Some(record)) => Answer::Record {
                    record: Box::new(record),
                    logs,
                },
                Ok(None) => refuse(
                    "conflict",
                    format!("invocation {id} is not in this namespace"),
                ),
                Err(e) => refuse("unavailable", e.to_string()),
            }
        }
        Err(e) => refuse(e.code(), e.to_string()),
    }
}
