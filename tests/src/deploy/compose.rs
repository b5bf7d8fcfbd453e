//! `docker-compose.yml` run without Docker: [`FakeCompose`] reads the file (YAML, merge keys
//! applied), replaces Compose's `${VAR}`/`${VAR:?msg}`/`${VAR:-default}` interpolations with
//! the operator's environment it is given, and starts services in `depends_on` order as local
//! processes, waiting for each condition (`service_healthy`: the service's own healthcheck
//! command, run locally; `service_completed_successfully`: exit 0).
//!
//! Every `<service>:<port>` the stack uses gets a free loopback port, so `nats://nats:4222`
//! becomes `nats://127.0.0.1:<port>` in environments, commands, healthchecks and configs, and a
//! listen address of a service (`0.0.0.0:8080`, `127.0.0.1:9102`) its own port. Named volumes
//! are temp dirs (a mount's path is replaced by its dir), each fnmesh service gets its own
//! `FNMESH_DATA_DIR` (the image's `ENV`), and images map to local stand-ins: the fnmesh build to
//! the `fnmesh` binary, `nats:*` to `nats-server`, `dxflrs/garage:*` to `garage`, while
//! `postgres:*` and `redis:*` are the harness's servers (their URLs are the services').
//! `nats init`'s port flags are the servers' ports, so the configs it writes listen where the
//! other services look.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;

use crate::mesh::MeshProc;

/// The ports each kind of service listens on inside its container.
const KNOWN_PORTS: &[(&str, &[u16])] = &[
    ("nats", &[4222, 7422, 8222]),
    ("postgres", &[5432]),
    ("redis", &[6379]),
    ("garage", &[3900, 3901, 3903]),
    ("gateway", &[8080]),
    ("node", &[9102]),
];

/// A stand-in for `docker compose up` (see the module docs).
pub struct FakeCompose {
    doc: Value,
    dir: tempfile::TempDir,
    /// The operator's environment (the `${VAR}` values).
    operator_env: BTreeMap<String, String>,
    /// (service, container port) → loopback port.
    ports: BTreeMap<(String, u16), u16>,
    /// Running services by name.
    pub running: BTreeMap<String, MeshProc>,
    /// Services started (or stood in for).
    started: std::collections::BTreeSet<String>,
    /// Environment of each started service.
    pub envs: BTreeMap<String, BTreeMap<String, String>>,
}

