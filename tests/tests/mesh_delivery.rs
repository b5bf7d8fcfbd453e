//! Delivery guarantees of the mesh, with a gateway and two nodes as real processes over a
//! harness `nats-server -js`: a node killed with `kill -9` loses no work, a function that
//! always crashes ends in the dead-letter queue after `max_deliver` attempts (and can be
//! replayed or deleted), a flooded slow function does not hold up a fast one,
//! `max_concurrency` holds across the cluster, and a result larger than NATS's `max_payload`
//! is an `invalid_result` settled once, not a delivery run again and again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{function_body, unique};
use serde_json::json;

/// `kill -9` of a node while 50 one-second async invocations are in flight: all 50 end
/// `succeeded`, once each, after at most 2 attempts, none left `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_no_work() {
    let mut mesh = Mesh::start(
        &["node-a", "node-b"],
        &[("FNMESH_ACK_WAIT_SECS", "4"), ("FNMESH_NODE_SLOTS", "16")],
    )
    .await;
    let name = unique("sleepy");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(event, context):\n    time.sleep(1)\n    return event['i']\n",
        )],
        json!({"max_concurrency": 64, "min_warm": 0}),
    ))
    .await;

    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(mesh.invoke_async(&name, json!({"i": i})).await);
    }
    // Kill node-a once it is running some of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = mesh
            .call(
                "GET",
                &format!("/v1/invocations?function={name}&status=running&limit=100"),
                None,
            )
            .await;
        let on_a = r.body["items"]
            .as_array()
            .map(|items| items.iter().filter(|i| i["node_id"] == "node-a").count())
            .unwrap_or(0);
        if on_a > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-a never ran anything:\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.node("node-a").kill9();

    let mut attempts: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let record = mesh.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(
            record["status"],
            "succeeded",
            "invocation {i}: {record}\n{}",
            mesh.logs()
        );
        assert_eq!(record["result"], json!(i));
        let attempt = record["attempt"].as_u64().unwrap();
        assert!(
            (1..=2).contains(&attempt),
            "invocation {i} took {attempt} attempts"
        );
        *attempts.entry(attempt).or_default() += 1;
    }
    println!("attempts: {attempts:?}");
    assert!(
        attempts.get(&2).copied().unwrap_or(0) > 0,
        "some invocations were redelivered from the killed node: {attempts:?}"
    );

    // One terminal record each, none left running or queued.
    let list = mesh
        .call(
            "GET",
            &format!("/v1/invocations?function={name}&limit=1000"),
            None,
        )
        .await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 50, "{:?}", list.body);
    let unique_ids: HashSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(unique_ids.len(), 50);
    assert!(items.iter().all(|i| i["status"] == "succeeded"));
}

/// A function that always crashes is tried `max_deliver` times with a growing backoff, then
/// dead-lettered: its record says `dead_lettered` with the last error, and the dead-letter
/// queue holds it with its payload. Replay runs it again under a new id; delete removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_function_ends_in_the_dead_letter_queue() {
    let mesh = Mesh::start(&["node-a", "node-b"], &[("FNMESH_MAX_DELIVER", "3")]).await;
    let name = unique("crashy");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import os\ndef handle(event, context):\n    os._exit(3)\n",
        )],
        json!({}),
    ))
    .await;
    let started = Instant::now();
    let id = mesh.invoke_async(&name, json!({"order": 42})).await;
    let record = mesh.wait_terminal(&id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(
        record["status"],
        "dead_lettered",
        "{record}\n{}",
        mesh.logs()
    );
    assert_eq!(record["attempt"], 3, "{record}");
    assert_eq!(record["error"]["kind"], "crashed", "{record}");
    // Backoff: 1 s before attempt 2, 2 s before attempt 3.
    assert!(
        took >= Duration::from_secs(3),
        "attempts were not backed off: all 3 in {took:?}"
    );

    let dlq = mesh.call("GET", "/v1/admin/dlq", None).await;
    assert_eq!(dlq.status, 200, "{:?}", dlq.body);
    let entry = dlq.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("dead letter listed: {:?}", dlq.body))
        .clone();
    assert_eq!(entry["attempts"], 3, "{entry}");
    assert_eq!(entry["last_error"]["kind"], "crashed", "{entry}");
    assert_eq!(entry["function"], name.as_str());
    assert!(
        entry.to_string().contains("42"),
        "the dead letter keeps its payload: {entry}"
    );

    // Replay: a new invocation of the same payload runs (and, crashing again, is
    // dead-lettered again after its own attempts).
    let r = mesh
        .call("POST", &format!("/v1/admin/dlq/{id}/replay"), None)
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let replay_id = r.body["id"].as_str().unwrap().to_owned();
    assert_ne!(replay_id, id);
    let replayed = mesh
        .wait_terminal(&replay_id, Duration::from_secs(60))
        .await;
    assert_eq!(replayed["status"], "dead_lettered", "{replayed}");
    assert_eq!(replayed["attempt"], 3, "the replay ran again: {replayed}");
    assert!(replayed["node_id"].is_string(), "{replayed}");
    let gone = mesh.call("GET", &format!("/v1/admin/dlq/{id}"), None).await;
    assert_eq!(gone.status, 404, "a replayed dead letter leaves the queue");

    // Delete.
    let r = mesh
        .call("DELETE", &format!("/v1/admin/dlq/{replay_id}"), None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = mesh
        .call("GET", &format!("/v1/admin/dlq/{replay_id}"), None)
        .await;
    assert_eq!(r.status, 404);
}

/// The bound this test holds the fast function to while the slow one is flooded.
const FAST_BOUND: Duration = Duration::from_secs(3);

