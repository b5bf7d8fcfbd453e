//! The hardened OCI runtime spec (`config.json`) of a sandbox.
//!
//! [`write_bundle`] turns a [`BundleRequest`] into a `config.json` that libcontainer 0.7 and
//! `crun run` both accept: a read-only root built from the shared skeleton (see `rootfs`), host
//! `/usr` and a few `/etc` files bound read-only, the function code at `/var/task`, a size-capped
//! `/tmp`; new pid, network, ipc, uts and mount namespaces; no capabilities, `noNewPrivileges`,
//! a non-root user, rlimits, cgroup limits (memory without swap, pids, cpu, devices) and the
//! seccomp allowlist of `seccomp`. `/sys` is not mounted.
//!
//! The user is the sandbox's own (see `users`): a new user namespace mapping container ids
//! `0..65536` onto the sandbox's block of host ids, the process running as 65534 inside, or
//! (without one) the block's host uid directly.
//!
//! The bundle holds no secrets (they reach the bootstrap over its protocol pipe), and is still
//! private: the directory is created `0700` and `config.json` `0600`, both by the `mkdir` and
//! `open` that make them, so there is no moment when either is readable by others.
//!
//! `process.oomScoreAdj` is deliberately absent: libcontainer would also apply it to the process
//! that creates the container (the supervisor).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::rootfs::ETC_FILES;
use super::seccomp::{self, MaskedEqOrder};
use super::users::{SandboxUser, BLOCK, SANDBOX_UID};
use super::SandboxError;

/// A block I/O throttle on one device: `rate` bytes per second, read and write each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskThrottle {
    /// The device's major number (a whole disk, not a partition).
    pub major: u64,
    /// Its minor number.
    pub minor: u64,
    /// Bytes per second.
    pub rate: u64,
}

/// The whole disk (`major`, `minor`) holding `path`, for a block I/O throttle; `None` when
/// `path` is not on a block device (tmpfs, overlay, a btrfs subvolume: major 0). A partition
/// is throttled through its disk (the kernel throttles whole devices).
pub fn block_device_of(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.join("partition").exists() {
        return Some((major, minor));
    }
    let parent = std::fs::read_to_string(sys.join("..").join("dev")).ok()?;
    let (major, minor) = parent.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

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
    /// CPU weight against other sandboxes (`cpu.shares`; `None`: the default).
    pub cpu_shares: Option<u32>,
    /// Block I/O throttle (read and write each), when the function sets one and the node's
    /// sandboxes live on a block device.
    pub disk_io: Option<DiskThrottle>,
    /// Size of the `/tmp` tmpfs.
    pub tmp_mb: u32,
    /// Absolute cgroup path, e.g. `/fnmesh/<node>/<sandbox id>`.
    pub cgroup_path: String,
    /// The user the process runs as: in a user namespace of its own, or a host uid.
    pub user: SandboxUser,
    /// What the root is: the shared skeleton with the host's `/usr`, or an image's own tree.
    pub root: RootKind,
}

/// The kind of root a sandbox has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootKind {
    /// The shared skeleton (`rootfs::ensure_rootfs`): the host's `/usr` and a few `/etc` files
    /// bound read-only, the function's code at `/var/task`.
    #[default]
    Skeleton,
    /// An image's unpacked tree (`fnmesh_image::tree`): nothing of the host's but the
    /// bootstrap at `/var/runtime`; no `/var/task` (the image is the code). In a user
    /// namespace the process runs as the image's `uid`/`gid` (never 0: a root image user is
    /// [`SANDBOX_UID`]); as a host uid it runs as that uid, like every sandbox.
    Image {
        /// The image's user inside the sandbox's user namespace.
        uid: u32,
        /// Its group.
        gid: u32,
    },
}

/// Hostname inside every sandbox.
pub const HOSTNAME: &str = "fnmesh";

/// `RLIMIT_FSIZE`: the largest file a sandbox may write.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Size of the `/dev` tmpfs (device nodes only).
const DEV_SIZE: &str = "size=65536k";

/// Size of `/dev/shm`.
const SHM_SIZE: &str = "size=65536k";

/// CFS period the CPU quota is expressed in, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Mode of a bundle directory.
pub const BUNDLE_DIR_MODE: u32 = 0o700;
/// Mode of the files in it.
pub const BUNDLE_FILE_MODE: u32 = 0o600;

