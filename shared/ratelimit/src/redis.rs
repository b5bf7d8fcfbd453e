//! The shared rate limiter: GCRA in Redis, so that every gateway enforces one limit per key.
//!
//! Each decision is one atomic Lua script ([`GCRA_SCRIPT`], sent with `EVALSHA` and resent
//! with `EVAL` on `NOSCRIPT` by [`redis::Script`]). The script reads the time with Redis `TIME`
//! (gateway clocks never enter a decision), keeps the theoretical arrival time (TAT) of the
//! bucket under [`bucket_key`], and gives that key a `PX` expiry equal to the time until the
//! bucket is full again: an expired key and a full bucket are the same thing, so Redis only
//! holds state for keys that were used recently (run it with `maxmemory-policy noeviction`).
//!
//! In front of Redis, a [`LocalRateLimiter`] per gateway sheds floods without a round trip. Its
//! limit is the global one times [`RedisLimiterConfig::local_multiplier`] (default 1), plus
//! 100 ms of refill as slack for the jitter between the gateway's clock and Redis's. A single
//! gateway can never legitimately admit more than the global limit, so a local limit at least
//! as large only refuses what Redis would refuse anyway. The slack also covers GCRA's
//! one-interval difference between "admitted locally" and "admitted globally". Raise the
//! multiplier to the number of gateways to make the fallback of [`FailurePolicy::FailOpen`]
//! enforce a per-gateway share instead of the full limit on each gateway.
//!
//! When Redis fails (down, slow past [`RedisLimiterConfig::timeout`], or not reachable at
//! start), the [`FailurePolicy`] decides: fail open (the local limiter's decision) or fail
//! closed (refuse, retry after 1 s). A check never returns an error for a backend failure; it
//! logs a warning at most every [`WARN_EVERY`] and counts the failure
//! ([`RedisRateLimiter::redis_errors`]). After a failure, Redis is left alone for
//! [`RedisLimiterConfig::retry_after_failure`] so a dead Redis costs no latency per request.
//! A limiter whose Redis is down at start still starts (applying the policy) and connects
//! when Redis comes up: the limiter state is disposable, and a gateway that cannot serve
//! because a cache is down would turn a Redis outage into a full outage.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::local::LocalRateLimiter;
use super::{RateDecision, RateLimit, RateLimitError, RateLimiter};

/// Prefix of every key the limiter writes.
pub const KEY_PREFIX: &str = "fnmesh:rl:";

/// The longest a failure warning stays silent while failures go on.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The shortest retry-after of a refusal.
const MIN_RETRY_AFTER: Duration = Duration::from_micros(1);

/// Retry-after of a request refused because Redis failed under [`FailurePolicy::FailClosed`].
pub const FAIL_CLOSED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The GCRA decision, atomically in Redis.
///
/// `KEYS[1]` is the bucket; `ARGV[1]` the emission interval (1 / rate) in microseconds, maybe
/// fractional; `ARGV[2]` the burst. Times are microseconds since 2020-01-01 UTC: small enough
/// for Lua's doubles to keep sub-microsecond precision (until about the year 2300). Returns
/// `{allowed (0|1), remaining, retry_after_us, reset_after_us}`.
pub const GCRA_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1577836800) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl_ms)
local remaining = math.floor((now - allow_at) / interval + 0.000001)
return {1, remaining, 0, math.ceil(new_tat - now)}
"#;

/// The Redis key of `key`'s bucket under `limit`: `fnmesh:rl:<key>:<per_second>:<burst>`.
///
/// The limit is part of the key, so different limits on one subject never share a bucket;
/// the two numeric fields at the end keep the key unambiguous whatever `key` contains.
pub fn bucket_key(key: &str, limit: RateLimit) -> String {
    format!("{KEY_PREFIX}{key}:{}:{}", limit.per_second, limit.burst)
}

/// What a check does when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Decide with the gateway's local limiter (the default, like Envoy's).
    #[default]
    FailOpen,
    /// Refuse, with a retry-after of [`FAIL_CLOSED_RETRY_AFTER`].
    FailClosed,
}

