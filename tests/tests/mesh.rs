//! The mesh as separate processes: `fnmesh gateway` and two `fnmesh node`s over a real
//! `nats-server -js` started by the harness. Work published by the gateway is pulled by both
//! nodes, and sync results come back on reply inboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use fnmesh_tests::servers::nats::TestNats;
use fnmesh_tests::{free_port, function_body, require_root, spawn_fnmesh, unique, ADMIN_KEY};
use serde_json::{json, Value};

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_and_two_nodes_share_the_work_over_jetstream() {
    require_root();
    let nats = TestNats::start();
    let dir = tempfile::tempdir().unwrap();
    let region = unique("mesh");
    let code = dir.path().join("code");
    let code = code.to_str().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let gw_data = dir.path().join("gateway");
    let gw_log = dir.path().join("gateway.log");
    let nats_url = nats.url();
    let signing = fnmesh_core::signing::SigningKey::generate();
    let _gateway = Proc(spawn_fnmesh(
        "gateway",
        &[
            ("FNMESH_SIGNING_KEY", signing.seed()),
            ("FNMESH_LISTEN", &listen),
            ("FNMESH_DATA_DIR", gw_data.to_str().unwrap()),
            ("FNMESH_ADMIN_KEY", ADMIN_KEY),
            ("FNMESH_NATS_URL", &nats_url),
            ("FNMESH_REGION", &region),
            ("FNMESH_CODE_STORE", code),
        ],
        &gw_log,
    ));
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let data = dir.path().join(id);
        let log = dir.path().join(format!("{id}.log"));
        nodes.push(Proc(spawn_fnmesh(
            "node",
            &[
                ("FNMESH_NODE_ID", id),
                ("FNMESH_TRUSTED_KEYS", signing.public_key()),
                ("FNMESH_DATA_DIR", data.to_str().unwrap()),
                ("FNMESH_NATS_URL", &nats_url),
                ("FNMESH_REGION", &region),
                ("FNMESH_CODE_STORE", code),
                ("FNMESH_NODE_SLOTS", "8"),
            ],
            &log,
        )));
    }

    let http = fnmesh_tests::http_client();
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway not ready:\n{}",
            log_of(&gw_log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = unique("shared");
    let body = function_body(&name, "python3", "main.handle", &[("main.py", "import time\ndef handle(event, context):\n    time.sleep(0.05)\n    return event['i']\n")], json!({"max_concurrency": 8}));
    let r = http
        .post(format!("{base}/v1/functions"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    let mut calls = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let url = format!("{base}/v1/functions/{name}/invoke");
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"i": i}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for (i, call) in calls.into_iter().enumerate() {
        let (status, body) = call.await.unwrap();
        assert_eq!(
            status,
            200,
            "call {i}: {body}\ngateway:\n{}",
            log_of(&gw_log)
        );
        assert_eq!(body["status"], "succeeded", "call {i}: {body}");
        assert_eq!(body["result"], json!(i));
        *served
            .entry(body["node_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    println!("served per node: {served:?}");
    assert_eq!(served.values().sum::<usize>(), 200);
    assert!(served.get("node-a").copied().unwrap_or(0) > 0, "{served:?}");
    assert!(served.get("node-b").copied().unwrap_or(0) > 0, "{served:?}");

    // Every result is stored (a sync outcome is answered before its write commits: the last
    // ones may take a batch longer).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = http
            .get(format!(
                "{base}/v1/invocations?function={name}&status=succeeded&limit=1000"
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let list: Value = list.json().await.unwrap();
        let stored = list["items"].as_array().unwrap().len();
        if stored == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} of 200 results stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
