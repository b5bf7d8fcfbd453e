//! Host user and group ids of sandboxes: a distinct block per live sandbox.
//!
//! An executor claims blocks of [`BLOCK`] host ids at start ([`IdAllocator::claim`]): from a
//! configured base up, skipping blocks that overlap an account in `/etc/passwd`/`/etc/group` or
//! a range in `/etc/subuid`/`/etc/subgid`, and blocks another executor on the host holds (an
//! `flock`ed file per block in [`DEFAULT_LOCK_DIR`], released when its process ends). Every live
//! sandbox owns one claimed block, `k`: the host ids `base + k * BLOCK .. base + (k + 1) * BLOCK`
//! (uids and the same gids). The sandbox's process always runs as host uid/gid
//! `base + k * BLOCK + SANDBOX_UID`:
//!
//! - with a user namespace ([`SandboxUser::Mapped`]), container ids `0..BLOCK` map onto the
//!   block (one `uidMappings` entry, which libcontainer writes itself) and the process runs as
//!   [`SANDBOX_UID`] (65534, `nobody`) inside; container root exists only for libcontainer's
//!   setup and is an unprivileged host uid;
//! - without one ([`SandboxUser::Host`]) the process is given that same host uid directly.
//!
//! So no two live sandboxes share a uid, and no host account (`nobody` included) is any
//! sandbox's: a process of one sandbox, or a host daemon running as `nobody`, cannot read
//! another sandbox's `/proc/<pid>/environ` or signal it. A slot goes back to the allocator only
//! when its [`IdLease`] drops, which the instance arranges after the container was destroyed
//! (its processes killed and reaped); a sandbox whose destroy failed keeps its slot for good
//! ([`IdLease::quarantine`]). Freed slots are reused last (FIFO).
//!
//! [`IdMode`] chooses between the two: a user namespace needs every mount source (rootfs,
//! bootstraps, code) to be reachable by the block's root — libcontainer mounts from inside the
//! namespace, where host root's files give no privilege — so [`IdMode::Auto`] uses one when
//! those paths are searchable by others and the kernel allows user namespaces, else the host
//! uid directly.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Host ids each sandbox owns (a full 16-bit id space, as container engines map).
pub const BLOCK: u32 = 65_536;

/// The uid (and gid) the process runs as inside a user namespace.
pub const SANDBOX_UID: u32 = 65_534;

/// Default first host id: `0x7000_0000`, above systemd's container range
/// (`0x0008_0000..0x7000_0000`, used by `systemd-nspawn --private-users=pick`) and below its
/// "foreign" range (`0x7FFE_0000`).
pub const DEFAULT_BASE: u32 = 0x7000_0000;

/// Highest host id a block may reach (ids are treated as signed by too many tools above).
const MAX_ID: u64 = 0x7FFF_FFFF;

/// Why sandbox ids could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The settings are malformed.
    #[error("sandbox ids from {base}: {message}")]
    Range {
        /// First host id asked for.
        base: u32,
        /// What is wrong.
        message: String,
    },
    /// Not enough blocks are free of host accounts and other nodes' claims.
    #[error(
        "sandbox ids: only {claimed} of {wanted} blocks of {BLOCK} ids from {base} up to \
         0x7fffffff are free of host accounts, /etc/sub[ug]id ranges and other nodes"
    )]
    Exhausted {
        /// First host id asked for.
        base: u32,
        /// Blocks claimed.
        claimed: u32,
        /// Blocks wanted.
        wanted: u32,
    },
    /// A claim's lock file could not be used.
    #[error("sandbox id lock {path}: {source}")]
    Lock {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// What to claim: `slots` blocks of host ids from `base` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaim {
    /// First host id to consider (a multiple of nothing in particular; blocks start here).
    pub base: u32,
    /// Blocks wanted: the most sandboxes alive at once (those being destroyed included).
    pub slots: u32,
    /// Host-wide directory of claim locks, one file per block (`flock`ed while an executor
    /// holds the block, released when its process ends), so nodes sharing a host never share
    /// ids. `None`: no host-wide claim (a single node per host, or tests of the fake runtime).
    pub lock_dir: Option<PathBuf>,
    /// Where `passwd`, `group`, `subuid` and `subgid` are (normally `/etc`): blocks that
    /// overlap an account or a subordinate range there are skipped.
    pub etc_dir: PathBuf,
}

/// Default host-wide lock directory.
pub const DEFAULT_LOCK_DIR: &str = "/run/fnmesh/sandbox-ids";

