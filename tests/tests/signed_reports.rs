//! Signed results and events on a real `nats-server` started from `fnmesh nats init`'s setup
//! (issue #12, item 3). A compromised node (one with node credentials of its own and a key of its own, even
//! registered) cannot report on work it was never handed: its forged events, sync replies and
//! dead-letter records are refused by the gateway's bus and counted
//! (`fnmesh_rejected_messages_total{component="gateway"}`), whatever node it names and
//! whatever attempt number it writes, and it may not publish the server's max-deliveries
//! advisories at all. The honest node's reports, signed with its registered key and the proof
//! of the delivery it holds, go through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use fnmesh_bus::conformance::{outcome, request, started, test_config};
use fnmesh_bus::jetstream::JetStreamBus;
use fnmesh_bus::registry::conformance::node_info;
use fnmesh_bus::registry::jetstream::JetStreamRegistry;
use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::{Bus, BusConfig, Signatures};
use fnmesh_core::claims::{ClaimKey, NodeMessage, ReportKey, NODE_SIGNATURE_HEADER};
use fnmesh_core::signing::{Rejection, Rejections, SigningKey, TrustedKeys};
use fnmesh_core::subjects::{self, BusPrefix, BusRole, InboxOwner};
use fnmesh_core::{InvocationOutcome, InvocationRequest, NodeEvent};
use fnmesh_tests::nats_roles::{connect, connect_node};
use fnmesh_tests::servers::nats::TestNats;

/// A gateway, an honest node and a compromised one on one region.
struct Plane {
    _nats: TestNats,
    prefix: BusPrefix,
    gateway_key: SigningKey,
    gateway: JetStreamBus,
    rejections: Rejections,
    gw_registry: JetStreamRegistry,
    honest: JetStreamBus,
    honest_rejections: Rejections,
    attacker: async_nats::Client,
    attacker_errors: fnmesh_tests::nats_roles::ServerErrors,
    attacker_key: SigningKey,
}

async fn plane() -> Plane {
    let region = fnmesh_tests::unique("rep");
    let nats = TestNats::start_with_accounts(&[&region]);
    let prefix = BusPrefix::parse(&region).unwrap();
    let gateway_key = SigningKey::generate();
    let rejections = Rejections::unregistered("gateway");

    let (gw_client, _) = connect(&nats, "gateway", Some(InboxOwner::Gateway)).await;
    let gateway = JetStreamBus::connect_with_client(
        gw_client.clone(),
        &region,
        BusConfig {
            signatures: Signatures::new(
                SigningKey::from_seed(gateway_key.seed()).unwrap(),
                TrustedKeys::default(),
                rejections.clone(),
            ),
            ..test_config()
        },
    )
    .await
    .unwrap();
    // The gateway makes the registry bucket.
    let gw_registry = JetStreamRegistry::open(gw_client, &region).await.unwrap();

    // Each node registers the public key its bus signs reports with.
    let node = |key: SigningKey, rejections: Rejections| BusConfig {
        manage_streams: false,
        signatures: Signatures::new(
            key,
            TrustedKeys::parse(gateway_key.public_key()).unwrap(),
            rejections,
        ),
        ..test_config()
    };
    let honest_rejections = Rejections::unregistered("node");
    let (honest_client, _) = connect_node(&nats, "node-1").await;
    let honest = JetStreamBus::connect_with_client(
        honest_client.clone(),
        &region,
        node(SigningKey::generate(), honest_rejections.clone()),
    )
    .await
    .unwrap();
    let mut info = node_info("node-1", Duration::from_secs(30));
    info.signing_key = honest.report_key();
    let registry = JetStreamRegistry::open(honest_client, &region)
        .await
        .unwrap();
    registry.heartbeat(&info).await.unwrap();

    // The attacker registers itself too: its own node creds allow that, and only that entry.
    let (attacker, attacker_errors) = connect_node(&nats, "evil").await;
    let attacker_key = SigningKey::generate();
    let mut evil = node_info("evil", Duration::from_secs(30));
    evil.signing_key = Some(attacker_key.public_key().to_owned());
    JetStreamRegistry::open(attacker.clone(), &region)
        .await
        .unwrap()
        .heartbeat(&evil)
        .await
        .unwrap();

    Plane {
        _nats: nats,
        prefix,
        gateway_key,
        gateway,
        rejections,
        gw_registry,
        honest,
        honest_rejections,
        attacker,
        attacker_errors,
        attacker_key,
    }
}

