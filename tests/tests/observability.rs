//! Traces and live logs, end to end.
//!
//! - A gateway and a node as separate processes over NATS export spans over OTLP/HTTP to a
//!   receiver started by the test: one invocation's spans from both share one trace id, which
//!   is the `trace_id` the function saw; a request with a `traceparent` continues that trace.
//! - `GET /v1/functions/{name}/logs?follow=true` streams what an invocation made after the
//!   stream opened printed (`fnmesh up`, and over NATS through another gateway's bus).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnmesh_tests::mesh::Mesh;
use fnmesh_tests::{free_port, function_body, TestApp, ADMIN_KEY};
use futures::StreamExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One received span.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    name: String,
}

/// A tiny OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf) and keeps the spans.
struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    async fn start() -> Self {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, kept).await;
                });
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            spans,
            task,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until spans of `trace_id` named `names` came from their services.
    async fn wait_for_trace(
        &self,
        trace_id: &str,
        names: &[(&str, &str)],
        mesh: &Mesh,
    ) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let of_trace: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let seen: BTreeSet<(&str, &str)> = of_trace
                .iter()
                .map(|s| (s.name.as_str(), s.service.as_str()))
                .collect();
            if names.iter().all(|n| seen.contains(n)) {
                return of_trace;
            }
            assert!(
                Instant::now() < deadline,
                "not all spans {names:?} of trace {trace_id}; got {:#?}\n{}",
                self.spans(),
                mesh.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive), keeping the spans of each.
async fn serve(socket: tokio::net::TcpStream, kept: Arc<Mutex<Vec<Span>>>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;
        if request_line.starts_with("POST /v1/traces") {
            if let Ok(export) = ExportTraceServiceRequest::decode(body.as_slice()) {
                kept.lock().unwrap().extend(spans_of(&export));
            }
        }
        write
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

fn spans_of(export: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &export.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(Span {
                    service: service.clone(),
                    trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                    name: span.name.clone(),
                });
            }
        }
    }
    out
}

/// The spans of one sync invocation, by service: gateway request → publish → node run →
/// sandbox → handler → reply, and the gateway's wait and record.
const EXPECTED: &[(&str, &str)] = &[
    // `http.request`, named by its route.
    ("POST /v1/functions/{name}/invoke", "fnmesh-gateway"),
    ("invocation.publish", "fnmesh-gateway"),
    ("invocation.wait", "fnmesh-gateway"),
    ("invocation.record", "fnmesh-gateway"),
    ("invocation.run", "fnmesh-node"),
    ("code.fetch", "fnmesh-node"),
    ("sandbox.launch", "fnmesh-node"),
    ("handler", "fnmesh-node"),
    ("invocation.reply", "fnmesh-node"),
];

const TRACED_HANDLER: &str = "def handle(event, context):\n    print('traced call')\n    return {'trace_id': context.trace_id}\n";

