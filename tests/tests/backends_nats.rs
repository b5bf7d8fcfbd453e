//! The JetStream bus against a real `nats-server -js`: the whole bus conformance suite (each
//! case on its own server, each bus the factory makes under its own prefix), durability of
//! queued invocations across a server restart, dedupe across connections and restarts, and a
//! full work stream refusing publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fnmesh_bus::conformance::{self, request, test_config};
use fnmesh_bus::jetstream::JetStreamBus;
use fnmesh_bus::{Bus, BusConfig, BusError};
use fnmesh_tests::servers::nats::TestNats;

/// A prefix no other bus of this process uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn bus(url: &str, prefix: &str, config: BusConfig) -> JetStreamBus {
    JetStreamBus::connect(url, prefix, config)
        .await
        .expect("connecting the jetstream bus")
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let nats = TestNats::start();
            let url = nats.url();
            let make = |config: BusConfig| {
                let url = url.clone();
                async move {
                    Arc::new(bus(&url, &fresh_prefix(), config).await) as Arc<dyn Bus>
                }
            };
            conformance::$case(&make).await;
        }
    )*};
}

mod conformance_suite {
    use super::*;

    fnmesh_bus::bus_conformance_cases!(cases);
}

/// `run_all` (every case in sequence) on one server, each bus under its own prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_in_sequence() {
    let nats = TestNats::start();
    let url = nats.url();
    conformance::run_all(|config| {
        let url = url.clone();
        async move { Arc::new(bus(&url, &fresh_prefix(), config).await) as Arc<dyn Bus> }
    })
    .await;
}

/// Queued invocations are on disk: a server restart keeps them, and the bus reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_queued_invocations() {
    let mut nats = TestNats::start();
    let prefix = fresh_prefix();
    let bus = bus(&nats.url(), &prefix, test_config()).await;
    let queued: Vec<_> = (0..3).map(|_| request()).collect();
    for r in &queued {
        bus.publish_invocation(r, None).await.unwrap();
    }
    nats.restart();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < queued.len() && tokio::time::Instant::now() < deadline {
        // The client reconnects in the background; pulls fail until it has.
        match bus.pull_invocation(Duration::from_millis(500)).await {
            Ok(Some(d)) => {
                d.acker.ack().await.unwrap();
                got.push(d.request);
            }
            Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got.sort_by_key(|r| r.id);
    let mut want = queued.clone();
    want.sort_by_key(|r| r.id);
    assert_eq!(got, want, "every queued invocation survives the restart");
}

/// A re-publish from another connection, and after a server restart, is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedupe_holds_across_connections_and_restarts() {
    let mut nats = TestNats::start();
    let prefix = fresh_prefix();
    let first = bus(&nats.url(), &prefix, test_config()).await;
    let req = request();
    first.publish_invocation(&req, None).await.unwrap();

    let second = bus(&nats.url(), &prefix, test_config()).await;
    second.publish_invocation(&req, None).await.unwrap();

    nats.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let third = loop {
        match JetStreamBus::connect(&nats.url(), &prefix, test_config()).await {
            Ok(bus) => break bus,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for jetstream after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reconnecting after the restart: {e}"),
        }
    };
    third.publish_invocation(&req, None).await.unwrap();

    let d = third
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the invocation is delivered");
    assert_eq!(d.request.id, req.id);
    assert_eq!(d.attempt, 1);
    d.acker.ack().await.unwrap();
    assert!(
        third
            .pull_invocation(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "three publishes of one id make one delivery"
    );
}

/// A full work stream refuses a publish with `Full`, not a generic backend error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_to_a_full_stream_is_full() {
    let nats = TestNats::start();
    let bus = bus(
        &nats.url(),
        &fresh_prefix(),
        BusConfig {
            capacity: 2,
            ..test_config()
        },
    )
    .await;
    bus.publish_invocation(&request(), None).await.unwrap();
    bus.publish_invocation(&request(), None).await.unwrap();
    let err = bus.publish_invocation(&request(), None).await.unwrap_err();
    assert!(matches!(err, BusError::Full), "got {err:?}");
}

