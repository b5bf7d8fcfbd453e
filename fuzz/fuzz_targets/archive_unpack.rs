//! `cargo +nightly fuzz run archive_unpack`: arbitrary bytes as a code archive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fnmesh_fuzz::archive_unpack(data));
