//! `fnmesh nats init` against a real `nats-server` started from the generated config: the
//! config is valid, anonymous connections are refused, each role's credentials allow what the
//! role needs (the JetStream bus, node registry and code store run on gateway and node creds
//! without a single permission violation) and the server refuses the rest (a client reading
//! fnmesh subjects or the JetStream API, a node forging invocations or managing streams), and
//! a mesh of real processes on these credentials serves a client's NATS request end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use fnmesh_bus::conformance::{outcome, request, started, test_config};
use fnmesh_bus::jetstream::JetStreamBus;
use fnmesh_bus::placements::jetstream::JetStreamPlacements;
use fnmesh_bus::placements::Placements as _;
use fnmesh_bus::registry::jetstream::JetStreamRegistry;
use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::{Bus, BusConfig};
use fnmesh_code::nats::NatsCodeStore;
use fnmesh_code::CodeStore;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::subjects::{self, BusPrefix, BusRole, InboxOwner};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::nats_roles::ServerErrors;
use fnmesh_tests::servers::nats::TestNats;
use fnmesh_tests::{function_body, ADMIN_KEY};
use serde_json::{json, Value};

/// Connects with `role`'s creds file (see [`fnmesh_tests::nats_roles::connect`]).
async fn connect(
    nats: &TestNats,
    role: &str,
    owner: Option<InboxOwner>,
) -> (async_nats::Client, ServerErrors) {
    fnmesh_tests::nats_roles::connect(nats, role, owner).await
}

fn unique_region() -> String {
    fnmesh_tests::unique("acc")
}

