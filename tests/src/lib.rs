//! The integration-test harness: [`TestApp`] starts a real `fnmesh up` process on a free
//! loopback port with its own data directory, and talks to it over real HTTP. The process is
//! stopped (SIGTERM, then SIGKILL) when the `TestApp` is dropped.
//!
//! The binary is `$FNMESH_BIN` if set; otherwise the harness builds the `fnmesh` binary of
//! this workspace once (`cargo build -p fnmesh-cli`) into the same target directory as the
//! test binary, so tests never run a stale binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

pub mod archive;
pub mod deploy;
pub mod images;
pub mod mesh;
pub mod nats_roles;
pub mod servers;

/// The admin key every TestApp is started with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// Path of the `fnmesh` binary under test.
pub fn fnmesh_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("FNMESH_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test binary> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "fnmesh-cli",
            "--bin",
            "fnmesh",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the fnmesh binary");
        assert!(status.success(), "building the fnmesh binary failed");
        profile_dir.join("fnmesh")
    })
    .clone()
}

/// What a run of the `fnmesh` CLI gave: whether it exited 0, its stdout and its stderr.
pub struct CliRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `fnmesh` CLI with `args` against the API at `base_url` as the admin, `stdin` on
/// its standard input.
pub fn run_cli(base_url: &str, args: &[&str], stdin: &str) -> CliRun {
    use std::io::Write as _;
    let mut child = std::process::Command::new(fnmesh_bin())
        .args(args)
        .env("FNMESH_URL", base_url)
        .env("FNMESH_API_KEY", ADMIN_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the fnmesh CLI");
    child
        .stdin
        .take()
        .expect("the CLI's stdin")
        .write_all(stdin.as_bytes())
        .expect("writing the CLI's stdin");
    let out = child.wait_with_output().expect("running the fnmesh CLI");
    CliRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A free TCP port on 127.0.0.1, for a server a test starts. Picked below the kernel's
/// ephemeral range (32768 and up by default): a port the kernel handed out for `:0` is in
/// that range, and between this check and the server's bind an outgoing connection of a
/// concurrent test could take it (seen: a nats-server's monitor port "already in use").
/// A port is handed out once per test process: two tests running side by side could
/// otherwise both probe the same port free before either server binds it (seen: garage's
/// RPC port "already in use" while the other deploy test started its servers).
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = (LOW + rand_u32() % (HIGH - LOW)) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Fails with a clear message when the tests are not run as root (sandboxes need it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create real sandboxes (cgroups, namespaces) and must run as root; \
         run them with sudo or as root (CI runs as root)"
    );
}

/// A running `fnmesh up` with its own data dir and port.
/// The HTTP client every test uses: a 120 s timeout, and rustls on ring (reqwest leaves the
/// crypto provider to the application).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

pub struct TestApp {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The port the API listens on.
    pub port: u16,
    /// Its data directory.
    pub data_dir: tempfile::TempDir,
    /// HTTP client.
    pub http: reqwest::Client,
    log_path: PathBuf,
}

/// A response: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestApp {
    /// Starts `fnmesh up` and waits until `/healthz` answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts `fnmesh up` with extra environment variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        require_root();
        let data_dir = tempfile::Builder::new()
            .prefix("fnmesh-test-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let log_path = data_dir.path().join("fnmesh-up.log");
        let child = spawn_up(data_dir.path(), port, &log_path, env);
        let mut app = TestApp {
            child: Some(child),
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            data_dir,
            http: http_client(),
            log_path,
        };
        app.wait_healthy(Duration::from_secs(30)).await;
        app
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint), bounded.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "fnmesh did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `fnmesh up` again on the same port and data dir (after it stopped or crashed).
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        if self.child.is_some() {
            let _ = self.terminate(Duration::from_secs(15));
        }
        self.child = Some(spawn_up(
            self.data_dir.path(),
            self.port,
            &self.log_path,
            env,
        ));
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    async fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "fnmesh up exited early with {status}; its log:\n{}",
                    self.log()
                );
            }
            let ok = self
                .http
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!("fnmesh up did not become healthy; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a request with the admin key.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call_with(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            Some(ADMIN_KEY),
        )
        .await
    }

    /// Sends raw bytes with an optional key.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {path} failed: {e}; fnmesh log:\n{}", self.log()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{path}: non-JSON body ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    /// Deploys `files` (path, content) as a zip; panics unless 201.
    pub async fn deploy(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        files: &[(&str, &str)],
    ) -> Value {
        self.deploy_with(name, runtime, handler, files, json!({}))
            .await
    }

    /// Deploys with a config object; panics unless 201.
    pub async fn deploy_with(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        files: &[(&str, &str)],
        config: Value,
    ) -> Value {
        let r = self
            .call(
                "POST",
                "/v1/functions",
                Some(function_body(name, runtime, handler, files, config)),
            )
            .await;
        assert_eq!(r.status, 201, "deploy {name}: {:?}", r.body);
        r.body
    }

    /// Sync invoke; returns the response.
    pub async fn invoke(&self, name: &str, payload: Value) -> Resp {
        self.call(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(payload),
        )
        .await
    }

    /// Sync invoke that must answer 200; returns the InvocationResult.
    pub async fn invoke_ok(&self, name: &str, payload: Value) -> Value {
        let r = self.invoke(name, payload).await;
        assert_eq!(
            r.status,
            200,
            "invoke {name}: {:?}\nlog:\n{}",
            r.body,
            self.log()
        );
        r.body
    }

    /// Polls an invocation until it is terminal.
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self
                .call("GET", &format!("/v1/invocations/{id}"), None)
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let s = r.body["status"].as_str().unwrap_or("").to_owned();
            if ["succeeded", "failed", "timeout"].contains(&s.as_str()) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "invocation {id} still {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status (bounded).
    pub fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped");
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait()? {
                let took =
                    within.saturating_sub(deadline.saturating_duration_since(Instant::now()));
                if took > within / 3 {
                    eprintln!(
                        "fnmesh took {took:?} to exit after SIGTERM; its log:\n{}",
                        self.log()
                    );
                }
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "fnmesh did not exit within {within:?} of SIGTERM; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns `fnmesh up` on `port` with `data_dir`, appending its output to `log_path`.
fn spawn_up(data_dir: &Path, port: u16, log_path: &Path, env: &[(&str, &str)]) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let data_dir = data_dir.to_string_lossy().into_owned();
    let mut all = vec![
        ("FNMESH_LISTEN", listen.as_str()),
        ("FNMESH_DATA_DIR", data_dir.as_str()),
        ("FNMESH_ADMIN_KEY", ADMIN_KEY),
    ];
    all.extend_from_slice(env);
    spawn_fnmesh("up", &all, log_path)
}

/// Spawns `fnmesh <subcommand>` with a cleared environment (PATH, debug logs, then `env`),
/// appending its output to `log_path`.
pub fn spawn_fnmesh(subcommand: &str, env: &[(&str, &str)], log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("log file");
    let mut cmd = Command::new(fnmesh_bin());
    cmd.arg(subcommand)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FNMESH_LOG", "info,fnmesh=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning fnmesh")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(Duration::from_secs(15));
        }
    }
}

/// The JSON body of `POST /v1/functions` with `files` zipped.
pub fn function_body(
    name: &str,
    runtime: &str,
    handler: &str,
    files: &[(&str, &str)],
    config: Value,
) -> Value {
    let zip = archive::zip_of(
        &files
            .iter()
            .map(|(p, c)| (*p, c.as_bytes(), 0o755))
            .collect::<Vec<_>>(),
    );
    json!({
        "name": name,
        "runtime": runtime,
        "handler": handler,
        "code": {"source": b64(&zip), "source_type": "inline"},
        "config": config,
    })
}

/// Standard base64.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `content` to `path` (for fixtures).
pub fn write_file(path: &Path, content: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(content).unwrap();
}

/// A unique function name for a test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand_u32() & 0xff_ffff)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
