//! Keys minted by keys (`POST /v1/keys` with a non-admin key): never outliving or outranking
//! their minter, revoked with it, and sharing its rate limit; and the per-namespace limit on
//! invocations that no number of keys gets around.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use common::{Resp, TestApp};
use fnmesh_gateway::auth::jwt::{SigningKey, TokenConfig};
use fnmesh_ratelimit::RateLimit;
use serde_json::{json, Value};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret-0123";

/// A minted key: its secret and its id.
struct Minted {
    key: String,
    id: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn mint_with(app: &TestApp, minter: &str, body: Value) -> Resp {
    app.send_with_key(
        "POST",
        "/v1/keys",
        Some(serde_json::to_vec(&body).unwrap()),
        Some(minter),
    )
    .await
}

/// Mints a key with `minter`; asserts 201.
async fn mint(app: &TestApp, minter: &str, body: Value) -> Minted {
    let resp = mint_with(app, minter, body).await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    Minted {
        key: resp.body["key"].as_str().unwrap().to_owned(),
        id: resp.body["id"].as_str().unwrap().to_owned(),
    }
}

async fn get_with(app: &TestApp, key: &str, path: &str) -> Resp {
    app.send_with_key("GET", path, None, Some(key)).await
}

#[tokio::test]
async fn a_child_key_may_not_outlive_its_minter() {
    let app = TestApp::builder()
        .config(|c| {
            c.tokens = TokenConfig {
                keys: vec![SigningKey::hs256("k1", SECRET).unwrap()],
                ..TokenConfig::default()
            }
        })
        .start()
        .await;
    let minter_expiry = Utc::now() + ChronoDuration::hours(1);
    let minter = mint(
        &app,
        &app.key,
        json!({ "name": "ci", "role": "developer", "expires_at": rfc3339(minter_expiry) }),
    )
    .await;

    // No expiry, or a later one: refused, whoever asks.
    for expires_at in [
        Value::Null,
        json!(rfc3339(minter_expiry + ChronoDuration::minutes(1))),
    ] {
        let mut body = json!({ "name": "child", "role": "invoker" });
        if !expires_at.is_null() {
            body["expires_at"] = expires_at.clone();
        }
        let refused = mint_with(&app, &minter.key, body).await;
        assert_eq!(refused.status, 422, "{expires_at}: {:?}", refused.body);
        assert_eq!(refused.code(), "expires_after_minter");
        assert!(refused.body["error"]["message"].is_string());
    }

    // As long, or shorter: minted, with its lineage.
    let child = mint_with(
        &app,
        &minter.key,
        json!({ "name": "child", "role": "invoker", "expires_at": rfc3339(minter_expiry) }),
    )
    .await;
    assert_eq!(child.status, 201, "{:?}", child.body);
    assert_eq!(child.body["parent_id"], minter.id.as_str());
    assert_eq!(child.body["root_id"], minter.id.as_str());

    // The same through an access token of the expiring key: the key behind it decides.
    let token = app
        .send_with_key("POST", "/v1/auth/token", None, Some(&minter.key))
        .await;
    assert_eq!(token.status, 200, "{:?}", token.body);
    let access = token.body["access_token"].as_str().unwrap();
    let refused = mint_with(&app, access, json!({ "name": "t", "role": "invoker" })).await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.code(), "expires_after_minter");
    let soon = Utc::now() + ChronoDuration::minutes(5);
    let ok = mint_with(
        &app,
        access,
        json!({ "name": "t", "role": "invoker", "expires_at": rfc3339(soon) }),
    )
    .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    assert_eq!(ok.body["root_id"], minter.id.as_str());

    // A key that never expires may mint keys that never do.
    let forever = mint(&app, &app.key, json!({ "name": "f", "role": "developer" })).await;
    mint(
        &app,
        &forever.key,
        json!({ "name": "g", "role": "invoker" }),
    )
    .await;
}

#[tokio::test]
async fn a_child_key_never_outranks_its_minter() {
    let app = TestApp::start().await;
    app.create_function("resize").await;
    let dev = mint(
        &app,
        &app.key,
        json!({ "name": "dev", "role": "developer" }),
    )
    .await;
    let refused = mint_with(&app, &dev.key, json!({ "name": "a", "role": "admin" })).await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.code(), "forbidden");

    let limited = mint(
        &app,
        &app.key,
        json!({ "name": "l", "role": "developer", "functions": ["resize"] }),
    )
    .await;
    let wider = mint_with(
        &app,
        &limited.key,
        json!({ "name": "w", "role": "invoker" }),
    )
    .await;
    assert_eq!(wider.status, 403, "all functions is wider than one");
    let other = mint_with(
        &app,
        &limited.key,
        json!({ "name": "o", "role": "invoker", "functions": ["resize", "other"] }),
    )
    .await;
    assert_eq!(other.status, 403, "{:?}", other.body);
    mint(
        &app,
        &limited.key,
        json!({ "name": "n", "role": "invoker", "functions": ["resize"] }),
    )
    .await;

    let invoker = mint(&app, &dev.key, json!({ "name": "i", "role": "invoker" })).await;
    let none = mint_with(
        &app,
        &invoker.key,
        json!({ "name": "x", "role": "invoker" }),
    )
    .await;
    assert_eq!(none.status, 403, "invokers mint nothing");
}

