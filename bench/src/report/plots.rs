//! SVG plots (plotters, SVG backend: text is emitted as SVG `<text>`, no font
//! library is needed).

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use super::push::{self, BASELINE, TARGET_CPU_RATIO, TARGET_IDLE_KIB};
use super::{first_step, num, Results, SERVERS, VARIANTS};

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
];

type DrawResult = anyhow::Result<()>;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Draws every plot it has data for; returns the file names written.
pub fn draw_all(r: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    let mut one = |name: &str, f: &dyn Fn(&Path) -> DrawResult, has: bool| -> anyhow::Result<()> {
        if has {
            f(&dir.join(name))?;
            written.push(name.to_owned());
        }
        Ok(())
    };
    one(
        "filter-throughput.svg",
        &|p| filter_throughput(r, p),
        !r.throughput.is_empty(),
    )?;
    one(
        "filter-latency.svg",
        &|p| filter_latency(r, p),
        !r.latency.is_empty(),
    )?;
    one(
        "propagation.svg",
        &|p| propagation(r, p),
        r.propagation.is_some(),
    )?;
    one(
        "push-memory.svg",
        &|p| push_memory(r, p),
        !r.memory.is_empty(),
    )?;
    one(
        "push-throughput.svg",
        &|p| push_throughput(r, p),
        !r.saturation.is_empty(),
    )?;
    one(
        "push-latency-vs-subscribers.svg",
        &|p| push_latency(r, p),
        !r.sweep.is_empty(),
    )?;
    one(
        "push-cpu-vs-rate.svg",
        &|p| push_cpu_vs_rate(r, p),
        !r.rates.is_empty(),
    )?;
    Ok(written)
}

