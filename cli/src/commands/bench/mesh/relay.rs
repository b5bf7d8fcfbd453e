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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use warp::Filter;

use crate::args::RelayArgs;

/// The queue group relay nodes answer in.
const QUEUE_GROUP: &str = "fnmesh-bench-relay";

/// The relay gateway: until SIGTERM, each invoke is one NATS request on `subject`.
pub async fn run_gateway(args: RelayArgs) -> Result<()> {
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let subject = args.subject.clone();
    let invoke = warp::post()
        .and(warp::path!("v1" / "functions" / String / "invoke"))
        .and(warp::body::bytes())
        .and_then(move |_name: String, body: bytes::Bytes| {
            let (nats, subject) = (nats.clone(), subject.clone());
            async move {
                let reply = match nats.request(subject, body).await {
                    Ok(answer) => warp::http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(answer.payload.to_vec()),
                    Err(e) => warp::http::Response::builder()
                        .status(503)
                        .header("content-type", "application/json")
                        .body(
                            json!({"error": {"code": "unavailable", "message": e.to_string()}})
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
    Ok(())
}

/// The relay node: until SIGTERM, runs each request's payload in a warm sandbox (at most
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
    let mut calls = nats
        .queue_subscribe(args.subject.clone(), QUEUE_GROUP.to_owned())
        .await?;
    nats.flush().await?;
    let slots = Arc::new(Semaphore::new(args.slots.max(1)));
    let mut term = signal(SignalKind::terminate())?;
    loop {
        let call = tokio::select! {
            call = calls.next() => call,
            _ = term.recv() => None,
        };
        let Some(call) = call else { break };
        let Some(reply) = call.reply else { continue };
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
            let _ = nats.publish(reply, body.to_string().into()).await;
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
) -> Result<(super::Latency, super::Throughput)> {
    let mut relay = super::procs::MeshProcs::start_relay(work, nats_url, args.concurrency)?;
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
