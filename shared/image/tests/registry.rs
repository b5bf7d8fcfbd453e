//! Pulling from a real registry (`docker-registry`, images pushed with `skopeo`): tags resolve
//! to digests, a digest pulls the same image after its tag moved, corrupted blobs are refused,
//! plain HTTP needs the allowlist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use fnmesh_image::blobs::BlobDir;
use fnmesh_image::registry::{ImageRef, Registries};
use fnmesh_image::{tree, ImageError, Limits};
use support::registry::RegistryServer;
use support::{gzip_layer, write_layout, Entry};

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes a one-layer image whose `/hello` says `text` as `<dir>:v1`; its manifest digest.
fn image_saying(dir: &Path, text: &str) -> fnmesh_image::Digest {
    let layer = gzip_layer(&[
        Entry::File("hello", 0o644, text.as_bytes()),
        Entry::File("bin/handler", 0o755, b"#!/bin/sh\ncat\n"),
    ]);
    write_layout(dir, "v1", &[layer], &["GREETING=hi"])
}

#[tokio::test]
async fn a_tag_resolves_to_a_digest_that_keeps_its_image_after_the_tag_moves() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let one = image_saying(&work.path().join("one"), "one");
    registry.push(&work.path().join("one"), "v1", "fn/hello");
    let registries = Registries::new(vec![registry.host.clone()]);
    let by_tag: ImageRef = format!("{}/fn/hello:v1", registry.host).parse().unwrap();
    assert_eq!(registries.resolve(&by_tag, None).await.unwrap(), one);

    // The tag moves to another image.
    let two = image_saying(&work.path().join("two"), "two");
    registry.push(&work.path().join("two"), "v1", "fn/hello");
    assert_ne!(one, two);
    assert_eq!(registries.resolve(&by_tag, None).await.unwrap(), two);

    // The first digest still pulls the first image.
    let blobs = BlobDir::open(work.path().join("blobs")).unwrap();
    let limits = Limits::default();
    for (digest, text) in [(&one, "one"), (&two, "two")] {
        let pinned = by_tag.pinned(digest);
        assert_eq!(registries.resolve(&pinned, None).await.unwrap(), *digest);
        let image = registries
            .pull(&pinned, None, &blobs, &limits, None)
            .await
            .unwrap();
        assert_eq!(&image.manifest_digest, digest);
        let dest = work.path().join("trees").join(digest.hex());
        tree::build(&blobs, &image, &dest, &limits).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("hello")).unwrap(), text);
        let env = image
            .config
            .config()
            .as_ref()
            .unwrap()
            .env()
            .clone()
            .unwrap();
        assert_eq!(env, vec!["GREETING=hi".to_owned()]);
    }
}

#[tokio::test]
async fn a_blob_the_registry_corrupts_is_refused_and_not_kept() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let digest = image_saying(&work.path().join("img"), "original");
    registry.push(&work.path().join("img"), "v1", "fn/bad");
    let layout = fnmesh_image::layout::Layout::open(work.path().join("img")).unwrap();
    let image = fnmesh_image::layout::Image::read(&layout, &digest).unwrap();
    let layer = image.layers().unwrap().remove(0);
    let stored = registry.blob_path(layer.digest.hex());
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let registries = Registries::new(vec![registry.host.clone()]);
    let pinned: ImageRef = format!("{}/fn/bad@{digest}", registry.host)
        .parse()
        .unwrap();
    let blobs = BlobDir::open(work.path().join("blobs")).unwrap();
    let err = registries
        .pull(&pinned, None, &blobs, &Limits::default(), None)
        .await
        .expect_err("a corrupted layer is refused");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        !blobs.contains(&layer.digest),
        "the corrupted blob was not kept"
    );
    let partial: Vec<_> = std::fs::read_dir(blobs.dir().join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-"))
        .collect();
    assert!(partial.is_empty(), "left {partial:?}");
}

#[tokio::test]
async fn a_layer_over_the_cap_is_not_downloaded_past_it() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    let noise: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer = gzip_layer(&[Entry::File("noise", 0o644, &noise)]);
    let size = layer.bytes.len() as u64;
    let digest = write_layout(&work.path().join("img"), "v1", &[layer], &[]);
    registry.push(&work.path().join("img"), "v1", "fn/big");
    let registries = Registries::new(vec![registry.host.clone()]);
    let pinned: ImageRef = format!("{}/fn/big@{digest}", registry.host)
        .parse()
        .unwrap();
    let blobs = BlobDir::open(work.path().join("blobs")).unwrap();
    let limits = Limits {
        max_compressed_bytes: size / 2,
        ..Limits::default()
    };
    let err = registries
        .pull(&pinned, None, &blobs, &limits, None)
        .await
        .expect_err("refused");
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
}

#[tokio::test]
async fn plain_http_needs_the_allowlist_and_unknown_tags_are_not_found() {
    crypto();
    let registry = RegistryServer::start();
    let work = tempfile::tempdir().unwrap();
    image_saying(&work.path().join("img"), "x");
    registry.push(&work.path().join("img"), "v1", "fn/x");
    let reference: ImageRef = format!("{}/fn/x:v1", registry.host).parse().unwrap();

    let strict = Registries::new(Vec::new());
    let err = strict
        .resolve(&reference, None)
        .await
        .expect_err("HTTPS only");
    assert!(matches!(err, ImageError::Registry(_)), "{err}");
    assert!(!err.is_image_fault());

    let allowed = Registries::new(vec![registry.host.clone()]);
    let missing: ImageRef = format!("{}/fn/x:nope", registry.host).parse().unwrap();
    let err = allowed
        .resolve(&missing, None)
        .await
        .expect_err("no such tag");
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}

#[test]
fn references_name_their_registry() {
    for bad in [
        "busybox:latest",
        "library/busybox",
        "127.0.0.1:5000/fn/x:v 1",
        "127.0.0.1:5000/fn/x@sha256:abc",
        "",
    ] {
        assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} is refused");
    }
    let ok: ImageRef = "registry.example.com/team/fn:1.2".parse().unwrap();
    assert_eq!(ok.registry(), "registry.example.com");
    assert_eq!(ok.repository(), "team/fn");
    assert_eq!(ok.tag(), Some("1.2"));
    let hex = "a".repeat(64);
    let pinned: ImageRef = format!("localhost:5000/fn@sha256:{hex}").parse().unwrap();
    assert_eq!(pinned.digest().unwrap().hex(), hex);
}
