//! The nodejs runtime: sync and async handlers, logs, errors, context and module state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::time::Duration;

use fnmesh_core::{ErrorKind, InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness};

const INDEX_JS: &str = r#"
let calls = 0;
console.log('loaded');

exports.sync = (event, context) => {
  calls += 1;
  console.log('sync called', JSON.stringify(event));
  return { calls, name: context.functionName, version: context.functionVersion,
           id: context.invocationId, memory: context.memoryLimitMb,
           remaining: context.getRemainingTimeInMillis(), trace: context.traceId };
};

exports.later = async (event) => {
  await new Promise((resolve) => setTimeout(resolve, 20));
  console.error('async done');
  process.stdout.write('via process.stdout\n');
  return { doubled: event.n * 2 };
};

exports.fails = async () => { throw new TypeError('nope'); };
exports.nothing = () => undefined;
exports.bigint = () => ({ big: 10n });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_async_handlers_return_their_results() {
    let h = Harness::new().await;
    let code = h.code("node", &[("index.js", INDEX_JS)]);
    let sync = function("node-sync", Runtime::Nodejs, "index.sync");

    let out = h.run(&sync, &code, json!({"a": 1})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let r = out.result.unwrap();
    assert_eq!(r["calls"], 1);
    assert_eq!(r["name"], "node-sync");
    assert_eq!(r["version"], 1);
    assert_eq!(r["memory"], 128);
    assert!(r["remaining"].as_u64().unwrap() > 20_000);
    assert!(r["id"].as_str().unwrap().len() == 36);
    assert!(out.logs.text.contains("loaded"), "{:?}", out.logs.text);
    assert!(out.logs.text.contains(r#"sync called {"a":1}"#));

    let out = h.run(&sync, &code, json!({})).await;
    assert!(!out.cold_start);
    assert_eq!(
        out.result.unwrap()["calls"],
        2,
        "module state persists while warm"
    );

    let later = function("node-async", Runtime::Nodejs, "index.later");
    let out = h.run(&later, &code, json!({"n": 21})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert_eq!(out.result, Some(json!({"doubled": 42})));
    assert!(out.logs.text.contains("async done"));
    assert!(out.logs.text.contains("via process.stdout"));

    let nothing = function("node-nothing", Runtime::Nodejs, "index.nothing");
    let out = h.run(&nothing, &code, json!({})).await;
    assert_eq!(out.result, Some(json!(null)));
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_bad_results_are_reported() {
    let h = Harness::new().await;
    let code = h.code("node", &[("index.js", INDEX_JS)]);

    let fails = function("node-fails", Runtime::Nodejs, "index.fails");
    let out = h.run(&fails, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::HandlerError);
    assert_eq!(error.message, "TypeError: nope");
    assert!(out.logs.text.contains("TypeError: nope"));
    let again = h.run(&fails, &code, json!({})).await;
    assert!(!again.cold_start, "the sandbox stays usable");

    let bigint = function("node-bigint", Runtime::Nodejs, "index.bigint");
    let out = h.run(&bigint, &code, json!({})).await;
    assert_eq!(out.error.unwrap().kind, ErrorKind::InvalidResult);

    let missing = function("node-missing", Runtime::Nodejs, "index.absent");
    let out = h.run(&missing, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed);
    assert_eq!(out.error.unwrap().kind, ErrorKind::HandlerError);

    let broken_code = h.code("node-broken", &[("index.js", "this is not javascript(\n")]);
    let broken = function("node-broken", Runtime::Nodejs, "index.handler");
    let out = h.run(&broken, &broken_code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed);
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::HandlerError);
    assert!(error.message.contains("SyntaxError"), "{error:?}");
    assert!(out.logs.text.contains("SyntaxError"));
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_async_handler_times_out() {
    let h = Harness::new().await;
    let code = h.code(
        "node-hang",
        &[(
            "index.js",
            "exports.handler = () => new Promise(() => {});\n",
        )],
    );
    let mut f = function("node-hang", Runtime::Nodejs, "index.handler");
    f.config.timeout_ms = 700;
    let started = std::time::Instant::now();
    let out = h.run(&f, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Timeout, "{out:?}");
    assert!(started.elapsed() < Duration::from_millis(1700));
    assert!(h.fake.live_ids().is_empty());
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_cap_is_invalid_result_and_the_sandbox_serves_on() {
    let h = Harness::with(|c| c.max_result_bytes = 4096).await;
    let code = h.code(
        "big",
        &[(
            "index.js",
            "let runs = 0;\nexports.handle = (event) => { runs += 1; return { runs, blob: 'x'.repeat(event.size) }; };\n",
        )],
    );
    let f = function("big", Runtime::Nodejs, "index.handle");
    let out = h.run(&f, &code, json!({"size": 100_000})).await;
    assert_eq!(out.status, InvocationStatus::Failed, "{:?}", out.error);
    let error = out.error.unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidResult, "{error:?}");
    assert!(error.message.contains("4096"), "{}", error.message);
    let out = h.run(&f, &code, json!({"size": 2})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    assert!(!out.cold_start);
    assert_eq!(out.result.unwrap(), json!({"runs": 2, "blob": "xx"}));
    h.executor.shutdown(Duration::from_secs(5)).await;
}
