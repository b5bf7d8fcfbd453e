//! Images unpacked into a tree: what a good image gives, and what hostile ones are refused
//! with, leaving nothing behind (in the cache or outside it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fnmesh_image::layout::{Image, Layout};
use fnmesh_image::tree;
use fnmesh_image::{ImageError, Limits};
use support::{gzip_layer, plain_layer, write_layout, Entry, LayerBlob};

struct Case {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    cache: PathBuf,
    /// A directory outside the cache that hostile layers aim at.
    outside: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        let (layout, cache, outside) = (
            dir.path().join("layout"),
            dir.path().join("cache"),
            dir.path().join("outside"),
        );
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::create_dir_all(&cache).expect("cache dir");
        Case {
            _dir: dir,
            layout,
            cache,
            outside,
        }
    }

    fn build(&self, layers: &[LayerBlob], limits: &Limits) -> Result<PathBuf, ImageError> {
        write_layout(&self.layout, "v1", layers, &["GREETING=hello"]);
        let layout = Layout::open(&self.layout)?;
        let digest = layout.manifest_digest(Some("v1"))?;
        let image = Image::read(&layout, &digest)?;
        let dest = self.cache.join(digest.hex());
        tree::build(&layout, &image, &dest, limits)?;
        Ok(dest)
    }

    /// The cache holds nothing (no tree, no temporary directory) and `outside` is untouched.
    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.cache)
            .expect("listing the cache")
            .map(|e| e.expect("cache entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "a refused image left {left:?} in the cache"
        );
        self.assert_outside_untouched();
    }

    fn assert_outside_untouched(&self) {
        let outside: Vec<_> = std::fs::read_dir(&self.outside)
            .expect("listing outside")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "secret")
            .collect();
        assert!(
            outside.is_empty(),
            "a layer wrote {outside:?} outside the cache"
        );
        let parent: Vec<_> = std::fs::read_dir(self.cache.parent().expect("parent"))
            .expect("listing the test dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let mut expected = vec!["cache", "layout", "outside"];
        expected.sort_unstable();
        let mut parent: Vec<&str> = parent.iter().map(String::as_str).collect();
        parent.sort_unstable();
        assert_eq!(parent, expected, "a layer wrote next to the cache");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn a_good_image_unpacks_with_whiteouts_links_and_modes() {
    let case = Case::new();
    let lower = gzip_layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/hello", 0o644, b"hello from the image\n"),
        Entry::File("bin/tool", 0o755, b"#!/bin/sh\necho tool\n"),
        Entry::File("gone.txt", 0o644, b"whited out above"),
        Entry::Dir("opaque/", 0o755),
        Entry::File("opaque/old.txt", 0o644, b"hidden by the opaque marker"),
        Entry::Symlink("link", "/etc/hello"),
        Entry::Hardlink("hard", "etc/hello"),
        Entry::Symlink("tmp", "/var/tmp"),
    ]);
    let upper = plain_layer(&[
        Entry::File(".wh.gone.txt", 0o644, b""),
        Entry::File("opaque/new.txt", 0o644, b"new"),
        Entry::File("opaque/.wh..wh..opq", 0o644, b""),
        Entry::File("etc/hello", 0o600, b"replaced\n"),
    ]);
    let tree = case
        .build(&[lower, upper], &Limits::default())
        .expect("a good image builds");

    assert_eq!(
        std::fs::read(tree.join("etc/hello")).expect("etc/hello"),
        b"replaced\n"
    );
    assert_eq!(mode(&tree.join("etc/hello")), 0o600);
    assert_eq!(mode(&tree.join("bin/tool")), 0o755);
    assert!(
        !tree.join("gone.txt").exists(),
        "the whiteout removed gone.txt"
    );
    assert!(
        !tree.join("opaque/old.txt").exists(),
        "the opaque marker hid old.txt"
    );
    assert_eq!(
        std::fs::read(tree.join("opaque/new.txt")).expect("new.txt"),
        b"new"
    );
    assert_eq!(
        std::fs::read_link(tree.join("link")).expect("link"),
        Path::new("/etc/hello")
    );
    // The hard link was made to the lower layer's file; the upper layer replaced that path.
    assert_eq!(
        std::fs::read(tree.join("hard")).expect("hard"),
        b"hello from the image\n"
    );
    // Mount points: a symlink where one goes is replaced by a directory.
    for dir in ["proc", "dev", "sys", "tmp", "var/runtime"] {
        let meta = std::fs::symlink_metadata(tree.join(dir)).expect("mount point");
        assert!(meta.is_dir(), "{dir} is a directory");
    }
    assert_eq!(mode(&tree.join("tmp")), 0o1777);
    // Building it again finds it in place.
    let layout = Layout::open(&case.layout).expect("layout");
    let digest = layout.manifest_digest(Some("v1")).expect("digest");
    let image = Image::read(&layout, &digest).expect("image");
    let again = tree::build(&layout, &image, &tree, &Limits::default()).expect("again");
    assert!(again.existed);
    case.assert_outside_untouched();
}

