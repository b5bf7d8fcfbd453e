//! The code store of the mesh: blobs as objects in a JetStream object store bucket, one bucket
//! per region ([`subjects::code_bucket`], `fnmesh-<prefix>-code`, file storage), objects named
//! by [`subjects::code_key`] (`code/sha256/<hex>`). Nodes need nothing but NATS: they read code
//! from here by checksum.
//!
//! Opening creates the bucket if it is missing, so a gateway and its nodes may start in any
//! order. A put is skipped when an intact object is already stored (same size and the same
//! SHA-256 digest in its metadata), which also repairs a damaged object; puts of one process
//! are serialised so concurrent puts of the same bytes do not leave orphaned chunks. A get
//! refuses objects larger than [`MAX_BLOB_BYTES`] before reading them, verifies the SHA-256 of
//! what comes back and reports a mismatch as [`CodeStoreError::Corrupt`]; a missing (or
//! deleted) object is `None`, never a backend error. Every operation runs under a deadline.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::{CodeStore, CodeStoreError, MAX_BLOB_BYTES};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::subjects::{self, BusPrefix};

/// Deadline of one operation (a put or get of a whole blob included).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// A [`CodeStore`] in a JetStream object store bucket.
#[derive(Clone)]
pub struct NatsCodeStore {
    js: jetstream::Context,
    bucket: object_store::ObjectStore,
    name: String,
    put_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for NatsCodeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCodeStore")
            .field("bucket", &self.name)
            .finish_non_exhaustive()
    }
}

impl NatsCodeStore {
    /// Opens (creating if needed) the code bucket of region `prefix` on an existing
    /// connection.
    pub async fn open(client: async_nats::Client, prefix: &str) -> Result<Self, CodeStoreError> {
        Self::open_replicated(client, prefix, 1).await
    }

    /// [`Self::open`], creating a missing bucket with `replicas` JetStream replicas.
    pub async fn open_replicated(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
    ) -> Result<Self, CodeStoreError> {
        let prefix = BusPrefix::parse(prefix)
            .map_err(|e| CodeStoreError::Backend(format!("nats code store: {e}")))?;
        let name = subjects::code_bucket(&prefix);
        let js = jetstream::new(client);
        let failed = |what: &str, e: &dyn fmt::Display| {
            CodeStoreError::Backend(format!("nats object store {name}: {what}: {e}"))
        };
        let bucket = match js.get_object_store(&name).await {
            Ok(bucket) => bucket,
            Err(_) => {
                let created = js
                    .create_object_store(object_store::Config {
                        bucket: name.clone(),
                        description: Some("fnmesh function code, by sha256".to_owned()),
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: replicas.max(1),
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(bucket) => bucket,
                    // Another process may have created it in between.
                    Err(create) => js
                        .get_object_store(&name)
                        .await
                        .map_err(|_| failed("creating the bucket", &create))?,
                }
            }
        };
        tracing::debug!(nats.bucket = %name, "nats code store opened");
        Ok(Self {
            js,
            bucket,
            name,
            put_lock: Default::default(),
        })
    }

    /// Attaches to the code bucket of region `prefix` in JetStream domain `domain` (another
    /// region's own server, reached over the leaf link), without creating it: an edge gateway
    /// copies code deployed at its hub from there.
    pub async fn attach_in_domain(
        client: async_nats::Client,
        prefix: &BusPrefix,
        domain: &BusPrefix,
    ) -> Result<Self, CodeStoreError> {
        let name = subjects::code_bucket(prefix);
        let js = jetstream::with_domain(client, domain.as_str());
        let bucket = js.get_object_store(&name).await.map_err(|e| {
            CodeStoreError::Backend(format!(
                "nats object store {name} in domain {domain}: attaching: {e}"
            ))
        })?;
        Ok(Self {
            js,
            bucket,
            name,
            put_lock: Default::default(),
        })
    }

    /// The bucket's name.
    pub fn bucket_name(&self) -> &str {
        &self.name
    }

    /// The underlying object store (for tests and tooling that work on the bucket directly).
    pub fn object_store(&self) -> &object_store::ObjectStore {
        &self.bucket
    }

    fn failed(&self, what: &str, key: &str, e: impl fmt::Display) -> CodeStoreError {
        CodeStoreError::Backend(format!(
            "nats object store {}/{key}: {what}: {e}",
            self.name
        ))
    }

    async fn deadline<T>(
        &self,
        what: &str,
        key: &str,
        op: impl std::future::Future<Output = Result<T, CodeStoreError>>,
    ) -> Result<T, CodeStoreError> {
        tokio::time::timeout(OPERATION_TIMEOUT, op)
            .await
            .map_err(|_| {
                self.failed(
                    what,
                    key,
                    format_args!("timed out after {}s", OPERATION_TIMEOUT.as_secs()),
                )
            })?
    }

    /// The object under `key`, ready to read; `None` if absent; refused past
    /// [`MAX_BLOB_BYTES`] before anything is read.
    async fn open_object(&self, key: &str) -> Result<Option<object_store::Object>, CodeStoreError> {
        let object = match self.bucket.get(key).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.failed("get", key, e)),
        };
        let size = object.info().size;
        if size > MAX_BLOB_BYTES {
            return Err(too_large(size));
        }
        Ok(Some(object))
    }

    /// The metadata of a live object; `None` if absent or deleted.
    async fn live_info(
        &self,
        key: &str,
    ) -> Result<Option<object_store::ObjectInfo>, CodeStoreError> {
        match self.bucket.info(key).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.failed("info", key, e)),
        }
    }
}

