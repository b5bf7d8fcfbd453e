//! The composed floor of `fnmesh bench mesh`: the least a design with fnmesh's processes can
//! do. A *relay gateway* (warp; each `POST /v1/functions/{name}/invoke` becomes one core-NATS
//! request, whose answer is the HTTP body) and a *relay node* (a queue subscription that runs
//! each request's payload in a warm pooled sandbox through the node's executor and answers
//! with the result) run as separate processes over the benchmark's `nats-server`, like the
//! gateway and node of the mesh, with the same load generator in front of them. They do
//! nothing the path does not need to carry a call: no authentication, store, JetStream,
//! signatures, receipts, events, metrics or logs. The floors beside it are measured each in
//! one process; this one pays the same process hops as the mesh (load generator → gateway →
//! nats-server → node → sandbox and back), so it shows what the hops themselves cost on this
//! machine, and how much of fnmesh's time and CPU is its own.
//!
//! With `--jetstream` the relays carry each call as a design that holds sync work in
//! JetStream must: the gateway publishes it to a work-queue stream on file storage (with a
//! `Nats-Msg-Id`, and waits for the PubAck), the node pulls from one durable consumer whose
//! `max_ack_pending` is its slots (the server's cap, as a function's `max_concurrency` is
//! fnmesh's), answers on the inbox the message names and acks with the server's
//! confirmation. That is the *JetStream floor*: the same hops plus the work queue, still
//! without signatures, store, receipts or events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, Semaphore};
use warp::Filter;

use super::floors::{work_stream, REPLY_HEADER};
use crate::args::RelayArgs;

/// The queue group relay nodes answer in.
const QUEUE_GROUP: &str = "fnmesh-bench-relay";
/// The JetStream relay's durable consumer.
const CONSUMER: &str = "relay";
/// How long the relay gateway waits for an answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// The JetStream relay's work stream, named after the calls' subject.
fn stream_name(subject: &str) -> String {
    format!("BENCH_RELAY_{}", subject.replace('.', "_"))
}

/// How the relay gateway carries a call to a node.
#[derive(Clone)]
enum Carrier {
    /// One core-NATS request.
    Core {
        nats: async_nats::Client,
        subject: String,
    },
    /// A JetStream work message; answers come on one inbox subscription.
    JetStream(Arc<QueuedCalls>),
}

/// Calls published to the JetStream relay's stream, waiting for their answers.
struct QueuedCalls {
    js: jetstream::Context,
    subject: String,
    /// `<inbox>.<n>` is call n's answer subject.
    inbox: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
}

impl Carrier {
    async fn call(&self, body: Bytes) -> Result<Bytes> {
        match self {
            Self::Core { nats, subject } => Ok(nats.request(subject.clone(), body).await?.payload),
            Self::JetStream(calls) => {
                let n = calls.next.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                calls.lock().insert(n, tx);
                let answered = async {
                    // The answer subject is unique per call: it is the message id too.
                    let answer_to = format!("{}.{n}", calls.inbox);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(REPLY_HEADER, answer_to.as_str());
                    headers.insert("Nats-Msg-Id", answer_to.as_str());
                    calls
                        .js
                        .publish_with_headers(calls.subject.clone(), headers, body)
                        .await?
                        .await?;
                    Ok(tokio::time::timeout(ANSWER_WAIT, rx)
                        .await
                        .context("no answer in time")??)
                }
                .await;
                calls.lock().remove(&n);
                answered
            }
        }
    }
}

