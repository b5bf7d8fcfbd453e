//! The direct path of sync invocations on a real nats-server: a gateway's bus hands a sync
//! invocation straight to a node whose pull is waiting (nothing enters the work stream), and
//! queues it in JetStream when no node has a free slot, when none listens, or when this
//! gateway has the function's `max_concurrency` of direct calls in flight. A node runs only
//! direct work signed by a trusted gateway, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fnmesh_bus::conformance::{self, outcome, test_config};
use fnmesh_bus::jetstream::JetStreamBus;
use fnmesh_bus::{Bus, BusConfig, Sent};
use fnmesh_core::subjects::{self, BusRole};
use fnmesh_tests::servers::nats::TestNats;

fn fresh_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "d{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A gateway's bus and a node's bus attached to it, each on its own connection.
async fn gateway_and_node(url: &str) -> (JetStreamBus, JetStreamBus) {
    let prefix = fresh_prefix();
    let gateway = JetStreamBus::connect(url, &prefix, test_config())
        .await
        .unwrap();
    let node = JetStreamBus::connect(
        url,
        &prefix,
        BusConfig {
            manage_streams: false,
            ..test_config()
        },
    )
    .await
    .unwrap();
    (gateway, node)
}

/// Messages in the gateway's work stream.
async fn queued(gateway: &JetStreamBus) -> u64 {
    let js = async_nats::jetstream::new(gateway.client().clone());
    let mut stream = js
        .get_stream(subjects::bus_stream(gateway.prefix(), BusRole::Invocations))
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

/// A pull of the node, waiting in the background.
fn pulling(node: &JetStreamBus, max: usize) -> tokio::task::JoinHandle<Vec<fnmesh_bus::Delivery>> {
    let node = node.clone();
    tokio::spawn(async move {
        node.pull_invocations(max, Duration::from_secs(5))
            .await
            .unwrap()
    })
}

/// Lets a pull spawned just before start waiting (and offer its slots).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_invocation_goes_straight_to_a_waiting_node() {
    let nats = TestNats::start();
    let (gateway, node) = gateway_and_node(&nats.url()).await;
    let ns = fnmesh_core::Namespace::parse("direct").unwrap();
    let req = conformance::request_of(&ns, "f", 4);
    let mut inbox = gateway.open_inbox().await.unwrap();
    let pull = pulling(&node, 2);
    settle().await;
    let sent = gateway.send_sync(&req, &inbox.reply_to).await.unwrap();
    assert_eq!(sent, Sent::Direct);
    let mut got = pull.await.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.remove(0);
    assert_eq!(d.request, req, "the request arrives unchanged");
    assert_eq!(d.reply_to.as_ref(), Some(&inbox.reply_to));
    assert_eq!(d.attempt, 1);
    assert!(d.expires_at.is_some(), "the signed expiry travels");
    assert!(!d.acker.redelivers(), "no stream holds it");
    assert!(
        d.acker.nak(None).await.is_err(),
        "it cannot be delivered again"
    );
    assert_eq!(queued(&gateway).await, 0, "nothing entered the work stream");
    // The node's reply is signed with the claim it got with the direct message.
    let reply = outcome(&req);
    node.reply(d.reply_to.as_ref().unwrap(), &reply)
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), inbox.receiver.recv())
        .await
        .expect("the reply arrives")
        .unwrap();
    assert_eq!(answered, reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_work_is_queued_when_no_node_has_a_free_slot() {
    let nats = TestNats::start();
    let (gateway, node) = gateway_and_node(&nats.url()).await;
    let ns = fnmesh_core::Namespace::parse("busy").unwrap();

    // No node listens at all.
    let first = conformance::request_of(&ns, "f", 4);
    let inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway.send_sync(&first, &inbox.reply_to).await.unwrap(),
        Sent::Queued
    );

    // The node has pulled before (so it listens) but is not pulling now: all its slots taken.
    let d = node
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the queued one is delivered");
    assert_eq!(d.request.id, first.id);
    assert!(d.acker.redelivers());
    d.acker.ack().await.unwrap();
    let second = conformance::request_of(&ns, "f", 4);
    let inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway.send_sync(&second, &inbox.reply_to).await.unwrap(),
        Sent::Queued,
        "a node that is not pulling answers busy"
    );
    assert_eq!(queued(&gateway).await, 1);
    let d = node
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("queued work is delivered when the node has room");
    assert_eq!(d.request.id, second.id);
    assert_eq!(d.reply_to.as_ref(), Some(&inbox.reply_to));
    d.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_calls_in_flight_are_capped_by_max_concurrency() {
    let nats = TestNats::start();
    let (gateway, node) = gateway_and_node(&nats.url()).await;
    let ns = fnmesh_core::Namespace::parse("capped").unwrap();

    let pull = pulling(&node, 8);
    settle().await;
    let first = conformance::request_of(&ns, "f", 1);
    let first_inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway
            .send_sync(&first, &first_inbox.reply_to)
            .await
            .unwrap(),
        Sent::Direct
    );
    assert_eq!(pull.await.unwrap().len(), 1);

    // Its one direct call is still waited on: the next is queued, though a node waits.
    let pull = pulling(&node, 8);
    settle().await;
    let second = conformance::request_of(&ns, "f", 1);
    let inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway.send_sync(&second, &inbox.reply_to).await.unwrap(),
        Sent::Queued
    );
    let got = pull.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.id, second.id);
    assert!(got[0].acker.redelivers(), "it came from the queue");
    got[0].acker.ack().await.unwrap();

    // Another function is not held up by it.
    let pull = pulling(&node, 8);
    settle().await;
    let other = conformance::request_of(&ns, "g", 1);
    let other_inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway
            .send_sync(&other, &other_inbox.reply_to)
            .await
            .unwrap(),
        Sent::Direct
    );
    assert_eq!(pull.await.unwrap().len(), 1);

    // The caller stopped waiting: its place is given back.
    drop(first_inbox);
    let pull = pulling(&node, 8);
    settle().await;
    let third = conformance::request_of(&ns, "f", 1);
    let inbox = gateway.open_inbox().await.unwrap();
    let third_sent = gateway.send_sync(&third, &inbox.reply_to).await.unwrap();
    let got = pull.await.unwrap();
    assert_eq!(third_sent, Sent::Direct);
    assert!(got.iter().any(|d| d.request.id == third.id));
}

