//! The recorder: persists what nodes report.
//!
//! Two loops, both stopped by the shutdown token:
//! - node events, in batches (one pull: the first event, and every other one ready by then,
//!   up to [`BATCH_MAX`]; so batches grow with the backlog, and a lone event is not held
//!   back), recorded by [`record_events`] with a fixed number of store calls per batch (reads
//!   first, then one write transaction of what changes something). Then each event is acked, or nak'ed
//!   on a store error so it comes back. The store fences stale updates, so replays are
//!   harmless.
//! - dead letters: an invocation whose attempts ran out is stored as a dead letter (payload,
//!   attempts, last error) and its record becomes `dead_lettered`.
//!
//! Bus errors back off exponentially (100 ms to 5 s). Recorded results and dead letters are
//! counted in the gateway's metrics ([`crate::metrics`]) when it has them.

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fnmesh_bus::{Acker, Bus, DeadLetter, EventDelivery};
use fnmesh_core::{
    DeadLetterRecord, InvocationId, InvocationLogs, InvocationResult, InvocationStatus, Namespace,
    NodeEvent,
};
use fnmesh_store::{MetadataStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::metrics::GatewayMetrics;

/// How long the final drain on shutdown may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pull waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Node events recorded together at most.
pub const BATCH_MAX: usize = 256;
/// Delay before a nak'ed event comes back.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// Tries to record one dead letter (they cannot be redelivered).
const DEAD_LETTER_TRIES: usize = 5;
/// Pauses after a failed pull or write: 100 ms, doubled per failure, at most 5 s.
const BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(BACKOFF_MAX)
    .without_max_times();
/// The longest pause (also what is used should the schedule ever run out: it has no maximum
/// of tries, so it does not).
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Persists node events and dead letters.
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn MetadataStore>,
    bus: Arc<dyn Bus>,
    metrics: Option<Arc<GatewayMetrics>>,
    writes: Option<crate::writes::Writes>,
}

impl Recorder {
    /// A recorder over these backends.
    pub fn new(store: Arc<dyn MetadataStore>, bus: Arc<dyn Bus>) -> Self {
        Self {
            store,
            bus,
            metrics: None,
            writes: None,
        }
    }

    /// Lets the sync outcomes that this gateway's writer is about to commit commit first, so
    /// their `Finished` events find them stored instead of writing them a second time.
    pub(crate) fn with_writes(mut self, writes: crate::writes::Writes) -> Self {
        self.writes = Some(writes);
        self
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
        let mut backoff = BACKOFF.build();
        loop {
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return self.drain_events().await,
                pulled = self.bus.pull_events(BATCH_MAX, PULL_WAIT) => pulled,
            };
            match pulled {
                Ok(batch) => {
                    backoff = BACKOFF.build();
                    if !batch.is_empty() {
                        self.handle_events(batch).await;
                    }
                }
                Err(e) => {
                    let pause = backoff.next().unwrap_or(BACKOFF_MAX);
                    tracing::warn!(error = %e, backoff_ms = pause.as_millis() as u64, "pulling node events failed");
                    if !sleep(&shutdown, pause).await {
                        return;
                    }
                }
            }
        }
    }

    /// On shutdown: records the events already waiting (those of invocations the node finished
    /// while draining), bounded by [`DRAIN_TIMEOUT`], so they are not left `running`.
    async fn drain_events(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            match self.bus.pull_events(BATCH_MAX, Duration::ZERO).await {
                Ok(batch) if !batch.is_empty() => self.handle_events(batch).await,
                Ok(_) | Err(_) => return,
            }
        }
        tracing::warn!("recorder drain timed out; unrecorded events stay on the bus");
    }

    /// Records a batch of events ([`record_events`]), then settles each event.
    async fn handle_events(&self, batch: Vec<EventDelivery>) {
        let (events, ackers): (Vec<NodeEvent>, Vec<Box<dyn Acker>>) =
            batch.into_iter().map(|d| (d.event, d.acker)).unzip();
        if let Some(writes) = &self.writes {
            let ids: Vec<_> = events
                .iter()
                .filter(|e| matches!(e, NodeEvent::Finished(_)))
                .map(NodeEvent::invocation_id)
                .collect();
            writes.settled(&ids).await;
        }
        let (settled, writes) = record_counted(self.store.as_ref(), &events).await;
        if let Some(metrics) = &self.metrics {
            metrics.observe_recorder_writes(writes.transactions, writes.rows);
            for (event, &done) in events.iter().zip(&settled) {
                if let (NodeEvent::Finished(outcome), true) = (event, done) {
                    metrics.observe_result(&outcome.result);
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
        let mut backoff = BACKOFF.build();
        loop {
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return,
                pulled = self.bus.pull_dead_letter(PULL_WAIT) => pulled,
            };
            match pulled {
                Ok(Some(dead)) => {
                    backoff = BACKOFF.build();
                    self.handle_dead_letter(&dead, &shutdown).await;
                }
                Ok(None) => backoff = BACKOFF.build(),
                Err(e) => {
                    let pause = backoff.next().unwrap_or(BACKOFF_MAX);
                    tracing::warn!(error = %e, backoff_ms = pause.as_millis() as u64, "pulling dead letters failed");
                    if !sleep(&shutdown, pause).await {
                        return;
                    }
                }
            }
        }
    }

    async fn handle_dead_letter(&self, dead: &DeadLetter, shutdown: &CancellationToken) {
        let id = dead.request.id;
        // A pause cut short by shutdown ends the retries (`when`), not a write in progress.
        let recorded = (|| record_dead_letter(self.store.as_ref(), dead))
            .retry(BACKOFF.with_max_times(DEAD_LETTER_TRIES - 1))
            .sleep({
                let shutdown = shutdown.clone();
                move |pause| {
                    let shutdown = shutdown.clone();
                    async move {
                        sleep(&shutdown, pause).await;
                    }
                }
            })
            .when(|_| !shutdown.is_cancelled())
            .notify(|e, pause| {
                tracing::warn!(invocation.id = %id, error = %e, backoff_ms = pause.as_millis() as u64, "recording a dead letter failed");
            })
            .await;
        match recorded {
            Ok(()) => {
                tracing::warn!(invocation.id = %id, attempts = dead.attempts, "invocation dead-lettered");
                if let Some(metrics) = &self.metrics {
                    metrics.observe_dead_letter(dead.request.function.name.as_str());
                }
            }
            Err(e) => {
                tracing::error!(invocation.id = %id, error = %e, "giving up on recording a dead letter; its record is stale");
            }
        }
    }
}

/// Records a batch of node events. Returns, per event, whether it is settled (`false`: a
/// store error, redeliver it). The outcome of an unknown invocation is stored (a sync one
/// whose gateway did not); other events of unknown invocations are dropped (settled): a sync
/// invocation has no record while it runs.
///
/// The store's fencing decides, but the recorder reads every record the batch touches first
/// (one `get_invocations`) and writes only what would change something, all in one
/// transaction ([`fnmesh_store::InvocationStore::write_invocations`], in event order):
/// - `Started` marks a record `running` (attempt, node, start time), `Retrying` marks it
///   `queued` again with the failed attempt's error;
/// - `Finished` writes the final record with its logs (stored only if the record applies), so
///   a finished record is never read without its logs;
/// - an outcome whose record already holds it (a replay, or one the sync handler wrote itself)
///   gets only its logs, if they are missing: a read, and no write when they are there.
pub async fn record_events(store: &dyn MetadataStore, events: &[NodeEvent]) -> Vec<bool> {
    record_counted(store, events).await.0
}

/// The store writes one batch of events took.
#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    /// Write transactions.
    transactions: usize,
    /// Records and logs rows sent.
    rows: usize,
}

