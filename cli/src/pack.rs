//! Packing a function directory for upload: a tar.gz of its regular files (links refused,
//! hidden `.git`-style directories skipped), or a single file as is.

use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

/// The bytes to upload for `path`, and their `Content-Type`: a file as it is (a zip, tar,
/// tar.gz or a single executable; the gateway tells them apart), a directory as a tar.gz.
pub fn pack(path: &Path) -> Result<(Vec<u8>, &'static str)> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((bytes, "application/octet-stream"));
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    builder.follow_symlinks(false);
    add_dir(&mut builder, path, Path::new(""))?;
    let gz = builder.into_inner()?;
    Ok((gz.finish()?, "application/gzip"))
}

fn add_dir<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let rel_path = rel.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            add_dir(builder, root, &rel_path)?;
        } else if ft.is_file() {
            builder.append_path_with_name(root.join(&rel_path), &rel_path)?;
        } else {
            bail!(
                "{} is a link or special file; fnmesh only packs regular files",
                root.join(&rel_path).display()
            );
        }
    }
    Ok(())
}
