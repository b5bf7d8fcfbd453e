//! The deployment files run (issue #14, item 6). The Nomad jobs of `deploy/nomad/`: every
//! jobspec is read with an HCL parser and its tasks run as local processes by [`FakeNomad`] —
//! the variables come from `put-variables.sh` (through a recording `nomad`), service discovery
//! and ports are loopback, host volumes are temp dirs, and each NATS config passes
//! `nats-server -t` before it runs. The backends the jobs name as external services are the
//! harness's PostgreSQL, Redis and Garage.
//!
//! The hub: the 3-server NATS cluster (streams and buckets R3), two gateways and a node; a
//! function with a secret is deployed at one gateway and invoked (sync, and async read back by
//! id) through the other, and a token one gateway issued is good at the other. The edge: its leaf NATS, gateway and node;
//! the node registers at the edge gateway, which refuses deploys of its own; the function
//! deployed at the hub reaches it (catalog replication) and answers a NATS request
//! `fnmesh.v1.req.<edge>.<function>` sent by a client of the hub, run by the edge's node with
//! its secret: [`deploy_at_hub_invoke_at_edge`].
//!
//! `docker-compose.yml` runs the same way ([`FakeCompose`]): its services' commands, healthchecks
//! and environments as local processes, the hub's services and then the `edge` profile's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fnmesh_tests::deploy::compose::FakeCompose;
use fnmesh_tests::deploy::nomad::Jobspec;
use fnmesh_tests::deploy::{wait_healthy, Alloc, FakeNomad, Task};
use fnmesh_tests::servers::garage::TestGarage;
use fnmesh_tests::servers::postgres::TestPostgres;
use fnmesh_tests::servers::redis::TestRedis;
use fnmesh_tests::{fnmesh_bin, function_body, http_client, require_root, unique, Resp};
use serde_json::{json, Value};

/// The edge region of the Nomad test.
const EDGE: &str = "eu";
const NAMESPACE: &str = "fnmesh";
const HUB_NOMAD_REGION: &str = "global";
const START_WITHIN: Duration = Duration::from_secs(90);

fn nomad_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/nomad")
        .join(name)
}

/// A running allocation: where it was placed and its tasks.
struct Running {
    alloc: Alloc,
    tasks: Vec<Task>,
}

impl Running {
    fn env(&self, key: &str) -> &str {
        self.tasks[0]
            .env
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}", self.tasks[0].proc.id))
    }

    /// `http://<FNMESH_LISTEN>` of a gateway.
    fn base_url(&self) -> String {
        format!("http://{}", self.env("FNMESH_LISTEN"))
    }

    fn logs(&self) -> String {
        self.tasks
            .iter()
            .map(|t| format!("--- {} ---\n{}\n", t.proc.id, t.proc.log()))
            .collect()
    }
}

/// Places allocation `index` of `group` on `client`, starts it and waits until its checks pass.
async fn run(
    nomad: &mut FakeNomad,
    spec: &Jobspec,
    group: &str,
    index: u32,
    client: &str,
) -> Running {
    let alloc = nomad.place(spec, group, index, client);
    let mut tasks = nomad.start(spec, &alloc);
    wait_healthy(&alloc, &mut tasks, START_WITHIN).await;
    for task in &tasks {
        let limit = task
            .kill_timeout_secs
            .expect("every task sets kill_timeout");
        assert!(limit <= 30, "{}: kill_timeout {limit}s", task.proc.id);
    }
    Running { alloc, tasks }
}

/// Gives machine `client` its node credentials in the host volume the node job mounts, as the
/// README says: `fnmesh nats add-node --id <client>`, copied to the machine.
fn provision_node(nomad: &FakeNomad, setup: &Path, client: &str) {
    let out = Command::new(fnmesh_bin())
        .args(["nats", "add-node", "--id", client, "--dir"])
        .arg(setup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let volume = nomad.host_volume(client, "fnmesh-node-creds");
    std::fs::copy(
        setup.join(format!("node-{client}.creds")),
        volume.join("node.creds"),
    )
    .unwrap();
}

async fn call(base: &str, method: &str, path: &str, key: &str, body: Option<Value>) -> Resp {
    let http = http_client();
    let mut req = http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Resp {
        status,
        body,
        headers,
    }
}

/// Polls `GET /v1/admin/nodes` at `base` until it lists `id`.
async fn wait_node_listed(base: &str, key: &str, id: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + START_WITHIN;
    loop {
        let r = call(base, "GET", "/v1/admin/nodes", key, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let listed = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == id);
        if listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} is not listed at {base}: {:?}\n{}",
            r.body,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A python function answering with `answer` and its `MY_SECRET`.
fn function(name: &str, answer: &str) -> Value {
    function_body(
        name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            &format!(
                "import os\n\ndef handle(event, context):\n    return {{'at': {answer:?}, 'secret': os.environ.get('MY_SECRET')}}\n"
            ),
        )],
        json!({}),
    )
}

