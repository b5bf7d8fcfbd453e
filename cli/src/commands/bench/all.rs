//! `fnmesh bench all`: the sandbox and mesh benchmarks in one run, baselines and fnmesh side
//! by side, printed as one table of figures and ratios, written as JSON, and drawn as a latency
//! histogram (SVG, log-scale x axis, one row per contender; PNG too if `rsvg-convert` exists).
//!
//! The sandbox benchmark must run in a private mount namespace entered before any thread exists
//! (see `main.rs`), so it runs as a child process of this binary (`fnmesh bench sandbox
//! --json-out …`, its table on our stderr) and its JSON is read back. The mesh benchmark then
//! runs in this process, as `fnmesh bench mesh` does.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::mesh::{
    self as bench_mesh, Latency, TARGET_EMBEDDED_P50_US, TARGET_EMBEDDED_THROUGHPUT, TARGET_RATIO,
    TARGET_SIGNING_US, TARGET_THROUGHPUT,
};
use super::sandbox::{SandboxFigures, Series};
use crate::args::{AllBenchArgs, MeshBenchArgs};

mod chart;

use chart::{histogram, render_png, svg, Histogram};

/// Target of the sandbox issue: warm overhead over the bare handler, in µs.
const TARGET_WARM_OVERHEAD_US: f64 = 100.0;
/// Target of the sandbox issue: fnmesh cold start / crun run.
const TARGET_COLD_VS_CRUN: f64 = 1.0;

/// One line of the table: a latency series, and the throughput where it was measured.
#[derive(Debug, Serialize)]
struct Row {
    group: &'static str,
    name: String,
    n: usize,
    p50_us: f64,
    p99_us: Option<f64>,
    ops_per_second: Option<f64>,
    #[serde(skip)]
    samples_us: Vec<f64>,
    /// Drawn in the histogram.
    #[serde(skip)]
    plot: bool,
}

