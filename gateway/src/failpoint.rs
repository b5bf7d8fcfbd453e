//! Failpoints for crash tests: `FNMESH_FAILPOINT=<name>` makes the process abort at that
//! point, as a crash would. Read once; when unset, [`hit`] is a pointer comparison.

use std::sync::OnceLock;

/// Abort after an invocation's `queued` record is committed and before it is published.
pub(crate) const AFTER_COMMIT_BEFORE_PUBLISH: &str = "after_commit_before_publish";

fn configured() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("FNMESH_FAILPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Aborts the process if the failpoint `name` is configured.
pub(crate) fn hit(name: &str) {
    if configured() == Some(name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}
