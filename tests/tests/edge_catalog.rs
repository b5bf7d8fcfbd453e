//! Functions everywhere they are placed (issue #14, item 2): a hub and an edge, each with its
//! own nats-server and JetStream domain (`fnmesh nats init --edge`), its own gateway, store
//! and node. Functions, secrets and API keys are deployed at the hub only; the edge gateway
//! (`FNMESH_HUB_REGION=hub`) follows the hub's catalog through the mirror in its domain and
//! serves them with its own node, also with the hub's server stopped. `config.regions`
//! decides where a function is placed; the edge refuses catalog writes of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::function_body;
use fnmesh_tests::mesh::{both_logs, eventually, Mesh};
use fnmesh_tests::servers::nats::TestTopology;
use serde_json::{json, Value};

/// One secrets key for the whole deployment: the edge opens what the hub sealed.
const SECRETS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A python function answering with its greeting secret (or `"none"`).
fn greeter(name: &str, config: Value) -> Value {
    function_body(
        name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import os\n\ndef handle(event, context):\n    return os.environ.get('GREETING', 'none')\n",
        )],
        config,
    )
}

/// Calls `mesh`'s gateway with `key` as the bearer.
async fn call_as(
    mesh: &Mesh,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = mesh
        .http
        .request(method, format!("{}{path}", mesh.base_url))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_serves_what_the_hub_deploys_also_with_the_hub_down() {
    let topology = TestTopology::start(&["eu"]);
    let (hub_nats, mut edges, _setup) = topology.into_parts();
    let eu_nats = edges.remove(0).1;
    let shared = [("FNMESH_SECRETS_KEY", SECRETS_KEY)];
    let mut hub = Mesh::start_in_region(hub_nats, "hub", &[], &shared).await;
    let edge_env = [
        ("FNMESH_SECRETS_KEY", SECRETS_KEY),
        ("FNMESH_HUB_REGION", "hub"),
    ];
    let eu = Mesh::start_in_region(eu_nats, "eu", &["node-eu"], &edge_env).await;

    // Placed elsewhere first: entries apply in order, so once `greet` is at the edge,
    // `elsewhere` has been seen (and left out).
    hub.deploy(greeter("elsewhere", json!({"regions": ["us"]})))
        .await;
    hub.deploy(greeter("greet", json!({}))).await;
    let r = hub
        .call(
            "PUT",
            "/v1/functions/greet/secrets/GREETING",
            Some(json!({"value": "hello from the hub's catalog"})),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let created = hub
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "edge caller", "role": "invoker"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let invoker = created.body["key"].as_str().unwrap().to_owned();
    let invoker_id = created.body["id"].as_str().unwrap().to_owned();

    // The edge gets the function, its secret and the key, and runs it on its own node.
    eventually(
        "the secret reaches the edge",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async {
            let (status, body) = call_as(
                &eu,
                &invoker,
                "POST",
                "/v1/functions/greet/invoke",
                Some(json!({})),
            )
            .await;
            status == 200 && body["result"] == "hello from the hub's catalog"
        },
    )
    .await;
    let (status, body) = call_as(
        &eu,
        &invoker,
        "POST",
        "/v1/functions/greet/invoke",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node_id"], "node-eu", "{body}");
    let r = eu.call("GET", "/v1/functions/elsewhere", None).await;
    assert_eq!(r.status, 404, "placed in us only: {:?}", r.body);
    let v = eu.call("GET", "/v1/functions/greet", None).await;
    assert_eq!(v.status, 200);
    let at_hub = hub.call("GET", "/v1/functions/greet", None).await;
    assert_eq!(
        v.body["id"], at_hub.body["id"],
        "the same function, replicated"
    );
    assert_eq!(v.body["code"], at_hub.body["code"]);

    // The edge refuses catalog writes: they belong to the hub.
    let r = eu
        .call("POST", "/v1/functions", Some(greeter("local", json!({}))))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "read_only_region", "{:?}", r.body);
    let r = eu
        .call(
            "PUT",
            "/v1/functions/greet/secrets/X",
            Some(json!({"value": "y"})),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "read_only_region", "{:?}", r.body);
    let r = eu
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "k", "role": "invoker"})),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "read_only_region", "{:?}", r.body);

    // Aliases follow the hub: made, moved and deleted there; refused at the edge.
    let r = hub
        .call(
            "PUT",
            "/v1/functions/greet",
            Some(json!({"metadata": {"v": "2"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let alias_at = |version: u64| {
        let eu = &eu;
        async move {
            let r = eu
                .call("GET", "/v1/functions/greet/aliases/prod", None)
                .await;
            r.status == 200 && r.body["version"] == version
        }
    };
    for version in [1, 2] {
        let r = hub
            .call(
                "PUT",
                "/v1/functions/greet/aliases/prod",
                Some(json!({ "version": version })),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        eventually(
            "an alias reaches the edge",
            Duration::from_secs(30),
            || both_logs(&hub, &eu),
            || alias_at(version),
        )
        .await;
        let (status, body) = call_as(
            &eu,
            &invoker,
            "POST",
            "/v1/functions/greet/invoke?alias=prod",
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (status, body["version"].as_u64()),
            (200, Some(version)),
            "{body}"
        );
        assert_eq!(body["alias"], "prod");
    }
    let r = eu
        .call(
            "PUT",
            "/v1/functions/greet/aliases/prod",
            Some(json!({ "version": 1 })),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "read_only_region", "{:?}", r.body);
    let r = hub
        .call("DELETE", "/v1/functions/greet/aliases/prod", None)
        .await;
    assert_eq!(r.status, 204);
    eventually(
        "a deleted alias leaves the edge",
        Duration::from_secs(30),
        || both_logs(&hub, &eu),
        || async {
            eu.call("GET", "/v1/functions/greet/aliases/prod", None)
                .await
                .status
                == 404
        },
    )
    .await;

    // A new version at the hub becomes the edge's latest; placement follows the latest.
    let r = hub
        .call(
            "PUT",
            "/v1/functions/elsewhere",
            Some(json!({"config": {"regions": ["eu", "us"]}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(
        "an update places a function at the edge",
        Duration::from_secs(30),
        || both_logs(&hub, &eu),
        || async {
            let r = eu.call("GET", "/v1/functions/elsewhere", None).await;
            r.status == 200 && r.body["version"] == 2
        },
    )
    .await;
    let r = hub
        .call(
            "PUT",
            "/v1/functions/elsewhere",
            Some(json!({"config": {"regions": []}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(
        "a function placed nowhere leaves the edge",
        Duration::from_secs(30),
        || both_logs(&hub, &eu),
        || async { eu.call("GET", "/v1/functions/elsewhere", None).await.status == 404 },
    )
    .await;

    // Cut the link: the hub's server is down; the edge serves sync and async on its own.
    hub.nats.stop();
    let (status, body) = call_as(
        &eu,
        &invoker,
        "POST",
        "/v1/functions/greet/invoke",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        status,
        200,
        "sync with the hub down: {body}\n{}",
        both_logs(&hub, &eu)
    );
    assert_eq!(body["node_id"], "node-eu");
    let (status, body) = call_as(
        &eu,
        &invoker,
        "POST",
        "/v1/functions/greet/invoke?async=true",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 202, "async with the hub down: {body}");
    let id = body["id"].as_str().unwrap();
    let done = eu.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], "hello from the hub's catalog", "{done}");
    assert_eq!(done["node_id"], "node-eu", "{done}");

    // The link back: a revocation and a deletion at the hub reach the edge.
    hub.nats.restart();
    eventually(
        "the hub gateway is back",
        Duration::from_secs(60),
        || both_logs(&hub, &eu),
        || async { hub.call("GET", "/v1/functions/greet", None).await.status == 200 },
    )
    .await;
    let r = hub
        .call("DELETE", &format!("/v1/keys/{invoker_id}"), None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = hub.call("DELETE", "/v1/functions/greet", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    // Leaf reconnects and mirrors resume with a delay (the mirror's retry, ~30-40 s).
    eventually(
        "a deletion at the hub reaches the edge",
        Duration::from_secs(120),
        || both_logs(&hub, &eu),
        || async { eu.call("GET", "/v1/functions/greet", None).await.status == 404 },
    )
    .await;
    eventually(
        "the revoked key is refused at the edge",
        Duration::from_secs(10),
        || both_logs(&hub, &eu),
        || async { call_as(&eu, &invoker, "GET", "/v1/functions", None).await.0 == 401 },
    )
    .await;
}
