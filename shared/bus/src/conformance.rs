//! The conformance suite every [`Bus`] must pass (the in-process bus now, JetStream later).
//!
//! Each case is a `pub async fn` taking a factory that builds a fresh, empty bus from the
//! case's [`BusConfig`] (short ack waits, small capacities); [`run_all`] runs every case. A
//! backend on a shared server must isolate each bus the factory makes (e.g. its own stream and
//! subject prefix). Assertions panic with a message naming the behaviour that broke.
//!
//! Not in the shared suite: fencing a stale acker (an acker of attempt n settling attempt n+1).
//! JetStream cannot provide it (acks are tied to the stream sequence, not to the delivery:
//! nats-server#4786), so it is part of the in-process bus's own tests only, and records are
//! fenced by attempt in the metadata store instead.
//!
//! ```text
//! fnmesh_bus::conformance::run_all(|config| async move {
//!     let bus: Arc<dyn Bus> = Arc::new(JetStreamBus::connect(&url, &fresh_prefix(), config).await?);
//!     bus
//! })
//! .await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::{Bus, BusConfig, BusError, Delivery, Lane, ReplyTo};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::function::{CodeInfo, Function, FunctionConfig, Runtime};
use fnmesh_core::ids::{FunctionId, InvocationId};
use fnmesh_core::invocation::{
    InvocationLogs, InvocationOutcome, InvocationRequest, InvocationResult, InvocationStatus,
    NodeEvent,
};
use fnmesh_core::names::{FunctionName, Namespace};

/// The ack wait most cases use: short, so expiry is quick to observe.
pub const ACK_WAIT: Duration = Duration::from_millis(200);

/// Longest any single expected delivery may take to show up.
const PATIENCE: Duration = Duration::from_secs(5);

/// The config of most cases: a short ack wait, 5 attempts, a roomy queue.
pub fn test_config() -> BusConfig {
    BusConfig {
        ack_wait: ACK_WAIT,
        max_deliver: 5,
        capacity: 10_000,
        function_capacity: 10_000,
        namespace_capacity: 10_000,
        dedupe_window: Duration::from_secs(60),
        event_capacity: 10_000,
        manage_streams: true,
        replicas: 1,
        function_consumer_idle: crate::DEFAULT_FUNCTION_CONSUMER_IDLE,
        direct_sync: true,
        signatures: crate::Signatures::process_local(),
    }
}

/// Every case of this suite, in the order [`run_all`] runs them. An engine's test file
/// generates one test per case from this one list (`fnmesh_bus::bus_conformance_cases!(cases);` with its own
/// `cases!` macro), so no engine can miss a case.
#[macro_export]
macro_rules! bus_conformance_cases {
    ($callback:ident) => {
        $callback!(
            ping,
            publish_pull_ack,
            pull_times_out_when_empty,
            publish_is_deduplicated,
            nak_redelivers_with_next_attempt,
            nak_with_delay_waits,
            ack_wait_expiry_redelivers,
            in_progress_prevents_redelivery,
            max_deliver_dead_letters,
            term_drops_without_dead_letter,
            full_queue_refuses_publish,
            full_lanes_refuse_only_their_function_or_namespace,
            inbox_reply_roundtrip,
            send_sync_reaches_a_waiting_puller,
            reply_to_a_dropped_inbox_is_ok,
            a_stored_reply_gets_its_receipt,
            many_inboxes_each_get_their_own_reply,
            malformed_reply_address_is_refused,
            events_publish_pull_ack,
            events_pull_in_batches,
            full_event_stream_refuses_events,
            concurrent_publishers_and_pullers,
            max_concurrency_caps_in_flight,
            a_flooded_function_does_not_hold_up_another,
            priorities_share_deliveries_without_starving,
            queue_stats_count_pending_and_in_flight,
            a_delivery_knows_when_work_waits_behind_it,
            traceparent_travels_with_the_request,
            log_followers_get_their_function_only,
            cancellations_reach_every_follower
        );
    };
}

/// Runs every case, one after the other, each on a fresh bus from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(&make).await; )* };
    }
    crate::bus_conformance_cases!(run);
}

// ---- helpers ----

/// A fresh invocation request (unique id and namespace).
pub fn request() -> InvocationRequest {
    let now = Utc::now();
    let namespace =
        Namespace::parse(&format!("t-{:016x}", rand::random::<u64>())).expect("namespace");
    InvocationRequest {
        id: InvocationId::new(),
        function: Function {
            image: None,
            id: FunctionId::new(),
            namespace,
            name: FunctionName::parse("echo").expect("name"),
            version: 1,
            runtime: Runtime::Python3,
            handler: "main.handle".to_owned(),
            code: CodeInfo {
                checksum: Checksum::of(b"print(1)"),
                size: 8,
                source_type: "inline".to_owned(),
            },
            config: FunctionConfig::default(),
            metadata: Default::default(),
            created_at: now,
            updated_at: now,
        },
        payload: serde_json::json!({ "n": rand::random::<u32>() }),
        created_at: now,
        trace_id: None,
        traceparent: None,
        secrets: None,
        registry_auth: None,
        forwarded_to: None,
        alias: None,
        priority: Default::default(),
        notify_destinations: false,
    }
}

