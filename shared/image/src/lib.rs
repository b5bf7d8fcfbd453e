//! OCI images for functions: digests, image layouts and safe layer unpacking.
//!
//! A function of runtime `image` runs in a rootfs built from an OCI image. This crate turns the
//! image's blobs into that rootfs without trusting them:
//!
//! - [`digest`]: the one digest form we accept (`sha256:<64 lowercase hex>`), and readers that
//!   check a blob's digest and size while it streams;
//! - [`unpack`]: applies layers, in order, to a tree inside a directory we own: paths that would
//!   leave it are refused (`..`), symlinks are resolved inside the tree ([`pathrs`]) so no write
//!   follows one out, whiteouts and opaque directories are honoured, device nodes are refused,
//!   setuid/setgid bits are dropped, and the compressed and unpacked bytes and the entry count
//!   are capped ([`Limits`]);
//! - [`layout`]: reads an OCI image layout (a directory, or a tar archive of one) and the
//!   manifest and configuration of an image in it, each blob checked against its digest;
//! - [`registry`]: resolves tags to digests and pulls images by digest into a [`blobs::BlobDir`]
//!   (`oci-client`), plain HTTP only for allowlisted hosts, every blob checked and capped;
//! - [`cache`]: a node's blobs and trees, pulled once per digest, leased while in use, evicted
//!   least recently used first past a size cap; pulled ahead of use at a bounded rate
//!   ([`throttle`]);
//! - [`tree`]: builds the read-only rootfs of an image from its layers in a private temporary
//!   directory, then renames it into a content-addressed place; a refused image leaves nothing.

pub mod archive;
pub mod blobs;
pub mod build;
pub mod cache;
pub mod digest;
pub mod layout;
pub mod process;
pub mod registry;
pub mod throttle;
pub mod tree;
pub mod unpack;

pub use digest::Digest;
pub use unpack::Limits;

use std::path::PathBuf;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A digest that is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// A blob whose content does not match its digest (or size).
    #[error("blob {expected} does not match its digest: {detail}")]
    DigestMismatch { expected: String, detail: String },
    /// A layer or blob of a kind we do not unpack.
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// A layer entry whose path leaves the image's root.
    #[error("layer entry {0:?} escapes the image's root")]
    PathEscape(String),
    /// A layer entry of a type we refuse (device nodes).
    #[error("layer entry {path:?} is a {kind}, which images may not contain")]
    ForbiddenEntry { path: String, kind: &'static str },
    /// The image is over one of the [`Limits`].
    #[error("the image is too large: {0}")]
    TooLarge(String),
    /// The image's metadata is malformed or inconsistent.
    #[error("invalid image: {0}")]
    Invalid(String),
    /// No image by that reference (in a layout, or in its registry).
    #[error("no image {0:?}")]
    NotFound(String),
    /// The registry wants credentials, or refused the ones given (the namespace's registry
    /// credential is missing or wrong).
    #[error("registry {0} refused access: it needs credentials, or refused the ones given")]
    Unauthorized(String),
    /// The registry could not be reached or refused the request (not the image's fault).
    #[error("registry {0}")]
    Registry(String),
    /// Creating, resolving or writing a path inside the image's tree failed.
    #[error("unpacking {path:?}: {source}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ImageError {
    /// Whether the image itself is at fault (the caller's input), as opposed to this host.
    pub fn is_image_fault(&self) -> bool {
        !matches!(self, Self::Unpack { .. } | Self::Io(_) | Self::Registry(_))
    }
}
