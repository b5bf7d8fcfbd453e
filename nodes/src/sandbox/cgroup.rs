//! Small readers for a sandbox's cgroup counters (OOM kills, pids-limit hits, peak memory, CPU
//! time) on cgroup v1 (including the hybrid layout) and v2.
//!
//! libcontainer creates the cgroups from `linux.cgroupsPath`; on v1 each controller lives at
//! `/sys/fs/cgroup/<controller><cgroupsPath>`, on v2 everything is at
//! `/sys/fs/cgroup<cgroupsPath>`. A hybrid host (v1 controllers plus `/sys/fs/cgroup/unified`)
//! counts as v1, which is what libcontainer does.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The default cgroup mount root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup version the host uses for the controllers we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller hierarchies (legacy or hybrid).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// Detects the layout below `root` (normally [`CGROUP_ROOT`]).
    pub fn detect(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }
}

/// The cgroup directories of one sandbox.
#[derive(Debug)]
pub struct SandboxCgroup {
    version: CgroupVersion,
    root: PathBuf,
    /// The `linux.cgroupsPath` (absolute, starts with `/`).
    path: String,
    /// The peak-memory counter (`memory.max_usage_in_bytes` on v1, `memory.peak` on v2), kept
    /// open: a read is one `pread` (kernfs makes the text again at offset 0) instead of a path
    /// walk, an open, a read and a close on every invocation (~3% of a node's CPU under load),
    /// and on v2 a reset applies to the writer's open file.
    peak_file: Option<fs::File>,
    /// The CPU-time counter (`cpuacct.usage` on v1, `cpu.stat` on v2), kept open likewise.
    cpu_file: Option<fs::File>,
}

impl SandboxCgroup {
    /// The cgroup of `cgroups_path` below the host's default mount root.
    pub fn new(cgroups_path: &str) -> Self {
        Self::with_root(Path::new(CGROUP_ROOT), cgroups_path)
    }

    /// The cgroup of `cgroups_path` below `root` (tests use a fake tree).
    pub fn with_root(root: &Path, cgroups_path: &str) -> Self {
        Self {
            version: CgroupVersion::detect(root),
            root: root.to_path_buf(),
            path: cgroups_path.to_owned(),
            peak_file: None,
            cpu_file: None,
        }
    }

    /// The cgroups path this was built from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The directory of `controller` (ignored on v2).
    pub fn controller_dir(&self, controller: &str) -> PathBuf {
        let rel = self.path.trim_start_matches('/');
        match self.version {
            CgroupVersion::V1 => self.root.join(controller).join(rel),
            CgroupVersion::V2 => self.root.join(rel),
        }
    }

    /// Whether the memory cgroup OOM-killed a process (`oom_kill` of `memory.oom_control` on v1,
    /// of `memory.events` on v2).
    pub fn oom_killed(&self) -> io::Result<bool> {
        let (file, key) = match self.version {
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
        };
        let text = fs::read_to_string(self.controller_dir("memory").join(file))?;
        Ok(keyed_value(&text, key).unwrap_or(0) > 0)
    }

    /// Whether a fork was refused by the pids limit (`max` of `pids.events`).
    pub fn pids_limit_hit(&self) -> io::Result<bool> {
        let text = fs::read_to_string(self.controller_dir("pids").join("pids.events"))?;
        Ok(keyed_value(&text, "max").unwrap_or(0) > 0)
    }

    /// Peak memory usage in bytes since creation or the last [`Self::reset_memory_peak`].
    pub fn memory_peak(&mut self) -> io::Result<u64> {
        parse_u64(&read_from_start(self.peak_file()?)?)
    }

    /// CPU time used by the cgroup since it was made, user and system, in µs
    /// (`cpuacct.usage`, in ns, on v1; `usage_usec` of `cpu.stat` on v2).
    pub fn cpu_usage_us(&mut self) -> io::Result<u64> {
        let version = self.version;
        let text = read_from_start(self.cpu_file()?)?;
        match version {
            CgroupVersion::V1 => Ok(parse_u64(&text)? / 1000),
            CgroupVersion::V2 => keyed_value(&text, "usage_usec")
                .ok_or_else(|| io::Error::other("cpu.stat has no usage_usec")),
        }
    }

    /// Resets the peak to the current usage.
    pub fn reset_memory_peak(&mut self) -> io::Result<()> {
        let command: &[u8] = match self.version {
            CgroupVersion::V1 => b"0",
            CgroupVersion::V2 => b"reset\n",
        };
        self.peak_file()?.write_all(command)
    }

