//! The bodies of fnmesh's fuzz targets, as plain functions: `cargo fuzz` (nightly) drives them
//! through `fuzz_targets/*.rs`, and the stable `replay` binary (and this crate's tests) drive
//! them with built-in seeds, an optional corpus directory and seeded random mutations.
//!
//! Each body panics when an invariant breaks; any other panic inside the code under test is a
//! finding too.

use std::fs;
use std::io::{Cursor, Write};
use std::path::Path;

use fnmesh_core::archive::{normalize_in, unpack, ArchiveLimits};
use fnmesh_core::ids::NodeId;
use fnmesh_core::subjects::{self, BusPrefix, BusRole};
use fnmesh_core::{Checksum, FunctionName, InvocationId, Namespace};

/// Small limits so a run stays fast; the checks are the same as with the defaults.
const LIMITS: ArchiveLimits = ArchiveLimits {
    max_unpacked_bytes: 1024 * 1024,
    max_entries: 64,
};

/// `archive_unpack`: `data` as an uploaded archive (zip, tar, tar.gz or single file, told apart
/// by magic bytes, as the gateway does), also gzip-wrapped, and as a stored tar handed to a
/// node's `unpack`. Must never panic, never leave anything behind in the staging parent, never
/// write outside the destination, never create a link or special file; an accepted archive
/// must re-normalize to the same bytes and unpack cleanly.
pub fn archive_unpack(data: &[u8]) {
    let Ok(outer) = tempfile::tempdir() else {
        return;
    };
    let parent = outer.path().join("p");
    if fs::create_dir(&parent).is_err() {
        return;
    }
    let gz = gzip(data);
    for source in [data, gz.as_slice()] {
        if let Ok(tar) = normalize_in(source, "main.py", &LIMITS, &parent) {
            assert_clean(outer.path(), &parent);
            let again = normalize_in(&tar, "main.py", &LIMITS, &parent);
            assert!(
                again.as_ref().is_ok_and(|t| *t == tar),
                "normalizing is not idempotent"
            );
            let dest = parent.join("check");
            assert!(
                unpack(&tar, &dest, &LIMITS).is_ok(),
                "a normalized archive does not unpack"
            );
            assert_only_plain_entries(&dest);
            let _ = fs::remove_dir_all(&dest);
        }
        assert_clean(outer.path(), &parent);
    }
    let dest = parent.join("dest");
    let _ = unpack(data, &dest, &LIMITS);
    assert_only_plain_entries(&dest);
    let _ = fs::remove_dir_all(&dest);
    assert_clean(outer.path(), &parent);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Nothing but `p` in `outer`, nothing left in `p`.
fn assert_clean(outer: &Path, parent: &Path) {
    let names: Vec<_> = fs::read_dir(outer)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [std::ffi::OsString::from("p")],
        "wrote outside staging"
    );
    let left = fs::read_dir(parent).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(left, 0, "staging left behind");
}

/// Every entry under `dir` is a regular file or a directory.
fn assert_only_plain_entries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let kind = meta.file_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "unpacked a non-regular entry {:?}",
            entry.path()
        );
        if kind.is_dir() {
            assert_only_plain_entries(&entry.path());
        }
    }
}

/// One token of a subject: non-empty, no separator, wildcard, whitespace or control.
fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

fn assert_subject(subject: &str, tokens: usize) {
    let parts: Vec<&str> = subject.split('.').collect();
    assert_eq!(parts.len(), tokens, "{subject:?}");
    assert!(parts.iter().all(|t| token_ok(t)), "{subject:?}");
}

fn assert_name(name: &str) {
    assert!(
        token_ok(name) && !name.contains(['/', '\\', '$']),
        "{name:?}"
    );
}

/// `names_subjects`: `data` (lossy UTF-8) split on `\n` into a namespace, a function name and
/// a bus prefix, and also used whole as every kind of name, id and client-chosen subject.
/// Whatever parses must be a safe single token, and every subject built from parsed values must
/// keep its shape; the parsers of subjects we receive must agree with the builders.
pub fn names_subjects(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let ns = parts.next().unwrap_or_default();
    let function = parts.next().unwrap_or(ns);
    let prefix = parts.next().unwrap_or(function);

    for s in [text.as_ref(), ns, function, prefix] {
        for parsed in [
            FunctionName::parse(s).map(|v| v.to_string()).ok(),
            Namespace::parse(s).map(|v| v.to_string()).ok(),
            BusPrefix::parse(s).map(|v| v.to_string()).ok(),
            NodeId::parse(s).map(|v| v.to_string()).ok(),
        ]
        .into_iter()
        .flatten()
        {
            assert_name(&parsed);
            assert_eq!(parsed, s, "a parser rewrote its input");
        }
        if let Ok(id) = InvocationId::parse(s) {
            assert_subject(&subjects::node_event(&id), 4);
        }
        if let Ok(c) = Checksum::parse(s) {
            assert_name(c.as_str());
        }
        let request = format!("fnmesh.v1.req.{s}");
        if let Ok(name) = subjects::parse_request(&request) {
            assert_eq!(subjects::request(&name), request);
        }
        if subjects::reply_allowed(s) {
            assert!(s.starts_with("_INBOX.") || s.starts_with("_R_."), "{s:?}");
            assert!(
                s.split('.').all(|t| !t.is_empty()
                    && t != "*"
                    && t != ">"
                    && !t
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())),
                "{s:?}"
            );
        }
    }

    let (Ok(ns), Ok(function), Ok(prefix)) = (
        Namespace::parse(ns),
        FunctionName::parse(function),
        BusPrefix::parse(prefix),
    ) else {
        return;
    };
    assert_subject(&subjects::invocation(&ns, &function), 5);
    assert_subject(&subjects::bus_invocation(&prefix, &ns, &function), 6);
    assert_subject(&subjects::bus_work_ready(&prefix), 4);
    assert_subject(&subjects::request(&function), 4);
    assert_subject(&subjects::bus_node_event(&prefix, &InvocationId::new()), 5);
    for role in [BusRole::Invocations, BusRole::Events, BusRole::DeadLetters] {
        assert_name(&subjects::bus_stream(&prefix, role));
        assert_name(&subjects::bus_consumer(&prefix, role));
    }
    let consumer = subjects::bus_function_consumer(&prefix, &ns, &function);
    assert_name(&consumer);
    assert_eq!(
        subjects::parse_function_consumer(&prefix, &consumer),
        Some((ns.clone(), function.clone(), fnmesh_core::Priority::Normal))
    );
    for priority in fnmesh_core::Priority::ALL {
        let lane = subjects::bus_function_consumer_lane(&prefix, &ns, &function, priority);
        assert_name(&lane);
        assert_eq!(subjects::function_consumer_priority(&lane), priority);
        assert_eq!(
            subjects::parse_function_consumer(&prefix, &lane),
            Some((ns.clone(), function.clone(), priority))
        );
        let subject = subjects::bus_invocation_lane(&prefix, &ns, &function, priority);
        assert_eq!(
            subjects::parse_bus_invocation(&prefix, &subject),
            Some((ns.clone(), function.clone(), priority))
        );
    }
    assert_name(&subjects::node_registry_bucket(&prefix));
    assert_name(&subjects::code_bucket(&prefix));
}

