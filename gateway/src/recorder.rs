//! The recorder: persists what nodes report.
//!
//! Two loops, both stopped by the shutdown token:
//! - node events, in batches (up to [`BATCH_MAX`] events: the first pulled, then whatever
//!   else arrives within [`BATCH_GATHER`]): `Started` marks records `running` (attempt, node,
//!   start time) and `Retrying` marks them `queued` again with the failed attempt's error,
//!   with one batched update; `Finished` writes the final records with one
//!   batched update and their logs with one batched write. Then each event is acked, or
//!   nak'ed on a store error so it comes back. The store fences stale updates, so replays are
//!   harmless.
//! - dead letters: an invocation whose attempts ran out is stored as a dead letter (payload,
//!   attempts, last error) and its record becomes `dead_lettered`.
//!
//! Bus errors back off exponentially (100 ms to 5 s). Recorded results and dead letters are
//! counted in the gateway's metrics ([`crate::metrics`]) when it has them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fnmesh_shared::bus::{Acker, Bus, DeadLetter, EventDelivery};
use fnmesh_shared::store::{MetadataStore, StoreError};
use fnmesh_shared::{
    DeadLetterRecord, InvocationId, InvocationLogs, InvocationOutcome, InvocationResult,
    InvocationStatus, NodeEvent,
};
use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;

use crate::metrics::GatewayMetrics;