/// Host ids in use by accounts (`passwd`, `group`) or delegated (`subuid`, `subgid`), as
/// `(first, count)`.
fn taken_ids(etc: &Path) -> Vec<(u64, u64)> {
    let mut taken = Vec::new();
    for (name, subordinate) in [
        ("passwd", false),
        ("group", false),
        ("subuid", true),
        ("subgid", true),
    ] {
        let Ok(text) = fs::read_to_string(etc.join(name)) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            let entry = if subordinate {
                match (fields.get(1), fields.get(2)) {
                    (Some(first), Some(count)) => first.parse().ok().zip(count.parse().ok()),
                    _ => None,
                }
            } else {
                fields
                    .get(2)
                    .and_then(|id| id.parse().ok())
                    .map(|id| (id, 1))
            };
            taken.extend(entry);
        }
    }
    taken
}

/// How sandboxes get their distinct ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdMode {
    /// A user namespace when the kernel allows them and the sandbox's mount sources are
    /// reachable from one; the host uid directly otherwise.
    #[default]
    Auto,
    /// Always a user namespace (a sandbox whose mounts it cannot reach fails to start).
    UserNamespace,
    /// Never a user namespace: the process runs as its slot's host uid.
    HostIds,
}

impl IdMode {
    /// The names [`IdMode`] parses from.
    pub const NAMES: &'static str = "auto, userns, host";
}

impl std::str::FromStr for IdMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "userns" => Ok(Self::UserNamespace),
            "host" => Ok(Self::HostIds),
            other => Err(format!(
                "unknown sandbox user mode {other:?} (expected one of: {})",
                Self::NAMES
            )),
        }
    }
}

/// The user a sandbox's process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxUser {
    /// A new user namespace mapping container ids `0..BLOCK` to host ids from `host_base`;
    /// the process runs as [`SANDBOX_UID`] inside.
    Mapped {
        /// First host id of the block.
        host_base: u32,
    },
    /// No user namespace: the process runs as this host uid and gid.
    Host {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
    },
}

impl SandboxUser {
    /// The host uid (and gid) the process runs as.
    pub fn host_uid(&self) -> u32 {
        match *self {
            Self::Mapped { host_base } => host_base + SANDBOX_UID,
            Self::Host { uid, .. } => uid,
        }
    }
}

/// Hands out the blocks an executor claimed. See the module docs.
#[derive(Debug)]
pub struct IdAllocator {
    base: u32,
    /// Claimed block indices (block `k` starts at `base + k * BLOCK`).
    claimed: Vec<u32>,
    free: Mutex<VecDeque<u32>>,
    /// Held for the allocator's life: other nodes skip these blocks.
    _locks: Vec<Flock<fs::File>>,
}

impl IdAllocator {
    /// Claims `claim.slots` blocks from `claim.base` up, skipping blocks used by host accounts,
    /// subordinate id ranges or (through the lock dir) other executors on this host.
    pub fn claim(claim: &IdClaim) -> Result<Arc<Self>, UsersError> {
        let bad = |message: &str| UsersError::Range {
            base: claim.base,
            message: message.to_owned(),
        };
        if claim.slots == 0 {
            return Err(bad("needs at least one block"));
        }
        if u64::from(claim.base) < u64::from(BLOCK) {
            return Err(bad(
                "must start above 65535 (host system and user accounts)",
            ));
        }
        let blocks = (MAX_ID + 1).saturating_sub(u64::from(claim.base)) / u64::from(BLOCK);
        let blocks = u32::try_from(blocks).unwrap_or(u32::MAX);
        if let Some(dir) = &claim.lock_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| UsersError::Lock {
                    path: dir.clone(),
                    source,
                })?;
        }
        let taken = taken_ids(&claim.etc_dir);
        let (mut claimed, mut locks) = (Vec::new(), Vec::new());
        for k in 0..blocks {
            if claimed.len() as u32 == claim.slots {
                break;
            }
            let first = u64::from(claim.base) + u64::from(k) * u64::from(BLOCK);
            let end = first + u64::from(BLOCK);
            if taken.iter().any(|&(t, n)| t < end && t + n > first) {
                continue;
            }
            if let Some(dir) = &claim.lock_dir {
                let path = dir.join(format!("{first}.lock"));
                let file = fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| UsersError::Lock {
                        path: path.clone(),
                        source,
                    })?;
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => locks.push(lock),
                    Err((_, Errno::EWOULDBLOCK)) => continue, // another node's
                    Err((_, errno)) => {
                        return Err(UsersError::Lock {
                            path,
                            source: errno.into(),
                        })
                    }
                }
            }
            claimed.push(k);
        }
        if (claimed.len() as u32) < claim.slots {
            return Err(UsersError::Exhausted {
                base: claim.base,
                claimed: claimed.len() as u32,
                wanted: claim.slots,
            });
        }
        Ok(Arc::new(Self {
            base: claim.base,
            free: Mutex::new(claimed.iter().copied().collect()),
            claimed,
            _locks: locks,
        }))
    }

    /// How many blocks this allocator holds.
    pub fn slots(&self) -> usize {
        self.claimed.len()
    }

    /// `(first, one past the last)` host id of the claimed blocks.
    pub fn span(&self) -> (u64, u64) {
        let at = |k: u32| u64::from(self.base) + u64::from(k) * u64::from(BLOCK);
        let first = self.claimed.first().copied().unwrap_or(0);
        let last = self.claimed.last().copied().unwrap_or(0);
        (at(first), at(last) + u64::from(BLOCK))
    }

    fn free(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        // Push and pop never panic midway: a poisoned queue is still consistent.
        self.free
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Free blocks.
    pub fn available(&self) -> usize {
        self.free().len()
    }

    /// The block freed longest ago, or `None` when every block is in use.
    pub fn allocate(self: &Arc<Self>) -> Option<IdLease> {
        let slot = self.free().pop_front()?;
        Some(IdLease {
            allocator: Arc::clone(self),
            slot,
            quarantined: false,
        })
    }
}

