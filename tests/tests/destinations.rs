//! Destinations of finished async invocations through real `fnmesh up` processes: webhooks
//! signed with the function's secret, retried after a failed try, sent on success or on
//! failure only, refused at deploy for hosts off the operator's allowlist and never sent to a
//! private address the allowlist does not name; NATS destinations published on the
//! namespace's subject; the delivery state on the record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnmesh_core::destination;
use fnmesh_tests::servers::nats::TestNats;
use fnmesh_tests::{unique, TestApp};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

/// Succeeds with its event, or fails when asked.
const HANDLER: &str = "def handle(event, context):\n    if event.get('fail'):\n        raise ValueError('asked to fail')\n    return {'echo': event}\n";

const SECRET: &str = "whsec-0123456789";

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1: answers 503 to its first `fail_first` requests, then 200,
/// and keeps every request.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(fail_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let kept = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let hits = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let hits = hits.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_owned(), v.to_str().unwrap().to_owned())
                                    })
                                    .collect();
                                let seen = {
                                    let mut hits = hits.lock().unwrap();
                                    hits.push(Hit {
                                        path: parts.uri.path().to_owned(),
                                        headers,
                                        body,
                                    });
                                    hits.len()
                                };
                                let status = if seen <= fail_first { 503 } else { 200 };
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Invokes `name` async with `payload`; its id.
async fn invoke_async(app: &TestApp, name: &str, payload: Value) -> String {
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(payload),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Polls the record of `id` until every delivery has left `waiting` and `pending` (60 s at
/// most); the record.
async fn settled(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = app
            .call("GET", &format!("/v1/invocations/{id}"), None)
            .await
            .body;
        let open = record["destinations"].as_array().is_none_or(|list| {
            list.iter()
                .any(|d| d["state"] == "waiting" || d["state"] == "pending")
        });
        if !open {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries of {id} never settled: {record}\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The delivery of `record` with condition `on` and target type `kind`.
fn delivery<'a>(record: &'a Value, on: &str, kind: &str) -> &'a Value {
    record["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["on"] == on && d["target"]["type"] == kind)
        .unwrap_or_else(|| panic!("no {on} {kind} delivery: {record}"))
}

/// Checks a webhook request: signed with [`SECRET`] over its body, the event and ids in its
/// headers and body.
fn check_signed(hit: &Hit, event: &str, id: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    let signature = &hit.headers["fnmesh-signature"];
    assert!(
        destination::verify(SECRET.as_bytes(), signature, &hit.body, now, 300),
        "signature {signature:?} does not verify"
    );
    assert!(
        !destination::verify(b"another key", signature, &hit.body, now, 300),
        "a signature must not verify with another key"
    );
    assert_eq!(hit.headers["fnmesh-event"], event);
    assert_eq!(hit.headers["fnmesh-invocation-id"], id);
    assert_eq!(hit.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], event);
    assert_eq!(body["invocation"]["id"], id);
    assert_eq!(body["delivery_id"], hit.headers["fnmesh-delivery"]);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_sent_on_their_condition_only() {
    // The first try of any delivery is answered 503.
    let receiver = Receiver::start(1).await;
    let allow = format!("http://{}", receiver.addr);
    let app = TestApp::start_with(&[
        ("FNMESH_WEBHOOK_ALLOWLIST", &allow),
        ("FNMESH_DESTINATION_RETRY_BASE_MS", "300"),
        ("FNMESH_DESTINATION_MAX_ATTEMPTS", "4"),
    ])
    .await;

    // Hosts off the allowlist are refused at deploy.
    for url in [
        "https://hooks.example.com/x".to_owned(),
        format!("http://localhost:{}/x", receiver.addr.port()),
        format!("http://127.0.0.1:{}/x", receiver.addr.port() + 1),
    ] {
        let refused = app
            .call(
                "POST",
                "/v1/functions",
                Some(fnmesh_tests::function_body(
                    &unique("refused"),
                    "python3",
                    "main.handle",
                    &[("main.py", HANDLER)],
                    json!({"destinations": {"on_success": {"webhook": {"url": url, "secret": "HOOK_KEY"}}}}),
                )),
            )
            .await;
        assert_eq!(refused.status, 400, "{url}: {:?}", refused.body);
        assert_eq!(refused.body["error"]["code"], "invalid_config");
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allowlist"),
            "{:?}",
            refused.body
        );
    }
    let bad_subject = app
        .call(
            "POST",
            "/v1/functions",
            Some(fnmesh_tests::function_body(
                &unique("refused"),
                "python3",
                "main.handle",
                &[("main.py", HANDLER)],
                json!({"destinations": {"on_success": {"nats": "orders.>"}}}),
            )),
        )
        .await;
    assert_eq!(bad_subject.status, 400, "{:?}", bad_subject.body);
    assert_eq!(bad_subject.body["error"]["code"], "invalid_config");

    let name = unique("dest");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", HANDLER)],
        json!({"destinations": {
            "on_success": {
                "webhook": {"url": receiver.url("/ok"), "secret": "HOOK_KEY"},
                // This process has no NATS connection: that delivery fails, named.
                "nats": "orders.done"
            },
            "on_failure": {"webhook": {"url": receiver.url("/failed"), "secret": "HOOK_KEY"}}
        }}),
    )
    .await;
    let put = app
        .call(
            "PUT",
            &format!("/v1/functions/{name}/secrets/HOOK_KEY"),
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(put.status, 204, "{:?}", put.body);

    // Success: the webhook is tried, answered 503, tried again after the backoff, delivered.
    let ok = invoke_async(&app, &name, json!({"n": 1})).await;
    let record = settled(&app, &ok).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let hook = delivery(&record, "success", "webhook");
    assert_eq!(hook["state"], "delivered", "{record}");
    assert_eq!(hook["attempts"], 2, "{record}");
    assert_eq!(hook["last_error"], "webhook answered HTTP 503", "{record}");
    assert!(hook["delivered_at"].is_string());
    let nats = delivery(&record, "success", "nats");
    assert_eq!(nats["state"], "failed", "{record}");
    assert!(
        nats["last_error"].as_str().unwrap().contains("NATS"),
        "{record}"
    );
    assert_eq!(delivery(&record, "failure", "webhook")["state"], "skipped");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(
        hits[0].headers["fnmesh-delivery"], hits[1].headers["fnmesh-delivery"],
        "a retry is the same delivery"
    );
    for hit in &hits {
        assert_eq!(hit.path, "/ok");
        let body = check_signed(hit, "invocation.succeeded", &ok);
        assert_eq!(body["invocation"]["status"], "succeeded");
        assert_eq!(body["invocation"]["result"], json!({"echo": {"n": 1}}));
    }

    // Failure: only the failure destination, with the error.
    let failed = invoke_async(&app, &name, json!({"fail": true})).await;
    let record = settled(&app, &failed).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(delivery(&record, "success", "webhook")["state"], "skipped");
    assert_eq!(delivery(&record, "success", "nats")["state"], "skipped");
    assert_eq!(
        delivery(&record, "failure", "webhook")["state"],
        "delivered"
    );
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(hits[2].path, "/failed");
    let body = check_signed(&hits[2], "invocation.failed", &failed);
    assert_eq!(body["invocation"]["error"]["kind"], "handler_error");

    // A sync invocation has no destinations: its caller has the outcome.
    let sync = app.invoke_ok(&name, json!({"n": 2})).await;
    let id = sync["id"].as_str().unwrap();
    let record = app
        .call("GET", &format!("/v1/invocations/{id}"), None)
        .await
        .body;
    assert!(record.get("destinations").is_none(), "{record}");

    // A removed signing secret: the delivery is retried, then given up, named.
    let deleted = app
        .call(
            "DELETE",
            &format!("/v1/functions/{name}/secrets/HOOK_KEY"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    let unsigned = invoke_async(&app, &name, json!({"n": 3})).await;
    let record = settled(&app, &unsigned).await;
    let hook = delivery(&record, "success", "webhook");
    assert_eq!(hook["state"], "failed", "{record}");
    assert_eq!(hook["attempts"], 4, "{record}");
    let error = hook["last_error"].as_str().unwrap();
    assert!(
        error.contains("HOOK_KEY") && error.contains("gave up after 4 tries"),
        "{error}"
    );
    assert_eq!(receiver.hits().len(), 3, "nothing unsigned is sent");
    assert!(
        !app.log().contains(SECRET),
        "the secret never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_unless_the_allowlist_names_them() {
    let receiver = Receiver::start(0).await;
    let port = receiver.addr.port();
    // The host is allowed, but it resolves to loopback, which the allowlist does not name.
    let allow = format!("http://localhost:{port}");
    let app = TestApp::start_with(&[("FNMESH_WEBHOOK_ALLOWLIST", &allow)]).await;
    let name = unique("private");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", HANDLER)],
        json!({"destinations": {"on_success": {"webhook": {
            "url": format!("http://localhost:{port}/x"), "secret": "HOOK_KEY"
        }}}}),
    )
    .await;
    let put = app
        .call(
            "PUT",
            &format!("/v1/functions/{name}/secrets/HOOK_KEY"),
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(put.status, 204);
    let id = invoke_async(&app, &name, json!({})).await;
    let record = settled(&app, &id).await;
    let hook = delivery(&record, "success", "webhook");
    assert_eq!(hook["state"], "failed", "{record}");
    assert_eq!(
        hook["attempts"], 1,
        "refused at once, not retried: {record}"
    );
    assert!(
        hook["last_error"]
            .as_str()
            .unwrap()
            .contains("loopback, private or reserved"),
        "{record}"
    );
    assert!(
        receiver.hits().is_empty(),
        "nothing reached the private address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_destinations_are_published_on_the_namespace_subject() {
    let nats = TestNats::start();
    let app = TestApp::start_with(&[("FNMESH_NATS_URL", &nats.url())]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let ns = fnmesh_core::Namespace::parse("default").unwrap();
    let mut done = client
        .subscribe(fnmesh_core::subjects::destination(&ns, "orders.done").unwrap())
        .await
        .unwrap();
    let mut failed_sub = client
        .subscribe(fnmesh_core::subjects::destination(&ns, "orders.failed").unwrap())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let name = unique("natsdest");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", HANDLER)],
        json!({"destinations": {
            "on_success": {"nats": "orders.done"},
            "on_failure": {"nats": "orders.failed"}
        }}),
    )
    .await;

    let ok = invoke_async(&app, &name, json!({"n": 7})).await;
    let message = tokio::time::timeout(Duration::from_secs(60), done.next())
        .await
        .expect("the success destination is published")
        .unwrap();
    assert_eq!(
        message.subject.as_str(),
        "fnmesh.v1.dest.default.orders.done"
    );
    let headers = message.headers.clone().unwrap();
    assert_eq!(
        headers.get(destination::EVENT_HEADER).unwrap().as_str(),
        "invocation.succeeded"
    );
    assert_eq!(
        headers
            .get(destination::INVOCATION_HEADER)
            .unwrap()
            .as_str(),
        ok
    );
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["invocation"]["id"], ok);
    assert_eq!(body["invocation"]["result"], json!({"echo": {"n": 7}}));
    let record = settled(&app, &ok).await;
    assert_eq!(delivery(&record, "success", "nats")["state"], "delivered");
    assert_eq!(delivery(&record, "failure", "nats")["state"], "skipped");

    let failed = invoke_async(&app, &name, json!({"fail": true})).await;
    let message = tokio::time::timeout(Duration::from_secs(60), failed_sub.next())
        .await
        .expect("the failure destination is published")
        .unwrap();
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["type"], "invocation.failed");
    assert_eq!(body["invocation"]["id"], failed);
    // Each went to its own condition's subject only.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), done.next())
            .await
            .is_err(),
        "the failure was not sent to the success subject"
    );
}
