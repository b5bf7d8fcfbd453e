//! The deployment files run without Docker or Nomad: [`nomad`] reads jobspecs with an HCL
//! parser, [`gotmpl`] renders their templates, and [`FakeNomad`] stands in for a Nomad cluster
//! on loopback. It keeps the Nomad variables that `deploy/nomad/put-variables.sh` puts (through
//! a `nomad` on PATH that records `nomad var put`), places a group's allocations on free
//! loopback ports (static ports too: several "machines" share this one), registers their
//! services, renders their templates into per-task `local/` and `secrets/` directories, checks
//! every NATS config with `nats-server -t`, and starts each task's command, args and environment
//! as a local process — `fnmesh` for the fnmesh image, `nats-server` for the NATS image; any
//! other image is an error. Host volumes are temp dirs, one per (client, volume), and a
//! `volume_mount`'s destination is replaced by its directory in args, environment and rendered
//! files. Processes stop on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod compose;
pub mod gotmpl;
pub mod nomad;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hcl::Value;

use crate::mesh::MeshProc;
use nomad::{attrs, block, blocks, label, text, Attrs, Jobspec};

/// The image name prefix of NATS (`nats:<version>-alpine`), run as the local `nats-server`.
const NATS_IMAGE: &str = "nats:";

/// The fnmesh image (`var.image`'s default), run as the `fnmesh` binary under test.
const FNMESH_IMAGE: &str = "fnmesh:latest";

/// One allocation of a group, placed on "machine" `client`.
pub struct Alloc {
    pub job: String,
    pub group: String,
    pub index: u32,
    pub client: String,
    pub region: String,
    /// Port label → the loopback port it got.
    pub ports: BTreeMap<String, u16>,
    /// Service name → (port, its check's evaluated attributes if it has one).
    pub services: Vec<(String, u16, Option<Attrs>)>,
    /// Its directory (alloc dir, task dirs).
    pub dir: PathBuf,
}

/// A started task.
pub struct Task {
    pub proc: MeshProc,
    /// Its whole environment (besides PATH and the log filter).
    pub env: BTreeMap<String, String>,
    /// The files its templates rendered, by destination.
    pub files: BTreeMap<String, PathBuf>,
    /// `kill_timeout` in seconds, if set.
    pub kill_timeout_secs: Option<u64>,
}

/// A stand-in for a Nomad cluster (see the module docs).
pub struct FakeNomad {
    dir: tempfile::TempDir,
    /// (namespace, region) → variable path → items.
    variables: BTreeMap<(String, String), BTreeMap<String, BTreeMap<String, String>>>,
    /// region → service name → registrations.
    services: BTreeMap<String, BTreeMap<String, Vec<gotmpl::Registration>>>,
}

impl Default for FakeNomad {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNomad {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("fnmesh-fake-nomad-")
                .tempdir()
                .unwrap(),
            variables: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }

