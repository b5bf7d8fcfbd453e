//! Secrets reach a function's environment through the bootstrap's init frame, in every runtime:
//! set before the handler's code loads (a module-level read sees them), winning over a plain
//! variable of the same name, and never in the bundle's `config.json` nor in the bootstrap's
//! initial environment block (what `/proc/<pid>/environ` shows to anyone allowed to read it).
//!
//! These run on the fake runtime (plain host processes): what they check is the node and the
//! bootstraps; `sandbox_users.rs` checks the same on real sandboxes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fnmesh_core::{Execution, Function, InvocationId, InvocationStatus, Runtime};
use fnmesh_nodes::executor::Job;
use serde_json::{json, Value};
use support::{contains, files_under, function, keyring, sealed_secrets, Harness};

const SECRET: &str = "s3cr3t-9f1c-value";

const PYTHON: &str = r#"
import os
AT_IMPORT = os.environ.get("DB_PASSWORD")

def handle(event, context):
    initial = open("/proc/self/environ", "rb").read()
    return {
        "now": os.environ.get("DB_PASSWORD"),
        "at_import": AT_IMPORT,
        "greeting": os.environ.get("GREETING"),
        "in_initial_env": event["needle"].encode() in initial,
    }
"#;

const NODE: &str = r#"
const fs = require('fs');
const atImport = process.env.DB_PASSWORD;
exports.handler = (event) => ({
  now: process.env.DB_PASSWORD,
  at_import: atImport,
  greeting: process.env.GREETING,
  in_initial_env: fs.readFileSync('/proc/self/environ').includes(event.needle),
});
"#;

/// The handler process inherits the secrets (that is the exec runtime's contract); its parent,
/// the bootstrap, holds them in its memory only.
const EXEC: &str = r#"#!/bin/sh
needle=$(cat | sed 's/.*"needle":"\([^"]*\)".*/\1/')
if tr '\0' '\n' < /proc/$PPID/environ | grep -q "$needle"; then parent=true; else parent=false; fi
printf '{"now":"%s","at_import":"%s","greeting":"%s","in_initial_env":%s}' \
  "$DB_PASSWORD" "$DB_PASSWORD" "$GREETING" "$parent"
"#;

fn with_greeting(mut f: Function) -> Function {
    f.config
        .environment
        .insert("GREETING".into(), "plain hello".into());
    f
}

async fn check(runtime: Runtime, handler: &str, files: &[(&str, &str)]) {
    let keys = keyring();
    let ring = keys.clone();
    let h = Harness::with(move |c| c.secrets_keyring = Some(ring)).await;
    let code = h.code("secretive", files);
    let f = with_greeting(function("secretive", runtime, handler));
    let secrets = sealed_secrets(
        &keys,
        &f,
        &[("DB_PASSWORD", SECRET), ("GREETING", "secret hello")],
    );
    let job = Job {
        invocation_id: InvocationId::new(),
        function: f.clone(),
        code_dir: code.clone(),
        payload: json!({ "needle": SECRET }),
        trace_id: None,
        secrets: Some(secrets),
        registry_auth: None,
    };
    let out: Execution = h.executor.execute(job).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let r: Value = out.result.unwrap();
    assert_eq!(r["now"], SECRET, "{r}");
    assert_eq!(r["at_import"], SECRET, "set before the code loads: {r}");
    assert_eq!(r["greeting"], "secret hello", "a secret wins: {r}");
    assert_eq!(r["in_initial_env"], false, "{r}");

    // The warm sandbox's bundle on disk: private, and without the value.
    let bundles = h.dir.path().join("work/bundles");
    let files = files_under(&bundles);
    let configs: Vec<_> = files
        .iter()
        .filter(|f| f.ends_with("config.json"))
        .collect();
    assert_eq!(configs.len(), 1, "{files:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(configs[0]), 0o600);
    assert_eq!(mode(configs[0].parent().unwrap()), 0o700);
    assert_eq!(mode(&bundles), 0o700);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            file.display()
        );
        assert!(!contains(&bytes, "secret hello"), "{}", file.display());
    }
    let config = std::fs::read_to_string(configs[0]).unwrap();
    assert!(
        !config.contains("GREETING="),
        "the variable a secret replaces is left out too"
    );
    assert!(config.contains("FUNCTION_NAME=secretive"), "{config}");
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_functions_get_their_secrets_from_the_init_frame() {
    check(Runtime::Python3, "main.handle", &[("main.py", PYTHON)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodejs_functions_get_their_secrets_from_the_init_frame() {
    check(Runtime::Nodejs, "index.handler", &[("index.js", NODE)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_handlers_inherit_the_secrets_their_bootstrap_got_from_the_init_frame() {
    check(Runtime::Exec, "bin/handler", &[("bin/handler", EXEC)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_secrets_still_gets_an_init_frame_and_runs() {
    let h = Harness::new().await;
    let code = h.code("plain", &[("main.py", PYTHON)]);
    let f = with_greeting(function("plain", Runtime::Python3, "main.handle"));
    let out = h.run(&f, &code, json!({ "needle": SECRET })).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let r = out.result.unwrap();
    assert_eq!(r["now"], Value::Null);
    assert_eq!(r["greeting"], "plain hello");
    h.executor.shutdown(Duration::from_secs(5)).await;
}
