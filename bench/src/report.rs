//! Report: reads a results folder written by `scripts/bench.sh`, draws the
//! plots (SVG, plotters) and fills BENCHMARKS.md from its template.
//!
//! Result files (all optional; a missing one is reported as not measured):
//! `conditions.json`, `filter-<variant>-wrk.txt`, `filter-<variant>-cpu.txt`,
//! `filter-<variant>-latency.json`, `filter-<variant>-{wrk,latency}-r<round>.*`,
//! `stream-<variant>-r<round>.json`, `propagation.json`,
//! `memory-<server>.json`, `fanout-<server>-saturation.json`,
//! `fanout-<server>-subs-<n>.json`, `fanout-<server>-rates.json`, `fanout-otlp-off.json`,
//! `fanout-otlp-on.json`, `otlp-sink.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

mod filter_rounds;
mod mesh;
mod plots;
mod push;
mod stream;

/// Filter variants in report order: (file name part, label).
pub const VARIANTS: [(&str, &str); 5] = [
    ("none", "no filter"),
    ("empty-wasm", "empty Rust Wasm filter"),
    ("calls-only", "empty filter making the filter's host calls"),
    ("sidestream", "sidestream filter"),
    ("lua", "Lua equivalent"),
];

/// Push servers in report order: (file name part, label). sidestream-push's
/// variants are `scripts/bench.sh`'s `SIDESTREAM_VARIANT_ARGS`.
pub const SERVERS: [(&str, &str); 4] = [
    ("sidestream-epoll", "sidestream-push (epoll)"),
    ("sidestream-uring", "sidestream-push (io_uring)"),
    ("nchan", "Nchan"),
    ("pushpin", "Pushpin"),
];

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    #[arg(long, default_value = "bench/out/results")]
    pub results: PathBuf,
    /// Where the SVG plots go (committed).
    #[arg(long, default_value = "bench/results")]
    pub svg_dir: PathBuf,
    #[arg(long, default_value = "bench/BENCHMARKS.md.in")]
    pub template: PathBuf,
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub markdown: PathBuf,
}

/// Throughput of one filter variant.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub rps: f64,
    pub envoy_cpu_pct: Option<f64>,
    /// Busy % of Envoy's core and of the load client's core.
    pub cores_busy_pct: Option<(f64, f64)>,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// Everything the report found.
