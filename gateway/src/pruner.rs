//! Retention: the pruner removes finished invocations (records and logs) older than the
//! retention, so the store stays bounded under any load.
//!
//! Every [`GatewayConfig::prune_interval`](crate::config::GatewayConfig) it removes records
//! finished (last updated) before now minus the retention, in batches of [`BATCH`] (one short
//! transaction each, served by a partial index), pausing [`PAUSE`] between batches, so it never
//! holds the store's write lock for long and the invocation path's group commits go between.
//! Queued and running records are never removed; dead letters stay until an operator replays or
//! deletes them. Several gateways on one store may prune at once: a record is removed once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fnmesh_store::MetadataStore;
use tokio_util::sync::CancellationToken;

/// Records removed per transaction at most.
pub(crate) const BATCH: u32 = 500;
/// The pause between two batches of one pass.
const PAUSE: Duration = Duration::from_millis(50);

/// Removes finished invocations older than the retention.
pub(crate) struct Pruner {
    store: Arc<dyn MetadataStore>,
    retention: Duration,
    interval: Duration,
}

impl Pruner {
    /// A pruner keeping `retention` of finished invocations, passing every `interval`.
    pub(crate) fn new(
        store: Arc<dyn MetadataStore>,
        retention: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            store,
            retention,
            interval,
        }
    }

    /// Runs passes until `shutdown` is cancelled (the first right away).
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.pass(&shutdown).await;
        }
    }

    /// Removes what is older than the retention, batch after batch; how many records.
    pub(crate) async fn pass(&self, shutdown: &CancellationToken) -> u64 {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let Some(cutoff) = Utc::now().checked_sub_signed(retention) else {
            return 0;
        };
        let mut removed = 0;
        loop {
            match self.store.prune_invocations(cutoff, BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < u64::from(BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning finished invocations failed; retrying next pass");
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(PAUSE) => {}
            }
        }
        if removed > 0 {
            tracing::info!(
                invocations = removed,
                retention_s = self.retention.as_secs(),
                "pruned finished invocations past the retention"
            );
        }
        removed
    }
}
