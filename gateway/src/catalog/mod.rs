//! The catalog a hub replicates to its edges (issue #14: functions everywhere they are
//! placed).
//!
//! What an edge gateway needs to serve a function with the hub unreachable is what a hub
//! gateway reads on the invocation path: the function's versions (and their code) and
//! aliases, its sealed secrets, the API keys (hashed) that may call it, its namespace's quotas
//! and (sealed) registry credentials. A gateway over NATS **publishes** that catalog of its
//! region into the JetStream KV bucket `fnmesh-<region>-catalog` ([`publisher`]): one entry per [`CatalogKey`], always derived
//! from its store after the store committed (so an entry is the latest state, never a
//! change to replay, and a lost publish is made good by the next one or by the full export
//! every [`publisher::EXPORT_INTERVAL`]). An edge gateway (`FNMESH_HUB_REGION`) **follows**
//! its hub's catalog ([`follower`]): its JetStream domain holds a mirror of the hub's bucket
//! (`fnmesh-<edge>-catalog`, kept by the servers across the leaf link, "delayed, not lost"
//! after a cut), which the follower reads from the start on every start and applies to its
//! own store, copying each version's code from the hub's code bucket into its own code store
//! (and so into the edge's code bucket its nodes read). Functions whose latest version is
//! not placed in the edge's region (`config.regions`) are removed there instead.
//!
//! An edge gateway refuses writes to what it follows (functions, secrets, keys, quotas;
//! `read_only_region`): they would be overwritten, and the hub would never see them.
//! Invocations are recorded in the region that ran them; `crate::uplink` brings an edge's up to
//! its hub.

pub(crate) mod follower;
pub(crate) mod local;
pub(crate) mod publisher;

use std::sync::{Arc, OnceLock};

use fnmesh_code::CodeStore;
use fnmesh_core::alias::Alias;
use fnmesh_core::function::Function;
use fnmesh_core::secrets::{SealedSecrets, SealedValue};
use fnmesh_core::subjects::{BusPrefix, CatalogKey};
use fnmesh_store::{ApiKeyRecord, MetadataStore, NamespaceQuota, StoreError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The value of one catalog entry (JSON in the KV bucket).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Entry {
    /// Every version of a function, oldest first.
    Function {
        /// The versions.
        versions: Vec<Function>,
        /// Its aliases (an edge invokes them as the hub does; each is the hub's routing).
        #[serde(default)]
        aliases: Vec<Alias>,
    },
    /// A function's secrets, sealed (the catalog never holds a plaintext value).
    Secrets {
        /// The secrets.
        sealed: SealedSecrets,
    },
    /// An API key, hashed.
    ApiKey {
        /// The record.
        key: ApiKeyRecord,
    },
    /// A namespace's quotas.
    Quota {
        /// The quotas.
        quota: NamespaceQuota,
    },
    /// A namespace's credential for a registry, sealed at rest (bound to namespace and host):
    /// edge gateways resolve tags with it, and nodes pre-pulling images open it.
    Registry {
        /// The credential.
        sealed: SealedValue,
    },
}

/// The current entry of `key` in `store` (`None`: there is nothing to replicate, which
/// removes the entry).
pub(crate) async fn read_entry(
    store: &dyn MetadataStore,
    key: &CatalogKey,
) -> Result<Option<Entry>, StoreError> {
    Ok(match key {
        CatalogKey::Function(ns, name) => {
            let versions = store.list_versions(ns, name).await?;
            if versions.is_empty() {
                None
            } else {
                let aliases = store.list_aliases(ns, name).await?;
                Some(Entry::Function { versions, aliases })
            }
        }
        CatalogKey::Secrets(ns, name) => {
            let sealed = store.sealed_secrets(ns, name).await?;
            (!sealed.is_empty()).then_some(Entry::Secrets { sealed })
        }
        CatalogKey::ApiKey(id) => store
            .get_api_key(id)
            .await?
            .filter(|k| !crate::auth::is_bootstrap_id(&k.id))
            .map(|key| Entry::ApiKey { key }),
        CatalogKey::Quota(ns) => store
            .get_namespace_quota(ns)
            .await?
            .map(|quota| Entry::Quota { quota }),
        CatalogKey::Registry(ns, host) => store
            .registry_credential(ns, host)
            .await?
            .map(|sealed| Entry::Registry { sealed }),
    })
}

/// Opens the hub's code bucket when the follower first needs it (the link may be down when
/// the gateway starts); the CLI wraps it like its own code store (sealed code).
pub type HubCodeOpener = Arc<
    dyn Fn() -> BoxFuture<'static, Result<Arc<dyn CodeStore>, fnmesh_code::CodeStoreError>>
        + Send
        + Sync,
>;

/// How a gateway takes part in catalog replication ([`crate::Gateway::replicate_catalog`]).
pub enum CatalogLink {
    /// Publishes the catalog of `region` (a hub's, or any region's over NATS).
    Publish {
        /// The gateway's NATS connection.
        client: async_nats::Client,
        /// Its region.
        region: BusPrefix,
    },
    /// Follows the catalog of hub region `hub` (whose JetStream domain is named like it) and
    /// refuses catalog writes.
    Follow {
        /// The gateway's NATS connection (to its own region's server).
        client: async_nats::Client,
        /// Its region (an edge).
        region: BusPrefix,
        /// The hub region.
        hub: BusPrefix,
        /// The hub's code bucket, opened on first use.
        hub_code: HubCodeOpener,
    },
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A JetStream call failed.
    #[error("catalog {what}: {detail}")]
    JetStream {
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
}

/// What a gateway does with the catalog, set once before it serves.
pub(crate) struct Catalog {
    active: OnceLock<Active>,
    regions: OnceLock<crate::uplink::status::Regions>,
    overflow: OnceLock<Arc<crate::overflow::Overflow>>,
    /// Every changed key, for an in-process node's placements ([`local`]).
    local: tokio::sync::broadcast::Sender<CatalogKey>,
}

/// Changes an in-process watcher may fall behind by before it publishes everything again.
const LOCAL_BACKLOG: usize = 1024;

impl Default for Catalog {
    fn default() -> Self {
        Self {
            active: OnceLock::new(),
            regions: OnceLock::new(),
            overflow: OnceLock::new(),
            local: tokio::sync::broadcast::channel(LOCAL_BACKLOG).0,
        }
    }
}

enum Active {
    Publish(publisher::Publisher),
    Follow { region: BusPrefix, hub: BusPrefix },
}

/// The replication task and how to stop it.
pub(crate) struct Running {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the tasks and waits for them.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "catalog task failed");
            }
        }
    }
}

