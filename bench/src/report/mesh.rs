//! The mesh-wide stream limits section (issue 9): stream-open times with a
//! mesh-scoped policy against an Envoy-scoped one, Redis commands per open,
//! and the reconnect storm's admissions against the limit.
//!
//! Result files (written by `scripts/bench.sh mesh`): `mesh-<scope>-<rate>.json`
//! (`sidestream-bench opens` at a rate), `mesh-<scope>-<rate>-redis.txt`
//! (`<calls> <eval calls> <eval usec>` of Redis's INFO commandstats before,
//! then after),
//! `mesh-<scope>-storm.json` and `mesh-storm-limit.txt`; [`cost`] reads the
//! files of the cost table.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

mod cost;
pub use cost::cost_table;

/// Policy scopes in report order: (file name part, label).
const SCOPES: [(&str, &str); 2] = [("envoy", "Envoy-scoped"), ("mesh", "mesh-scoped")];

fn read_json(dir: &Path, name: &str) -> Option<Value> {
    std::fs::read(dir.join(name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// A scope's open-rate runs: (file name part, label, (rate, result) by rate).
type ScopeRuns = (&'static str, &'static str, Vec<(u64, Value)>);

/// Open-rate runs found for `scope`, by rate.
fn rate_runs(dir: &Path, scope: &str) -> Vec<(u64, Value)> {
    let mut runs: Vec<(u64, Value)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let rate: u64 = name
                .strip_prefix(&format!("mesh-{scope}-"))?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((rate, read_json(dir, &name)?))
        })
        .collect();
    runs.sort_by_key(|(rate, _)| *rate);
    runs
}

/// Redis's work during a run (INFO commandstats, after minus before).
struct RedisDelta {
    /// Command calls, those inside scripts included.
    all: u64,
    /// EVAL/EVALSHA calls.
    scripts: u64,
    /// Microseconds Redis spent running them (not in results of older runs).
    script_usec: Option<u64>,
}

/// The file holds `<calls> <script calls> [<script usec>]` before, then after.
fn redis_delta(dir: &Path, scope: &str, rate: u64) -> Option<RedisDelta> {
    let text = std::fs::read_to_string(dir.join(format!("mesh-{scope}-{rate}-redis.txt"))).ok()?;
    let n: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let d = |after: u64, before: u64| after.saturating_sub(before);
    match n.as_slice() {
        [all0, eval0, all1, eval1] => Some(RedisDelta {
            all: d(*all1, *all0),
            scripts: d(*eval1, *eval0),
            script_usec: None,
        }),
        [all0, eval0, usec0, all1, eval1, usec1] => Some(RedisDelta {
            all: d(*all1, *all0),
            scripts: d(*eval1, *eval0),
            script_usec: Some(d(*usec1, *usec0)),
        }),
        _ => None,
    }
}

/// Stream opens that got the policy's fallback during a run (Envoy stats).
fn fallbacks(dir: &Path, scope: &str, run: &str) -> String {
    std::fs::read_to_string(dir.join(format!("mesh-{scope}-{run}-fallbacks.txt")))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or_else(|| "–".to_owned(), |n| n.to_string())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The open-time table, with Redis commands per open for the mesh scope.
pub fn open_table(dir: &Path) -> String {
    let runs: Vec<ScopeRuns> = SCOPES
        .iter()
        .map(|(scope, label)| (*scope, *label, rate_runs(dir, scope)))
        .collect();
    if runs.iter().all(|(_, _, r)| r.is_empty()) {
        return "*Mesh-wide limits benchmark: not measured in this report's run \
                (`scripts/bench.sh mesh report`).*\n"
            .to_owned();
    }
    let mut s = String::from(
        "| policy scope | opens/s | achieved/s | admitted | not admitted | fallbacks | p50 (ms) | p99 (ms) | max (ms) | Redis commands per open | of them scripts (round trips) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (scope, label, by_rate) in &runs {
        for (rate, r) in by_rate {
            // Redis counted the warm-up's opens too.
            let sent = u(&r["sent_total"]);
            let (per_open, scripts) = match redis_delta(dir, scope, *rate) {
                Some(delta) if sent > 0 => (
                    format!("{:.2}", delta.all as f64 / sent as f64),
                    format!("{:.2}", delta.scripts as f64 / sent as f64),
                ),
                _ => ("–".to_owned(), "–".to_owned()),
            };
            let _ = writeln!(
                s,
                "| {label} | {rate} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {per_open} | {scripts} |",
                f(&r["achieved_rate"]),
                u(&r["admitted"]),
                u(&r["refused"]) + u(&r["other_status"]) + u(&r["errors"]),
                fallbacks(dir, scope, &rate.to_string()),
                f(&r["latency"]["p50_ms"]),
                f(&r["latency"]["p99_ms"]),
                f(&r["latency"]["max_ms"]),
            );
        }
    }
    let envoy = &runs[0].2;
    let mesh = &runs[1].2;
    for (rate, m) in mesh {
        if let Some((_, e)) = envoy.iter().find(|(r, _)| r == rate) {
            let added = f(&m["latency"]["p99_ms"]) - f(&e["latency"]["p99_ms"]);
            let added50 = f(&m["latency"]["p50_ms"]) - f(&e["latency"]["p50_ms"]);
            let _ = writeln!(
                s,
                "\nAt {rate} opens/s the mesh scope adds **{added50:.2} ms** at p50 and **{added:.2} ms** at p99 to a stream open (target: under 2 ms at p99 at 1,000/s)."
            );
        }
    }
    s
}

/// The reconnect-storm table: admitted against the limit, per scope.
pub fn storm_table(dir: &Path) -> String {
    let limit: Option<u64> = std::fs::read_to_string(dir.join("mesh-storm-limit.txt"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let storms: Vec<(&str, &str, Value)> = SCOPES
        .iter()
        .filter_map(|(scope, label)| {
            Some((
                *scope,
                *label,
                read_json(dir, &format!("mesh-{scope}-storm.json"))?,
            ))
        })
        .collect();
    let Some(limit) = limit.filter(|_| !storms.is_empty()) else {
        return "*Reconnect storm: not measured in this report's run.*\n".to_owned();
    };
    let mut s = String::from(
        "| policy scope | opens | over Envoys | admitted | refused | other | fallbacks | the limit | admitted − limit | opens/s |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (scope, label, r) in &storms {
        let admitted = u(&r["admitted"]);
        let opens = admitted + u(&r["refused"]) + u(&r["other_status"]) + u(&r["errors"]);
        let _ = writeln!(
            s,
            "| {label} | {opens} | {} | {admitted} | {} | {} | {} | {limit} | {:+} | {:.0} |",
            u(&r["targets"]),
            u(&r["refused"]),
            u(&r["other_status"]) + u(&r["errors"]),
            fallbacks(dir, scope, "storm"),
            i128::from(admitted) - i128::from(limit),
            f(&r["achieved_rate"]),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_from_results() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(open_table(dir.path()).contains("not measured"));
        assert!(storm_table(dir.path()).contains("not measured"));
        let run = |p50: f64, p99: f64| {
            format!(
                r#"{{"targets": 2, "achieved_rate": 1000.0, "admitted": 20000, "refused": 0,
                   "other_status": 0, "errors": 0, "sent_total": 20000,
                   "latency": {{"p50_ms": {p50}, "p99_ms": {p99}, "max_ms": 9.0}}}}"#
            )
        };
        w("mesh-envoy-1000.json", &run(0.4, 1.0));
        w("mesh-mesh-1000.json", &run(0.9, 2.5));
        w("mesh-mesh-1000-redis.txt", "10 5 7 80010 40005 9\n");
        w("mesh-mesh-1000-fallbacks.txt", "3\n");
        let table = open_table(dir.path());
        assert!(
            table.contains(
                "| mesh-scoped | 1000 | 1000 | 20000 | 0 | 3 | 0.90 | 2.50 | 9.00 | 4.00 | 2.00 |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| Envoy-scoped | 1000 | 1000 | 20000 | 0 | – | 0.40 | 1.00 | 9.00 | – | – |"
            ),
            "{table}"
        );
        assert!(
            table.contains("**0.50 ms** at p50 and **1.50 ms** at p99"),
            "{table}"
        );
        w("mesh-storm-limit.txt", "1000\n");
        w(
            "mesh-mesh-storm.json",
            r#"{"targets": 3, "achieved_rate": 2500.0, "admitted": 1001, "refused": 3999,
               "other_status": 0, "errors": 0, "latency": {}}"#,
        );
        let table = storm_table(dir.path());
        assert!(
            table.contains("| mesh-scoped | 5000 | 3 | 1001 | 3999 | 0 | – | 1000 | +1 | 2500 |"),
            "{table}"
        );
    }
}
