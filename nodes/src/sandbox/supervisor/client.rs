//! The node's side: [`SupervisorClient`] spawns the supervisor and implements
//! [`ContainerRuntime`] by sending it requests.
//!
//! One dedicated OS thread owns the connection (and the child process). Async callers hand it
//! commands over a bounded channel and get replies on oneshots, so requests are serialized and
//! no tokio worker ever blocks on the socket. Every receive has a deadline; a dead, hung or
//! misbehaving supervisor makes the call (and all later ones) fail with
//! [`SandboxError::Supervisor`] instead of hanging.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use std::collections::HashMap;

use super::protocol::{Channel, Request, Response};
use super::{FD_ENV, STATE_DIR_ENV, SUPERVISOR_FD};
use crate::sandbox::cgroup::{bundle_cgroups_path, SandboxCgroup};
use crate::sandbox::{ContainerRuntime, ExitReport, SandboxError, SandboxIo, SandboxSpec};

/// Requests waiting for the connection thread.
const QUEUE_DEPTH: usize = 64;

/// Longest wait for any single reply (a destroy may wait 5 s for a reap plus cgroup retries).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the supervisor's `Ready` (it first removes leftovers of a crash).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the supervisor to exit after `shutdown` before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// `PATH` given to the supervisor when the node has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type Reply = oneshot::Sender<Result<Response, SandboxError>>;

/// What the connection thread is asked to do.
enum Op {
    /// Send `request` (with `fds` as SCM_RIGHTS), answer with the response.
    Call {
        request: Request,
        fds: Vec<OwnedFd>,
        reply: Reply,
    },
    /// Stop: the supervisor destroys everything and exits; answered once it has exited.
    Shutdown { reply: oneshot::Sender<()> },
}

/// [`ContainerRuntime`] backed by a supervisor child process.
#[derive(Debug)]
pub struct SupervisorClient {
    commands: mpsc::Sender<Op>,
    pid: u32,
    /// Memory cgroups of live sandboxes: the node (root, like the supervisor) reads and resets
    /// memory peaks itself, so the warm path needs no round trip to the supervisor.
    cgroups: std::sync::Mutex<HashMap<String, SandboxCgroup>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Call { request, .. } => write!(f, "Call({request:?})"),
            Op::Shutdown { .. } => f.write_str("Shutdown"),
        }
    }
}

fn supervisor_error(message: impl Into<String>) -> SandboxError {
    SandboxError::Supervisor(message.into())
}