/// How long the final drain on shutdown may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pull waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Node events recorded together at most.
pub const BATCH_MAX: usize = 256;
/// After the first event of a batch, how long the batch takes in events already arriving.
pub const BATCH_GATHER: Duration = Duration::from_millis(5);
/// Concurrent record reads while preparing a batch.
const READ_CONCURRENCY: usize = 16;
/// Delay before a nak'ed event comes back.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// Tries to record one dead letter (they cannot be redelivered).
const DEAD_LETTER_TRIES: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Persists node events and dead letters.
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn MetadataStore>,
    bus: Arc<dyn Bus>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl Recorder {
    /// A recorder over these backends.
    pub fn new(store: Arc<dyn MetadataStore>, bus: Arc<dyn Bus>) -> Self {
        Self {
            store,
            bus,
            metrics: None,
        }
    }

    /// Counts what it records in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs both loops until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.clone().run_events(shutdown.clone()),
            self.run_dead_letters(shutdown)
        );
        tracing::debug!("recorder stopped");
    }

    async fn run_events(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return self.drain_events().await,
                pulled = self.bus.pull_event(PULL_WAIT) => pulled,
            };
            match pulled {
                Ok(Some(delivery)) => {
                    backoff = BACKOFF_MIN;
                    let batch = self.gather(delivery).await;
                    self.handle_events(batch).await;
                }
                Ok(None) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "pulling node events failed");
                    if !sleep(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// On shutdown: records the events already waiting (those of invocations the node finished
    /// while draining), bounded by [`DRAIN_TIMEOUT`], so they are not left `running`.
    async fn drain_events(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            match self.bus.pull_event(Duration::ZERO).await {
                Ok(Some(delivery)) => {
                    let batch = self.gather(delivery).await;
                    self.handle_events(batch).await;
                }
                Ok(None) | Err(_) => return,
            }
        }
        tracing::warn!("recorder drain timed out; unrecorded events stay on the bus");
    }

    /// `first`, plus the events that arrive within [`BATCH_GATHER`], up to [`BATCH_MAX`].
    async fn gather(&self, first: EventDelivery) -> Vec<EventDelivery> {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_GATHER;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.bus.pull_event(left).await {
                Ok(Some(delivery)) => batch.push(delivery),
                Ok(None) => break,
                Err(e) => {
                    // The main loop's next pull reports and backs off if it persists.
                    tracing::debug!(error = %e, "pulling more node events for a batch failed");
                    break;
                }
            }
        }
        batch
    }

    /// Records a batch of events (`Started` ones, then `Finished` ones, each kind with one
    /// batched update), then settles each event.
    async fn handle_events(&self, batch: Vec<EventDelivery>) {
        let (events, ackers): (Vec<NodeEvent>, Vec<Box<dyn Acker>>) =
            batch.into_iter().map(|d| (d.event, d.acker)).unzip();
        let store = self.store.as_ref();
        let mut settled = record_starts(store, &events).await;
        let mut finished_at = Vec::new();
        let mut outcomes = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            if let NodeEvent::Finished(outcome) = event {
                finished_at.push(i);
                outcomes.push(*outcome);
            }
        }
        if !outcomes.is_empty() {
            match record_outcomes(store, &outcomes).await {
                Ok(()) => {
                    if let Some(metrics) = &self.metrics {
                        for outcome in &outcomes {
                            metrics.observe_result(&outcome.result);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, batch.size = outcomes.len(), "recording finished invocations failed; they will be redelivered");
                    for i in finished_at {
                        settled[i] = false;
                    }
                }
            }
        }

        let settles = ackers.iter().zip(&settled).map(|(acker, &done)| {
            if done {
                acker.ack()
            } else {
                acker.nak(Some(NAK_DELAY))
            }
        });
        for result in futures::future::join_all(settles).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "settling a node event failed");
            }
        }
    }

    async fn run_dead_letters(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return,
                pulled = self.bus.pull_dead_letter(PULL_WAIT) => pulled,
            };
            match pulled {
                Ok(Some(dead)) => {
                    backoff = BACKOFF_MIN;
                    self.handle_dead_letter(&dead, &shutdown).await;
                }
                Ok(None) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "pulling dead letters failed");
                    if !sleep(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn handle_dead_letter(&self, dead: &DeadLetter, shutdown: &CancellationToken) {
        let id = dead.request.id;
        let mut backoff = BACKOFF_MIN;
        for attempt in 1..=DEAD_LETTER_TRIES {
            match record_dead_letter(self.store.as_ref(), dead).await {
                Ok(()) => {
                    tracing::warn!(invocation.id = %id, attempts = dead.attempts, "invocation dead-lettered");
                    if let Some(metrics) = &self.metrics {
                        metrics.observe_dead_letter(dead.request.function.name.as_str());
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(invocation.id = %id, error = %e, try_number = attempt, "recording a dead letter failed");
                    if !sleep(shutdown, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::error!(invocation.id = %id, "giving up on recording a dead letter; its record is stale");
    }
}

/// Marks records `running` for `Started` events (other events are ignored), with one batched
/// update. Returns, per event, whether it is settled (`false`: a store error, redeliver it).
/// Events of unknown invocations are dropped (settled) with a warning.
pub async fn record_starts(store: &dyn MetadataStore, events: &[NodeEvent]) -> Vec<bool> {
    // At most READ_CONCURRENCY reads at a time. (Boxed futures collected before the await:
    // a lazy stream adaptor here would make the recorder task's future not `Send`.)
    let mut reads = Vec::with_capacity(events.len());
    for chunk in events.chunks(READ_CONCURRENCY) {
        let pending: Vec<BoxFuture<'_, _>> = chunk
            .iter()
            .map(|event| read_start(store, event).boxed())
            .collect();
        reads.extend(futures::future::join_all(pending).await);
    }

    let mut settled = vec![true; events.len()];
    let mut updates = Vec::new();
    let mut update_of = Vec::new();
    for (i, read) in reads.into_iter().enumerate() {
        match read {
            Ok(Some(record)) => {
                updates.push(record);
                update_of.push(i);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading a started invocation failed; it will be redelivered");
                settled[i] = false;
            }
        }
    }
    if !updates.is_empty() {
        // Fenced: a start that lost to a later or finished attempt is simply not applied.
        if let Err(e) = store.update_invocations(&updates).await {
            tracing::warn!(error = %e, batch.size = updates.len(), "recording started invocations failed; they will be redelivered");
            for i in update_of {
                settled[i] = false;
            }
        }
    }
    settled
}

/// The record update for a `Started` event (`running`, with attempt, node and start time) or
/// a `Retrying` one (`queued` again, with the failed attempt's error kept as the last error);
/// `None` if the invocation is unknown (warned) or the event is neither.
async fn read_start(
    store: &dyn MetadataStore,
    event: &NodeEvent,
) -> Result<Option<InvocationResult>, StoreError> {
    let (namespace, id) = match event {
        NodeEvent::Started { namespace, id, .. } | NodeEvent::Retrying { namespace, id, .. } => {
            (namespace, id)
        }
        NodeEvent::Finished(_) => return Ok(None),
    };
    let Some(mut record) = store.get_invocation(namespace, id).await? else {
        tracing::warn!(invocation.id = %id, "event for an unknown invocation; dropped");
        return Ok(None);
    };
    match event {
        NodeEvent::Started {
            attempt,
            node_id,
            started_at,
            ..
        } => {
            record.status = InvocationStatus::Running;
            record.attempt = *attempt;
            record.node_id = Some(node_id.clone());
            record.started_at = Some(*started_at);
        }
        NodeEvent::Retrying {
            attempt,
            node_id,
            error,
            ..
        } => {
            record.status = InvocationStatus::Queued;
            record.attempt = *attempt;
            record.node_id = Some(node_id.clone());
            record.error = Some(error.clone());
        }
        NodeEvent::Finished(_) => return Ok(None),
    }
    Ok(Some(record))
}

/// Writes final records with one batched update and, for each one that is (now) the stored
/// result, its logs with one batched write. Outcomes of unknown invocations are dropped with a
/// warning. An error means none is known to be fully recorded: redeliver them all (replays
/// are fenced, and re-write the logs of an applied outcome).
pub async fn record_outcomes(
    store: &dyn MetadataStore,
    outcomes: &[InvocationOutcome],
) -> Result<(), StoreError> {
    let results: Vec<InvocationResult> = outcomes.iter().map(|o| o.result.clone()).collect();
    let applied = store.update_invocations(&results).await?;
    let mut logs: Vec<(InvocationId, InvocationLogs)> = Vec::with_capacity(outcomes.len());
    for (outcome, applied) in outcomes.iter().zip(applied) {
        let result = &outcome.result;
        let current = if applied {
            true
        } else {
            // Replays of the applied outcome still (re)write its logs; stale attempts do not.
            match store.get_invocation(&result.namespace, &result.id).await? {
                Some(r) => r.attempt == result.attempt && r.status == result.status,
                None => {
                    tracing::warn!(invocation.id = %result.id, "outcome of an unknown invocation; dropped");
                    false
                }
            }
        };
        if current {
            logs.push((result.id, outcome.logs.clone()));
        }
    }
    if !logs.is_empty() {
        store.put_logs_batch(&logs).await?;
    }
    Ok(())
}

/// Dead-letters an invocation whose attempts ran out: stores its [`DeadLetterRecord`] (the
/// request with its payload, the attempts made, and as last error the one the last `Retrying`
/// event left on the record) and marks the record `dead_lettered`, in one store transaction.
/// A terminal result that raced in is kept (then nothing is stored); an absent record is
/// inserted, so a dead letter is never lost. Idempotent.
pub async fn record_dead_letter(
    store: &dyn MetadataStore,
    dead: &DeadLetter,
) -> Result<(), StoreError> {
    let request = &dead.request;
    let current = store
        .get_invocation(&request.function.namespace, &request.id)
        .await?;
    let record = DeadLetterRecord {
        id: request.id,
        namespace: request.function.namespace.clone(),
        function: request.function.name.clone(),
        version: request.function.version,
        attempts: dead.attempts,
        last_error: current.and_then(|r| r.error),
        request: request.clone(),
        dead_lettered_at: Utc::now(),
    };
    if !store.put_dead_letter(&record).await? {
        tracing::debug!(invocation.id = %request.id, "dead letter of a finished invocation; its result is kept");
    }
    Ok(())
}

/// Sleeps unless shut down first; `false` when shut down.
async fn sleep(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
