//! Roles, namespaces, per-function grants, key management and namespace quotas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::Utc;
use common::{create_body, Resp, TestApp};
use fnmesh_core::{DeadLetterRecord, InvocationId};
use serde_json::{json, Value};

/// Makes a key as admin; returns `(id, key)`.
async fn make_key(app: &TestApp, body: Value) -> (String, String) {
    let resp = app.post_json("/v1/keys", &body).await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    assert!(resp.body.get("key_hash").is_none());
    (
        resp.body["id"].as_str().unwrap().to_owned(),
        resp.body["key"].as_str().unwrap().to_owned(),
    )
}

async fn key(app: &TestApp, role: &str, namespace: &str) -> String {
    make_key(
        app,
        json!({"name": format!("{role} of {namespace}"), "role": role, "namespace": namespace}),
    )
    .await
    .1
}

async fn call(app: &TestApp, key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    app.send_with_key(
        method,
        path,
        body.map(|b| serde_json::to_vec(&b).unwrap()),
        Some(key),
    )
    .await
}

fn ids(resp: &Resp, field: &str) -> Vec<String> {
    resp.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {:?}", resp.body))
        .iter()
        .map(|i| i[field].as_str().unwrap().to_owned())
        .collect()
}

fn assert_status(resp: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {:?}", resp.body);
    assert_eq!(resp.code(), code, "{what}");
}

#[tokio::test]
async fn an_invoker_cannot_deploy_delete_mint_keys_or_administer() {
    let app = TestApp::start().await;
    app.create_function("hello").await;
    let invoker = key(&app, "invoker", "default").await;
    let refused: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/v1/functions", Some(create_body("other"))),
        (
            "PUT",
            "/v1/functions/hello",
            Some(json!({"config": {"memory_mb": 256}})),
        ),
        ("DELETE", "/v1/functions/hello", None),
        (
            "POST",
            "/v1/keys",
            Some(json!({"name": "x", "role": "invoker"})),
        ),
        ("GET", "/v1/keys", None),
        ("DELETE", "/v1/keys/bootstrap-admin", None),
        ("GET", "/v1/admin/queues", None),
        ("GET", "/v1/admin/nodes", None),
        ("GET", "/v1/admin/dlq", None),
        ("GET", "/v1/admin/namespaces", None),
        ("GET", "/v1/admin/namespaces/default", None),
        (
            "PUT",
            "/v1/admin/namespaces/default",
            Some(json!({"max_functions": 1})),
        ),
    ];
    for (method, path, body) in refused {
        let resp = call(&app, &invoker, method, path, body).await;
        assert_status(&resp, 403, "forbidden", &format!("invoker {method} {path}"));
    }
    // What an invoker may do.
    assert_eq!(
        call(&app, &invoker, "GET", "/v1/functions/hello", None)
            .await
            .status,
        200
    );
    let invoked = call(
        &app,
        &invoker,
        "POST",
        "/v1/functions/hello/invoke?async=true",
        Some(json!({})),
    )
    .await;
    assert_eq!(invoked.status, 202, "{:?}", invoked.body);
    let id = invoked.body["id"].as_str().unwrap();
    assert_eq!(
        call(
            &app,
            &invoker,
            "GET",
            &format!("/v1/invocations/{id}"),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            &app,
            &invoker,
            "GET",
            &format!("/v1/invocations/{id}/logs"),
            None
        )
        .await
        .status,
        200
    );
    // Nothing changed.
    assert_eq!(app.get("/v1/functions/hello").await.body["version"], 1);
}

