//! Short-lived caches of what every invocation looks up: API keys by hash, function versions,
//! the aliases invoked and a function's sealed secrets, so the hot path reads the store only
//! about once a second per key and function instead of three times per request.
//!
//! Each entry lives at most [`LOOKUP_TTL`]: a change made through another gateway (a revoked or
//! deleted key, a new version, a moved alias, a changed secret, a deleted function) takes
//! effect here within that bound; the gateway that makes a change forgets the entries it affects at once. Only
//! what was found is cached (an unknown key or function is read every time, so a flood of
//! made-up keys cannot fill the cache nor keep a newly made one unknown); a namespace's
//! registry credential is cached absent too (its hosts are those of deployed image
//! functions). Each cache is bounded by [`MAX_ENTRIES`]: past it expired entries are dropped,
//! and if all are fresh it starts over.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::{SealedSecrets, SealedValue};
use fnmesh_core::{Alias, AliasName, Function, FunctionName, Namespace};
use fnmesh_store::{ApiKeyRecord, MetadataStore, StoreError};

/// The longest a cached lookup is used: the bound on how long a change made through another
/// gateway takes to be seen.
pub(crate) const LOOKUP_TTL: Duration = Duration::from_secs(1);

/// Entries per cache at most.
pub(crate) const MAX_ENTRIES: usize = 10_000;

/// A bounded map whose entries expire after `ttl`.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock()
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.lock().retain(|k, (_, v)| keep(k, v));
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// API keys by hash (one per gateway, in its authenticator).
pub(crate) struct ApiKeys {
    keys: TtlCache<String, ApiKeyRecord>,
}

impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            keys: TtlCache::new(LOOKUP_TTL),
        }
    }
}

impl ApiKeys {
    /// The key whose hash is `key_hash` ([`MetadataStore::find_api_key`]).
    pub(crate) async fn get(
        &self,
        store: &dyn MetadataStore,
        key_hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        if let Some(record) = self.keys.get(key_hash) {
            return Ok(Some(record));
        }
        let found = store.find_api_key(key_hash).await?;
        if let Some(record) = &found {
            self.keys.insert(key_hash.to_owned(), record.clone());
        }
        Ok(found)
    }

    /// Forgets every cached key (after a key, or a tree of keys, was revoked here).
    pub(crate) fn forget_all(&self) {
        self.keys.clear();
    }
}

/// Function versions, aliases, sealed secrets and registry credentials (one per gateway, in
/// its shared state).
pub(crate) struct Functions {
    functions: TtlCache<(Namespace, FunctionName, Option<u32>), Function>,
    aliases: TtlCache<(Namespace, FunctionName, AliasName), Alias>,
    secrets: TtlCache<(Namespace, FunctionName), SealedSecrets>,
    registries: TtlCache<(Namespace, RegistryHost), Option<SealedValue>>,
}

impl Default for Functions {
    fn default() -> Self {
        Self {
            functions: TtlCache::new(LOOKUP_TTL),
            aliases: TtlCache::new(LOOKUP_TTL),
            secrets: TtlCache::new(LOOKUP_TTL),
            registries: TtlCache::new(LOOKUP_TTL),
        }
    }
}

impl Functions {
    /// An alias of a function ([`MetadataStore::get_alias`]).
    pub(crate) async fn alias(
        &self,
        store: &dyn MetadataStore,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) -> Result<Option<Alias>, StoreError> {
        let key = (namespace.clone(), function.clone(), name.clone());
        if let Some(alias) = self.aliases.get(&key) {
            return Ok(Some(alias));
        }
        let found = store.get_alias(namespace, function, name).await?;
        if let Some(alias) = &found {
            self.aliases.insert(key, alias.clone());
        }
        Ok(found)
    }

    /// Forgets one cached alias (after it changed here).
    pub(crate) fn forget_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) {
        self.aliases
            .retain(|(ns, f, a), _| !(ns == namespace && f == function && a == name));
    }

    /// A function version, or the latest ([`MetadataStore::get_function`]).
    pub(crate) async fn function(
        &self,
        store: &dyn MetadataStore,
        namespace: &Namespace,
        name: &FunctionName,
        version: Option<u32>,
    ) -> Result<Option<Function>, StoreError> {
        let key = (namespace.clone(), name.clone(), version);
        if let Some(function) = self.functions.get(&key) {
            return Ok(Some(function));
        }
        let found = store.get_function(namespace, name, version).await?;
        if let Some(function) = &found {
            self.functions.insert(key, function.clone());
        }
        Ok(found)
    }

    /// A function's sealed secrets ([`MetadataStore::sealed_secrets`]).
    pub(crate) async fn sealed_secrets(
        &self,
        store: &dyn MetadataStore,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<SealedSecrets, StoreError> {
        let key = (namespace.clone(), name.clone());
        if let Some(secrets) = self.secrets.get(&key) {
            return Ok(secrets);
        }
        let secrets = store.sealed_secrets(namespace, name).await?;
        self.secrets.insert(key, secrets.clone());
        Ok(secrets)
    }

    /// `namespace`'s sealed credential for registry `host`
    /// ([`MetadataStore::registry_credential`]); absence is cached too.
    pub(crate) async fn registry_credential(
        &self,
        store: &dyn MetadataStore,
        namespace: &Namespace,
        host: &RegistryHost,
    ) -> Result<Option<SealedValue>, StoreError> {
        let key = (namespace.clone(), host.clone());
        if let Some(found) = self.registries.get(&key) {
            return Ok(found);
        }
        let found = store.registry_credential(namespace, host).await?;
        self.registries.insert(key, found.clone());
        Ok(found)
    }

    /// Forgets `namespace`'s cached credential for `host`, after it was set or removed here.
    pub(crate) fn forget_registry_credential(&self, namespace: &Namespace, host: &RegistryHost) {
        self.registries
            .retain(|(ns, h), _| !(ns == namespace && h == host));
    }

    /// Forgets what is cached of function `name` (its versions, aliases and secrets), after it was
    /// changed, deleted or given other secrets here.
    pub(crate) fn forget_function(&self, namespace: &Namespace, name: &FunctionName) {
        self.functions
            .retain(|(ns, n, _), _| !(ns == namespace && n == name));
        self.aliases
            .retain(|(ns, n, _), _| !(ns == namespace && n == name));
        self.secrets
            .retain(|(ns, n), _| !(ns == namespace && n == name));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert(1u32, "a");
        assert_eq!(cache.get(&1), Some("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&1), None);
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            cache.insert(i, "x");
        }
        assert!(cache.lock().len() <= MAX_ENTRIES);
        cache.retain(|k, _| *k != MAX_ENTRIES as u32 + 9);
        assert_eq!(cache.get(&(MAX_ENTRIES as u32 + 9)), None);
    }
}
