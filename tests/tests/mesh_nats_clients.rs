//! NATS request/reply clients: a gateway of the mesh answers plain NATS requests on
//! `fnmesh.v1.req.<function>` (API key in an `Authorization` header) with the same result or
//! error body a sync HTTP invoke answers with. Driven from Python with `nats-py`, as a client
//! of ours would, and from Rust with `async-nats` for what Python makes awkward (malformed
//! payloads, hostile headers, watching the work subject).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_core::FunctionName;
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, ADMIN_KEY};
use futures::StreamExt;
use serde_json::{json, Value};

/// Sends each case as a NATS request with nats-py and prints one JSON list of the replies.
const PY_CLIENT: &str = r#"
import asyncio, json, sys
import nats

async def main():
    url, cases = sys.argv[1], json.loads(sys.argv[2])
    nc = await nats.connect(url)
    out = []
    for case in cases:
        try:
            msg = await nc.request(
                case["subject"],
                case["payload"].encode(),
                timeout=60,
                headers=case.get("headers"),
            )
            out.append({"reply": json.loads(msg.data)})
        except Exception as e:
            out.append({"exception": f"{type(e).__name__}: {e}"})
    await nc.close()
    print(json.dumps(out))

asyncio.run(main())
"#;

/// Fails (never skips) when nats-py is not installed, saying how to install it.
fn require_nats_py() {
    let ok = Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "nats-py is not installed for python3: run `scripts/setup-debian.sh --test` or \
         `python3 -m pip install nats-py` (on Debian's own python3 add --break-system-packages)"
    );
}

/// Runs [`PY_CLIENT`] against `url` with `cases`; returns one entry per case.
fn python_requests(url: &str, cases: &Value) -> Vec<Value> {
    let out = Command::new("python3")
        .args(["-c", PY_CLIENT, url, &cases.to_string()])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "the nats-py client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the nats-py client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn subject(function: &str) -> String {
    subjects::request(&FunctionName::parse(function).unwrap())
}

fn bearer(key: &str) -> Value {
    json!({ "Authorization": format!("Bearer {key}") })
}

const ECHO: &str = "def handle(event, context):\n    return {'got': event}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_nats_clients_invoke_functions_with_an_api_key() {
    require_nats_py();
    let mesh = Mesh::start(&["node-a"], &[("FNMESH_AUDIT_FAILURE_WINDOW_SECS", "1")]).await;
    mesh.deploy(function_body(
        "echo",
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({}),
    ))
    .await;

    let cases = json!([
        { "subject": subject("echo"), "payload": "{\"x\": 1}", "headers": bearer(ADMIN_KEY) },
        { "subject": subject("echo"), "payload": "{\"x\": 1}" },
        { "subject": subject("echo"), "payload": "{\"x\": 1}", "headers": bearer("fnm_not-a-key-of-ours") },
        { "subject": subject("missing"), "payload": "{}", "headers": bearer(ADMIN_KEY) },
        { "subject": "fnmesh.v1.req.Not_A_Name", "payload": "{}", "headers": bearer(ADMIN_KEY) },
    ]);
    let replies = python_requests(&mesh.nats.url(), &cases);
    let logs = || mesh.logs();
    let reply = |i: usize| -> &Value {
        replies[i]
            .get("reply")
            .unwrap_or_else(|| panic!("case {i}: no reply: {:?}\n{}", replies[i], logs()))
    };

    let ok = reply(0);
    assert_eq!(ok["status"], "succeeded", "{ok:?}\n{}", logs());
    assert_eq!(ok["result"], json!({ "got": { "x": 1 } }), "{ok:?}");
    // The same shape as a sync HTTP invoke's answer, and the same record behind it.
    let http = mesh
        .call("POST", "/v1/functions/echo/invoke", Some(json!({ "x": 1 })))
        .await;
    assert_eq!(http.status, 200, "{:?}", http.body);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(ok), keys(&http.body));
    let id = ok["id"].as_str().unwrap();
    let stored = mesh
        .call("GET", &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    assert_eq!(stored.body["status"], "succeeded");

    for (i, code) in [
        (1, "unauthorized"),
        (2, "unauthorized"),
        (3, "not_found"),
        (4, "invalid_name"),
    ] {
        let r = reply(i);
        assert_eq!(r["error"]["code"], code, "case {i}: {r:?}");
        assert!(r["error"]["message"].is_string(), "case {i}: {r:?}");
    }

    // The two refusals are in the audit log, as the HTTP route's would be (summed into one
    // entry per source and action over the audit window), and the wrong key is not.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let denied = loop {
        let r = mesh
            .call(
                "GET",
                "/v1/admin/audit?action=function.invoke&outcome=denied&limit=100",
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let entries: Vec<Value> = r.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {:?}", r.body))
            .iter()
            .filter(|e| e["source"] == "nats")
            .cloned()
            .collect();
        let count: u64 = entries.iter().filter_map(|e| e["count"].as_u64()).sum();
        if count >= 2 || std::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count: u64 = denied.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(count, 2, "{denied:?}");
    for e in &denied {
        assert_eq!(e["actor"], "anonymous", "{e}");
        assert_eq!(e["target"], "function/echo", "{e}");
        assert_eq!(e["status"], 401, "{e}");
        assert!(!e.to_string().contains("not-a-key-of-ours"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_requests_refuse_malformed_payloads_and_never_forward_client_headers() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    mesh.deploy(function_body(
        "echo",
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({}),
    ))
    .await;
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let prefix = BusPrefix::parse(&mesh.region).unwrap();
    let mut work = client
        .subscribe(subjects::bus_invocations_all(&prefix))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
    headers.insert("Nats-Msg-Id", "client-chosen-id");
    headers.insert("X-Client-Header", "must-not-travel");
    let request = |payload: &'static str| {
        let client = client.clone();
        let headers = headers.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(60),
                client.request_with_headers(subject("echo"), headers, payload.into()),
            )
            .await
            .expect("no reply within 60 s")
            .expect("the request failed");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };

    for malformed in ["{not json", "[1,", "\u{1}"] {
        let r = request(malformed).await;
        assert_eq!(
            r["error"]["code"],
            "invalid_payload",
            "{malformed:?}: {r:?}\n{}",
            mesh.logs()
        );
    }

    let r = request("{\"x\": 2}").await;
    assert_eq!(r["status"], "succeeded", "{r:?}\n{}", mesh.logs());
    assert_eq!(r["result"], json!({ "got": { "x": 2 } }));
    // The only work published was this invocation's, carrying our headers only.
    let published = tokio::time::timeout(Duration::from_secs(10), work.next())
        .await
        .expect("the invocation was not seen on the work subject")
        .unwrap();
    let published_headers = published.headers.unwrap_or_default();
    for (name, values) in published_headers.iter() {
        let name: &str = name.as_ref();
        assert!(
            !name.eq_ignore_ascii_case("authorization") && name != "X-Client-Header",
            "a client header was forwarded: {name}"
        );
        for v in values {
            assert_ne!(
                v.as_str(),
                "client-chosen-id",
                "{name} was taken from the client"
            );
            assert_ne!(
                v.as_str(),
                "must-not-travel",
                "{name} was taken from the client"
            );
        }
    }
    assert_eq!(
        published_headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        r["id"].as_str().map(str::to_owned),
        "the work message is deduplicated by the invocation id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_requests_are_answered_on_reply_inboxes_only() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    mesh.deploy(function_body(
        "echo",
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({}),
    ))
    .await;
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    // An application subject a key holder would like the gateway to publish to.
    let target = "orders.created";
    let mut watched = client.subscribe(target).await.unwrap();
    client.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
    client
        .publish_with_reply_and_headers(
            subject("echo"),
            target,
            headers.clone(),
            "{\"x\": 1}".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    // The gateway drops it before running anything, and counts that.
    let dropped = "fnmesh_nats_requests_dropped_total{reason=\"reply_not_inbox\"} 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = mesh
            .http
            .get(format!("{}/metrics", mesh.base_url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        if resp.text().await.unwrap().contains(dropped) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request was not counted as dropped\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        mesh.logs().contains("not a reply inbox"),
        "the drop is logged\n{}",
        mesh.logs()
    );

    // A request on an ordinary inbox is answered, and it is the only invocation that ran.
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request_with_headers(subject("echo"), headers, "{\"x\": 2}".into()),
    )
    .await
    .expect("no reply within 60 s")
    .unwrap();
    let r: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(r["status"], "succeeded", "{r:?}\n{}", mesh.logs());
    // Listed once its write commits (a sync outcome is answered before: one batch later).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ids: Vec<Value> = loop {
        let listed = mesh
            .call("GET", "/v1/invocations?function=echo&limit=100", None)
            .await;
        assert_eq!(listed.status, 200, "{:?}", listed.body);
        let ids: Vec<Value> = listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].clone())
            .collect();
        if !ids.is_empty() || std::time::Instant::now() >= deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids, vec![r["id"].clone()], "only the answered request ran");
    assert!(
        futures::FutureExt::now_or_never(watched.next()).is_none(),
        "nothing was published to {target}"
    );
}

