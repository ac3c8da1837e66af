//! The push part's tables (section 3): idle memory, the fan-out ladder, the
//! latency sweep, CPU per delivery against message rate, and issue 11's
//! targets, every comparison a ratio to Nchan measured in the same run.
//!
//! Result files (written by `scripts/bench.sh push`, `<server>` one of
//! [`SERVERS`]): `memory-<server>.json`, `fanout-<server>-saturation.json`,
//! `fanout-<server>-subs-<n>.json` (one step each), `fanout-<server>-rates.json`.

use std::fmt::Write as _;

use serde_json::Value;

use super::{first_step, missing, num, with_retries, Results, SERVERS};

/// The peer every ratio is taken against.
pub const BASELINE: &str = "nchan";

/// Issue 11's load: subscribers × messages published per second.
pub const TARGET_SUBSCRIBERS: u64 = 10_000;
pub const TARGET_RATE: f64 = 2.0;
/// sidestream's server CPU per delivery and p99, each at most this × Nchan's.
pub const TARGET_CPU_RATIO: f64 = 0.8;
pub const TARGET_P99_RATIO: f64 = 0.8;
/// sidestream's saturation throughput, at least this × Nchan's.
pub const TARGET_SATURATION_RATIO: f64 = 8.0;
/// sidestream's idle memory per connection, below this (KiB).
pub const TARGET_IDLE_KIB: f64 = 4.2;

/// A step that delivered less than this share of what was offered while
/// publishing, or lost more than [`LOSSY`] of it, fell behind: its CPU per
/// delivery is that of a backlog.
const KEPT_UP: f64 = 0.95;
const LOSSY: f64 = 0.01;

fn fell_behind(step: &Value) -> bool {
    let offered = num(step, &["offered_per_s"]).unwrap_or(0.0);
    let delivered = num(step, &["delivered_per_s"]).unwrap_or(0.0);
    num(step, &["loss_ratio"]).unwrap_or(0.0) > LOSSY || delivered < KEPT_UP * offered
}

pub fn is_sidestream(server: &str) -> bool {
    server.starts_with("sidestream")
}

fn label(server: &str) -> &'static str {
    SERVERS
        .iter()
        .find(|(k, _)| *k == server)
        .map_or("?", |(_, l)| l)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn times(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.2}×"))
}

fn micros(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.2}"))
}

/// "9.81 / 4.30": the server's and the client's CPU per delivery (µs).
fn cpu_pair(step: &Value) -> String {
    format!(
        "{} / {}",
        micros(num(step, &["server_cpu_us_per_delivery"])),
        micros(num(step, &["client_cpu_us_per_delivery"]))
    )
}

/// "9.81 (2.10) / 4.30": [`cpu_pair`] with the server's user-space part.
fn cpu_triple(step: &Value) -> String {
    match num(step, &["server_user_cpu_us_per_delivery"]) {
        Some(user) => format!(
            "{} ({user:.2}) / {}",
            micros(num(step, &["server_cpu_us_per_delivery"])),
            micros(num(step, &["client_cpu_us_per_delivery"]))
        ),
        None => cpu_pair(step),
    }
}

pub fn memory_table(r: &Results) -> String {
    if r.memory.is_empty() {
        return missing("Idle-connection benchmark");
    }
    let per_connection = |k: &str| {
        r.memory
            .get(k)
            .and_then(|m| num(m, &["rss_per_connection_bytes"]))
    };
    let base = per_connection(BASELINE);
    let mut s = String::from(
        "| server | connections held | failed | closed early | RSS before (MiB) | RSS after (MiB) | RSS / connection | PSS / connection | vs Nchan |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (k, label) in SERVERS {
        let Some(m) = r.memory.get(k) else {
            let _ = writeln!(s, "| {label} | not measured | | | | | | | |");
            continue;
        };
        let g = |f: &str| num(m, &[f]).unwrap_or(0.0);
        let per = g("rss_per_connection_bytes");
        let vs = if k == BASELINE {
            "–".into()
        } else {
            times(ratio(Some(per), base))
        };
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {} | {:.0} | {:.1} | {:.1} | {:.0} B ({:.2} KiB) | {:.0} B | {vs} |",
            g("connected") - g("closed_before_stop"),
            with_retries(m, "failed", "connect_retries"),
            g("closed_before_stop"),
            g("rss_before_kib") / 1024.0,
            g("rss_after_kib") / 1024.0,
            per,
            per / 1024.0,
            g("pss_per_connection_bytes"),
        );
    }
    s
}