impl FakeCompose {
    /// Reads `file`; `operator_env` holds the values of `${VAR}`s.
    pub fn load(file: &Path, operator_env: &[(&str, &str)]) -> Self {
        let text = std::fs::read_to_string(file).unwrap();
        let mut doc: Value = serde_yaml::from_str(&text).unwrap();
        doc.apply_merge().unwrap();
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (_, service) in services.iter_mut() {
                service.apply_merge().unwrap();
                if let Some(env) = service.get_mut("environment") {
                    env.apply_merge().unwrap();
                }
            }
        }
        let mut compose = Self {
            doc,
            dir: tempfile::Builder::new()
                .prefix("fnmesh-fake-compose-")
                .tempdir()
                .unwrap(),
            operator_env: operator_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: BTreeMap::new(),
            running: BTreeMap::new(),
            started: Default::default(),
            envs: BTreeMap::new(),
        };
        let mut names = compose.service_names(None);
        names.extend(compose.service_names(Some("edge")));
        let mut taken = std::collections::BTreeSet::new();
        for name in names {
            for port in compose.container_ports(&name) {
                // Distinct ports (an ephemeral port can come back from two probes).
                let local = std::iter::repeat_with(crate::free_port)
                    .find(|p| taken.insert(*p))
                    .unwrap();
                compose.ports.insert((name.clone(), port), local);
            }
        }
        compose
    }

    /// The service `name` as written (merged).
    pub fn service(&self, name: &str) -> &Value {
        &self.doc["services"][name]
    }

    /// Marks `service` (`postgres:*`, `redis:*`) as served by a harness server on `local`.
    pub fn stand_in(&mut self, service: &str, port: u16, local: u16) {
        self.ports.insert((service.to_owned(), port), local);
    }

    /// The loopback port of `service`'s container port `port`.
    pub fn port(&self, service: &str, port: u16) -> u16 {
        *self
            .ports
            .get(&(service.to_owned(), port))
            .unwrap_or_else(|| panic!("{service} has no port {port}"))
    }

    /// Services without a profile (`None`) or of `profile`, in file order.
    pub fn service_names(&self, profile: Option<&str>) -> Vec<String> {
        self.doc["services"]
            .as_mapping()
            .unwrap()
            .iter()
            .filter(|(_, s)| {
                let profiles: Vec<&str> = s["profiles"]
                    .as_sequence()
                    .map(|p| p.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match profile {
                    None => profiles.is_empty(),
                    Some(p) => profiles.contains(&p),
                }
            })
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect()
    }

    fn kind(&self, name: &str) -> &'static str {
        let svc = self.service(name);
        let image = svc["image"].as_str().unwrap_or_default();
        let command = serde_yaml::to_string(&svc["command"]).unwrap_or_default();
        if image.starts_with("nats:") {
            "nats"
        } else if image.starts_with("postgres:") {
            "postgres"
        } else if image.starts_with("redis:") {
            "redis"
        } else if image.starts_with("dxflrs/garage:") {
            "garage"
        } else if command.contains("gateway") {
            "gateway"
        } else if command.contains("node") {
            "node"
        } else {
            "other"
        }
    }

    fn container_ports(&self, name: &str) -> Vec<u16> {
        let kind = self.kind(name);
        KNOWN_PORTS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default()
    }

    /// `${VAR}`, `${VAR:?msg}`, `${VAR:-default}` replaced from the operator's environment.
    fn interpolate(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').unwrap() + start;
            let inner = &rest[start + 2..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner.split(":?").next().unwrap(), None),
            };
            let value = self
                .operator_env
                .get(name)
                .cloned()
                .or(default.map(str::to_owned))
                .unwrap_or_else(|| panic!("compose needs ${{{name}}} (`{inner}`)"));
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Hosts and paths of the containers replaced by the local ones, for service `name`.
    fn localize(&self, name: &str, text: &str) -> String {
        let mut text = self.interpolate(text);
        // Longest names first: `edge-nats:4222` is not `nats:4222`.
        let mut ports: Vec<_> = self.ports.iter().collect();
        ports.sort_by_key(|((service, _), _)| std::cmp::Reverse(service.len()));
        for ((service, port), local) in ports {
            text = text.replace(&format!("{service}:{port}"), &format!("127.0.0.1:{local}"));
            if service == name {
                for own in [format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")] {
                    text = text.replace(&own, &format!("127.0.0.1:{local}"));
                }
            }
        }
        for (mount, dir) in self.mounts(name) {
            text = replace_path(&text, &mount, &dir);
        }
        text
    }

    /// (container path, host dir) of `name`'s volumes.
    fn mounts(&self, name: &str) -> Vec<(String, PathBuf)> {
        self.service(name)["volumes"]
            .as_sequence()
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .map(|spec| {
                        let mut parts = spec.split(':');
                        let volume = parts.next().unwrap();
                        let path = parts.next().unwrap();
                        let dir = self.dir.path().join("volumes").join(volume);
                        std::fs::create_dir_all(&dir).unwrap();
                        (path.to_owned(), dir)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn strings(&self, name: &str, value: &Value) -> Vec<String> {
        match value {
            Value::Sequence(items) => items
                .iter()
                .map(|i| self.localize(name, i.as_str().unwrap()))
                .collect(),
            Value::String(s) => s
                .split_whitespace()
                .map(|w| self.localize(name, w))
                .collect(),
            Value::Null => Vec::new(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn env(&self, name: &str) -> BTreeMap<String, String> {
        self.service(name)["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                        };
                        (k.as_str().unwrap().to_owned(), self.localize(name, &v))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `name` after its dependencies (starting those first), and waits until it is
    /// healthy (if it has a healthcheck) or done (if it runs once).
    pub fn up(&mut self, name: &str) {
        if self.started.contains(name) {
            return;
        }
        self.started.insert(name.to_owned());
        let deps: Vec<(String, String)> = self.service(name)["depends_on"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v["condition"]
                                .as_str()
                                .unwrap_or("service_started")
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (dep, condition) in &deps {
            self.up(dep);
            if condition == "service_healthy" {
                assert!(
                    self.service(dep).get("healthcheck").is_some(),
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                );
            }
        }
        let kind = self.kind(name);
        let mut env = self.env(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let svc = self.service(name).clone();
        let mut command = match kind {
            // The harness's servers stand in ([`Self::stand_in`]).
            "postgres" | "redis" => return,
            "nats" => {
                let binary =
                    fnmesh_core::nats::server::find_binary().unwrap_or_else(|e| panic!("{e}"));
                let args = self.strings(name, &svc["command"]);
                let mut args = args.clone();
                for i in 0..args.len() {
                    if args[i] == "-m" {
                        args[i + 1] = self.port(name, args[i + 1].parse().unwrap()).to_string();
                    }
                }
                let conf = args[args.iter().position(|a| a == "-c").unwrap() + 1].clone();
                super::assert_config_valid(&binary, Path::new(&conf));
                let mut c = Command::new(binary);
                c.args(&args);
                c
            }
            "garage" => {
                let binary = super::super::servers::find_binary(
                    "garage",
                    "FNMESH_TEST_GARAGE",
                    "cargo install garage --locked (about 8 minutes)",
                );
                let config = self.garage_config(name, &svc);
                env.insert("GARAGE_CONFIG_FILE".into(), config);
                env.insert("RUST_LOG".into(), "garage=info".into());
                let args = self.strings(name, &svc["command"]);
                assert_eq!(args[0], "/garage", "{name}");
                let mut c = Command::new(binary);
                c.args(&args[1..]);
                c
            }
            _ => {
                // The fnmesh image: its entrypoint is the binary; `entrypoint` may replace it.
                let data = self.dir.path().join("data").join(name);
                env.entry("FNMESH_DATA_DIR".into())
                    .or_insert_with(|| data.to_str().unwrap().to_owned());
                let entrypoint = self.strings(name, &svc["entrypoint"]);
                let mut args = self.strings(name, &svc["command"]);
                if entrypoint.is_empty() {
                    let mut c = Command::new(crate::fnmesh_bin());
                    c.args(&args);
                    c
                } else {
                    assert_eq!(entrypoint, ["/bin/sh", "-c"], "{name}");
                    args = vec![self.nats_init_script(name, &svc)];
                    let mut c = Command::new("/bin/sh");
                    c.arg("-c").args(&args);
                    c
                }
            }
        };
        let bin_dir = crate::fnmesh_bin().parent().unwrap().to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log_file = std::fs::File::create(&log).unwrap();
        let child = command
            .env_clear()
            .env("PATH", path)
            .env("FNMESH_LOG", "info,fnmesh=debug")
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut proc = MeshProc::adopt(child, log, name);
        if svc["restart"].as_str() == Some("no") {
            let status = proc
                .wait_exit(Duration::from_secs(60))
                .unwrap_or_else(|| panic!("{name} did not finish"));
            assert!(status.success(), "{name} failed: {}", proc.log());
        } else if svc.get("healthcheck").is_some() {
            self.wait_healthy(name, &svc, &env, &mut proc);
        }
        self.envs.insert(name.to_owned(), env);
        self.running.insert(name.to_owned(), proc);
    }

    /// Runs the service's healthcheck command locally until it passes.
    fn wait_healthy(
        &self,
        name: &str,
        svc: &Value,
        env: &BTreeMap<String, String>,
        proc: &mut MeshProc,
    ) {
        let test = self.strings(name, &svc["healthcheck"]["test"]);
        assert_eq!(test[0], "CMD", "{name}: {test:?}");
        let program = match test[1].as_str() {
            "/garage" => super::super::servers::find_binary(
                "garage",
                "FNMESH_TEST_GARAGE",
                "cargo install garage --locked",
            ),
            other => PathBuf::from(other),
        };
        // The check's own timeout (`timeout: 3s`): a check that hangs has failed.
        let timeout = svc["healthcheck"]["timeout"]
            .as_str()
            .map(|t| super::nomad::duration_secs(t).unwrap())
            .unwrap_or(30);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut check = Command::new(&program)
                .args(&test[2..])
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "{name}: healthcheck {}: {e} (is it installed?)",
                        program.display()
                    )
                });
            let check_deadline = Instant::now() + Duration::from_secs(timeout);
            let ok = loop {
                if let Some(status) = check.try_wait().unwrap() {
                    break status.success();
                }
                if Instant::now() > check_deadline {
                    super::super::servers::kill(&mut check);
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if ok {
                return;
            }
            if let Some(status) = proc.exited() {
                panic!("{name} exited with {status}: {}", proc.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: healthcheck {test:?} did not pass: {}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `nats init` command of `name` with the servers' ports as port flags.
    fn nats_init_script(&self, name: &str, svc: &Value) -> String {
        let script = svc["command"][0].as_str().unwrap();
        let words: Vec<String> = script.split_whitespace().map(str::to_owned).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            let next = words.get(i + 1).cloned().unwrap_or_default();
            let value = match word.as_str() {
                "--port" => Some(self.port("nats", next.parse().unwrap()).to_string()),
                "--leafnode-port" => Some(self.port("nats", next.parse().unwrap()).to_string()),
                "--host" => Some("127.0.0.1".to_owned()),
                // Where the hub's server keeps its data (the servers' data volumes).
                "--store-dir" => Some(
                    self.mounts("nats")
                        .into_iter()
                        .find(|(path, _)| *path == next)
                        .map(|(_, dir)| dir.to_str().unwrap().to_owned())
                        .unwrap_or_else(|| panic!("nats mounts nothing at {next}")),
                ),
                "--edge" => {
                    let (edge, port) = next.split_once('=').unwrap();
                    let server = self
                        .service_names(Some("edge"))
                        .into_iter()
                        .find(|s| {
                            serde_yaml::to_string(&self.service(s)["command"])
                                .unwrap()
                                .contains(&format!("edge-{edge}.conf"))
                        })
                        .unwrap_or_else(|| panic!("no service runs edge {edge}"));
                    Some(format!(
                        "{edge}={}",
                        self.port(&server, port.parse().unwrap())
                    ))
                }
                _ => None,
            };
            out.push(self.localize(name, word));
            if let Some(value) = value {
                out.push(value);
                i += 1;
            }
            i += 1;
        }
        out.join(" ")
    }

    /// Garage's config from the compose `configs` it mounts, localized; returns its path.
    fn garage_config(&self, name: &str, svc: &Value) -> String {
        let source = svc["configs"][0]["source"].as_str().unwrap();
        let content = self.doc["configs"][source]["content"].as_str().unwrap();
        let mut text = self.localize(name, content);
        for port in self.container_ports(name) {
            text = text.replace(
                &format!("0.0.0.0:{port}"),
                &format!("127.0.0.1:{}", self.port(name, port)),
            );
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// `path` (a whole word or a prefix followed by `/`) replaced by `dir` in `text`.
fn replace_path(text: &str, path: &str, dir: &Path) -> String {
    let dir = dir.to_str().unwrap();
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(path) {
        let before_ok = i == 0 || matches!(rest.as_bytes()[i - 1], b'"' | b' ' | b'=' | b'\n');
        let after = &rest[i + path.len()..];
        let after_ok =
            after.is_empty() || matches!(after.as_bytes()[0], b'/' | b'"' | b' ' | b'\n');
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { dir } else { path });
        rest = after;
    }
    out.push_str(rest);
    out
}
