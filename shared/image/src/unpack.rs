//! Applying a layer to an image's tree, without trusting the layer.
//!
//! Every path is taken apart first: `..` anywhere refuses the image ([`ImageError::PathEscape`]);
//! a leading `/` or `./` is dropped. Then every create, remove and link goes through a
//! [`pathrs::Root`] of the tree, which resolves symlinks *inside* the tree, the way the
//! sandbox will see them: a layer that plants `evil -> /etc` and then writes `evil/passwd`
//! writes the tree's own `etc/passwd`, never the host's. Hard links are resolved the same way.
//!
//! What an entry may be: directory, regular file, symlink, hard link or FIFO. Character and
//! block devices refuse the image. Modes keep their permission and sticky bits; setuid and
//! setgid are dropped. Owners are kept (numeric), so an image's non-root user can read what it
//! owns. Whiteouts (`.wh.<name>`) remove `<name>` from the layers below; an opaque marker
//! (`.wh..wh..opq`) empties its directory of what the layers below put there.
//!
//! The compressed blob is checked against its digest and size, the uncompressed stream against
//! the image configuration's `diff_id`, and [`Limits`] caps the compressed bytes, the
//! uncompressed bytes and the number of entries, so a layer bomb stops at the cap. A layer that
//! fails any check leaves a half-built tree: callers build in a private temporary directory
//! and delete it on error ([`crate::tree`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};

use crate::digest::{read_error, Hashing};
use crate::{Digest, ImageError};

/// The caps on one image. Defaults: 1 GiB compressed, 4 GiB unpacked, 1,000,000 entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Compressed bytes of all layers together.
    pub max_compressed_bytes: u64,
    /// Uncompressed bytes of all layers together (tar headers included).
    pub max_unpacked_bytes: u64,
    /// Entries of all layers together.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 1 << 30,
            max_unpacked_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What an image's layers have used of its [`Limits`] so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub compressed_bytes: u64,
    pub unpacked_bytes: u64,
    pub entries: u64,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Layer media types we unpack.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

impl Compression {
    /// The compression of a layer of `media_type`; any other media type (zstd, foreign or
    /// non-distributable layers, anything unknown) is refused.
    pub fn of_layer(media_type: &str) -> Result<Self, ImageError> {
        match media_type {
            LAYER_TAR | DOCKER_LAYER_TAR => Ok(Self::None),
            LAYER_TAR_GZIP | DOCKER_LAYER_TAR_GZIP => Ok(Self::Gzip),
            other => Err(ImageError::UnsupportedMediaType(other.to_owned())),
        }
    }
}

/// One layer to apply: its blob's digest, size and media type, and its `diff_id`.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: Digest,
    pub size: Option<u64>,
    pub compression: Compression,
    pub diff_id: Digest,
}

/// Applies the layer read from `blob` to the tree `root`, counting into `usage`.
pub fn apply_layer(
    root: &Root,
    blob: impl Read,
    layer: &Layer,
    limits: &Limits,
    usage: &mut Usage,
) -> Result<(), ImageError> {
    let compressed_left = limits
        .max_compressed_bytes
        .saturating_sub(usage.compressed_bytes);
    let unpacked_left = limits
        .max_unpacked_bytes
        .saturating_sub(usage.unpacked_bytes);
    let mut compressed = Hashing::new(blob, compressed_left);
    {
        let decoded: Box<dyn Read + '_> = match layer.compression {
            Compression::None => Box::new(&mut compressed),
            Compression::Gzip => Box::new(GzDecoder::new(&mut compressed)),
        };
        let mut plain = Hashing::new(decoded, unpacked_left);
        let mut applier = Applier {
            root,
            created: HashSet::new(),
            entries_left: limits.max_entries.saturating_sub(usage.entries),
            entries: 0,
            write_left: unpacked_left,
        };
        {
            let mut archive = tar::Archive::new(&mut plain);
            for entry in archive.entries().map_err(read_error)? {
                let entry = entry.map_err(read_error)?;
                applier.apply(entry)?;
            }
        }
        usage.entries += applier.entries;
        usage.unpacked_bytes += plain.verify(&layer.diff_id, None)?;
    }
    usage.compressed_bytes += compressed.verify(&layer.digest, layer.size)?;
    Ok(())
}

