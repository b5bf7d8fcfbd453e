//! Metrics of a real `fnmesh node` process over NATS: its `FNMESH_METRICS_LISTEN` listener
//! serves scrapes bearing `FNMESH_METRICS_TOKEN` (and refuses others) what it ran (invocations by status, cold starts, init and execution histograms,
//! slots, warm sandboxes), the gateway's `/metrics` counts the same results, and each sync
//! response's `Server-Timing` carries the numbers of the stored record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fnmesh_core::metrics::parse_text;
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{free_port, function_body, unique, ADMIN_KEY};
use serde_json::json;

/// Sample values by `name{k=v,…}` (labels sorted).
type Scrape = BTreeMap<String, f64>;

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.get(&series(name, labels)).copied().unwrap_or(0.0)
}

/// The node's scrape token in these tests.
const SCRAPE_TOKEN: &str = "node-scrape-token-for-tests";

/// Scrapes `url` with `Bearer <credential>` (an admin key or the scrape token).
async fn scrape(http: &reqwest::Client, url: &str, credential: &str) -> Option<Scrape> {
    let resp = http.get(url).bearer_auth(credential).send().await.ok()?;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let samples = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Some(
        samples
            .into_iter()
            .map(|s| {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (series(&s.name, &labels), s.value)
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nodes_metrics_listener_counts_what_it_ran() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    mesh.add_node(
        "node-m",
        &[
            ("FNMESH_METRICS_LISTEN", listen.as_str()),
            ("FNMESH_METRICS_TOKEN", SCRAPE_TOKEN),
            ("FNMESH_NODE_SLOTS", "4"),
        ],
    );
    let node_url = format!("http://{listen}/metrics");
    let gateway_url = format!("{}/metrics", mesh.base_url);
    let name = unique("metered");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    if event.get('fail'):\n        raise ValueError('asked to fail')\n    return event['i']\n",
        )],
        json!({"timeout_ms": 10000, "min_warm": 0}),
    ))
    .await;

    // The listener comes up with the node.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Some(s) = scrape(&mesh.http, &node_url, SCRAPE_TOKEN).await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node metrics not served:\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&before, "fnmesh_node_slots", &[("state", "free")]),
        4.0
    );
    // Without the token (or with the admin key, which a node cannot check): 401.
    for credential in [None, Some(ADMIN_KEY)] {
        let mut req = mesh.http.get(&node_url);
        if let Some(key) = credential {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{credential:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert_eq!(
        value(&before, "fnmesh_node_slots", &[("state", "busy")]),
        0.0
    );
    let gateway_before = scrape(&mesh.http, &gateway_url, ADMIN_KEY).await.unwrap();

    // Two successes then one failure, one after the other: one cold start, then warm.
    let path = format!("/v1/functions/{name}/invoke");
    for (i, fail) in [(0, false), (1, false), (2, true)] {
        let r = mesh
            .call("POST", &path, Some(json!({"i": i, "fail": fail})))
            .await;
        assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
        let want = if fail { "failed" } else { "succeeded" };
        assert_eq!(r.body["status"], want, "{:?}", r.body);
        // Server-Timing has the record's numbers.
        let timing = r.headers["server-timing"].to_str().unwrap().to_owned();
        let id = r.body["id"].as_str().unwrap();
        let record = mesh
            .call("GET", &format!("/v1/invocations/{id}"), None)
            .await;
        let m = &record.body["metrics"];
        for (phase, field) in [
            ("queue", "queue_us"),
            ("init", "init_us"),
            ("exec", "exec_us"),
            ("total", "total_us"),
        ] {
            let us = m[field].as_u64().unwrap();
            let entry = format!("{phase};dur={}.{:03}", us / 1000, us % 1000);
            assert!(timing.contains(&entry), "{timing} lacks {entry}");
        }
        assert!(timing.contains("node;desc=\"node-m\""), "{timing}");
        let cold = m["cold_start"].as_bool().unwrap();
        assert_eq!(cold, i == 0, "{m}");
        assert_eq!(
            r.headers["x-fnmesh-cold-start"].to_str().unwrap(),
            cold.to_string()
        );
        assert!(m["total_us"].as_u64().unwrap() >= m["exec_us"].as_u64().unwrap());
    }

    let after = scrape(&mesh.http, &node_url, SCRAPE_TOKEN).await.unwrap();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let f = name.as_str();
    assert_eq!(
        moved(
            "fnmesh_node_invocations_total",
            &[("function", f), ("status", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "fnmesh_node_invocations_total",
            &[("function", f), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        moved("fnmesh_node_cold_starts_total", &[("function", f)]),
        1.0
    );
    assert_eq!(moved("fnmesh_node_invocation_init_seconds_count", &[]), 1.0);
    assert_eq!(
        moved("fnmesh_node_invocation_execution_seconds_count", &[]),
        3.0
    );
    assert_eq!(value(&after, "fnmesh_warm_sandboxes", &[]), 1.0);
    assert_eq!(
        value(&after, "fnmesh_node_slots", &[("state", "busy")]),
        0.0
    );
    assert_eq!(
        value(&after, "fnmesh_node_slots", &[("state", "free")]),
        4.0
    );
    // A node serves node metrics only.
    assert!(!after.keys().any(|k| k.starts_with("fnmesh_http_")));

    // The gateway's recorder counts the same results from the event stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = scrape(&mesh.http, &gateway_url, ADMIN_KEY).await.unwrap();
        let moved = |name: &str, labels: &[(&str, &str)]| {
            value(&g, name, labels) - value(&gateway_before, name, labels)
        };
        let ok = moved(
            "fnmesh_invocations_total",
            &[("function", f), ("status", "succeeded")],
        );
        let failed = moved(
            "fnmesh_invocations_total",
            &[("function", f), ("status", "failed")],
        );
        let ended = moved("fnmesh_invocation_duration_seconds_count", &[]);
        if ok == 2.0 && failed == 1.0 && ended == 3.0 {
            assert_eq!(moved("fnmesh_cold_starts_total", &[("function", f)]), 1.0);
            assert_eq!(moved("fnmesh_invocation_init_seconds_count", &[]), 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway counted {ok} successes, {failed} failures"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fnmesh_up_serves_gateway_and_node_metrics_on_one_endpoint() {
    let app = fnmesh_tests::TestApp::start().await;
    app.deploy(
        "hello",
        "python3",
        "main.handle",
        &[("main.py", "def handle(event, context):\n    return event\n")],
    )
    .await;
    let r = app.invoke("hello", json!({"x": 1})).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, app.log());
    assert!(r.headers.contains_key("server-timing"));

    let url = format!("{}/metrics", app.base_url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(&app.http, &url, ADMIN_KEY).await.unwrap();
        let labels = [("function", "hello"), ("status", "succeeded")];
        let gateway = value(&s, "fnmesh_invocations_total", &labels);
        let node = value(&s, "fnmesh_node_invocations_total", &labels);
        if gateway == 1.0 && node == 1.0 {
            assert!(s.contains_key(&series("fnmesh_node_slots", &[("state", "free")])));
            assert!(s.contains_key(&series("fnmesh_warm_sandboxes", &[])));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway counted {gateway}, node {node}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