/// Two prefixes on one server never see each other's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefixes_isolate_buses() {
    let nats = TestNats::start();
    let a = bus(&nats.url(), &fresh_prefix(), test_config()).await;
    let b = bus(&nats.url(), &fresh_prefix(), test_config()).await;
    a.publish_invocation(&request(), None).await.unwrap();
    assert!(b
        .pull_invocation(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    assert!(a
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
}

/// An invalid prefix is refused before anything is created.
#[tokio::test]
async fn invalid_prefix_is_refused() {
    let nats = TestNats::start();
    for bad in ["", "A", "a.b", "a b", "a*", "a>"] {
        assert!(
            JetStreamBus::connect(&nats.url(), bad, test_config())
                .await
                .is_err(),
            "prefix {bad:?}"
        );
    }
}

/// A server that allows no more consumers (an account limit, here; a server-wide one under
/// thousands of functions invoked at once) refuses work for a new function as a full queue —
/// retry later — not as a failure of the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_at_its_consumer_limit_is_a_full_queue() {
    let nats = TestNats::start_with_config(
        "accounts { LIMITED { jetstream { max_consumers: 6 }, users: [{ user: \"u\", password: \"p\" }] } }\n\
         no_auth_user: \"u\"",
    );
    let url = nats.url();
    let bus = bus(&url, &fresh_prefix(), test_config()).await;
    let mut published = 0;
    let mut full = 0;
    for i in 0..12 {
        let ns = fnmesh_core::Namespace::parse(&format!("n{i}")).unwrap();
        match bus
            .publish_invocation(&conformance::request_of(&ns, "f", 1), None)
            .await
        {
            Ok(_) => published += 1,
            Err(BusError::Full) => full += 1,
            Err(other) => panic!("function {i}: {other:?}"),
        }
    }
    assert!(published > 0, "work within the limit is taken");
    assert!(full > 0, "work past the limit is refused as a full queue");
}

/// The work stream takes work for more functions than nats-server 2.15's default of 1,000
/// consumers per stream: it sets its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_stream_takes_more_than_a_thousand_functions() {
    let nats = TestNats::start();
    let bus = bus(&nats.url(), &fresh_prefix(), test_config()).await;
    let ns = fnmesh_core::Namespace::parse("many").unwrap();
    for i in 0..1010 {
        bus.publish_invocation(&conformance::request_of(&ns, &format!("f{i}"), 1), None)
            .await
            .unwrap_or_else(|e| panic!("function {i}: {e:?}"));
    }
}

/// The consumer of `request`'s function as the server has it, if it does.
async fn function_consumer(
    bus: &JetStreamBus,
    request: &fnmesh_core::invocation::InvocationRequest,
) -> Option<async_nats::jetstream::consumer::Info> {
    let js = async_nats::jetstream::new(bus.client().clone());
    let stream = js
        .get_stream(fnmesh_core::subjects::bus_stream(
            bus.prefix(),
            fnmesh_core::subjects::BusRole::Invocations,
        ))
        .await
        .unwrap();
    let name = fnmesh_core::subjects::bus_function_consumer(
        bus.prefix(),
        &request.function.namespace,
        &request.function.name,
    );
    stream.consumer_info(&name).await.ok()
}

/// Waits up to 20 s for the server to delete `request`'s function consumer.
async fn until_deleted(bus: &JetStreamBus, request: &fnmesh_core::invocation::InvocationRequest) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while function_consumer(bus, request).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle function consumer is still there after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A gateway's bus whose function consumers expire after `idle`, and a node's bus attached to
/// it on its own connection.
async fn gateway_and_node(url: &str, idle: Duration) -> (JetStreamBus, JetStreamBus) {
    let prefix = fresh_prefix();
    let gateway = bus(
        url,
        &prefix,
        BusConfig {
            function_consumer_idle: idle,
            ..test_config()
        },
    )
    .await;
    let node = bus(
        url,
        &prefix,
        BusConfig {
            manage_streams: false,
            ..test_config()
        },
    )
    .await;
    (gateway, node)
}

