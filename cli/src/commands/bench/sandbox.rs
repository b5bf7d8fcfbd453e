//! `fnmesh bench`: cold and warm start of a Python hello through fnmesh's sandboxes, side by
//! side in one run with `crun run` of an equivalent bundle, bare `python3`, and the handler
//! called directly.
//!
//! crun 1.8 refuses this kind of hybrid cgroup layout, so [`enter_bench_namespace`] (called
//! before any thread exists) moves the whole benchmark into a private mount namespace with
//! `/sys/fs/cgroup/unified` unmounted; every contender then runs under the same conditions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fnmesh_core::{Function, FunctionName, InvocationId, InvocationStatus};
use fnmesh_nodes::executor::{Executor, ExecutorConfig, Job};
use fnmesh_nodes::sandbox::rootfs::ensure_rootfs;
use fnmesh_nodes::sandbox::seccomp::MaskedEqOrder;
use fnmesh_nodes::sandbox::spec::{write_bundle_for, BundleRequest};
use fnmesh_nodes::sandbox::supervisor::SupervisorClient;
use fnmesh_nodes::sandbox::users::SandboxUser;
use fnmesh_nodes::sandbox::ContainerRuntime;

use serde::{Deserialize, Serialize};

use crate::args::BenchArgs;

pub(crate) const HANDLER: &str = "def handle(event, context):\n    return {\"hello\": \"world\"}\n";
const ONE_SHOT: &str =
    "import sys; sys.path.insert(0, '/var/task'); import main; print(main.handle({}, None))";

/// Moves this (still single-threaded) process into a private mount namespace without the
/// cgroup2 mount, so that crun accepts the host's cgroup v1 layout.
pub fn enter_bench_namespace() -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS) (run the benchmark as root)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    if Path::new("/sys/fs/cgroup/unified").exists() {
        let _ = umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
    }
    Ok(())
}

/// An executor for a benchmark run in this process: its own sandbox supervisor, work dir and
/// cgroup under `work`, with at most `max_sandboxes` sandboxes.
pub(crate) async fn bench_executor(work: &Path, max_sandboxes: usize) -> Result<Arc<Executor>> {
    bench_executor_with(work, max_sandboxes, None).await
}

/// [`bench_executor`] that also runs image functions with `images`.
pub(crate) async fn bench_executor_with(
    work: &Path,
    max_sandboxes: usize,
    images: Option<fnmesh_nodes::runtimes::image::ImageSupport>,
) -> Result<Arc<Executor>> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(
        SupervisorClient::spawn(
            &std::env::current_exe()?,
            &["__supervisor"],
            &work.join("state"),
        )
        .await
        .context("starting the sandbox supervisor")?,
    );
    Ok(Executor::new(
        ExecutorConfig {
            work_dir: work.join("node"),
            node_id: format!("bench-{tag}"),
            max_sandboxes,
            cgroup_parent: format!("/fnmesh-bench/{tag}"),
            images,
            ..ExecutorConfig::default()
        },
        runtime,
    )
    .await?)
}

pub(crate) struct Stats {
    pub(crate) samples: Vec<f64>,
}

impl Stats {
    pub(crate) fn new(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        Self { samples }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[idx.min(self.samples.len() - 1)]
    }
    pub(crate) fn median(&self) -> f64 {
        self.pct(0.5)
    }
}

/// Summary of one series (in the series' unit) with its raw samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// The measured samples, sorted.
    pub samples: Vec<f64>,
}

impl Series {
    pub(crate) fn of(s: &Stats) -> Self {
        Self {
            n: s.samples.len(),
            min: s.pct(0.0),
            p50: s.median(),
            p90: s.pct(0.9),
            p99: s.pct(0.99),
            max: s.pct(1.0),
            samples: s.samples.clone(),
        }
    }
}

