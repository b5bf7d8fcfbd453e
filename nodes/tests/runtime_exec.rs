//! The exec runtime: one process per invocation, payload on stdin, result on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::time::Duration;

use fnmesh_core::{ErrorKind, InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness};

const HANDLER_SH: &str = r#"#!/bin/sh
payload=$(cat)
echo "got $payload" >&2
case "$payload" in
  *'"mode":"text"'*) echo "not json at all" ;;
  *'"mode":"fail"'*)
    i=0
    while [ $i -lt 300 ]; do echo "noise line $i" >&2; i=$((i+1)); done
    echo "the real reason" >&2
    exit 3 ;;
  *) printf '{"echo":%s,"pid":%s}' "$payload" "$$" ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_the_result_and_each_invocation_is_a_new_process() {
    let h = Harness::new().await;
    let code = h.code("exec", &[("bin/handler", HANDLER_SH)]);
    let f = function("exec", Runtime::Exec, "bin/handler");

    let first = h.run(&f, &code, json!({"a": [1, 2]})).await;
    assert_eq!(first.status, InvocationStatus::Succeeded, "{first:?}");
    let r = first.result.unwrap();
    assert_eq!(r["echo"], json!({"a": [1, 2]}));
    assert!(
        first.logs.text.contains(r#"got {"a":[1,2]}"#),
        "{:?}",
        first.logs.text
    );

    let second = h.run(&f, &code, json!({"b": 1})).await;
    assert!(!second.cold_start, "the bootstrap sandbox is pooled");
    let r2 = second.result.unwrap();
    assert_ne!(r["pid"], r2["pid"], "one process per invocation");
    assert_eq!(h.fake.created(), 1);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_output_and_failures_are_reported() {
    let h = Harness::new().await;
    let code = h.code("exec", &[("bin/handler", HANDLER_SH)]);
    let f = function("exec", Runtime::Exec, "bin/handler");

    let out = h.run(&f, &code, json!({"mode": "text"})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidResult);
    assert!(error.message.contains("not json at all"), "{error:?}");

    let out = h.run(&f, &code, json!({"mode": "fail"})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::HandlerError);
    assert!(error.message.contains("status 3"), "{error:?}");
    assert!(error.message.contains("the real reason"), "{error:?}");
    assert!(
        !error.message.contains("noise line 0\n"),
        "only the tail: {error:?}"
    );
    assert!(error.message.len() < 2300, "{}", error.message.len());
    assert!(
        out.logs.text.contains("noise line 0"),
        "stderr goes to the logs"
    );
    assert!(out.logs.text.contains("the real reason"));

    let out = h.run(&f, &code, json!({"ok": 1})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded);
    assert!(!out.cold_start);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_non_executable_handler_fails_to_load() {
    let h = Harness::new().await;
    let code = h.code("exec-bad", &[("data.txt", "hello")]);
    for handler in ["bin/absent", "data.txt"] {
        let f = function("exec-bad", Runtime::Exec, handler);
        let out = h.run(&f, &code, json!({})).await;
        assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
        assert_eq!(out.error.unwrap().kind, ErrorKind::HandlerError);
    }
    assert!(h.fake.live_ids().is_empty());
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_process_times_out_and_the_sandbox_is_destroyed() {
    let h = Harness::new().await;
    let code = h.code("exec-hang", &[("run.sh", "#!/bin/sh\nsleep 30\n")]);
    let mut f = function("exec-hang", Runtime::Exec, "run.sh");
    f.config.timeout_ms = 600;
    let started = std::time::Instant::now();
    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Timeout, "{out:?}");
    assert!(started.elapsed() < Duration::from_millis(1600));
    let fake = h.fake.clone();
    assert!(
        h.eventually(Duration::from_secs(2), || fake.live_ids().is_empty())
            .await
    );
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_cap_is_invalid_result() {
    let h = Harness::with(|c| c.max_result_bytes = 4096).await;
    let code = h.code(
        "big",
        &[(
            "bin/handler",
            "#!/bin/sh\nn=$(cat)\nprintf '\"'\nhead -c \"$n\" /dev/zero | tr '\\0' x\nprintf '\"'\n",
        )],
    );
    let f = function("big", Runtime::Exec, "bin/handler");
    let out = h.run(&f, &code, json!(100000)).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{:?}", out.error);
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidResult, "{error:?}");
    assert!(error.message.contains("4096"), "{}", error.message);
    let out = h.run(&f, &code, json!(3)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.result.unwrap(), json!("xxx"));
    h.executor.shutdown(Duration::from_secs(5)).await;
}