/// A fresh request of function `name` in `namespace` with `max_concurrency`.
pub fn request_of(namespace: &Namespace, name: &str, max_concurrency: u32) -> InvocationRequest {
    let mut r = request();
    r.function.namespace = namespace.clone();
    r.function.name = FunctionName::parse(name).expect("name");
    r.function.config.max_concurrency = max_concurrency;
    r
}

fn fresh_namespace() -> Namespace {
    Namespace::parse(&format!("t-{:016x}", rand::random::<u64>())).expect("namespace")
}

/// A succeeded outcome of `request`'s first attempt.
pub fn outcome(request: &InvocationRequest) -> InvocationOutcome {
    let mut result = InvocationResult::queued(request);
    result.status = InvocationStatus::Succeeded;
    result.attempt = 1;
    result.result = Some(serde_json::json!({ "ok": true }));
    result.completed_at = Some(Utc::now());
    InvocationOutcome {
        result,
        logs: InvocationLogs {
            text: "hello\n".to_owned(),
            truncated: false,
        },
    }
}

/// The `Started` event of `request`'s attempt `attempt`.
pub fn started(request: &InvocationRequest, attempt: u32) -> NodeEvent {
    NodeEvent::Started {
        id: request.id,
        namespace: request.function.namespace.clone(),
        attempt,
        node_id: "node-1".to_owned(),
        started_at: Utc::now(),
    }
}

/// Pulls one delivery, failing the case if none arrives within [`PATIENCE`].
async fn expect_delivery(bus: &dyn Bus, what: &str) -> Delivery {
    bus.pull_invocation(PATIENCE)
        .await
        .expect("pull_invocation")
        .unwrap_or_else(|| panic!("expected a delivery: {what}"))
}

/// Asserts nothing is delivered for `wait`.
async fn expect_nothing(bus: &dyn Bus, wait: Duration, what: &str) {
    if let Some(d) = bus.pull_invocation(wait).await.expect("pull_invocation") {
        panic!(
            "expected no delivery ({what}), got {} attempt {}",
            d.request.id, d.attempt
        );
    }
}

// ---- cases ----

/// `ping` succeeds on a fresh bus.
pub async fn ping<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    bus.ping().await.expect("ping");
}

/// A published invocation is delivered once, with attempt 1, and an ack settles it.
pub async fn publish_pull_ack<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.expect("publish");
    let d = expect_delivery(&*bus, "the published invocation").await;
    assert_eq!(d.request, req, "the delivery carries the request unchanged");
    assert_eq!(d.attempt, 1, "first delivery is attempt 1");
    assert_eq!(d.reply_to, None, "no reply address was given");
    d.acker.ack().await.expect("ack");
    d.acker.ack().await.expect("acking twice is harmless");
    expect_nothing(
        &*bus,
        ACK_WAIT * 2,
        "an acked invocation is never redelivered",
    )
    .await;
}

/// An empty bus returns `None` after about `wait`.
pub async fn pull_times_out_when_empty<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let start = Instant::now();
    let got = bus
        .pull_invocation(Duration::from_millis(150))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(got.is_none(), "an empty bus delivers nothing");
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(3),
        "pull waited {elapsed:?} for a 150 ms wait"
    );
    assert!(bus
        .pull_event(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    assert!(bus
        .pull_dead_letter(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
}

/// Re-publishing an id (queued, in flight or completed) within the window is ignored.
pub async fn publish_is_deduplicated<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    bus.publish_invocation(&req, None)
        .await
        .expect("a duplicate publish is accepted");
    let d = expect_delivery(&*bus, "the invocation").await;
    bus.publish_invocation(&req, None)
        .await
        .expect("re-publish while in flight is accepted");
    d.acker.ack().await.unwrap();
    bus.publish_invocation(&req, None)
        .await
        .expect("re-publish after completion is accepted");
    expect_nothing(
        &*bus,
        ACK_WAIT * 2,
        "duplicates never make a second delivery",
    )
    .await;
}

/// A nak redelivers at once, with the next attempt number.
pub async fn nak_redelivers_with_next_attempt<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    let d1 = expect_delivery(&*bus, "attempt 1").await;
    d1.acker.nak(None).await.expect("nak");
    let start = Instant::now();
    let d2 = expect_delivery(&*bus, "the nak'ed invocation again").await;
    assert_eq!(d2.request.id, req.id);
    assert_eq!(d2.attempt, 2, "a redelivery counts an attempt");
    assert!(
        start.elapsed() < ACK_WAIT,
        "a nak without delay redelivers before the ack wait would"
    );
    d2.acker.ack().await.unwrap();
    expect_nothing(&*bus, ACK_WAIT * 2, "acked after the nak").await;
}

/// A nak with a delay redelivers only after the delay.
pub async fn nak_with_delay_waits<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    let d1 = expect_delivery(&*bus, "attempt 1").await;
    let delay = Duration::from_millis(400);
    let start = Instant::now();
    d1.acker.nak(Some(delay)).await.expect("nak with delay");
    expect_nothing(&*bus, Duration::from_millis(150), "during the nak delay").await;
    let d2 = expect_delivery(&*bus, "after the nak delay").await;
    assert!(
        start.elapsed() >= delay - Duration::from_millis(50),
        "redelivered after {:?}, before the {delay:?} delay",
        start.elapsed()
    );
    assert_eq!(d2.attempt, 2);
    d2.acker.ack().await.unwrap();
}

