//! The node registry: which worker nodes are alive, what they can run and how loaded they are.
//!
//! Each node writes its [`NodeInfo`] with [`NodeRegistry::heartbeat`] every heartbeat interval
//! and removes it with [`NodeRegistry::leave`] once it has drained on shutdown. An entry
//! carries the heartbeat interval of its node, and is listed only while it is fresh: a node
//! whose last heartbeat is [`MISSED_HEARTBEATS`] intervals old is dead
//! ([`NodeInfo::is_live`]), so a node killed without leaving drops out within three
//! heartbeats. Liveness is decided by the entry itself, so a gateway lists nodes correctly
//! without knowing how often each one heartbeats.
//!
//! Freshness compares the writer's clock (`last_heartbeat_at`) with the reader's: nodes and
//! gateways are assumed to have synchronised clocks (NTP); a skew of `s` shifts the moment a
//! dead node drops out by `s`.
//!
//! [`NodeRegistry`] is implemented by [`memory::MemoryRegistry`] (in-process, for `fnmesh up`)
//! and by [`jetstream::JetStreamRegistry`] (a JetStream KV bucket per region); both must pass
//! [`conformance`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use fnmesh_core::ids::NodeId;

pub mod jetstream;
pub mod memory;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Heartbeats a node may miss before it is considered dead and no longer listed.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Errors of a node registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend failed or is unreachable.
    #[error("node registry: {0}")]
    Backend(String),
    /// An entry could not be encoded or decoded.
    #[error("node registry entry {key:?}: {detail}")]
    Encoding {
        /// The entry's key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeState {
    /// Pulling work.
    Active,
    /// Shutting down: no longer pulling, finishing in-flight invocations.
    Draining,
}

/// One node's registry entry, as written by its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// The region (bus prefix) it works in.
    pub region: String,
    /// Runtimes it can run (`python3`, `nodejs`, `exec`).
    pub runtimes: Vec<String>,
    /// Invocations it runs at once.
    pub slots_total: u32,
    /// Slots free at the last heartbeat.
    pub slots_free: u32,
    /// Idle sandboxes ready to serve without a cold start, at the last heartbeat.
    pub warm_sandboxes: u32,
    /// Active, or draining on its way out.
    pub state: NodeState,
    /// The fnmesh version it runs (the crate version).
    pub version: String,
    /// When the node started.
    pub started_at: DateTime<Utc>,
    /// When this entry was written.
    pub last_heartbeat_at: DateTime<Utc>,
    /// Seconds between `started_at` and `last_heartbeat_at`.
    pub uptime_secs: u64,
    /// How often the node heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The public key (`N…`) the node signs its events and replies with
    /// ([`fnmesh_core::claims`]); none on buses that sign nothing (in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// The images in the node's cache (image functions), largest first, at most
    /// [`MAX_LISTED_IMAGES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<CachedImage>,
}

/// Most images a node lists in its registry entry.
pub const MAX_LISTED_IMAGES: usize = 64;

/// An image in a node's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CachedImage {
    /// Its manifest digest (`sha256:…`).
    pub digest: String,
    /// Disk space its blobs and tree take.
    pub bytes: u64,
    /// Sandboxes using it now.
    pub in_use: u32,
}

impl NodeInfo {
    /// How long the entry stays live without a new heartbeat: [`MISSED_HEARTBEATS`] intervals.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1)) * MISSED_HEARTBEATS
    }

    /// When the entry stops being listed unless refreshed.
    pub fn expires_at(&self) -> DateTime<Utc> {
        let ttl = chrono::Duration::from_std(self.ttl()).unwrap_or(chrono::Duration::MAX);
        self.last_heartbeat_at
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether the entry is still fresh at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at()
    }
}

/// Where nodes announce themselves.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Writes (or replaces) the entry of `info.id`.
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), RegistryError>;

    /// Removes the entry of `id` (removing an absent entry is not an error).
    async fn leave(&self, id: &NodeId) -> Result<(), RegistryError>;

    /// The live entries ([`NodeInfo::is_live`]), ordered by id.
    async fn list(&self) -> Result<Vec<NodeInfo>, RegistryError>;
}
