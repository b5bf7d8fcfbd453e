//! One sandbox serving one function version: start it, invoke it, kill it.
//!
//! [`Instance::launch`] creates three pipes (the host ends close-on-exec and non-blocking,
//! driven by tokio), writes the bundle to `<work_dir>/bundles/<id>`, creates and starts the
//! container, sends the bootstrap its init frame (the function's secrets, which are never in
//! the bundle) and waits for the bootstrap's first frame. A log task reads the sandbox's stderr
//! continuously (a chatty handler never blocks on a full pipe) into a [`LogSink`] that splits
//! the stream at each invocation's end marker and caps what it keeps.
//!
//! [`Instance::invoke`] sends one request frame and awaits the response until the invocation's
//! deadline. Past it, or on EOF or garbage, the sandbox is destroyed and reported as `Timeout`,
//! `oom` or `crashed`; the caller must then discard the instance. A response frame longer than
//! the request's result cap allows is refused from its length prefix, never read into memory:
//! the sandbox is destroyed (the rest of the frame is still in the pipe) and the invocation is
//! `invalid_result`, as is an `ok` frame whose result is over the cap. The warm path is a pipe write,
//! a pipe read and one `memory_peak` call (read-and-reset, run while the logs settle).
//!
//! Dropping an instance without [`Instance::destroy`] (e.g. a cancelled invocation) still
//! destroys the container and removes the bundle directory, from a spawned task. The sandbox's
//! host id slot ([`IdLease`]) is given back only after the container was destroyed, and never
//! when destroying it failed.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_core::secrets::SecretEnv;
use fnmesh_core::{ErrorKind, Execution, InvocationError, InvocationLogs, InvocationStatus};
use nix::fcntl::OFlag;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod logs;

use logs::pump_logs;
pub use logs::LogSink;

use crate::code_cache::CodePin;
use crate::runtimes::protocol::{self, Hello, Response, MAX_FRAME_BYTES};

/// Longest first frame (`ready`, or `init_error` with a message of at most 4 KiB).
const MAX_HELLO_FRAME_BYTES: usize = protocol::RESPONSE_OVERHEAD_BYTES;
/// Response buffers that grew past this are given back after the invocation.
const RETAINED_BODY_BYTES: usize = 64 * 1024;
use crate::sandbox::spec::{self, BundleRequest};
use crate::sandbox::users::IdLease;
use crate::sandbox::{ContainerRuntime, ExitReport, SandboxError, SandboxIo, SandboxSpec};

