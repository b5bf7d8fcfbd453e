//! The node registry across real processes: a gateway and two nodes over a harness
//! `nats-server -js`, heartbeating every second. Both nodes are listed by
//! `GET /v1/admin/nodes` with their fields; a node killed with SIGKILL drops out within three
//! heartbeats; a node sent SIGTERM while it runs an invocation finishes it, leaves the
//! registry and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, unique};
use serde_json::{json, Value};

/// Heartbeat interval given to every node.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The ids `GET /v1/admin/nodes` lists, with the whole body.
async fn listed(mesh: &Mesh) -> (Vec<String>, Value) {
    let r = mesh.call("GET", "/v1/admin/nodes", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ids = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect();
    (ids, r.body)
}

/// Polls the node list until `check` holds (or `within` passes, which fails the test).
async fn wait_listed(
    mesh: &Mesh,
    what: &str,
    within: Duration,
    check: impl Fn(&[String], &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (ids, body) = listed(mesh).await;
        if check(&ids, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {body} after {within:?}\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_register_drop_out_when_killed_and_leave_after_draining() {
    let mut mesh = Mesh::start(&["node-a", "node-b"], &[("FNMESH_HEARTBEAT_SECS", "1")]).await;

    // Both nodes are listed, with their fields.
    let body = wait_listed(
        &mesh,
        "both nodes listed",
        Duration::from_secs(30),
        |ids, _| ids == ["node-a", "node-b"],
    )
    .await;
    for node in body["items"].as_array().unwrap() {
        assert_eq!(node["region"], mesh.region.as_str(), "{node}");
        assert_eq!(node["state"], "active", "{node}");
        assert_eq!(node["slots_total"], 16, "{node}");
        assert!(node["slots_free"].as_u64().unwrap() <= 16, "{node}");
        assert!(node["warm_sandboxes"].is_u64(), "{node}");
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{node}");
        assert_eq!(node["heartbeat_interval_ms"], 1000, "{node}");
        assert!(node["uptime_secs"].is_u64(), "{node}");
        let runtimes = node["runtimes"].as_array().unwrap();
        for runtime in ["python3", "nodejs", "exec"] {
            assert!(runtimes.contains(&json!(runtime)), "{runtime}: {node}");
        }
        for field in ["started_at", "last_heartbeat_at"] {
            assert!(node[field].is_string(), "{field}: {node}");
        }
    }

    // kill -9: no leave, so the entry must expire, within three heartbeats (+ polling slack).
    mesh.node("node-b").kill9();
    let killed = Instant::now();
    wait_listed(
        &mesh,
        "a killed node drops out",
        HEARTBEAT * 3 + Duration::from_secs(2),
        |ids, _| ids == ["node-a"],
    )
    .await;
    println!("killed node dropped out after {:?}", killed.elapsed());

    // SIGTERM during an invocation: it finishes on that node, the node leaves and exits 0.
    let name = unique("sleepy");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(event, context):\n    time.sleep(2)\n    return {'slept': True}\n",
        )],
        json!({"timeout_ms": 30000}),
    ))
    .await;
    let r = mesh
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = mesh
            .call("GET", &format!("/v1/invocations/{id}"), None)
            .await;
        if r.body["status"] == "running" {
            break;
        }
        assert_eq!(r.body["status"], "queued", "{:?}", r.body);
        assert!(Instant::now() < deadline, "never started:\n{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.node("node-a").sigterm();
    wait_listed(
        &mesh,
        "a draining node says so",
        Duration::from_secs(5),
        |_, body| body["items"][0]["state"] == "draining",
    )
    .await;
    let status = mesh.node("node-a").wait_exit(Duration::from_secs(60));
    let exited = Instant::now();
    let status = status.unwrap_or_else(|| panic!("node-a did not exit:\n{}", mesh.logs()));
    assert!(
        status.success(),
        "node-a exited with {status}\n{}",
        mesh.logs()
    );
    // Its last heartbeat is at most one interval old, far from expiry: only `leave` explains
    // its absence.
    let (ids, body) = listed(&mesh).await;
    assert!(
        exited.elapsed() < HEARTBEAT * 2,
        "listing took too long to prove anything"
    );
    assert!(ids.is_empty(), "node-a left the registry: {body}");
    assert!(
        mesh.node("node-a").log().contains("node left the registry"),
        "{}",
        mesh.node("node-a").log()
    );

    let done = mesh.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["node_id"], "node-a", "{done}");
    assert_eq!(done["result"], json!({"slept": true}), "{done}");
}
