//! The image of an `image` function at deploy.
//!
//! Two sources, both ending in an [`ImageSpec`] pinned to a manifest digest and in code stored
//! like any other function's:
//!
//! - **a registry reference** (`"image": "host[:port]/repo:tag"`): the tag is resolved to a
//!   digest now and the version keeps the digest (a tag moving later never changes a version);
//!   the code is one file, `image.json`, holding the spec; a private registry is read with
//!   the namespace's credential for it ([`crate::registries`]);
//! - **an uploaded archive** (`code.source`: an OCI image layout or a `docker save` archive, as
//!   tar or tar.gz): extracted under the layer rules (no path escapes, no links out, capped),
//!   the image is read and checked, and what is stored is a normalised OCI image layout of
//!   exactly its blobs, which nodes unpack like any code and read with no registry at all.

use std::io::Read as _;

use bytes::Bytes;
use fnmesh_core::archive;
use fnmesh_core::function::IMAGE_CODE_FILE;
use fnmesh_core::{CodeInfo, ImageMode, ImageSpec};
use fnmesh_image::layout::{BlobSource, Image, OCI_MANIFEST};
use fnmesh_image::registry::ImageRef;
use fnmesh_image::{Digest, ImageError};

use super::Code;
use crate::error::ApiError;
use crate::state::State;

/// `code.source_type` of an image function's code.
pub(crate) const SOURCE_TYPE_IMAGE: &str = "image";

/// The image fields of a create or update body (each body declares them itself: its
/// `deny_unknown_fields` rules out `serde(flatten)`).
#[derive(Debug, Default)]
pub(crate) struct ImageFields {
    /// A registry reference, or the name of the image inside an uploaded archive.
    pub image: Option<String>,
    /// `exec` (default) or `http`.
    pub mode: Option<ImageMode>,
    /// `http` mode: the server's port (default 8080).
    pub port: Option<u16>,
}

impl ImageFields {
    /// Whether any image field was given.
    pub(crate) fn any(&self) -> bool {
        self.image.is_some() || self.mode.is_some() || self.port.is_some()
    }
}

/// Refuses image fields on a function of another runtime.
pub(crate) fn refuse_for_other_runtimes(fields: &ImageFields) -> Result<(), ApiError> {
    if fields.any() {
        return Err(ApiError::InvalidImage(
            "image, mode and port are fields of runtime \"image\" only".to_owned(),
        ));
    }
    Ok(())
}

fn mode_and_port(fields: &ImageFields) -> Result<(ImageMode, Option<u16>), ApiError> {
    let mode = fields.mode.unwrap_or_default();
    match (mode, fields.port) {
        (ImageMode::Exec, Some(_)) => Err(ApiError::InvalidImage(
            "port applies to mode \"http\" only".to_owned(),
        )),
        (ImageMode::Http, Some(port)) if port < 1024 => Err(ApiError::InvalidImage(format!(
            "port {port} is privileged: the image's server runs unprivileged, use 1024..=65535"
        ))),
        (mode, port) => Ok((mode, port)),
    }
}

/// The image and the code of a new version of an image function.
pub(crate) async fn deploy(
    state: &State,
    namespace: &fnmesh_core::Namespace,
    fields: &ImageFields,
    code: Option<&Code<'_>>,
) -> Result<(ImageSpec, CodeInfo), ApiError> {
    let (mode, port) = mode_and_port(fields)?;
    match code {
        Some(code) => from_archive(state, fields.image.as_deref(), code, mode, port).await,
        None => {
            let raw = fields.image.as_deref().ok_or_else(|| {
                ApiError::InvalidImage(
                    "runtime \"image\" needs an image reference (\"image\": \
                     \"host[:port]/repo:tag\") or an image archive as code.source"
                        .to_owned(),
                )
            })?;
            from_registry(state, namespace, raw, mode, port).await
        }
    }
}

/// A new version of an image function that keeps the previous version's image with new
/// `mode`/`port`: the code (for a registry image, the spec itself) is stored again.
pub(crate) async fn with_mode(
    state: &State,
    previous: &ImageSpec,
    previous_code: &CodeInfo,
    fields: &ImageFields,
) -> Result<(ImageSpec, CodeInfo), ApiError> {
    let merged = ImageFields {
        image: None,
        mode: Some(fields.mode.unwrap_or(previous.mode)),
        port: fields.port.or(match fields.mode {
            Some(ImageMode::Exec) => None,
            _ => previous.port,
        }),
    };
    let (mode, port) = mode_and_port(&merged)?;
    let spec = ImageSpec {
        mode,
        port,
        ..previous.clone()
    };
    if spec.reference.is_none() {
        // The uploaded layout is the code; it does not hold the mode.
        return Ok((spec, previous_code.clone()));
    }
    let code = store_spec(state, &spec).await?;
    Ok((spec, code))
}

async fn from_registry(
    state: &State,
    namespace: &fnmesh_core::Namespace,
    raw: &str,
    mode: ImageMode,
    port: Option<u16>,
) -> Result<(ImageSpec, CodeInfo), ApiError> {
    let reference: ImageRef = raw.parse().map_err(|e: ImageError| {
        ApiError::InvalidImage(format!(
            "image {:?}: {e}",
            raw.chars().take(200).collect::<String>()
        ))
    })?;
    let credentials = crate::registries::credentials_for(state, namespace, &reference).await?;
    let digest = state
        .registries
        .resolve(&reference, credentials.as_ref())
        .await?;
    let spec = ImageSpec {
        reference: Some(reference.pinned(&digest).to_string()),
        requested: Some(raw.to_owned()),
        digest: digest.to_string(),
        mode,
        port,
    };
    let code = store_spec(state, &spec).await?;
    tracing::info!(
        image.requested = %raw,
        image.digest = %digest,
        "image tag resolved"
    );
    Ok((spec, code))
}

