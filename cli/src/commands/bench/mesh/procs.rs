//! The processes `fnmesh bench mesh` starts and always stops (drop guards): a
//! `nats-server -js`, and `fnmesh gateway` and `fnmesh node` as children of this binary, or
//! one `fnmesh up` (the embedded mode: gateway and node in one process on the in-process bus).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fnmesh_core::subjects::{self, BusPrefix, BusRole};

/// How long a child gets to drain after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A child process with its log file: SIGTERM, then SIGKILL after [`STOP_GRACE`], on drop.
pub(super) struct ChildProc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildProc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name,
            child: Some(child),
            log,
        })
    }

    /// Fails (with its log) if the process has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited early with {status}; its log:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
        }
        Ok(())
    }

    /// Its process id, while it runs.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: {} did not stop in time; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub(super) struct NatsServer {
    pub(super) proc: ChildProc,
    pub(super) url: String,
    /// Its HTTP monitoring endpoint (`/varz` counts the messages it carried).
    pub(super) monitor: String,
}

/// Starts `nats-server -js` on a free loopback port with its store in `dir`.
pub(super) fn start_nats(dir: &Path) -> Result<NatsServer> {
    let binary = fnmesh_core::nats::server::find_binary()
        .map_err(|e| anyhow::anyhow!("{e}; or point the benchmark at a server with --nats-url"))?;
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let monitor_port = free_port()?;
    let mut cmd = Command::new(&binary);
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor_port.to_string(), "-sd"])
        .arg(dir.join("store"));
    let mut proc = ChildProc::spawn("nats-server", cmd, dir.join("nats.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        proc.check_running()?;
        ensure!(
            Instant::now() < deadline,
            "nats-server did not listen on port {port}; its log:\n{}",
            proc.tail(40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(NatsServer {
        proc,
        url: format!("nats://127.0.0.1:{port}"),
        monitor: format!("http://127.0.0.1:{monitor_port}"),
    })
}

/// The gateway and node child processes (the node stops first), or one `fnmesh up`.
pub(super) struct MeshProcs {
    /// `None` in the embedded mode (the node runs in the gateway's process).
    node: Option<ChildProc>,
    gateway: ChildProc,
    /// The region (the bus prefix) both run in; `None` in the embedded mode (no NATS).
    region: Option<String>,
    pub(super) base_url: String,
    pub(super) admin_key: String,
}

impl MeshProcs {
    pub(super) fn start(work: &Path, nats_url: &str, concurrency: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fnmesh binary")?;
        let region = format!("bench-{:08x}", rand::random::<u32>());
        let code_dir = work.join("code");
        std::fs::create_dir_all(&code_dir)?;
        let port = free_port()?;
        let admin_key = format!("bench-{:032x}", rand::random::<u128>());
        let log_filter = std::env::var("FNMESH_LOG").unwrap_or_else(|_| "info".to_owned());
        let base = |sub: &str, data: &str| {
            let mut cmd = Command::new(&exe);
            cmd.arg(sub)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("FNMESH_LOG", &log_filter)
                .env("FNMESH_NATS_URL", nats_url)
                .env("FNMESH_REGION", &region)
                .env("FNMESH_CODE_STORE", &code_dir)
                .env("FNMESH_DATA_DIR", work.join(data))
                .env("FNMESH_DRAIN_SECS", "10");
            cmd
        };
        // The gateway signs its work with this key; the node trusts it.
        let signing = fnmesh_core::signing::SigningKey::generate();
        let mut gw = base("gateway", "gateway");
        gw.env("FNMESH_SIGNING_KEY", signing.seed())
            .env("FNMESH_LISTEN", format!("127.0.0.1:{port}"))
            .env("FNMESH_ADMIN_KEY", &admin_key)
            // The per-key and per-namespace limits (1,000/s and 5,000/s by default) would cap
            // the throughput measured.
            .env("FNMESH_KEY_RATE_LIMIT", "0")
            .env("FNMESH_NAMESPACE_RATE_LIMIT", "0");
        pass_node_settings(&mut gw);
        let gateway = ChildProc::spawn("fnmesh gateway", gw, work.join("gateway.log"))?;
        let mut nd = base("node", "node");
        nd.env("FNMESH_TRUSTED_KEYS", signing.public_key())
            .env("FNMESH_NODE_ID", format!("{region}-node"))
            .env("FNMESH_NODE_SLOTS", concurrency.to_string())
            .env("FNMESH_MAX_SANDBOXES", (concurrency + 8).to_string());
        pass_node_settings(&mut nd);
        let node = ChildProc::spawn("fnmesh node", nd, work.join("node.log"))?;
        Ok(Self {
            node: Some(node),
            gateway,
            region: Some(region),
            base_url: format!("http://127.0.0.1:{port}"),
            admin_key,
        })
    }

    /// Starts `fnmesh up` on its embedded defaults (SQLite, a local code directory, the
    /// in-process bus) in `work/embedded`, with the same slots, sandbox cap and rate limits
    /// as [`Self::start`] gives the mesh.
    pub(super) fn start_embedded(work: &Path, concurrency: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fnmesh binary")?;
        let dir = work.join("embedded");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let admin_key = format!("bench-{:032x}", rand::random::<u128>());
        let mut cmd = Command::new(&exe);
        cmd.arg("up")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "FNMESH_LOG",
                std::env::var("FNMESH_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("FNMESH_DATA_DIR", dir.join("data"))
            .env("FNMESH_DRAIN_SECS", "10")
            .env("FNMESH_LISTEN", format!("127.0.0.1:{port}"))
            .env("FNMESH_ADMIN_KEY", &admin_key)
            .env("FNMESH_KEY_RATE_LIMIT", "0")
            .env("FNMESH_NAMESPACE_RATE_LIMIT", "0")
            .env("FNMESH_NODE_SLOTS", concurrency.to_string())
            .env("FNMESH_MAX_SANDBOXES", (concurrency + 8).to_string());
        pass_node_settings(&mut cmd);
        let gateway = ChildProc::spawn("fnmesh up", cmd, dir.join("up.log"))?;
        Ok(Self {
            node: None,
            gateway,
            region: None,
            base_url: format!("http://127.0.0.1:{port}"),
            admin_key,
        })
    }

    /// Starts the composed floor's relay gateway and relay node (`fnmesh bench
    /// __relay-gateway`, `__relay-node`: see `relay.rs`) over `nats_url`, the node running
    /// `concurrency` calls at once in `work/relay` (with `jetstream`, the JetStream floor's,
    /// in `work/relay-js`).
    pub(super) fn start_relay(
        work: &Path,
        nats_url: &str,
        concurrency: usize,
        jetstream: bool,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fnmesh binary")?;
        let dir = work.join(if jetstream { "relay-js" } else { "relay" });
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let subject = format!("bench.relay.{:016x}", rand::random::<u64>());
        let base = |sub: &str| {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", sub, "--nats-url", nats_url, "--subject", &subject])
                .args(["--slots", &concurrency.to_string()])
                .args(jetstream.then_some("--jetstream"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("FNMESH_LOG", "warn");
            cmd
        };
        let mut gw = base("__relay-gateway");
        gw.args(["--listen", &format!("127.0.0.1:{port}")]);
        let gateway = ChildProc::spawn("relay gateway", gw, dir.join("gateway.log"))?;
        let mut nd = base("__relay-node");
        nd.arg("--work-dir").arg(dir.join("node"));
        let node = ChildProc::spawn("relay node", nd, dir.join("node.log"))?;
        Ok(Self {
            node: Some(node),
            gateway,
            region: None,
            base_url: format!("http://127.0.0.1:{port}"),
            admin_key: String::new(),
        })
    }

    /// The name of the region's node event stream (`None` in the embedded mode).
    pub(super) fn events_stream(&self) -> Result<Option<String>> {
        let Some(region) = &self.region else {
            return Ok(None);
        };
        let prefix = BusPrefix::parse(region)?;
        Ok(Some(subjects::bus_stream(&prefix, BusRole::Events)))
    }

    /// The name of the region's work stream.
    pub(super) fn work_stream(&self) -> Result<String> {
        let region = self
            .region
            .as_deref()
            .context("the embedded mode has no work stream")?;
        let prefix = BusPrefix::parse(region)?;
        Ok(subjects::bus_stream(&prefix, BusRole::Invocations))
    }

    /// Polls the gateway's `/readyz` (every backend answers) until `within` passes.
    pub(super) async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        within: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("{}/readyz", self.base_url);
        loop {
            self.gateway.check_running()?;
            if let Some(node) = &mut self.node {
                node.check_running()?;
            }
            let ready = http
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the gateway was not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process ids of the gateway and the node.
    pub(super) fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.gateway.pid(),
            self.node.as_ref().and_then(ChildProc::pid),
        )
    }

    pub(super) fn log_tails(&self) -> String {
        let mut out = format!(
            "--- {} log (last lines) ---\n{}",
            self.gateway.name,
            self.gateway.tail(30)
        );
        if let Some(node) = &self.node {
            out += &format!(
                "\n--- {} log (last lines) ---\n{}",
                node.name,
                node.tail(30)
            );
        }
        out
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Settings a benchmark run passes on from its own environment to the processes it starts
/// (to compare them): `FNMESH_SANDBOX_SUPERVISORS` (nodes), `FNMESH_FUNCTION_CONSUMER_IDLE_SECS`
/// (gateways).
fn pass_node_settings(cmd: &mut Command) {
    for name in [
        "FNMESH_SANDBOX_SUPERVISORS",
        "FNMESH_FUNCTION_CONSUMER_IDLE_SECS",
        "FNMESH_DIRECT_SYNC",
    ] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
}
