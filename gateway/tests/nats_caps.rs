//! The per-key cap on NATS request/reply invocations in flight, against a real `nats-server`
//! (from `FNMESH_NATS_SERVER`, or `nats-server` on the PATH). No node runs, so every accepted
//! sync invocation stays in flight (queued, waiting for its outcome) while the test looks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::{eventually, TestApp};
use fnmesh_core::FunctionName;
use futures::StreamExt as _;
use serde_json::{json, Value};

/// A `nats-server` on a free port, killed on drop.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start() -> Self {
        let binary =
            std::env::var("FNMESH_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    async fn client(&self) -> async_nats::Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::connect(&self.url).await {
                Ok(client) => return client,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("connecting to {}: {e}", self.url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mint(app: &TestApp, minter: &str, body: Value) -> String {
    let resp = app
        .send_with_key(
            "POST",
            "/v1/keys",
            Some(serde_json::to_vec(&body).unwrap()),
            Some(minter),
        )
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    resp.body["key"].as_str().unwrap().to_owned()
}

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {key}").as_str());
    headers
}

/// Invocations accepted and published (each waits for an outcome no node sends; a sync
/// invocation has no record until it finishes).
async fn accepted(app: &TestApp) -> usize {
    let stats = app.bus.queue_stats().await.unwrap();
    usize::try_from(stats.invocations).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_lineage_has_at_most_64_nats_requests_in_flight() {
    let nats = Nats::start();
    let app = TestApp::builder().nats(nats.client().await).start().await;
    app.create_function("slow").await;
    let root = mint(&app, &app.key, json!({ "name": "r", "role": "developer" })).await;
    let child = mint(&app, &root, json!({ "name": "c", "role": "invoker" })).await;
    let other = mint(&app, &app.key, json!({ "name": "o", "role": "invoker" })).await;

    let client = nats.client().await;
    let subject = fnmesh_core::subjects::request(&FunctionName::parse("slow").unwrap());
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    for _ in 0..64 {
        client
            .publish_with_reply_and_headers(
                subject.clone(),
                inbox.clone(),
                bearer(&root),
                Bytes::from_static(b"null"),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // All 64 are accepted and waiting for an outcome no node will send.
    eventually(|| async { (accepted(&app).await == 64).then_some(()) }).await;

    // The 65th of the lineage, by the key it minted: refused at once.
    let refused = client
        .request_with_headers(subject.clone(), bearer(&child), Bytes::from_static(b"null"))
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limited", "{body}");

    // Another lineage is not held back by it.
    client
        .publish_with_reply_and_headers(
            subject.clone(),
            inbox.clone(),
            bearer(&other),
            Bytes::from_static(b"null"),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    eventually(|| async { (accepted(&app).await == 65).then_some(()) }).await;
    // None of the accepted ones was answered (they are all still in flight).
    let early = tokio::time::timeout(Duration::from_millis(100), replies.next()).await;
    assert!(early.is_err(), "no reply yet: {early:?}");
}