fn work_subject(region: &str) -> String {
    subjects::bus_invocation(
        &BusPrefix::parse(region).unwrap(),
        &Namespace::default_ns(),
        &FunctionName::parse("victim").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_config_is_valid_and_refuses_anonymous_connections() {
    let nats = TestNats::start_with_accounts(&["local"]);
    nats.assert_config_valid(&nats.setup_dir().join(fnmesh_core::nats::setup::CONFIG_FILE));

    let anonymous = async_nats::ConnectOptions::new().connect(nats.url()).await;
    let err = anonymous.expect_err("an anonymous connection must be refused");
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "refused for another reason: {err}"
    );
    // Each role's creds are accepted (node-1's were written by init).
    for role in ["gateway", "client"] {
        let (client, _) = connect(&nats, role, None).await;
        client.flush().await.unwrap();
    }
    assert!(nats.setup_dir().join("node-node-1.creds").exists());
    let (node, _) = fnmesh_tests::nats_roles::connect_node(&nats, "node-1").await;
    node.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_only_send_requests() {
    let region = unique_region();
    let nats = TestNats::start_with_accounts(&[&region]);
    let (client, errors) = connect(&nats, "client", None).await;

    for subject in [
        "fnmesh.>".to_owned(),
        subjects::inboxes_of(InboxOwner::Gateway),
        "_FNMESH.>".to_owned(),
        "$JS.API.>".to_owned(),
    ] {
        let _sub = client.subscribe(subject.clone()).await.unwrap();
        client.flush().await.unwrap();
        errors.expect_violation("subscription", &subject).await;
    }
    let work = work_subject(&region);
    client.publish(work.clone(), "{}".into()).await.unwrap();
    client.flush().await.unwrap();
    errors.expect_violation("publish", &work).await;
    let api = "$JS.API.STREAM.LIST";
    client.publish(api, "".into()).await.unwrap();
    client.flush().await.unwrap();
    errors.expect_violation("publish", api).await;

    // What it may do draws no violation: its own inboxes, a request subject.
    let before = errors.all().len();
    let _inbox = client.subscribe("_INBOX.mine.*").await.unwrap();
    client
        .publish("fnmesh.v1.req.hello", "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(errors.all().len(), before, "{:?}", errors.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_forge_invocations_or_manage_streams() {
    let region = unique_region();
    let nats = TestNats::start_with_accounts(&[&region]);
    let (gateway, gateway_errors) = connect(&nats, "gateway", Some(InboxOwner::Gateway)).await;
    let _bus = JetStreamBus::connect_with_client(gateway.clone(), &region, test_config())
        .await
        .expect("a gateway sets the bus up");
    let (node, errors) = fnmesh_tests::nats_roles::connect_node(&nats, "node-a").await;

    // A forged invocation.
    let work = work_subject(&region);
    node.publish(work.clone(), "{}".into()).await.unwrap();
    node.flush().await.unwrap();
    errors.expect_violation("publish", &work).await;
    // Nor work sent straight to nodes (the direct path): only gateways publish there.
    let direct = subjects::bus_direct(
        &BusPrefix::parse(&region).unwrap(),
        &Namespace::default_ns(),
        &FunctionName::parse("victim").unwrap(),
    );
    node.publish(direct.clone(), "{}".into()).await.unwrap();
    node.flush().await.unwrap();
    errors.expect_violation("publish", &direct).await;
    // Nor cancellations: only gateways tell nodes to stop work.
    let cancel = subjects::bus_cancel(&BusPrefix::parse(&region).unwrap());
    node.publish(cancel.clone(), "{}".into()).await.unwrap();
    node.flush().await.unwrap();
    errors.expect_violation("publish", &cancel).await;
    // The server logs it too (what the end-to-end test checks stays absent).
    assert!(
        nats.log().to_lowercase().contains("violation"),
        "{}",
        nats.log()
    );

    // Streams: no create, no delete, no purge.
    let js = jetstream::new(node.clone());
    let created = tokio::time::timeout(
        Duration::from_secs(10),
        js.create_stream(jetstream::stream::Config {
            name: "forged".to_owned(),
            subjects: vec!["forged.>".to_owned()],
            ..Default::default()
        }),
    )
    .await;
    assert!(!matches!(created, Ok(Ok(_))), "a node created a stream");
    errors
        .expect_violation("publish", "$JS.API.STREAM.CREATE.forged")
        .await;
    let prefix = BusPrefix::parse(&region).unwrap();
    let work_stream = subjects::bus_stream(&prefix, BusRole::Invocations);
    let deleted =
        tokio::time::timeout(Duration::from_secs(10), js.delete_stream(&work_stream)).await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "a node deleted the work stream"
    );
    errors
        .expect_violation("publish", &format!("$JS.API.STREAM.DELETE.{work_stream}"))
        .await;
    // Nor read sync results: the gateways' inboxes.
    let gw_inboxes = subjects::inboxes_of(InboxOwner::Gateway);
    let _sub = node.subscribe(gw_inboxes.clone()).await.unwrap();
    node.flush().await.unwrap();
    errors.expect_violation("subscription", &gw_inboxes).await;

    // The catalog: functions and registry credentials only, never its keys, secrets or
    // quotas — neither through a consumer filtered on them nor through an unfiltered one.
    catalog_with_a_function_and_a_key(&gateway, &prefix).await;
    let catalog_stream = subjects::kv_stream(&subjects::catalog_bucket(&prefix));
    let own =
        subjects::placements_consumer("fn", &fnmesh_core::ids::NodeId::parse("node-a").unwrap());
    for (name, filter) in [
        (Some(own.as_str()), "$KV.*.key.>"),
        (Some("spy"), "$KV.*.fn.>"),
        (None, ""),
    ] {
        let config = jetstream::consumer::pull::Config {
            name: name.map(str::to_owned),
            filter_subject: filter.to_owned(),
            ..Default::default()
        };
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            js.create_consumer_on_stream(config, &catalog_stream),
        )
        .await;
        assert!(
            !matches!(created, Ok(Ok(_))),
            "a node read the catalog with filter {filter:?}"
        );
        let subject = match name {
            Some(name) => format!("$JS.API.CONSUMER.CREATE.{catalog_stream}.{name}.{filter}"),
            None => format!("$JS.API.CONSUMER.CREATE.{catalog_stream}"),
        };
        errors.expect_violation("publish", &subject).await;
    }

    // The work stream is still there, and empty.
    let gw_js = jetstream::new(gateway);
    let mut stream = gw_js.get_stream(&work_stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    assert!(
        gateway_errors.all().is_empty(),
        "{:?}",
        gateway_errors.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_and_node_creds_run_the_bus_registry_and_code_store() {
    let region = unique_region();
    let nats = TestNats::start_with_accounts(&[&region]);
    let (gateway, gateway_errors) = connect(&nats, "gateway", Some(InboxOwner::Gateway)).await;
    let (node, node_errors) = fnmesh_tests::nats_roles::connect_node(&nats, "node-a").await;

    // The gateway manages the streams; the node only attaches.
    let gw_bus = JetStreamBus::connect_with_client(gateway.clone(), &region, test_config())
        .await
        .expect("the gateway's bus");
    let node_bus = JetStreamBus::connect_with_client(
        node.clone(),
        &region,
        BusConfig {
            manage_streams: false,
            ..test_config()
        },
    )
    .await
    .expect("the node's bus");

    // A sync invocation: published by the gateway, pulled, answered and settled by the node.
    let req = request();
    let mut inbox = gw_bus.open_inbox().await.unwrap();
    assert!(
        inbox.reply_to.0.starts_with("_FNMESH.gw."),
        "{:?}",
        inbox.reply_to
    );
    gw_bus
        .publish_invocation(&req, Some(&inbox.reply_to))
        .await
        .unwrap();
    let delivery = node_bus
        .pull_invocation(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the node pulls the invocation");
    assert_eq!(delivery.request.id, req.id);
    delivery.acker.in_progress().await.unwrap();
    node_bus.publish_event(&started(&req, 1)).await.unwrap();
    let mut sent = outcome(&req);
    sent.result.node_id = Some("node-a".to_owned());
    // The reply asks for a receipt on one of the node's own inboxes; the gateway answers it
    // within its permissions (a response to what it received).
    let receipt = node_bus
        .reply_with_receipt(delivery.reply_to.as_ref().unwrap(), &sent)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.receiver.recv())
        .await
        .expect("the reply arrives")
        .expect("the inbox is open");
    assert_eq!(got, sent);
    assert!(gw_bus.confirm_stored(req.id).await, "a receipt is owed");
    assert!(
        receipt.stored(Duration::from_secs(10)).await,
        "the receipt reaches the node"
    );
    delivery.acker.ack().await.unwrap();
    let events = gw_bus
        .pull_events(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    events[0].acker.ack().await.unwrap();
    gw_bus.queue_stats().await.unwrap();

    // The same straight to the node (the direct path): a request on the region's direct
    // subject, taken by the node's waiting pull, answered on the gateway's inboxes.
    let direct = request();
    let mut inbox = gw_bus.open_inbox().await.unwrap();
    let pull = {
        let node_bus = node_bus.clone();
        tokio::spawn(async move { node_bus.pull_invocations(4, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gw_bus.send_sync(&direct, &inbox.reply_to).await.unwrap(),
        fnmesh_bus::Sent::Direct
    );
    let mut taken = pull.await.unwrap().unwrap();
    assert_eq!(taken.len(), 1);
    let delivery = taken.remove(0);
    assert_eq!(delivery.request.id, direct.id);
    let sent = outcome(&direct);
    node_bus
        .reply(delivery.reply_to.as_ref().unwrap(), &sent)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.receiver.recv())
        .await
        .expect("the direct reply arrives")
        .expect("the inbox is open");
    assert_eq!(got, sent);

    // Live logs: published by the node, followed by the gateway.
    use futures::StreamExt as _;
    let logs = fnmesh_core::invocation::FunctionLogs {
        invocation_id: req.id,
        namespace: req.function.namespace.clone(),
        function: req.function.name.clone(),
        version: 1,
        attempt: 1,
        node_id: "node-a".to_owned(),
        text: "hi\n".to_owned(),
        truncated: false,
        at: serde_json::from_value(serde_json::json!("2026-12-04T00:00:00Z")).unwrap(),
    };
    let mut feed = gw_bus
        .follow_logs(&logs.namespace, &logs.function)
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    node_bus.publish_logs(&logs).await.unwrap();
    node.flush().await.unwrap();
    // Generous: under a loaded suite (five of these servers at once on two cores) 5 s was
    // seen to pass before the entry arrived.
    tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("the log entry arrives")
        .unwrap();

    // The registry: made by the gateway, heartbeated by the node, listed by the gateway.
    let gw_registry = JetStreamRegistry::open(gateway.clone(), &region)
        .await
        .unwrap();
    let node_registry = JetStreamRegistry::open(node.clone(), &region)
        .await
        .unwrap();
    let info = fnmesh_bus::registry::conformance::node_info("node-a", Duration::from_secs(2));
    node_registry.heartbeat(&info).await.unwrap();
    let listed = gw_registry.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    node_registry.leave(&info.id).await.unwrap();

    let prefix = BusPrefix::parse(&region).unwrap();

    // Code: stored by the gateway, read by the node.
    let gw_code = NatsCodeStore::open(gateway.clone(), &region).await.unwrap();
    let checksum = gw_code.put(b"code".to_vec().into()).await.unwrap();
    let node_code = NatsCodeStore::open(node.clone(), &region).await.unwrap();
    let read = node_code.get(&checksum).await.unwrap().expect("the code");
    assert_eq!(&read[..], b"code");

    // Placements: the region's catalog, written by the gateway, read by the node (its
    // functions and registry credentials; the API key entry is not delivered).
    let catalog = catalog_with_a_function_and_a_key(&gateway, &prefix).await;
    let node_id = fnmesh_core::ids::NodeId::parse("node-a").unwrap();
    let mut watch = JetStreamPlacements::new(node.clone(), prefix.clone(), node_id)
        .watch()
        .await
        .expect("a node watches its region's placements");
    let placed = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the function's entry arrives")
        .unwrap();
    assert_eq!(placed.key(), catalog);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.next())
            .await
            .is_err(),
        "nothing but functions and registry credentials"
    );

    gateway.flush().await.unwrap();
    node.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        gateway_errors.all().is_empty(),
        "gateway: {:?}",
        gateway_errors.all()
    );
    assert!(
        node_errors.all().is_empty(),
        "node: {:?}",
        node_errors.all()
    );
}

/// Creates the region's catalog bucket as a gateway does, with a function's entry and an API
/// key's; the function's catalog key.
async fn catalog_with_a_function_and_a_key(
    gateway: &async_nats::Client,
    prefix: &BusPrefix,
) -> subjects::CatalogKey {
    let kv = jetstream::new(gateway.clone())
        .create_key_value(jetstream::kv::Config {
            bucket: subjects::catalog_bucket(prefix),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let ns = Namespace::parse("team").unwrap();
    let f = fnmesh_bus::placements::conformance::image_function(&ns, "app", 1);
    let key = subjects::CatalogKey::Function(ns, f.name.clone());
    let entry = json!({"kind": "function", "versions": [f]});
    kv.put(key.key(), entry.to_string().into_bytes().into())
        .await
        .unwrap();
    kv.put("key.k1", b"{\"kind\":\"api_key\"}".to_vec().into())
        .await
        .unwrap();
    key
}

const ECHO: &str = "def handle(event, context):\n    return {'got': event}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_request_runs_end_to_end_on_role_creds() {
    let mesh = Mesh::start_with_accounts(&["node-a"], &[]).await;
    mesh.deploy(function_body(
        "echo",
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({}),
    ))
    .await;

    // A NATS request from the client account, answered by the gateway through the service
    // import, run by the node.
    let (client, errors) = connect(&mesh.nats, "client", None).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
    let subject = subjects::request(&FunctionName::parse("echo").unwrap());
    let reply = tokio::time::timeout(
        Duration::from_secs(90),
        client.request_with_headers(subject, headers, r#"{"x": 1}"#.into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply in time\n{}", mesh.logs()))
    .unwrap_or_else(|e| panic!("request failed: {e}\n{}", mesh.logs()));
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["status"], "succeeded", "{body}\n{}", mesh.logs());
    assert_eq!(body["result"], json!({ "got": { "x": 1 } }), "{body}");

    // An async invocation over HTTP: queued, run, recorded.
    let id = mesh.invoke_async("echo", json!({ "y": 2 })).await;
    let done = mesh.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", mesh.logs());

    // A cancellation: the gateway publishes it and the node hears it, on their role creds.
    mesh.deploy(function_body(
        "sleepy",
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(e, c):\n    time.sleep(30)\n",
        )],
        json!({}),
    ))
    .await;
    let id = mesh.invoke_async("sleepy", json!({})).await;
    let cancelled = mesh
        .call("POST", &format!("/v1/invocations/{id}/cancel"), None)
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !mesh.logs().contains("invocation cancelled before it ran")
        && !mesh.logs().contains("sandbox killed")
    {
        assert!(std::time::Instant::now() < deadline, "{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(errors.all().is_empty(), "client: {:?}", errors.all());
    let server_log = mesh.nats.log();
    assert!(
        !server_log.to_lowercase().contains("violation"),
        "the server refused something a role needs:\n{server_log}"
    );
    assert!(
        !mesh.logs().contains("nats server error"),
        "a process saw a server error:\n{}",
        mesh.logs()
    );
}

/// A node's credentials name its id: `fnmesh node` refuses to start as another node (its
/// heartbeats would be refused anyway), before it connects.
#[test]
fn a_node_refuses_an_id_other_than_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("nats");
    let init = std::process::Command::new(fnmesh_tests::fnmesh_bin())
        .args(["nats", "init", "--node", "node-1", "--dir"])
        .arg(&setup)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = std::process::Command::new(fnmesh_tests::fnmesh_bin())
        .arg("node")
        .env("FNMESH_NODE_ID", "node-2")
        .env("FNMESH_NATS_CREDS", setup.join("node-node-1.creds"))
        .env("FNMESH_NATS_URL", "nats://127.0.0.1:1")
        .env("FNMESH_TRUSTED_KEYS_FILE", setup.join("trusted.keys"))
        .env("FNMESH_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds node node-1's credentials")
            && stderr.contains("fnmesh nats add-node --dir <dir> --id node-2"),
        "{stderr}"
    );
}
