//! What an image says to run, and as whom: its configuration turned into a sandbox process.
//!
//! Docker's rules: the command is `Entrypoint` followed by `Cmd` (or `Cmd` alone); the
//! environment is the image's `Env`, then the function's variables over it, with Docker's
//! default `PATH` when neither sets one; the working directory is `WorkingDir` (default `/`).
//! `User` may be `user`, `uid`, `user:group`, `uid:gid`, …; names are looked up in the image's
//! own `/etc/passwd` and `/etc/group`, read through an in-root [`pathrs::Root`] of its tree (a
//! symlinked `/etc/passwd` cannot make us read the host's). **Root is never honoured**: an
//! image whose user is root (or unset) runs as [`UNPRIVILEGED`], as every sandbox does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use pathrs::flags::OpenFlags;
use pathrs::Root;

use crate::ImageError;

/// The uid and gid an image's root (or unset) user becomes.
pub const UNPRIVILEGED: u32 = 65534;

/// Docker's `PATH` for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The sandbox process of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProcess {
    /// The command (`Entrypoint` + `Cmd`).
    pub argv: Vec<String>,
    /// `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// The process `config` describes, with `function_env` over the image's `Env`; user names are
/// resolved in the image tree at `tree`.
pub fn image_process(
    config: &ImageConfiguration,
    tree: &Path,
    function_env: &BTreeMap<String, String>,
) -> Result<ImageProcess, ImageError> {
    let inner = config.config().clone().unwrap_or_default();
    let mut argv: Vec<String> = inner.entrypoint().clone().unwrap_or_default();
    argv.extend(inner.cmd().clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(ImageError::Invalid(
            "the image has neither an Entrypoint nor a Cmd to run".to_owned(),
        ));
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for pair in inner.env().clone().unwrap_or_default() {
        let (key, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        if !key.is_empty() {
            env.insert(key.to_owned(), value.to_owned());
        }
    }
    for (key, value) in function_env {
        env.insert(key.clone(), value.clone());
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    let cwd = inner
        .working_dir()
        .clone()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());
    let (uid, gid) = user(inner.user().as_deref().unwrap_or(""), tree)?;
    Ok(ImageProcess {
        argv,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        uid,
        gid,
    })
}

/// The uid and gid of an image's `User` (root, or unset, becomes [`UNPRIVILEGED`]).
pub fn user(spec: &str, tree: &Path) -> Result<(u32, u32), ImageError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((UNPRIVILEGED, UNPRIVILEGED));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup(tree, "etc/passwd", |f| f[2] == user)?.and_then(|f| f[3].parse().ok()),
        ),
        Err(_) => {
            let entry = lookup(tree, "etc/passwd", |f| f[0] == user)?.ok_or_else(|| {
                ImageError::Invalid(format!(
                    "the image's user {user:?} is not in its /etc/passwd"
                ))
            })?;
            let uid = entry[2].parse().map_err(|_| {
                ImageError::Invalid(format!(
                    "the image's /etc/passwd has a bad uid for {user:?}"
                ))
            })?;
            (uid, entry[3].parse().ok())
        }
    };
    let gid = match group {
        None => primary_gid.unwrap_or(uid),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(tree, "etc/group", |f| f[0] == group)?
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    ImageError::Invalid(format!(
                        "the image's group {group:?} is not in its /etc/group"
                    ))
                })?,
        },
    };
    if uid == 0 {
        // Never root: the same unprivileged user as an image without one.
        return Ok((UNPRIVILEGED, UNPRIVILEGED));
    }
    Ok((uid, if gid == 0 { UNPRIVILEGED } else { gid }))
}

/// The first line of the colon-separated file `rel` (in the tree) whose fields match; `None`
/// when the file or the line is missing.
fn lookup(
    tree: &Path,
    rel: &str,
    matches: impl Fn(&[&str]) -> bool,
) -> Result<Option<Vec<String>>, ImageError> {
    let root = Root::open(tree).map_err(|e| ImageError::Unpack {
        path: tree.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let Ok(handle) = root.resolve(rel) else {
        return Ok(None);
    };
    let Ok(file) = handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC) else {
        return Ok(None);
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text)?;
    Ok(text
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 4 && matches(fields))
        .map(|fields| fields.into_iter().map(str::to_owned).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": json,
        }))
        .unwrap()
    }

    fn tree_with_users() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\napp:x:1001:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn entrypoint_cmd_env_and_workdir_follow_dockers_rules() {
        let tree = tree_with_users();
        let c = config(serde_json::json!({
            "Entrypoint": ["/bin/server", "--fast"], "Cmd": ["serve"],
            "Env": ["A=1", "B=image", "EMPTY="], "WorkingDir": "/srv",
        }));
        let env = BTreeMap::from([("B".to_owned(), "function".to_owned())]);
        let p = image_process(&c, tree.path(), &env).unwrap();
        assert_eq!(p.argv, ["/bin/server", "--fast", "serve"]);
        assert_eq!(
            p.env,
            [
                "A=1",
                "B=function",
                "EMPTY=",
                &format!("PATH={DEFAULT_PATH}")
            ]
        );
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.uid, p.gid), (UNPRIVILEGED, UNPRIVILEGED));

        let cmd_only = image_process(
            &config(serde_json::json!({"Cmd": ["/bin/sh", "-c", "cat"], "Env": ["PATH=/bin"]})),
            tree.path(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(cmd_only.argv, ["/bin/sh", "-c", "cat"]);
        assert_eq!(cmd_only.env, ["PATH=/bin"]);
        assert_eq!(cmd_only.cwd, "/");
        assert!(image_process(
            &config(serde_json::json!({})),
            tree.path(),
            &BTreeMap::new()
        )
        .is_err());
    }

    #[test]
    fn users_resolve_in_the_image_and_root_is_never_honoured() {
        let tree = tree_with_users();
        let t = tree.path();
        assert_eq!(user("app", t).unwrap(), (1000, 1001));
        assert_eq!(user("1000", t).unwrap(), (1000, 1001));
        assert_eq!(user("app:staff", t).unwrap(), (1000, 50));
        assert_eq!(user("4242:4343", t).unwrap(), (4242, 4343));
        assert_eq!(user("4242", t).unwrap(), (4242, 4242));
        for root in ["root", "0", "0:0", "root:root", ""] {
            assert_eq!(
                user(root, t).unwrap(),
                (UNPRIVILEGED, UNPRIVILEGED),
                "{root:?}"
            );
        }
        assert_eq!(
            user("app:0", t).unwrap(),
            (1000, UNPRIVILEGED),
            "no root group either"
        );
        assert!(user("nobody-here", t).is_err());
        assert!(user("app:nogroup", t).is_err());
    }

    #[test]
    fn a_symlinked_passwd_is_read_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-etc");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::os::unix::fs::symlink(&host, tree.join("etc")).unwrap();
        // The absolute symlink resolves inside the tree, where there is no such file.
        assert!(user("evil", &tree).is_err());
    }
}