/// Function consumers live only while their function has traffic: the server deletes an idle
/// one after the inactive threshold (its `inactive_threshold` is the bus's setting), and the
/// next invocation of that function makes it again and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_function_consumer_is_deleted_and_made_again() {
    let nats = TestNats::start();
    let (gateway, node) = gateway_and_node(&nats.url(), Duration::from_secs(1)).await;
    let ns = fnmesh_core::Namespace::parse("idle").unwrap();
    let first = conformance::request_of(&ns, "f", 2);
    gateway.publish_invocation(&first, None).await.unwrap();
    let info = function_consumer(&gateway, &first)
        .await
        .expect("the publish made the function's consumer");
    assert_eq!(info.config.inactive_threshold, Duration::from_secs(1));
    assert_eq!(info.config.max_ack_pending, 2);
    let d = node
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the first invocation is delivered");
    assert_eq!(d.request.id, first.id);
    d.acker.ack().await.unwrap();

    until_deleted(&gateway, &first).await;

    let second = conformance::request_of(&ns, "f", 2);
    gateway.publish_invocation(&second, None).await.unwrap();
    let d = node
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("an invocation after the consumer expired is delivered");
    assert_eq!(d.request.id, second.id);
    d.acker.ack().await.unwrap();
}

/// Pulls until `expected` are each delivered once (acking them), for up to 15 s.
async fn deliver_all(node: &JetStreamBus, expected: &[fnmesh_core::InvocationId]) {
    let mut delivered = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while delivered.len() < expected.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "work waiting without its consumer was not delivered within 15 s (got {delivered:?})"
        );
        if let Some(d) = node.pull_invocation(Duration::from_secs(1)).await.unwrap() {
            delivered.push(d.request.id);
            d.acker.ack().await.unwrap();
        }
    }
    delivered.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(delivered, expected, "each delivered once");
}

/// Work that waits while its consumer is gone — deleted by the server because no node pulled
/// for the whole threshold, or between a gateway's check and its publish — is found: a node
/// that sees the work without a consumer reports it, and a gateway makes the consumer again
/// with the function's cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_whose_consumer_was_deleted_is_delivered() {
    let nats = TestNats::start();
    let ns = fnmesh_core::Namespace::parse("stranded").unwrap();

    // Nobody pulls: the server deletes the consumer with the work still in the stream.
    let (gateway, node) = gateway_and_node(&nats.url(), Duration::from_secs(1)).await;
    let waiting = conformance::request_of(&ns, "f", 3);
    gateway.publish_invocation(&waiting, None).await.unwrap();
    until_deleted(&gateway, &waiting).await;
    deliver_all(&node, &[waiting.id]).await;
    let info = function_consumer(&gateway, &waiting)
        .await
        .expect("the consumer was made again");
    assert_eq!(info.config.max_ack_pending, 3, "with the function's cap");

    // Deleted right after the gateway made sure of it: its next publish trusts its check.
    let (gateway, node) = gateway_and_node(&nats.url(), Duration::from_secs(60)).await;
    let before = conformance::request_of(&ns, "g", 2);
    gateway.publish_invocation(&before, None).await.unwrap();
    let js = async_nats::jetstream::new(gateway.client().clone());
    js.get_stream(fnmesh_core::subjects::bus_stream(
        gateway.prefix(),
        fnmesh_core::subjects::BusRole::Invocations,
    ))
    .await
    .unwrap()
    .delete_consumer(&fnmesh_core::subjects::bus_function_consumer(
        gateway.prefix(),
        &ns,
        &before.function.name,
    ))
    .await
    .unwrap();
    let after = conformance::request_of(&ns, "g", 2);
    gateway.publish_invocation(&after, None).await.unwrap();
    assert!(function_consumer(&gateway, &after).await.is_none());
    deliver_all(&node, &[before.id, after.id]).await;
    let info = function_consumer(&gateway, &after)
        .await
        .expect("the consumer was made again");
    assert_eq!(info.config.max_ack_pending, 2, "with the function's cap");
}

