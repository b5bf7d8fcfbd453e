//! Whether the API key behind an access token is still live, cached for a short while.
//!
//! An access token is checked against its key (revoked? expired? deleted?) on every use; the
//! answer is cached per key for at most [`super::jwt::MAX_KEY_CHECK_TTL`], so a key revoked on
//! any gateway stops its tokens everywhere within that time without a store read per request.
//! The gateway that revokes a key forgets its entry at once. The cache is bounded: past
//! [`MAX_ENTRIES`] stale entries are dropped, and if all are fresh the cache starts over.
//!
//! What is cached of a live key are the [`KeyFacts`] a principal needs besides its token's
//! claims: the root of its lineage (rate limits and caps count under it) and its expiry (a
//! key never mints keys that outlive it). An expiry passing is noticed at once, not a TTL
//! later. Open log streams [`KeyStatusCache::recheck`] their key periodically, reading the
//! store each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fnmesh_store::{ApiKeyRecord, MetadataStore, StoreError};

/// Most keys remembered at once.
pub const MAX_ENTRIES: usize = 10_000;

/// Whether a key can be used now: exists, not revoked, not expired.
pub fn is_live(record: &ApiKeyRecord) -> bool {
    let now = Utc::now();
    record.revoked_at.is_none_or(|t| t > now) && record.expires_at.is_none_or(|t| t > now)
}

/// What a principal needs to know of the live key behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// [`ApiKeyRecord::lineage_root`].
    pub root_id: String,
    /// When the key expires, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyFacts {
    /// The facts of `record` if it is live.
    pub fn of_live(record: &ApiKeyRecord) -> Option<Self> {
        is_live(record).then(|| Self {
            root_id: record.lineage_root().to_owned(),
            expires_at: record.expires_at,
        })
    }

    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= Utc::now())
    }
}

/// The cache.
pub struct KeyStatusCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Option<KeyFacts>)>>,
}

impl KeyStatusCache {
    /// A cache whose answers live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether key `id` is live, from the cache or the store.
    pub async fn is_live(&self, store: &dyn MetadataStore, id: &str) -> Result<bool, StoreError> {
        Ok(self.live_facts(store, id).await?.is_some())
    }

    /// The facts of key `id` if it is live (`None` if not), from the cache or the store.
    pub async fn live_facts(
        &self,
        store: &dyn MetadataStore,
        id: &str,
    ) -> Result<Option<KeyFacts>, StoreError> {
        if let Some(facts) = self.cached(id) {
            return Ok(facts.filter(|f| !f.expired()));
        }
        self.recheck(store, id).await
    }

    /// The facts of key `id` if it is live, read from the store (and remembered).
    pub async fn recheck(
        &self,
        store: &dyn MetadataStore,
        id: &str,
    ) -> Result<Option<KeyFacts>, StoreError> {
        let facts = store
            .get_api_key(id)
            .await?
            .as_ref()
            .and_then(KeyFacts::of_live);
        self.remember(id, facts.clone());
        Ok(facts)
    }

    /// Drops what is known of key `id` (after revoking it here).
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }

    fn cached(&self, id: &str) -> Option<Option<KeyFacts>> {
        let entries = self.entries.lock().ok()?;
        let (at, facts) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| facts.clone())
    }

    fn remember(&self, id: &str, facts: Option<KeyFacts>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(id.to_owned(), (Instant::now(), facts));
    }
}