/// Direct work a gateway did not sign, or signed for another subject, or sent before, is
/// refused (never handed to the worker), and the node answers so the sender queues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_runs_only_signed_direct_work_once() {
    let nats = TestNats::start();
    let (gateway, node) = gateway_and_node(&nats.url()).await;
    let ns = fnmesh_core::Namespace::parse("forged").unwrap();
    let req = conformance::request_of(&ns, "f", 4);
    let subject = subjects::bus_direct(gateway.prefix(), &ns, &req.function.name);

    // A listener that records what a gateway sends, to replay it.
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut copies = spy.subscribe(subject.clone()).await.unwrap();
    spy.flush().await.unwrap();

    let pull = pulling(&node, 4);
    settle().await;
    let inbox = gateway.open_inbox().await.unwrap();
    assert_eq!(
        gateway.send_sync(&req, &inbox.reply_to).await.unwrap(),
        Sent::Direct
    );
    assert_eq!(pull.await.unwrap().len(), 1);
    let copy = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut copies),
    )
    .await
    .unwrap()
    .unwrap();

    let pull = pulling(&node, 4);
    settle().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    // Unsigned.
    let unsigned = client
        .request(subject.clone(), serde_json::to_vec(&req).unwrap().into())
        .await
        .unwrap();
    assert_eq!(&unsigned.payload[..], b"-REFUSED");
    // The gateway's message replayed as it was.
    let replayed = client
        .request_with_headers(
            subject.clone(),
            copy.headers.clone().unwrap(),
            copy.payload.clone(),
        )
        .await
        .unwrap();
    assert_eq!(&replayed.payload[..], b"-REFUSED");
    // The same signed message under another function's subject.
    let elsewhere = subjects::bus_direct(
        gateway.prefix(),
        &ns,
        &fnmesh_core::FunctionName::parse("g").unwrap(),
    );
    let moved = client
        .request_with_headers(elsewhere, copy.headers.clone().unwrap(), copy.payload)
        .await
        .unwrap();
    assert_eq!(&moved.payload[..], b"-REFUSED");
    let got = pull.await.unwrap();
    assert!(
        got.is_empty(),
        "nothing forged was handed to the node: {}",
        got.len()
    );
}