#[test]
fn a_setuid_binary_loses_its_bits() {
    let case = Case::new();
    let layer = gzip_layer(&[
        Entry::File("bin/su", 0o4755, b"x"),
        Entry::File("bin/wall", 0o2755, b"x"),
        Entry::Dir("shared/", 0o3777),
    ]);
    let tree = case.build(&[layer], &Limits::default()).expect("builds");
    assert_eq!(mode(&tree.join("bin/su")), 0o755);
    assert_eq!(mode(&tree.join("bin/wall")), 0o755);
    assert_eq!(
        mode(&tree.join("shared")),
        0o1777,
        "sticky kept, setgid dropped"
    );
}

#[test]
fn dot_dot_paths_refuse_the_image() {
    for name in ["../outside/evil", "a/../../outside/evil", "./../../evil"] {
        let case = Case::new();
        let layer = gzip_layer(&[
            Entry::File("fine", 0o644, b"ok"),
            Entry::File(name, 0o644, b"pwned"),
        ]);
        let err = case
            .build(&[layer], &Limits::default())
            .expect_err("a `..` path refuses the image");
        assert!(matches!(err, ImageError::PathEscape(_)), "{name}: {err}");
        assert!(err.is_image_fault());
        case.assert_nothing_left();
    }
}

#[test]
fn a_hard_link_out_of_the_tree_is_refused() {
    let case = Case::new();
    std::fs::write(case.outside.join("secret"), b"host secret").expect("secret");
    let layer = gzip_layer(&[Entry::Hardlink("stolen", "../outside/secret")]);
    let err = case
        .build(&[layer], &Limits::default())
        .expect_err("refused");
    assert!(matches!(err, ImageError::PathEscape(_)), "{err}");
    case.assert_nothing_left();

    // An absolute target is resolved inside the tree, where there is no such file.
    let case = Case::new();
    let secret = case.outside.join("secret");
    std::fs::write(&secret, b"host secret").expect("secret");
    let layer = gzip_layer(&[Entry::Hardlink(
        "stolen",
        secret.to_str().expect("utf-8 temp path"),
    )]);
    let built = case.build(&[layer], &Limits::default());
    assert!(
        built.is_err(),
        "a hard link to a host path must not be made"
    );
    assert_eq!(std::fs::metadata(&secret).expect("secret").nlink(), 1);
    case.assert_nothing_left();
}

#[test]
fn a_symlink_escape_followed_by_a_write_stays_inside_the_tree() {
    let case = Case::new();
    let outside = case.outside.to_str().expect("utf-8 temp path").to_owned();
    let relative = format!("../../../../../../../..{outside}");
    let lower = gzip_layer(&[
        Entry::Symlink("evil", &outside),
        Entry::Symlink("sneaky", &relative),
        // Gives the absolute target a home inside the tree, so the write has somewhere to go.
        Entry::Dir(&outside[1..], 0o755),
    ]);
    let upper = gzip_layer(&[
        Entry::File("evil/pwned", 0o644, b"through an absolute symlink"),
        Entry::File("sneaky/pwned2", 0o644, b"through a relative symlink"),
    ]);
    let tree = case
        .build(&[lower, upper], &Limits::default())
        .expect("the writes land inside the tree");
    case.assert_outside_untouched();
    let inside = tree.join(&outside[1..]);
    assert_eq!(
        std::fs::read(inside.join("pwned")).expect("inside"),
        b"through an absolute symlink"
    );
    assert_eq!(
        std::fs::read(inside.join("pwned2")).expect("inside"),
        b"through a relative symlink"
    );
}

