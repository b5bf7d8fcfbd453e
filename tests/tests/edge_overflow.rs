//! Edge-first placement with overflow to the hub (issue #14, item 3): a hub and an edge, each
//! with its own nats-server, JetStream domain, gateway, store and node. With its node the edge
//! runs what it accepts itself, and what its function's full lane refuses runs at the hub;
//! without a live node it has the hub run everything (sync and async, under the edge's
//! invocation id, once), also async work accepted while the link was cut, once the link is
//! back; with a node again it runs its own work again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fnmesh_tests::function_body;
use fnmesh_tests::mesh::{both_logs, eventually, Mesh};
use fnmesh_tests::servers::nats::TestTopology;
use serde_json::{json, Value};

/// The record of `id` at `mesh` once it is terminal (`None` until then).
async fn finished(mesh: &Mesh, id: &str) -> Option<Value> {
    let r = mesh
        .call("GET", &format!("/v1/invocations/{id}"), None)
        .await;
    let status = r.body["status"].as_str().unwrap_or_default();
    (r.status == 200 && !matches!(status, "queued" | "running")).then_some(r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_without_a_node_overflows_to_the_hub() {
    let topology = TestTopology::start(&["eu"]);
    let (hub_nats, mut edges, _setup) = topology.into_parts();
    let eu_nats = edges.remove(0).1;
    let mut hub = Mesh::start_in_region(hub_nats, "hub", &["node-hub"], &[]).await;
    // A function's lane at the edge holds two invocations (queued or running).
    let mut eu = Mesh::start_in_region(
        eu_nats,
        "eu",
        &["node-eu"],
        &[
            ("FNMESH_HUB_REGION", "hub"),
            ("FNMESH_FUNCTION_QUEUE_CAPACITY", "2"),
        ],
    )
    .await;
    hub.deploy(function_body(
        "echo",
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    print('ran', event.get('i'))\n    return event\n",
        )],
        json!({}),
    ))
    .await;
    // Edge-first: with its node up, the edge runs it.
    eventually(
        "the function runs at the edge",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async {
            let r = eu
                .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": 0})))
                .await;
            r.status == 200 && r.body["node_id"] == "node-eu"
        },
    )
    .await;

    // A full lane at the edge: what it refuses runs at the hub, sync and async, each once.
    hub.deploy(function_body(
        "slow",
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\n\ndef handle(event, context):\n    time.sleep(1.5)\n    return event\n",
        )],
        json!({"max_concurrency": 1}),
    ))
    .await;
    eventually(
        "the slow function reaches the edge",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async { eu.call("GET", "/v1/functions/slow", None).await.status == 200 },
    )
    .await;
    let mut burst = Vec::new();
    for i in 0..6 {
        burst.push(eu.invoke_async("slow", json!({"i": i})).await);
    }
    let r = eu
        .call("POST", "/v1/functions/slow/invoke", Some(json!({"i": 6})))
        .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, both_logs(&hub, &eu));
    assert_eq!(
        r.body["node_id"], "node-hub",
        "the lane is full: {:?}",
        r.body
    );
    let mut ran_on = std::collections::BTreeMap::new();
    for (i, id) in burst.iter().enumerate() {
        let done = eu.wait_terminal(id, Duration::from_secs(90)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"], json!({"i": i}), "{done}");
        assert_eq!(done["attempt"], 1, "run once: {done}");
        *ran_on
            .entry(done["node_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    eprintln!("a burst of 6 at a lane of 2 ran on {ran_on:?}");
    assert!(ran_on.contains_key("node-eu"), "edge-first: {ran_on:?}");
    assert!(
        ran_on.contains_key("node-hub"),
        "the rest overflowed: {ran_on:?}"
    );

    // The edge's only node is killed: once its entry expires (three heartbeats), its region
    // has no node for python3.
    eu.node("node-eu").kill9();
    eventually(
        "the killed node's registry entry expired",
        Duration::from_secs(30),
        || both_logs(&hub, &eu),
        || async {
            let r = eu.call("GET", "/v1/admin/nodes", None).await;
            r.status == 200 && r.body["items"].as_array().is_some_and(Vec::is_empty)
        },
    )
    .await;

    // The gateway reuses its list of live nodes for up to a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Sync overflows: the hub's node runs it under the edge's id; both sides have the record.
    let started = Instant::now();
    let r = eu
        .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": 1})))
        .await;
    eprintln!("a sync overflow answered in {:?}", started.elapsed());
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, both_logs(&hub, &eu));
    assert_eq!(r.body["node_id"], "node-hub", "{:?}", r.body);
    assert_eq!(r.body["result"], json!({"i": 1}));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let at_edge = finished(&eu, &id)
        .await
        .expect("written through at the edge");
    assert_eq!(at_edge["node_id"], "node-hub");
    let at_hub = finished(&hub, &id).await.expect("recorded at the hub");
    assert_eq!(at_hub["attempt"], 1, "{at_hub}");
    let logs = eu
        .call("GET", &format!("/v1/invocations/{id}/logs"), None)
        .await;
    assert!(logs.body.to_string().contains("ran 1"), "{:?}", logs.body);

    // Async overflows too, each run once at the hub; the edge learns each outcome.
    let mut ids = Vec::new();
    for i in 2..12 {
        ids.push(eu.invoke_async("echo", json!({"i": i})).await);
    }
    for (n, id) in ids.iter().enumerate() {
        eventually(
            "an async overflow's outcome is at the edge",
            Duration::from_secs(60),
            || both_logs(&hub, &eu),
            || async { finished(&eu, id).await.is_some() },
        )
        .await;
        let at_edge = finished(&eu, id).await.unwrap();
        assert_eq!(at_edge["status"], "succeeded", "{at_edge}");
        assert_eq!(at_edge["node_id"], "node-hub", "{at_edge}");
        assert_eq!(at_edge["result"], json!({"i": n + 2}));
        let at_hub = finished(&hub, id).await.expect("at the hub");
        assert_eq!(at_hub["attempt"], 1, "run once: {at_hub}");
    }

    // Cut the link: a sync overflow cannot run (503, nothing ran); an async one is stored
    // and runs at the hub once the link is back.
    hub.nats.stop();
    let r = eu
        .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": 100})))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable", "{:?}", r.body);
    let during_cut = eu.invoke_async("echo", json!({"i": 101})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hub.nats.restart();
    let lag = eventually(
        "async work accepted during the cut ran at the hub",
        Duration::from_secs(180),
        || both_logs(&hub, &eu),
        || async { finished(&eu, &during_cut).await.is_some() },
    )
    .await;
    eprintln!("overflowed during the cut: finished {lag:?} after the hub's server restarted");
    let at_edge = finished(&eu, &during_cut).await.unwrap();
    assert_eq!(at_edge["status"], "succeeded", "{at_edge}");
    assert_eq!(at_edge["node_id"], "node-hub", "{at_edge}");
    let at_hub = finished(&hub, &during_cut).await.expect("at the hub");
    assert_eq!(at_hub["attempt"], 1, "run once: {at_hub}");

    // A node at the edge again: edge-first again (within the registry's cache of 1 s).
    eu.add_node("node-eu2", &[]);
    eventually(
        "the edge runs its own work again",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async {
            let r = eu
                .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": 200})))
                .await;
            r.status == 200 && r.body["node_id"] == "node-eu2"
        },
    )
    .await;
    drop(hub);
}
