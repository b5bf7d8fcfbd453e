//! `cargo +nightly fuzz run names_subjects`: arbitrary strings as names, ids and subjects.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fnmesh_fuzz::names_subjects(data));
