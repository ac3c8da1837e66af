//! The stream path (issue 11): Envoy's CPU per relayed SSE message without
//! and with the sidestream filter, alternated in rounds of one run.
//!
//! Result files (written by `scripts/bench.sh stream`):
//! `stream-<none|sidestream>-r<round>.json` (`sidestream-bench fanout
//! --server-pid <Envoy>` through Envoy, one step).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::filter_rounds::median;

/// The variants in report order: (file name part, label).
const VARIANTS: [(&str, &str); 2] = [("none", "no filter"), ("sidestream", "sidestream filter")];

/// What one variant's run in one round gave.
#[derive(Debug, Clone, Default)]
struct Run {
    subscribers: u64,
    rate: f64,
    delivered: u64,
    expected: u64,
    p99_ms: Option<f64>,
    /// Envoy's CPU µs per relayed message.
    cpu_us: Option<f64>,
}

fn read(dir: &Path, variant: &str, round: u32) -> Option<Run> {
    let bytes = std::fs::read(dir.join(format!("stream-{variant}-r{round}.json"))).ok()?;
    let r: Value = serde_json::from_slice(&bytes).ok()?;
    let step = r.get("steps")?.as_array()?.first()?;
    Some(Run {
        subscribers: r.get("connected")?.as_u64()?,
        rate: step.get("publish_rate")?.as_f64()?,
        delivered: step.get("delivered")?.as_u64()?,
        expected: step.get("expected")?.as_u64()?,
        p99_ms: step.get("latency")?.get("p99_ms").and_then(Value::as_f64),
        cpu_us: step
            .get("server_cpu_us_per_delivery")
            .and_then(Value::as_f64),
    })
}

/// One row per round and variant, then the filter's added CPU per message:
/// each round's own ratio, and their median.
pub fn table(dir: &Path) -> String {
    let mut rows = String::new();
    let mut added = Vec::new();
    let mut per_variant: [Vec<f64>; 2] = Default::default();
    for round in 1..=99u32 {
        let runs = VARIANTS.map(|(v, _)| read(dir, v, round));
        if runs.iter().all(Option::is_none) {
            break;
        }
        for ((_, label), run) in VARIANTS.iter().zip(&runs) {
            let Some(run) = run else {
                let _ = writeln!(rows, "| {round} | {label} | – | – | – | – | – |");
                continue;
            };
            let loss = if run.expected > 0 {
                100.0 * (run.expected.saturating_sub(run.delivered)) as f64 / run.expected as f64
            } else {
                0.0
            };
            let _ = writeln!(
                rows,
                "| {round} | {label} | {} × {:.0}/s | {} | {loss:.3}% | {} | {} |",
                run.subscribers,
                run.rate,
                run.delivered,
                run.p99_ms.map_or("–".to_owned(), |p| format!("{p:.1}")),
                run.cpu_us.map_or("–".to_owned(), |c| format!("{c:.2}")),
            );
        }
        for (i, run) in runs.iter().enumerate() {
            if let Some(cpu) = run.as_ref().and_then(|r| r.cpu_us) {
                per_variant[i].push(cpu);
            }
        }
        if let [Some(none), Some(side)] = runs.map(|r| r.and_then(|r| r.cpu_us)) {
            added.push((round, side / none - 1.0));
        }
    }
    if rows.is_empty() {
        return "_Stream-path benchmark: not measured in this run (no result file)._\n".to_owned();
    }
    let mut s = String::from(
        "| round | variant | subscribers × messages/s | relayed | loss | p99 publish→receive (ms) | Envoy CPU per relayed message (µs) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    s.push_str(&rows);
    if !added.is_empty() {
        let each: Vec<String> = added
            .iter()
            .map(|(round, a)| format!("round {round}: {:+.2}%", 100.0 * a))
            .collect();
        let [none, side] = per_variant.map(median);
        let _ = writeln!(
            s,
            "\nThe filter's added Envoy CPU per relayed message, each round against its own no-filter run: \
             {}; median **{:+.2}%** (target: within 0.5%). Medians of the rounds: {} µs without the filter, \
             {} µs with it.",
            each.join(", "),
            100.0 * median(added.iter().map(|(_, a)| *a).collect()).unwrap_or(f64::NAN),
            none.map_or("–".to_owned(), |v| format!("{v:.2}")),
            side.map_or("–".to_owned(), |v| format!("{v:.2}")),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu: f64, delivered: u64) -> String {
        format!(
            r#"{{"connected": 1000, "steps": [{{"publish_rate": 50.0, "delivered": {delivered},
               "expected": 1000000, "latency": {{"p50_ms": 2.0, "p99_ms": 7.56, "max_ms": 20.0}},
               "server_cpu_us_per_delivery": {cpu}}}]}}"#
        )
    }

    #[test]
    fn rounds_and_the_median_added_cpu() {
        let dir = tempfile::tempdir().unwrap();
        assert!(table(dir.path()).contains("not measured"));
        let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        w("stream-none-r1.json", run(18.0, 1_000_000));
        w("stream-sidestream-r1.json", run(18.09, 999_000));
        w("stream-none-r2.json", run(18.4, 1_000_000));
        w("stream-sidestream-r2.json", run(18.4, 1_000_000));
        w("stream-none-r3.json", run(17.9, 1_000_000));
        w("stream-sidestream-r3.json", run(18.258, 1_000_000));
        let t = table(dir.path());
        assert!(
            t.contains("| 1 | sidestream filter | 1000 × 50/s | 999000 | 0.100% | 7.6 | 18.09 |"),
            "{t}"
        );
        assert!(
            t.contains("| 2 | no filter | 1000 × 50/s | 1000000 | 0.000% | 7.6 | 18.40 |"),
            "{t}"
        );
        // +0.50%, +0.00%, +2.00%: median +0.50%.
        assert!(
            t.contains("round 1: +0.50%, round 2: +0.00%, round 3: +2.00%; median **+0.50%**"),
            "{t}"
        );
        assert!(
            t.contains("18.00 µs without the filter, 18.26 µs with it"),
            "{t}"
        );
        // A round missing one variant shows as a row of dashes, no ratio.
        w("stream-none-r4.json", run(18.0, 1_000_000));
        let t = table(dir.path());
        assert!(
            t.contains("| 4 | sidestream filter | – | – | – | – | – |"),
            "{t}"
        );
        assert!(!t.contains("round 4:"), "{t}");
    }
}
