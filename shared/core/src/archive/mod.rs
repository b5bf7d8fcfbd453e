//! Function code archives: safe unpacking and deterministic re-packing.
//!
//! Code arrives as a zip, a tar.gz, a plain tar or a single file (told apart by magic bytes).
//! [`normalize`] unpacks it into a fresh staging directory — refusing absolute paths, `..`,
//! links, devices and fifos, and enforcing [`ArchiveLimits`] on the bytes actually inflated, never
//! on declared sizes — then re-packs it as a deterministic tar: sorted paths, zero mtimes,
//! uid/gid 0, modes 0644/0755 only, no links. That tar, gzip-compressed ([`Packing::TarGz`]),
//! is what the code store keeps of function code and what nodes [`unpack`] (with the same
//! checks) before running a function. [`normalize_reader`] reads the upload from a file, so a
//! large upload spooled to disk is never held in memory; only the compressed result is.
//!
//! Files are only ever written at paths built from validated components under the staging root,
//! with `create_new`, and no symlink is ever created, so nothing can be written outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Default cap on the total unpacked size of an archive (250 MiB, as Lambda's).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 250 * 1024 * 1024;
/// Default cap on the number of entries of an archive.
pub const DEFAULT_MAX_ENTRIES: u32 = 10_000;
/// Longest accepted entry path, in bytes.
const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes.
const MAX_COMPONENT_BYTES: usize = 255;
/// Tar stream bytes allowed per entry beyond file contents (headers, padding, long names).
const TAR_OVERHEAD_PER_ENTRY: u64 = 8 * 1024;

const MODE_FILE: u32 = 0o644;
const MODE_EXEC: u32 = 0o755;
const MODE_DIR: u32 = 0o755;

/// Limits enforced while unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveLimits {
    /// Total bytes of file contents after unpacking.
    pub max_unpacked_bytes: u64,
    /// Entries (files and directories) in the archive.
    pub max_entries: u32,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a readable zip/tar/tar.gz (corrupt, truncated, encrypted, duplicate entries…).
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// The unpacked contents exceed `max_unpacked_bytes`.
    #[error("archive is too large when unpacked")]
    TooLarge,
    /// The archive has more than `max_entries` entries.
    #[error("archive has too many entries")]
    TooManyEntries,
    /// An entry path that is absolute, contains `..` or is otherwise unusable.
    #[error("archive entry {0:?} has an unsafe path")]
    UnsafePath(String),
    /// A symlink or hardlink entry.
    #[error("archive entry {0:?} is a link; links are not allowed")]
    LinkEntry(String),
    /// A device, fifo, socket or other non-regular entry.
    #[error("archive entry {0:?} is not a regular file or directory")]
    SpecialEntry(String),
    /// The handler's file is not a regular file of the archive.
    #[error("handler file {0:?} is missing from the code")]
    MissingHandler(String),
    /// Writing the staging or destination directory failed.
    #[error("unpacking code: {0}")]
    Io(#[from] io::Error),
}

/// Unpacks `source` safely into a fresh staging dir and re-packs it as a deterministic tar
/// (sorted paths, zero mtimes, uid/gid 0, modes 0644/0755 only, no links). A single file (not
/// zip/gzip/tar by magic bytes) is stored under `handler_file` with mode 0755. Checks that
/// `handler_file` exists as a regular file in the result (else `MissingHandler`).
pub fn normalize(
    source: &[u8],
    handler_file: &str,
    limits: &ArchiveLimits,
) -> Result<Vec<u8>, ArchiveError> {
    normalize_in(source, handler_file, limits, &std::env::temp_dir())
}

/// [`normalize`] with the staging directory created under `staging_parent`.
pub fn normalize_in(
    source: &[u8],
    handler_file: &str,
    limits: &ArchiveLimits,
    staging_parent: &Path,
) -> Result<Vec<u8>, ArchiveError> {
    normalize_reader(
        Cursor::new(source),
        handler_file,
        limits,
        staging_parent,
        Packing::Tar,
    )
}

/// How a normalized tree is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// A plain deterministic tar.
    Tar,
    /// The same tar, gzip-compressed (deterministic: no name, zero mtime, one level): what
    /// the code store keeps of function code, so an archive that unpacks to hundreds of MiB
    /// is stored and moved compressed. [`unpack`] and [`contains_file`] read both.
    TarGz,
}

