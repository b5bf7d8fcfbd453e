//! Per-function rate limits (`config.rate_limit`) over the real routes, with the in-memory
//! limiter. The Redis limiter shared by several gateways is exercised in
//! `tests/tests/backends_redis.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use serde_json::json;

fn limited_body(name: &str, rate_limit: serde_json::Value) -> serde_json::Value {
    let mut body = common::create_body(name);
    body["config"]["rate_limit"] = rate_limit;
    body
}

#[tokio::test]
async fn a_function_limit_answers_429_on_invoke_only() {
    let app = TestApp::start().await;
    let resp = app
        .post_json(
            "/v1/functions",
            &limited_body("limited", json!({"per_second": 1, "burst": 2})),
        )
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    assert_eq!(
        resp.body["config"]["rate_limit"],
        json!({"per_second": 1, "burst": 2})
    );
    app.create_function("free").await;

    let invoke = "/v1/functions/limited/invoke?async=true";
    for _ in 0..2 {
        let resp = app.post_json(invoke, &json!(null)).await;
        assert_eq!(resp.status, 202, "{:?}", resp.body);
    }
    let refused = app.post_json(invoke, &json!(null)).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.header("ratelimit-limit"), Some("2"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After is whole seconds, at least 1");
    assert!(refused.header("ratelimit-reset").is_some());

    // Other routes of the function and other functions are not counted against it.
    assert_eq!(app.get("/v1/functions/limited").await.status, 200);
    let resp = app
        .post_json("/v1/functions/free/invoke?async=true", &json!(null))
        .await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    // The refused invocation was not recorded: 2 + 1 accepted.
    let list = app.get("/v1/invocations").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn out_of_range_function_limits_are_invalid_config() {
    let app = TestApp::start().await;
    for (i, bad) in [
        json!({"per_second": 0, "burst": 1}),
        json!({"per_second": 1, "burst": 0}),
        json!({"per_second": 1_000_001, "burst": 1}),
        json!({"per_second": 1, "burst": 1_000_001}),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = app
            .post_json(
                "/v1/functions",
                &limited_body(&format!("bad{i}"), bad.clone()),
            )
            .await;
        assert_eq!(resp.status, 400, "{bad}: {:?}", resp.body);
        assert_eq!(resp.code(), "invalid_config", "{bad}");
    }
}
