//! Invocations over the real routes, memory bus and SQLite store. No node runs here: where a
//! sync call needs an answer, an in-test responder task plays the node's part on the bus, to
//! exercise the gateway's reply handling (end-to-end runs with sandboxes are in `tests/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{eventually, invalid_names, TestApp};
use fnmesh_core::{
    InvocationId, InvocationLogs, InvocationMetrics, InvocationOutcome, InvocationStatus,
    Namespace, NodeEvent,
};
use serde_json::json;

#[tokio::test]
async fn unknown_function_is_404_sync_and_async() {
    let app = TestApp::start().await;
    for path in [
        "/v1/functions/missing/invoke",
        "/v1/functions/missing/invoke?async=true",
    ] {
        let resp = app.post_json(path, &json!({"x": 1})).await;
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.code(), "not_found");
    }
    let list = app.get("/v1/invocations").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn invalid_names_are_400_on_invoke() {
    let app = TestApp::start().await;
    for (name, encoded) in invalid_names() {
        for query in ["", "?async=true"] {
            let path = format!("/v1/functions/{encoded}/invoke{query}");
            let resp = app.post_json(&path, &json!(null)).await;
            assert_eq!(resp.status, 400, "{name:?} {path}");
            assert_eq!(resp.code(), "invalid_name", "{name:?} {path}");
        }
    }
}

#[tokio::test]
async fn async_invoke_is_accepted_and_recorded_queued() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let resp = app
        .post_json(
            "/v1/functions/hello/invoke?async=true",
            &json!({"name": "x"}),
        )
        .await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    assert_eq!(resp.body["status"], "queued");
    let id = resp.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        resp.header("location").unwrap(),
        format!("/v1/invocations/{id}")
    );

    let record = app.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["status"], "queued");
    assert_eq!(record.body["function"], "hello");
    assert_eq!(record.body["version"], 1);

    // The request is on the bus with its payload.
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.request.id.to_string(), id);
    assert_eq!(delivery.request.payload, json!({"name": "x"}));
    assert!(delivery.reply_to.is_none());

    let logs = app.get(&format!("/v1/invocations/{id}/logs")).await;
    assert_eq!(logs.status, 200);
    assert_eq!(logs.body, json!({"id": id, "logs": "", "truncated": false}));

    let listed = app
        .get("/v1/invocations?function=hello&status=queued")
        .await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    let none = app.get("/v1/invocations?status=succeeded").await;
    assert_eq!(none.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        app.get("/v1/invocations?status=bogus").await.code(),
        "invalid_query"
    );
    assert_eq!(
        app.get("/v1/invocations?function=A").await.code(),
        "invalid_name"
    );
}

#[tokio::test]
async fn payloads_must_be_json_and_empty_is_null() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let resp = app
        .send(
            "POST",
            "/v1/functions/hello/invoke?async=true",
            Some(b"{nope".to_vec()),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.code(), "invalid_payload");
    let resp = app
        .send("POST", "/v1/functions/hello/invoke?async=true", None)
        .await;
    assert_eq!(resp.status, 202);
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.request.payload, serde_json::Value::Null);
}

#[tokio::test]
async fn invocation_ids_are_validated() {
    let app = TestApp::start().await;
    for path in ["/v1/invocations/not-a-uuid", "/v1/invocations/a.b/logs"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.code(), "invalid_id");
    }
    let id = InvocationId::new();
    for path in [
        format!("/v1/invocations/{id}"),
        format!("/v1/invocations/{id}/logs"),
    ] {
        let resp = app.get(&path).await;
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.code(), "not_found");
    }
}

/// Plays a node for one delivery: replies with a succeeded outcome echoing the payload.
async fn respond_once(app: &TestApp) {
    let bus = app.bus.clone();
    tokio::spawn(async move {
        let delivery = bus
            .pull_invocation(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        let req = &delivery.request;
        let mut result = fnmesh_core::InvocationResult::queued(req);
        result.status = InvocationStatus::Succeeded;
        result.result = Some(json!({"echo": req.payload}));
        result.attempt = delivery.attempt;
        result.node_id = Some("test-node".into());
        result.started_at = Some(Utc::now());
        result.completed_at = Some(Utc::now());
        result.metrics = Some(InvocationMetrics::default());
        let outcome = InvocationOutcome {
            result,
            logs: InvocationLogs {
                text: "hello from the test node\n".into(),
                truncated: false,
            },
        };
        bus.reply(delivery.reply_to.as_ref().unwrap(), &outcome)
            .await
            .unwrap();
        delivery.acker.ack().await.unwrap();
    });
}

#[tokio::test]
async fn sync_invoke_returns_the_outcome_and_records_it() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    respond_once(&app).await;
    let resp = app
        .post_json("/v1/functions/hello/invoke", &json!({"n": 1}))
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.body["status"], "succeeded");
    assert_eq!(resp.body["result"], json!({"echo": {"n": 1}}));
    let id = resp.body["id"].as_str().unwrap();
    // Written through before the answer: visible right away.
    let record = app.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record.body["status"], "succeeded");
    assert_eq!(record.body["node_id"], "test-node");
    let logs = app.get(&format!("/v1/invocations/{id}/logs")).await;
    assert_eq!(logs.body["logs"], "hello from the test node\n");
}

