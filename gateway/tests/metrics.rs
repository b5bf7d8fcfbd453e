//! `GET /metrics` and `Server-Timing` over the real routes, memory bus and SQLite store. An
//! in-test responder plays the node: it replies to sync calls and publishes the `Finished`
//! events the gateway's recorder counts, with timings it chose, so every counter and
//! histogram can be checked to move by exactly what was done.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use common::{eventually, TestApp};
use fnmesh_core::metrics::parse_text;
use fnmesh_core::{
    ErrorKind, InvocationError, InvocationLogs, InvocationMetrics, InvocationOutcome,
    InvocationResult, InvocationStatus, NodeEvent,
};
use serde_json::json;

/// A parsed scrape: sample values by `name{sorted labels}`.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// The value of `name` with exactly `labels` (0 when absent: a series appears on first use).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&key(name, labels)).copied().unwrap_or(0.0)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Scrapes `/metrics` with the admin key, checks the content type, and parses it strictly.
async fn scrape(app: &TestApp) -> Metrics {
    let resp = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let samples = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut values = HashMap::new();
    for sample in samples {
        let labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        values.insert(key(&sample.name, &labels), sample.value);
    }
    Metrics(values)
}

/// What the fake node reports for one invocation.
#[derive(Clone, Copy)]
struct Plan {
    succeed: bool,
    cold: bool,
}

fn metrics_for(plan: Plan, n: u64) -> InvocationMetrics {
    let init_us = if plan.cold { 250_000 + n } else { 0 };
    InvocationMetrics {
        queue_us: 1_234 + n,
        init_us,
        exec_us: 3_456 + n,
        total_us: 1_234 + init_us + 3_456 + 100 + n,
        cold_start: plan.cold,
        memory_peak_bytes: 0,
        cpu_time_us: 0,
        pull_us: 0,
        unpack_us: 0,
    }
}

