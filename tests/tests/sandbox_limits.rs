//! The seed's execution metrics and limits through a real `fnmesh up`: records carry the CPU
//! time a sandbox used (`metrics.cpu_time_us`, from its cgroup), and `cpu_shares` /
//! `disk_io_bps` reach the sandbox's cgroup as its CPU weight and block I/O throttle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fnmesh_tests::{unique, TestApp};
use serde_json::{json, Value};

/// Burns `event.burn` seconds of CPU, then sleeps `event.sleep` seconds.
const WORK: &str = "import time\n\ndef handle(event, context):\n    end = time.process_time() + event.get('burn', 0)\n    while time.process_time() < end:\n        pass\n    time.sleep(event.get('sleep', 0))\n    return 'ok'\n";

/// The sandbox cgroup directories of every node below `hierarchy` (`/fnmesh/<node>/<id>`).
fn sandbox_dirs(hierarchy: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(nodes) = std::fs::read_dir(hierarchy.join("fnmesh")) else {
        return dirs;
    };
    for node in nodes.flatten() {
        if let Ok(sandboxes) = std::fs::read_dir(node.path()) {
            dirs.extend(sandboxes.flatten().map(|s| s.path()).filter(|p| p.is_dir()));
        }
    }
    dirs
}

/// Whether some sandbox's `file` (in the hierarchy of `controller` on cgroup v1, or the
/// unified one) satisfies `check`.
fn some_sandbox(controller: &str, file: &str, check: impl Fn(&str) -> bool) -> bool {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchy = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join(controller)
    };
    sandbox_dirs(&hierarchy)
        .iter()
        .any(|dir| std::fs::read_to_string(dir.join(file)).is_ok_and(|text| check(text.trim())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_cpu_time_and_limits_reach_the_cgroup() {
    let app = TestApp::start().await;
    let name = unique("limits");
    let config = json!({ "cpu_shares": 321, "disk_io_bps": 1_234_567, "timeout_ms": 60000 });
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", WORK)],
        config,
    )
    .await;
    let invoke = |payload: Value| {
        let app = &app;
        let name = name.clone();
        async move {
            let r = app
                .call(
                    "POST",
                    &format!("/v1/functions/{name}/invoke"),
                    Some(payload),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}\n{}", r.body, app.log());
            assert_eq!(r.body["status"], "succeeded", "{}", r.body);
            r.body
        }
    };

    // CPU time: what the handler burned, not the time it slept (nor its sandbox's boot).
    let burned = invoke(json!({ "burn": 0.4 })).await;
    let cpu = burned["metrics"]["cpu_time_us"].as_u64().unwrap();
    assert!(
        (300_000..2_000_000).contains(&cpu),
        "0.4 s of CPU burned: {cpu} µs\n{burned}"
    );
    let slept = invoke(json!({ "sleep": 0.4 })).await;
    let cpu = slept["metrics"]["cpu_time_us"].as_u64().unwrap();
    assert!(cpu < 150_000, "0.4 s asleep: {cpu} µs\n{slept}");
    assert!(
        slept["metrics"]["duration_ms"].as_u64().unwrap() >= 400,
        "{slept}"
    );

    // While one runs, its cgroup holds the function's weight and throttle.
    let running = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({ "sleep": 5 })),
        )
        .await;
    assert_eq!(running.status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    loop {
        let (weight, throttle) = if v2 {
            (
                some_sandbox("cpu", "cpu.weight", |w| w != "100"),
                some_sandbox("io", "io.max", |t| t.contains("rbps=1234567")),
            )
        } else {
            (
                some_sandbox("cpu", "cpu.shares", |s| s == "321"),
                some_sandbox("blkio", "blkio.throttle.read_bps_device", |t| {
                    t.ends_with(" 1234567")
                }) && some_sandbox("blkio", "blkio.throttle.write_bps_device", |t| {
                    t.ends_with(" 1234567")
                }),
            )
        };
        if weight && throttle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sandbox cgroup has the weight ({weight}) and the throttle ({throttle})\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Out of range: refused at deploy.
    for (config, field) in [
        (json!({ "cpu_shares": 1 }), "cpu_shares"),
        (json!({ "cpu_shares": 300_000 }), "cpu_shares"),
        (json!({ "disk_io_bps": 1000 }), "disk_io_bps"),
    ] {
        let r = app
            .call(
                "PUT",
                &format!("/v1/functions/{name}"),
                Some(json!({ "config": config })),
            )
            .await;
        assert_eq!(r.status, 400, "{config}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_config");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{:?}",
            r.body
        );
    }
}
