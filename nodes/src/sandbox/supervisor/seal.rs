//! Sealing the supervisor's own binary before it creates any container (CVE-2019-5736 class).
//!
//! Every container init starts as a fork of the supervisor, so until it execs the function's
//! runtime its `/proc/<pid>/exe` is the host's `fnmesh` binary. A process that could open that
//! link for writing (or a later `#!/proc/self/exe` trick) would overwrite the binary the host
//! runs as root. So the supervisor never runs from the host file itself: first thing, it
//! re-execs itself from a **read-only, detached bind mount** of its binary, the technique runc
//! used before its overlayfs variant:
//!
//! 1. bind-mount `/proc/self/exe` onto an empty file in the state directory and remount it
//!    read-only;
//! 2. open it `O_PATH`, then detach the mount (`MNT_DETACH`) and remove the file: the mount now
//!    exists only through that descriptor, so nobody can remount it read-write;
//! 3. `execveat(fd, "", AT_EMPTY_PATH)` with [`SEALED_ENV`] set.
//!
//! From then on `/proc/self/exe` of the supervisor and of every init it forks resolves to a
//! file on a read-only mount: opening it for writing fails with `EROFS`, even for root. Unlike
//! a memfd copy this costs no memory (the debug binary is hundreds of MiB) and shares the page
//! cache. A binary installed on a read-only filesystem is already sealed and is not re-executed.
//!
//! After the re-exec, [`ensure_sealed`] checks the result and refuses to serve unsealed.

use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};

/// Set in the environment of the re-executed supervisor, so it does not loop.
pub const SEALED_ENV: &str = "FNMESH_SUPERVISOR_SEALED";

/// Whether `/proc/self/exe` is on a read-only mount, i.e. cannot be opened for writing.
pub fn exe_is_sealed() -> bool {
    statvfs("/proc/self/exe").is_ok_and(|st| st.flags().contains(FsFlags::ST_RDONLY))
}

/// Makes sure this process runs from a sealed binary: returns `Ok` when it already does, or
/// re-executes it from a sealed mount (and so returns only on failure). `scratch` is a
/// directory on a local filesystem where an empty mount point can be created briefly.
pub fn ensure_sealed(scratch: &Path) -> Result<(), String> {
    if exe_is_sealed() {
        return Ok(());
    }
    if std::env::var_os(SEALED_ENV).is_some() {
        return Err(format!(
            "{SEALED_ENV} is set but /proc/self/exe is still writable: refusing to create \
             containers from an unsealed binary"
        ));
    }
    let fd = sealed_exe_fd(scratch)?;
    let args: Vec<CString> = std::env::args_os().map(cstring).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != SEALED_ENV)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect::<Result<_, _>>()?;
    env.push(cstring(OsString::from(format!("{SEALED_ENV}=1")))?);
    let err = nix::unistd::execveat(&fd, c"", &args, &env, AtFlags::AT_EMPTY_PATH)
        .err()
        .map_or_else(|| "returned".to_owned(), |e| e.to_string());
    Err(format!("re-executing from the sealed binary: {err}"))
}

fn cstring(value: OsString) -> Result<CString, String> {
    CString::new(value.into_vec()).map_err(|_| "an argument holds a NUL byte".to_owned())
}

/// An `O_PATH` descriptor of this binary on a read-only mount that is already detached.
fn sealed_exe_fd(scratch: &Path) -> Result<OwnedFd, String> {
    fs::create_dir_all(scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let target = scratch.join(format!(".sealed-exe-{}", std::process::id()));
    let _ = fs::remove_file(&target);
    fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let result = bind_read_only(&target);
    // The mount point is needed only until the descriptor exists.
    let unlinked = fs::remove_file(&target);
    let fd = result?;
    unlinked.map_err(|e| format!("removing {}: {e}", target.display()))?;
    Ok(fd)
}

fn bind_read_only(target: &Path) -> Result<OwnedFd, String> {
    let none: Option<&str> = None;
    nix::mount::mount(Some("/proc/self/exe"), target, none, MsFlags::MS_BIND, none)
        .map_err(|e| format!("bind-mounting /proc/self/exe: {e}"))?;
    let opened = nix::mount::mount(
        none,
        target,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(|e| format!("remounting the binary read-only: {e}"))
    .and_then(|()| {
        nix::fcntl::open(target, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| format!("opening the sealed binary: {e}"))
    });
    let detached = nix::mount::umount2(target, MntFlags::MNT_DETACH)
        .map_err(|e| format!("detaching the sealed mount: {e}"));
    let fd = opened?;
    detached?;
    Ok(fd)
}