impl QueuedCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Bytes>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the JetStream relay's work stream and its consumer, capped at `slots` unacked
/// deliveries, and routes answers from the gateway's inbox to their callers.
async fn queued_calls(nats: &async_nats::Client, args: &RelayArgs) -> Result<Arc<QueuedCalls>> {
    let js = jetstream::new(nats.clone());
    let stream = work_stream(&js, &stream_name(&args.subject), &args.subject).await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: i64::try_from(args.slots.max(1)).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .context("creating the relay's consumer")?;
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(format!("{inbox}.*")).await?;
    nats.flush().await?;
    let calls = Arc::new(QueuedCalls {
        js,
        subject: args.subject.clone(),
        inbox,
        next: AtomicU64::new(0),
        waiting: Mutex::new(HashMap::new()),
    });
    let routed = Arc::downgrade(&calls);
    tokio::spawn(async move {
        while let Some(answer) = answers.next().await {
            let Some(calls) = routed.upgrade() else { break };
            let n = answer
                .subject
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok());
            if let Some(tx) = n.and_then(|n| calls.lock().remove(&n)) {
                let _ = tx.send(answer.payload);
            }
        }
    });
    Ok(calls)
}

/// The relay gateway: until SIGTERM, each invoke is one NATS request on `subject` (or, with
/// `--jetstream`, one work message on it).
pub async fn run_gateway(args: RelayArgs) -> Result<()> {
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let carrier = if args.jetstream {
        Carrier::JetStream(queued_calls(&nats, &args).await?)
    } else {
        Carrier::Core {
            nats: nats.clone(),
            subject: args.subject.clone(),
        }
    };
    let invoke = warp::post()
        .and(warp::path!("v1" / "functions" / String / "invoke"))
        .and(warp::body::bytes())
        .and_then(move |_name: String, body: Bytes| {
            let carrier = carrier.clone();
            async move {
                let reply = match carrier.call(body).await {
                    Ok(answer) => warp::http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(answer.to_vec()),
                    Err(e) => warp::http::Response::builder()
                        .status(503)
                        .header("content-type", "application/json")
                        .body(
                            json!({"error": {"code": "unavailable", "message": format!("{e:#}")}})
                                .to_string()
                                .into_bytes(),
                        ),
                };
                Ok::<_, Infallible>(reply.unwrap_or_default())
            }
        });
    let ready = warp::get().and(warp::path("readyz")).map(|| "ok");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mut term = signal(SignalKind::terminate())?;
    warp::serve(ready.or(invoke))
        .incoming(listener)
        .graceful(async move {
            term.recv().await;
        })
        .run()
        .await;
    if args.jetstream {
        let _ = jetstream::new(nats)
            .delete_stream(stream_name(&args.subject))
            .await;
    }
    Ok(())
}

/// One call a relay node took: its payload, where its answer goes, and (JetStream) the
/// delivery to ack once answered.
struct Call {
    payload: Bytes,
    reply: String,
    delivery: Option<jetstream::Message>,
}

/// The calls of the relay node: a queue subscription, or (`--jetstream`) the relay
/// consumer's deliveries, pulled continuously.
async fn calls(
    nats: &async_nats::Client,
    args: &RelayArgs,
) -> Result<futures::stream::BoxStream<'static, Call>> {
    if !args.jetstream {
        let calls = nats
            .queue_subscribe(args.subject.clone(), QUEUE_GROUP.to_owned())
            .await?;
        nats.flush().await?;
        return Ok(calls
            .filter_map(|call| async move {
                Some(Call {
                    reply: call.reply?.to_string(),
                    payload: call.payload,
                    delivery: None,
                })
            })
            .boxed());
    }
    // The gateway makes the stream and the consumer; wait for them.
    let js = jetstream::new(nats.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let consumer: jetstream::consumer::PullConsumer = loop {
        let found = match js.get_stream(stream_name(&args.subject)).await {
            Ok(stream) => stream.get_consumer(CONSUMER).await.ok(),
            Err(_) => None,
        };
        match found {
            Some(consumer) => break consumer,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => anyhow::bail!("the relay gateway made no work stream within 60 s"),
        }
    };
    let deliveries = consumer.messages().await?;
    Ok(deliveries
        .filter_map(|delivery| async move {
            let delivery = delivery.ok()?;
            let reply = delivery.headers.as_ref()?.get(REPLY_HEADER)?.to_string();
            Some(Call {
                payload: delivery.payload.clone(),
                reply,
                delivery: Some(delivery),
            })
        })
        .boxed())
}

