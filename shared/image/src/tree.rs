//! The read-only rootfs of an image, built once per manifest digest.
//!
//! [`build`] applies the image's layers in a private temporary directory next to the
//! destination, adds the mount points a sandbox needs, and renames the result into place. A
//! refused or failed image removes its temporary directory, so nothing of it stays; a tree in
//! place is complete (the rename is the commit), so a later call finds it and returns at once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pathrs::Root;

use crate::layout::{BlobSource, Image};
use crate::unpack::{apply_layer, Limits, Usage};
use crate::ImageError;

/// Directories every image tree gets (if the image lacks them, or has something else there):
/// the mount points of a sandbox. `/tmp` is a tmpfs mounted over it, `/var/runtime` our
/// bootstrap.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("dev", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("var", 0o755),
    ("var/runtime", 0o755),
];

/// Prefix of the temporary directories [`build`] works in (and [`sweep`] removes).
const TMP_PREFIX: &str = ".tmp-";

/// What [`build`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Built {
    /// Whether the tree was already there.
    pub existed: bool,
    pub usage: Usage,
}

/// Builds the tree of `image` at `dest` from the blobs of `source`, unless it is there already.
pub fn build(
    source: &dyn BlobSource,
    image: &Image,
    dest: &Path,
    limits: &Limits,
) -> Result<Built, ImageError> {
    if dest.is_dir() {
        return Ok(Built {
            existed: true,
            usage: Usage::default(),
        });
    }
    let parent = dest.parent().ok_or_else(|| {
        ImageError::Invalid(format!("{} has no parent directory", dest.display()))
    })?;
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(parent)?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
    let usage = fill(source, image, tmp.path(), limits)?;
    let tmp = tmp.keep();
    match fs::rename(&tmp, dest) {
        Ok(()) => {}
        // Another builder got there first: theirs is the same tree.
        Err(_) if dest.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
    }
    Ok(Built {
        existed: false,
        usage,
    })
}

fn fill(
    source: &dyn BlobSource,
    image: &Image,
    dir: &Path,
    limits: &Limits,
) -> Result<Usage, ImageError> {
    let root = Root::open(dir).map_err(|e| ImageError::Unpack {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut usage = Usage::default();
    for layer in image.layers()? {
        let blob = source.open_blob(&layer.digest)?;
        apply_layer(&root, blob, &layer, limits, &mut usage)?;
    }
    for (rel, mode) in MOUNT_POINTS {
        let path = dir.join(rel);
        // A symlink or file where a mount point goes is replaced: the sandbox mounts there.
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if !meta.is_dir() {
                fs::remove_file(&path)?;
            }
        }
        if fs::symlink_metadata(&path).is_err() {
            fs::create_dir(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
        }
    }
    Ok(usage)
}

/// Removes what interrupted builds left in `dir` (their temporary directories).
pub fn sweep(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}