#[tokio::test]
async fn revoking_a_key_revokes_every_key_minted_below_it() {
    let app = TestApp::start().await;
    let parent = mint(&app, &app.key, json!({ "name": "p", "role": "developer" })).await;
    let child = mint(
        &app,
        &parent.key,
        json!({ "name": "c", "role": "developer" }),
    )
    .await;
    let grandchild = mint(&app, &child.key, json!({ "name": "g", "role": "invoker" })).await;
    let sibling = mint(&app, &app.key, json!({ "name": "s", "role": "developer" })).await;
    for k in [&parent, &child, &grandchild, &sibling] {
        assert_eq!(get_with(&app, &k.key, "/v1/functions").await.status, 200);
    }

    let resp = app
        .send("DELETE", &format!("/v1/keys/{}", parent.id), None)
        .await;
    assert_eq!(resp.status, 204, "{:?}", resp.body);
    for k in [&parent, &child, &grandchild] {
        let r = get_with(&app, &k.key, "/v1/functions").await;
        assert_eq!(r.status, 401, "{} is revoked with its ancestor", k.id);
    }
    assert_eq!(
        get_with(&app, &sibling.key, "/v1/functions").await.status,
        200,
        "a key outside the tree stays live"
    );
    let listed = app.get("/v1/keys?limit=1000").await;
    let revoked: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !k["revoked_at"].is_null())
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    for k in [&parent, &child, &grandchild] {
        assert!(revoked.contains(&k.id.as_str()), "{} in {revoked:?}", k.id);
    }
    assert!(!revoked.contains(&sibling.id.as_str()));
}

#[tokio::test]
async fn a_key_revokes_its_own_subtree_only() {
    let app = TestApp::start().await;
    let parent = mint(&app, &app.key, json!({ "name": "p", "role": "developer" })).await;
    let child = mint(
        &app,
        &parent.key,
        json!({ "name": "c", "role": "developer" }),
    )
    .await;
    let grandchild = mint(&app, &child.key, json!({ "name": "g", "role": "invoker" })).await;
    let resp = app
        .send_with_key(
            "DELETE",
            &format!("/v1/keys/{}", child.id),
            None,
            Some(&parent.key),
        )
        .await;
    assert_eq!(resp.status, 204, "{:?}", resp.body);
    assert_eq!(
        get_with(&app, &grandchild.key, "/v1/functions")
            .await
            .status,
        401
    );
    assert_eq!(
        get_with(&app, &parent.key, "/v1/functions").await.status,
        200
    );
}

#[tokio::test]
async fn minted_keys_share_the_rate_limit_of_their_lineage_root() {
    let app = TestApp::builder()
        .config(|c| {
            c.default_rate_limit = Some(RateLimit {
                per_second: 1,
                burst: 4,
            })
        })
        .start()
        .await;
    // The admin's own bucket: two requests.
    let root = mint(
        &app,
        &app.key,
        json!({ "name": "root", "role": "developer" }),
    )
    .await;
    let other = mint(
        &app,
        &app.key,
        json!({ "name": "other", "role": "developer" }),
    )
    .await;

    // The root's bucket: minting (1), then the child's requests (2, 3, 4).
    let child = mint(
        &app,
        &root.key,
        json!({ "name": "child", "role": "invoker" }),
    )
    .await;
    for _ in 0..3 {
        let r = get_with(&app, &child.key, "/v1/functions").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let refused = get_with(&app, &child.key, "/v1/functions").await;
    assert_eq!(
        refused.status, 429,
        "the child spent its root's bucket: {:?}",
        refused.body
    );
    assert_eq!(refused.code(), "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        get_with(&app, &root.key, "/v1/functions").await.status,
        429,
        "and the root's own requests share it"
    );
    assert_eq!(
        get_with(&app, &other.key, "/v1/functions").await.status,
        200,
        "another lineage has its own bucket"
    );
}

#[tokio::test]
async fn a_namespace_limit_caps_invocations_across_its_keys() {
    let app = TestApp::builder()
        .config(|c| {
            c.namespace_rate_limit = Some(RateLimit {
                per_second: 1,
                burst: 3,
            })
        })
        .start()
        .await;
    app.create_function("echo").await;
    // Independent lineages: the per-key limit alone would admit them all.
    let a = mint(&app, &app.key, json!({ "name": "a", "role": "invoker" })).await;
    let b = mint(&app, &app.key, json!({ "name": "b", "role": "invoker" })).await;
    let invoke = |key: String| {
        let app = &app;
        async move {
            app.send_with_key(
                "POST",
                "/v1/functions/echo/invoke?async=true",
                Some(b"null".to_vec()),
                Some(&key),
            )
            .await
        }
    };
    for key in [&a.key, &b.key, &a.key] {
        let r = invoke(key.clone()).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let refused = invoke(b.key.clone()).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.code(), "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(refused.header("ratelimit-limit"), Some("3"));

    // Only invocations count: the namespace's other routes are not limited by it.
    assert_eq!(
        get_with(&app, &a.key, "/v1/functions/echo").await.status,
        200
    );
    // The refused invocation was not recorded.
    let list = app.get("/v1/invocations").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 3);
}
