//! A real single-node Garage (S3-compatible object store) for tests, in a temp dir on free
//! loopback ports, killed on drop.
//!
//! The binary is `$FNMESH_TEST_GARAGE` or `garage` on PATH. The server is started with
//! `garage server --single-node --default-access-key`, which applies a one-node layout and
//! imports a random access key before the APIs start listening, so no `layout assign/apply` or
//! `key create` round trips (or parsing of their human-readable output) are needed. Readiness is
//! the admin API's `GET /health` answering 200. Each test takes its own bucket with
//! [`TestGarage::fresh_bucket`].

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fnmesh_code::conformance::random_bytes;

use super::{find_binary, kill};
use crate::free_port;

/// The `s3_region` the test Garage is configured with; clients must sign with it.
pub const REGION: &str = "garage";

const START_WITHIN: Duration = Duration::from_secs(60);

/// A running single-node Garage.
pub struct TestGarage {
    child: Child,
    binary: PathBuf,
    config: PathBuf,
    s3_port: u16,
    access_key_id: String,
    secret_access_key: String,
    log: PathBuf,
    /// Holds the config, metadata, data and log; removed on drop.
    dir: tempfile::TempDir,
}

fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TestGarage {
    /// Starts Garage and waits until it reports itself healthy.
    pub fn start() -> Self {
        let binary = find_binary(
            "garage",
            "FNMESH_TEST_GARAGE",
            "cargo install garage --locked (about 8 minutes)",
        );
        let dir = tempfile::Builder::new()
            .prefix("fnmesh-garage-")
            .tempdir()
            .expect("temp dir for garage");
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            rpc_secret = random_hex(32),
            admin_token = random_hex(32),
        );
        std::fs::write(&config, toml).expect("writing garage.toml");
        // Garage's own key format: "GK" and 24 hex digits; a 64-hex-digit secret.
        let access_key_id = format!("GK{}", random_hex(12));
        let secret_access_key = random_hex(32);
        let log = dir.path().join("garage.log");
        let log_file = std::fs::File::create(&log).expect("garage log file");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-access-key"])
            .env_clear()
            .env("RUST_LOG", "garage=info")
            .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &secret_access_key)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("garage log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let mut garage = TestGarage {
            child,
            binary,
            config,
            s3_port,
            access_key_id,
            secret_access_key,
            log,
            dir,
        };
        garage.wait_healthy(admin_port);
        garage
    }

    /// Polls the admin API's `GET /health` until it answers 200.
    fn wait_healthy(&mut self, admin_port: u16) {
        let started = Instant::now();
        let deadline = started + START_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "garage exited with {status} while starting; its log:\n{}",
                    self.log()
                );
            }
            if health_ok(admin_port) && TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                eprintln!("garage healthy after {} ms", started.elapsed().as_millis());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage was not healthy within {START_WITHIN:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `http://127.0.0.1:<s3 port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The region to sign requests with.
    pub fn region(&self) -> &str {
        REGION
    }

    /// The access key id of the key every [`fresh_bucket`](Self::fresh_bucket) is granted to.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Its secret.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The temp dir holding the config, metadata, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Garage's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates a new bucket the test key may read, write and own; returns its name.
    pub fn fresh_bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fnmesh-{}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed),
            random_hex(6)
        );
        self.cli(&["bucket", "create", &name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &name,
            "--key",
            &self.access_key_id,
        ]);
        name
    }

    /// Runs `garage -c <config> <args>` and panics (with its output) unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> Output {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running garage {args:?}: {e}"));
        assert!(
            output.status.success(),
            "garage {args:?} failed with {}:\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// Whether `GET /health` on the admin port answers 200.
fn health_ok(admin_port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", admin_port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

impl Drop for TestGarage {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
