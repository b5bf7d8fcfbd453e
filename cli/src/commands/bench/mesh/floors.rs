//! The floors `fnmesh bench mesh` compares the mesh with, each measured in this process:
//! raw HTTP, core NATS request/reply, a JetStream publish and a warm sandbox round trip; and
//! the ceilings: raw HTTP and NATS request/reply throughput at the run's concurrency.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fnmesh_core::{Function, FunctionName, InvocationId, InvocationStatus};
use fnmesh_nodes::executor::Job;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Latency, FUNCTION, HANDLER, PAYLOAD, WARMUP_CALLS};

/// Runs `call` [`WARMUP_CALLS`] times, then `n` measured times, one after the other.
pub(super) async fn sequential<F, Fut>(n: usize, mut call: F) -> Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..WARMUP_CALLS {
        call().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(Latency::of(samples))
}

/// How long each ceiling (raw HTTP, raw NATS throughput) is measured.
pub(super) const CEILING_RUN: Duration = Duration::from_secs(3);

/// `concurrency` callers calling `call` back to back for `duration`: calls per second. An
/// error ends the measurement with it.
pub(super) async fn rate<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let call = call.clone();
        tasks.spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                call().await?;
                calls += 1;
            }
            anyhow::Ok(calls)
        });
    }
    let mut calls = 0;
    while let Some(joined) = tasks.join_next().await {
        calls += joined??;
    }
    Ok(calls as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// One echo call of the raw HTTP floor.
async fn echo(http: &reqwest::Client, url: &str) -> Result<()> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(PAYLOAD)
        .send()
        .await?;
    ensure!(
        resp.status().is_success(),
        "echo answered {}",
        resp.status()
    );
    let body = resp.bytes().await?;
    ensure!(
        body.as_ref() == PAYLOAD.as_bytes(),
        "echo answered another body"
    );
    Ok(())
}

/// (1) A warp server on 127.0.0.1:0 echoing the body: the round trip, and calls per second
/// at `concurrency` (the HTTP ceiling). The client is the echo's own, so its connections are
/// closed before the server stops (a graceful stop cuts connections still open, and warp logs
/// each one as an error).
pub(super) async fn raw_http(n: usize, concurrency: usize) -> Result<(Latency, f64)> {
    use warp::Filter;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let route = warp::post()
        .and(warp::path("echo"))
        .and(warp::body::bytes())
        .map(|body: bytes::Bytes| {
            warp::reply::with_header(body.to_vec(), "content-type", "application/json")
        });
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the warp echo server")?;
    let addr = listener.local_addr()?;
    let server = warp::serve(route)
        .incoming(listener)
        .graceful(async move { stopped.cancelled().await })
        .run();
    let server = tokio::spawn(server);
    let url = format!("http://{addr}/echo");
    let latency = sequential(n, || echo(&http, &url)).await;
    let per_second = match latency {
        Ok(_) => {
            let (http, url) = (http.clone(), url.clone());
            rate(concurrency, CEILING_RUN, move || {
                let (http, url) = (http.clone(), url.clone());
                async move { echo(&http, &url).await }
            })
            .await
        }
        Err(_) => Ok(0.0),
    };
    // Every clone of the client is gone once `rate` returns: dropping it closes the pooled
    // connections, and the server sees them end before it is told to stop.
    drop(http);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let _ = server.await;
    Ok((latency?, per_second?))
}

/// One request of the raw NATS floor.
async fn nats_request(nats: &async_nats::Client, subject: &str) -> Result<()> {
    let answer = nats
        .request(subject.to_owned(), PAYLOAD.as_bytes().to_vec().into())
        .await?;
    ensure!(
        answer.payload.as_ref() == PAYLOAD.as_bytes(),
        "the responder answered another body"
    );
    Ok(())
}

