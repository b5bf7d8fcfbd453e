//! Several supervisors behind one [`ContainerRuntime`].
//!
//! A supervisor serves one request at a time, so on a single one every create of a burst of
//! cold starts waits behind the others and behind each destroy (which kills, reaps and
//! removes cgroups, retrying while the kernel lets go of them). A pool spreads creates over
//! its supervisors — to the one with the fewest calls in flight — and sends each sandbox's
//! later calls (start, memory peak, destroy) to the one that created it. Each supervisor has
//! its own libcontainer state directory (`state`, `state-1`, …) and cleans up what a previous
//! instance left there when it starts; state directories of supervisors a previous run had
//! and this one does not are cleaned the same way, then removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::SupervisorClient;
use crate::sandbox::{ContainerRuntime, ExitReport, SandboxError, SandboxIo, SandboxSpec};

/// Supervisors a pool runs at most.
pub const MAX_SUPERVISORS: usize = 16;

struct Member {
    client: SupervisorClient,
    in_flight: AtomicUsize,
}

/// Supervisors sharing a node's sandboxes.
pub struct SupervisorPool {
    members: Vec<Member>,
    /// Which member created each live sandbox.
    owners: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for SupervisorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorPool")
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

/// The state directory of member `index` under `root`.
fn state_dir(root: &Path, index: usize) -> PathBuf {
    match index {
        0 => root.join("state"),
        i => root.join(format!("state-{i}")),
    }
}

/// Decrements a member's in-flight count when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SupervisorPool {
    /// Starts `count` (1..=[`MAX_SUPERVISORS`]) supervisors, `program args…`, with their state
    /// directories under `root`, and cleans the state directories of supervisors beyond them.
    pub async fn spawn(
        program: &Path,
        args: &[&str],
        root: &Path,
        count: usize,
    ) -> Result<Self, SandboxError> {
        let count = count.clamp(1, MAX_SUPERVISORS);
        let mut members = Vec::with_capacity(count);
        for index in 0..count {
            let client = SupervisorClient::spawn(program, args, &state_dir(root, index)).await?;
            members.push(Member {
                client,
                in_flight: AtomicUsize::new(0),
            });
        }
        // A previous run with more supervisors: what their state dirs hold is cleaned by a
        // supervisor started on each (it deletes leftovers before it is ready), then removed.
        for index in count..MAX_SUPERVISORS {
            let dir = state_dir(root, index);
            if !dir.exists() {
                continue;
            }
            let cleaner = SupervisorClient::spawn(program, args, &dir).await?;
            cleaner.shutdown().await;
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "removing an unused supervisor state dir");
            }
        }
        Ok(Self {
            members,
            owners: Mutex::new(HashMap::new()),
        })
    }

    /// The supervisors' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.client.pid()).collect()
    }

    /// Makes every supervisor destroy its sandboxes and exit, and waits for them.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.members.iter().map(|m| m.client.shutdown())).await;
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The member that created sandbox `id` (the first when unknown: it answers unknown ids).
    fn owner(&self, id: &str) -> &Member {
        let index = self.owners().get(id).copied().unwrap_or(0);
        &self.members[index]
    }
}

#[async_trait]
impl ContainerRuntime for SupervisorPool {
    async fn create(&self, spec: &SandboxSpec, io: SandboxIo) -> Result<(), SandboxError> {
        // `spawn` starts at least one.
        let index = self
            .members
            .iter()
            .enumerate()
            .min_by_key(|(_, m)| m.in_flight.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i);
        let member = &self.members[index];
        // Recorded before the call: a failed create is destroyed through the same member.
        self.owners().insert(spec.id.clone(), index);
        let _in_flight = InFlight::enter(&member.in_flight);
        member.client.create(spec, io).await
    }

    async fn start(&self, id: &str) -> Result<(), SandboxError> {
        let member = self.owner(id);
        let _in_flight = InFlight::enter(&member.in_flight);
        member.client.start(id).await
    }

    async fn memory_peak(&self, id: &str, reset: bool) -> Result<u64, SandboxError> {
        self.owner(id).client.memory_peak(id, reset).await
    }

    async fn cpu_usage_us(&self, id: &str) -> Result<u64, SandboxError> {
        self.owner(id).client.cpu_usage_us(id).await
    }

    async fn destroy(&self, id: &str) -> Result<ExitReport, SandboxError> {
        let index = self.owners().remove(id).unwrap_or(0);
        let member = &self.members[index];
        let _in_flight = InFlight::enter(&member.in_flight);
        member.client.destroy(id).await
    }
}