#[derive(Debug, Default)]
pub struct Results {
    /// (what, value) in the order the script wrote them.
    pub conditions: Vec<(String, String)>,
    pub throughput: BTreeMap<String, Throughput>,
    pub latency: BTreeMap<String, Value>,
    /// `filter-probe.json`: ns per host call and decision inside Envoy's VM.
    pub probe: Option<Value>,
    pub propagation: Option<Value>,
    pub memory: BTreeMap<String, Value>,
    pub saturation: BTreeMap<String, Value>,
    /// server → subscribers → result
    pub sweep: BTreeMap<String, BTreeMap<u64, Value>>,
    /// server → the rate sweep (one step per message rate)
    pub rates: BTreeMap<String, Value>,
    /// "received message out of sequence" lines in Pushpin's logs.
    pub pushpin_out_of_sequence: Option<u64>,
    /// The tracing-overhead fan-out: span export "off" and "on".
    pub otlp: BTreeMap<String, Value>,
    /// What the OTLP sink received in the export-on run.
    pub otlp_sink: Option<Value>,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let results = load(&args.results)?;
    std::fs::create_dir_all(&args.svg_dir)?;
    let svg_rel = relative_svg_dir(&args.svg_dir, &args.markdown);
    let plots = plots::draw_all(&results, &args.svg_dir)?;
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("read template {}", args.template.display()))?;
    let mut md = template;
    let figure = |name: &str, alt: &str| -> String {
        if plots.iter().any(|p| p == name) {
            format!("![{alt}]({svg_rel}/{name})\n")
        } else {
            String::new()
        }
    };
    let sections = [
        ("{{CONDITIONS}}", conditions_table(&results)),
        ("{{FILTER_TABLE}}", filter_table(&results)),
        ("{{FILTER_PROBE_TABLE}}", probe_table(&results)),
        (
            "{{FILTER_ROUNDS_TABLE}}",
            filter_rounds::table(&args.results),
        ),
        ("{{STREAM_TABLE}}", stream::table(&args.results)),
        (
            "{{STREAM_TOGETHER_TABLE}}",
            stream::together_table(&args.results),
        ),
        (
            "{{FILTER_PLOTS}}",
            figure("filter-throughput.svg", "filter throughput")
                + &figure("filter-latency.svg", "filter latency"),
        ),
        ("{{PROPAGATION_TABLE}}", propagation_table(&results)),
        (
            "{{PROPAGATION_PLOTS}}",
            figure("propagation.svg", "propagation latency"),
        ),
        ("{{PUSH_TARGETS_TABLE}}", push::targets_table(&results)),
        ("{{MEMORY_TABLE}}", push::memory_table(&results)),
        (
            "{{MEMORY_PLOTS}}",
            figure("push-memory.svg", "memory per connection"),
        ),
        (
            "{{FANOUT_SATURATION_TABLE}}",
            push::saturation_table(&results),
        ),
        ("{{FANOUT_LATENCY_TABLE}}", push::sweep_table(&results)),
        ("{{FANOUT_RATE_TABLE}}", push::rates_table(&results)),
        (
            "{{FANOUT_RATE_PLOTS}}",
            figure(
                "push-cpu-vs-rate.svg",
                "server CPU per delivery vs message rate",
            ),
        ),
        ("{{OTLP_OVERHEAD_TABLE}}", otlp_table(&results)),
        ("{{MESH_OPEN_TABLE}}", mesh::open_table(&args.results)),
        ("{{MESH_STORM_TABLE}}", mesh::storm_table(&args.results)),
        ("{{MESH_COST_TABLE}}", mesh::cost_table(&args.results)),
        (
            "{{FANOUT_PLOTS}}",
            figure("push-throughput.svg", "fan-out throughput")
                + &figure(
                    "push-latency-vs-subscribers.svg",
                    "fan-out latency vs subscribers",
                ),
        ),
    ];
    for (marker, text) in sections {
        md = md.replace(marker, text.trim_end());
    }
    std::fs::write(&args.markdown, md)?;
    eprintln!(
        "report: wrote {} and {} plot(s) in {}",
        args.markdown.display(),
        plots.len(),
        args.svg_dir.display()
    );
    Ok(())
}

fn relative_svg_dir(svg_dir: &Path, markdown: &Path) -> String {
    let md_dir = markdown.parent().unwrap_or(Path::new(""));
    svg_dir
        .strip_prefix(md_dir)
        .unwrap_or(svg_dir)
        .display()
        .to_string()
}

