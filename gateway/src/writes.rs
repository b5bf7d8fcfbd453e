//! Group commit of the invocation path's writes.
//!
//! Every accepted invocation commits its `queued` record (with the request) before it is
//! published, and every sync outcome is written through before the 200, so a `GET` right after
//! sees it. Each of those was a transaction of its own; here concurrent requests share them:
//! one writer task takes whatever is waiting (up to [`BATCH_MAX`]) and commits it with one
//! [`fnmesh_store::InvocationStore::write_invocations`], while the next batch gathers. A lone
//! request whose caller waits is not held back (no timer), so c=1 pays one transaction and
//! c=64 a fraction of one; a few outcomes written behind their answers gather for up to
//! [`LINGER`] first (see [`linger`]).
//!
//! A caller waits for its own commit where the answer promises durability (a 202's `queued`
//! record). A sync outcome is written [`Writes::outcome_behind`] its answer instead: it is
//! durable already (the node's `Finished` event, which the recorder stores if this write does
//! not happen), and until its batch commits a `GET` of it on this gateway is answered from
//! [`Writes::recent`], so a read right after the 200 sees it. A failed batch of several writes
//! is retried one write at a time, so one bad write fails alone; an unavailable store fails the
//! batch at once (the callers answer 503), and the batches of the next [`FAIL_FAST`] too, so a
//! write queued behind a failing batch is not made to wait out a second store timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fnmesh_bus::Bus;
use fnmesh_core::{InvocationId, InvocationOutcome, InvocationRequest, Namespace};
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
        /// A sync reply's outcome: once stored, its node is sent the receipt it asked for.
        receipt: bool,
    },
}

/// Outcomes queued or being committed, by id: what [`Writes::recent`] answers from.
type Recent = Arc<Mutex<HashMap<InvocationId, Arc<InvocationOutcome>>>>;

/// How long a small batch of outcomes written behind their answers waits for more writes.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// Writes a batch of such outcomes gathers before it is committed without lingering longer.
const LINGER_UNTIL: usize = 16;

/// How long writes fail at once after the store was found unavailable, before it is tried
/// again.
const FAIL_FAST: std::time::Duration = std::time::Duration::from_millis(500);
/// How long [`Writes::settled`] waits for a batch at most.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// The handle requests write through; the writer task stops when the last handle is dropped,
/// after committing what was queued.
#[derive(Clone)]
pub(crate) struct Writes {
    queue: mpsc::Sender<Pending>,
    recent: Recent,
    /// Woken after every batch.
    committed: Arc<tokio::sync::Notify>,
}

impl Writes {
    /// Starts the writer task over `store` (must be called within a Tokio runtime); receipts
    /// for stored sync outcomes go out on `bus`.
    pub(crate) fn start(
        store: Arc<dyn MetadataStore>,
        bus: Arc<dyn Bus>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self::start_lingering(store, bus, metrics, LINGER)
    }

    /// [`Writes::start`] with small batches of outcomes lingering for `linger`.
    fn start_lingering(
        store: Arc<dyn MetadataStore>,
        bus: Arc<dyn Bus>,
        metrics: Arc<GatewayMetrics>,
        linger: std::time::Duration,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let recent = Recent::default();
        let committed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(run(
            store,
            bus,
            metrics,
            linger,
            receiver,
            recent.clone(),
            committed.clone(),
        ));
        Self {
            queue,
            recent,
            committed,
        }
    }

