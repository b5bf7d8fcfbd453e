//! The invocation path's lookups (API keys, function versions) are cached for at most a second
//! (`gateway::lookups`): a change made through this gateway is seen at once, one made through
//! another gateway (written to the shared store directly here) within that second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestApp;
use fnmesh_core::names::{FunctionName, Namespace};
use serde_json::{json, Value};

/// The stated bound, plus room for a loaded machine.
const SEEN_WITHIN: Duration = Duration::from_millis(2_500);

async fn mint(app: &TestApp) -> (String, String) {
    let resp = app
        .post_json("/v1/keys", &json!({ "name": "ci", "role": "developer" }))
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    (
        resp.body["key"].as_str().unwrap().to_owned(),
        resp.body["id"].as_str().unwrap().to_owned(),
    )
}

/// Polls `probe` until it returns `true`; the time that took (fails past [`SEEN_WITHIN`]).
async fn seen<F, Fut>(what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SEEN_WITHIN,
            "{what} not seen within {SEEN_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_revoked_elsewhere_stops_working_within_a_second_and_here_at_once() {
    let app = TestApp::start().await;
    let (key, id) = mint(&app).await;
    let list = |key: String| {
        let app = &app;
        async move {
            app.send_with_key("GET", "/v1/functions", None, Some(&key))
                .await
                .status
        }
    };
    assert_eq!(list(key.clone()).await, 200);
    // Revoked through another gateway: straight in the shared store.
    let revoked = app
        .store
        .revoke_api_key_tree(&id, Utc::now())
        .await
        .unwrap();
    assert_eq!(revoked, vec![id.clone()]);
    seen("a revocation made elsewhere", || async {
        list(key.clone()).await == 401
    })
    .await;

    // Revoked through this gateway: refused on the very next request.
    let (key, id) = mint(&app).await;
    assert_eq!(list(key.clone()).await, 200);
    let resp = app.send("DELETE", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(resp.status, 204, "{:?}", resp.body);
    assert_eq!(list(key).await, 401);
}

/// The version an async invocation of `hello` is recorded with.
async fn invoked_version(app: &TestApp) -> u64 {
    let resp = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!({}))
        .await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    let id = resp.body["id"].as_str().unwrap();
    let record = app.get(&format!("/v1/invocations/{id}")).await;
    record.body["version"].as_u64().unwrap()
}

#[tokio::test]
async fn a_new_version_is_invoked_within_a_second_and_at_once_when_made_here() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    assert_eq!(invoked_version(&app).await, 1);

    // A version added through another gateway.
    let ns = Namespace::default_ns();
    let name = FunctionName::parse("hello").unwrap();
    let mut next = app
        .store
        .get_function(&ns, &name, None)
        .await
        .unwrap()
        .unwrap();
    next.version = 2;
    app.store.add_version(&next).await.unwrap();
    seen("a version added elsewhere", || async {
        invoked_version(&app).await == 2
    })
    .await;

    // One added through this gateway: invoked at once.
    let resp = app
        .put_json(
            "/v1/functions/hello",
            &json!({ "config": { "timeout_ms": 5000 } }),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let version: Value = resp.body["version"].clone();
    assert_eq!(version, json!(3), "{:?}", resp.body);
    assert_eq!(invoked_version(&app).await, 3);
}
