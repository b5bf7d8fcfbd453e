//! The bus conformance suite against the in-process bus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_bus::conformance;
use fnmesh_bus::memory::MemoryBus;
use fnmesh_bus::{Bus, BusConfig};

async fn memory(config: BusConfig) -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new(config))
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            conformance::$case(&memory).await;
        }
    )*};
}

fnmesh_bus::bus_conformance_cases!(cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_in_sequence() {
    conformance::run_all(memory).await;
}

/// Publish + pull + ack stays cheap (a few µs in release; generous bound for debug builds).
#[tokio::test]
async fn hot_path_is_cheap() {
    let bus = MemoryBus::new(BusConfig::default());
    let requests: Vec<_> = (0..10_000).map(|_| conformance::request()).collect();
    let start = std::time::Instant::now();
    for r in &requests {
        bus.publish_invocation(r, None).await.unwrap();
        let d = bus
            .pull_invocation(std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        d.acker.ack().await.unwrap();
    }
    let per_cycle = start.elapsed() / 10_000;
    println!("publish + pull + ack: {per_cycle:?} per invocation");
    assert!(
        per_cycle < std::time::Duration::from_millis(1),
        "publish + pull + ack took {per_cycle:?}"
    );
    assert_eq!(bus.queued_invocations(), 0);
}

/// `close` wakes a waiting puller with `Closed`, and later calls fail the same way.
#[tokio::test]
async fn close_wakes_pullers_with_closed() {
    use fnmesh_bus::BusError;
    let bus = MemoryBus::new(BusConfig::default());
    let waiter = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.pull_invocation(std::time::Duration::from_secs(30))
                .await
        })
    };
    tokio::task::yield_now().await;
    bus.close();
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the puller returns promptly")
        .unwrap();
    assert!(matches!(woke, Err(BusError::Closed)));
    assert!(matches!(
        bus.publish_invocation(&conformance::request(), None).await,
        Err(BusError::Closed)
    ));
}

/// A reply address issued by another bus instance is not this bus's to deliver.
#[tokio::test]
async fn reply_addresses_of_another_bus_are_invalid() {
    use fnmesh_bus::BusError;
    let a = MemoryBus::new(BusConfig::default());
    let b = MemoryBus::new(BusConfig::default());
    let inbox = a.open_inbox().await.unwrap();
    let req = conformance::request();
    assert!(matches!(
        b.publish_invocation(&req, Some(&inbox.reply_to)).await,
        Err(BusError::InvalidReply)
    ));
}

/// The in-process bus fences ackers on the attempt: an acker of an attempt that was
/// redelivered settles nothing. (Not part of the shared suite: JetStream cannot fence acks,
/// nats-server#4786; the shared contract lets a stale ack settle a later delivery.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_acker_is_fenced() {
    use conformance::{request, test_config, ACK_WAIT};
    use std::time::Duration;
    let bus = MemoryBus::new(test_config());
    let patience = Duration::from_secs(5);
    let req = request();
    bus.publish_invocation(&req, None).await.unwrap();
    let d1 = bus
        .pull_invocation(patience)
        .await
        .unwrap()
        .expect("attempt 1");
    let d2 = bus
        .pull_invocation(patience)
        .await
        .unwrap()
        .expect("attempt 2 after expiry");
    assert_eq!(d2.attempt, 2);
    d1.acker.ack().await.expect("a stale ack is harmless");
    d1.acker.nak(None).await.expect("a stale nak is harmless");
    d1.acker.term().await.expect("a stale term is harmless");
    // Attempt 2 is still live: its nak redelivers.
    d2.acker.nak(None).await.unwrap();
    let d3 = bus
        .pull_invocation(patience)
        .await
        .unwrap()
        .expect("attempt 3: the stale ack did not settle attempt 2");
    assert_eq!(d3.attempt, 3);
    d3.acker.ack().await.unwrap();
    d3.acker.ack().await.unwrap();
    d2.acker.ack().await.unwrap();
    assert!(
        bus.pull_invocation(ACK_WAIT * 2).await.unwrap().is_none(),
        "nothing after the live ack"
    );
}
