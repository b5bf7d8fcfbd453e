//! Test images made from `busybox-static`: one layer holding busybox, its applets and the
//! test's own files, written as an OCI image layout that `skopeo` pushes to a test registry
//! ([`crate::servers::registry`]) or that a test uploads as an archive ([`layout_tar`]).

use std::io::Write as _;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The busybox applets linked in every test image.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "id", "head", "printf", "pwd", "test", "true", "sleep", "httpd",
    "ls", "wc", "touch", "rm", "mkdir",
];

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("creating the blobs dir");
    std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).expect("writing a blob");
    digest
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    if let Some(link) = link {
        header.set_link_name(link).expect("a link name");
    }
    builder
        .append_data(&mut header, path, data)
        .expect("appending to a tar in memory");
}

/// The busybox layer with `files` (`path`, mode, contents) added, as an uncompressed tar.
fn busybox_layer(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("/bin/busybox: {e}; install it with `apt-get install busybox-static`")
    });
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp", "srv"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        append(
            &mut builder,
            dir,
            tar::EntryType::Directory,
            mode,
            b"",
            None,
        );
    }
    append(
        &mut builder,
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    for applet in APPLETS {
        append(
            &mut builder,
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    append(
        &mut builder,
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n",
        None,
    );
    append(
        &mut builder,
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:\napp:x:1000:\n",
        None,
    );
    for (path, mode, contents) in files {
        let mut parent = String::new();
        for component in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent = if parent.is_empty() {
                component.to_owned()
            } else {
                format!("{parent}/{component}")
            };
            if !["bin", "etc", "tmp", "srv"].contains(&parent.as_str()) {
                append(
                    &mut builder,
                    &parent,
                    tar::EntryType::Directory,
                    0o755,
                    b"",
                    None,
                );
            }
        }
        append(
            &mut builder,
            path,
            tar::EntryType::Regular,
            *mode,
            contents,
            None,
        );
    }
    builder.into_inner().expect("finishing a tar in memory")
}

/// Writes an OCI image layout at `dir` with one image named `tag`: busybox plus `files`,
/// configured by `config` (the configuration's `config` object: `Entrypoint`, `Cmd`, `Env`,
/// `WorkingDir`, `User`). Returns the manifest's digest.
pub fn busybox_layout(
    dir: &Path,
    tag: &str,
    files: &[(&str, u32, &[u8])],
    config: Value,
) -> String {
    std::fs::create_dir_all(dir).expect("creating the layout dir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    let layer = busybox_layer(files);
    let diff_id = sha256(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).expect("gzip in memory");
    let layer = gz.finish().expect("gzip in memory");
    let configuration = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("configuration JSON");
    let config_digest = put_blob(dir, &configuration);
    let layer_digest = put_blob(dir, &layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": configuration.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .expect("manifest JSON");
    let manifest_digest = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("writing index.json");
    manifest_digest
}

/// A tar of the layout at `dir` (an uploadable image archive).
pub fn layout_tar(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .expect("archiving the layout");
    builder.into_inner().expect("finishing a tar in memory")
}
