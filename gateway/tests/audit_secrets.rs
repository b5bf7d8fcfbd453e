//! Function secrets (sealed at rest and on the bus, names only in listings) and the audit log
//! (management calls and auth failures, with actor, outcome and source address).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, TestApp};
use fnmesh_core::secrets::Keyring;
use serde_json::{json, Value};

const SECRET: &str = "s3cr3t-value-7f3a9c";

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new("k1", &[42; 32]).unwrap())
}

async fn start() -> TestApp {
    TestApp::builder()
        .config(|c| {
            c.secrets_keyring = Some(keyring());
            // Authentication failures are summed over this window before they are stored.
            c.audit_failure_window = std::time::Duration::from_millis(50);
        })
        .start()
        .await
}

/// Every byte of the SQLite database (main file and write-ahead log).
fn database_bytes(app: &TestApp) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["fnmesh.db", "fnmesh.db-wal"] {
        if let Ok(b) = std::fs::read(app.dir.path().join(file)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Audit entries matching `query`, once at least `min` are there (the writer is async).
async fn audit(app: &TestApp, query: &str, min: usize) -> Vec<Value> {
    eventually(|| async {
        let r = app.get(&format!("/v1/admin/audit?{query}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let items = r.body["items"].as_array().unwrap().clone();
        (items.len() >= min).then_some(items)
    })
    .await
}

#[tokio::test]
async fn secrets_are_set_listed_by_name_and_deleted() {
    let app = start().await;
    app.create_function("sec").await;

    let put = app
        .put_json(
            "/v1/functions/sec/secrets/MY_SECRET",
            &json!({ "value": SECRET }),
        )
        .await;
    assert_eq!(put.status, 204, "{:?}", put.body);
    let again = app
        .put_json("/v1/functions/sec/secrets/OTHER", &json!({ "value": "x" }))
        .await;
    assert_eq!(again.status, 204);

    let list = app.get("/v1/functions/sec/secrets").await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["MY_SECRET", "OTHER"]);
    assert!(list.body["items"][0]["updated_at"].is_string());
    assert!(!list.body.to_string().contains(SECRET));

    for path in ["/v1/functions/sec", "/v1/functions/sec/versions"] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200);
        assert!(
            !r.body.to_string().contains(SECRET),
            "{path} shows the value"
        );
    }

    // Bad names, bad bodies, an absent function.
    for (key, code) in [
        ("my_secret", "invalid_name"),
        ("FNMESH_KEY", "invalid_name"),
        ("FUNCTION_NAME", "invalid_name"),
        ("A-B", "invalid_name"),
    ] {
        let r = app
            .put_json(
                &format!("/v1/functions/sec/secrets/{key}"),
                &json!({ "value": "v" }),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, code), "{key}");
    }
    let big = app
        .put_json(
            "/v1/functions/sec/secrets/BIG",
            &json!({ "value": "x".repeat(4097) }),
        )
        .await;
    assert_eq!(big.status, 400);
    let extra = app
        .put_json(
            "/v1/functions/sec/secrets/A",
            &json!({ "value": "v", "other": 1 }),
        )
        .await;
    assert_eq!((extra.status, extra.code()), (400, "invalid_json"));
    let absent = app
        .put_json("/v1/functions/nope/secrets/A", &json!({ "value": "v" }))
        .await;
    assert_eq!(absent.status, 404);

    // Stored sealed: the value is nowhere in the database file.
    assert!(!contains(&database_bytes(&app), SECRET));

    let del = app
        .send("DELETE", "/v1/functions/sec/secrets/OTHER", None)
        .await;
    assert_eq!(del.status, 204);
    let del = app
        .send("DELETE", "/v1/functions/sec/secrets/OTHER", None)
        .await;
    assert_eq!(del.status, 404);
}

#[tokio::test]
async fn a_gateway_without_a_keyring_refuses_to_store_secrets() {
    let app = TestApp::start().await;
    app.create_function("sec").await;
    let r = app
        .put_json("/v1/functions/sec/secrets/A", &json!({ "value": "v" }))
        .await;
    assert_eq!((r.status, r.code()), (503, "unavailable"));
}

