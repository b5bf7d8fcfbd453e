//! The warm pool: which sandboxes exist, which are idle, and who may create one.
//!
//! Sandboxes are keyed by [`PoolKey`] (namespace, function id, version, code checksum, secrets): a version never reuses
//! another version's sandbox and a function never another function's, so module-level state
//! cannot leak between them. Each sandbox serves one invocation at a time.
//!
//! Limits:
//! - per key, at most `max_concurrency` live sandboxes: a fair [`Semaphore`] per key hands out
//!   one permit per in-flight invocation, so an invocation beyond the limit waits (FIFO) until
//!   one finishes, bounded by its deadline;
//! - per node, at most `max_sandboxes` live sandboxes and `max_memory_mb` of their summed memory
//!   limits: at the cap the least-recently-used idle sandbox of another key is evicted, else the
//!   invocation waits until capacity frees up.
//!
//! The pool does not start sandboxes itself: [`Pool::checkout`] gives either a warm [`Lease`]
//! or a [`Reservation`] (a permit plus reserved capacity) that the executor fills with a newly
//! launched [`Instance`]. Idle sandboxes are reaped by [`Pool::reap`] after `keep_alive`, never
//! below the key's `min_warm` (unless a newer version of the function was seen).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fnmesh_core::{FunctionId, Namespace};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::instance::Instance;
use crate::sandbox::ExitReport;

/// Which sandboxes may serve an invocation: one function version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The tenant.
    pub namespace: Namespace,
    /// The function.
    pub function_id: FunctionId,
    /// Its version.
    pub version: u32,
    /// Its code (a version's code never changes, but a forged or altered request could claim
    /// other code for the same version: its sandbox must not serve the real one).
    pub checksum: fnmesh_core::Checksum,
    /// Digest of the sealed secrets its sandboxes were started with (`None`: no secrets).
    pub secrets_digest: Option<String>,
}

/// What a key's sandboxes need, from the function's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Live sandboxes of this key on this node.
    pub max_concurrency: u32,
    /// Idle sandboxes the reaper keeps.
    pub min_warm: u32,
    /// Memory limit of each sandbox.
    pub memory_mb: u32,
}

/// Node-wide limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Live sandboxes.
    pub max_sandboxes: usize,
    /// Sum of live sandboxes' `memory_mb`.
    pub max_memory_mb: u64,
    /// Idle sandboxes are reaped after this.
    pub keep_alive: Duration,
}

/// A snapshot of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Sandboxes that exist or are being created.
    pub live: usize,
    /// Sandboxes waiting for work.
    pub idle: usize,
    /// Sandboxes serving an invocation or being created.
    pub busy: usize,
    /// Sum of the live sandboxes' memory limits.
    pub memory_mb_reserved: u64,
}

/// Why no sandbox could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    /// The deadline passed while waiting for a permit or capacity.
    #[error("no sandbox became free before the deadline")]
    Timeout,
    /// One sandbox of this function would exceed the node's memory cap.
    #[error("a sandbox of {memory_mb} MiB exceeds this node's memory cap of {cap_mb} MiB")]
    TooLarge {
        /// The function's memory limit.
        memory_mb: u32,
        /// The node's cap.
        cap_mb: u64,
    },
    /// The pool is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

struct Idle {
    instance: Instance,
    since: Instant,
}

struct KeyState {
    permits: Arc<Semaphore>,
    idle: Vec<Idle>,
    /// Idle + busy + being created.
    live: u32,
    /// Reservations made by `prewarm` and not yet filled.
    prewarming: u32,
    min_warm: u32,
    /// A newer version of the function exists: keep none warm.
    superseded: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<PoolKey, KeyState>,
    live: usize,
    idle: usize,
    busy: usize,
    memory_mb: u64,
    shutting_down: bool,
    /// Ids of every sandbox that holds capacity and has an instance.
    ids: HashSet<String>,
}

impl State {
    fn fits(&self, limits: &PoolLimits, freed: usize, freed_mb: u64, memory_mb: u32) -> bool {
        self.live - freed < limits.max_sandboxes
            && self.memory_mb - freed_mb + u64::from(memory_mb) <= limits.max_memory_mb
    }

    fn reserve(&mut self, key: &PoolKey, memory_mb: u32) {
        self.live += 1;
        self.busy += 1;
        self.memory_mb += u64::from(memory_mb);
        if let Some(k) = self.keys.get_mut(key) {
            k.live += 1;
        }
    }

