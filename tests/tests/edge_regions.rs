//! Regions on NATS servers of their own (issue #14, item 5), on a hub and two edges written by
//! `fnmesh nats init --edge`: a gateway and a node in each edge region, each with its own
//! store. A NATS request/reply client connected to an edge is answered by that edge's
//! gateway (the queue group's member on its own server), not the other edge's, and a client
//! names another region explicitly with `fnmesh.v1.req.<region>.<function>`, which crosses
//! the leaf links through the hub.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_core::FunctionName;
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::nats_roles::connect_with;
use fnmesh_tests::servers::nats::{TestNats, TestTopology};
use fnmesh_tests::{function_body, ADMIN_KEY};
use serde_json::{json, Value};

/// A python function answering with its region's name (each region deploys its own).
fn where_am_i(region: &str) -> Value {
    function_body(
        "where",
        "python3",
        "main.handle",
        &[(
            "main.py",
            &format!("def handle(event, context):\n    return {region:?}\n"),
        )],
        json!({}),
    )
}

/// A request/reply client of the `CLIENTS` account connected to `nats` (`client.creds`).
async fn client_at(nats: &TestNats) -> async_nats::Client {
    connect_with(nats, &nats.creds("client"), None, "client")
        .await
        .0
}

/// Sends `subject` a request with the admin key; the reply's JSON.
async fn ask(client: &async_nats::Client, subject: String) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {ADMIN_KEY}").as_str());
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request_with_headers(subject.clone(), headers, "{}".into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no reply in 60 s"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_is_answered_by_its_own_regions_gateway_or_the_region_it_names() {
    let mut topology = TestTopology::start(&["eu", "us"]);
    let eu = Mesh::start_in_region(topology.take_edge("eu"), "eu", &["node-eu"], &[]).await;
    let us = Mesh::start_in_region(topology.take_edge("us"), "us", &["node-us"], &[]).await;
    eu.deploy(where_am_i("eu")).await;
    us.deploy(where_am_i("us")).await;

    let function = FunctionName::parse("where").unwrap();
    let at_eu = client_at(&eu.nats).await;
    let at_us = client_at(&us.nats).await;
    let logs = || format!("{}\n{}", eu.logs(), us.logs());
    // Several requests each: a queue group spread over the regions would split them.
    for _ in 0..5 {
        let r = ask(&at_eu, subjects::request(&function)).await;
        assert_eq!(r["result"], "eu", "{r}\n{}", logs());
        assert_eq!(r["node_id"], "node-eu", "{r}");
        let r = ask(&at_us, subjects::request(&function)).await;
        assert_eq!(r["result"], "us", "{r}\n{}", logs());
        assert_eq!(r["node_id"], "node-us", "{r}");
    }
    // Named explicitly, the other region answers, across eu -> hub -> us.
    let us_region = BusPrefix::parse("us").unwrap();
    let eu_region = BusPrefix::parse("eu").unwrap();
    let r = ask(&at_eu, subjects::request_in(&us_region, &function)).await;
    assert_eq!(r["result"], "us", "{r}\n{}", logs());
    let r = ask(&at_us, subjects::request_in(&eu_region, &function)).await;
    assert_eq!(r["result"], "eu", "{r}\n{}", logs());
    // And its own region by name, too.
    let r = ask(&at_eu, subjects::request_in(&eu_region, &function)).await;
    assert_eq!(r["result"], "eu", "{r}");
    // The invocation is recorded in the region that ran it.
    let id = r["id"].as_str().unwrap();
    let stored = eu.call("GET", &format!("/v1/invocations/{id}"), None).await;
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    let elsewhere = us.call("GET", &format!("/v1/invocations/{id}"), None).await;
    assert_eq!(elsewhere.status, 404, "{:?}", elsewhere.body);
}