    /// Waits until none of `ids` is an outcome queued by [`Writes::outcome_behind`] (each is
    /// committed, or failed), at most [`SETTLE_MAX`]. The recorder calls it before reading the
    /// records of `Finished` events: a sync outcome this gateway is about to write is then
    /// found stored, not written twice.
    pub(crate) async fn settled(&self, ids: &[InvocationId]) {
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        loop {
            let notified = self.committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let recent = lock(&self.recent);
                if !ids.iter().any(|id| recent.contains_key(id)) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Queues a finished outcome (applied fenced, with its logs) without waiting for its
    /// commit, and answers reads of it from memory until then ([`Writes::recent`]). Waits only
    /// for room in the queue. Once it is stored, its node is sent the receipt its reply asked
    /// for ([`Bus::confirm_stored`]), so the node publishes no `Finished` event for it. A write
    /// that fails sends none: the recorder stores the outcome from the node's event.
    pub(crate) async fn outcome_behind(&self, outcome: Arc<InvocationOutcome>) {
        let id = outcome.result.id;
        lock(&self.recent).insert(id, outcome.clone());
        let (done, _) = oneshot::channel();
        if self
            .queue
            .send(Pending::Outcome {
                outcome,
                done,
                receipt: true,
            })
            .await
            .is_err()
        {
            lock(&self.recent).remove(&id);
            tracing::warn!(invocation.id = %id, "the store writer stopped; the recorder writes this outcome");
        }
    }

    /// An outcome of `namespace` queued by [`Writes::outcome_behind`] and not committed yet.
    pub(crate) fn recent(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Option<Arc<InvocationOutcome>> {
        lock(&self.recent)
            .get(id)
            .filter(|o| &o.result.namespace == namespace)
            .cloned()
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
        self.submit(
            Pending::Outcome {
                outcome,
                done,
                receipt: false,
            },
            answer,
        )
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

fn lock(
    recent: &Recent,
) -> std::sync::MutexGuard<'_, HashMap<InvocationId, Arc<InvocationOutcome>>> {
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer: batch after batch until every handle is gone.
async fn run(
    store: Arc<dyn MetadataStore>,
    bus: Arc<dyn Bus>,
    metrics: Arc<GatewayMetrics>,
    linger_for: std::time::Duration,
    mut receiver: mpsc::Receiver<Pending>,
    recent: Recent,
    committed: Arc<tokio::sync::Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // Set when the store was found unavailable: until then, batches fail at once instead of
    // each waiting out the store's timeout behind the one before (a 503 within 2 s).
    let mut down_until: Option<tokio::time::Instant> = None;
    while receiver.recv_many(&mut batch, BATCH_MAX).await > 0 {
        linger(&mut receiver, &mut batch, linger_for).await;
        let written: Vec<Arc<InvocationOutcome>> = batch
            .iter()
            .filter_map(|p| match p {
                Pending::Outcome { outcome, .. } => Some(outcome.clone()),
                Pending::Insert { .. } => None,
            })
            .collect();
        let batch_now = std::mem::take(&mut batch);
        let mut stored = Vec::new();
        if down_until.is_some_and(|until| tokio::time::Instant::now() < until) {
            fail(
                batch_now,
                &StoreError::Unavailable("the metadata store did not answer just now".into()),
            );
        } else if commit(store.as_ref(), &metrics, batch_now, &mut stored).await {
            down_until = Some(tokio::time::Instant::now() + FAIL_FAST);
        } else {
            down_until = None;
        }
        // Stored: their nodes need not publish them. An outcome whose node got its receipt is
        // counted here; the recorder counts the others from their events.
        for outcome in stored {
            if bus.confirm_stored(outcome.result.id).await {
                metrics.observe_result(&outcome.result);
            }
        }
        // Committed (or failed: then the recorder writes them): read from the store now.
        if !written.is_empty() {
            let mut recent = lock(&recent);
            for outcome in written {
                let id = outcome.result.id;
                if recent.get(&id).is_some_and(|o| Arc::ptr_eq(o, &outcome)) {
                    recent.remove(&id);
                }
            }
            drop(recent);
            committed.notify_waiters();
        }
        batch.reserve(BATCH_MAX);
    }
    tracing::debug!("store writer stopped");
}

/// Lets a small batch of outcomes written behind their answers ([`Writes::outcome_behind`])
/// gather more writes for up to `time` ([`LINGER`]), until it holds [`LINGER_UNTIL`] writes or one
/// that a caller waits for arrives (a 202's `queued` record is never held back). Nobody
/// waits on these: their callers have their answers, reads of them are served from
/// [`Writes::recent`], and their nodes wait up to a second for the receipt. At c=1 each lone
/// outcome was a transaction of its own (several hops to SQLite's connection thread, each a
/// wake-up of the process competing with the next request); gathered, they share one. Larger
/// batches (under load) go at once.
async fn linger(
    receiver: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    time: std::time::Duration,
) {
    let behind = |batch: &[Pending]| {
        batch
            .iter()
            .all(|p| matches!(p, Pending::Outcome { receipt: true, .. }))
    };
    if batch.len() >= LINGER_UNTIL || !behind(batch) {
        return;
    }
    let until = tokio::time::Instant::now() + time;
    while batch.len() < LINGER_UNTIL && behind(batch) {
        let room = BATCH_MAX - batch.len();
        match tokio::time::timeout_at(until, receiver.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Commits one batch and answers each write; whether the store was unavailable. The sync
/// outcomes that asked for a receipt and are stored go to `stored`.
async fn commit(
    store: &dyn MetadataStore,
    metrics: &GatewayMetrics,
    batch: Vec<Pending>,
    stored: &mut Vec<Arc<InvocationOutcome>>,
) -> bool {
    let mut inserts = Vec::new();
    let mut outcomes = Vec::new();
    let mut receipts = Vec::new();
    for pending in batch {
        match pending {
            Pending::Insert { request, done } => inserts.push((request, done)),
            Pending::Outcome {
                outcome,
                done,
                receipt,
            } => {
                receipts.push(receipt);
                outcomes.push((outcome, done));
            }
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
            for ((outcome, done), receipt) in outcomes.into_iter().zip(receipts) {
                metrics.observe_store_writes("invoke", 0, 1);
                let pair = (outcome, ());
                let one = write::<(), ()>(store, &[], std::slice::from_ref(&pair)).await;
                if receipt && one.is_ok() {
                    stored.push(pair.0);
                }
                let _ = done.send(one.map(|w| w.applied.first().copied().unwrap_or(false)));
            }
            return false;
        }
    }
    match written {
        Ok(written) => {
            for (i, (_, done)) in inserts.into_iter().enumerate() {
                let _ = done.send(inserted(&written, i));
            }
            for (i, ((outcome, done), receipt)) in outcomes.into_iter().zip(receipts).enumerate() {
                if receipt {
                    stored.push(outcome);
                }
                let _ = done.send(Ok(written.applied.get(i).copied().unwrap_or(false)));
            }
        }
        Err(e) => {
            let unavailable = matches!(e, StoreError::Unavailable(_));
            for (_, done) in inserts {
                let _ = done.send(Err(e.clone()));
            }
            for (_, done) in outcomes {
                let _ = done.send(Err(e.clone()));
            }
            return unavailable;
        }
    }
    false
}

/// Answers every write of `batch` with `error`, without trying the store.
fn fail(batch: Vec<Pending>, error: &StoreError) {
    for pending in batch {
        match pending {
            Pending::Insert { done, .. } => {
                let _ = done.send(Err(error.clone()));
            }
            Pending::Outcome { done, .. } => {
                let _ = done.send(Err(error.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use fnmesh_core::invocation::{ErrorKind, Execution, InvocationError, InvocationStatus};

    fn request() -> Arc<InvocationRequest> {
        let namespace = Namespace::parse("acme").unwrap();
        Arc::new(fnmesh_store::conformance::request(&namespace, "hello"))
    }

    fn outcome() -> Arc<InvocationOutcome> {
        let request = request();
        let execution = Execution::failed(
            InvocationStatus::Failed,
            InvocationError {
                kind: ErrorKind::Crashed,
                message: "test".to_owned(),
            },
        );
        let now = Utc::now();
        Arc::new(InvocationOutcome::finished(
            &request, execution, "node-1", 1, now, now,
        ))
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn MetadataStore>,
        registry: fnmesh_core::metrics::Registry,
        writes: Writes,
    }

    impl Fixture {
        async fn start(linger: std::time::Duration) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn MetadataStore> = Arc::new(
                fnmesh_store::sqlite::SqliteStore::open(&dir.path().join("fnmesh.db"))
                    .await
                    .unwrap(),
            );
            let bus: Arc<dyn Bus> = Arc::new(fnmesh_bus::memory::MemoryBus::new(
                fnmesh_bus::BusConfig::default(),
            ));
            let registry = fnmesh_core::metrics::Registry::new();
            let metrics = Arc::new(GatewayMetrics::register(&registry).unwrap());
            let writes = Writes::start_lingering(store.clone(), bus, metrics, linger);
            Self {
                _dir: dir,
                store,
                registry,
                writes,
            }
        }

        fn transactions(&self) -> u64 {
            fnmesh_core::metrics::encode(&self.registry)
                .lines()
                .filter_map(|line| {
                    line.strip_prefix("fnmesh_store_write_transactions_total{path=\"invoke\"} ")
                })
                .map(|n| n.trim().parse::<u64>().unwrap())
                .sum()
        }

        async fn stored(&self, outcome: &InvocationOutcome) -> bool {
            let r = &outcome.result;
            self.store
                .get_invocation(&r.namespace, &r.id)
                .await
                .unwrap()
                .is_some_and(|record| record.status == InvocationStatus::Failed)
        }
    }

    /// Long enough that only the batch filling up, or an awaited write, ends a linger.
    const FOREVER: std::time::Duration = std::time::Duration::from_secs(600);
    /// What a test waits for an answer at most.
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

    /// Outcomes written behind their answers a moment apart share one transaction, are read
    /// from memory until it commits, and are stored after it.
    #[tokio::test]
    async fn outcomes_behind_their_answers_gather_into_one_transaction() {
        let fx = Fixture::start(FOREVER).await;
        let outcomes: Vec<_> = (0..LINGER_UNTIL).map(|_| outcome()).collect();
        for outcome in &outcomes {
            fx.writes.outcome_behind(outcome.clone()).await;
            let r = &outcome.result;
            assert!(fx.writes.recent(&r.namespace, &r.id).is_some());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let ids: Vec<_> = outcomes.iter().map(|o| o.result.id).collect();
        let all_stored = async {
            loop {
                fx.writes.settled(&ids).await;
                let mut all = true;
                for outcome in &outcomes {
                    all &= fx.stored(outcome).await;
                }
                if all {
                    break;
                }
            }
        };
        tokio::time::timeout(PATIENCE, all_stored)
            .await
            .expect("a full batch commits without waiting out its linger");
        for outcome in &outcomes {
            let r = &outcome.result;
            assert!(fx.writes.recent(&r.namespace, &r.id).is_none());
        }
        assert_eq!(
            fx.transactions(),
            1,
            "{LINGER_UNTIL} outcomes, one transaction"
        );
    }

    /// A write its caller waits for (a 202's `queued` record) is not held back by an outcome
    /// lingering for company: it commits at once, with it.
    #[tokio::test]
    async fn an_awaited_insert_ends_the_linger() {
        let fx = Fixture::start(FOREVER).await;
        let behind = outcome();
        fx.writes.outcome_behind(behind.clone()).await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        tokio::time::timeout(PATIENCE, fx.writes.insert(request()))
            .await
            .expect("the insert is not held back")
            .unwrap();
        fx.writes.settled(&[behind.result.id]).await;
        assert!(fx.stored(&behind).await);
        assert_eq!(fx.transactions(), 1, "the outcome went with the insert");
    }

    /// A lone outcome is stored once its linger ends.
    #[tokio::test]
    async fn a_lone_outcome_is_stored_after_its_linger() {
        let fx = Fixture::start(LINGER).await;
        let lone = outcome();
        fx.writes.outcome_behind(lone.clone()).await;
        tokio::time::timeout(PATIENCE, async {
            while !fx.stored(&lone).await {
                fx.writes.settled(&[lone.result.id]).await;
            }
        })
        .await
        .expect("a lone outcome is stored");
        assert_eq!(fx.transactions(), 1);
    }
}
