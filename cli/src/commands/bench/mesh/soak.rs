//! `fnmesh bench soak`: a steady load of sync invocations on the mesh (a gateway and a node
//! over a fresh `nats-server -js`, as `bench mesh` starts them) for minutes, reporting per
//! interval the throughput, p50/p99, errors and timeouts, the node events waiting in the event
//! stream (the backlog the recorders have not recorded yet) and the size of the gateway's store.
//! At the end: the last interval's throughput over the first's (the mesh must not slow down as
//! it runs), the largest backlog and every error. Each interval also shows the CPU that
//! gateway, node and nats-server each spent per invocation in it and how long a fixed computation
//! takes in the benchmark's process at its end (a probe of the VM's speed at that moment), so
//! a mesh that slows down as it runs is told from a VM that does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::cpu::{CpuUse, Meter};
use super::procs::{start_nats, MeshProcs};
use super::{scratch_dir, warm_up, Api, Latency};
use crate::args::SoakBenchArgs;

/// Targets of the hot-path issue for a 5-minute soak.
const TARGET_LAST_OVER_FIRST: f64 = 0.9;
const TARGET_MAX_BACKLOG: u64 = 10_000;

/// One reported interval.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds since the load started, at the interval's end.
    pub at_s: f64,
    pub per_second: f64,
    pub succeeded: u64,
    pub errors: u64,
    /// Errors that were timeouts (504, or no answer within the client's 60 s).
    pub timeouts: u64,
    pub latency: Latency,
    /// Node events in the event stream at the interval's end.
    pub event_backlog: u64,
    /// Invocations in the work stream at the interval's end.
    pub work_backlog: u64,
    /// The gateway's store on disk (`fnmesh_store_bytes`).
    pub store_bytes: f64,
    /// Invocation records it holds.
    pub store_invocations: f64,
    /// CPU of the gateway, the node and nats-server in the interval (in that order, their
    /// total last), per invocation it finished.
    pub cpu: Vec<CpuUse>,
    /// The fixed computation of [`speed_probe`] at the interval's end, µs.
    pub probe_us: f64,
}

/// What `bench soak` measured.
#[derive(Debug, Serialize)]
pub struct SoakFigures {
    pub concurrency: usize,
    pub secs: u64,
    pub intervals: Vec<Interval>,
    /// The last interval's throughput / the first's.
    pub last_over_first: f64,
    pub max_event_backlog: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub first_error: Option<String>,
}

/// What the load's workers saw since the last interval.
#[derive(Default)]
struct Tally {
    samples: Vec<Duration>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
}

/// Runs the soak and prints its intervals as they end, then the summary.
pub async fn run(args: SoakBenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the soak benchmark starts a node that creates sandboxes and must run as root");
    }
    ensure!(args.secs > 0, "--secs must be at least 1");
    ensure!(args.interval_secs > 0, "--interval-secs must be at least 1");
    ensure!(
        (1..=1000).contains(&args.concurrency),
        "--concurrency must be between 1 and 1000"
    );
    let scratch = scratch_dir(args.work_dir.as_deref(), "fnmesh-bench-soak-")?;
    let work = scratch.path().to_path_buf();
    // Declared first, so dropped last: the children stop before their NATS server.
    let nats_server = start_nats(&work.join("nats"))?;
    let nats_pid = nats_server
        .proc
        .pid()
        .context("nats-server is not running")?;
    let nats = async_nats::connect(&nats_server.url)
        .await
        .with_context(|| format!("connecting to NATS at {}", nats_server.url))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!("starting fnmesh gateway and node…");
    let mut mesh = MeshProcs::start(&work, &nats_server.url, args.concurrency)?;
    let figures = match soak(&mut mesh, &http, &nats, nats_pid, &args).await {
        Ok(figures) => figures,
        Err(e) => {
            eprintln!("{}", mesh.log_tails());
            return Err(e);
        }
    };
    drop(mesh);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", summary(&figures));
    Ok(())
}