async fn invoke(mesh: &Mesh, name: &str, traceparent: Option<&str>) -> Value {
    let mut req = mesh
        .http
        .post(format!("{}/v1/functions/{name}/invoke", mesh.base_url))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({}));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", mesh.logs());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_invocation_is_one_trace_across_gateway_and_node() {
    let receiver = OtlpReceiver::start().await;
    let mesh = Mesh::start(
        &["node-a"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    mesh.deploy(function_body(
        "traced",
        "python3",
        "main.handle",
        &[("main.py", TRACED_HANDLER)],
        json!({}),
    ))
    .await;

    // A fresh trace, started by the gateway.
    let result = invoke(&mesh, "traced", None).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let trace_id = result["result"]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the function saw a trace id: {result}"))
        .to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    receiver.wait_for_trace(&trace_id, EXPECTED, &mesh).await;

    // The caller's trace is continued.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let result = invoke(&mesh, "traced", Some(&traceparent)).await;
    assert_eq!(result["result"]["trace_id"], caller_trace, "{result}");
    // Warm now: no sandbox launch.
    let warm: Vec<(&str, &str)> = EXPECTED
        .iter()
        .copied()
        .filter(|(name, _)| *name != "sandbox.launch")
        .collect();
    receiver.wait_for_trace(caller_trace, &warm, &mesh).await;

    // A malformed traceparent is ignored: a new trace.
    let result = invoke(&mesh, "traced", Some("00-zz-00f067aa0ba902b7-01")).await;
    let fresh = result["result"]["trace_id"].as_str().unwrap();
    assert_ne!(fresh, caller_trace);
    assert_eq!(fresh.len(), 32);
}

/// Reads `log` events from an SSE response until one's text contains `needle`.
async fn read_until(resp: reqwest::Response, needle: &str, within: Duration) -> Value {
    let mut body = resp.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no log line {needle:?} in time; got {buffer:?}"))
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .collect();
            if event.contains("event:log") && data.contains(needle) {
                return serde_json::from_str(&data).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn following_a_function_streams_prints_of_new_invocations() {
    let app = TestApp::start().await;
    app.deploy(
        "printer",
        "python3",
        "main.handle",
        &[(
            "main.py",
            "def handle(event, context):\n    print('hello from', event['n'])\n    return event['n']\n",
        )],
    )
    .await;
    // An invocation before the stream opened is not streamed.
    app.invoke_ok("printer", json!({"n": "before"})).await;

    let stream = app
        .http
        .get(format!(
            "{}/v1/functions/printer/logs?follow=true",
            app.base_url
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let reading = tokio::spawn(read_until(stream, "hello from", Duration::from_secs(60)));
    // The stream is open once the headers arrived; invoke now.
    let result = app.invoke_ok("printer", json!({"n": "after"})).await;
    let entry = reading.await.unwrap();
    assert_eq!(entry["text"], "hello from after\n", "{entry}");
    assert_eq!(entry["invocation_id"], result["id"]);
    assert_eq!(entry["function"], "printer");

    // The CLI follows the same stream: `fnmesh logs printer --follow` prints each line of a
    // new invocation as `[<id>] <line>`.
    let mut cli = tokio::process::Command::new(fnmesh_tests::fnmesh_bin())
        .args(["logs", "printer", "--follow"])
        .env("FNMESH_URL", &app.base_url)
        .env("FNMESH_API_KEY", ADMIN_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(cli.stderr.take().unwrap()).lines();
    let opened = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .expect("the CLI opened the stream in time")
        .unwrap()
        .unwrap_or_default();
    assert!(opened.starts_with("following printer"), "{opened}");
    let result = app.invoke_ok("printer", json!({"n": "the cli"})).await;
    let mut stdout = BufReader::new(cli.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the CLI printed the log line in time")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        line,
        format!("[{}] hello from the cli", result["id"].as_str().unwrap())
    );
    cli.kill().await.unwrap();

    // Another function, or an unknown one: nothing / 404.
    let r = app
        .call("GET", "/v1/functions/nope/logs?follow=true", None)
        .await;
    assert_eq!(r.status, 404);
    // Without follow: the latest invocations' output.
    let r = app.call("GET", "/v1/functions/printer/logs", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let texts: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(texts.contains(&"hello from before\n"), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_followers_see_invocations_of_every_node_over_nats() {
    let mesh = Mesh::start(&["node-a"], &[]).await;
    mesh.deploy(function_body(
        "traced",
        "python3",
        "main.handle",
        &[("main.py", TRACED_HANDLER)],
        json!({}),
    ))
    .await;
    let stream = mesh
        .http
        .get(format!(
            "{}/v1/functions/traced/logs?follow=true",
            mesh.base_url
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reading = tokio::spawn(read_until(stream, "traced call", Duration::from_secs(60)));
    let result = invoke(&mesh, "traced", None).await;
    let entry = reading.await.unwrap();
    assert_eq!(entry["invocation_id"], result["id"]);
    assert_eq!(entry["node_id"], "node-a");
}
