//! The following side: an edge gateway applies its hub's catalog to its own store.
//!
//! The edge's JetStream domain holds `fnmesh-<edge>-catalog`, a mirror of the hub's catalog
//! bucket (one message per entry: the bucket keeps one revision). The follower reads it from
//! the start with an ordered consumer on every start, so a new or wiped edge store is filled
//! again, and applies each entry idempotently: a function's missing versions are added (all
//! of them again if the hub's function was deleted and made anew), its code copied first
//! from the hub's code bucket; secrets are replaced as a set; keys are upserted (a removed
//! entry revokes); quotas are stored. An entry that cannot be applied yet (the store is
//! down; the code cannot be read because the link is cut) is retried, with growing pauses,
//! before the next: entries apply in the hub's order.
//!
//! Entries come over NATS, so they are checked like anything received there: the subject
//! must name a catalog key, the entry must be of that key's kind and name the same
//! namespace, function or key, a function's versions must be contiguous, of one function id,
//! with a valid config, and code must match its checksum (the code store verifies).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use fnmesh_code::CodeStore;
use fnmesh_core::alias::Alias;
use fnmesh_core::function::Function;
use fnmesh_core::subjects::{self, BusPrefix, CatalogKey};
use fnmesh_core::{FunctionName, Namespace};
use fnmesh_store::StoreError;
use futures::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{CatalogError, Entry, HubCodeOpener};
use crate::state::State;