    /// Its temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `script` with `args` and `env`, with a `nomad` on PATH that records each
    /// `nomad var put [-namespace N] [-region R] PATH key=value|key=@file …` (and fails on any
    /// other command); then keeps what it put. Returns the script's stdout.
    pub fn run_variables_script(
        &mut self,
        script: &Path,
        args: &[&Path],
        env: &[(&str, &str)],
    ) -> String {
        let bin = self.dir.path().join("bin");
        let store = self.dir.path().join("variables");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        let fake = bin.join("nomad");
        std::fs::write(&fake, FAKE_NOMAD).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("/bin/sh")
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("FAKE_NOMAD_VARS", &store)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // variables/<namespace>/<region>/<path with / as %>/<key>
        for ns in std::fs::read_dir(&store).unwrap().flatten() {
            for region in std::fs::read_dir(ns.path()).unwrap().flatten() {
                for var in std::fs::read_dir(region.path()).unwrap().flatten() {
                    let items = std::fs::read_dir(var.path())
                        .unwrap()
                        .flatten()
                        .map(|item| {
                            (
                                item.file_name().to_string_lossy().into_owned(),
                                std::fs::read_to_string(item.path()).unwrap(),
                            )
                        })
                        .collect();
                    self.variables
                        .entry((
                            ns.file_name().to_string_lossy().into_owned(),
                            region.file_name().to_string_lossy().into_owned(),
                        ))
                        .or_default()
                        .insert(var.file_name().to_string_lossy().replace('%', "/"), items);
                }
            }
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The variable `path` of `namespace` in `region`, if it was put.
    pub fn variable(
        &self,
        namespace: &str,
        region: &str,
        path: &str,
    ) -> Option<&BTreeMap<String, String>> {
        self.variables
            .get(&(namespace.to_owned(), region.to_owned()))?
            .get(path)
    }

    /// The host volume `source` of machine `client` (created empty on first use).
    pub fn host_volume(&self, client: &str, source: &str) -> PathBuf {
        let dir = self.dir.path().join("clients").join(client).join(source);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Service `name`'s registrations in `region`.
    pub fn service(&self, region: &str, name: &str) -> Vec<gotmpl::Registration> {
        self.services
            .get(region)
            .and_then(|s| s.get(name))
            .cloned()
            .unwrap_or_default()
    }

    /// Places allocation `index` of `group` on `client`: ports, services (registered at once,
    /// as a running allocation's are), directories.
    pub fn place(&mut self, spec: &Jobspec, group: &str, index: u32, client: &str) -> Alloc {
        let job = spec.job_id().unwrap();
        let job_attrs = spec.job_attrs().unwrap();
        let region = job_attrs
            .get("region")
            .map(text)
            .unwrap_or_else(|| "global".into());
        let g = spec.group(group).unwrap();
        let network = block(g.body(), "network")
            .unwrap_or_else(|| panic!("{}: group {group} has no network", spec.path.display()));
        let mut ports = BTreeMap::new();
        for port in blocks(network.body(), "port") {
            ports.insert(label(port, 0).unwrap(), crate::free_port());
        }
        let static_ctx = spec.context(&BTreeMap::new());
        let mut services = Vec::new();
        for service in blocks(g.body(), "service") {
            let a = attrs(service.body(), &static_ctx).unwrap();
            let name = text(&a["name"]);
            let port_label = text(&a["port"]);
            let port = *ports.get(&port_label).unwrap_or_else(|| {
                panic!("service {name} names port {port_label}, not one of {ports:?}")
            });
            let check = block(service.body(), "check").map(|c| {
                let mut check = attrs(c.body(), &static_ctx).unwrap();
                let check_port = check.get("port").map(text).unwrap_or(port_label.clone());
                check.insert(
                    "port".into(),
                    Value::from(u64::from(*ports.get(&check_port).unwrap_or_else(|| {
                        panic!("check of {name} names port {check_port}, not one of {ports:?}")
                    }))),
                );
                check
            });
            self.services
                .entry(region.clone())
                .or_default()
                .entry(name.clone())
                .or_default()
                .push(("127.0.0.1".into(), port));
            services.push((name, port, check));
        }
        let dir = self
            .dir
            .path()
            .join("allocs")
            .join(format!("{job}.{group}[{index}]"));
        std::fs::create_dir_all(dir.join("alloc")).unwrap();
        Alloc {
            job,
            group: group.to_owned(),
            index,
            client: client.to_owned(),
            region,
            ports,
            services,
            dir,
        }
    }

    /// Renders and starts every task of `alloc`'s group.
    pub fn start(&self, spec: &Jobspec, alloc: &Alloc) -> Vec<Task> {
        let g = spec.group(&alloc.group).unwrap();
        let namespace = spec
            .job_attrs()
            .unwrap()
            .get("namespace")
            .map(text)
            .unwrap_or_else(|| "default".into());
        let static_ctx = spec.context(&BTreeMap::new());
        // Group volume name → host dir on the alloc's client.
        let volumes: BTreeMap<String, PathBuf> = blocks(g.body(), "volume")
            .into_iter()
            .map(|v| {
                let a = attrs(v.body(), &static_ctx).unwrap();
                assert_eq!(text(&a["type"]), "host", "only host volumes are modelled");
                (
                    label(v, 0).unwrap(),
                    self.host_volume(&alloc.client, &text(&a["source"])),
                )
            })
            .collect();
        let variables = self
            .variables
            .get(&(namespace.clone(), alloc.region.clone()))
            .cloned()
            .unwrap_or_default();
        let services = self
            .services
            .get(&alloc.region)
            .cloned()
            .unwrap_or_default();
        blocks(g.body(), "task")
            .into_iter()
            .map(|t| {
                let name = label(t, 0).unwrap();
                let task_dir = alloc.dir.join(&name);
                let local = task_dir.join("local");
                let secrets = task_dir.join("secrets");
                std::fs::create_dir_all(&local).unwrap();
                std::fs::create_dir_all(&secrets).unwrap();
                let mut runtime = BTreeMap::from([
                    ("NOMAD_ALLOC_INDEX".to_owned(), alloc.index.to_string()),
                    (
                        "NOMAD_ALLOC_DIR".to_owned(),
                        path_text(&alloc.dir.join("alloc")),
                    ),
                    ("NOMAD_TASK_DIR".to_owned(), path_text(&local)),
                    ("NOMAD_SECRETS_DIR".to_owned(), path_text(&secrets)),
                    ("NOMAD_REGION".to_owned(), alloc.region.clone()),
                    ("NOMAD_NAMESPACE".to_owned(), namespace.clone()),
                    ("NOMAD_JOB_NAME".to_owned(), alloc.job.clone()),
                    ("NOMAD_GROUP_NAME".to_owned(), alloc.group.clone()),
                    ("NOMAD_TASK_NAME".to_owned(), name.clone()),
                ]);
                for (port_label, port) in &alloc.ports {
                    runtime.insert(format!("NOMAD_PORT_{port_label}"), port.to_string());
                    runtime.insert(format!("NOMAD_HOST_PORT_{port_label}"), port.to_string());
                    runtime.insert(format!("NOMAD_IP_{port_label}"), "127.0.0.1".into());
                    runtime.insert(
                        format!("NOMAD_ADDR_{port_label}"),
                        format!("127.0.0.1:{port}"),
                    );
                }
                let ctx = spec.context(&runtime);
                // volume_mount destination → host dir.
                let mounts: Vec<(String, PathBuf)> = blocks(t.body(), "volume_mount")
                    .into_iter()
                    .map(|m| {
                        let a = attrs(m.body(), &ctx).unwrap();
                        let volume = text(&a["volume"]);
                        let dir = volumes.get(&volume).unwrap_or_else(|| {
                            panic!("task {name} mounts volume {volume}, not a group volume")
                        });
                        (text(&a["destination"]), dir.clone())
                    })
                    .collect();
                let map_path = |value: &str| -> String {
                    for (dest, dir) in &mounts {
                        if value == dest {
                            return path_text(dir);
                        }
                        if let Some(rest) = value.strip_prefix(&format!("{dest}/")) {
                            return path_text(&dir.join(rest));
                        }
                    }
                    value.to_owned()
                };
                let map_text = |rendered: String| -> String {
                    mounts.iter().fold(rendered, |acc, (dest, dir)| {
                        acc.replace(&format!("\"{dest}\""), &format!("\"{}\"", dir.display()))
                            .replace(&format!("\"{dest}/"), &format!("\"{}/", dir.display()))
                    })
                };
                let task_attrs = attrs(t.body(), &ctx).unwrap();
                assert_eq!(text(&task_attrs["driver"]), "docker", "task {name}");
                let config = attrs(block(t.body(), "config").unwrap().body(), &ctx).unwrap();
                let mut env: BTreeMap<String, String> = runtime.clone();
                if let Some(e) = block(t.body(), "env") {
                    for (k, v) in attrs(e.body(), &ctx).unwrap() {
                        env.insert(k, map_path(&text(&v)));
                    }
                }
                // Templates, in order; env templates add to the environment.
                let mut files = BTreeMap::new();
                for template in blocks(t.body(), "template") {
                    let a = attrs(template.body(), &ctx).unwrap();
                    let dest = text(&a["destination"]);
                    let data = text(&a["data"]);
                    let rendered = gotmpl::render(
                        &data,
                        &gotmpl::Data {
                            variables: &variables,
                            services: &services,
                            env: &env,
                        },
                    )
                    .unwrap_or_else(|e| panic!("task {name}, template {dest}: {e}"));
                    let rendered = map_text(rendered);
                    let path = if Path::new(&dest).is_absolute() {
                        PathBuf::from(&dest)
                    } else {
                        task_dir.join(&dest)
                    };
                    assert!(
                        path.starts_with(&task_dir),
                        "template {dest} lands outside the task dir"
                    );
                    std::fs::write(&path, &rendered).unwrap();
                    if a.get("env").is_some_and(|v| v == &Value::Bool(true)) {
                        for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
                            let (k, v) = line
                                .split_once('=')
                                .unwrap_or_else(|| panic!("{dest}: not KEY=VALUE: {line:?}"));
                            env.insert(k.to_owned(), v.to_owned());
                        }
                    }
                    files.insert(dest, path);
                }
                let image = text(&config["image"]);
                let args: Vec<String> = match config.get("args") {
                    Some(Value::Array(a)) => a.iter().map(|v| map_path(&text(v))).collect(),
                    None => Vec::new(),
                    Some(other) => panic!("task {name}: args {other:?}"),
                };
                let program = if image.starts_with(NATS_IMAGE) {
                    assert!(
                        !config.contains_key("command"),
                        "{name}: nats image command"
                    );
                    // The image's entrypoint runs `nats-server "$@"` for args starting with `-`.
                    assert!(args[0].starts_with('-'), "{name}: {args:?}");
                    let binary =
                        fnmesh_core::nats::server::find_binary().unwrap_or_else(|e| panic!("{e}"));
                    let conf = args
                        .iter()
                        .position(|a| a == "-c")
                        .map(|i| args[i + 1].clone())
                        .expect("nats runs from a config file");
                    assert_config_valid(&binary, Path::new(&conf));
                    binary
                } else if image == FNMESH_IMAGE {
                    assert_eq!(
                        config.get("command").map(text).as_deref(),
                        Some("fnmesh"),
                        "{name}"
                    );
                    crate::fnmesh_bin()
                } else {
                    panic!("task {name}: no local stand-in for image {image}")
                };
                let log = alloc.dir.join(format!("{name}.log"));
                let log_file = std::fs::File::create(&log).unwrap();
                let child = Command::new(&program)
                    .args(&args)
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("FNMESH_LOG", "info,fnmesh=debug")
                    .envs(&env)
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().unwrap())
                    .stderr(log_file)
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
                let kill_timeout_secs = task_attrs
                    .get("kill_timeout")
                    .map(|v| nomad::duration_secs(&text(v)).unwrap());
                Task {
                    proc: MeshProc::adopt(
                        child,
                        log,
                        &format!("{}.{}[{}].{name}", alloc.job, alloc.group, alloc.index),
                    ),
                    env,
                    files,
                    kill_timeout_secs,
                }
            })
            .collect()
    }
}

/// Waits until every service check of `alloc` passes (an HTTP GET answering 2xx), as Nomad
/// waits before it calls an allocation healthy; `tasks` are its processes (for their logs and
/// to fail fast when one exits).
pub async fn wait_healthy(alloc: &Alloc, tasks: &mut [Task], within: Duration) {
    let http = crate::http_client();
    for (service, _, check) in &alloc.services {
        let Some(check) = check else { continue };
        assert_eq!(
            text(&check["type"]),
            "http",
            "{service}: only http checks are modelled"
        );
        let url = format!(
            "http://127.0.0.1:{}{}",
            text(&check["port"]),
            text(&check["path"])
        );
        let deadline = Instant::now() + within;
        loop {
            let ok = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            for task in tasks.iter_mut() {
                if let Some(status) = task.proc.exited() {
                    panic!(
                        "{} exited with {status}:\n{}",
                        task.proc.id,
                        task.proc.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "check {url} of service {service} did not pass within {within:?}:\n{}",
                tasks
                    .iter()
                    .map(|t| format!("--- {} ---\n{}", t.proc.id, t.proc.log()))
                    .collect::<String>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `nats-server -t -c config` must accept the config.
pub fn assert_config_valid(binary: &Path, config: &Path) {
    let out = Command::new(binary)
        .arg("-t")
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nats-server -t refused {}: {}{}\n--- the config ---\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(config).unwrap_or_default()
    );
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// The recording `nomad`: `nomad var put [-namespace N] [-region R] PATH key=value|key=@file…`
/// writes `$FAKE_NOMAD_VARS/N/R/<PATH with / as %>/key`; any other command fails.
const FAKE_NOMAD: &str = r#"#!/bin/sh
set -eu
if [ "$#" -lt 2 ] || [ "$1 $2" != "var put" ]; then
  echo "fake nomad: only 'nomad var put' is modelled, not: $*" >&2
  exit 2
fi
shift 2
ns=default
region=global
while [ "$#" -gt 0 ]; do
  case "$1" in
    -namespace) ns=$2; shift 2 ;;
    -namespace=*) ns=${1#*=}; shift ;;
    -region) region=$2; shift 2 ;;
    -region=*) region=${1#*=}; shift ;;
    -*) echo "fake nomad: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
dir="$FAKE_NOMAD_VARS/$ns/$region/$(printf %s "$1" | tr / %)"
shift
mkdir -p "$dir"
for kv in "$@"; do
  key=${kv%%=*}
  value=${kv#*=}
  case "$value" in
    @*) cat "${value#@}" > "$dir/$key" ;;
    *) printf %s "$value" > "$dir/$key" ;;
  esac
done
"#;
