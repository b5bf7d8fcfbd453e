//! Per-key concurrency caps: at most N things (log streams, NATS requests) held at once under
//! one key, counted by an RAII [`KeyPermit`].
//!
//! The key is a principal's lineage root ([`crate::auth::Principal::root_id`]), so keys minted
//! below a key share its caps. The map holds only keys with a permit out (an entry goes when
//! its last permit is dropped), so it is bounded by what the gateway-wide caps let in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Permits per key, at most `limit` out for any one key.
#[derive(Debug)]
pub(crate) struct KeyPermits {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One permit of a key, given back when dropped.
#[derive(Debug)]
pub(crate) struct KeyPermit {
    permits: Arc<KeyPermits>,
    key: String,
}

impl KeyPermits {
    /// At most `limit` permits out per key.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The most permits one key may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A permit for `key`, or `None` when it holds `limit` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &str) -> Option<KeyPermit> {
        let mut held = self.lock();
        let count = held.entry(key.to_owned()).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                held.remove(key);
            }
            return None;
        }
        *count += 1;
        Some(KeyPermit {
            permits: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Permits `key` holds now.
    #[cfg(test)]
    fn held(&self, key: &str) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys with a permit out.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent whatever panicked while holding it: one integer per key.
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut held = self.permits.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_limit_permits_and_others_are_independent() {
        let permits = KeyPermits::new(2);
        let a1 = permits.try_acquire("a");
        let a2 = permits.try_acquire("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(permits.try_acquire("a").is_none(), "the third is refused");
        assert_eq!(permits.held("a"), 2);
        assert!(
            permits.try_acquire("b").is_some(),
            "another key has its own"
        );
        drop(a1);
        assert_eq!(permits.held("a"), 1);
        let a3 = permits.try_acquire("a");
        assert!(a3.is_some(), "a dropped permit is given back");
        drop((a2, a3));
        assert_eq!(permits.held("a"), 0);
        assert_eq!(permits.keys(), 0, "keys without permits are forgotten");
    }

    #[test]
    fn a_zero_limit_refuses_everything_and_keeps_nothing() {
        let permits = KeyPermits::new(0);
        assert!(permits.try_acquire("a").is_none());
        assert_eq!(permits.keys(), 0);
    }
}