#[test]
fn device_nodes_refuse_the_image() {
    let case = Case::new();
    let layer = gzip_layer(&[Entry::CharDevice("dev/mem")]);
    let err = case
        .build(&[layer], &Limits::default())
        .expect_err("refused");
    assert!(
        matches!(
            err,
            ImageError::ForbiddenEntry {
                kind: "character device",
                ..
            }
        ),
        "{err}"
    );
    case.assert_nothing_left();
}

#[test]
fn a_layer_bomb_stops_at_the_cap() {
    let case = Case::new();
    let zeros = vec![0u8; 8 << 20];
    let layer = gzip_layer(&[Entry::File("bomb", 0o644, &zeros)]);
    assert!(layer.bytes.len() < 64 << 10, "the bomb compresses well");
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = case.build(&[layer], &limits).expect_err("refused");
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    case.assert_nothing_left();

    let case = Case::new();
    let layer = gzip_layer(&[Entry::File("big", 0o644, &zeros)]);
    let limits = Limits {
        max_compressed_bytes: 1024,
        ..Limits::default()
    };
    let err = case.build(&[layer], &limits).expect_err("refused");
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    case.assert_nothing_left();

    let case = Case::new();
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry::File(n, 0o644, b"")).collect();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = case
        .build(&[gzip_layer(&entries)], &limits)
        .expect_err("refused");
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    case.assert_nothing_left();
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    // The layer's content no longer matches its diff_id (and its blob digest).
    let case = Case::new();
    let mut layer = plain_layer(&[Entry::File("data", 0o644, b"original content")]);
    let at = layer
        .bytes
        .windows(8)
        .position(|w| w == b"original")
        .expect("the content is in the tar");
    write_layout(&case.layout, "v1", std::slice::from_ref(&layer), &[]);
    layer.bytes[at] = b'O';
    let blob = case
        .layout
        .join("blobs/sha256")
        .join(fnmesh_image::Digest::of(&tar_unchanged(&layer.bytes, at)).hex());
    std::fs::write(&blob, &layer.bytes).expect("tampering with the blob");
    let layout = Layout::open(&case.layout).expect("layout");
    let digest = layout.manifest_digest(Some("v1")).expect("digest");
    let image = Image::read(&layout, &digest).expect("metadata is intact");
    let err = tree::build(
        &layout,
        &image,
        &case.cache.join(digest.hex()),
        &Limits::default(),
    )
    .expect_err("refused");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    case.assert_nothing_left();

    // A tampered configuration is refused before any layer is read.
    let config = image.config_digest.clone();
    let path = case.layout.join("blobs/sha256").join(config.hex());
    let mut bytes = std::fs::read(&path).expect("config");
    bytes.extend_from_slice(b" ");
    std::fs::write(&path, bytes).expect("tampering with the config");
    let err = Image::read(&layout, &digest).expect_err("refused");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

/// The original bytes of a layer tampered at `at` (its blob is still named by their digest).
fn tar_unchanged(tampered: &[u8], at: usize) -> Vec<u8> {
    let mut original = tampered.to_vec();
    original[at] = b'o';
    original
}

#[test]
fn unknown_layer_media_types_are_refused() {
    let case = Case::new();
    let mut layer = gzip_layer(&[Entry::File("x", 0o644, b"x")]);
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+zstd".to_owned();
    let err = case
        .build(&[layer], &Limits::default())
        .expect_err("refused");
    assert!(matches!(err, ImageError::UnsupportedMediaType(_)), "{err}");
    case.assert_nothing_left();
}
