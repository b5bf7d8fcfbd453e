//! Function CRUD, versions, validation, archive safety, body caps and auth, over real HTTP
//! against a real `fnmesh up`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fnmesh_tests::archive::{targz_of, zip_of, zip_with_symlink};
use fnmesh_tests::{b64, function_body, unique, TestApp, ADMIN_KEY};
use serde_json::json;

const PY: &str = "def handle(event, context):\n    return {'echo': event}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_versions_and_delete() {
    let app = TestApp::start().await;
    let name = unique("crud");
    let f = app
        .deploy_with(
            &name,
            "python3",
            "main.handle",
            &[("main.py", PY)],
            json!({"memory_mb": 256, "environment": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(f["version"], 1);
    assert_eq!(f["name"], name.as_str());
    assert_eq!(f["runtime"], "python3");
    assert_eq!(f["config"]["memory_mb"], 256);
    assert_eq!(f["config"]["timeout_ms"], 30000);
    assert_eq!(f["config"]["max_concurrency"], 10);
    assert_eq!(f["code"]["checksum"].as_str().unwrap().len(), 64);
    assert_eq!(f["code"]["source_type"], "inline");

    // Same name again: 409.
    let again = app
        .call(
            "POST",
            "/v1/functions",
            Some(function_body(
                &name,
                "python3",
                "main.handle",
                &[("main.py", PY)],
                json!({}),
            )),
        )
        .await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    assert_eq!(again.body["error"]["code"], "conflict");

    // Update: version 2.
    let mut update = function_body(
        &name,
        "python3",
        "main.handle",
        &[("main.py", "def handle(e, c):\n    return 2\n")],
        json!({}),
    );
    update.as_object_mut().unwrap().remove("name");
    let v2 = app
        .call("PUT", &format!("/v1/functions/{name}"), Some(update))
        .await;
    assert_eq!(v2.status, 200, "{:?}", v2.body);
    assert_eq!(v2.body["version"], 2);
    assert_eq!(v2.body["id"], f["id"]);
    assert_ne!(v2.body["code"]["checksum"], f["code"]["checksum"]);

    let got = app
        .call("GET", &format!("/v1/functions/{name}"), None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["version"], 2);
    let v1 = app
        .call("GET", &format!("/v1/functions/{name}?version=1"), None)
        .await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.body["version"], 1);
    assert_eq!(v1.body["config"]["memory_mb"], 256);

    let versions = app
        .call("GET", &format!("/v1/functions/{name}/versions"), None)
        .await;
    assert_eq!(versions.status, 200);
    let vs: Vec<u64> = versions.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, vec![1, 2]);

    // Invoking a specific version runs that version.
    let r1 = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?version=1"),
            Some(json!({"a": 1})),
        )
        .await;
    assert_eq!(r1.status, 200, "{:?}", r1.body);
    assert_eq!(r1.body["result"], json!({"echo": {"a": 1}}));
    assert_eq!(r1.body["version"], 1);
    let r2 = app.invoke_ok(&name, json!(null)).await;
    assert_eq!(r2["result"], json!(2));
    assert_eq!(r2["version"], 2);

    let del = app
        .call("DELETE", &format!("/v1/functions/{name}"), None)
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(
        app.call("GET", &format!("/v1/functions/{name}"), None)
            .await
            .status,
        404
    );
    let inv = app.invoke(&name, json!({})).await;
    assert_eq!(inv.status, 404);
    assert_eq!(inv.body["error"]["code"], "not_found");
    assert_eq!(
        app.call("DELETE", &format!("/v1/functions/{name}"), None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_with_cursor() {
    let app = TestApp::start().await;
    let mut names = Vec::new();
    for i in 0..5 {
        let name = format!("page-{i}");
        app.deploy(&name, "python3", "main.handle", &[("main.py", PY)])
            .await;
        names.push(name);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/functions?limit=2&cursor={c}"),
            None => "/v1/functions?limit=2".to_owned(),
        };
        let page = app.call("GET", &path, None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|f| f["name"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, names);
    let bad = app
        .call("GET", "/v1/functions?cursor=%21%21garbage", None)
        .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused_on_create_and_invoke() {
    let app = TestApp::start().await;
    let long = "a".repeat(64);
    for bad in [
        "a.b",
        "*",
        ">",
        "A",
        "a b",
        "a\tb",
        "",
        long.as_str(),
        "$JS",
    ] {
        let r = app
            .call(
                "POST",
                "/v1/functions",
                Some(function_body(
                    bad,
                    "python3",
                    "main.handle",
                    &[("main.py", PY)],
                    json!({}),
                )),
            )
            .await;
        assert_eq!(r.status, 400, "create {bad:?}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_name", "create {bad:?}");
        assert!(r.body["error"]["message"].as_str().is_some());

        if bad.is_empty() {
            continue; // an empty path segment is a different route
        }
        let encoded: String = bad
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        for mode in ["", "?async=true"] {
            let r = app
                .call(
                    "POST",
                    &format!("/v1/functions/{encoded}/invoke{mode}"),
                    Some(json!({})),
                )
                .await;
            assert_eq!(r.status, 400, "invoke {bad:?}{mode}: {:?}", r.body);
            assert_eq!(r.body["error"]["code"], "invalid_name", "invoke {bad:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_config_is_refused() {
    let app = TestApp::start().await;
    for config in [
        json!({"timeout_ms": 900001}),
        json!({"memory_mb": 32}),
        json!({"memory_mb": 8192}),
        json!({"max_concurrency": 0}),
        json!({"unknown_field": 1}),
    ] {
        let r = app
            .call(
                "POST",
                "/v1/functions",
                Some(function_body(
                    &unique("cfg"),
                    "python3",
                    "main.handle",
                    &[("main.py", PY)],
                    config.clone(),
                )),
            )
            .await;
        assert_eq!(r.status, 400, "{config}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_config", "{config}");
    }
    let r = app
        .call(
            "POST",
            "/v1/functions",
            Some(function_body(
                &unique("rt"),
                "cobol",
                "main.handle",
                &[("main.py", PY)],
                json!({}),
            )),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "invalid_runtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_code_is_refused_and_nothing_escapes() {
    let app = TestApp::start().await;
    let outside = tempfile::tempdir().unwrap();
    let escape_target = outside.path().join("pwned");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "zip slip",
            zip_of(&[
                ("main.py", PY.as_bytes(), 0o644),
                ("../../../../../../tmp/fnmesh-zip-slip", b"x", 0o644),
            ]),
        ),
        (
            "absolute path",
            zip_of(&[
                ("main.py", PY.as_bytes(), 0o644),
                ("/tmp/fnmesh-abs-path", b"x", 0o644),
            ]),
        ),
        (
            "escaping symlink",
            zip_with_symlink("link", escape_target.to_str().unwrap()),
        ),
        (
            "relative escaping symlink",
            zip_with_symlink("link", "../../../../../../etc/passwd"),
        ),
        ("broken zip", {
            let mut z = zip_of(&[("main.py", PY.as_bytes(), 0o644)]);
            z.truncate(z.len() / 2);
            z
        }),
        ("broken tar.gz", {
            let mut t = targz_of(&[("main.py", PY.as_bytes())]);
            t.truncate(t.len() / 2);
            t
        }),
        ("tar slip", targz_of_raw_path("../../escape.py")),
    ];
    for (what, bytes) in cases {
        let body = json!({
            "name": unique("bad"), "runtime": "python3", "handler": "main.handle",
            "code": {"source": b64(&bytes), "source_type": "inline"},
        });
        let r = app.call("POST", "/v1/functions", Some(body)).await;
        assert_eq!(r.status, 400, "{what}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_archive", "{what}");
    }
    assert!(!std::path::Path::new("/tmp/fnmesh-zip-slip").exists());
    assert!(!std::path::Path::new("/tmp/fnmesh-abs-path").exists());
    assert!(!escape_target.exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    let r = app
        .call(
            "POST",
            "/v1/functions",
            Some(json!({
                "name": unique("b64"), "runtime": "python3", "handler": "main.handle",
                "code": {"source": "!!!not base64!!!", "source_type": "inline"},
            })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "invalid_base64");

    let r = app
        .call_with(
            "POST",
            "/v1/functions",
            Some(b"{not json".to_vec()),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "invalid_json");
}

fn targz_of_raw_path(path: &str) -> Vec<u8> {
    // tar::Builder refuses `..`, so write the header name bytes directly.
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(enc);
    let content = PY.as_bytes();
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, content).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413() {
    let app = TestApp::start_with(&[("FNMESH_MAX_BODY_BYTES", "1048576")]).await;
    let name = unique("big");
    app.deploy(&name, "python3", "main.handle", &[("main.py", PY)])
        .await;
    let big = vec![b' '; 1024 * 1024 + 10];
    let r = app
        .call_with(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(big.clone()),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "payload_too_large");
    // Chunked, without Content-Length: refused while reading too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let resp = app
        .http
        .post(format!("{}/v1/functions/{name}/invoke", app.base_url))
        .bearer_auth(ADMIN_KEY)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_key_is_401_and_health_needs_none() {
    let app = TestApp::start().await;
    for path in ["/v1/functions", "/v1/invocations"] {
        let r = app.call_with("GET", path, None, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.body["error"]["code"], "unauthorized");
        let r = app
            .call_with("GET", path, None, Some("wrong-key-wrong-key"))
            .await;
        assert_eq!(r.status, 401, "{path}");
    }
    let r = app
        .call_with("POST", "/v1/functions/x/invoke", Some(b"{}".to_vec()), None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        app.call_with("GET", "/healthz", None, None).await.status,
        200
    );
    assert_eq!(
        app.call_with("GET", "/readyz", None, None).await.status,
        200
    );
    let r = app.call_with("GET", "/nope", None, Some(ADMIN_KEY)).await;
    assert_eq!(r.status, 404);
    assert!(r.body["error"]["code"].is_string());
    // The key never shows up in the log.
    assert!(!app.log().contains(ADMIN_KEY));
}
