//! The latency histogram of `fnmesh bench all`: bucket counts over log-spaced edges, drawn as
//! an SVG (one row per contender), and a PNG when `rsvg-convert` is installed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::{fmt_us, Row};

/// Histogram buckets per decade of the log-scale x axis.
const BUCKETS_PER_DECADE: u32 = 10;

#[derive(Debug, Serialize)]
struct HistogramSeries {
    name: String,
    counts: Vec<u64>,
}

/// Bucket counts of the plotted series over shared log-spaced edges (µs).
#[derive(Debug, Serialize)]
pub(super) struct Histogram {
    bucket_edges_us: Vec<f64>,
    series: Vec<HistogramSeries>,
}

/// Shared log-spaced bucket edges covering every plotted sample, and each series' counts.
pub(super) fn histogram(rows: &[Row]) -> Histogram {
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
pub(super) fn svg(rows: &[Row], hist: &Histogram, subtitle: &str) -> String {
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
pub(super) fn render_png(svg: &Path) -> Result<Option<PathBuf>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &'static str, name: &str, samples_us: Vec<f64>, plot: bool) -> Row {
        Row {
            group,
            name: name.into(),
            n: samples_us.len(),
            p50_us: samples_us[samples_us.len() / 2],
            p99_us: Some(samples_us[samples_us.len() - 1]),
            ops_per_second: None,
            samples_us,
            plot,
        }
    }

    #[test]
    fn the_histogram_counts_every_sample_of_the_plotted_series_on_shared_decade_edges() {
        let rows = [
            row("sandbox", "warm", vec![120.0, 130.0, 900.0], true),
            row("mesh", "fnmesh c=1", vec![2_000.0, 4_000.0, 45_000.0], true),
            row("mesh", "not drawn", vec![1.0e9], false),
        ];
        let hist = histogram(&rows);
        // 100 µs .. 100 ms: three decades of ten buckets; the unplotted series widens nothing.
        assert_eq!(hist.bucket_edges_us.len(), 31);
        assert!((hist.bucket_edges_us[0] - 100.0).abs() < 1e-9);
        assert!((hist.bucket_edges_us[30] - 100_000.0).abs() < 1e-6);
        assert_eq!(hist.series.len(), 2);
        for (series, row) in hist.series.iter().zip(&rows) {
            assert_eq!(series.name, row.name);
            assert_eq!(series.counts.iter().sum::<u64>(), 3);
        }
        // Buckets are a tenth of a decade: 120 µs falls below 10^2.1 ≈ 125.9 µs, 130 µs above.
        assert_eq!(&hist.series[0].counts[..2], &[1, 1]);
    }

    #[test]
    fn the_svg_has_one_row_per_plotted_series_with_its_markers_and_escaped_names() {
        let rows = [
            row(
                "sandbox (warm)",
                "warm <pool>",
                vec![120.0, 130.0, 900.0],
                true,
            ),
            row("mesh", "fnmesh c=1", vec![2_000.0, 4_000.0, 45_000.0], true),
            row("mesh", "hidden", vec![5.0], false),
        ];
        let svg = svg(&rows, &histogram(&rows), "2 cores & more");
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("warm &lt;pool&gt;"));
        assert!(svg.contains("2 cores &amp; more"));
        assert!(svg.contains("fnmesh c=1"));
        assert!(!svg.contains("hidden"));
        // A p50 and a p99 marker per row; a bar (with its tooltip) per non-empty bucket.
        assert_eq!(svg.matches(">p50</text>").count(), 2);
        assert_eq!(svg.matches(">p99</text>").count(), 2);
        assert_eq!(svg.matches("<title>").count(), 6);
        // Decade ticks of the shared axis.
        for tick in [">100 µs<", ">1 ms<", ">10 ms<", ">100 ms<"] {
            assert!(svg.contains(tick), "{tick} missing");
        }
        // Every element opened is closed (no stray `<` from a name).
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(
            svg.matches("<title>").count(),
            svg.matches("</title></rect>").count()
        );
    }
}
