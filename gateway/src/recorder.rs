//! The recorder: persists what nodes report.
//!
//! Two loops, both stopped by the shutdown token:
//! - node events: `Started` marks the record `running` (attempt, node, start time),
//!   `Finished` writes the final record and its logs; then the event is acked, or nak'ed on a
//!   store error so it comes back. The store fences stale updates, so replays are harmless.
//! - dead letters: an invocation whose attempts ran out is marked `failed` (`crashed`).
//!
//! Bus errors back off exponentially (100 ms to 5 s).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fnmesh_shared::bus::{Bus, DeadLetter, EventDelivery};
use fnmesh_shared::store::{MetadataStore, StoreError};
use fnmesh_shared::{
    ErrorKind, InvocationError, InvocationOutcome, InvocationResult, InvocationStatus, NodeEvent,
};
use tokio_util::sync::CancellationToken;

/// How long one pull waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(1);
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
}

impl Recorder {
    /// A recorder over these backends.
    pub fn new(store: Arc<dyn MetadataStore>, bus: Arc<dyn Bus>) -> Self {
        Self { store, bus }
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
                _ = shutdown.cancelled() => return,
                pulled = self.bus.pull_event(PULL_WAIT) => pulled,
            };
            match pulled {
                Ok(Some(delivery)) => {
                    backoff = BACKOFF_MIN;
                    self.handle_event(delivery).await;
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

    async fn handle_event(&self, delivery: EventDelivery) {
        let result = match &delivery.event {
            NodeEvent::Started {
                id,
                namespace,
                attempt,
                node_id,
                started_at,
            } => match self.store.get_invocation(namespace, id).await {
                Ok(Some(mut record)) => {
                    record.status = InvocationStatus::Running;
                    record.attempt = *attempt;
                    record.node_id = Some(node_id.clone());
                    record.started_at = Some(*started_at);
                    self.store.update_invocation(&record).await.map(|_| ())
                }
                Ok(None) => {
                    tracing::warn!(invocation.id = %id, "start event for an unknown invocation; dropped");
                    Ok(())
                }
                Err(e) => Err(e),
            },
            NodeEvent::Finished(outcome) => record_outcome(self.store.as_ref(), outcome).await,
        };
        let settled = match result {
            Ok(()) => delivery.acker.ack().await,
            Err(StoreError::NotFound(what)) => {
                // Nothing to update (e.g. a record of a wiped store): redelivery cannot help.
                tracing::warn!(record = %what, "node event for an unknown invocation; dropped");
                delivery.acker.ack().await
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording a node event failed; it will be redelivered");
                delivery.acker.nak(Some(NAK_DELAY)).await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling a node event failed");
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
                    tracing::warn!(invocation.id = %id, attempts = dead.attempts, "invocation dead-lettered: marked failed");
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

/// Writes a final record and, unless it was a stale attempt, its logs.
pub async fn record_outcome(
    store: &dyn MetadataStore,
    outcome: &InvocationOutcome,
) -> Result<(), StoreError> {
    let result = &outcome.result;
    let applied = store.update_invocation(result).await?;
    let current_attempt = if applied {
        true
    } else {
        // Replays of the applied outcome still (re)write its logs; stale attempts do not.
        store
            .get_invocation(&result.namespace, &result.id)
            .await?
            .is_some_and(|r| r.attempt == result.attempt && r.status == result.status)
    };
    if current_attempt {
        store.put_logs(&result.id, &outcome.logs).await?;
    }
    Ok(())
}

/// Marks a dead-lettered invocation failed, unless it already reached a terminal status.
pub async fn record_dead_letter(
    store: &dyn MetadataStore,
    dead: &DeadLetter,
) -> Result<(), StoreError> {
    let request = &dead.request;
    let current = store
        .get_invocation(&request.function.namespace, &request.id)
        .await?;
    let exists = current.is_some();
    let mut record = match current {
        Some(r) if r.status.is_terminal() => return Ok(()),
        Some(r) => r,
        None => InvocationResult::queued(request),
    };
    record.status = InvocationStatus::Failed;
    record.attempt = record.attempt.max(dead.attempts);
    record.error = Some(InvocationError {
        kind: ErrorKind::Crashed,
        message: format!("attempts exhausted after {} deliveries", dead.attempts),
    });
    record.completed_at = Some(Utc::now());
    if !exists {
        // Absent records are inserted (then failed below), so the failure is never lost. A
        // record that raced in meanwhile is fine: the update below is fenced.
        match store.insert_invocation(request).await {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // Fenced: a terminal result that raced in is kept.
    store.update_invocation(&record).await?;
    Ok(())
}

/// Sleeps unless shut down first; `false` when shut down.
async fn sleep(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
