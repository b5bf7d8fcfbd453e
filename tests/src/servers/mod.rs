//! Real servers for tests, started on free loopback ports from binaries on PATH, in temp dirs,
//! and killed on drop (the pattern of nats.rs's `nats-server` test crate).
//!
//! A missing binary is a test failure whose message says how to install it; a test never
//! passes or skips silently because a server is absent.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

pub mod garage;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod registry;

/// Finds `name`: `$<env_override>` if set, else on PATH; panics with `install_hint` otherwise.
pub fn find_binary(name: &str, env_override: &str, install_hint: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_override) {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not on PATH (or set {env_override}); install it with: {install_hint}")
    })
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, within: Duration, what: &str, child: &mut Child) {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on port {port}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps a child process.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
