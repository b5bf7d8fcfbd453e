//! The code store: function code archives, content-addressed by SHA-256.
//!
//! [`CodeStore`] is implemented by [`local::LocalCodeStore`] (a directory) and, later, by S3;
//! both must pass [`conformance`].

use async_trait::async_trait;
use bytes::Bytes;

use crate::checksum::Checksum;

pub mod local;
pub mod s3;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Errors of a code store.
#[derive(Debug, thiserror::Error)]
pub enum CodeStoreError {
    /// Stored bytes no longer match their checksum.
    #[error("code {0} is corrupt: checksum mismatch")]
    Corrupt(Checksum),
    /// The backend failed.
    #[error("code store: {0}")]
    Backend(String),
}

/// Content-addressed blob storage for code.
#[async_trait]
pub trait CodeStore: Send + Sync + 'static {
    /// Checks the backend is reachable.
    async fn ping(&self) -> Result<(), CodeStoreError>;

    /// Stores `bytes` under their SHA-256 (atomically; storing the same bytes twice is a no-op)
    /// and returns it.
    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError>;

    /// The bytes stored under `checksum`, verified; `None` if absent.
    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError>;

    /// Whether something is stored under `checksum`.
    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError>;

    /// Removes the blob; `false` if it was absent.
    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError>;
}
