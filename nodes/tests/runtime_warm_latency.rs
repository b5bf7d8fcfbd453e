//! Warm round-trip cost: 1000 sequential invocations of a trivial python handler through the
//! executor (fake runtime, plain processes), against the same bootstrap driven directly over
//! blocking pipes. Prints p50/p99; asserts only a generous bound so it never flakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fnmesh_nodes::runtimes::{self, protocol};
use fnmesh_shared::{InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness};

const N: usize = 1000;
const TRIVIAL_PY: &str = "def handle(event, context):\n    return event\n";

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// The bootstrap alone: blocking pipes, no tokio, no pool, stderr discarded.
fn bare_bootstrap(runtime_dir: &std::path::Path, code: &std::path::Path) -> (Duration, Duration) {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-I", "-u"])
        .arg(runtime_dir.join("python_bootstrap.py"))
        .arg(code)
        .arg("main.handle")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut read_frame = |buf: &mut Vec<u8>| {
        let mut header = [0u8; 4];
        stdout.read_exact(&mut header).unwrap();
        buf.resize(u32::from_be_bytes(header) as usize, 0);
        stdout.read_exact(buf).unwrap();
    };
    let mut body = Vec::new();
    read_frame(&mut body);
    assert_eq!(body, br#"{"ready":true}"#);
    let payload = json!({"n": 1});
    let mut frame = Vec::new();
    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let started = Instant::now();
        let request = protocol::Request {
            id: "0190f5d2-0000-7000-8000-000000000000",
            payload: &payload,
            context: protocol::RequestContext {
                invocation_id: "0190f5d2-0000-7000-8000-000000000000",
                function_name: "bare",
                function_version: 1,
                memory_limit_mb: 128,
                deadline_ms: u64::MAX / 2,
                trace_id: None,
            },
        };
        protocol::encode_request(&mut frame, &request).unwrap();
        stdin.write_all(&frame).unwrap();
        read_frame(&mut body);
        samples.push(started.elapsed());
    }
    drop(stdin);
    child.wait().unwrap();
    percentiles(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_round_trip_of_a_trivial_python_handler() {
    let h = Harness::new().await;
    let code = h.code("trivial", &[("main.py", TRIVIAL_PY)]);
    let f = function("trivial", Runtime::Python3, "main.handle");
    let first = h.run(&f, &code, json!({"n": 0})).await;
    assert!(first.cold_start);

    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let job = support::job(&f, &code, json!({"n": 1}));
        let started = Instant::now();
        let out = h.executor.execute(job).await;
        samples.push(started.elapsed());
        assert_eq!(out.status, InvocationStatus::Succeeded);
        assert!(!out.cold_start);
    }
    let (p50, p99) = percentiles(samples);
    h.executor.shutdown(Duration::from_secs(5)).await;

    let runtime_dir = h.dir.path().join("runtime-bare");
    runtimes::install_bootstraps(&runtime_dir).unwrap();
    let (bare_p50, bare_p99) =
        tokio::task::spawn_blocking(move || bare_bootstrap(&runtime_dir, &code))
            .await
            .unwrap();
    println!(
        "warm round trip over {N} invocations: executor p50 {p50:?} p99 {p99:?}; \
         bare bootstrap p50 {bare_p50:?} p99 {bare_p99:?}; overhead p50 {:?}",
        p50.saturating_sub(bare_p50)
    );
    assert!(p50 < Duration::from_millis(5), "p50 {p50:?}");
}