/// [`record_events`], and the writes it took.
async fn record_counted(store: &dyn MetadataStore, events: &[NodeEvent]) -> (Vec<bool>, Writes) {
    let mut settled = vec![true; events.len()];
    let mut writes = Writes::default();
    if events.is_empty() {
        return (settled, writes);
    }
    let keys: Vec<(Namespace, InvocationId)> = events
        .iter()
        .map(|e| (e.namespace().clone(), e.invocation_id()))
        .collect();
    let mut current: HashMap<InvocationId, InvocationResult> = match store
        .get_invocations(&keys)
        .await
    {
        Ok(records) => records.into_iter().flatten().map(|r| (r.id, r)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, batch.size = events.len(), "reading the records of node events failed; they will be redelivered");
            return (vec![false; events.len()], writes);
        }
    };

    // What to write, in event order; `current` follows as if each write applies (the store's
    // fence has the last word).
    let mut updates: Vec<(InvocationResult, Option<&InvocationLogs>)> = Vec::new();
    let mut update_of = Vec::new();
    // Outcomes whose record holds this very result: their logs are written if missing.
    let mut held = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let Some(record) = current.get(&event.invocation_id()) else {
            if let NodeEvent::Finished(outcome) = event {
                // A sync invocation is stored once finished, by the gateway its caller waits
                // on; if that gateway did not (it stopped meanwhile, or has yet to), its
                // outcome is stored from here (the store inserts it; a record of this id in
                // another namespace makes that insert a no-op).
                let update = outcome.result.clone();
                current.insert(update.id, update.clone());
                updates.push((update, Some(&outcome.logs)));
                update_of.push(i);
                continue;
            }
            // Normal for a running sync invocation (stored once finished).
            tracing::debug!(invocation.id = %event.invocation_id(), "event for an unknown invocation; dropped");
            continue;
        };
        let update = match event {
            NodeEvent::Started { .. } => started_record(record.clone(), event),
            NodeEvent::Retrying {
                node_id, attempt, ..
            } => {
                if held_by_another(record, node_id, *attempt) {
                    continue;
                }
                started_record(record.clone(), event)
            }
            NodeEvent::Finished(outcome) => {
                let result = &outcome.result;
                // An outcome that names no node is a gateway's own (only gateway keys may sign
                // such reports: see `fnmesh_bus::jetstream`).
                if result
                    .node_id
                    .as_deref()
                    .is_some_and(|node| held_by_another(record, node, result.attempt))
                {
                    continue;
                }
                if !would_apply(record, result) {
                    if holds(record, result) {
                        held.push(i);
                    }
                    // Otherwise a stale attempt: neither its record nor its logs.
                    continue;
                }
                result.clone()
            }
        };
        if !would_apply(record, &update) {
            continue;
        }
        let logs = match event {
            NodeEvent::Finished(outcome) => Some(&outcome.logs),
            _ => None,
        };
        current.insert(update.id, update.clone());
        updates.push((update, logs));
        update_of.push(i);
    }
    if !updates.is_empty() {
        let batch: Vec<(&InvocationResult, Option<&InvocationLogs>)> = updates
            .iter()
            .map(|(record, logs)| (record, *logs))
            .collect();
        writes.transactions += 1;
        writes.rows += batch.len();
        match store.write_invocations(&[], &batch).await {
            Ok(written) => {
                let fenced = written.applied.iter().filter(|applied| !**applied).count();
                if fenced > 0 {
                    // Fenced off by a write since the read: a replay of the same attempt, or
                    // rarely a later attempt's result, whose writer writes its own logs too.
                    tracing::debug!(
                        batch.fenced = fenced,
                        "node events fenced off by a concurrent write"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch.size = update_of.len(), "recording node events failed; they will be redelivered");
                for &i in &update_of {
                    settled[i] = false;
                }
            }
        }
    }
    // Outcomes already stored (by the sync handler, or a replay): only their missing logs.
    if !held.is_empty() {
        let held_keys: Vec<_> = held.iter().filter_map(|&i| keys.get(i).cloned()).collect();
        let missing = match store.logs_stored(&held_keys).await {
            Ok(stored) => held
                .iter()
                .zip(stored)
                .filter(|(_, stored)| !stored)
                .map(|(&i, _)| i)
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "checking stored logs failed; the outcomes will be redelivered");
                for &i in &held {
                    settled[i] = false;
                }
                Vec::new()
            }
        };
        if !missing.is_empty() {
            writes.transactions += 1;
            writes.rows += missing.len();
            if let Err(e) = store.put_logs_batch(&logs_of(events, &missing)).await {
                tracing::warn!(error = %e, batch.size = missing.len(), "recording logs failed; the outcomes will be redelivered");
                for i in missing {
                    settled[i] = false;
                }
            }
        }
    }
    (settled, writes)
}

