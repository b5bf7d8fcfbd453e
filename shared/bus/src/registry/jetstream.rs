//! The JetStream [`NodeRegistry`]: one KV bucket per region, `fnmesh-<prefix>-nodes`
//! ([`subjects::node_registry_bucket`]), one key per node ([`subjects::node_registry_key`]),
//! the JSON of its [`NodeInfo`] as value, history 1, file storage.
//!
//! Each heartbeat is written with a per-entry time to live (`Nats-TTL`, nats-server 2.11+):
//! the entry's own [`NodeInfo::ttl`], three heartbeat intervals. The server removes an entry
//! no heartbeat refreshed in time (leaving a delete marker), so a dead node disappears from
//! the bucket itself, whatever the heartbeat intervals of the other nodes. Listings also skip
//! entries past their time to live by the writer's clock ([`NodeInfo::is_live`]), which covers
//! the moment between expiry and removal.
//!
//! [`NodeRegistry::leave`] writes a delete marker.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use super::{NodeInfo, NodeRegistry, RegistryError};
use fnmesh_core::ids::NodeId;
use fnmesh_core::subjects::{self, BusPrefix};

/// Largest entry accepted (a [`NodeInfo`] is a few hundred bytes).
const MAX_VALUE_BYTES: i32 = 64 * 1024;

/// Entries one listing reads at most.
const MAX_LISTED: usize = 10_000;

/// How long one listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the delete marker of an expired entry is kept.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// The JetStream registry of one region.
#[derive(Clone)]
pub struct JetStreamRegistry {
    js: jetstream::Context,
    store: kv::Store,
    prefix: BusPrefix,
}

impl std::fmt::Debug for JetStreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamRegistry")
            .field("bucket", &self.store.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(what: &str, err: impl std::fmt::Display) -> RegistryError {
    RegistryError::Backend(format!("{what}: {err}"))
}

impl JetStreamRegistry {
    /// Opens (creating it if needed) the registry bucket of region `prefix` on `client`. A
    /// bucket made by an earlier fnmesh (without per-entry TTLs) is updated to allow them.
    pub async fn open(client: async_nats::Client, prefix: &str) -> Result<Self, RegistryError> {
        Self::open_replicated(client, prefix, 1).await
    }

    /// The registry of region `prefix` in JetStream domain `domain` (another region's own
    /// server, reached over a leaf link), to list its nodes; it is never created from here.
    pub async fn attach_in_domain(
        client: async_nats::Client,
        prefix: &BusPrefix,
        domain: &BusPrefix,
    ) -> Result<Self, RegistryError> {
        let js = jetstream::with_domain(client, domain.as_str());
        let bucket = subjects::node_registry_bucket(prefix);
        let store = tokio::time::timeout(LIST_TIMEOUT, js.get_key_value(&bucket))
            .await
            .map_err(|_| backend("opening the node registry", "timed out"))?
            .map_err(|e| backend("opening the node registry", e))?;
        Ok(Self {
            js,
            store,
            prefix: prefix.clone(),
        })
    }

    /// [`Self::open`], creating a missing bucket with `replicas` JetStream replicas.
    pub async fn open_replicated(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
    ) -> Result<Self, RegistryError> {
        let prefix = BusPrefix::parse(prefix).map_err(|e| backend("registry prefix", e))?;
        let js = jetstream::new(client);
        let bucket = subjects::node_registry_bucket(&prefix);
        let store = match js.get_key_value(&bucket).await {
            Ok(store) => {
                let config = &store.stream.cached_info().config;
                if !config.allow_message_ttl {
                    let mut config = config.clone();
                    config.allow_message_ttl = true;
                    config.subject_delete_marker_ttl = Some(MARKER_TTL);
                    js.update_stream(&config)
                        .await
                        .map_err(|e| backend("allowing per-entry TTLs in the node registry", e))?;
                }
                store
            }
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "fnmesh node registry".to_owned(),
                    history: 1,
                    max_value_size: MAX_VALUE_BYTES,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    limit_markers: Some(MARKER_TTL),
                    ..Default::default()
                })
                .await
                .map_err(|e| backend("creating the node registry bucket", e))?,
        };
        Ok(Self { js, store, prefix })
    }
}

#[async_trait]
impl NodeRegistry for JetStreamRegistry {
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), RegistryError> {
        let key = subjects::node_registry_key(&info.id);
        let value = serde_json::to_vec(info).map_err(|e| RegistryError::Encoding {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        // Whole seconds, rounded up (the server's TTL granularity).
        let ttl_secs = info.ttl().as_millis().div_ceil(1000).max(1);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", format!("{ttl_secs}s").as_str());
        self.js
            .publish_with_headers(
                subjects::node_registry_entry(&self.prefix, &info.id),
                headers,
                value.into(),
            )
            .await
            .map_err(|e| backend("writing a heartbeat", e))?
            .await
            .map_err(|e| backend("writing a heartbeat", e))?;
        Ok(())
    }

    async fn leave(&self, id: &NodeId) -> Result<(), RegistryError> {
        self.store
            .delete(subjects::node_registry_key(id))
            .await
            .map_err(|e| backend("removing a node", e))
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        tokio::time::timeout(LIST_TIMEOUT, self.list_inner())
            .await
            .map_err(|_| backend("listing nodes", "timed out"))?
    }
}

impl JetStreamRegistry {
    async fn list_inner(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| backend("listing node keys", e))?
            .take(MAX_LISTED)
            .try_collect()
            .await
            .map_err(|e| backend("listing node keys", e))?;
        let now = Utc::now();
        let mut nodes = Vec::with_capacity(keys.len());
        for key in keys {
            // Gone since the key listing (left, or aged out): not a node any more.
            let Some(value) = self
                .store
                .get(key.as_str())
                .await
                .map_err(|e| backend("reading a node entry", e))?
            else {
                continue;
            };
            match serde_json::from_slice::<NodeInfo>(&value) {
                Ok(info) if info.is_live(now) => nodes.push(info),
                Ok(_) => {}
                // One unreadable entry (a newer node's format) must not hide every other node.
                Err(e) => tracing::warn!(
                    registry.key = %key,
                    error = %e,
                    "skipping an unreadable node registry entry"
                ),
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}
