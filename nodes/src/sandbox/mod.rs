//! Sandboxes: hardened OCI containers created by youki's `libcontainer`.
//!
//! - [`ContainerRuntime`] is the OS boundary: create / start / destroy a container from a bundle
//!   directory. The real implementation talks to the single-threaded supervisor process
//!   (libcontainer must never fork from our multi-threaded tokio process); tests of pool and
//!   scheduling logic use a fake.
//! - [`BundleRequest`] + `spec::write_bundle` turn a function's limits into a hardened
//!   `config.json` (a private file: it holds no secrets, but is no one else's business).
//! - `users` gives every live sandbox its own host uid/gid, through a user namespace or directly.

pub mod cgroup;
pub mod fake;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod supervisor;
pub mod users;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors at the container boundary.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The supervisor process is gone or misbehaved.
    #[error("sandbox supervisor: {0}")]
    Supervisor(String),
    /// libcontainer refused or failed.
    #[error("container {id}: {message}")]
    Container {
        /// Sandbox id.
        id: String,
        /// What failed.
        message: String,
    },
    /// Preparing files (bundle, rootfs) failed.
    #[error("sandbox files: {0}")]
    Io(#[from] std::io::Error),
}

/// What to create: a unique id and a bundle directory holding `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Unique among live sandboxes of this node; `[a-z0-9-]+`.
    pub id: String,
    /// Directory with `config.json` (its `root.path` is absolute).
    pub bundle: PathBuf,
}

/// The container's stdio: the container-side ends of three pipes.
pub struct SandboxIo {
    /// Becomes fd 0.
    pub stdin: OwnedFd,
    /// Becomes fd 1.
    pub stdout: OwnedFd,
    /// Becomes fd 2.
    pub stderr: OwnedFd,
}

/// How a sandbox ended, read from its cgroup before it was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Exit code of the init process, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed the init process, if any.
    pub signal: Option<i32>,
    /// Whether the memory cgroup OOM-killed something.
    pub oom_killed: bool,
    /// Whether the pids limit refused a fork.
    pub pids_limit_hit: bool,
    /// Peak memory of the cgroup.
    pub memory_peak_bytes: u64,
}

/// The container engine as the pool sees it.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates the container (cgroups, namespaces, mounts; `lo` up) with `io` as its stdio.
    /// The process does not run until [`ContainerRuntime::start`].
    async fn create(&self, spec: &SandboxSpec, io: SandboxIo) -> Result<(), SandboxError>;

    /// Starts the created container's process.
    async fn start(&self, id: &str) -> Result<(), SandboxError>;

    /// Peak memory of the sandbox since the last reset; resets the peak when `reset`.
    async fn memory_peak(&self, id: &str, reset: bool) -> Result<u64, SandboxError>;

    /// CPU time (user and system) the sandbox has used since it was made, µs.
    async fn cpu_usage_us(&self, id: &str) -> Result<u64, SandboxError>;

    /// Kills every process of the sandbox, reaps it, reads its cgroup counters, and removes its
    /// cgroups and state. Idempotent: an unknown id gives a default report.
    async fn destroy(&self, id: &str) -> Result<ExitReport, SandboxError>;
}
