//! A node's image cache: blobs and unpacked trees, shared by every function using an image,
//! with a size cap and least-recently-used eviction of images no sandbox uses.
//!
//! Layout under its directory: `blobs/sha256/<hex>` (manifests, configurations, layers) and
//! `trees/<manifest hex>` (the read-only rootfs), with `trees/<manifest hex>.size` holding the
//! bytes the image takes (blobs and tree). A tree is built only after its blobs are all
//! pulled and checked, and appears by rename, so what is in `trees/` is complete.
//!
//! [`ImageCache::prepare`] pulls (once per digest, however many callers ask at once), builds
//! the tree and returns it with a [`Lease`]: while any lease of an image is alive, eviction
//! leaves the image alone. After each new image, images are evicted, least recently used
//! first, until the cache is under its cap again (an image in use is never evicted, so the cap
//! can be exceeded by what is in use).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::blobs::BlobDir;
use crate::layout::{BlobSource, Image};
use crate::registry::{Credentials, ImageRef, Registries};
use crate::throttle::Pace;
use crate::unpack::Limits;
use crate::{tree, Digest, ImageError};

/// An image ready to run: its tree and what it took to get there.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tree: PathBuf,
    pub image: Arc<Image>,
    /// Time spent pulling blobs (zero when all were cached).
    pub pull: Duration,
    /// Time spent building the tree (zero when it was cached).
    pub unpack: Duration,
}

/// Keeps an image from being evicted while alive.
#[derive(Debug)]
pub struct Lease {
    digest: Digest,
    state: Arc<Mutex<State>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(entry) = state.images.get_mut(&self.digest) {
            entry.users = entry.users.saturating_sub(1);
            entry.last_used = Instant::now();
        }
    }
}

/// An image in the cache, as `/v1/admin/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CachedImage {
    pub digest: String,
    pub bytes: u64,
    pub in_use: u32,
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    layers: Vec<Digest>,
    other_blobs: Vec<Digest>,
    users: u32,
    last_used: Instant,
    image: Option<Arc<Image>>,
}

#[derive(Debug, Default)]
struct State {
    images: HashMap<Digest, Entry>,
}

/// Blobs and trees of the images a node runs.
pub struct ImageCache {
    blobs: BlobDir,
    trees: PathBuf,
    registries: Registries,
    limits: Limits,
    max_bytes: u64,
    state: Arc<Mutex<State>>,
    /// One pull at a time per digest.
    pulling: tokio::sync::Mutex<HashMap<Digest, InFlight>>,
}

/// A pull under way: its gate (one at a time per digest) and, for a background pull, its
/// pace, which a caller that needs the image now lifts.
#[derive(Default, Clone)]
struct InFlight {
    gate: Arc<tokio::sync::Mutex<()>>,
    pace: Option<Pace>,
}