/// A delivery not acked within the ack wait is redelivered, with the next attempt.
pub async fn ack_wait_expiry_redelivers<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    let start = Instant::now();
    let d1 = expect_delivery(&*bus, "attempt 1").await;
    // A puller already waiting must see the redelivery when the ack wait runs out.
    let d2 = expect_delivery(&*bus, "the redelivery after the ack wait").await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ACK_WAIT - Duration::from_millis(20),
        "redelivered after {elapsed:?}, before the {ACK_WAIT:?} ack wait"
    );
    assert_eq!(d2.request.id, req.id);
    assert_eq!(d2.attempt, 2);
    drop(d1);
    d2.acker.ack().await.unwrap();
    expect_nothing(&*bus, ACK_WAIT * 2, "acked redelivery").await;
}

/// `in_progress` restarts the ack wait, so slow work is not redelivered.
pub async fn in_progress_prevents_redelivery<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    let d = expect_delivery(&*bus, "attempt 1").await;
    let watcher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.pull_invocation(ACK_WAIT * 4).await.unwrap() })
    };
    // Work for 4 ack waits, reporting progress every half ack wait.
    for _ in 0..8 {
        tokio::time::sleep(ACK_WAIT / 2).await;
        d.acker.in_progress().await.expect("in_progress");
    }
    d.acker.ack().await.unwrap();
    let stolen = watcher.await.unwrap();
    assert!(
        stolen.is_none(),
        "a delivery kept in progress must not be redelivered (got attempt {:?})",
        stolen.map(|d| d.attempt)
    );
    expect_nothing(&*bus, ACK_WAIT * 2, "acked after progress").await;
}

/// After `max_deliver` attempts (nak'ed or expired) the invocation is dead-lettered.
pub async fn max_deliver_dead_letters<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        max_deliver: 2,
        ..test_config()
    })
    .await;

    // Through naks.
    let naked = request();
    bus.publish_invocation(&naked, None).await.unwrap();
    for attempt in 1..=2 {
        let d = expect_delivery(&*bus, "a nak'ed attempt").await;
        assert_eq!(d.attempt, attempt);
        d.acker.nak(None).await.unwrap();
    }
    let dead = bus
        .pull_dead_letter(PATIENCE)
        .await
        .unwrap()
        .expect("a dead letter after max_deliver naks");
    assert_eq!(dead.request, naked, "the dead letter carries the request");
    assert_eq!(dead.attempts, 2, "the dead letter counts the attempts");
    expect_nothing(&*bus, ACK_WAIT * 2, "a dead-lettered invocation").await;

    // Through expiry: nobody acks.
    let expired = request();
    bus.publish_invocation(&expired, None).await.unwrap();
    let d1 = expect_delivery(&*bus, "expiring attempt 1").await;
    let d2 = expect_delivery(&*bus, "expiring attempt 2").await;
    assert_eq!((d1.attempt, d2.attempt), (1, 2));
    let dead = bus
        .pull_dead_letter(PATIENCE)
        .await
        .unwrap()
        .expect("a dead letter after max_deliver expiries");
    assert_eq!(dead.request.id, expired.id);
    assert_eq!(dead.attempts, 2);
    expect_nothing(&*bus, ACK_WAIT * 2, "an expired dead letter").await;
    d2.acker
        .ack()
        .await
        .expect("acking a dead-lettered delivery is harmless");
}

/// `term` settles without success and without a dead letter.
pub async fn term_drops_without_dead_letter<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    bus.publish_invocation(&request(), None).await.unwrap();
    let d = expect_delivery(&*bus, "to term").await;
    d.acker.term().await.expect("term");
    expect_nothing(&*bus, ACK_WAIT * 2, "a termed invocation").await;
    assert!(
        bus.pull_dead_letter(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none(),
        "term makes no dead letter"
    );
}