/// Writes `<bundle_dir>/config.json` for `req`, creating `bundle_dir` (and missing parents)
/// with mode `0700` and the file with mode `0600`.
///
/// The file is written to a temporary name and renamed, so a reader never sees half of it.
/// The seccomp profile is laid out for libcontainer; see [`write_bundle_for`] for runc/crun.
pub fn write_bundle(bundle_dir: &Path, req: &BundleRequest) -> Result<(), SandboxError> {
    write_bundle_for(bundle_dir, req, MaskedEqOrder::Libcontainer)
}

/// [`write_bundle`] for a runtime that reads seccomp masked comparisons in `order`
/// ([`MaskedEqOrder::Oci`] for `crun run`/`runc run`: libcontainer 0.7 swaps mask and datum,
/// and with the wrong order the `clone` rule allows namespace flags).
pub fn write_bundle_for(
    bundle_dir: &Path,
    req: &BundleRequest,
    order: MaskedEqOrder,
) -> Result<(), SandboxError> {
    let config = config_json_for(req, order)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(BUNDLE_DIR_MODE)
        .create(bundle_dir)?;
    // An existing directory keeps its mode through `create`: tighten it before writing.
    if fs::metadata(bundle_dir)?.permissions().mode() & 0o7777 != BUNDLE_DIR_MODE {
        fs::set_permissions(bundle_dir, fs::Permissions::from_mode(BUNDLE_DIR_MODE))?;
    }
    let text = serde_json::to_vec_pretty(&config).map_err(io::Error::other)?;
    let tmp = bundle_dir.join(".config.json.tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BUNDLE_FILE_MODE)
            .open(&tmp)?;
        file.write_all(&text)?;
    }
    fs::rename(&tmp, bundle_dir.join("config.json"))?;
    Ok(())
}

fn invalid(message: String) -> SandboxError {
    SandboxError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

fn check(req: &BundleRequest) -> Result<(), SandboxError> {
    for (what, path) in [
        ("rootfs", &req.rootfs),
        ("code_dir", &req.code_dir),
        ("runtime_dir", &req.runtime_dir),
    ] {
        if !path.is_absolute() {
            return Err(invalid(format!(
                "bundle {what} {} is not absolute",
                path.display()
            )));
        }
    }
    if !req.cgroup_path.starts_with('/') || req.cgroup_path.contains("..") {
        return Err(invalid(format!(
            "bundle cgroup path {:?} must be absolute without \"..\"",
            req.cgroup_path
        )));
    }
    if req.args.first().is_none_or(|a| !a.starts_with('/')) {
        return Err(invalid(format!(
            "bundle args {:?} must start with an absolute path",
            req.args
        )));
    }
    match req.user {
        SandboxUser::Host { uid, gid } if uid == 0 || gid == 0 => {
            return Err(invalid("bundle user must not be root".to_owned()));
        }
        SandboxUser::Mapped { host_base }
            if host_base == 0 || host_base.checked_add(BLOCK - 1).is_none() =>
        {
            return Err(invalid(format!(
                "bundle user namespace must map onto host ids above 0 (base {host_base})"
            )));
        }
        _ => {}
    }
    if let RootKind::Image { uid, gid } = req.root {
        if uid == 0 || gid == 0 || uid >= BLOCK || gid >= BLOCK {
            return Err(invalid(format!(
                "bundle image user {uid}:{gid} must be neither root nor outside 1..{BLOCK}"
            )));
        }
    }
    if req.memory_mb == 0 || req.pids_limit == 0 || req.tmp_mb == 0 {
        return Err(invalid(
            "bundle memory_mb, pids_limit and tmp_mb must be positive".to_owned(),
        ));
    }
    Ok(())
}

/// The `config.json` document for `req`, for libcontainer.
pub fn config_json(req: &BundleRequest) -> Result<Value, SandboxError> {
    config_json_for(req, MaskedEqOrder::Libcontainer)
}

/// The `config.json` document for `req`, for a runtime reading masked comparisons in `order`.
pub fn config_json_for(req: &BundleRequest, order: MaskedEqOrder) -> Result<Value, SandboxError> {
    check(req)?;
    let memory_bytes = u64::from(req.memory_mb) * 1024 * 1024;
    let mut resources = json!({
        "devices": device_rules(),
        "memory": { "limit": memory_bytes, "swap": memory_bytes },
        "pids": { "limit": req.pids_limit },
    });
    if req.cpu_millis > 0 {
        resources["cpu"] = json!({
            "quota": u64::from(req.cpu_millis) * CPU_PERIOD_US / 1000,
            "period": CPU_PERIOD_US,
        });
    }
    if let Some(shares) = req.cpu_shares {
        resources["cpu"]["shares"] = json!(shares);
    }
    if let Some(io) = req.disk_io {
        let device = json!([{ "major": io.major, "minor": io.minor, "rate": io.rate }]);
        resources["blockIO"] = json!({
            "throttleReadBpsDevice": device,
            "throttleWriteBpsDevice": device,
        });
    }

    let (uid, gid) = match (req.user, req.root) {
        (SandboxUser::Mapped { .. }, RootKind::Image { uid, gid }) => (uid, gid),
        (SandboxUser::Mapped { .. }, RootKind::Skeleton) => (SANDBOX_UID, SANDBOX_UID),
        (SandboxUser::Host { uid, gid }, _) => (uid, gid),
    };
    let mut namespaces = vec![
        json!({ "type": "pid" }),
        json!({ "type": "network" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
    ];
    let mut linux = json!({});
    if let SandboxUser::Mapped { host_base } = req.user {
        // First, so every other namespace is owned by it.
        namespaces.insert(0, json!({ "type": "user" }));
        let mapping = json!([{ "containerID": 0, "hostID": host_base, "size": BLOCK }]);
        linux["uidMappings"] = mapping.clone();
        linux["gidMappings"] = mapping;
    }
    linux["namespaces"] = Value::Array(namespaces);

    let mut config = json!({
        "ociVersion": "1.0.2",
        "root": { "path": req.rootfs, "readonly": true },
        "hostname": HOSTNAME,
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid, "additionalGids": [gid] },
            "args": req.args,
            "env": req.env,
            "cwd": req.cwd,
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
            },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 },
                { "type": "RLIMIT_CORE", "hard": 0, "soft": 0 },
                { "type": "RLIMIT_FSIZE", "hard": MAX_FILE_BYTES, "soft": MAX_FILE_BYTES },
            ],
        },
        "mounts": mounts(req),
        "linux": {
            "cgroupsPath": req.cgroup_path,
            "resources": resources,
            "devices": devices(),
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
            "seccomp": seccomp::profile_for(order),
        },
    });
    if let (Value::Object(target), Value::Object(extra)) = (&mut config["linux"], linux) {
        target.extend(extra);
    }
    Ok(config)
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": destination, "type": kind, "source": source, "options": options })
}