/// 200 queued invocations of a slow function (2 s each, max_concurrency 2) do not hold up a
/// fast function: each of its sync calls completes within [`FAST_BOUND`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooded_slow_function_does_not_delay_a_fast_one() {
    let mesh = Mesh::start(&["node-a", "node-b"], &[]).await;
    let slow = unique("slow");
    let fast = unique("fast");
    mesh.deploy(function_body(
        &slow,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(event, context):\n    time.sleep(2)\n    return 'slow'\n",
        )],
        json!({"max_concurrency": 2}),
    ))
    .await;
    mesh.deploy(function_body(
        &fast,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    return event['i']\n",
        )],
        json!({"max_concurrency": 4}),
    ))
    .await;
    for i in 0..200 {
        mesh.invoke_async(&slow, json!({"i": i})).await;
    }
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let t0 = Instant::now();
        let r = mesh
            .call(
                "POST",
                &format!("/v1/functions/{fast}/invoke"),
                Some(json!({"i": i})),
            )
            .await;
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["result"], json!(i));
        worst = worst.max(took);
    }
    println!("slowest fast call while the slow function was flooded: {worst:?}");
    assert!(
        worst <= FAST_BOUND,
        "a fast call took {worst:?} (bound {FAST_BOUND:?})\n{}",
        mesh.logs()
    );
    let queues = mesh.call("GET", "/v1/admin/queues", None).await;
    assert_eq!(queues.status, 200, "{:?}", queues.body);
    let slow_queue = queues.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == slow.as_str())
        .unwrap_or_else(|| panic!("the slow function is queued: {:?}", queues.body))
        .clone();
    assert!(
        slow_queue["pending"].as_u64().unwrap() > 150,
        "{slow_queue}"
    );
    assert!(
        slow_queue["in_flight"].as_u64().unwrap() <= 2,
        "{slow_queue}"
    );
}

/// `max_concurrency: 2` caps concurrent executions across both nodes together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrency_holds_across_the_cluster() {
    let mesh = Mesh::start(&["node-a", "node-b"], &[]).await;
    let name = unique("capped");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import time\ndef handle(event, context):\n    t0 = time.time()\n    time.sleep(0.5)\n    return [t0, time.time()]\n",
        )],
        json!({"max_concurrency": 2}),
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(mesh.invoke_async(&name, json!({"i": i})).await);
    }
    let mut spans = Vec::new();
    let mut nodes = HashSet::new();
    for id in &ids {
        let record = mesh.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        let span = record["result"].as_array().unwrap();
        spans.push((span[0].as_f64().unwrap(), span[1].as_f64().unwrap()));
        nodes.insert(record["node_id"].as_str().unwrap().to_owned());
    }
    // The most executions overlapping at any start instant.
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    println!("most concurrent: {most}, nodes: {nodes:?}");
    assert!(
        most <= 2,
        "{most} ran at once with max_concurrency 2: {spans:?}"
    );
    assert_eq!(most, 2, "two did run at once: {spans:?}");
}

/// A python function returning ~2 MiB (over the node's 512 KiB result cap and over NATS's
/// 1 MiB `max_payload`): a sync call gets `invalid_result` promptly, an async one is recorded
/// `invalid_result` after one attempt (acked, not retried), the function ran once per call,
/// and the node serves the next invocation from the same warm sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_over_the_cap_is_invalid_result_once_and_the_node_serves_on() {
    let mesh = Mesh::start(&["node-a"], &[("FNMESH_ACK_WAIT_SECS", "5")]).await;
    let name = unique("huge");
    mesh.deploy(function_body(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "runs = 0\n\ndef handle(event, context):\n    global runs\n    runs += 1\n    return {'runs': runs, 'blob': 'x' * event['size']}\n",
        )],
        json!({"timeout_ms": 10000, "min_warm": 0}),
    ))
    .await;
    let path = format!("/v1/functions/{name}/invoke");
    let big = json!({"size": 2 * 1024 * 1024});

    let started = Instant::now();
    let r = mesh.call("POST", &path, Some(big.clone())).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
    assert_eq!(r.body["status"], "failed", "{:?}", r.body);
    assert_eq!(r.body["error"]["kind"], "invalid_result", "{:?}", r.body);
    assert_eq!(r.body["attempt"], 1, "{:?}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not prompt: {:?}",
        started.elapsed()
    );

    let id = mesh.invoke_async(&name, big).await;
    let record = mesh.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "failed", "{record:?}");
    assert_eq!(record["error"]["kind"], "invalid_result", "{record:?}");
    assert_eq!(record["attempt"], 1, "not retried: {record:?}");

    // Each call ran once, and the sandbox is still warm and healthy.
    let r = mesh.call("POST", &path, Some(json!({"size": 3}))).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, mesh.logs());
    assert_eq!(r.body["status"], "succeeded", "{:?}", r.body);
    assert_eq!(
        r.body["result"],
        json!({"runs": 3, "blob": "xxx"}),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["metrics"]["cold_start"], false, "{:?}", r.body);
    // Nothing is left to deliver again. (The last call's delivery is acked just after its
    // answer, once the gateway has stored the outcome and sent the node its receipt.)
    let lane = || async {
        let queues = mesh.call("GET", "/v1/admin/queues", None).await;
        assert_eq!(queues.status, 200, "{:?}", queues.body);
        queues.body["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["function"] == name.as_str())
            .cloned()
            .unwrap_or_default()
    };
    fnmesh_tests::mesh::eventually(
        "the last delivery is acked",
        Duration::from_secs(10),
        || mesh.logs(),
        || async { lane().await["in_flight"].as_u64().unwrap_or(0) == 0 },
    )
    .await;
    let lane = lane().await;
    assert_eq!(lane["pending"].as_u64().unwrap_or(0), 0, "{lane:?}");
    assert_eq!(lane["in_flight"].as_u64().unwrap_or(0), 0, "{lane:?}");
}
