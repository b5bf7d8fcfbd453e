//! Function management over the real routes and embedded backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{b64, create_body, invalid_names, zip_of, TestApp};
use serde_json::json;

#[tokio::test]
async fn create_get_list_update_versions_delete() {
    let app = TestApp::start().await;
    let created = app.create_function("hello").await;
    assert_eq!(created["name"], "hello");
    assert_eq!(created["version"], 1);
    assert_eq!(created["namespace"], "default");
    assert_eq!(created["runtime"], "python3");
    assert_eq!(created["config"]["timeout_ms"], 5000);
    assert_eq!(created["config"]["memory_mb"], 128);
    assert_eq!(created["metadata"]["team"], "tests");
    assert_eq!(created["code"]["source_type"], "inline");
    let checksum = created["code"]["checksum"].as_str().unwrap().to_owned();
    assert!(app
        .code
        .exists(&fnmesh_core::Checksum::parse(&checksum).unwrap())
        .await
        .unwrap());

    let got = app.get("/v1/functions/hello").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created);

    let again = app.post_json("/v1/functions", &create_body("hello")).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "conflict");

    // Update: config merged, metadata kept, code kept.
    let updated = app
        .put_json(
            "/v1/functions/hello",
            &json!({"config": {"memory_mb": 256}}),
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.body["config"]["memory_mb"], 256);
    assert_eq!(updated.body["config"]["timeout_ms"], 5000);
    assert_eq!(updated.body["metadata"]["team"], "tests");
    assert_eq!(updated.body["code"]["checksum"], checksum.as_str());
    assert_eq!(updated.body["id"], created["id"]);
    assert_eq!(updated.body["created_at"], created["created_at"]);

    // New code.
    let code = zip_of(&[("app.py", b"def run(e, c):\n    return 1\n")]);
    let updated = app
        .put_json(
            "/v1/functions/hello",
            &json!({"handler": "app.run", "code": {"source": b64(&code)}}),
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["version"], 3);
    assert_ne!(updated.body["code"]["checksum"], checksum.as_str());

    // A handler whose file is not in the kept code is refused.
    let bad = app
        .put_json("/v1/functions/hello", &json!({"handler": "nope.run"}))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.code(), "invalid_handler");

    let latest = app.get("/v1/functions/hello").await;
    assert_eq!(latest.body["version"], 3);
    let v1 = app.get("/v1/functions/hello?version=1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.body["version"], 1);
    assert_eq!(app.get("/v1/functions/hello?version=9").await.status, 404);
    let bad_query = app.get("/v1/functions/hello?version=x").await;
    assert_eq!(bad_query.status, 400);
    assert_eq!(bad_query.code(), "invalid_query");

    let versions = app.get("/v1/functions/hello/versions").await;
    assert_eq!(versions.status, 200);
    let items = versions.body["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|f| f["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    let deleted = app.send("DELETE", "/v1/functions/hello", None).await;
    assert_eq!(deleted.status, 204);
    for path in ["/v1/functions/hello", "/v1/functions/hello/versions"] {
        let gone = app.get(path).await;
        assert_eq!(gone.status, 404, "{path}");
        assert_eq!(gone.code(), "not_found");
    }
    assert_eq!(
        app.send("DELETE", "/v1/functions/hello", None).await.status,
        404
    );
    let upd = app
        .put_json("/v1/functions/hello", &json!({"config": {}}))
        .await;
    assert_eq!(upd.status, 404);
}

#[tokio::test]
async fn list_pages_through_functions() {
    let app = TestApp::start().await;
    for name in ["c-fn", "a-fn", "b-fn"] {
        app.create_function(name).await;
    }
    let first = app.get("/v1/functions?limit=2").await;
    assert_eq!(first.status, 200);
    let names: Vec<_> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["a-fn", "b-fn"]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = app
        .get(&format!("/v1/functions?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second.body["items"][0]["name"], "c-fn");
    assert!(second.body["next_cursor"].is_null());
    let bad = app.get("/v1/functions?limit=0").await;
    assert_eq!(bad.code(), "invalid_query");
}

#[tokio::test]
async fn every_invalid_name_is_refused_on_create_and_in_paths() {
    let app = TestApp::start().await;
    for (name, encoded) in invalid_names() {
        let resp = app.post_json("/v1/functions", &create_body(&name)).await;
        assert_eq!(resp.status, 400, "create {name:?}");
        assert_eq!(resp.code(), "invalid_name", "create {name:?}");
        if encoded.is_empty() {
            continue; // `/v1/functions/` is the collection, checked via invoke.
        }
        let path = format!("/v1/functions/{encoded}");
        for (method, body) in [
            ("GET", None),
            ("DELETE", None),
            ("PUT", Some(b"{}".to_vec())),
        ] {
            let resp = app.send(method, &path, body).await;
            assert_eq!(resp.status, 400, "{method} {path}");
            assert_eq!(resp.code(), "invalid_name", "{method} {path}");
        }
        let resp = app.get(&format!("{path}/versions")).await;
        assert_eq!(resp.code(), "invalid_name", "versions {path}");
    }
}

#[tokio::test]
async fn invalid_fields_have_their_own_codes() {
    let app = TestApp::start().await;
    let mut body = create_body("f");
    body["runtime"] = json!("cobol");
    assert_eq!(
        app.post_json("/v1/functions", &body).await.code(),
        "invalid_runtime"
    );

    let mut body = create_body("f");
    body["handler"] = json!("main");
    assert_eq!(
        app.post_json("/v1/functions", &body).await.code(),
        "invalid_handler"
    );

    for config in [
        json!({"memory_mb": 1}),
        json!({"timeout_ms": 0}),
        json!({"nope": 1}),
        json!({"environment": {"FNMESH_X": "1"}}),
        json!(7),
    ] {
        let mut body = create_body("f");
        body["config"] = config.clone();
        let resp = app.post_json("/v1/functions", &body).await;
        assert_eq!(resp.status, 400, "{config}");
        assert_eq!(resp.code(), "invalid_config", "{config}");
    }

    let mut body = create_body("f");
    body["code"]["source"] = json!("%%% not base64 %%%");
    let resp = app.post_json("/v1/functions", &body).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.code(), "invalid_base64");

    for raw in [&b"{not json"[..], b"", b"[]", br#"{"name":"f"}"#] {
        let resp = app.send("POST", "/v1/functions", Some(raw.to_vec())).await;
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(raw));
        assert_eq!(resp.code(), "invalid_json");
    }
    let mut body = create_body("f");
    body["extra"] = json!(1);
    assert_eq!(
        app.post_json("/v1/functions", &body).await.code(),
        "invalid_json"
    );
    // Nothing was created by any of these.
    assert_eq!(app.get("/v1/functions/f").await.status, 404);
}

#[tokio::test]
async fn broken_archives_are_invalid() {
    let app = TestApp::start().await;
    let zip = zip_of(&[("main.py", b"def handle(e, c):\n    return e\n")]);
    let truncated = zip[..zip.len() / 2].to_vec();
    let bad_gzip = vec![0x1f, 0x8b, 0, 1, 2, 3, 4];
    let without_handler = zip_of(&[("other.py", b"x")]);
    for source in [truncated, bad_gzip, without_handler] {
        let mut body = create_body("f");
        body["code"]["source"] = json!(b64(&source));
        let resp = app.post_json("/v1/functions", &body).await;
        assert_eq!(resp.status, 400, "{:?}", resp.body);
        assert_eq!(resp.code(), "invalid_archive");
    }
}

#[tokio::test]
async fn single_file_code_is_stored_under_the_handler() {
    let app = TestApp::start().await;
    let body = json!({
        "name": "exec-fn",
        "runtime": "exec",
        "handler": "bin/run",
        "code": {"source": b64(b"#!/bin/sh\ncat\n")}
    });
    let resp = app.post_json("/v1/functions", &body).await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    let checksum =
        fnmesh_core::Checksum::parse(resp.body["code"]["checksum"].as_str().unwrap()).unwrap();
    let tar = app.code.get(&checksum).await.unwrap().unwrap();
    assert!(fnmesh_core::archive::contains_file(&tar, "bin/run").unwrap());
}

fn snapshot(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn hostile_archives_are_refused_and_write_nothing_outside() {
    let app = TestApp::start().await;
    let outside = tempfile::tempdir().unwrap();
    let before_app = snapshot(app.dir.path());
    let escape_name = format!("fnmesh-test-evil-{}", uuid::Uuid::now_v7());
    let tmp_target = std::env::temp_dir().join(&escape_name);
    let abs_target = outside.path().join("evil");

    let dotdot = zip_of(&[("main.py", b"x"), (&format!("../{escape_name}"), b"pwned")]);
    let absolute = zip_of(&[("main.py", b"x"), (abs_target.to_str().unwrap(), b"pwned")]);
    let symlink = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("main.py", opts).unwrap();
        w.write_all(b"x").unwrap();
        w.add_symlink("escape", outside.path().to_str().unwrap(), opts)
            .unwrap();
        w.start_file("escape/evil", opts).unwrap();
        w.write_all(b"pwned").unwrap();
        w.finish().unwrap().into_inner()
    };
    for (what, source) in [
        ("dotdot", dotdot),
        ("absolute", absolute),
        ("symlink", symlink),
    ] {
        let mut body = create_body("f");
        body["code"]["source"] = json!(b64(&source));
        let resp = app.post_json("/v1/functions", &body).await;
        assert_eq!(resp.status, 400, "{what}: {:?}", resp.body);
        assert_eq!(resp.code(), "invalid_archive", "{what}");
    }
    assert!(!tmp_target.exists());
    assert!(!abs_target.exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // No code was stored for any of them.
    assert_eq!(
        snapshot(app.dir.path())
            .into_iter()
            .filter(|p| !p.contains("fnmesh.db"))
            .collect::<Vec<_>>(),
        before_app
            .into_iter()
            .filter(|p| !p.contains("fnmesh.db"))
            .collect::<Vec<_>>()
    );
}