/// How long to wait for an invocation's log end marker once its response arrived.
const MARKER_WAIT: Duration = Duration::from_millis(250);
/// How long to wait for the rest of the logs after a sandbox was killed.
const DRAIN_WAIT: Duration = Duration::from_millis(250);
/// Bound on the `memory_peak` call after an invocation.
const PEAK_WAIT: Duration = Duration::from_millis(500);
/// Longest error message taken from a handler.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Everything needed to start one sandbox.
#[derive(Debug)]
pub struct LaunchPlan {
    /// Unique sandbox id, `[a-z0-9-]+`.
    pub id: String,
    /// `<work_dir>/bundles/<id>`.
    pub bundle_dir: PathBuf,
    /// What goes into `config.json`.
    pub bundle: BundleRequest,
    /// The function's opened secrets: sent in the init frame, never written to the bundle.
    pub secrets: SecretEnv,
    /// The host id slot of `bundle.user`, held until the container is destroyed (`None`: the
    /// caller manages ids itself).
    pub ids: Option<IdLease>,
    /// Cap on captured logs per invocation.
    pub log_cap_bytes: usize,
    /// Holds the code tree the sandbox mounts in the node's code cache for its whole life.
    pub code_pin: Option<CodePin>,
    /// Holds the image tree an image function's sandbox has as its root.
    pub image_lease: Option<fnmesh_image::cache::Lease>,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> InvocationError {
    InvocationError {
        kind,
        message: message.into(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// What a dead sandbox's exit report means for the invocation.
fn death_error(report: &ExitReport, memory_mb: u32, what: &str) -> InvocationError {
    if report.oom_killed {
        return error(
            ErrorKind::Oom,
            format!("sandbox ran out of memory (limit {memory_mb} MiB)"),
        );
    }
    let how = match (report.exit_code, report.signal) {
        (_, Some(signal)) => format!(" (killed by signal {signal})"),
        (Some(code), None) => format!(" (exit code {code})"),
        (None, None) => String::new(),
    };
    error(ErrorKind::Crashed, format!("{what}{how}"))
}

// ---------------------------------------------------------------------------------------------
// Cleanup

/// Destroys the container (unless already destroyed) and removes the bundle when dropped armed;
/// gives the id slot back once the container is gone.
struct CleanupGuard {
    runtime: Arc<dyn ContainerRuntime>,
    id: String,
    bundle_dir: PathBuf,
    destroy_container: bool,
    armed: bool,
    ids: Option<IdLease>,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let bundle_dir = std::mem::take(&mut self.bundle_dir);
        let mut ids = self.ids.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let runtime = Arc::clone(&self.runtime);
                let id = std::mem::take(&mut self.id);
                let destroy = self.destroy_container;
                handle.spawn(async move {
                    if destroy {
                        if let Err(e) = runtime.destroy(&id).await {
                            tracing::warn!(sandbox.id = %id, error = %e, "destroying dropped sandbox failed");
                            if let Some(ids) = ids.as_mut() {
                                ids.quarantine();
                            }
                        }
                    }
                    let _ = tokio::fs::remove_dir_all(&bundle_dir).await;
                    drop(ids);
                });
            }
            Err(_) => {
                // The container cannot be destroyed from here: its ids stay taken.
                if let (true, Some(ids)) = (self.destroy_container, ids.as_mut()) {
                    ids.quarantine();
                }
                let _ = std::fs::remove_dir_all(&bundle_dir);
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Instance

/// A started sandbox with its handler loaded.
pub struct Instance {
    id: String,
    memory_mb: u32,
    runtime: Arc<dyn ContainerRuntime>,
    requests: pipe::Sender,
    responses: BufReader<pipe::Receiver>,
    logs: Arc<LogSink>,
    _log_task: AbortOnDrop,
    guard: CleanupGuard,
    /// Reused request frame buffer.
    frame: Vec<u8>,
    /// Reused response body buffer.
    body: Vec<u8>,
    /// Set once the container was destroyed.
    dead: Option<ExitReport>,
    /// The sandbox's CPU counter at the end of its last invocation (or of its boot), µs: an
    /// invocation's CPU time is the counter's growth since.
    cpu_seen_us: u64,
    /// Keeps the mounted code in the cache while the sandbox lives.
    _code_pin: Option<CodePin>,
    /// Keeps the image tree (the sandbox's root) in the image cache while the sandbox lives.
    _image_lease: Option<fnmesh_image::cache::Lease>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("memory_mb", &self.memory_mb)
            .field("dead", &self.dead.is_some())
            .finish()
    }
}

fn host_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

enum BootError {
    Init(String),
    Protocol(String),
}

impl Instance {
    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its memory limit.
    pub fn memory_mb(&self) -> u32 {
        self.memory_mb
    }

    /// Creates and starts a sandbox and waits, until `deadline`, for its handler to load.
    ///
    /// A sandbox that does not become ready is the invocation's end: the error is its
    /// [`Execution`] (`Failed` or `Timeout`, with what the sandbox printed, e.g. the import
    /// traceback); the caller adds the init time and `cold_start`.
    pub async fn launch(
        runtime: Arc<dyn ContainerRuntime>,
        mut plan: LaunchPlan,
        deadline: Instant,
    ) -> Result<Self, Execution> {
        let started = Instant::now();
        let secrets = std::mem::take(&mut plan.secrets);
        let memory_mb = plan.bundle.memory_mb;
        let fail = |status, error, logs, peak| Execution {
            logs,
            memory_peak_bytes: peak,
            ..Execution::failed(status, error)
        };
        let mut instance =
            match tokio::time::timeout_at(deadline, Self::create(runtime, plan)).await {
                Ok(Ok(instance)) => instance,
                Ok(Err(e)) => {
                    return Err(fail(
                        InvocationStatus::Failed,
                        error(
                            ErrorKind::Crashed,
                            format!("creating the sandbox failed: {e}"),
                        ),
                        InvocationLogs::default(),
                        0,
                    ))
                }
                Err(_) => {
                    return Err(fail(
                        InvocationStatus::Timeout,
                        error(ErrorKind::Timeout, "timed out while creating the sandbox"),
                        InvocationLogs::default(),
                        0,
                    ))
                }
            };
        let booted = tokio::time::timeout_at(deadline, instance.boot(&secrets)).await;
        drop(secrets);
        let (status, err) = match booted {
            Ok(Ok(())) => {
                let init_us = micros(started.elapsed());
                tracing::debug!(sandbox.id = %instance.id, init_us, "sandbox ready");
                // The handler's loading is not the first invocation's CPU time.
                instance.cpu_seen_us = instance.cpu_usage_us().await;
                return Ok(instance);
            }
            Ok(Err(BootError::Init(message))) => (
                InvocationStatus::Failed,
                error(
                    ErrorKind::HandlerError,
                    format!("loading the handler failed: {message}"),
                ),
            ),
            Ok(Err(BootError::Protocol(what))) => {
                (InvocationStatus::Failed, error(ErrorKind::Crashed, what))
            }
            Err(_) => (
                InvocationStatus::Timeout,
                error(ErrorKind::Timeout, "timed out while loading the handler"),
            ),
        };
        let report = instance.kill().await;
        let logs = instance.logs.drain(DRAIN_WAIT).await;
        let err = match err.kind {
            ErrorKind::Crashed => death_error(&report, memory_mb, &err.message),
            _ => err,
        };
        tracing::info!(
            sandbox.id = %instance.id,
            error.kind = err.kind.as_str(),
            error.message = %err.message,
            "sandbox failed to start"
        );
        let peak = report.memory_peak_bytes;
        instance.destroy().await;
        Err(fail(status, err, logs, peak))
    }

    async fn create(
        runtime: Arc<dyn ContainerRuntime>,
        mut plan: LaunchPlan,
    ) -> Result<Self, SandboxError> {
        let (stdin_rx, stdin_tx) = host_pipe()?;
        let (stdout_rx, stdout_tx) = host_pipe()?;
        let (stderr_rx, stderr_tx) = host_pipe()?;
        let mut guard = CleanupGuard {
            runtime: Arc::clone(&runtime),
            id: plan.id.clone(),
            bundle_dir: plan.bundle_dir.clone(),
            destroy_container: false,
            armed: true,
            ids: plan.ids.take(),
        };
        let bundle_dir = plan.bundle_dir.clone();
        let bundle = plan.bundle.clone();
        tokio::task::spawn_blocking(move || spec::write_bundle(&bundle_dir, &bundle))
            .await
            .map_err(|e| SandboxError::Io(io::Error::other(e)))??;

        let requests = pipe::Sender::from_owned_fd(stdin_tx)?;
        let responses = pipe::Receiver::from_owned_fd(stdout_rx)?;
        let log_rx = pipe::Receiver::from_owned_fd(stderr_rx)?;
        let io = SandboxIo {
            stdin: stdin_rx,
            stdout: stdout_tx,
            stderr: stderr_tx,
        };
        let sandbox = SandboxSpec {
            id: plan.id.clone(),
            bundle: plan.bundle_dir.clone(),
        };
        guard.destroy_container = true;
        runtime.create(&sandbox, io).await?;

        let logs = Arc::new(LogSink::new(plan.log_cap_bytes));
        let log_task = tokio::spawn(pump_logs(log_rx, Arc::clone(&logs)));
        Ok(Self {
            id: plan.id,
            memory_mb: plan.bundle.memory_mb,
            runtime,
            requests,
            responses: BufReader::with_capacity(64 * 1024, responses),
            logs,
            _log_task: AbortOnDrop(log_task),
            guard,
            frame: Vec::with_capacity(4096),
            body: Vec::with_capacity(4096),
            dead: None,
            cpu_seen_us: 0,
            _code_pin: plan.code_pin,
            _image_lease: plan.image_lease,
        })
    }

    async fn boot(&mut self, secrets: &SecretEnv) -> Result<(), BootError> {
        let mut init = Vec::new();
        protocol::encode_init(&mut init, &protocol::Init::secrets(secrets))
            .map_err(|e| BootError::Protocol(format!("encoding the init frame failed: {e}")))?;
        self.runtime
            .start(&self.id)
            .await
            .map_err(|e| BootError::Protocol(format!("starting the sandbox failed: {e}")))?;
        // A bootstrap reads this frame before anything else, so the write cannot block on a
        // full pipe for long; if the sandbox died, the read below reports it.
        let sent = self.requests.write_all(&init).await;
        init.fill(0);
        if let Err(e) = sent {
            return Err(BootError::Protocol(format!(
                "sandbox exited before its handler loaded: {e}"
            )));
        }
        if let Err(e) = read_frame(&mut self.responses, &mut self.body, MAX_HELLO_FRAME_BYTES).await
        {
            return Err(BootError::Protocol(format!(
                "sandbox exited before its handler loaded: {e}"
            )));
        }
        match protocol::decode_hello(&self.body) {
            Ok(Hello::Ready) => Ok(()),
            Ok(Hello::InitError(message)) => Err(BootError::Init(message)),
            Err(e) => Err(BootError::Protocol(format!(
                "bootstrap protocol error: {e}"
            ))),
        }
    }

    /// Runs one invocation, killing the sandbox at `deadline`, or when `cancel` fires (then
    /// it is `cancelled`). Returns how it went (its `exec_us` from the call to the result,
    /// logs and peak memory settled included) and whether the sandbox can serve again (false
    /// when it was killed: the caller must then discard the instance).
    pub async fn invoke(
        &mut self,
        request: &protocol::Request<'_>,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> (Execution, bool) {
        let started = Instant::now();
        if let Err(e) = protocol::encode_request(&mut self.frame, request) {
            let err = error(
                ErrorKind::Crashed,
                format!("encoding the request failed: {e}"),
            );
            return (Execution::failed(InvocationStatus::Failed, err), true);
        }
        if self.frame.len() - 4 > MAX_FRAME_BYTES {
            let err = error(ErrorKind::Crashed, "the payload is too large");
            return (Execution::failed(InvocationStatus::Failed, err), true);
        }
        self.logs.arm(protocol::end_marker(request.id));

        let max_result = request.max_result_bytes;
        let (requests, responses, body, frame) = (
            &mut self.requests,
            &mut self.responses,
            &mut self.body,
            &self.frame,
        );
        let exchange = async move {
            requests.write_all(frame).await.map_err(FrameError::Io)?;
            read_frame(responses, body, protocol::max_response_frame(max_result)).await
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout_at(deadline, exchange) => outcome.map_err(|_| Ending::Timeout),
            () = cancel.cancelled() => Err(Ending::Cancelled),
        };

        let ending = match outcome {
            Ok(Ok(())) => {
                let decoded = protocol::decode_response(&self.body);
                let frame_len = self.body.len();
                if self.body.capacity() > RETAINED_BODY_BYTES {
                    self.body = Vec::with_capacity(4096);
                }
                match decoded {
                    Ok(response) => {
                        let execution = self
                            .answered(response, frame_len, max_result, started)
                            .await;
                        return (execution, true);
                    }
                    Err(e) => Ending::Died(format!("bootstrap protocol error: {e}")),
                }
            }
            Ok(Err(FrameError::TooLarge { len, max })) => Ending::TooLarge(format!(
                "the result frame of {len} bytes exceeds the limit of {max} bytes \
                 (results are capped at {max_result} bytes of JSON)"
            )),
            Ok(Err(FrameError::Io(e))) => {
                Ending::Died(format!("sandbox died during the invocation: {e}"))
            }
            Err(ending) => ending,
        };

        // Read before the kill removes the cgroup.
        let cpu_now = self.cpu_usage_us().await;
        let cpu_time_us = self.cpu_used(cpu_now);
        let report = self.kill().await;
        let logs = self.logs.drain(DRAIN_WAIT).await;
        let exec_us = micros(started.elapsed());
        let (status, err) = match ending {
            Ending::Timeout => {
                let budget = deadline.saturating_duration_since(started);
                let err = error(
                    ErrorKind::Timeout,
                    format!("the invocation timed out after {} ms", millis(budget)),
                );
                (InvocationStatus::Timeout, err)
            }
            Ending::Cancelled => (
                InvocationStatus::Cancelled,
                error(ErrorKind::Cancelled, "cancelled while it ran"),
            ),
            Ending::TooLarge(message) => (
                InvocationStatus::Failed,
                error(ErrorKind::InvalidResult, message),
            ),
            Ending::Died(what) => (
                InvocationStatus::Failed,
                death_error(&report, self.memory_mb, &what),
            ),
        };
        tracing::info!(
            sandbox.id = %self.id,
            error.kind = err.kind.as_str(),
            exec_us,
            "sandbox killed"
        );
        let execution = Execution {
            logs,
            memory_peak_bytes: report.memory_peak_bytes,
            exec_us,
            cpu_time_us,
            ..Execution::failed(status, err)
        };
        (execution, false)
    }

    /// The execution of an invocation the sandbox answered (with a frame of `frame_len`
    /// bytes): its logs and peak memory settled, and a result over `max_result` bytes turned
    /// into `invalid_result`.
    async fn answered(
        &mut self,
        response: Response,
        frame_len: usize,
        max_result: usize,
        started: Instant,
    ) -> Execution {
        let (logs, peak, cpu_now) = tokio::join!(
            self.logs.finish(MARKER_WAIT),
            tokio::time::timeout(PEAK_WAIT, self.runtime.memory_peak(&self.id, true)),
            self.cpu_usage_us(),
        );
        let cpu_time_us = self.cpu_used(cpu_now);
        let memory_peak_bytes = match peak {
            Ok(Ok(bytes)) => bytes,
            _ => 0,
        };
        let (status, result, err) = match response {
            Response::Ok(_) if protocol::result_too_large(frame_len, max_result) => {
                let message =
                    format!("the result is larger than the limit of {max_result} bytes of JSON");
                let err = error(ErrorKind::InvalidResult, message);
                (InvocationStatus::Failed, None, Some(err))
            }
            Response::Ok(value) => (InvocationStatus::Succeeded, Some(value), None),
            Response::Error {
                type_name,
                message,
                invalid_result,
            } => {
                let kind = if invalid_result {
                    ErrorKind::InvalidResult
                } else {
                    ErrorKind::HandlerError
                };
                let mut text = if type_name.is_empty() {
                    message
                } else {
                    format!("{type_name}: {message}")
                };
                truncate_utf8(&mut text, MAX_MESSAGE_BYTES);
                (InvocationStatus::Failed, None, Some(error(kind, text)))
            }
        };
        Execution {
            status,
            result,
            error: err,
            logs,
            cold_start: false,
            memory_peak_bytes,
            init_us: 0,
            exec_us: micros(started.elapsed()),
            pull_us: 0,
            unpack_us: 0,
            cpu_time_us,
        }
    }

    /// The sandbox's CPU counter, µs (0 when it cannot be read).
    async fn cpu_usage_us(&self) -> u64 {
        match tokio::time::timeout(PEAK_WAIT, self.runtime.cpu_usage_us(&self.id)).await {
            Ok(Ok(us)) => us,
            _ => 0,
        }
    }

    /// The CPU time used between the last reading and `now` (a reading: the invocation's),
    /// remembering `now` for the next invocation.
    fn cpu_used(&mut self, now: u64) -> u64 {
        if now == 0 {
            return 0;
        }
        let used = now.saturating_sub(self.cpu_seen_us);
        self.cpu_seen_us = now;
        used
    }

    /// Destroys the container once; later calls return the first report.
    async fn kill(&mut self) -> ExitReport {
        if let Some(report) = &self.dead {
            return report.clone();
        }
        let report = match self.runtime.destroy(&self.id).await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(sandbox.id = %self.id, error = %e, "destroying the sandbox failed");
                if let Some(ids) = self.guard.ids.as_mut() {
                    ids.quarantine();
                }
                ExitReport::default()
            }
        };
        self.guard.destroy_container = false;
        self.dead = Some(report.clone());
        report
    }

    /// Destroys the container and removes its bundle directory.
    pub async fn destroy(mut self) -> ExitReport {
        let report = self.kill().await;
        let _ = tokio::fs::remove_dir_all(&self.guard.bundle_dir).await;
        self.guard.armed = false;
        tracing::debug!(sandbox.id = %self.id, "sandbox destroyed");
        report
    }
}

/// How the end of an invocation that killed its sandbox is reported.
enum Ending {
    Timeout,
    /// A caller cancelled the invocation.
    Cancelled,
    /// A response frame over the cap.
    TooLarge(String),
    /// EOF, garbage or a failed write: the sandbox died or broke the protocol.
    Died(String),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    /// The pipe failed or ended.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The length prefix announced more than the reader takes.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Reads one frame into `body`, refusing (from its length prefix, before reading or
/// allocating anything for it) a frame longer than `max` bytes; the pipe is then mid-frame.
async fn read_frame(
    reader: &mut BufReader<pipe::Receiver>,
    body: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    body.clear();
    body.resize(len, 0);
    reader.read_exact(body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_from_its_length_prefix() {
        let (rx, tx) = host_pipe().unwrap();
        let mut reader = BufReader::new(pipe::Receiver::from_owned_fd(rx).unwrap());
        let mut writer = pipe::Sender::from_owned_fd(tx).unwrap();
        // A 4 GiB frame announced: refused at once, nothing allocated for it.
        writer.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut body = Vec::new();
        match read_frame(&mut reader, &mut body, 1024).await {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, 1024);
            }
            other => panic!("the frame must be refused, got {other:?}"),
        }
        assert_eq!(body.capacity(), 0, "nothing was allocated for the frame");
        // A frame at the limit is read whole.
        writer.write_all(&1024u32.to_be_bytes()).await.unwrap();
        writer.write_all(&[b'x'; 1024]).await.unwrap();
        read_frame(&mut reader, &mut body, 1024).await.unwrap();
        assert_eq!(body, vec![b'x'; 1024]);
    }

    #[test]
    fn exit_reports_map_to_error_kinds() {
        let oom = ExitReport {
            oom_killed: true,
            signal: Some(9),
            ..ExitReport::default()
        };
        let e = death_error(&oom, 128, "sandbox died");
        assert_eq!(e.kind, ErrorKind::Oom);
        assert!(e.message.contains("128 MiB"));
        let killed = ExitReport {
            signal: Some(9),
            ..ExitReport::default()
        };
        let e = death_error(&killed, 128, "sandbox died");
        assert_eq!(e.kind, ErrorKind::Crashed);
        assert_eq!(e.message, "sandbox died (killed by signal 9)");
        let exited = ExitReport {
            exit_code: Some(3),
            ..ExitReport::default()
        };
        assert_eq!(death_error(&exited, 64, "x").message, "x (exit code 3)");
    }
}