impl Catalog {
    /// Records that a catalog entry may have changed (after the store committed): for the
    /// publisher if this gateway publishes, and for an in-process node's placements if one
    /// watches ([`local`]).
    pub(crate) fn changed(&self, key: CatalogKey) {
        if self.local.receiver_count() > 0 {
            let _ = self.local.send(key.clone());
        }
        if let Some(Active::Publish(publisher)) = self.active.get() {
            publisher.changed(key);
        }
    }

    /// The keys changed from now on ([`Self::changed`]).
    pub(crate) fn local_changes(&self) -> tokio::sync::broadcast::Receiver<CatalogKey> {
        self.local.subscribe()
    }

    /// Refuses a write to what this gateway follows.
    pub(crate) fn check_writable(&self) -> Result<(), ApiError> {
        match self.active.get() {
            Some(Active::Follow { region, hub }) => Err(ApiError::ReadOnlyRegion(format!(
                "region {region} follows hub region {hub}: deploy functions and manage secrets, \
                 keys and quotas through a gateway of {hub}"
            ))),
            _ => Ok(()),
        }
    }

    /// Where this gateway overflows what its region cannot run (an edge's hub).
    pub(crate) fn overflow(&self) -> Option<&Arc<crate::overflow::Overflow>> {
        self.overflow.get()
    }

    /// The other regions, when this gateway works over NATS.
    pub(crate) fn regions(&self) -> Option<&crate::uplink::status::Regions> {
        self.regions.get()
    }
}

/// Starts replication for the gateway whose shared state is `state`.
pub(crate) async fn start(
    state: &crate::state::State,
    link: CatalogLink,
) -> Result<Running, CatalogError> {
    let stop = CancellationToken::new();
    let store = state.backends.store.clone();
    let (active, regions, overflow, tasks) = match link {
        CatalogLink::Publish { client, region } => {
            let (publisher, task) =
                publisher::Publisher::start(client.clone(), &region, store.clone(), stop.clone())
                    .await?;
            // A region that publishes its catalog is a hub to the edges that follow it: it
            // stores their records and runs what they overflow.
            let importer =
                crate::uplink::importer::start(client.clone(), region.clone(), store, stop.clone());
            let forwards =
                crate::overflow::serve(client.clone(), region.clone(), state.clone(), stop.clone())
                    .await;
            let forwards = match forwards {
                Ok(forwards) => forwards,
                Err(e) => {
                    stop.cancel();
                    let _ = task.await;
                    let _ = importer.await;
                    return Err(e);
                }
            };
            let regions = crate::uplink::status::Regions::new(client, region, None);
            (
                Active::Publish(publisher),
                regions,
                None,
                vec![task, importer, forwards],
            )
        }
        CatalogLink::Follow {
            client,
            region,
            hub,
            hub_code,
        } => {
            let task = follower::start(
                client.clone(),
                &region,
                &hub,
                hub_code,
                state.clone(),
                stop.clone(),
            )
            .await?;
            let exporter =
                crate::uplink::exporter::start(client.clone(), &region, &hub, store, stop.clone())
                    .await;
            let exporter = match exporter {
                Ok(exporter) => exporter,
                Err(e) => {
                    stop.cancel();
                    let _ = task.await;
                    return Err(e);
                }
            };
            let overflow = Arc::new(crate::overflow::Overflow::new(client.clone(), hub.clone()));
            let regions =
                crate::uplink::status::Regions::new(client, region.clone(), Some(hub.clone()));
            (
                Active::Follow { region, hub },
                regions,
                Some(overflow),
                vec![task, exporter],
            )
        }
    };
    let overflow_set = match overflow {
        Some(overflow) => state.catalog.overflow.set(overflow).is_ok(),
        None => true,
    };
    if state.catalog.active.set(active).is_err()
        || state.catalog.regions.set(regions).is_err()
        || !overflow_set
    {
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        return Err(CatalogError::JetStream {
            what: "starting".into(),
            detail: "replication was already started".into(),
        });
    }
    Ok(Running { stop, tasks })
}
