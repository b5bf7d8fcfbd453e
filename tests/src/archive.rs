//! Builders of (hostile) code archives for tests.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;

/// A zip of `(path, content, unix mode)` entries, paths taken verbatim (even `../x` or `/x`).
pub fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (path, content, mode) in entries {
        let opts = SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*path, opts).unwrap();
        w.write_all(content).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A zip holding a symlink `name` -> `target` plus a regular `main.py`.
pub fn zip_with_symlink(name: &str, target: &str) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("main.py", SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"def handle(e, c):\n    return 1\n").unwrap();
    w.add_symlink(name, target, SimpleFileOptions::default())
        .unwrap();
    w.finish().unwrap().into_inner()
}

/// A tar.gz of `(path, content)` regular files.
pub fn targz_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(enc);
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}
