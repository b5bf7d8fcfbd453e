//! Pending work is capped per function and per namespace (issue #12, H1): one tenant filling
//! the queue with async calls to a slow function gets 429 for that function (or namespace)
//! only; other functions and other tenants go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fnmesh_tests::{function_body, TestApp, ADMIN_KEY};
use serde_json::{json, Value};

/// `POST path` as the admin acting in `namespace`: (status, body, Retry-After).
async fn post_in(
    app: &TestApp,
    namespace: &str,
    path: &str,
    body: Value,
) -> (u16, Value, Option<String>) {
    let resp = app
        .http
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(ADMIN_KEY)
        .header("x-fnmesh-namespace", namespace)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        resp.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_function_or_namespace_is_429_for_itself_only() {
    let app = TestApp::start_with(&[
        ("FNMESH_FUNCTION_QUEUE_CAPACITY", "2"),
        ("FNMESH_NAMESPACE_QUEUE_CAPACITY", "3"),
    ])
    .await;
    let slow = "import time\ndef handle(event, context):\n    time.sleep(5)\n    return 1\n";
    let fast = "def handle(event, context):\n    return 'ok'\n";
    for (namespace, name, code) in [
        ("tenant-a", "slow-a", slow),
        ("tenant-a", "slow-b", slow),
        ("tenant-a", "fast", fast),
        ("tenant-b", "fast", fast),
    ] {
        let (status, body, _) = post_in(
            &app,
            namespace,
            "/v1/functions",
            function_body(
                name,
                "python3",
                "main.handle",
                &[("main.py", code)],
                json!({"max_concurrency": 1, "timeout_ms": 20000}),
            ),
        )
        .await;
        assert_eq!(status, 201, "deploy {namespace}/{name}: {body:?}");
    }
    let invoke = |namespace: &'static str, name: &'static str, asynchronous: bool| {
        let app = &app;
        async move {
            let query = if asynchronous { "?async=true" } else { "" };
            post_in(
                app,
                namespace,
                &format!("/v1/functions/{name}/invoke{query}"),
                json!({}),
            )
            .await
        }
    };

    // Two of slow-a fill its share; the third is 429 for slow-a only.
    for _ in 0..2 {
        let (status, body, _) = invoke("tenant-a", "slow-a", true).await;
        assert_eq!(status, 202, "{body:?}");
    }
    let (status, body, retry_after) = invoke("tenant-a", "slow-a", true).await;
    assert_eq!(status, 429, "{body:?}");
    assert_eq!(body["error"]["code"], "function_queue_full");
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Another function of the namespace takes the namespace's third place…
    let (status, body, _) = invoke("tenant-a", "slow-b", true).await;
    assert_eq!(status, 202, "{body:?}");
    // …after which the namespace is full for every function of it.
    let (status, body, _) = invoke("tenant-a", "fast", false).await;
    assert_eq!(status, 429, "{body:?}");
    assert_eq!(body["error"]["code"], "namespace_queue_full");

    // Another tenant is not affected.
    let (status, body, _) = invoke("tenant-b", "fast", false).await;
    assert_eq!(status, 200, "{body:?}\n{}", app.log());
    assert_eq!(body["result"], "ok");
}