    /// The open peak-memory counter (opened on first use).
    fn peak_file(&mut self) -> io::Result<&mut fs::File> {
        let file = match self.peak_file.take() {
            Some(file) => file,
            None => {
                let name = match self.version {
                    CgroupVersion::V1 => "memory.max_usage_in_bytes",
                    CgroupVersion::V2 => "memory.peak",
                };
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.controller_dir("memory").join(name))?
            }
        };
        Ok(self.peak_file.insert(file))
    }

    /// The open CPU-time counter (opened on first use).
    fn cpu_file(&mut self) -> io::Result<&mut fs::File> {
        let file = match self.cpu_file.take() {
            Some(file) => file,
            None => {
                let path = match self.version {
                    CgroupVersion::V1 => self.controller_dir("cpuacct").join("cpuacct.usage"),
                    CgroupVersion::V2 => self.controller_dir("cpu").join("cpu.stat"),
                };
                fs::File::open(path)?
            }
        };
        Ok(self.cpu_file.insert(file))
    }

    /// Every directory of this cgroup that still exists, across all hierarchies.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        let rel = self.path.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => {
                let dir = self.root.join(rel);
                if dir.is_dir() {
                    vec![dir]
                } else {
                    Vec::new()
                }
            }
            CgroupVersion::V1 => hierarchies(&self.root)
                .into_iter()
                .map(|h| h.join(rel))
                .filter(|d| d.is_dir())
                .collect(),
        }
    }

    /// Removes whatever directories of this cgroup are left (after libcontainer's delete), and
    /// returns those that could not be removed.
    pub fn remove_leftovers(&mut self) -> Vec<PathBuf> {
        self.peak_file = None;
        self.cpu_file = None;
        self.existing_dirs()
            .into_iter()
            .filter(|dir| fs::remove_dir(dir).is_err() && dir.exists())
            .collect()
    }
}

/// The mounted v1 hierarchies below `root` (real directories, not the `cpu -> cpu,cpuacct`
/// style aliases), including a hybrid host's `unified`.
pub fn hierarchies(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

/// The value of `key` in a `key value` per line file (`memory.events`, `pids.events`, ...).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// The whole text of an open counter file, read from its start with `pread` (one call for
/// these small files; kernfs makes the text again at offset 0, so each read is current).
fn read_from_start(file: &fs::File) -> io::Result<String> {
    use std::os::unix::fs::FileExt as _;

    let mut chunk = [0u8; 1024];
    let mut text = Vec::new();
    loop {
        let offset = u64::try_from(text.len()).unwrap_or(u64::MAX);
        let n = file.read_at(&mut chunk, offset)?;
        text.extend_from_slice(&chunk[..n]);
        if n < chunk.len() {
            break;
        }
    }
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_u64(text: &str) -> io::Result<u64> {
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The bundle's absolute `linux.cgroupsPath`; required, so cgroups never get
/// systemd-style default names we could not find again.
pub fn bundle_cgroups_path(bundle: &Path) -> Result<String, String> {
    let config = bundle.join("config.json");
    let text = fs::read(&config).map_err(|e| format!("reading {}: {e}", config.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("parsing {}: {e}", config.display()))?;
    match value["linux"]["cgroupsPath"].as_str() {
        Some(path) if path.starts_with('/') => Ok(path.to_owned()),
        _ => Err(format!(
            "{} has no absolute linux.cgroupsPath",
            config.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn keyed_value_finds_counters() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom, "oom_kill"), Some(3));
        assert_eq!(keyed_value(oom, "under_oom"), Some(0));
        assert_eq!(keyed_value("max 0\n", "max"), Some(0));
        assert_eq!(keyed_value("", "max"), None);
    }

    #[test]
    fn reads_v1_counters_from_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        let mem = root.path().join("memory/fnmesh/a");
        let pids = root.path().join("pids/fnmesh/a");
        fs::create_dir_all(&mem).unwrap();
        fs::create_dir_all(&pids).unwrap();
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\noom_kill 1\n",
        )
        .unwrap();
        fs::write(mem.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        fs::write(pids.join("pids.events"), "max 0\n").unwrap();
        let cpu = root.path().join("cpuacct/fnmesh/a");
        fs::create_dir_all(&cpu).unwrap();
        fs::write(cpu.join("cpuacct.usage"), "2500000\n").unwrap();

        let mut cg = SandboxCgroup::with_root(root.path(), "/fnmesh/a");
        assert!(cg.oom_killed().unwrap());
        assert!(!cg.pids_limit_hit().unwrap());
        assert_eq!(cg.memory_peak().unwrap(), 4096);
        assert_eq!(cg.cpu_usage_us().unwrap(), 2500, "ns to µs");
        // The files stay open and are read again from their start: each read is current.
        fs::write(mem.join("memory.max_usage_in_bytes"), "8192\n").unwrap();
        fs::write(cpu.join("cpuacct.usage"), "3500000\n").unwrap();
        assert_eq!(cg.memory_peak().unwrap(), 8192);
        assert_eq!(cg.cpu_usage_us().unwrap(), 3500);
        assert_eq!(cg.existing_dirs().len(), 3);
    }

    #[test]
    fn reads_v2_counters_from_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let dir = root.path().join("fnmesh/b");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 0\n",
        )
        .unwrap();
        fs::write(dir.join("pids.events"), "max 5\n").unwrap();
        fs::write(dir.join("memory.peak"), "8192\n").unwrap();
        fs::write(dir.join("cpu.stat"), "usage_usec 777\nuser_usec 700\n").unwrap();

        let mut cg = SandboxCgroup::with_root(root.path(), "/fnmesh/b");
        assert!(!cg.oom_killed().unwrap());
        assert!(cg.pids_limit_hit().unwrap());
        assert_eq!(cg.memory_peak().unwrap(), 8192);
        assert_eq!(cg.existing_dirs(), vec![dir]);
        assert_eq!(cg.cpu_usage_us().unwrap(), 777);
    }
}