#[tokio::test]
async fn invocations_carry_secrets_sealed_to_the_node() {
    let app = start().await;
    app.create_function("sec").await;
    let put = app
        .put_json(
            "/v1/functions/sec/secrets/MY_SECRET",
            &json!({ "value": SECRET }),
        )
        .await;
    assert_eq!(put.status, 204);

    let r = app
        .post_json("/v1/functions/sec/invoke?async=true", &json!({}))
        .await;
    assert_eq!(r.status, 202);
    let delivery = app
        .bus
        .pull_invocation(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let sealed = delivery.request.secrets.clone().expect("secrets carried");
    let wire = serde_json::to_string(&delivery.request).unwrap();
    assert!(!wire.contains(SECRET), "the bus message holds the value");
    assert!(!format!("{:?}", delivery.request).contains(SECRET));
    let f = &delivery.request.function;
    // Sealed for this version and code: they open as an invocation of it, not as the stored
    // form, and not for other code.
    let env = keyring().open_invocation_secrets(f, &sealed).unwrap();
    assert_eq!(env.iter().collect::<Vec<_>>(), vec![("MY_SECRET", SECRET)]);
    assert!(keyring()
        .open_secrets(&f.namespace, &f.name, &sealed)
        .is_err());
    let mut other_code = f.clone();
    other_code.code.checksum = fnmesh_core::Checksum::of(b"other code");
    assert!(keyring()
        .open_invocation_secrets(&other_code, &sealed)
        .is_err());

    // The stored request (for re-publishing) holds it sealed too.
    assert!(!contains(&database_bytes(&app), SECRET));
    let record = app
        .get(&format!("/v1/invocations/{}", delivery.request.id))
        .await;
    assert!(!record.body.to_string().contains(SECRET));
}

#[tokio::test]
async fn management_calls_and_auth_failures_are_audited() {
    let app = start().await;
    app.create_function("audited").await;
    let put = app
        .put_json(
            "/v1/functions/audited/secrets/MY_SECRET",
            &json!({ "value": SECRET }),
        )
        .await;
    assert_eq!(put.status, 204);

    // A mutating call: who, what, on what, how, from where.
    let created = audit(&app, "action=function.create", 1).await;
    let e = &created[0];
    assert_eq!(e["actor"], "bootstrap-admin", "{e}");
    assert_eq!(e["namespace"], "default");
    assert_eq!(e["target"], "function/audited");
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["status"], 201);
    assert_eq!(e["source"], "127.0.0.1");
    assert!(e["at"].is_string() && e["id"].is_string());

    let secret = audit(&app, "action=secret.put", 1).await;
    assert_eq!(secret[0]["target"], "secret/audited/MY_SECRET");

    // An unknown key: anonymous, denied, 401.
    let r = app
        .send_with_key("DELETE", "/v1/functions/audited", None, Some("fnm_wrong"))
        .await;
    assert_eq!(r.status, 401);
    let r = app.send_with_key("GET", "/v1/functions", None, None).await;
    assert_eq!(r.status, 401);
    let denied = audit(&app, "actor=anonymous&outcome=denied", 2).await;
    assert!(denied.iter().all(|e| e["status"] == 401), "{denied:?}");
    assert!(denied.iter().any(|e| e["action"] == "function.delete"
        && e["target"] == "function/audited"
        && e["namespace"].is_null()
        && e["source"] == "127.0.0.1"));

    // A key whose role may not: its id, denied, 403.
    let minted = app
        .post_json(
            "/v1/keys",
            &json!({ "name": "ci", "role": "invoker", "namespace": "default" }),
        )
        .await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let invoker_key = minted.body["key"].as_str().unwrap().to_owned();
    let invoker_id = minted.body["id"].as_str().unwrap().to_owned();
    let r = app
        .send_with_key("DELETE", "/v1/functions/audited", None, Some(&invoker_key))
        .await;
    assert_eq!(r.status, 403);
    let forbidden = audit(&app, &format!("actor={invoker_id}"), 1).await;
    assert_eq!(forbidden[0]["outcome"], "denied");
    assert_eq!(forbidden[0]["status"], 403);
    assert_eq!(forbidden[0]["action"], "function.delete");
    let r = app
        .send_with_key("GET", "/v1/admin/audit", None, Some(&invoker_key))
        .await;
    assert_eq!(r.status, 403, "the audit log is for admins");

    // Reads and invocations are not management actions.
    let r = app
        .post_json("/v1/functions/audited/invoke?async=true", &json!({}))
        .await;
    assert_eq!(r.status, 202);
    let all = audit(&app, "limit=1000", 1).await;
    assert!(
        all.iter().all(|e| e["action"] != "function.invoke"),
        "{all:?}"
    );
    assert!(
        all.iter()
            .all(|e| !(e["action"] == "function.read" && e["outcome"] == "ok")),
        "{all:?}"
    );

    // No secret value and no key anywhere in the log.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(SECRET));
    assert!(!text.contains(&app.key));
    assert!(!text.contains(&invoker_key));

    // Filters and their validation.
    let r = app.get("/v1/admin/audit?outcome=maybe").await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"));
    let r = app.get("/v1/admin/audit?since=yesterday").await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"));
    let later = app.get("/v1/admin/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(later.body["items"], json!([]));
    let page = app.get("/v1/admin/audit?limit=1").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert!(page.body["next_cursor"].is_string());
}
