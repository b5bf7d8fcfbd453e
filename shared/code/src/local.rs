//! The embedded code store: blobs as files under a directory, at
//! `<dir>/sha256/<first two hex digits>/<hex>`.
//!
//! A put writes a temporary file in the blob's directory, fsyncs it and renames it into place,
//! so a blob is either absent or complete; concurrent puts of the same bytes race harmlessly to
//! the same content. Reads verify the checksum, so a damaged file is reported, never served.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{blocking, CodeStore, CodeStoreError};
use fnmesh_core::checksum::{Checksum, HashingReader};

/// A [`CodeStore`] in a local directory.
#[derive(Debug, Clone)]
pub struct LocalCodeStore {
    root: PathBuf,
}

fn backend(what: &str, path: &Path, e: std::io::Error) -> CodeStoreError {
    CodeStoreError::Backend(format!("{what} {}: {e}", path.display()))
}

impl LocalCodeStore {
    /// Opens (creating if needed) a store rooted at `dir`.
    pub async fn open(dir: &Path) -> Result<Self, CodeStoreError> {
        let root = dir.join("sha256");
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| backend("create", &root, e))?;
        tracing::debug!(path = %dir.display(), "local code store opened");
        Ok(Self {
            root: dir.to_path_buf(),
        })
    }

    /// Where the blob with `checksum` lives (whether or not it exists).
    pub fn blob_path(&self, checksum: &Checksum) -> PathBuf {
        let hex = checksum.as_str();
        // A Checksum is 64 hex digits, so the prefix always exists.
        let prefix = hex.get(..2).unwrap_or(hex);
        self.root.join("sha256").join(prefix).join(hex)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CodeStoreError> {
    write_atomically_from(path, &mut &bytes[..])
}

/// Copies `source` into a temporary file beside `path` a piece at a time (`io::copy`), fsyncs
/// it and renames it into place.
fn write_atomically_from(path: &Path, source: &mut impl Read) -> Result<(), CodeStoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| CodeStoreError::Backend(format!("no parent of {}", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| backend("create", dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| backend("create temporary file in", dir, e))?;
    std::io::copy(source, &mut tmp).map_err(|e| backend("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| backend("fsync", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| backend("rename into", path, e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[async_trait]
impl CodeStore for LocalCodeStore {
    async fn ping(&self) -> Result<(), CodeStoreError> {
        let root = self.root.join("sha256");
        let meta = tokio::fs::metadata(&root)
            .await
            .map_err(|e| backend("stat", &root, e))?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(CodeStoreError::Backend(format!(
                "{} is not a directory",
                root.display()
            )))
        }
    }

    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
        let path_of = self.clone();
        blocking(move || {
            let checksum = Checksum::of(&bytes);
            let path = path_of.blob_path(&checksum);
            // Content addressed: an existing, intact blob is already this content.
            if let Ok(existing) = std::fs::read(&path) {
                if Checksum::of(&existing) == checksum {
                    return Ok(checksum);
                }
                tracing::warn!(code.checksum = %checksum, "replacing a corrupt code blob");
            }
            write_atomically(&path, &bytes)?;
            tracing::debug!(code.checksum = %checksum, code.size_bytes = bytes.len(), "code stored");
            Ok(checksum)
        })
        .await
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let path = self.blob_path(checksum);
        let checksum = checksum.clone();
        blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(backend("read", &path, e)),
            };
            if Checksum::of(&bytes) != checksum {
                tracing::error!(code.checksum = %checksum, "code blob is corrupt");
                return Err(CodeStoreError::Corrupt(checksum));
            }
            Ok(Some(Bytes::from(bytes)))
        })
        .await
    }

    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        let path = self.blob_path(checksum);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(backend("stat", &path, e)),
        }
    }

    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        let path = self.blob_path(checksum);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(backend("remove", &path, e)),
        }
    }

    async fn put_raw(&self, key: &Checksum, bytes: Bytes) -> Result<(), CodeStoreError> {
        let path = self.blob_path(key);
        blocking(move || write_atomically(&path, &bytes)).await
    }

    async fn put_file(&self, source: &Path) -> Result<Checksum, CodeStoreError> {
        let (checksum, _) = crate::checksum_file(source).await?;
        let path = self.blob_path(&checksum);
        if let Ok(existing) = crate::checksum_file(&path).await {
            if existing.0 == checksum {
                return Ok(checksum);
            }
            tracing::warn!(code.checksum = %checksum, "replacing a corrupt code blob");
        }
        self.put_raw_file(&checksum, source).await?;
        Ok(checksum)
    }

    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        crate::get_file_streamed(self, checksum, dest).await
    }

    async fn put_raw_file(&self, key: &Checksum, source: &Path) -> Result<(), CodeStoreError> {
        let path = self.blob_path(key);
        let source = source.to_path_buf();
        let key = key.clone();
        blocking(move || {
            let mut file = File::open(&source).map_err(|e| backend("open", &source, e))?;
            write_atomically_from(&path, &mut file)?;
            tracing::debug!(code.checksum = %key, "code stored from a file");
            Ok(())
        })
        .await
    }

    async fn get_raw_file(
        &self,
        key: &Checksum,
        dest: &Path,
    ) -> Result<Option<Checksum>, CodeStoreError> {
        let path = self.blob_path(key);
        let dest = dest.to_path_buf();
        blocking(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(backend("open", &path, e)),
            };
            let mut reader = HashingReader::new(file);
            let mut out = File::create(&dest).map_err(|e| backend("create", &dest, e))?;
            if let Err(e) = std::io::copy(&mut reader, &mut out) {
                let _ = std::fs::remove_file(&dest);
                return Err(backend("copy to", &dest, e));
            }
            let (checksum, _) = reader.finish().map_err(|e| backend("read", &path, e))?;
            Ok(Some(checksum))
        })
        .await
    }

    async fn get_raw(&self, key: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let path = self.blob_path(key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend("read", &path, e)),
        }
    }
}
