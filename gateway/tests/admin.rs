//! The admin API over the real routes, memory bus and SQLite store: the dead-letter queue
//! (list, get, replay, delete) and the queue depths. No node runs here: the tests pull
//! deliveries from the bus and publish node events themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{eventually, Resp, TestApp};
use fnmesh_bus::DeadLetter;
use fnmesh_core::{
    FunctionName, InvocationId, InvocationLogs, InvocationOutcome, InvocationRequest,
    InvocationResult, InvocationStatus, Namespace, NodeEvent,
};
use fnmesh_gateway::auth;
use fnmesh_gateway::recorder::record_dead_letter;
use fnmesh_store::{ApiKeyRecord, Role};
use serde_json::{json, Value};

/// A key of `role` in the default namespace.
async fn key_with_role(app: &TestApp, role: Role) -> String {
    let key = auth::generate_key();
    let suffix = format!("{:08x}", rand::random::<u32>());
    app.store
        .create_api_key(&ApiKeyRecord {
            id: format!("{}-{suffix}", role.as_str()),
            name: format!("{} key", role.as_str()),
            key_hash: auth::hash_key(&key),
            role,
            namespace: Namespace::default_ns(),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            functions: None,
            parent_id: None,
            root_id: None,
        })
        .await
        .unwrap();
    key
}

/// Dead-letters a new invocation of the default namespace's `function` (created if needed),
/// moved to `namespace`, through the recorder's own path. Returns its request.
async fn dead_letter_in(
    app: &TestApp,
    namespace: &str,
    function: &str,
    payload: Value,
) -> InvocationRequest {
    let name = FunctionName::parse(function).unwrap();
    let default = Namespace::default_ns();
    if app
        .store
        .get_function(&default, &name, None)
        .await
        .unwrap()
        .is_none()
    {
        app.create_function(function).await;
    }
    let mut snapshot = app
        .store
        .get_function(&default, &name, None)
        .await
        .unwrap()
        .unwrap();
    snapshot.namespace = Namespace::parse(namespace).unwrap();
    let request = InvocationRequest {
        id: InvocationId::new(),
        function: snapshot,
        payload,
        created_at: Utc::now(),
        trace_id: None,
        traceparent: None,
        secrets: None,
        registry_auth: None,
        forwarded_to: None,
        alias: None,
        priority: Default::default(),
        notify_destinations: false,
    };
    app.store.insert_invocation(&request).await.unwrap();
    record_dead_letter(
        app.store.as_ref(),
        &DeadLetter {
            request: request.clone(),
            attempts: 3,
        },
    )
    .await
    .unwrap();
    request
}

fn items(resp: &Resp) -> &Vec<Value> {
    resp.body["items"].as_array().unwrap()
}

