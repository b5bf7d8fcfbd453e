//! The event stream (node → recorder) under load, with a gateway and a node as real processes
//! over a harness `nats-server -js`:
//! - under a steady load of sync invocations the recorder keeps up: the stream never holds
//!   more than a bounded backlog, and once the load stops it holds nothing that is recorded;
//! - a full event stream (its recorder frozen) never leaves accepted work unfinished,
//!   unrecorded or run twice: nodes hold their results until there is room.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::subjects::{self, BusPrefix, BusRole};
use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, unique};
use serde_json::{json, Value};

const ECHO: &str = "def handle(event, context):\n    return event\n";

async fn deploy_echo(mesh: &Mesh) -> String {
    let name = unique("echo");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[("main.py", ECHO)],
        json!({"max_concurrency": 64, "min_warm": 1}),
    ))
    .await;
    name
}

/// Node events waiting in the stream (pending or delivered and not yet acked).
async fn event_backlog(mesh: &Mesh) -> u64 {
    let r = mesh.call("GET", "/v1/admin/queues", None).await;
    assert_eq!(r.status, 200, "queues: {:?}", r.body);
    r.body["events"].as_u64().unwrap()
}

/// Messages in the region's event stream, read from NATS directly (works while the gateway
/// is frozen).
async fn event_stream_messages(mesh: &Mesh) -> u64 {
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = subjects::bus_stream(&BusPrefix::parse(&mesh.region).unwrap(), BusRole::Events);
    let mut stream = js.get_stream(&name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// 3,000 sync invocations at 16 in flight: the recorder keeps up with the two events each
/// one makes (the backlog stays far below what arrives), and a few seconds after the load
/// the stream is empty. (The recorder used to take one event per NATS round trip and one
/// store statement per read and write: it fell ~10× behind, and the stream grew by nearly
/// every event until it was full.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_steady_load_the_event_backlog_stays_bounded() {
    const TOTAL: usize = 3_000;
    const IN_FLIGHT: usize = 16;
    /// Far below the 2 × TOTAL events the load makes.
    const MAX_BACKLOG: u64 = 1_000;
    let mesh = Arc::new(Mesh::start(&["node-a"], &[("FNMESH_NODE_SLOTS", "16")]).await);
    let name = deploy_echo(&mesh).await;

    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (mesh, name, sent) = (mesh.clone(), name.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while sent.fetch_add(1, Ordering::Relaxed) < TOTAL {
                let r = mesh
                    .call(
                        "POST",
                        &format!("/v1/functions/{name}/invoke"),
                        Some(json!({"n": 1})),
                    )
                    .await;
                if r.status != 200 || r.body["status"] != "succeeded" {
                    failed.push(format!("{} {}", r.status, r.body));
                }
            }
            failed
        }));
    }
    let begun = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    while clients.iter().any(|c| !c.is_finished()) {
        samples.push(event_backlog(&mesh).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let load_secs = begun.elapsed().as_secs_f64();
    for client in clients {
        let failed = client.await.unwrap();
        assert!(failed.is_empty(), "failed invocations: {failed:?}");
    }
    let peak = samples.iter().copied().max().unwrap_or(0);
    println!(
        "{TOTAL} invocations in {load_secs:.1} s ({:.0}/s); event backlog samples: {samples:?}",
        TOTAL as f64 / load_secs
    );
    assert!(
        peak <= MAX_BACKLOG,
        "the event backlog reached {peak} (> {MAX_BACKLOG}) under a steady load: the recorder \
         falls behind; samples every 250 ms: {samples:?}"
    );

    // Once the load stops, the stream holds nothing that is recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = event_backlog(&mesh).await;
        if left == 0 && event_stream_messages(&mesh).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} events still unrecorded 10 s after the load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = mesh
        .call(
            "GET",
            &format!("/v1/invocations?function={name}&status=running&limit=10"),
            None,
        )
        .await;
    assert_eq!(r.body["items"], json!([]), "nothing is left running");
}