/// A ratio against its target.
#[derive(Debug, Serialize)]
struct Ratio {
    name: &'static str,
    value: f64,
    unit: &'static str,
    target: Option<String>,
    met: Option<bool>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Settings {
    cold_rounds: usize,
    warm_iterations: usize,
    requests: usize,
    concurrency: usize,
    duration_secs: u64,
    warmup_secs: u64,
}

#[derive(Debug, Serialize)]
struct Host {
    cpus: usize,
    load_average_at_start: Option<String>,
}

/// What `--json-out` writes.
#[derive(Debug, Serialize)]
struct Report {
    generated_at: String,
    duration_s: f64,
    host: Host,
    settings: Settings,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
    histogram: Histogram,
    /// `fnmesh bench sandbox`'s figures (without the raw samples).
    sandbox: SandboxFigures,
    /// `fnmesh bench mesh`'s figures.
    mesh: bench_mesh::Figures,
}

pub async fn run(args: AllBenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates sandboxes and starts a node: run it as root");
    }
    ensure!(args.cold_rounds > 0, "--cold-rounds must be at least 1");
    ensure!(
        args.warm_iterations > 0,
        "--warm-iterations must be at least 1"
    );
    let json_path = args
        .json_out
        .clone()
        .unwrap_or_else(|| args.out_dir.join("bench-results.json"));
    let svg_path = args
        .svg_out
        .clone()
        .unwrap_or_else(|| args.out_dir.join("bench-latency.svg"));
    for path in [&json_path, &svg_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let scratch = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("fnmesh-bench-all-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("fnmesh-bench-all-")
            .tempdir()?,
    };
    let host = Host {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
    };
    let started = Instant::now();

    eprintln!(
        "fnmesh bench all [1/2]: sandbox benchmark ({} cold rounds, {} warm iterations), \
         as a child process `fnmesh bench sandbox`…",
        args.cold_rounds, args.warm_iterations
    );
    let mut sandbox = sandbox_child(&args, scratch.path()).await?;

    eprintln!("fnmesh bench all [2/2]: mesh benchmark…");
    let mesh = bench_mesh::measure(&MeshBenchArgs {
        nats_url: args.nats_url.clone(),
        requests: args.requests,
        concurrency: args.concurrency,
        duration_secs: args.duration_secs,
        warmup_secs: args.warmup_secs,
        json_out: None,
        work_dir: Some(scratch.path().join("mesh")),
    })
    .await?;
    let duration_s = started.elapsed().as_secs_f64();

    let rows = rows(&sandbox, &mesh);
    let ratios = ratios(&sandbox, &mesh);
    let histogram = histogram(&rows);
    let settings = Settings {
        cold_rounds: args.cold_rounds,
        warm_iterations: args.warm_iterations,
        requests: args.requests,
        concurrency: args.concurrency,
        duration_secs: args.duration_secs,
        warmup_secs: args.warmup_secs,
    };
    let subtitle = format!(
        "{} CPUs, load {} at start; {} cold rounds, {} sequential requests per series, c={} for {} s; run took {:.0} s",
        host.cpus,
        host.load_average_at_start.as_deref().unwrap_or("?"),
        settings.cold_rounds,
        settings.requests,
        settings.concurrency,
        settings.duration_secs,
        duration_s
    );
    let svg = svg(&rows, &histogram, &subtitle);
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let png = render_png(&svg_path);

    print!("{}", table(&rows, &ratios, &mesh, duration_s));
    for s in [
        &mut sandbox.fnmesh_cold_ms,
        &mut sandbox.fnmesh_init_ms,
        &mut sandbox.bare_python_ms,
        &mut sandbox.warm_us,
    ]
    .into_iter()
    .chain(sandbox.crun_cold_ms.as_mut())
    {
        s.samples.clear();
    }
    let report = Report {
        generated_at: chrono::Utc::now().to_rfc3339(),
        duration_s,
        host,
        settings,
        rows,
        ratios,
        histogram,
        sandbox,
        mesh,
    };
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("\nfigures: {}", json_path.display());
    println!("latency histogram: {}", svg_path.display());
    match png {
        Ok(Some(png)) => println!("latency histogram (PNG): {}", png.display()),
        Ok(None) => {}
        Err(e) => eprintln!("warning: rendering the histogram as PNG: {e:#}"),
    }
    Ok(())
}

/// Runs `fnmesh bench sandbox --json-out` (it enters its own mount namespace before its
/// threads start) with its table on our stderr, and reads its figures back.
async fn sandbox_child(args: &AllBenchArgs, scratch: &Path) -> Result<SandboxFigures> {
    let exe = std::env::current_exe().context("locating the fnmesh binary")?;
    let json = scratch.join("sandbox.json");
    let work = scratch.join("sandbox");
    std::fs::create_dir_all(&work)?;
    let status = tokio::process::Command::new(exe)
        .args(["bench", "sandbox", "--cold-rounds"])
        .arg(args.cold_rounds.to_string())
        .arg("--warm-iterations")
        .arg(args.warm_iterations.to_string())
        .arg("--json-out")
        .arg(&json)
        .arg("--work-dir")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .kill_on_drop(true)
        .status()
        .await
        .context("starting `fnmesh bench sandbox`")?;
    ensure!(status.success(), "`fnmesh bench sandbox` failed: {status}");
    let bytes = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
    serde_json::from_slice(&bytes).context("parsing the sandbox benchmark's figures")
}

fn series_row(group: &'static str, name: &str, s: &Series, unit_us: f64) -> Row {
    Row {
        group,
        name: name.to_owned(),
        n: s.n,
        p50_us: s.p50 * unit_us,
        p99_us: Some(s.p99 * unit_us),
        ops_per_second: None,
        samples_us: s.samples.iter().map(|v| v * unit_us).collect(),
        plot: true,
    }
}

fn latency_row(group: &'static str, name: &str, l: &Latency) -> Row {
    Row {
        group,
        name: name.to_owned(),
        n: l.n,
        p50_us: l.p50_us,
        p99_us: Some(l.p99_us),
        ops_per_second: None,
        samples_us: l.samples_us.clone(),
        plot: true,
    }
}

fn rows(sandbox: &SandboxFigures, mesh: &bench_mesh::Figures) -> Vec<Row> {
    const COLD: &str = "cold start (a new sandbox or process per call)";
    const WARM: &str = "warm round trip, sequential (c=1)";
    const LOAD: &str = "under load";
    let mut rows = vec![
        latency_row(
            WARM,
            "fnmesh sync invoke over the mesh",
            &mesh.fnmesh_sync_c1,
        ),
        latency_row(
            WARM,
            "fnmesh up (embedded) sync invoke",
            &mesh.embedded_sync_c1,
        ),
    ];
    rows.push(latency_row(
        WARM,
        "raw HTTP echo (warp, keep-alive)",
        &mesh.http_echo,
    ));
    rows.push(latency_row(
        WARM,
        "raw NATS request/reply",
        &mesh.nats_request_reply,
    ));
    rows.push(latency_row(
        WARM,
        "raw JetStream publish + PubAck",
        &mesh.jetstream_publish,
    ));
    rows.push(latency_row(
        WARM,
        "raw JetStream work round trip",
        &mesh.jetstream_work,
    ));
    rows.push(latency_row(
        WARM,
        "warm sandbox (pooled, in-process)",
        &mesh.sandbox_warm,
    ));
    rows.push(latency_row(
        WARM,
        "composed floor (relay gateway + node)",
        &mesh.relay_sync_c1,
    ));
    rows.push(latency_row(
        WARM,
        "JetStream floor (relays over a work queue)",
        &mesh.relay_js_sync_c1,
    ));
    for (name, l) in [
        ("work signing: gateway signs (1 KiB)", &mesh.signing_sign),
        ("work signing: node verifies", &mesh.signing_verify),
        ("Ed25519 alone: signs (32 bytes)", &mesh.ed25519_sign),
        ("Ed25519 alone: verifies (strict)", &mesh.ed25519_verify),
        ("report MAC: node makes (1 KiB)", &mesh.report_sign),
        ("report MAC: gateway checks", &mesh.report_verify),
    ] {
        let mut row = latency_row(WARM, name, l);
        row.plot = false;
        rows.push(row);
    }
    rows.push(series_row(
        WARM,
        "warm sandbox (sandbox bench)",
        &sandbox.warm_us,
        1.0,
    ));
    rows.push(Row {
        group: WARM,
        name: "handler called directly (p50)".into(),
        n: sandbox.warm_us.n,
        p50_us: sandbox.direct_handler_p50_us,
        p99_us: None,
        ops_per_second: None,
        samples_us: Vec::new(),
        plot: false,
    });
    for (name, t) in [
        ("fnmesh sync invoke", &mesh.fnmesh_throughput),
        ("composed floor (relay)", &mesh.relay_throughput),
        (
            "JetStream floor (relay, work queue)",
            &mesh.relay_js_throughput,
        ),
        ("fnmesh up (embedded)", &mesh.embedded_throughput),
    ] {
        let mut load = latency_row(LOAD, &format!("{name}, c={}", t.concurrency), &t.latency);
        load.ops_per_second = Some(t.per_second);
        rows.push(load);
    }
    rows.push(series_row(
        COLD,
        "fnmesh sandbox cold start",
        &sandbox.fnmesh_cold_ms,
        1e3,
    ));
    let mut init = series_row(
        COLD,
        "  of which init (create+start+load)",
        &sandbox.fnmesh_init_ms,
        1e3,
    );
    init.plot = false;
    rows.push(init);
    if let Some(crun) = &sandbox.crun_cold_ms {
        rows.push(series_row(COLD, "crun run (equivalent bundle)", crun, 1e3));
    }
    rows.push(series_row(
        COLD,
        "bare python3 (no container)",
        &sandbox.bare_python_ms,
        1e3,
    ));
    rows
}

fn ratios(sandbox: &SandboxFigures, mesh: &bench_mesh::Figures) -> Vec<Ratio> {
    let mut out = Vec::new();
    if let (Some(r), Some(crun)) = (sandbox.ratio_cold_vs_crun, &sandbox.crun_cold_ms) {
        out.push(Ratio {
            name: "fnmesh cold start / crun run (p50)",
            value: r,
            unit: "x",
            target: Some(format!("≤ {TARGET_COLD_VS_CRUN:.1}x")),
            met: Some(r <= TARGET_COLD_VS_CRUN),
            detail: format!(
                "{} / {}",
                fmt_us(sandbox.fnmesh_cold_ms.p50 * 1e3),
                fmt_us(crun.p50 * 1e3)
            ),
        });
    }
    out.push(Ratio {
        name: "fnmesh cold start / bare python3 (p50)",
        value: sandbox.ratio_cold_vs_bare,
        unit: "x",
        target: None,
        met: None,
        detail: format!(
            "{} / {}",
            fmt_us(sandbox.fnmesh_cold_ms.p50 * 1e3),
            fmt_us(sandbox.bare_python_ms.p50 * 1e3)
        ),
    });
    out.push(Ratio {
        name: "warm sandbox overhead over the bare handler (p50)",
        value: sandbox.warm_overhead_us,
        unit: "µs",
        target: Some(format!("≤ {TARGET_WARM_OVERHEAD_US:.0} µs")),
        met: Some(sandbox.warm_overhead_us <= TARGET_WARM_OVERHEAD_US),
        detail: format!(
            "{} − {:.1} µs",
            fmt_us(sandbox.warm_us.p50),
            sandbox.direct_handler_p50_us
        ),
    });
    out.push(Ratio {
        name: "mesh p50 / (HTTP + NATS + sandbox p50)",
        value: mesh.ratio_p50,
        unit: "x",
        target: Some(format!("≤ {TARGET_RATIO:.1}x")),
        met: Some(mesh.ratio_p50 <= TARGET_RATIO),
        detail: format!(
            "{} / ({} + {} + {})",
            fmt_us(mesh.fnmesh_sync_c1.p50_us),
            fmt_us(mesh.http_echo.p50_us),
            fmt_us(mesh.nats_request_reply.p50_us),
            fmt_us(mesh.sandbox_warm.p50_us)
        ),
    });
    out.push(Ratio {
        name: "mesh p50 / composed floor p50 (same hops)",
        value: mesh.relay_ratio_p50,
        unit: "x",
        target: None,
        met: None,
        detail: format!(
            "{} / {}",
            fmt_us(mesh.fnmesh_sync_c1.p50_us),
            fmt_us(mesh.relay_sync_c1.p50_us)
        ),
    });
    let signing = mesh.signing_sign.p50_us + mesh.signing_verify.p50_us;
    out.push(Ratio {
        name: "work signing per invocation (sign + verify, p50)",
        value: signing,
        unit: "µs",
        target: Some(format!("< {TARGET_SIGNING_US:.0} µs")),
        met: Some(signing < TARGET_SIGNING_US),
        detail: format!(
            "{} + {}",
            fmt_us(mesh.signing_sign.p50_us),
            fmt_us(mesh.signing_verify.p50_us)
        ),
    });
    let ed25519 = mesh.ed25519_sign.p50_us + mesh.ed25519_verify.p50_us;
    out.push(Ratio {
        name: "work signing / Ed25519 alone (its floor, p50)",
        value: signing / ed25519,
        unit: "x",
        target: None,
        met: None,
        detail: format!(
            "{} / ({} + {})",
            fmt_us(signing),
            fmt_us(mesh.ed25519_sign.p50_us),
            fmt_us(mesh.ed25519_verify.p50_us)
        ),
    });
    let t = &mesh.fnmesh_throughput;
    let r = t.per_second / TARGET_THROUGHPUT;
    out.push(Ratio {
        name: "throughput / target",
        value: r,
        unit: "x",
        target: Some(format!("≥ 1.0x ({TARGET_THROUGHPUT:.0}/s)")),
        met: Some(r >= 1.0),
        detail: format!(
            "{:.0}/s recorded ({:.0}/s answered, then {} events recorded in {:.1} s{}) at c={}, \
             {} errors, {} cold starts",
            t.per_second,
            t.answered_per_second,
            t.events_pending_at_end,
            t.record_drain_s,
            if t.recorded { "" } else { ", NOT all" },
            t.concurrency,
            t.errors,
            t.cold_starts
        ),
    });
    out.push(Ratio {
        name: "throughput / composed floor's (same hops)",
        value: mesh.fraction_of_relay,
        unit: "x",
        target: None,
        met: None,
        detail: format!(
            "{:.0}/s / {:.0}/s",
            mesh.fnmesh_throughput.per_second, mesh.relay_throughput.per_second
        ),
    });
    out.push(Ratio {
        name: "throughput / JetStream floor's (+ work queue)",
        value: mesh.fraction_of_relay_js,
        unit: "x",
        target: None,
        met: None,
        detail: format!(
            "{:.0}/s / {:.0}/s",
            mesh.fnmesh_throughput.per_second, mesh.relay_js_throughput.per_second
        ),
    });
    let e = &mesh.embedded_sync_c1;
    out.push(Ratio {
        name: "fnmesh up (embedded) sync p50, c=1",
        value: e.p50_us,
        unit: "µs",
        target: Some(format!("≤ {TARGET_EMBEDDED_P50_US:.0} µs")),
        met: Some(e.p50_us <= TARGET_EMBEDDED_P50_US),
        detail: format!(
            "{:.2}x (HTTP {} + sandbox {})",
            mesh.embedded_ratio_p50,
            fmt_us(mesh.http_echo.p50_us),
            fmt_us(mesh.sandbox_warm.p50_us)
        ),
    });
    let t = &mesh.embedded_throughput;
    let r = t.per_second / TARGET_EMBEDDED_THROUGHPUT;
    out.push(Ratio {
        name: "fnmesh up (embedded) throughput / target",
        value: r,
        unit: "x",
        target: Some(format!("≥ 1.0x ({TARGET_EMBEDDED_THROUGHPUT:.0}/s)")),
        met: Some(r >= 1.0),
        detail: format!(
            "{:.0}/s recorded at c={}, {} errors, {} cold starts",
            t.per_second, t.concurrency, t.errors, t.cold_starts
        ),
    });
    out
}

/// A duration in µs, in the unit that reads best.
fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "n/a".into()
    } else if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 100_000.0 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn table(rows: &[Row], ratios: &[Ratio], mesh: &bench_mesh::Figures, duration_s: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfnmesh bench all ({duration_s:.0} s)\n\n{:<44} {:>6} {:>10} {:>10} {:>10}",
        "series", "n", "p50", "p99", "ops/s"
    );
    let mut group = "";
    for row in rows {
        if row.group != group {
            group = row.group;
            let _ = writeln!(out, "{group}");
        }
        let name = format!("  {}", row.name);
        let _ = writeln!(
            out,
            "{name:<44} {:>6} {:>10} {:>10} {:>10}",
            row.n,
            fmt_us(row.p50_us),
            row.p99_us.map_or_else(|| "".into(), fmt_us),
            row.ops_per_second
                .map_or_else(String::new, |v| format!("{v:.0}")),
        );
    }
    let t = &mesh.fnmesh_throughput;
    if let Some(e) = &t.first_error {
        let _ = writeln!(out, "  first error under load: {e}");
    }
    let _ = writeln!(out, "\nratios");
    for r in ratios {
        let value = if r.unit == "x" {
            format!("{:.2}x", r.value)
        } else {
            format!("{:.0} {}", r.value, r.unit)
        };
        let verdict = match (&r.target, r.met) {
            (Some(t), Some(true)) => format!("target {t}: met"),
            (Some(t), _) => format!("target {t}: NOT met"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<50} {:>8}   {:<32} {}",
            r.name, value, verdict, r.detail
        );
    }
    out
}