/// (2) A responder subscription and a requester on one connection: the round trip, and
/// requests per second at `concurrency` (the NATS ceiling).
pub(super) async fn raw_nats(
    nats: &async_nats::Client,
    n: usize,
    concurrency: usize,
) -> Result<(Latency, f64)> {
    let subject = format!("bench.rr.{:016x}", rand::random::<u64>());
    let mut sub = nats.subscribe(subject.clone()).await?;
    let responder_client = nats.clone();
    let responder = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder_client.publish(reply, msg.payload).await;
            }
        }
    });
    nats.flush().await?;
    let latency = sequential(n, || nats_request(nats, &subject)).await;
    let per_second = match latency {
        Ok(_) => {
            let (nats, subject) = (nats.clone(), subject.clone());
            rate(concurrency, CEILING_RUN, move || {
                let (nats, subject) = (nats.clone(), subject.clone());
                async move { nats_request(&nats, &subject).await }
            })
            .await
        }
        Err(_) => Ok(0.0),
    };
    responder.abort();
    Ok((latency?, per_second?))
}

/// (3) Publish + PubAck on a file-storage stream, deleted afterwards.
pub(super) async fn raw_jetstream(nats: &async_nats::Client, n: usize) -> Result<Latency> {
    use async_nats::jetstream;
    let js = jetstream::new(nats.clone());
    let tag = format!("{:016x}", rand::random::<u64>());
    let name = format!("BENCH_{tag}");
    let subject = format!("bench.js.{tag}");
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: jetstream::stream::StorageType::File,
        max_messages: 100_000,
        ..Default::default()
    })
    .await
    .context("creating the benchmark stream (is JetStream enabled: nats-server -js?)")?;
    let result = sequential(n, || async {
        js.publish(subject.clone(), PAYLOAD.as_bytes().to_vec().into())
            .await?
            .await?;
        Ok(())
    })
    .await;
    if let Err(e) = js.delete_stream(&name).await {
        eprintln!("warning: deleting stream {name}: {e}");
    }
    result
}

/// The header of a benchmark work message naming the inbox its answer goes to.
pub(super) const REPLY_HEADER: &str = "Bench-Reply";

/// A work-queue stream `name` on file storage taking `subject`, as fnmesh's work stream is.
pub(super) async fn work_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<async_nats::jetstream::stream::Stream> {
    use async_nats::jetstream::stream;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages: 100_000,
        ..Default::default()
    })
    .await
    .context("creating the benchmark work stream (is JetStream enabled: nats-server -js?)")
}

/// (3b) The least a durable work queue costs: a requester publishes a work message on a
/// work-queue file stream and waits for its PubAck, a worker on its own connection receives it
/// from a durable pull consumer that always has a pull request waiting (no hint, no fetch
/// round trip), acks it and answers on the requester's inbox, named in a header. No signing,
/// no store, no sandbox: what any design that holds sync work in JetStream pays at least.
pub(super) async fn raw_jetstream_work(nats_url: &str, n: usize) -> Result<Latency> {
    use async_nats::jetstream;
    let requester = async_nats::connect(nats_url).await?;
    let worker = async_nats::connect(nats_url).await?;
    let js = jetstream::new(requester.clone());
    let tag = format!("{:016x}", rand::random::<u64>());
    let name = format!("BENCH_WORK_{tag}");
    let subject = format!("bench.work.{tag}");
    let stream = work_stream(&js, &name, &subject).await?;
    let measured = async {
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("worker".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let replier = worker.clone();
        let serving = tokio::spawn(async move {
            while let Some(Ok(msg)) = messages.next().await {
                let reply = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(REPLY_HEADER))
                    .map(|v| v.as_str().to_owned());
                let _ = msg.ack().await;
                if let Some(reply) = reply {
                    let _ = replier.publish(reply, msg.payload.clone()).await;
                }
            }
        });
        let inbox = requester.new_inbox();
        let answers = requester.subscribe(inbox.clone()).await?;
        let answers = Arc::new(tokio::sync::Mutex::new(answers));
        requester.flush().await?;
        let result = sequential(n, || {
            let (js, subject, inbox, answers) =
                (js.clone(), subject.clone(), inbox.clone(), answers.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(REPLY_HEADER, inbox.as_str());
                js.publish_with_headers(subject, headers, PAYLOAD.as_bytes().to_vec().into())
                    .await?
                    .await?;
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), answers.lock().await.next())
                        .await
                        .context("no answer from the benchmark worker in 5 s")?
                        .context("the answer subscription ended")?;
                ensure!(
                    answer.payload.as_ref() == PAYLOAD.as_bytes(),
                    "the worker answered another body"
                );
                Ok(())
            }
        })
        .await;
        serving.abort();
        result
    }
    .await;
    if let Err(e) = js.delete_stream(&name).await {
        eprintln!("warning: deleting stream {name}: {e}");
    }
    measured
}