/// Built-in seeds of `archive_unpack`: small valid and hostile archives of every format.
pub fn archive_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let _ = w.start_file("main.py", opts);
    let _ = w.write_all(b"def handle(e, c):\n    return e\n");
    let _ = w.add_directory("pkg/", opts);
    let _ = w.start_file("pkg/../../evil", opts);
    let _ = w.write_all(b"x");
    if let Ok(c) = w.finish() {
        seeds.push(c.into_inner());
    }
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let _ = w.start_file("main.py", opts);
    let _ = w.write_all(&[b'a'; 4096]);
    if let Ok(c) = w.finish() {
        seeds.push(c.into_inner());
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o755);
    let _ = b.append_data(&mut h, "main.py", &b"print"[..]);
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    let _ = b.append_link(&mut link, "link", "/etc");
    if let Ok(t) = b.into_inner() {
        seeds.push(gzip(&t));
        seeds.push(t);
    }
    seeds.push(b"#!/bin/sh\necho hi\n".to_vec());
    seeds
}

/// Built-in seeds of `names_subjects`.
pub fn name_seeds() -> Vec<Vec<u8>> {
    [
        "default\nhello\neu-1",
        "a.b\n*\n>",
        "tenant-a\nresize-image-2\nt-1",
        "fnmesh.v1.req.x",
        "_INBOX.abc.1",
        "$JS.API.STREAM.DELETE.x",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "A\tB\u{0}\u{7f}\u{a0}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// A tiny deterministic generator (xorshift64*), so replays are reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A mutation of `base` (bit flips, interesting bytes, truncation, splices, insertions),
    /// or fresh random bytes when `base` is empty.
    pub fn mutate(&mut self, base: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
        let mut out = base.to_vec();
        if out.is_empty() {
            let len = self.below(256);
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        for _ in 0..=self.below(8) {
            let at = self.below(out.len().max(1));
            match self.below(6) {
                0 if !out.is_empty() => out[at] ^= 1 << self.below(8),
                1 if !out.is_empty() => {
                    out[at] = [0, 0xff, b'.', b'/', b'*', b'>', b' '][self.below(7)]
                }
                2 => out.truncate(at),
                3 => {
                    let word = dictionary[self.below(dictionary.len())];
                    let at = at.min(out.len());
                    out.splice(at..at, word.iter().copied());
                }
                4 if out.len() >= 4 => {
                    let at = at.min(out.len() - 4);
                    out[at..at + 4].copy_from_slice(&(self.next_u64() as u32).to_le_bytes());
                }
                _ => out.push(self.next_u64() as u8),
            }
        }
        out
    }
}

/// Bytes worth splicing in: magic numbers, path tricks, subject metacharacters.
pub const DICTIONARY: &[&[u8]] = &[
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"\x1f\x8b",
    b"ustar",
    b"../",
    b"/",
    b"\\",
    b".",
    b"*",
    b">",
    b"\n",
    b"\0",
    b"$",
    b"fnmesh.v1.",
];

/// Runs `target` over `seeds`, the files of `corpus` (if it exists) and `iterations` seeded
/// mutations of them. Returns how many inputs ran.
pub fn replay(
    target: fn(&[u8]),
    mut seeds: Vec<Vec<u8>>,
    corpus: Option<&Path>,
    iterations: u64,
    seed: u64,
) -> u64 {
    if let Some(dir) = corpus {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                if let Ok(bytes) = fs::read(entry.path()) {
                    seeds.push(bytes);
                }
            }
        }
    }
    let mut ran = 0;
    for s in &seeds {
        target(s);
        ran += 1;
    }
    let mut rng = Rng::new(seed);
    for _ in 0..iterations {
        let base: &[u8] = if seeds.is_empty() || rng.below(10) == 0 {
            &[]
        } else {
            &seeds[rng.below(seeds.len())]
        };
        let input = rng.mutate(base, DICTIONARY);
        target(&input);
        ran += 1;
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_unpack_survives_a_short_replay() {
        assert!(replay(archive_unpack, archive_seeds(), None, 300, 1) > 300);
    }

    #[test]
    fn names_subjects_survives_a_short_replay() {
        assert!(replay(names_subjects, name_seeds(), None, 20_000, 1) > 20_000);
    }
}
