//! The node's work loop: pull invocations only for free slots (as many as are free, in one
//! pull), run each in the executor, send the outcome to the sync caller's inbox and to the
//! recorders, then ack.
//!
//! Ordering per delivery: execute (with `in_progress` heartbeats so a long invocation is not
//! redelivered; a `Started` event once it has run for [`STARTED_AFTER`]) → reply (sync calls)
//! → `Finished` event (durable) → ack. A sync reply asks its gateway for a receipt once it has
//! stored the outcome ([`fnmesh_bus::Receipt`]); with one in [`RECEIPT_WAIT`] the `Finished`
//! event is not needed and is not published (the event, its PubAck, the recorder's delivery,
//! read and ack: four NATS messages, a JetStream write and a store read fewer per sync
//! invocation). A sync delivery with work of its function waiting behind it
//! ([`fnmesh_bus::Acker::holds_back_work`]) is acked right after its reply instead: until
//! settled it holds a place under the function's `max_concurrency`, which the receipt's few
//! milliseconds would keep from the waiting work; the receipt or the event still records it.
//!
//! `Started` only marks a record `running` (the `Finished` outcome carries the start time), so
//! an invocation that finishes sooner does without it: four NATS messages, a JetStream write
//! and a recorder update fewer per invocation, where most take a millisecond. The recorder's
//! fence against an outcome of attempt *n* named by a node other than the one running it
//! (`held_by_another`) then acts only from that point; it never closed the race of a node
//! that held attempt *n − 1* and reports *n* before the runner's `Started` is recorded.
//! If the `Finished` event cannot be published (the event stream is full or unreachable) it is
//! retried with backoff, the delivery kept alive, until it is published or the node shuts
//! down (then the delivery is redelivered after its ack wait): a result is never dropped, and
//! work that ran is not run again just because its result could not be reported yet.
//! The slot of a sync invocation is freed once its caller has the reply, while its result is
//! reported, unless `slots` results are being reported already (then it stays taken, as above).

use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fnmesh_bus::{Acker, Bus, Delivery, Receipt, ReplyTo};
use fnmesh_core::{
    ErrorKind, Execution, FunctionConfig, InvocationError, InvocationOutcome, InvocationRequest,
    InvocationResult, InvocationStatus, NodeEvent,
};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::cancel::Cancellations;
use crate::code_cache::CodeCache;
use crate::executor::{Executor, Job};
use crate::metrics::NodeMetrics;

/// How long an attempt runs before its `Started` event is published.
pub const STARTED_AFTER: Duration = Duration::from_millis(20);

/// Settings of the work loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This node's id (reported on every result).
    pub node_id: String,
    /// Invocations run at once on this node.
    pub slots: usize,
    /// How long one pull waits for work before checking for shutdown.
    pub pull_wait: Duration,
    /// Interval of `in_progress` heartbeats while an invocation runs.
    pub progress_interval: Duration,
    /// How long shutdown waits for in-flight invocations.
    pub drain_timeout: Duration,
    /// Backoff before the second attempt of a failed async invocation (doubled per attempt).
    pub retry_backoff: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node_id: "node".into(),
            slots: 16,
            pull_wait: Duration::from_millis(500),
            progress_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_secs(1),
        }
    }
}

/// The pieces a worker drives.
pub struct Worker {
    config: WorkerConfig,
    bus: Arc<dyn Bus>,
    code: Arc<CodeCache>,
    executor: Arc<Executor>,
    /// Invocations being handled right now (the node registry reports free slots from it).
    busy: Arc<AtomicUsize>,
    /// Counts what ran, when the node exports metrics.
    metrics: Option<Arc<NodeMetrics>>,
    /// Results of answered sync invocations being reported after their slot was freed, at
    /// most `slots` at once.
    reporting: Arc<Semaphore>,
    /// Cancellations heard from the bus: what is running here to stop, what not to start.
    cancellations: Arc<Cancellations>,
}

/// A read-only view of a worker's load, for the node registry's heartbeats.
#[derive(Debug, Clone)]
pub struct WorkerLoad {
    slots: usize,
    busy: Arc<AtomicUsize>,
}

impl WorkerLoad {
    /// Invocations the worker runs at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots not running an invocation right now.
    pub fn free_slots(&self) -> usize {
        self.slots.saturating_sub(self.busy.load(Ordering::Relaxed))
    }
}