/// A full queue refuses new work with `Full`; settling makes room.
pub async fn full_queue_refuses_publish<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        capacity: 3,
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let accepted: Vec<_> = (0..3).map(|_| request()).collect();
    for r in &accepted {
        bus.publish_invocation(r, None).await.unwrap();
    }
    let err = bus.publish_invocation(&request(), None).await.unwrap_err();
    assert!(
        matches!(err, BusError::Full),
        "publishing past capacity must be Full, got {err:?}"
    );
    bus.publish_invocation(&accepted[0], None)
        .await
        .expect("a duplicate of accepted work is not refused when full");
    let d = expect_delivery(&*bus, "one of the accepted").await;
    let err = bus.publish_invocation(&request(), None).await.unwrap_err();
    assert!(
        matches!(err, BusError::Full),
        "in-flight work still counts, got {err:?}"
    );
    d.acker.ack().await.unwrap();
    bus.publish_invocation(&request(), None)
        .await
        .expect("an ack makes room");
}

/// An outcome sent to an open inbox arrives.
pub async fn inbox_reply_roundtrip<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let mut inbox = bus.open_inbox().await.expect("open_inbox");
    let other = bus.open_inbox().await.unwrap();
    assert_ne!(inbox.reply_to, other.reply_to, "inbox addresses are unique");

    let req = request();
    bus.publish_invocation(&req, Some(&inbox.reply_to))
        .await
        .unwrap();
    let d = expect_delivery(&*bus, "a sync invocation").await;
    assert_eq!(
        d.reply_to.as_ref(),
        Some(&inbox.reply_to),
        "the delivery carries the reply address"
    );
    reply_and_receive(&*bus, d, &mut inbox, &req).await;
}

/// Replies to delivery `d` of `req` with its outcome, acks it, and checks the outcome arrives
/// unchanged in `inbox`.
async fn reply_and_receive(
    bus: &dyn Bus,
    d: Delivery,
    inbox: &mut crate::Inbox,
    req: &InvocationRequest,
) {
    let sent = outcome(req);
    bus.reply(d.reply_to.as_ref().unwrap(), &sent)
        .await
        .expect("reply");
    d.acker.ack().await.unwrap();
    let got = tokio::time::timeout(PATIENCE, inbox.receiver.recv())
        .await
        .expect("the reply arrives in time")
        .expect("the inbox is open");
    assert_eq!(got, sent, "the reply arrives unchanged");
}

/// A sync invocation sent with [`Bus::send_sync`] while a puller waits reaches it with its
/// reply address, and the reply arrives; a delivery sent direct cannot be redelivered, a
/// queued one can.
pub async fn send_sync_reaches_a_waiting_puller<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let mut inbox = bus.open_inbox().await.expect("open_inbox");
    let req = request();
    let puller = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.pull_invocations(4, PATIENCE).await })
    };
    // The pull is waiting (an engine with a direct path offers its slots then).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = bus
        .send_sync(&req, &inbox.reply_to)
        .await
        .expect("send_sync");
    let mut deliveries = puller.await.unwrap().expect("pull");
    assert_eq!(deliveries.len(), 1, "one delivery");
    let d = deliveries.remove(0);
    assert_eq!(d.request.id, req.id);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.reply_to.as_ref(), Some(&inbox.reply_to));
    assert_eq!(
        d.acker.redelivers(),
        sent == crate::Sent::Queued,
        "only queued work is delivered again ({sent:?})"
    );
    reply_and_receive(&*bus, d, &mut inbox, &req).await;
}

/// Many open inboxes, replied to in another order than they were opened (one dropped on the
/// way): each gets exactly its own reply.
pub async fn many_inboxes_each_get_their_own_reply<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let mut inboxes = Vec::new();
    for _ in 0..40 {
        inboxes.push((bus.open_inbox().await.unwrap(), outcome(&request())));
    }
    let dropped = inboxes.remove(7);
    let dropped_to = dropped.0.reply_to.clone();
    drop(dropped);
    bus.reply(&dropped_to, &outcome(&request())).await.unwrap();
    for (inbox, sent) in inboxes.iter().rev() {
        bus.reply(&inbox.reply_to, sent).await.unwrap();
    }
    for (inbox, sent) in &mut inboxes {
        let got = tokio::time::timeout(PATIENCE, inbox.receiver.recv())
            .await
            .expect("each reply arrives in time")
            .expect("the inbox is open");
        assert_eq!(&got, sent, "an inbox got another invocation's reply");
        assert!(
            inbox.receiver.try_recv().is_err(),
            "an inbox got a second reply"
        );
    }
}

