//! Priorities through a real `fnmesh up` and across the nodes of a mesh: work of a function
//! queues per priority, and nodes share their free slots between the priorities with work
//! 6 : 3 : 1 (`fnmesh_core::priority::Share`). High work published after a flood of low work
//! starts before most of it; low work published after a flood of high work is not left for
//! last. A caller may lower an invocation's priority, never raise it above the function's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, unique, Resp, TestApp};
use serde_json::{json, Value};

/// Sleeps `event.sleep` seconds, returns `event.tag`.
const WORK: &str = "import time\n\ndef handle(event, context):\n    time.sleep(event.get('sleep', 0))\n    return event.get('tag')\n";

/// How long each flooded invocation runs.
const SLEEP: f64 = 0.2;

/// A gateway to call: `fnmesh up` or a mesh's.
trait Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp;
    fn logs(&self) -> String;
}

impl Api for TestApp {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        TestApp::call(self, method, path, body).await
    }
    fn logs(&self) -> String {
        self.log()
    }
}

impl Api for Mesh {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        Mesh::call(self, method, path, body).await
    }
    fn logs(&self) -> String {
        Mesh::logs(self)
    }
}

async fn deploy(api: &impl Api, name: &str, config: Value) {
    let r = api
        .call(
            "POST",
            "/v1/functions",
            Some(function_body(
                name,
                "python3",
                "main.handle",
                &[("main.py", WORK)],
                config,
            )),
        )
        .await;
    assert_eq!(r.status, 201, "deploy: {}", r.body);
}