pub fn load(dir: &Path) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let read_json = |name: &str| -> Option<Value> {
        std::fs::read(dir.join(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    };
    if let Some(Value::Array(pairs)) = read_json("conditions.json") {
        for pair in pairs {
            if let (Some(k), Some(v)) = (pair.get(0).and_then(Value::as_str), pair.get(1)) {
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                r.conditions.push((k.to_owned(), v));
            }
        }
    }
    for (v, _) in VARIANTS {
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("filter-{v}-wrk.txt"))) {
            let mut t = parse_wrk(&text);
            t.envoy_cpu_pct = std::fs::read_to_string(dir.join(format!("filter-{v}-cpu.txt")))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            t.cores_busy_pct = std::fs::read_to_string(dir.join(format!("filter-{v}-cores.txt")))
                .ok()
                .and_then(|s| parse_cores(&s));
            r.throughput.insert(v.to_owned(), t);
        }
        if let Some(j) = read_json(&format!("filter-{v}-latency.json")) {
            r.latency.insert(v.to_owned(), j);
        }
    }
    r.probe = read_json("filter-probe.json");
    for export in ["off", "on"] {
        if let Some(j) = read_json(&format!("fanout-otlp-{export}.json")) {
            r.otlp.insert(export.to_owned(), j);
        }
    }
    r.otlp_sink = read_json("otlp-sink.json");
    r.propagation = read_json("propagation.json");
    r.pushpin_out_of_sequence = std::fs::read_to_string(dir.join("pushpin-out-of-sequence.txt"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    for (s, _) in SERVERS {
        if let Some(j) = read_json(&format!("memory-{s}.json")) {
            r.memory.insert(s.to_owned(), j);
        }
        if let Some(j) = read_json(&format!("fanout-{s}-saturation.json")) {
            r.saturation.insert(s.to_owned(), j);
        }
        if let Some(j) = read_json(&format!("fanout-{s}-rates.json")) {
            r.rates.insert(s.to_owned(), j);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name
                .strip_prefix("fanout-")
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let Some((server, n)) = rest.split_once("-subs-") else {
                continue;
            };
            if let (Ok(n), Some(j)) = (n.parse::<u64>(), read_json(&name)) {
                r.sweep.entry(server.to_owned()).or_default().insert(n, j);
            }
        }
    }
    Ok(r)
}

/// Requests/sec and errors from wrk's text output.
pub fn parse_wrk(text: &str) -> Throughput {
    let mut t = Throughput::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            t.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            t.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            t.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().last())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        }
    }
    t
}

