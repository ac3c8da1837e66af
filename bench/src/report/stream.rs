//! The stream path (issue 11): Envoy's CPU per relayed SSE message without
//! and with the sidestream filter, alternated in rounds of one run.
//!
//! Result files (written by `scripts/bench.sh stream`, each
//! `sidestream-bench fanout --server-pid <Envoy>` through Envoy, one step):
//! `stream-<none|sidestream>-r<round>.json` (the two Envoys one after the
//! other) and `stream-together-<none|sidestream>-r<round>.json` (both at
//! once, half the subscribers each).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::filter_rounds::median;

/// The variants in report order: (file name part, label).
const VARIANTS: [(&str, &str); 3] = [
    ("none", "no filter"),
    ("empty-wasm", "empty Rust Wasm filter"),
    ("sidestream", "sidestream filter"),
];

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

fn read(dir: &Path, prefix: &str, variant: &str, round: u32) -> Option<Run> {
    let bytes = std::fs::read(dir.join(format!("{prefix}{variant}-r{round}.json"))).ok()?;
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

/// The runs one after the other (ABBA order within pairs of rounds).
pub fn table(dir: &Path) -> String {
    table_of(
        dir,
        "stream-",
        "Stream-path benchmark (one Envoy after the other)",
    )
}

/// The runs with both Envoys at once.
pub fn together_table(dir: &Path) -> String {
    table_of(
        dir,
        "stream-together-",
        "Stream-path benchmark (both Envoys at once)",
    )
}

/// One row per round and variant, then the filter's added CPU per message:
/// each round's own ratio, and their median.
fn table_of(dir: &Path, prefix: &str, what: &str) -> String {
    let mut rounds = Vec::new();
    for round in 1..=99u32 {
        let runs = VARIANTS.map(|(v, _)| read(dir, prefix, v, round));
        if runs.iter().all(Option::is_none) {
            break;
        }
        rounds.push((round, runs));
    }
    if rounds.is_empty() {
        return format!("_{what}: not measured in this run (no result file)._\n");
    }
    // Variants this table has at all (the empty filter runs side by side only).
    let present: Vec<bool> = (0..VARIANTS.len())
        .map(|i| rounds.iter().any(|(_, runs)| runs[i].is_some()))
        .collect();
    let mut s = String::from(
        "| round | variant | subscribers × messages/s | relayed | loss | p99 publish→receive (ms) | Envoy CPU per relayed message (µs) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (round, runs) in &rounds {
        for (i, ((_, label), run)) in VARIANTS.iter().zip(runs).enumerate() {
            if !present[i] {
                continue;
            }
            let Some(run) = run else {
                let _ = writeln!(s, "| {round} | {label} | – | – | – | – | – |");
                continue;
            };
            let loss = if run.expected > 0 {
                100.0 * (run.expected.saturating_sub(run.delivered)) as f64 / run.expected as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "| {round} | {label} | {} × {:.0}/s | {} | {loss:.3}% | {} | {} |",
                run.subscribers,
                run.rate,
                run.delivered,
                run.p99_ms.map_or("–".to_owned(), |p| format!("{p:.1}")),
                run.cpu_us.map_or("–".to_owned(), |c| format!("{c:.2}")),
            );
        }
    }
    let cpu = |runs: &[Option<Run>; 3], i: usize| runs[i].as_ref().and_then(|r| r.cpu_us);
    // Each Wasm variant's added CPU against the round's own no-filter run.
    let added = |i: usize| -> Vec<(u32, f64)> {
        rounds
            .iter()
            .filter_map(|(round, runs)| Some((*round, cpu(runs, i)? / cpu(runs, 0)? - 1.0)))
            .collect()
    };
    let medians: Vec<String> = (0..VARIANTS.len())
        .filter(|i| present[*i])
        .map(|i| {
            let m = median(rounds.iter().filter_map(|(_, runs)| cpu(runs, i)).collect());
            format!(
                "{} {}",
                VARIANTS[i].1,
                m.map_or("–".to_owned(), |v| format!("{v:.2} µs"))
            )
        })
        .collect();
    let side = added(2);
    if !side.is_empty() {
        let each: Vec<String> = side
            .iter()
            .map(|(round, a)| format!("round {round}: {:+.2}%", 100.0 * a))
            .collect();
        let _ = writeln!(
            s,
            "\nThe filter's added Envoy CPU per relayed message, each round against its own no-filter run: \
             {}; median **{:+.2}%** (target: within 0.5%).",
            each.join(", "),
            100.0 * median(side.iter().map(|(_, a)| *a).collect()).unwrap_or(f64::NAN),
        );
    }
    let empty = added(1);
    if !empty.is_empty() {
        let _ = writeln!(
            s,
            "The empty Rust Wasm filter's (the same exports, no work), the same way: median **{:+.2}%**.",
            100.0 * median(empty.iter().map(|(_, a)| *a).collect()).unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(s, "Medians of the rounds: {}.", medians.join(", "));
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
            t.contains("Medians of the rounds: no filter 18.00 µs, sidestream filter 18.26 µs."),
            "{t}"
        );
        assert!(!t.contains("empty Rust Wasm filter"), "{t}");
        // A round missing one variant shows as a row of dashes, no ratio.
        w("stream-none-r4.json", run(18.0, 1_000_000));
        let t = table(dir.path());
        assert!(
            t.contains("| 4 | sidestream filter | – | – | – | – | – |"),
            "{t}"
        );
        assert!(!t.contains("round 4:"), "{t}");
        // Side by side: its own files.
        assert!(together_table(dir.path()).contains("both Envoys at once): not measured"));
        w("stream-together-none-r1.json", run(18.0, 1_000_000));
        w("stream-together-sidestream-r1.json", run(18.036, 1_000_000));
        w("stream-together-empty-wasm-r1.json", run(18.018, 1_000_000));
        let t = together_table(dir.path());
        assert!(t.contains("round 1: +0.20%; median **+0.20%**"), "{t}");
        assert!(
            t.contains("no work), the same way: median **+0.10%**"),
            "{t}"
        );
        assert!(
            t.contains("| 1 | empty Rust Wasm filter | 1000 × 50/s |"),
            "{t}"
        );
    }
}