/// What one handled delivery holds: its slot (and busy count) until it is settled, or, for a
/// sync invocation whose caller was answered, a place among the results being reported.
struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    busy: Option<BusyGuard>,
    reporting: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Counts one handled invocation as busy until dropped (also if its task panics).
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn enter(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(busy.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// A worker over `bus`, fetching code through `code` and running it in `executor`.
    pub fn new(
        config: WorkerConfig,
        bus: Arc<dyn Bus>,
        code: Arc<CodeCache>,
        executor: Arc<Executor>,
    ) -> Self {
        let reporting = Arc::new(Semaphore::new(config.slots.max(1)));
        Self {
            config,
            bus,
            code,
            executor,
            busy: Arc::new(AtomicUsize::new(0)),
            metrics: None,
            reporting,
            cancellations: Arc::default(),
        }
    }

    /// Counts every finished attempt in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A view of this worker's load that stays valid after [`Worker::run`] takes the worker.
    pub fn load(&self) -> WorkerLoad {
        WorkerLoad {
            slots: self.config.slots.max(1),
            busy: self.busy.clone(),
        }
    }

    /// Pulls and runs work until `shutdown` is cancelled, then stops pulling and waits (up to
    /// the drain timeout) for in-flight invocations.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.config.slots.max(1)));
        let tracker = TaskTracker::new();
        let mut backoff = PULL_RETRY.build();
        let cancellations = this.follow_cancellations(shutdown.clone()).await;
        tracing::info!(node.id = %this.config.node_id, node.slots = this.config.slots, "node pulling work");
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // Every other free slot too: one pull can fill them all.
            let mut permits = vec![permit];
            while let Ok(more) = slots.clone().try_acquire_owned() {
                permits.push(more);
            }
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = this.bus.pull_invocations(permits.len(), this.config.pull_wait) => d,
            };
            match pulled {
                Ok(deliveries) => {
                    if !deliveries.is_empty() {
                        backoff = PULL_RETRY.build();
                    }
                    // Slots left over are freed when `permits` is dropped. A bus with a direct
                    // path may hand out more than were free (see `Bus::pull_invocations`):
                    // those wait here for a slot, and nothing is pulled meanwhile.
                    let mut permits = permits.drain(..);
                    for delivery in deliveries {
                        let permit = match permits.next() {
                            Some(permit) => permit,
                            None => tokio::select! {
                                _ = shutdown.cancelled() => break,
                                p = slots.clone().acquire_owned() => match p {
                                    Ok(p) => p,
                                    Err(_) => break,
                                },
                            },
                        };
                        let worker = this.clone();
                        let busy = BusyGuard::enter(&this.busy);
                        let span =
                            crate::telemetry::invocation_span(&delivery, &worker.config.node_id);
                        tracker.spawn(async move {
                            let mut slot = Slot {
                                permit: Some(permit),
                                busy: Some(busy),
                                reporting: None,
                            };
                            worker.handle(delivery, &mut slot).instrument(span).await;
                            drop(slot);
                        });
                    }
                }
                Err(e) => {
                    let pause = backoff.next().unwrap_or(PULL_RETRY_MAX);
                    tracing::warn!(error = %e, backoff_ms = pause.as_millis() as u64, "pulling work failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {},
                    }
                }
            }
        }
        tracker.close();
        if let Some(task) = cancellations {
            // Ends with `shutdown`; cancellations keep reaching the invocations draining below
            // until then.
            let _ = task.await;
        }
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "node draining in-flight invocations");
        }
        if tokio::time::timeout(this.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tracker.len(),
                "drain timeout reached; unfinished invocations will be redelivered"
            );
        }
    }

    /// Follows the bus's cancellations into [`Worker::cancellations`] until `shutdown`; `None`
    /// (logged) if the bus cannot (the store still keeps cancelled records final).
    async fn follow_cancellations(
        &self,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut feed = match self.bus.follow_cancellations().await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow cancellations; cancelled invocations may still run here");
                return None;
            }
        };
        let registry = self.cancellations.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    id = feed.next() => match id {
                        Some(id) => {
                            tracing::info!(invocation.id = %id, "invocation cancelled");
                            registry.cancel(id);
                        }
                        None => return,
                    },
                }
            }
        }))
    }

    async fn handle(&self, delivery: Delivery, slot: &mut Slot) {
        let Delivery {
            request,
            reply_to,
            attempt,
            expires_at,
            acker,
        } = delivery;
        let started_at = Utc::now();
        // Past its signed expiry (it waited longer than the bus's max age): reported, not run.
        if let Some(expired_at) = expires_at.filter(|at| started_at > *at) {
            let execution = Execution::failed(
                InvocationStatus::Timeout,
                InvocationError {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "expired: not started before {}, the end of its maximum age in the queue",
                        expired_at.to_rfc3339()
                    ),
                },
            );
            tracing::warn!(invocation.id = %request.id, "invocation expired in the queue; not run");
            let run = (&request, attempt, started_at);
            self.settle_unrun(run, execution, reply_to.as_ref(), acker.as_ref(), slot)
                .await;
            return;
        }

        // Cancelled before it got here: settled, never run.
        let Some(running) = self.cancellations.begin(request.id) else {
            let execution = Execution::failed(
                InvocationStatus::Cancelled,
                InvocationError {
                    kind: ErrorKind::Cancelled,
                    message: "cancelled before it ran".to_owned(),
                },
            );
            tracing::info!(invocation.id = %request.id, "invocation cancelled before it ran; not run");
            let run = (&request, attempt, started_at);
            self.settle_unrun(run, execution, reply_to.as_ref(), acker.as_ref(), slot)
                .await;
            return;
        };

        let started = NodeEvent::Started {
            id: request.id,
            namespace: request.function.namespace.clone(),
            attempt,
            node_id: self.config.node_id.clone(),
            started_at,
        };
        // Published once the function has run for `STARTED_AFTER` (its PubAck is not on the
        // invocation's path); once begun, it is settled before the outcome is published, and
        // the store fences the order anyway. Not polled, so not sent, before the loop below.
        let started_begun = AtomicBool::new(false);
        let started_published = async {
            tokio::time::sleep(STARTED_AFTER).await;
            started_begun.store(true, Ordering::Relaxed);
            self.bus.publish_event(&started).await
        };
        tokio::pin!(started_published);
        let mut started_pending = true;
        let report_started = |r: Result<(), fnmesh_bus::BusError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, invocation.id = %request.id, "could not publish the started event");
            }
        };

        // Held until this delivery is handled, so the cache never evicts it meanwhile.
        let code = match self
            .code
            .get(&request.function.code.checksum)
            .instrument(tracing::info_span!("code.fetch"))
            .await
        {
            Ok(lease) => lease,
            Err(e) if acker.redelivers() => {
                tracing::warn!(error = %e, invocation.id = %request.id, "code unavailable; will retry");
                let _ = acker.nak(Some(Duration::from_secs(1))).await;
                return;
            }
            // Sent straight here (nothing holds it to deliver again): the caller is told.
            Err(e) => {
                tracing::warn!(error = %e, invocation.id = %request.id, "code unavailable for a direct sync invocation; reported failed");
                let execution = Execution::failed(
                    InvocationStatus::Failed,
                    InvocationError {
                        kind: ErrorKind::Crashed,
                        message: "the function's code could not be fetched on the node".to_owned(),
                    },
                );
                let run = (&request, attempt, started_at);
                self.settle_unrun(run, execution, reply_to.as_ref(), acker.as_ref(), slot)
                    .await;
                return;
            }
        };

        let code_dir = code.path().to_path_buf();
        let job = Job {
            invocation_id: request.id,
            function: request.function.clone(),
            code_dir: code_dir.clone(),
            payload: request.payload.clone(),
            trace_id: request.trace_id.clone(),
            secrets: request.secrets.clone(),
            registry_auth: request.registry_auth.clone(),
        };
        let t0 = Instant::now();
        let exec = self.executor.execute_cancellable(job, running.token());
        tokio::pin!(exec);
        // Well within the bus's ack wait, so a long invocation is never redelivered.
        let interval = self.progress_interval();
        // First tick one interval from now. (`interval` would tick at once, and awaiting that
        // first tick costs up to a millisecond on the timer wheel's resolution, on every
        // invocation.)
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let execution = loop {
            tokio::select! {
                out = &mut exec => break out,
                r = &mut started_published, if started_pending => {
                    started_pending = false;
                    report_started(r);
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = acker.in_progress().await {
                        tracing::debug!(error = %e, "in_progress failed");
                    }
                }
            }
        };
        if started_pending && started_begun.load(Ordering::Relaxed) {
            report_started(started_published.await);
        }
        let completed_at = Utc::now();
        self.publish_logs(&request, attempt, &execution.logs, completed_at);
        if request.function.config.min_warm > 0 {
            // Keeps `min_warm` sandboxes of this version ready once the node has seen it (off
            // the invocation's path).
            let executor = self.executor.clone();
            let function = request.function.clone();
            let code_dir = code_dir.clone();
            let secrets = request.secrets.clone();
            let code_pin = code.pin();
            tokio::spawn(async move {
                executor
                    .prewarm_with_secrets(&function, &code_dir, secrets.as_ref())
                    .await;
                drop(code_pin);
            });
        }
        let outcome = InvocationOutcome::finished(
            &request,
            execution,
            &self.config.node_id,
            attempt,
            started_at,
            completed_at,
        );
        let result = &outcome.result;
        tracing::info!(
            invocation.id = %request.id,
            status = result.status.as_str(),
            duration_ms = t0.elapsed().as_millis() as u64,
            cold_start = result.metrics.is_some_and(|m| m.cold_start),
            "invocation finished"
        );
        if let Some(metrics) = &self.metrics {
            metrics.observe(result);
        }
        if let Some(error) = retryable(result, reply_to.is_some(), &request.function.config) {
            // Delivered again after a backoff, or dead-lettered by the bus when the attempts
            // ran out; the record keeps this error as the last one.
            let retrying = NodeEvent::Retrying {
                id: request.id,
                namespace: result.namespace.clone(),
                attempt,
                node_id: self.config.node_id.clone(),
                error,
            };
            if let Err(e) = self.bus.publish_event(&retrying).await {
                tracing::warn!(error = %e, invocation.id = %request.id, "could not publish the retrying event");
            }
            let delay = retry_delay(self.config.retry_backoff, attempt);
            tracing::info!(invocation.id = %request.id, attempt, delay_ms = delay.as_millis() as u64, "attempt failed; retrying after a backoff");
            if let Err(e) = acker.nak(Some(delay)).await {
                tracing::warn!(error = %e, "nak failed; the invocation is redelivered after its ack wait");
            }
            return;
        }
        self.settle(&request, reply_to.as_ref(), outcome, acker.as_ref(), slot)
            .await;
    }

    /// Settles attempt `attempt` of `request`, begun at `started_at`, that ended before its
    /// function ran (`execution` says why), as [`Self::settle`] does a finished one.
    async fn settle_unrun(
        &self,
        (request, attempt, started_at): (&InvocationRequest, u32, chrono::DateTime<Utc>),
        execution: Execution,
        reply_to: Option<&ReplyTo>,
        acker: &dyn Acker,
        slot: &mut Slot,
    ) {
        let outcome = InvocationOutcome::finished(
            request,
            execution,
            &self.config.node_id,
            attempt,
            started_at,
            Utc::now(),
        );
        self.settle(request, reply_to, outcome, acker, slot).await;
    }

    /// Sends a finished attempt's outcome to the sync caller (if any), publishes it as the
    /// durable `Finished` event (retrying until the event stream takes it) and acks.
    async fn settle(
        &self,
        request: &InvocationRequest,
        reply_to: Option<&ReplyTo>,
        outcome: InvocationOutcome,
        acker: &dyn Acker,
        slot: &mut Slot,
    ) {
        let mut receipt = Receipt::none();
        if let Some(to) = reply_to {
            let replied = self
                .bus
                .reply_with_receipt(to, &outcome)
                .instrument(tracing::info_span!("invocation.reply"))
                .await;
            match replied {
                Ok(r) => receipt = r,
                Err(e) => {
                    tracing::debug!(error = %e, "sync reply failed; the result is still recorded")
                }
            }
            // The caller has its answer, and its next call may come at once: the slot is
            // free while the result is reported, as long as fewer than `slots` results are
            // being reported (past that the slot stays taken, so a node that cannot report
            // stops taking work).
            if let Ok(reporting) = self.reporting.clone().try_acquire_owned() {
                slot.reporting = Some(reporting);
                slot.permit = None;
                slot.busy = None;
            }
        }
        // A delivery waiting for its receipt still counts against its function's
        // `max_concurrency`: with work of the function waiting behind it, it is acked now,
        // as the caller has its answer (the receipt or the event still records it).
        let acked = receipt.expected() && acker.holds_back_work() && ack(acker).await;
        // The gateway stored the outcome it was answered with: no event needed (see
        // `fnmesh_bus::Receipt`). Without a receipt in time, the event records it.
        if receipt.stored(RECEIPT_WAIT).await {
            if !acked {
                ack(acker).await;
            }
            return;
        }
        let event = NodeEvent::Finished(Box::new(outcome));
        // The result is kept until the recorders' stream takes it (it may be full for a while,
        // or unreachable): running the invocation again would not make room, and a rerun of
        // work that already ran is worse than a late result. The delivery (unless acked
        // above) is kept alive meanwhile, and the slot stays taken, so a node that cannot
        // report stops taking work.
        // Shutdown's drain timeout bounds the wait; an unsettled delivery is then redelivered.
        let mut delays = PUBLISH_RETRY.build();
        let mut last_progress = Instant::now();
        let mut try_no: u32 = 1;
        loop {
            match self.bus.publish_event(&event).await {
                Ok(()) => {
                    if !acked {
                        ack(acker).await;
                    }
                    return;
                }
                Err(e) => {
                    if try_no.is_power_of_two() {
                        tracing::warn!(error = %e, try_no, invocation.id = %request.id, "publishing the result failed; retrying");
                    }
                    // Never longer than the progress interval, so the delivery stays alive.
                    let interval = self.progress_interval();
                    let delay = delays.next().unwrap_or(PUBLISH_RETRY_MAX);
                    tokio::time::sleep(delay.min(interval)).await;
                    try_no = try_no.saturating_add(1);
                    if !acked && last_progress.elapsed() >= interval {
                        if let Err(e) = acker.in_progress().await {
                            tracing::debug!(error = %e, "progress while retrying the result failed");
                        }
                        last_progress = Instant::now();
                    }
                }
            }
        }
    }
}

