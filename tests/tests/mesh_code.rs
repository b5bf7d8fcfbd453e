//! Code over NATS: nodes have no code store of their own. The gateway mirrors the code it
//! stores into the region's NATS code bucket; a node fetches it by checksum from there,
//! verifies it and caches it on local disk — and refuses code that does not match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_code::nats::NatsCodeStore;
use fnmesh_code::CodeStore as _;
use fnmesh_core::checksum::Checksum;
use fnmesh_core::nats::NatsOptions;
use fnmesh_core::subjects;
use fnmesh_tests::function_body;
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::unique;
use serde_json::{json, Value};

const HANDLER: &str = "def handle(event, context):\n    return {'echo': event['n']}\n";

fn echo_function(name: &str) -> Value {
    function_body(
        name,
        "python3",
        "main.handle",
        &[("main.py", HANDLER)],
        json!({}),
    )
}

/// The code bucket of the mesh's region, opened as a node would.
async fn code_bucket(mesh: &Mesh) -> NatsCodeStore {
    let client = NatsOptions::url(mesh.nats.url())
        .connect("fnmesh-test")
        .await
        .unwrap();
    NatsCodeStore::open(client, &mesh.region).await.unwrap()
}

async fn deployed_checksum(mesh: &Mesh, name: &str) -> Checksum {
    let f = mesh
        .call("GET", &format!("/v1/functions/{name}"), None)
        .await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    Checksum::parse(f.body["code"]["checksum"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_code_store_runs_code_deployed_after_it_started() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    let name = unique("late");
    mesh.deploy(echo_function(&name)).await;
    let checksum = deployed_checksum(&mesh, &name).await;
    assert!(
        code_bucket(&mesh).await.exists(&checksum).await.unwrap(),
        "the gateway mirrored the code into the NATS bucket"
    );

    let r = mesh
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(json!({"n": 7})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
    assert_eq!(
        r.body["status"],
        "succeeded",
        "{:?}\n{}",
        r.body,
        mesh.logs()
    );
    assert_eq!(r.body["result"], json!({"echo": 7}));
    assert_eq!(r.body["node_id"], "node-a");
    // Cached on the node's local disk, unpacked under its checksum.
    let cached = mesh
        .dir
        .path()
        .join("node-a")
        .join("node")
        .join("code")
        .join(checksum.as_str());
    assert!(cached.is_dir(), "{} is not cached", cached.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_code_that_does_not_match_its_checksum() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    let name = unique("tampered");
    let body = echo_function(&name);
    mesh.deploy(body).await;
    let checksum = deployed_checksum(&mesh, &name).await;
    let bucket = code_bucket(&mesh).await;
    let good = bucket.get(&checksum).await.unwrap().expect("mirrored code");

    // Replace the object behind everyone's back, before any node fetched it.
    let mut reader: &[u8] = b"not the deployed archive";
    bucket
        .object_store()
        .put(subjects::code_key(&checksum).as_str(), &mut reader)
        .await
        .unwrap();

    let r = mesh
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let done = mesh.wait_terminal(&id, Duration::from_secs(90)).await;
    assert_ne!(done["status"], "succeeded", "{done}\n{}", mesh.logs());
    let node_log = mesh.nodes[0].log();
    assert!(
        node_log.contains("corrupt"),
        "the node says why it refused the code:\n{node_log}"
    );
    let cached = mesh
        .dir
        .path()
        .join("node-a")
        .join("node")
        .join("code")
        .join(checksum.as_str());
    assert!(!cached.exists(), "tampered code must not be unpacked");

    // Putting the right bytes back repairs the object; the function runs again.
    assert_eq!(bucket.put(good).await.unwrap(), checksum);
    let r = mesh
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(json!({"n": 2})),
        )
        .await;
    assert_eq!(
        r.body["status"],
        "succeeded",
        "{:?}\n{}",
        r.body,
        mesh.logs()
    );
    assert_eq!(r.body["result"], json!({"echo": 2}));
}
