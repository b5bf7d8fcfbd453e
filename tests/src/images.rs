//! Test images made from `busybox-static` (see [`fnmesh_image::build`]): busybox, its applets
//! and the test's own files in one layer, written as an OCI image layout that `skopeo` pushes
//! to a test registry ([`crate::servers::registry`]) or that a test uploads as an archive.

use std::path::Path;

use fnmesh_image::build::{self, Entry};
use serde_json::Value;

/// The busybox applets linked in every test image.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "id", "head", "printf", "pwd", "test", "true", "sleep", "httpd",
    "ls", "wc", "touch", "rm", "mkdir", "dd", "nc", "unshare", "mount", "grep", "cut", "tr", "sed",
];

/// Writes an OCI image layout at `dir` with one image named `tag`: busybox plus `files`
/// (`path`, mode, contents), configured by `config` (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`,
/// `User`). Returns the manifest's digest (`sha256:…`).
pub fn busybox_layout(
    dir: &Path,
    tag: &str,
    files: &[(&str, u32, &[u8])],
    config: Value,
) -> String {
    let mut entries = build::busybox(APPLETS).expect("a busybox image");
    entries.extend(
        files
            .iter()
            .map(|(path, mode, contents)| Entry::file(path, *mode, *contents)),
    );
    build::write_layout(dir, tag, &entries, config)
        .expect("writing an image layout")
        .to_string()
}

/// A tar of the layout at `dir` (an uploadable image archive).
pub fn layout_tar(dir: &Path) -> Vec<u8> {
    build::layout_tar(dir).expect("archiving the layout")
}
