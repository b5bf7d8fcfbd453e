//! The deployment files are checked against the real binary: every `FNMESH_*` variable that
//! `docker-compose.yml` or the `Dockerfile` sets is one `fnmesh` reads (from
//! `fnmesh env-vars`), the commands are real subcommands, the gateway's port, listen address and
//! healthcheck agree, and every URL points at a service of the stack. The Nomad jobspecs are
//! read with an HCL parser and held to the same rules plus Nomad's (`kill_timeout` ≤ 30 s,
//! health checks, auto-revert, canaries for gateways). No Docker engine or Nomad runs here:
//! `deploy_smoke.rs` runs both files' processes locally.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use fnmesh_tests::deploy::nomad::{attrs, block, blocks, duration_secs, text, Jobspec};
use fnmesh_tests::fnmesh_bin;
use hcl::eval::Evaluate as _;
use serde_yaml::Value;

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn env_vars_the_binary_reads() -> BTreeSet<String> {
    let out = Command::new(fnmesh_bin()).arg("env-vars").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&repo_file("docker-compose.yml")).unwrap();
    doc.apply_merge().unwrap();
    // Merge keys nested under services too.
    if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
        for (_, service) in services.iter_mut() {
            service.apply_merge().unwrap();
            if let Some(env) = service.get_mut("environment") {
                env.apply_merge().unwrap();
            }
        }
    }
    doc
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    service
        .get("environment")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split(['/', ':']).next().unwrap()
}

