//! Where a mesh-scoped open's time and CPU go, per open-rate run: the limiter
//! round trip as the filter saw it, Redis as the limiter saw it, the scripts'
//! run time inside Redis, and each process's CPU per open.
//!
//! Result files (written by `scripts/bench.sh mesh` around each open-rate
//! run): `mesh-<scope>-<rate>-cpu-{before,after}.txt` (`<process> <ticks>`
//! lines, `hz <ticks per second>`, `machine <busy> <total>`),
//! `mesh-<scope>-<rate>-limiter-{before,after}.txt` (the limiter's
//! Prometheus metrics), `mesh-<scope>-<rate>-rtt.txt` (Envoy's
//! `mesh_rtt_us` histogram line per Envoy) and `mesh-<scope>-<rate>-redis.txt`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Processes whose CPU is shown, with the label of their column.
const PROCESSES: [(&[&str], &str); 4] = [
    (&["mesh-envoy-0", "mesh-envoy-1"], "Envoys"),
    (&["mesh-limiter"], "limiter"),
    (&["mesh-redis"], "Redis"),
    (&["mesh-upstream"], "upstream"),
];

/// The limiter's histogram of Redis round trips.
const REDIS_SECONDS: &str = "sidestream_limiter_redis_seconds";

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// `<name> <numbers...>` lines.
fn numbers(text: &str) -> HashMap<String, Vec<f64>> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            Some((name, words.filter_map(|w| w.parse().ok()).collect()))
        })
        .collect()
}

/// CPU during a run: seconds per process name, and the machine's busy share.
struct Cpu {
    seconds: HashMap<String, f64>,
    busy: f64,
}

fn cpu(dir: &Path, run: &str) -> Option<Cpu> {
    let before = numbers(&read(dir, &format!("mesh-{run}-cpu-before.txt"))?);
    let after = numbers(&read(dir, &format!("mesh-{run}-cpu-after.txt"))?);
    let hz = after
        .get("hz")
        .and_then(|v| v.first())
        .copied()
        .unwrap_or(100.0);
    let delta = |name: &str, i: usize| Some(after.get(name)?.get(i)? - before.get(name)?.get(i)?);
    let seconds = after
        .keys()
        .filter(|name| name.starts_with("mesh-"))
        .filter_map(|name| Some((name.clone(), delta(name, 0)? / hz)))
        .collect();
    let busy = match (delta("machine", 0), delta("machine", 1)) {
        (Some(busy), Some(total)) if total > 0.0 => 100.0 * busy / total,
        _ => f64::NAN,
    };
    Some(Cpu { seconds, busy })
}

