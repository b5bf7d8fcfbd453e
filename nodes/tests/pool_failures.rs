//! Timeouts, handler errors, init errors and crashes: what is reported and what happens to the
//! sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fnmesh_core::{ErrorKind, InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness, SLEEPY_PY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_reported_within_a_second_and_the_sandbox_destroyed() {
    let h = Harness::new().await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let mut f = function("sleepy", Runtime::Python3, "main.handle");
    f.config.timeout_ms = 1000;

    // Warm it up first so the deadline is spent in the handler.
    assert!(h.run(&f, &code, json!({})).await.cold_start);
    let started = Instant::now();
    let out = h.run(&f, &code, json!({"sleep": 30})).await;
    let elapsed = started.elapsed();
    assert_eq!(out.status, InvocationStatus::Timeout, "{out:?}");
    assert_eq!(out.error.as_ref().unwrap().kind, ErrorKind::Timeout);
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
    assert!(h.fake.live_ids().is_empty(), "the sandbox was destroyed");
    assert_eq!(h.executor.stats().live, 0);

    // The next invocation gets a fresh sandbox.
    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded);
    assert!(out.cold_start);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_import_counts_against_the_timeout() {
    let h = Harness::new().await;
    let code = h.code(
        "slow-import",
        &[(
            "main.py",
            "import time\ntime.sleep(30)\ndef handle(e, c):\n    return 1\n",
        )],
    );
    let mut f = function("slow-import", Runtime::Python3, "main.handle");
    f.config.timeout_ms = 500;
    let started = Instant::now();
    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Timeout, "{out:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(h.fake.live_ids().is_empty());
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_exception_fails_the_invocation_but_keeps_the_sandbox() {
    let h = Harness::new().await;
    let code = h.code(
        "raiser",
        &[(
            "main.py",
            "calls = 0\n\ndef handle(event, context):\n    global calls\n    calls += 1\n    if event.get('fail'):\n        raise ValueError('boom ' + str(calls))\n    return calls\n",
        )],
    );
    let f = function("raiser", Runtime::Python3, "main.handle");

    let out = h.run(&f, &code, json!({"fail": true})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::HandlerError);
    assert_eq!(error.message, "ValueError: boom 1");
    assert!(out.logs.text.contains("Traceback"), "{:?}", out.logs.text);
    assert!(out.logs.text.contains("ValueError: boom 1"));

    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert!(!out.cold_start, "the same sandbox serves the next call");
    assert_eq!(out.result, Some(json!(2)));
    assert!(
        !out.logs.text.contains("Traceback"),
        "logs are per invocation"
    );
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_error_is_a_handler_error_with_the_traceback_in_the_logs() {
    let h = Harness::new().await;
    let code = h.code("broken", &[("main.py", "import no_such_module_here\n")]);
    let f = function("broken", Runtime::Python3, "main.handle");
    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::HandlerError);
    assert!(error.message.contains("ModuleNotFoundError"), "{error:?}");
    assert!(out.logs.text.contains("Traceback"), "{:?}", out.logs.text);
    assert!(out.cold_start);
    assert!(h.fake.live_ids().is_empty(), "the sandbox was discarded");
    assert_eq!(h.executor.stats().live, 0);

    let missing = function("missing", Runtime::Python3, "main.nope");
    let code = h.code("missing", &[("main.py", "x = 1\n")]);
    let out = h.run(&missing, &code, json!({})).await;
    assert_eq!(out.error.unwrap().kind, ErrorKind::HandlerError);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_sandbox_is_crashed_and_replaced() {
    let h = Harness::new().await;
    let code = h.code(
        "dier",
        &[(
            "main.py",
            "import os\n\ndef handle(event, context):\n    if event.get('die'):\n        print('going down')\n        os._exit(3)\n    return 'ok'\n",
        )],
    );
    let f = function("dier", Runtime::Python3, "main.handle");
    assert_eq!(
        h.run(&f, &code, json!({})).await.status,
        InvocationStatus::Succeeded
    );

    let out = h.run(&f, &code, json!({"die": true})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Crashed);
    assert!(error.message.contains("exit code 3"), "{error:?}");
    assert!(out.logs.text.contains("going down"), "{:?}", out.logs.text);
    assert!(h.fake.live_ids().is_empty());

    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded);
    assert!(out.cold_start);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_is_not_json_is_invalid_result() {
    let h = Harness::new().await;
    let code = h.code(
        "badresult",
        &[(
            "main.py",
            "def handle(event, context):\n    return {'x': {1, 2}} if event.get('set') else float('nan')\n",
        )],
    );
    let f = function("badresult", Runtime::Python3, "main.handle");
    for payload in [json!({"set": true}), json!({})] {
        let out = h.run(&f, &code, payload).await;
        assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
        assert_eq!(out.error.unwrap().kind, ErrorKind::InvalidResult);
    }
    assert_eq!(h.fake.created(), 1, "the sandbox stays usable");
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_code_dir_or_handler_shape_is_a_clean_failure() {
    let h = Harness::new().await;
    let f = function("nocode", Runtime::Python3, "main.handle");
    let out = h
        .run(&f, &h.dir.path().join("does-not-exist"), json!({}))
        .await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let bad = function("badhandler", Runtime::Python3, "nodot");
    let out = h.run(&bad, &h.dir.path().join("x"), json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    assert_eq!(out.error.unwrap().kind, ErrorKind::Crashed);
    assert_eq!(h.executor.stats().live, 0);
    h.executor.shutdown(Duration::from_secs(5)).await;
}
