//! A fake [`ContainerRuntime`] for tests: runs a bundle's process as a plain host child process.
//!
//! No namespaces, cgroups or limits, and no root needed. `create` reads `config.json`, takes
//! `process.args`, `process.env` and `process.cwd`, and maps paths under `/var/task` and
//! `/var/runtime` to the host `source` of the matching bind mounts; `start` spawns it in its own
//! process group with the given stdio; `destroy` kills the group and reports how the process
//! ended. `memory_peak` reads the process's `VmHWM` (and resets it through `clear_refs`).

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use super::{ContainerRuntime, ExitReport, SandboxError, SandboxIo, SandboxSpec};

/// Mount destinations whose host source replaces the path prefix.
const MAPPED: &[&str] = &["/var/task", "/var/runtime"];

enum Entry {
    Created(Box<std::process::Command>),
    Running(tokio::process::Child),
}

/// Runs sandboxes as plain child processes. See the module docs.
#[derive(Default)]
pub struct FakeRuntime {
    sandboxes: Mutex<HashMap<String, Entry>>,
    created: AtomicU64,
    destroyed: AtomicU64,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("live", &self.live_ids())
            .finish()
    }
}

#[derive(Deserialize)]
struct Bundle {
    process: BundleProcess,
    #[serde(default)]
    mounts: Vec<BundleMount>,
}

#[derive(Deserialize)]
struct BundleProcess {
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
}

#[derive(Deserialize)]
struct BundleMount {
    destination: String,
    #[serde(default)]
    source: String,
}

fn map_path(path: &str, mounts: &[(String, String)]) -> String {
    for (dest, source) in mounts {
        if path == dest {
            return source.clone();
        }
        if let Some(rest) = path.strip_prefix(dest.as_str()) {
            if rest.starts_with('/') {
                return format!("{source}{rest}");
            }
        }
    }
    path.to_owned()
}

fn container_error(id: &str, message: impl Into<String>) -> SandboxError {
    SandboxError::Container {
        id: id.to_owned(),
        message: message.into(),
    }
}

impl FakeRuntime {
    /// A runtime with no sandboxes.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned table only means a test thread panicked; the map itself is consistent.
        self.sandboxes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Ids of created, not yet destroyed sandboxes, sorted.
    pub fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many sandboxes were created so far.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// How many live sandboxes were destroyed so far.
    pub fn destroyed(&self) -> u64 {
        self.destroyed.load(Ordering::Relaxed)
    }

    /// The host pid of a started sandbox.
    pub fn pid(&self, id: &str) -> Option<u32> {
        match self.table().get(id) {
            Some(Entry::Running(child)) => child.id(),
            _ => None,
        }
    }

    fn command(spec: &SandboxSpec, io: SandboxIo) -> Result<std::process::Command, SandboxError> {
        let text = std::fs::read(spec.bundle.join("config.json"))?;
        let bundle: Bundle = serde_json::from_slice(&text)
            .map_err(|e| container_error(&spec.id, format!("config.json: {e}")))?;
        let mounts: Vec<(String, String)> = bundle
            .mounts
            .into_iter()
            .filter(|m| MAPPED.contains(&m.destination.as_str()))
            .map(|m| (m.destination, m.source))
            .collect();
        let args: Vec<String> = bundle
            .process
            .args
            .iter()
            .map(|a| map_path(a, &mounts))
            .collect();
        let Some((program, rest)) = args.split_first() else {
            return Err(container_error(&spec.id, "config.json has no process.args"));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(rest).env_clear();
        for entry in &bundle.process.env {
            if let Some((key, value)) = entry.split_once('=') {
                cmd.env(key, value);
            }
        }
        let cwd = map_path(&bundle.process.cwd, &mounts);
        if !cwd.is_empty() {
            cmd.current_dir(PathBuf::from(cwd));
        }
        cmd.stdin(Stdio::from(io.stdin))
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr))
            .process_group(0);
        Ok(cmd)
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn create(&self, spec: &SandboxSpec, io: SandboxIo) -> Result<(), SandboxError> {
        let cmd = Self::command(spec, io)?;
        let mut table = self.table();
        if table.contains_key(&spec.id) {
            return Err(container_error(&spec.id, "already exists"));
        }
        table.insert(spec.id.clone(), Entry::Created(Box::new(cmd)));
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<(), SandboxError> {
        let mut table = self.table();
        let Some(entry) = table.remove(id) else {
            return Err(container_error(id, "not found"));
        };
        let cmd = match entry {
            Entry::Created(cmd) => cmd,
            running @ Entry::Running(_) => {
                table.insert(id.to_owned(), running);
                return Err(container_error(id, "already started"));
            }
        };
        let mut cmd = tokio::process::Command::from(*cmd);
        cmd.kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => {
                table.insert(id.to_owned(), Entry::Running(child));
                Ok(())
            }
            // Like libcontainer: a failed exec leaves no container behind.
            Err(e) => Err(container_error(id, format!("exec process failed: {e}"))),
        }
    }

    async fn memory_peak(&self, id: &str, reset: bool) -> Result<u64, SandboxError> {
        let Some(pid) = self.pid(id) else {
            return Ok(0);
        };
        let peak = vm_hwm_bytes(pid);
        if reset {
            // Best effort: "5" resets the peak RSS of the process.
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        Ok(peak)
    }

    async fn cpu_usage_us(&self, id: &str) -> Result<u64, SandboxError> {
        Ok(self.pid(id).map_or(0, cpu_time_us))
    }

    async fn destroy(&self, id: &str) -> Result<ExitReport, SandboxError> {
        let entry = self.table().remove(id);
        let mut child = match entry {
            None => return Ok(ExitReport::default()),
            Some(Entry::Created(_)) => {
                self.destroyed.fetch_add(1, Ordering::Relaxed);
                return Ok(ExitReport::default());
            }
            Some(Entry::Running(child)) => child,
        };
        let memory_peak_bytes = child.id().map_or(0, vm_hwm_bytes);
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            // The group may already be gone.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let status = child.wait().await?;
        self.destroyed.fetch_add(1, Ordering::Relaxed);
        Ok(ExitReport {
            exit_code: status.code(),
            signal: status.signal(),
            oom_killed: false,
            pids_limit_hit: false,
            memory_peak_bytes,
        })
    }
}

/// CPU time (user + system) of a host process, µs, from `/proc/<pid>/stat` (clock ticks of
/// 10 ms, the kernel's `USER_HZ` of 100); 0 when unknown.
fn cpu_time_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may hold spaces) in parentheses: utime is the 14th
    // field of the line, stime the 15th.
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10_000
}

/// Peak resident set size of a host process, 0 when unknown.
fn vm_hwm_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn paths_map_to_mount_sources() {
        let mounts = vec![
            ("/var/task".to_owned(), "/host/code".to_owned()),
            ("/var/runtime".to_owned(), "/host/rt".to_owned()),
        ];
        assert_eq!(map_path("/var/task", &mounts), "/host/code");
        assert_eq!(map_path("/var/task/x.py", &mounts), "/host/code/x.py");
        assert_eq!(map_path("/var/taskx", &mounts), "/var/taskx");
        assert_eq!(map_path("/var/runtime/b.py", &mounts), "/host/rt/b.py");
        assert_eq!(map_path("-I", &mounts), "-I");
    }
}
