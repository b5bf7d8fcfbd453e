//! `GET /v1/admin/nodes` over the real routes and the in-process node registry: what nodes
//! heartbeat is listed with every field, stale and departed nodes are not, and only admin keys
//! may look.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::TestApp;
use fnmesh_bus::registry::{NodeInfo, NodeRegistry, NodeState};
use fnmesh_core::{Namespace, NodeId};
use fnmesh_gateway::auth;
use fnmesh_store::{ApiKeyRecord, Role};
use serde_json::json;

fn node_info(id: &str, interval: Duration) -> NodeInfo {
    let now = Utc::now();
    NodeInfo {
        id: NodeId::parse(id).unwrap(),
        region: "test".to_owned(),
        runtimes: vec!["python3".to_owned(), "nodejs".to_owned(), "exec".to_owned()],
        slots_total: 16,
        slots_free: 16,
        warm_sandboxes: 0,
        state: NodeState::Active,
        version: "0.0.0-test".to_owned(),
        started_at: now - chrono::Duration::seconds(5),
        last_heartbeat_at: now,
        uptime_secs: 5,
        heartbeat_interval_ms: interval.as_millis() as u64,
        signing_key: None,
        images: Vec::new(),
    }
}

async fn key_with_role(app: &TestApp, role: Role) -> String {
    let key = auth::generate_key();
    app.store
        .create_api_key(&ApiKeyRecord {
            id: format!("{}-{:08x}", role.as_str(), rand::random::<u32>()),
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

#[tokio::test]
async fn lists_live_nodes_with_their_fields() {
    let app = TestApp::start().await;
    let empty = app.get("/v1/admin/nodes").await;
    assert_eq!(empty.status, 200);
    assert_eq!(
        empty.body,
        json!({"items": [], "regions": []}),
        "one region, no other regions"
    );

    let mut b = node_info("node-b", Duration::from_secs(2));
    b.slots_free = 3;
    b.warm_sandboxes = 1;
    let a = node_info("node-a", Duration::from_secs(2));
    let mut stale = node_info("node-c", Duration::from_secs(2));
    stale.last_heartbeat_at = Utc::now() - chrono::Duration::seconds(10);
    for n in [&b, &a, &stale] {
        app.registry.heartbeat(n).await.unwrap();
    }
    let listed = app.get("/v1/admin/nodes").await;
    assert_eq!(listed.status, 200);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the stale node is not listed: {items:?}");
    assert_eq!(items[0]["id"], "node-a");
    assert_eq!(items[1]["id"], "node-b");
    let b_json = &items[1];
    assert_eq!(b_json["slots_total"], 16);
    assert_eq!(b_json["slots_free"], 3);
    assert_eq!(b_json["warm_sandboxes"], 1);
    assert_eq!(b_json["state"], "active");
    assert_eq!(b_json["region"], "test");
    assert_eq!(b_json["runtimes"], json!(["python3", "nodejs", "exec"]));
    assert_eq!(b_json["heartbeat_interval_ms"], 2000);
    assert_eq!(b_json["link"], "local", "its own region's node");
    for field in ["version", "started_at", "last_heartbeat_at", "uptime_secs"] {
        assert!(!b_json[field].is_null(), "{field} missing: {b_json}");
    }

    app.registry.leave(&a.id).await.unwrap();
    let after = app.get("/v1/admin/nodes").await;
    assert_eq!(after.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(after.body["items"][0]["id"], "node-b");
}

#[tokio::test]
async fn only_admins_list_nodes() {
    let app = TestApp::start().await;
    for role in [Role::Developer, Role::Invoker] {
        let key = key_with_role(&app, role).await;
        let resp = app
            .send_with_key("GET", "/v1/admin/nodes", None, Some(&key))
            .await;
        assert_eq!(resp.status, 403, "{role:?}");
        assert_eq!(resp.code(), "forbidden");
    }
    let anonymous = app
        .send_with_key("GET", "/v1/admin/nodes", None, None)
        .await;
    assert_eq!(anonymous.status, 401);
    let wrong_method = app.send("POST", "/v1/admin/nodes", None).await;
    assert_eq!(wrong_method.status, 405);
}