#[tokio::test]
async fn an_exhausted_invocation_is_listed_replayed_and_the_replay_runs() {
    let app = TestApp::builder()
        .bus(|b| {
            b.max_deliver = 1;
            b.ack_wait = Duration::from_millis(50);
        })
        .start()
        .await;
    app.create_function("hello").await;
    let payload = json!({"order": 7, "note": "ünïcode"});
    let resp = app
        .post_json("/v1/functions/hello/invoke?async=true", &payload)
        .await;
    assert_eq!(resp.status, 202);
    let old_id = resp.body["id"].as_str().unwrap().to_owned();
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    delivery.acker.nak(None).await.unwrap();

    let listed = eventually(|| async {
        let r = app.get("/v1/admin/dlq").await;
        (r.status == 200 && items(&r).len() == 1).then_some(r)
    })
    .await;
    assert_eq!(listed.body["next_cursor"], Value::Null);
    let item = &items(&listed)[0];
    assert_eq!(item["id"], old_id);
    assert_eq!(item["namespace"], "default");
    assert_eq!(item["function"], "hello");
    assert_eq!(item["version"], 1);
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["payload"], payload);
    assert_eq!(item["last_error"], Value::Null, "no node reported an error");
    assert!(item["dead_lettered_at"].is_string());
    assert!(item["created_at"].is_string());

    let one = app.get(&format!("/v1/admin/dlq/{old_id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(&one.body, item, "the item reads the same alone");

    let record = app.get(&format!("/v1/invocations/{old_id}")).await;
    assert_eq!(record.body["status"], "dead_lettered");
    let by_status = app.get("/v1/invocations?status=dead_lettered").await;
    assert_eq!(items(&by_status).len(), 1);
    assert_eq!(items(&by_status)[0]["id"], old_id);

    let replay = app
        .send("POST", &format!("/v1/admin/dlq/{old_id}/replay"), None)
        .await;
    assert_eq!(replay.status, 202, "{:?}", replay.body);
    assert_eq!(replay.body["replay_of"], old_id);
    assert_eq!(replay.body["status"], "queued");
    let new_id = InvocationId::parse(replay.body["id"].as_str().unwrap()).unwrap();
    assert_ne!(new_id.to_string(), old_id, "a replay is a new invocation");

    let gone = app.get(&format!("/v1/admin/dlq/{old_id}")).await;
    assert_eq!(gone.status, 404, "a replayed dead letter is removed");
    assert_eq!(gone.code(), "not_found");
    assert!(items(&app.get("/v1/admin/dlq").await).is_empty());
    let old = app.get(&format!("/v1/invocations/{old_id}")).await;
    assert_eq!(old.body["status"], "dead_lettered", "the old record stays");

    let path = format!("/v1/invocations/{new_id}");
    let queued = app.get(&path).await;
    assert_eq!(queued.status, 200);
    assert_eq!(queued.body["status"], "queued");
    assert_eq!(queued.body["function"], "hello");

    // The replay is on the bus with the same function snapshot and payload; play the node.
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .expect("the replay was published");
    assert_eq!(delivery.request.id, new_id);
    assert_eq!(delivery.request.payload, payload);
    assert_eq!(delivery.request.function.name.as_str(), "hello");
    assert_eq!(delivery.request.function.version, 1);
    let mut result = InvocationResult::queued(&delivery.request);
    result.status = InvocationStatus::Succeeded;
    result.result = Some(json!({"ok": true}));
    result.attempt = delivery.attempt;
    result.completed_at = Some(Utc::now());
    app.bus
        .publish_event(&NodeEvent::Finished(Box::new(InvocationOutcome {
            result,
            logs: InvocationLogs::default(),
        })))
        .await
        .unwrap();
    delivery.acker.ack().await.unwrap();
    let done = eventually(|| async {
        let r = app.get(&path).await;
        (r.body["status"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(done.body["result"], json!({"ok": true}));

    let again = app
        .send("POST", &format!("/v1/admin/dlq/{old_id}/replay"), None)
        .await;
    assert_eq!(again.status, 404, "a dead letter is replayed once");
}

#[tokio::test]
async fn deleting_a_dead_letter_is_204_then_404() {
    let app = TestApp::start().await;
    let request = dead_letter_in(&app, "default", "hello", json!([1, 2])).await;
    let path = format!("/v1/admin/dlq/{}", request.id);
    assert_eq!(app.get(&path).await.status, 200);

    let deleted = app.send("DELETE", &path, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null, "no body");
    for (method, path) in [
        ("DELETE", path.clone()),
        ("GET", path.clone()),
        ("POST", format!("{path}/replay")),
    ] {
        let resp = app.send(method, &path, None).await;
        assert_eq!(resp.status, 404, "{method} {path}");
        assert_eq!(resp.code(), "not_found");
    }
    let record = app.get(&format!("/v1/invocations/{}", request.id)).await;
    assert_eq!(
        record.body["status"], "dead_lettered",
        "the record stays dead_lettered"
    );
    assert!(app
        .bus
        .pull_invocation(Duration::ZERO)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn the_dlq_listing_pages_and_filters_by_namespace() {
    let app = TestApp::start().await;
    let mut default_ids = Vec::new();
    for i in 0..3 {
        default_ids.push(dead_letter_in(&app, "default", "hello", json!(i)).await.id);
    }
    let other = dead_letter_in(&app, "team-b", "hello", json!("b")).await;

    let all = app.get("/v1/admin/dlq").await;
    assert_eq!(all.status, 200);
    let ids: Vec<&str> = items(&all)
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    // Ids are UUIDv7: newest first is descending id order.
    let mut expected: Vec<InvocationId> = default_ids.clone();
    expected.push(other.id);
    expected.sort_by_key(|id| std::cmp::Reverse(*id));
    let expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
    assert_eq!(ids, expected, "every namespace's, newest first");

    let team_b = app.get("/v1/admin/dlq?namespace=team-b").await;
    assert_eq!(items(&team_b).len(), 1);
    assert_eq!(items(&team_b)[0]["id"], other.id.to_string());
    assert_eq!(items(&team_b)[0]["namespace"], "team-b");
    assert_eq!(items(&team_b)[0]["attempts"], 3);

    // Ids of another namespace are reachable by admins.
    let one = app.get(&format!("/v1/admin/dlq/{}", other.id)).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["payload"], "b");

    let mut seen = Vec::new();
    let mut path = "/v1/admin/dlq?namespace=default&limit=2".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200);
        assert!(items(&page).len() <= 2);
        seen.extend(
            items(&page)
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/v1/admin/dlq?namespace=default&limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    default_ids.sort_by_key(|id| std::cmp::Reverse(*id));
    let newest_first: Vec<String> = default_ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        seen, newest_first,
        "pages walk the namespace once, newest first"
    );

    for (path, code) in [
        ("/v1/admin/dlq?namespace=Not_Valid", "invalid_name"),
        ("/v1/admin/dlq?cursor=bogus", "invalid_cursor"),
        ("/v1/admin/dlq?limit=0", "invalid_query"),
        ("/v1/admin/dlq/not-an-id", "invalid_id"),
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.code(), code, "{path}");
    }
    let unknown = app
        .get(&format!("/v1/admin/dlq/{}", InvocationId::new()))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.code(), "not_found");
}

#[tokio::test]
async fn the_admin_api_needs_an_admin_key() {
    let app = TestApp::start().await;
    let request = dead_letter_in(&app, "default", "hello", json!(null)).await;
    let id = request.id;
    let routes = [
        ("GET", "/v1/admin/dlq".to_owned()),
        ("GET", format!("/v1/admin/dlq/{id}")),
        ("POST", format!("/v1/admin/dlq/{id}/replay")),
        ("DELETE", format!("/v1/admin/dlq/{id}")),
        ("GET", "/v1/admin/queues".to_owned()),
    ];
    for role in [Role::Developer, Role::Invoker] {
        let key = key_with_role(&app, role).await;
        for (method, path) in &routes {
            let resp = app.send_with_key(method, path, None, Some(&key)).await;
            assert_eq!(resp.status, 403, "{role:?} {method} {path}");
            assert_eq!(resp.code(), "forbidden");
        }
    }
    for (method, path) in &routes {
        let resp = app.send_with_key(method, path, None, None).await;
        assert_eq!(resp.status, 401, "no key: {method} {path}");
        assert_eq!(resp.code(), "unauthorized");
    }
    assert_eq!(
        app.get(&format!("/v1/admin/dlq/{id}")).await.status,
        200,
        "refused calls changed nothing"
    );
    let wrong_method = app.send("PUT", "/v1/admin/queues", None).await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test]
async fn queues_shows_the_bus_depths() {
    let app = TestApp::start().await;
    let empty = app.get("/v1/admin/queues").await;
    assert_eq!(empty.status, 200);
    assert_eq!(
        empty.body,
        json!({"invocations": 0, "events": 0, "functions": []})
    );

    app.create_function("hello").await;
    for i in 0..2 {
        let resp = app
            .post_json("/v1/functions/hello/invoke?async=true", &json!(i))
            .await;
        assert_eq!(resp.status, 202);
    }
    let _running = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let stats = app.get("/v1/admin/queues").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["invocations"], 2);
    assert!(stats.body["events"].is_u64());
    let functions = stats.body["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1, "{:?}", stats.body);
    let hello = &functions[0];
    assert_eq!(hello["namespace"], "default");
    assert_eq!(hello["function"], "hello");
    assert_eq!(hello["pending"], 1);
    assert_eq!(hello["in_flight"], 1);
    assert!(hello["max_in_flight"].as_u64().unwrap() >= 1);
}
