//! Signed work on a real `nats-server -js` (issue #12, item 2): a bus pulling work runs only
//! invocations signed by a gateway key it trusts, over exactly the subject, reply inbox,
//! `Nats-Msg-Id` and body that were signed. Forged (unsigned or signed by another key),
//! altered (other checksum, namespace, reply, id), replayed or invalid (a `timeout_ms` of
//! `u64::MAX`) messages are terminated unrun and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use fnmesh_bus::conformance::{request, test_config};
use fnmesh_bus::jetstream::{JetStreamBus, REPLY_HEADER};
use fnmesh_bus::{Bus, BusConfig, Signatures};
use fnmesh_core::signing::{Rejection, Rejections, SigningKey, TrustedKeys, SIGNATURE_HEADER};
use fnmesh_core::subjects::{self, BusPrefix, BusRole};
use fnmesh_core::{Checksum, InvocationRequest, Namespace};
use fnmesh_tests::servers::nats::TestNats;
use futures::StreamExt as _;

fn fresh_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "s{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A gateway's bus configuration signing with `key`.
fn gateway(key: &SigningKey) -> BusConfig {
    BusConfig {
        signatures: Signatures::new(
            SigningKey::from_seed(key.seed()).unwrap(),
            TrustedKeys::default(),
            Rejections::unregistered("gateway"),
        ),
        ..test_config()
    }
}

/// A node's bus configuration trusting `key` only, and its rejection counter.
fn node(key: &SigningKey) -> (BusConfig, Rejections) {
    let rejections = Rejections::unregistered("node");
    let config = BusConfig {
        signatures: Signatures::new(
            SigningKey::generate(),
            TrustedKeys::parse(key.public_key()).unwrap(),
            rejections.clone(),
        ),
        ..test_config()
    };
    (config, rejections)
}

/// One raw message of the work stream: what a gateway's bus published, captured (and
/// removed from the stream) before any node pulls it.
struct Captured {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

async fn capture_last(client: &async_nats::Client, prefix: &str) -> Captured {
    let js = jetstream::new(client.clone());
    let name = subjects::bus_stream(&BusPrefix::parse(prefix).unwrap(), BusRole::Invocations);
    let mut stream = js.get_stream(&name).await.unwrap();
    let seq = stream.info().await.unwrap().state.last_sequence;
    let message = stream.get_raw_message(seq).await.unwrap();
    assert!(stream.delete_message(seq).await.unwrap());
    Captured {
        subject: message.subject.to_string(),
        headers: message.headers,
        payload: message.payload.to_vec(),
    }
}

/// Publishes a raw work message (as anyone who can reach the subject could) and waits for
/// the stream's PubAck.
async fn publish_raw(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) {
    let js = jetstream::new(client.clone());
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .unwrap()
        .await
        .expect("the stream takes the forged message");
}

fn with_header(headers: &HeaderMap, name: &str, value: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, values) in headers.iter() {
        let key: &str = k.as_ref();
        if key != name {
            for v in values {
                out.append(key, v.as_str());
            }
        }
    }
    out.insert(name, value);
    out
}