#[tokio::test]
async fn keys_are_minted_no_stronger_than_their_minter() {
    let app = TestApp::start().await;
    let dev = key(&app, "developer", "team-a").await;
    for (body, status, code) in [
        (json!({"name": "x", "role": "admin"}), 403, "forbidden"),
        (
            json!({"name": "x", "role": "developer", "namespace": "team-b"}),
            403,
            "forbidden",
        ),
        (json!({"name": "x", "role": "root"}), 400, "bad_request"),
        (json!({"name": "", "role": "invoker"}), 400, "bad_request"),
        (
            json!({"name": "x", "role": "invoker", "id": "key_mine"}),
            400,
            "invalid_json",
        ),
        (
            json!({"name": "x", "role": "invoker", "key": "fnm_chosen"}),
            400,
            "invalid_json",
        ),
        (
            json!({"name": "x", "role": "invoker", "expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "bad_request",
        ),
        (
            json!({"name": "x", "role": "invoker", "functions": []}),
            400,
            "bad_request",
        ),
        (
            json!({"name": "x", "role": "invoker", "functions": ["a.b"]}),
            400,
            "invalid_name",
        ),
    ] {
        let resp = call(&app, &dev, "POST", "/v1/keys", Some(body.clone())).await;
        assert_status(&resp, status, code, &body.to_string());
    }
    let minted = call(
        &app,
        &dev,
        "POST",
        "/v1/keys",
        Some(json!({"name": "ci", "role": "invoker", "functions": ["f", "g", "f"]})),
    )
    .await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    assert_eq!(minted.body["namespace"], "team-a");
    assert_eq!(minted.body["functions"], json!(["f", "g"]));
    assert!(minted.body["id"].as_str().unwrap().starts_with("key_"));
    assert!(minted.body["key"].as_str().unwrap().starts_with("fnm_"));
    let limited = minted.body["key"].as_str().unwrap().to_owned();

    // A developer limited to some functions cannot mint an unlimited key.
    let (_, limited_dev) = make_key(
        &app,
        json!({"name": "ld", "role": "developer", "namespace": "team-a", "functions": ["f"]}),
    )
    .await;
    let wider = call(
        &app,
        &limited_dev,
        "POST",
        "/v1/keys",
        Some(json!({"name": "w", "role": "invoker"})),
    )
    .await;
    assert_status(
        &wider,
        403,
        "forbidden",
        "limited developer minting an unlimited key",
    );
    let narrower = call(
        &app,
        &limited_dev,
        "POST",
        "/v1/keys",
        Some(json!({"name": "n", "role": "invoker", "functions": ["f"]})),
    )
    .await;
    assert_eq!(narrower.status, 201);

    // Listing: a developer sees its namespace's keys, never a key or a hash.
    let listed = call(&app, &dev, "GET", "/v1/keys", None).await;
    assert_eq!(listed.status, 200);
    for item in listed.body["items"].as_array().unwrap() {
        assert_eq!(item["namespace"], "team-a");
        assert!(item.get("key").is_none() && item.get("key_hash").is_none());
    }
    assert!(!ids(&listed, "id").contains(&"bootstrap-admin".to_owned()));
    let other_ns = call(&app, &dev, "GET", "/v1/keys?namespace=default", None).await;
    assert_status(
        &other_ns,
        403,
        "forbidden",
        "developer listing another namespace",
    );
    let all = app.get("/v1/keys").await;
    assert!(ids(&all, "id").contains(&"bootstrap-admin".to_owned()));
    let only_a = app.get("/v1/keys?namespace=team-a").await;
    assert!(only_a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["namespace"] == "team-a"));

    // Revocation: not stronger keys, not other namespaces.
    let refused = call(&app, &dev, "DELETE", "/v1/keys/bootstrap-admin", None).await;
    assert_status(
        &refused,
        404,
        "not_found",
        "developer revoking another namespace's key",
    );
    let (admin_in_a, _) = make_key(
        &app,
        json!({"name": "a-admin", "role": "admin", "namespace": "team-a"}),
    )
    .await;
    let stronger = call(
        &app,
        &dev,
        "DELETE",
        &format!("/v1/keys/{admin_in_a}"),
        None,
    )
    .await;
    assert_status(
        &stronger,
        403,
        "forbidden",
        "developer revoking an admin key",
    );
    let id = minted.body["id"].as_str().unwrap();
    assert_eq!(
        call(&app, &dev, "DELETE", &format!("/v1/keys/{id}"), None)
            .await
            .status,
        204
    );
    let gone = call(&app, &limited, "GET", "/v1/functions", None).await;
    assert_status(&gone, 401, "unauthorized", "a revoked key");
    assert_eq!(
        app.send("DELETE", "/v1/keys/key_nope", None).await.status,
        404
    );
}

#[tokio::test]
async fn another_namespace_is_indistinguishable_from_absent() {
    let app = TestApp::start().await;
    let a = key(&app, "developer", "team-a").await;
    let b = key(&app, "developer", "team-b").await;
    let created = call(
        &app,
        &a,
        "POST",
        "/v1/functions",
        Some(create_body("secret-fn")),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["namespace"], "team-a");
    let invoked = call(
        &app,
        &a,
        "POST",
        "/v1/functions/secret-fn/invoke?async=true",
        Some(json!({"card": "4111"})),
    )
    .await;
    assert_eq!(invoked.status, 202);
    let inv = invoked.body["id"].as_str().unwrap().to_owned();

    // A dead letter of A's invocation.
    let requests = app
        .store
        .stale_queued(Utc::now() + chrono::Duration::seconds(5), 1000)
        .await
        .unwrap();
    let request = requests
        .into_iter()
        .find(|r| r.id.to_string() == inv)
        .unwrap();
    app.store
        .put_dead_letter(&DeadLetterRecord {
            id: request.id,
            namespace: request.function.namespace.clone(),
            function: request.function.name.clone(),
            version: request.function.version,
            attempts: 3,
            last_error: None,
            request: request.clone(),
            dead_lettered_at: Utc::now(),
        })
        .await
        .unwrap();

    let absent_inv = InvocationId::new().to_string();
    for (method, path, body) in [
        ("GET", "/v1/functions/secret-fn".to_owned(), None),
        ("GET", "/v1/functions/secret-fn/versions".to_owned(), None),
        (
            "PUT",
            "/v1/functions/secret-fn".to_owned(),
            Some(json!({"metadata": {}})),
        ),
        ("DELETE", "/v1/functions/secret-fn".to_owned(), None),
        (
            "POST",
            "/v1/functions/secret-fn/invoke".to_owned(),
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/functions/secret-fn/invoke?async=true".to_owned(),
            Some(json!({})),
        ),
        ("GET", format!("/v1/invocations/{inv}"), None),
        ("GET", format!("/v1/invocations/{inv}/logs"), None),
        ("GET", format!("/v1/admin/dlq/{inv}"), None),
        ("POST", format!("/v1/admin/dlq/{inv}/replay"), None),
        ("DELETE", format!("/v1/admin/dlq/{inv}"), None),
        // The same answers as for something that does not exist at all.
        ("GET", "/v1/functions/never-was".to_owned(), None),
        ("GET", format!("/v1/invocations/{absent_inv}"), None),
        ("GET", format!("/v1/admin/dlq/{absent_inv}"), None),
    ] {
        let resp = call(&app, &b, method, &path, body).await;
        assert_status(&resp, 404, "not_found", &format!("B {method} {path}"));
    }
    // A's data never shows up in B's lists.
    let b_functions = call(&app, &b, "GET", "/v1/functions", None).await;
    assert!(ids(&b_functions, "name").is_empty());
    let b_invocations = call(&app, &b, "GET", "/v1/invocations", None).await;
    assert!(ids(&b_invocations, "id").is_empty());
    let b_filtered = call(&app, &b, "GET", "/v1/invocations?function=secret-fn", None).await;
    assert!(ids(&b_filtered, "id").is_empty());
    assert!(!b_invocations.body.to_string().contains("4111"));

    // For A it is all there; the dead letter is its own, but the admin route is 403.
    assert_eq!(
        call(&app, &a, "GET", &format!("/v1/invocations/{inv}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        ids(&call(&app, &a, "GET", "/v1/functions", None).await, "name"),
        ["secret-fn"]
    );
    let own_dead = call(&app, &a, "GET", &format!("/v1/admin/dlq/{inv}"), None).await;
    assert_status(&own_dead, 403, "forbidden", "a developer on the admin API");
    assert_eq!(app.get(&format!("/v1/admin/dlq/{inv}")).await.status, 200);

    // B can have its own function of the same name.
    let own = call(
        &app,
        &b,
        "POST",
        "/v1/functions",
        Some(create_body("secret-fn")),
    )
    .await;
    assert_eq!(own.status, 201);
    assert_eq!(
        call(&app, &a, "GET", "/v1/functions/secret-fn", None)
            .await
            .body["namespace"],
        "team-a"
    );

    // Only admins address another namespace, with X-Fnmesh-Namespace.
    let as_admin = app
        .http
        .get(app.url("/v1/functions"))
        .bearer_auth(&app.key)
        .header("x-fnmesh-namespace", "team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(as_admin.status(), 200);
    let body: Value = as_admin.json().await.unwrap();
    assert_eq!(body["items"][0]["namespace"], "team-a");
    let as_b = app
        .http
        .get(app.url("/v1/functions"))
        .bearer_auth(&b)
        .header("x-fnmesh-namespace", "team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(as_b.status(), 403);
    // A namespace in the body is not a field anyone sets.
    let mut smuggled = create_body("smuggled");
    smuggled["namespace"] = json!("team-a");
    let resp = call(&app, &b, "POST", "/v1/functions", Some(smuggled)).await;
    assert_status(&resp, 400, "invalid_json", "namespace in a function body");
}

#[tokio::test]
async fn a_key_limited_to_functions_sees_and_uses_only_those() {
    let app = TestApp::start().await;
    app.create_function("allowed").await;
    app.create_function("other").await;
    let (_, limited) = make_key(
        &app,
        json!({"name": "l", "role": "developer", "functions": ["allowed"]}),
    )
    .await;
    let other_inv = app
        .post_json("/v1/functions/other/invoke?async=true", &json!({}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(
        ids(
            &call(&app, &limited, "GET", "/v1/functions", None).await,
            "name"
        ),
        ["allowed"]
    );
    for (method, path) in [
        ("GET", "/v1/functions/other"),
        ("POST", "/v1/functions/other/invoke"),
        ("DELETE", "/v1/functions/other"),
        ("GET", "/v1/invocations?function=other"),
    ] {
        let resp = call(&app, &limited, method, path, Some(json!({}))).await;
        assert_status(&resp, 403, "forbidden", &format!("limited {method} {path}"));
    }
    let resp = call(
        &app,
        &limited,
        "GET",
        &format!("/v1/invocations/{other_inv}"),
        None,
    )
    .await;
    assert_status(
        &resp,
        404,
        "not_found",
        "an invocation of a function outside the grants",
    );
    assert!(ids(
        &call(&app, &limited, "GET", "/v1/invocations", None).await,
        "id"
    )
    .is_empty());
    let ok = call(
        &app,
        &limited,
        "POST",
        "/v1/functions/allowed/invoke?async=true",
        Some(json!({})),
    )
    .await;
    assert_eq!(ok.status, 202);
}

#[tokio::test]
async fn namespace_quotas_bound_deploys() {
    let app = TestApp::start().await;
    let put = app
        .put_json(
            "/v1/admin/namespaces/team-q",
            &json!({"max_functions": 2, "max_memory_mb": 256, "max_concurrency": 8}),
        )
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let bad = app
        .put_json("/v1/admin/namespaces/team-q", &json!({"max_functions": -1}))
        .await;
    assert_eq!(bad.status, 400);
    let dev = key(&app, "developer", "team-q").await;
    let body = |name: &str, memory: u32, concurrency: u32| {
        let mut b = create_body(name);
        b["config"] = json!({"memory_mb": memory, "max_concurrency": concurrency});
        b
    };
    let deploy = |b: Value| call(&app, &dev, "POST", "/v1/functions", Some(b));

    assert_status(
        &deploy(body("big", 512, 1)).await,
        403,
        "quota_exceeded",
        "memory over quota",
    );
    assert_eq!(deploy(body("one", 256, 5)).await.status, 201);
    assert_status(
        &deploy(body("two", 128, 4)).await,
        403,
        "quota_exceeded",
        "concurrency sum over quota",
    );
    assert_eq!(deploy(body("two", 128, 3)).await.status, 201);
    assert_status(
        &deploy(body("three", 64, 1)).await,
        403,
        "quota_exceeded",
        "too many functions",
    );
    let grow = call(
        &app,
        &dev,
        "PUT",
        "/v1/functions/one",
        Some(json!({"config": {"memory_mb": 1024}})),
    )
    .await;
    assert_status(&grow, 403, "quota_exceeded", "update over the memory quota");
    let shrink = call(
        &app,
        &dev,
        "PUT",
        "/v1/functions/one",
        Some(json!({"config": {"max_concurrency": 4}})),
    )
    .await;
    assert_eq!(
        shrink.status, 200,
        "an update within the quota: {:?}",
        shrink.body
    );

    let got = app.get("/v1/admin/namespaces/team-q").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["max_functions"], 2);
    assert_eq!(got.body["usage"]["functions"], 2);
    assert_eq!(got.body["usage"]["max_concurrency"], 7);
    let none = app.get("/v1/admin/namespaces/team-free").await;
    assert_eq!(none.body["max_functions"], Value::Null);
    let listed = app.get("/v1/admin/namespaces").await;
    assert_eq!(ids(&listed, "namespace"), ["team-q"]);
    // Other namespaces are not limited.
    app.create_function("unlimited").await;
}
