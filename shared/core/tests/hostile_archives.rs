//! Hostile code archives against the public unpacking API (`archive::normalize_in` and
//! `archive::unpack`): bombs, lying sizes, nesting, links, special files, traversal. Each test
//! runs in its own temp dir and checks that nothing was written outside it.
//!
//! The module's own unit tests (`shared/core/src/archive.rs`) cover the single-entry bombs, links and
//! traversal of zip and tar; these add the cases the security issue names on top of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use fnmesh_core::archive::{normalize_in, unpack, ArchiveError, ArchiveLimits};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// `outer/p` is the staging parent; `outer` must hold nothing but `p` (and `p` nothing) after
/// every call.
struct Jail {
    outer: TempDir,
}

impl Jail {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        fs::create_dir(outer.path().join("p")).unwrap();
        Self { outer }
    }

    fn parent(&self) -> PathBuf {
        self.outer.path().join("p")
    }

    fn normalize(&self, source: &[u8], limits: &ArchiveLimits) -> Result<Vec<u8>, ArchiveError> {
        normalize_in(source, "main.py", limits, &self.parent())
    }

    fn assert_untouched(&self) {
        let outer: Vec<_> = fs::read_dir(self.outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outer, vec![std::ffi::OsString::from("p")]);
        assert_eq!(fs::read_dir(self.parent()).unwrap().count(), 0);
    }
}

