//! An edge's invocations reach its hub (issue #14, items 4 and 5): a hub and an edge, each
//! with its own nats-server, JetStream domain, gateway and store, a node at the edge only.
//! Records, logs and results made at the edge are exported into the edge's records stream,
//! sourced by the hub's domain and stored by the hub's gateway, so `GET /v1/invocations/{id}`
//! at the hub finds them — also those accepted and run at the edge while the link was cut,
//! each run once. `/v1/admin/regions` and `/v1/admin/nodes` show the other region, its link
//! and its replication lag.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::function_body;
use fnmesh_tests::mesh::{both_logs, eventually, Mesh};
use fnmesh_tests::servers::nats::TestTopology;
use serde_json::{json, Value};

/// The entry of region `name` in a `/v1/admin/regions` answer.
fn region<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no region {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_invocations_reach_the_hub_also_after_a_cut() {
    let topology = TestTopology::start(&["eu"]);
    let (hub_nats, mut edges, _setup) = topology.into_parts();
    let eu_nats = edges.remove(0).1;
    let mut hub = Mesh::start_in_region(hub_nats, "hub", &[], &[]).await;
    let eu =
        Mesh::start_in_region(eu_nats, "eu", &["node-eu"], &[("FNMESH_HUB_REGION", "hub")]).await;

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
    eventually(
        "the function reaches the edge",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async {
            let r = eu
                .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": -1})))
                .await;
            r.status == 200
        },
    )
    .await;

    // With the link up: a sync invocation at the edge is found at the hub, with its logs.
    let r = eu
        .call("POST", "/v1/functions/echo/invoke", Some(json!({"i": 0})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["node_id"], "node-eu");
    let first = r.body["id"].as_str().unwrap().to_owned();
    eventually(
        "a finished edge invocation is at the hub (link up)",
        Duration::from_secs(30),
        || both_logs(&hub, &eu),
        || async {
            let r = hub
                .call("GET", &format!("/v1/invocations/{first}"), None)
                .await;
            r.status == 200 && r.body["status"] == "succeeded"
        },
    )
    .await;
    let at_hub = hub
        .call("GET", &format!("/v1/invocations/{first}"), None)
        .await;
    assert_eq!(at_hub.body["node_id"], "node-eu", "{:?}", at_hub.body);
    assert_eq!(at_hub.body["result"], json!({"i": 0}));
    let logs = hub
        .call("GET", &format!("/v1/invocations/{first}/logs"), None)
        .await;
    assert_eq!(logs.status, 200, "{:?}", logs.body);
    assert!(
        logs.body.to_string().contains("ran 0"),
        "the edge's logs are at the hub: {:?}",
        logs.body
    );

    // Each side shows the other, linked.
    let regions = hub.call("GET", "/v1/admin/regions", None).await;
    assert_eq!(regions.status, 200, "{:?}", regions.body);
    assert_eq!(region(&regions.body, "hub")["link"], "local");
    let edge = region(&regions.body, "eu");
    assert_eq!(edge["role"], "edge", "{edge}");
    assert_eq!(edge["link"], "up", "{edge}");
    assert!(edge["records"]["lag"].is_u64(), "{edge}");
    assert!(edge["records"]["unapplied"].is_u64(), "{edge}");
    let regions = eu.call("GET", "/v1/admin/regions", None).await;
    assert_eq!(regions.status, 200, "{:?}", regions.body);
    assert_eq!(region(&regions.body, "eu")["link"], "local");
    assert!(
        region(&regions.body, "eu")["catalog"]["lag"].is_u64(),
        "{:?}",
        regions.body
    );
    assert_eq!(
        region(&regions.body, "hub")["link"],
        "up",
        "{:?}",
        regions.body
    );
    let nodes = hub.call("GET", "/v1/admin/nodes", None).await;
    assert_eq!(nodes.status, 200, "{:?}", nodes.body);
    let listed = nodes.body["items"].as_array().unwrap();
    let node = listed
        .iter()
        .find(|n| n["id"] == "node-eu")
        .unwrap_or_else(|| panic!("the hub lists the edge's node: {:?}", nodes.body));
    assert_eq!(node["region"], "eu");
    assert_eq!(node["link"], "up");

    // Cut the link: the edge accepts and runs 50 async invocations on its own.
    hub.nats.stop();
    let mut ids = Vec::new();
    for i in 1..=50 {
        ids.push(eu.invoke_async("echo", json!({"i": i})).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let done = eu.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"], json!({"i": i + 1}), "{done}");
        assert_eq!(done["attempt"], 1, "run once: {done}");
        assert_eq!(done["node_id"], "node-eu", "{done}");
    }
    let regions = eu.call("GET", "/v1/admin/regions", None).await;
    assert_eq!(
        region(&regions.body, "hub")["link"],
        "down",
        "{:?}",
        regions.body
    );

    // The link back: the hub finds each of them, as the edge recorded it.
    hub.nats.restart();
    let lag = eventually(
        "the 50 invocations made during the cut are at the hub",
        Duration::from_secs(180),
        || both_logs(&hub, &eu),
        || async {
            for id in &ids {
                let r = hub
                    .call("GET", &format!("/v1/invocations/{id}"), None)
                    .await;
                if r.status != 200 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("records of the cut reached the hub {lag:?} after its server restarted");
    for (i, id) in ids.iter().enumerate() {
        let at_hub = hub
            .call("GET", &format!("/v1/invocations/{id}"), None)
            .await;
        let at_edge = eu.call("GET", &format!("/v1/invocations/{id}"), None).await;
        assert_eq!(at_hub.body, at_edge.body, "the hub's record is the edge's");
        assert_eq!(at_hub.body["result"], json!({"i": i + 1}));
        assert_eq!(at_hub.body["attempt"], 1);
    }
    let regions = hub.call("GET", "/v1/admin/regions", None).await;
    assert_eq!(
        region(&regions.body, "eu")["link"],
        "up",
        "{:?}",
        regions.body
    );
}