/// Plays a node for `plans.len()` deliveries, in order: replies to the sync caller, publishes
/// the `Finished` event, acks.
fn respond(app: &TestApp, plans: Vec<Plan>) -> tokio::task::JoinHandle<()> {
    let bus = app.bus.clone();
    tokio::spawn(async move {
        for (n, plan) in plans.into_iter().enumerate() {
            let delivery = bus
                .pull_invocation(Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            let mut result = InvocationResult::queued(&delivery.request);
            if plan.succeed {
                result.status = InvocationStatus::Succeeded;
                result.result = Some(json!("ok"));
            } else {
                result.status = InvocationStatus::Failed;
                result.error = Some(InvocationError {
                    kind: ErrorKind::HandlerError,
                    message: "boom".into(),
                });
            }
            result.attempt = delivery.attempt;
            result.node_id = Some("node-a".into());
            result.started_at = Some(Utc::now());
            result.completed_at = Some(Utc::now());
            result.metrics = Some(metrics_for(plan, n as u64));
            let outcome = InvocationOutcome {
                result,
                logs: InvocationLogs::default(),
            };
            if let Some(to) = &delivery.reply_to {
                bus.reply(to, &outcome).await.unwrap();
            }
            bus.publish_event(&NodeEvent::Finished(Box::new(outcome)))
                .await
                .unwrap();
            delivery.acker.ack().await.unwrap();
        }
    })
}

const INVOKE_ROUTE: &str = "/v1/functions/{name}/invoke";

#[tokio::test]
async fn invocations_move_counters_and_histograms_by_exactly_what_ran() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let before = scrape(&app).await;

    // 3 successes (the first a cold start) and 2 failures.
    let plans = vec![
        Plan {
            succeed: true,
            cold: true,
        },
        Plan {
            succeed: true,
            cold: false,
        },
        Plan {
            succeed: false,
            cold: false,
        },
        Plan {
            succeed: true,
            cold: false,
        },
        Plan {
            succeed: false,
            cold: false,
        },
    ];
    let node = respond(&app, plans.clone());
    for plan in &plans {
        let resp = app
            .post_json("/v1/functions/hello/invoke", &json!(null))
            .await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        let want = if plan.succeed { "succeeded" } else { "failed" };
        assert_eq!(resp.body["status"], want);
    }
    node.await.unwrap();

    // The recorder counts from the event stream: wait until it has seen all five.
    let after = eventually(|| async {
        let m = scrape(&app).await;
        let done = m.get(
            "fnmesh_invocations_total",
            &[("function", "hello"), ("status", "succeeded")],
        ) + m.get(
            "fnmesh_invocations_total",
            &[("function", "hello"), ("status", "failed")],
        );
        (done == 5.0).then_some(m)
    })
    .await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let hello_ok = [("function", "hello"), ("status", "succeeded")];
    let hello_failed = [("function", "hello"), ("status", "failed")];
    assert_eq!(moved("fnmesh_invocations_total", &hello_ok), 3.0);
    assert_eq!(moved("fnmesh_invocations_total", &hello_failed), 2.0);
    assert_eq!(
        moved("fnmesh_cold_starts_total", &[("function", "hello")]),
        1.0
    );
    for histogram in [
        "fnmesh_invocation_queue_seconds",
        "fnmesh_invocation_execution_seconds",
        "fnmesh_invocation_duration_seconds",
    ] {
        assert_eq!(
            moved(&format!("{histogram}_count"), &[]),
            5.0,
            "{histogram}"
        );
    }
    // Init is observed for cold starts only.
    assert_eq!(moved("fnmesh_invocation_init_seconds_count", &[]), 1.0);
    let init_sum = moved("fnmesh_invocation_init_seconds_sum", &[]);
    assert!((init_sum - 0.25).abs() < 1e-9, "init sum {init_sum}");
    let exec_sum = moved("fnmesh_invocation_execution_seconds_sum", &[]);
    assert!(
        (exec_sum - (5.0 * 0.003456 + 10e-6)).abs() < 1e-9,
        "exec sum {exec_sum}"
    );

    // HTTP requests by route template, not by path.
    let invoke_200 = [
        ("route", INVOKE_ROUTE),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(moved("fnmesh_http_requests_total", &invoke_200), 5.0,);
    assert_eq!(
        moved(
            "fnmesh_http_request_duration_seconds_count",
            &[("route", INVOKE_ROUTE)]
        ),
        5.0
    );
    assert!(!after.0.keys().any(|k| k.contains("/v1/functions/hello")));
    assert!(
        after.get(
            "fnmesh_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_sync_response_carries_the_records_timings() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let node = respond(
        &app,
        vec![Plan {
            succeed: true,
            cold: true,
        }],
    );
    let resp = app
        .post_json("/v1/functions/hello/invoke", &json!(null))
        .await;
    node.await.unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.header("x-fnmesh-node-id"), Some("node-a"));
    assert_eq!(resp.header("x-fnmesh-cold-start"), Some("true"));
    let timing = resp.header("server-timing").expect("Server-Timing");
    let mut durations = HashMap::new();
    let mut descriptions = HashMap::new();
    for entry in timing.split(", ") {
        let (name, param) = entry.split_once(';').unwrap();
        if let Some(dur) = param.strip_prefix("dur=") {
            durations.insert(name.to_owned(), dur.to_owned());
        } else if let Some(desc) = param.strip_prefix("desc=") {
            descriptions.insert(name.to_owned(), desc.trim_matches('"').to_owned());
        } else {
            panic!("unexpected Server-Timing entry {entry:?}");
        }
    }
    assert_eq!(descriptions["node"], "node-a");
    assert_eq!(descriptions["cold"], "true");

    let id = resp.body["id"].as_str().unwrap();
    let record = app.get(&format!("/v1/invocations/{id}")).await;
    let m = &record.body["metrics"];
    for (phase, field) in [
        ("queue", "queue_us"),
        ("init", "init_us"),
        ("exec", "exec_us"),
        ("total", "total_us"),
    ] {
        let us = m[field].as_u64().unwrap();
        assert!(us > 0, "{field}");
        assert_eq!(
            durations[phase],
            format!("{}.{:03}", us / 1000, us % 1000),
            "{phase}"
        );
    }
    assert_eq!(m["cold_start"], true);
    assert_eq!(record.body["node_id"], "node-a");
    // The body of the response is the same record.
    assert_eq!(resp.body["metrics"], *m);
}

#[tokio::test]
async fn rate_limits_queues_and_dead_letters_are_counted() {
    let app = TestApp::builder()
        .bus(|b| {
            b.max_deliver = 1;
            b.ack_wait = Duration::from_millis(50);
        })
        .start()
        .await;
    let mut body = common::create_body("limited");
    body["config"]["rate_limit"] = json!({"per_second": 1, "burst": 1});
    assert_eq!(app.post_json("/v1/functions", &body).await.status, 201);
    app.create_function("queued").await;
    let before = scrape(&app).await;

    let invoke = "/v1/functions/limited/invoke?async=true";
    assert_eq!(app.post_json(invoke, &json!(null)).await.status, 202);
    assert_eq!(app.post_json(invoke, &json!(null)).await.status, 429);
    let after = scrape(&app).await;
    assert_eq!(
        after.get(
            "fnmesh_rate_limit_rejections_total",
            &[("scope", "function")]
        ) - before.get(
            "fnmesh_rate_limit_rejections_total",
            &[("scope", "function")]
        ),
        1.0
    );
    let invoke_429 = [
        ("route", INVOKE_ROUTE),
        ("method", "POST"),
        ("status", "429"),
    ];
    assert_eq!(after.get("fnmesh_http_requests_total", &invoke_429), 1.0);

    // The accepted one waits on the bus: the queue gauge shows it (read at scrape time).
    eventually(|| async {
        let m = scrape(&app).await;
        (m.get("fnmesh_queue_pending", &[("function", "limited")]) == 1.0).then_some(())
    })
    .await;

    // A delivery that fails with no attempts left is dead-lettered and counted once.
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    delivery.acker.nak(None).await.unwrap();
    let dead = eventually(|| async {
        let m = scrape(&app).await;
        (m.get("fnmesh_dead_letters_total", &[])
            == before.get("fnmesh_dead_letters_total", &[]) + 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        dead.get(
            "fnmesh_invocations_total",
            &[("function", "limited"), ("status", "dead_lettered")]
        ),
        1.0
    );
    assert_eq!(
        dead.get("fnmesh_queue_pending", &[("function", "queued")]),
        0.0
    );
}

#[tokio::test]
async fn unknown_paths_share_one_label() {
    let app = TestApp::start().await;
    for path in ["/nope/1", "/nope/2", "/v1/functions/a/b/c"] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404);
    }
    let m = scrape(&app).await;
    assert_eq!(
        m.get(
            "fnmesh_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        3.0
    );
    assert!(!m.0.keys().any(|k| k.contains("/nope")));
}

/// Scrapes `/metrics` with this `Authorization` value (none when `None`).
async fn scrape_as(app: &TestApp, authorization: Option<&str>) -> (u16, String, String) {
    let mut req = app.http.get(app.url("/metrics"));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, resp.text().await.unwrap())
}

fn assert_refused(status: u16, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON error ({e}): {body}"));
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
    assert!(
        !body.to_string().contains("fnmesh_"),
        "no metrics leak: {body}"
    );
}

#[tokio::test]
async fn metrics_need_an_admin_or_the_scrape_token_and_health_stays_open() {
    let token = "prometheus-scrape-token-0123";
    let app = TestApp::builder()
        .config(|c| {
            c.metrics_token = Some(fnmesh_core::metrics::ScrapeToken::parse(token).unwrap())
        })
        .start()
        .await;
    app.create_function("tenant-secret-name").await;

    for anonymous in [None, Some("Bearer "), Some("Basic YWRtaW46YWRtaW4=")] {
        let (status, _, body) = scrape_as(&app, anonymous).await;
        assert_refused(status, &body, 401, "unauthorized");
        assert!(!body.contains("tenant-secret-name"));
    }
    let (status, _, body) = scrape_as(&app, Some("Bearer fnm_not-a-key-of-ours-at-all")).await;
    assert_refused(status, &body, 401, "unauthorized");
    let (status, _, body) = scrape_as(&app, Some(&format!("Bearer {token}x"))).await;
    assert_refused(status, &body, 401, "unauthorized");

    // A valid key of another role is known but not allowed.
    let resp = app
        .post_json(
            "/v1/keys",
            &json!({"name": "dev", "role": "developer", "namespace": "default"}),
        )
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    let developer = resp.body["key"].as_str().unwrap().to_owned();
    let (status, _, body) = scrape_as(&app, Some(&format!("Bearer {developer}"))).await;
    assert_refused(status, &body, 403, "forbidden");

    // The admin key and the scrape token both scrape.
    for allowed in [format!("Bearer {}", app.key), format!("Bearer {token}")] {
        let (status, content_type, body) = scrape_as(&app, Some(&allowed)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.contains("fnmesh_http_requests_total"), "{body}");
    }

    // Health and readiness need no key.
    for path in ["/healthz", "/readyz"] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn without_a_scrape_token_only_admins_scrape() {
    let app = TestApp::start().await;
    let (status, _, body) = scrape_as(&app, None).await;
    assert_refused(status, &body, 401, "unauthorized");
    // No token configured: nothing that looks like one gets in.
    let (status, _, body) = scrape_as(&app, Some("Bearer prometheus-scrape-token-0123")).await;
    assert_refused(status, &body, 401, "unauthorized");
    let (status, _, _) = scrape_as(&app, Some(&format!("Bearer {}", app.key))).await;
    assert_eq!(status, 200);
}

/// Concurrent invocations share the store's write transactions (group commit): 64 async
/// invocations at once are 64 inserted rows in fewer than 64 transactions, every one of them
/// stored; the sizes of the bus's streams and of the store are shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_share_write_transactions() {
    const N: usize = 64;
    let app = std::sync::Arc::new(TestApp::start().await);
    app.create_function("hello").await;
    let before = scrape(&app).await;
    let invocations = futures::future::join_all((0..N).map(|i| {
        let app = app.clone();
        async move {
            let r = app
                .post_json("/v1/functions/hello/invoke?async=true", &json!({ "i": i }))
                .await;
            assert_eq!(r.status, 202, "{:?}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    for id in &invocations {
        let r = app.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!(r.body["status"], "queued", "{id} is stored");
    }
    let after = scrape(&app).await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        moved("fnmesh_store_writes_total", &[("kind", "insert")]),
        N as f64
    );
    let transactions = moved(
        "fnmesh_store_write_transactions_total",
        &[("path", "invoke")],
    );
    assert!(
        (1.0..N as f64).contains(&transactions),
        "{N} concurrent inserts took {transactions} transactions"
    );
    // Sizes are read at most once a second.
    let sizes = eventually(|| async {
        let m = scrape(&app).await;
        (m.get("fnmesh_stream_messages", &[("stream", "work")]) == N as f64).then_some(m)
    })
    .await;
    assert!(sizes.get("fnmesh_store_bytes", &[]) > 0.0);
    assert!(sizes.get("fnmesh_store_invocations", &[]) >= N as f64);
}