/// `Fnmesh-Alias` and `Fnmesh-Version` headers pick the version as `?alias=` and `?version=`
/// do over HTTP; both at once, or one given twice, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_requests_pick_versions_by_alias_or_number() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    let versioned = "def handle(event, context):\n    return context.function_version\n";
    mesh.deploy(function_body(
        "versioned",
        "python3",
        "main.handle",
        &[("main.py", versioned)],
        json!({}),
    ))
    .await;
    let v2 = mesh
        .call(
            "PUT",
            "/v1/functions/versioned",
            Some(json!({ "metadata": { "v": "2" } })),
        )
        .await;
    assert_eq!(v2.status, 200, "{:?}", v2.body);
    let alias = mesh
        .call(
            "PUT",
            "/v1/functions/versioned/aliases/prod",
            Some(json!({ "version": 1 })),
        )
        .await;
    assert_eq!(alias.status, 200, "{:?}", alias.body);
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let request = |extra: &[(&'static str, &'static str)]| {
        let client = client.clone();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
        for (name, value) in extra {
            headers.append(*name, *value);
        }
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(60),
                client.request_with_headers(subject("versioned"), headers, "{}".into()),
            )
            .await
            .expect("no reply within 60 s")
            .expect("the request failed");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let latest = request(&[]).await;
    assert_eq!(latest["result"], 2, "{latest:?}\n{}", mesh.logs());
    let by_alias = request(&[("Fnmesh-Alias", "prod")]).await;
    assert_eq!(by_alias["result"], 1, "{by_alias:?}");
    assert_eq!(by_alias["alias"], "prod");
    let by_number = request(&[("fnmesh-version", "1")]).await;
    assert_eq!(by_number["version"], 1, "{by_number:?}");
    for (headers, code) in [
        (
            &[("Fnmesh-Alias", "prod"), ("Fnmesh-Version", "1")][..],
            "invalid_query",
        ),
        (
            &[("Fnmesh-Alias", "prod"), ("Fnmesh-Alias", "prod")][..],
            "bad_request",
        ),
        (&[("Fnmesh-Version", "one")][..], "bad_request"),
        (&[("Fnmesh-Alias", "nope")][..], "not_found"),
    ] {
        let r = request(headers).await;
        assert_eq!(r["error"]["code"], code, "{headers:?}: {r:?}");
    }
}
