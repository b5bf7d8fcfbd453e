//! Images in an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), and the
//! manifest and configuration of one image read from any [`BlobSource`], each blob checked
//! against its digest.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::digest::{read_error, Hashing};
use crate::{Digest, ImageError};

/// Largest manifest, index or configuration we read.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;

/// Manifest media types we accept.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Index media types we follow (to the linux/amd64 manifest).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The annotation that names an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where an image's blobs are read from.
pub trait BlobSource {
    /// The blob `digest` (not yet checked: callers check what they read).
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}

/// An image: its manifest's digest, the manifest and the configuration.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
}

impl Image {
    /// Reads the manifest `manifest_digest` and its configuration from `source`.
    pub fn read(source: &dyn BlobSource, manifest_digest: &Digest) -> Result<Self, ImageError> {
        let bytes = read_blob(source, manifest_digest, None)?;
        Self::from_manifest(source, manifest_digest.clone(), &bytes)
    }

    /// The image whose manifest is `bytes` (already checked against `manifest_digest`).
    pub fn from_manifest(
        source: &dyn BlobSource,
        manifest_digest: Digest,
        bytes: &[u8],
    ) -> Result<Self, ImageError> {
        let manifest: ImageManifest = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        if let Some(media_type) = manifest.media_type() {
            let media_type = media_type.to_string();
            if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
                return Err(ImageError::UnsupportedMediaType(media_type));
            }
        }
        let config_digest = digest_of(manifest.config())?;
        let config_bytes = read_blob(source, &config_digest, Some(manifest.config().size()))?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| {
            ImageError::Invalid(format!("image configuration {config_digest}: {e}"))
        })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Invalid(format!(
                "the manifest has {} layers, the configuration {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        Ok(Self {
            manifest_digest,
            manifest,
            config_digest,
            config,
        })
    }

    /// The layers to apply, in order.
    pub fn layers(&self) -> Result<Vec<crate::unpack::Layer>, ImageError> {
        self.manifest
            .layers()
            .iter()
            .zip(self.config.rootfs().diff_ids())
            .map(|(descriptor, diff_id)| {
                Ok(crate::unpack::Layer {
                    digest: digest_of(descriptor)?,
                    size: Some(descriptor.size()),
                    compression: crate::unpack::Compression::of_layer(
                        descriptor.media_type().as_ref(),
                    )?,
                    diff_id: diff_id.parse()?,
                })
            })
            .collect()
    }
}

/// A descriptor's digest, in the one form we accept.
pub fn digest_of(descriptor: &Descriptor) -> Result<Digest, ImageError> {
    descriptor.digest().to_string().parse()
}

/// The linux/amd64 manifest of the index `bytes` (whose digest is `digest`); an entry without
/// a platform qualifies.
pub fn platform_manifest(bytes: &[u8], digest: &Digest) -> Result<Descriptor, ImageError> {
    let index: ImageIndex = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Invalid(format!("index {digest}: {e}")))?;
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_none_or(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .cloned()
        .ok_or_else(|| ImageError::Invalid(format!("index {digest} has no linux/amd64 image")))
}

/// Reads a whole (small) blob and checks it against `digest` (and `size`).
pub fn read_blob(
    source: &dyn BlobSource,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Vec<u8>, ImageError> {
    if size.is_some_and(|s| s > MAX_METADATA_BYTES) {
        return Err(ImageError::TooLarge(format!(
            "metadata blob {digest} is over {MAX_METADATA_BYTES} bytes"
        )));
    }
    let mut reader = Hashing::new(source.open_blob(digest)?, MAX_METADATA_BYTES);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(read_error)?;
    reader.verify(digest, size)?;
    Ok(bytes)
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens the layout at `dir` (it must have an `oci-layout` file).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let dir = dir.into();
        let marker = dir.join("oci-layout");
        let text = std::fs::read(&marker).map_err(|e| {
            ImageError::Invalid(format!("{} is not an OCI image layout: {e}", dir.display()))
        })?;
        let parsed: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| ImageError::Invalid(format!("oci-layout: {e}")))?;
        if parsed.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(ImageError::Invalid(
                "oci-layout: imageLayoutVersion is not 1.0.0".to_owned(),
            ));
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The digest of the image named `reference` in `index.json` (its `ref.name`
    /// annotation), or of its only image when `reference` is `None`. An index is followed to
    /// its linux/amd64 manifest.
    pub fn manifest_digest(&self, reference: Option<&str>) -> Result<Digest, ImageError> {
        let bytes = std::fs::read(self.dir.join("index.json"))?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
        let candidates: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| match reference {
                None => true,
                Some(name) => d
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == name),
            })
            .collect();
        let descriptor = match candidates.as_slice() {
            [one] => *one,
            [] => return Err(ImageError::NotFound(reference.unwrap_or("").to_owned())),
            _ => {
                return Err(ImageError::Invalid(format!(
                    "the layout holds {} images{}; name one",
                    candidates.len(),
                    reference
                        .map(|r| format!(" named {r:?}"))
                        .unwrap_or_default()
                )))
            }
        };
        self.follow(descriptor, 0)
    }

    /// The manifest `descriptor` leads to (through at most one level of index).
    fn follow(&self, descriptor: &Descriptor, depth: u8) -> Result<Digest, ImageError> {
        let digest = digest_of(descriptor)?;
        let media_type = descriptor.media_type().to_string();
        match descriptor.media_type() {
            MediaType::ImageManifest => return Ok(digest),
            MediaType::ImageIndex if depth == 0 => {}
            _ if media_type == DOCKER_MANIFEST => return Ok(digest),
            _ if media_type == DOCKER_MANIFEST_LIST && depth == 0 => {}
            _ => return Err(ImageError::UnsupportedMediaType(media_type)),
        }
        let bytes = read_blob(self, &digest, Some(descriptor.size()))?;
        let chosen = platform_manifest(&bytes, &digest)?;
        self.follow(&chosen, depth + 1)
    }
}

impl BlobSource for Layout {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let path = self.dir.join("blobs").join("sha256").join(digest.hex());
        // Not following a symlink: an uploaded layout is the caller's, its blobs are files.
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::Invalid(format!(
                "blob {digest} is missing from the layout"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