async fn soak(
    mesh: &mut MeshProcs,
    http: &reqwest::Client,
    nats: &async_nats::Client,
    nats_pid: u32,
    args: &SoakBenchArgs,
) -> Result<SoakFigures> {
    mesh.wait_ready(http, Duration::from_secs(60)).await?;
    let (Some(gateway_pid), Some(node_pid)) = mesh.pids() else {
        bail!("the gateway or the node is not running");
    };
    let parts = || {
        vec![
            ("gateway".to_owned(), vec![gateway_pid]),
            ("node".to_owned(), vec![node_pid]),
            ("nats-server".to_owned(), vec![nats_pid]),
        ]
    };
    let api = Api {
        http: http.clone(),
        base: mesh.base_url.clone(),
        key: mesh.admin_key.clone(),
    };
    api.deploy(args.concurrency).await?;
    api.invoke().await.context("the first invocation")?;
    eprintln!("warming sandboxes at concurrency {}…", args.concurrency);
    warm_up(&api, args.concurrency, Duration::from_secs(3)).await;

    let js = async_nats::jetstream::new(nats.clone());
    let mut events = js
        .get_stream(mesh.events_stream()?.context("the soak runs on the mesh")?)
        .await?;
    let mut work = js.get_stream(mesh.work_stream()?).await?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (api, tally) = (api.clone(), tally.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = api.invoke().await;
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(()) => tally.samples.push(t.elapsed()),
                    Err(e) => {
                        let text = format!("{e:#}");
                        tally.errors += 1;
                        if text.contains("504") || text.contains("timed out") {
                            tally.timeouts += 1;
                        }
                        tally.first_error.get_or_insert(text);
                    }
                }
            }
        });
    }

    eprintln!(
        "soaking at concurrency {} for {} s, reporting every {} s",
        args.concurrency, args.secs, args.interval_secs
    );
    eprintln!("{}", header());
    let mut intervals = Vec::new();
    let mut first_error = None;
    let mut last = started;
    let mut meter = Meter::start(parts());
    loop {
        let next = (last + Duration::from_secs(args.interval_secs)).min(deadline);
        tokio::time::sleep_until(next.into()).await;
        let taken = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        let elapsed = last.elapsed().as_secs_f64().max(1e-9);
        last = Instant::now();
        let meter = std::mem::replace(&mut meter, Meter::start(parts()));
        let sizes = store_sizes(&api).await.unwrap_or((f64::NAN, f64::NAN));
        let probe = tokio::task::spawn_blocking(speed_probe).await?;
        let succeeded = taken.samples.len() as u64;
        let cpu = meter.finish(succeeded);
        let interval = Interval {
            at_s: started.elapsed().as_secs_f64(),
            per_second: succeeded as f64 / elapsed,
            succeeded,
            errors: taken.errors,
            timeouts: taken.timeouts,
            latency: Latency::of(taken.samples),
            event_backlog: events.info().await?.state.messages,
            work_backlog: work.info().await?.state.messages,
            store_bytes: sizes.0,
            store_invocations: sizes.1,
            cpu,
            probe_us: probe.as_secs_f64() * 1e6,
        };
        first_error = first_error.or(taken.first_error);
        eprintln!("{}", row(&interval));
        intervals.push(interval);
        if last >= deadline {
            break;
        }
    }
    while workers.join_next().await.is_some() {}
    Ok(SoakFigures {
        concurrency: args.concurrency,
        secs: args.secs,
        last_over_first: last_over_first(&intervals, |i| i.per_second),
        max_event_backlog: intervals.iter().map(|i| i.event_backlog).max().unwrap_or(0),
        errors: intervals.iter().map(|i| i.errors).sum(),
        timeouts: intervals.iter().map(|i| i.timeouts).sum(),
        first_error,
        intervals,
    })
}

