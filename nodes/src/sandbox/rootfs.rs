//! The shared, read-only rootfs skeleton every sandbox starts from.
//!
//! It holds no files of its own: only mount points (`usr proc dev tmp etc var/task var/runtime
//! sys`, empty files for the single-file `/etc` binds) and the merged-`/usr` symlinks
//! (`bin -> usr/bin`, ...) copied from the host. Everything else comes from the bind mounts of
//! `config.json` (see `spec`). It is shared by all sandboxes because the runtime never writes to
//! it: every mount point already exists.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SandboxError;

/// Host files bind-mounted read-only, one by one, into the sandbox's `/etc`.
pub const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "localtime",
];

/// Empty directories of the skeleton, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("proc", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("var", 0o755),
    ("var/task", 0o755),
    ("var/runtime", 0o755),
    ("sys", 0o555),
];

/// Top-level names that are merged-`/usr` symlinks on most distributions; mirrored only when
/// they are symlinks on the host.
const USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Creates the skeleton at `dir` if needed and returns its absolute path.
///
/// Idempotent and safe to call concurrently (from threads or processes): a missing skeleton is
/// built in a private temporary sibling and renamed into place, and an existing one only gets
/// its missing entries added, each step tolerating "already exists".
pub fn ensure_rootfs(dir: &Path) -> Result<PathBuf, SandboxError> {
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    if !dir.exists() {
        build_fresh(&dir)?;
    }
    // Also completes a skeleton written by an older version, or one left half-built.
    fill(&dir)?;
    Ok(dir)
}

fn build_fresh(dir: &Path) -> Result<(), SandboxError> {
    let parent = dir.parent().ok_or_else(|| {
        SandboxError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("rootfs {} has no parent directory", dir.display()),
        ))
    })?;
    fs::create_dir_all(parent)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir(&tmp)?;
    let built = fill(&tmp).and_then(|()| match fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another caller won the race: theirs is as good as ours.
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(e.into()),
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    built
}

fn fill(dir: &Path) -> Result<(), SandboxError> {
    set_mode(dir, 0o755)?;
    for (rel, mode) in DIRS {
        let path = dir.join(rel);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        // Set explicitly: the umask would drop the sticky and world-write bits of `tmp`.
        set_mode(&path, *mode)?;
    }
    for name in USR_LINKS {
        let host = Path::new("/").join(name);
        let Ok(target) = fs::read_link(&host) else {
            continue; // not a symlink on the host (or absent): nothing to mirror
        };
        match symlink(&target, dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    for file in ETC_FILES {
        let path = dir.join("etc").join(file);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        set_mode(&path, 0o644)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn creates_the_skeleton() {
        let base = tempfile::tempdir().unwrap();
        let root = ensure_rootfs(&base.path().join("rootfs")).unwrap();
        for (rel, mode) in DIRS {
            let meta = fs::metadata(root.join(rel)).unwrap();
            assert!(meta.is_dir(), "{rel}");
            assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{rel}");
        }
        for file in ETC_FILES {
            let meta = fs::symlink_metadata(root.join("etc").join(file)).unwrap();
            assert!(meta.is_file(), "{file}");
            assert_eq!(meta.len(), 0);
        }
        for name in USR_LINKS {
            let host = fs::read_link(Path::new("/").join(name)).ok();
            let ours = fs::read_link(root.join(name)).ok();
            assert_eq!(host, ours, "{name}");
        }
        // Nothing but the skeleton.
        let leftovers: Vec<_> = fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("rootfs")]);
    }

    #[test]
    fn is_idempotent_and_concurrency_safe() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("rootfs");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || ensure_rootfs(&dir).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        ensure_rootfs(&dir).unwrap();
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 1);
        assert!(dir.join("var/task").is_dir());
    }
}