/// A sync reply that asks for a receipt gets it once the side that received it confirms the
/// outcome stored ([`Bus::confirm_stored`]), once; never without that confirmation; and
/// nothing is owed for an outcome that reached no inbox, or that nobody replied with.
pub async fn a_stored_reply_gets_its_receipt<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    assert!(
        !bus.confirm_stored(InvocationId::new()).await,
        "nothing is owed for an outcome nobody replied with"
    );
    // Replies to two sync invocations, of which the first is confirmed stored.
    let mut replied = Vec::new();
    for _ in 0..2 {
        let mut inbox = bus.open_inbox().await.expect("open_inbox");
        let req = request();
        bus.publish_invocation(&req, Some(&inbox.reply_to))
            .await
            .expect("publish");
        let d = bus
            .pull_invocation(PATIENCE)
            .await
            .expect("pull")
            .expect("a delivery");
        assert_eq!(d.request.id, req.id);
        let mut sent = outcome(&req);
        sent.result.node_id = Some("node-a".to_owned());
        let receipt = bus
            .reply_with_receipt(d.reply_to.as_ref().expect("a reply address"), &sent)
            .await
            .expect("reply");
        let got = tokio::time::timeout(PATIENCE, inbox.receiver.recv())
            .await
            .expect("the reply arrives in time")
            .expect("the inbox is open");
        assert_eq!(got, sent, "the reply arrives unchanged");
        d.acker.ack().await.expect("ack");
        replied.push((req.id, receipt));
    }
    let (unconfirmed, confirmed) = (replied.pop().unwrap(), replied.pop().unwrap());
    assert!(bus.confirm_stored(confirmed.0).await, "a receipt is owed");
    assert!(
        confirmed.1.stored(PATIENCE).await,
        "the receipt reaches the replier"
    );
    assert!(
        !bus.confirm_stored(confirmed.0).await,
        "a receipt is sent once"
    );
    assert!(
        !unconfirmed.1.stored(Duration::from_millis(300)).await,
        "no receipt before the outcome is confirmed stored"
    );
    // A reply that reached no inbox: nothing owed, no receipt.
    let inbox = bus.open_inbox().await.expect("open_inbox");
    let to = inbox.reply_to.clone();
    drop(inbox);
    let req = request();
    let mut sent = outcome(&req);
    sent.result.node_id = Some("node-a".to_owned());
    let receipt = bus.reply_with_receipt(&to, &sent).await.expect("reply");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!bus.confirm_stored(req.id).await, "nothing owed");
    assert!(!receipt.stored(Duration::from_millis(100)).await);
}

/// Replying to an inbox that was dropped is not an error (the reply is lost).
pub async fn reply_to_a_dropped_inbox_is_ok<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let inbox = bus.open_inbox().await.unwrap();
    let to = inbox.reply_to.clone();
    drop(inbox);
    bus.reply(&to, &outcome(&request()))
        .await
        .expect("a reply to a dropped inbox is Ok");
    // A full inbox loses the second reply without error too.
    let inbox = bus.open_inbox().await.unwrap();
    for _ in 0..3 {
        bus.reply(&inbox.reply_to, &outcome(&request()))
            .await
            .expect("a reply to a full inbox is Ok");
    }
}

/// An address the bus never issued is `InvalidReply`.
pub async fn malformed_reply_address_is_refused<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    for bad in ["", "not an inbox", "a.*.>", "\u{0}"] {
        let err = bus
            .reply(&ReplyTo(bad.to_owned()), &outcome(&request()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BusError::InvalidReply),
            "reply address {bad:?} must be InvalidReply, got {err:?}"
        );
    }
}

/// Node events: delivered, nak'ed ones again, acked ones never again.
pub async fn events_publish_pull_ack<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let req = request();
    let e1 = started(&req, 1);
    let e2 = NodeEvent::Finished(Box::new(outcome(&req)));
    bus.publish_event(&e1).await.expect("publish_event");
    bus.publish_event(&e2).await.expect("publish_event");

    let mut pending = vec![e1.clone(), e2.clone()];
    let first = bus
        .pull_event(PATIENCE)
        .await
        .unwrap()
        .expect("an event is delivered");
    assert!(pending.contains(&first.event), "a published event");
    first.acker.ack().await.unwrap();
    pending.retain(|e| e != &first.event);

    let second = bus
        .pull_event(PATIENCE)
        .await
        .unwrap()
        .expect("the other event is delivered");
    assert_eq!(second.event, pending[0]);
    second.acker.nak(None).await.unwrap();
    let again = bus
        .pull_event(PATIENCE)
        .await
        .unwrap()
        .expect("a nak'ed event is redelivered");
    assert_eq!(again.event, pending[0]);
    // Not acked: the ack wait brings it back once more.
    let expired = bus
        .pull_event(PATIENCE)
        .await
        .unwrap()
        .expect("an unacked event is redelivered after the ack wait");
    assert_eq!(expired.event, pending[0]);
    expired.acker.ack().await.unwrap();
    assert!(
        bus.pull_event(ACK_WAIT * 2).await.unwrap().is_none(),
        "acked events are never redelivered"
    );
}