/// Pulls until `rejections` counts `reason` `times`, asserting nothing is delivered.
async fn expect_refused(
    bus: &JetStreamBus,
    rejections: &Rejections,
    reason: Rejection,
    times: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rejections.get(reason) < times {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{reason} counted {} times, not {times}",
            rejections.get(reason)
        );
        if let Some(d) = bus
            .pull_invocation(Duration::from_millis(200))
            .await
            .unwrap()
        {
            panic!("a refused message was delivered: {:?}", d.request.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_work_signed_by_a_trusted_gateway_runs() {
    let nats = TestNats::start();
    let prefix = fresh_prefix();
    let trusted = SigningKey::generate();
    let gw = JetStreamBus::connect(&nats.url(), &prefix, gateway(&trusted))
        .await
        .unwrap();
    let stranger = JetStreamBus::connect(&nats.url(), &prefix, gateway(&SigningKey::generate()))
        .await
        .unwrap();
    let (config, rejections) = node(&trusted);
    let nd = JetStreamBus::connect(&nats.url(), &prefix, config)
        .await
        .unwrap();

    // Signed by the trusted gateway: delivered, with its signed expiry.
    let good = request();
    gw.publish_invocation(&good, None).await.unwrap();
    let d = nd
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("signed work is delivered");
    assert_eq!(d.request, good);
    let expires = d.expires_at.expect("a signed expiry");
    assert!(
        std::time::SystemTime::from(expires)
            > std::time::SystemTime::now() + Duration::from_secs(5 * 3600)
    );
    d.acker.ack().await.unwrap();

    // Signed by a key the node does not trust.
    stranger.publish_invocation(&request(), None).await.unwrap();
    expect_refused(&nd, &rejections, Rejection::UntrustedSigner, 1).await;

    // Unsigned: a valid request published straight onto the work subject (of a function the
    // node pulls).
    let mut forged = good.clone();
    forged.id = fnmesh_core::InvocationId::new();
    let subject = subjects::bus_invocation(
        &BusPrefix::parse(&prefix).unwrap(),
        &forged.function.namespace,
        &forged.function.name,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        forged.id.to_string().as_str(),
    );
    publish_raw(
        nd.client(),
        &subject,
        headers,
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::Unsigned, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn altered_and_replayed_signed_work_is_refused() {
    let nats = TestNats::start();
    let prefix = fresh_prefix();
    let key = SigningKey::generate();
    let gw = JetStreamBus::connect(
        &nats.url(),
        &prefix,
        BusConfig {
            // Short, so a replay of the same id after it gets past JetStream's dedupe.
            dedupe_window: Duration::from_secs(1),
            ..gateway(&key)
        },
    )
    .await
    .unwrap();
    let inbox = gw.open_inbox().await.unwrap();
    let victim = request();
    gw.publish_invocation(&victim, Some(&inbox.reply_to))
        .await
        .unwrap();
    let original = capture_last(gw.client(), &prefix).await;
    let (config, rejections) = node(&key);
    let config = BusConfig {
        // The same stream settings as the gateway's (this bus may update the stream too).
        dedupe_window: Duration::from_secs(1),
        ..config
    };
    let nd = JetStreamBus::connect(&nats.url(), &prefix, config)
        .await
        .unwrap();
    let client = nd.client().clone();

    // Each alteration keeps the original's message id: published once JetStream's dedupe
    // window (1 s here) has passed.
    let republish = |subject: String, headers: HeaderMap, body: Vec<u8>| {
        let client = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            publish_raw(&client, &subject, headers, body).await;
        }
    };
    let msg_id = original
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .unwrap()
        .to_string();
    assert_eq!(msg_id, victim.id.to_string());

    // Other code for the victim's function (the sealed secrets and everything else kept).
    let mut other_code: InvocationRequest = serde_json::from_slice(&original.payload).unwrap();
    other_code.function.code.checksum = Checksum::of(b"attacker's code");
    republish(
        original.subject.clone(),
        original.headers.clone(),
        serde_json::to_vec(&other_code).unwrap(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::BadSignature, 1).await;

    // The same invocation claimed for another namespace.
    let mut other_ns = victim.clone();
    other_ns.function.namespace = Namespace::parse("attacker").unwrap();
    republish(
        original.subject.clone(),
        original.headers.clone(),
        serde_json::to_vec(&other_ns).unwrap(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::BadSignature, 2).await;

    // The result sent to another inbox.
    let attacker_inbox = format!(
        "{}.attacker.1",
        subjects::inbox_prefix(subjects::InboxOwner::Gateway)
    );
    republish(
        original.subject.clone(),
        with_header(&original.headers, REPLY_HEADER, &attacker_inbox),
        original.payload.clone(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::BadSignature, 3).await;

    // The very message under another message id (so JetStream's dedupe does not drop it).
    let fresh_id = with_header(
        &original.headers,
        async_nats::header::NATS_MESSAGE_ID.as_ref(),
        &fnmesh_core::InvocationId::new().to_string(),
    );
    publish_raw(
        &client,
        &original.subject,
        fresh_id,
        original.payload.clone(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::BadSignature, 4).await;
    assert_eq!(rejections.get(Rejection::Unsigned), 0);

    // The unaltered original runs once; replayed identically after the dedupe window, it is
    // refused by the node that ran it.
    republish(
        original.subject.clone(),
        original.headers.clone(),
        original.payload.clone(),
    )
    .await;
    let d = nd
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the original is delivered");
    assert_eq!(d.request, victim);
    assert_eq!(d.reply_to.as_ref(), Some(&inbox.reply_to));
    d.acker.ack().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_raw(
        &client,
        &original.subject,
        original.headers.clone(),
        original.payload.clone(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::Replayed, 1).await;

    // No signature header at all on a copy of a signed body.
    let mut stripped = HeaderMap::new();
    stripped.insert(
        async_nats::header::NATS_MESSAGE_ID,
        fnmesh_core::InvocationId::new().to_string().as_str(),
    );
    publish_raw(
        &client,
        &original.subject,
        stripped,
        original.payload.clone(),
    )
    .await;
    expect_refused(&nd, &rejections, Rejection::Unsigned, 1).await;
    assert!(original.headers.get(SIGNATURE_HEADER).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_work_with_an_invalid_config_or_past_its_expiry_does_not_run() {
    let nats = TestNats::start();
    let prefix = fresh_prefix();
    let key = SigningKey::generate();
    let mut config = gateway(&key);
    let gw = JetStreamBus::connect(&nats.url(), &prefix, config.clone())
        .await
        .unwrap();
    let (node_config, rejections) = node(&key);
    let nd = JetStreamBus::connect(&nats.url(), &prefix, node_config)
        .await
        .unwrap();

    // A timeout_ms of u64::MAX (it would overflow the executor's clock) is refused even when
    // signed: the node validates the config it is given.
    let mut huge = request();
    huge.function.config.timeout_ms = u64::MAX;
    gw.publish_invocation(&huge, None).await.unwrap();
    expect_refused(&nd, &rejections, Rejection::Invalid, 1).await;

    // Past its maximum age: delivered with the expiry, which the worker reports (not runs).
    config.signatures.max_age = Duration::ZERO;
    let old = JetStreamBus::connect(&nats.url(), &prefix, config)
        .await
        .unwrap();
    let stale = request();
    old.publish_invocation(&stale, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = nd
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("an expired message is delivered for its report");
    assert_eq!(d.request.id, stale.id);
    assert!(std::time::SystemTime::from(d.expires_at.unwrap()) < std::time::SystemTime::now());
    d.acker.ack().await.unwrap();
}

/// The node's metrics scrape token.
const SCRAPE_TOKEN: &str = "signed-work-scrape-token-0123456789";

/// Node metrics `fnmesh_rejected_messages_total{component="node",reason}` from its listener.
async fn node_rejections(http: &reqwest::Client, url: &str, reason: Rejection) -> f64 {
    let Ok(resp) = http.get(url).bearer_auth(SCRAPE_TOKEN).send().await else {
        return -1.0;
    };
    let text = resp.text().await.unwrap_or_default();
    let samples = fnmesh_core::metrics::parse_text(&text).unwrap_or_default();
    samples
        .iter()
        .find(|s| {
            s.name == "fnmesh_rejected_messages_total"
                && s.labels
                    .iter()
                    .any(|(k, v)| k == "reason" && v == reason.as_str())
                && s.labels
                    .iter()
                    .any(|(k, v)| k == "component" && v == "node")
        })
        .map_or(0.0, |s| s.value)
}

/// The attack of the review, end to end on real processes: someone who can publish on the
/// work subjects copies a victim's invocation (payload, sealed secrets), points its checksum
/// at their own code and its reply at their own inbox. Unsigned, with the original signature
/// or signed by their own key, the node runs none of it and counts each; the victim's own
/// invocations keep working with their secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_invocation_with_a_victims_secrets_never_runs() {
    let secrets_key = fnmesh_core::secrets::generate_key();
    let mut mesh =
        fnmesh_tests::mesh::Mesh::start(&[], &[("FNMESH_SECRETS_KEY", &secrets_key)]).await;
    let listen = format!("127.0.0.1:{}", fnmesh_tests::free_port());
    mesh.add_node(
        "node-s",
        &[
            ("FNMESH_METRICS_LISTEN", listen.as_str()),
            ("FNMESH_METRICS_TOKEN", SCRAPE_TOKEN),
        ],
    );
    let metrics_url = format!("http://{listen}/metrics");
    let handler = "import os\ndef handle(event, context):\n    return os.environ.get('TOKEN')\n";
    let victim = fnmesh_tests::unique("victim");
    let evil = fnmesh_tests::unique("evil");
    for name in [&victim, &evil] {
        mesh.deploy(fnmesh_tests::function_body(
            name,
            "python3",
            "main.handle",
            &[("main.py", handler)],
            serde_json::json!({"timeout_ms": 10000}),
        ))
        .await;
    }
    let r = mesh
        .call(
            "PUT",
            &format!("/v1/functions/{victim}/secrets/TOKEN"),
            Some(serde_json::json!({"value": "victims-s3cret"})),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let evil_fn = mesh
        .call("GET", &format!("/v1/functions/{evil}"), None)
        .await;
    let evil_checksum =
        Checksum::parse(evil_fn.body["code"]["checksum"].as_str().unwrap()).unwrap();

    // The attacker watches the work subjects (core NATS sees what the stream stores).
    let attacker = async_nats::connect(mesh.nats.url()).await.unwrap();
    let prefix = BusPrefix::parse(&mesh.region).unwrap();
    let mut watch = attacker
        .subscribe(subjects::bus_invocations_all(&prefix))
        .await
        .unwrap();
    let attacker_inbox = format!(
        "{}.attacker",
        subjects::inbox_prefix(subjects::InboxOwner::Gateway)
    );
    let mut loot = attacker
        .subscribe(format!("{attacker_inbox}.>"))
        .await
        .unwrap();
    attacker.flush().await.unwrap();

    let invoke = |name: String| {
        let mesh = &mesh;
        async move {
            mesh.call(
                "POST",
                &format!("/v1/functions/{name}/invoke"),
                Some(serde_json::json!({})),
            )
            .await
        }
    };
    let r = invoke(victim.clone()).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
    assert_eq!(r.body["result"], "victims-s3cret");
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the attacker sees the victim's work message")
        .unwrap();
    let mut forged: InvocationRequest = serde_json::from_slice(&seen.payload).unwrap();
    assert!(
        forged.secrets.is_some(),
        "the victim's sealed secrets travel with it"
    );
    forged.function.code.checksum = evil_checksum;
    let body = serde_json::to_vec(&forged).unwrap();
    let original = seen.headers.clone().unwrap();
    let fresh = |n: u32| {
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            fnmesh_core::InvocationId::new().to_string().as_str(),
        );
        h.insert(REPLY_HEADER, format!("{attacker_inbox}.{n}").as_str());
        h
    };
    let subject = seen.subject.to_string();
    // (1) unsigned, (2) with the victim's signature, (3) signed by the attacker's own key.
    publish_raw(&attacker, &subject, fresh(1), body.clone()).await;
    let mut stolen_signature = fresh(2);
    stolen_signature.insert(
        SIGNATURE_HEADER,
        original.get(SIGNATURE_HEADER).unwrap().as_str(),
    );
    publish_raw(&attacker, &subject, stolen_signature, body.clone()).await;
    let own_key = SigningKey::generate();
    let mut self_signed = fresh(3);
    let limits = fnmesh_core::signing::Limits {
        expires_at: chrono_now() + 3600,
        max_attempts: 3,
    };
    let msg_id = self_signed
        .get(async_nats::header::NATS_MESSAGE_ID)
        .unwrap()
        .to_string();
    let reply = format!("{attacker_inbox}.3");
    let header = own_key.sign(
        &fnmesh_core::signing::Envelope {
            subject: &subject,
            reply: Some(&reply),
            msg_id: &msg_id,
            body: &body,
        },
        limits,
    );
    self_signed.insert(SIGNATURE_HEADER, header.as_str());
    publish_raw(&attacker, &subject, self_signed, body).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for reason in [
        Rejection::Unsigned,
        Rejection::BadSignature,
        Rejection::UntrustedSigner,
    ] {
        while node_rejections(&mesh.http, &metrics_url, reason).await < 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node did not count a {reason} refusal:\n{}",
                mesh.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), loot.next())
            .await
            .is_err(),
        "a forged invocation ran and answered the attacker"
    );
    // The victim's own work is untouched.
    let r = invoke(victim.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["result"], "victims-s3cret");
    assert!(mesh.nodes[0].log().contains("work message refused"));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
