//! The node's local code cache: code archives fetched by checksum from the code store (the
//! NATS bucket of the region, or `FNMESH_CODE_STORE`), verified against their SHA-256 here
//! whatever the store, and unpacked once into `<dir>/<sha256>/`, which sandboxes mount
//! read-only.
//!
//! The cache is bounded (`FNMESH_CODE_CACHE_BYTES`, 2 GiB by default, counted as disk blocks
//! used): when unpacking new code takes it over the cap, the least recently used trees that
//! nothing holds are deleted until it fits again. A tree is held by a [`CodePin`]: every
//! [`CodeCache::get`] returns one (taken before the fetch starts, so an in-flight fetch is
//! held too) that the worker keeps until its invocation is done, and the executor pins the tree
//! of every live sandbox for that sandbox's life through [`CodePins`], so a tree a warm
//! sandbox has mounted is never deleted under it. Held trees may keep the cache over its cap
//! for a while; it shrinks back as they are let go and new code arrives. An evicted tree is
//! fetched again when next needed. Trees found on disk at start are indexed (oldest first by
//! modification time), and leftovers of interrupted unpacks or evictions are removed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fnmesh_code::CodeStore;
use fnmesh_core::archive::{self, ArchiveLimits};
use fnmesh_core::checksum::HashingReader;
use fnmesh_core::Checksum;

/// Default cap on the unpacked code a node keeps: 2 GiB.
pub const DEFAULT_CODE_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Prefix of a tree being unpacked.
const STAGING_PREFIX: &str = ".staging-";
/// Prefix of an evicted tree being deleted.
const EVICTED_PREFIX: &str = ".evicted-";

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

/// One unpacked tree.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Disk space it takes.
    bytes: u64,
    /// When it was last asked for, on the index's clock.
    last_used: u64,
}

/// What is on disk and what is held, by tree name (the checksum's hex).
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// Holders per tree name (a tree being fetched may have holders and no entry yet).
    pins: HashMap<String, usize>,
    /// Sum of the entries' bytes.
    total: u64,
    /// A counter that orders uses.
    clock: u64,
}

impl Index {
    fn touch(&mut self, name: &str) -> bool {
        self.clock += 1;
        let now = self.clock;
        match self.entries.get_mut(name) {
            Some(entry) => {
                entry.last_used = now;
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, name: &str, bytes: u64) {
        self.clock += 1;
        let entry = Entry {
            bytes,
            last_used: self.clock,
        };
        if let Some(old) = self.entries.insert(name.to_owned(), entry) {
            self.total -= old.bytes;
        }
        self.total += bytes;
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        let entry = self.entries.remove(name)?;
        self.total -= entry.bytes;
        Some(entry)
    }

    /// The least recently used tree nobody holds.
    fn coldest_unpinned(&self) -> Option<String> {
        self.entries
            .iter()
            .filter(|(name, _)| !self.pins.contains_key(name.as_str()))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(name, _)| name.clone())
    }
}

type SharedIndex = Arc<Mutex<Index>>;

fn lock(index: &SharedIndex) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Keeps one cached tree from being evicted while it (or a clone) is alive.
pub struct CodePin {
    index: SharedIndex,
    /// `None` for a directory the cache does not manage.
    name: Option<String>,
}

impl CodePin {
    fn new(index: &SharedIndex, name: Option<String>) -> Self {
        if let Some(name) = &name {
            *lock(index).pins.entry(name.clone()).or_default() += 1;
        }
        Self {
            index: Arc::clone(index),
            name,
        }
    }
}

impl Clone for CodePin {
    fn clone(&self) -> Self {
        Self::new(&self.index, self.name.clone())
    }
}

impl Drop for CodePin {
    fn drop(&mut self) {
        let Some(name) = &self.name else { return };
        let mut index = lock(&self.index);
        if let Some(count) = index.pins.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                index.pins.remove(name);
            }
        }
    }
}

impl std::fmt::Debug for CodePin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CodePin").field(&self.name).finish()
    }
}

/// Pins trees of one cache by path, for the sandboxes that mount them (cheap to clone).
#[derive(Clone)]
pub struct CodePins {
    dir: PathBuf,
    index: SharedIndex,
}

impl CodePins {
    /// Holds the tree at `path` (a no-op pin when `path` is not a tree of this cache).
    pub fn pin(&self, path: &Path) -> CodePin {
        let name = path
            .strip_prefix(&self.dir)
            .ok()
            .and_then(|rest| rest.to_str())
            .filter(|rest| Checksum::parse(rest).is_ok())
            .map(str::to_owned);
        CodePin::new(&self.index, name)
    }
}

impl std::fmt::Debug for CodePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodePins").field("dir", &self.dir).finish()
    }
}