/// A sync invocation's outcome is stored by the gateway that answered it, which then sends
/// its node the receipt the reply asked for: the node publishes no `Finished` event for it
/// (nothing reaches the event subjects), and each record is complete all the same. An async
/// invocation (no reply, no receipt) still reports through its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_outcomes_stored_by_their_gateway_make_no_events() {
    use futures::StreamExt as _;

    let mesh = Mesh::start(&["node-a"], &[]).await;
    let name = deploy_echo(&mesh).await;
    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let region = BusPrefix::parse(&mesh.region).unwrap();
    let mut events = client
        .subscribe(subjects::bus_node_events_all(&region))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = finished.clone();
    let watcher = tokio::spawn(async move {
        while let Some(message) = events.next().await {
            if let Ok(fnmesh_core::NodeEvent::Finished(outcome)) =
                serde_json::from_slice::<fnmesh_core::NodeEvent>(&message.payload)
            {
                seen.lock().unwrap().push(outcome.result.id.to_string());
            }
        }
    });

    let mut ids = Vec::new();
    for i in 0..10 {
        let r = mesh
            .call(
                "POST",
                &format!("/v1/functions/{name}/invoke"),
                Some(json!({"i": i})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
        assert_eq!(r.body["status"], "succeeded");
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let async_id = mesh.invoke_async(&name, json!({"i": "async"})).await;
    let record = mesh.wait_terminal(&async_id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    // Longer than a node waits for a receipt before it publishes the event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let finished = finished.lock().unwrap().clone();
    watcher.abort();
    assert_eq!(
        finished,
        vec![async_id.to_string()],
        "only the async invocation made a Finished event\n{}",
        mesh.logs()
    );
    for (i, id) in ids.iter().enumerate() {
        let r = mesh
            .call("GET", &format!("/v1/invocations/{id}"), None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["status"], "succeeded", "{}", r.body);
        assert_eq!(r.body["result"], json!({"i": i}));
    }
}

/// 40 async invocations accepted (the node frozen meanwhile), then the gateway (and its
/// recorder) frozen while the node runs them: the event stream (8 events at most) fills up and stays full for several ack
/// waits. Once the recorder is back, every invocation ends `succeeded` after exactly one
/// attempt, with its logs, and the stream drains. (Nodes used to give up on a full stream
/// after 1.5 s and nak the work, which then ran again and again and was dead-lettered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_event_stream_never_leaves_accepted_work_unfinished() {
    const CAPACITY: u64 = 8;
    const INVOCATIONS: usize = 40;
    let mesh = Mesh::start(
        &["node-a"],
        &[
            ("FNMESH_EVENT_CAPACITY", "8"),
            ("FNMESH_ACK_WAIT_SECS", "2"),
            ("FNMESH_NODE_SLOTS", "8"),
        ],
    )
    .await;
    let name = unique("printer");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    print('ran', event['i'])\n    return event['i']\n",
        )],
        json!({"max_concurrency": 64, "min_warm": 1}),
    ))
    .await;
    // The node has the code and a warm sandbox before the gateway is frozen.
    let r = mesh
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(json!({"i": -1})),
        )
        .await;
    assert_eq!(r.status, 200, "warm-up: {:?}\n{}", r.body, mesh.logs());

    // The node is frozen while the work is accepted, then the gateway while the node runs it:
    // otherwise the recorder keeps up and the stream never fills.
    mesh.nodes[0].pause();
    let mut ids = Vec::new();
    for i in 0..INVOCATIONS {
        ids.push(mesh.invoke_async(&name, json!({"i": i})).await);
    }

    mesh.gateway.pause();
    mesh.nodes[0].resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    while event_stream_messages(&mesh).await < CAPACITY {
        if Instant::now() > deadline {
            mesh.gateway.resume();
            panic!("the event stream never filled up:\n{}", mesh.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Full for three ack waits: long enough for work to be redelivered if a node let go.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let full = event_stream_messages(&mesh).await;
    mesh.gateway.resume();
    assert_eq!(full, CAPACITY, "the stream stayed full while frozen");

    for (i, id) in ids.iter().enumerate() {
        let record: Value = mesh.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(
            record["status"],
            "succeeded",
            "invocation {i}: {record}\n{}",
            mesh.logs()
        );
        assert_eq!(record["result"], json!(i));
        assert_eq!(
            record["attempt"], 1,
            "invocation {i} ran more than once: {record}"
        );
        let logs = mesh
            .call("GET", &format!("/v1/invocations/{id}/logs"), None)
            .await;
        assert!(
            logs.body.to_string().contains(&format!("ran {i}")),
            "invocation {i}'s logs are recorded: {:?}",
            logs.body
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while event_backlog(&mesh).await > 0 || event_stream_messages(&mesh).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the event stream did not drain after the recorder came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
