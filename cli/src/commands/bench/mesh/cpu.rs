//! CPU time of the processes a benchmark runs, read from `/proc`: how much CPU each part of
//! the mesh spends per invocation under load, which on a CPU-bound machine is what bounds
//! the throughput.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;

/// CPU seconds a process has used (user + system, all its threads), from `/proc/<pid>/stat`.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, ticks) = parse_stat(&stat)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks as f64 / hz)
}

/// The parent pid and utime + stime (clock ticks) of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Result<(u32, u64)> {
    // The command name may hold spaces and parentheses: fields are counted after its last
    // closing parenthesis. ppid is field 4 of the line (1 after the name), utime and stime
    // 14 and 15 (11 and 12 after it).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        Ok(fields
            .get(i)
            .context("a short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    Ok((u32::try_from(field(1)?)?, field(11)? + field(12)?))
}

/// Every process below `root` (children, their children, …), read from `/proc` now.
pub(super) fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Ok((ppid, _)) = parse_stat(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// What one part of the benchmark spent during a run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// The part: `gateway`, `node`, `sandboxes`, `nats-server`, `load generator`, …
    pub part: String,
    /// Share of one core over the run.
    pub cores: f64,
    /// CPU per succeeded invocation, in µs.
    pub per_invocation_us: f64,
}

/// CPU counters of the parts of a benchmark, read at the start of a run.
pub(super) struct Meter {
    parts: Vec<(String, Vec<(u32, f64)>)>,
    started: std::time::Instant,
}

impl Meter {
    /// Reads each part's processes now (a process that cannot be read is left out).
    pub(super) fn start(parts: Vec<(String, Vec<u32>)>) -> Self {
        let parts = parts
            .into_iter()
            .map(|(part, pids)| {
                let read = pids
                    .into_iter()
                    .filter_map(|pid| cpu_seconds(pid).ok().map(|s| (pid, s)))
                    .collect();
                (part, read)
            })
            .collect();
        Self {
            parts,
            started: std::time::Instant::now(),
        }
    }

    /// What each part used since [`Meter::start`], per `invocations` (a process gone since
    /// is left out), and the total as the last entry.
    pub(super) fn finish(self, invocations: u64) -> Vec<CpuUse> {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let n = invocations.max(1) as f64;
        let mut uses: Vec<CpuUse> = self
            .parts
            .into_iter()
            .map(|(part, pids)| {
                let seconds: f64 = pids
                    .into_iter()
                    .filter_map(|(pid, before)| cpu_seconds(pid).ok().map(|after| after - before))
                    .sum();
                CpuUse {
                    part,
                    cores: seconds / elapsed,
                    per_invocation_us: seconds * 1e6 / n,
                }
            })
            .collect();
        let total = CpuUse {
            part: "all of them".to_owned(),
            cores: uses.iter().map(|u| u.cores).sum(),
            per_invocation_us: uses.iter().map(|u| u.per_invocation_us).sum(),
        };
        uses.push(total);
        uses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4242 (tokio (rt) worker) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    350 120 0 0 20 0 8 0 12345 0 0";
        assert_eq!(parse_stat(line).unwrap(), (17, 470));
        assert!(parse_stat("4242 (short) S 17").is_err());
    }

    #[test]
    fn this_process_is_read_and_found_below_its_parent() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        let parent = std::os::unix::process::parent_id();
        assert!(descendants(parent).contains(&me));
    }
}