fn too_large(size: usize) -> CodeStoreError {
    CodeStoreError::Backend(format!(
        "code blob of {size} bytes exceeds the cap of {MAX_BLOB_BYTES} bytes"
    ))
}

/// The digest the object store records for `bytes` (`SHA-256=<base64url>`).
fn object_digest(bytes: &[u8]) -> String {
    object_digest_of(&Sha256::digest(bytes))
}

/// [`object_digest`] of the bytes whose SHA-256 is `sha256`.
fn object_digest_of(sha256: &[u8]) -> String {
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(sha256)
    )
}

#[async_trait]
impl CodeStore for NatsCodeStore {
    async fn ping(&self) -> Result<(), CodeStoreError> {
        self.deadline("ping", "", async {
            self.js
                .get_object_store(&self.name)
                .await
                .map(|_| ())
                .map_err(|e| self.failed("ping", "", e))
        })
        .await
    }

    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
        let checksum = Checksum::of(&bytes);
        self.put_raw(&checksum, bytes).await?;
        Ok(checksum)
    }

    async fn put_raw(&self, checksum: &Checksum, bytes: Bytes) -> Result<(), CodeStoreError> {
        if bytes.len() > MAX_BLOB_BYTES {
            return Err(too_large(bytes.len()));
        }
        let key = subjects::code_key(checksum);
        self.deadline("put", &key, async {
            let _serialised = self.put_lock.lock().await;
            // Content addressed: an intact object is already this content.
            if let Some(info) = self.live_info(&key).await? {
                if info.size == bytes.len() && info.digest == Some(object_digest(&bytes)) {
                    return Ok(());
                }
                tracing::warn!(code.checksum = %checksum, nats.bucket = %self.name, "replacing a corrupt code object");
            }
            let mut reader: &[u8] = &bytes;
            self.bucket
                .put(key.as_str(), &mut reader)
                .await
                .map_err(|e| self.failed("put", &key, e))?;
            tracing::debug!(code.checksum = %checksum, code.size_bytes = bytes.len(), "code stored in nats");
            Ok(())
        })
        .await
    }

    async fn put_file(&self, path: &Path) -> Result<Checksum, CodeStoreError> {
        crate::put_file_streamed(self, path).await
    }

    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        crate::get_file_streamed(self, checksum, dest).await
    }

    async fn put_raw_file(&self, checksum: &Checksum, path: &Path) -> Result<(), CodeStoreError> {
        let key = subjects::code_key(checksum);
        let (raw, size) = crate::checksum_file(path).await?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > MAX_BLOB_BYTES {
            return Err(too_large(size));
        }
        let digest = object_digest_of(&raw.digest());
        self.deadline("put", &key, async {
            let _serialised = self.put_lock.lock().await;
            if let Some(info) = self.live_info(&key).await? {
                if info.size == size && info.digest.as_deref() == Some(digest.as_str()) {
                    return Ok(());
                }
                tracing::warn!(code.checksum = %checksum, nats.bucket = %self.name, "replacing a corrupt code object");
            }
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| self.failed("put: opening the file", &key, e))?;
            self.bucket
                .put(key.as_str(), &mut file)
                .await
                .map_err(|e| self.failed("put", &key, e))?;
            tracing::debug!(code.checksum = %checksum, code.size_bytes = size, "code stored in nats from a file");
            Ok(())
        })
        .await
    }

    async fn get_raw_file(
        &self,
        checksum: &Checksum,
        dest: &Path,
    ) -> Result<Option<Checksum>, CodeStoreError> {
        let key = subjects::code_key(checksum);
        self.deadline("get", &key, async {
            let Some(object) = self.open_object(&key).await? else {
                return Ok(None);
            };
            let cap = u64::try_from(MAX_BLOB_BYTES).unwrap_or(u64::MAX);
            match crate::copy_to_file(object, dest, cap).await {
                Ok((written, _)) => Ok(Some(written)),
                // The object store's own digest check failed.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::error!(code.checksum = %checksum, nats.bucket = %self.name, error = %e, "code object is corrupt");
                    Err(CodeStoreError::Corrupt(checksum.clone()))
                }
                Err(e) => Err(self.failed("read", &key, e)),
            }
        })
        .await
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let Some(buf) = self.get_raw(checksum).await? else {
            return Ok(None);
        };
        if Checksum::of(&buf) != *checksum {
            tracing::error!(code.checksum = %checksum, nats.bucket = %self.name, "code object is corrupt");
            return Err(CodeStoreError::Corrupt(checksum.clone()));
        }
        Ok(Some(buf))
    }

    async fn get_raw(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let key = subjects::code_key(checksum);
        self.deadline("get", &key, async {
            let Some(mut object) = self.open_object(&key).await? else {
                return Ok(None);
            };
            let size = object.info().size;
            let mut buf = Vec::with_capacity(size);
            let cap = u64::try_from(MAX_BLOB_BYTES).unwrap_or(u64::MAX).saturating_add(1);
            match (&mut object).take(cap).read_to_end(&mut buf).await {
                Ok(_) => {}
                // The object store's own digest check failed.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::error!(code.checksum = %checksum, nats.bucket = %self.name, error = %e, "code object is corrupt");
                    return Err(CodeStoreError::Corrupt(checksum.clone()));
                }
                Err(e) => return Err(self.failed("read", &key, e)),
            }
            if buf.len() > MAX_BLOB_BYTES {
                return Err(too_large(buf.len()));
            }
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        let key = subjects::code_key(checksum);
        self.deadline("info", &key, async {
            Ok(self.live_info(&key).await?.is_some())
        })
        .await
    }

    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        let key = subjects::code_key(checksum);
        self.deadline("delete", &key, async {
            if self.live_info(&key).await?.is_none() {
                return Ok(false);
            }
            match self.bucket.delete(key.as_str()).await {
                Ok(()) => {
                    tracing::debug!(code.checksum = %checksum, "code deleted from nats");
                    Ok(true)
                }
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
                Err(e) => Err(self.failed("delete", &key, e)),
            }
        })
        .await
    }
}