/// Horizontal-label bar chart: one bar per (label, value), optionally with a
/// labelled horizontal target line.
fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
    target: Option<(String, f64)>,
) -> DrawResult {
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(target.iter().map(|t| t.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let n = bars.len();
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        // Segments 0..=n-1: one per bar, no empty slot at the end.
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    for (i, (_, v)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.mix(0.8).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format_value(*v),
                (SegmentValue::CenterOf(i), *v + max * 0.02),
                ("sans-serif", 15),
            )))
            .map_err(err)?;
    }
    if let Some((label, v)) = target {
        chart
            .draw_series(DashedLineSeries::new(
                [(SegmentValue::Exact(0), v), (SegmentValue::Last, v)],
                8,
                5,
                BLACK.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (SegmentValue::Exact(0), v + max * 0.06),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Axis labels like 50k, 1.2M.
fn format_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn filter_throughput(r: &Results, path: &Path) -> DrawResult {
    let data: Vec<(String, f64)> = VARIANTS
        .iter()
        .filter_map(|(k, label)| r.throughput.get(*k).map(|t| (label.to_string(), t.rps)))
        .collect();
    let target = r
        .throughput
        .get("none")
        .filter(|t| t.rps > 0.0)
        .map(|t| ("target: 93% of no filter".to_owned(), 0.93 * t.rps));
    bars(
        path,
        "Envoy (1 worker) throughput at saturation",
        "requests/s",
        &data,
        target,
    )
}

fn filter_latency(r: &Results, path: &Path) -> DrawResult {
    let rows: Vec<(String, f64, f64)> = VARIANTS
        .iter()
        .filter_map(|(k, label)| {
            r.latency.get(*k).map(|l| {
                (
                    label.to_string(),
                    num(l, &["latency", "p50_ms"]).unwrap_or(0.0),
                    num(l, &["latency", "p99_ms"]).unwrap_or(0.0),
                )
            })
        })
        .collect();
    let rate = r
        .latency
        .values()
        .next()
        .and_then(|l| num(l, &["target_rate"]))
        .unwrap_or(0.0);
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = rows.iter().map(|r| r.2).fold(0.0, f64::max).max(1e-6) * 1.2;
    let n = rows.len();
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency at a fixed {rate:.0} req/s (p50 left, p99 right)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("latency (ms)")
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    for (i, (_, p50, p99)) in rows.iter().enumerate() {
        let x = i as f64;
        for (j, (v, c)) in [(*p50, COLORS[0]), (*p99, COLORS[1])].iter().enumerate() {
            let x0 = x + 0.15 + 0.35 * j as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.33, *v)],
                    c.mix(0.8).filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (x0, *v + max * 0.02),
                    ("sans-serif", 13),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

fn propagation(r: &Results, path: &Path) -> DrawResult {
    let Some(p) = &r.propagation else {
        return Ok(());
    };
    let mut samples: Vec<f64> = p
        .get("samples_ms")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    samples.sort_by(f64::total_cmp);
    let n = samples.len().max(1) as f64;
    let max = samples.last().copied().unwrap_or(1.0).max(1e-3) * 1.1;
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "etcd put → applied by every filter instance (CDF)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction of updates")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            samples
                .iter()
                .enumerate()
                .map(|(i, v)| (*v, (i + 1) as f64 / n)),
            COLORS[0].stroke_width(2),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn push_memory(r: &Results, path: &Path) -> DrawResult {
    let data: Vec<(String, f64)> = SERVERS
        .iter()
        .filter_map(|(k, label)| {
            r.memory
                .get(*k)
                .and_then(|m| num(m, &["rss_per_connection_bytes"]))
                .map(|v| (label.to_string(), v / 1024.0))
        })
        .collect();
    let conns = r
        .memory
        .values()
        .next()
        .and_then(|m| num(m, &["connections_requested"]))
        .unwrap_or(0.0);
    bars(
        path,
        &format!("Server RSS per idle SSE connection ({conns:.0} connections)"),
        "KiB of server RSS per connection",
        &data,
        Some((
            format!("target for sidestream-push: < {TARGET_IDLE_KIB} KiB"),
            TARGET_IDLE_KIB,
        )),
    )
}

/// Draws one series as a line with a round marker at each point, labelled
/// in the legend.
fn line_with_markers<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    label: &str,
    colour: RGBColor,
    pts: &[(f64, f64)],
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    chart
        .draw_series(pts.iter().map(|p| Circle::new(*p, 4, colour.filled())))
        .map_err(err)?;
    Ok(())
}

/// Draws the series legend (upper left) and writes the plot out.
fn legend_and_present<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn push_throughput(r: &Results, path: &Path) -> DrawResult {
    let series: Vec<(&str, Vec<(f64, f64)>)> = SERVERS
        .iter()
        .filter_map(|(k, label)| {
            r.saturation.get(*k).map(|m| {
                let pts = m
                    .get("steps")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                (
                                    num(s, &["offered_per_s"]).unwrap_or(0.0),
                                    num(s, &["delivered_per_s"]).unwrap_or(0.0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (*label, pts)
            })
        })
        .collect();
    // Log-log: the ladder spans two to three orders of magnitude.
    let positive = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().flat_map(|(a, b)| [*a, *b]))
            .filter(|v| *v > 0.0)
    };
    let max = positive().fold(1.0, f64::max) * 1.5;
    let min = positive().fold(max, f64::min) / 1.5;
    let subs = r
        .saturation
        .values()
        .next()
        .and_then(|m| num(m, &["connected"]))
        .unwrap_or(0.0);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Fan-out to {subs:.0} SSE subscribers: delivered vs offered (log-log)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((min..max).log_scale(), (min..max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries/s (publish rate × subscribers)")
        .y_desc("delivered messages/s")
        .x_label_formatter(&|v| format_rate(*v))
        .y_label_formatter(&|v| format_rate(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(min, min), (max, max)],
            6,
            4,
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(err)?
        .label("delivered = offered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (i, (label, pts)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(a, b)| *a > 0.0 && *b > 0.0)
            .collect();
        line_with_markers(&mut chart, label, COLORS[i % COLORS.len()], &pts)?;
    }
    legend_and_present(&mut chart, &root)
}

fn push_latency(r: &Results, path: &Path) -> DrawResult {
    let mut series = Vec::new();
    for (i, (k, label)) in SERVERS.iter().enumerate() {
        let Some(by_n) = r.sweep.get(*k) else {
            continue;
        };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for (n, m) in by_n {
            let Some(st) = first_step(m) else {
                continue;
            };
            p50.push((*n as f64, num(st, &["latency", "p50_ms"]).unwrap_or(0.0)));
            p99.push((*n as f64, num(st, &["latency", "p99_ms"]).unwrap_or(0.0)));
        }
        series.push((format!("{label} p50"), p50, COLORS[i % COLORS.len()], false));
        series.push((format!("{label} p99"), p99, COLORS[i % COLORS.len()], true));
    }
    let max_x = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.05;
    let max_y = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.15;
    let rate = r
        .sweep
        .values()
        .flat_map(|m| m.values())
        .next()
        .and_then(first_step)
        .and_then(|s| num(s, &["publish_rate"]))
        .unwrap_or(0.0);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Publish-to-receive latency vs subscribers ({rate:.0} msgs/s published)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("SSE subscribers on one topic")
        .y_desc("publish-to-receive latency (ms)")
        .draw()
        .map_err(err)?;
    for (label, pts, c, dashed) in &series {
        let c = *c;
        let style = if *dashed {
            c.mix(0.6).stroke_width(2)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|p| {
                if *dashed {
                    EmptyElement::at(*p) + TriangleMarker::new((0, 0), 5, c.filled())
                } else {
                    EmptyElement::at(*p) + TriangleMarker::new((0, 0), 0, c.filled())
                }
            }))
            .map_err(err)?;
    }
    legend_and_present(&mut chart, &root)
}

/// One server's line: (index in SERVERS, label, points).
type Line<'a> = (usize, &'a str, Vec<(f64, f64)>);

/// Server CPU per delivery against message rate (the rate sweep), one line
/// per server, and the target line at 0.8 × Nchan's.
fn push_cpu_vs_rate(r: &Results, path: &Path) -> DrawResult {
    let series: Vec<Line> = SERVERS
        .iter()
        .enumerate()
        .filter_map(|(i, (k, label))| {
            let m = r.rates.get(*k)?;
            let pts: Vec<(f64, f64)> = m
                .get("steps")
                .and_then(Value::as_array)?
                .iter()
                .filter_map(|st| {
                    Some((
                        num(st, &["publish_rate"])?,
                        num(st, &["server_cpu_us_per_delivery"])?,
                    ))
                })
                .filter(|(rate, _)| *rate > 0.0)
                .collect();
            Some((i, *label, pts))
        })
        .collect();
    let rates = push::sweep_rates(r);
    let min_x = rates.first().copied().unwrap_or(1.0).max(1e-3) / 1.3;
    let max_x = rates.last().copied().unwrap_or(1.0).max(min_x * 2.0) * 1.3;
    let max_y = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.2;
    let subs = r
        .rates
        .values()
        .filter_map(|m| num(m, &["connected"]))
        .fold(0.0, f64::max);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Server CPU per delivery vs message rate ({subs:.0} SSE subscribers)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((min_x..max_x).log_scale(), 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("messages published per second (log)")
        .y_desc("server CPU per delivery (µs, user + system)")
        .x_label_formatter(&|v| format_rate(*v))
        .draw()
        .map_err(err)?;
    if let Some((_, _, base)) = series.iter().find(|s| SERVERS[s.0].0 == BASELINE) {
        chart
            .draw_series(DashedLineSeries::new(
                base.iter().map(|(x, y)| (*x, y * TARGET_CPU_RATIO)),
                8,
                5,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!(
                "target for sidestream-push: {TARGET_CPU_RATIO} × Nchan"
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    for (i, label, pts) in &series {
        line_with_markers(&mut chart, label, COLORS[i % COLORS.len()], pts)?;
    }
    legend_and_present(&mut chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_vs_rate_plot_draws_every_server_and_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let run = |us: [f64; 3]| {
            let steps: Vec<String> = [1.0, 5.0, 40.0]
                .iter()
                .zip(us)
                .map(|(rate, us)| {
                    format!(r#"{{"publish_rate": {rate}, "server_cpu_us_per_delivery": {us}}}"#)
                })
                .collect();
            format!(r#"{{"connected": 10000, "steps": [{}]}}"#, steps.join(","))
        };
        let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        w("fanout-sidestream-epoll-rates.json", run([12.0, 9.0, 6.0]));
        w("fanout-sidestream-uring-rates.json", run([9.0, 7.0, 5.0]));
        w("fanout-nchan-rates.json", run([11.0, 10.0, 10.5]));
        let r = super::super::load(dir.path()).unwrap();
        let written = draw_all(&r, dir.path()).unwrap();
        assert_eq!(written, vec!["push-cpu-vs-rate.svg"]);
        let svg = std::fs::read_to_string(dir.path().join("push-cpu-vs-rate.svg")).unwrap();
        for text in [
            "10000 SSE subscribers",
            "sidestream-push (epoll)",
            "sidestream-push (io_uring)",
            "Nchan",
            "0.8 × Nchan",
        ] {
            assert!(svg.contains(text), "{text} missing from the plot");
        }
        // One marker per step and server.
        assert_eq!(svg.matches("<circle").count(), 9, "{svg}");
    }
}