/// `client`'s subscription to `subject`, registered at the server: a message the client
/// publishes after subscribing comes back to it (the server handles a connection's commands
/// in order), so what another connection publishes from now on reaches the subscription.
/// (`flush` only empties the client's buffer: the server may not have read the `SUB` yet.)
async fn subscribed(client: &async_nats::Client, subject: String) -> async_nats::Subscriber {
    let subscriber = client.subscribe(subject).await.unwrap();
    probe_round_trip(client).await;
    subscriber
}

/// Returns once a probe `client` publishes to an inbox of its own comes back: the server has
/// handled everything `client` sent before it, and `client` has received everything the
/// server forwarded to it before the probe.
async fn probe_round_trip(client: &async_nats::Client) {
    use futures::StreamExt as _;

    let probe = client.new_inbox();
    let mut probes = client.subscribe(probe.clone()).await.unwrap();
    client.publish(probe, "".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), probes.next())
        .await
        .expect("the probe comes back")
        .expect("the probe subscription is open");
}

/// A receipt for a sync reply counts only when it is the gateway's: one published on the
/// node's receipt inbox by anyone else (no header, a made-up one, or one copied from another
/// reply) is ignored, so the node still publishes its `Finished` event; the gateway's own,
/// sent once the outcome is stored, counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_counts_only_from_the_gateway() {
    use futures::StreamExt as _;

    let nats = TestNats::start();
    let bus = bus(&nats.url(), &fresh_prefix(), test_config()).await;
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut earlier_receipt: Option<String> = None;
    for confirm in [false, true] {
        let mut inbox = bus.open_inbox().await.unwrap();
        // What a party that can read the gateway's inbox sees: the reply and its receipt inbox.
        let mut watched = subscribed(&spy, inbox.reply_to.0.clone()).await;
        let req = request();
        bus.publish_invocation(&req, Some(&inbox.reply_to))
            .await
            .unwrap();
        let d = bus
            .pull_invocation(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a delivery");
        let mut sent = conformance::outcome(&req);
        sent.result.node_id = Some("node-a".to_owned());
        let receipt = bus
            .reply_with_receipt(d.reply_to.as_ref().unwrap(), &sent)
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), watched.next())
            .await
            .unwrap()
            .unwrap();
        let receipt_inbox = seen
            .reply
            .expect("the reply asks for a receipt")
            .to_string();
        assert!(receipt_inbox.starts_with("_INBOX."), "{receipt_inbox}");
        inbox.receiver.recv().await.expect("the reply");
        let mut forged = vec![async_nats::HeaderMap::new()];
        let mut made_up = async_nats::HeaderMap::new();
        made_up.insert(
            "Fnmesh-Receipt",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        forged.push(made_up);
        if let Some(earlier) = &earlier_receipt {
            let mut copied = async_nats::HeaderMap::new();
            copied.insert("Fnmesh-Receipt", earlier.as_str());
            forged.push(copied);
        }
        for headers in forged {
            spy.publish_with_headers(receipt_inbox.clone(), headers, "".into())
                .await
                .unwrap();
        }
        spy.flush().await.unwrap();
        if confirm {
            assert!(bus.confirm_stored(req.id).await);
            assert!(
                receipt.stored(Duration::from_secs(5)).await,
                "the gateway's receipt counts"
            );
        } else {
            assert!(
                !receipt.stored(Duration::from_millis(500)).await,
                "forged receipts do not count"
            );
            // Keep the real one, to replay it on the next reply.
            let mut receipts = subscribed(&spy, receipt_inbox.clone()).await;
            assert!(bus.confirm_stored(req.id).await);
            let real = tokio::time::timeout(Duration::from_secs(5), receipts.next())
                .await
                .unwrap()
                .unwrap();
            earlier_receipt = real
                .headers
                .as_ref()
                .and_then(|h| h.get("Fnmesh-Receipt"))
                .map(|v| v.as_str().to_owned());
            assert!(
                earlier_receipt.is_some(),
                "the gateway's receipt has its header"
            );
        }
        d.acker.ack().await.unwrap();
    }
}