/// Extracts an uploaded archive (a tar, gzipped or not) into `root` by the same rules as a
/// layer (no digests to check): used for image archives uploaded as a function's code.
pub fn extract_archive(
    root: &Root,
    archive: impl Read,
    limits: &Limits,
) -> Result<Usage, ImageError> {
    let mut buffered = std::io::BufReader::new(archive);
    let gzipped = std::io::BufRead::fill_buf(&mut buffered)
        .map_err(read_error)?
        .starts_with(&[0x1f, 0x8b]);
    let mut counted = Hashing::new(buffered, limits.max_compressed_bytes);
    let decoded: Box<dyn Read + '_> = if gzipped {
        Box::new(GzDecoder::new(&mut counted))
    } else {
        Box::new(&mut counted)
    };
    let mut plain = Hashing::new(decoded, limits.max_unpacked_bytes);
    let mut applier = Applier {
        root,
        created: HashSet::new(),
        entries_left: limits.max_entries,
        entries: 0,
        write_left: limits.max_unpacked_bytes,
    };
    {
        let mut archive = tar::Archive::new(&mut plain);
        for entry in archive.entries().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            applier.apply(entry)?;
        }
    }
    let entries = applier.entries;
    let (_, unpacked_bytes) = plain.finish().map_err(read_error)?;
    Ok(Usage {
        compressed_bytes: 0,
        unpacked_bytes,
        entries,
    })
}

/// The entry's path inside the tree: `None` for the root itself; `..` refuses the image.
pub fn clean_path(raw: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::PathEscape(raw.to_string_lossy().into_owned()))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Modes an image may set: permission and sticky bits, without setuid and setgid.
const MODE_MASK: u32 = 0o1777;

struct Applier<'r> {
    root: &'r Root,
    /// Paths this layer created (and their parents): an opaque marker spares them.
    created: HashSet<PathBuf>,
    entries_left: u64,
    entries: u64,
    /// File bytes this layer may still write (a sparse entry writes more than it reads).
    write_left: u64,
}

impl Applier<'_> {
    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let Some(path) = clean_path(&raw)? else {
            return Ok(()); // the layer's root directory: the tree's root is ours
        };
        self.entries += 1;
        if self.entries > self.entries_left {
            return Err(ImageError::TooLarge(
                "too many entries in its layers".to_owned(),
            ));
        }
        let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        if name == OPAQUE {
            return self.opaque(path.parent().unwrap_or(Path::new("")));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&path, hidden);
        }
        let header = entry.header();
        let mode = header.mode().map_err(bad_header(&path))? & MODE_MASK;
        let owner = (
            id(header.uid().map_err(bad_header(&path))?, &path)?,
            id(header.gid().map_err(bad_header(&path))?, &path)?,
        );
        let kind = header.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&path, mode, owner)?,
            T::Regular | T::Continuous | T::GNUSparse => {
                self.replace(&path)?;
                let file = self
                    .root
                    .create_file(
                        &path,
                        OpenFlags::O_WRONLY
                            | OpenFlags::O_CREAT
                            | OpenFlags::O_EXCL
                            | OpenFlags::O_CLOEXEC,
                        &Permissions::from_mode(0o600),
                    )
                    .map_err(at(&path))?;
                let mut out = &file;
                let written = io::copy(&mut (&mut entry).take(self.write_left + 1), &mut out)
                    .map_err(read_error)?;
                if written > self.write_left {
                    return Err(ImageError::TooLarge(format!(
                        "its files unpack to more than the cap at {path:?}"
                    )));
                }
                self.write_left -= written;
                finish(&file, mode, owner).map_err(io_at(&path))?;
            }
            T::Symlink => {
                let target = link_target(&entry, &path)?;
                self.replace(&path)?;
                self.root
                    .create(&path, &InodeType::Symlink(target))
                    .map_err(at(&path))?;
            }
            T::Link => {
                let target = link_target(&entry, &path)?;
                let target = clean_path(&target)?
                    .ok_or_else(|| ImageError::PathEscape(raw.to_string_lossy().into_owned()))?;
                self.replace(&path)?;
                self.root
                    .create(&path, &InodeType::Hardlink(target))
                    .map_err(at(&path))?;
            }
            T::Fifo => {
                self.replace(&path)?;
                self.root
                    .create(&path, &InodeType::Fifo(Permissions::from_mode(mode)))
                    .map_err(at(&path))?;
            }
            T::Char | T::Block => {
                return Err(ImageError::ForbiddenEntry {
                    path: path.to_string_lossy().into_owned(),
                    kind: if kind == T::Char {
                        "character device"
                    } else {
                        "block device"
                    },
                })
            }
            // Extension headers are consumed by `tar` itself; anything else is unknown.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                return Err(ImageError::Invalid(format!(
                    "layer entry {:?} has an unknown type {:?}",
                    path,
                    other.as_byte() as char
                )))
            }
        }
        self.mark_created(&path);
        Ok(())
    }

    /// Makes the directory `path` (replacing a non-directory there), with `mode` and `owner`.
    fn directory(&mut self, path: &Path, mode: u32, owner: (u32, u32)) -> Result<(), ImageError> {
        if let Some(meta) = self.existing(path)? {
            if !meta.is_dir() {
                self.root.remove_all(path).map_err(at(path))?;
            }
        }
        let handle = self
            .root
            .mkdir_all(path, &Permissions::from_mode(0o755))
            .map_err(at(path))?;
        let dir = handle
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(at(path))?;
        finish(&dir, mode, owner).map_err(io_at(path))
    }

    /// Clears the way for a non-directory at `path`: its parents exist (as directories),
    /// whatever was at `path` is gone.
    fn replace(&mut self, path: &Path) -> Result<(), ImageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root
                .mkdir_all(parent, &Permissions::from_mode(0o755))
                .map_err(at(parent))?;
        }
        if self.existing(path)?.is_some() {
            self.root.remove_all(path).map_err(at(path))?;
        }
        Ok(())
    }

    /// What is at `path` (not following a final symlink), if anything.
    fn existing(&self, path: &Path) -> Result<Option<std::fs::Metadata>, ImageError> {
        match self.root.resolve_nofollow(path) {
            Ok(handle) => {
                let file = File::from(std::os::fd::OwnedFd::from(handle));
                Ok(Some(file.metadata().map_err(io_at(path))?))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(at(path)(e)),
        }
    }

    /// `.wh.<hidden>` in `path`'s directory: removes `<hidden>` there.
    fn whiteout(&mut self, path: &Path, hidden: &[u8]) -> Result<(), ImageError> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(ImageError::Invalid(format!(
                "whiteout {path:?} names no entry"
            )));
        }
        let target = path.with_file_name(OsStr::from_bytes(hidden));
        match self.root.remove_all(&target) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(at(&target)(e)),
        }
    }

    /// The opaque marker of `dir`: removes what the layers below put in it.
    fn opaque(&mut self, dir: &Path) -> Result<(), ImageError> {
        let handle = self
            .root
            .mkdir_all(dir, &Permissions::from_mode(0o755))
            .map_err(at(dir))?;
        let fd = handle
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(at(dir))?;
        let listing =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&fd).to_string());
        let mut doomed = Vec::new();
        for child in std::fs::read_dir(&listing).map_err(io_at(dir))? {
            let child = dir.join(child.map_err(io_at(dir))?.file_name());
            if !self.created.contains(&child) {
                doomed.push(child);
            }
        }
        for child in doomed {
            self.root.remove_all(&child).map_err(at(&child))?;
        }
        self.mark_created(dir);
        Ok(())
    }

    fn mark_created(&mut self, path: &Path) {
        let mut at = Some(path);
        while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
            if !self.created.insert(p.to_path_buf()) {
                break;
            }
            at = p.parent();
        }
    }
}

