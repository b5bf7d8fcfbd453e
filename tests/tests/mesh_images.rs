//! Image functions through the mesh (issue #15): a gateway and a node as separate processes
//! over NATS in operator mode, the node pulling from a real registry (`docker-registry`) or
//! reading an uploaded image from the code store over NATS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::b64;
use fnmesh_tests::images::{busybox_layout, layout_tar};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::servers::registry::RegistryServer;
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
