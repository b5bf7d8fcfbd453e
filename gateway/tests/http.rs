//! Auth, rate limits, health, routing errors and body caps over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestApp;
use fnmesh_ratelimit::RateLimit;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn health_endpoints_need_no_key() {
    let app = TestApp::start().await;
    let health = app.send_with_key("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, json!({"status": "ok"}));
    let ready = app.send_with_key("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
}

#[tokio::test]
async fn every_v1_route_needs_a_valid_key() {
    let app = TestApp::start().await;
    let id = fnmesh_core::InvocationId::new();
    let routes = [
        ("GET", "/v1/functions".to_owned()),
        ("POST", "/v1/functions".to_owned()),
        ("GET", "/v1/functions/f".to_owned()),
        ("PUT", "/v1/functions/f".to_owned()),
        ("DELETE", "/v1/functions/f".to_owned()),
        ("GET", "/v1/functions/f/versions".to_owned()),
        ("POST", "/v1/functions/f/invoke".to_owned()),
        ("GET", "/v1/invocations".to_owned()),
        ("GET", format!("/v1/invocations/{id}")),
        ("GET", format!("/v1/invocations/{id}/logs")),
    ];
    let wrong = fnmesh_gateway::auth::generate_key();
    for (method, path) in &routes {
        for key in [None, Some(wrong.as_str()), Some("")] {
            let resp = app
                .send_with_key(method, path, Some(b"{}".to_vec()), key)
                .await;
            assert_eq!(resp.status, 401, "{method} {path} {key:?}");
            assert_eq!(resp.code(), "unauthorized");
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        }
    }
    // The right key, with another scheme, is refused too.
    let resp = app
        .http
        .get(app.url("/v1/functions"))
        .header("authorization", format!("Basic {}", app.key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused() {
    let app = TestApp::start().await;
    for (id, revoked, expired) in [("revoked", true, false), ("expired", false, true)] {
        let key = fnmesh_gateway::auth::generate_key();
        let past = chrono::Utc::now() - chrono::Duration::seconds(10);
        app.store
            .create_api_key(&fnmesh_store::ApiKeyRecord {
                id: id.into(),
                name: id.into(),
                key_hash: fnmesh_gateway::auth::hash_key(&key),
                role: fnmesh_store::Role::Admin,
                namespace: fnmesh_core::Namespace::default_ns(),
                created_at: past,
                expires_at: expired.then_some(past),
                revoked_at: revoked.then_some(past),
                functions: None,
                parent_id: None,
                root_id: None,
            })
            .await
            .unwrap();
        let resp = app
            .send_with_key("GET", "/v1/functions", None, Some(&key))
            .await;
        assert_eq!(resp.status, 401, "{id}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let app = TestApp::start().await;
    let resp = app.get("/v1/nope").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.code(), "not_found");
    let resp = app.send_with_key("GET", "/nope", None, None).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.code(), "not_found");
    let resp = app.get("/v1/functions/f/other").await;
    assert_eq!(resp.status, 404);
    let resp = app.send("PATCH", "/v1/functions/f", None).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.code(), "method_not_allowed");
    let resp = app.send("DELETE", "/v1/functions", None).await;
    assert_eq!(resp.status, 405);
    let resp = app.send("GET", "/v1/functions/f/invoke", None).await;
    assert_eq!(resp.status, 405);
    let resp = app.send_with_key("POST", "/healthz", None, None).await;
    assert_eq!(resp.status, 405);
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let app = TestApp::builder()
        .config(|c| {
            c.default_rate_limit = Some(RateLimit {
                per_second: 1,
                burst: 2,
            })
        })
        .start()
        .await;
    assert_eq!(app.get("/v1/functions").await.status, 200);
    assert_eq!(app.get("/v1/functions").await.status, 200);
    let resp = app.get("/v1/functions").await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.code(), "rate_limited");
    for h in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(resp.header(h).is_some(), "{h} missing");
    }
    assert_eq!(resp.header("ratelimit-limit"), Some("2"));
    assert_eq!(resp.header("ratelimit-remaining"), Some("0"));
    // Health is not limited.
    assert_eq!(
        app.send_with_key("GET", "/healthz", None, None)
            .await
            .status,
        200
    );
}

/// Sends a raw HTTP/1.1 request head plus `body_chunks`, then reads the whole response.
async fn raw_exchange(app: &TestApp, head: &str, body_chunks: &[Vec<u8>]) -> String {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body_chunks {
        // The server may stop reading (and close) once over the cap.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bodies_over_the_cap_are_413_with_or_without_content_length() {
    let app = TestApp::builder()
        .config(|c| c.max_body_bytes = 64 * 1024)
        .start()
        .await;
    let auth = format!("Authorization: Bearer {}\r\n", app.key);

    // Declared too large: refused before the body is sent at all.
    let head = format!(
        "POST /v1/functions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    let resp = raw_exchange(&app, &head, &[]).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");

    // Chunked, no length: cut off at the cap while reading.
    let head = format!(
        "POST /v1/functions/f/invoke HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = {
        let data = vec![b' '; 16 * 1024];
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(&data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut chunks: Vec<Vec<u8>> = std::iter::repeat_n(chunk, 5).collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    let resp = raw_exchange(&app, &head, &chunks).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");

    // Through a normal client too, with a length.
    let big = vec![b' '; 65 * 1024];
    let resp = app.send("POST", "/v1/functions", Some(big)).await;
    assert_eq!(resp.status, 413);
    // And just under the cap is read (then refused as JSON, not as size).
    let resp = app
        .send("POST", "/v1/functions", Some(vec![b' '; 60 * 1024]))
        .await;
    assert_eq!(resp.code(), "invalid_json");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mut app = TestApp::start().await;
    assert_eq!(
        app.send_with_key("GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    app.shutdown.cancel();
    let task = app.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_still_sending_an_oversized_body_get_the_413() {
    // The gateway drains (bounded) an oversized body before answering, so an ordinary client
    // that is still writing sees the 413 instead of a reset connection.
    let app = TestApp::builder()
        .config(|c| c.max_body_bytes = 1024 * 1024)
        .start()
        .await;
    app.create_function("big").await;
    let big = vec![b' '; 4 * 1024 * 1024];
    for _ in 0..5 {
        let with_length = app
            .http
            .post(app.url("/v1/functions/big/invoke"))
            .bearer_auth(&app.key)
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(with_length.status().as_u16(), 413);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let chunked = app
            .http
            .post(app.url("/v1/functions/big/invoke"))
            .bearer_auth(&app.key)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(chunked.status().as_u16(), 413);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_does_not_wait_for_connections_that_never_sent_a_request() {
    // Client pools leave such connections behind. hyper 1 closes a silent one at once, but
    // waits for a partly sent request head until the header-read timeout; the drain ends once
    // no request is in flight, well before its timeout, and an in-flight request still gets
    // its answer.
    let mut app = TestApp::builder()
        .config(|c| c.drain_timeout = Duration::from_secs(120))
        .start()
        .await;
    let silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        app.send_with_key("GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    app.shutdown.cancel();
    let task = app.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the drain waited for connections without a request")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
    drop((silent, half));
}
