//! The filter benchmark round by round (issue 11): each round's throughput
//! at saturation and Envoy's CPU per request at the fixed rate, for every
//! variant, with the ratios the targets are stated in, computed within each
//! round (variants of a round run back to back) and then their median.
//!
//! Result files (written by `scripts/bench.sh filter`):
//! `filter-<variant>-wrk-r<round>.txt` (wrk's output) and
//! `filter-<variant>-latency-r<round>.json` (`sidestream-bench latency
//! --server-pid <Envoy>`, with `server_cpu_us_per_request`).

use std::fmt::Write as _;
use std::path::Path;

use super::{parse_wrk, VARIANTS};

/// One variant's measurements in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    /// Requests per second at saturation (wrk).
    rps: Option<f64>,
    /// Envoy's CPU microseconds per request at the fixed rate.
    cpu_us: Option<f64>,
}

/// Rounds found, each with its variants' measurements (in [`VARIANTS`] order).
fn rounds(dir: &Path) -> Vec<(u32, [Measured; VARIANTS.len()])> {
    let mut found = Vec::new();
    for round in 1..=99u32 {
        let mut row = [Measured::default(); VARIANTS.len()];
        for (i, (v, _)) in VARIANTS.iter().enumerate() {
            row[i].rps = std::fs::read_to_string(dir.join(format!("filter-{v}-wrk-r{round}.txt")))
                .ok()
                .map(|text| parse_wrk(&text).rps)
                .filter(|rps| *rps > 0.0);
            row[i].cpu_us = std::fs::read(dir.join(format!("filter-{v}-latency-r{round}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|j| j.get("server_cpu_us_per_request")?.as_f64())
                .filter(|us| *us > 0.0);
        }
        if row.iter().all(|m| m.rps.is_none() && m.cpu_us.is_none()) {
            break;
        }
        found.push((round, row));
    }
    found
}

/// The median of the finite values (the mean of the middle two for an even count).
pub(super) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn cell(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "–".to_owned(), format)
}

/// Index of a variant in [`VARIANTS`].
fn at(variant: &str) -> usize {
    VARIANTS
        .iter()
        .position(|(v, _)| *v == variant)
        .unwrap_or(0)
}

/// The per-round table and the medians of the per-round ratios.
pub fn table(dir: &Path) -> String {
    let rounds = rounds(dir);
    if rounds.is_empty() {
        return "_Filter rounds: not measured in this run (no result file)._\n".to_owned();
    }
    let (none, side, lua) = (at("none"), at("sidestream"), at("lua"));
    let mut s = String::from("| round | measure |");
    for (_, label) in VARIANTS {
        let _ = write!(s, " {label} |");
    }
    s.push_str(" sidestream vs no filter | sidestream vs Lua |\n| ---: | --- |");
    for _ in VARIANTS {
        s.push_str(" ---: |");
    }
    s.push_str(" ---: | ---: |\n");
    // Ratios as throughput ratios: for CPU per request, bare / filter.
    let mut ratios: [Vec<f64>; 4] = Default::default();
    for (round, row) in &rounds {
        let rps = |i: usize| row[i].rps;
        let cpu = |i: usize| row[i].cpu_us;
        let by_rps = |a: usize, b: usize| Some(rps(a)? / rps(b)?);
        let by_cpu = |a: usize, b: usize| Some(cpu(b)? / cpu(a)?);
        let lines = [
            (
                "req/s at saturation",
                row.map(|m| cell(m.rps, |v| format!("{v:.0}"))),
                by_rps(side, none),
                by_rps(side, lua),
            ),
            (
                "Envoy CPU µs per request at the fixed rate",
                row.map(|m| cell(m.cpu_us, |v| format!("{v:.2}"))),
                by_cpu(side, none),
                by_cpu(side, lua),
            ),
        ];
        for (k, (measure, cells, vs_none, vs_lua)) in lines.into_iter().enumerate() {
            let _ = write!(s, "| {round} | {measure} |");
            for c in cells {
                let _ = write!(s, " {c} |");
            }
            let _ = writeln!(
                s,
                " {} | {} |",
                cell(vs_none, |r| format!("{:.1}%", 100.0 * r)),
                cell(vs_lua, |r| format!("{r:.2}×"))
            );
            if let Some(r) = vs_none {
                ratios[2 * k].push(r);
            }
            if let Some(r) = vs_lua {
                ratios[2 * k + 1].push(r);
            }
        }
    }
    let [rps_none, rps_lua, cpu_none, cpu_lua] = ratios.map(median);
    // Where the CPU goes, variant by variant (medians of the rounds).
    let cpu: Vec<Option<f64>> = (0..VARIANTS.len())
        .map(|i| median(rounds.iter().filter_map(|(_, row)| row[i].cpu_us).collect()))
        .collect();
    let mut steps = Vec::new();
    let mut previous: Option<f64> = None;
    for ((_, label), us) in VARIANTS.iter().zip(&cpu) {
        let Some(us) = us else { continue };
        let added = match previous {
            Some(p) if *label != "Lua equivalent" => format!(" ({:+.2} µs)", us - p),
            _ => String::new(),
        };
        steps.push(format!("{label} {us:.2} µs{added}"));
        if *label != "Lua equivalent" {
            previous = Some(*us);
        }
    }
    let _ = writeln!(
        s,
        "\nMedian of the rounds' own ratios: throughput at saturation **{}** of no filter and **{}** the Lua \
         equivalent's; from Envoy's CPU per request at the fixed rate (no filter's ÷ the filter's, the \
         throughput ratio a saturated Envoy core would give) **{}** and **{}** \
         (targets: ≥ 85% of no filter, ≥ 1.2× Lua).",
        cell(rps_none, |r| format!("{:.1}%", 100.0 * r)),
        cell(rps_lua, |r| format!("{r:.2}×")),
        cell(cpu_none, |r| format!("{:.1}%", 100.0 * r)),
        cell(cpu_lua, |r| format!("{r:.2}×")),
    );
    let _ = writeln!(
        s,
        "\nEnvoy's CPU per request at the fixed rate, median of the rounds, each Wasm variant against \
         the one before it: {}.",
        steps.join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_ratios_and_medians() {
        let dir = tempfile::tempdir().unwrap();
        assert!(table(dir.path()).contains("not measured"));
        let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        // (round, variant, req/s, µs per request)
        for (round, v, rps, us) in [
            (1, "none", 40000.0, 25.0),
            (1, "empty-wasm", 36000.0, 27.0),
            (1, "sidestream", 34000.0, 29.0),
            (1, "lua", 28000.0, 36.25),
            (2, "none", 38000.0, 26.0),
            (2, "sidestream", 30400.0, 32.5),
            (2, "lua", 27000.0, 35.0),
            (3, "none", 40000.0, 25.0),
            (3, "sidestream", 36000.0, 27.5),
            (3, "lua", 30000.0, 33.0),
        ] {
            w(
                &format!("filter-{v}-wrk-r{round}.txt"),
                format!("Requests/sec:  {rps}\n"),
            );
            w(
                &format!("filter-{v}-latency-r{round}.json"),
                format!(r#"{{"server_cpu_us_per_request": {us}}}"#),
            );
        }
        let t = table(dir.path());
        assert!(
            t.contains(
                "| 1 | req/s at saturation | 40000 | 36000 | – | 34000 | 28000 | 85.0% | 1.21× |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 1 | Envoy CPU µs per request at the fixed rate | 25.00 | 27.00 | – | 29.00 | 36.25 | 86.2% | 1.25× |"),
            "{t}"
        );
        // Round 2 has no empty-filter result.
        assert!(
            t.contains(
                "| 2 | req/s at saturation | 38000 | – | – | 30400 | 27000 | 80.0% | 1.13× |"
            ),
            "{t}"
        );
        // Throughput ratios to no filter 85%, 80%, 90%: median 85%; to Lua
        // 1.21, 1.13, 1.20: median 1.20. CPU: 86.2%, 80.0%, 90.9% and
        // 1.25, 1.08, 1.20.
        assert!(
            t.contains("**85.0%** of no filter and **1.20×** the Lua"),
            "{t}"
        );
        assert!(t.contains("**86.2%** and **1.20×**"), "{t}");
        // Medians: none 25.0, empty 27.0 (one round), sidestream 29.0, Lua 35.0.
        assert!(
            t.contains("no filter 25.00 µs, empty Rust Wasm filter 27.00 µs (+2.00 µs), sidestream filter 29.00 µs (+2.00 µs), Lua equivalent 35.00 µs."),
            "{t}"
        );
    }
}
