//! Stable-toolchain stand-in for `cargo fuzz run`: feeds the built-in seeds, the corpus
//! directories `fuzz/corpus/<target>/` (when present, e.g. from earlier `cargo fuzz` runs) and
//! N seeded random mutations through every fuzz target body.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --bin replay -- \
//!     [--iterations N] [--seed S] [--target archive_unpack|names_subjects]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut iterations: u64 = 5_000;
    let mut seed: u64 = 0x5eed;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value) {
            ("--iterations", Some(v)) => v.parse().map(|v| iterations = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--target", Some(v)) => {
                only = Some(v);
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!(
                "usage: replay [--iterations N] [--seed S] [--target archive_unpack|names_subjects]"
            );
            return ExitCode::from(2);
        }
    }
    let corpus_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, fn(&[u8]), Vec<Vec<u8>>, u64); 2] = [
        (
            "archive_unpack",
            fnmesh_fuzz::archive_unpack,
            fnmesh_fuzz::archive_seeds(),
            // Each archive input touches the disk: a tenth of the iterations.
            (iterations / 10).max(1),
        ),
        (
            "names_subjects",
            fnmesh_fuzz::names_subjects,
            fnmesh_fuzz::name_seeds(),
            iterations,
        ),
    ];
    for (name, target, seeds, n) in targets {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let started = std::time::Instant::now();
        let corpus = corpus_root.join(name);
        let ran = fnmesh_fuzz::replay(target, seeds, Some(&corpus), n, seed);
        println!(
            "{name}: {ran} inputs (seed {seed}) in {:.1} s, no finding",
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