/// `pull_events` returns as soon as events are ready, every one ready up to `max`, and each
/// event once until it is settled.
pub async fn events_pull_in_batches<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let req = request();
    let published: Vec<NodeEvent> = (1..=5).map(|attempt| started(&req, attempt)).collect();
    for event in &published {
        bus.publish_event(event).await.expect("publish_event");
    }
    let mut seen = Vec::new();
    let begun = Instant::now();
    let first = bus.pull_events(3, PATIENCE).await.unwrap();
    assert_eq!(first.len(), 3, "a batch holds every ready event up to max");
    let rest = bus.pull_events(10, PATIENCE).await.unwrap();
    assert!(
        begun.elapsed() < PATIENCE,
        "a pull returns once events are ready, not at its expiry"
    );
    assert_eq!(rest.len(), 2, "the next batch holds the remaining events");
    for delivery in first.into_iter().chain(rest) {
        seen.push(delivery.event.clone());
        delivery.acker.ack().await.unwrap();
    }
    for event in &published {
        assert!(seen.contains(event), "every published event is pulled once");
    }
    let begun = Instant::now();
    assert!(
        bus.pull_events(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "nothing is left once every event is acked"
    );
    assert!(
        begun.elapsed() >= Duration::from_millis(250),
        "an empty pull waits for its expiry"
    );
    assert!(
        bus.pull_events(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "a pull without waiting answers at once"
    );
}

/// A function with `function_capacity` invocations queued refuses one more of itself only
/// (`LaneFull(Function)`), a namespace with `namespace_capacity` refuses more of its own
/// functions only (`LaneFull(Namespace)`); other functions and namespaces go on; settling work
/// makes room again (a JetStream bus may count a namespace up to a second late).
pub async fn full_lanes_refuse_only_their_function_or_namespace<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        function_capacity: 2,
        namespace_capacity: 3,
        ..test_config()
    })
    .await;
    let flooded = fresh_namespace();
    let other = fresh_namespace();
    for _ in 0..2 {
        bus.publish_invocation(&request_of(&flooded, "slow", 10), None)
            .await
            .expect("within the function's share");
    }
    let err = bus
        .publish_invocation(&request_of(&flooded, "slow", 10), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::LaneFull(Lane::Function)),
        "a third of one function is LaneFull(Function), got {err:?}"
    );
    bus.publish_invocation(&request_of(&flooded, "fast", 10), None)
        .await
        .expect("another function of the namespace still has room");
    let err = bus
        .publish_invocation(&request_of(&flooded, "third", 10), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::LaneFull(Lane::Namespace)),
        "a fourth of one namespace is LaneFull(Namespace), got {err:?}"
    );
    for name in ["slow", "fast", "third"] {
        bus.publish_invocation(&request_of(&other, name, 10), None)
            .await
            .expect("another namespace is not affected");
    }
    // Settling one of the flooded namespace's work makes room for it again.
    let delivery = loop {
        let d = expect_delivery(bus.as_ref(), "queued work").await;
        if d.request.function.namespace == flooded {
            break d;
        }
        d.acker.nak(None).await.unwrap();
    };
    delivery.acker.ack().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match bus
            .publish_invocation(&request_of(&flooded, "third", 10), None)
            .await
        {
            Ok(()) => break,
            Err(BusError::LaneFull(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("settled work makes room in its namespace, got {e:?}"),
        }
    }
}

/// At `event_capacity` unrecorded events, publishing another is `Full` (nothing is dropped
/// silently); recording one makes room again.
pub async fn full_event_stream_refuses_events<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        event_capacity: 3,
        ..test_config()
    })
    .await;
    let req = request();
    for attempt in 1..=3 {
        bus.publish_event(&started(&req, attempt))
            .await
            .expect("events up to the capacity are taken");
    }
    let err = bus.publish_event(&started(&req, 4)).await.unwrap_err();
    assert!(
        matches!(err, BusError::Full),
        "an event past the capacity is Full, got {err:?}"
    );
    let recorded = bus
        .pull_event(PATIENCE)
        .await
        .unwrap()
        .expect("a kept event is delivered");
    recorded.acker.ack().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match bus.publish_event(&started(&req, 5)).await {
            Ok(()) => break,
            Err(BusError::Full) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a recorded event makes room for another, got {e:?}"),
        }
    }
}