fn mounts(req: &BundleRequest) -> Vec<Value> {
    let tmp_size = format!("size={}m", req.tmp_mb);
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", DEV_SIZE],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", SHM_SIZE],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
    ];
    if req.root == RootKind::Skeleton {
        host_mounts(req, &mut mounts);
    }
    mounts.push(json!({
        "destination": "/var/runtime",
        "type": "bind",
        "source": req.runtime_dir,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }));
    mounts.push(json!({
        "destination": "/tmp",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", tmp_size],
    }));
    mounts
}

/// What a skeleton root gets of the host's: `/usr`, a few `/etc` files, and the code.
fn host_mounts(req: &BundleRequest, mounts: &mut Vec<Value>) {
    mounts.push(mount(
        "/usr",
        "bind",
        "/usr",
        &["rbind", "ro", "nosuid", "nodev"],
    ));
    for file in ETC_FILES {
        let host = Path::new("/etc").join(file);
        if host.exists() {
            mounts.push(json!({
                "destination": host,
                "type": "bind",
                "source": host,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
            }));
        }
    }
    mounts.push(json!({
        "destination": "/var/task",
        "type": "bind",
        "source": req.code_dir,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }));
}

/// `(path, major, minor)` of the character devices created in `/dev`.
const DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn devices() -> Vec<Value> {
    DEVICES
        .iter()
        .map(|(path, major, minor)| {
            json!({
                "path": path, "type": "c", "major": major, "minor": minor,
                "fileMode": 0o666, "uid": 0, "gid": 0,
            })
        })
        .collect()
}