/// One slot, held for a sandbox's whole life; freed on drop.
#[derive(Debug)]
pub struct IdLease {
    allocator: Arc<IdAllocator>,
    slot: u32,
    quarantined: bool,
}

impl IdLease {
    /// The block's index from the configured base.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// First host id of the block.
    pub fn host_base(&self) -> u32 {
        self.allocator.base + self.slot * BLOCK
    }

    /// The user of a sandbox in this slot, with or without a user namespace.
    pub fn user(&self, userns: bool) -> SandboxUser {
        if userns {
            SandboxUser::Mapped {
                host_base: self.host_base(),
            }
        } else {
            let id = self.host_base() + SANDBOX_UID;
            SandboxUser::Host { uid: id, gid: id }
        }
    }

    /// Never give this slot back: its sandbox may still have processes running as its ids.
    pub fn quarantine(&mut self) {
        self.quarantined = true;
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        if self.quarantined {
            tracing::warn!(
                sandbox.slot = self.slot,
                "sandbox id slot quarantined: its sandbox was not destroyed cleanly"
            );
            return;
        }
        self.allocator.free().push_back(self.slot);
    }
}

/// Whether a process with no relation to `path`'s owners can reach it: every directory from `/`
/// down to (the canonical) `path` is searchable by others.
pub fn reachable_by_others(path: &Path) -> bool {
    let Ok(path) = fs::canonicalize(path) else {
        return false;
    };
    path.ancestors().all(|dir| {
        fs::metadata(dir).is_ok_and(|m| !m.is_dir() || m.permissions().mode() & 0o001 != 0)
    })
}