/// (4) Sequential warm invocations through a pooled sandbox, driven in this process.
pub(super) async fn sandbox_warm(work: &Path, n: usize) -> Result<Latency> {
    let code_dir = echo_code(work)?;
    let executor = crate::commands::bench::sandbox::bench_executor(work, 4).await?;
    let function = sandbox_function()?;
    let payload: Value = serde_json::from_str(PAYLOAD)?;
    let result = sequential(n, || async {
        let out = executor
            .execute(echo_job(
                function.clone(),
                code_dir.clone(),
                payload.clone(),
            ))
            .await;
        ensure!(
            out.status == InvocationStatus::Succeeded,
            "sandbox invocation failed: {:?} {:?}",
            out.status,
            out.error
        );
        Ok(())
    })
    .await;
    executor.shutdown(Duration::from_secs(5)).await;
    result
}

/// Writes the echo handler as `work/code/main.py`; the code directory.
pub(super) fn echo_code(work: &Path) -> Result<std::path::PathBuf> {
    let code_dir = work.join("code");
    std::fs::create_dir_all(&code_dir)?;
    std::fs::write(code_dir.join("main.py"), HANDLER)?;
    Ok(code_dir)
}

/// One invocation of the echo function (`sandbox_function`, code in `code_dir`).
pub(super) fn echo_job(function: Function, code_dir: std::path::PathBuf, payload: Value) -> Job {
    Job {
        invocation_id: InvocationId::new(),
        function,
        code_dir,
        payload,
        trace_id: None,
        secrets: None,
        registry_auth: None,
    }
}

pub(super) fn sandbox_function() -> Result<Function> {
    let name = FunctionName::parse(FUNCTION).context("function name")?;
    Ok(super::super::python_function(name, HANDLER))
}

/// Work signing's figures: fnmesh's, and Ed25519 alone beside them.
pub(super) struct Signing {
    /// A gateway signing a work message.
    pub sign: Latency,
    /// A node verifying it.
    pub verify: Latency,
    /// `ed25519-dalek` signing a 32-byte digest, nothing else.
    pub ed25519_sign: Latency,
    /// `ed25519-dalek` verifying that signature (`verify_strict`, as a node does).
    pub ed25519_verify: Latency,
}

