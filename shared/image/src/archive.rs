//! Images uploaded as an archive, for sites without a registry: a tar (gzipped or not) of an
//! OCI image layout, or what `docker save` writes (`manifest.json`, a configuration and
//! uncompressed layer tars).
//!
//! The archive is extracted by the rules of a layer ([`crate::unpack::extract_archive`]:
//! nothing outside the directory, no device nodes, caps), and every file is then read through
//! a [`pathrs::Root`] of that directory, so a symlink in the archive (old `docker save`
//! archives link shared layers) cannot lead a read out of it. A `docker save` archive gets a
//! manifest made for it, with the digests of the files it names; each blob is still checked
//! against those digests (and the layers against the configuration's `diff_ids`) when the
//! image is unpacked.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use pathrs::flags::OpenFlags;
use pathrs::Root;
use serde::Deserialize;
use serde_json::json;

use crate::digest::{read_error, Hashing};
use crate::layout::{BlobSource, DOCKER_MANIFEST, MAX_METADATA_BYTES, REF_NAME};
use crate::unpack::{extract_archive, Limits, DOCKER_LAYER_TAR, DOCKER_LAYER_TAR_GZIP};
use crate::{Digest, ImageError};

/// An uploaded image, extracted: its blobs and the digest of the manifest to run.
pub struct Uploaded {
    root: Root,
    /// Blobs by digest: a path inside the extracted archive, or bytes made here.
    blobs: HashMap<Digest, Blob>,
    pub manifest: Digest,
}

enum Blob {
    File(PathBuf),
    Made(Vec<u8>),
}

/// One entry of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Uploaded {
    /// Extracts `archive` into `dir` (an empty directory the caller removes afterwards) and
    /// finds the image named `reference` in it (a layout's `ref.name`, or a `docker save`
    /// tag), or its only image when `reference` is `None`.
    pub fn extract(
        archive: impl Read,
        dir: &Path,
        reference: Option<&str>,
        limits: &Limits,
    ) -> Result<Self, ImageError> {
        let root = Root::open(dir).map_err(|e| ImageError::Unpack {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        extract_archive(&root, archive, limits)?;
        let mut uploaded = Self {
            root,
            blobs: HashMap::new(),
            manifest: Digest::of(b""),
        };
        if uploaded.read_small("oci-layout").is_ok() {
            uploaded.manifest = uploaded.layout_manifest(reference)?;
        } else if let Ok(saved) = uploaded.read_small("manifest.json") {
            uploaded.manifest = uploaded.docker_save(&saved, reference)?;
        } else {
            return Err(ImageError::Invalid(
                "the archive is neither an OCI image layout (oci-layout, index.json) nor a \
                 `docker save` archive (manifest.json)"
                    .to_owned(),
            ));
        }
        Ok(uploaded)
    }

    fn open(&self, path: &Path) -> Result<std::fs::File, ImageError> {
        let handle = self.root.resolve(path).map_err(|e| {
            ImageError::Invalid(format!(
                "{} is missing from the archive: {e}",
                path.display()
            ))
        })?;
        let file = handle
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
        if !file.metadata()?.is_file() {
            return Err(ImageError::Invalid(format!(
                "{} in the archive is not a file",
                path.display()
            )));
        }
        Ok(file)
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.open(Path::new(path))?
            .take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(ImageError::TooLarge(format!(
                "{path} is over {MAX_METADATA_BYTES} bytes"
            )));
        }
        Ok(bytes)
    }

    /// The digest of a file of the archive (streamed).
    fn digest_file(&self, path: &Path) -> Result<(Digest, u64), ImageError> {
        Hashing::new(self.open(path)?, u64::MAX)
            .finish()
            .map_err(read_error)
    }

    fn layout_manifest(&mut self, reference: Option<&str>) -> Result<Digest, ImageError> {
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&self.read_small("index.json")?)
                .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
        let candidates: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| {
                reference.is_none_or(|name| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == name)
                })
            })
            .collect();
        let [descriptor] = candidates.as_slice() else {
            return Err(if candidates.is_empty() {
                ImageError::NotFound(reference.unwrap_or("").to_owned())
            } else {
                ImageError::Invalid(format!(
                    "the archive holds {} images; name one",
                    candidates.len()
                ))
            });
        };
        // Every blob of a layout is where its digest says; they are checked when read.
        const BLOBS: &str = "blobs/sha256";
        if self.root.resolve(BLOBS).is_ok() {
            for name in self.list(BLOBS)? {
                if let Ok(digest) = format!("sha256:{name}").parse::<Digest>() {
                    self.blobs
                        .insert(digest, Blob::File(Path::new(BLOBS).join(&name)));
                }
            }
        }
        crate::layout::digest_of(descriptor)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, ImageError> {
        let handle = self
            .root
            .resolve(dir)
            .map_err(|e| ImageError::Invalid(format!("{dir}: {e}")))?;
        let fd = handle
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(|e| ImageError::Invalid(format!("{dir}: {e}")))?;
        let listing =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&fd).to_string());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(listing)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn docker_save(&mut self, saved: &[u8], reference: Option<&str>) -> Result<Digest, ImageError> {
        let images: Vec<SavedImage> = serde_json::from_slice(saved)
            .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
        let chosen: Vec<&SavedImage> = images
            .iter()
            .filter(|i| {
                reference.is_none_or(|r| {
                    i.repo_tags
                        .as_ref()
                        .is_some_and(|tags| tags.iter().any(|t| t == r))
                })
            })
            .collect();
        let [image] = chosen.as_slice() else {
            return Err(if chosen.is_empty() {
                ImageError::NotFound(reference.unwrap_or("").to_owned())
            } else {
                ImageError::Invalid(format!(
                    "the archive holds {} images; name one",
                    chosen.len()
                ))
            });
        };
        let config_bytes = self.read_small(&image.config)?;
        let config = Digest::of(&config_bytes);
        self.blobs
            .insert(config.clone(), Blob::Made(config_bytes.clone()));
        let mut layers = Vec::new();
        for layer in &image.layers {
            let path = PathBuf::from(layer);
            let (digest, size) = self.digest_file(&path)?;
            let mut head = [0u8; 2];
            let gzipped = self.open(&path)?.read(&mut head)? == 2 && head == [0x1f, 0x8b];
            let media_type = if gzipped {
                DOCKER_LAYER_TAR_GZIP
            } else {
                DOCKER_LAYER_TAR
            };
            layers
                .push(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
            self.blobs.insert(digest, Blob::File(path));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layers,
        }))
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
        let digest = Digest::of(&manifest);
        self.blobs.insert(digest.clone(), Blob::Made(manifest));
        Ok(digest)
    }
}

impl BlobSource for Uploaded {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        match self.blobs.get(digest) {
            Some(Blob::File(path)) => Ok(Box::new(self.open(path)?)),
            Some(Blob::Made(bytes)) => Ok(Box::new(std::io::Cursor::new(bytes.clone()))),
            None => Err(ImageError::Invalid(format!(
                "blob {digest} is missing from the archive"
            ))),
        }
    }
}
