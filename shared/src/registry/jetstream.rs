//! The JetStream [`NodeRegistry`]: one KV bucket per region, `fnmesh-<prefix>-nodes`
//! ([`subjects::node_registry_bucket`]), one key per node ([`subjects::node_registry_key`]),
//! the JSON of its [`NodeInfo`] as value, history 1, file storage.
//!
//! nats-server 2.9 has no per-key TTL, so expiry is enforced twice:
//! - the bucket's `max_age` (the stream's) removes entries no heartbeat refreshed; it is a
//!   backstop that only grows: a process opening the bucket with a longer time to live than
//!   the bucket has raises it (a shorter `max_age` than a node's interval would make its entry
//!   vanish between heartbeats), and never lowers it;
//! - [`NodeRegistry::list`] skips entries past their own time to live
//!   ([`NodeInfo::is_live`]), whatever the bucket's `max_age`.
//!
//! [`NodeRegistry::leave`] writes a delete marker (aged out by `max_age` like any entry).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use super::{NodeInfo, NodeRegistry, RegistryError};
use crate::ids::NodeId;
use crate::subjects::{self, BusPrefix};

/// The bucket's `max_age` when the opener does not ask for more (a gateway, which only lists).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// Largest entry accepted (a [`NodeInfo`] is a few hundred bytes).
const MAX_VALUE_BYTES: i32 = 64 * 1024;

/// Entries one listing reads at most.
const MAX_LISTED: usize = 10_000;

/// How long one listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream registry of one region.
#[derive(Clone)]
pub struct JetStreamRegistry {
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
    /// Opens (creating it if needed) the registry bucket of region `prefix` on `client`, with
    /// a `max_age` of at least `max_age` (see the module docs).
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        max_age: Duration,
    ) -> Result<Self, RegistryError> {
        let prefix = BusPrefix::parse(prefix).map_err(|e| backend("registry prefix", e))?;
        let js = jetstream::new(client);
        let bucket = subjects::node_registry_bucket(&prefix);
        let config = stream_config(&bucket, max_age.max(Duration::from_secs(1)));
        let store = match js.get_key_value(&bucket).await {
            Ok(store) => {
                let current = store.stream.cached_info().config.max_age;
                if !current.is_zero() && current < config.max_age {
                    js.update_stream(&config)
                        .await
                        .map_err(|e| backend("raising the node registry max_age", e))?;
                }
                store
            }
            Err(get_err) => match js.create_stream(config).await {
                Ok(_) => js
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| backend("opening the node registry bucket", e))?,
                // Another process may have created it in between.
                Err(create_err) => js.get_key_value(&bucket).await.map_err(|e| {
                    backend(
                        "creating the node registry bucket",
                        format!("{get_err}; {create_err}; {e}"),
                    )
                })?,
            },
        };
        Ok(Self { store, prefix })
    }
}

/// The bucket's stream, as `async_nats`' own `create_key_value` would make it. (That call
/// reads the account info first, which fails to parse against nats-server 2.9, so the stream
/// is created directly and then opened as a bucket.)
fn stream_config(bucket: &str, max_age: Duration) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("fnmesh node registry".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: MAX_VALUE_BYTES,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
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
        self.store
            .put(&key, value.into())
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
