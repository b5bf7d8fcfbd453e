//! Idempotency keys: a retry with the same `Idempotency-Key` is the same invocation and runs
//! once — async and sync, across a restart, across two gateways of one mesh on one
//! PostgreSQL store (and its NATS request header); another payload or function with the key
//! is 422; malformed keys are 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::servers::postgres::TestPostgres;
use fnmesh_tests::{function_body, unique, TestApp, ADMIN_KEY};
use serde_json::{json, Value};

/// Returns a fresh random value per run (so two runs are told apart), after `SLEEP` seconds.
const ONCE: &str = "import time, uuid\n\ndef handle(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'run': str(uuid.uuid4()), 'got': event}\n";

/// Sends an invoke with an idempotency key; (status, body, replayed header).
async fn keyed(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    payload: Value,
) -> (u16, Value, bool) {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .header("idempotency-key", key)
        .body(payload.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body: Value = r.json().await.unwrap();
    (status, body, replayed)
}

/// The records of function `name` (all of them: a test makes a few).
async fn records(app: &TestApp, name: &str) -> Vec<Value> {
    let r = app
        .call(
            "GET",
            &format!("/v1/invocations?function={name}&limit=100"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"].as_array().unwrap().clone()
}

/// [`records`] once it lists `n` (5 s at most): a sync invocation's record is written behind
/// its 200 by the group commit (`GET /v1/invocations/{id}` sees it at once, a listing once the
/// batch commits, about a millisecond later).
async fn records_when(app: &TestApp, name: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let listed = records(app, name).await;
        if listed.len() >= n || std::time::Instant::now() >= deadline {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_is_the_same_invocation_and_runs_once() {
    let mut app = TestApp::start().await;
    let name = unique("once");
    app.deploy(&name, "python3", "main.handle", &[("main.py", ONCE)])
        .await;
    let path = format!("/v1/functions/{name}/invoke");

    // Async: the retry answers 202 with the same id, marked replayed.
    let (status, first, replayed) = keyed(
        &app.http,
        &app.base_url,
        &format!("{path}?async=true"),
        "a-1",
        json!({"n": 1}),
    )
    .await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, again, replayed) = keyed(
        &app.http,
        &app.base_url,
        &format!("{path}?async=true"),
        "a-1",
        json!({"n": 1}),
    )
    .await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["id"], first["id"]);
    let id = first["id"].as_str().unwrap().to_owned();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // A sync call with the key the async one took answers with its outcome.
    let (status, sync_of_async, replayed) =
        keyed(&app.http, &app.base_url, &path, "a-1", json!({"n": 1})).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(sync_of_async["result"]["run"], done["result"]["run"]);

    // Sync, two callers at once with one key: one run, both get its outcome.
    let (a, b) = tokio::join!(
        keyed(&app.http, &app.base_url, &path, "s-1", json!({"sleep": 1})),
        keyed(&app.http, &app.base_url, &path, "s-1", json!({"sleep": 1})),
    );
    assert_eq!((a.0, b.0), (200, 200), "{} / {}", a.1, b.1);
    assert_eq!(a.1["id"], b.1["id"]);
    assert_eq!(a.1["status"], "succeeded", "{}", a.1);
    assert_eq!(a.1["result"]["run"], b.1["result"]["run"], "one run");
    assert!(a.2 ^ b.2, "exactly one of the two is the replay");
    // A key's payload is compared as JSON, not as bytes.
    let (status, reordered, _) = keyed(
        &app.http,
        &app.base_url,
        &path,
        "s-1",
        serde_json::from_str(r#"{ "sleep" : 1 }"#).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reordered["id"], a.1["id"]);
    // No key: a new run every time.
    let plain_a = app.invoke_ok(&name, json!({})).await;
    let plain_b = app.invoke_ok(&name, json!({})).await;
    assert_ne!(plain_a["result"]["run"], plain_b["result"]["run"]);
    // Four invocations in all: a-1, s-1 and the two without a key.
    let listed = records_when(&app, &name, 4).await;
    assert_eq!(listed.len(), 4, "{listed:?}");

    // Another payload or another function with a used key: 422, nothing runs.
    let (status, err, _) = keyed(&app.http, &app.base_url, &path, "s-1", json!({"sleep": 2})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{err}"
    );
    let other = unique("other");
    app.deploy(&other, "python3", "main.handle", &[("main.py", ONCE)])
        .await;
    let (status, err, _) = keyed(
        &app.http,
        &app.base_url,
        &format!("/v1/functions/{other}/invoke"),
        "s-1",
        json!({"sleep": 1}),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert!(records(&app, &other).await.is_empty());

    // Keys are stored: after a restart the key still answers with its invocation.
    app.restart_with(&[]).await;
    let (status, after, replayed) =
        keyed(&app.http, &app.base_url, &path, "s-1", json!({"sleep": 1})).await;
    assert_eq!((status, replayed), (200, true), "{after}");
    assert_eq!(after["result"]["run"], a.1["result"]["run"]);
    assert_eq!(records_when(&app, &name, 4).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_refused() {
    let app = TestApp::start().await;
    let name = unique("keys");
    app.deploy(&name, "python3", "main.handle", &[("main.py", ONCE)])
        .await;
    let url = format!("{}/v1/functions/{name}/invoke", app.base_url);
    let long = "k".repeat(256);
    for key in [long.as_str(), "tab\tin", ""] {
        let r = app
            .http
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", key)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "invalid_idempotency_key",
            "{key:?}: {body}"
        );
    }
    let r = app
        .http
        .post(&url)
        .bearer_auth(ADMIN_KEY)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a key given twice");
    let r = app
        .http
        .post(&url)
        .bearer_auth(ADMIN_KEY)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a key that is not ASCII");
    assert!(records(&app, &name).await.is_empty(), "nothing ran");

    // The CLI sends the key.
    let cli = |args: &[&str]| fnmesh_tests::run_cli(&app.base_url, args, "");
    let first = cli(&["invoke", &name, "--idempotency-key", "cli-1", "--json"]);
    assert!(first.ok, "{}", first.stderr);
    let again = cli(&["invoke", &name, "--idempotency-key", "cli-1", "--json"]);
    assert!(again.ok, "{}", again.stderr);
    let (a, b): (Value, Value) = (
        serde_json::from_str(&first.stdout).unwrap(),
        serde_json::from_str(&again.stdout).unwrap(),
    );
    assert_eq!(a["result"]["run"], b["result"]["run"]);
}

/// Two gateways of one region on one PostgreSQL store: a key used through one answers through
/// the other with the same invocation, over HTTP and over a NATS request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_across_gateways_and_nats_requests() {
    let url = TestPostgres::shared().fresh_database();
    let store = [
        ("FNMESH_DATABASE_URL", url.as_str()),
        ("FNMESH_MIGRATE", "true"),
    ];
    let mut mesh = Mesh::start(&["node-a"], &store).await;
    let second = mesh.add_gateway().await;
    mesh.deploy(function_body(
        "once",
        "python3",
        "main.handle",
        &[("main.py", ONCE)],
        json!({}),
    ))
    .await;
    let path = "/v1/functions/once/invoke";
    let (status, first, _) =
        keyed(&mesh.http, &mesh.base_url, path, "x-1", json!({"sleep": 1})).await;
    assert_eq!(status, 200, "{first}\n{}", mesh.logs());
    let (status, other, replayed) =
        keyed(&mesh.http, &second, path, "x-1", json!({"sleep": 1})).await;
    assert_eq!((status, replayed), (200, true), "{other}\n{}", mesh.logs());
    assert_eq!(other["id"], first["id"]);
    assert_eq!(other["result"]["run"], first["result"]["run"]);
    // Async through the second, retried through the first.
    let (status, queued, _) = keyed(
        &mesh.http,
        &second,
        &format!("{path}?async=true"),
        "x-2",
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let (status, retried, replayed) = keyed(
        &mesh.http,
        &mesh.base_url,
        &format!("{path}?async=true"),
        "x-2",
        json!({}),
    )
    .await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(retried["id"], queued["id"]);

    // The NATS request header, against the key taken over HTTP.
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
    headers.insert("Idempotency-Key", "x-1");
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request_with_headers(
            fnmesh_core::subjects::request(&fnmesh_core::FunctionName::parse("once").unwrap()),
            headers.clone(),
            json!({"sleep": 1}).to_string().into(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let over_nats: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(over_nats["id"], first["id"], "{over_nats}");
    headers.insert("Idempotency-Key", "x-1");
    let reused = client
        .request_with_headers(
            fnmesh_core::subjects::request(&fnmesh_core::FunctionName::parse("once").unwrap()),
            headers,
            json!({"sleep": 3}).to_string().into(),
        )
        .await
        .unwrap();
    let reused: Value = serde_json::from_slice(&reused.payload).unwrap();
    assert_eq!(
        reused["error"]["code"], "idempotency_key_reused",
        "{reused}"
    );

    let list = mesh
        .call("GET", "/v1/invocations?function=once&limit=100", None)
        .await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one invocation per key: {items:?}");
}
