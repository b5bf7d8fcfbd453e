//! A gateway's background workers, started and stopped together: the [`Recorder`] (node
//! events and dead letters into the store), the [`Reconciler`] (re-publishes requests left
//! queued too long), the [`Pruner`] (removes finished invocations past the retention) and the
//! destinations' [`crate::destinations::Dispatcher`] (sends finished invocations on).
//!
//! [`crate::Gateway::run`] runs them itself unless `GatewayConfig::background_workers` is off;
//! `fnmesh up` starts them with [`crate::Gateway::start_background_workers`] instead and stops
//! them after its node, so the recorder records what the node's drain finished.

use std::sync::Arc;
use std::time::Duration;

use fnmesh_bus::Bus;
use fnmesh_store::MetadataStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::GatewayMetrics;
use crate::pruner::Pruner;
use crate::reconciler::Reconciler;
use crate::recorder::Recorder;

/// The running recorder, reconciler and pruner.
#[derive(Debug)]
pub struct BackgroundWorkers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the workers run on.
pub(crate) struct WorkerParts {
    pub(crate) store: Arc<dyn MetadataStore>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) overflow: Option<Arc<crate::overflow::Overflow>>,
    pub(crate) metrics: Arc<GatewayMetrics>,
    pub(crate) writes: crate::writes::Writes,
    pub(crate) reconcile_interval: Duration,
    pub(crate) reconcile_after: Duration,
    pub(crate) retention: Option<Duration>,
    pub(crate) prune_interval: Duration,
    pub(crate) destinations: crate::destinations::Dispatcher,
}

impl BackgroundWorkers {
    /// Starts the workers (the pruner unless the retention is `None`). With `catch_up`, one reconciler pass first re-publishes every
    /// request still queued: for a bus that did not survive the previous run (in-process).
    pub(crate) async fn start(parts: WorkerParts, catch_up: bool) -> Self {
        let reconciler = Reconciler::new(
            parts.store.clone(),
            parts.bus.clone(),
            parts.overflow.clone(),
            parts.reconcile_interval,
            parts.reconcile_after,
        );
        if catch_up {
            reconciler.pass(chrono::Utc::now()).await;
        }
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(retention) = parts.retention {
            let pruner = Pruner::new(parts.store.clone(), retention, parts.prune_interval);
            tasks.push(tokio::spawn(pruner.run(stop.clone())));
        }
        let recorder = Recorder::new(parts.store, parts.bus)
            .with_metrics(parts.metrics)
            .with_writes(parts.writes);
        tasks.push(tokio::spawn(recorder.run(stop.clone())));
        tasks.push(tokio::spawn(reconciler.run(stop.clone())));
        tasks.push(tokio::spawn(parts.destinations.run(stop.clone())));
        Self { stop, tasks }
    }

    /// Stops them and waits for them (the recorder finishes the batch it holds).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "background task failed");
            }
        }
    }
}
