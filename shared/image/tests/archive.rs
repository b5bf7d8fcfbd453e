//! Images uploaded as archives (an OCI layout tar, a `docker save` tar) run with no registry;
//! archives that try to read or write outside their directory are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use fnmesh_image::archive::Uploaded;
use fnmesh_image::cache::ImageCache;
use fnmesh_image::registry::Registries;
use fnmesh_image::{Digest, ImageError, Limits};
use serde_json::json;
use support::{gzip, gzip_layer, tar_of, write_layout, Entry};

fn cache(dir: &Path) -> Arc<ImageCache> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(
        ImageCache::open(
            dir,
            Registries::new(Vec::new()),
            Limits::default(),
            u64::MAX,
        )
        .unwrap(),
    )
}

/// A tar of the directory `dir`.
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

#[tokio::test]
async fn an_oci_layout_archive_runs_without_a_registry() {
    let work = tempfile::tempdir().unwrap();
    let layer = gzip_layer(&[Entry::File("hello", 0o644, b"from an uploaded layout")]);
    let digest = write_layout(&work.path().join("layout"), "v1", &[layer], &["A=1"]);
    let archive = gzip(&tar_dir(&work.path().join("layout")));

    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let uploaded =
        Uploaded::extract(&archive[..], &extracted, Some("v1"), &Limits::default()).unwrap();
    assert_eq!(uploaded.manifest, digest);
    let cache = cache(&work.path().join("cache"));
    let (prepared, _lease) = cache
        .prepare_from(&uploaded, &uploaded.manifest)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(prepared.tree.join("hello")).unwrap(),
        b"from an uploaded layout"
    );

    let missing = work.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    let err = Uploaded::extract(&archive[..], &missing, Some("v2"), &Limits::default())
        .err()
        .expect("no image v2");
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_docker_save_archive_runs_without_a_registry() {
    let work = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        Entry::File("hello", 0o644, b"lower"),
        Entry::File("keep", 0o644, b"kept"),
    ]);
    let upper = tar_of(&[Entry::File("hello", 0o644, b"from docker save")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/handler"], "Env": ["B=2"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&lower).to_string(), Digest::of(&upper).to_string()]},
    }))
    .unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["team/fn:1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]))
    .unwrap();
    // As older `docker save` does for a layer it already wrote: a relative symlink to it.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("manifest.json", &manifest[..]),
        (config_name.as_str(), &config[..]),
        ("aaa/layer.tar", &lower[..]),
        ("real/layer.tar", &upper[..]),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes).unwrap();
    }
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    link.set_uid(0);
    link.set_gid(0);
    link.set_mtime(0);
    builder
        .append_link(&mut link, "bbb/layer.tar", "../real/layer.tar")
        .unwrap();
    let archive = builder.into_inner().unwrap();

    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let uploaded = Uploaded::extract(
        &archive[..],
        &extracted,
        Some("team/fn:1"),
        &Limits::default(),
    )
    .unwrap();
    let cache = cache(&work.path().join("cache"));
    let (prepared, _lease) = cache
        .prepare_from(&uploaded, &uploaded.manifest)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(prepared.tree.join("hello")).unwrap(),
        b"from docker save"
    );
    assert_eq!(std::fs::read(prepared.tree.join("keep")).unwrap(), b"kept");
    let env = prepared
        .image
        .config
        .config()
        .as_ref()
        .unwrap()
        .env()
        .clone()
        .unwrap();
    assert_eq!(env, vec!["B=2".to_owned()]);
}

#[test]
fn archives_cannot_reach_outside_their_directory() {
    let work = tempfile::tempdir().unwrap();
    // Blobs behind a symlink to a host directory: resolved inside the archive, where there is
    // nothing, so no host file is read.
    let host = work.path().join("host");
    std::fs::create_dir_all(host.join("sha256")).unwrap();
    let planted = b"a host file";
    std::fs::write(host.join("sha256").join(Digest::of(planted).hex()), planted).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Digest::of(planted).to_string(), "size": planted.len(),
    }]})
    .to_string();
    let archive = tar_of(&[
        Entry::File("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#),
        Entry::File("index.json", 0o644, index.as_bytes()),
        Entry::Symlink("blobs", host.to_str().unwrap()),
    ]);
    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let uploaded = Uploaded::extract(&archive[..], &extracted, None, &Limits::default()).unwrap();
    let read = fnmesh_image::layout::read_blob(&uploaded, &uploaded.manifest, None);
    assert!(
        read.is_err(),
        "the host's file must not be read through the archive's symlink"
    );

    // A path with `..` refuses the archive, and nothing lands next to its directory.
    let archive = tar_of(&[Entry::File("../escaped", 0o644, b"x")]);
    let extracted = work.path().join("extracted2");
    std::fs::create_dir(&extracted).unwrap();
    let err = Uploaded::extract(&archive[..], &extracted, None, &Limits::default())
        .err()
        .expect("refused");
    assert!(matches!(err, ImageError::PathEscape(_)), "{err}");
    assert!(!work.path().join("escaped").exists());

    // Neither layout nor docker save.
    let archive = tar_of(&[Entry::File("README", 0o644, b"hi")]);
    let extracted = work.path().join("extracted3");
    std::fs::create_dir(&extracted).unwrap();
    let err = Uploaded::extract(&archive[..], &extracted, None, &Limits::default())
        .err()
        .expect("refused");
    assert!(matches!(err, ImageError::Invalid(_)), "{err}");
}
