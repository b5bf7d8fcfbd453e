//! The node's work loop: pull an invocation only when a slot is free, run it in the executor,
//! send the outcome to the sync caller's inbox and to the recorders, then ack.
//!
//! Ordering per delivery: `Started` event → execute (with `in_progress` heartbeats so a long
//! invocation is not redelivered) → reply (sync calls) → `Finished` event (durable) → ack.
//! If the `Finished` event cannot be published the delivery is nak'ed: running it again is
//! better than losing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fnmesh_shared::bus::{Bus, Delivery};
use fnmesh_shared::{InvocationMetrics, InvocationOutcome, InvocationResult, NodeEvent};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::code_cache::CodeCache;
use crate::executor::{Executor, Job};

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
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node_id: "node".into(),
            slots: 16,
            pull_wait: Duration::from_millis(500),
            progress_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The pieces a worker drives.
pub struct Worker {
    config: WorkerConfig,
    bus: Arc<dyn Bus>,
    code: Arc<CodeCache>,
    executor: Arc<Executor>,
}

impl Worker {
    /// A worker over `bus`, fetching code through `code` and running it in `executor`.
    pub fn new(
        config: WorkerConfig,
        bus: Arc<dyn Bus>,
        code: Arc<CodeCache>,
        executor: Arc<Executor>,
    ) -> Self {
        Self {
            config,
            bus,
            code,
            executor,
        }
    }

    /// Pulls and runs work until `shutdown` is cancelled, then stops pulling and waits (up to
    /// the drain timeout) for in-flight invocations.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.config.slots.max(1)));
        let tracker = TaskTracker::new();
        let mut backoff = Duration::from_millis(50);
        tracing::info!(node.id = %this.config.node_id, node.slots = this.config.slots, "node pulling work");
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = this.bus.pull_invocation(this.config.pull_wait) => d,
            };
            match pulled {
                Ok(Some(delivery)) => {
                    backoff = Duration::from_millis(50);
                    let worker = this.clone();
                    tracker.spawn(async move {
                        worker.handle(delivery).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "pulling work failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {},
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracker.close();
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

    async fn handle(&self, delivery: Delivery) {
        let Delivery {
            request,
            reply_to,
            attempt,
            acker,
        } = delivery;
        let started_at = Utc::now();
        let queue_ms = (started_at - request.created_at).num_milliseconds().max(0) as u64;
        let namespace = request.function.namespace.clone();

        let started = NodeEvent::Started {
            id: request.id,
            namespace: namespace.clone(),
            attempt,
            node_id: self.config.node_id.clone(),
            started_at,
        };
        if let Err(e) = self.bus.publish_event(&started).await {
            tracing::warn!(error = %e, invocation.id = %request.id, "could not publish the started event");
        }

        let code_dir = match self.code.get(&request.function.code.checksum).await {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(error = %e, invocation.id = %request.id, "code unavailable; will retry");
                let _ = acker.nak(Some(Duration::from_secs(1))).await;
                return;
            }
        };

        let job = Job {
            invocation_id: request.id,
            function: request.function.clone(),
            code_dir: code_dir.clone(),
            payload: request.payload.clone(),
            trace_id: request.trace_id.clone(),
        };
        let t0 = Instant::now();
        let exec = self.executor.execute(job);
        tokio::pin!(exec);
        let mut heartbeat = tokio::time::interval(self.config.progress_interval);
        heartbeat.tick().await;
        let outcome = loop {
            tokio::select! {
                out = &mut exec => break out,
                _ = heartbeat.tick() => {
                    if let Err(e) = acker.in_progress().await {
                        tracing::debug!(error = %e, "in_progress failed");
                    }
                }
            }
        };
        let completed_at = Utc::now();
        if request.function.config.min_warm > 0 {
            // Keeps `min_warm` sandboxes of this version ready once the node has seen it.
            self.executor.prewarm(&request.function, &code_dir).await;
        }
        let result = InvocationResult {
            id: request.id,
            namespace,
            function: request.function.name.clone(),
            version: request.function.version,
            status: outcome.status,
            result: outcome.result,
            error: outcome.error,
            metrics: Some(InvocationMetrics {
                queue_ms,
                init_ms: outcome.init_ms,
                duration_ms: outcome.duration_ms,
                cold_start: outcome.cold_start,
                memory_peak_bytes: outcome.memory_peak_bytes,
            }),
            node_id: Some(self.config.node_id.clone()),
            attempt,
            created_at: request.created_at,
            started_at: Some(started_at),
            completed_at: Some(completed_at),
        };
        tracing::info!(
            invocation.id = %request.id,
            status = result.status.as_str(),
            duration_ms = t0.elapsed().as_millis() as u64,
            cold_start = outcome.cold_start,
            "invocation finished"
        );
        let outcome = InvocationOutcome {
            result,
            logs: outcome.logs,
        };
        if let Some(to) = &reply_to {
            if let Err(e) = self.bus.reply(to, &outcome).await {
                tracing::debug!(error = %e, "sync reply failed; the result is still recorded");
            }
        }
        let event = NodeEvent::Finished(Box::new(outcome));
        let mut delay = Duration::from_millis(50);
        for try_no in 1..=5 {
            match self.bus.publish_event(&event).await {
                Ok(()) => {
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(error = %e, "ack failed; the invocation may be redelivered");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, try_no, "publishing the result failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        let _ = acker.nak(Some(Duration::from_secs(1))).await;
    }
}
