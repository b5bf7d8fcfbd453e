//! `POST /v1/invocations/{id}/cancel` through a real `fnmesh up` and across the nodes of a
//! mesh: a queued invocation never runs, a running one is killed, the record is `cancelled`
//! and stays so; idempotent, audited; a forged cancellation is refused by nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, unique, TestApp, ADMIN_KEY};
use serde_json::{json, Value};

/// Prints a line (so a run shows in its logs), then sleeps `event.sleep` seconds.
const SLOW: &str = "import time\n\ndef handle(event, context):\n    print('started', context.invocation_id, flush=True)\n    time.sleep(event.get('sleep', 30))\n    return 'done'\n";

/// Polls `get` until the record of `id` has `value` at `field` (`"/status"`, a JSON pointer;
/// 60 s at most); `logs` for the failure message.
async fn wait_for<F, Fut>(
    get: F,
    id: &str,
    field: &str,
    value: &str,
    logs: &dyn Fn() -> String,
) -> Value
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = get(format!("/v1/invocations/{id}")).await;
        if record.pointer(field).and_then(Value::as_str) == Some(value) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never had {field} = {value:?}: {record}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_kills_a_running_invocation_and_a_queued_one_never_runs() {
    let app = TestApp::start().await;
    let name = unique("slow");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", SLOW)],
        json!({ "max_concurrency": 1, "timeout_ms": 60000 }),
    )
    .await;
    let get = |path: String| {
        let app = &app;
        async move { app.call("GET", &path, None).await.body }
    };

    // Warm: the next call's handler starts at once (a cold start would still be booting when
    // the record turns `running`, and print nothing before it is killed).
    let warm = app.invoke_ok(&name, json!({"sleep": 0})).await;
    assert_eq!(warm["status"], "succeeded", "{warm}");

    // A keyed sync call has a record from the start, so it can be cancelled while its caller
    // waits; the caller is answered `cancelled` at once (the sandbox is killed).
    let url = format!("{}/v1/functions/{name}/invoke", app.base_url);
    let http = app.http.clone();
    let caller = tokio::spawn(async move {
        let started = Instant::now();
        let r = http
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "long-sync")
            .body(json!({"sleep": 30}).to_string())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap(),
            started.elapsed(),
        )
    });
    let running_id = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = get(format!("/v1/invocations?function={name}")).await;
            let running = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "running")
                .map(|r| r["id"].as_str().unwrap().to_owned());
            if let Some(id) = running {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "never running: {list}\n{}",
                app.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Its handler has printed by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A second one waits behind it (max_concurrency 1).
    let queued = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({"sleep": 1})),
        )
        .await;
    let queued_id = queued.body["id"].as_str().unwrap().to_owned();

    let cancelled = app
        .call("POST", &format!("/v1/invocations/{queued_id}/cancel"), None)
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["error"]["kind"], "cancelled");
    let killed = app
        .call(
            "POST",
            &format!("/v1/invocations/{running_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(killed.status, 200, "{:?}", killed.body);
    let (status, answer, waited) = caller.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "cancelled", "{answer}");
    assert!(
        waited < Duration::from_secs(25),
        "killed, not waited out: {waited:?}"
    );

    // The queued one is handed to the node once the slot frees, and settled unrun: the
    // node's report says so (and joins the record); the killed one's logs are kept.
    let settled = wait_for(
        get,
        &queued_id,
        "/error/message",
        "cancelled before it ran",
        &|| app.log(),
    )
    .await;
    assert_eq!(settled["status"], "cancelled");
    let killed = wait_for(
        get,
        &running_id,
        "/error/message",
        "cancelled while it ran",
        &|| app.log(),
    )
    .await;
    assert_eq!(killed["status"], "cancelled");
    let logs = |id: String| get(format!("/v1/invocations/{id}/logs"));
    assert_eq!(
        logs(queued_id.clone()).await["logs"],
        "",
        "the queued one never ran"
    );
    let ran = logs(running_id.clone()).await;
    assert!(
        ran["logs"]
            .as_str()
            .unwrap()
            .contains(&format!("started {running_id}")),
        "{ran}"
    );

    // Idempotent; a finished one is 409; unknown 404; not an id 400.
    let again = app
        .call("POST", &format!("/v1/invocations/{queued_id}/cancel"), None)
        .await;
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("cancelled"))
    );
    let done = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({"sleep": 0})),
        )
        .await;
    let done_id = done.body["id"].as_str().unwrap().to_owned();
    wait_for(get, &done_id, "/status", "succeeded", &|| app.log()).await;
    let late = app
        .call("POST", &format!("/v1/invocations/{done_id}/cancel"), None)
        .await;
    assert_eq!(
        (late.status, late.body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let unknown = app
        .call(
            "POST",
            &format!(
                "/v1/invocations/{}/cancel",
                fnmesh_core::InvocationId::new()
            ),
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    let bad = app.call("POST", "/v1/invocations/nope/cancel", None).await;
    assert_eq!(bad.status, 400);

    // Audited, and the CLI does it too.
    let audit = app
        .call(
            "GET",
            "/v1/admin/audit?action=invocation.cancel&limit=100",
            None,
        )
        .await;
    let targets: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["target"].as_str())
        .collect();
    assert!(
        targets.contains(&format!("invocation/{queued_id}").as_str()),
        "{targets:?}"
    );
    let cli = fnmesh_tests::run_cli(
        &app.base_url,
        &["invocation", "cancel", &queued_id, "--json"],
        "",
    );
    assert!(cli.ok, "{}", cli.stderr);
    let record: Value = serde_json::from_str(&cli.stdout).unwrap();
    assert_eq!(record["status"], "cancelled");
}

/// Across a mesh of two nodes: the running invocation is killed on whichever node runs it,
/// the queued one is settled unrun by whichever node is handed it; a cancellation not signed
/// by a gateway is refused by the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_reach_every_node_and_forged_ones_are_refused() {
    let mesh = Mesh::start(&["node-a", "node-b"], &[]).await;
    mesh.deploy(function_body(
        "slow",
        "python3",
        "main.handle",
        &[("main.py", SLOW)],
        json!({ "max_concurrency": 1, "timeout_ms": 60000 }),
    ))
    .await;
    let get = |path: String| {
        let mesh = &mesh;
        async move { mesh.call("GET", &path, None).await.body }
    };
    let running = mesh.invoke_async("slow", json!({"sleep": 30})).await;
    wait_for(get, &running, "/status", "running", &|| mesh.logs()).await;
    let queued = mesh.invoke_async("slow", json!({"sleep": 1})).await;

    // A forged cancellation (any NATS client of this unsecured server can publish it): the
    // node keeps running the invocation.
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let prefix = BusPrefix::parse(&mesh.region).unwrap();
    client
        .publish(subjects::bus_cancel(&prefix), running.clone().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mesh.logs().contains("cancellation refused") {
        assert!(Instant::now() < deadline, "not refused:\n{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let record = get(format!("/v1/invocations/{running}")).await;
    assert_eq!(
        record["status"], "running",
        "a forged cancellation changes nothing"
    );

    for id in [&queued, &running] {
        let r = mesh
            .call("POST", &format!("/v1/invocations/{id}/cancel"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // The running one's node kills it and reports `cancelled`; the queued one is settled
    // unrun by the node it reaches; both stay cancelled.
    let killed = wait_for(
        get,
        &running,
        "/error/message",
        "cancelled while it ran",
        &|| mesh.logs(),
    )
    .await;
    let settled = wait_for(
        get,
        &queued,
        "/error/message",
        "cancelled before it ran",
        &|| mesh.logs(),
    )
    .await;
    assert!(killed["node_id"].is_string() && settled["node_id"].is_string());
    let logs = mesh
        .call("GET", &format!("/v1/invocations/{queued}/logs"), None)
        .await;
    assert_eq!(logs.body["logs"], "", "the queued one never ran");
}
