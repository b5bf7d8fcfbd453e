//! The sandbox supervisor: a single-threaded helper process that creates, starts and destroys
//! every container of the node, and the client the node talks to it with.
//!
//! # Why a separate process
//! libcontainer forks with a raw `clone3` that skips glibc's fork handlers; from a
//! multi-threaded process (our tokio node) the child can deadlock on a `malloc` lock another
//! thread held. So containers are only ever created by this process, which never runs more than
//! one thread at a time (see `libcontainer-spike.md`).
//!
//! # How it is started
//! [`SupervisorClient::spawn`] runs `program args...` (in production `fnmesh __supervisor`) with:
//! - the supervisor's end of a `UnixStream::pair()` as **fd 3** (the only descriptor it inherits
//!   besides stdio), announced in [`FD_ENV`] (`FNMESH_SUPERVISOR_FD=3`);
//! - the libcontainer state directory in [`STATE_DIR_ENV`] (`FNMESH_SUPERVISOR_STATE_DIR`);
//! - an environment cleared except `PATH` (so no `RUST_BACKTRACE`, which costs 1.3 ms per
//!   create), stdin and stdout on `/dev/null`, stderr inherited for its log lines, and its own
//!   process group (a terminal's Ctrl-C goes to the node, which then shuts it down).
//!
//! The hidden subcommand must call [`run_supervisor_from_env`] **first thing**, before starting
//! a tokio runtime, installing a tracing subscriber, or anything else that spawns threads or
//! writes to fd 2, and exit with the code it returns:
//! ```text
//! if let Command::Supervisor = cli.command {
//!     return ExitCode::from(fnmesh_nodes::sandbox::supervisor::main_from_env());
//! }
//! ```
//!
//! # Lifecycle
//! On start the supervisor deletes containers left in the state directory by a previous
//! instance, then announces itself (`Ready`). It serves one request at a time (see
//! [`protocol`]). When the node sends `shutdown` or the socket reaches end of file (the node
//! exited or crashed), it destroys every live container and exits: containers never outlive it.
//!
//! # Sealed binary
//! Before anything else the supervisor re-executes itself from a read-only, detached bind mount
//! of its own binary ([`seal`]), so no container init ever runs from a writable host binary
//! (CVE-2019-5736 class).
//!
//! # Hygiene
//! Everything the supervisor holds is close-on-exec; received stdio descriptors are handed to
//! libcontainer (which closes its copies) and nothing is logged through `tracing`, whose output
//! would land in a container's stderr. Its own log lines go to its stderr, prefixed
//! `fnmesh-sandboxd:`.

pub mod client;
pub mod pool;
pub mod protocol;
pub mod seal;
pub mod server;

use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

pub use client::SupervisorClient;
pub use pool::SupervisorPool;
pub use server::serve;

/// Environment variable naming the supervisor's socket descriptor (always `3` when spawned by
/// [`SupervisorClient::spawn`]).
pub const FD_ENV: &str = "FNMESH_SUPERVISOR_FD";

/// Environment variable holding the libcontainer state directory.
pub const STATE_DIR_ENV: &str = "FNMESH_SUPERVISOR_STATE_DIR";

/// The descriptor number the socket is passed as.
pub const SUPERVISOR_FD: RawFd = 3;

/// [`run_supervisor_from_env`] as a `u8`, for `std::process::ExitCode::from`.
pub fn main_from_env() -> u8 {
    u8::try_from(run_supervisor_from_env()).unwrap_or(1)
}

/// Entry point of `fnmesh __supervisor` and `fnmesh-sandboxd`: reads [`FD_ENV`] and
/// [`STATE_DIR_ENV`], then runs [`serve`]. Returns the process exit code.
pub fn run_supervisor_from_env() -> i32 {
    let fd = match std::env::var(FD_ENV).map(|v| v.parse::<RawFd>()) {
        Ok(Ok(fd)) if fd > 2 => fd,
        _ => {
            eprintln!(
                "fnmesh-sandboxd: {FD_ENV} must name the inherited socket descriptor \
                 (this program is started by the fnmesh node, not by hand)"
            );
            return 2;
        }
    };
    let Some(state_dir) = std::env::var_os(STATE_DIR_ENV).map(PathBuf::from) else {
        eprintln!("fnmesh-sandboxd: {STATE_DIR_ENV} is not set");
        return 2;
    };
    // Re-executes from a read-only copy of the binary first (returns only when sealed).
    if let Err(message) = seal::ensure_sealed(&state_dir) {
        eprintln!("fnmesh-sandboxd: {message}");
        return 2;
    }
    // SAFETY: only checks the descriptor's type; it stays open and unowned here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let is_socket = nix::sys::stat::fstat(borrowed)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false);
    if !is_socket {
        eprintln!("fnmesh-sandboxd: descriptor {fd} from {FD_ENV} is not a socket");
        return 2;
    }
    // SAFETY: the spawner handed us this descriptor for exactly this purpose and nothing else in
    // the process owns it; checked above that it is an open socket.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    serve(sock, &state_dir)
}
