//! The code store: function code archives, content-addressed by SHA-256.
//!
//! [`CodeStore`] is implemented by [`local::LocalCodeStore`] (a directory), `s3::S3CodeStore`
//! (behind the `s3` feature, off by default: nodes never talk to S3) and
//! [`nats::NatsCodeStore`] (a JetStream object store bucket, what nodes read); all must pass
//! [`conformance`]. [`mirror::Mirrored`] writes a primary store and a replica (a gateway's own
//! store and the NATS bucket of its region). [`encrypted::Encrypted`] seals blobs at rest with
//! the secrets keyring (`FNMESH_ENCRYPT_CODE`).

use async_trait::async_trait;
use bytes::Bytes;

use fnmesh_core::checksum::Checksum;

pub mod encrypted;
pub mod local;
pub mod mirror;
pub mod nats;
#[cfg(feature = "s3")]
pub mod s3;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// The largest blob the NATS store accepts or serves (a code archive is far smaller: requests
/// are capped well below this).
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;

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

    /// Makes sure every reader of this store can read `checksum`: a [`mirror::Mirrored`] store
    /// copies it to its replica when the replica lacks it (say, NATS was wiped). A no-op for a
    /// single store.
    async fn ensure_replicated(&self, checksum: &Checksum) -> Result<(), CodeStoreError> {
        let _ = checksum;
        Ok(())
    }

    /// Stores `bytes` as they are under `key`, which they need not hash to (replacing what is
    /// there): for [`encrypted::Encrypted`], which keeps ciphertext under the plaintext's
    /// checksum. Stores that cannot do this refuse.
    async fn put_raw(&self, key: &Checksum, bytes: Bytes) -> Result<(), CodeStoreError> {
        let _ = (key, bytes);
        Err(CodeStoreError::Backend(
            "this code store cannot hold transformed (encrypted) blobs".to_owned(),
        ))
    }

    /// The bytes stored under `key`, unverified (see [`CodeStore::put_raw`]); `None` if absent.
    async fn get_raw(&self, key: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let _ = key;
        Err(CodeStoreError::Backend(
            "this code store cannot hold transformed (encrypted) blobs".to_owned(),
        ))
    }
}
