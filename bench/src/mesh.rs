//! Stream opens through one or more Envoys, for the mesh-wide stream limits
//! (issue 9): every request is an SSE open (`accept: text/event-stream`) of
//! one tenant, so the filter's stream-limit policy decides it.
//!
//! * With `--rate`, open loop: opens are scheduled at `start + n / rate`,
//!   spread round robin over keep-alive connections and the connections over
//!   the targets; the time of an open is measured from its *scheduled* send
//!   to its response head (no coordinated omission), for the open's admission
//!   decision plus the upstream's answer.
//! * With `--count` (and no rate), a storm: `count` opens as fast as the
//!   connections go, and what matters is how many were admitted (`200`) and
//!   refused (`429`) against the policy's limit.
//!
//! The upstream answers at once (the echo upstream), so each admitted stream
//! ends right after its head: its slot goes back, and only the token bucket
//! limits a storm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::histogram::LatencySummary;
use crate::http1::Connection;

#[derive(Debug, Clone, clap::Args)]
pub struct OpensArgs {
    /// An Envoy listener `ip:port` (repeatable; connections are spread over them).
    #[arg(long = "target", required = true)]
    pub targets: Vec<SocketAddr>,
    /// Request path.
    #[arg(long, default_value = "/events")]
    pub path: String,
    /// The `x-tenant-id` every open carries.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// Opens per second in total (open loop); without it, a storm of `--count`.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds at `--rate` (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of load before measuring (at `--rate`).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Opens of a storm (without `--rate`).
    #[arg(long, default_value_t = 5000)]
    pub count: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Label stored in the result.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result as JSON here (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpensResult {
    pub label: String,
    pub targets: usize,
    /// Open loop: the target rate; storm: none.
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    pub connections: usize,
    pub duration_s: f64,
    /// Opens answered 200 (admitted).
    pub admitted: u64,
    /// Opens answered 429 (refused by a limit).
    pub refused: u64,
    /// Any other status.
    pub other_status: u64,
    /// Connection errors.
    pub errors: u64,
    /// Every open sent, the warm-up's included (what Redis saw).
    pub sent_total: u64,
    pub latency: LatencySummary,
}

#[derive(Default)]
struct Tally {
    admitted: u64,
    refused: u64,
    other: u64,
    errors: u64,
    sent: u64,
}

pub async fn run(args: OpensArgs) -> anyhow::Result<OpensResult> {
    anyhow::ensure!(args.connections > 0, "connections must be positive");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "rate must be positive");
    }
    let headers = vec![
        ("accept".to_owned(), "text/event-stream".to_owned()),
        ("x-tenant-id".to_owned(), args.tenant.clone()),
    ];
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs_f64(args.rate.map_or(0.0, |_| args.warmup));
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let left = Arc::new(AtomicU64::new(args.count));
    let mut tasks = Vec::new();
    for lane in 0..args.connections {
        let lane_args = Lane {
            addr: args.targets[lane % args.targets.len()],
            path: args.path.clone(),
            headers: headers.clone(),
            rate: args.rate,
            connections: args.connections,
            lane,
            start,
            measure_from,
            end,
            left: Arc::clone(&left),
        };
        tasks.push(tokio::spawn(lane_loop(lane_args)));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await??;
        hist.add(&h)?;
        tally.admitted += t.admitted;
        tally.refused += t.refused;
        tally.other += t.other;
        tally.errors += t.errors;
        tally.sent += t.sent;
    }
    let elapsed = match args.rate {
        Some(_) => args.duration,
        None => start.elapsed().as_secs_f64(),
    };
    let answered = tally.admitted + tally.refused + tally.other;
    Ok(OpensResult {
        label: args.label.clone(),
        targets: args.targets.len(),
        target_rate: args.rate,
        achieved_rate: answered as f64 / elapsed.max(f64::MIN_POSITIVE),
        connections: args.connections,
        duration_s: elapsed,
        admitted: tally.admitted,
        refused: tally.refused,
        other_status: tally.other,
        errors: tally.errors,
        sent_total: tally.sent,
        latency: LatencySummary::from_hdr(&hist),
    })
}

struct Lane {
    addr: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
    rate: Option<f64>,
    connections: usize,
    lane: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    left: Arc<AtomicU64>,
}

async fn lane_loop(lane: Lane) -> anyhow::Result<(Histogram<u64>, Tally)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    let mut conn = Connection::new(lane.addr);
    let headers: Vec<(&str, &str)> = lane
        .headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    tokio::time::sleep_until(lane.start.into()).await;
    let mut n: u64 = 0;
    loop {
        let scheduled = match lane.rate {
            Some(rate) => {
                let at = lane.start
                    + Duration::from_secs_f64(
                        (n as f64 * lane.connections as f64 + lane.lane as f64) / rate,
                    );
                if at >= lane.end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => {
                let taken = lane
                    .left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1));
                if taken.is_err() {
                    break;
                }
                Instant::now()
            }
        };
        let result = conn.request("GET", &lane.path, &headers, b"").await;
        let done = Instant::now();
        n += 1;
        tally.sent += 1;
        if scheduled < lane.measure_from {
            continue;
        }
        match result {
            Ok(r) => {
                let us = done.duration_since(scheduled).as_micros();
                hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                match r.status {
                    200..=299 => tally.admitted += 1,
                    429 => tally.refused += 1,
                    _ => tally.other += 1,
                }
            }
            Err(_) => tally.errors += 1,
        }
    }
    Ok((hist, tally))
}