#[tokio::test]
async fn sync_invoke_times_out_with_504_and_the_id() {
    let app = TestApp::builder()
        .config(|c| c.sync_grace = Duration::from_millis(100))
        .start()
        .await;
    let mut body = common::create_body("slow");
    body["config"] = json!({"timeout_ms": 1});
    assert_eq!(app.post_json("/v1/functions", &body).await.status, 201);
    let resp = app.post_json("/v1/functions/slow/invoke", &json!(1)).await;
    assert_eq!(resp.status, 504, "{:?}", resp.body);
    assert_eq!(resp.code(), "gateway_timeout");
    let id = resp.body["error"]["invocation_id"].as_str().unwrap();
    let record = app.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["status"], "queued");
}

#[tokio::test]
async fn a_full_queue_is_503_and_the_record_says_failed() {
    let app = TestApp::builder().bus(|b| b.capacity = 1).start().await;
    app.create_function("hello").await;
    let first = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!(1))
        .await;
    assert_eq!(first.status, 202);
    let second = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!(2))
        .await;
    assert_eq!(second.status, 503, "{:?}", second.body);
    assert_eq!(second.code(), "queue_full");
    assert!(second.header("retry-after").is_some());
    let failed = app.get("/v1/invocations?status=failed").await;
    let items = failed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["error"]["kind"], "crashed");
    let queued = app.get("/v1/invocations?status=queued").await;
    assert_eq!(queued.body["items"].as_array().unwrap().len(), 1);
    // Same for a sync call.
    let third = app.post_json("/v1/functions/hello/invoke", &json!(3)).await;
    assert_eq!(third.code(), "queue_full");
}

#[tokio::test]
async fn the_recorder_applies_node_events() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let resp = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!({"a": 1}))
        .await;
    let id = InvocationId::parse(resp.body["id"].as_str().unwrap()).unwrap();
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    app.bus
        .publish_event(&NodeEvent::Started {
            id,
            namespace: Namespace::default_ns(),
            attempt: delivery.attempt,
            node_id: "n1".into(),
            started_at: Utc::now(),
        })
        .await
        .unwrap();
    let path = format!("/v1/invocations/{id}");
    eventually(|| async {
        let r = app.get(&path).await;
        (r.body["status"] == "running").then_some(())
    })
    .await;
    let record = app.get(&path).await;
    assert_eq!(record.body["node_id"], "n1");
    assert_eq!(record.body["attempt"], delivery.attempt);

    let mut result = fnmesh_core::InvocationResult::queued(&delivery.request);
    result.status = InvocationStatus::Succeeded;
    result.result = Some(json!(42));
    result.attempt = delivery.attempt;
    result.completed_at = Some(Utc::now());
    app.bus
        .publish_event(&NodeEvent::Finished(Box::new(InvocationOutcome {
            result,
            logs: InvocationLogs {
                text: "out".into(),
                truncated: true,
            },
        })))
        .await
        .unwrap();
    eventually(|| async {
        let r = app.get(&path).await;
        (r.body["status"] == "succeeded").then_some(())
    })
    .await;
    let logs = app.get(&format!("{path}/logs")).await;
    assert_eq!(logs.body["logs"], "out");
    assert_eq!(logs.body["truncated"], true);
}

#[tokio::test]
async fn the_recorder_dead_letters_invocations_whose_attempts_ran_out() {
    let app = TestApp::builder()
        .bus(|b| {
            b.max_deliver = 1;
            b.ack_wait = Duration::from_millis(50);
        })
        .start()
        .await;
    app.create_function("hello").await;
    let resp = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!(1))
        .await;
    let path = format!("/v1/invocations/{}", resp.body["id"].as_str().unwrap());
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    delivery.acker.nak(None).await.unwrap();
    let record = eventually(|| async {
        let r = app.get(&path).await;
        (r.body["status"] == "dead_lettered").then_some(r)
    })
    .await;
    assert_eq!(record.body["error"]["kind"], "crashed");
    assert_eq!(
        record.body["error"]["message"],
        "attempts exhausted after 1 deliveries"
    );
    assert_eq!(record.body["attempt"], 1);
    assert!(record.body["completed_at"].is_string());
}