/// Everything `fnmesh bench sandbox` measured; `--json-out` writes this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxFigures {
    /// fnmesh cold start, request → result (ms).
    pub fnmesh_cold_ms: Series,
    /// Of which sandbox init: create + start + load (ms).
    pub fnmesh_init_ms: Series,
    /// `crun run` of an equivalent bundle (ms); `None` without crun.
    pub crun_cold_ms: Option<Series>,
    /// Bare `python3` running the handler once (ms).
    pub bare_python_ms: Series,
    /// Warm round trip through a pooled sandbox (µs).
    pub warm_us: Series,
    /// Median of one direct call of the handler in Python (µs).
    pub direct_handler_p50_us: f64,
    /// Warm p50 minus the direct call (µs); target ≤ 100.
    pub warm_overhead_us: f64,
    /// fnmesh cold p50 / crun p50; target ≤ 1.
    pub ratio_cold_vs_crun: Option<f64>,
    /// fnmesh cold p50 / bare python p50.
    pub ratio_cold_vs_bare: f64,
}

/// Runs the benchmark, prints its table and writes `--json-out`.
pub async fn run(args: BenchArgs) -> Result<()> {
    let figures = measure(&args).await?;
    print!("{}", table(&figures));
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A temporary directory named `prefix…` under `work_dir` (created if needed), or under the
/// system's temp dir; removed on drop.
pub(crate) fn scratch_dir(work_dir: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir> {
    Ok(match work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new().prefix(prefix).tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix(prefix).tempdir()?,
    })
}

/// Runs the benchmark (the process must be in [`enter_bench_namespace`]'s namespace).
pub async fn measure(args: &BenchArgs) -> Result<SandboxFigures> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates sandboxes and must run as root");
    }
    let scratch = scratch_dir(args.work_dir.as_deref(), "fnmesh-bench-")?;
    let work = scratch.path().to_path_buf();
    let code_dir = work.join("code");
    std::fs::create_dir_all(&code_dir)?;
    std::fs::write(code_dir.join("main.py"), HANDLER)?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let executor = bench_executor(&work, args.cold_rounds + 8).await?;

    // An equivalent one-shot bundle for crun: same rootfs, mounts, limits and seccomp profile.
    let rootfs = ensure_rootfs(&work.join("crun-rootfs"))?;
    let empty_runtime_dir = work.join("crun-runtime");
    std::fs::create_dir_all(&empty_runtime_dir)?;
    let crun = which("crun");
    let crun_root = work.join("crun-state");
    std::fs::create_dir_all(&crun_root)?;

    println!(
        "fnmesh bench: python hello, {} cold rounds (round-robin), {} warm iterations",
        args.cold_rounds, args.warm_iterations
    );
    let mut cold_fnmesh = Vec::new();
    let mut cold_init = Vec::new();
    let mut cold_crun = Vec::new();
    let mut cold_bare = Vec::new();
    for round in 0..args.cold_rounds {
        // fnmesh: a new function id every round, so every invocation is a cold start.
        let function = bench_function();
        let started = Instant::now();
        let out = executor.execute(job(&function, &code_dir)).await;
        let elapsed = started.elapsed();
        if out.status != InvocationStatus::Succeeded || !out.cold_start {
            bail!(
                "fnmesh cold invocation failed: {:?} {:?}",
                out.status,
                out.error
            );
        }
        cold_fnmesh.push(ms(elapsed));
        cold_init.push(out.init_us as f64 / 1e3);

        if let Some(crun) = &crun {
            let id = format!("bench-{tag}-{round}");
            let bundle = work.join("crun-bundles").join(&id);
            write_bundle_for(
                &bundle,
                &BundleRequest {
                    sandbox_id: id.clone(),
                    root: fnmesh_nodes::sandbox::spec::RootKind::Skeleton,
                    rootfs: rootfs.clone(),
                    code_dir: code_dir.clone(),
                    runtime_dir: empty_runtime_dir.clone(),
                    args: vec![
                        "/usr/bin/python3".into(),
                        "-I".into(),
                        "-c".into(),
                        ONE_SHOT.into(),
                    ],
                    env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/tmp".into()],
                    cwd: "/var/task".into(),
                    memory_mb: 128,
                    pids_limit: 64,
                    cpu_millis: 1000,
                    cpu_shares: None,
                    disk_io: None,
                    tmp_mb: 64,
                    cgroup_path: format!("/fnmesh-bench/{tag}/{id}"),
                    user: SandboxUser::Host {
                        uid: 65534,
                        gid: 65534,
                    },
                },
                // crun reads SCMP_CMP_MASKED_EQ in the OCI order (libcontainer 0.7 swaps it).
                MaskedEqOrder::Oci,
            )?;
            let started = Instant::now();
            let status = Command::new(crun)
                .arg("--root")
                .arg(&crun_root)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()?;
            let elapsed = started.elapsed();
            if !status.status.success() {
                bail!(
                    "crun run failed: {}",
                    String::from_utf8_lossy(&status.stderr)
                );
            }
            cold_crun.push(ms(elapsed));
        }

        let started = Instant::now();
        let status = Command::new("/usr/bin/python3")
            .args([
                "-I",
                "-c",
                &ONE_SHOT.replace("/var/task", &code_dir.to_string_lossy()),
            ])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("bare python3 failed");
        }
        cold_bare.push(ms(started.elapsed()));
    }

    // Warm: one function, one sandbox, sequential invocations.
    let function = bench_function();
    let first = executor.execute(job(&function, &code_dir)).await;
    if first.status != InvocationStatus::Succeeded {
        bail!("warm-up invocation failed: {:?}", first.error);
    }
    let mut warm = Vec::with_capacity(args.warm_iterations);
    for _ in 0..args.warm_iterations {
        let started = Instant::now();
        let out = executor.execute(job(&function, &code_dir)).await;
        let elapsed = started.elapsed();
        if out.cold_start || out.status != InvocationStatus::Succeeded {
            bail!("warm invocation was not warm: {:?}", out.error);
        }
        warm.push(elapsed.as_secs_f64() * 1e6);
    }
    let direct_us = direct_handler_us(&code_dir, args.warm_iterations)?;
    executor.shutdown(Duration::from_secs(5)).await;

    let fn_cold = Stats::new(cold_fnmesh);
    let init = Stats::new(cold_init);
    let crun_cold = Stats::new(cold_crun);
    let bare = Stats::new(cold_bare);
    let warm = Stats::new(warm);
    let has_crun = crun.is_some() && !crun_cold.samples.is_empty();
    Ok(SandboxFigures {
        ratio_cold_vs_crun: has_crun.then(|| fn_cold.median() / crun_cold.median()),
        ratio_cold_vs_bare: fn_cold.median() / bare.median(),
        warm_overhead_us: warm.median() - direct_us,
        direct_handler_p50_us: direct_us,
        fnmesh_cold_ms: Series::of(&fn_cold),
        fnmesh_init_ms: Series::of(&init),
        crun_cold_ms: has_crun.then(|| Series::of(&crun_cold)),
        bare_python_ms: Series::of(&bare),
        warm_us: Series::of(&warm),
    })
}