    /// Forgets one busy sandbox (or reservation) of `key`.
    fn unreserve(&mut self, key: &PoolKey, memory_mb: u32) {
        self.live = self.live.saturating_sub(1);
        self.busy = self.busy.saturating_sub(1);
        self.memory_mb = self.memory_mb.saturating_sub(u64::from(memory_mb));
        if let Some(k) = self.keys.get_mut(key) {
            k.live = k.live.saturating_sub(1);
        }
    }

    /// Takes idle sandboxes of other keys, least recently used first, until `memory_mb` more
    /// fits; takes none when even all of them would not make room.
    fn evict_for(
        &mut self,
        limits: &PoolLimits,
        key: &PoolKey,
        memory_mb: u32,
    ) -> Option<Vec<Instance>> {
        let mut candidates: Vec<(Instant, &PoolKey, u32)> = self
            .keys
            .iter()
            .filter(|(k, _)| *k != key)
            .flat_map(|(k, ks)| {
                ks.idle
                    .iter()
                    .map(move |i| (i.since, k, i.instance.memory_mb()))
            })
            .collect();
        candidates.sort_by_key(|(since, _, _)| *since);
        let (mut count, mut freed_mb) = (0usize, 0u64);
        let mut chosen: Vec<(PoolKey, Instant)> = Vec::new();
        for (since, k, mb) in candidates {
            if self.fits(limits, count, freed_mb, memory_mb) {
                break;
            }
            count += 1;
            freed_mb += u64::from(mb);
            chosen.push((k.clone(), since));
        }
        if !self.fits(limits, count, freed_mb, memory_mb) {
            return None;
        }
        let mut victims = Vec::with_capacity(chosen.len());
        for (k, since) in chosen {
            let Some(ks) = self.keys.get_mut(&k) else {
                continue;
            };
            let Some(pos) = ks.idle.iter().position(|i| i.since == since) else {
                continue;
            };
            let idle = ks.idle.remove(pos);
            ks.live = ks.live.saturating_sub(1);
            self.live -= 1;
            self.idle -= 1;
            self.memory_mb = self
                .memory_mb
                .saturating_sub(u64::from(idle.instance.memory_mb()));
            self.ids.remove(idle.instance.id());
            victims.push(idle.instance);
        }
        Some(victims)
    }
}

/// The warm pool. See the module docs.
pub struct Pool {
    limits: PoolLimits,
    state: Mutex<State>,
    /// Signalled whenever capacity is freed or a sandbox becomes idle.
    changed: Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A warm sandbox or the right to create one.
#[derive(Debug)]
pub enum Checkout {
    /// An idle sandbox, now busy.
    Warm(Box<Lease>),
    /// Capacity for a new sandbox; fill it with [`Reservation::fill`].
    Cold(Reservation),
}

impl Pool {
    /// An empty pool.
    pub fn new(limits: PoolLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections never panic midway; a poisoned lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The limits.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let state = self.lock();
        PoolStats {
            live: state.live,
            idle: state.idle,
            busy: state.busy,
            memory_mb_reserved: state.memory_mb,
        }
    }

    /// Registers `key` (updating its limits) and returns its permits.
    fn register(&self, state: &mut State, key: &PoolKey, limits: KeyLimits) -> Arc<Semaphore> {
        if let Some(ks) = state.keys.get_mut(key) {
            ks.min_warm = limits.min_warm;
            return Arc::clone(&ks.permits);
        }
        // A new key: it supersedes older versions of the function (and the same version with
        // other secrets: the new key is the current set), or is itself superseded.
        let same_function =
            |k: &PoolKey| k.function_id == key.function_id && k.namespace == key.namespace;
        let mut superseded = false;
        for (k, ks) in state.keys.iter_mut().filter(|(k, _)| same_function(k)) {
            if k.version < key.version
                || (k.version == key.version
                    && (k.secrets_digest != key.secrets_digest || k.checksum != key.checksum))
            {
                ks.superseded = true;
            } else {
                superseded = true;
            }
        }
        let permits = Arc::new(Semaphore::new(limits.max_concurrency.max(1) as usize));
        state.keys.insert(
            key.clone(),
            KeyState {
                permits: Arc::clone(&permits),
                idle: Vec::new(),
                live: 0,
                prewarming: 0,
                min_warm: limits.min_warm,
                superseded,
            },
        );
        permits
    }

