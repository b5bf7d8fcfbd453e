//! The in-process [`Placements`] of `fnmesh up`: what is published is kept (latest per key)
//! and broadcast to watchers. Clones share it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt as _};
use tokio::sync::broadcast;

use super::{Placement, PlacementError, Placements};
use fnmesh_core::subjects::CatalogKey;

/// Changes a slow watcher may fall behind by before its stream ends (it then watches again).
const BACKLOG: usize = 4096;

/// The in-process feed.
#[derive(Clone)]
pub struct MemoryPlacements {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    latest: BTreeMap<CatalogKey, Placement>,
    changes: broadcast::Sender<Placement>,
}

impl Default for MemoryPlacements {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                latest: BTreeMap::new(),
                changes: broadcast::channel(BACKLOG).0,
            })),
        }
    }
}

impl MemoryPlacements {
    /// An empty feed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the latest state of one key and tells the watchers.
    pub fn publish(&self, placement: Placement) {
        let mut inner = self.lock();
        if placement.is_removal() {
            inner.latest.remove(&placement.key());
        } else {
            inner.latest.insert(placement.key(), placement.clone());
        }
        // No watcher is not an error: the next one reads `latest`.
        let _ = inner.changes.send(placement);
    }
}

#[async_trait]
impl Placements for MemoryPlacements {
    async fn watch(&self) -> Result<BoxStream<'static, Placement>, PlacementError> {
        let (now, changes) = {
            let inner = self.lock();
            let now: Vec<Placement> = inner.latest.values().cloned().collect();
            (now, inner.changes.subscribe())
        };
        let later = stream::unfold(changes, |mut changes| async move {
            match changes.recv().await {
                Ok(placement) => Some((placement, changes)),
                // Fell behind, or the feed is gone: end; a new watch starts from `latest`.
                Err(_) => None,
            }
        });
        Ok(stream::iter(now).chain(later).boxed())
    }
}