#[test]
fn compose_sets_only_variables_the_binary_reads() {
    let known = env_vars_the_binary_reads();
    assert!(known.contains("FNMESH_NATS_URL") && known.contains("FNMESH_DATABASE_URL"));
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, service) in services {
        for (key, _) in env_of(service) {
            if key.starts_with("FNMESH_") || key.starts_with("AWS_") {
                assert!(
                    known.contains(&key),
                    "service {name:?} sets {key}, which fnmesh never reads"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} variables checked");
    for line in repo_file("Dockerfile").lines() {
        if let Some(rest) = line.trim().strip_prefix("ENV ") {
            let key = rest.split('=').next().unwrap();
            assert!(
                known.contains(key),
                "Dockerfile sets {key}, which fnmesh never reads"
            );
        }
    }
}

#[test]
fn compose_has_the_full_stack_wired_together() {
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    for required in [
        "nats",
        "postgres",
        "redis",
        "garage",
        "gateway",
        "node-1",
        "node-2",
        "edge-nats",
        "edge-gateway",
        "edge-node-1",
    ] {
        assert!(names.contains(required), "missing service {required}");
    }
    // Real subcommands.
    for (name, sub) in [
        ("gateway", "gateway"),
        ("node-1", "node"),
        ("node-2", "node"),
        ("edge-gateway", "gateway"),
        ("edge-node-1", "node"),
    ] {
        let command = doc["services"][name]["command"][0].as_str().unwrap();
        assert_eq!(command, sub, "{name}");
        let help = Command::new(fnmesh_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "fnmesh {sub} --help failed");
    }
    // Nodes run sandboxes: privileged, distinct ids, same region as the gateway.
    let gateway_env: std::collections::BTreeMap<_, _> =
        env_of(&doc["services"]["gateway"]).into_iter().collect();
    let mut node_ids = BTreeSet::new();
    let edge_gateway_env: std::collections::BTreeMap<_, _> =
        env_of(&doc["services"]["edge-gateway"])
            .into_iter()
            .collect();
    for node in ["node-1", "node-2", "edge-node-1"] {
        let svc = &doc["services"][node];
        assert_eq!(
            svc["privileged"],
            Value::Bool(true),
            "{node} must be privileged"
        );
        assert_eq!(
            svc["cgroup"].as_str(),
            Some("host"),
            "{node}: libcontainer needs the host's cgroups"
        );
        let health = serde_yaml::to_string(&svc["healthcheck"]["test"]).unwrap();
        let env: std::collections::BTreeMap<_, _> = env_of(svc).into_iter().collect();
        let metrics = env["FNMESH_METRICS_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            health.contains(&format!("127.0.0.1:{metrics}/healthz")),
            "{node}: {health}"
        );
        node_ids.insert(env["FNMESH_NODE_ID"].clone());
        let region_gateway = if node.starts_with("edge") {
            &edge_gateway_env
        } else {
            &gateway_env
        };
        assert_eq!(env["FNMESH_REGION"], region_gateway["FNMESH_REGION"]);
        assert_eq!(env["FNMESH_NATS_URL"], region_gateway["FNMESH_NATS_URL"]);
        assert!(
            !env.contains_key("FNMESH_CODE_STORE"),
            "{node} needs nothing but NATS: it reads code from the region's NATS bucket"
        );
        assert!(svc["depends_on"].get("garage").is_none(), "{node}");
    }
    assert_eq!(node_ids.len(), 3, "node ids must differ");
    // The edge profile: its own NATS server, gateway and node, started only with the profile.
    for svc in ["edge-nats", "edge-gateway", "edge-node-1"] {
        let profiles = serde_yaml::to_string(&doc["services"][svc]["profiles"]).unwrap();
        assert_eq!(profiles.trim(), "- edge", "{svc}");
    }
    assert_ne!(
        edge_gateway_env["FNMESH_REGION"],
        gateway_env["FNMESH_REGION"]
    );
    // No credential is shipped in the file: the admin key and the secrets key (one for the
    // whole stack: gateways seal, nodes open) come from the operator's environment, and the
    // API is published on loopback only.
    for (svc, key) in [
        ("gateway", "FNMESH_ADMIN_KEY"),
        ("gateway", "FNMESH_SECRETS_KEY"),
        ("gateway", "FNMESH_JWT_HS256_SECRET"),
        ("node-1", "FNMESH_SECRETS_KEY"),
        ("node-2", "FNMESH_SECRETS_KEY"),
        ("edge-gateway", "FNMESH_ADMIN_KEY"),
        ("edge-gateway", "FNMESH_SECRETS_KEY"),
        ("edge-gateway", "FNMESH_JWT_HS256_SECRET"),
        ("edge-node-1", "FNMESH_SECRETS_KEY"),
    ] {
        let env: std::collections::BTreeMap<_, _> =
            env_of(&doc["services"][svc]).into_iter().collect();
        let value = env.get(key).map(String::as_str).unwrap_or("");
        assert!(
            value.starts_with(&format!("${{{key}:?")),
            "{svc}: {key} must be required from the environment, not {value:?}"
        );
    }
    let published = doc["services"]["gateway"]["ports"][0].as_str().unwrap();
    assert!(
        published.starts_with("127.0.0.1:"),
        "the API is published on loopback only, not {published}"
    );
    // The gateway's listen port, published port and healthcheck agree.
    let listen_port = gateway_env["FNMESH_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let published = doc["services"]["gateway"]["ports"][0].as_str().unwrap();
    assert_eq!(published.rsplit(':').next().unwrap(), listen_port);
    let health = serde_yaml::to_string(&doc["services"]["gateway"]["healthcheck"]["test"]).unwrap();
    assert!(
        health.contains(&format!("127.0.0.1:{listen_port}/readyz")),
        "{health}"
    );
    // Every URL points at a service of the stack, and the gateway waits for each backend.
    for key in [
        "FNMESH_NATS_URL",
        "FNMESH_DATABASE_URL",
        "FNMESH_REDIS_URL",
        "FNMESH_S3_ENDPOINT",
    ] {
        let host = host_of(&gateway_env[key]);
        assert!(
            names.contains(host),
            "{key} points at {host}, not a service"
        );
    }
    for dep in ["nats", "postgres", "redis", "garage"] {
        assert!(
            doc["services"]["gateway"]["depends_on"].get(dep).is_some(),
            "gateway must wait for {dep}"
        );
    }
    for svc in [
        "nats",
        "postgres",
        "redis",
        "garage",
        "gateway",
        "edge-nats",
        "edge-gateway",
    ] {
        assert!(
            doc["services"][svc].get("healthcheck").is_some(),
            "{svc} needs a healthcheck"
        );
    }
    // Garage makes the code store's bucket at start, with the key the gateway uses.
    let garage: std::collections::BTreeMap<_, _> =
        env_of(&doc["services"]["garage"]).into_iter().collect();
    assert_eq!(
        format!("s3://{}", garage["GARAGE_DEFAULT_BUCKET"]),
        gateway_env["FNMESH_CODE_STORE"]
    );
    // The same variable of the operator's environment.
    let variable = |value: &str| value.split([':', '}']).next().unwrap().to_owned();
    assert_eq!(
        variable(&garage["GARAGE_DEFAULT_ACCESS_KEY"]),
        variable(&gateway_env["AWS_ACCESS_KEY_ID"])
    );
    assert_eq!(
        variable(&garage["GARAGE_DEFAULT_SECRET_KEY"]),
        variable(&gateway_env["AWS_SECRET_ACCESS_KEY"])
    );
}

/// Every jobspec of `deploy/nomad/`, read with the HCL parser, with the variables that have no
/// default given as `nomad job run -var` would.
fn jobspecs() -> Vec<(String, Jobspec)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nomad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nomad.hcl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|name| {
            let overrides: &[(&str, hcl::Value)] = if name == "fnmesh-edge.nomad.hcl" {
                &[
                    ("edge", hcl::Value::from("eu")),
                    ("hub_leaf_url", hcl::Value::from("nats-leaf://hub:7422")),
                ]
            } else {
                &[]
            };
            let spec = Jobspec::load(&dir.join(&name), overrides).unwrap_or_else(|e| panic!("{e}"));
            (name, spec)
        })
        .collect()
}

/// The `KEY=` lines of an env template (`env = true`).
fn template_env_keys(data: &str) -> Vec<String> {
    data.lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.contains("{{"))
        .collect()
}