/// The pull requests (`$JS.API.CONSUMER.MSG.NEXT`) for `consumer` that reached `pulls`, a
/// subscription of `spy`'s, before a probe `spy` sends now comes back (the server forwards a
/// connection's messages in order).
async fn pulls_so_far(
    spy: &async_nats::Client,
    pulls: &mut async_nats::Subscriber,
    consumer: &str,
) -> usize {
    use futures::{FutureExt as _, StreamExt as _};

    probe_round_trip(spy).await;
    let suffix = format!(".{consumer}");
    let mut seen = 0;
    while let Some(Some(message)) = pulls.next().now_or_never() {
        if message.subject.ends_with(&suffix) {
            seen += 1;
        }
    }
    seen
}

/// Settling a delivery hints its consumer freed, and only a node holding that consumer at its
/// cap fetches from it again (and the settling node itself, which has a slot free now): another
/// node that found nothing more there sends no pull request for it (every node used to send
/// one after every settlement, held for the fetch's whole expiry, then a consumer-info
/// request). A node at the cap does fetch, and gets the next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freed_slot_is_fetched_again_only_by_a_node_at_the_cap() {
    let nats = TestNats::start();
    let prefix = fresh_prefix();
    let config = BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    };
    let node_a = Arc::new(bus(&nats.url(), &prefix, config.clone()).await);
    let node_b = Arc::new(
        bus(
            &nats.url(),
            &prefix,
            BusConfig {
                manage_streams: false,
                ..config
            },
        )
        .await,
    );
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut pulls = subscribed(&spy, "$JS.API.CONSUMER.MSG.NEXT.>".to_owned()).await;
    let ns = fnmesh_core::Namespace::parse("freed").unwrap();
    let consumer_of = |r: &fnmesh_core::invocation::InvocationRequest| {
        fnmesh_core::subjects::bus_function_consumer(
            node_a.prefix(),
            &r.function.namespace,
            &r.function.name,
        )
    };
    let waiter = |node: &Arc<JetStreamBus>, wait: Duration| {
        let node = node.clone();
        tokio::spawn(async move { node.pull_invocation(wait).await.unwrap() })
    };

    // Room under the cap, and nothing more to fetch after node A's ack: node B, pulling all
    // along, does not ask for more.
    let roomy = conformance::request_of(&ns, "roomy", 4);
    node_a.publish_invocation(&roomy, None).await.unwrap();
    let d = node_a
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a delivery");
    let roomy_consumer = consumer_of(&roomy);
    assert!(pulls_so_far(&spy, &mut pulls, &roomy_consumer).await >= 1);
    let b_waits = waiter(&node_b, Duration::from_millis(900));
    // Node B's first sweep sees the delivery in flight and looks at its consumer once.
    tokio::time::sleep(Duration::from_millis(150)).await;
    pulls_so_far(&spy, &mut pulls, &roomy_consumer).await;
    d.acker.ack().await.unwrap();
    assert!(
        b_waits.await.unwrap().is_none(),
        "nothing more was published"
    );
    assert_eq!(
        pulls_so_far(&spy, &mut pulls, &roomy_consumer).await,
        0,
        "no pull request from node B for a consumer with room and nothing more"
    );

    // At its cap: the second invocation waits for the first one's ack.
    let tight = [
        conformance::request_of(&ns, "tight", 1),
        conformance::request_of(&ns, "tight", 1),
    ];
    for r in &tight {
        node_a.publish_invocation(r, None).await.unwrap();
    }
    let first = node_a
        .pull_invocation(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the first delivery");
    assert!(
        node_b
            .pull_invocation(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "max_concurrency 1 holds the second back"
    );
    let tight_consumer = consumer_of(&tight[0]);
    pulls_so_far(&spy, &mut pulls, &tight_consumer).await;
    let b_waits = waiter(&node_b, Duration::from_secs(5));
    first.acker.ack().await.unwrap();
    let second = b_waits
        .await
        .unwrap()
        .expect("node B gets the second delivery after node A's ack");
    assert_ne!(second.request.id, first.request.id);
    assert!(tight.iter().any(|r| r.id == second.request.id));
    assert!(pulls_so_far(&spy, &mut pulls, &tight_consumer).await >= 1);
    second.acker.ack().await.unwrap();
}
