//! The catalog of a gateway that runs with its node in one process (`fnmesh up`): what the
//! node's pre-pulling reads of it — each function's latest version and the namespaces'
//! sealed registry credentials — goes straight into an in-process placements feed
//! ([`MemoryPlacements`]), instead of a KV bucket the node would watch over NATS.
//!
//! Everything in the store is published at start; then, like the publisher, each key a
//! handler names after its commit ([`super::Catalog::changed`]) is read again and published
//! as its latest state. A feed that fell behind is published whole again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_bus::placements::memory::MemoryPlacements;
use fnmesh_bus::placements::Placement;
use fnmesh_core::subjects::CatalogKey;
use fnmesh_core::Namespace;
use fnmesh_store::{MetadataStore, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Functions read per page of a full publish.
const PAGE: u32 = 500;

/// The longest pause before a failed full publish is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Starts publishing into `feed` until `stop`.
pub(crate) fn start(
    state: &State,
    feed: MemoryPlacements,
    stop: CancellationToken,
) -> JoinHandle<()> {
    // Subscribed before the first full publish, so no change falls between the two.
    let mut changes = state.catalog.local_changes();
    let store = state.backends.store.clone();
    tokio::spawn(async move {
        let mut local = Local {
            store,
            feed,
            namespaces: HashSet::new(),
        };
        if !local.publish_all_until(&stop).await {
            return;
        }
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(key) => {
                    if let Err(e) = local.publish(&key).await {
                        // The next full publish (a restart) makes it good; so does the next
                        // change of the same key.
                        tracing::warn!(catalog.key = %key.key(), error = %e, "publishing a placement failed");
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if !local.publish_all_until(&stop).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

struct Local {
    store: Arc<dyn MetadataStore>,
    feed: MemoryPlacements,
    /// Namespaces whose registry credentials were published.
    namespaces: HashSet<Namespace>,
}

impl Local {
    /// Publishes everything, retrying until it worked; `false` if stopped first.
    async fn publish_all_until(&mut self, stop: &CancellationToken) -> bool {
        let mut pause = Duration::from_millis(500);
        loop {
            match self.publish_all().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "publishing placements failed");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    async fn publish_all(&mut self) -> Result<(), StoreError> {
        self.namespaces.clear();
        for ns in self.store.function_namespaces().await? {
            let mut cursor = None;
            loop {
                let page = self
                    .store
                    .list_functions(&ns, PAGE, cursor.as_deref())
                    .await?;
                for function in page.items {
                    self.feed.publish(Placement::Function {
                        namespace: ns.clone(),
                        name: function.name.clone(),
                        latest: Some(Box::new(function)),
                    });
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            self.publish_credentials(&ns).await?;
        }
        Ok(())
    }

    async fn publish_credentials(&mut self, ns: &Namespace) -> Result<(), StoreError> {
        for credential in self.store.list_registry_credentials(ns).await? {
            let sealed = self.store.registry_credential(ns, &credential.host).await?;
            self.feed.publish(Placement::Registry {
                namespace: ns.clone(),
                host: credential.host,
                sealed,
            });
        }
        self.namespaces.insert(ns.clone());
        Ok(())
    }

    /// Publishes the latest state of `key`, if it is a kind nodes read.
    async fn publish(&mut self, key: &CatalogKey) -> Result<(), StoreError> {
        match key {
            CatalogKey::Function(ns, name) => {
                if !self.namespaces.contains(ns) {
                    // A namespace's first function: its credentials may predate it.
                    self.publish_credentials(ns).await?;
                }
                let latest = self.store.get_function(ns, name, None).await?;
                self.feed.publish(Placement::Function {
                    namespace: ns.clone(),
                    name: name.clone(),
                    latest: latest.map(Box::new),
                });
            }
            CatalogKey::Registry(ns, host) => {
                let sealed = self.store.registry_credential(ns, host).await?;
                self.feed.publish(Placement::Registry {
                    namespace: ns.clone(),
                    host: host.clone(),
                    sealed,
                });
            }
            CatalogKey::Secrets(..) | CatalogKey::ApiKey(_) | CatalogKey::Quota(_) => {}
        }
        Ok(())
    }
}
