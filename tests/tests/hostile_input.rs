//! Hostile input where it enters over HTTP and where it leaves for NATS: JSON depth and size
//! caps, keys only in headers (never in URLs), and only our own headers on published work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use fnmesh_bus::conformance::{request, test_config};
use fnmesh_bus::jetstream::{JetStreamBus, REPLY_HEADER};
use fnmesh_bus::{Bus, ReplyTo};
use fnmesh_core::claims::{CLAIM_HEADER, RECEIPTS_OFFERED_HEADER, RECEIPTS_VERSION};
use fnmesh_core::signing::SIGNATURE_HEADER;
use fnmesh_core::subjects::{self, BusPrefix, BusRole};
use fnmesh_tests::servers::nats::TestNats;
use fnmesh_tests::{unique, TestApp, ADMIN_KEY};
use serde_json::json;

const ECHO_PY: &str = "def handle(event, context):\n    return event\n";

fn nested_array(depth: usize) -> Vec<u8> {
    let mut body = vec![b'['; depth];
    body.extend(std::iter::repeat_n(b']', depth));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_400_and_oversized_bodies_are_413() {
    let app = TestApp::start_with(&[("FNMESH_MAX_BODY_BYTES", "1048576")]).await;
    let name = unique("echo");
    app.deploy(&name, "python3", "main.handle", &[("main.py", ECHO_PY)])
        .await;
    let invoke = format!("/v1/functions/{name}/invoke");

    // 10 000 levels (20 kB, well under the size cap): refused by the depth cap, not a crash.
    for path in [invoke.clone(), format!("{invoke}?async=true")] {
        let r = app
            .call_with("POST", &path, Some(nested_array(10_000)), Some(ADMIN_KEY))
            .await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_payload", "{:?}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("recursion limit"), "{message}");
    }
    // The same nesting inside a deploy body (metadata) is refused as JSON too.
    let mut deep_meta = String::from("{\"name\":\"deep-meta\",\"metadata\":{\"x\":");
    deep_meta.push_str(&"[".repeat(10_000));
    deep_meta.push_str(&"]".repeat(10_000));
    deep_meta.push_str("}}");
    let r = app
        .call_with(
            "POST",
            "/v1/functions",
            Some(deep_meta.into_bytes()),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_json", "{:?}", r.body);

    // Nesting within the cap goes through to the function and back.
    let r = app
        .call_with("POST", &invoke, Some(nested_array(100)), Some(ADMIN_KEY))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);

    // Over the size cap: 413 on invoke and on deploy, before anything is parsed.
    let big = vec![b' '; 1024 * 1024 + 1];
    for path in [invoke.as_str(), "/v1/functions"] {
        let r = app
            .call_with("POST", path, Some(big.clone()), Some(ADMIN_KEY))
            .await;
        assert_eq!(r.status, 413, "{path}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "payload_too_large");
    }
    // The gateway is still fine.
    assert_eq!(
        app.invoke_ok(&name, json!({"ok": 1})).await["result"]["ok"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_urls_are_ignored_and_the_request_is_401() {
    let app = TestApp::start().await;
    let name = unique("echo");
    app.deploy(&name, "python3", "main.handle", &[("main.py", ECHO_PY)])
        .await;
    let routes = [
        ("GET", "/v1/functions".to_owned()),
        ("GET", format!("/v1/functions/{name}")),
        ("GET", "/v1/invocations".to_owned()),
        ("POST", format!("/v1/functions/{name}/invoke")),
        ("DELETE", format!("/v1/functions/{name}")),
        ("GET", "/v1/admin/queues".to_owned()),
        ("GET", "/v1/admin/dlq".to_owned()),
    ];
    for (method, path) in &routes {
        for param in [
            "api_key",
            "apikey",
            "key",
            "token",
            "access_token",
            "authorization",
            "bearer",
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = format!("{path}{sep}{param}={ADMIN_KEY}");
            let r = app.call_with(method, &url, None, None).await;
            assert_eq!(r.status, 401, "{method} {url}: {:?}", r.body);
            assert_eq!(r.body["error"]["code"], "unauthorized");
            // In the path's own slot too (as if a proxy rewrote it): still nothing.
            let url = format!("{path}{sep}{param}=Bearer%20{ADMIN_KEY}");
            assert_eq!(app.call_with(method, &url, None, None).await.status, 401);
        }
    }
    // A key in a cookie or a non-Authorization header is not a credential either.
    for (header, value) in [
        ("cookie", format!("api_key={ADMIN_KEY}")),
        ("x-api-key", ADMIN_KEY.to_owned()),
        ("proxy-authorization", format!("Bearer {ADMIN_KEY}")),
    ] {
        let resp = app
            .http
            .get(format!("{}/v1/functions", app.base_url))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{header}");
    }
    // The function survived every one of those DELETEs.
    assert_eq!(
        app.call("GET", &format!("/v1/functions/{name}"), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_work_carries_only_our_own_nats_headers() {
    // Client headers never reach `publish_invocation` (its signature takes none; the HTTP and
    // NATS front ends both call `invocations::invoke::invoke`); this checks the bus layer sets
    // exactly `Nats-Msg-Id`, `Fnmesh-Reply-To`, `Fnmesh-Signature` and `Fnmesh-Claim` on what
    // lands in the work stream.
    let nats = TestNats::start();
    let prefix = format!("sec{}", rand_suffix());
    let bus = JetStreamBus::connect(&nats.url(), &prefix, test_config())
        .await
        .unwrap();
    let sync = request();
    let asynchronous = request();
    bus.publish_invocation(&sync, Some(&ReplyTo("_INBOX.client.1".to_owned())))
        .await
        .unwrap();
    bus.publish_invocation(&asynchronous, None).await.unwrap();

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let prefix = BusPrefix::parse(&prefix).unwrap();
    let stream = js
        .get_stream(subjects::bus_stream(&prefix, BusRole::Invocations))
        .await
        .unwrap();
    let mut seen = 0;
    for seq in 1..=2 {
        let message = stream.get_raw_message(seq).await.unwrap();
        let headers = message.headers;
        let names: BTreeSet<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
        let id = headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .to_string();
        if id == sync.id.to_string() {
            let expected: BTreeSet<String> = [
                "Nats-Msg-Id",
                REPLY_HEADER,
                SIGNATURE_HEADER,
                CLAIM_HEADER,
                RECEIPTS_OFFERED_HEADER,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            assert_eq!(names, expected);
            assert_eq!(
                headers.get(REPLY_HEADER).unwrap().to_string(),
                "_INBOX.client.1"
            );
            assert_eq!(
                headers.get(RECEIPTS_OFFERED_HEADER).unwrap().to_string(),
                RECEIPTS_VERSION
            );
        } else {
            assert_eq!(id, asynchronous.id.to_string());
            assert_eq!(
                names,
                BTreeSet::from([
                    "Nats-Msg-Id".to_owned(),
                    SIGNATURE_HEADER.to_owned(),
                    CLAIM_HEADER.to_owned()
                ])
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 2);
    // A reply subject that would act on the server or on our own subjects is refused.
    for bad in [
        "$JS.API.STREAM.DELETE.x",
        "fnmesh.v1.x.inv.a.b",
        "a b",
        "_INBOX.>",
    ] {
        let bad_reply = ReplyTo(bad.to_owned());
        assert!(
            bus.publish_invocation(&request(), Some(&bad_reply))
                .await
                .is_err(),
            "{bad}"
        );
    }
}

fn rand_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}