/// Sets the mode (chmod after create: the umask does not apply) and owner of a new inode.
fn finish(file: &File, mode: u32, (uid, gid): (u32, u32)) -> io::Result<()> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    file.set_permissions(Permissions::from_mode(mode))
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, path: &Path) -> Result<PathBuf, ImageError> {
    match entry.link_name_bytes() {
        Some(target) if !target.is_empty() => Ok(PathBuf::from(OsStr::from_bytes(&target))),
        _ => Err(ImageError::Invalid(format!("link {path:?} has no target"))),
    }
}

fn id(raw: u64, path: &Path) -> Result<u32, ImageError> {
    u32::try_from(raw)
        .map_err(|_| ImageError::Invalid(format!("entry {path:?} has an owner id out of range")))
}

fn bad_header(path: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |e| ImageError::Invalid(format!("entry {path:?} has a malformed header: {e}"))
}

fn is_not_found(e: &pathrs::error::Error) -> bool {
    e.kind() == pathrs::error::ErrorKind::OsError(Some(libc::ENOENT))
}

fn at(path: &Path) -> impl Fn(pathrs::error::Error) -> ImageError + '_ {
    move |e| ImageError::Unpack {
        path: path.to_path_buf(),
        source: match e.kind() {
            pathrs::error::ErrorKind::OsError(Some(errno)) => io::Error::from_raw_os_error(errno),
            _ => io::Error::other(e.to_string()),
        },
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |source| ImageError::Unpack {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_and_escapes_refused() -> Result<(), ImageError> {
        assert_eq!(clean_path(Path::new("./a/b"))?, Some(PathBuf::from("a/b")));
        assert_eq!(clean_path(Path::new("/a//b/"))?, Some(PathBuf::from("a/b")));
        assert_eq!(clean_path(Path::new("./"))?, None);
        assert!(matches!(
            clean_path(Path::new("a/../../etc/passwd")),
            Err(ImageError::PathEscape(_))
        ));
        assert!(matches!(
            clean_path(Path::new("..")),
            Err(ImageError::PathEscape(_))
        ));
        Ok(())
    }

    #[test]
    fn media_types_are_checked() {
        assert_eq!(
            Compression::of_layer(LAYER_TAR_GZIP).ok(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_layer(DOCKER_LAYER_TAR).ok(),
            Some(Compression::None)
        );
        assert!(matches!(
            Compression::of_layer("application/vnd.oci.image.layer.v1.tar+zstd"),
            Err(ImageError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            Compression::of_layer("application/octet-stream"),
            Err(ImageError::UnsupportedMediaType(_))
        ));
    }
}
