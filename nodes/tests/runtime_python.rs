//! The python3 runtime: logs versus results, the log cap, the context and the environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::time::Duration;

use fnmesh_core::{InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_go_to_the_logs_not_the_result() {
    let h = Harness::new().await;
    let code = h.code(
        "printer",
        &[(
            "main.py",
            "import os, sys, subprocess\nprint('imported')\n\ndef handle(event, context):\n    print('to stdout', event)\n    print('to stderr', file=sys.stderr)\n    os.write(1, b'raw fd 1\\n')\n    subprocess.run(['/bin/echo', 'from a child'])\n    return {'ok': True}\n",
        )],
    );
    let f = function("printer", Runtime::Python3, "main.handle");
    let out = h.run(&f, &code, json!({"n": 1})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert_eq!(out.result, Some(json!({"ok": true})));
    let text = &out.logs.text;
    for line in [
        "imported",
        "to stdout {'n': 1}",
        "to stderr",
        "raw fd 1",
        "from a child",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text:?}");
    }
    assert!(
        !text.contains("fnmesh-end"),
        "the end marker is stripped: {text:?}"
    );
    assert!(!out.logs.truncated);

    let out = h.run(&f, &code, json!({"n": 2})).await;
    assert!(!out.logs.text.contains("imported"), "{:?}", out.logs.text);
    assert!(out.logs.text.contains("to stdout {'n': 2}"));
    assert!(!out.logs.text.contains("{'n': 1}"));
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_capped_and_a_chatty_handler_never_blocks() {
    let h = Harness::with(|c| c.log_cap_bytes = 1000).await;
    let code = h.code(
        "chatty",
        &[(
            "main.py",
            "import sys\n\ndef handle(event, context):\n    for i in range(event['lines']):\n        print('line %06d' % i + 'x' * 100)\n    return event['lines']\n",
        )],
    );
    let f = function("chatty", Runtime::Python3, "main.handle");
    // 2 MB of output: far beyond the pipe buffer.
    let out = h.run(&f, &code, json!({"lines": 20000})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert!(out.logs.truncated);
    assert!(out.logs.text.len() <= 1000);
    assert!(out.logs.text.starts_with("line 000000"));

    let out = h.run(&f, &code, json!({"lines": 2})).await;
    assert!(!out.logs.truncated, "the cap is per invocation");
    assert!(
        out.logs.text.starts_with("line 000000"),
        "{:?}",
        out.logs.text
    );
    assert!(out.logs.text.contains("line 000001"));
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_describes_the_invocation() {
    let h = Harness::new().await;
    let code = h.code(
        "ctx",
        &[(
            "main.py",
            "def handle(event, context):\n    return {\n        'invocation_id': context.invocation_id,\n        'function_name': context.function_name,\n        'function_version': context.function_version,\n        'memory_limit_mb': context.memory_limit_mb,\n        'trace_id': context.trace_id,\n        'remaining': context.get_remaining_time_in_millis(),\n        'deadline_ms': context.deadline_ms,\n    }\n",
        )],
    );
    let mut f = function("ctx", Runtime::Python3, "main.handle");
    f.version = 7;
    f.config.timeout_ms = 5000;
    f.config.memory_mb = 256;
    let mut job = support::job(&f, &code, json!(null));
    job.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    let id = job.invocation_id.to_string();
    let out = h.executor.execute(job).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let r = out.result.unwrap();
    assert_eq!(r["invocation_id"], json!(id));
    assert_eq!(r["function_name"], "ctx");
    assert_eq!(r["function_version"], 7);
    assert_eq!(r["memory_limit_mb"], 256);
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let remaining = r["remaining"].as_u64().unwrap();
    assert!(remaining > 3000 && remaining <= 5000, "{remaining}");
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_holds_only_allowed_variables() {
    let h = Harness::new().await;
    let code = h.code(
        "env",
        &[(
            "main.py",
            "import os\n\ndef handle(event, context):\n    return dict(os.environ)\n",
        )],
    );
    let mut f = function("env", Runtime::Python3, "main.handle");
    f.config
        .environment
        .insert("GREETING".into(), "hello".into());
    let out = h.run(&f, &code, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let env = out.result.unwrap();
    let keys: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "FUNCTION_NAME",
        "FUNCTION_VERSION",
        "FUNCTION_MEMORY_MB",
        "GREETING",
        // Python itself may add this one.
        "LC_CTYPE",
    ];
    for key in &keys {
        assert!(
            allowed.contains(key),
            "unexpected variable {key} in {keys:?}"
        );
        assert!(!key.starts_with("FNMESH"));
    }
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["HOME"], "/tmp");
    assert_eq!(env["FUNCTION_NAME"], "env");
    h.executor.shutdown(Duration::from_secs(5)).await;
}

/// Returns `{"runs": <calls so far>, "blob": "x" * size}`; with `forge`, first writes a frame
/// header announcing 1 GiB straight to the protocol pipe, as a hostile handler could.
const BIG_RESULT_PY: &str = "\
import fcntl, os, stat, struct

runs = 0

def handle(event, context):
    global runs
    runs += 1
    if event.get('forge'):
        log_pipe = os.fstat(2).st_ino
        for name in os.listdir('/proc/self/fd'):
            try:
                fd = int(name)
                st = os.fstat(fd)
                mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            except OSError:
                continue
            if stat.S_ISFIFO(st.st_mode) and st.st_ino != log_pipe and mode == os.O_WRONLY:
                os.write(fd, struct.pack('>I', 1 << 30))
    return {'runs': runs, 'blob': 'x' * event['size']}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_cap_is_invalid_result_and_the_sandbox_serves_on() {
    let h = Harness::new().await;
    let code = h.code("big", &[("main.py", BIG_RESULT_PY)]);
    let f = function("big", Runtime::Python3, "main.handle");

    // ~2 MiB: over the default cap of 512 KiB (and over NATS's default max_payload).
    let started = std::time::Instant::now();
    let out = h.run(&f, &code, json!({"size": 2 * 1024 * 1024})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{:?}", out.error);
    assert!(out.result.is_none());
    let error = out.error.unwrap();
    assert_eq!(
        error.kind,
        fnmesh_core::ErrorKind::InvalidResult,
        "{error:?}"
    );
    assert!(error.message.contains("524288"), "{}", error.message);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not prompt: {:?}",
        started.elapsed()
    );

    // The sandbox is healthy and was not restarted: the module counter says it ran once.
    let out = h.run(&f, &code, json!({"size": 10})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    assert!(!out.cold_start, "the same sandbox serves on");
    assert_eq!(
        out.result.unwrap(),
        json!({"runs": 2, "blob": "x".repeat(10)})
    );
    assert_eq!(h.fake.created(), 1, "one sandbox for both");
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_more_than_the_cap_is_refused_unread_and_its_sandbox_replaced() {
    let h = Harness::with(|c| c.max_result_bytes = 4096).await;
    let code = h.code("forger", &[("main.py", BIG_RESULT_PY)]);
    let f = function("forger", Runtime::Python3, "main.handle");

    let out = h.run(&f, &code, json!({"size": 1, "forge": true})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{:?}", out.error);
    let error = out.error.unwrap();
    assert_eq!(
        error.kind,
        fnmesh_core::ErrorKind::InvalidResult,
        "{error:?}"
    );
    assert!(
        error.message.contains(&(1u64 << 30).to_string()),
        "{}",
        error.message
    );
    // The pipe was left mid-frame, so that sandbox is gone; the next call gets a new one.
    let out = h.run(&f, &code, json!({"size": 3})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    assert!(out.cold_start);
    assert_eq!(out.result.unwrap(), json!({"runs": 1, "blob": "xxx"}));

    // Under the cap passes; one byte over is refused by the bootstrap, sandbox kept.
    let wrapper = r#"{"runs":2,"blob":""}"#.len();
    let out = h.run(&f, &code, json!({"size": 4096 - wrapper})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    let out = h.run(&f, &code, json!({"size": 4096 - wrapper + 1})).await;
    let error = out.error.unwrap();
    assert_eq!(
        error.kind,
        fnmesh_core::ErrorKind::InvalidResult,
        "{error:?}"
    );
    assert!(!out.cold_start);
    h.executor.shutdown(Duration::from_secs(5)).await;
}