/// `record_events` on a batch that mixes fresh events, replays, stale attempts and outcomes
/// the sync handler already wrote: every event is settled; a fresh start and outcome are
/// applied with their logs; an outcome whose record is already written gets its missing logs
/// and nothing else; stored logs are not rewritten by a replay; a stale attempt changes
/// neither record nor logs; the outcome of an unknown invocation (a sync one whose gateway did
/// not store it) is stored with its logs, a start of one is dropped.
#[tokio::test]
async fn recording_a_batch_writes_only_what_changes_something() {
    use fnmesh_gateway::recorder::record_events;

    let app = TestApp::start().await;
    app.create_function("hello").await;
    // Three accepted invocations, and their requests as a node would get them.
    let mut requests = Vec::new();
    for i in 0..3 {
        let r = app
            .post_json("/v1/functions/hello/invoke?async=true", &json!({"i": i}))
            .await;
        assert_eq!(r.status, 202);
        let delivery = app
            .bus
            .pull_invocation(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        requests.push(delivery.request);
    }
    let ns = Namespace::default_ns();
    let outcome = |request: &fnmesh_core::InvocationRequest, attempt: u32, text: &str| {
        let mut result = fnmesh_core::InvocationResult::queued(request);
        result.status = InvocationStatus::Succeeded;
        result.result = Some(json!(attempt));
        result.attempt = attempt;
        result.completed_at = Some(Utc::now());
        NodeEvent::Finished(Box::new(InvocationOutcome {
            result,
            logs: InvocationLogs {
                text: text.into(),
                truncated: false,
            },
        }))
    };
    let started = |request: &fnmesh_core::InvocationRequest, attempt: u32| NodeEvent::Started {
        id: request.id,
        namespace: ns.clone(),
        attempt,
        node_id: "n1".into(),
        started_at: Utc::now(),
    };
    let (fresh, written, stale) = (&requests[0], &requests[1], &requests[2]);
    // `written`: its outcome was written by the sync handler, but not its logs.
    let NodeEvent::Finished(done) = outcome(written, 1, "written") else {
        unreachable!()
    };
    assert!(app.store.update_invocation(&done.result).await.unwrap());
    // `stale`: attempt 2 finished and is fully recorded.
    assert_eq!(
        record_events(app.store.as_ref(), &[outcome(stale, 2, "second")]).await,
        vec![true]
    );

    let unknown = fnmesh_core::InvocationRequest {
        id: InvocationId::new(),
        ..fresh.clone()
    };
    let running_unknown = fnmesh_core::InvocationRequest {
        id: InvocationId::new(),
        ..fresh.clone()
    };
    let batch = vec![
        started(fresh, 1),
        outcome(fresh, 1, "fresh"),
        started(written, 1),
        outcome(written, 1, "written"),
        outcome(stale, 1, "first"),
        started(stale, 1),
        outcome(stale, 2, "second, replayed"),
        outcome(&unknown, 1, "nobody"),
        started(&running_unknown, 1),
    ];
    assert_eq!(
        record_events(app.store.as_ref(), &batch).await,
        vec![true; batch.len()],
        "every event is settled"
    );

    let record = |id| {
        let store = app.store.clone();
        let ns = ns.clone();
        async move { store.get_invocation(&ns, &id).await.unwrap().unwrap() }
    };
    let logs = |id| {
        let store = app.store.clone();
        let ns = ns.clone();
        async move { store.get_logs(&ns, &id).await.unwrap().map(|l| l.text) }
    };
    let r = record(fresh.id).await;
    assert_eq!(
        (r.status, r.attempt),
        (InvocationStatus::Succeeded, 1),
        "a fresh outcome is applied"
    );
    assert_eq!(
        r.node_id, None,
        "the outcome's record is what the node sent"
    );
    assert_eq!(logs(fresh.id).await.as_deref(), Some("fresh"));
    let r = record(written.id).await;
    assert_eq!(r, done.result, "a start after the outcome changes nothing");
    assert_eq!(
        logs(written.id).await.as_deref(),
        Some("written"),
        "the missing logs of a written outcome are written"
    );
    let r = record(stale.id).await;
    assert_eq!((r.status, r.attempt), (InvocationStatus::Succeeded, 2));
    assert_eq!(
        logs(stale.id).await.as_deref(),
        Some("second"),
        "neither a stale attempt nor a replay rewrites stored logs"
    );
    let r = record(unknown.id).await;
    assert_eq!(
        (r.status, r.attempt),
        (InvocationStatus::Succeeded, 1),
        "the outcome of an unknown invocation is stored"
    );
    assert_eq!(logs(unknown.id).await.as_deref(), Some("nobody"));
    assert_eq!(
        app.store
            .get_invocation(&ns, &running_unknown.id)
            .await
            .unwrap(),
        None,
        "a start of an unknown invocation is dropped"
    );
}

/// Only the node running an attempt reports how it ended: an outcome or a retry of the same
/// attempt named by another node (one that held an earlier attempt of the invocation, say)
/// changes nothing, while the running node's own outcome is applied.
#[tokio::test]
async fn only_the_node_running_an_attempt_ends_it() {
    use fnmesh_core::invocation::{ErrorKind, InvocationError};
    use fnmesh_gateway::recorder::record_events;

    let app = TestApp::start().await;
    app.create_function("hello").await;
    let r = app
        .post_json("/v1/functions/hello/invoke?async=true", &json!({}))
        .await;
    assert_eq!(r.status, 202);
    let request = app
        .bus
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .request;
    let ns = Namespace::default_ns();
    let outcome = |node: &str, text: &str| {
        let mut result = fnmesh_core::InvocationResult::queued(&request);
        result.status = InvocationStatus::Succeeded;
        result.result = Some(json!(text));
        result.attempt = 1;
        result.node_id = Some(node.to_owned());
        result.completed_at = Some(Utc::now());
        NodeEvent::Finished(Box::new(InvocationOutcome {
            result,
            logs: InvocationLogs {
                text: text.into(),
                truncated: false,
            },
        }))
    };
    let started = NodeEvent::Started {
        id: request.id,
        namespace: ns.clone(),
        attempt: 1,
        node_id: "n1".into(),
        started_at: Utc::now(),
    };
    let retrying = NodeEvent::Retrying {
        id: request.id,
        namespace: ns.clone(),
        attempt: 1,
        node_id: "n2".into(),
        error: InvocationError {
            kind: ErrorKind::Crashed,
            message: "forged".into(),
        },
    };
    assert_eq!(record_events(app.store.as_ref(), &[started]).await, [true]);
    let batch = [outcome("n2", "forged"), retrying];
    assert_eq!(
        record_events(app.store.as_ref(), &batch).await,
        [true, true],
        "settled (dropped), not redelivered"
    );
    let record = app
        .store
        .get_invocation(&ns, &request.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.status, record.node_id.as_deref()),
        (InvocationStatus::Running, Some("n1")),
        "another node's report on attempt 1 changes nothing"
    );
    assert_eq!(app.store.get_logs(&ns, &request.id).await.unwrap(), None);

    record_events(app.store.as_ref(), &[outcome("n1", "real")]).await;
    let record = app
        .store
        .get_invocation(&ns, &request.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, InvocationStatus::Succeeded);
    assert_eq!(record.result, Some(json!("real")));
}