pub fn saturation_table(r: &Results) -> String {
    if r.saturation.is_empty() {
        return missing("Fan-out saturation benchmark");
    }
    let max = |k: &str| {
        r.saturation
            .get(k)
            .and_then(|m| num(m, &["max_delivered_per_s"]))
    };
    let base = max(BASELINE);
    let mut s = String::from(
        "| server | subscribers connected | max delivered msgs/s | vs Nchan | step (publish/s → offered/s → delivered/s, loss, p99, server / client CPU per delivery) |\n\
         | --- | ---: | ---: | ---: | --- |\n",
    );
    for (k, label) in SERVERS {
        let Some(m) = r.saturation.get(k) else {
            let _ = writeln!(s, "| {label} | not measured | | | |");
            continue;
        };
        let vs = if k == BASELINE {
            "–".into()
        } else {
            times(ratio(max(k), base))
        };
        let steps: Vec<String> = steps(m)
            .iter()
            .map(|st| {
                format!(
                    "{:.0} → {:.0} → {:.0}, {:.1}%, {:.0} ms, {} µs",
                    num(st, &["publish_rate"]).unwrap_or(0.0),
                    num(st, &["offered_per_s"]).unwrap_or(0.0),
                    num(st, &["delivered_per_s"]).unwrap_or(0.0),
                    100.0 * num(st, &["loss_ratio"]).unwrap_or(0.0),
                    num(st, &["latency", "p99_ms"]).unwrap_or(0.0),
                    cpu_pair(st),
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {label} | {} | {:.0} | {vs} | {} |",
            with_retries(m, "connected", "connect_retries"),
            max(k).unwrap_or(0.0),
            steps.join("<br>")
        );
    }
    if let Some(n) = r.pushpin_out_of_sequence {
        let _ = writeln!(
            s,
            "\nPushpin logged {n} \"received message out of sequence\" stream cancellations during its fan-out runs."
        );
    }
    s
}

fn steps(m: &Value) -> &[Value] {
    m.get("steps")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn sweep_table(r: &Results) -> String {
    if r.sweep.is_empty() {
        return missing("Fan-out latency benchmark");
    }
    let at = |k: &str, n: u64| r.sweep.get(k).and_then(|m| m.get(&n)).and_then(first_step);
    let mut s = String::from(
        "| server | subscribers | publish/s | delivered/s | loss | p50 (ms) | p99 (ms) | max (ms) | server CPU per delivery (µs) | of which user space (µs) | client CPU per delivery (µs) | server CPU vs Nchan | p99 vs Nchan |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (k, label) in SERVERS {
        let Some(by_n) = r.sweep.get(k) else {
            continue;
        };
        for n in by_n.keys() {
            let Some(st) = at(k, *n) else {
                continue;
            };
            let vs = |path: &[&str]| {
                if k == BASELINE {
                    return "–".to_owned();
                }
                times(ratio(
                    num(st, path),
                    at(BASELINE, *n).and_then(|b| num(b, path)),
                ))
            };
            let _ = writeln!(
                s,
                "| {label} | {n} | {:.0} | {:.0} | {:.2}% | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                num(st, &["publish_rate"]).unwrap_or(0.0),
                num(st, &["delivered_per_s"]).unwrap_or(0.0),
                100.0 * num(st, &["loss_ratio"]).unwrap_or(0.0),
                num(st, &["latency", "p50_ms"]).unwrap_or(0.0),
                num(st, &["latency", "p99_ms"]).unwrap_or(0.0),
                num(st, &["latency", "max_ms"]).unwrap_or(0.0),
                micros(num(st, &["server_cpu_us_per_delivery"])),
                micros(num(st, &["server_user_cpu_us_per_delivery"])),
                micros(num(st, &["client_cpu_us_per_delivery"])),
                vs(&["server_cpu_us_per_delivery"]),
                vs(&["latency", "p99_ms"]),
            );
        }
    }
    s
}

/// The rate sweep's step at `rate` for `server`.
fn rate_step<'a>(r: &'a Results, server: &str, rate: f64) -> Option<&'a Value> {
    steps(r.rates.get(server)?)
        .iter()
        .find(|st| num(st, &["publish_rate"]).is_some_and(|p| (p - rate).abs() < 1e-9))
}

/// Publish rates of the rate sweep, over every server, ascending.
pub fn sweep_rates(r: &Results) -> Vec<f64> {
    let mut rates: Vec<f64> = r
        .rates
        .values()
        .flat_map(|m| steps(m).iter().filter_map(|st| num(st, &["publish_rate"])))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    rates
}

pub fn rates_table(r: &Results) -> String {
    if r.rates.is_empty() {
        return missing("Rate sweep");
    }
    let servers: Vec<(&str, &str)> = SERVERS
        .iter()
        .copied()
        .filter(|(k, _)| r.rates.contains_key(*k))
        .collect();
    let compared: Vec<(&str, &str)> = if r.rates.contains_key(BASELINE) {
        servers
            .iter()
            .copied()
            .filter(|(k, _)| is_sidestream(k))
            .collect()
    } else {
        Vec::new()
    };
    let subscribers = r
        .rates
        .values()
        .filter_map(|m| num(m, &["connected"]))
        .fold(0.0, f64::max);
    let mut s = format!(
        "Server (of which user space) / client CPU per delivery (µs) at {subscribers:.0} subscribers; † = the server fell behind (delivered less than {:.0}% of the offered rate, or lost more than {:.0}%).\n\n\
         | publish/s | offered deliveries/s |",
        KEPT_UP * 100.0,
        LOSSY * 100.0
    );
    for (_, label) in &servers {
        let _ = write!(s, " {label} |");
    }
    for (_, label) in &compared {
        let _ = write!(s, " {label}: server CPU vs Nchan |");
    }
    s.push_str("\n| ---: | ---: |");
    s.push_str(&" ---: |".repeat(servers.len() + compared.len()));
    s.push('\n');
    for rate in sweep_rates(r) {
        let offered = servers
            .iter()
            .find_map(|(k, _)| rate_step(r, k, rate).and_then(|st| num(st, &["offered_per_s"])))
            .unwrap_or(0.0);
        let _ = write!(s, "| {} | {offered:.0} |", trim_rate(rate));
        for (k, _) in &servers {
            let cell = rate_step(r, k, rate).map_or("–".into(), |st| {
                let behind = fell_behind(st);
                format!("{}{}", cpu_triple(st), if behind { " †" } else { "" })
            });
            let _ = write!(s, " {cell} |");
        }
        let cpu =
            |k: &str| rate_step(r, k, rate).and_then(|st| num(st, &["server_cpu_us_per_delivery"]));
        for (k, _) in &compared {
            let _ = write!(s, " {} |", times(ratio(cpu(k), cpu(BASELINE))));
        }
        s.push('\n');
    }
    s
}

fn trim_rate(rate: f64) -> String {
    let s = format!("{rate:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

/// Where issue 11's load was measured for both `server` and Nchan: the latency
/// sweep's step at 10,000 subscribers if it ran at 2 msgs/s, else the rate
/// sweep's 2 msgs/s step at 10,000 subscribers. (source, server's step, Nchan's step)
fn at_target_load<'a>(
    r: &'a Results,
    server: &str,
) -> Option<(&'static str, &'a Value, &'a Value)> {
    let sweep = |k: &str| {
        r.sweep
            .get(k)
            .and_then(|m| m.get(&TARGET_SUBSCRIBERS))
            .and_then(first_step)
            .filter(|st| num(st, &["publish_rate"]) == Some(TARGET_RATE))
    };
    let rates = |k: &str| {
        r.rates
            .get(k)
            .filter(|m| num(m, &["connected"]) == Some(TARGET_SUBSCRIBERS as f64))
            .and_then(|_| rate_step(r, k, TARGET_RATE))
    };
    if let (Some(a), Some(b)) = (sweep(server), sweep(BASELINE)) {
        return Some(("latency sweep", a, b));
    }
    if let (Some(a), Some(b)) = (rates(server), rates(BASELINE)) {
        return Some(("rate sweep", a, b));
    }
    None
}

/// One target cell: "**0.74×** (7.20 vs 9.70 µs): yes".
fn verdict(ratio_value: Option<f64>, detail: String, met: impl Fn(f64) -> bool) -> String {
    match ratio_value {
        Some(x) => format!(
            "**{x:.2}×** ({detail}): {}",
            if met(x) { "yes" } else { "**no**" }
        ),
        None => "not measured".into(),
    }
}

pub fn targets_table(r: &Results) -> String {
    let variants: Vec<&str> = SERVERS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| is_sidestream(k))
        .filter(|k| {
            r.memory.contains_key(*k)
                || r.saturation.contains_key(*k)
                || r.sweep.contains_key(*k)
                || r.rates.contains_key(*k)
        })
        .collect();
    if variants.is_empty() {
        return missing("Push server targets (no sidestream-push result)");
    }
    let mut s = format!(
        "Ratios to Nchan, same run, same client, {TARGET_SUBSCRIBERS} subscribers × {} msgs/s unless said otherwise.\n\n| target |",
        trim_rate(TARGET_RATE)
    );
    for k in &variants {
        let _ = write!(s, " {} |", label(k));
    }
    s.push_str("\n| --- |");
    s.push_str(&" --- |".repeat(variants.len()));
    s.push('\n');
    let mut row = |title: String, cell: &dyn Fn(&str) -> String| {
        let _ = write!(s, "| {title} |");
        for k in &variants {
            let _ = write!(s, " {} |", cell(k));
        }
        s.push('\n');
    };
    let at_load = |k: &str, path: &[&str], unit: &str, limit: f64| match at_target_load(r, k) {
        Some((source, st, base)) => {
            let (a, b) = (num(st, path), num(base, path));
            verdict(
                ratio(a, b),
                format!("{} vs {} {unit}, {source}", micros(a), micros(b)),
                |x| x <= limit,
            )
        }
        None => "not measured".into(),
    };
    row(
        format!("server CPU per delivery ≤ {TARGET_CPU_RATIO}× Nchan's"),
        &|k| at_load(k, &["server_cpu_us_per_delivery"], "µs", TARGET_CPU_RATIO),
    );
    row(
        format!("p99 publish → receive ≤ {TARGET_P99_RATIO}× Nchan's"),
        &|k| at_load(k, &["latency", "p99_ms"], "ms", TARGET_P99_RATIO),
    );
    row(
        format!("saturation ≥ {TARGET_SATURATION_RATIO}× Nchan's (fan-out ladder)"),
        &|k| {
            let max = |k: &str| {
                r.saturation
                    .get(k)
                    .and_then(|m| num(m, &["max_delivered_per_s"]))
            };
            let (a, b) = (max(k), max(BASELINE));
            verdict(
                ratio(a, b),
                format!(
                    "{:.0} vs {:.0} deliveries/s",
                    a.unwrap_or(0.0),
                    b.unwrap_or(0.0)
                ),
                |x| x >= TARGET_SATURATION_RATIO,
            )
        },
    );
    row(
        format!("idle memory < {TARGET_IDLE_KIB} KiB per connection"),
        &|k| match r
            .memory
            .get(k)
            .and_then(|m| num(m, &["rss_per_connection_bytes"]))
        {
            Some(b) => {
                let kib = b / 1024.0;
                format!(
                    "**{kib:.2} KiB** ({b:.0} B): {}",
                    if kib < TARGET_IDLE_KIB {
                        "yes"
                    } else {
                        "**no**"
                    }
                )
            }
            None => "not measured".into(),
        },
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::load;

    fn step(rate: f64, server_us: f64, client_us: f64, p99: f64, loss: f64) -> String {
        format!(
            r#"{{"publish_rate": {rate}, "offered_per_s": {offered}, "delivered_per_s": {offered},
                "loss_ratio": {loss}, "latency": {{"p50_ms": 10.0, "p99_ms": {p99}, "max_ms": 90.0}},
                "server_cpu_us_per_delivery": {server_us}, "client_cpu_us_per_delivery": {client_us},
                "server_user_cpu_us_per_delivery": {user_us}}}"#,
            offered = rate * 10_000.0,
            user_us = server_us / 4.0
        )
    }

    fn run(steps: &[String]) -> String {
        format!(
            r#"{{"connected": 10000, "max_delivered_per_s": 0, "steps": [{}]}}"#,
            steps.join(",")
        )
    }

    fn results(files: &[(&str, String)]) -> Results {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        load(dir.path()).unwrap()
    }

    #[test]
    fn rate_table_has_cpu_per_delivery_and_the_ratio_to_nchan_per_rate() {
        let r = results(&[
            (
                "fanout-sidestream-epoll-rates.json",
                run(&[
                    step(1.0, 12.0, 4.0, 60.0, 0.0),
                    step(2.0, 8.0, 4.0, 60.0, 0.0),
                ]),
            ),
            (
                "fanout-sidestream-uring-rates.json",
                run(&[
                    step(1.0, 9.0, 4.0, 60.0, 0.0),
                    step(2.0, 6.0, 4.0, 60.0, 0.0),
                ]),
            ),
            (
                "fanout-nchan-rates.json",
                run(&[
                    step(1.0, 10.0, 3.0, 60.0, 0.0),
                    step(2.0, 10.0, 3.5, 70.0, 0.2),
                ]),
            ),
        ]);
        let t = rates_table(&r);
        assert!(t.contains("at 10000 subscribers"), "{t}");
        assert!(
            t.contains("| publish/s | offered deliveries/s | sidestream-push (epoll) | sidestream-push (io_uring) | Nchan | sidestream-push (epoll): server CPU vs Nchan | sidestream-push (io_uring): server CPU vs Nchan |"),
            "{t}"
        );
        assert!(
            t.contains("| 1 | 10000 | 12.00 (3.00) / 4.00 | 9.00 (2.25) / 4.00 | 10.00 (2.50) / 3.00 | 1.20× | 0.90× |"),
            "{t}"
        );
        // Nchan lost 20% at 2/s: marked.
        assert!(
            t.contains(
                "| 2 | 20000 | 8.00 (2.00) / 4.00 | 6.00 (1.50) / 4.00 | 10.00 (2.50) / 3.50 † | 0.80× | 0.60× |"
            ),
            "{t}"
        );
        assert_eq!(sweep_rates(&r), vec![1.0, 2.0]);
        // Delivering 80% of the offered rate, with no loss yet, is falling behind too.
        let mut behind: Value = serde_json::from_str(&step(40.0, 5.0, 2.0, 900.0, 0.0)).unwrap();
        behind["delivered_per_s"] = Value::from(320_000.0);
        assert!(fell_behind(&behind));
        behind["delivered_per_s"] = Value::from(396_000.0);
        assert!(!fell_behind(&behind));
        assert!(rates_table(&results(&[])).contains("not measured"));
    }

    #[test]
    fn targets_are_ratios_to_nchan_with_a_verdict() {
        let sweep = |server_us: f64, p99: f64| run(&[step(2.0, server_us, 4.0, p99, 0.0)]);
        let sat = |max: f64| {
            format!(r#"{{"connected": 10000, "max_delivered_per_s": {max}, "steps": []}}"#)
        };
        let mem =
            |bytes: f64| format!(r#"{{"connected": 18000, "rss_per_connection_bytes": {bytes}}}"#);
        let r = results(&[
            ("fanout-sidestream-epoll-subs-10000.json", sweep(9.0, 80.0)),
            ("fanout-sidestream-uring-subs-10000.json", sweep(7.6, 90.0)),
            ("fanout-nchan-subs-10000.json", sweep(10.0, 100.0)),
            ("fanout-sidestream-epoll-saturation.json", sat(900_000.0)),
            ("fanout-nchan-saturation.json", sat(100_000.0)),
            ("memory-sidestream-epoll.json", mem(4162.0)),
            ("memory-sidestream-uring.json", mem(4400.0)),
        ]);
        let t = targets_table(&r);
        assert!(
            t.contains("| target | sidestream-push (epoll) | sidestream-push (io_uring) |"),
            "{t}"
        );
        assert!(
            t.contains("| server CPU per delivery ≤ 0.8× Nchan's | **0.90×** (9.00 vs 10.00 µs, latency sweep): **no** | **0.76×** (7.60 vs 10.00 µs, latency sweep): yes |"),
            "{t}"
        );
        assert!(
            t.contains("| p99 publish → receive ≤ 0.8× Nchan's | **0.80×** (80.00 vs 100.00 ms, latency sweep): yes | **0.90×**"),
            "{t}"
        );
        assert!(
            t.contains("| saturation ≥ 8× Nchan's (fan-out ladder) | **9.00×** (900000 vs 100000 deliveries/s): yes | not measured |"),
            "{t}"
        );
        assert!(
            t.contains("| idle memory < 4.2 KiB per connection | **4.06 KiB** (4162 B): yes | **4.30 KiB** (4400 B): **no** |"),
            "{t}"
        );
        // Without the latency sweep, the rate sweep's 2/s step counts.
        let r = results(&[
            (
                "fanout-sidestream-epoll-rates.json",
                run(&[
                    step(1.0, 1.0, 1.0, 1.0, 0.0),
                    step(2.0, 6.0, 4.0, 50.0, 0.0),
                ]),
            ),
            (
                "fanout-nchan-rates.json",
                run(&[step(2.0, 10.0, 4.0, 100.0, 0.0)]),
            ),
        ]);
        let t = targets_table(&r);
        assert!(
            t.contains("**0.60×** (6.00 vs 10.00 µs, rate sweep): yes"),
            "{t}"
        );
        assert!(targets_table(&results(&[])).contains("not measured"));
    }

    #[test]
    fn saturation_and_sweep_tables_show_cpu_per_delivery_and_ratios_to_nchan() {
        let sat = |max: f64, server_us: f64| {
            format!(
                r#"{{"connected": 10000, "max_delivered_per_s": {max}, "steps": [{}]}}"#,
                step(1.0, server_us, 4.5, 70.0, 0.0)
            )
        };
        let r = results(&[
            (
                "fanout-sidestream-epoll-saturation.json",
                sat(1_200_000.0, 12.25),
            ),
            ("fanout-nchan-saturation.json", sat(150_000.0, 11.0)),
            (
                "fanout-sidestream-epoll-subs-1000.json",
                run(&[step(2.0, 9.0, 4.0, 12.0, 0.0)]),
            ),
            (
                "fanout-nchan-subs-1000.json",
                run(&[step(2.0, 10.0, 4.0, 16.0, 0.0)]),
            ),
            (
                "memory-sidestream-epoll.json",
                r#"{"connected": 18000, "rss_per_connection_bytes": 4096}"#.into(),
            ),
            (
                "memory-nchan.json",
                r#"{"connected": 18000, "rss_per_connection_bytes": 10240}"#.into(),
            ),
        ]);
        let t = saturation_table(&r);
        assert!(
            t.contains("| sidestream-push (epoll) | 10000 | 1200000 | 8.00× | 1 → 10000 → 10000, 0.0%, 70 ms, 12.25 / 4.50 µs |"),
            "{t}"
        );
        assert!(t.contains("| Nchan | 10000 | 150000 | – |"), "{t}");
        assert!(
            t.contains("| sidestream-push (io_uring) | not measured |"),
            "{t}"
        );
        let t = sweep_table(&r);
        assert!(
            t.contains("| sidestream-push (epoll) | 1000 | 2 | 20000 | 0.00% | 10.0 | 12.0 | 90.0 | 9.00 | 2.25 | 4.00 | 0.90× | 0.75× |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| Nchan | 1000 | 2 | 20000 | 0.00% | 10.0 | 16.0 | 90.0 | 10.00 | 2.50 | 4.00 | – | – |"
            ),
            "{t}"
        );
        let t = memory_table(&r);
        assert!(t.contains("| 4096 B (4.00 KiB) | 0 B | 0.40× |"), "{t}");
    }
}
