//! Outages of the broker or the metadata store (issue #13): an invocation is answered within
//! 2 s with 503 and `Retry-After` (never a 500 that makes a client guess), unless it is stored
//! durably — an async invocation accepted while NATS is down is committed as `queued` and
//! published once the broker is back, and a sync one that ran while the store was down is
//! recorded once it is back, so nothing accepted is lost. Real processes: a gateway
//! and a node over a harness `nats-server`, the gateway on a harness PostgreSQL for the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::servers::postgres::TestPostgres;
use fnmesh_tests::{function_body, unique, Resp};
use serde_json::{json, Value};

const ECHO: &str = "def handle(event, context):\n    return {'got': event}\n";

async fn deploy_echo(mesh: &Mesh) -> String {
    let name = unique("echo");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({}),
    ))
    .await;
    name
}

/// A timed call: the answer and how long it took.
async fn timed(mesh: &Mesh, path: &str, body: Value) -> (Resp, Duration) {
    let started = Instant::now();
    let r = mesh.call("POST", path, Some(body)).await;
    (r, started.elapsed())
}

fn assert_unavailable(r: &Resp, took: Duration, what: &str, logs: &str) {
    assert_eq!(r.status, 503, "{what}: {:?}\n{logs}", r.body);
    assert_eq!(
        r.body["error"]["code"], "unavailable",
        "{what}: {:?}",
        r.body
    );
    let retry = r
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .to_str()
        .unwrap();
    assert!(
        retry.parse::<u64>().unwrap() >= 1,
        "{what}: Retry-After {retry}"
    );
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_down_sync_is_503_and_async_is_stored_and_runs_when_it_returns() {
    let mut mesh = Mesh::start(&["node-a"], &[]).await;
    let name = deploy_echo(&mesh).await;
    let invoke = format!("/v1/functions/{name}/invoke");
    let r = mesh.call("POST", &invoke, Some(json!({"n": 0}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    mesh.nats.stop();
    // The gateway notices the closed connection at once; give it a moment to say so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (r, took) = timed(&mesh, &invoke, json!({"n": 1})).await;
    assert_unavailable(&r, took, "sync invoke, broker down", &mesh.logs());

    // An async invocation is committed before it is published: accepted, durably.
    let (r, took) = timed(&mesh, &format!("{invoke}?async=true"), json!({"n": 2})).await;
    assert_eq!(r.status, 202, "async invoke, broker down: {:?}", r.body);
    assert!(took < Duration::from_secs(2), "async invoke took {took:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = mesh
        .call("GET", &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(r.body["status"], "queued", "{:?}", r.body);

    // Back: the reconciler publishes it (queued for longer than 30 s) and it runs.
    mesh.nats.restart();
    let done = mesh.wait_terminal(&id, Duration::from_secs(150)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"got": {"n": 2}}), "{done}");
    let r = mesh.call("POST", &invoke, Some(json!({"n": 3}))).await;
    assert_eq!(r.status, 200, "after the broker is back: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_store_down_invocations_are_503_within_2_s_and_service_resumes() {
    let pg = TestPostgres::start();
    let url = pg.url_of("postgres");
    let mesh = Mesh::start(
        &["node-a"],
        &[("FNMESH_DATABASE_URL", &url), ("FNMESH_MIGRATE", "true")],
    )
    .await;
    let name = deploy_echo(&mesh).await;
    let invoke = format!("/v1/functions/{name}/invoke");
    let r = mesh.call("POST", &invoke, Some(json!({"n": 0}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    pg.stop();
    // An async invoke needs its commit: 503. A sync one is stored once finished, and needs the
    // store only for what the gateway's caches (function, key: at most 1 s) do not hold: it may
    // still run while they are warm (200; its record is written once the store is back, from
    // the node's durable `Finished` event), else 503 like the async one. Never a 500.
    let mut ran_while_down = Vec::new();
    for (what, path) in [
        ("sync invoke, store down", invoke.clone()),
        ("async invoke, store down", format!("{invoke}?async=true")),
    ] {
        // The first request after the stop may meet a pooled connection that broke; every
        // one answers the same way.
        for _ in 0..3 {
            let (r, took) = timed(&mesh, &path, json!({"n": 1})).await;
            if r.status == 200 && what.starts_with("sync") {
                assert_eq!(r.body["result"], json!({"got": {"n": 1}}), "{:?}", r.body);
                ran_while_down.push(r.body["id"].as_str().unwrap().to_owned());
                continue;
            }
            assert_unavailable(&r, took, what, &mesh.logs());
        }
    }

    pg.start_again();
    // Service has resumed once an async invoke is accepted again: that needs a commit. (A sync
    // 200 proves less: it can be answered from the caches before the store is reachable.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let r = mesh
            .call(
                "POST",
                &format!("{invoke}?async=true"),
                Some(json!({"n": 3})),
            )
            .await;
        if r.status == 202 {
            break r.body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            r.status == 503 && Instant::now() < deadline,
            "after the store is back: {} {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let done = mesh.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let r = mesh.call("POST", &invoke, Some(json!({"n": 2}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["result"], json!({"got": {"n": 2}}), "{:?}", r.body);
    // What ran while the store was down is not lost.
    for id in ran_while_down {
        let done = mesh.wait_terminal(&id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"], json!({"got": {"n": 1}}), "{done}");
    }
}