/// The human-readable table of `fnmesh bench sandbox`.
pub fn table(f: &SandboxFigures) -> String {
    let row = |label: &str, s: &Series| {
        if s.n == 0 {
            format!("{label:<36} n/a\n")
        } else {
            format!(
                "{label:<36} {:>3} {:>6.1} {:>5.1} {:>5.1} {:>5.1}\n",
                s.n, s.min, s.p50, s.p90, s.max
            )
        }
    };
    let mut out =
        String::from("\ncold start (ms)                         n    min   p50   p90   max\n");
    out += &row("fnmesh sandbox (request → result)", &f.fnmesh_cold_ms);
    out += &row("  of which init (create+start+load)", &f.fnmesh_init_ms);
    match &f.crun_cold_ms {
        Some(crun) => out += &row("crun run (create+run+delete)", crun),
        None => out += "crun run                             n/a: crun is not installed (apt-get install crun)\n",
    }
    out += &row("bare python3 (no container)", &f.bare_python_ms);
    out.push('\n');
    if let Some(ratio) = f.ratio_cold_vs_crun {
        out += &format!("ratio fnmesh cold / crun run (p50):   {ratio:.2}x   (target ≤ 1.0x)\n");
    }
    out += &format!(
        "ratio fnmesh cold / bare python (p50): {:.2}x\n",
        f.ratio_cold_vs_bare
    );
    out += "\nwarm round trip (µs)                    n    min   p50   p90   p99\n";
    let w = &f.warm_us;
    out += &format!(
        "{:<36} {:>5} {:>6.0} {:>5.0} {:>5.0} {:>5.0}\n",
        "fnmesh pooled sandbox", w.n, w.min, w.p50, w.p90, w.p99
    );
    out += &format!(
        "{:<36} {:>5} {:>24.2}\n",
        "handler called directly (p50)", w.n, f.direct_handler_p50_us
    );
    out += &format!(
        "warm overhead over the bare handler (p50): {:.0} µs   (target ≤ 100 µs)\n",
        f.warm_overhead_us
    );
    out
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// How many cold starts of distinct functions per second fnmesh's executor makes on its own,
/// `concurrency` at a time with at most `concurrency + 8` sandboxes (as `bench scale`'s node:
/// past the cap every cold start also evicts one): the ceiling of cold invocations that work
/// finding, the bus and the store cannot raise. Python hello, `n` functions.
pub async fn parallel_cold_starts(work: &Path, n: usize, concurrency: usize) -> Result<f64> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates sandboxes and must run as root");
    }
    let code_dir = work.join("code");
    std::fs::create_dir_all(&code_dir)?;
    std::fs::write(code_dir.join("main.py"), HANDLER)?;
    let executor = bench_executor(work, concurrency + 8).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let (executor, code_dir) = (executor.clone(), code_dir.clone());
        tasks.spawn(async move {
            let out = executor.execute(job(&bench_function(), &code_dir)).await;
            drop(permit);
            out
        });
    }
    let mut failed = 0usize;
    while let Some(out) = tasks.join_next().await {
        if out.map_or(true, |o| {
            o.status != InvocationStatus::Succeeded || !o.cold_start
        }) {
            failed += 1;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    executor.shutdown(Duration::from_secs(5)).await;
    if failed > 0 {
        bail!("{failed} of {n} cold starts failed");
    }
    Ok(rate)
}

pub(crate) fn bench_function() -> Function {
    let name = FunctionName::parse("bench-hello").unwrap_or_else(|_| unreachable!());
    super::python_function(name, HANDLER)
}

pub(crate) fn job(function: &Function, code_dir: &Path) -> Job {
    Job {
        invocation_id: InvocationId::new(),
        function: function.clone(),
        code_dir: code_dir.to_path_buf(),
        payload: serde_json::json!({}),
        trace_id: None,
        secrets: None,
        registry_auth: None,
    }
}

/// Median time of one direct call of the handler inside Python, in µs.
fn direct_handler_us(code_dir: &Path, n: usize) -> Result<f64> {
    let script = format!(
        "import sys, time, statistics\nsys.path.insert(0, {dir:?})\nimport main\nts = []\nfor _ in range({n}):\n    t = time.perf_counter_ns()\n    main.handle({{}}, None)\n    ts.append(time.perf_counter_ns() - t)\nprint(statistics.median(ts) / 1000)\n",
        dir = code_dir.to_string_lossy(),
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-I", "-c", &script])
        .output()?;
    if !out.status.success() {
        bail!(
            "direct handler run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