/// [`normalize_in`] reading the upload from `source` (a file, or bytes in a `Cursor`), so an
/// upload spooled to disk is never read into memory whole; the result is packed as `packing`
/// says. Only the packed result is held in memory.
pub fn normalize_reader<R: Read + Seek>(
    source: R,
    handler_file: &str,
    limits: &ArchiveLimits,
    staging_parent: &Path,
    packing: Packing,
) -> Result<Vec<u8>, ArchiveError> {
    normalize_to(
        source,
        handler_file,
        limits,
        staging_parent,
        packing,
        Vec::new(),
    )
}

/// [`normalize_reader`] writing the packed result to `out` (a file, so nothing of the code is
/// held in memory whole); returns `out`.
pub fn normalize_to<R: Read + Seek, W: Write>(
    mut source: R,
    handler_file: &str,
    limits: &ArchiveLimits,
    staging_parent: &Path,
    packing: Packing,
    out: W,
) -> Result<W, ArchiveError> {
    let handler_components = validate_path(handler_file)?;
    if handler_components.is_empty() {
        return Err(ArchiveError::MissingHandler(handler_file.to_owned()));
    }
    let staging = tempfile::Builder::new()
        .prefix("fnmesh-code-")
        .tempdir_in(staging_parent)?;
    let mut tree = Tree::new(staging.path(), limits);
    let mut head = Vec::with_capacity(512);
    (&mut source).take(512).read_to_end(&mut head)?;
    source.seek(SeekFrom::Start(0))?;
    match detect(&head) {
        Format::Zip => unpack_zip(source, &mut tree)?,
        Format::Gzip => unpack_tar(
            flate2::read::GzDecoder::new(io::BufReader::new(source)),
            &mut tree,
        )?,
        Format::Tar => unpack_tar(io::BufReader::new(source), &mut tree)?,
        Format::Single => {
            tree.count_entry()?;
            tree.write_file(&handler_components, &mut source, true, handler_file)?;
        }
    }
    let handler_path = tree.path_of(&handler_components);
    match fs::symlink_metadata(&handler_path) {
        Ok(meta) if meta.file_type().is_file() => {}
        _ => return Err(ArchiveError::MissingHandler(handler_file.to_owned())),
    }
    let packed = match packing {
        Packing::Tar => pack(staging.path(), out)?,
        Packing::TarGz => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::default());
            pack(staging.path(), gz)?.finish()?
        }
    };
    staging.close()?;
    Ok(packed)
}

/// Unpacks a normalized tar (plain or gzip-compressed, [`Packing`]) into `dest` (creating it),
/// with the same checks as [`normalize`]. `dest` should be new or empty: an entry whose path
/// already exists there is refused as a duplicate, never overwritten.
pub fn unpack(tar: &[u8], dest: &Path, limits: &ArchiveLimits) -> Result<(), ArchiveError> {
    unpack_reader(tar, dest, limits)
}

/// [`unpack`] reading the stored form from `source` (a file), a piece at a time.
pub fn unpack_reader<R: Read>(
    source: R,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<(), ArchiveError> {
    fs::create_dir_all(dest)?;
    let mut tree = Tree::new(dest, limits);
    let mut source = io::BufReader::new(source);
    if is_gzip(io::BufRead::fill_buf(&mut source)?) {
        unpack_tar(flate2::read::GzDecoder::new(source), &mut tree)
    } else {
        unpack_tar(source, &mut tree)
    }
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Whether `path` is a regular file of a normalized tar (plain or gzip-compressed), e.g. to
/// check that a new handler exists in code that is kept across an update.
pub fn contains_file(tar: &[u8], path: &str) -> Result<bool, ArchiveError> {
    contains_file_reader(tar, path)
}

/// [`contains_file`] reading the stored form from `source` (a file).
pub fn contains_file_reader<R: Read>(source: R, path: &str) -> Result<bool, ArchiveError> {
    let mut source = io::BufReader::new(source);
    if is_gzip(io::BufRead::fill_buf(&mut source)?) {
        contains_file_in(flate2::read::GzDecoder::new(source), path)
    } else {
        contains_file_in(source, path)
    }
}

fn contains_file_in<R: Read>(tar: R, path: &str) -> Result<bool, ArchiveError> {
    let wanted = validate_path(path)?.join("/");
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let Ok(name) = std::str::from_utf8(&entry.path_bytes()).map(str::to_owned) else {
            continue;
        };
        if validate_path(&name).is_ok_and(|c| c.join("/") == wanted) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    Gzip,
    Tar,
    Single,
}

fn detect(source: &[u8]) -> Format {
    if source.starts_with(b"PK\x03\x04") || source.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if source.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if looks_like_tar(source) {
        Format::Tar
    } else {
        Format::Single
    }
}

/// A tar starts with a 512-byte header carrying `ustar` at 257 or, for old v7 tars, a valid
/// header checksum.
fn looks_like_tar(source: &[u8]) -> bool {
    let Some(header) = source.get(..512) else {
        return false;
    };
    if &header[257..262] == b"ustar" {
        return true;
    }
    let field = &header[148..156];
    let digits: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| char::from(*b))
        .collect();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    !digits.is_empty() && stored == sum
}

/// Splits an entry name into safe components (`.` and empty ones dropped). Refuses absolute
/// paths, `..`, backslashes, NUL, drive prefixes and over-long names.
fn validate_path(name: &str) -> Result<Vec<String>, ArchiveError> {
    let unsafe_path = || ArchiveError::UnsafePath(name.chars().take(200).collect());
    if name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.len() > MAX_PATH_BYTES
    {
        return Err(unsafe_path());
    }
    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => continue,
            ".." => return Err(unsafe_path()),
            c if c.len() > MAX_COMPONENT_BYTES || c.contains(':') && components.is_empty() => {
                return Err(unsafe_path())
            }
            c => components.push(c.to_owned()),
        }
    }
    Ok(components)
}

