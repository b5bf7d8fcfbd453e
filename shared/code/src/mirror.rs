//! A code store written to two stores: the primary (a gateway's local directory or S3, the
//! source of truth) and a replica (the NATS bucket of the region, what nodes read).
//!
//! A put writes the primary, then the replica, and fails if either fails (nodes could not run
//! code missing from the replica). A get reads the primary and falls back to the replica when
//! the primary lacks the blob or fails. [`CodeStore::ensure_replicated`] — called by the
//! gateway on each invocation — re-copies a blob the replica lacks (after NATS was wiped, or
//! code deployed before the replica existed); blobs known to be in the replica are remembered
//! for [`RECHECK_AFTER`], so the usual cost is one map lookup.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{CodeStore, CodeStoreError};
use fnmesh_core::checksum::Checksum;

/// How long a blob seen in the replica is trusted to still be there.
pub const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// Most blobs remembered as replicated; past it the memory is cleared (and rebuilt by checks).
const MAX_KNOWN: usize = 100_000;

/// A primary store mirrored to a replica.
pub struct Mirrored {
    primary: Arc<dyn CodeStore>,
    replica: Arc<dyn CodeStore>,
    known: Mutex<HashMap<Checksum, Instant>>,
}

impl Mirrored {
    /// Mirrors `primary` to `replica`.
    pub fn new(primary: Arc<dyn CodeStore>, replica: Arc<dyn CodeStore>) -> Self {
        Self {
            primary,
            replica,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, checksum: &Checksum) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(checksum.clone(), Instant::now());
        }
    }

    fn forget(&self, checksum: &Checksum) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(checksum);
        }
    }

    fn known_fresh(&self, checksum: &Checksum) -> bool {
        self.known
            .lock()
            .map(|known| {
                known
                    .get(checksum)
                    .is_some_and(|seen| seen.elapsed() < RECHECK_AFTER)
            })
            .unwrap_or(false)
    }
}

#[async_trait]
impl CodeStore for Mirrored {
    async fn ping(&self) -> Result<(), CodeStoreError> {
        self.primary.ping().await?;
        self.replica.ping().await
    }

    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
        let checksum = self.primary.put(bytes.clone()).await?;
        let replicated = self.replica.put(bytes).await?;
        if replicated != checksum {
            return Err(CodeStoreError::Backend(format!(
                "the replica stored {replicated} for code {checksum}"
            )));
        }
        self.remember(&checksum);
        Ok(checksum)
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        match self.primary.get(checksum).await {
            Ok(Some(bytes)) => Ok(Some(bytes)),
            Ok(None) => self.replica.get(checksum).await,
            Err(primary) => {
                tracing::warn!(code.checksum = %checksum, error = %primary, "primary code store failed; reading the replica");
                match self.replica.get(checksum).await {
                    Ok(Some(bytes)) => Ok(Some(bytes)),
                    _ => Err(primary),
                }
            }
        }
    }

    async fn put_file(&self, path: &Path) -> Result<Checksum, CodeStoreError> {
        let checksum = self.primary.put_file(path).await?;
        let replicated = self.replica.put_file(path).await?;
        if replicated != checksum {
            return Err(CodeStoreError::Backend(format!(
                "the replica stored {replicated} for code {checksum}"
            )));
        }
        self.remember(&checksum);
        Ok(checksum)
    }

    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        match self.primary.get_file(checksum, dest).await {
            Ok(true) => Ok(true),
            Ok(false) => self.replica.get_file(checksum, dest).await,
            Err(primary) => {
                tracing::warn!(code.checksum = %checksum, error = %primary, "primary code store failed; reading the replica");
                match self.replica.get_file(checksum, dest).await {
                    Ok(true) => Ok(true),
                    _ => Err(primary),
                }
            }
        }
    }

    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        if self.primary.exists(checksum).await? {
            return Ok(true);
        }
        self.replica.exists(checksum).await
    }

    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        self.forget(checksum);
        let in_primary = self.primary.delete(checksum).await?;
        let in_replica = self.replica.delete(checksum).await?;
        Ok(in_primary || in_replica)
    }

    async fn ensure_replicated(&self, checksum: &Checksum) -> Result<(), CodeStoreError> {
        if self.known_fresh(checksum) {
            return Ok(());
        }
        if !self.replica.exists(checksum).await? {
            // Through a temporary file, a piece at a time.
            let scratch = tempfile::NamedTempFile::new().map_err(|e| {
                CodeStoreError::Backend(format!("a temporary file to replicate code: {e}"))
            })?;
            if !self.primary.get_file(checksum, scratch.path()).await? {
                return Err(CodeStoreError::Backend(format!(
                    "code {checksum} is missing from the primary store; cannot replicate it"
                )));
            }
            self.replica.put_file(scratch.path()).await?;
            tracing::info!(code.checksum = %checksum, "code re-copied to the replica store");
        }
        self.remember(checksum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalCodeStore;

    async fn stores() -> (tempfile::TempDir, Arc<dyn CodeStore>, Arc<dyn CodeStore>) {
        let dir = tempfile::tempdir().unwrap();
        let primary = Arc::new(LocalCodeStore::open(&dir.path().join("p")).await.unwrap());
        let replica = Arc::new(LocalCodeStore::open(&dir.path().join("r")).await.unwrap());
        (dir, primary, replica)
    }

    #[tokio::test]
    async fn conformance() {
        let (_dir, primary, replica) = stores().await;
        let mirrored: Arc<dyn CodeStore> = Arc::new(Mirrored::new(primary, replica));
        crate::conformance::run_all(mirrored).await;
    }

    #[tokio::test]
    async fn put_lands_in_both_and_get_falls_back_to_the_replica() {
        let (_dir, primary, replica) = stores().await;
        let mirrored = Mirrored::new(primary.clone(), replica.clone());
        let bytes = Bytes::from_static(b"code");
        let c = mirrored.put(bytes.clone()).await.unwrap();
        assert!(primary.exists(&c).await.unwrap());
        assert!(replica.exists(&c).await.unwrap());
        primary.delete(&c).await.unwrap();
        assert_eq!(mirrored.get(&c).await.unwrap(), Some(bytes));
    }

    #[tokio::test]
    async fn a_replica_that_lost_the_code_gets_it_back() {
        let (_dir, primary, replica) = stores().await;
        let bytes = Bytes::from_static(b"deployed before the restart");
        let c = Mirrored::new(primary.clone(), replica.clone())
            .put(bytes.clone())
            .await
            .unwrap();
        // NATS wiped, gateway restarted: a fresh mirror, a replica without the blob.
        replica.delete(&c).await.unwrap();
        let mirrored = Mirrored::new(primary, replica.clone());
        mirrored.ensure_replicated(&c).await.unwrap();
        assert_eq!(replica.get(&c).await.unwrap(), Some(bytes));
        // Remembered: no further look-ups until RECHECK_AFTER.
        replica.delete(&c).await.unwrap();
        mirrored.ensure_replicated(&c).await.unwrap();
        assert!(!replica.exists(&c).await.unwrap());
        // Code the primary never had cannot be replicated.
        let absent = Checksum::of(b"never stored");
        assert!(mirrored.ensure_replicated(&absent).await.is_err());
    }
}
