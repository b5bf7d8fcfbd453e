//! Writes small single-layer images as OCI image layouts: what the test suites and
//! `fnmesh bench image` push to a registry or upload, and a way to package a static binary as
//! an image function without a container engine.
//!
//! [`busybox`] gives the entries of a minimal image from the host's static busybox
//! (`busybox-static` on Debian): the binary, its applets as symlinks, `/etc/passwd` and
//! `/etc/group` with `root` and `app` (1000).

use std::io::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::layout::OCI_MANIFEST;
use crate::unpack::LAYER_TAR_GZIP;
use crate::{Digest, ImageError};

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    /// A regular file.
    pub fn file(path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        Entry::File {
            path: path.to_owned(),
            mode,
            contents: contents.into(),
        }
    }

    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// The host's static busybox (`/bin/busybox`) with `applets` linked in `/bin`, the usual
/// directories and an `/etc/passwd` naming `root` and `app` (uid 1000).
pub fn busybox(applets: &[&str]) -> Result<Vec<Entry>, ImageError> {
    let binary = std::fs::read("/bin/busybox").map_err(|e| {
        ImageError::Invalid(format!(
            "/bin/busybox: {e} (install it with `apt-get install busybox-static`)"
        ))
    })?;
    let mut entries: Vec<Entry> = ["bin", "etc", "srv"]
        .iter()
        .map(|dir| Entry::Dir {
            path: (*dir).to_owned(),
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::Dir {
        path: "tmp".to_owned(),
        mode: 0o1777,
    });
    entries.push(Entry::file("bin/busybox", 0o755, binary));
    for applet in applets {
        entries.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".to_owned(),
        });
    }
    entries.push(Entry::file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n",
    ));
    entries.push(Entry::file("etc/group", 0o644, "root:x:0:\napp:x:1000:\n"));
    Ok(entries)
}

/// The entries as a tar (parent directories of files added where missing).
fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| matches!(e, Entry::Dir { .. }))
        .map(|e| e.path().to_owned())
        .collect();
    for entry in entries {
        let parents: Vec<&str> = entry.path().split('/').collect();
        for depth in 1..parents.len() {
            let parent = parents[..depth].join("/");
            if dirs.insert(parent.clone()) {
                append(
                    &mut builder,
                    &parent,
                    tar::EntryType::Directory,
                    0o755,
                    b"",
                    None,
                )?;
            }
        }
        match entry {
            Entry::Dir { path, mode } => {
                append(
                    &mut builder,
                    path,
                    tar::EntryType::Directory,
                    *mode,
                    b"",
                    None,
                )?;
            }
            Entry::File {
                path,
                mode,
                contents,
            } => append(
                &mut builder,
                path,
                tar::EntryType::Regular,
                *mode,
                contents,
                None,
            )?,
            Entry::Symlink { path, target } => append(
                &mut builder,
                path,
                tar::EntryType::Symlink,
                0o777,
                b"",
                Some(target),
            )?,
        }
    }
    Ok(builder.into_inner()?)
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) -> Result<(), ImageError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    if let Some(link) = link {
        header.set_link_name(link)?;
    }
    builder.append_data(&mut header, path, data)?;
    Ok(())
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Result<Digest, ImageError> {
    let digest = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(digest.hex()), bytes)?;
    Ok(digest)
}

/// Writes an OCI image layout at `dir` holding one image named `tag`: one gzip layer of
/// `entries`, configured by `config` (the configuration's `config` object: `Entrypoint`,
/// `Cmd`, `Env`, `WorkingDir`, `User`). Returns the manifest's digest.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    entries: &[Entry],
    config: Value,
) -> Result<Digest, ImageError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let layer = layer_tar(entries)?;
    let diff_id = Digest::of(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer)?;
    let layer = gz.finish()?;
    let configuration = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .map_err(|e| ImageError::Invalid(format!("image configuration: {e}")))?;
    let config_digest = put_blob(dir, &configuration)?;
    let layer_digest = put_blob(dir, &layer)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": configuration.len(),
        },
        "layers": [{
            "mediaType": LAYER_TAR_GZIP,
            "digest": layer_digest.to_string(),
            "size": layer.len(),
        }],
    }))
    .map_err(|e| ImageError::Invalid(format!("image manifest: {e}")))?;
    let manifest_digest = put_blob(dir, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {crate::layout::REF_NAME: tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(manifest_digest)
}

/// A tar of the layout at `dir` (an uploadable image archive).
pub fn layout_tar(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    Ok(builder.into_inner()?)
}
