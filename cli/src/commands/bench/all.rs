//! `fnmesh bench all`: the sandbox and mesh benchmarks in one run, baselines and fnmesh side
//! by side, printed as one table of figures and ratios, written as JSON, and drawn as a latency
//! histogram (SVG, log-scale x axis, one row per contender; PNG too if `rsvg-convert` exists).
//!
//! The sandbox benchmark must run in a private mount namespace entered before any thread exists
//! (see `main.rs`), so it runs as a child process of this binary (`fnmesh bench sandbox
//! --json-out …`, its table on our stderr) and its JSON is read back. The mesh benchmark then
//! runs in this process, as `fnmesh bench mesh` does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::mesh::{self as bench_mesh, Latency, TARGET_RATIO, TARGET_THROUGHPUT};
use super::sandbox::{SandboxFigures, Series};
use crate::args::{AllBenchArgs, MeshBenchArgs};

/// Target of the sandbox issue: warm overhead over the bare handler, in µs.
const TARGET_WARM_OVERHEAD_US: f64 = 100.0;
/// Target of the sandbox issue: fnmesh cold start / crun run.
const TARGET_COLD_VS_CRUN: f64 = 1.0;
/// Histogram buckets per decade of the log-scale x axis.
const BUCKETS_PER_DECADE: u32 = 10;

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
struct HistogramSeries {
    name: String,
    counts: Vec<u64>,
}