/// Acks a finished delivery; whether the bus took the ack.
async fn ack(acker: &dyn Acker) -> bool {
    match acker.ack().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "ack failed; the invocation may be redelivered");
            false
        }
    }
}

/// How long a node waits for the gateway's receipt of a sync reply before it publishes the
/// outcome as a `Finished` event (a gateway commits its outcomes within milliseconds; a store
/// that is down fails them within its timeout).
const RECEIPT_WAIT: Duration = Duration::from_secs(1);
/// Pauses between tries to publish a result: 50 ms, doubled per failure, at most 2 s.
const PUBLISH_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(PUBLISH_RETRY_MAX)
    .without_max_times();
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Pauses after a failed pull: 50 ms, doubled per failure, at most 5 s.
const PULL_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(PULL_RETRY_MAX)
    .without_max_times();
const PULL_RETRY_MAX: Duration = Duration::from_secs(5);

impl Worker {
    /// How often a delivery being worked on is kept alive: well within the bus's ack wait, so
    /// it is never redelivered meanwhile.
    fn progress_interval(&self) -> Duration {
        self.config
            .progress_interval
            .min(self.bus.ack_wait() / 3)
            .max(Duration::from_millis(50))
    }

    /// Publishes what the invocation printed for live followers (`logs?follow=true`), off the
    /// invocation's path; best effort.
    fn publish_logs(
        &self,
        request: &fnmesh_core::InvocationRequest,
        attempt: u32,
        logs: &fnmesh_core::InvocationLogs,
        at: chrono::DateTime<Utc>,
    ) {
        if logs.text.is_empty() {
            return;
        }
        let entry = fnmesh_core::invocation::FunctionLogs {
            invocation_id: request.id,
            namespace: request.function.namespace.clone(),
            function: request.function.name.clone(),
            version: request.function.version,
            attempt,
            node_id: self.config.node_id.clone(),
            text: logs.text.clone(),
            truncated: logs.truncated,
            at,
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish_logs(&entry).await {
                tracing::debug!(error = %e, invocation.id = %entry.invocation_id, "publishing logs for followers failed");
            }
        });
    }
}

/// The error to retry on, if this attempt's result should be retried: async invocations
/// only (a sync caller gets the failure at once); a crashed sandbox always (the bus's
/// `max_deliver` bounds it), the function's own failures only within its `retries`.
fn retryable(
    result: &InvocationResult,
    sync: bool,
    config: &FunctionConfig,
) -> Option<InvocationError> {
    if sync
        || matches!(
            result.status,
            InvocationStatus::Succeeded | InvocationStatus::Cancelled
        )
    {
        return None;
    }
    let error = result.error.clone()?;
    let retry = match error.kind {
        ErrorKind::Crashed => true,
        _ => result.attempt <= config.retries,
    };
    retry.then_some(error)
}

/// Backoff before attempt `attempt + 1`: `base` doubled per failed attempt, at most 5 min.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 3), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 40), Duration::from_secs(300));
    }
}