fn limits(bytes: u64, entries: u32) -> ArchiveLimits {
    ArchiveLimits {
        max_unpacked_bytes: bytes,
        max_entries: entries,
    }
}

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, deflated()).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Tar headers written raw, so hostile names and entry types survive.
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
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Overwrites the 4-byte little-endian field at `offset` of every record starting with `sig`.
fn patch_all(buf: &mut [u8], sig: &[u8; 4], offset: usize, value: u32) -> usize {
    let positions: Vec<usize> = buf
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect();
    for pos in &positions {
        buf[pos + offset..pos + offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    positions.len()
}

fn unpacked_files(tar: &[u8], dest: &Path) -> Vec<(String, Vec<u8>)> {
    unpack(tar, dest, &ArchiveLimits::default()).unwrap();
    let mut out = Vec::new();
    for entry in fs::read_dir(dest).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            out.push((
                entry.file_name().into_string().unwrap(),
                fs::read(entry.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_zip_inside_a_zip_is_stored_as_a_file_never_extracted() {
    let jail = Jail::new();
    // The inner zip is itself a bomb: extracting it recursively would blow the cap.
    let inner = zip_of(&[("bomb.bin", &vec![0u8; 8 * 1024 * 1024])]);
    let inner_tgz = gzip(&raw_tar(&[(
        "x.py",
        tar::EntryType::Regular,
        b"print(1)",
        "",
    )]));
    let outer = zip_of(&[
        ("main.py", b"def handle(e, c):\n    return 1\n"),
        ("inner.zip", &inner),
        ("inner.tar.gz", &inner_tgz),
    ]);
    let tar = jail.normalize(&outer, &limits(1024 * 1024, 10)).unwrap();
    jail.assert_untouched();
    let dest = jail.outer.path().join("p").join("dest");
    let files = unpacked_files(&tar, &dest);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["inner.tar.gz", "inner.zip", "main.py"]);
    assert_eq!(files[1].1, inner, "the nested zip is kept byte for byte");
    assert_eq!(files[0].1, inner_tgz);
    assert!(!dest.join("bomb.bin").exists() && !dest.join("x.py").exists());
}

#[test]
fn a_zip_whose_central_directory_lies_about_sizes_stops_on_inflated_bytes() {
    let jail = Jail::new();
    let zip = zip_of(&[("main.py", &[b'a'; 64 * 1024])]);
    let cap = limits(4096, 10);
    for declared in [100, 8192] {
        // Only the central directory lies (uncompressed size @24 of `PK\1\2`).
        let mut central_lie = zip.clone();
        assert_eq!(patch_all(&mut central_lie, b"PK\x01\x02", 24, declared), 1);
        let r = jail.normalize(&central_lie, &cap);
        // Under the cap, the zip reader's own size check refuses the entry first; over it,
        // our count of inflated bytes stops it at the cap.
        if declared < 4096 {
            assert!(r.is_err(), "{r:?}");
        } else {
            assert!(matches!(r, Err(ArchiveError::TooLarge)), "{r:?}");
        }
        jail.assert_untouched();
        // Both headers lie.
        let mut both_lie = central_lie.clone();
        assert_eq!(patch_all(&mut both_lie, b"PK\x03\x04", 22, declared), 1);
        let r = jail.normalize(&both_lie, &cap);
        if declared < 4096 {
            assert!(r.is_err(), "{r:?}");
        } else {
            assert!(matches!(r, Err(ArchiveError::TooLarge)), "{r:?}");
        }
        jail.assert_untouched();
    }
    // Declared sizes over the cap with small real contents are not trusted either way: the
    // archive fails (the size check of the zip reader) or is accepted by what it really holds,
    // but never by the declaration alone.
    let small = zip_of(&[("main.py", b"x = 1\n")]);
    let mut inflated_claim = small.clone();
    patch_all(&mut inflated_claim, b"PK\x01\x02", 24, u32::MAX - 1);
    patch_all(&mut inflated_claim, b"PK\x03\x04", 22, u32::MAX - 1);
    match jail.normalize(&inflated_claim, &cap) {
        Ok(_) | Err(ArchiveError::InvalidArchive(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    jail.assert_untouched();
}

#[test]
fn the_total_inflated_cap_counts_every_entry() {
    let jail = Jail::new();
    // 8 entries of 600 KiB zeros: each under the 4 MiB cap, together over it.
    let chunk = vec![0u8; 600 * 1024];
    let mut entries: Vec<(String, &[u8])> = vec![("main.py".to_owned(), b"x" as &[u8])];
    for i in 0..8 {
        entries.push((format!("part-{i}.bin"), &chunk));
    }
    let borrowed: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let zip = zip_of(&borrowed);
    assert!(zip.len() < 64 * 1024, "compresses well: {}", zip.len());
    let cap = limits(4 * 1024 * 1024, 100);
    assert!(matches!(
        jail.normalize(&zip, &cap),
        Err(ArchiveError::TooLarge)
    ));
    // The same as a tar.gz.
    let tar_entries: Vec<(&str, tar::EntryType, &[u8], &str)> = borrowed
        .iter()
        .map(|(n, d)| (*n, tar::EntryType::Regular, *d, ""))
        .collect();
    let tgz = gzip(&raw_tar(&tar_entries));
    assert!(matches!(
        jail.normalize(&tgz, &cap),
        Err(ArchiveError::TooLarge)
    ));
    // And `unpack` (the node side) enforces it on a normalized tar too.
    let dest = jail.parent().join("dest");
    assert!(matches!(
        unpack(&raw_tar(&tar_entries), &dest, &cap),
        Err(ArchiveError::TooLarge)
    ));
    fs::remove_dir_all(&dest).unwrap();
    jail.assert_untouched();
}

#[test]
fn the_entry_count_cap_holds_for_zip_tar_and_empty_directories() {
    let jail = Jail::new();
    let cap = limits(1024 * 1024, 50);
    let names: Vec<String> = (0..51).map(|i| format!("d{i}/")).collect();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("main.py", deflated()).unwrap();
    for n in &names {
        w.add_directory(n.as_str(), SimpleFileOptions::default())
            .unwrap();
    }
    let zip = w.finish().unwrap().into_inner();
    assert!(matches!(
        jail.normalize(&zip, &cap),
        Err(ArchiveError::TooManyEntries)
    ));
    let mut entries = vec![("main.py", tar::EntryType::Regular, b"" as &[u8], "")];
    for n in &names {
        entries.push((n.as_str(), tar::EntryType::Directory, b"", ""));
    }
    let tar = raw_tar(&entries);
    assert!(matches!(
        jail.normalize(&tar, &cap),
        Err(ArchiveError::TooManyEntries)
    ));
    assert!(matches!(
        jail.normalize(&gzip(&tar), &cap),
        Err(ArchiveError::TooManyEntries)
    ));
    jail.assert_untouched();
}

#[test]
fn tar_links_devices_and_fifos_are_refused_in_normalize_and_unpack() {
    let jail = Jail::new();
    let cap = ArchiveLimits::default();
    let cases: [(tar::EntryType, &str, bool); 6] = [
        (tar::EntryType::Symlink, "/etc/shadow", true),
        (tar::EntryType::Symlink, "../../../../tmp", true),
        (tar::EntryType::Link, "main.py", true),
        (tar::EntryType::Char, "", false),
        (tar::EntryType::Block, "", false),
        (tar::EntryType::Fifo, "", false),
    ];
    for (kind, target, is_link) in cases {
        let tar = raw_tar(&[
            ("main.py", tar::EntryType::Regular, b"x", ""),
            ("evil", kind, b"", target),
        ]);
        for source in [tar.clone(), gzip(&tar)] {
            let r = jail.normalize(&source, &cap);
            let ok = if is_link {
                matches!(r, Err(ArchiveError::LinkEntry(_)))
            } else {
                matches!(r, Err(ArchiveError::SpecialEntry(_)))
            };
            assert!(ok, "{kind:?}: {r:?}");
        }
        let dest = jail.parent().join("dest");
        let r = unpack(&tar, &dest, &cap);
        assert!(
            matches!(
                r,
                Err(ArchiveError::LinkEntry(_) | ArchiveError::SpecialEntry(_))
            ),
            "{kind:?}: {r:?}"
        );
        assert!(fs::symlink_metadata(dest.join("evil")).is_err());
        fs::remove_dir_all(&dest).unwrap();
    }
    jail.assert_untouched();
}

#[test]
fn traversal_and_absolute_paths_are_refused_everywhere() {
    let jail = Jail::new();
    let cap = ArchiveLimits::default();
    let escape = jail.outer.path().join("escaped");
    let absolute = escape.to_str().unwrap().to_owned();
    let names = [
        "../escaped",
        "a/../../escaped",
        "./../escaped",
        "a/b/../../../escaped",
        absolute.as_str(),
        "//escaped",
        "..\\escaped",
        "C:/escaped",
    ];
    for name in names {
        let zip = zip_of(&[("main.py", b"x"), (name, b"pwned")]);
        let r = jail.normalize(&zip, &cap);
        assert!(
            matches!(r, Err(ArchiveError::UnsafePath(_))),
            "{name}: {r:?}"
        );
        let tar = raw_tar(&[
            ("main.py", tar::EntryType::Regular, b"x", ""),
            (name, tar::EntryType::Regular, b"pwned", ""),
        ]);
        let r = jail.normalize(&gzip(&tar), &cap);
        assert!(
            matches!(r, Err(ArchiveError::UnsafePath(_))),
            "{name}: {r:?}"
        );
        let dest = jail.parent().join("dest");
        let r = unpack(&tar, &dest, &cap);
        assert!(
            matches!(r, Err(ArchiveError::UnsafePath(_))),
            "{name}: {r:?}"
        );
        fs::remove_dir_all(&dest).unwrap();
    }
    assert!(!escape.exists());
    jail.assert_untouched();
}