    /// A sandbox for one invocation of `key`: an idle one, or capacity for a new one (evicting
    /// idle sandboxes of other keys if needed). Waits until `deadline`.
    pub async fn checkout(
        self: &Arc<Self>,
        key: &PoolKey,
        limits: KeyLimits,
        deadline: Instant,
    ) -> Result<Checkout, CheckoutError> {
        if u64::from(limits.memory_mb) > self.limits.max_memory_mb {
            return Err(CheckoutError::TooLarge {
                memory_mb: limits.memory_mb,
                cap_mb: self.limits.max_memory_mb,
            });
        }
        let permits = {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(CheckoutError::ShuttingDown);
            }
            self.register(&mut state, key, limits)
        };
        let permit = match tokio::time::timeout_at(deadline, permits.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(CheckoutError::ShuttingDown),
            Err(_) => return Err(CheckoutError::Timeout),
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let victims = {
                let mut state = self.lock();
                if state.shutting_down {
                    return Err(CheckoutError::ShuttingDown);
                }
                self.register(&mut state, key, limits);
                let warm = state.keys.get_mut(key).and_then(|ks| ks.idle.pop());
                if let Some(idle) = warm {
                    state.idle -= 1;
                    state.busy += 1;
                    return Ok(Checkout::Warm(Box::new(Lease {
                        pool: Arc::clone(self),
                        key: key.clone(),
                        instance: Some(idle.instance),
                        _permit: Some(permit),
                    })));
                }
                if state.fits(&self.limits, 0, 0, limits.memory_mb) {
                    Some(Vec::new())
                } else {
                    state.evict_for(&self.limits, key, limits.memory_mb)
                }
                .inspect(|_| state.reserve(key, limits.memory_mb))
            };
            if let Some(victims) = victims {
                let reservation = Reservation {
                    pool: Arc::clone(self),
                    key: key.clone(),
                    memory_mb: limits.memory_mb,
                    permit: Some(permit),
                    prewarm: false,
                };
                if !victims.is_empty() {
                    tracing::debug!(
                        evicted = victims.len(),
                        "evicting idle sandboxes for capacity"
                    );
                    futures::future::join_all(victims.into_iter().map(|i| i.destroy())).await;
                }
                return Ok(Checkout::Cold(reservation));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(CheckoutError::Timeout);
            }
        }
    }

    /// Capacity for one more warm sandbox of `key` if it is below `min_warm` and there is room
    /// without waiting or evicting; `None` otherwise.
    pub fn reserve_prewarm(
        self: &Arc<Self>,
        key: &PoolKey,
        limits: KeyLimits,
    ) -> Option<Reservation> {
        let mut state = self.lock();
        if state.shutting_down || u64::from(limits.memory_mb) > self.limits.max_memory_mb {
            return None;
        }
        let permits = self.register(&mut state, key, limits);
        let ks = state.keys.get(key)?;
        if ks.superseded || ks.idle.len() as u32 + ks.prewarming >= limits.min_warm {
            return None;
        }
        if !state.fits(&self.limits, 0, 0, limits.memory_mb) {
            return None;
        }
        let permit = permits.try_acquire_owned().ok()?;
        state.reserve(key, limits.memory_mb);
        if let Some(ks) = state.keys.get_mut(key) {
            ks.prewarming += 1;
        }
        Some(Reservation {
            pool: Arc::clone(self),
            key: key.clone(),
            memory_mb: limits.memory_mb,
            permit: Some(permit),
            prewarm: true,
        })
    }

    /// Removes the idle sandboxes idle for longer than `keep_alive` at `now` (keeping each key's
    /// `min_warm`) and forgets keys with nothing left; the caller destroys what is returned.
    pub fn reap(&self, now: Instant) -> Vec<Instance> {
        let keep_alive = self.limits.keep_alive;
        let mut state = self.lock();
        let mut expired = Vec::new();
        let mut freed_mb = 0u64;
        for ks in state.keys.values_mut() {
            let keep = if ks.superseded { 0 } else { ks.min_warm };
            // `idle` is in release order: the front has been idle the longest.
            while ks.live > keep
                && ks
                    .idle
                    .first()
                    .is_some_and(|i| now.saturating_duration_since(i.since) >= keep_alive)
            {
                let idle = ks.idle.remove(0);
                ks.live -= 1;
                freed_mb += u64::from(idle.instance.memory_mb());
                expired.push(idle.instance);
            }
        }
        state
            .keys
            .retain(|_, ks| ks.live > 0 || ks.prewarming > 0 || Arc::strong_count(&ks.permits) > 1);
        state.live -= expired.len();
        state.idle -= expired.len();
        state.memory_mb = state.memory_mb.saturating_sub(freed_mb);
        for instance in &expired {
            state.ids.remove(instance.id());
        }
        drop(state);
        if !expired.is_empty() {
            self.changed.notify_waiters();
        }
        expired
    }

