//! The reconciler: nothing accepted is lost.
//!
//! An invocation is committed as `queued` (with its full request) before it is published. If
//! the gateway dies between the commit and the publish, or the broker loses the message, the
//! record stays `queued`. The reconciler periodically re-publishes requests queued for longer
//! than `stale_after`, under the same invocation id, so the bus's dedupe drops the copy when
//! the original is still there: the cost of a loss is delay, never a lost invocation.
//!
//! An edge's invocation placed at its hub (`forwarded_to`, see [`crate::overflow`]) is
//! forwarded to the hub again instead: the hub runs it if it never got it (its store keeps
//! one record per id) and answers with its record, which is stored here once it finished.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fnmesh_bus::{Bus, BusError};
use fnmesh_store::MetadataStore;
use tokio_util::sync::CancellationToken;

/// Requests re-published per pass at most.
const BATCH: u32 = 500;

/// Re-publishes stale `queued` invocations.
#[derive(Clone)]
pub(crate) struct Reconciler {
    store: Arc<dyn MetadataStore>,
    bus: Arc<dyn Bus>,
    overflow: Option<Arc<crate::overflow::Overflow>>,
    interval: Duration,
    stale_after: Duration,
}

impl Reconciler {
    /// A reconciler that checks every `interval` for records queued longer than `stale_after`.
    pub(crate) fn new(
        store: Arc<dyn MetadataStore>,
        bus: Arc<dyn Bus>,
        overflow: Option<Arc<crate::overflow::Overflow>>,
        interval: Duration,
        stale_after: Duration,
    ) -> Self {
        Self {
            store,
            bus,
            overflow,
            interval,
            stale_after,
        }
    }

    /// Runs passes until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let cutoff = Utc::now()
                - chrono::Duration::from_std(self.stale_after).unwrap_or(chrono::Duration::zero());
            self.pass(cutoff).await;
        }
    }

    /// Re-publishes requests queued before `older_than`; returns how many were published.
    pub(crate) async fn pass(&self, older_than: DateTime<Utc>) -> usize {
        let stale = match self.store.stale_queued(older_than, BATCH).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: listing queued invocations failed");
                return 0;
            }
        };
        let mut published = 0;
        for request in &stale {
            if let (Some(overflow), Some(_)) = (&self.overflow, &request.forwarded_to) {
                if overflow
                    .refresh(self.store.as_ref(), request)
                    .await
                    .is_some()
                {
                    published += 1;
                }
                continue;
            }
            match self.bus.publish_invocation(request, None).await {
                Ok(()) => published += 1,
                Err(BusError::Full) => {
                    tracing::warn!("reconciler: the queue is full; retrying next pass");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, invocation.id = %request.id, "reconciler: re-publish failed");
                }
            }
        }
        if published > 0 {
            tracing::info!(
                invocations = published,
                "reconciler re-published queued invocations"
            );
        }
        published
    }
}
