//! The hardened OCI runtime spec (`config.json`) of a sandbox.

use std::path::{Path, PathBuf};

use super::SandboxError;

/// Everything that varies between sandboxes. Paths are absolute host paths.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    /// Sandbox id (also the container id and the last cgroup path element).
    pub sandbox_id: String,
    /// The shared read-only rootfs skeleton (see `rootfs::ensure_rootfs`).
    pub rootfs: PathBuf,
    /// The function's unpacked code, bind-mounted read-only at `/var/task`.
    pub code_dir: PathBuf,
    /// The runtime bootstraps, bind-mounted read-only at `/var/runtime`.
    pub runtime_dir: PathBuf,
    /// The process: argv (absolute path first).
    pub args: Vec<String>,
    /// The process environment, `KEY=VALUE`: only the function's variables plus runtime ones.
    pub env: Vec<String>,
    /// Working directory inside the sandbox (normally `/var/task`).
    pub cwd: String,
    /// Memory limit (swap equal to it, i.e. none beyond).
    pub memory_mb: u32,
    /// Max processes/threads in the sandbox.
    pub pids_limit: u32,
    /// CPU quota in millicores (1000 = one core).
    pub cpu_millis: u32,
    /// Size of the `/tmp` tmpfs.
    pub tmp_mb: u32,
    /// Absolute cgroup path, e.g. `/fnmesh/<node>/<sandbox id>`.
    pub cgroup_path: String,
    /// Non-root user the process runs as.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// Writes `<bundle_dir>/config.json` for `req`, creating `bundle_dir`.
pub fn write_bundle(bundle_dir: &Path, req: &BundleRequest) -> Result<(), SandboxError> {
    let _ = (bundle_dir, req);
    Err(SandboxError::Supervisor("not written yet".into()))
}