/// "server core 97.0% busy, client core 64.2% busy" → (97.0, 64.2).
fn parse_cores(text: &str) -> Option<(f64, f64)> {
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('%'))
        .filter_map(|n| n.parse().ok())
        .collect();
    match nums.as_slice() {
        [a, b] => Some((*a, *b)),
        _ => None,
    }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn conditions_table(r: &Results) -> String {
    if r.conditions.is_empty() {
        return "_No conditions recorded (conditions.json missing)._\n".to_owned();
    }
    let mut s = String::from("| | |\n| --- | --- |\n");
    for (k, v) in &r.conditions {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    s
}

/// "10000" or "10000 (37 attempts retried)".
fn with_retries(v: &Value, field: &str, retries: &str) -> String {
    let n = num(v, &[field]).unwrap_or(0.0);
    match num(v, &[retries]) {
        Some(r) if r > 0.0 => format!("{n:.0} ({r:.0} attempts retried)"),
        _ => format!("{n:.0}"),
    }
}

fn missing(what: &str) -> String {
    format!("_{what}: not measured in this run (no result file)._\n")
}

fn filter_table(r: &Results) -> String {
    if r.throughput.is_empty() && r.latency.is_empty() {
        return missing("Filter benchmark");
    }
    let base_rps = r.throughput.get("none").map(|t| t.rps).filter(|v| *v > 0.0);
    let base_lat = r.latency.get("none");
    let mut s = String::from(
        "| variant | throughput (req/s) | vs no filter | Envoy CPU | cores busy (Envoy / client) | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | checked |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for (v, label) in VARIANTS {
        let t = r.throughput.get(v);
        let l = r.latency.get(v);
        let rps = t.map(|t| format!("{:.0}", t.rps)).unwrap_or("–".into());
        let ratio = match (t, base_rps) {
            (Some(t), Some(b)) => format!("{:.1}%", 100.0 * t.rps / b),
            _ => "–".into(),
        };
        let cpu = t
            .and_then(|t| t.envoy_cpu_pct)
            .map(|c| format!("{c:.0}%"))
            .unwrap_or("–".into());
        let cores = t
            .and_then(|t| t.cores_busy_pct)
            .map(|(a, b)| format!("{a:.0}% / {b:.0}%"))
            .unwrap_or("–".into());
        let p = |q: &str| l.and_then(|l| num(l, &["latency", q]));
        let pb = |q: &str| base_lat.and_then(|l| num(l, &["latency", q]));
        let f = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or("–".into());
        let added = |q: &str| match (p(q), pb(q)) {
            (Some(a), Some(b)) if v != "none" => format!("{:+.3}", a - b),
            _ => "–".into(),
        };
        let checked = l
            .map(|l| {
                let ok = num(l, &["ok"]).unwrap_or(0.0);
                let traced = num(l, &["traced"]).unwrap_or(0.0);
                let errors =
                    num(l, &["errors"]).unwrap_or(0.0) + num(l, &["non_2xx"]).unwrap_or(0.0);
                let canary = num(l, &["canary"]).unwrap_or(0.0);
                if ok > 0.0 {
                    format!(
                        "{:.0}% traced, {:.1}% canary, {errors:.0} errors",
                        100.0 * traced / ok,
                        100.0 * canary / ok
                    )
                } else {
                    "no responses".into()
                }
            })
            .unwrap_or("–".into());
        let _ = writeln!(
            s,
            "| {label} | {rps} | {ratio} | {cpu} | {cores} | {} | {} | {} | {} | {checked} |",
            f(p("p50_ms")),
            f(p("p99_ms")),
            added("p50_ms"),
            added("p99_ms")
        );
    }
    if let (Some(side), Some(lua)) = (r.throughput.get("sidestream"), r.throughput.get("lua")) {
        if lua.rps > 0.0 {
            let _ = writeln!(
                s,
                "\nsidestream filter vs Lua equivalent: {:.2}× the throughput.",
                side.rps / lua.rps
            );
        }
    }
    s
}

/// What the sidestream filter does on the benchmark's plain request, as
/// (probe operation, calls per request, what for); streams add the admission rows.
const PROBE_PER_REQUEST: [(&str, f64, &str); 6] = [
    (
        "get_all_request_headers_raw",
        1.0,
        "read the request headers once, in place (one call)",
    ),
    (
        "trace_decide",
        1.0,
        "parse or start the trace, new ids (CSPRNG)",
    ),
    (
        "set_request_header",
        2.0,
        "write `traceparent` and the group tag",
    ),
    ("clear_route_cache", 1.0, "re-route on the tag"),
    ("release_decide", 1.0, "choose the release group"),
    (
        "set_response_header",
        1.0,
        "echo the trace id on the response",
    ),
];
const PROBE_OTHERS: [(&str, &str); 9] = [
    (
        "get_all_request_headers",
        "reference: the same map through the SDK's `get_map_bytes` (a `String` and a `Vec` per header)",
    ),
    (
        "get_needed_headers",
        "reference: instead of the map, each header the policies look at, one call each",
    ),
    (
        "stream_admit",
        "streams only: token bucket and concurrency decision",
    ),
    (
        "get_shared_data",
        "streams only: read the bucket (shared across workers)",
    ),
    ("set_shared_data", "streams only: compare-and-swap it back"),
    (
        "increment_metric",
        "per counter and tick, not per request (counters are batched)",
    ),
    (
        "clock",
        "reference: the cheapest host call (read the clock)",
    ),
    (
        "get_absent_header",
        "reference: look up a header that is absent",
    ),
    (
        "get_present_header",
        "reference: look up a present header (one call into the VM to allocate the value)",
    ),
];

fn probe_table(r: &Results) -> String {
    let Some(p) = &r.probe else {
        return missing("In-VM cost probe");
    };
    let ns = |op: &str| num(p, &["ns_per_call", op]);
    let mut s = String::from(
        "| operation | calls per plain request | ns per call | ns per request | what for |\n\
         | --- | ---: | ---: | ---: | --- |\n",
    );
    let mut total = 0.0;
    for (op, calls, what) in PROBE_PER_REQUEST {
        let per_call = ns(op);
        let per_request = per_call.map(|n| n * calls);
        total += per_request.unwrap_or(0.0);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.0}")).unwrap_or("–".into());
        let _ = writeln!(
            s,
            "| `{op}` | {calls} | {} | {} | {what} |",
            f(per_call),
            f(per_request)
        );
    }
    let _ = writeln!(
        s,
        "| **sum** | | | **{total:.0}** | the filter's own work on one plain request |"
    );
    for (op, what) in PROBE_OTHERS {
        let per_call = ns(op).map(|x| format!("{x:.0}")).unwrap_or("–".into());
        let _ = writeln!(s, "| `{op}` | – | {per_call} | – | {what} |");
    }
    if let (Some(map), Some(needed), Some(names), Some(present)) = (
        ns("get_all_request_headers_raw"),
        ns("get_needed_headers"),
        ns("needed_headers"),
        ns("needed_headers_present"),
    ) {
        let _ = writeln!(
            s,
            "\nWhole map or one header at a time: the policies look at {names:.0} headers on this request \
             ({present:.0} of them present, of {} in the map); reading them one call each costs {needed:.0} ns, \
             the whole map in one call {map:.0} ns, so the filter reads the whole map.",
            ns("request_headers").map_or("?".to_owned(), |n| format!("{n:.0}")),
        );
    }
    if let (Some(present), Some(absent)) = (ns("get_present_header"), ns("get_absent_header")) {
        let _ = writeln!(
            s,
            "\nOne call from Envoy into the VM (present − absent header): about {:.0} ns.",
            present - absent
        );
    }
    let rps = |v: &str| r.throughput.get(v).map(|t| t.rps).filter(|x| *x > 0.0);
    if let (Some(base), Some(empty)) = (rps("none"), rps("empty-wasm")) {
        let base_ns = 1e9 / base;
        let empty_ns = 1e9 / empty;
        let bound = 1e9 / (empty_ns + total) / base;
        let _ = writeln!(
            s,
            "\nBare Envoy spends {base_ns:.0} ns per request here and the empty Wasm filter {empty_ns:.0} ns. \
             The calls above add {total:.0} ns ({:.1}% of bare Envoy's time) to the empty filter, so a filter \
             making exactly these calls, with no other cost, would keep at most **{:.1}%** of bare \
             Envoy's throughput in this run.",
            100.0 * total / base_ns,
            100.0 * bound
        );
    }
    s
}

