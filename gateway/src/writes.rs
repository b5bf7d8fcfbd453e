//! Group commit of the invocation path's writes.
//!
//! Every accepted invocation commits its `queued` record (with the request) before it is
//! published, and every sync outcome is written through before the 200, so a `GET` right after
//! sees it. Each of those was a transaction of its own; here concurrent requests share them:
//! one writer task takes whatever is waiting (up to [`BATCH_MAX`]) and commits it with one
//! [`fnmesh_store::InvocationStore::write_invocations`], while the next batch gathers. A lone
//! request is not held back (no timer), so c=1 pays one transaction and c=64 a fraction of one.
//!
//! Each caller still waits for its own commit: what is answered (202, 200) is durable exactly
//! as before. A failed batch of several writes is retried one write at a time, so one bad
//! write fails alone; an unavailable store fails the batch at once (the callers answer 503).

use std::sync::Arc;

use fnmesh_core::{InvocationOutcome, InvocationRequest};
use fnmesh_store::{MetadataStore, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::GatewayMetrics;

/// Writes committed together at most.
pub(crate) const BATCH_MAX: usize = 256;
/// Writes waiting for the writer at most; callers beyond wait for room.
const QUEUE: usize = 4096;

/// One write and who waits for it.
enum Pending {
    /// A `queued` record to insert: `Conflict` if its id exists.
    Insert {
        request: Arc<InvocationRequest>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// An outcome to apply (fenced) with its logs: whether it applied.
    Outcome {
        outcome: Arc<InvocationOutcome>,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
}

/// The handle requests write through; the writer task stops when the last handle is dropped,
/// after committing what was queued.
#[derive(Clone)]
pub(crate) struct Writes {
    queue: mpsc::Sender<Pending>,
}

impl Writes {
    /// Starts the writer task over `store` (must be called within a Tokio runtime).
    pub(crate) fn start(store: Arc<dyn MetadataStore>, metrics: Arc<GatewayMetrics>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, metrics, receiver));
        Self { queue }
    }

    /// Commits the `queued` record of `request` with the request (see
    /// [`fnmesh_store::InvocationStore::insert_invocation`]).
    pub(crate) async fn insert(&self, request: Arc<InvocationRequest>) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.submit(Pending::Insert { request, done }, answer)
            .await?
    }

    /// Applies a finished outcome (fenced) with its logs; whether it applied.
    pub(crate) async fn outcome(
        &self,
        outcome: Arc<InvocationOutcome>,
    ) -> Result<bool, StoreError> {
        let (done, answer) = oneshot::channel();
        self.submit(Pending::Outcome { outcome, done }, answer)
            .await?
    }

    async fn submit<T>(
        &self,
        pending: Pending,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Unavailable("the gateway's store writer stopped".into());
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// The writer: batch after batch until every handle is gone.
async fn run(
    store: Arc<dyn MetadataStore>,
    metrics: Arc<GatewayMetrics>,
    mut receiver: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while receiver.recv_many(&mut batch, BATCH_MAX).await > 0 {
        commit(store.as_ref(), &metrics, std::mem::take(&mut batch)).await;
        batch.reserve(BATCH_MAX);
    }
    tracing::debug!("store writer stopped");
}

/// Commits one batch and answers each write.
async fn commit(store: &dyn MetadataStore, metrics: &GatewayMetrics, batch: Vec<Pending>) {
    let mut inserts = Vec::new();
    let mut outcomes = Vec::new();
    for pending in batch {
        match pending {
            Pending::Insert { request, done } => inserts.push((request, done)),
            Pending::Outcome { outcome, done } => outcomes.push((outcome, done)),
        }
    }
    metrics.observe_store_writes("invoke", inserts.len(), outcomes.len());
    let written = write(store, &inserts, &outcomes).await;
    if let Err(e) = &written {
        if inserts.len() + outcomes.len() > 1 && !matches!(e, StoreError::Unavailable(_)) {
            tracing::warn!(error = %e, batch.size = inserts.len() + outcomes.len(), "a batched write failed; writing its items one by one");
            for (request, done) in inserts {
                metrics.observe_store_writes("invoke", 1, 0);
                let one = write::<(), ()>(store, std::slice::from_ref(&(request, ())), &[]).await;
                let _ = done.send(one.and_then(|w| inserted(&w, 0)));
            }
            for (outcome, done) in outcomes {
                metrics.observe_store_writes("invoke", 0, 1);
                let one = write::<(), ()>(store, &[], std::slice::from_ref(&(outcome, ()))).await;
                let _ = done.send(one.map(|w| w.applied.first().copied().unwrap_or(false)));
            }
            return;
        }
    }
    match written {
        Ok(written) => {
            for (i, (_, done)) in inserts.into_iter().enumerate() {
                let _ = done.send(inserted(&written, i));
            }
            for (i, (outcome, done)) in outcomes.into_iter().enumerate() {
                // Released first: the caller then takes its outcome back without a copy.
                drop(outcome);
                let _ = done.send(Ok(written.applied.get(i).copied().unwrap_or(false)));
            }
        }
        Err(e) => {
            for (_, done) in inserts {
                let _ = done.send(Err(e.clone()));
            }
            for (_, done) in outcomes {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// One [`fnmesh_store::InvocationStore::write_invocations`] of these writes.
async fn write<A, B>(
    store: &dyn MetadataStore,
    inserts: &[(Arc<InvocationRequest>, A)],
    outcomes: &[(Arc<InvocationOutcome>, B)],
) -> Result<fnmesh_store::Written, StoreError> {
    let requests: Vec<&InvocationRequest> = inserts.iter().map(|(r, _)| r.as_ref()).collect();
    let results: Vec<_> = outcomes
        .iter()
        .map(|(o, _)| (&o.result, Some(&o.logs)))
        .collect();
    store.write_invocations(&requests, &results).await
}

/// The answer to insert `i` of a written batch.
fn inserted(written: &fnmesh_store::Written, i: usize) -> Result<(), StoreError> {
    if written.inserted.get(i).copied().unwrap_or(false) {
        Ok(())
    } else {
        Err(StoreError::Conflict("invocation".into()))
    }
}
