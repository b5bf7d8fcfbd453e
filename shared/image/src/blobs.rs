//! A directory of blobs named by digest (`<dir>/sha256/<hex>`), written only once checked.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::layout::BlobSource;
use crate::{Digest, ImageError};

/// Blobs pulled from registries, shared by every image that has them.
#[derive(Debug, Clone)]
pub struct BlobDir {
    dir: PathBuf,
}

impl BlobDir {
    /// The blob directory at `dir` (created if needed).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("sha256"))?;
        Ok(Self { dir })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size of the blob on disk, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// A temporary file in the directory, for a blob being downloaded.
    pub fn temp(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(self.dir.join("sha256"))
    }

    /// Checks the downloaded `temp` against `digest` (and `size`) and moves it into place.
    pub fn commit(
        &self,
        temp: tempfile::NamedTempFile,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<(), ImageError> {
        let reader = crate::digest::Hashing::new(fs::File::open(temp.path())?, u64::MAX);
        reader.verify(digest, size)?;
        temp.persist(self.path(digest))
            .map_err(|e| ImageError::Io(e.error))?;
        Ok(())
    }

    /// Stores `bytes` (already checked against `digest`).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let mut temp = self.temp()?;
        io::Write::write_all(&mut temp, bytes)?;
        self.commit(temp, digest, Some(bytes.len() as u64))
    }

    /// Removes a blob (absent is fine).
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl BlobSource for BlobDir {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(digest))
        {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::Invalid(format!(
                "blob {digest} has not been pulled"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
