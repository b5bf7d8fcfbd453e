//! The supervisor side: a single-threaded loop that owns every container of the node.
//!
//! It reads one [`Request`] at a time from the node, acts on it with libcontainer and answers.
//! Container inits are its direct children (libcontainer clones them with `CLONE_PARENT`), so
//! it reaps them itself in `destroy`. It never starts a thread that outlives a request: the only
//! thread is the short one that brings `lo` up inside a new network namespace, joined before
//! the reply.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::protocol::{Channel, Request, Response, CREATE_FDS};
use crate::sandbox::cgroup::SandboxCgroup;
use crate::sandbox::ExitReport;

/// How long `destroy` waits for a killed init to become reapable.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest accepted container id.
const MAX_ID_LEN: usize = 64;

/// Writes one concise line to the supervisor's stderr (never to a container's).
fn log(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "fnmesh-sandboxd: {message}");
}

/// `error: cause: cause` on one line.
fn chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs the supervisor on `sock` with libcontainer state in `state_dir` until the node sends
/// `shutdown` or closes the socket; every container is destroyed before it returns.
///
/// Returns the process exit code: 0 after an orderly end, 1 after a broken connection, 2 if the
/// process is unfit to run it (more than one thread, unusable state directory).
pub fn serve(sock: UnixStream, state_dir: &Path) -> i32 {
    if let Err(message) = prepare_process(&sock) {
        log(format_args!("{message}"));
        return 2;
    }
    let mut supervisor = match Supervisor::new(state_dir) {
        Ok(s) => s,
        Err(e) => {
            log(format_args!(
                "state directory {}: {}",
                state_dir.display(),
                chain(&e)
            ));
            return 2;
        }
    };
    supervisor.remove_leftovers();

    let mut chan = Channel::new(sock);
    let ready = Response::Ready {
        pid: std::process::id(),
    };
    if let Err(e) = chan.send(&ready, &[]) {
        log(format_args!("announcing readiness: {e}"));
        return 1;
    }

    loop {
        let request = match chan.recv::<Request>() {
            Ok(Some(request)) => request,
            Ok(None) => {
                supervisor.destroy_all();
                return 0;
            }
            Err(e) => {
                log(format_args!("reading a request: {e}"));
                supervisor.destroy_all();
                return 1;
            }
        };
        let (response, exit) = match request {
            Request::Create { id, bundle } => {
                let fds = chan.take_fds(CREATE_FDS);
                chan.discard_fds();
                (supervisor.create(id, &bundle, fds), false)
            }
            Request::Start { id } => (supervisor.start(&id), false),
            Request::MemoryPeak { id, reset } => (supervisor.memory_peak(&id, reset), false),
            Request::Destroy { id } => (
                Response::Exited {
                    report: supervisor.destroy(&id),
                },
                false,
            ),
            Request::Shutdown => {
                supervisor.destroy_all();
                (Response::Done, true)
            }
        };
        chan.discard_fds();
        if let Err(e) = chan.send(&response, &[]) {
            log(format_args!("writing a response: {e}"));
            supervisor.destroy_all();
            return 1;
        }
        if exit {
            return 0;
        }
        supervisor.reap_stragglers();
    }
}

/// Makes this process fit to create containers, whose inits inherit much of it.
fn prepare_process(sock: &UnixStream) -> Result<(), String> {
    // Backtrace capture of errors libcontainer's dependencies handle internally costs ~1.3 ms
    // per create. Removed before anything captures one (std caches the setting).
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");

    // libcontainer forks with a raw clone3 that skips glibc's fork handlers: with a second
    // thread alive, the child can deadlock on a lock that thread holds.
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if threads != 1 {
        return Err(format!(
            "refusing to run with {threads} threads: the supervisor must be single-threaded \
             (start it before any runtime or logger spawns threads)"
        ));
    }

    // Every descriptor we hold would otherwise be inherited by each container init until exec.
    set_cloexec(sock.as_fd()).map_err(|e| format!("marking the socket close-on-exec: {e}"))?;

    // Container inits inherit ignored signals and the signal mask across exec; functions must
    // see defaults. SIGPIPE gets a no-op handler rather than SIG_IGN: writes to a dead peer
    // still fail with EPIPE instead of killing us, and exec resets it to the default.
    extern "C" fn ignore_sigpipe(_: libc::c_int) {}
    let action = signal::SigAction::new(
        SigHandler::Handler(ignore_sigpipe),
        signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { signal::sigaction(Signal::SIGPIPE, &action) }
        .map_err(|e| format!("installing the SIGPIPE handler: {e}"))?;
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("clearing the signal mask: {e}"))?;

    if !nix::unistd::geteuid().is_root() {
        return Err("the sandbox supervisor must run as root".to_owned());
    }
    // Containers set their own groups, but never let an init inherit root's.
    nix::unistd::setgroups(&[]).map_err(|e| format!("dropping supplementary groups: {e}"))?;
    Ok(())
}

fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// One container this supervisor created and has not destroyed yet.
struct Live {
    container: Container,
    init: Pid,
    cgroup: SandboxCgroup,
}

/// The table of live containers.
struct Supervisor {
    state_dir: PathBuf,
    live: HashMap<String, Live>,
    /// Inits that did not die within [`REAP_TIMEOUT`]; reaped when they do.
    unreaped: Vec<Pid>,
}

impl Supervisor {
    fn new(state_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(state_dir)?;
        Ok(Self {
            state_dir: state_dir.canonicalize()?,
            live: HashMap::new(),
            unreaped: Vec::new(),
        })
    }

    /// Deletes containers a previous supervisor left behind (it crashed or was killed).
    fn remove_leftovers(&mut self) {
        let Ok(entries) = fs::read_dir(&self.state_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let result = Container::load(path.clone()).and_then(|mut c| c.delete(true));
            match result {
                Ok(()) => log(format_args!("removed leftover container {name}")),
                Err(e) => {
                    log(format_args!(
                        "removing leftover container {name}: {}",
                        chain(&e)
                    ));
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
    }

    fn create(&mut self, id: String, bundle: &Path, fds: Option<Vec<OwnedFd>>) -> Response {
        let fail = |message: String| Response::Failed {
            id: Some(id.clone()),
            message,
        };
        if let Err(message) = check_id(&id) {
            return fail(message);
        }
        if self.live.contains_key(&id) {
            return fail("already exists".to_owned());
        }
        let Some(fds) = fds else {
            return fail("create needs 3 descriptors (stdin, stdout, stderr)".to_owned());
        };
        let Ok([stdin, stdout, stderr]) = <[OwnedFd; CREATE_FDS]>::try_from(fds) else {
            return fail("create needs exactly 3 descriptors".to_owned());
        };
        if !bundle.is_absolute() {
            return fail(format!("bundle {} is not absolute", bundle.display()));
        }
        let cgroups_path = match crate::sandbox::cgroup::bundle_cgroups_path(bundle) {
            Ok(path) => path,
            Err(message) => return fail(message),
        };

        let built = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(self.state_dir.clone())
            .and_then(ContainerBuilder::validate_id)
            .and_then(|builder| {
                builder
                    .with_stdin(stdin)
                    .with_stdout(stdout)
                    .with_stderr(stderr)
                    .as_init(bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
            });
        let mut container = match built {
            Ok(c) => c,
            Err(e) => return fail(format!("create failed: {}", chain(&e))),
        };
        // libcontainer 0.7 is built on nix 0.29: its pid crosses over as a raw number.
        let Some(init) = container.pid().map(|p| Pid::from_raw(p.as_raw())) else {
            let _ = container.delete(true);
            return fail("created without an init pid".to_owned());
        };
        let live = Live {
            container,
            init,
            cgroup: SandboxCgroup::new(&cgroups_path),
        };
        if let Err(e) = bring_up_loopback(init) {
            self.teardown(&id, live);
            return fail(format!("bringing up lo: {e}"));
        }
        self.live.insert(id, live);
        Response::Done
    }

    fn start(&mut self, id: &str) -> Response {
        let Some(live) = self.live.get_mut(id) else {
            return unknown(id);
        };
        match live.container.start() {
            Ok(()) => Response::Done,
            Err(e) => Response::Failed {
                id: Some(id.to_owned()),
                message: format!("start failed: {}", chain(&e)),
            },
        }
    }

    fn memory_peak(&mut self, id: &str, reset: bool) -> Response {
        let Some(live) = self.live.get_mut(id) else {
            return unknown(id);
        };
        let result = live.cgroup.memory_peak().and_then(|bytes| {
            if reset {
                live.cgroup.reset_memory_peak()?;
            }
            Ok(bytes)
        });
        match result {
            Ok(bytes) => Response::MemoryPeak { bytes },
            Err(e) => Response::Failed {
                id: Some(id.to_owned()),
                message: format!("reading memory peak of cgroup {}: {e}", live.cgroup.path()),
            },
        }
    }

    /// Idempotent: an unknown id gives a default report.
    fn destroy(&mut self, id: &str) -> ExitReport {
        match self.live.remove(id) {
            Some(live) => self.teardown(id, live),
            None => ExitReport::default(),
        }
    }

    fn destroy_all(&mut self) {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            self.destroy(&id);
        }
    }

    /// Reads the counters, kills everything in the cgroup, reaps the init, removes cgroups and
    /// state.
    fn teardown(&mut self, id: &str, mut live: Live) -> ExitReport {
        let mut report = ExitReport {
            oom_killed: live.cgroup.oom_killed().unwrap_or(false),
            pids_limit_hit: live.cgroup.pids_limit_hit().unwrap_or(false),
            memory_peak_bytes: live.cgroup.memory_peak().unwrap_or(0),
            ..ExitReport::default()
        };

        // libcontainer 0.7 is built on nix 0.29: the signal crosses over as a number.
        match libcontainer::signal::Signal::try_from(Signal::SIGKILL as i32) {
            Ok(sigkill) => {
                if let Err(e) = live.container.kill(sigkill, true) {
                    if !matches!(e, LibcontainerError::IncorrectStatus(_)) {
                        log(format_args!("killing container {id}: {}", chain(&e)));
                    }
                }
            }
            Err(e) => log(format_args!("killing container {id}: {e}")),
        }
        // The init is our unreaped child, so its pid cannot have been reused.
        let _ = signal::kill(live.init, Signal::SIGKILL);

        match reap(live.init, REAP_TIMEOUT) {
            Reaped::Status(WaitStatus::Exited(_, code)) => report.exit_code = Some(code),
            Reaped::Status(WaitStatus::Signaled(_, sig, _)) => report.signal = Some(sig as i32),
            Reaped::Status(_) | Reaped::NotOurs => {}
            Reaped::TimedOut => {
                log(format_args!(
                    "container {id}: init {} not reaped after {REAP_TIMEOUT:?}",
                    live.init
                ));
                self.unreaped.push(live.init);
            }
        }

        if let Err(e) = live.container.delete(true) {
            log(format_args!("deleting container {id}: {}", chain(&e)));
        }
        let stuck = live.cgroup.remove_leftovers();
        if !stuck.is_empty() {
            log(format_args!(
                "container {id}: cgroup directories left: {stuck:?}"
            ));
        }
        let state = self.state_dir.join(id);
        if state.exists() {
            let _ = fs::remove_dir_all(&state);
        }
        report
    }

    fn reap_stragglers(&mut self) {
        self.unreaped.retain(|pid| {
            matches!(
                waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
    }
}

fn unknown(id: &str) -> Response {
    Response::Failed {
        id: Some(id.to_owned()),
        message: "no such sandbox".to_owned(),
    }
}

/// Sandbox ids name state directories and cgroups: `[a-z0-9-]{1,64}`.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid sandbox id {id:?}: expected [a-z0-9-]{{1,64}}"
        ))
    }
}

/// What became of a child we waited for.
enum Reaped {
    /// It exited and was reaped.
    Status(WaitStatus),
    /// It is not (or no longer) our child.
    NotOurs,
    /// Still running at the deadline.
    TimedOut,
}

/// Waits up to `timeout` for `pid` (our child) to exit and reaps it.
fn reap(pid: Pid, timeout: Duration) -> Reaped {
    let deadline = Instant::now() + timeout;
    // A pidfd becomes readable when the process exits: poll it instead of sleeping.
    // SAFETY: pidfd_open has no memory arguments; the result is a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let pidfd = (raw >= 0).then(|| {
        // SAFETY: the kernel returned a new descriptor that nothing else owns (pidfds are
        // always close-on-exec).
        unsafe { OwnedFd::from_raw_fd(raw as i32) }
    });
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return Reaped::Status(status),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Reaped::NotOurs,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reaped::TimedOut;
        }
        let wait_ms = left.as_millis().clamp(1, 100) as i32;
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pfd` is a valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Sets `lo` up in the network namespace of `pid`, from a short-lived thread (a process's
/// main thread must not change namespaces under libcontainer's feet). Joined before returning.
fn bring_up_loopback(pid: Pid) -> io::Result<()> {
    let netns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns-lo".to_owned())
            .spawn_scoped(scope, || -> io::Result<()> {
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)?;
                set_interface_up("lo")
            })?;
        handle
            .join()
            .map_err(|_| io::Error::other("loopback thread panicked"))?
    })
}

/// `ioctl(SIOCSIFFLAGS, IFF_UP | IFF_RUNNING)` on `name` in the calling thread's netns.
fn set_interface_up(name: &str) -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes ifru_flags of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(check_id("sb-1").is_ok());
        assert!(check_id("0a").is_ok());
        for bad in ["", "-x", "A", "a/b", "a.b", "..", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroups_path_is_required() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), r#"{"linux":{}}"#).unwrap();
        assert!(crate::sandbox::cgroup::bundle_cgroups_path(dir.path()).is_err());
        fs::write(
            dir.path().join("config.json"),
            r#"{"linux":{"cgroupsPath":"/fnmesh/a"}}"#,
        )
        .unwrap();
        assert_eq!(
            crate::sandbox::cgroup::bundle_cgroups_path(dir.path()).unwrap(),
            "/fnmesh/a"
        );
    }

    #[test]
    fn errors_are_chained_on_one_line() {
        let inner = io::Error::other("inner");
        let outer = io::Error::other(Wrap(inner));
        assert_eq!(chain(&outer), "wrap: inner");
    }

    #[derive(Debug)]
    struct Wrap(io::Error);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrap")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
}