/// 1000 invocations from 4 publishers reach 4 pullers exactly once each.
pub async fn concurrent_publishers_and_pullers<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    const TOTAL: usize = 1000;
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let requests: Vec<_> = (0..TOTAL).map(|_| request()).collect();
    let expected: HashSet<_> = requests.iter().map(|r| r.id).collect();

    let mut pullers = Vec::new();
    for _ in 0..4 {
        let bus = bus.clone();
        pullers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(d) = bus
                .pull_invocation(Duration::from_millis(500))
                .await
                .unwrap()
            {
                assert_eq!(d.attempt, 1, "no redelivery in this case");
                got.push(d.request.id);
                d.acker.ack().await.unwrap();
            }
            got
        }));
    }
    let mut publishers = Vec::new();
    for chunk in requests.chunks(TOTAL / 4) {
        let bus = bus.clone();
        let chunk = chunk.to_vec();
        publishers.push(tokio::spawn(async move {
            for r in &chunk {
                bus.publish_invocation(r, None).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut all = Vec::new();
    for p in pullers {
        all.extend(p.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no invocation is delivered twice");
    assert_eq!(unique, expected, "every invocation is delivered");
}

/// A function's `max_concurrency` caps its deliveries in flight across every puller; settling
/// one makes room for the next.
pub async fn max_concurrency_caps_in_flight<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let ns = fresh_namespace();
    for _ in 0..5 {
        bus.publish_invocation(&request_of(&ns, "capped", 2), None)
            .await
            .unwrap();
    }
    let first = expect_delivery(&*bus, "capped 1").await;
    let _second = expect_delivery(&*bus, "capped 2").await;
    expect_nothing(
        &*bus,
        Duration::from_millis(700),
        "a third delivery while max_concurrency = 2 are in flight",
    )
    .await;
    first.acker.ack().await.unwrap();
    let third = expect_delivery(&*bus, "capped 3 after an ack made room").await;
    assert_eq!(third.request.function.name.as_str(), "capped");
}

/// Deliveries go round-robin over functions: a function with a deep backlog (at its cap)
/// does not hold up another function's work.
pub async fn a_flooded_function_does_not_hold_up_another<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let ns = fresh_namespace();
    for _ in 0..50 {
        bus.publish_invocation(&request_of(&ns, "slow", 4), None)
            .await
            .unwrap();
    }
    let fast = request_of(&ns, "fast", 4);
    bus.publish_invocation(&fast, None).await.unwrap();
    let mut held = Vec::new();
    let mut got_fast = false;
    for _ in 0..5 {
        let Some(d) = bus.pull_invocation(PATIENCE).await.unwrap() else {
            break;
        };
        if d.request.id == fast.id {
            got_fast = true;
            break;
        }
        held.push(d);
    }
    assert!(
        got_fast,
        "the fast function's invocation must come within the slow one's cap ({} slow delivered first)",
        held.len()
    );
    assert!(
        held.len() <= 4,
        "at most the slow function's cap went first"
    );
}

/// Work of each priority of a function queues in a lane of its own, and deliveries go to the
/// priorities with work 6 : 3 : 1 ([`fnmesh_core::priority::Share`]): high work published
/// after a flood of low work is delivered first, and the low work still gets its turns.
pub async fn priorities_share_deliveries_without_starving<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    use fnmesh_core::Priority;
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let ns = fresh_namespace();
    let at = |priority| {
        let mut request = request_of(&ns, "ranked", 100);
        request.priority = priority;
        request
    };
    for _ in 0..20 {
        bus.publish_invocation(&at(Priority::Low), None)
            .await
            .unwrap();
    }
    for _ in 0..6 {
        bus.publish_invocation(&at(Priority::High), None)
            .await
            .unwrap();
    }
    let stats = bus.queue_stats().await.expect("queue_stats");
    let lanes: Vec<(Priority, u64)> = stats
        .functions
        .iter()
        .filter(|f| f.namespace == ns.as_str() && f.function == "ranked")
        .map(|f| (f.priority, f.pending))
        .collect();
    assert_eq!(
        lanes,
        vec![(Priority::High, 6), (Priority::Low, 20)],
        "each priority is a lane of its own: {stats:?}"
    );
    let mut order = Vec::new();
    for _ in 0..26 {
        let d = expect_delivery(&*bus, "ranked work").await;
        order.push(d.request.priority);
        d.acker.ack().await.unwrap();
    }
    let first = &order[..8];
    assert_eq!(
        first.iter().filter(|p| **p == Priority::High).count(),
        6,
        "high work is delivered first: {order:?}"
    );
    assert!(
        first.contains(&Priority::Low),
        "low work still gets its turn while high work waits: {order:?}"
    );
    assert_eq!(
        order.iter().filter(|p| **p == Priority::Low).count(),
        20,
        "{order:?}"
    );
}

/// `queue_stats` reports per-function pending and in-flight work.
pub async fn queue_stats_count_pending_and_in_flight<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let ns = fresh_namespace();
    for _ in 0..3 {
        bus.publish_invocation(&request_of(&ns, "counted", 7), None)
            .await
            .unwrap();
    }
    let d = expect_delivery(&*bus, "one of the counted").await;
    let stats = bus.queue_stats().await.expect("queue_stats");
    let f = stats
        .functions
        .iter()
        .find(|f| f.namespace == ns.as_str() && f.function == "counted")
        .unwrap_or_else(|| panic!("the function is listed: {stats:?}"));
    assert_eq!(
        (f.pending, f.in_flight, f.max_in_flight),
        (2, 1, 7),
        "{stats:?}"
    );
    assert!(stats.invocations >= 3, "{stats:?}");
    d.acker.ack().await.unwrap();
}

/// A delivery tells whether work of its function waited behind it (the worker acks such a
/// sync delivery without waiting for its receipt: unsettled, it holds the function's cap);
/// another function's work does not count.
pub async fn a_delivery_knows_when_work_waits_behind_it<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(BusConfig {
        ack_wait: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let ns = fresh_namespace();
    bus.publish_invocation(&request_of(&ns, "alone", 1), None)
        .await
        .unwrap();
    let alone = expect_delivery(&*bus, "the lone invocation").await;
    assert!(
        !alone.acker.holds_back_work(),
        "nothing of its function waits behind the lone invocation"
    );
    for _ in 0..2 {
        bus.publish_invocation(&request_of(&ns, "queued", 1), None)
            .await
            .unwrap();
    }
    alone.acker.ack().await.unwrap();
    let first = expect_delivery(&*bus, "the first queued").await;
    assert_eq!(first.request.function.name.as_str(), "queued");
    assert!(
        first.acker.holds_back_work(),
        "a second invocation of its function waits behind the first"
    );
    first.acker.ack().await.unwrap();
    let second = expect_delivery(&*bus, "the second queued").await;
    assert!(
        !second.acker.holds_back_work(),
        "nothing waits behind the last one"
    );
    second.acker.ack().await.unwrap();
}

/// The request's `traceparent` reaches the node unchanged.
pub async fn traceparent_travels_with_the_request<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    let bus = make(test_config()).await;
    let mut req = request();
    let tp = fnmesh_core::trace::TraceParent::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    req.traceparent = Some(tp);
    bus.publish_invocation(&req, None).await.unwrap();
    let d = expect_delivery(&*bus, "the traced invocation").await;
    assert_eq!(d.request.traceparent, Some(tp), "traceparent kept");
    d.acker.ack().await.unwrap();
}

/// A log follower gets the entries of its (namespace, function) published after it started,
/// and none of another function or namespace.
pub async fn log_followers_get_their_function_only<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    use futures::StreamExt as _;

    let bus = make(test_config()).await;
    let ns = fresh_namespace();
    let other_ns = fresh_namespace();
    let name = FunctionName::parse("printer").unwrap();
    let other = FunctionName::parse("other").unwrap();
    let entry = |namespace: &Namespace, function: &FunctionName, text: &str| {
        fnmesh_core::invocation::FunctionLogs {
            invocation_id: InvocationId::new(),
            namespace: namespace.clone(),
            function: function.clone(),
            version: 1,
            attempt: 1,
            node_id: "node-a".to_owned(),
            text: text.to_owned(),
            truncated: false,
            at: Utc::now(),
        }
    };
    let mut feed = bus.follow_logs(&ns, &name).await.expect("follow_logs");
    bus.publish_logs(&entry(&ns, &other, "wrong function\n"))
        .await
        .unwrap();
    bus.publish_logs(&entry(&other_ns, &name, "wrong namespace\n"))
        .await
        .unwrap();
    let wanted = entry(&ns, &name, "hello\n");
    bus.publish_logs(&wanted).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, feed.next())
        .await
        .expect("the follower gets its entry in time")
        .expect("the feed is open");
    assert_eq!(got, wanted, "only the followed function's entry arrives");
}

/// A cancellation reaches every follower of the bus (each node hears every one), in order.
pub async fn cancellations_reach_every_follower<F, Fut>(make: &F)
where
    F: Fn(BusConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    use futures::StreamExt as _;

    let bus = make(test_config()).await;
    let mut a = bus
        .follow_cancellations()
        .await
        .expect("follow_cancellations");
    let mut b = bus
        .follow_cancellations()
        .await
        .expect("follow_cancellations");
    let (first, second) = (InvocationId::new(), InvocationId::new());
    bus.cancel(&first).await.unwrap();
    bus.cancel(&second).await.unwrap();
    for feed in [&mut a, &mut b] {
        for wanted in [first, second] {
            let got = tokio::time::timeout(PATIENCE, feed.next())
                .await
                .expect("the follower hears the cancellation in time")
                .expect("the feed is open");
            assert_eq!(got, wanted);
        }
    }
}
