//! `fnmesh bench scale`: what many deployed functions cost. On a fresh mesh (as `bench mesh`
//! starts it) it measures, with one function deployed: the sync p50/p99 of that function at
//! c=1 and (after `--settle-secs`) the idle CPU of nats-server, gateway and node; then it
//! deploys `--functions` in all, invokes each once asynchronously (cold: distinct functions)
//! and measures how many of those cold invocations finish per second, then (after
//! `--settle-secs`) the idle CPU again with the number of work consumers the server still
//! holds, then the first function's sync p50/p99 again, in rounds alternating with a second
//! mesh holding one function (started then), so the ratio compares like moments. Printed side
//! by side, with the targets, and with the ceiling of the cold invocations: the same
//! cold starts made straight through the executor, alone. The gateway gets
//! `FNMESH_FUNCTION_CONSUMER_IDLE_SECS` from the bench's environment (a settle longer than it
//! measures idle once the burst's consumers have expired).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use super::cpu::cpu_seconds;
use super::procs::{start_nats, MeshProcs};
use super::{scratch_dir, Latency, HANDLER, PAYLOAD};
use crate::args::ScaleBenchArgs;

/// Requests in flight while deploying and invoking the many functions.
const SETUP_CONCURRENCY: usize = 16;
/// The longest wait for every cold invocation to finish: 600 s, or 200 ms per function.
fn cold_max(functions: usize) -> Duration {
    Duration::from_secs(600).max(Duration::from_millis(200).saturating_mul(functions as u32))
}
/// Targets of the hot-path issue.
const TARGET_COLD_PER_SECOND: f64 = 100.0;
const TARGET_P50_RATIO: f64 = 1.2;
const TARGET_IDLE_CPU: f64 = 0.02;
/// Cold starts of the ceiling measurement at most (enough for a steady rate).
const COLD_CEILING_STARTS: usize = 300;
/// Rounds of the many functions' latency series, alternating with the 1-function mesh's.
const SIDE_BY_SIDE_ROUNDS: usize = 6;

