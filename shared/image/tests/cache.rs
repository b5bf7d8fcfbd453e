//! A node's image cache against a real registry: one pull for many callers, LRU eviction
//! that spares leased images, a restart that finds its trees, uploaded layouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_image::cache::ImageCache;
use fnmesh_image::layout::Layout;
use fnmesh_image::registry::{ImageRef, Registries};
use fnmesh_image::{Digest, Limits};
use support::registry::RegistryServer;
use support::{gzip_layer, write_layout, Entry};

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An image of ~128 KiB of noise seeded by `seed`, pushed as `fn/<name>:v1`; its pinned ref.
fn pushed(registry: &RegistryServer, work: &Path, name: &str, seed: u32) -> (ImageRef, Digest) {
    let noise: Vec<u8> = (0..128 * 1024u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer = gzip_layer(&[
        Entry::File("noise", 0o644, &noise),
        Entry::File("name", 0o644, name.as_bytes()),
    ]);
    let dir = work.join(name);
    let digest = write_layout(&dir, "v1", &[layer], &[]);
    registry.push(&dir, "v1", &format!("fn/{name}"));
    let reference = format!("{}/fn/{name}@{digest}", registry.host)
        .parse()
        .unwrap();
    (reference, digest)
}

fn cache_at(dir: &Path, registry: &RegistryServer, max_bytes: u64) -> Arc<ImageCache> {
    Arc::new(
        ImageCache::open(
            dir,
            Registries::new(vec![registry.host.clone()]),
            Limits::default(),
            max_bytes,
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn concurrent_callers_share_one_pull_and_one_tree() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let (reference, digest) = pushed(&registry, work.path(), "shared", 1);
    let cache = cache_at(&work.path().join("cache"), &registry, u64::MAX);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (cache, reference) = (cache.clone(), reference.clone());
        calls.spawn(async move { cache.prepare(&reference, None).await.unwrap() });
    }
    let mut built = 0;
    let mut trees = Vec::new();
    let mut leases = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (prepared, lease) = done.unwrap();
        if prepared.unpack > Duration::ZERO {
            built += 1;
        }
        trees.push(prepared.tree.clone());
        leases.push(lease);
    }
    assert_eq!(
        built, 1,
        "one caller built the tree, the others waited for it"
    );
    assert!(trees.iter().all(|t| t == &trees[0]));
    assert_eq!(std::fs::read(trees[0].join("name")).unwrap(), b"shared");
    let images = cache.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].digest, digest.to_string());
    assert_eq!(images[0].in_use, 4);
    drop(leases);
    assert_eq!(cache.images()[0].in_use, 0);
}

#[tokio::test]
async fn unused_images_are_evicted_least_recently_used_first_and_leased_ones_kept() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let (a, a_digest) = pushed(&registry, work.path(), "a", 1);
    let (b, b_digest) = pushed(&registry, work.path(), "b", 2);
    let (c, c_digest) = pushed(&registry, work.path(), "c", 3);

    // Measure one image, then cap the cache at two and a half of them.
    let probe = cache_at(&work.path().join("probe"), &registry, u64::MAX);
    let (_, lease) = probe.prepare(&a, None).await.unwrap();
    let one = probe.bytes();
    assert!(
        one > 128 * 1024,
        "an image takes its blobs and its tree: {one}"
    );
    drop(lease);

    let cache = cache_at(&work.path().join("cache"), &registry, one * 5 / 2);
    let (a_ready, a_lease) = cache.prepare(&a, None).await.unwrap(); // in use throughout
    let (b_ready, b_lease) = cache.prepare(&b, None).await.unwrap();
    drop(b_lease);
    let (c_ready, c_lease) = cache.prepare(&c, None).await.unwrap();
    // Three images over a cap of two and a half: b, unused, went; a is leased and stays.
    assert!(a_ready.tree.is_dir());
    assert!(!b_ready.tree.exists(), "the unused image was evicted");
    assert!(c_ready.tree.is_dir());
    let cached: Vec<String> = cache.images().into_iter().map(|i| i.digest).collect();
    assert!(cached.contains(&a_digest.to_string()) && cached.contains(&c_digest.to_string()));
    assert!(!cached.contains(&b_digest.to_string()));
    assert!(cache.bytes() <= one * 5 / 2);

    // b again: now a (released before c) is the least recently used.
    drop(a_lease);
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(c_lease);
    let (b_again, _b_lease) = cache.prepare(&b, None).await.unwrap();
    assert!(b_again.pull > Duration::ZERO, "b was pulled again");
    assert!(!a_ready.tree.exists(), "a was the least recently used");
    assert!(c_ready.tree.is_dir());
}

#[tokio::test]
async fn a_reopened_cache_finds_its_images() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let (reference, digest) = pushed(&registry, work.path(), "kept", 7);
    let dir = work.path().join("cache");
    {
        let cache = cache_at(&dir, &registry, u64::MAX);
        let (prepared, _lease) = cache.prepare(&reference, None).await.unwrap();
        assert!(prepared.pull > Duration::ZERO);
    }
    // A half-built tree left by a crash is swept on open, and a tree whose size was not
    // recorded (a crash right after its rename) is measured again.
    std::fs::create_dir_all(dir.join("trees/.tmp-crashed/etc")).unwrap();
    std::fs::remove_file(dir.join(format!("trees/{}.size", digest.hex()))).unwrap();
    let cache = cache_at(&dir, &registry, u64::MAX);
    assert!(!dir.join("trees/.tmp-crashed").exists());
    let images = cache.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].digest, digest.to_string());
    assert!(images[0].bytes > 0);
    let (prepared, _lease) = cache.prepare(&reference, None).await.unwrap();
    assert_eq!(prepared.pull, Duration::ZERO, "nothing pulled");
    assert_eq!(prepared.unpack, Duration::ZERO, "nothing unpacked");
}

#[tokio::test]
async fn an_uploaded_layout_needs_no_registry() {
    crypto();
    let work = tempfile::tempdir().unwrap();
    let layer = gzip_layer(&[Entry::File("hello", 0o644, b"air-gapped")]);
    let digest = write_layout(&work.path().join("layout"), "v1", &[layer], &[]);
    let cache = Arc::new(
        ImageCache::open(
            &work.path().join("cache"),
            Registries::new(Vec::new()),
            Limits::default(),
            u64::MAX,
        )
        .unwrap(),
    );
    let layout = Layout::open(work.path().join("layout")).unwrap();
    let (prepared, _lease) = cache.prepare_from(&layout, &digest).await.unwrap();
    assert_eq!(
        std::fs::read(prepared.tree.join("hello")).unwrap(),
        b"air-gapped"
    );
    assert_eq!(prepared.image.manifest_digest, digest);
}