fn propagation_table(r: &Results) -> String {
    let Some(p) = &r.propagation else {
        return missing("Propagation benchmark");
    };
    let g = |k: &[&str]| num(p, k).unwrap_or(0.0);
    format!(
        "| updates | applied everywhere | timeouts | clients (filter instances) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
         | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n\nObserved at: {}.\n",
        g(&["updates"]),
        g(&["completed"]),
        g(&["timeouts"]),
        g(&["clients"]),
        g(&["latency", "p50_ms"]),
        g(&["latency", "p90_ms"]),
        g(&["latency", "p99_ms"]),
        g(&["latency", "max_ms"]),
        match p.get("observe").and_then(Value::as_str) {
            Some("envoy") => "an Envoy stat (the applied revision gauge)",
            _ => "the control plane's ACK record (`/v1/clients`)",
        }
    )
}

/// The first step of a fan-out result (a latency-sweep run has one).
fn first_step(m: &Value) -> Option<&Value> {
    m.get("steps")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
}

/// Fan-out with span export off and on: the server's CPU per delivery side
/// by side, and their ratio.
fn otlp_table(r: &Results) -> String {
    if r.otlp.is_empty() {
        return missing("Tracing-overhead benchmark");
    }
    let mut s = String::from(
        "| span export | subscribers | publish/s | delivered/s | loss | p50 (ms) | p99 (ms) | server CPU per delivery (µs) | client CPU per delivery (µs) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut per_delivery = BTreeMap::new();
    for (export, label) in [("off", "off"), ("on", "on (OTLP/gRPC to a sink)")] {
        let Some(m) = r.otlp.get(export) else {
            continue;
        };
        let Some(st) = first_step(m) else {
            continue;
        };
        let cpu = |field: &str| {
            num(st, &[field])
                .map(|us| format!("{us:.2}"))
                .unwrap_or("–".into())
        };
        if let Some(us) = num(st, &["server_cpu_us_per_delivery"]) {
            per_delivery.insert(export, us);
        }
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2}% | {:.1} | {:.1} | {} | {} |",
            num(m, &["connected"]).unwrap_or(0.0),
            num(st, &["publish_rate"]).unwrap_or(0.0),
            num(st, &["delivered_per_s"]).unwrap_or(0.0),
            100.0 * num(st, &["loss_ratio"]).unwrap_or(0.0),
            num(st, &["latency", "p50_ms"]).unwrap_or(0.0),
            num(st, &["latency", "p99_ms"]).unwrap_or(0.0),
            cpu("server_cpu_us_per_delivery"),
            cpu("client_cpu_us_per_delivery"),
        );
    }
    if let (Some(off), Some(on)) = (per_delivery.get("off"), per_delivery.get("on")) {
        if *off > 0.0 {
            let _ = writeln!(
                s,
                "\nServer CPU per delivery, export on / off: **{:.3}** ({:+.1}%).",
                on / off,
                100.0 * (on / off - 1.0)
            );
        }
    }
    if let Some(sink) = &r.otlp_sink {
        let _ = writeln!(
            s,
            "The sink received {:.0} spans in {:.0} export requests during the export-on run.",
            num(sink, &["spans"]).unwrap_or(0.0),
            num(sink, &["requests"]).unwrap_or(0.0),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:28000/\n  1 threads and 64 connections\n\
            Requests/sec:  23456.78\nTransfer/sec:      3.21MB\n  Non-2xx or 3xx responses: 5\n\
            Socket errors: connect 0, read 2, write 0, timeout 1\n";
        let t = parse_wrk(text);
        assert!((t.rps - 23456.78).abs() < 1e-6);
        assert_eq!(t.non_2xx, 5);
        assert_eq!(t.socket_errors, 3);
    }

    #[test]
    fn parses_core_usage() {
        assert_eq!(
            parse_cores("server core 97.0% busy, client core 64.2% busy\n"),
            Some((97.0, 64.2))
        );
        assert_eq!(parse_cores("garbage"), None);
    }

    #[test]
    fn otlp_overhead_is_export_on_against_off() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(otlp_table(&load(dir.path()).unwrap()).contains("not measured"));
        let step = |cpu: f64| {
            format!(
                r#"{{"connected": 2000, "steps": [{{"publish_rate": 10, "delivered_per_s": 20000,
                   "loss_ratio": 0, "latency": {{"p50_ms": 20.5, "p99_ms": 41.0, "max_ms": 50.0}},
                   "server_cpu_us_per_delivery": {cpu}, "client_cpu_us_per_delivery": 4.0}}]}}"#
            )
        };
        w("fanout-otlp-off.json", &step(8.0));
        w("fanout-otlp-on.json", &step(8.4));
        w("otlp-sink.json", r#"{"requests": 7, "spans": 2200}"#);
        let table = otlp_table(&load(dir.path()).unwrap());
        assert!(
            table.contains("| off | 2000 | 10 | 20000 | 0.00% | 20.5 | 41.0 | 8.00 | 4.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| on (OTLP/gRPC to a sink) | 2000 |"),
            "{table}"
        );
        assert!(
            table.contains("export on / off: **1.050** (+5.0%)"),
            "{table}"
        );
        assert!(table.contains("2200 spans in 7 export requests"), "{table}");
    }

    #[test]
    fn writes_markdown_and_plots_from_results() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        std::fs::create_dir_all(&results).unwrap();
        let w = |name: &str, text: &str| std::fs::write(results.join(name), text).unwrap();
        w(
            "conditions.json",
            r#"[["mode", "full"], ["machine", "2 cores"]]"#,
        );
        w("filter-none-wrk.txt", "Requests/sec:  20000.0\n");
        w("filter-sidestream-wrk.txt", "Requests/sec:  19000.0\n");
        w("filter-lua-wrk.txt", "Requests/sec:  15000.0\n");
        w("filter-empty-wasm-wrk.txt", "Requests/sec:  19500.0\n");
        w(
            "filter-probe.json",
            r#"{"runs": 3, "ns_per_call": {"get_all_request_headers_raw": 700, "trace_decide": 300,
               "get_all_request_headers": 1000, "get_needed_headers": 4300, "needed_headers": 12,
               "needed_headers_present": 5, "request_headers": 8,
               "set_request_header": 150, "clear_route_cache": 300, "release_decide": 50,
               "set_response_header": 150, "get_present_header": 500, "get_absent_header": 100}}"#,
        );
        w(
            "fanout-sidestream-epoll-subs-10000.json",
            r#"{"steps": [{"publish_rate": 2, "delivered_per_s": 20000, "loss_ratio": 0,
               "latency": {"p50_ms": 36.8, "p99_ms": 74.7, "max_ms": 80.4},
               "server_cpu_us_per_delivery": 9.81, "client_cpu_us_per_delivery": 4.3}]}"#,
        );
        w(
            "filter-none-cores.txt",
            "server core 99.0% busy, client core 60.0% busy\n",
        );
        w(
            "memory-sidestream-epoll.json",
            r#"{"connected": 18000, "closed_before_stop": 0, "failed": 0, "rss_before_kib": 10000,
               "rss_after_kib": 130000, "rss_per_connection_bytes": 6826.0, "connections_requested": 18000}"#,
        );
        w(
            "memory-nchan.json",
            r#"{"connected": 18000, "closed_before_stop": 0, "failed": 0, "rss_per_connection_bytes": 13652.0}"#,
        );
        let template = dir.path().join("t.md.in");
        std::fs::write(
            &template,
            "{{CONDITIONS}}\n{{FILTER_TABLE}}\n{{FILTER_PLOTS}}\n{{FILTER_PROBE_TABLE}}\n\
             {{PROPAGATION_TABLE}}\n{{MEMORY_TABLE}}\n{{MEMORY_PLOTS}}\n{{FANOUT_LATENCY_TABLE}}\n",
        )
        .unwrap();
        let args = ReportArgs {
            results,
            svg_dir: dir.path().join("svg"),
            template,
            markdown: dir.path().join("B.md"),
        };
        run(&args).unwrap();
        let md = std::fs::read_to_string(&args.markdown).unwrap();
        assert!(!md.contains("{{"), "{md}");
        assert!(md.contains("| mode | full |"), "{md}");
        assert!(md.contains("| sidestream filter | 19000 | 95.0% |"), "{md}");
        assert!(md.contains("99% / 60%"), "{md}");
        assert!(md.contains("1.27× the throughput"), "{md}");
        assert!(md.contains("Propagation benchmark: not measured"), "{md}");
        // The probe: 700 + 300 + 2 × 150 + 300 + 50 + 150 ns per plain request,
        // on top of the empty filter's 51,282 ns against bare Envoy's 50,000.
        assert!(
            md.contains("| `set_request_header` | 2 | 150 | 300 |"),
            "{md}"
        );
        assert!(md.contains("| **sum** | | | **1800** |"), "{md}");
        assert!(
            md.contains("look at 12 headers on this request (5 of them present, of 8 in the map); reading them one call each costs 4300 ns, the whole map in one call 700 ns"),
            "{md}"
        );
        assert!(md.contains("about 400 ns"), "{md}");
        assert!(md.contains("(3.6% of bare Envoy's time)"), "{md}");
        assert!(md.contains("at most **94.2%**"), "{md}");
        assert!(
            md.contains(
                "| sidestream-push (epoll) | 10000 | 2 | 20000 | 0.00% | 36.8 | 74.7 | 80.4 | 9.81 | – | 4.30 | – | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| Nchan | 18000 |") && md.contains("| 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("![filter throughput](svg/filter-throughput.svg)"),
            "{md}"
        );
        let svg = std::fs::read_to_string(dir.path().join("svg/push-memory.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Nchan"));
    }
}