impl SupervisorClient {
    /// Starts `program args...` as the supervisor with libcontainer state in `state_dir`
    /// (created if missing) and waits until it is ready (see the module docs of `supervisor`
    /// for the fd and environment contract).
    pub async fn spawn(
        program: &Path,
        args: &[&str],
        state_dir: &Path,
    ) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(state_dir)?;
        let state_dir = state_dir.canonicalize()?;
        let (ours, theirs) = UnixStream::pair()?;

        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .env(FD_ENV, SUPERVISOR_FD.to_string())
            .env(STATE_DIR_ENV, &state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let child_fd = theirs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls the
        // async-signal-safe `dup2`/`fcntl`.
        unsafe {
            command.pre_exec(move || pass_as_fd3(child_fd));
        }
        let child = command
            .spawn()
            .map_err(|e| supervisor_error(format!("starting {}: {e}", program.display())))?;
        drop(theirs);

        let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut chan = Channel::new(ours);
        let thread = std::thread::Builder::new()
            .name("sandbox-supervisor".to_owned())
            .spawn(move || {
                let ready = wait_ready(&mut chan);
                let ok = ready.is_ok();
                let _ = ready_tx.send(ready);
                connection_loop(chan, child, receiver, ok);
            });
        if let Err(e) = thread {
            return Err(supervisor_error(format!(
                "starting its connection thread: {e}"
            )));
        }
        let pid = ready_rx
            .await
            .map_err(|_| supervisor_error("connection thread died during startup"))??;
        Ok(Self {
            commands,
            pid,
            cgroups: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The supervisor's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Makes the supervisor destroy every sandbox and exit, and waits until it has (killing it
    /// after a deadline). Later calls fail with [`SandboxError::Supervisor`].
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Op::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    async fn call(&self, request: Request, fds: Vec<OwnedFd>) -> Result<Response, SandboxError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Op::Call {
                request,
                fds,
                reply,
            })
            .await
            .map_err(|_| supervisor_error("supervisor connection is closed"))?;
        let response = response
            .await
            .map_err(|_| supervisor_error("supervisor connection dropped the request"))??;
        match response {
            Response::Failed {
                id: Some(id),
                message,
            } => Err(SandboxError::Container { id, message }),
            Response::Failed { id: None, message } => Err(supervisor_error(message)),
            other => Ok(other),
        }
    }
}

fn unexpected(response: &Response) -> SandboxError {
    supervisor_error(format!("unexpected reply {response:?}"))
}

#[async_trait]
impl ContainerRuntime for SupervisorClient {
    async fn create(&self, spec: &SandboxSpec, io: SandboxIo) -> Result<(), SandboxError> {
        let request = Request::Create {
            id: spec.id.clone(),
            bundle: spec.bundle.clone(),
        };
        match self
            .call(request, vec![io.stdin, io.stdout, io.stderr])
            .await?
        {
            Response::Done => {
                if let Ok(path) = bundle_cgroups_path(&spec.bundle) {
                    if let Ok(mut map) = self.cgroups.lock() {
                        map.insert(spec.id.clone(), SandboxCgroup::new(&path));
                    }
                }
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn start(&self, id: &str) -> Result<(), SandboxError> {
        match self
            .call(Request::Start { id: id.to_owned() }, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn memory_peak(&self, id: &str, reset: bool) -> Result<u64, SandboxError> {
        // Fast path: read (and reset) the cgroup's counter directly; a few µs, no round trip.
        if let Ok(mut map) = self.cgroups.lock() {
            if let Some(cgroup) = map.get_mut(id) {
                if let Ok(peak) = cgroup.memory_peak() {
                    if !reset || cgroup.reset_memory_peak().is_ok() {
                        return Ok(peak);
                    }
                }
            }
        }
        let request = Request::MemoryPeak {
            id: id.to_owned(),
            reset,
        };
        match self.call(request, Vec::new()).await? {
            Response::MemoryPeak { bytes } => Ok(bytes),
            other => Err(unexpected(&other)),
        }
    }

    async fn cpu_usage_us(&self, id: &str) -> Result<u64, SandboxError> {
        // Read from the cgroup directly (the node runs as root); a sandbox this client does
        // not know has no counter to read.
        let mut map = self
            .cgroups
            .lock()
            .map_err(|_| SandboxError::Supervisor("the cgroup table is poisoned".to_owned()))?;
        let cgroup = map.get_mut(id).ok_or_else(|| SandboxError::Container {
            id: id.to_owned(),
            message: "no cgroup known for it".to_owned(),
        })?;
        Ok(cgroup.cpu_usage_us()?)
    }

    async fn destroy(&self, id: &str) -> Result<ExitReport, SandboxError> {
        if let Ok(mut map) = self.cgroups.lock() {
            map.remove(id);
        }
        match self
            .call(Request::Destroy { id: id.to_owned() }, Vec::new())
            .await?
        {
            Response::Exited { report } => Ok(report),
            other => Err(unexpected(&other)),
        }
    }
}

/// In the forked child: make `fd` the inheritable descriptor 3.
fn pass_as_fd3(fd: RawFd) -> io::Result<()> {
    if fd == SUPERVISOR_FD {
        // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
        // SAFETY: fcntl on a descriptor we own; no memory arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: dup2 between two descriptor numbers; the new fd 3 is not close-on-exec.
        if unsafe { libc::dup2(fd, SUPERVISOR_FD) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_ready(chan: &mut Channel) -> Result<u32, SandboxError> {
    chan.stream().set_read_timeout(Some(READY_TIMEOUT))?;
    match chan.recv::<Response>() {
        Ok(Some(Response::Ready { pid })) => Ok(pid),
        Ok(Some(other)) => Err(unexpected(&other)),
        Ok(None) => Err(supervisor_error(
            "exited before becoming ready (see its stderr)",
        )),
        Err(e) => Err(supervisor_error(format!("waiting for it to be ready: {e}"))),
    }
}

/// The connection thread: serves commands until shutdown or until every client handle is gone,
/// then stops the supervisor and reaps it.
fn connection_loop(
    mut chan: Channel,
    mut child: Child,
    mut commands: mpsc::Receiver<Op>,
    healthy: bool,
) {
    let _ = chan.stream().set_read_timeout(Some(REPLY_TIMEOUT));
    let mut broken: Option<String> = (!healthy).then(|| "supervisor failed to start".to_owned());
    let mut shutdown_reply = None;
    while let Some(command) = commands.blocking_recv() {
        match command {
            Op::Call {
                request,
                fds,
                reply,
            } => {
                let result = match &broken {
                    Some(why) => Err(supervisor_error(why.clone())),
                    None => round_trip(&mut chan, &request, &fds).map_err(|why| {
                        broken = Some(why.clone());
                        supervisor_error(why)
                    }),
                };
                drop(fds);
                let _ = reply.send(result);
            }
            Op::Shutdown { reply } => {
                shutdown_reply = Some(reply);
                break;
            }
        }
    }
    // No more commands: refuse queued ones, then stop the supervisor.
    commands.close();
    while let Ok(command) = commands.try_recv() {
        if let Op::Call { reply, .. } = command {
            let _ = reply.send(Err(supervisor_error("supervisor is shutting down")));
        }
    }
    if broken.is_none() {
        let _ = round_trip(&mut chan, &Request::Shutdown, &[]);
    }
    drop(chan); // end of file: the supervisor tears everything down even if it missed shutdown
    wait_child(&mut child, EXIT_TIMEOUT);
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
}

fn round_trip(chan: &mut Channel, request: &Request, fds: &[OwnedFd]) -> Result<Response, String> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    chan.send(request, &raw)
        .map_err(|e| format!("sending {}: {e}", op_name(request)))?;
    match chan.recv::<Response>() {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err("supervisor exited (connection closed)".to_owned()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no reply to {} within {REPLY_TIMEOUT:?}",
                op_name(request)
            ))
        }
        Err(e) => Err(format!("reading the reply to {}: {e}", op_name(request))),
    }
}

fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Create { .. } => "create",
        Request::Start { .. } => "start",
        Request::MemoryPeak { .. } => "memory_peak",
        Request::Destroy { .. } => "destroy",
        Request::Shutdown => "shutdown",
    }
}

/// Reaps the supervisor, killing it if it has not exited by the deadline.
fn wait_child(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            // A short poll: this is a dedicated thread and the supervisor normally exits within
            // a few milliseconds of end of file.
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
