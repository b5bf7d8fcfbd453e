//! Pulling images from registries (`oci-client`), by digest, into a [`BlobDir`].
//!
//! A reference names its registry explicitly (`host[:port]/repo[:tag][@sha256:…]`; there is no
//! default registry). Registries are reached over HTTPS, except the hosts on the operator's
//! allowlist of plain-HTTP registries (`FNMESH_INSECURE_REGISTRIES`). Every blob is checked
//! against its digest as it arrives (and again when unpacked), and capped in size before it is
//! written: metadata at [`MAX_METADATA_BYTES`], layers at the image's compressed-bytes limit.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::blobs::BlobDir;
use crate::layout::{
    digest_of, platform_manifest, Image, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_METADATA_BYTES,
    OCI_INDEX, OCI_MANIFEST,
};
use crate::throttle::{Pace, MAX_WAIT_STEP};
use crate::unpack::Limits;
use crate::{Digest, ImageError};

/// A parsed image reference with an explicit registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest the reference pins, if it pins one.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// The same repository, pinned to `digest`: `registry/repo@sha256:…`.
    pub fn pinned(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            inner: Reference::with_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                digest.to_string(),
            ),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, ImageError> {
        let invalid = |why: &str| ImageError::Invalid(format!("image reference {s:?}: {why}"));
        if s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("too long, or has spaces or control characters"));
        }
        let host = s.split('/').next().unwrap_or_default();
        if !s.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(invalid(
                "name the registry explicitly, as host[:port]/repository[:tag][@sha256:…]",
            ));
        }
        let inner = Reference::from_str(s).map_err(|e| invalid(&e.to_string()))?;
        if let Some(digest) = inner.digest() {
            digest.parse::<Digest>()?;
        }
        Ok(Self { inner })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

/// Registry credentials (basic auth; bearer tokens are obtained with them as needed).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

fn auth(credentials: Option<&Credentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// Manifest media types we ask registries for.
const ACCEPTED: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// A registry client.
///
/// `oci-client` keeps the credentials it is first given for a registry, and the tokens got
/// with them, in its `Client`: one client for every namespace would let one namespace's pull
/// ride on another's credentials. So there is one client per credential (keyed by a digest of
/// host, user name and password) besides the anonymous one; never shared across credentials.
pub struct Registries {
    anonymous: Client,
    with_credentials: std::sync::Mutex<HashMap<[u8; 32], Client>>,
    insecure: Vec<String>,
}

/// Clients with credentials kept at most (emptied when full).
const CREDENTIAL_CLIENTS: usize = 256;

impl Registries {
    /// A client that reaches the hosts in `insecure` over plain HTTP, every other over HTTPS.
    pub fn new(insecure: Vec<String>) -> Self {
        // reqwest (under oci-client) leaves rustls's crypto provider to the application: ring,
        // as everywhere in fnmesh, unless the process installed one already.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Self {
            anonymous: Client::new(client_config(&insecure)),
            with_credentials: std::sync::Mutex::default(),
            insecure,
        }
    }

    /// The client to reach `reference`'s registry with `credentials`.
    fn client(&self, reference: &ImageRef, credentials: Option<&Credentials>) -> Client {
        let Some(c) = credentials else {
            return self.anonymous.clone();
        };
        let mut hash = Sha256::new();
        for part in [reference.registry(), &c.username, &c.password] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let key: [u8; 32] = hash.finalize().into();
        let mut clients = self
            .with_credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if clients.len() >= CREDENTIAL_CLIENTS && !clients.contains_key(&key) {
            clients.clear();
        }
        clients
            .entry(key)
            .or_insert_with(|| Client::new(client_config(&self.insecure)))
            .clone()
    }

    /// The plain-HTTP allowlist.
    pub fn insecure(&self) -> &[String] {
        &self.insecure
    }

    /// The digest `reference` names now: its own if it pins one (checked to exist), else what
    /// its tag points at.
    pub async fn resolve(
        &self,
        reference: &ImageRef,
        credentials: Option<&Credentials>,
    ) -> Result<Digest, ImageError> {
        let digest = self
            .client(reference, credentials)
            .fetch_manifest_digest(&reference.inner, &auth(credentials))
            .await
            .map_err(|e| registry_error(reference, e))?;
        let digest: Digest = digest.parse()?;
        if let Some(pinned) = reference.digest() {
            if pinned != digest {
                return Err(ImageError::DigestMismatch {
                    expected: pinned.to_string(),
                    detail: format!("the registry serves {digest}"),
                });
            }
        }
        Ok(digest)
    }

    /// Pulls the image `reference` pins (an index is followed to its linux/amd64 manifest)
    /// into `blobs`: manifest, configuration and the layers not there yet; layers at `pace`
    /// when given (a background pull).
    pub async fn pull(
        &self,
        reference: &ImageRef,
        credentials: Option<&Credentials>,
        blobs: &BlobDir,
        limits: &Limits,
        pace: Option<&Pace>,
    ) -> Result<Image, ImageError> {
        let pinned = reference
            .digest()
            .ok_or_else(|| ImageError::Invalid(format!("{reference} is not pinned to a digest")))?;
        let auth = auth(credentials);
        let client = self.client(reference, credentials);
        let mut digest = pinned;
        for _ in 0..2 {
            let at = reference.pinned(&digest);
            let (bytes, _) = client
                .pull_manifest_raw(&at.inner, &auth, ACCEPTED)
                .await
                .map_err(|e| registry_error(reference, e))?;
            if bytes.len() as u64 > MAX_METADATA_BYTES {
                return Err(ImageError::TooLarge(format!(
                    "manifest {digest} is over {MAX_METADATA_BYTES} bytes"
                )));
            }
            let got = Digest::of(&bytes);
            if got != digest {
                return Err(ImageError::DigestMismatch {
                    expected: digest.to_string(),
                    detail: format!("the registry's manifest hashes to {got}"),
                });
            }
            let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                });
            if matches!(
                media_type.as_deref(),
                Some(OCI_INDEX | DOCKER_MANIFEST_LIST)
            ) {
                digest = digest_of(&platform_manifest(&bytes, &digest)?)?;
                continue;
            }
            blobs.put(&digest, &bytes)?;
            let config_descriptor =
                serde_json::from_slice::<oci_spec::image::ImageManifest>(&bytes)
                    .map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))?;
            let config = digest_of(config_descriptor.config())?;
            let metadata = Blob {
                digest: &config,
                size: Some(config_descriptor.config().size()),
                cap: MAX_METADATA_BYTES,
            };
            fetch(&client, &at, &auth, blobs, metadata, None).await?;
            let image = Image::from_manifest(blobs, digest, &bytes)?;
            let mut budget = limits.max_compressed_bytes;
            for layer in image.layers()? {
                let size = layer.size.unwrap_or(0);
                if size > budget {
                    return Err(ImageError::TooLarge(format!(
                        "its layers are over {} compressed bytes",
                        limits.max_compressed_bytes
                    )));
                }
                budget -= size;
                let blob = Blob {
                    digest: &layer.digest,
                    size: layer.size,
                    cap: size,
                };
                fetch(&client, &at, &auth, blobs, blob, pace).await?;
            }
            return Ok(image);
        }
        Err(ImageError::Invalid(format!(
            "{reference}: an index that points at another index"
        )))
    }
}

