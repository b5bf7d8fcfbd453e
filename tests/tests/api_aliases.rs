//! Aliases through a real `fnmesh up`: pointing, weighted splits, rollback, the record naming
//! the alias and the version that ran, warm sandboxes kept across a swap, errors, the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use fnmesh_tests::{unique, TestApp};
use serde_json::{json, Value};

/// Deploys a python function that returns the version it runs as, then adds versions up to
/// `versions` (each a config change).
async fn versioned(app: &TestApp, versions: u32) -> String {
    let name = unique("aliased");
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    return context.function_version\n",
        )],
    )
    .await;
    for v in 2..=versions {
        let r = app
            .call(
                "PUT",
                &format!("/v1/functions/{name}"),
                Some(json!({ "metadata": { "v": v.to_string() } })),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["version"], v);
    }
    name
}

async fn put_alias(app: &TestApp, name: &str, alias: &str, target: Value) -> (u16, Value) {
    let r = app
        .call(
            "PUT",
            &format!("/v1/functions/{name}/aliases/{alias}"),
            Some(target),
        )
        .await;
    (r.status, r.body)
}

async fn invoke_alias(app: &TestApp, name: &str, alias: &str) -> Value {
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?alias={alias}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, app.log());
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_points_splits_and_rolls_back_and_the_record_names_it() {
    let app = TestApp::start().await;
    let name = versioned(&app, 3).await;

    let (status, alias) = put_alias(&app, &name, "prod", json!({ "version": 1 })).await;
    assert_eq!(status, 200, "{alias}");
    assert_eq!(alias["name"], "prod");
    assert_eq!(alias["version"], 1);
    assert_eq!(alias["versions"], json!({ "1": 100 }));
    assert_eq!(alias["previous"], Value::Null);
    assert_eq!(alias["revision"], 1);

    // The record names the alias and the version it picked, sync and async.
    let r = invoke_alias(&app, &name, "prod").await;
    assert_eq!(
        (r["result"].clone(), r["version"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(r["alias"], "prod");
    let id = r["id"].as_str().unwrap();
    let stored = app
        .call("GET", &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(stored.body["alias"], "prod", "{:?}", stored.body);
    let queued = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?alias=prod&async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(queued.status, 202);
    let done = app
        .wait_terminal(queued.body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(
        (done["alias"].clone(), done["version"].clone()),
        (json!("prod"), json!(1))
    );
    // Invoking without the alias still runs the latest, and names no alias.
    let latest = app.invoke_ok(&name, json!({})).await;
    assert_eq!(latest["version"], 3);
    assert!(latest.get("alias").is_none(), "{latest}");

    // A 50/50 canary: both versions run, every record names the alias.
    let (status, alias) = put_alias(
        &app,
        &name,
        "prod",
        json!({ "versions": { "2": 50, "3": 50 } }),
    )
    .await;
    assert_eq!(status, 200, "{alias}");
    assert_eq!(alias["versions"], json!({ "2": 50, "3": 50 }));
    assert!(alias.get("version").is_none(), "{alias}");
    assert_eq!(alias["previous"], json!({ "1": 100 }));
    assert_eq!(alias["revision"], 2);
    let mut ran: BTreeMap<u64, u32> = BTreeMap::new();
    for _ in 0..40 {
        let r = invoke_alias(&app, &name, "prod").await;
        assert_eq!(r["alias"], "prod");
        assert_eq!(r["result"], r["version"]);
        *ran.entry(r["version"].as_u64().unwrap()).or_default() += 1;
    }
    // P(one side never picked in 40 fair draws) = 2 × 2^-40.
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), [2, 3], "{ran:?}");

    // Rollback returns it to version 1; a second rollback steps forward to the split.
    let back = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/aliases/prod/rollback"),
            None,
        )
        .await;
    assert_eq!(back.status, 200, "{:?}", back.body);
    assert_eq!(back.body["version"], 1);
    assert_eq!(back.body["previous"], json!({ "2": 50, "3": 50 }));
    let r = invoke_alias(&app, &name, "prod").await;
    assert_eq!(
        r["version"], 1,
        "a rollback takes effect at once on its gateway"
    );
    let forward = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/aliases/prod/rollback"),
            None,
        )
        .await;
    assert_eq!(forward.body["versions"], json!({ "2": 50, "3": 50 }));

    // Listing and deleting.
    let (status, _) = put_alias(&app, &name, "canary", json!({ "version": 3 })).await;
    assert_eq!(status, 200);
    let list = app
        .call("GET", &format!("/v1/functions/{name}/aliases"), None)
        .await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["canary", "prod"]);
    let one = app
        .call("GET", &format!("/v1/functions/{name}/aliases/canary"), None)
        .await;
    assert_eq!(one.body["version"], 3);
    let deleted = app
        .call(
            "DELETE",
            &format!("/v1/functions/{name}/aliases/canary"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    let again = app
        .call(
            "DELETE",
            &format!("/v1/functions/{name}/aliases/canary"),
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    let gone = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?alias=canary"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        gone.status, 404,
        "a deleted alias is gone at once: {:?}",
        gone.body
    );

    // Changing aliases is audited.
    let audit = app.call("GET", "/v1/admin/audit?limit=100", None).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["alias.put", "alias.rollback", "alias.delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_errors_are_clear() {
    let app = TestApp::start().await;
    let name = versioned(&app, 2).await;
    let cases = [
        (
            json!({ "versions": { "1": 50, "2": 40 } }),
            400,
            "invalid_config",
        ),
        (
            json!({ "versions": { "1": 100, "2": 0 } }),
            400,
            "invalid_config",
        ),
        (json!({ "versions": {} }), 400, "invalid_config"),
        (json!({ "version": 0 }), 400, "invalid_config"),
        (
            json!({ "version": 1, "versions": { "1": 100 } }),
            400,
            "invalid_json",
        ),
        (json!({}), 400, "invalid_json"),
        (json!({ "version": 1, "extra": true }), 400, "invalid_json"),
        (json!({ "version": 9 }), 404, "not_found"),
    ];
    for (body, status, code) in cases {
        let (got, err) = put_alias(&app, &name, "prod", body.clone()).await;
        assert_eq!(
            (got, err["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
    }
    let (status, err) = put_alias(&app, &name, "Prod", json!({ "version": 1 })).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_name"))
    );
    let (status, err) = put_alias(&app, "no-such-fn", "prod", json!({ "version": 1 })).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let (status, _) = put_alias(&app, &name, "prod", json!({ "version": 1 })).await;
    assert_eq!(status, 200);
    let rollback = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/aliases/prod/rollback"),
            None,
        )
        .await;
    assert_eq!(
        rollback.status, 409,
        "nothing to roll back to: {:?}",
        rollback.body
    );
    assert_eq!(rollback.body["error"]["code"], "conflict");
    let absent = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/aliases/nope/rollback"),
            None,
        )
        .await;
    assert_eq!(absent.status, 404);

    for (query, status, code) in [
        ("alias=nope", 404, "not_found"),
        ("alias=prod&version=1", 400, "invalid_query"),
        ("alias=Bad.Name", 400, "invalid_name"),
    ] {
        let r = app
            .call(
                "POST",
                &format!("/v1/functions/{name}/invoke?{query}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{query}"
        );
    }

    // Deleting the function deletes its aliases: made again, it has none.
    let deleted = app
        .call("DELETE", &format!("/v1/functions/{name}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    let name2 = name.clone();
    app.deploy(
        &name2,
        "python3",
        "main.handle",
        &[("main.py", "def handle(e, c):\n    return 0\n")],
    )
    .await;
    let list = app
        .call("GET", &format!("/v1/functions/{name}/aliases"), None)
        .await;
    assert_eq!(list.body["items"], json!([]));
    let missing = app
        .call("GET", "/v1/functions/no-such-fn/aliases", None)
        .await;
    assert_eq!(missing.status, 404);
}

/// Swapping an alias away and back finds the first version's sandbox still warm: an alias
/// change destroys nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_sandboxes_survive_an_alias_swap() {
    let app = TestApp::start().await;
    let name = versioned(&app, 2).await;
    put_alias(&app, &name, "prod", json!({ "version": 1 })).await;
    let first = invoke_alias(&app, &name, "prod").await;
    assert_eq!(first["version"], 1);
    put_alias(&app, &name, "prod", json!({ "version": 2 })).await;
    let second = invoke_alias(&app, &name, "prod").await;
    assert_eq!(second["version"], 2);
    let back = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/aliases/prod/rollback"),
            None,
        )
        .await;
    assert_eq!(back.body["version"], 1);
    let again = invoke_alias(&app, &name, "prod").await;
    assert_eq!(again["version"], 1);
    assert_eq!(
        again["metrics"]["cold_start"], false,
        "version 1's sandbox was kept warm across the swap: {again}"
    );
}

/// `fnmesh fn alias set|list|rollback` and `fnmesh invoke --alias`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_and_invokes_aliases() {
    let app = TestApp::start().await;
    let name = versioned(&app, 3).await;
    let cli = |args: &[&str]| {
        let run = fnmesh_tests::run_cli(&app.base_url, args, "");
        assert!(run.ok, "{args:?}: {}", run.stderr);
        run.stdout
    };
    cli(&["fn", "alias", "set", &name, "prod", "--version", "2"]);
    let out = cli(&["invoke", &name, "--alias", "prod", "--json"]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (record["version"].clone(), record["alias"].clone()),
        (json!(2), json!("prod"))
    );
    let out = cli(&[
        "fn",
        "alias",
        "set",
        &name,
        "prod",
        "--split",
        "2=90,3=10",
        "--json",
    ]);
    let alias: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(alias["versions"], json!({ "2": 90, "3": 10 }));
    let out = cli(&["fn", "alias", "rollback", &name, "prod", "--json"]);
    let alias: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(alias["version"], 2);
    let out = cli(&["fn", "alias", "list", &name]);
    assert!(out.contains("prod"), "{out}");
    let refused = fnmesh_tests::run_cli(
        &app.base_url,
        &["fn", "alias", "set", &name, "prod", "--split", "2=90,3=20"],
        "",
    );
    assert!(!refused.ok);
    assert!(refused.stderr.contains("100"), "{}", refused.stderr);
}