/// Whether the kernel allows new user namespaces at all (`user.max_user_namespaces` > 0).
pub fn kernel_allows_userns() -> bool {
    fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn claim(slots: u32) -> IdClaim {
        IdClaim {
            base: DEFAULT_BASE,
            slots,
            lock_dir: None,
            etc_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn live_leases_never_share_a_slot_and_freed_slots_are_reused_last() {
        let ids = IdAllocator::claim(&claim(3)).unwrap();
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        let c = ids.allocate().unwrap();
        let uids: Vec<u32> = [&a, &b, &c]
            .iter()
            .map(|l| l.user(false).host_uid())
            .collect();
        assert_eq!(
            uids,
            [
                DEFAULT_BASE + SANDBOX_UID,
                DEFAULT_BASE + BLOCK + SANDBOX_UID,
                DEFAULT_BASE + 2 * BLOCK + SANDBOX_UID
            ]
        );
        assert!(ids.allocate().is_none(), "every slot is live");
        let freed = b.slot();
        drop(b);
        let d = ids.allocate().unwrap();
        assert_eq!(d.slot(), freed);
        drop(a);
        drop(d);
        // Slot 0 was freed first, so it comes back before slot 1.
        assert_eq!(ids.allocate().unwrap().slot(), 0);
        drop(c);
    }

    #[test]
    fn the_process_has_the_same_host_uid_with_or_without_a_user_namespace() {
        let ids = IdAllocator::claim(&claim(2)).unwrap();
        let _first = ids.allocate().unwrap();
        let lease = ids.allocate().unwrap();
        let mapped = lease.user(true);
        assert_eq!(
            mapped,
            SandboxUser::Mapped {
                host_base: DEFAULT_BASE + BLOCK
            }
        );
        assert_eq!(mapped.host_uid(), lease.user(false).host_uid());
        assert_ne!(mapped.host_uid(), 65_534);
    }

    #[test]
    fn a_quarantined_slot_is_never_handed_out_again() {
        let ids = IdAllocator::claim(&claim(1)).unwrap();
        let mut lease = ids.allocate().unwrap();
        lease.quarantine();
        drop(lease);
        assert_eq!(ids.available(), 0);
        assert!(ids.allocate().is_none());
    }

    #[test]
    fn claims_must_be_well_formed_and_fit_below_the_signed_limit() {
        assert!(IdAllocator::claim(&claim(0)).is_err());
        let low = IdClaim {
            base: 1000,
            ..claim(1)
        };
        assert!(IdAllocator::claim(&low).is_err());
        let high = IdClaim {
            base: 0x7FFF_0000,
            ..claim(2)
        };
        assert!(matches!(
            IdAllocator::claim(&high),
            Err(UsersError::Exhausted {
                claimed: 1,
                wanted: 2,
                ..
            })
        ));
        let ids = IdAllocator::claim(&claim(128)).unwrap();
        assert_eq!(ids.slots(), 128);
        assert_eq!(
            ids.span(),
            (
                u64::from(DEFAULT_BASE),
                u64::from(DEFAULT_BASE) + 128 * u64::from(BLOCK)
            )
        );
    }

    #[test]
    fn blocks_used_by_host_accounts_or_subordinate_ids_are_skipped() {
        let etc = tempfile::tempdir().unwrap();
        fs::write(
            etc.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        // Block 0 is 200000..265536: a subordinate range ending inside it, and an account
        // inside block 2.
        fs::write(etc.path().join("subuid"), "alice:100000:165536\n").unwrap();
        fs::write(etc.path().join("group"), "root:x:0:\nodd:x:340000:\n").unwrap();
        let ids = IdAllocator::claim(&IdClaim {
            base: 200_000,
            slots: 3,
            lock_dir: None,
            etc_dir: etc.path().to_path_buf(),
        })
        .unwrap();
        let leases: Vec<IdLease> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        let slots: Vec<u32> = leases.iter().map(IdLease::slot).collect();
        assert_eq!(slots, [1, 3, 4]);
    }

    #[test]
    fn executors_on_one_host_claim_disjoint_blocks_until_they_end() {
        let locks = tempfile::tempdir().unwrap();
        let shared = IdClaim {
            lock_dir: Some(locks.path().join("ids")),
            ..claim(2)
        };
        let first = IdAllocator::claim(&shared).unwrap();
        let second = IdAllocator::claim(&shared).unwrap();
        assert_eq!(
            first.span().1,
            second.span().0,
            "{:?} {:?}",
            first.span(),
            second.span()
        );
        let mode = fs::metadata(locks.path().join("ids"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(first);
        // The first one's blocks are free again (its locks went with it).
        let third = IdAllocator::claim(&shared).unwrap();
        assert_eq!(third.span().0, u64::from(DEFAULT_BASE));
        drop(second);
    }

    #[test]
    fn modes_parse_from_their_names_and_errors_list_them() {
        assert_eq!("auto".parse::<IdMode>(), Ok(IdMode::Auto));
        assert_eq!(" UserNS ".parse::<IdMode>(), Ok(IdMode::UserNamespace));
        assert_eq!("host".parse::<IdMode>(), Ok(IdMode::HostIds));
        let err = "root".parse::<IdMode>().unwrap_err();
        assert!(err.contains("auto, userns, host"), "{err}");
    }

    #[test]
    fn reachability_needs_search_permission_on_every_ancestor() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open/code");
        fs::create_dir_all(&open).unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o711)).unwrap();
        fs::set_permissions(base.path().join("open"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let tmp_ok = reachable_by_others(Path::new("/tmp"));
        assert_eq!(reachable_by_others(&open), tmp_ok);
        fs::set_permissions(base.path().join("open"), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by_others(&open));
        assert!(!reachable_by_others(&base.path().join("missing")));
    }
}