/// Bytes of the files under `dir` (not following symlinks).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => tree_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ImageCache {
    /// The cache at `dir`: removes what interrupted builds left and finds the trees in place.
    pub fn open(
        dir: &Path,
        registries: Registries,
        limits: Limits,
        max_bytes: u64,
    ) -> Result<Self, ImageError> {
        let blobs = BlobDir::open(dir.join("blobs"))?;
        let trees = dir.join("trees");
        std::fs::create_dir_all(&trees)?;
        tree::sweep(&trees)?;
        let cache = Self {
            blobs,
            trees,
            registries,
            limits,
            max_bytes,
            state: Arc::default(),
            pulling: tokio::sync::Mutex::default(),
        };
        cache.index()?;
        Ok(cache)
    }

    /// Registers the trees already on disk (oldest modification first, as least recently used).
    fn index(&self) -> Result<(), ImageError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.trees)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let Ok(image) = Image::read(&self.blobs, &digest) else {
                // Its blobs are gone: the tree cannot be accounted for, so it goes.
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(self.size_file(&digest));
                continue;
            };
            // A crash between the tree's rename and its size file: measure it again.
            let bytes = match self.recorded_size(&digest) {
                Some(bytes) => bytes,
                None => {
                    let bytes = self.blob_bytes(&image) + tree_bytes(&entry.path());
                    std::fs::write(self.size_file(&digest), bytes.to_string())?;
                    bytes
                }
            };
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, digest, image, bytes));
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let mut state = lock(&self.state);
        let now = Instant::now();
        let n = found.len() as u32;
        for (i, (_, digest, image, bytes)) in found.into_iter().enumerate() {
            let entry = self.entry_of(&image, bytes);
            state.images.insert(
                digest,
                Entry {
                    // Older trees look less recently used.
                    last_used: now
                        .checked_sub(Duration::from_secs(u64::from(n - i as u32)))
                        .unwrap_or(now),
                    image: Some(Arc::new(image)),
                    ..entry
                },
            );
        }
        Ok(())
    }

    fn entry_of(&self, image: &Image, bytes: u64) -> Entry {
        Entry {
            bytes,
            layers: image
                .layers()
                .map(|l| l.into_iter().map(|l| l.digest).collect())
                .unwrap_or_default(),
            other_blobs: vec![image.manifest_digest.clone(), image.config_digest.clone()],
            users: 0,
            last_used: Instant::now(),
            image: None,
        }
    }

    /// The bytes recorded for the image `digest` when its tree was built.
    fn recorded_size(&self, digest: &Digest) -> Option<u64> {
        std::fs::read_to_string(self.size_file(digest))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Bytes the layer blobs of `image` take in the blob directory.
    fn blob_bytes(&self, image: &Image) -> u64 {
        image
            .layers()
            .map(|layers| {
                layers
                    .iter()
                    .filter_map(|l| self.blobs.size(&l.digest))
                    .sum()
            })
            .unwrap_or(0)
    }

    fn size_file(&self, digest: &Digest) -> PathBuf {
        self.trees.join(format!("{}.size", digest.hex()))
    }

    fn tree_path(&self, digest: &Digest) -> PathBuf {
        self.trees.join(digest.hex())
    }

    /// The image `reference` pins, pulled and unpacked if needed, with a lease on it. A
    /// background pull of the same image under way ([`Self::prepull`]) goes on at full speed.
    pub async fn prepare(
        self: &Arc<Self>,
        reference: &ImageRef,
        credentials: Option<&Credentials>,
    ) -> Result<(Prepared, Lease), ImageError> {
        self.obtain(reference, credentials, None).await
    }

    /// Pulls and unpacks the image `reference` pins ahead of its use, at `pace`; `None` when
    /// it was there already (or another caller got it meanwhile). Nothing keeps it from
    /// eviction afterwards.
    pub async fn prepull(
        self: &Arc<Self>,
        reference: &ImageRef,
        credentials: Option<&Credentials>,
        pace: Pace,
    ) -> Result<Option<Prepared>, ImageError> {
        if reference.digest().is_some_and(|d| self.contains(&d)) {
            return Ok(None);
        }
        let (prepared, _lease) = self.obtain(reference, credentials, Some(pace)).await?;
        // An invocation may have pulled it meanwhile: then this pulled nothing.
        let pulled = !prepared.pull.is_zero() || !prepared.unpack.is_zero();
        Ok(pulled.then_some(prepared))
    }

    /// The byte cap past which unused images are evicted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether the image `digest` names is cached (without marking it used).
    pub fn contains(&self, digest: &Digest) -> bool {
        lock(&self.state).images.contains_key(digest)
    }

    async fn obtain(
        self: &Arc<Self>,
        reference: &ImageRef,
        credentials: Option<&Credentials>,
        pace: Option<Pace>,
    ) -> Result<(Prepared, Lease), ImageError> {
        let requested = reference
            .digest()
            .ok_or_else(|| ImageError::Invalid(format!("{reference} is not pinned to a digest")))?;
        if let Some(ready) = self.lease_cached(&requested) {
            return Ok(ready);
        }
        let gate = {
            let mut pulling = self.pulling.lock().await;
            let in_flight = pulling
                .entry(requested.clone())
                .or_insert_with(|| InFlight {
                    gate: Arc::default(),
                    pace: pace.clone(),
                });
            if pace.is_none() {
                if let Some(background) = &in_flight.pace {
                    background.hurry();
                }
            }
            in_flight.gate.clone()
        };
        let _one_at_a_time = gate.lock().await;
        if let Some(ready) = self.lease_cached(&requested) {
            return Ok(ready);
        }
        let started = Instant::now();
        let outcome = async {
            let image = self
                .registries
                .pull(
                    reference,
                    credentials,
                    &self.blobs,
                    &self.limits,
                    pace.as_ref(),
                )
                .await?;
            self.unpack(image, started.elapsed()).await
        }
        .await;
        self.pulling.lock().await.remove(&requested);
        let prepared = outcome?;
        // An index digest leads to its manifest: remember it under the requested digest too.
        let lease = self.admit(&requested, &prepared);
        self.evict();
        Ok((prepared, lease))
    }

    /// Unpacks an image whose blobs are all in `source` (an uploaded layout, for instance):
    /// copies them into the cache first.
    pub async fn prepare_from(
        self: &Arc<Self>,
        source: &(dyn BlobSource + Sync),
        manifest: &Digest,
    ) -> Result<(Prepared, Lease), ImageError> {
        if let Some(ready) = self.lease_cached(manifest) {
            return Ok(ready);
        }
        let started = Instant::now();
        let image = Image::read(source, manifest)?;
        let mut wanted = vec![
            (image.manifest_digest.clone(), None),
            (image.config_digest.clone(), None),
        ];
        wanted.extend(image.layers()?.into_iter().map(|l| (l.digest, l.size)));
        for (digest, size) in wanted {
            if self.blobs.contains(&digest) {
                continue;
            }
            let mut temp = self.blobs.temp()?;
            let cap = size.unwrap_or(crate::layout::MAX_METADATA_BYTES);
            let mut reader = std::io::Read::take(source.open_blob(&digest)?, cap + 1);
            std::io::copy(&mut reader, &mut temp)?;
            self.blobs.commit(temp, &digest, size)?;
        }
        let prepared = self.unpack(image, started.elapsed()).await?;
        let lease = self.admit(manifest, &prepared);
        self.evict();
        Ok((prepared, lease))
    }

    async fn unpack(
        self: &Arc<Self>,
        image: Image,
        pull: Duration,
    ) -> Result<Prepared, ImageError> {
        let started = Instant::now();
        let this = self.clone();
        let image = Arc::new(image);
        let building = image.clone();
        let dest = self.tree_path(&image.manifest_digest);
        let built = tokio::task::spawn_blocking(move || {
            tree::build(&this.blobs, &building, &dest, &this.limits)
        })
        .await
        .map_err(|e| ImageError::Io(std::io::Error::other(e.to_string())))??;
        let bytes = self.blob_bytes(&image) + built.usage.unpacked_bytes;
        if !built.existed {
            std::fs::write(self.size_file(&image.manifest_digest), bytes.to_string())?;
        }
        Ok(Prepared {
            tree: self.tree_path(&image.manifest_digest),
            image,
            pull,
            unpack: if built.existed {
                Duration::ZERO
            } else {
                started.elapsed()
            },
        })
    }

    /// Records a prepared image and leases it (under `requested` too, if that differs).
    fn admit(&self, requested: &Digest, prepared: &Prepared) -> Lease {
        let digest = prepared.image.manifest_digest.clone();
        let bytes = self.recorded_size(&digest).unwrap_or(0);
        let mut state = lock(&self.state);
        let entry = state.images.entry(digest.clone()).or_insert_with(|| Entry {
            image: Some(prepared.image.clone()),
            ..self.entry_of(&prepared.image, bytes)
        });
        entry.users += 1;
        entry.last_used = Instant::now();
        if requested != &digest {
            // An index: its own digest names the same tree.
            state
                .images
                .entry(requested.clone())
                .or_insert_with(|| Entry {
                    bytes: 0,
                    layers: Vec::new(),
                    other_blobs: Vec::new(),
                    users: 0,
                    last_used: Instant::now(),
                    image: Some(prepared.image.clone()),
                });
        }
        Lease {
            digest,
            state: self.state.clone(),
        }
    }

    /// A lease on `digest` if it is cached (and its tree in place).
    fn lease_cached(&self, digest: &Digest) -> Option<(Prepared, Lease)> {
        let mut state = lock(&self.state);
        let image = state.images.get(digest)?.image.clone()?;
        let manifest = image.manifest_digest.clone();
        let tree = self.tree_path(&manifest);
        if !tree.is_dir() {
            return None;
        }
        let entry = state.images.get_mut(&manifest)?;
        entry.users += 1;
        entry.last_used = Instant::now();
        Some((
            Prepared {
                tree,
                image,
                pull: Duration::ZERO,
                unpack: Duration::ZERO,
            },
            Lease {
                digest: manifest,
                state: self.state.clone(),
            },
        ))
    }

    /// Bytes the cached images take.
    pub fn bytes(&self) -> u64 {
        lock(&self.state).images.values().map(|e| e.bytes).sum()
    }

    /// The cached images (by manifest digest), most recently used first.
    pub fn images(&self) -> Vec<CachedImage> {
        let state = lock(&self.state);
        let mut images: Vec<(&Digest, &Entry)> =
            state.images.iter().filter(|(_, e)| e.bytes > 0).collect();
        images.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used));
        images
            .into_iter()
            .map(|(d, e)| CachedImage {
                digest: d.to_string(),
                bytes: e.bytes,
                in_use: e.users,
            })
            .collect()
    }

    /// Evicts unused images, least recently used first, until the cache is under its cap;
    /// returns the evicted manifest digests.
    pub fn evict(&self) -> Vec<Digest> {
        let mut evicted = Vec::new();
        let mut state = lock(&self.state);
        loop {
            let total: u64 = state.images.values().map(|e| e.bytes).sum();
            if total <= self.max_bytes {
                break;
            }
            let victim = state
                .images
                .iter()
                .filter(|(_, e)| e.users == 0 && e.bytes > 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| d.clone());
            let Some(victim) = victim else {
                break; // everything left is in use
            };
            let Some(entry) = state.images.remove(&victim) else {
                break;
            };
            // Aliases (index digests) of the victim go with it.
            state
                .images
                .retain(|_, e| e.image.as_ref().is_none_or(|i| i.manifest_digest != victim));
            let kept: HashSet<&Digest> = state
                .images
                .values()
                .flat_map(|e| e.layers.iter().chain(&e.other_blobs))
                .collect();
            if let Err(e) = std::fs::remove_dir_all(self.tree_path(&victim)) {
                tracing::warn!(image = %victim, error = %e, "removing an evicted image's tree");
            }
            let _ = std::fs::remove_file(self.size_file(&victim));
            for blob in entry.layers.iter().chain(&entry.other_blobs) {
                if !kept.contains(blob) {
                    let _ = self.blobs.remove(blob);
                }
            }
            evicted.push(victim);
        }
        evicted
    }
}
