//! The code store: function code archives, content-addressed by SHA-256.
//!
//! [`CodeStore`] is implemented by [`local::LocalCodeStore`] (a directory), `s3::S3CodeStore`
//! (behind the `s3` feature, off by default: nodes never talk to S3) and
//! [`nats::NatsCodeStore`] (a JetStream object store bucket, what nodes read); all must pass
//! [`conformance`]. [`mirror::Mirrored`] writes a primary store and a replica (a gateway's own
//! store and the NATS bucket of its region). [`encrypted::Encrypted`] seals blobs at rest with
//! the secrets keyring (`FNMESH_ENCRYPT_CODE`).

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use fnmesh_core::checksum::{Checksum, ChecksumHasher};

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

/// The size of the pieces the file operations ([`CodeStore::put_file`],
/// [`CodeStore::get_file`]) read and write: what of a blob is in memory at once.
pub const CHUNK_BYTES: usize = 1024 * 1024;

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

    /// [`CodeStore::put`] of the file at `path`. The default reads it whole; every store here
    /// overrides it to read a piece at a time ([`put_file_streamed`]), so a large blob is
    /// never held in memory whole.
    async fn put_file(&self, path: &Path) -> Result<Checksum, CodeStoreError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| file_error("read", path, e))?;
        self.put(Bytes::from(bytes)).await
    }

    /// [`CodeStore::get`] into the file `dest` (created or replaced): `Ok(false)` if absent
    /// (then `dest` is not created); [`CodeStoreError::Corrupt`] if what was stored does not
    /// match `checksum` (then `dest` is removed). The default reads the blob whole; every
    /// store here overrides it to write a piece at a time ([`get_file_streamed`]).
    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        let Some(bytes) = self.get(checksum).await? else {
            return Ok(false);
        };
        tokio::fs::write(dest, &bytes)
            .await
            .map_err(|e| file_error("write", dest, e))?;
        Ok(true)
    }

    /// [`CodeStore::put_raw`] of the file at `path`. The default reads it whole; stores
    /// override it to stream.
    async fn put_raw_file(&self, key: &Checksum, path: &Path) -> Result<(), CodeStoreError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| file_error("read", path, e))?;
        self.put_raw(key, Bytes::from(bytes)).await
    }

    /// [`CodeStore::get_raw`] into the file `dest`; gives the SHA-256 of what was written (the
    /// caller compares), `None` if absent (then `dest` is untouched). The default reads the
    /// blob whole; stores override it to stream.
    async fn get_raw_file(
        &self,
        key: &Checksum,
        dest: &Path,
    ) -> Result<Option<Checksum>, CodeStoreError> {
        let Some(bytes) = self.get_raw(key).await? else {
            return Ok(None);
        };
        tokio::fs::write(dest, &bytes)
            .await
            .map_err(|e| file_error("write", dest, e))?;
        Ok(Some(Checksum::of(&bytes)))
    }
}

/// [`CodeStore::put_file`] of a store whose raw blobs are the content: the file's SHA-256,
/// then [`CodeStore::put_raw_file`].
pub async fn put_file_streamed<S: CodeStore + ?Sized>(
    store: &S,
    path: &Path,
) -> Result<Checksum, CodeStoreError> {
    let (checksum, _) = checksum_file(path).await?;
    store.put_raw_file(&checksum, path).await?;
    Ok(checksum)
}

/// [`CodeStore::get_file`] of a store whose raw blobs are the content:
/// [`CodeStore::get_raw_file`], which hashes what it writes, compared with `checksum`.
pub async fn get_file_streamed<S: CodeStore + ?Sized>(
    store: &S,
    checksum: &Checksum,
    dest: &Path,
) -> Result<bool, CodeStoreError> {
    match store.get_raw_file(checksum, dest).await? {
        None => Ok(false),
        Some(got) if got == *checksum => Ok(true),
        Some(_) => {
            let _ = tokio::fs::remove_file(dest).await;
            tracing::error!(code.checksum = %checksum, "code blob is corrupt");
            Err(CodeStoreError::Corrupt(checksum.clone()))
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, CodeStoreError>
where
    F: FnOnce() -> Result<T, CodeStoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CodeStoreError::Backend(format!("blocking task failed: {e}")))?
}

fn file_error(what: &str, path: &Path, e: std::io::Error) -> CodeStoreError {
    CodeStoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// The SHA-256 and length of the file at `path`, read a piece at a time.
pub async fn checksum_file(path: &Path) -> Result<(Checksum, u64), CodeStoreError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| file_error("open", path, e))?;
    let mut hasher = ChecksumHasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| file_error("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

/// Copies `reader` into the new file `dest` a piece at a time, hashing what passes, refusing
/// more than `cap` bytes; gives the checksum and length. `dest` is removed on failure.
pub async fn copy_to_file<R: AsyncRead + Unpin + Send>(
    reader: R,
    dest: &Path,
    cap: u64,
) -> Result<(Checksum, u64), std::io::Error> {
    let copied = async {
        let mut file = tokio::fs::File::create(dest).await?;
        let mut reader = reader;
        let mut hasher = ChecksumHasher::new();
        let mut buf = vec![0u8; CHUNK_BYTES.min(256 * 1024)];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > cap {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("more than {cap} bytes"),
                ));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
        }
        file.flush().await?;
        Ok((hasher.finish(), total))
    }
    .await;
    if copied.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    copied
}