    /// Stops handing out sandboxes: pending and future checkouts fail with `ShuttingDown`, and
    /// released sandboxes are destroyed instead of kept. Returns the idle ones to destroy.
    pub fn begin_shutdown(&self) -> Vec<Instance> {
        let mut state = self.lock();
        state.shutting_down = true;
        let mut idle = Vec::new();
        let mut freed_mb = 0u64;
        for ks in state.keys.values_mut() {
            ks.permits.close();
            for i in ks.idle.drain(..) {
                ks.live = ks.live.saturating_sub(1);
                freed_mb += u64::from(i.instance.memory_mb());
                idle.push(i.instance);
            }
        }
        state.live -= idle.len();
        state.idle -= idle.len();
        state.memory_mb = state.memory_mb.saturating_sub(freed_mb);
        for instance in &idle {
            state.ids.remove(instance.id());
        }
        drop(state);
        self.changed.notify_waiters();
        idle
    }

    /// Waits until no sandbox is busy, or `deadline`; returns the ids of sandboxes still live.
    pub async fn wait_idle(&self, deadline: Instant) -> Vec<String> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.busy == 0 || Instant::now() >= deadline {
                    let mut ids: Vec<String> = state.ids.iter().cloned().collect();
                    ids.sort();
                    return ids;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Idle sandboxes of `key` right now.
    pub fn idle_of(&self, key: &PoolKey) -> usize {
        self.lock().keys.get(key).map_or(0, |ks| ks.idle.len())
    }
}

/// Capacity (and a permit) for one new sandbox; released again if dropped unfilled.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<Pool>,
    key: PoolKey,
    memory_mb: u32,
    permit: Option<OwnedSemaphorePermit>,
    prewarm: bool,
}

impl Reservation {
    /// Turns the reservation into a busy lease of `instance`.
    pub fn fill(mut self, instance: Instance) -> Lease {
        {
            let mut state = self.pool.lock();
            state.ids.insert(instance.id().to_owned());
            if self.prewarm {
                if let Some(ks) = state.keys.get_mut(&self.key) {
                    ks.prewarming = ks.prewarming.saturating_sub(1);
                }
            }
        }
        // Disarm our Drop: the lease now owns the capacity.
        self.memory_mb = 0;
        self.prewarm = false;
        Lease {
            pool: Arc::clone(&self.pool),
            key: self.key.clone(),
            instance: Some(instance),
            _permit: self.permit.take(),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.is_none() {
            return;
        }
        {
            let mut state = self.pool.lock();
            state.unreserve(&self.key, self.memory_mb);
            if self.prewarm {
                if let Some(ks) = state.keys.get_mut(&self.key) {
                    ks.prewarming = ks.prewarming.saturating_sub(1);
                }
            }
        }
        self.pool.changed.notify_waiters();
    }
}

/// A busy sandbox. Give it back with [`Lease::release`] or [`Lease::discard`]; dropping it
/// destroys the sandbox.
pub struct Lease {
    pool: Arc<Pool>,
    key: PoolKey,
    instance: Option<Instance>,
    // Dropped after the instance went back to the idle list, so the next waiter finds it.
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Lease {
    /// The sandbox. `None` only after release/discard, which consume the lease.
    pub fn instance(&mut self) -> Option<&mut Instance> {
        self.instance.as_mut()
    }

    /// Returns the sandbox to the idle list (or destroys it when the pool is shutting down).
    pub async fn release(mut self) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        let rejected = {
            let mut state = self.pool.lock();
            let keep = !state.shutting_down && state.keys.contains_key(&self.key);
            if keep {
                state.busy -= 1;
                state.idle += 1;
                if let Some(ks) = state.keys.get_mut(&self.key) {
                    ks.idle.push(Idle {
                        instance,
                        since: Instant::now(),
                    });
                }
                None
            } else {
                state.unreserve(&self.key, instance.memory_mb());
                state.ids.remove(instance.id());
                Some(instance)
            }
        };
        self.pool.changed.notify_waiters();
        if let Some(instance) = rejected {
            instance.destroy().await;
        }
    }

    /// Destroys the sandbox and frees its capacity.
    pub async fn discard(mut self) -> ExitReport {
        let Some(instance) = self.instance.take() else {
            return ExitReport::default();
        };
        {
            let mut state = self.pool.lock();
            state.unreserve(&self.key, instance.memory_mb());
            state.ids.remove(instance.id());
        }
        let report = instance.destroy().await;
        self.pool.changed.notify_waiters();
        report
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            {
                let mut state = self.pool.lock();
                state.unreserve(&self.key, instance.memory_mb());
                state.ids.remove(instance.id());
            }
            self.pool.changed.notify_waiters();
            // The instance's own drop guard destroys the container in the background.
            drop(instance);
        }
    }
}
