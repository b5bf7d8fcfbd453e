//! Function code archives: safe unpacking and deterministic re-packing.
//!
//! Code arrives as a zip, a tar.gz, a plain tar or a single file (told apart by magic bytes).
//! [`normalize`] unpacks it into a fresh staging directory — refusing absolute paths, `..`,
//! links, devices and fifos, and enforcing [`ArchiveLimits`] on the bytes actually inflated, never
//! on declared sizes — then re-packs it as a deterministic tar: sorted paths, zero mtimes,
//! uid/gid 0, modes 0644/0755 only, no links. That tar is what the code store keeps and what
//! nodes [`unpack`] (with the same checks) before running a function.
//!
//! Files are only ever written at paths built from validated components under the staging root,
//! with `create_new`, and no symlink is ever created, so nothing can be written outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Default cap on the total unpacked size of an archive (50 MiB).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 50 * 1024 * 1024;
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
    let handler_components = validate_path(handler_file)?;
    if handler_components.is_empty() {
        return Err(ArchiveError::MissingHandler(handler_file.to_owned()));
    }
    let staging = tempfile::Builder::new()
        .prefix("fnmesh-code-")
        .tempdir_in(staging_parent)?;
    let mut tree = Tree::new(staging.path(), limits);
    match detect(source) {
        Format::Zip => unpack_zip(source, &mut tree)?,
        Format::Gzip => unpack_tar(flate2::read::GzDecoder::new(source), &mut tree)?,
        Format::Tar => unpack_tar(source, &mut tree)?,
        Format::Single => {
            tree.count_entry()?;
            tree.write_file(&handler_components, &mut &source[..], true, handler_file)?;
        }
    }
    let handler_path = tree.path_of(&handler_components);
    match fs::symlink_metadata(&handler_path) {
        Ok(meta) if meta.file_type().is_file() => {}
        _ => return Err(ArchiveError::MissingHandler(handler_file.to_owned())),
    }
    let tar = pack(staging.path())?;
    staging.close()?;
    Ok(tar)
}

/// Unpacks a normalized tar into `dest` (creating it), with the same checks as [`normalize`].
/// `dest` should be new or empty: an entry whose path already exists there is refused as a
/// duplicate, never overwritten.
pub fn unpack(tar: &[u8], dest: &Path, limits: &ArchiveLimits) -> Result<(), ArchiveError> {
    fs::create_dir_all(dest)?;
    let mut tree = Tree::new(dest, limits);
    unpack_tar(tar, &mut tree)
}

