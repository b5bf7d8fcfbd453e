//! A mesh of real processes for integration tests: one `fnmesh gateway` and any number of
//! `fnmesh node`s over a harness-started `nats-server -js`, each with its own data directory
//! and log file, sharing one region (bus prefix). Only the gateway has a code store (a local
//! directory); nodes fetch code from the region's NATS code bucket, as in production.
//!
//! Processes are stopped with SIGTERM (then SIGKILL) when dropped; [`MeshProc::kill9`] and
//! [`MeshProc::sigterm`] let a test crash or drain one on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::nats::TestNats;
use crate::{free_port, require_root, spawn_fnmesh, unique, Resp, ADMIN_KEY};

/// A child `fnmesh` process with its log; SIGTERM (then SIGKILL after 15 s) on drop.
pub struct MeshProc {
    child: Option<Child>,
    /// Its log file (stdout and stderr).
    pub log_path: PathBuf,
    /// Its id (`gateway`, or the node id).
    pub id: String,
}

impl MeshProc {
    /// Takes over `child` (any process), whose output goes to `log_path`.
    pub fn adopt(child: Child, log_path: PathBuf, id: &str) -> Self {
        Self {
            child: Some(child),
            log_path,
            id: id.to_owned(),
        }
    }

    /// Whether it has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the process dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM without waiting (and SIGCONT, in case it is paused).
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.resume();
    }

    /// SIGSTOP: the process is frozen (its connections stay open) until [`Self::resume`].
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT: a paused process runs on.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for MeshProc {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.sigterm();
        if self.wait_exit(Duration::from_secs(15)).is_none() {
            self.kill9();
        }
    }
}

/// A gateway and nodes over one NATS server.
pub struct Mesh {
    /// The NATS server (dropped last).
    pub nats: TestNats,
    /// Working directory of every process.
    pub dir: tempfile::TempDir,
    /// The region shared by all processes (unique per mesh).
    pub region: String,
    /// The gateway's code directory (nodes read code over NATS).
    pub code_dir: PathBuf,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base_url: String,
    /// The gateway.
    pub gateway: MeshProc,
    /// The nodes, in start order.
    pub nodes: Vec<MeshProc>,
    /// Gateways started by [`Mesh::add_gateway`], with their base URLs.
    pub more_gateways: Vec<(MeshProc, String)>,
    /// The first gateway's environment, which [`Mesh::add_gateway`] starts more from.
    gateway_env: Vec<(String, String)>,
    /// HTTP client (120 s timeout).
    pub http: reqwest::Client,
    /// Extra environment given to every process.
    env: Vec<(String, String)>,
    /// Extra environment given to nodes only (their NATS credentials, the trusted key).
    node_env: Vec<(String, String)>,
    /// The key the gateway signs work with (nodes trust its public key): tests forge and
    /// alter signed messages with it.
    pub signing_key: fnmesh_core::signing::SigningKey,
}

impl Mesh {
    /// Starts NATS, a gateway and nodes `node_ids`, with `env` added to every process, and
    /// waits until the gateway is ready.
    pub async fn start(node_ids: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let region = unique("mesh");
        Self::start_on(TestNats::start(), region, node_ids, env, false).await
    }

    /// [`Self::start`] on a NATS server in operator mode written by `fnmesh nats init` for the
    /// mesh's region: the gateway connects with `gateway.creds`, each node with its own
    /// `node-<id>.creds`
    /// (through `FNMESH_NATS_CREDS`), and nodes start once the gateway is ready (it creates
    /// the streams and buckets, which node credentials may not).
    pub async fn start_with_accounts(node_ids: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let region = unique("mesh");
        let nats = TestNats::start_with_accounts(&[&region]);
        Self::start_on(nats, region, node_ids, env, true).await
    }

    /// [`Self::start_with_accounts`] in region `region` on `nats`, a server of a setup written
    /// by `fnmesh nats init` for it (an edge of a
    /// [`TestTopology`](crate::servers::nats::TestTopology)).
    pub async fn start_in_region(
        nats: TestNats,
        region: &str,
        node_ids: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        require_root();
        Self::start_on(nats, region.to_owned(), node_ids, env, true).await
    }

    async fn start_on(
        nats: TestNats,
        region: String,
        node_ids: &[&str],
        env: &[(&str, &str)],
        accounts: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let code_dir = dir.path().join("code");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut mesh_env = vec![
            ("FNMESH_NATS_URL".to_owned(), nats.url()),
            ("FNMESH_REGION".to_owned(), region.clone()),
        ];
        mesh_env.extend(env);
        let gw_data = dir.path().join("gateway");
        let mut gw_env = vec![
            ("FNMESH_LISTEN".to_owned(), listen.clone()),
            (
                "FNMESH_DATA_DIR".to_owned(),
                gw_data.to_str().unwrap().to_owned(),
            ),
            ("FNMESH_ADMIN_KEY".to_owned(), ADMIN_KEY.to_owned()),
            (
                "FNMESH_CODE_STORE".to_owned(),
                code_dir.to_str().unwrap().to_owned(),
            ),
        ];
        gw_env.extend(mesh_env.iter().cloned());
        let signing_key = fnmesh_core::signing::SigningKey::generate();
        gw_env.push((
            "FNMESH_SIGNING_KEY".to_owned(),
            signing_key.seed().to_owned(),
        ));
        let node_env = vec![(
            "FNMESH_TRUSTED_KEYS".to_owned(),
            signing_key.public_key().to_owned(),
        )];
        if accounts {
            // Nodes get their own credentials in `add_node`.
            let creds = nats.creds("gateway");
            gw_env.push((
                "FNMESH_NATS_CREDS".to_owned(),
                creds.to_str().unwrap().to_owned(),
            ));
        }
        let gw_log = dir.path().join("gateway.log");
        let gateway_env = gw_env.clone();
        let gateway = MeshProc {
            child: Some(spawn_fnmesh("gateway", &pairs(&gw_env), &gw_log)),
            log_path: gw_log,
            id: "gateway".into(),
        };
        let http = crate::http_client();
        let mut mesh = Self {
            nats,
            dir,
            region,
            code_dir,
            base_url: format!("http://{listen}"),
            gateway,
            nodes: Vec::new(),
            more_gateways: Vec::new(),
            gateway_env,
            http,
            env: mesh_env,
            node_env,
            signing_key,
        };
        if accounts {
            mesh.wait_ready().await;
        }
        for id in node_ids {
            mesh.add_node(id, &[]);
        }
        mesh.wait_ready().await;
        mesh
    }

