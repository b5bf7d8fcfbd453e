//! The OpenAPI document of a real `fnmesh up`: served at `GET /v1/openapi.json` without auth,
//! OpenAPI 3.1, naming every route; then schemathesis (PyPI: `pip install schemathesis`)
//! fuzzes the live API from it with a bounded number of examples per operation: no answer
//! is a 500, every error answer is `{"error":{"code","message"}}` (the check in
//! `tests/schemathesis/hooks.py`), and every answer matches the schema documented for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use fnmesh_tests::{TestApp, ADMIN_KEY};
use serde_json::Value;

/// Every route the gateway serves, as the document must name it (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/functions"),
    ("get", "/v1/functions"),
    ("get", "/v1/functions/{name}"),
    ("put", "/v1/functions/{name}"),
    ("delete", "/v1/functions/{name}"),
    ("get", "/v1/functions/{name}/versions"),
    ("get", "/v1/functions/{name}/logs"),
    ("post", "/v1/functions/{name}/invoke"),
    ("get", "/v1/functions/{name}/aliases"),
    ("get", "/v1/functions/{name}/aliases/{alias}"),
    ("put", "/v1/functions/{name}/aliases/{alias}"),
    ("delete", "/v1/functions/{name}/aliases/{alias}"),
    ("post", "/v1/functions/{name}/aliases/{alias}/rollback"),
    ("get", "/v1/functions/{name}/secrets"),
    ("put", "/v1/functions/{name}/secrets/{key}"),
    ("delete", "/v1/functions/{name}/secrets/{key}"),
    ("get", "/v1/registries"),
    ("put", "/v1/registries/{host}"),
    ("delete", "/v1/registries/{host}"),
    ("get", "/v1/invocations"),
    ("get", "/v1/invocations/{id}"),
    ("get", "/v1/invocations/{id}/logs"),
    ("post", "/v1/invocations/{id}/cancel"),
    ("post", "/v1/auth/token"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/revoke"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{id}"),
    ("get", "/v1/admin/dlq"),
    ("get", "/v1/admin/dlq/{id}"),
    ("post", "/v1/admin/dlq/{id}/replay"),
    ("delete", "/v1/admin/dlq/{id}"),
    ("get", "/v1/admin/audit"),
    ("get", "/v1/admin/queues"),
    ("get", "/v1/admin/nodes"),
    ("get", "/v1/admin/regions"),
    ("get", "/v1/admin/namespaces"),
    ("get", "/v1/admin/namespaces/{ns}"),
    ("put", "/v1/admin/namespaces/{ns}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_every_route_and_the_live_api_keeps_to_it() {
    let app = TestApp::start().await;

    // No auth needed for the document.
    let r = app
        .http
        .get(format!("{}/v1/openapi.json", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = 0;
    for (method, path) in ROUTES {
        let operation = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the document"))[*method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        documented += 1;
        // Every operation names its answers, errors with the one error shape.
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}: {response}"
                );
            }
        }
    }
    let operations: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(
        operations,
        documented,
        "the document has operations this test does not know: {:?}",
        paths.keys()
    );
    // Only health, the document and the refresh-token routes are open.
    for (method, path) in ROUTES {
        let open = paths[*path][*method]["security"] == serde_json::json!([{}]);
        let should = matches!(
            *path,
            "/healthz" | "/readyz" | "/v1/openapi.json" | "/v1/auth/refresh" | "/v1/auth/revoke"
        );
        assert_eq!(open, should, "{method} {path}: security");
    }

    // Fuzz the live API from the document.
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis/hooks.py");
    let report = tempfile::tempdir().unwrap();
    let examples = std::env::var("FNMESH_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let out = Command::new("schemathesis")
        .current_dir(report.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", hooks.parent().unwrap().to_str().unwrap())
        .args([
            "run",
            &format!("{}/v1/openapi.json", app.base_url),
            "--checks",
            "not_a_server_error,error_body_shape,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--seed",
            "1",
            // One worker: with two, hypothesis describes its strategies' lambdas from two
            // threads at once and CPython 3.11's `ast` can fail there ("AST constructor
            // recursion depth mismatch", a tool error, not an answer of ours).
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
            "--header",
            &format!("Authorization: Bearer {ADMIN_KEY}"),
            // A following log stream never ends by design.
            "--exclude-path",
            "/v1/functions/{name}/logs",
            // Revoking keys listed by `GET /v1/keys` revokes the fuzzer's own key (and every
            // key below it): every later request would be a 401.
            "--exclude-path",
            "/v1/keys/{id}",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "schemathesis could not be run ({e}): install it with `pip install schemathesis` \
                 (scripts/setup-debian.sh --test does)"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found answers that break the contract:\n{stdout}\n{stderr}\n--- fnmesh up ---\n{}",
        app.log()
    );
    // Its key stayed valid, so the operations were reached past auth.
    assert!(
        !stdout.contains("Authentication failed"),
        "the fuzzer's requests were refused as unauthenticated:\n{stdout}"
    );
    // It ran the operations (not zero of them).
    assert!(
        stdout.contains("passed") || stdout.contains("Passed"),
        "no operations were tested:\n{stdout}"
    );
}