impl Plane {
    /// Publishes `req` from the gateway and has the honest node pull it.
    async fn handed_to_honest(
        &self,
        req: &InvocationRequest,
        reply: Option<&fnmesh_bus::ReplyTo>,
    ) -> fnmesh_bus::Delivery {
        self.gateway.publish_invocation(req, reply).await.unwrap();
        let delivery = self
            .honest
            .pull_invocation(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the honest node pulls the invocation");
        assert_eq!(delivery.request.id, req.id);
        delivery
    }

    #[allow(clippy::too_many_arguments)]
    /// The attacker's signature header on `body` to `subject`, for `node_id` and `attempt`,
    /// with the proof of a claim made by `claims` for limit `max`.
    fn forge(
        &self,
        subject: &str,
        body: &[u8],
        claims: &ClaimKey,
        req: &InvocationRequest,
        node_id: &str,
        attempt: u32,
        max: u32,
    ) -> HeaderMap {
        self.forge_with(
            subject,
            body,
            &claims.claim(&req.id.to_string(), max),
            node_id,
            attempt,
            max,
        )
    }

    /// The same with a given claim, written as made for limit `max`.
    fn forge_with(
        &self,
        subject: &str,
        body: &[u8],
        claim: &fnmesh_core::claims::Claim,
        node_id: &str,
        attempt: u32,
        max: u32,
    ) -> HeaderMap {
        let header =
            NodeMessage { subject, body }.sign(&self.attacker_key, claim, node_id, attempt, max);
        let mut headers = HeaderMap::new();
        headers.insert(NODE_SIGNATURE_HEADER, header.as_str());
        headers
    }

    /// The attacker's `v2` header (a MAC under the report key its own key agrees with the
    /// gateway key) presented as made by `key`, for `node_id` and `attempt` with `claim`.
    #[allow(clippy::too_many_arguments)]
    fn forge_mac(
        &self,
        subject: &str,
        body: &[u8],
        key: &str,
        claim: &fnmesh_core::claims::Claim,
        node_id: &str,
        attempt: u32,
        max: u32,
    ) -> HeaderMap {
        let report =
            ReportKey::for_node(&self.attacker_key, self.gateway_key.public_key()).unwrap();
        let header =
            NodeMessage { subject, body }.authenticate(key, &report, claim, node_id, attempt, max);
        let mut headers = HeaderMap::new();
        headers.insert(NODE_SIGNATURE_HEADER, header.as_str());
        headers
    }

    /// Publishes a forged event to the event stream (node credentials may publish there).
    async fn publish_event(&self, event: &NodeEvent, sign: impl Fn(&str, &[u8]) -> HeaderMap) {
        let subject = subjects::bus_node_event(&self.prefix, &event.invocation_id());
        let body = serde_json::to_vec(event).unwrap();
        let headers = sign(&subject, &body);
        jetstream::new(self.attacker.clone())
            .publish_with_headers(subject, headers, body.into())
            .await
            .unwrap()
            .await
            .expect("the event stream takes the forged event");
    }

    /// Waits until the gateway counted `reason` `times`.
    async fn counted(&self, reason: Rejection, times: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.rejections.get(reason) < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reason}: counted {} times, not {times}",
                self.rejections.get(reason)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn finished(req: &InvocationRequest, node_id: &str, attempt: u32) -> InvocationOutcome {
    let mut sent = outcome(req);
    sent.result.node_id = Some(node_id.to_owned());
    sent.result.attempt = attempt;
    sent.result.result = Some(serde_json::json!({ "forged": true }));
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cannot_replace_another_nodes_registry_entry_or_read_its_inboxes() {
    let p = plane().await;
    let honest_key = p.honest.report_key();
    // Its own credentials let the attacker write its own entry only: an entry in node-1's name
    // (with the attacker's key, to sign reports as node-1) or node-1's removal is refused.
    let entry =
        subjects::node_registry_entry(&p.prefix, &node_info("node-1", Duration::from_secs(30)).id);
    let mut forged = node_info("node-1", Duration::from_secs(30));
    forged.signing_key = Some(p.attacker_key.public_key().to_owned());
    p.attacker
        .publish(entry.clone(), serde_json::to_vec(&forged).unwrap().into())
        .await
        .unwrap();
    p.attacker.flush().await.unwrap();
    p.attacker_errors.expect_violation("publish", &entry).await;
    let attacker_registry = JetStreamRegistry::open(p.attacker.clone(), p.prefix.as_str())
        .await
        .unwrap();
    let removed =
        tokio::time::timeout(Duration::from_secs(10), attacker_registry.leave(&forged.id)).await;
    assert!(
        !matches!(removed, Ok(Ok(()))),
        "the attacker removed node-1"
    );
    // Nor may it read node-1's inboxes (its pull deliveries, with their claims).
    let inboxes = subjects::node_inboxes(&forged.id);
    let _sub = p.attacker.subscribe(inboxes.clone()).await.unwrap();
    p.attacker.flush().await.unwrap();
    p.attacker_errors
        .expect_violation("subscription", &inboxes)
        .await;

    let listed = p.gw_registry.list().await.unwrap();
    let node_1 = listed
        .iter()
        .find(|n| n.id.as_str() == "node-1")
        .expect("node-1 is still registered");
    assert_eq!(node_1.signing_key, honest_key);
    assert!(listed.iter().any(|n| n.id.as_str() == "evil"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_made_up_consumer_hints_is_dropped_and_work_still_runs() {
    let p = plane().await;
    // The first pull starts the node's hint listener and sweeps the consumers.
    assert!(p
        .honest
        .pull_invocation(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    // Well-formed names of our own consumers' shape, none of which exists: each taken would
    // cost the node a failed consumer lookup.
    let hints = subjects::bus_work_ready(&p.prefix);
    let own = subjects::bus_function_consumer_prefix(&p.prefix);
    const FLOOD: u64 = 2_000;
    for i in 0..FLOOD {
        p.attacker
            .publish(hints.clone(), format!("w:{own}default_made-up-{i}").into())
            .await
            .unwrap();
    }
    p.attacker.flush().await.unwrap();
    let req = request();
    let delivery = p.handed_to_honest(&req, None).await;
    delivery.acker.ack().await.unwrap();
    // All but a budget per sweep were dropped and counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dropped = p.honest_rejections.get(Rejection::UnknownConsumer);
        if dropped >= FLOOD - 32 * 10 {
            assert!(dropped <= FLOOD, "{dropped}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {dropped} of {FLOOD} made-up hints were dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        p.attacker_errors.all().is_empty(),
        "{:?}",
        p.attacker_errors.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_events_are_refused_and_counted_and_honest_ones_recorded() {
    let p = plane().await;
    let req = request();
    let delivery = p.handed_to_honest(&req, None).await;
    let real_claims = ClaimKey::of(&p.gateway_key);
    let guessed_claims = ClaimKey::of(&SigningKey::generate());
    let forged = |node: &str, attempt| NodeEvent::Finished(Box::new(finished(&req, node, attempt)));

    // Unsigned.
    p.publish_event(&forged("evil", 1), |_, _| HeaderMap::new())
        .await;
    // In the honest node's name, with the attacker's key.
    p.publish_event(&forged("node-1", 1), |s, b| {
        p.forge(s, b, &guessed_claims, &req, "node-1", 1, 3)
    })
    .await;
    // In its own name, for a delivery it never held (a guessed claim).
    p.publish_event(&forged("evil", 1), |s, b| {
        p.forge(s, b, &guessed_claims, &req, "evil", 1, 3)
    })
    .await;
    // A huge attempt number, even by a node that knows the real claim (one that held an
    // earlier attempt): with the signed limit it is over it; written with a raised limit,
    // the proof no longer matches the claim (made for the signed limit).
    let held = real_claims.claim(&req.id.to_string(), test_config().max_deliver);
    p.publish_event(&forged("evil", 1_000_000), |s, b| {
        p.forge_with(s, b, &held, "evil", 1_000_000, test_config().max_deliver)
    })
    .await;
    p.publish_event(&forged("evil", 1_000_000), |s, b| {
        p.forge_with(s, b, &held, "evil", 1_000_000, 1_000_000)
    })
    .await;
    // Authenticated with a MAC (`v2`, what honest nodes send): under the honest node's key
    // but the attacker's report key, even with the real claim; and in its own name for a
    // delivery it never held.
    let honest_key = p.honest.report_key().unwrap();
    p.publish_event(&forged("node-1", 1), |s, b| {
        p.forge_mac(
            s,
            b,
            &honest_key,
            &held,
            "node-1",
            1,
            test_config().max_deliver,
        )
    })
    .await;
    let guessed = guessed_claims.claim(&req.id.to_string(), 3);
    let attacker_public = p.attacker_key.public_key().to_owned();
    p.publish_event(&forged("evil", 1), |s, b| {
        p.forge_mac(s, b, &attacker_public, &guessed, "evil", 1, 3)
    })
    .await;
    // The honest node's own report.
    p.honest.publish_event(&started(&req, 1)).await.unwrap();

    let mut recorded = Vec::new();
    while let Some(event) = p.gateway.pull_event(Duration::from_secs(2)).await.unwrap() {
        event.acker.ack().await.unwrap();
        recorded.push(event.event);
    }
    let counts: Vec<_> = [
        Rejection::Unsigned,
        Rejection::Malformed,
        Rejection::UnknownNode,
        Rejection::BadSignature,
        Rejection::NotHolder,
        Rejection::AttemptLimit,
    ]
    .into_iter()
    .map(|r| (r.as_str(), p.rejections.get(r)))
    .collect();
    assert!(
        matches!(
            recorded.as_slice(),
            [NodeEvent::Started { id, node_id, attempt: 1, .. }] if *id == req.id && node_id == "node-1"
        ),
        "only the honest node's event reaches the recorder: {recorded:?}; refused: {counts:?}"
    );
    p.counted(Rejection::Unsigned, 1).await;
    p.counted(Rejection::UnknownNode, 1).await;
    p.counted(Rejection::BadSignature, 1).await;
    p.counted(Rejection::NotHolder, 3).await;
    p.counted(Rejection::AttemptLimit, 1).await;
    delivery.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_sync_reply_is_dropped_and_the_holders_reply_arrives() {
    let p = plane().await;
    let req = request();
    let mut inbox = p.gateway.open_inbox().await.unwrap();
    let delivery = p.handed_to_honest(&req, Some(&inbox.reply_to)).await;
    let reply_to = delivery.reply_to.clone().expect("a sync delivery");

    // The attacker learnt the inbox; node credentials may publish to gateway inboxes.
    let forged = finished(&req, "evil", 1);
    let body = serde_json::to_vec(&forged).unwrap();
    let headers = p.forge(
        &reply_to.0,
        &body,
        &ClaimKey::of(&SigningKey::generate()),
        &req,
        "evil",
        1,
        3,
    );
    p.attacker
        .publish_with_headers(reply_to.0.clone(), headers, body.into())
        .await
        .unwrap();
    p.attacker.flush().await.unwrap();
    p.counted(Rejection::NotHolder, 1).await;
    assert!(
        inbox.receiver.try_recv().is_err(),
        "the forged reply must not reach the caller"
    );

    let mut honest = outcome(&req);
    honest.result.node_id = Some("node-1".to_owned());
    p.honest.reply(&reply_to, &honest).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.receiver.recv())
        .await
        .expect("the holder's reply arrives")
        .expect("the inbox is open");
    assert_eq!(got, honest);
    delivery.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_dead_letter_advisories_delete_nothing() {
    let p = plane().await;
    let req = request();
    let delivery = p.handed_to_honest(&req, None).await;
    let js = jetstream::new(p.attacker.clone());
    let gw_js = p.gateway.client().clone();
    let mut stream = jetstream::new(gw_js)
        .get_stream(subjects::bus_stream(&p.prefix, BusRole::Invocations))
        .await
        .unwrap();
    let seq = stream.info().await.unwrap().state.last_sequence;

    // The server's advisory subject: node credentials may not publish it.
    let consumer =
        subjects::bus_function_consumer(&p.prefix, &req.function.namespace, &req.function.name);
    let advisory = subjects::max_deliveries_advisory(&p.prefix, &consumer);
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream_seq": seq,
        "deliveries": 3,
    }))
    .unwrap();
    p.attacker
        .publish(advisory.clone(), body.into())
        .await
        .unwrap();
    p.attacker.flush().await.unwrap();
    p.attacker_errors
        .expect_violation("publish", &advisory)
        .await;

    // A node record for a delivery it does not hold.
    let records = subjects::bus_dead_letter_records(&p.prefix);
    let record = serde_json::to_vec(&serde_json::json!({
        "type": "io.fnmesh.bus.v1.max_deliver",
        "stream_seq": seq,
        "deliveries": 3,
        "invocation_id": req.id,
        "node_id": "evil",
    }))
    .unwrap();
    let headers = p.forge(
        &records,
        &record,
        &ClaimKey::of(&SigningKey::generate()),
        &req,
        "evil",
        3,
        3,
    );
    js.publish_with_headers(records.clone(), headers, record.into())
        .await
        .unwrap()
        .await
        .expect("the dead-letter stream takes the record");

    assert!(
        p.gateway
            .pull_dead_letter(Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "no dead letter from a forged record"
    );
    p.counted(Rejection::NotHolder, 1).await;
    let kept = stream.get_raw_message(seq).await;
    assert!(
        kept.is_ok(),
        "the queued invocation is still in the work stream"
    );
    // The honest node finishes it as usual.
    delivery.acker.ack().await.unwrap();
}
