//! Per-key caps on long-lived work: log streams (`logs?follow=true`) per key lineage, and
//! open streams ending when their key stops being live.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::{Duration as ChronoDuration, SecondsFormat, Utc};
use common::TestApp;
use serde_json::{json, Value};

/// Mints a key with `minter`; asserts 201; the key and its id.
async fn mint(app: &TestApp, minter: &str, body: Value) -> (String, String) {
    let resp = app
        .send_with_key(
            "POST",
            "/v1/keys",
            Some(serde_json::to_vec(&body).unwrap()),
            Some(minter),
        )
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    (
        resp.body["key"].as_str().unwrap().to_owned(),
        resp.body["id"].as_str().unwrap().to_owned(),
    )
}

/// Opens `GET /v1/functions/{name}/logs?follow=true` with `key`; the response once its head
/// has arrived.
async fn follow(app: &TestApp, key: &str, name: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/v1/functions/{name}/logs?follow=true")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Reads a stream until it ends; panics if it does not within `within`.
async fn ends_within(mut stream: reqwest::Response, within: Duration) {
    let read = async { while let Some(_chunk) = stream.chunk().await.unwrap_or(None) {} };
    tokio::time::timeout(within, read)
        .await
        .expect("the stream ends");
}

/// Whether a stream is still open after `wait` (nothing but keep-alives may arrive).
async fn still_open_after(stream: &mut reqwest::Response, wait: Duration) -> bool {
    match tokio::time::timeout(wait, stream.chunk()).await {
        Err(_) => true,
        Ok(Ok(Some(_))) => true,
        Ok(_) => false,
    }
}

#[tokio::test]
async fn a_key_lineage_holds_at_most_16_log_streams() {
    let app = TestApp::start().await;
    app.create_function("f").await;
    let (root, _) = mint(&app, &app.key, json!({ "name": "r", "role": "developer" })).await;
    let (child, _) = mint(&app, &root, json!({ "name": "c", "role": "invoker" })).await;
    let (other, _) = mint(&app, &app.key, json!({ "name": "o", "role": "invoker" })).await;

    let mut open = Vec::new();
    for i in 0..16 {
        // Half by the root, half by the key it minted: one lineage.
        let key = if i % 2 == 0 { &root } else { &child };
        let stream = follow(&app, key, "f").await;
        assert_eq!(stream.status(), 200, "stream {}", i + 1);
        open.push(stream);
    }
    for key in [&root, &child] {
        let refused = follow(&app, key, "f").await;
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().get("retry-after").is_some());
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "concurrency_limited", "{body}");
    }
    let elsewhere = follow(&app, &other, "f").await;
    assert_eq!(
        elsewhere.status(),
        200,
        "another lineage has its own streams"
    );
    // Reads are not capped, only streams.
    let r = app
        .send_with_key("GET", "/v1/functions/f/logs", None, Some(&child))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn an_open_stream_ends_when_its_key_or_an_ancestor_is_revoked() {
    let app = TestApp::builder()
        .config(|c| c.key_recheck_interval = Duration::from_millis(100))
        .start()
        .await;
    app.create_function("f").await;
    let (parent, parent_id) =
        mint(&app, &app.key, json!({ "name": "p", "role": "developer" })).await;
    let (child, _) = mint(&app, &parent, json!({ "name": "c", "role": "invoker" })).await;
    let (other, _) = mint(&app, &app.key, json!({ "name": "o", "role": "invoker" })).await;
    let stream = follow(&app, &child, "f").await;
    assert_eq!(stream.status(), 200);
    let mut unrelated = follow(&app, &other, "f").await;
    assert_eq!(unrelated.status(), 200);
    assert!(
        still_open_after(&mut unrelated, Duration::from_millis(300)).await,
        "a live key's stream stays open across re-checks"
    );

    let resp = app
        .send("DELETE", &format!("/v1/keys/{parent_id}"), None)
        .await;
    assert_eq!(resp.status, 204);
    ends_within(stream, Duration::from_secs(5)).await;
    assert!(
        still_open_after(&mut unrelated, Duration::from_millis(300)).await,
        "other keys' streams are left open"
    );
}

#[tokio::test]
async fn an_open_stream_ends_when_its_key_expires() {
    let app = TestApp::builder()
        .config(|c| c.key_recheck_interval = Duration::from_millis(100))
        .start()
        .await;
    app.create_function("f").await;
    let expires_at = (Utc::now() + ChronoDuration::milliseconds(1500))
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let (short, _) = mint(
        &app,
        &app.key,
        json!({ "name": "s", "role": "invoker", "expires_at": expires_at }),
    )
    .await;
    let stream = follow(&app, &short, "f").await;
    assert_eq!(stream.status(), 200);
    ends_within(stream, Duration::from_secs(5)).await;
}