/// An unpacked tree, held from eviction while this lives.
#[derive(Debug, Clone)]
pub struct CodeLease {
    path: PathBuf,
    pin: CodePin,
}

impl CodeLease {
    /// The unpacked tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another hold on the same tree (e.g. for work that outlives this lease).
    pub fn pin(&self) -> CodePin {
        self.pin.clone()
    }
}

/// Fetches and unpacks code on demand; unpacked trees are immutable and shared by sandboxes.
pub struct CodeCache {
    dir: PathBuf,
    store: Arc<dyn CodeStore>,
    limits: ArchiveLimits,
    max_bytes: u64,
    index: SharedIndex,
}

impl CodeCache {
    /// A cache rooted at `dir` (created if needed) that fetches from `store` and keeps at
    /// most about `max_bytes` of unpacked code. Indexes the trees already there (this walks
    /// them) and removes leftovers of an interrupted run.
    pub fn new(
        dir: &Path,
        store: Arc<dyn CodeStore>,
        limits: ArchiveLimits,
        max_bytes: u64,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(EVICTED_PREFIX) {
                remove_tree(&path);
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() && Checksum::parse(&name).is_ok() {
                found.push((meta.mtime(), name, disk_usage(&path)));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, bytes) in &found {
            index.insert(name, *bytes);
        }
        tracing::info!(
            code_cache.dir = %dir.display(),
            code_cache.trees = found.len(),
            code_cache.bytes = index.total,
            code_cache.max_bytes = max_bytes,
            "code cache opened"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            limits,
            max_bytes,
            index: Arc::new(Mutex::new(index)),
        })
    }

    /// What the executor uses to hold the trees its sandboxes mount.
    pub fn pins(&self) -> CodePins {
        CodePins {
            dir: self.dir.clone(),
            index: Arc::clone(&self.index),
        }
    }

    /// Disk space the cached trees take.
    pub fn bytes(&self) -> u64 {
        lock(&self.index).total
    }

    /// The unpacked tree of `checksum`, fetching it first if needed, held while the lease
    /// lives.
    pub async fn get(&self, checksum: &Checksum) -> Result<CodeLease, CodeCacheError> {
        let name = checksum.as_str().to_owned();
        let target = self.dir.join(&name);
        // Held before anything is looked at, so it cannot be evicted from under us.
        let pin = CodePin::new(&self.index, Some(name.clone()));
        let lease = |path: PathBuf| CodeLease { path, pin };
        let indexed = lock(&self.index).touch(&name);
        // A plain stat on the calling thread: a few µs, where `tokio::fs` would hand it to the
        // blocking pool and back (a thread hop per invocation, and a new thread when the pool's
        // idle ones have timed out).
        if indexed && target.is_dir() {
            return Ok(lease(target));
        }
        let staging = self.dir.join(format!(
            "{STAGING_PREFIX}{name}-{:016x}",
            rand::random::<u64>()
        ));
        // Fetched into a file beside the tree, a piece at a time, and unpacked from it: a
        // large archive is never held in memory whole.
        let blob = staging.with_extension("blob");
        let fetched = self.store.get_file(checksum, &blob).await;
        let fetch_err = |message: String| CodeCacheError::Fetch {
            checksum: checksum.clone(),
            message,
        };
        match fetched {
            Ok(true) => {}
            Ok(false) => return Err(CodeCacheError::Missing(checksum.clone())),
            Err(e) => {
                let _ = tokio::fs::remove_file(&blob).await;
                return Err(fetch_err(e.to_string()));
            }
        }
        let limits = self.limits;
        let target_for_task = target.clone();
        let expected = checksum.clone();
        let unpacked = tokio::task::spawn_blocking(move || -> Result<u64, UnpackFailure> {
            let file = std::fs::File::open(&blob).map_err(|e| UnpackFailure::Unpack(e.to_string()));
            let _ = std::fs::remove_file(&blob);
            // Stores verify what they serve; check again while unpacking, so code from any
            // store (or a damaged transfer) is never used unless it is exactly what was
            // deployed.
            let mut reader = HashingReader::new(file?);
            let unpacked = archive::unpack_reader(&mut reader, &staging, &limits);
            let hashed = reader.finish();
            if !matches!(&hashed, Ok((got, _)) if *got == expected) {
                remove_tree(&staging);
                return Err(UnpackFailure::Mismatch);
            }
            if let Err(e) = unpacked {
                remove_tree(&staging);
                return Err(UnpackFailure::Unpack(e.to_string()));
            }
            // Publish atomically; a concurrent fetch of the same code may have won the race,
            // in which case its (identical) tree stays and ours is dropped.
            match std::fs::rename(&staging, &target_for_task) {
                Ok(()) => {}
                Err(_) if target_for_task.exists() => remove_tree(&staging),
                Err(e) => {
                    remove_tree(&staging);
                    return Err(UnpackFailure::Unpack(e.to_string()));
                }
            }
            Ok(disk_usage(&target_for_task))
        })
        .await
        .map_err(|e| UnpackFailure::Unpack(e.to_string()));
        let size = match unpacked.and_then(|r| r) {
            Ok(size) => size,
            Err(UnpackFailure::Mismatch) => {
                tracing::error!(code.checksum = %checksum, "fetched code does not match its checksum; refused");
                return Err(fetch_err(
                    "checksum mismatch: the fetched bytes are not the deployed code".into(),
                ));
            }
            Err(UnpackFailure::Unpack(message)) => {
                return Err(CodeCacheError::Unpack {
                    checksum: checksum.clone(),
                    message,
                })
            }
        };
        lock(&self.index).insert(&name, size);
        tracing::debug!(code.checksum = %checksum, code.bytes = size, "code unpacked into the node cache");
        self.evict().await;
        Ok(lease(target))
    }

