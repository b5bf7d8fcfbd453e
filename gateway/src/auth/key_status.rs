//! Whether the API key behind an access token is still live, cached for a short while.
//!
//! An access token is checked against its key (revoked? expired? deleted?) on every use; the
//! answer is cached per key for at most [`super::jwt::MAX_KEY_CHECK_TTL`], so a key revoked on
//! any gateway stops its tokens everywhere within that time without a store read per request.
//! The gateway that revokes a key forgets its entry at once. The cache is bounded: past
//! [`MAX_ENTRIES`] stale entries are dropped, and if all are fresh the cache starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use fnmesh_store::{ApiKeyRecord, MetadataStore, StoreError};

/// Most keys remembered at once.
pub const MAX_ENTRIES: usize = 10_000;

/// Whether a key can be used now: exists, not revoked, not expired.
pub fn is_live(record: &ApiKeyRecord) -> bool {
    let now = Utc::now();
    record.revoked_at.is_none_or(|t| t > now) && record.expires_at.is_none_or(|t| t > now)
}

/// The cache.
pub struct KeyStatusCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, bool)>>,
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
        if let Some(live) = self.cached(id) {
            return Ok(live);
        }
        let live = store.get_api_key(id).await?.as_ref().is_some_and(is_live);
        self.remember(id, live);
        Ok(live)
    }

    /// Drops what is known of key `id` (after revoking it here).
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }

    fn cached(&self, id: &str) -> Option<bool> {
        let entries = self.entries.lock().ok()?;
        let (at, live) = entries.get(id)?;
        (at.elapsed() < self.ttl).then_some(*live)
    }

    fn remember(&self, id: &str, live: bool) {
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
        entries.insert(id.to_owned(), (Instant::now(), live));
    }
}
