//! The publishing side: a region's catalog into its KV bucket.
//!
//! Handlers name what changed ([`super::Catalog::changed`]); one task re-reads each named
//! entry from the store and puts it (or deletes it when the store has nothing), so the bucket
//! always holds the latest committed state. A failed publish is retried every
//! [`RETRY_INTERVAL`]; a full export (every entry the store has, puts only where the bucket
//! differs, deletes what the store no longer has) runs at start and every
//! [`EXPORT_INTERVAL`], which also repairs what two gateways racing on one entry, or a
//! gateway that died between its commit and its publish, left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use fnmesh_core::subjects::{self, BusPrefix, CatalogKey};
use fnmesh_store::{MetadataStore, StoreError};
use futures::TryStreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{read_entry, CatalogError, Entry};

/// How often every entry is exported again.
pub(crate) const EXPORT_INTERVAL: Duration = Duration::from_secs(600);
/// How soon a failed publish or export is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Items read per listing page during an export.
const PAGE: u32 = 500;

/// The handle handlers name changes through.
pub(crate) struct Publisher {
    changes: mpsc::UnboundedSender<CatalogKey>,
}

impl Publisher {
    /// Opens (creating if needed) the catalog bucket of `region` and starts the task.
    pub(crate) async fn start(
        client: async_nats::Client,
        region: &BusPrefix,
        store: Arc<dyn MetadataStore>,
        stop: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), CatalogError> {
        let bucket = subjects::catalog_bucket(region);
        let js = jetstream::new(client);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "fnmesh catalog: functions, sealed secrets, hashed keys, quotas"
                        .into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| CatalogError::JetStream {
                    what: format!("creating the bucket {bucket}"),
                    detail: e.to_string(),
                })?,
        };
        let (changes, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(kv, store, receiver, stop));
        tracing::info!(nats.bucket = %bucket, "publishing the catalog");
        Ok((Self { changes }, task))
    }

    /// Names an entry to publish again.
    pub(crate) fn changed(&self, key: CatalogKey) {
        let _ = self.changes.send(key);
    }
}

async fn run(
    kv: kv::Store,
    store: Arc<dyn MetadataStore>,
    mut changes: mpsc::UnboundedReceiver<CatalogKey>,
    stop: CancellationToken,
) {
    let mut pending = BTreeSet::new();
    let mut export_due = Instant::now();
    loop {
        if Instant::now() >= export_due {
            match export(&kv, store.as_ref()).await {
                Ok((put, deleted)) => {
                    tracing::info!(
                        catalog.put = put,
                        catalog.deleted = deleted,
                        "catalog exported"
                    );
                    export_due = Instant::now() + EXPORT_INTERVAL;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "catalog export failed; retrying");
                    export_due = Instant::now() + RETRY_INTERVAL;
                }
            }
        }
        for key in std::mem::take(&mut pending) {
            if let Err(e) = publish(&kv, store.as_ref(), &key).await {
                tracing::warn!(error = %e, catalog.key = %key.key(), "catalog publish failed; retrying");
                pending.insert(key);
            }
        }
        let wake = if pending.is_empty() {
            export_due
        } else {
            (Instant::now() + RETRY_INTERVAL).min(export_due)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            key = changes.recv() => match key {
                Some(key) => {
                    pending.insert(key);
                    while let Ok(key) = changes.try_recv() {
                        pending.insert(key);
                    }
                }
                None => return,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    #[error("writing the bucket: {0}")]
    Bucket(String),
}

fn bucket_error(e: impl std::fmt::Display) -> PublishError {
    PublishError::Bucket(e.to_string())
}

/// Puts the current entry of `key`, or deletes it.
async fn publish(
    kv: &kv::Store,
    store: &dyn MetadataStore,
    key: &CatalogKey,
) -> Result<(), PublishError> {
    match read_entry(store, key).await? {
        Some(entry) => put_if_changed(kv, key, &entry).await.map(|_| ()),
        None => kv.delete(key.key()).await.map_err(bucket_error),
    }
}

/// Puts `entry` unless the bucket holds it already; whether it put.
async fn put_if_changed(
    kv: &kv::Store,
    key: &CatalogKey,
    entry: &Entry,
) -> Result<bool, PublishError> {
    let value = Bytes::from(serde_json::to_vec(entry).map_err(bucket_error)?);
    let name = key.key();
    if kv.get(&name).await.map_err(bucket_error)?.as_ref() == Some(&value) {
        return Ok(false);
    }
    kv.put(&name, value).await.map_err(bucket_error)?;
    Ok(true)
}

/// Every entry the store has; `(put, deleted)`.
async fn export(kv: &kv::Store, store: &dyn MetadataStore) -> Result<(usize, usize), PublishError> {
    let mut entries: BTreeMap<CatalogKey, Entry> = BTreeMap::new();
    let mut keep = |key: CatalogKey, entry: Option<Entry>| {
        if let Some(entry) = entry {
            entries.insert(key, entry);
        }
    };
    // Keys first: they also name the namespaces that hold no function yet.
    let mut namespaces: BTreeSet<fnmesh_core::Namespace> =
        store.function_namespaces().await?.into_iter().collect();
    let mut cursor = None;
    loop {
        let page = store.list_api_keys(None, PAGE, cursor.as_deref()).await?;
        for record in page.items {
            namespaces.insert(record.namespace.clone());
            if crate::auth::is_bootstrap_id(&record.id) {
                continue;
            }
            if let Some(key) = CatalogKey::api_key(&record.id) {
                keep(key, Some(Entry::ApiKey { key: record }));
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    for quota in store.list_namespace_quotas().await? {
        keep(
            CatalogKey::Quota(quota.namespace.clone()),
            Some(Entry::Quota { quota }),
        );
    }
    for ns in &namespaces {
        for credential in store.list_registry_credentials(ns).await? {
            let key = CatalogKey::Registry(ns.clone(), credential.host);
            let entry = read_entry(store, &key).await?;
            keep(key, entry);
        }
        let mut cursor = None;
        loop {
            let page = store.list_functions(ns, PAGE, cursor.as_deref()).await?;
            for function in page.items {
                for key in [
                    CatalogKey::Function(ns.clone(), function.name.clone()),
                    CatalogKey::Secrets(ns.clone(), function.name.clone()),
                ] {
                    let entry = read_entry(store, &key).await?;
                    keep(key, entry);
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    let mut put = 0;
    for (key, entry) in &entries {
        put += usize::from(put_if_changed(kv, key, entry).await?);
    }
    let mut deleted = 0;
    let names: Vec<String> = match kv.keys().await {
        Ok(keys) => keys.try_collect().await.map_err(bucket_error)?,
        Err(e) => return Err(bucket_error(e)),
    };
    for name in names {
        let stale = CatalogKey::parse(&name).is_none_or(|key| !entries.contains_key(&key));
        if stale {
            kv.delete(&name).await.map_err(bucket_error)?;
            deleted += 1;
        }
    }
    Ok((put, deleted))
}