/// The relay node: until SIGTERM, runs each call's payload in a warm sandbox (at most
/// `slots` at once) and answers `{"status","result","metrics":{"cold_start"}}`.
pub async fn run_node(args: RelayArgs) -> Result<()> {
    let work = args
        .work_dir
        .clone()
        .context("the relay node needs --work-dir")?;
    let code_dir = super::floors::echo_code(&work)?;
    let executor = crate::commands::bench::sandbox::bench_executor(&work, args.slots + 8).await?;
    let mut function = super::floors::sandbox_function()?;
    function.config.max_concurrency = u32::try_from(args.slots).unwrap_or(u32::MAX);
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let mut calls = calls(&nats, &args).await?;
    let slots = Arc::new(Semaphore::new(args.slots.max(1)));
    let mut term = signal(SignalKind::terminate())?;
    loop {
        let call = tokio::select! {
            call = calls.next() => call,
            _ = term.recv() => None,
        };
        let Some(call) = call else { break };
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (executor, function, code_dir, nats) = (
            Arc::clone(&executor),
            function.clone(),
            code_dir.clone(),
            nats.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let payload: Value = serde_json::from_slice(&call.payload).unwrap_or(Value::Null);
            let out = executor
                .execute(super::floors::echo_job(function, code_dir, payload))
                .await;
            let body = json!({
                "status": out.status,
                "result": out.result,
                "error": out.error,
                "metrics": {"cold_start": out.cold_start},
            });
            let _ = nats.publish(call.reply, body.to_string().into()).await;
            if let Some(delivery) = call.delivery {
                let _ = delivery.double_ack().await;
            }
        });
    }
    drop(calls);
    executor.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Starts the relays over `nats_url` and measures them as the mesh is measured: the first call
/// (which waits for the node to subscribe), `args.requests` sequential calls after a warm-up,
/// the warm-up at full concurrency, then the throughput run with each process's CPU.
pub(super) async fn measure(
    work: &std::path::Path,
    nats_url: &str,
    http: &reqwest::Client,
    nats_pid: Option<u32>,
    args: &crate::args::MeshBenchArgs,
    jetstream: bool,
) -> Result<(super::Latency, super::Throughput)> {
    let mut relay =
        super::procs::MeshProcs::start_relay(work, nats_url, args.concurrency, jetstream)?;
    let measured = measure_started(&mut relay, http, nats_pid, args).await;
    if measured.is_err() {
        eprintln!("{}", relay.log_tails());
    }
    measured
}

async fn measure_started(
    relay: &mut super::procs::MeshProcs,
    http: &reqwest::Client,
    nats_pid: Option<u32>,
    args: &crate::args::MeshBenchArgs,
) -> Result<(super::Latency, super::Throughput)> {
    relay.wait_ready(http, Duration::from_secs(60)).await?;
    let api = super::Api {
        http: http.clone(),
        base: relay.base_url.clone(),
        key: relay.admin_key.clone(),
    };
    // The node answers once its sandbox supervisor runs and its subscription is in place.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = api.invoke().await {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the relay did not answer within 60 s: {e:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c1 = super::sequential(args.requests, || api.invoke()).await?;
    super::warm_up(
        &api,
        args.concurrency,
        Duration::from_secs(args.warmup_secs),
    )
    .await;
    let meter = super::cpu::Meter::start(super::cpu_parts(relay, nats_pid));
    let mut throughput = super::concurrent(
        &api,
        args.concurrency,
        Duration::from_secs(args.duration_secs),
    )
    .await;
    throughput.cpu = meter.finish(throughput.succeeded);
    anyhow::ensure!(
        throughput.succeeded > 0,
        "no relay call succeeded at concurrency {}: {}",
        args.concurrency,
        throughput
            .first_error
            .as_deref()
            .unwrap_or("no error recorded")
    );
    Ok((c1, throughput))
}