/// Queues `n` invocations of `name` at `priority` (`None`: the function's), tagged
/// `<tag>-<i>`; returns their ids.
async fn flood(
    api: &impl Api,
    name: &str,
    priority: Option<&str>,
    tag: &str,
    n: usize,
) -> Vec<String> {
    let query = match priority {
        Some(p) => format!("?async=true&priority={p}"),
        None => "?async=true".to_owned(),
    };
    let mut ids = Vec::new();
    for i in 0..n {
        let r = api
            .call(
                "POST",
                &format!("/v1/functions/{name}/invoke{query}"),
                Some(json!({"sleep": SLEEP, "tag": format!("{tag}-{i}")})),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Waits until every invocation of `ids` succeeded; returns their records.
async fn records(api: &impl Api, ids: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    for id in ids {
        loop {
            let r = api
                .call("GET", &format!("/v1/invocations/{id}"), None)
                .await;
            let status = r.body["status"].as_str().unwrap_or_default().to_owned();
            if status == "succeeded" {
                out.push(r.body);
                break;
            }
            assert!(
                !matches!(status.as_str(), "failed" | "timeout" | "dead_lettered"),
                "{id}: {}\n{}",
                r.body,
                api.logs()
            );
            assert!(
                Instant::now() < deadline,
                "{id} did not finish: {}\n{}",
                r.body,
                api.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

fn started(record: &Value) -> DateTime<Utc> {
    record["started_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no started_at: {record}"))
}

/// Start order of two floods, for failure messages: `H` and `L` in the order they started.
fn timeline(high: &[Value], low: &[Value]) -> String {
    let mut all: Vec<(DateTime<Utc>, char)> = high
        .iter()
        .map(|r| (started(r), 'H'))
        .chain(low.iter().map(|r| (started(r), 'L')))
        .collect();
    all.sort();
    all.into_iter().map(|(_, c)| c).collect()
}

/// Low work floods the queue, then high work comes: the high work starts before most of the
/// low work. Then the reverse: low work behind a flood of high work still gets its turns.
async fn high_goes_first_and_low_is_not_starved(api: &impl Api, name: &str) {
    deploy(
        api,
        name,
        json!({"priority": "high", "max_concurrency": 50, "timeout_ms": 30000}),
    )
    .await;
    // Warm the sandboxes (cold starts would blur the order).
    let warm = flood(api, name, None, "warm", 2).await;
    records(api, &warm).await;

    let low = flood(api, name, Some("low"), "low", 30).await;
    let high = flood(api, name, None, "high", 6).await;
    let low = records(api, &low).await;
    let high = records(api, &high).await;
    for r in &low {
        assert_eq!(r["priority"], "low", "{r}");
    }
    for r in &high {
        assert_eq!(r["priority"], "high", "{r}");
    }
    eprintln!("low flood, then high: {}", timeline(&high, &low));
    let last_high = high.iter().map(started).max().unwrap();
    let low_before = low.iter().filter(|r| started(r) < last_high).count();
    assert!(
        low_before <= 12,
        "every high invocation starts before most of the 30 low ones queued ahead of it \
         ({low_before} low started first): {}",
        timeline(&high, &low)
    );

    let high = flood(api, name, None, "high", 30).await;
    let low = flood(api, name, Some("low"), "low", 3).await;
    let high = records(api, &high).await;
    let low = records(api, &low).await;
    eprintln!("high flood, then low: {}", timeline(&high, &low));
    let last_high = high.iter().map(started).max().unwrap();
    assert!(
        low.iter().all(|r| started(r) < last_high),
        "low work queued behind 30 high invocations is not left for last: {}",
        timeline(&high, &low)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_in_fnmesh_up() {
    let app = TestApp::start_with(&[("FNMESH_NODE_SLOTS", "2")]).await;
    let name = unique("ranked");
    high_goes_first_and_low_is_not_starved(&app, &name).await;

    // A caller may lower the priority, never raise it above the function's.
    let plain = unique("plain");
    deploy(&app, &plain, json!({})).await;
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{plain}/invoke?priority=high"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["priority"], "normal",
        "capped at the function's: {}",
        r.body
    );
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{plain}/invoke?priority=low"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.body["priority"], "low", "{}", r.body);
    let got = app
        .call("GET", &format!("/v1/functions/{plain}"), None)
        .await;
    assert!(
        got.body["config"].get("priority").is_none() || got.body["config"]["priority"] == "normal",
        "{}",
        got.body
    );
    let got = app
        .call("GET", &format!("/v1/functions/{name}"), None)
        .await;
    assert_eq!(got.body["config"]["priority"], "high", "{}", got.body);

    // Bad names are 400s with the error shape.
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{plain}/invoke?priority=urgent"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_query", "{}", r.body);
    let bad = unique("bad");
    let r = app
        .call(
            "POST",
            "/v1/functions",
            Some(function_body(
                &bad,
                "python3",
                "main.handle",
                &[("main.py", WORK)],
                json!({"priority": "urgent"}),
            )),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"]["code"].is_string(), "{}", r.body);

    // The CLI: `fn deploy --priority`, `invoke --priority`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), WORK).unwrap();
    let cli_fn = unique("cli");
    let path = dir.path().to_str().unwrap();
    let cli = |args: &[&str]| {
        let run = fnmesh_tests::run_cli(&app.base_url, args, "");
        assert!(run.ok, "{args:?}: {}", run.stderr);
        run.stdout
    };
    cli(&[
        "fn",
        "deploy",
        path,
        "--name",
        &cli_fn,
        "--runtime",
        "python3",
        "--handler",
        "main.handle",
        "--priority",
        "high",
    ]);
    let out = cli(&["invoke", &cli_fn, "--priority", "low", "--json"]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["priority"], "low", "{record}");
    let out = cli(&["invoke", &cli_fn, "--json"]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["priority"], "high", "{record}");
    let refused = fnmesh_tests::run_cli(
        &app.base_url,
        &["invoke", &cli_fn, "--priority", "urgent"],
        "",
    );
    assert!(!refused.ok);
}

/// The same rule across two nodes of a mesh (one slot each): each node shares its own slots
/// by it, pulling the lanes of the JetStream work stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_across_the_nodes_of_a_mesh() {
    let mesh = Mesh::start(&["node-a", "node-b"], &[("FNMESH_NODE_SLOTS", "1")]).await;
    let name = unique("ranked");
    high_goes_first_and_low_is_not_starved(&mesh, &name).await;
    // Both nodes took part.
    let low = flood(&mesh, &name, Some("low"), "spread", 6).await;
    let nodes: std::collections::HashSet<String> = records(&mesh, &low)
        .await
        .iter()
        .map(|r| r["node_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
}
