//! The node's local code cache: code archives fetched by checksum from the code store (the
//! NATS bucket of the region, or `FNMESH_CODE_STORE`), verified against their SHA-256 here
//! whatever the store, and unpacked once into `<dir>/<sha256>/`, which sandboxes mount
//! read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fnmesh_code::CodeStore;
use fnmesh_core::archive::{self, ArchiveLimits};
use fnmesh_core::Checksum;

/// Why code could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum CodeCacheError {
    /// The code store has no blob under this checksum.
    #[error("code {0} not found in the code store")]
    Missing(Checksum),
    /// Fetching failed (or the blob did not verify).
    #[error("fetching code {checksum}: {message}")]
    Fetch {
        /// Which blob.
        checksum: Checksum,
        /// What failed.
        message: String,
    },
    /// Unpacking failed.
    #[error("unpacking code {checksum}: {message}")]
    Unpack {
        /// Which blob.
        checksum: Checksum,
        /// What failed.
        message: String,
    },
}

/// Fetches and unpacks code on demand; unpacked trees are immutable and shared by sandboxes.
pub struct CodeCache {
    dir: PathBuf,
    store: Arc<dyn CodeStore>,
    limits: ArchiveLimits,
}

impl CodeCache {
    /// A cache rooted at `dir` (created if needed) that fetches from `store`.
    pub fn new(
        dir: &Path,
        store: Arc<dyn CodeStore>,
        limits: ArchiveLimits,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            limits,
        })
    }

    /// The unpacked tree of `checksum`, fetching it first if needed.
    pub async fn get(&self, checksum: &Checksum) -> Result<PathBuf, CodeCacheError> {
        let target = self.dir.join(checksum.as_str());
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(target);
        }
        let bytes = self
            .store
            .get(checksum)
            .await
            .map_err(|e| CodeCacheError::Fetch {
                checksum: checksum.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| CodeCacheError::Missing(checksum.clone()))?;
        // Stores verify what they serve; check again here, so code from any store (or a
        // damaged transfer) is never unpacked unless it is exactly what was deployed.
        if Checksum::of(&bytes) != *checksum {
            tracing::error!(code.checksum = %checksum, "fetched code does not match its checksum; refused");
            return Err(CodeCacheError::Fetch {
                checksum: checksum.clone(),
                message: "checksum mismatch: the fetched bytes are not the deployed code".into(),
            });
        }
        let staging = self.dir.join(format!(
            ".staging-{}-{:016x}",
            checksum.as_str(),
            rand::random::<u64>()
        ));
        let limits = self.limits;
        let unpack_err = |message: String| CodeCacheError::Unpack {
            checksum: checksum.clone(),
            message,
        };
        let staging_for_task = staging.clone();
        let target_for_task = target.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            archive::unpack(&bytes, &staging_for_task, &limits).map_err(|e| e.to_string())?;
            // Publish atomically; a concurrent fetch of the same code may have won the race,
            // in which case its (identical) tree stays and ours is dropped.
            match std::fs::rename(&staging_for_task, &target_for_task) {
                Ok(()) => Ok(()),
                Err(_) if target_for_task.exists() => {
                    let _ = std::fs::remove_dir_all(&staging_for_task);
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging_for_task);
                    Err(e.to_string())
                }
            }
        })
        .await
        .map_err(|e| unpack_err(e.to_string()))?
        .map_err(unpack_err)?;
        tracing::debug!(code.checksum = %checksum, "code unpacked into the node cache");
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use bytes::Bytes;
    use fnmesh_code::CodeStoreError;

    use super::*;

    /// A store that serves other bytes than the ones asked for.
    struct Lying(Bytes);

    #[async_trait]
    impl CodeStore for Lying {
        async fn ping(&self) -> Result<(), CodeStoreError> {
            Ok(())
        }
        async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
            Ok(Checksum::of(&bytes))
        }
        async fn get(&self, _: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
            Ok(Some(self.0.clone()))
        }
        async fn exists(&self, _: &Checksum) -> Result<bool, CodeStoreError> {
            Ok(true)
        }
        async fn delete(&self, _: &Checksum) -> Result<bool, CodeStoreError> {
            Ok(true)
        }
    }

    #[tokio::test]
    async fn code_that_does_not_match_its_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Lying(Bytes::from_static(b"not the deployed archive")));
        let cache = CodeCache::new(dir.path(), store, ArchiveLimits::default()).unwrap();
        let wanted = Checksum::of(b"the deployed archive");
        match cache.get(&wanted).await {
            Err(CodeCacheError::Fetch { checksum, message }) => {
                assert_eq!(checksum, wanted);
                assert!(message.contains("checksum mismatch"), "{message}");
            }
            other => panic!("a mismatching blob must be refused, got {other:?}"),
        }
        assert!(
            !dir.path().join(wanted.as_str()).exists(),
            "nothing is unpacked"
        );
    }
}