#[test]
fn nomad_jobs_parse_and_set_only_variables_the_binary_reads() {
    let known = env_vars_the_binary_reads();
    let specs = jobspecs();
    let names: BTreeSet<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
    for needed in [
        "fnmesh-nats-hub.nomad.hcl",
        "fnmesh-gateway.nomad.hcl",
        "fnmesh-node.nomad.hcl",
        "fnmesh-edge.nomad.hcl",
    ] {
        assert!(names.contains(needed), "deploy/nomad lacks {needed}");
    }
    let mut tasks = 0;
    for (file, spec) in &specs {
        let ctx = spec.context(&nomad_runtime());
        let job = attrs(spec.job().unwrap().body(), &ctx).unwrap();
        assert_eq!(text(&job["namespace"]), "fnmesh", "{file}");
        assert!(job.contains_key("region"), "{file}: no region");
        assert!(job.contains_key("datacenters"), "{file}: no datacenters");
        let job_type = text(&job["type"]);
        for group_name in spec.group_names().unwrap() {
            let group = spec.group(&group_name).unwrap();
            let what = format!("{file}, group {group_name}");
            let update = attrs(
                block(group.body(), "update")
                    .unwrap_or_else(|| panic!("{what}: no update block"))
                    .body(),
                &ctx,
            )
            .unwrap();
            if job_type == "service" {
                assert_eq!(
                    update.get("auto_revert"),
                    Some(&hcl::Value::Bool(true)),
                    "{what}"
                );
            }
            let network = attrs(block(group.body(), "network").unwrap().body(), &ctx).unwrap();
            assert_eq!(text(&network["mode"]), "host", "{what}");
            let services = blocks(group.body(), "service");
            assert!(!services.is_empty(), "{what}: no service");
            assert!(
                services.iter().any(|s| block(s.body(), "check").is_some()),
                "{what}: no health check"
            );
            for task in blocks(group.body(), "task") {
                tasks += 1;
                let body = task.body();
                let task_attrs = body
                    .attributes()
                    .map(|a| (a.key().to_owned(), a.expr().clone()))
                    .collect::<std::collections::BTreeMap<_, _>>();
                let kill = task_attrs
                    .get("kill_timeout")
                    .unwrap_or_else(|| panic!("{what}: no kill_timeout"));
                let secs = duration_secs(&text(&hcl::Value::from(kill.clone()))).unwrap();
                assert!(
                    secs <= 30,
                    "{what}: kill_timeout {secs}s is above Nomad's default maximum"
                );
                let mut vars: Vec<String> = block(body, "env")
                    .map(|e| e.body().attributes().map(|a| a.key().to_owned()).collect())
                    .unwrap_or_default();
                for template in blocks(body, "template") {
                    let t = template.body();
                    let is_env = t
                        .attributes()
                        .any(|a| a.key() == "env" && a.expr() == &hcl::Expression::Bool(true));
                    if is_env {
                        let data = t.attributes().find(|a| a.key() == "data").unwrap();
                        let data = text(&data.expr().evaluate(&ctx).unwrap());
                        vars.extend(template_env_keys(&data));
                    }
                }
                for var in &vars {
                    assert!(
                        known.contains(var),
                        "{what} sets {var}, which fnmesh does not read"
                    );
                }
                let config = block(body, "config").unwrap().body();
                let image = config
                    .attributes()
                    .find(|a| a.key() == "image")
                    .map(|a| text(&a.expr().evaluate(&ctx).unwrap()))
                    .unwrap();
                let args: Vec<String> = config
                    .attributes()
                    .find(|a| a.key() == "args")
                    .map(|a| match a.expr().evaluate(&ctx) {
                        Ok(hcl::Value::Array(v)) => v.iter().map(text).collect(),
                        other => panic!("{what}: args {other:?}"),
                    })
                    .unwrap_or_default();
                if image.starts_with("fnmesh") {
                    assert!(vars.len() >= 5, "{what}: only {vars:?}");
                    // A real subcommand.
                    let help = Command::new(fnmesh_bin())
                        .args([args[0].as_str(), "--help"])
                        .output()
                        .unwrap();
                    assert!(help.status.success(), "{what}: fnmesh {} --help", args[0]);
                } else {
                    // NATS >= 2.11 in an image with a shell and wget.
                    assert!(
                        image.starts_with("nats:2.1") && image.ends_with("-alpine"),
                        "{image}"
                    );
                }
                if args.first().map(String::as_str) == Some("node") {
                    let config = attrs(config, &ctx).unwrap();
                    assert_eq!(
                        config.get("privileged"),
                        Some(&hcl::Value::Bool(true)),
                        "{what}"
                    );
                    // Nomad's docker driver has no per-task cgroup namespace option: the
                    // README and the job say how to give nodes the host's.
                    assert!(!config.contains_key("cgroupns"), "{what}");
                    assert!(
                        !vars.iter().any(|v| v == "FNMESH_CODE_STORE"),
                        "{what}: nodes fetch code over NATS"
                    );
                    assert_eq!(job_type, "system", "{what}");
                }
                if args.first().map(String::as_str) == Some("gateway") {
                    for v in [
                        "FNMESH_SECRETS_KEY_FILE",
                        "FNMESH_JWT_HS256_SECRET_FILE",
                        "FNMESH_SIGNING_KEY_FILE",
                        "FNMESH_ADMIN_KEY",
                    ] {
                        assert!(
                            vars.iter().any(|x| x == v),
                            "{what}: a shared key is missing: {v}"
                        );
                    }
                }
            }
        }
    }
    assert!(tasks >= 5, "only {tasks} tasks");
    let gateway = &specs
        .iter()
        .find(|(n, _)| n == "fnmesh-gateway.nomad.hcl")
        .unwrap()
        .1;
    let update = block(gateway.group("gateway").unwrap().body(), "update").unwrap();
    let update = attrs(update.body(), &gateway.context(&Default::default())).unwrap();
    assert!(
        text(&update["canary"]).parse::<u32>().unwrap() >= 1,
        "gateways deploy a canary first"
    );
}