/// What signing adds to each invocation, measured in this process: a gateway signing a work
/// message of `body_bytes` (SHA-256 of subject, reply, id, limits and body, then Ed25519) and a
/// node verifying it, `n` times each after a warm-up; interleaved with the same, the floor:
/// Ed25519 alone signing and verifying a 32-byte digest (the primitive fnmesh's signature is).
pub(super) fn signing(n: usize, body_bytes: usize) -> Result<Signing> {
    use ed25519_dalek::Signer as _;
    use fnmesh_core::signing::{Envelope, Limits, SigningKey, TrustedKeys};
    let key = SigningKey::generate();
    let trusted = TrustedKeys::parse(key.public_key())?;
    let bare = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let bare_public = bare.verifying_key();
    let digest = [9u8; 32];
    let body = vec![b'x'; body_bytes];
    let msg_id = InvocationId::new().to_string();
    let envelope = Envelope {
        subject: "fnmesh.v1.bench.inv.default.bench-echo",
        reply: Some("_FNMESH.gw.bench0000000000000000.1"),
        msg_id: &msg_id,
        body: &body,
    };
    let limits = Limits {
        expires_at: chrono::Utc::now().timestamp() + 3600,
        max_attempts: 3,
    };
    for _ in 0..WARMUP_CALLS {
        let header = key.sign(&envelope, limits);
        trusted
            .verify(Some(&header), &envelope, 1)
            .map_err(|e| anyhow::anyhow!("verifying: {e}"))?;
        bare_public
            .verify_strict(&digest, &bare.sign(&digest))
            .map_err(|e| anyhow::anyhow!("verifying with Ed25519 alone: {e}"))?;
    }
    let mut samples: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
    for _ in 0..n {
        let header = timed(&mut samples[0], || key.sign(&envelope, limits));
        let ok = timed(&mut samples[1], || {
            trusted.verify(Some(&header), &envelope, 1).is_ok()
        });
        ensure!(ok, "a signature made here did not verify");
        let signature = timed(&mut samples[2], || bare.sign(&digest));
        let ok = timed(&mut samples[3], || {
            bare_public.verify_strict(&digest, &signature).is_ok()
        });
        ensure!(ok, "an Ed25519 signature made here did not verify");
    }
    let [sign, verify, ed25519_sign, ed25519_verify] = samples.map(Latency::of);
    Ok(Signing {
        sign,
        verify,
        ed25519_sign,
        ed25519_verify,
    })
}

/// What authenticating a node's report costs, measured in this process: a node making the
/// header of an event of `body_bytes` (its proof of holding, then an HMAC under its report key,
/// agreed once with the gateway key) and a gateway checking it (its registered key and report
/// key already known: parse, MAC, recompute the proof), `n` times each after a warm-up. A sync
/// invocation sends three reports (started, finished, the reply).
pub(super) fn report_signing(n: usize, body_bytes: usize) -> Result<(Latency, Latency)> {
    use fnmesh_core::claims::{
        ClaimKey, NodeMessage, NodeSignature, ReportKey, Signer, VerifiedKey,
    };
    use fnmesh_core::signing::SigningKey;
    let gateway = SigningKey::generate();
    let claims = ClaimKey::of(&gateway);
    let node = SigningKey::generate();
    let registered = VerifiedKey::parse(node.public_key())?;
    let gateway_side = ReportKey::for_gateway(&gateway, &registered)?;
    let node_side = ReportKey::for_node(&node, gateway.public_key())?;
    let signer = Signer {
        key: &registered,
        report: Some(&gateway_side),
    };
    let id = InvocationId::new().to_string();
    let claim = claims.claim(&id, 3);
    let body = vec![b'x'; body_bytes];
    let subject = format!("fnmesh.v1.bench.evt.{id}");
    let message = NodeMessage {
        subject: &subject,
        body: &body,
    };
    let check = |header: &str| {
        NodeSignature::parse(Some(header))
            .and_then(|s| s.verify(signer, &message, &claims, &id, "bench-node", 1))
            .map_err(|e| anyhow::anyhow!("verifying a report: {e}"))
    };
    let make = || message.authenticate(node.public_key(), &node_side, &claim, "bench-node", 1, 3);
    for _ in 0..WARMUP_CALLS {
        check(&make())?;
    }
    let mut signs = Vec::with_capacity(n);
    let mut verifies = Vec::with_capacity(n);
    for _ in 0..n {
        let header = timed(&mut signs, make);
        timed(&mut verifies, || check(&header))?;
    }
    Ok((Latency::of(signs), Latency::of(verifies)))
}

/// Runs `f` once, adding how long it took to `samples`; its result is kept from being
/// optimised away.
fn timed<T>(samples: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = std::hint::black_box(f());
    samples.push(started.elapsed());
    out
}