/// The logs of the `Finished` events at `indices`.
fn logs_of(events: &[NodeEvent], indices: &[usize]) -> Vec<(InvocationId, InvocationLogs)> {
    indices
        .iter()
        .filter_map(|&i| match events.get(i) {
            Some(NodeEvent::Finished(outcome)) => Some((outcome.result.id, outcome.logs.clone())),
            _ => None,
        })
        .collect()
}

/// Whether the store's fencing would apply `update` over `stored` (see
/// [`fnmesh_store::InvocationStore::update_invocation`]): over a `cancelled` record only the
/// node's `cancelled` report of the same or a higher attempt; over another terminal record only
/// a higher attempt; over the rest, the same or a higher attempt, or a lower one that brings a
/// terminal result. The store decides; this only spares writes that would change nothing.
fn would_apply(stored: &InvocationResult, update: &InvocationResult) -> bool {
    if stored.status == InvocationStatus::Cancelled {
        update.status == InvocationStatus::Cancelled && update.attempt >= stored.attempt
    } else if stored.status.is_terminal() {
        update.attempt > stored.attempt
    } else {
        update.attempt >= stored.attempt || update.status.is_terminal()
    }
}

/// Whether `record` is running attempt `attempt` on a node other than `node_id`: then only
/// that node reports how the attempt ended (the bus checked that the reporter holds or held the
/// invocation; this keeps a node that held an earlier attempt from ending a later one).
fn held_by_another(record: &InvocationResult, node_id: &str, attempt: u32) -> bool {
    let other = record.status == InvocationStatus::Running
        && record.attempt == attempt
        && record.node_id.as_deref().is_some_and(|n| n != node_id);
    if other {
        tracing::warn!(
            invocation.id = %record.id,
            attempt,
            node.id = node_id,
            running_on = record.node_id.as_deref().unwrap_or(""),
            "report on an attempt another node runs; dropped"
        );
    }
    other
}

/// Whether `stored` is the record `result` left (same attempt, same status).
fn holds(stored: &InvocationResult, result: &InvocationResult) -> bool {
    stored.attempt == result.attempt && stored.status == result.status
}

/// `record` as a `Started` event leaves it (`running`, with attempt, node and start time) or a
/// `Retrying` one (`queued` again, with the failed attempt's error kept as the last error).
fn started_record(mut record: InvocationResult, event: &NodeEvent) -> InvocationResult {
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
        NodeEvent::Finished(_) => {}
    }
    record
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