/// Longest pause between two attempts at one entry.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// First pause after a failed attempt.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Makes (or finds) the mirror of the hub's catalog in the edge's domain and starts applying
/// it.
pub(crate) async fn start(
    client: async_nats::Client,
    region: &BusPrefix,
    hub: &BusPrefix,
    hub_code: HubCodeOpener,
    state: State,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, CatalogError> {
    let js = jetstream::new(client.clone());
    let name = subjects::catalog_mirror_stream(region);
    let hub_bucket = subjects::catalog_bucket(hub);
    let mirror = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            description: Some(format!("fnmesh: mirror of the catalog of hub region {hub}")),
            mirror: Some(stream::Source {
                name: subjects::kv_stream(&hub_bucket),
                // (Not `domain`: the server takes the domain as an external API prefix.)
                external: Some(stream::External {
                    api_prefix: subjects::jetstream_domain_api(hub),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| CatalogError::JetStream {
            what: format!("making the mirror stream {name}"),
            detail: e.to_string(),
        })?;
    tracing::info!(nats.stream = %name, hub = %hub, "following the hub's catalog");
    let follower = Follower {
        client,
        mirror,
        hub_bucket,
        region: region.to_string(),
        hub_code,
        opened: None,
        state,
    };
    Ok(tokio::spawn(follower.run(stop)))
}

struct Follower {
    client: async_nats::Client,
    mirror: stream::Stream,
    hub_bucket: String,
    region: String,
    hub_code: HubCodeOpener,
    opened: Option<Arc<dyn CodeStore>>,
    state: State,
}

/// Why an entry could not be applied (yet).
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("code: {0}")]
    Code(#[from] fnmesh_code::CodeStoreError),
    #[error("reading the mirror: {0}")]
    Mirror(String),
    #[error("code {0} is not in the hub's code bucket")]
    MissingCode(String),
}

impl Follower {
    async fn run(mut self, stop: CancellationToken) {
        let mut pause = FIRST_RETRY;
        loop {
            match self.follow(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the catalog mirror failed; starting over");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    /// Reads the mirror from the start until `stop`; an error restarts it.
    async fn follow(&mut self, stop: &CancellationToken) -> Result<(), String> {
        let consumer = self
            .mirror
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("subscribing: {e}"))?;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the consumer ended".into()),
                },
            };
            let Some(key) = CatalogKey::parse_subject(&self.hub_bucket, &message.subject) else {
                tracing::warn!(nats.subject = %message.subject, "catalog: not a catalog entry; ignored");
                continue;
            };
            let entry = if fnmesh_bus::placements::jetstream::is_kv_removal(&message) {
                None
            } else {
                match serde_json::from_slice::<Entry>(&message.payload) {
                    Ok(entry) => Some(entry),
                    Err(e) => {
                        tracing::warn!(error = %e, catalog.key = %key.key(), "catalog: unreadable entry; ignored");
                        continue;
                    }
                }
            };
            let mut pause = FIRST_RETRY;
            loop {
                match self.apply(&key, entry.as_ref()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, catalog.key = %key.key(), retry_in_ms = pause.as_millis() as u64, "catalog: applying an entry failed");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
    }

    async fn apply(&mut self, key: &CatalogKey, entry: Option<&Entry>) -> Result<(), ApplyError> {
        let store = self.state.backends.store.clone();
        match (key, entry) {
            (CatalogKey::Function(ns, name), Some(Entry::Function { versions, aliases })) => {
                self.apply_function(ns, name, versions).await?;
                self.apply_aliases(ns, name, aliases).await
            }
            (CatalogKey::Function(ns, name), None) => self.remove_function(ns, name).await,
            (CatalogKey::Secrets(ns, name), entry) => {
                let sealed = match entry {
                    Some(Entry::Secrets { sealed }) => sealed.0.as_slice(),
                    None => &[],
                    Some(_) => return mismatch(key),
                };
                if store.get_function(ns, name, None).await?.is_none() {
                    // Not placed here (or not yet): its secrets have nowhere to go.
                    return Ok(());
                }
                for old in store.list_secrets(ns, name).await? {
                    if !sealed.iter().any(|s| s.name == old.name) {
                        store.delete_secret(ns, name, &old.name).await?;
                    }
                }
                for secret in sealed {
                    match store
                        .put_secret(ns, name, &secret.name, &secret.value)
                        .await
                    {
                        Ok(()) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.state.lookups.forget_function(ns, name);
                Ok(())
            }
            (CatalogKey::ApiKey(id), Some(Entry::ApiKey { key: record })) => {
                if record.id != *id || crate::auth::is_bootstrap_id(id) {
                    return mismatch(key);
                }
                store.upsert_api_key(record).await?;
                Ok(())
            }
            (CatalogKey::ApiKey(id), None) => {
                if !crate::auth::is_bootstrap_id(id) {
                    store.revoke_api_key(id, chrono::Utc::now()).await?;
                }
                Ok(())
            }
            (CatalogKey::Quota(ns), Some(Entry::Quota { quota })) => {
                if quota.namespace != *ns {
                    return mismatch(key);
                }
                store.put_namespace_quota(quota).await?;
                Ok(())
            }
            // Quotas are never removed at the hub, only changed.
            (CatalogKey::Quota(_), None) => Ok(()),
            (CatalogKey::Registry(ns, host), Some(Entry::Registry { sealed })) => {
                store.put_registry_credential(ns, host, sealed).await?;
                self.state.lookups.forget_registry_credential(ns, host);
                Ok(())
            }
            (CatalogKey::Registry(ns, host), None) => {
                store.delete_registry_credential(ns, host).await?;
                self.state.lookups.forget_registry_credential(ns, host);
                Ok(())
            }
            (_, Some(_)) => mismatch(key),
        }
    }

    async fn apply_function(
        &mut self,
        ns: &Namespace,
        name: &FunctionName,
        versions: &[Function],
    ) -> Result<(), ApplyError> {
        let Some((first, latest)) = versions.first().zip(versions.last()) else {
            return self.remove_function(ns, name).await;
        };
        let valid = versions.iter().enumerate().all(|(i, v)| {
            v.namespace == *ns
                && v.name == *name
                && v.id == first.id
                && u64::from(v.version) == u64::from(first.version) + i as u64
                && v.config.validate().is_ok()
        });
        if !valid {
            return mismatch(&CatalogKey::Function(ns.clone(), name.clone()));
        }
        if !latest.config.placed_in(&self.region) {
            return self.remove_function(ns, name).await;
        }
        // Code first: a version is visible only once its code is here.
        let code = self.state.backends.code.clone();
        for version in versions {
            let checksum = &version.code.checksum;
            if code.exists(checksum).await? {
                continue;
            }
            let hub = self.hub_code().await?;
            // Through a temporary file, a piece at a time.
            let scratch = tempfile::NamedTempFile::new().map_err(|e| {
                fnmesh_code::CodeStoreError::Backend(format!("a temporary file for code: {e}"))
            })?;
            if !hub.get_file(checksum, scratch.path()).await? {
                return Err(ApplyError::MissingCode(checksum.to_string()));
            }
            code.put_file(scratch.path()).await?;
        }
        let store = self.state.backends.store.clone();
        let mut next = first.version;
        if let Some(here) = store.get_function(ns, name, None).await? {
            if here.id == first.id {
                next = here.version + 1;
            } else {
                // Deleted and made anew at the hub.
                store.delete_function(ns, name).await?;
            }
        }
        for version in versions.iter().filter(|v| v.version >= next) {
            let written = if version.version == first.version {
                store.create_function(version).await
            } else {
                store.add_version(version).await
            };
            written?;
        }
        self.state.lookups.forget_function(ns, name);
        if next == first.version {
            // New here: its secrets entry may have come before it (and been skipped then).
            self.apply_latest(&CatalogKey::Secrets(ns.clone(), name.clone()))
                .await?;
        }
        if next <= latest.version {
            tracing::info!(function.namespace = %ns, function.name = %name, function.version = latest.version, "catalog: function replicated");
        }
        Ok(())
    }

    /// Makes the function's aliases here those of the hub: each pointed where the hub points
    /// it, and those the hub no longer has deleted. (An edge's alias keeps its own revision
    /// and previous target: aliases are changed, and rolled back, at the hub.)
    async fn apply_aliases(
        &mut self,
        ns: &Namespace,
        name: &FunctionName,
        aliases: &[Alias],
    ) -> Result<(), ApplyError> {
        let store = self.state.backends.store.clone();
        if store.get_function(ns, name, None).await?.is_none() {
            // Not placed here: its aliases went with it.
            return Ok(());
        }
        if aliases
            .iter()
            .any(|a| a.namespace != *ns || a.function != *name)
        {
            return mismatch(&CatalogKey::Function(ns.clone(), name.clone()));
        }
        let here = store.list_aliases(ns, name).await?;
        for gone in here
            .iter()
            .filter(|h| !aliases.iter().any(|a| a.name == h.name))
        {
            store.delete_alias(ns, name, &gone.name).await?;
            self.state.lookups.forget_alias(ns, name, &gone.name);
        }
        let now = chrono::Utc::now();
        for alias in aliases {
            let same = here
                .iter()
                .any(|h| h.name == alias.name && h.routing == alias.routing);
            if !same {
                store
                    .put_alias(ns, name, &alias.name, &alias.routing, now)
                    .await?;
                self.state.lookups.forget_alias(ns, name, &alias.name);
            }
        }
        Ok(())
    }

    /// Applies the mirror's current entry of `key` (nothing if it has none).
    async fn apply_latest(&mut self, key: &CatalogKey) -> Result<(), ApplyError> {
        let subject = key.subject(&self.hub_bucket);
        let message = match self.mirror.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(ApplyError::Mirror(e.to_string())),
        };
        let removed = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        let entry = if removed {
            None
        } else {
            serde_json::from_slice::<Entry>(&message.payload).ok()
        };
        Box::pin(self.apply(key, entry.as_ref())).await
    }

    async fn remove_function(&self, ns: &Namespace, name: &FunctionName) -> Result<(), ApplyError> {
        if self.state.backends.store.delete_function(ns, name).await? {
            tracing::info!(function.namespace = %ns, function.name = %name, "catalog: function removed");
        }
        self.state.lookups.forget_function(ns, name);
        Ok(())
    }

    async fn hub_code(&mut self) -> Result<Arc<dyn CodeStore>, ApplyError> {
        if let Some(opened) = &self.opened {
            return Ok(opened.clone());
        }
        let opened = (self.hub_code)().await?;
        self.opened = Some(opened.clone());
        Ok(opened)
    }
}

/// Logs an entry whose content does not fit its key, which is ignored (not retried).
fn mismatch(key: &CatalogKey) -> Result<(), ApplyError> {
    tracing::warn!(catalog.key = %key.key(), "catalog: an entry that does not match its key; ignored");
    Ok(())
}