    /// Starts one more gateway of the region, like the first (its NATS, signing key, code
    /// directory, secrets key and whatever store the environment names: give every gateway
    /// the same `FNMESH_DATABASE_URL` for one store) on its own port and data directory; waits
    /// until it is ready and returns its base URL.
    pub async fn add_gateway(&mut self) -> String {
        let n = self.more_gateways.len() + 2;
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let data = self.dir.path().join(format!("gateway-{n}"));
        let mut env: Vec<(String, String)> = self
            .gateway_env
            .iter()
            .filter(|(k, _)| k != "FNMESH_LISTEN" && k != "FNMESH_DATA_DIR")
            .cloned()
            .collect();
        env.push(("FNMESH_LISTEN".to_owned(), listen.clone()));
        env.push((
            "FNMESH_DATA_DIR".to_owned(),
            data.to_str().unwrap().to_owned(),
        ));
        // One secrets key for the cluster: the first gateway's (generated in its data dir).
        if !env.iter().any(|(k, _)| k.starts_with("FNMESH_SECRETS_KEY")) {
            let first = self.dir.path().join("gateway").join("secrets.key");
            env.push((
                "FNMESH_SECRETS_KEY_FILE".to_owned(),
                first.to_str().unwrap().to_owned(),
            ));
        }
        let log_path = self.dir.path().join(format!("gateway-{n}.log"));
        let proc = MeshProc {
            child: Some(spawn_fnmesh("gateway", &pairs(&env), &log_path)),
            log_path,
            id: format!("gateway-{n}"),
        };
        let base_url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .http
                .get(format!("{base_url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {n} not ready:\n{}",
                proc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.more_gateways.push((proc, base_url.clone()));
        base_url
    }

    /// Starts one more node with id `id` (and `extra` environment); returns its index.
    pub fn add_node(&mut self, id: &str, extra: &[(&str, &str)]) -> usize {
        let data = self.dir.path().join(id);
        let log = self.dir.path().join(format!("{id}.log"));
        let mut env = vec![
            ("FNMESH_NODE_ID".to_owned(), id.to_owned()),
            (
                "FNMESH_DATA_DIR".to_owned(),
                data.to_str().unwrap().to_owned(),
            ),
        ];
        env.extend(self.env.iter().cloned());
        env.extend(self.node_env.iter().cloned());
        if self.nats.has_accounts() {
            let creds = self.nats.node_creds(id);
            env.push((
                "FNMESH_NATS_CREDS".to_owned(),
                creds.to_str().unwrap().to_owned(),
            ));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.nodes.push(MeshProc {
            child: Some(spawn_fnmesh("node", &pairs(&env), &log)),
            log_path: log,
            id: id.to_owned(),
        });
        self.nodes.len() - 1
    }

    /// The node with id `id`.
    pub fn node(&mut self, id: &str) -> &mut MeshProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    /// Every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- gateway ---\n{}", self.gateway.log());
        for (g, _) in &self.more_gateways {
            out.push_str(&format!("\n--- {} ---\n{}", g.id, g.log()));
        }
        for n in &self.nodes {
            out.push_str(&format!("\n--- {} ---\n{}", n.id, n.log()));
        }
        out
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.gateway.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls the gateway as admin.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.expect("calling the gateway");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    /// Deploys `body` (see [`crate::function_body`]) and asserts 201.
    pub async fn deploy(&self, body: Value) {
        let r = self.call("POST", "/v1/functions", Some(body)).await;
        assert_eq!(r.status, 201, "deploy: {:?}", r.body);
    }

    /// Invokes `name` asynchronously with `payload`, asserts 202 and returns the invocation id.
    pub async fn invoke_async(&self, name: &str, payload: Value) -> String {
        let r = self
            .call(
                "POST",
                &format!("/v1/functions/{name}/invoke?async=true"),
                Some(payload),
            )
            .await;
        assert_eq!(r.status, 202, "async invoke: {:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Polls an invocation until it is terminal (or `within` passes, which fails the test).
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self
                .call("GET", &format!("/v1/invocations/{id}"), None)
                .await;
            if r.status == 200 {
                let s = r.body["status"].as_str().unwrap_or_default();
                if !matches!(s, "queued" | "running") {
                    return r.body;
                }
            }
            assert!(
                Instant::now() < deadline,
                "invocation {id} not terminal after {within:?}: {:?}\n{}",
                r.body,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Two meshes' logs (a hub's and an edge's), for failure messages.
pub fn both_logs(hub: &Mesh, edge: &Mesh) -> String {
    format!("=== hub ===\n{}\n=== edge ===\n{}", hub.logs(), edge.logs())
}

/// Polls `check` every 100 ms until it holds, or fails the test after `within` with `logs()`;
/// returns (and prints, for `--nocapture`: replication lags and bounds) how long it took.
pub async fn eventually<F, Fut>(
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    mut check: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let deadline = start + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{what}: after {:?}", start.elapsed());
    start.elapsed()
}