/// Tracks what has been unpacked under one root and writes only below it.
struct Tree<'a> {
    root: &'a Path,
    limits: &'a ArchiveLimits,
    entries: u32,
    bytes: u64,
}

impl<'a> Tree<'a> {
    fn new(root: &'a Path, limits: &'a ArchiveLimits) -> Self {
        Self {
            root,
            limits,
            entries: 0,
            bytes: 0,
        }
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries);
        }
        Ok(())
    }

    fn path_of(&self, components: &[String]) -> PathBuf {
        let mut path = self.root.to_path_buf();
        path.extend(components);
        path
    }

    /// Creates every directory of `components` that does not exist yet, refusing anything
    /// on the way that is not a real directory.
    fn ensure_dirs(&self, components: &[String], name: &str) -> Result<(), ArchiveError> {
        let mut path = self.root.to_path_buf();
        for component in components {
            path.push(component);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::InvalidArchive(format!(
                        "entry {:?} conflicts with a file of the same path",
                        name.chars().take(200).collect::<String>()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(MODE_DIR))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn make_dir(&mut self, components: &[String], name: &str) -> Result<(), ArchiveError> {
        self.ensure_dirs(components, name)
    }

    /// Writes one regular file, counting the bytes actually read against the limit.
    fn write_file(
        &mut self,
        components: &[String],
        reader: &mut dyn Read,
        executable: bool,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let Some((_, parents)) = components.split_last() else {
            return Err(ArchiveError::UnsafePath(name.chars().take(200).collect()));
        };
        self.ensure_dirs(parents, name)?;
        let path = self.path_of(components);
        let mode = if executable { MODE_EXEC } else { MODE_FILE };
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ArchiveError::InvalidArchive(format!(
                    "duplicate entry {:?}",
                    name.chars().take(200).collect::<String>()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let remaining = self.limits.max_unpacked_bytes.saturating_sub(self.bytes);
        let mut limited = reader.take(remaining.saturating_add(1));
        let mut buf = vec![0u8; 64 * 1024];
        let mut written: u64 = 0;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            written += n as u64;
            if written > remaining {
                return Err(ArchiveError::TooLarge);
            }
            file.write_all(&buf[..n])?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        self.bytes += written;
        Ok(())
    }
}

/// An error reading the source: the archive is unreadable (or, for tar streams, over its
/// stream cap, which [`unpack_tar`] tells apart).
fn read_error(e: io::Error) -> ArchiveError {
    ArchiveError::InvalidArchive(e.to_string())
}

fn unpack_zip<R: Read + Seek>(source: R, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive =
        zip::ZipArchive::new(source).map_err(|e| ArchiveError::InvalidArchive(e.to_string()))?;
    if archive.len() > tree.limits.max_entries as usize {
        return Err(ArchiveError::TooManyEntries);
    }
    for index in 0..archive.len() {
        tree.count_entry()?;
        let mut entry = archive
            .by_index(index)
            .map_err(|e| ArchiveError::InvalidArchive(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| ArchiveError::InvalidArchive(e.to_string()))?
            .into_owned();
        if entry.encrypted() {
            return Err(ArchiveError::InvalidArchive(format!(
                "entry {:?} is encrypted",
                name.chars().take(200).collect::<String>()
            )));
        }
        let mode = entry.unix_mode();
        match mode.map(|m| m & 0o170_000) {
            Some(0o120_000) => return Err(ArchiveError::LinkEntry(name)),
            Some(0o020_000 | 0o060_000 | 0o010_000 | 0o140_000) => {
                return Err(ArchiveError::SpecialEntry(name))
            }
            _ => {}
        }
        if entry.is_symlink() {
            return Err(ArchiveError::LinkEntry(name));
        }
        let components = validate_path(&name)?;
        if entry.is_dir() || mode.is_some_and(|m| m & 0o170_000 == 0o040_000) {
            tree.make_dir(&components, &name)?;
        } else {
            let executable = mode.is_some_and(|m| m & 0o111 != 0);
            tree.write_file(&components, &mut entry, executable, &name)?;
        }
    }
    Ok(())
}

const STREAM_LIMIT_MESSAGE: &str = "fnmesh: archive stream exceeds its limit";

/// Caps the bytes read from a (possibly inflating) stream, remembering when the cap was hit.
struct StreamLimit<R> {
    inner: R,
    remaining: u64,
    hit: Arc<AtomicBool>,
}

impl<R: Read> Read for StreamLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            self.hit.store(true, Ordering::Relaxed);
            return Err(io::Error::other(STREAM_LIMIT_MESSAGE));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn unpack_tar<R: Read>(source: R, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let hit = Arc::new(AtomicBool::new(false));
    let stream_cap = tree.limits.max_unpacked_bytes.saturating_add(
        (u64::from(tree.limits.max_entries) + 4).saturating_mul(TAR_OVERHEAD_PER_ENTRY),
    );
    let limited = StreamLimit {
        inner: source,
        remaining: stream_cap,
        hit: hit.clone(),
    };
    let result = unpack_tar_entries(limited, tree);
    match result {
        Err(ArchiveError::InvalidArchive(_)) if hit.load(Ordering::Relaxed) => {
            Err(ArchiveError::TooLarge)
        }
        other => other,
    }
}

fn unpack_tar_entries<R: Read>(source: R, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(source);
    let entries = archive.entries().map_err(read_error)?;
    for entry in entries {
        let mut entry = entry.map_err(read_error)?;
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            // `git archive` writes one (a commit id comment); it carries no file.
            continue;
        }
        tree.count_entry()?;
        let name = match std::str::from_utf8(&entry.path_bytes()) {
            Ok(name) => name.to_owned(),
            Err(_) => {
                return Err(ArchiveError::UnsafePath(
                    String::from_utf8_lossy(&entry.path_bytes())
                        .chars()
                        .take(200)
                        .collect(),
                ))
            }
        };
        if entry_type.is_symlink() || entry_type.is_hard_link() {
            return Err(ArchiveError::LinkEntry(name));
        }
        let components = validate_path(&name)?;
        if entry_type.is_dir() {
            tree.make_dir(&components, &name)?;
        } else if entry_type.is_file() || entry_type.is_contiguous() {
            let executable = entry.header().mode().map_err(read_error)? & 0o111 != 0;
            tree.write_file(&components, &mut entry, executable, &name)?;
        } else {
            return Err(ArchiveError::SpecialEntry(name));
        }
    }
    Ok(())
}

/// Packs everything under `root` as a deterministic tar.
/// Packs the tree at `root` as a deterministic tar into `out`; returns `out`.
fn pack<W: Write>(root: &Path, out: W) -> Result<W, ArchiveError> {
    let mut items = Vec::new();
    collect(root, "", &mut items)?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut builder = tar::Builder::new(out);
    for (rel, kind) in items {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(MODE_DIR);
                header.set_size(0);
                builder.append_data(&mut header, format!("{rel}/"), io::empty())?;
            }
            Kind::File { executable } => {
                let path = root.join(&rel);
                let file = File::open(&path)?;
                let size = file.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if executable { MODE_EXEC } else { MODE_FILE });
                header.set_size(size);
                builder.append_data(&mut header, &rel, file.take(size))?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

enum Kind {
    Dir,
    File { executable: bool },
}

fn collect(root: &Path, prefix: &str, out: &mut Vec<(String, Kind)>) -> Result<(), ArchiveError> {
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|n| {
            ArchiveError::UnsafePath(n.to_string_lossy().chars().take(200).collect())
        })?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect(root, &rel, out)?;
            out.push((rel, Kind::Dir));
        } else if file_type.is_file() {
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            out.push((rel, Kind::File { executable }));
        } else {
            return Err(ArchiveError::SpecialEntry(rel));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
