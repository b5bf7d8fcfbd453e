//! Image functions through the mesh (issue #15): a gateway and a node as separate processes
//! over NATS in operator mode, the node pulling from a real registry (`docker-registry`) or
//! reading an uploaded image from the code store over NATS, and pulling the images of the
//! functions placed in its region ahead of their first invocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::b64;
use fnmesh_tests::images::{busybox_layout, layout_tar};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::servers::registry::{RegistryServer, PRIVATE_PASSWORD, PRIVATE_USER};
use serde_json::json;

const HANDLER: &[u8] = br#"#!/bin/sh
payload=$(cat)
if test -e /usr/bin/python3; then host=true; else host=false; fi
printf '{"payload":%s,"release":"%s","greeting":"%s","host_usr":%s}' \
  "$payload" "$(cat /etc/image-release)" "$GREETING" "$host"
"#;

const CGI: &[u8] = br#"#!/bin/sh
body=$(head -c "$CONTENT_LENGTH")
printf 'Content-Type: application/json\r\n\r\n'
printf '{"served":%s,"release":"%s"}' "$body" "$(cat /etc/image-release)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_http_and_uploaded_images_run_on_a_mesh_node() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exec_digest = busybox_layout(
        &dir.path().join("exec"),
        "1",
        &[
            ("srv/handler", 0o755, HANDLER),
            ("etc/image-release", 0o644, b"exec image"),
        ],
        json!({"Entrypoint": ["/srv/handler"], "Env": ["GREETING=from the registry", "PATH=/bin"]}),
    );
    registry.push(&dir.path().join("exec"), "1", "mesh/exec");
    busybox_layout(
        &dir.path().join("http"),
        "1",
        &[
            ("www/cgi-bin/index.cgi", 0o755, CGI),
            ("etc/image-release", 0o644, b"http image"),
        ],
        json!({"Cmd": ["/bin/sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT -h /www"], "Env": ["PATH=/bin"]}),
    );
    registry.push(&dir.path().join("http"), "1", "mesh/http");
    busybox_layout(
        &dir.path().join("upload"),
        "1",
        &[
            ("srv/handler", 0o755, HANDLER),
            ("etc/image-release", 0o644, b"uploaded image"),
        ],
        json!({"Entrypoint": ["/srv/handler"], "Env": ["GREETING=from an archive", "PATH=/bin"]}),
    );

    let mesh = Mesh::start_with_accounts(
        &["n1"],
        &[("FNMESH_INSECURE_REGISTRIES", registry.host.as_str())],
    )
    .await;
    mesh.deploy(json!({
        "name": "exec-img",
        "runtime": "image",
        "image": format!("{}/mesh/exec:1", registry.host),
    }))
    .await;
    mesh.deploy(json!({
        "name": "http-img",
        "runtime": "image",
        "image": format!("{}/mesh/http:1", registry.host),
        "mode": "http",
    }))
    .await;
    mesh.deploy(json!({
        "name": "upload-img",
        "runtime": "image",
        "code": {"source": b64(&layout_tar(&dir.path().join("upload")))},
    }))
    .await;

    let sync = mesh
        .call(
            "POST",
            "/v1/functions/exec-img/invoke",
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(sync.status, 200, "{:?}\n{}", sync.body, mesh.logs());
    assert_eq!(sync.body["status"], "succeeded", "{:?}", sync.body);
    assert_eq!(sync.body["result"]["release"], "exec image");
    assert_eq!(sync.body["result"]["greeting"], "from the registry");
    assert_eq!(sync.body["result"]["host_usr"], false);
    assert_eq!(sync.body["result"]["payload"], json!({"n": 1}));
    assert_eq!(sync.body["version"], 1);

    let id = mesh.invoke_async("http-img", json!({"n": 2})).await;
    let done = mesh.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", mesh.logs());
    assert_eq!(
        done["result"],
        json!({"served": {"n": 2}, "release": "http image"})
    );

    let uploaded = mesh
        .call(
            "POST",
            "/v1/functions/upload-img/invoke",
            Some(json!("offline")),
        )
        .await;
    assert_eq!(uploaded.status, 200, "{:?}\n{}", uploaded.body, mesh.logs());
    assert_eq!(uploaded.body["result"]["release"], "uploaded image");
    assert_eq!(uploaded.body["result"]["greeting"], "from an archive");

    let function = mesh.call("GET", "/v1/functions/exec-img", None).await;
    assert_eq!(function.body["image"]["digest"], json!(exec_digest));

    // The node lists the images in its cache (in use: their sandboxes are warm) and says it
    // runs images.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = mesh.call("GET", "/v1/admin/nodes", None).await;
        let images = nodes.body["items"][0]["images"].clone();
        let listed = images.as_array().map_or(0, Vec::len);
        let exec = images.as_array().and_then(|all| {
            all.iter()
                .find(|i| i["digest"] == json!(exec_digest))
                .cloned()
        });
        if listed == 3 {
            let runtimes = &nodes.body["items"][0]["runtimes"];
            assert!(
                runtimes.as_array().unwrap().contains(&json!("image")),
                "the node says it runs images: {:?}",
                nodes.body
            );
            let exec = exec.expect("the exec image is listed");
            assert!(exec["bytes"].as_u64().unwrap() > 1 << 20, "{exec}");
            assert_eq!(exec["in_use"], 1, "its warm sandbox holds it: {exec}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cached images not listed: {:?}",
            nodes.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A mesh node (operator-mode NATS: node credentials) pulls the image of a function placed in
/// its region from a private registry before its first invocation, with the namespace's
/// credential read sealed from the region's catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mesh_node_pulls_images_ahead_with_the_catalog_s_credentials() {
    let registry = RegistryServer::start_private();
    let dir = tempfile::tempdir().unwrap();
    let digest = busybox_layout(
        &dir.path().join("private"),
        "1",
        &[
            ("srv/handler", 0o755, HANDLER),
            ("etc/image-release", 0o644, b"private image"),
        ],
        json!({"Entrypoint": ["/srv/handler"], "Env": ["GREETING=ahead of time", "PATH=/bin"]}),
    );
    registry.push(&dir.path().join("private"), "1", "mesh/private");
    let secrets_key = fnmesh_core::secrets::generate_key();
    let mesh = Mesh::start_with_accounts(
        &["n1"],
        &[
            ("FNMESH_INSECURE_REGISTRIES", registry.host.as_str()),
            ("FNMESH_SECRETS_KEY", secrets_key.as_str()),
        ],
    )
    .await;
    let r = mesh
        .call(
            "PUT",
            &format!("/v1/registries/{}", registry.host),
            Some(json!({"username": PRIVATE_USER, "password": PRIVATE_PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    mesh.deploy(json!({
        "name": "ahead",
        "runtime": "image",
        "image": format!("{}/mesh/private:1", registry.host),
    }))
    .await;

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = mesh.call("GET", "/v1/admin/nodes", None).await;
        let images = nodes.body["items"][0]["images"].clone();
        if let Some(image) = images
            .as_array()
            .and_then(|all| all.iter().find(|i| i["digest"] == json!(digest)))
        {
            assert_eq!(image["in_use"], 0, "no sandbox yet: {image}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not pulled ahead: {:?}\n{}",
            nodes.body,
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sync = mesh
        .call("POST", "/v1/functions/ahead/invoke", Some(json!({"n": 1})))
        .await;
    assert_eq!(sync.status, 200, "{:?}\n{}", sync.body, mesh.logs());
    assert_eq!(sync.body["result"]["release"], "private image");
    assert_eq!(sync.body["result"]["greeting"], "ahead of time");
    assert_eq!(sync.body["metrics"]["cold_start"], true);
    assert!(
        sync.body["metrics"].get("pull_us").is_none(),
        "pulled ahead, not by the invocation: {:?}",
        sync.body
    );
    let logs = mesh.logs();
    assert!(
        !logs.contains(PRIVATE_PASSWORD),
        "a process logged the password"
    );
    // The node read the catalog within its credentials' permissions.
    let server = mesh.nats.log().to_lowercase();
    assert!(!server.contains("violation"), "{server}");
}