/// One blob to fetch: its digest, its size if known, and the most bytes it may have.
struct Blob<'a> {
    digest: &'a Digest,
    size: Option<u64>,
    cap: u64,
}

/// Downloads one blob into `blobs` unless it is there, at most `cap` bytes, at `pace`.
async fn fetch(
    client: &Client,
    at: &ImageRef,
    auth: &RegistryAuth,
    blobs: &BlobDir,
    blob: Blob<'_>,
    pace: Option<&Pace>,
) -> Result<(), ImageError> {
    let Blob { digest, size, cap } = blob;
    if blobs.contains(digest) {
        return Ok(());
    }
    // A client keeps the credentials it was first given for a registry: one per credential.
    client
        .store_auth_if_needed(at.inner.resolve_registry(), auth)
        .await;
    let temp = blobs.temp()?;
    let file = tokio::fs::File::from_std(temp.reopen()?);
    let mut out = Capped::new(file, cap, pace.cloned());
    client
        .pull_blob(&at.inner, digest.as_str(), &mut out)
        .await
        .map_err(|e| match e {
            oci_client::errors::OciDistributionError::IoError(io)
                if io
                    .get_ref()
                    .is_some_and(|i| i.is::<crate::digest::OverCap>()) =>
            {
                ImageError::TooLarge(format!("blob {digest} is over {cap} bytes"))
            }
            other => registry_error(at, other),
        })?;
    blobs.commit(temp, digest, size)
}

fn client_config(insecure: &[String]) -> ClientConfig {
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        platform_resolver: None,
        ..ClientConfig::default()
    }
}

fn registry_error(reference: &ImageRef, e: oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::DigestError(d) => ImageError::DigestMismatch {
            expected: reference.to_string(),
            detail: d.to_string(),
        },
        E::ImageManifestNotFoundError(_) => ImageError::NotFound(reference.to_string()),
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            ImageError::Unauthorized(reference.registry().to_owned())
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            ImageError::Unauthorized(reference.registry().to_owned())
        }
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::ManifestUnknown)) =>
        {
            ImageError::NotFound(reference.to_string())
        }
        other => ImageError::Registry(format!("{}: {other}", reference.registry())),
    }
}

/// An async writer that fails once more than `left` bytes were written.
struct Capped<W> {
    inner: W,
    left: u64,
    /// The pace of a background pull, if it has one.
    pace: Option<Pace>,
    /// Set while the pace holds the next write back.
    held: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl<W> Capped<W> {
    fn new(inner: W, left: u64, pace: Option<Pace>) -> Self {
        Self {
            inner,
            left,
            pace,
            held: None,
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // Waits in steps, so that a pull made urgent meanwhile resumes within one.
        while let Some((resume, sleep)) = this.held.as_mut() {
            if this.pace.as_ref().is_some_and(Pace::is_urgent) || Instant::now() >= *resume {
                this.held = None;
                break;
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let next = (*resume).min(Instant::now() + MAX_WAIT_STEP);
                    sleep.as_mut().reset(next);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if buf.len() as u64 > this.left {
            let cap = this.left;
            return Poll::Ready(Err(std::io::Error::other(crate::digest::OverCap(cap))));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.left -= n as u64;
                if let Some(resume) = this.pace.as_ref().and_then(|p| p.charge(n)) {
                    let first = resume.min(Instant::now() + MAX_WAIT_STEP);
                    this.held = Some((resume, Box::pin(tokio::time::sleep_until(first))));
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