/// One operation's Redis round trips during a run (the limiter's histogram,
/// after minus before): the mean and the bucket bound that holds the p99, in µs.
fn redis_round_trip(dir: &Path, run: &str, operation: &str) -> Option<(f64, f64)> {
    let series = |text: &str| -> HashMap<String, f64> {
        let label = format!("operation=\"{operation}\"");
        text.lines()
            .filter(|l| l.starts_with(REDIS_SECONDS) && l.contains(&label))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let before = series(&read(dir, &format!("mesh-{run}-limiter-before.txt"))?);
    let after = series(&read(dir, &format!("mesh-{run}-limiter-after.txt"))?);
    let delta = |name: &String| after[name] - before.get(name).copied().unwrap_or(0.0);
    let find = |suffix: &str| {
        after
            .keys()
            .find(|k| k.starts_with(&format!("{REDIS_SECONDS}_{suffix}")))
    };
    let count = delta(find("count")?);
    let sum = delta(find("sum")?);
    if count <= 0.0 {
        return None;
    }
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter(|k| k.starts_with(&format!("{REDIS_SECONDS}_bucket")))
        .filter_map(|k| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, delta(k)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p99 = buckets.iter().find(|(_, n)| *n >= 0.99 * count)?.0;
    Some((1e6 * sum / count, 1e6 * p99))
}

/// The filter's limiter round trip (`mesh_rtt_us`), p50 and p99 of Envoy's
/// last stats interval, the higher of the Envoys.
fn envoy_round_trip(dir: &Path, run: &str) -> Option<(f64, f64)> {
    let text = read(dir, &format!("mesh-{run}-rtt.txt"))?;
    let quantile = |line: &str, q: &str| -> Option<f64> {
        let start = line.find(&format!(" {q}("))? + q.len() + 2;
        line[start..].split(',').next()?.parse().ok()
    };
    let per_envoy: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| Some((quantile(l, "P50")?, quantile(l, "P99")?)))
        .collect();
    per_envoy
        .into_iter()
        .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".to_owned())
}

/// The cost table: one row per scope and open rate.
pub fn cost_table(dir: &Path) -> String {
    let mut rows = String::new();
    for (scope, label) in super::SCOPES {
        for (rate, r) in super::rate_runs(dir, scope) {
            let run = format!("{scope}-{rate}");
            let sent = super::u(&r["sent_total"]) as f64;
            let Some(cpu) = cpu(dir, &run).filter(|_| sent > 0.0) else {
                continue;
            };
            let rtt = envoy_round_trip(dir, &run).map(|(p50, p99)| format!("{p50:.0} / {p99:.0}"));
            let redis = redis_round_trip(dir, &run, "acquire")
                .map(|(mean, p99)| format!("{mean:.0} / ≤ {p99:.0}"));
            let script = super::redis_delta(dir, scope, rate)
                .filter(|d| d.scripts > 0)
                .and_then(|d| Some(format!("{:.1}", d.script_usec? as f64 / d.scripts as f64)));
            let _ = write!(
                rows,
                "| {label} | {rate} | {} | {} | {} |",
                or_dash(rtt),
                or_dash(redis),
                or_dash(script)
            );
            for (names, _) in PROCESSES {
                let seconds: f64 = names.iter().filter_map(|n| cpu.seconds.get(*n)).sum();
                let _ = write!(rows, " {:.0} |", 1e6 * seconds / sent);
            }
            let _ = writeln!(rows, " {:.0}% |", cpu.busy);
        }
    }
    if rows.is_empty() {
        return "*Cost breakdown: not measured in this report's run.*\n".to_owned();
    }
    let mut s = String::from(
        "| policy scope | opens/s | limiter round trip in Envoy, p50 / p99 (µs) | Redis round trip in the limiter (Acquire), mean / p99 (µs) | script run time in Redis (µs per call) |",
    );
    for (_, label) in PROCESSES {
        let _ = write!(s, " CPU per open: {label} (µs) |");
    }
    s.push_str(" machine busy (2 cores) |\n| --- | ---: | ---: | ---: | ---: |");
    s.push_str(&" ---: |".repeat(PROCESSES.len() + 1));
    s.push('\n');
    s + &rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_from_results() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(cost_table(dir.path()).contains("not measured"));
        w(
            "mesh-mesh-1000.json",
            r#"{"achieved_rate": 1000.0, "sent_total": 20000, "latency": {}}"#,
        );
        w(
            "mesh-mesh-1000-cpu-before.txt",
            "mesh-redis 100\nmesh-limiter 0\nmesh-envoy-0 10\nmesh-envoy-1 20\nmesh-upstream 0\nhz 100\nmachine 1000 5000\n",
        );
        w(
            "mesh-mesh-1000-cpu-after.txt",
            "mesh-redis 300\nmesh-limiter 500\nmesh-envoy-0 610\nmesh-envoy-1 620\nmesh-upstream 100\nhz 100\nmachine 3000 9000\n",
        );
        let metrics = |count: u32, sum: f64, le_1ms: u32| {
            format!(
                "# HELP x\n{REDIS_SECONDS}_sum{{operation=\"acquire\"}} {sum}\n\
                 {REDIS_SECONDS}_count{{operation=\"acquire\"}} {count}\n\
                 {REDIS_SECONDS}_bucket{{le=\"0.0002\",operation=\"acquire\"}} {}\n\
                 {REDIS_SECONDS}_bucket{{le=\"0.001\",operation=\"acquire\"}} {le_1ms}\n\
                 {REDIS_SECONDS}_bucket{{le=\"+Inf\",operation=\"acquire\"}} {count}\n\
                 {REDIS_SECONDS}_count{{operation=\"release\"}} 999\n",
                count / 2
            )
        };
        w("mesh-mesh-1000-limiter-before.txt", &metrics(100, 0.5, 100));
        w(
            "mesh-mesh-1000-limiter-after.txt",
            &metrics(20100, 4.5, 20095),
        );
        w(
            "mesh-mesh-1000-rtt.txt",
            "envoy-0 wasmcustom.sidestream.mesh_rtt_us: P0(1,1) P50(450.6,400) P99(1150,900) P100(3,3)\n\
             envoy-1 wasmcustom.sidestream.mesh_rtt_us: P0(1,1) P50(440,400) P99(1300,900) P100(3,3)\n",
        );
        w("mesh-mesh-1000-redis.txt", "0 0 0 300000 40000 1200000\n");
        let table = cost_table(dir.path());
        // Envoys (600 + 600 ticks) / 20000 opens = 600 µs; limiter 250, Redis
        // 100, upstream 50; machine 2000 of 4000 ticks busy.
        assert!(
            table.contains("| mesh-scoped | 1000 | 451 / 1300 | 200 / ≤ 1000 | 30.0 | 600 | 250 | 100 | 50 | 50% |"),
            "{table}"
        );
    }
}
