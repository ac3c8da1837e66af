//! Fixed-rate (open-loop) HTTP latency client, the job wrk2 does elsewhere.
//!
//! Requests are scheduled at `start + n / rate` and spread over keep-alive
//! connections round robin. Latency is measured from the *scheduled* send
//! time, not the actual one, so a stalled server is charged for the requests
//! it delayed (no coordinated omission). Each response is also checked for
//! what the upstream saw (`x-bench-traced`, `x-bench-group`), so a filter that
//! silently stopped working would show up in the result.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::histogram::LatencySummary;
use crate::http1::{parse_url, Connection};

#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Target URL (http://ip:port/path).
    #[arg(long)]
    pub url: String,
    /// Requests per second, in total.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Send `x-user-id: user-<n>` with a different n on every request.
    #[arg(long)]
    pub vary_user: bool,
    /// The server's processes (with their children): their CPU time over the
    /// measured seconds is reported per answered request.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Label stored in the result.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result as JSON here (also printed).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub label: String,
    pub url: String,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub connections: usize,
    pub duration_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub non_2xx: u64,
    /// Responses whose upstream saw a `traceparent`.
    pub traced: u64,
    /// Responses routed with `x-sidestream-group: canary`.
    pub canary: u64,
    pub latency: LatencySummary,
    /// CPU seconds the server used over the measured seconds, if its pids
    /// were given.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per answered request, in microseconds: at a fixed rate,
    /// steadier than throughput at saturation.
    pub server_cpu_us_per_request: Option<f64>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    non_2xx: u64,
    traced: u64,
    canary: u64,
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<LatencyResult> {
    anyhow::ensure!(
        args.rate > 0.0 && args.connections > 0,
        "rate and connections must be positive"
    );
    let (addr, path) = parse_url(&args.url)?;
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("header must be 'name: value': {h}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for lane in 0..args.connections {
        let path = path.clone();
        let headers = headers.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(lane_loop(
            addr,
            path,
            headers,
            args,
            lane,
            start,
            measure_from,
            end,
        )));
    }
    // The server's CPU over exactly the measured window.
    let server_cpu = (!args.server_pids.is_empty()).then(|| {
        let pids = args.server_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let before = crate::cpu::of_trees(&pids)?;
            tokio::time::sleep_until(end.into()).await;
            anyhow::Ok(crate::cpu::of_trees(&pids)? - before)
        })
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await??;
        hist.add(&h)?;
        tally.ok += t.ok;
        tally.errors += t.errors;
        tally.non_2xx += t.non_2xx;
        tally.traced += t.traced;
        tally.canary += t.canary;
    }
    let server_cpu_s = match server_cpu {
        Some(task) => Some(task.await?.context("the server's CPU time (/proc)")?),
        None => None,
    };
    let answered = tally.ok + tally.non_2xx;
    let server_cpu_us_per_request = server_cpu_s
        .filter(|_| answered > 0)
        .map(|s| s * 1e6 / answered as f64);
    Ok(LatencyResult {
        label: args.label.clone(),
        url: args.url.clone(),
        target_rate: args.rate,
        achieved_rate: (tally.ok + tally.non_2xx) as f64 / args.duration,
        connections: args.connections,
        duration_s: args.duration,
        ok: tally.ok,
        errors: tally.errors,
        non_2xx: tally.non_2xx,
        traced: tally.traced,
        canary: tally.canary,
        latency: LatencySummary::from_hdr(&hist),
        server_cpu_s,
        server_cpu_us_per_request,
    })
}

#[allow(clippy::too_many_arguments)]
async fn lane_loop(
    addr: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
    args: LatencyArgs,
    lane: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Histogram<u64>, Tally)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    let mut conn = Connection::new(addr);
    let interval = args.connections as f64 / args.rate;
    let mut n: u64 = 0;
    loop {
        let scheduled =
            start + Duration::from_secs_f64((n as f64 * interval) + lane as f64 / args.rate);
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let user = format!("user-{}", n * args.connections as u64 + lane as u64);
        let mut h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        if args.vary_user {
            h.push(("x-user-id", &user));
        }
        let result = conn.request("GET", &path, &h, b"").await;
        let done = Instant::now();
        n += 1;
        if scheduled < measure_from {
            continue;
        }
        match result {
            Ok(r) => {
                let us = done.duration_since(scheduled).as_micros();
                hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                if (200..300).contains(&r.status) {
                    tally.ok += 1;
                } else {
                    tally.non_2xx += 1;
                }
                if r.header("x-bench-traced") == Some("1") {
                    tally.traced += 1;
                }
                if r.header("x-bench-group") == Some("canary") {
                    tally.canary += 1;
                }
            }
            Err(_) => tally.errors += 1,
        }
    }
    Ok((hist, tally))
}
