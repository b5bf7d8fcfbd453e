//! Test images written by hand: tar layers (hostile ones included, with raw header names) in
//! an OCI image layout.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

pub use fnmesh_tests::servers::registry;

use std::io::Write;
use std::path::Path;

use fnmesh_image::Digest;
use serde_json::json;

/// One layer entry.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
}

/// A tar archive of `entries`; names are written as given (no checks, `..` included).
pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, kind, mode, data, link): (&str, tar::EntryType, u32, &[u8], Option<&str>) =
            match entry {
                Entry::Dir(n, m) => (n, tar::EntryType::Directory, *m, b"", None),
                Entry::File(n, m, d) => (n, tar::EntryType::Regular, *m, d, None),
                Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, b"", Some(t)),
                Entry::Hardlink(n, t) => (n, tar::EntryType::Link, 0o644, b"", Some(t)),
                Entry::CharDevice(n) => (n, tar::EntryType::Char, 0o666, b"", None),
            };
        raw_name(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            raw_name(&mut header.as_old_mut().linkname, link);
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(data.len() as u64);
        if let Entry::CharDevice(_) = entry {
            header.set_device_major(1).ok();
            header.set_device_minor(3).ok();
        }
        header.set_cksum();
        builder
            .append(&header, data)
            .expect("appending to a tar in memory");
    }
    builder.into_inner().expect("finishing a tar in memory")
}

fn raw_name(field: &mut [u8; 100], name: &str) {
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// A layer blob: its bytes, media type and the digest of its uncompressed tar.
pub struct LayerBlob {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub diff_id: Digest,
}

pub fn gzip_layer(entries: &[Entry<'_>]) -> LayerBlob {
    let tar = tar_of(entries);
    LayerBlob {
        diff_id: Digest::of(&tar),
        bytes: gzip(&tar),
        media_type: fnmesh_image::unpack::LAYER_TAR_GZIP.to_owned(),
    }
}

pub fn plain_layer(entries: &[Entry<'_>]) -> LayerBlob {
    let tar = tar_of(entries);
    LayerBlob {
        diff_id: Digest::of(&tar),
        bytes: tar,
        media_type: fnmesh_image::unpack::LAYER_TAR.to_owned(),
    }
}

pub fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("creating the blobs dir");
    std::fs::write(blobs.join(digest.hex()), bytes).expect("writing a blob");
    digest
}

/// Writes an OCI layout at `dir` with one image named `tag`; returns its manifest digest.
pub fn write_layout(dir: &Path, tag: &str, layers: &[LayerBlob], env: &[&str]) -> Digest {
    std::fs::create_dir_all(dir).expect("creating the layout dir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "Entrypoint": ["/bin/handler"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    }))
    .expect("config JSON");
    let config_digest = put_blob(dir, &config);
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| {
            json!({"mediaType": l.media_type, "digest": put_blob(dir, &l.bytes).to_string(), "size": l.bytes.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": layer_descriptors,
    }))
    .expect("manifest JSON");
    let manifest_digest = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("writing index.json");
    manifest_digest
}
