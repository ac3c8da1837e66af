//! Fan-out benchmark: N SSE subscribers on one topic, a publisher at a steady
//! rate, in steps (publish rate × seconds). For each step: deliveries per
//! second while publishing, messages lost, and publish-to-receive latency
//! (the publish timestamp travels in the payload; client and server share the
//! machine's clock).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::histogram::LatencySummary;
use crate::publish::{Kind, Publisher};
use crate::sse::{make_payload, parse_sources, subscriber, unix_nanos, Shared, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// SSE subscribe URL.
    #[arg(long)]
    pub sub_url: String,
    #[arg(long, value_enum)]
    pub publish_kind: Kind,
    /// Publish URL (see `publish.rs` for each kind).
    #[arg(long)]
    pub publish_url: String,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Source addresses for the subscribers, e.g. 127.0.0.2-127.0.0.9.
    #[arg(long, default_value = "")]
    pub sources: String,
    /// Steps `rate:seconds` (messages published per second), comma separated.
    #[arg(long, default_value = "2:10")]
    pub steps: String,
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Seconds to wait after every subscriber is connected.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds at the start of each step not counted in the delivery rate.
    #[arg(long, default_value_t = 1.0)]
    pub warm: f64,
    /// Seconds after each step for late deliveries.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Concurrent publish connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// The server's processes (with their children), whose CPU time each
    /// step reports per delivery; none: only the client's own CPU is reported.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub publish_rate: f64,
    pub duration_s: f64,
    pub published: u64,
    pub publish_errors: u64,
    /// publish rate × connected subscribers.
    pub offered_per_s: f64,
    /// Deliveries per second while publishing (after the warm-up).
    pub delivered_per_s: f64,
    /// Deliveries of this step's messages, including the drain.
    pub delivered: u64,
    pub expected: u64,
    pub loss_ratio: f64,
    pub latency: LatencySummary,
    /// CPU seconds the server used from the step's start to the end of its
    /// drain (all its processes), if its pids were given.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds this load client used over the same time.
    pub client_cpu_s: f64,
    /// `server_cpu_s` per delivered message, in microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// `client_cpu_s` per delivered message, in microseconds.
    pub client_cpu_us_per_delivery: Option<f64>,
    /// The user-space part of `server_cpu_s` (the rest is the kernel's).
    pub server_user_cpu_s: Option<f64>,
    /// `server_user_cpu_s` per delivered message, in microseconds.
    pub server_user_cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub label: String,
    pub kind: Kind,
    pub subscribers: usize,
    pub connected: u64,
    pub failed: u64,
    /// Failed connection attempts that were retried.
    pub connect_retries: u64,
    /// Subscriber connections that ended during the run.
    pub closed: u64,
    pub payload_bytes: usize,
    pub connect_seconds: f64,
    pub steps: Vec<StepResult>,
    pub max_delivered_per_s: f64,
    pub missed: u64,
    pub out_of_order: u64,
    pub first_error: Option<String>,
}

/// CPU seconds of the server's processes, if given and readable.
fn server_cpu(pids: &[u32]) -> Option<crate::cpu::Split> {
    if pids.is_empty() {
        return None;
    }
    match crate::cpu::split_of_trees(pids) {
        Ok(seconds) => Some(seconds),
        Err(error) => {
            eprintln!("fanout: cannot read the server's CPU time: {error:#}");
            None
        }
    }
}