/// Stores `image.json` (the spec) as the code of a registry image's version.
async fn store_spec(state: &State, spec: &ImageSpec) -> Result<CodeInfo, ApiError> {
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| ApiError::Internal(format!("serialising an image spec: {e}")))?;
    let tar = tar_of(&[(IMAGE_CODE_FILE.to_owned(), json)])?;
    let limits = state.config.archive;
    let tar = archive::normalize(&tar, IMAGE_CODE_FILE, &limits)?;
    store(state, tar).await
}

async fn store(state: &State, tar: Vec<u8>) -> Result<CodeInfo, ApiError> {
    let size = tar.len() as u64;
    let checksum = state.backends.code.put(Bytes::from(tar)).await?;
    Ok(CodeInfo {
        checksum,
        size,
        source_type: SOURCE_TYPE_IMAGE.to_owned(),
    })
}

/// A tar of `(path, contents)` files, in memory.
fn tar_of(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ApiError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, contents.as_slice())
            .map_err(|e| ApiError::Internal(format!("writing a tar in memory: {e}")))?;
    }
    builder
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("writing a tar in memory: {e}")))
}

async fn from_archive(
    state: &State,
    name: Option<&str>,
    code: &Code<'_>,
    mode: ImageMode,
    port: Option<u16>,
) -> Result<(ImageSpec, CodeInfo), ApiError> {
    let decoded = code.bytes().await?;
    let _permit = state
        .normalize_permits
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("normalisation permits closed: {e}")))?;
    let name = name.map(str::to_owned);
    let limits = state.config.archive;
    let (digest, tar) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let staging = tempfile::Builder::new()
            .prefix("fnmesh-image-")
            .tempdir()
            .map_err(|e| ApiError::Internal(format!("creating a staging dir: {e}")))?;
        let image_limits = fnmesh_image::Limits {
            max_unpacked_bytes: limits.max_unpacked_bytes,
            ..fnmesh_image::Limits::default()
        };
        let reader: Box<dyn std::io::Read> = if decoded.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(decoded.as_slice()))
        } else {
            Box::new(decoded.as_slice())
        };
        // Reading the upload fails on what the caller sent (a truncated or garbled tar).
        let uploaded = fnmesh_image::archive::Uploaded::extract(
            reader,
            staging.path(),
            name.as_deref(),
            &image_limits,
        )
        .map_err(|e| match e {
            ImageError::Io(_) | ImageError::Unpack { .. } => ApiError::InvalidImage(format!(
                "code.source is not a readable image archive (an OCI image layout or a \
                 `docker save` archive, as tar or tar.gz): {e}"
            )),
            other => other.into(),
        })?;
        let image = Image::read(&uploaded, &uploaded.manifest)?;
        check_runnable(&image)?;
        let tar = layout_tar(&uploaded, &image)?;
        Ok((image.manifest_digest.clone(), tar))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("reading an uploaded image failed: {e}")))??;
    // Normalised like all code: what nodes unpack is checked the same way.
    let tar = archive::normalize(&tar, "index.json", &limits)?;
    let code = store(state, tar).await?;
    let spec = ImageSpec {
        reference: None,
        requested: None,
        digest: digest.to_string(),
        mode,
        port,
    };
    Ok((spec, code))
}

/// Refuses an image with nothing to run.
fn check_runnable(image: &Image) -> Result<(), ApiError> {
    let config = image.config.config().clone().unwrap_or_default();
    let has_command = config.entrypoint().as_ref().is_some_and(|e| !e.is_empty())
        || config.cmd().as_ref().is_some_and(|c| !c.is_empty());
    if has_command {
        Ok(())
    } else {
        Err(ApiError::InvalidImage(
            "the image has neither an Entrypoint nor a Cmd to run".to_owned(),
        ))
    }
}

/// An OCI image layout (tar) holding exactly `image`: `oci-layout`, `index.json` naming its
/// manifest, and its manifest, configuration and layers under `blobs/sha256/`.
fn layout_tar(source: &dyn BlobSource, image: &Image) -> Result<Vec<u8>, ApiError> {
    let mut blobs = vec![
        (image.manifest_digest.clone(), None),
        (
            image.config_digest.clone(),
            Some(image.manifest.config().size()),
        ),
    ];
    for layer in image.layers()? {
        blobs.push((layer.digest, layer.size));
    }
    let manifest_size = read_checked(source, &image.manifest_digest, None)?.len();
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map_or_else(|| OCI_MANIFEST.to_owned(), ToString::to_string);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": image.manifest_digest.to_string(),
            "size": manifest_size,
        }],
    });
    let mut files = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index.to_string().into_bytes()),
    ];
    for (digest, size) in blobs {
        let bytes = read_checked(source, &digest, size)?;
        files.push((format!("blobs/sha256/{}", digest.hex()), bytes));
    }
    tar_of(&files)
}

/// A blob of `source`, checked against its digest (and size, when known).
fn read_checked(
    source: &dyn BlobSource,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    let cap = size.unwrap_or(fnmesh_image::layout::MAX_METADATA_BYTES);
    source
        .open_blob(digest)?
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("reading blob {digest}: {e}")))?;
    if Digest::of(&bytes) != *digest || size.is_some_and(|s| s != bytes.len() as u64) {
        return Err(ApiError::InvalidImage(format!(
            "blob {digest} does not match its digest"
        )));
    }
    Ok(bytes)
}