    /// Deletes the least recently used trees nothing holds until the cache fits its cap.
    async fn evict(&self) {
        let (dir, index, max_bytes) = (self.dir.clone(), Arc::clone(&self.index), self.max_bytes);
        let evicted = tokio::task::spawn_blocking(move || {
            let mut doomed = Vec::new();
            {
                let mut index = lock(&index);
                while index.total > max_bytes {
                    let Some(name) = index.coldest_unpinned() else {
                        break;
                    };
                    let Some(entry) = index.remove(&name) else {
                        break;
                    };
                    // Renamed while the index is locked: once a `get` can look again, the
                    // tree is either indexed or gone from its path.
                    let from = dir.join(&name);
                    let to = dir.join(format!(
                        "{EVICTED_PREFIX}{name}-{:016x}",
                        rand::random::<u64>()
                    ));
                    match std::fs::rename(&from, &to) {
                        Ok(()) => doomed.push((name, entry.bytes, to)),
                        Err(e) => {
                            tracing::warn!(code.checksum = %name, error = %e, "evicting cached code failed");
                        }
                    }
                }
            }
            for (name, bytes, path) in &doomed {
                remove_tree(path);
                tracing::info!(code.checksum = %name, code.bytes = bytes, "evicted code from the node cache");
            }
            doomed.len()
        })
        .await;
        if let Err(e) = evicted {
            tracing::warn!(error = %e, "evicting cached code panicked");
        }
    }
}

/// Why fetched code was not unpacked.
enum UnpackFailure {
    /// It is not what was deployed.
    Mismatch,
    /// Unpacking failed.
    Unpack(String),
}

/// Removes a directory tree (or a file: a fetched blob left by a crash), best effort.
fn remove_tree(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => std::fs::remove_dir_all(path),
    };
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "removing cached code failed");
        }
    }
}