/// Retention: with a retention of zero the pruner removes a finished invocation (record and
/// logs) on its next pass, and never one still queued.
#[tokio::test]
async fn finished_invocations_past_the_retention_are_pruned() {
    use fnmesh_gateway::recorder::record_events;

    let app = TestApp::builder()
        .config(|c| {
            c.retention = Some(Duration::ZERO);
            c.prune_interval = Duration::from_millis(50);
        })
        .start()
        .await;
    app.create_function("hello").await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = app
            .post_json("/v1/functions/hello/invoke?async=true", &json!({ "i": i }))
            .await;
        assert_eq!(r.status, 202);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let finished_id = delivery.request.id.to_string();
    let mut result = fnmesh_core::InvocationResult::queued(&delivery.request);
    result.status = InvocationStatus::Succeeded;
    result.attempt = delivery.attempt;
    result.completed_at = Some(Utc::now());
    let outcome = NodeEvent::Finished(Box::new(InvocationOutcome {
        result,
        logs: InvocationLogs {
            text: "done\n".into(),
            truncated: false,
        },
    }));
    assert_eq!(record_events(app.store.as_ref(), &[outcome]).await, [true]);

    eventually(|| async {
        let r = app.get(&format!("/v1/invocations/{finished_id}")).await;
        (r.status == 404).then_some(())
    })
    .await;
    let logs = app
        .get(&format!("/v1/invocations/{finished_id}/logs"))
        .await;
    assert_eq!(logs.status, 404);
    let queued = ids.iter().find(|id| **id != finished_id).unwrap();
    let r = app.get(&format!("/v1/invocations/{queued}")).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("queued")),
        "a queued invocation is never pruned"
    );
}
