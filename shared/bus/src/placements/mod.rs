//! Placements: what a node learns of the functions placed in its region and of their
//! namespaces' registry credentials, so it can prepare for them before their first invocation
//! (pre-pull their images).
//!
//! [`Placements::watch`] yields everything known now, then each change, until the stream ends
//! (the watcher then watches again after a pause: every item is the latest state of its key,
//! never a change to replay, so seeing one twice is harmless). Implemented by
//! [`memory::MemoryPlacements`] (in-process: `fnmesh up` publishes what its gateway commits)
//! and by [`jetstream::JetStreamPlacements`] (the region's catalog bucket, or an edge's mirror
//! of its hub's, which gateways keep); both must pass [`conformance`].

use async_trait::async_trait;
use futures::stream::BoxStream;

use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::SealedValue;
use fnmesh_core::subjects::CatalogKey;
use fnmesh_core::Function;

pub mod jetstream;
pub mod memory;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// One item of a placement feed: the latest state of one catalog key.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// A function and its latest version (`None`: the function was removed).
    Function {
        /// Its namespace.
        namespace: Namespace,
        /// Its name.
        name: FunctionName,
        /// Its latest version.
        latest: Option<Box<Function>>,
    },
    /// A namespace's credential for a registry, sealed at rest (`None`: removed).
    Registry {
        /// The namespace.
        namespace: Namespace,
        /// The registry.
        host: RegistryHost,
        /// The credential ([`fnmesh_core::secrets::Keyring::open_registry_credential`]).
        sealed: Option<SealedValue>,
    },
}

impl Placement {
    /// The catalog key it is the state of.
    pub fn key(&self) -> CatalogKey {
        match self {
            Self::Function {
                namespace, name, ..
            } => CatalogKey::Function(namespace.clone(), name.clone()),
            Self::Registry {
                namespace, host, ..
            } => CatalogKey::Registry(namespace.clone(), host.clone()),
        }
    }

    /// Whether it says the key is gone.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Self::Function { latest: None, .. } | Self::Registry { sealed: None, .. }
        )
    }
}

/// Why a feed could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The region has no catalog (yet): no gateway has published one.
    #[error("placements: the region has no catalog yet ({0})")]
    NoCatalog(String),
    /// The backend failed.
    #[error("placements: {0}")]
    Backend(String),
}

/// A feed of placements.
#[async_trait]
pub trait Placements: Send + Sync + 'static {
    /// Everything known now (the latest state of each key; removed keys may be left out),
    /// then each change as it comes, until the stream ends.
    async fn watch(&self) -> Result<BoxStream<'static, Placement>, PlacementError>;
}
