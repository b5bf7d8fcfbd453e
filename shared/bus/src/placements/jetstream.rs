//! The JetStream [`Placements`]: a region's catalog as its gateways publish it
//! (`gateway::catalog`), read by the region's nodes.
//!
//! A region whose gateways publish keeps its catalog in the KV bucket
//! `fnmesh-<region>-catalog` (stream `KV_fnmesh-<region>-catalog`); an edge keeps a mirror
//! of its hub's bucket in the stream `fnmesh-<edge>-catalog`. A watch reads whichever of the
//! two the region's own server has, through two ephemeral pull consumers — one per entry kind
//! a node reads ([`subjects::NODE_CATALOG_KINDS`]: functions and registry credentials), each
//! with its filter in the create subject so a node's permissions allow those kinds only (no
//! API keys, secrets or quotas) — delivering the last entry of each key, then every change.
//! Nothing is acked (`AckPolicy::None`); an abandoned consumer goes after
//! [`INACTIVE_THRESHOLD`].
//!
//! What comes over NATS is checked: the subject names a key of the kind, the entry is of that
//! kind and names the same namespace and function, the latest version's config is valid.
//! Entries are not signed: only gateways may write the bucket (an edge's leaf link may not
//! write `$KV.>` at the hub), as for the edge gateways that follow it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt as _};
use serde::Deserialize;

use super::{Placement, PlacementError, Placements};
use fnmesh_core::ids::NodeId;
use fnmesh_core::secrets::SealedValue;
use fnmesh_core::subjects::{self, BusPrefix, CatalogKey};
use fnmesh_core::Function;

/// How long an ephemeral consumer outlives its watcher.
pub const INACTIVE_THRESHOLD: Duration = Duration::from_secs(60);

/// How long creating a consumer may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream feed of one region.
#[derive(Clone)]
pub struct JetStreamPlacements {
    js: jetstream::Context,
    region: BusPrefix,
    node: NodeId,
}

impl std::fmt::Debug for JetStreamPlacements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamPlacements")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl JetStreamPlacements {
    /// The feed of `region` for node `node`, read on `client` (a connection to the region's
    /// own server).
    pub fn new(client: async_nats::Client, region: BusPrefix, node: NodeId) -> Self {
        Self {
            js: jetstream::new(client),
            region,
            node,
        }
    }

    /// The streams that may hold the region's catalog, in the order they are tried.
    fn candidates(&self) -> [String; 2] {
        [
            subjects::kv_stream(&subjects::catalog_bucket(&self.region)),
            subjects::catalog_mirror_stream(&self.region),
        ]
    }

    async fn consumer(&self, stream: &str, kind: &str) -> Result<consumer::PullConsumer, String> {
        let name = subjects::placements_consumer(kind, &self.node);
        // One per node and kind: an earlier one (a previous watch, a restarted node) would
        // resume where it was instead of delivering every entry again.
        let _ = tokio::time::timeout(
            CREATE_TIMEOUT,
            self.js.delete_consumer_from_stream(&name, stream),
        )
        .await;
        let config = consumer::pull::Config {
            name: Some(name),
            filter_subject: subjects::catalog_entries_of_kind(kind),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            ..Default::default()
        };
        tokio::time::timeout(
            CREATE_TIMEOUT,
            self.js.create_consumer_on_stream(config, stream),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
    }
}

/// A catalog entry as a node reads it: the kinds it may read, written by
/// `gateway::catalog::Entry` (`{"kind":"function","versions":[…]}`,
/// `{"kind":"registry","sealed":{…}}`).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Function { versions: Vec<Function> },
    Registry { sealed: SealedValue },
}

/// Whether a message of a KV bucket's stream removes its key (a delete or purge marker).
pub fn is_kv_removal(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

/// The placement a catalog message says (`None`: not one a node reads, or not valid).
pub fn placement_of(message: &async_nats::Message) -> Option<Placement> {
    let key = subjects::catalog_key_of_subject(&message.subject)?;
    let entry = if is_kv_removal(message) {
        None
    } else {
        match serde_json::from_slice::<Entry>(&message.payload) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::warn!(catalog.key = %key.key(), error = %e, "placements: unreadable catalog entry; ignored");
                return None;
            }
        }
    };
    let placement = match (key, entry) {
        (CatalogKey::Function(namespace, name), None) => Placement::Function {
            namespace,
            name,
            latest: None,
        },
        (CatalogKey::Function(namespace, name), Some(Entry::Function { mut versions })) => {
            let latest = versions.pop()?;
            let valid = latest.namespace == namespace
                && latest.name == name
                && latest.config.validate().is_ok();
            if !valid {
                tracing::warn!(function.name = %name, "placements: a catalog entry that does not match its key; ignored");
                return None;
            }
            Placement::Function {
                namespace,
                name,
                latest: Some(Box::new(latest)),
            }
        }
        (CatalogKey::Registry(namespace, host), entry) => Placement::Registry {
            namespace,
            host,
            sealed: match entry {
                None => None,
                Some(Entry::Registry { sealed }) => Some(sealed),
                Some(Entry::Function { .. }) => return None,
            },
        },
        _ => return None,
    };
    Some(placement)
}

#[async_trait]
impl Placements for JetStreamPlacements {
    async fn watch(&self) -> Result<BoxStream<'static, Placement>, PlacementError> {
        let mut missing = Vec::new();
        for stream_name in self.candidates() {
            let mut feeds = Vec::new();
            for kind in subjects::NODE_CATALOG_KINDS {
                match self.consumer(&stream_name, kind).await {
                    Ok(consumer) => {
                        let messages = consumer
                            .messages()
                            .await
                            .map_err(|e| PlacementError::Backend(e.to_string()))?;
                        feeds.push(messages);
                    }
                    Err(e) => {
                        missing.push(format!("{stream_name}: {e}"));
                        break;
                    }
                }
            }
            if feeds.len() == subjects::NODE_CATALOG_KINDS.len() {
                let merged = stream::select_all(feeds)
                    // An error ends the watch (the watcher starts again).
                    .take_while(|m| {
                        if let Err(e) = m {
                            tracing::warn!(error = %e, "placements: the catalog consumer failed");
                        }
                        std::future::ready(m.is_ok())
                    })
                    .filter_map(|m| std::future::ready(m.ok().and_then(|m| placement_of(&m))));
                return Ok(merged.boxed());
            }
        }
        Err(PlacementError::NoCatalog(missing.join("; ")))
    }
}