/// The gateway's API for named functions.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn deploy(&self, name: &str) -> Result<()> {
        let body = json!({
            "name": name,
            "runtime": "python3",
            "handler": "main.handle",
            "code": {
                "source": base64::engine::general_purpose::STANDARD.encode(HANDLER),
                "source_type": "inline",
            },
            "config": { "max_concurrency": 4, "timeout_ms": 30_000 },
        });
        let resp = self
            .http
            .post(format!("{}/v1/functions", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "deploying {name} answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        Ok(())
    }

    async fn invoke(&self, name: &str, asynchronous: bool) -> Result<Value> {
        let query = if asynchronous { "?async=true" } else { "" };
        let resp = self
            .http
            .post(format!("{}/v1/functions/{name}/invoke{query}", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(PAYLOAD)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await?;
        ensure!(
            status == if asynchronous { 202 } else { 200 },
            "invoking {name} answered {status}: {body}"
        );
        Ok(body)
    }

    async fn record(&self, id: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/invocations/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// Fraction of one core each of `pids` used over `secs`.
async fn idle_cpu(pids: &[(&'static str, u32)], secs: u64) -> Result<Vec<(&'static str, f64)>> {
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|((name, pid), before)| Ok((*name, (cpu_seconds(*pid)? - before) / elapsed)))
        .collect()
}

/// Runs the benchmark and prints its table.
pub async fn run(args: ScaleBenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the scale benchmark starts a node that creates sandboxes and must run as root");
    }
    ensure!(args.functions >= 1, "--functions must be at least 1");
    ensure!(args.requests >= 1, "--requests must be at least 1");
    let scratch = scratch_dir(args.work_dir.as_deref(), "fnmesh-bench-scale-")?;
    let work = scratch.path().to_path_buf();
    let nats_server = start_nats(&work.join("nats"))?;
    let nats_pid = nats_server
        .proc
        .pid()
        .context("nats-server is not running")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!("starting fnmesh gateway and node…");
    let mut mesh = MeshProcs::start(&work, &nats_server.url, args.slots)?;
    let nats = async_nats::connect(&nats_server.url)
        .await
        .context("connecting to the bench's nats-server")?;
    let result = scale(&mut mesh, &work, &http, &nats, nats_pid, &args).await;
    if result.is_err() {
        eprintln!("{}", mesh.log_tails());
    }
    let (mut table, cold_rate) = result?;
    drop(nats);
    drop(mesh);
    drop(nats_server);
    // The ceiling: the same cold starts straight through the executor, nothing else running.
    let cold_starts = super::super::sandbox::parallel_cold_starts(
        &work.join("ceiling"),
        args.functions.min(COLD_CEILING_STARTS),
        args.slots,
    )
    .await?;
    table += &format!(
        "sandbox cold starts alone (executor in-process, {} at a time, {} functions): \
         {cold_starts:.1}/s; cold invocations through the mesh = {:.2}x of it\n",
        args.slots,
        args.functions.min(COLD_CEILING_STARTS),
        cold_rate / cold_starts
    );
    print!("{table}");
    Ok(())
}

/// The table, and the cold invocations per second.
async fn scale(
    mesh: &mut MeshProcs,
    work: &std::path::Path,
    http: &reqwest::Client,
    nats: &async_nats::Client,
    nats_pid: u32,
    args: &ScaleBenchArgs,
) -> Result<(String, f64)> {
    mesh.wait_ready(http, Duration::from_secs(60)).await?;
    let (Some(gateway_pid), Some(node_pid)) = mesh.pids() else {
        bail!("the gateway or the node is not running");
    };
    let pids = [
        ("nats-server", nats_pid),
        ("gateway", gateway_pid),
        ("node", node_pid),
    ];
    let client = Client {
        http: http.clone(),
        base: mesh.base_url.clone(),
        key: mesh.admin_key.clone(),
    };
    let names: Vec<String> = (0..args.functions)
        .map(|i| format!("scale-{i:05}"))
        .collect();
    let first = names.first().context("no function")?.clone();

    eprintln!(
        "one function: sync latency at c=1, then settling {} s and idle CPU for {} s…",
        args.settle_secs, args.idle_secs
    );
    client.deploy(&first).await?;
    let one_latency = sync_series(&client, &first, args.requests).await?;
    let work_stream = mesh.work_stream()?;
    let consumers = || async {
        let js = async_nats::jetstream::new(nats.clone());
        anyhow::Ok(
            js.get_stream(&work_stream)
                .await?
                .info()
                .await?
                .state
                .consumer_count,
        )
    };
    // Settled as the many functions' sample is, so the two compare like for like (right after
    // the sync series the sample caught its tail: 5.2% once, 1.0–1.15% after a pause).
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let one_consumers = consumers().await?;
    let one_idle = idle_cpu(&pids, args.idle_secs).await?;

    eprintln!("deploying {} functions…", args.functions);
    let rest: Vec<String> = names.iter().skip(1).cloned().collect();
    for_each(
        &client,
        rest,
        |c, name| async move { c.deploy(&name).await },
    )
    .await?;

    eprintln!("invoking each once, asynchronously (cold)…");
    let started = Instant::now();
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let ids = ids.clone();
        for_each(&client, names.clone(), move |c, name| {
            let ids = ids.clone();
            async move {
                let body = c.invoke(&name, true).await?;
                let id = body["id"].as_str().context("an async answer without id")?;
                ids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.to_owned());
                Ok(())
            }
        })
        .await?;
    }
    // In the order they were accepted, which is roughly the order they run in: each round
    // reads records up to the first one still unfinished, so every record is read about once
    // (reading all of 10,000 pending records every round would load the gateway it measures).
    let mut pending: std::collections::VecDeque<String> =
        std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner())).into();
    let mut failed = 0usize;
    while let Some(id) = pending.front() {
        ensure!(
            started.elapsed() < cold_max(args.functions),
            "{} cold invocations unfinished after {:?}",
            pending.len(),
            cold_max(args.functions)
        );
        let record = client.record(id).await?;
        match record["status"].as_str() {
            Some("succeeded") => {}
            Some("queued" | "running") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            _ => failed += 1,
        }
        pending.pop_front();
    }
    let cold_secs = started.elapsed().as_secs_f64();
    let cold_rate = args.functions as f64 / cold_secs;

    // The burst leaves housekeeping behind (the server's consumer state, evicted sandboxes):
    // idle is measured once it settled.
    eprintln!(
        "{} functions: settling {} s, then idle CPU for {} s…",
        args.functions, args.settle_secs, args.idle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let many_consumers = consumers().await?;
    let many_idle = idle_cpu(&pids, args.idle_secs).await?;

    // The 1-function figure above was taken minutes earlier, and this VM's speed moves by
    // tens of percent within minutes (the same before/after ratio came out 0.87–1.44× in runs
    // of the same code). So a second mesh with one function, started only now (its own
    // nats-server, gateway and node), is measured in rounds alternating with this one: the
    // ratio of the two is the cost of the many functions at the same moments.
    eprintln!(
        "{} functions: sync latency of one at c=1, in {SIDE_BY_SIDE_ROUNDS} rounds alternating \
         with a second mesh holding one function…",
        args.functions
    );
    let reference_nats = start_nats(&work.join("reference-nats"))?;
    let reference_work = work.join("reference");
    std::fs::create_dir_all(&reference_work)?;
    let mut reference = MeshProcs::start(&reference_work, &reference_nats.url, args.slots)?;
    reference.wait_ready(http, Duration::from_secs(60)).await?;
    let reference_client = Client {
        http: http.clone(),
        base: reference.base_url.clone(),
        key: reference.admin_key.clone(),
    };
    reference_client.deploy(&first).await?;
    warm(&client, &first).await?;
    warm(&reference_client, &first).await?;
    let per_round = args.requests.div_ceil(SIDE_BY_SIDE_ROUNDS);
    let (mut many_samples, mut reference_samples) = (Vec::new(), Vec::new());
    for round in 0..SIDE_BY_SIDE_ROUNDS {
        // Which goes first alternates too, so neither always follows the other's tail.
        if round % 2 == 0 {
            many_samples.extend(timed(&client, &first, per_round).await?);
            reference_samples.extend(timed(&reference_client, &first, per_round).await?);
        } else {
            reference_samples.extend(timed(&reference_client, &first, per_round).await?);
            many_samples.extend(timed(&client, &first, per_round).await?);
        }
    }
    drop(reference);
    drop(reference_nats);
    let many_latency = Latency::of(many_samples);
    let reference_latency = Latency::of(reference_samples);

    let mut out = format!(
        "\n{} functions deployed ({} slots); figures with 1 function beside\n\n",
        args.functions, args.slots
    );
    out += &format!(
        "cold invocations of distinct functions: {} in {cold_secs:.1} s = {cold_rate:.1}/s, \
         {failed} not succeeded   (target ≥ {TARGET_COLD_PER_SECOND:.0}/s: {})\n",
        args.functions,
        verdict(cold_rate >= TARGET_COLD_PER_SECOND)
    );
    out += &format!(
        "\n{:<28} {:>12} {:>12}\n",
        "",
        "1 function",
        format!("{} functions", args.functions)
    );
    out += &format!(
        "{:<28} {:>12.0} {:>12.0}\n{:<28} {:>12.0} {:>12.0}\n",
        "sync p50 of one, c=1 (µs)",
        one_latency.p50_us,
        many_latency.p50_us,
        "sync p99 of one, c=1 (µs)",
        one_latency.p99_us,
        many_latency.p99_us
    );
    out += &format!(
        "{:<28} {:>12.0} {:>12}   (a second mesh with 1 function, rounds alternating with the \
         {} functions' series)\n{:<28} {:>12.0} {:>12}\n",
        "  side by side: p50 (µs)",
        reference_latency.p50_us,
        "",
        args.functions,
        "  side by side: p99 (µs)",
        reference_latency.p99_us,
        "",
    );
    out += &format!(
        "{:<28} {:>12} {:>12}   (at the idle sample; FNMESH_FUNCTION_CONSUMER_IDLE_SECS={})\n",
        "work-stream consumers",
        one_consumers,
        many_consumers,
        std::env::var("FNMESH_FUNCTION_CONSUMER_IDLE_SECS")
            .unwrap_or_else(|_| "300 (default)".into())
    );
    let mut one_total = 0.0;
    let mut many_total = 0.0;
    for ((name, one), (_, many)) in one_idle.iter().zip(&many_idle) {
        out += &format!(
            "{:<28} {:>11.2}% {:>11.2}%\n",
            format!("idle CPU, {name}"),
            one * 100.0,
            many * 100.0
        );
        one_total += one;
        many_total += many;
    }
    out += &format!(
        "{:<28} {:>11.2}% {:>11.2}%   (target ≤ {:.0}% of a core: {})\n",
        "idle CPU, together",
        one_total * 100.0,
        many_total * 100.0,
        TARGET_IDLE_CPU * 100.0,
        verdict(many_total <= TARGET_IDLE_CPU)
    );
    let ratio = many_latency.p50_us / reference_latency.p50_us;
    out += &format!(
        "sync p50 with {} functions / with 1, side by side: {ratio:.2}x   (target ≤ \
         {TARGET_P50_RATIO}x: {})\n",
        args.functions,
        verdict(ratio <= TARGET_P50_RATIO)
    );
    out += &format!(
        "sync p50 with {} functions / with 1 on this mesh before the deploy: {:.2}x   (minutes \
         apart: moves with the VM)\n",
        args.functions,
        many_latency.p50_us / one_latency.p50_us
    );
    Ok((out, cold_rate))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// Warms `name` up, then `n` sequential sync invocations.
async fn sync_series(client: &Client, name: &str, n: usize) -> Result<Latency> {
    warm(client, name).await?;
    Ok(Latency::of(timed(client, name, n).await?))
}

/// A few discarded sync invocations of `name` (its sandbox warm, its consumer in place).
async fn warm(client: &Client, name: &str) -> Result<()> {
    for _ in 0..20 {
        client.invoke(name, false).await?;
    }
    Ok(())
}

/// `n` sequential sync invocations of `name`, timed; each must succeed.
async fn timed(client: &Client, name: &str, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let body = client.invoke(name, false).await?;
        ensure!(body["status"] == "succeeded", "invocation failed: {body}");
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// Runs `f` for every name, [`SETUP_CONCURRENCY`] at once; the first error fails it.
async fn for_each<F, Fut>(client: &Client, names: Vec<String>, f: F) -> Result<()>
where
    F: Fn(Client, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let queue = Arc::new(std::sync::Mutex::new(names));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SETUP_CONCURRENCY {
        let (queue, client, f) = (queue.clone(), client.clone(), f.clone());
        tasks.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(name) = next else {
                    return anyhow::Ok(());
                };
                f(client.clone(), name).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}