/// The device cgroup: deny everything, then allow the standard devices, `/dev/ptmx` and the
/// pseudo-terminals of the private devpts.
fn device_rules() -> Vec<Value> {
    let mut rules = vec![json!({ "allow": false, "access": "rwm" })];
    for (_, major, minor) in DEVICES.iter().chain(&[("/dev/ptmx", 5, 2)]) {
        rules.push(json!({
            "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm",
        }));
    }
    rules.push(json!({ "allow": true, "type": "c", "major": 136, "access": "rwm" }));
    rules
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};

    use super::*;

    fn request() -> BundleRequest {
        BundleRequest {
            sandbox_id: "sb-1".into(),
            root: RootKind::Skeleton,
            rootfs: "/var/lib/fnmesh/rootfs".into(),
            code_dir: "/var/lib/fnmesh/code/f1".into(),
            runtime_dir: "/var/lib/fnmesh/runtimes".into(),
            args: vec!["/usr/bin/python3".into(), "-c".into(), "print(1)".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "FOO=bar".into()],
            cwd: "/var/task".into(),
            memory_mb: 128,
            pids_limit: 64,
            cpu_millis: 500,
            cpu_shares: None,
            disk_io: None,
            tmp_mb: 32,
            cgroup_path: "/fnmesh/node-a/sb-1".into(),
            user: SandboxUser::Host {
                uid: 300_000,
                gid: 300_000,
            },
        }
    }

    const HOST_BASE: u32 = 0x7001_0000;

    fn mapped() -> BundleRequest {
        BundleRequest {
            user: SandboxUser::Mapped {
                host_base: HOST_BASE,
            },
            ..request()
        }
    }

    fn written_for(req: &BundleRequest) -> (Value, Spec) {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(&dir.path().join("b"), req).unwrap();
        let text = fs::read_to_string(dir.path().join("b/config.json")).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let spec: Spec = serde_json::from_str(&text).unwrap();
        (value, spec)
    }

    fn written() -> (Value, Spec) {
        written_for(&request())
    }

    fn namespace_kinds(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    fn mount_of<'a>(v: &'a Value, dest: &str) -> Option<&'a Value> {
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
    }

    #[test]
    fn namespaces_are_new_except_user_and_cgroup() {
        let (v, spec) = written();
        let kinds = namespace_kinds(&spec);
        for k in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing");
        }
        assert!(!kinds.contains(&LinuxNamespaceType::User));
        assert!(v["linux"].get("uidMappings").is_none());
        assert_eq!(v["process"]["user"]["uid"], 300_000);
        assert_eq!(v["process"]["user"]["gid"], 300_000);
        assert_eq!(spec.hostname().as_deref(), Some(HOSTNAME));
    }

    #[test]
    fn a_mapped_user_gets_its_own_user_namespace_over_its_block() {
        let (v, spec) = written_for(&mapped());
        let kinds = namespace_kinds(&spec);
        assert_eq!(kinds[0], LinuxNamespaceType::User, "{kinds:?}");
        assert_eq!(kinds.len(), 6);
        let mapping = json!([{ "containerID": 0, "hostID": HOST_BASE, "size": 65_536 }]);
        assert_eq!(v["linux"]["uidMappings"], mapping);
        assert_eq!(v["linux"]["gidMappings"], mapping);
        // The process is `nobody` inside, i.e. host id HOST_BASE + 65534.
        assert_eq!(v["process"]["user"]["uid"], 65_534);
        assert_eq!(v["process"]["user"]["additionalGids"], json!([65_534]));
        // The rest of the spec is untouched.
        assert_eq!(v["linux"]["cgroupsPath"], "/fnmesh/node-a/sb-1");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let mappings = spec
            .linux()
            .as_ref()
            .unwrap()
            .uid_mappings()
            .clone()
            .unwrap();
        assert_eq!(mappings[0].host_id(), HOST_BASE);
    }

    #[test]
    fn bundles_are_private_from_creation() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundles/sb-1");
        write_bundle(&bundle, &request()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&bundle), 0o700);
        assert_eq!(mode(&dir.path().join("bundles")), 0o700);
        assert_eq!(mode(&bundle.join("config.json")), 0o600);
        let names: Vec<_> = fs::read_dir(&bundle)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.json"], "no temporary file left");

        // Rewriting a bundle whose directory was loosened tightens it, and a stale temporary
        // file (e.g. of a crash) is replaced rather than written through.
        fs::set_permissions(&bundle, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(bundle.join(".config.json.tmp"), "stale").unwrap();
        fs::set_permissions(
            bundle.join(".config.json.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_bundle(&bundle, &request()).unwrap();
        assert_eq!(mode(&bundle), 0o700);
        assert_eq!(mode(&bundle.join("config.json")), 0o600);
        assert!(!bundle.join(".config.json.tmp").exists());
    }

    #[test]
    fn process_is_unprivileged() {
        let (v, spec) = written();
        let p = &v["process"];
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(p["capabilities"][set], json!([]), "{set}");
        }
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], false);
        assert_eq!(p["user"]["uid"], 300_000);
        assert_eq!(p["user"]["additionalGids"], json!([300_000]));
        assert!(p.get("oomScoreAdj").is_none());
        assert!(!v.to_string().contains("oomScoreAdj"));
        let proc = spec.process().as_ref().unwrap();
        assert_eq!(proc.args().as_ref().unwrap()[0], "/usr/bin/python3");
        assert_eq!(proc.cwd(), Path::new("/var/task"));
        let rlimits: Vec<String> = p["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(rlimits, ["RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_FSIZE"]);
    }

    #[test]
    fn root_is_readonly_and_mounts_are_hardened() {
        let (v, _) = written();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["root"]["path"], "/var/lib/fnmesh/rootfs");
        let usr = mount_of(&v, "/usr").unwrap();
        for opt in ["rbind", "ro", "nosuid", "nodev"] {
            assert!(usr["options"].as_array().unwrap().contains(&json!(opt)));
        }
        let task = mount_of(&v, "/var/task").unwrap();
        assert_eq!(task["source"], "/var/lib/fnmesh/code/f1");
        assert!(task["options"].as_array().unwrap().contains(&json!("ro")));
        assert_eq!(
            mount_of(&v, "/var/runtime").unwrap()["source"],
            "/var/lib/fnmesh/runtimes"
        );
        let tmp = mount_of(&v, "/tmp").unwrap();
        assert_eq!(tmp["type"], "tmpfs");
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=32m")));
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&json!("mode=1777")));
        for dest in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
            assert!(mount_of(&v, dest).is_some(), "{dest}");
        }
        assert!(mount_of(&v, "/sys").is_none());
        assert!(mount_of(&v, "/etc/passwd").is_some());
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        assert!(masked.contains(&json!("/proc/kcore")));
        let ro = v["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(ro.contains(&json!("/proc/sys")));
    }

    #[test]
    fn cpu_shares_and_the_disk_throttle_are_set_only_when_asked() {
        let plain = config_json(&request()).unwrap();
        let r = &plain["linux"]["resources"];
        assert!(r["cpu"].get("shares").is_none() && r.get("blockIO").is_none());
        let req = BundleRequest {
            cpu_shares: Some(256),
            disk_io: Some(DiskThrottle {
                major: 254,
                minor: 0,
                rate: 1_048_576,
            }),
            ..request()
        };
        let v = config_json(&req).unwrap();
        let r = &v["linux"]["resources"];
        assert_eq!(r["cpu"]["shares"], 256);
        assert_eq!(r["cpu"]["quota"], 50_000, "the quota stays");
        let device = json!([{ "major": 254, "minor": 0, "rate": 1_048_576 }]);
        assert_eq!(r["blockIO"]["throttleReadBpsDevice"], device);
        assert_eq!(r["blockIO"]["throttleWriteBpsDevice"], device);
        // It parses as an OCI spec (what libcontainer reads).
        let _: Spec = serde_json::from_value(v.clone()).unwrap();
    }

    #[test]
    fn resources_match_the_request() {
        let (v, _) = written();
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 128 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 128 * 1024 * 1024);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["devices"][0], json!({ "allow": false, "access": "rwm" }));
        assert_eq!(v["linux"]["cgroupsPath"], "/fnmesh/node-a/sb-1");
        assert_eq!(
            v["linux"]["devices"].as_array().unwrap().len(),
            DEVICES.len()
        );
    }

    #[test]
    fn seccomp_denies_by_default_with_eperm() {
        let (v, spec) = written();
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["seccomp"]["defaultErrnoRet"], 1);
        let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert!(!seccomp.syscalls().as_ref().unwrap().is_empty());
    }

    #[test]
    fn rejects_unsafe_requests() {
        let mut root = request();
        root.user = SandboxUser::Host { uid: 0, gid: 1 };
        assert!(config_json(&root).is_err());
        root.user = SandboxUser::Host { uid: 1, gid: 0 };
        assert!(config_json(&root).is_err());
        root.user = SandboxUser::Mapped { host_base: 0 };
        assert!(
            config_json(&root).is_err(),
            "container root would be host root"
        );
        root.user = SandboxUser::Mapped {
            host_base: u32::MAX - 10,
        };
        assert!(config_json(&root).is_err());
        let mut rel = request();
        rel.code_dir = "code".into();
        assert!(config_json(&rel).is_err());
        let mut cg = request();
        cg.cgroup_path = "/fnmesh/../x".into();
        assert!(config_json(&cg).is_err());
    }
}
