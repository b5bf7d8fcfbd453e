//! Unit tests of the archive normaliser: single-entry bombs, links, lying headers, paths.

use super::*;
use zip::write::SimpleFileOptions;

/// The bombs below are 60 MiB: the cap they meet is 50 MiB (the default is 250 MiB).
fn limits() -> ArchiveLimits {
    ArchiveLimits {
        max_unpacked_bytes: 50 * 1024 * 1024,
        ..ArchiveLimits::default()
    }
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
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
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
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
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

#[test]
fn a_spooled_upload_is_normalized_from_its_file_into_a_compressed_tar() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'a'; 3 * 1024 * 1024];
    let source = zip_of(&[
        ("main.py", b"def handle(e, c):\n    return 1\n", None),
        ("data/big.txt", &big, None),
    ]);
    let path = dir.path().join("upload.zip");
    std::fs::write(&path, &source).unwrap();
    let stored = normalize_reader(
        File::open(&path).unwrap(),
        "main.py",
        &limits(),
        dir.path(),
        Packing::TarGz,
    )
    .unwrap();
    assert!(stored.starts_with(&[0x1f, 0x8b]), "stored gzip-compressed");
    assert!(
        stored.len() < 64 * 1024,
        "compressed: {} bytes",
        stored.len()
    );
    // The same tree as the plain form, byte for byte once inflated, and deterministic.
    let plain = normalize_in(&source, "main.py", &limits(), dir.path()).unwrap();
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&stored[..])
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated, plain);
    let again = normalize_reader(
        Cursor::new(&source),
        "main.py",
        &limits(),
        dir.path(),
        Packing::TarGz,
    )
    .unwrap();
    assert_eq!(again, stored, "the same upload stores the same bytes");
    // Nodes unpack it and the handler is found in it, as with a plain tar.
    assert!(contains_file(&stored, "main.py").unwrap());
    assert!(!contains_file(&stored, "nope.py").unwrap());
    let dest = dir.path().join("tree");
    unpack(&stored, &dest, &limits()).unwrap();
    assert_eq!(std::fs::read(dest.join("data/big.txt")).unwrap(), big);
    // A single file spooled to disk is the handler, as from memory.
    let single = dir.path().join("run");
    std::fs::write(&single, b"#!/bin/sh\necho hi\n").unwrap();
    let stored = normalize_reader(
        File::open(&single).unwrap(),
        "bin/run",
        &limits(),
        dir.path(),
        Packing::TarGz,
    )
    .unwrap();
    assert!(contains_file(&stored, "bin/run").unwrap());
}

#[test]
fn a_compressed_bomb_stops_at_the_cap_when_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let source = zip_of(&[("main.py", &vec![b'x'; 2 * 1024 * 1024], None)]);
    let stored = normalize_reader(
        Cursor::new(&source),
        "main.py",
        &limits(),
        dir.path(),
        Packing::TarGz,
    )
    .unwrap();
    let small = ArchiveLimits {
        max_unpacked_bytes: 1024 * 1024,
        max_entries: 10,
    };
    let err = unpack(&stored, &dir.path().join("t"), &small).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge), "{err:?}");
}