impl FailurePolicy {
    /// The config name (`fail_open`, `fail_closed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
        }
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure policy name that is neither `fail_open` nor `fail_closed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rate limit failure policy {0:?}: expected one of fail_open, fail_closed")]
pub struct ParseFailurePolicyError(pub String);

impl FromStr for FailurePolicy {
    type Err = ParseFailurePolicyError;

    /// Parses `fail_open` or `fail_closed` (case-insensitive, `-` accepted for `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "fail_open" => Ok(Self::FailOpen),
            "fail_closed" => Ok(Self::FailClosed),
            _ => Err(ParseFailurePolicyError(s.chars().take(40).collect())),
        }
    }
}

/// Settings of a [`RedisRateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisLimiterConfig {
    /// What to do when Redis cannot answer.
    pub failure_policy: FailurePolicy,
    /// The local limiter admits this many times the global limit (at least 1; see the
    /// module doc).
    pub local_multiplier: u32,
    /// Longest wait for Redis (connecting or deciding) before the policy applies.
    pub timeout: Duration,
    /// After a failure, Redis is not asked again for this long (the policy applies).
    pub retry_after_failure: Duration,
}

impl Default for RedisLimiterConfig {
    fn default() -> Self {
        Self {
            failure_policy: FailurePolicy::FailOpen,
            local_multiplier: 1,
            timeout: Duration::from_millis(250),
            retry_after_failure: Duration::from_millis(500),
        }
    }
}

/// A [`RateLimiter`] whose state lives in Redis, shared by every gateway using that Redis.
pub struct RedisRateLimiter {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    script: redis::Script,
    local: LocalRateLimiter,
    config: RedisLimiterConfig,
    started: Instant,
    /// Redis is not asked before this instant (milliseconds since `started`).
    skip_until_ms: AtomicU64,
    /// When the last failure warning was logged (milliseconds since `started`, 0 = never).
    last_warn_ms: AtomicU64,
    errors: AtomicU64,
    errors_at_last_warn: AtomicU64,
    degraded: AtomicBool,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("config", &self.config)
            .field("redis_errors", &self.redis_errors())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

enum Failure {
    /// Redis was not asked (a recent failure, or another task is connecting).
    Skipped,
    /// Redis was asked and failed.
    Failed(String),
}

impl RedisRateLimiter {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) with default settings and
    /// `policy`.
    ///
    /// Only an invalid URL is an error: a Redis that is down at start is a warning, the policy
    /// applies until it comes up (see the module doc).
    pub async fn connect(url: &str, policy: FailurePolicy) -> Result<Self, RateLimitError> {
        Self::connect_with(
            url,
            RedisLimiterConfig {
                failure_policy: policy,
                ..RedisLimiterConfig::default()
            },
        )
        .await
    }

