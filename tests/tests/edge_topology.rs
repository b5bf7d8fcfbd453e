//! `fnmesh nats init --edge` (issue #14, item 1) on real `nats-server`s: a hub and two edges,
//! each region its own server and JetStream domain, the edges linked to the hub as leaf
//! nodes. Every config passes `nats-server -t`; the same credentials work at every server;
//! an edge's clients use the edge's own JetStream with the plain API and reach the hub's
//! through the leaf link (`$JS.hub.API`), and a hub stream sourcing an edge stream copies it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use fnmesh_core::nats::setup::{edge_config_file, leaf_creds_file, HUB_CONFIG_FILE, HUB_REGION};
use fnmesh_core::subjects::{BusPrefix, InboxOwner};
use fnmesh_tests::nats_roles::connect;
use fnmesh_tests::servers::nats::TestTopology;

/// Waits until `js` answers an account info request (the leaf link is up for a remote
/// domain), returning the domain it names.
async fn domain_of(js: &jetstream::Context) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match js.query_account().await {
            Ok(account) => return account.domain,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "JetStream never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[test]
fn every_config_of_a_topology_passes_nats_server_t() {
    let topology = TestTopology::start(&["eu", "us"]);
    let dir = topology.setup_dir();
    topology.hub.assert_config_valid(&dir.join(HUB_CONFIG_FILE));
    for (name, _) in &topology.edges {
        let name = BusPrefix::parse(name).unwrap();
        topology
            .hub
            .assert_config_valid(&dir.join(edge_config_file(&name)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_have_their_own_domain_and_reach_the_hubs_over_the_leaf_link() {
    let topology = TestTopology::start(&["eu", "us"]);
    let dir = topology.setup_dir();

    // The same gateway credentials work at the hub and at each edge, each with its own
    // JetStream domain on the plain API.
    for (nats, domain) in [
        (&topology.hub, HUB_REGION),
        (topology.edge("eu"), "eu"),
        (topology.edge("us"), "us"),
    ] {
        let (client, errors) = connect(nats, "gateway", Some(InboxOwner::Gateway)).await;
        let js = jetstream::new(client);
        assert_eq!(
            domain_of(&js).await.as_deref(),
            Some(domain),
            "{}",
            nats.log()
        );
        assert!(errors.all().is_empty(), "{:?}", errors.all());
    }

    // An edge's client reaches the hub's JetStream through the leaf link, and the hub reaches
    // the edge's (with gateway credentials; the leaf connection's own are narrowed to what
    // the regions exchange: see below).
    let eu_leaf = dir.join(leaf_creds_file(&BusPrefix::parse("eu").unwrap()));
    assert!(eu_leaf.exists());
    let (at_eu, _) = connect(topology.edge("eu"), "gateway", Some(InboxOwner::Gateway)).await;
    let (at_hub, _) = connect(&topology.hub, "gateway", Some(InboxOwner::Gateway)).await;
    let hub_from_eu = jetstream::with_domain(at_eu.clone(), HUB_REGION);
    assert_eq!(domain_of(&hub_from_eu).await.as_deref(), Some(HUB_REGION));
    let eu_from_hub = jetstream::with_domain(at_hub.clone(), "eu");
    assert_eq!(domain_of(&eu_from_hub).await.as_deref(), Some("eu"));
    let us_from_hub = jetstream::with_domain(at_hub.clone(), "us");
    assert_eq!(domain_of(&us_from_hub).await.as_deref(), Some("us"));

    // A stream at the edge, sourced by a stream at the hub across the link.
    let eu = jetstream::new(at_eu.clone());
    eu.create_stream(stream::Config {
        name: "PROBE".into(),
        subjects: vec!["fnmesh.v1.eu.rec".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..5 {
        eu.publish("fnmesh.v1.eu.rec", format!("x{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let hub = jetstream::new(at_hub.clone());
    let mut copy = hub
        .create_stream(stream::Config {
            name: "PROBE-EU".into(),
            sources: Some(vec![stream::Source {
                name: "PROBE".into(),
                external: Some(stream::External {
                    api_prefix: "$JS.eu.API".into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while copy.info().await.unwrap().state.messages < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub's sourced stream has {} of 5 messages",
            copy.info().await.unwrap().state.messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The edge's stream lives only in the edge's domain.
    assert!(hub.get_stream("PROBE").await.is_err());
    assert!(eu_from_hub.get_stream("PROBE").await.is_ok());
}

/// Messages of `stream` per subject.
async fn per_subject(stream: &mut stream::Stream) -> std::collections::HashMap<String, usize> {
    use futures::TryStreamExt as _;
    stream
        .info_with_subjects(">")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_link_carries_only_what_regions_exchange() {
    let topology = TestTopology::start(&["eu", "us"]);
    let (at_hub, _) = connect(&topology.hub, "gateway", Some(InboxOwner::Gateway)).await;
    let (at_eu, _) = connect(topology.edge("eu"), "gateway", Some(InboxOwner::Gateway)).await;
    // What reaches the hub of the subjects an edge might send: the hub's catalog bucket, its
    // work, and (allowed) an overflow forward.
    let hub = jetstream::new(at_hub.clone());
    let mut probe = hub
        .create_stream(stream::Config {
            name: "LEAF-PROBE".into(),
            subjects: vec![
                "$KV.fnmesh-hub-catalog.>".into(),
                "fnmesh.v1.hub.inv.>".into(),
                "fnmesh.v1.hub.fwd".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let hub_from_eu = jetstream::with_domain(at_eu.clone(), HUB_REGION);
    assert_eq!(domain_of(&hub_from_eu).await.as_deref(), Some(HUB_REGION));
    // Until the stream's interest has crossed the link, send the allowed forward.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        at_eu
            .publish("fnmesh.v1.hub.fwd", "marker".into())
            .await
            .unwrap();
        at_eu.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if probe.info().await.unwrap().state.messages > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no forward crossed the link"
        );
    }
    for subject in [
        "$KV.fnmesh-hub-catalog.key.forged",
        "fnmesh.v1.hub.inv.default.echo",
    ] {
        at_eu.publish(subject, "forged".into()).await.unwrap();
    }
    at_eu
        .publish("fnmesh.v1.hub.fwd", "marker".into())
        .await
        .unwrap();
    at_eu.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = per_subject(&mut probe).await;
        if counts.get("fnmesh.v1.hub.fwd").copied().unwrap_or(0) >= 2 {
            assert_eq!(
                counts.len(),
                1,
                "only the forward crossed the link: {counts:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through the hub's JetStream API an edge can neither delete a stream nor read work.
    assert!(
        hub_from_eu.delete_stream("LEAF-PROBE").await.is_err(),
        "an edge deleted a hub stream"
    );
    assert!(hub.get_stream("LEAF-PROBE").await.is_ok());
    // (Reading another hub stream's messages works: the refusal below is the permission.)
    let readable = hub_from_eu.get_stream_no_info("LEAF-PROBE").await.unwrap();
    assert!(readable.get_raw_message(1).await.is_ok());
    hub.delete_stream("LEAF-PROBE").await.unwrap();
    let work = hub
        .create_stream(stream::Config {
            name: "fnmesh-hub-inv".into(),
            subjects: vec!["fnmesh.v1.hub.inv.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    hub.publish("fnmesh.v1.hub.inv.default.echo", "payload".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let from_eu = hub_from_eu
        .get_stream_no_info("fnmesh-hub-inv")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), from_eu.get_raw_message(1))
            .await
            .map_or(true, |got| got.is_err()),
        "an edge read the hub's work"
    );
    assert_eq!(work.cached_info().config.name, "fnmesh-hub-inv");
}