/// A figure of the last interval over the same figure of the first.
fn last_over_first(intervals: &[Interval], f: impl Fn(&Interval) -> f64) -> f64 {
    intervals.last().map_or(0.0, &f) / intervals.first().map_or(0.0, &f).max(1e-9)
}

/// CPU per invocation, in µs, of part `k` of an interval's [`Interval::cpu`].
fn cpu_us(i: &Interval, k: usize) -> f64 {
    i.cpu.get(k).map_or(f64::NAN, |u| u.per_invocation_us)
}

/// How long a fixed computation takes now (SHA-256 of 256 KiB, the shortest of five runs, so
/// that a run the scheduler interrupted does not count): under the same load, a slower result
/// means a slower VM, not a slower mesh.
fn speed_probe() -> Duration {
    use sha2::Digest as _;
    let data = vec![0x5a_u8; 256 * 1024];
    (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&data)));
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// `fnmesh_store_bytes` and `fnmesh_store_invocations` from the gateway's metrics.
async fn store_sizes(api: &Api) -> Result<(f64, f64)> {
    let samples = api.metrics().await?;
    let value = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name)
            .map_or(f64::NAN, |s| s.value)
    };
    Ok((
        value("fnmesh_store_bytes"),
        value("fnmesh_store_invocations"),
    ))
}

fn header() -> String {
    format!(
        "{:>7} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9}",
        "t (s)",
        "inv/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "timeouts",
        "events",
        "work",
        "store MB",
        "records",
        "gw µs",
        "node µs",
        "nats µs",
        "probe µs"
    )
}

fn row(i: &Interval) -> String {
    format!(
        "{:>7.0} {:>9.0} {:>9.0} {:>9.0} {:>7} {:>8} {:>9} {:>8} {:>10.1} {:>9.0} {:>8.0} {:>8.0} \
         {:>8.0} {:>9.0}",
        i.at_s,
        i.per_second,
        i.latency.p50_us,
        i.latency.p99_us,
        i.errors,
        i.timeouts,
        i.event_backlog,
        i.work_backlog,
        i.store_bytes / 1e6,
        i.store_invocations,
        cpu_us(i, 0),
        cpu_us(i, 1),
        cpu_us(i, 2),
        i.probe_us
    )
}

/// The table of intervals and the verdicts against the targets.
fn summary(f: &SoakFigures) -> String {
    let mut out = format!(
        "\nsoak at concurrency {} for {} s (python3 echo, sync)\n{}\n",
        f.concurrency,
        f.secs,
        header()
    );
    for i in &f.intervals {
        out += &row(i);
        out.push('\n');
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    out += &format!(
        "last / first interval throughput: {:.2}   (target ≥ {TARGET_LAST_OVER_FIRST}: {})\n\
         largest event backlog: {}   (target < {TARGET_MAX_BACKLOG}: {})\n\
         errors: {}, of which timeouts: {}   (target 0 timeouts: {})\n",
        f.last_over_first,
        verdict(f.last_over_first >= TARGET_LAST_OVER_FIRST),
        f.max_event_backlog,
        verdict(f.max_event_backlog < TARGET_MAX_BACKLOG),
        f.errors,
        f.timeouts,
        verdict(f.timeouts == 0),
    );
    out += &format!(
        "last / first interval, CPU per invocation: {:.2} together (gateway {:.2}, node {:.2}, \
         nats-server {:.2}); speed probe {:.2} (above 1: the VM itself got slower)\n",
        last_over_first(&f.intervals, |i| cpu_us(i, 3)),
        last_over_first(&f.intervals, |i| cpu_us(i, 0)),
        last_over_first(&f.intervals, |i| cpu_us(i, 1)),
        last_over_first(&f.intervals, |i| cpu_us(i, 2)),
        last_over_first(&f.intervals, |i| i.probe_us)
    );
    if let Some(e) = &f.first_error {
        out += &format!("first error: {e}\n");
    }
    out
}