    /// Connects to `url` with `config` (same start behaviour as [`Self::connect`]).
    pub async fn connect_with(
        url: &str,
        config: RedisLimiterConfig,
    ) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url)
            .map_err(|e| RateLimitError::Backend(format!("invalid redis url: {e}")))?;
        let limiter = Self {
            client,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            script: redis::Script::new(GCRA_SCRIPT),
            local: LocalRateLimiter::new(),
            config: RedisLimiterConfig {
                local_multiplier: config.local_multiplier.max(1),
                ..config
            },
            started: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_at_last_warn: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        };
        match limiter.connection().await {
            Ok(_) => tracing::info!(
                ratelimit.failure_policy = %limiter.config.failure_policy,
                "redis rate limiter connected"
            ),
            Err(Failure::Failed(e)) => limiter.failed(&e),
            Err(Failure::Skipped) => {}
        }
        Ok(limiter)
    }

    /// Redis failures (errors and timeouts) since start.
    pub fn redis_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The settings in force.
    pub fn config(&self) -> RedisLimiterConfig {
        self.config
    }

    /// The local limit in front of `limit`: `limit × multiplier`, plus 100 ms of refill.
    pub fn local_limit(&self, limit: RateLimit) -> RateLimit {
        let k = self.config.local_multiplier;
        let per_second = limit.per_second.saturating_mul(k);
        let slack = per_second.div_ceil(10).max(1);
        RateLimit {
            per_second,
            burst: limit.burst.saturating_mul(k).saturating_add(slack),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A connection, connecting first if there is none (one task at a time).
    async fn connection(&self) -> Result<ConnectionManager, Failure> {
        if let Some(c) = self.current_connection() {
            return Ok(c);
        }
        let Ok(_guard) = self.connecting.try_lock() else {
            return Err(Failure::Skipped);
        };
        if let Some(c) = self.current_connection() {
            return Ok(c);
        }
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connect = ConnectionManager::new_with_config(self.client.clone(), manager_config);
        let manager = match tokio::time::timeout(self.config.timeout * 2, connect).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(Failure::Failed(format!("connecting: {e}"))),
            Err(_) => {
                return Err(Failure::Failed(format!(
                    "connecting: no answer within {:?}",
                    self.config.timeout * 2
                )))
            }
        };
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(manager.clone());
        }
        Ok(manager)
    }

    fn current_connection(&self) -> Option<ConnectionManager> {
        self.connection.lock().ok().and_then(|c| c.clone())
    }

    /// Asks Redis, unless a recent failure says not to.
    async fn redis_decision(&self, key: &str, limit: RateLimit) -> Result<RateDecision, Failure> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(Failure::Skipped);
        }
        let mut conn = self.connection().await?;
        let interval_us = 1_000_000.0 / f64::from(limit.per_second);
        let mut invocation = self.script.key(bucket_key(key, limit));
        invocation.arg(format!("{interval_us:.6}")).arg(limit.burst);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        let (allowed, remaining, retry_us, reset_us) =
            match tokio::time::timeout(self.config.timeout, call).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
                Err(_) => {
                    return Err(Failure::Failed(format!(
                        "no answer within {:?}",
                        self.config.timeout
                    )))
                }
            };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        let allowed = allowed == 1;
        Ok(RateDecision {
            allowed,
            limit: limit.burst,
            remaining: if allowed {
                u32::try_from(remaining)
                    .unwrap_or(0)
                    .min(limit.burst.saturating_sub(1))
            } else {
                0
            },
            reset_after: micros(reset_us),
            retry_after: (!allowed).then(|| micros(retry_us).max(MIN_RETRY_AFTER)),
        })
    }

    /// Counts a failure, stops asking Redis for a while and warns (rate limited).
    fn failed(&self, error: &str) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_ms();
        let retry_ms = u64::try_from(self.config.retry_after_failure.as_millis()).unwrap_or(0);
        self.skip_until_ms
            .store(now.saturating_add(retry_ms), Ordering::Relaxed);
        self.degraded.store(true, Ordering::Relaxed);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now.saturating_sub(last) >= every;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let since = errors - self.errors_at_last_warn.swap(errors, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                ratelimit.failure_policy = %self.config.failure_policy,
                ratelimit.redis_errors = errors,
                ratelimit.redis_errors_since_last_warning = since,
                "redis rate limiter failed; applying the failure policy"
            );
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(
                ratelimit.redis_errors = self.redis_errors(),
                "redis rate limiter answering again"
            );
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    fn backend_errors(&self) -> u64 {
        self.redis_errors()
    }

    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitError> {
        if limit.per_second == 0 || limit.burst == 0 {
            return Err(RateLimitError::InvalidLimit);
        }
        // The local limiter is an optimisation; if it fails, Redis alone decides.
        let local = self.local.check(key, self.local_limit(limit)).await.ok();
        if let Some(d) = local.filter(|d| !d.allowed) {
            // governor may report a zero wait when its clock moved on during the check.
            let retry_after = d.retry_after.unwrap_or_default().max(MIN_RETRY_AFTER);
            return Ok(RateDecision {
                limit: limit.burst,
                retry_after: Some(retry_after),
                reset_after: d.reset_after.max(retry_after),
                ..d
            });
        }
        match self.redis_decision(key, limit).await {
            Ok(decision) => {
                self.recovered();
                Ok(decision)
            }
            Err(failure) => {
                if let Failure::Failed(e) = failure {
                    self.failed(&e);
                }
                Ok(match (self.config.failure_policy, local) {
                    (FailurePolicy::FailOpen, Some(d)) => RateDecision {
                        limit: limit.burst,
                        remaining: d.remaining.min(limit.burst.saturating_sub(1)),
                        ..d
                    },
                    (FailurePolicy::FailOpen, None) => RateDecision {
                        allowed: true,
                        limit: limit.burst,
                        remaining: 0,
                        reset_after: Duration::ZERO,
                        retry_after: None,
                    },
                    (FailurePolicy::FailClosed, _) => RateDecision {
                        allowed: false,
                        limit: limit.burst,
                        remaining: 0,
                        reset_after: FAIL_CLOSED_RETRY_AFTER,
                        retry_after: Some(FAIL_CLOSED_RETRY_AFTER),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_list_the_options() {
        assert_eq!(
            "fail_open".parse::<FailurePolicy>().unwrap(),
            FailurePolicy::FailOpen
        );
        assert_eq!(
            "Fail-Closed".parse::<FailurePolicy>().unwrap(),
            FailurePolicy::FailClosed
        );
        let err = "open".parse::<FailurePolicy>().unwrap_err().to_string();
        assert!(
            err.contains("fail_open") && err.contains("fail_closed"),
            "{err}"
        );
        for p in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
            assert_eq!(p.to_string().parse::<FailurePolicy>().unwrap(), p);
        }
    }

    #[test]
    fn bucket_keys_differ_per_limit() {
        let a = RateLimit {
            per_second: 50,
            burst: 10,
        };
        let b = RateLimit {
            per_second: 5,
            burst: 10,
        };
        assert_eq!(bucket_key("fn:ns:f", a), "fnmesh:rl:fn:ns:f:50:10");
        assert_ne!(bucket_key("k", a), bucket_key("k", b));
    }

    #[tokio::test]
    async fn a_bad_url_is_an_error_but_a_down_redis_is_not() {
        assert!(
            RedisRateLimiter::connect("nope://", FailurePolicy::FailOpen)
                .await
                .is_err()
        );
        // Port 1 on loopback: nothing listens.
        let limiter = RedisRateLimiter::connect("redis://127.0.0.1:1", FailurePolicy::FailClosed)
            .await
            .unwrap();
        assert!(limiter.redis_errors() >= 1);
        let limit = RateLimit {
            per_second: 1,
            burst: 1,
        };
        let d = limiter.check("k", limit).await.unwrap();
        assert!(!d.allowed, "fail closed refuses");
        assert_eq!(d.retry_after, Some(FAIL_CLOSED_RETRY_AFTER));
    }

    #[tokio::test]
    async fn the_local_limit_is_never_below_the_global_one() {
        for k in [0, 1, 3] {
            let limiter = RedisRateLimiter::connect_with(
                "redis://127.0.0.1:1",
                RedisLimiterConfig {
                    local_multiplier: k,
                    ..RedisLimiterConfig::default()
                },
            )
            .await
            .unwrap();
            for (per_second, burst) in [(1, 1), (50, 10), (1_000_000, 1_000_000), (u32::MAX, 3)] {
                let limit = RateLimit { per_second, burst };
                let local = limiter.local_limit(limit);
                assert!(local.per_second >= limit.per_second, "{k} {limit:?}");
                assert!(
                    local.burst > limit.burst || local.burst == u32::MAX,
                    "{k} {limit:?}"
                );
            }
            assert_eq!(
                limiter.local_limit(RateLimit {
                    per_second: 50,
                    burst: 10
                }),
                RateLimit {
                    per_second: 50 * k.max(1),
                    burst: 10 * k.max(1) + 5 * k.max(1)
                }
            );
        }
    }
}
