//! The node's entry in the node registry: a first heartbeat at start, then one every interval
//! with the node's current load (free slots, warm sandboxes), `draining` once shutdown begins,
//! and a `leave` after the drain so the node drops out at once rather than after its time to
//! live.
//!
//! Heartbeats that fail are logged and retried at the next tick: the registry is for
//! operators and placement, never on the path of an invocation. Each write is bounded by the
//! interval, so a hung backend cannot pile heartbeats up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fnmesh_bus::registry::{NodeInfo, NodeRegistry, NodeState};
use fnmesh_core::NodeId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default interval between heartbeats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// How long `leave` waits for the registry.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node announces about itself.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The node's id.
    pub node_id: NodeId,
    /// The region (bus prefix) it works in.
    pub region: String,
    /// Runtimes it can run.
    pub runtimes: Vec<String>,
    /// Interval between heartbeats (at least 100 ms).
    pub interval: Duration,
    /// The public key the node's bus signs its reports with ([`fnmesh_bus::Bus::report_key`]).
    pub signing_key: Option<String>,
}

/// The node's load at one heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Invocations the node runs at once.
    pub slots_total: usize,
    /// Of which free right now.
    pub slots_free: usize,
    /// Idle sandboxes ready to serve.
    pub warm_sandboxes: usize,
    /// The images in the node's cache.
    pub images: Vec<fnmesh_bus::registry::CachedImage>,
}

/// Samples the node's load for each heartbeat.
pub type LoadSampler = Arc<dyn Fn() -> Load + Send + Sync>;

/// A node's running registration.
pub struct Registration {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Shared {
    registry: Arc<dyn NodeRegistry>,
    config: RegistrationConfig,
    started_at: chrono::DateTime<Utc>,
    sample: LoadSampler,
    draining: AtomicBool,
    /// Asks the loop for a heartbeat now (e.g. to announce draining).
    wake: Notify,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Shared {
    fn interval(&self) -> Duration {
        self.config.interval.max(Duration::from_millis(100))
    }

    fn info(&self) -> NodeInfo {
        let load = (self.sample)();
        let now = Utc::now();
        NodeInfo {
            id: self.config.node_id.clone(),
            region: self.config.region.clone(),
            runtimes: self.config.runtimes.clone(),
            slots_total: count(load.slots_total),
            slots_free: count(load.slots_free),
            warm_sandboxes: count(load.warm_sandboxes),
            state: if self.draining.load(Ordering::Relaxed) {
                NodeState::Draining
            } else {
                NodeState::Active
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            last_heartbeat_at: now,
            uptime_secs: u64::try_from((now - self.started_at).num_seconds()).unwrap_or(0),
            heartbeat_interval_ms: u64::try_from(self.interval().as_millis()).unwrap_or(u64::MAX),
            signing_key: self.config.signing_key.clone(),
            images: load.images,
        }
    }

    async fn heartbeat(&self) {
        let info = self.info();
        match tokio::time::timeout(self.interval(), self.registry.heartbeat(&info)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(node.id = %info.id, error = %e, "heartbeat failed"),
            Err(_) => tracing::warn!(
                node.id = %info.id,
                timeout_ms = self.interval().as_millis() as u64,
                "heartbeat timed out"
            ),
        }
    }
}

impl Registration {
    /// Writes the first heartbeat, then keeps heartbeating in the background until
    /// [`Registration::leave`].
    pub async fn start(
        registry: Arc<dyn NodeRegistry>,
        config: RegistrationConfig,
        sample: LoadSampler,
    ) -> Self {
        let shared = Arc::new(Shared {
            registry,
            config,
            started_at: Utc::now(),
            sample,
            draining: AtomicBool::new(false),
            wake: Notify::new(),
        });
        shared.heartbeat().await;
        tracing::info!(
            node.id = %shared.config.node_id,
            heartbeat_interval_ms = shared.interval().as_millis() as u64,
            "node registered"
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat_loop(shared.clone(), stop.clone()));
        Self { shared, stop, task }
    }

    /// Announces that the node stopped pulling and is finishing its in-flight work (a
    /// heartbeat is written at once; heartbeats go on until [`Registration::leave`]).
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Stops heartbeating and removes the node's entry (bounded; a failure is logged, and the
    /// entry then expires after its time to live).
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let id = &self.shared.config.node_id;
        match tokio::time::timeout(LEAVE_TIMEOUT, self.shared.registry.leave(id)).await {
            Ok(Ok(())) => tracing::info!(node.id = %id, "node left the registry"),
            Ok(Err(e)) => tracing::warn!(node.id = %id, error = %e, "leaving the registry failed"),
            Err(_) => tracing::warn!(node.id = %id, "leaving the registry timed out"),
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(shared.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; `start` already wrote that heartbeat.
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            () = shared.wake.notified() => ticker.reset(),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.heartbeat() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::AtomicUsize;

    use fnmesh_bus::registry::memory::MemoryRegistry;

    use super::*;

    async fn wait_for(
        registry: &MemoryRegistry,
        what: &str,
        check: impl Fn(&[NodeInfo]) -> bool,
    ) -> Vec<NodeInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let nodes = registry.list().await.unwrap();
            if check(&nodes) {
                return nodes;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn heartbeats_report_load_then_draining_then_leave() {
        let registry = MemoryRegistry::new();
        let free = Arc::new(AtomicUsize::new(4));
        let sample: LoadSampler = {
            let free = free.clone();
            Arc::new(move || Load {
                slots_total: 4,
                slots_free: free.load(Ordering::Relaxed),
                warm_sandboxes: 1,
                images: Vec::new(),
            })
        };
        let registration = Registration::start(
            Arc::new(registry.clone()),
            RegistrationConfig {
                node_id: NodeId::parse("node-t").unwrap(),
                region: "r1".into(),
                runtimes: vec!["python3".into()],
                interval: Duration::from_millis(100),
                signing_key: Some("NKEY".into()),
            },
            sample,
        )
        .await;
        let first = registry.list().await.unwrap();
        assert_eq!(first.len(), 1, "listed right after start");
        let n = &first[0];
        assert_eq!(n.id.as_str(), "node-t");
        assert_eq!(n.region, "r1");
        assert_eq!((n.slots_total, n.slots_free, n.warm_sandboxes), (4, 4, 1));
        assert_eq!(n.state, NodeState::Active);
        assert_eq!(n.heartbeat_interval_ms, 100);
        assert_eq!(n.version, env!("CARGO_PKG_VERSION"));

        free.store(1, Ordering::Relaxed);
        wait_for(&registry, "free slots follow the load", |n| {
            n.len() == 1 && n[0].slots_free == 1
        })
        .await;
        registration.set_draining();
        wait_for(&registry, "draining is announced", |n| {
            n.len() == 1 && n[0].state == NodeState::Draining
        })
        .await;
        // Still listed well past its time to live: heartbeats go on while draining.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(registry.list().await.unwrap().len(), 1);
        registration.leave().await;
        assert!(
            registry.list().await.unwrap().is_empty(),
            "gone after leave"
        );
    }
}