fn parse_steps(spec: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (r, d) = s
                .split_once(':')
                .with_context(|| format!("step must be rate:seconds, got {s}"))?;
            let r: f64 = r.parse().with_context(|| format!("bad rate in {s}"))?;
            let d: f64 = d.parse().with_context(|| format!("bad seconds in {s}"))?;
            anyhow::ensure!(
                r > 0.0 && d > 0.0,
                "step {s}: rate and seconds must be positive"
            );
            Ok((r, d))
        })
        .collect()
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<FanoutResult> {
    let steps = parse_steps(&args.steps)?;
    let target = Target::sse(&args.sub_url)?;
    let sources = Arc::new(parse_sources(&args.sources)?);
    let shared = Shared::new(steps.len(), true, args.connect_concurrency);
    let began = Instant::now();
    for _ in 0..args.subscribers {
        tokio::spawn(subscriber(target.clone(), sources.clone(), shared.clone()));
    }
    let deadline = began + Duration::from_secs_f64(args.connect_timeout);
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.subscribers as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_seconds = began.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    eprintln!(
        "fanout {}: {connected}/{} subscribers connected in {connect_seconds:.1}s ({} failed, {} retried{})",
        args.label,
        args.subscribers,
        shared.failed.load(Ordering::Relaxed),
        shared.retries.load(Ordering::Relaxed),
        shared
            .first_error()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    anyhow::ensure!(connected > 0, "no subscriber connected");
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let mut results = Vec::new();
    for (k, &(rate, seconds)) in steps.iter().enumerate() {
        let connected_now =
            shared.connected.load(Ordering::Relaxed) - shared.closed.load(Ordering::Relaxed);
        let server_cpu_before = server_cpu(&args.server_pids);
        let client_cpu_before = crate::cpu::own();
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + Duration::from_secs_f64(seconds);
        let mut lanes = Vec::new();
        let total = (rate * seconds).round() as u64;
        for lane in 0..args.publishers.max(1) as u64 {
            let mut publisher = Publisher::new(args.publish_kind, &args.publish_url, &args.topic)?;
            let lanes_n = args.publishers.max(1) as u64;
            let payload_bytes = args.payload_bytes;
            // Sequence numbers continue across steps so gaps stay visible.
            let seq_base = results
                .iter()
                .map(|r: &StepResult| r.published + r.publish_errors)
                .sum::<u64>();
            lanes.push(tokio::spawn(async move {
                let (mut ok, mut err) = (0u64, 0u64);
                let mut i = lane;
                while i < total {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    let payload =
                        make_payload(unix_nanos(), seq_base + i + 1, k as u64, payload_bytes);
                    match publisher.publish(&payload).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            if err == 0 {
                                eprintln!("publish failed: {e:#}");
                            }
                            err += 1;
                        }
                    }
                    i += lanes_n;
                }
                (ok, err)
            }));
        }
        let warm_at = start + Duration::from_secs_f64(args.warm.min(seconds / 2.0));
        tokio::time::sleep_until(warm_at.into()).await;
        let c0 = shared.delivered.load(Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep_until(end.into()).await;
        let c1 = shared.delivered.load(Ordering::Relaxed);
        let window = t0.elapsed().as_secs_f64();
        let (mut published, mut publish_errors) = (0, 0);
        for lane in lanes {
            let (ok, err) = lane.await?;
            published += ok;
            publish_errors += err;
        }
        tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
        let server_cpu = server_cpu(&args.server_pids)
            .zip(server_cpu_before)
            .map(|(after, before)| after.since(&before));
        let server_cpu_s = server_cpu.map(|c| c.total());
        let server_user_cpu_s = server_cpu.map(|c| c.user);
        let client_cpu_s = crate::cpu::own() - client_cpu_before;
        let step = &shared.steps[k];
        let delivered = step.delivered.load(Ordering::Relaxed);
        let per_delivery = |seconds: f64| (delivered > 0).then(|| seconds * 1e6 / delivered as f64);
        let expected = published * connected_now;
        let result = StepResult {
            publish_rate: rate,
            duration_s: seconds,
            published,
            publish_errors,
            offered_per_s: rate * connected_now as f64,
            delivered_per_s: (c1 - c0) as f64 / window,
            delivered,
            expected,
            loss_ratio: if expected == 0 {
                0.0
            } else {
                1.0 - (delivered as f64 / expected as f64)
            },
            latency: step.latency.summary(),
            server_cpu_s,
            client_cpu_s,
            server_cpu_us_per_delivery: server_cpu_s.and_then(per_delivery),
            client_cpu_us_per_delivery: per_delivery(client_cpu_s),
            server_user_cpu_s,
            server_user_cpu_us_per_delivery: server_user_cpu_s.and_then(per_delivery),
        };
        eprintln!(
            "fanout {} step {k}: {rate}/s × {connected_now} subs: {:.0} deliveries/s (offered {:.0}), loss {:.3}%, p50 {:.1} ms p99 {:.1} ms",
            args.label,
            result.delivered_per_s,
            result.offered_per_s,
            result.loss_ratio * 100.0,
            result.latency.p50_ms,
            result.latency.p99_ms
        );
        results.push(result);
    }
    Ok(FanoutResult {
        label: args.label.clone(),
        kind: args.publish_kind,
        subscribers: args.subscribers,
        connected,
        failed: shared.failed.load(Ordering::Relaxed),
        connect_retries: shared.retries.load(Ordering::Relaxed),
        closed: shared.closed.load(Ordering::Relaxed),
        payload_bytes: args.payload_bytes,
        connect_seconds,
        max_delivered_per_s: results
            .iter()
            .map(|r| r.delivered_per_s)
            .fold(0.0, f64::max),
        steps: results,
        missed: shared.missed.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        first_error: shared.first_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_steps("2:10,5:3.5").unwrap(),
            vec![(2.0, 10.0), (5.0, 3.5)]
        );
        assert!(parse_steps("2").is_err());
        assert!(parse_steps("0:1").is_err());
    }
}