/// Bucket counts of the plotted series over shared log-spaced edges (µs).
#[derive(Debug, Serialize)]
struct Histogram {
    bucket_edges_us: Vec<f64>,
    series: Vec<HistogramSeries>,
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
    let mut rows = vec![latency_row(
        WARM,
        "fnmesh sync invoke over the mesh",
        &mesh.fnmesh_sync_c1,
    )];
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
        "warm sandbox (pooled, in-process)",
        &mesh.sandbox_warm,
    ));
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
    let t = &mesh.fnmesh_throughput;
    let mut load = latency_row(
        LOAD,
        &format!("fnmesh sync invoke, c={}", t.concurrency),
        &t.latency,
    );
    load.ops_per_second = Some(t.per_second);
    rows.push(load);
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
    let t = &mesh.fnmesh_throughput;
    let r = t.per_second / TARGET_THROUGHPUT;
    out.push(Ratio {
        name: "throughput / target",
        value: r,
        unit: "x",
        target: Some(format!("≥ 1.0x ({TARGET_THROUGHPUT:.0}/s)")),
        met: Some(r >= 1.0),
        detail: format!(
            "{:.0}/s at c={}, {} errors, {} cold starts",
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

/// Shared log-spaced bucket edges covering every plotted sample, and each series' counts.
fn histogram(rows: &[Row]) -> Histogram {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in rows
        .iter()
        .filter(|r| r.plot)
        .flat_map(|r| r.samples_us.iter())
    {
        if v.is_finite() && *v > 0.0 {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (1.0, 10.0);
    }
    let first = lo.log10().floor() as i32;
    let last = (hi.log10().ceil() as i32).max(first + 1);
    let n = ((last - first) as u32 * BUCKETS_PER_DECADE) as usize;
    let edges: Vec<f64> = (0..=n)
        .map(|i| 10f64.powf(first as f64 + i as f64 / BUCKETS_PER_DECADE as f64))
        .collect();
    let series = rows
        .iter()
        .filter(|r| r.plot)
        .map(|r| {
            let mut counts = vec![0u64; n];
            for v in &r.samples_us {
                if v.is_finite() && *v > 0.0 {
                    let i = ((v.log10() - first as f64) * BUCKETS_PER_DECADE as f64).floor();
                    counts[(i.max(0.0) as usize).min(n - 1)] += 1;
                }
            }
            HistogramSeries {
                name: r.name.clone(),
                counts,
            }
        })
        .collect();
    Histogram {
        bucket_edges_us: edges,
        series,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A decade tick's label.
fn tick_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// One row per plotted series, sharing a log-scale latency axis; bars are each series' share
/// of samples per bucket (scaled to the row's tallest bar), with p50 and p99 marked.
fn svg(rows: &[Row], hist: &Histogram, subtitle: &str) -> String {
    const W: f64 = 1340.0;
    const LABEL_W: f64 = 360.0;
    const STATS_W: f64 = 230.0;
    const TOP: f64 = 100.0;
    const ROW_H: f64 = 62.0;
    const GAP: f64 = 10.0;
    const AXIS_H: f64 = 70.0;
    let plotted: Vec<&Row> = rows.iter().filter(|r| r.plot).collect();
    let x0 = LABEL_W;
    let x1 = W - STATS_W;
    let height = TOP + plotted.len() as f64 * (ROW_H + GAP) + AXIS_H;
    let edges = &hist.bucket_edges_us;
    let (lmin, lmax) = (edges[0].log10(), edges[edges.len() - 1].log10());
    let x = |us: f64| x0 + (us.max(edges[0]).log10() - lmin) / (lmax - lmin) * (x1 - x0);
    let color = |name: &str| {
        if name.starts_with("fnmesh") {
            "#d9480f"
        } else if name.starts_with("crun") {
            "#5f3dc4"
        } else if name.starts_with("bare") {
            "#868e96"
        } else if name.starts_with("warm sandbox") {
            "#2b8a3e"
        } else if name.contains("JetStream") {
            "#0b7285"
        } else if name.contains("NATS") {
            "#1098ad"
        } else {
            "#1c7ed6"
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="20" y="32" font-size="22" font-weight="bold" fill="#212529">fnmesh bench all: latency distribution per contender (log scale)</text>
<text x="20" y="56" font-size="14" fill="#495057">{}</text>"##,
        esc(subtitle)
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#495057" text-anchor="end">bars: share of the series' samples per bucket (10 per decade), tallest = row height</text>"##,
        x1,
        TOP - 14.0
    );
    let bottom = TOP + plotted.len() as f64 * (ROW_H + GAP);
    // Grid: decades solid, 2× and 5× dotted.
    let decades = (lmax - lmin).round() as i32;
    for d in 0..=decades {
        let base = 10f64.powf(lmin + d as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#adb5bd" stroke-width="1"/>
<text x="{0:.1}" y="{2:.1}" font-size="14" fill="#212529" text-anchor="middle">{3}</text>"##,
            x(base),
            bottom + 6.0,
            bottom + 24.0,
            esc(&tick_label(base))
        );
        if d < decades {
            for m in [2.0, 5.0] {
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#dee2e6" stroke-width="1" stroke-dasharray="2,3"/>"##,
                    x(base * m),
                    bottom + 3.0
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{x0}" y1="{bottom:.1}" x2="{x1}" y2="{bottom:.1}" stroke="#212529" stroke-width="1.5"/>
<text x="{:.1}" y="{:.1}" font-size="15" fill="#212529" text-anchor="middle">latency per call (log scale)</text>"##,
        (x0 + x1) / 2.0,
        bottom + 50.0
    );
    let mut group = "";
    for (i, (row, series)) in plotted.iter().zip(&hist.series).enumerate() {
        let top = TOP + i as f64 * (ROW_H + GAP);
        let base_y = top + ROW_H;
        let c = color(&row.name);
        if row.group != group {
            group = row.group;
            let _ = writeln!(
                s,
                r##"<line x1="20" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#495057" stroke-width="1"/>"##,
                top - GAP / 2.0,
                W - 20.0
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{top:.1}" width="{:.1}" height="{ROW_H}" fill="#f8f9fa"/>
<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold" fill="{c}" text-anchor="end">{}</text>
<text x="{:.1}" y="{:.1}" font-size="12" fill="#868e96" text-anchor="end">{}</text>"##,
            x1 - x0,
            x0 - 12.0,
            top + ROW_H / 2.0,
            esc(row.name.trim()),
            x0 - 12.0,
            top + ROW_H / 2.0 + 17.0,
            esc(group.split(" (").next().unwrap_or(group)),
        );
        let total: u64 = series.counts.iter().sum();
        let peak = series.counts.iter().copied().max().unwrap_or(0);
        if total > 0 && peak > 0 {
            for (b, &count) in series.counts.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let h = (count as f64 / peak as f64 * (ROW_H - 4.0)).max(1.5);
                let (bx0, bx1) = (x(edges[b]), x(edges[b + 1]));
                let _ = writeln!(
                    s,
                    r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{c}" fill-opacity="0.8"><title>{} – {}: {count} of {total}</title></rect>"##,
                    bx0 + 0.5,
                    base_y - h,
                    (bx1 - bx0 - 1.0).max(1.0),
                    esc(&fmt_us(edges[b])),
                    esc(&fmt_us(edges[b + 1])),
                );
            }
        }
        // p50 (solid) and p99 (dashed) markers.
        let mut marker = |us: f64, dash: &str, label: &str, label_y: f64| {
            if us.is_finite() {
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#212529" stroke-width="2" {dash}/>
<text x="{3:.1}" y="{4:.1}" font-size="11" fill="#212529" stroke="#ffffff" stroke-width="3" paint-order="stroke">{label}</text>"##,
                    x(us),
                    top + 2.0,
                    base_y,
                    x(us) + 3.0,
                    label_y
                );
            }
        };
        marker(row.p50_us, "", "p50", top + 12.0);
        if let Some(p99) = row.p99_us {
            marker(p99, r#"stroke-dasharray="4,3""#, "p99", top + 26.0);
        }
        let _ = writeln!(
            s,
            r##"<text x="{0:.1}" y="{1:.1}" font-size="14" fill="#212529">p50 {2}</text>
<text x="{0:.1}" y="{3:.1}" font-size="14" fill="#212529">p99 {4}</text>
<text x="{0:.1}" y="{5:.1}" font-size="12" fill="#868e96">n = {6}{7}</text>"##,
            x1 + 14.0,
            top + 18.0,
            esc(&fmt_us(row.p50_us)),
            top + 36.0,
            esc(&row.p99_us.map_or_else(|| "n/a".into(), fmt_us)),
            top + 53.0,
            row.n,
            row.ops_per_second
                .map_or_else(String::new, |v| format!(", {v:.0}/s")),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Renders the SVG next to it as PNG with `rsvg-convert`, when installed.
fn render_png(svg: &Path) -> Result<Option<PathBuf>> {
    let Some(tool) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("rsvg-convert"))
            .find(|p| p.is_file())
    }) else {
        return Ok(None);
    };
    let png = svg.with_extension("png");
    let out = std::process::Command::new(tool)
        .args(["--format", "png", "--background-color", "white", "-o"])
        .arg(&png)
        .arg(svg)
        .output()
        .context("running rsvg-convert")?;
    ensure!(
        out.status.success(),
        "rsvg-convert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(png))
}