/// Polls a JSON monitoring endpoint of a NATS server until `ready` holds for it.
async fn wait_monitor(port: u16, path: &str, what: &str, ready: impl Fn(&Value) -> bool) {
    let http = http_client();
    let deadline = Instant::now() + START_WITHIN;
    let mut last = Value::Null;
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
        {
            last = r.json().await.unwrap_or(Value::Null);
            if ready(&last) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `subject` a request as a NATS client of `url` (`client.creds`) with `key`.
async fn nats_request(url: &str, creds: &Path, key: &str, subject: String) -> Value {
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {key}").as_str());
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request_with_headers(subject.clone(), headers, "{}".into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no reply in 60 s"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nomad_jobs_run_a_hub_and_an_edge_that_deploy_and_invoke() {
    require_root();
    let mut nomad = FakeNomad::new();

    // The operator's steps of deploy/nomad/README.md: a NATS setup with one edge, external
    // backends, then put-variables.sh.
    let setup = nomad.dir().join("nats");
    let out = Command::new(fnmesh_bin())
        .args(["nats", "init", "--dir"])
        .arg(&setup)
        .args(["--edge", &format!("{EDGE}=4222")])
        .args(["--hub-leaf-url", "nats-leaf://hub.example.internal:7422"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let database_url = TestPostgres::shared().fresh_database();
    let redis = TestRedis::start();
    let garage = TestGarage::start();
    let bucket = garage.fresh_bucket();
    let redis_url = redis.url();
    let endpoint = garage.endpoint();
    nomad.run_variables_script(
        &nomad_file("put-variables.sh"),
        &[&setup],
        &[
            ("FNMESH_DATABASE_URL", &database_url),
            ("FNMESH_REDIS_URL", &redis_url),
            ("FNMESH_S3_ENDPOINT", &endpoint),
            ("FNMESH_S3_REGION", garage.region()),
            ("FNMESH_S3_BUCKET", &bucket),
            ("AWS_ACCESS_KEY_ID", garage.access_key_id()),
            ("AWS_SECRET_ACCESS_KEY", garage.secret_access_key()),
        ],
    );
    let admin_key = std::fs::read_to_string(setup.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    // One set of shared keys in every Nomad region.
    let hub_shared = nomad
        .variable(NAMESPACE, HUB_NOMAD_REGION, "nomad/jobs")
        .expect("the hub's shared variable")
        .clone();
    let edge_shared = nomad
        .variable(NAMESPACE, EDGE, "nomad/jobs")
        .expect("the edge's shared variable");
    assert_eq!(&hub_shared, edge_shared);
    for key in ["admin_key", "jwt_secret", "signing_key"] {
        assert_eq!(
            nomad
                .variable(NAMESPACE, HUB_NOMAD_REGION, "nomad/jobs/fnmesh-gateway")
                .unwrap()[key],
            nomad
                .variable(NAMESPACE, EDGE, "nomad/jobs/fnmesh-edge/gateway")
                .unwrap()[key],
            "{key} differs between the hub's and the edge's gateways"
        );
    }

    // The hub's NATS cluster: three servers, one per machine.
    let hub_nats_spec = Jobspec::load(&nomad_file("fnmesh-nats-hub.nomad.hcl"), &[]).unwrap();
    let allocs: Vec<Alloc> = (0..3)
        .map(|i| nomad.place(&hub_nats_spec, "nats", i, &format!("hub-nats-{i}")))
        .collect();
    let mut hub_nats = Vec::new();
    for alloc in allocs {
        let tasks = nomad.start(&hub_nats_spec, &alloc);
        hub_nats.push(Running { alloc, tasks });
    }
    for server in &mut hub_nats {
        wait_healthy(&server.alloc, &mut server.tasks, START_WITHIN).await;
    }
    for server in &hub_nats {
        // Routed to both others, and JetStream has a meta leader.
        wait_monitor(
            server.alloc.ports["monitor"],
            "/routez",
            "the hub cluster's routes",
            |v| v["num_routes"].as_u64().unwrap_or(0) >= 2,
        )
        .await;
        wait_monitor(
            server.alloc.ports["monitor"],
            "/jsz",
            "the hub cluster's JetStream meta leader",
            |v| v["meta_cluster"]["leader"].is_string() && v["meta_cluster"]["cluster_size"] == 3,
        )
        .await;
    }

    // Two hub gateways on two machines, and a node.
    let gateway_spec = Jobspec::load(&nomad_file("fnmesh-gateway.nomad.hcl"), &[]).unwrap();
    let gw0 = run(&mut nomad, &gateway_spec, "gateway", 0, "hub-gw-0").await;
    let gw1 = run(&mut nomad, &gateway_spec, "gateway", 1, "hub-gw-1").await;
    provision_node(&nomad, &setup, "hub-node-1");
    let node_spec = Jobspec::load(&nomad_file("fnmesh-node.nomad.hcl"), &[]).unwrap();
    let hub_node = run(&mut nomad, &node_spec, "node", 0, "hub-node-1").await;
    // Gateways and nodes found every server of the cluster through service discovery.
    for server in &hub_nats {
        let url = format!("nats://127.0.0.1:{}", server.alloc.ports["client"]);
        for process in [&gw0, &gw1, &hub_node] {
            let urls = process.env("FNMESH_NATS_URL");
            assert!(urls.split(',').any(|u| u == url), "{urls} lacks {url}");
        }
    }
    let hub_logs = || format!("{}{}{}", gw0.logs(), gw1.logs(), hub_node.logs());
    let (a, b) = (gw0.base_url(), gw1.base_url());
    wait_node_listed(&a, &admin_key, "hub-node-1", hub_logs).await;

    // Deploy and set a secret at one gateway; invoke through the other.
    let name = unique("smoke");
    let r = call(
        &a,
        "POST",
        "/v1/functions",
        &admin_key,
        Some(function(&name, "hub")),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = "smoke-secret-0123";
    let r = call(
        &a,
        "PUT",
        &format!("/v1/functions/{name}/secrets/MY_SECRET"),
        &admin_key,
        Some(json!({ "value": secret })),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = call(
        &b,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, hub_logs());
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    assert_eq!(r.body["result"], json!({"at": "hub", "secret": secret}));
    assert_eq!(r.body["node_id"], "hub-node-1");
    // Async at one gateway, read back by id at the other.
    let done = async_invocation_succeeds(&a, &b, &admin_key, &name, hub_logs).await;
    assert_eq!(done["result"]["secret"], secret);
    // The hub's streams and buckets are replicated on the three servers (R3).
    assert_hub_replicas(
        &format!("nats://127.0.0.1:{}", hub_nats[2].alloc.ports["client"]),
        &setup.join("gateway.creds"),
        3,
    )
    .await;
    // A token one gateway issued is good at the other.
    let pair = call(&a, "POST", "/v1/auth/token", &admin_key, None).await;
    assert_eq!(pair.status, 200, "{:?}", pair.body);
    let access = pair.body["access_token"].as_str().unwrap().to_owned();
    let listed = call(&b, "GET", "/v1/functions", &access, None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);

    // The edge: its leaf NATS dials the hub's leafnode port, then its gateway and node.
    let hub_leaf = format!("nats-leaf://127.0.0.1:{}", hub_nats[0].alloc.ports["leaf"]);
    let edge_spec = Jobspec::load(
        &nomad_file("fnmesh-edge.nomad.hcl"),
        &[
            ("edge", hcl::Value::from(EDGE)),
            ("hub_leaf_url", hcl::Value::from(hub_leaf.as_str())),
        ],
    )
    .unwrap();
    let edge_nats = run(&mut nomad, &edge_spec, "nats", 0, "eu-nats").await;
    wait_monitor(
        edge_nats.alloc.ports["monitor"],
        "/leafz",
        "the edge's leaf link to the hub",
        |v| v["leafnodes"].as_u64().unwrap_or(0) >= 1,
    )
    .await;
    let edge_gw = run(&mut nomad, &edge_spec, "gateway", 0, "eu-gw").await;
    provision_node(&nomad, &setup, "eu-node-1");
    let edge_node_spec = Jobspec::load(
        &nomad_file("fnmesh-node.nomad.hcl"),
        &[
            ("region", hcl::Value::from(EDGE)),
            ("nomad_region", hcl::Value::from(EDGE)),
        ],
    )
    .unwrap();
    let edge_node = run(&mut nomad, &edge_node_spec, "node", 0, "eu-node-1").await;
    assert_eq!(edge_node.env("FNMESH_REGION"), EDGE);
    assert_eq!(
        edge_node.env("FNMESH_NATS_URL").trim_end_matches(','),
        format!("nats://127.0.0.1:{}", edge_nats.alloc.ports["client"]),
        "an edge node works against its edge's server"
    );
    let edge_logs = || format!("{}{}{}", edge_nats.logs(), edge_gw.logs(), edge_node.logs());
    let edge = edge_gw.base_url();
    wait_node_listed(&edge, &admin_key, "eu-node-1", edge_logs).await;
    // The hub's token is good at the edge too (one JWT key).
    let listed = call(&edge, "GET", "/v1/functions", &access, None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);

    let hub_url = format!("nats://127.0.0.1:{}", hub_nats[1].alloc.ports["client"]);
    deploy_at_hub_invoke_at_edge(
        &edge,
        &hub_url,
        &setup.join("client.creds"),
        &admin_key,
        (&name, secret),
        (EDGE, "eu-node-1"),
        edge_logs,
    )
    .await;

    drop((edge_node, edge_gw, edge_nats, hub_node, gw1, gw0, hub_nats));
}

/// The hub's work, event and dead-letter streams, its node registry bucket and code bucket each
/// have `replicas` replicas, all current.
async fn assert_hub_replicas(url: &str, creds: &Path, replicas: usize) {
    use fnmesh_core::subjects::{self, BusPrefix, BusRole};
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .custom_inbox_prefix(subjects::inbox_prefix(subjects::InboxOwner::Gateway))
        .connect(url)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let hub = BusPrefix::parse("hub").unwrap();
    let mut names: Vec<String> = [BusRole::Invocations, BusRole::Events, BusRole::DeadLetters]
        .into_iter()
        .map(|role| subjects::bus_stream(&hub, role))
        .collect();
    names.push(format!("KV_{}", subjects::node_registry_bucket(&hub)));
    names.push(format!("OBJ_{}", subjects::code_bucket(&hub)));
    for name in names {
        let mut stream = js
            .get_stream(&name)
            .await
            .unwrap_or_else(|e| panic!("stream {name}: {e}"));
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, replicas, "stream {name}");
        let cluster = info.cluster.as_ref().expect("a clustered stream");
        assert_eq!(
            cluster.replicas.len() + 1,
            replicas,
            "stream {name}: {cluster:?}"
        );
    }
}

/// Invokes `name` asynchronously at gateway `submit`, reads it back by id at gateway `read`
/// until it `succeeded` (within 60 s; anything but queued/running fails the test), and returns
/// the record.
async fn async_invocation_succeeds(
    submit: &str,
    read: &str,
    key: &str,
    name: &str,
    logs: impl Fn() -> String,
) -> Value {
    let r = call(
        submit,
        "POST",
        &format!("/v1/functions/{name}/invoke?async=true"),
        key,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = call(read, "GET", &format!("/v1/invocations/{id}"), key, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["status"] == "succeeded" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline
                && matches!(r.body["status"].as_str(), Some("queued" | "running")),
            "async invocation {id}: {:?}\n{}",
            r.body,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deploy at the hub, invoke at the edge: the edge gateway (`FNMESH_HUB_REGION`) refuses a
/// deploy of its own, receives `deployed` (a function with secret `MY_SECRET`) from the hub's
/// catalog, and a NATS request for the edge region is run by the edge's node with the
/// function's secret.
async fn deploy_at_hub_invoke_at_edge(
    edge_url: &str,
    hub_nats_url: &str,
    client_creds: &Path,
    admin_key: &str,
    (deployed, secret): (&str, &str),
    (edge, edge_node): (&str, &str),
    logs: impl Fn() -> String,
) {
    let r = call(
        edge_url,
        "POST",
        "/v1/functions",
        admin_key,
        Some(function(&unique("local"), edge)),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "read_only_region", "{:?}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = call(
            edge_url,
            "GET",
            &format!("/v1/functions/{deployed}"),
            admin_key,
            None,
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{deployed} did not reach the edge: {:?}\n{}",
            r.body,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = nats_request(
        hub_nats_url,
        client_creds,
        admin_key,
        format!("fnmesh.v1.req.{edge}.{deployed}"),
    )
    .await;
    assert_eq!(reply["status"], "succeeded", "{reply}\n{}", logs());
    assert_eq!(
        reply["result"],
        json!({"at": "hub", "secret": secret}),
        "{reply}"
    );
    assert_eq!(reply["node_id"], edge_node, "{reply}");
}

/// `docker-compose.yml` runs ([`FakeCompose`]): the hub's services (NATS, Garage, PostgreSQL
/// and Redis, the gateway, two nodes) deploy a function with a secret and invoke it (sync, and
/// async read back by id), then the `edge` profile's (leaf NATS, edge gateway, edge node): the
/// edge node registers, and the function deployed at the hub answers a NATS request the hub's
/// client sends to `fnmesh.v1.req.edge.<function>`, run at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_stack_runs_a_hub_and_an_edge_that_deploy_and_invoke() {
    require_root();
    let random_hex = |bytes: usize| -> String {
        fnmesh_code::conformance::random_bytes(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    // The operator's environment, as the comment at the top of the file makes it.
    let admin_key = random_hex(32);
    let operator = [
        ("FNMESH_ADMIN_KEY", admin_key.clone()),
        (
            "FNMESH_SECRETS_KEY",
            fnmesh_tests::b64(&fnmesh_code::conformance::random_bytes(32)),
        ),
        ("FNMESH_JWT_HS256_SECRET", random_hex(32)),
        ("FNMESH_METRICS_TOKEN", random_hex(24)),
        ("GARAGE_RPC_SECRET", random_hex(32)),
        ("S3_ACCESS_KEY_ID", format!("GK{}", random_hex(12))),
        ("S3_SECRET_ACCESS_KEY", random_hex(32)),
    ];
    let operator: Vec<(&str, &str)> = operator.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let mut compose = FakeCompose::load(&file, &operator);
    // PostgreSQL and Redis are the harness's, with the database and user the file names.
    let pg = TestPostgres::shared();
    pg.psql("postgres", "CREATE DATABASE fnmesh").unwrap();
    let redis = TestRedis::start();
    compose.stand_in("postgres", 5432, pg.port());
    compose.stand_in("redis", 6379, redis.port());

    for service in compose.service_names(None) {
        compose.up(&service);
    }
    let logs = |compose: &FakeCompose| {
        compose
            .running
            .iter()
            .map(|(name, p)| format!("--- {name} ---\n{}\n", p.log()))
            .collect::<String>()
    };
    let hub = format!("http://127.0.0.1:{}", compose.port("gateway", 8080));
    for node in ["node-1", "node-2"] {
        wait_node_listed(&hub, &admin_key, node, || logs(&compose)).await;
    }
    let name = unique("compose");
    let r = call(
        &hub,
        "POST",
        "/v1/functions",
        &admin_key,
        Some(function(&name, "hub")),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        &hub,
        "PUT",
        &format!("/v1/functions/{name}/secrets/MY_SECRET"),
        &admin_key,
        Some(json!({ "value": "compose-secret" })),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = call(
        &hub,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, logs(&compose));
    assert_eq!(
        r.body["result"],
        json!({"at": "hub", "secret": "compose-secret"})
    );
    async_invocation_succeeds(&hub, &hub, &admin_key, &name, || logs(&compose)).await;

    // The edge profile.
    for service in compose.service_names(Some("edge")) {
        compose.up(&service);
    }
    let edge = format!("http://127.0.0.1:{}", compose.port("edge-gateway", 8080));
    wait_node_listed(&edge, &admin_key, "edge-node-1", || logs(&compose)).await;
    let region = compose.envs["edge-gateway"]["FNMESH_REGION"].clone();
    let setup = PathBuf::from(
        compose.envs["gateway"]["FNMESH_NATS_CREDS"].trim_end_matches("gateway.creds"),
    );
    deploy_at_hub_invoke_at_edge(
        &edge,
        &compose.envs["gateway"]["FNMESH_NATS_URL"],
        &setup.join("client.creds"),
        &admin_key,
        (&name, "compose-secret"),
        (&region, "edge-node-1"),
        || logs(&compose),
    )
    .await;
}