/// Runtime variables with placeholder values, to evaluate blocks that interpolate them.
fn nomad_runtime() -> std::collections::BTreeMap<String, String> {
    [
        "NOMAD_ALLOC_DIR",
        "NOMAD_SECRETS_DIR",
        "NOMAD_TASK_DIR",
        "NOMAD_ADDR_metrics",
        "NOMAD_ADDR_http",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), format!("/{k}")))
    .collect()
}

/// Kills the server it holds on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The compose stack's NATS runs `fnmesh nats init`'s setup: the `nats-init` command (run here
/// with the `nats-setup` volume as a temp dir, twice, as a restarted stack would) writes it, the
/// `nats` service's own command line starts a real server on it, anonymous connections are
/// refused, and the gateway and each node find the credentials their environment names, each
/// node its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_nats_runs_the_generated_setup_and_refuses_anonymous_connections() {
    let doc = compose();
    let tmp = tempfile::tempdir().unwrap();
    let setup = tmp.path().join("nats-setup");
    let data = tmp.path().join("nats-data");
    let in_volume = |path: &str| {
        let rest = path
            .strip_prefix("/nats/")
            .unwrap_or_else(|| panic!("{path} is not in the nats-setup volume"));
        setup.join(rest)
    };
    for svc in ["nats", "gateway", "node-1", "node-2"] {
        let volumes = serde_yaml::to_string(&doc["services"][svc]["volumes"]).unwrap();
        assert!(volumes.contains("nats-setup:/nats:ro"), "{svc}: {volumes}");
    }

    // The init command, with the volume's mount point moved to the temp dir.
    let init = &doc["services"]["nats-init"];
    assert_eq!(
        serde_yaml::to_string(&init["entrypoint"]).unwrap().trim(),
        "- /bin/sh\n- -c"
    );
    let script = init["command"][0]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|word| match word {
            "/nats" => setup.to_str().unwrap().to_owned(),
            "/data" => data.to_str().unwrap().to_owned(),
            path if path.starts_with("/nats/") => in_volume(path).to_str().unwrap().to_owned(),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let bin_dir = fnmesh_bin().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for run in 0..2 {
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-init (run {run}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The nats service's command line, on free loopback ports.
    let port = fnmesh_tests::free_port();
    let monitor = fnmesh_tests::free_port();
    let mut args: Vec<String> = doc["services"]["nats"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    for i in 0..args.len() {
        match args[i].as_str() {
            "-c" => args[i + 1] = in_volume(&args[i + 1]).to_str().unwrap().to_owned(),
            "-m" => args[i + 1] = monitor.to_string(),
            _ => {}
        }
    }
    args.extend([
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ]);
    let binary = fnmesh_core::nats::server::find_binary().unwrap_or_else(|e| panic!("{e}"));
    // The config must be valid as written (`nats-server -t`), then the server runs on it.
    let check = Command::new(&binary)
        .args(["-t", "-c"])
        .arg(&args[1])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nats-server -t: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let log = tmp.path().join("nats.log");
    let server = Killed(
        Command::new(&binary)
            .args(&args)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::fs::read_to_string(&log).map_or(true, |l| !l.contains("nats-server:")),
            "nats refused the compose command line {args:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "nats did not start on the compose command line {args:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let anonymous = async_nats::ConnectOptions::new().connect(&url).await;
    assert!(anonymous.is_err(), "an anonymous connection was accepted");
    let connect = |creds: std::path::PathBuf| {
        let url = url.clone();
        async move {
            let client = async_nats::ConnectOptions::with_credentials_file(&creds)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", creds.display()))
                .connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connecting with {}: {e}", creds.display()));
            client.flush().await.unwrap();
        }
    };
    let gateway: std::collections::BTreeMap<_, _> =
        env_of(&doc["services"]["gateway"]).into_iter().collect();
    connect(in_volume(&gateway["FNMESH_NATS_CREDS"])).await;
    let seed = std::fs::read_to_string(in_volume(&gateway["FNMESH_SIGNING_KEY_FILE"])).unwrap();
    let signing = fnmesh_core::signing::SigningKey::from_seed(&seed).unwrap();
    for node in ["node-1", "node-2"] {
        let env: std::collections::BTreeMap<_, _> =
            env_of(&doc["services"][node]).into_iter().collect();
        let creds = in_volume(&env["FNMESH_NATS_CREDS"]);
        let minted_for =
            fnmesh_core::nats::setup::node_of_creds(&std::fs::read_to_string(&creds).unwrap())
                .unwrap()
                .expect("a node's own credentials");
        assert_eq!(minted_for.as_str(), env["FNMESH_NODE_ID"], "{node}");
        connect(creds).await;
        let trusted = std::fs::read_to_string(in_volume(&env["FNMESH_TRUSTED_KEYS_FILE"])).unwrap();
        assert!(trusted.contains(signing.public_key()), "{node}");
    }
    // JetStream keeps its data in the data volume, not in the read-only setup.
    assert!(
        data.join("hub").join("jetstream").is_dir(),
        "no JetStream data in the data volume"
    );
    drop(server);
}

#[test]
fn the_build_context_leaves_out_build_output_and_keys() {
    let ignored = repo_file(".dockerignore");
    let patterns: BTreeSet<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".fnmesh/", "**/*.creds", "**/*.nk", ".git/"] {
        assert!(patterns.contains(needed), ".dockerignore lacks {needed}");
    }
    // NATS images with a shell for their healthcheck, pinned.
    let doc = compose();
    for svc in ["nats", "edge-nats"] {
        let image = doc["services"][svc]["image"].as_str().unwrap();
        assert!(
            image.starts_with("nats:2.")
                && image.ends_with("-alpine")
                && image.matches('.').count() == 2,
            "{svc}: {image}"
        );
    }
}
