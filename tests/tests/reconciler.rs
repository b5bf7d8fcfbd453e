//! Nothing accepted is lost: a gateway killed between committing an invocation and publishing
//! it completes the invocation exactly once after it restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::{unique, TestApp, ADMIN_KEY};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_costs_only_delay() {
    let mut app = TestApp::start_with(&[("FNMESH_FAILPOINT", "after_commit_before_publish")]).await;
    let name = unique("durable");
    app.deploy(&name, "python3", "main.handle", &[("main.py", "def handle(event, context):\n    print('ran', event['n'])\n    return event['n'] + 1\n")]).await;

    // The gateway commits the record, then dies before publishing: the client sees no answer.
    let sent = app
        .http
        .post(format!(
            "{}/v1/functions/{name}/invoke?async=true",
            app.base_url
        ))
        .bearer_auth(ADMIN_KEY)
        .body(json!({"n": 41}).to_string())
        .send()
        .await;
    assert!(sent.is_err() || !sent.unwrap().status().is_success());
    let status = app.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the failpoint aborts the process: {status}"
    );

    app.restart_with(&[]).await;
    let list = app
        .call("GET", &format!("/v1/invocations?function={name}"), None)
        .await;
    let items = list.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "exactly one accepted invocation: {items:?}");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", app.log());
    assert_eq!(done["result"], 42);
    assert_eq!(done["attempt"], 1, "it ran once: {done}");
    let logs = app
        .call("GET", &format!("/v1/invocations/{id}/logs"), None)
        .await;
    assert_eq!(
        logs.body["logs"]
            .as_str()
            .unwrap()
            .matches("ran 41")
            .count(),
        1
    );

    // Still one record, and it stays terminal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = app
        .call("GET", &format!("/v1/invocations?function={name}"), None)
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}
