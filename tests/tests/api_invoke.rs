//! Invoking functions end to end: the embedded platform runs them in real sandboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::{unique, TestApp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_invoke_python_node_and_exec() {
    let app = TestApp::start().await;
    let py = unique("py");
    app.deploy(&py, "python3", "main.handle", &[("main.py", "def handle(event, context):\n    return {'hello': event['name'], 'fn': context.function_name, 'version': context.function_version, 'id': context.invocation_id}\n")]).await;
    let r = app.invoke_ok(&py, json!({"name": "py"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["hello"], "py");
    assert_eq!(r["result"]["fn"], py.as_str());
    assert_eq!(r["result"]["version"], 1);
    assert_eq!(r["result"]["id"], r["id"]);
    assert_eq!(r["function"], py.as_str());
    assert!(r["node_id"].as_str().unwrap().starts_with("node-"));
    assert!(r["metrics"]["duration_ms"].is_u64());
    assert_eq!(r["metrics"]["cold_start"], true);
    assert!(r["completed_at"].is_string());

    let node = unique("node");
    app.deploy(&node, "nodejs", "index.handler", &[("index.js", "exports.handler = async (event, context) => ({ hello: event.name, fn: context.functionName });\n")]).await;
    let r = app.invoke_ok(&node, json!({"name": "node"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"], json!({"hello": "node", "fn": node}));

    let exec = unique("exec");
    app.deploy(
        &exec,
        "exec",
        "run.sh",
        &[(
            "run.sh",
            "#!/bin/sh\nread -r input\necho \"{\\\"got\\\": $input}\"\n",
        )],
    )
    .await;
    let r = app.invoke_ok(&exec, json!({"n": 3})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"], json!({"got": {"n": 3}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invoke_is_queued_then_succeeds() {
    let app = TestApp::start().await;
    let name = unique("async");
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    return event['x'] * 2\n",
        )],
    )
    .await;
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({"x": 21})),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["status"], "queued");
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.headers["location"].to_str().unwrap(),
        format!("/v1/invocations/{id}")
    );
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], 42);
    assert_eq!(done["id"], id.as_str());

    let list = app
        .call(
            "GET",
            &format!("/v1/invocations?function={name}&status=succeeded"),
            None,
        )
        .await;
    assert_eq!(list.status, 200);
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id.as_str()), "{ids:?}");
}

/// The CLI as README shows it: `invoke --async` prints the bare id, which `invocation get`
/// takes; `--data @-` reads the payload from standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_stdin_and_prints_the_bare_async_id() {
    let app = TestApp::start().await;
    let name = unique("cli");
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    return event['x'] * 2\n",
        )],
    )
    .await;
    let cli = |args: &[&str], stdin: &str| {
        let run = fnmesh_tests::run_cli(&app.base_url, args, stdin);
        (run.ok, run.stdout, run.stderr)
    };
    let (ok, out, err) = cli(&["invoke", &name, "--data", "@-", "--async"], "{\"x\": 21}");
    assert!(ok, "{err}");
    let id = out.trim();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "only the id is printed: {out:?}"
    );
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["result"], 42, "{done}");
    let (ok, out, err) = cli(&["invocation", "get", id, "--json"], "");
    assert!(ok, "`invocation get` takes the printed id: {err}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["id"], id);
    assert_eq!(record["result"], 42);
    // Sync, from stdin too; and stdin that is not JSON is refused before any request.
    let (ok, out, err) = cli(&["invoke", &name, "-d", "@-", "--json"], "{\"x\": 4}");
    assert!(ok, "{err}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["result"], 8, "{out}");
    let (ok, _, err) = cli(&["invoke", &name, "-d", "@-"], "not json");
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_is_404_in_both_modes() {
    let app = TestApp::start().await;
    for mode in ["", "?async=true"] {
        let r = app
            .call(
                "POST",
                &format!("/v1/functions/no-such-fn/invoke{mode}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(r.status, 404, "{mode}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "not_found");
    }
    let r = app
        .call(
            "GET",
            "/v1/invocations/0190b3c4-0000-7000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app.call("GET", "/v1/invocations/not-an-id", None).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_reach_the_logs_and_exceptions_fail_with_handler_error() {
    let app = TestApp::start().await;
    let name = unique("logs");
    app.deploy(&name, "python3", "main.handle", &[("main.py", "import sys\ndef handle(event, context):\n    print('hello from the handler', event)\n    print('to stderr', file=sys.stderr)\n    if event.get('boom'):\n        raise ValueError('kaboom')\n    return 'ok'\n")]).await;
    let ok = app.invoke_ok(&name, json!({"boom": false})).await;
    assert_eq!(ok["status"], "succeeded", "{ok}\nlog:\n{}", app.log());
    assert_eq!(ok["result"], "ok", "a print must never corrupt the result");
    let id = ok["id"].as_str().unwrap();
    let logs = app
        .call("GET", &format!("/v1/invocations/{id}/logs"), None)
        .await;
    assert_eq!(logs.status, 200, "{:?}", logs.body);
    let text = logs.body["logs"].as_str().unwrap();
    assert!(
        text.contains("hello from the handler {'boom': False}"),
        "{text}"
    );
    assert!(text.contains("to stderr"), "{text}");
    assert_eq!(logs.body["truncated"], false);

    let failed = app.invoke_ok(&name, json!({"boom": true})).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["kind"], "handler_error");
    assert!(failed["error"]["message"]
        .as_str()
        .unwrap()
        .contains("kaboom"));
    let id = failed["id"].as_str().unwrap();
    let logs = app
        .call("GET", &format!("/v1/invocations/{id}/logs"), None)
        .await;
    let text = logs.body["logs"].as_str().unwrap();
    assert!(
        text.contains("Traceback"),
        "the traceback goes to the logs: {text}"
    );
    assert!(
        !text.contains("hello from the handler {'boom': False}"),
        "logs are per invocation: {text}"
    );

    // The sandbox survives a handler exception.
    let again = app.invoke_ok(&name, json!({})).await;
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["metrics"]["cold_start"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_capped_and_marked_truncated() {
    let app = TestApp::start().await;
    let name = unique("chatty");
    app.deploy(&name, "python3", "main.handle", &[("main.py", "def handle(event, context):\n    for i in range(20000):\n        print('line', i, 'x' * 40)\n    return 'done'\n")]).await;
    let r = app.invoke_ok(&name, json!({})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let logs = app
        .call(
            "GET",
            &format!("/v1/invocations/{}/logs", r["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(logs.body["truncated"], true);
    assert!(logs.body["logs"].as_str().unwrap().len() <= 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut app = TestApp::start().await;
    let name = unique("drain");
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(event, context):\n    time.sleep(1.5)\n    return 'slept'\n",
        )],
    )
    .await;
    let url = format!("{}/v1/functions/{name}/invoke", app.base_url);
    let http = app.http.clone();
    let inflight = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(fnmesh_tests::ADMIN_KEY)
            .body("{}")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    // Wait until a node is running it (in flight on the bus: a sync invocation has no record
    // until it finishes).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let queues = app.call("GET", "/v1/admin/queues", None).await;
        assert_eq!(queues.status, 200, "{:?}", queues.body);
        let in_flight = queues.body["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == name.as_str() && f["in_flight"].as_u64() == Some(1));
        if in_flight {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the invocation never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = app.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit status {status}");
    let r = inflight.await.unwrap();
    assert_eq!(
        r["status"], "succeeded",
        "the in-flight invocation finished: {r}"
    );
    assert_eq!(r["result"], "slept");
}