/// Disk space a tree takes (allocated blocks of every entry, links not followed).
fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        total += meta.blocks() * 512;
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            stack.push(entry.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use fnmesh_code::CodeStoreError;

    use super::*;

    /// An in-memory store that counts reads.
    #[derive(Default)]
    struct Memory {
        blobs: Mutex<HashMap<Checksum, Bytes>>,
        gets: AtomicUsize,
    }

    impl Memory {
        /// Stores a code archive of one file of about `size` bytes, distinct per `n`.
        fn add(&self, n: usize, size: usize) -> Checksum {
            let source = format!("# code {n}\n{}", "x".repeat(size));
            let tar = archive::normalize(source.as_bytes(), "main.py", &ArchiveLimits::default())
                .unwrap();
            let checksum = Checksum::of(&tar);
            self.blobs
                .lock()
                .unwrap()
                .insert(checksum.clone(), Bytes::from(tar));
            checksum
        }
    }

    #[async_trait]
    impl CodeStore for Memory {
        async fn ping(&self) -> Result<(), CodeStoreError> {
            Ok(())
        }
        async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
            Ok(Checksum::of(&bytes))
        }
        async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Ok(self.blobs.lock().unwrap().get(checksum).cloned())
        }
        async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
            Ok(self.blobs.lock().unwrap().contains_key(checksum))
        }
        async fn delete(&self, _: &Checksum) -> Result<bool, CodeStoreError> {
            Ok(true)
        }
    }

    const TREE_FILE_BYTES: usize = 60 * 1024;

    /// Disk space one unpacked tree of [`TREE_FILE_BYTES`] takes on this file system.
    async fn tree_bytes() -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Memory::default());
        let checksum = store.add(0, TREE_FILE_BYTES);
        let cache = CodeCache::new(dir.path(), store, ArchiveLimits::default(), u64::MAX).unwrap();
        let _lease = cache.get(&checksum).await.unwrap();
        cache.bytes()
    }

    #[tokio::test]
    async fn least_recently_used_code_is_evicted_over_the_cap_and_fetched_again() {
        let tree = tree_bytes().await;
        assert!(tree >= TREE_FILE_BYTES as u64, "{tree}");
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Memory::default());
        let cap = tree * 3 + tree / 2;
        let cache =
            CodeCache::new(dir.path(), store.clone(), ArchiveLimits::default(), cap).unwrap();
        let [a, b, c, d] = [1, 2, 3, 4].map(|n| store.add(n, TREE_FILE_BYTES));
        let present = |c: &Checksum| dir.path().join(c.as_str()).join("main.py").exists();

        for code in [&a, &b, &c] {
            let lease = cache.get(code).await.unwrap();
            assert!(lease.path().join("main.py").exists());
        }
        assert_eq!(cache.bytes(), 3 * tree);
        // A is used again, so B is now the least recently used.
        cache.get(&a).await.unwrap();
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            3,
            "a cached tree is not fetched"
        );
        cache.get(&d).await.unwrap();
        assert!(!present(&b), "the least recently used tree is evicted");
        for code in [&a, &c, &d] {
            assert!(present(code));
        }
        assert_eq!(cache.bytes(), 3 * tree);
        assert!(cache.bytes() <= cap);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // B is fetched again when needed (and C, now the coldest, makes room).
        let lease = cache.get(&b).await.unwrap();
        assert!(lease.path().join("main.py").exists());
        assert_eq!(store.gets.load(Ordering::SeqCst), 5);
        assert!(!present(&c));
    }

    #[tokio::test]
    async fn code_held_by_a_sandbox_or_an_invocation_is_never_evicted() {
        let tree = tree_bytes().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Memory::default());
        let cap = tree + tree / 2;
        let cache =
            CodeCache::new(dir.path(), store.clone(), ArchiveLimits::default(), cap).unwrap();
        let pins = cache.pins();
        let [a, b, c, d] = [1, 2, 3, 4].map(|n| store.add(n, TREE_FILE_BYTES));
        let present = |c: &Checksum| dir.path().join(c.as_str()).join("main.py").exists();

        // A: an invocation in flight holds its lease. B: a warm sandbox mounts it.
        let running = cache.get(&a).await.unwrap();
        let sandbox = pins.pin(cache.get(&b).await.unwrap().path());
        // C takes the cache over its cap, but everything is held (C by its own lease).
        let c_lease = cache.get(&c).await.unwrap();
        for code in [&a, &b, &c] {
            assert!(present(code), "a held tree is never evicted");
        }
        assert_eq!(cache.bytes(), 3 * tree);
        drop(c_lease);

        // The sandbox goes away: B and C are free, and go when D needs room; A stays.
        drop(sandbox);
        let d_lease = cache.get(&d).await.unwrap();
        assert!(present(&a) && present(&d));
        assert!(!present(&b) && !present(&c));
        assert_eq!(cache.bytes(), 2 * tree);
        drop((running, d_lease));

        // Pins of directories the cache does not manage are no-ops.
        let outside = pins.pin(Path::new("/somewhere/else"));
        let inside_odd = pins.pin(&dir.path().join("not-a-checksum"));
        drop((outside, inside_odd));
        assert!(lock(&cache.index).pins.is_empty(), "every hold was let go");
    }

    #[tokio::test]
    async fn a_restarted_cache_indexes_what_is_on_disk_and_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Memory::default());
        let a = store.add(1, TREE_FILE_BYTES);
        let before = {
            let cache = CodeCache::new(
                dir.path(),
                store.clone(),
                ArchiveLimits::default(),
                u64::MAX,
            )
            .unwrap();
            cache.get(&a).await.unwrap();
            cache.bytes()
        };
        let staging = dir.path().join(format!("{STAGING_PREFIX}{}-1", a.as_str()));
        std::fs::create_dir_all(staging.join("sub")).unwrap();
        let evicted = dir.path().join(format!("{EVICTED_PREFIX}{}-1", a.as_str()));
        std::fs::create_dir_all(&evicted).unwrap();

        let cache = CodeCache::new(
            dir.path(),
            store.clone(),
            ArchiveLimits::default(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(cache.bytes(), before);
        assert!(!staging.exists() && !evicted.exists());
        cache.get(&a).await.unwrap();
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            1,
            "served from disk, not fetched"
        );
    }

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
        let cache = CodeCache::new(
            dir.path(),
            store,
            ArchiveLimits::default(),
            DEFAULT_CODE_CACHE_BYTES,
        )
        .unwrap();
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
