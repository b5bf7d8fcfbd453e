//! The in-process [`NodeRegistry`] of `fnmesh up`: the gateway and the node of one process
//! share it. Entries past their time to live are not listed, and are dropped when seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;

use super::{NodeInfo, NodeRegistry, RegistryError};
use fnmesh_core::ids::NodeId;

/// Entries kept at most (a bound against runaway ids; far above any real node count).
pub const MAX_ENTRIES: usize = 10_000;

/// The in-process registry. Clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    entries: Arc<Mutex<BTreeMap<NodeId, NodeInfo>>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, NodeInfo>> {
        // A panic while holding the lock leaves the map consistent (every update is one
        // insert or remove), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl NodeRegistry for MemoryRegistry {
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        let now = Utc::now();
        entries.retain(|_, e| e.is_live(now));
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&info.id) {
            return Err(RegistryError::Backend(format!(
                "the in-process registry holds {MAX_ENTRIES} nodes already"
            )));
        }
        entries.insert(info.id.clone(), info.clone());
        Ok(())
    }

    async fn leave(&self, id: &NodeId) -> Result<(), RegistryError> {
        self.lock().remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut entries = self.lock();
        let now = Utc::now();
        entries.retain(|_, e| e.is_live(now));
        Ok(entries.values().cloned().collect())
    }
}