/// Whether `path` is a regular file of a (normalized) tar, e.g. to check that a new handler
/// exists in code that is kept across an update.
pub fn contains_file(tar: &[u8], path: &str) -> Result<bool, ArchiveError> {
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

fn unpack_zip(source: &[u8], tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(source))
        .map_err(|e| ArchiveError::InvalidArchive(e.to_string()))?;
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
fn pack(root: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut items = Vec::new();
    collect(root, "", &mut items)?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut builder = tar::Builder::new(Vec::new());
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
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn limits() -> ArchiveLimits {
        ArchiveLimits::default()
    }

    /// A sandbox: `outer/staging-parent` is where staging dirs go; after each call `outer` must
    /// hold nothing else, proving nothing escaped.
    struct Sandbox {
        outer: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            let outer = tempfile::tempdir().unwrap();
            fs::create_dir(outer.path().join("p")).unwrap();
            Self { outer }
        }
        fn parent(&self) -> PathBuf {
            self.outer.path().join("p")
        }
        fn normalize(&self, source: &[u8], handler: &str) -> Result<Vec<u8>, ArchiveError> {
            normalize_in(source, handler, &limits(), &self.parent())
        }
        fn assert_untouched(&self) {
            let outer: Vec<_> = fs::read_dir(self.outer.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(outer, vec![std::ffi::OsString::from("p")]);
            let inner: Vec<_> = fs::read_dir(self.parent()).unwrap().collect();
            assert!(inner.is_empty(), "staging dir left behind: {inner:?}");
        }
    }

    fn zip_of(entries: &[(&str, &[u8], Option<u32>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            let mut opts = SimpleFileOptions::default();
            if let Some(m) = mode {
                opts = opts.unix_permissions(*m);
            }
            if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// A tar whose headers are written raw, so hostile names and types survive.
    fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            {
                let gnu = header.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn listing(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8(e.path_bytes().to_vec()).unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap() + h.gid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn zip_round_trip_with_dirs_and_modes() {
        let sb = Sandbox::new();
        let zip = zip_of(&[
            ("src/", b"", None),
            ("src/lib/util.py", b"x = 1\n", Some(0o644)),
            ("main.py", b"def handle(e, c):\n    return e\n", Some(0o600)),
            ("bin/run", b"#!/bin/sh\n", Some(0o700)),
        ]);
        let tar = sb.normalize(&zip, "main.py").unwrap();
        sb.assert_untouched();
        assert_eq!(
            listing(&tar),
            vec![
                ("bin/".to_owned(), 0o755, 0, 0),
                ("bin/run".to_owned(), 0o755, 0, 0),
                ("main.py".to_owned(), 0o644, 0, 0),
                ("src/".to_owned(), 0o755, 0, 0),
                ("src/lib/".to_owned(), 0o755, 0, 0),
                ("src/lib/util.py".to_owned(), 0o644, 0, 0),
            ]
        );
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("code");
        unpack(&tar, &out, &limits()).unwrap();
        assert_eq!(
            fs::read(out.join("main.py")).unwrap(),
            b"def handle(e, c):\n    return e\n"
        );
        let mode = fs::metadata(out.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(fs::read(out.join("src/lib/util.py")).unwrap(), b"x = 1\n");
    }

    #[test]
    fn normalize_is_deterministic_and_idempotent() {
        let sb = Sandbox::new();
        let zip = zip_of(&[("b.py", b"b", None), ("a/main.py", b"a", None)]);
        let first = sb.normalize(&zip, "a/main.py").unwrap();
        let second = sb.normalize(&zip, "a/main.py").unwrap();
        assert_eq!(first, second);
        // The same content as a tar.gz, or re-normalized, gives the same bytes.
        assert_eq!(sb.normalize(&gzip(&first), "a/main.py").unwrap(), first);
        assert_eq!(sb.normalize(&first, "a/main.py").unwrap(), first);
        sb.assert_untouched();
    }

    #[test]
    fn single_file_is_stored_as_the_executable_handler() {
        let sb = Sandbox::new();
        let tar = sb.normalize(b"#!/bin/sh\necho hi\n", "bin/run").unwrap();
        assert_eq!(
            listing(&tar),
            vec![
                ("bin/".to_owned(), 0o755, 0, 0),
                ("bin/run".to_owned(), 0o755, 0, 0)
            ]
        );
        sb.assert_untouched();
    }

    #[test]
    fn plain_tar_and_tar_gz_are_accepted() {
        let sb = Sandbox::new();
        let tar = raw_tar(&[
            ("main.py", tar::EntryType::Regular, b"print(1)", ""),
            ("pkg/", tar::EntryType::Directory, b"", ""),
        ]);
        let a = sb.normalize(&tar, "main.py").unwrap();
        let b = sb.normalize(&gzip(&tar), "main.py").unwrap();
        assert_eq!(a, b);
        sb.assert_untouched();
    }

    #[test]
    fn contains_file_finds_regular_files_only() {
        let sb = Sandbox::new();
        let zip = zip_of(&[("main.py", b"x", None), ("pkg/mod.py", b"y", None)]);
        let tar = sb.normalize(&zip, "main.py").unwrap();
        assert!(contains_file(&tar, "main.py").unwrap());
        assert!(contains_file(&tar, "pkg/mod.py").unwrap());
        assert!(contains_file(&tar, "./pkg/mod.py").unwrap());
        assert!(!contains_file(&tar, "pkg").unwrap());
        assert!(!contains_file(&tar, "other.py").unwrap());
        assert!(contains_file(&tar, "../main.py").is_err());
    }

    #[test]
    fn missing_handler_is_refused() {
        let sb = Sandbox::new();
        let zip = zip_of(&[("other.py", b"x", None), ("main.py/", b"", None)]);
        assert!(matches!(
            sb.normalize(&zip, "main.py"),
            Err(ArchiveError::MissingHandler(_))
        ));
        sb.assert_untouched();
    }

    #[test]
    fn zip_with_parent_dir_entry_is_refused() {
        let sb = Sandbox::new();
        for name in ["../evil", "a/../../evil", "./../evil"] {
            let zip = zip_of(&[("main.py", b"x", None), (name, b"pwned", None)]);
            assert!(
                matches!(
                    sb.normalize(&zip, "main.py"),
                    Err(ArchiveError::UnsafePath(_))
                ),
                "{name}"
            );
        }
        sb.assert_untouched();
    }

    #[test]
    fn zip_with_absolute_entry_is_refused() {
        let sb = Sandbox::new();
        let target = sb.outer.path().join("evil");
        let name = target.to_str().unwrap().to_owned();
        let zip = zip_of(&[("main.py", b"x", None), (&name, b"pwned", None)]);
        assert!(matches!(
            sb.normalize(&zip, "main.py"),
            Err(ArchiveError::UnsafePath(_))
        ));
        let zip = zip_of(&[("/tmp/evil", b"pwned", None)]);
        assert!(matches!(
            sb.normalize(&zip, "main.py"),
            Err(ArchiveError::UnsafePath(_))
        ));
        sb.assert_untouched();
        assert!(!target.exists());
    }

    #[test]
    fn zip_with_escaping_symlink_is_refused() {
        let sb = Sandbox::new();
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default();
        w.add_symlink("link", sb.outer.path().to_str().unwrap(), opts)
            .unwrap();
        w.start_file("link/evil", opts).unwrap();
        w.write_all(b"pwned").unwrap();
        let zip = w.finish().unwrap().into_inner();
        assert!(matches!(
            sb.normalize(&zip, "main.py"),
            Err(ArchiveError::LinkEntry(_))
        ));
        sb.assert_untouched();
    }

    #[test]
    fn tar_links_and_special_entries_are_refused() {
        let sb = Sandbox::new();
        let cases = [
            (tar::EntryType::Link, "/etc/passwd"),
            (tar::EntryType::Symlink, "../../.."),
        ];
        for (kind, target) in cases {
            let tar = raw_tar(&[
                ("main.py", tar::EntryType::Regular, b"x", ""),
                ("link", kind, b"", target),
            ]);
            assert!(matches!(
                sb.normalize(&tar, "main.py"),
                Err(ArchiveError::LinkEntry(_))
            ));
            let dest = sb.outer.path().join("p").join("dest");
            assert!(matches!(
                unpack(&tar, &dest, &limits()),
                Err(ArchiveError::LinkEntry(_))
            ));
            fs::remove_dir_all(&dest).unwrap();
        }
        for kind in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
        ] {
            let tar = raw_tar(&[("dev", kind, b"", "")]);
            assert!(matches!(
                sb.normalize(&tar, "main.py"),
                Err(ArchiveError::SpecialEntry(_))
            ));
        }
        sb.assert_untouched();
    }

    #[test]
    fn tar_with_unsafe_paths_is_refused_by_unpack() {
        let sb = Sandbox::new();
        for name in ["../evil", "/tmp/evil-fnmesh-test"] {
            let tar = raw_tar(&[(name, tar::EntryType::Regular, b"pwned", "")]);
            let dest = sb.parent().join("dest");
            assert!(matches!(
                unpack(&tar, &dest, &limits()),
                Err(ArchiveError::UnsafePath(_))
            ));
            assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
            fs::remove_dir_all(&dest).unwrap();
            assert!(matches!(
                sb.normalize(&tar, "main.py"),
                Err(ArchiveError::UnsafePath(_))
            ));
        }
        sb.assert_untouched();
        assert!(!Path::new("/tmp/evil-fnmesh-test").exists());
    }

    #[test]
    fn zip_bomb_stops_at_the_cap() {
        let sb = Sandbox::new();
        let zeros = vec![0u8; 60 * 1024 * 1024];
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("main.py", opts).unwrap();
        w.write_all(&zeros).unwrap();
        let zip = w.finish().unwrap().into_inner();
        assert!(zip.len() < 1024 * 1024, "bomb should compress well");
        assert!(matches!(
            sb.normalize(&zip, "main.py"),
            Err(ArchiveError::TooLarge)
        ));
        sb.assert_untouched();
    }

    #[test]
    fn zip_entry_lying_about_its_size_stops_at_the_cap() {
        let sb = Sandbox::new();
        let small = ArchiveLimits {
            max_unpacked_bytes: 1024,
            max_entries: 10,
        };
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("main.py", opts).unwrap();
        w.write_all(&[b'a'; 4096]).unwrap();
        let mut zip = w.finish().unwrap().into_inner();
        // Rewrite the declared uncompressed size (local header @22, central header) to 2048:
        // over the cap but under the truth, so our count stops it before zip's own check
        // (zip 9 refuses an entry once it yields more than it declared).
        let patch = |buf: &mut Vec<u8>, sig: &[u8], off: usize| {
            let pos = buf.windows(4).position(|w| w == sig).unwrap();
            buf[pos + off..pos + off + 4].copy_from_slice(&2048u32.to_le_bytes());
        };
        patch(&mut zip, b"PK\x03\x04", 22);
        patch(&mut zip, b"PK\x01\x02", 24);
        let result = normalize_in(&zip, "main.py", &small, &sb.parent());
        assert!(matches!(result, Err(ArchiveError::TooLarge)), "{result:?}");
        sb.assert_untouched();
    }

    #[test]
    fn tar_gz_bomb_stops_at_the_cap() {
        let sb = Sandbox::new();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(60 * 1024 * 1024);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "main.py", io::repeat(0).take(60 * 1024 * 1024))
            .unwrap();
        let tgz = gzip(&builder.into_inner().unwrap());
        assert!(matches!(
            sb.normalize(&tgz, "main.py"),
            Err(ArchiveError::TooLarge)
        ));
        sb.assert_untouched();
    }

    #[test]
    fn too_many_entries_is_refused() {
        let sb = Sandbox::new();
        let few = ArchiveLimits {
            max_unpacked_bytes: 1024,
            max_entries: 3,
        };
        let zip = zip_of(&[
            ("main.py", b"", None),
            ("a", b"", None),
            ("b", b"", None),
            ("c", b"", None),
        ]);
        assert!(matches!(
            normalize_in(&zip, "main.py", &few, &sb.parent()),
            Err(ArchiveError::TooManyEntries)
        ));
        let tar = raw_tar(&[
            ("main.py", tar::EntryType::Regular, b"", ""),
            ("a", tar::EntryType::Regular, b"", ""),
            ("b", tar::EntryType::Regular, b"", ""),
            ("c", tar::EntryType::Regular, b"", ""),
        ]);
        assert!(matches!(
            normalize_in(&tar, "main.py", &few, &sb.parent()),
            Err(ArchiveError::TooManyEntries)
        ));
        sb.assert_untouched();
    }

    #[test]
    fn broken_archives_are_invalid() {
        let sb = Sandbox::new();
        let zip = zip_of(&[("main.py", b"hello", None)]);
        assert!(matches!(
            sb.normalize(&zip[..zip.len() / 2], "main.py"),
            Err(ArchiveError::InvalidArchive(_))
        ));
        assert!(matches!(
            sb.normalize(&[0x1f, 0x8b, 1, 2, 3], "main.py"),
            Err(ArchiveError::InvalidArchive(_))
        ));
        let dup = raw_tar(&[
            ("main.py", tar::EntryType::Regular, b"1", ""),
            ("main.py", tar::EntryType::Regular, b"2", ""),
        ]);
        assert!(matches!(
            sb.normalize(&dup, "main.py"),
            Err(ArchiveError::InvalidArchive(_))
        ));
        sb.assert_untouched();
    }
}
