//! The embedded rate limiter: one in-memory GCRA (`governor`) state per `(key, limit)`.
//!
//! Good for one gateway (or `fnmesh up`); several gateways need a shared backend. The map of
//! states is bounded: past [`DEFAULT_MAX_KEYS`] entries, states whose bucket has refilled (and
//! so hold no information) are dropped first, then the least recently used.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota};

use super::{RateDecision, RateLimit, RateLimitError, RateLimiter};

/// Default bound on the number of `(key, limit)` states kept.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

type Limiter = DefaultDirectRateLimiter<StateInformationMiddleware>;

struct Entry {
    limiter: Arc<Limiter>,
    last_used: Instant,
    /// After this long unused, the bucket is full again: dropping the state loses nothing.
    refill: Duration,
}

/// A [`RateLimiter`] in process memory.
pub struct LocalRateLimiter {
    states: Mutex<HashMap<(String, RateLimit), Entry>>,
    max_keys: usize,
}

impl std::fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimiter")
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalRateLimiter {
    /// A limiter keeping at most [`DEFAULT_MAX_KEYS`] states.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A limiter keeping at most `max_keys` states (at least 1).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            states: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// How many `(key, limit)` states are kept right now.
    pub fn len(&self) -> usize {
        self.states.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no state is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn limiter(
        &self,
        key: &str,
        limit: RateLimit,
        quota: Quota,
    ) -> Result<Arc<Limiter>, RateLimitError> {
        let now = Instant::now();
        let mut states = self
            .states
            .lock()
            .map_err(|_| RateLimitError::Backend("rate limiter state poisoned".to_owned()))?;
        let map_key = (key.to_owned(), limit);
        if let Some(entry) = states.get_mut(&map_key) {
            entry.last_used = now;
            return Ok(entry.limiter.clone());
        }
        if states.len() >= self.max_keys {
            evict(&mut states, self.max_keys, now);
        }
        let limiter = Arc::new(
            governor::RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
        );
        states.insert(
            map_key,
            Entry {
                limiter: limiter.clone(),
                last_used: now,
                refill: quota.burst_size_replenished_in(),
            },
        );
        Ok(limiter)
    }
}

/// Brings the map below 90% of `max_keys`: refilled states first, then the least recently used.
fn evict(states: &mut HashMap<(String, RateLimit), Entry>, max_keys: usize, now: Instant) {
    let before = states.len();
    let target = max_keys - max_keys / 10 - 1;
    states.retain(|_, e| now.duration_since(e.last_used) < e.refill);
    if states.len() > target {
        let mut by_age: Vec<_> = states
            .iter()
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        by_age.sort_by_key(|(t, _)| *t);
        let excess = states.len() - target;
        for (_, k) in by_age.into_iter().take(excess) {
            states.remove(&k);
        }
    }
    tracing::debug!(
        ratelimit.evicted = before - states.len(),
        ratelimit.keys = states.len(),
        "rate limiter states evicted"
    );
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitError> {
        let (Some(per_second), Some(burst)) = (
            NonZeroU32::new(limit.per_second),
            NonZeroU32::new(limit.burst),
        ) else {
            return Err(RateLimitError::InvalidLimit);
        };
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let period = quota.replenish_interval();
        let limiter = self.limiter(key, limit, quota)?;
        Ok(match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit.burst);
                RateDecision {
                    allowed: true,
                    limit: limit.burst,
                    remaining,
                    reset_after: period * (limit.burst - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(limiter.clock().now());
                RateDecision {
                    allowed: false,
                    limit: limit.burst,
                    remaining: 0,
                    reset_after: retry_after + period * (limit.burst - 1),
                    retry_after: Some(retry_after),
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_map_of_states_is_bounded() {
        let limiter = LocalRateLimiter::with_max_keys(100);
        let limit = RateLimit {
            per_second: 1,
            burst: 1,
        };
        for i in 0..1000 {
            limiter.check(&format!("k{i}"), limit).await.unwrap();
            assert!(limiter.len() <= 100, "at most max_keys states");
        }
        // The most recent key kept its state: it is still refused.
        assert!(!limiter.check("k999", limit).await.unwrap().allowed);
    }
}
