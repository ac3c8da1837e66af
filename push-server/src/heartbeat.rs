//! A stream's heartbeat ticks (SSE comment, WebSocket ping, gRPC
//! heartbeat): every `--heartbeat`, the first at a random point in the
//! second half of the period. Streams opened together (a reconnect storm, a
//! deploy, a benchmark's subscribers) would otherwise beat together for the
//! rest of their lives: thousands of writes, and on the io_uring path as
//! many connections taken back from the writer, in the same few
//! milliseconds, once per period. No gap between a stream's open or its
//! previous heartbeat and the next is longer than the period.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The shortest period (a smaller `--heartbeat` is raised to it).
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Ticks every `period` (at least 10 ms), the first after [`first_beat`]
/// with a random `unit`.
pub fn ticks(period: Duration) -> Interval {
    let period = period.max(MIN_PERIOD);
    let first = first_beat(period, rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(Instant::now() + first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// When the first heartbeat is due after the stream opens: `unit` in
/// `[0, 1]` picks a point from half the period to the whole of it.
pub fn first_beat(period: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        1.0
    };
    period.mul_f64(0.5 + 0.5 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_beat_falls_in_the_second_half_of_the_period() {
        let period = Duration::from_secs(15);
        assert_eq!(first_beat(period, 0.0), Duration::from_millis(7_500));
        assert_eq!(first_beat(period, 0.5), Duration::from_millis(11_250));
        assert_eq!(first_beat(period, 1.0), period);
        // Out of range or not a number: never past the period.
        assert_eq!(first_beat(period, 7.0), period);
        assert_eq!(first_beat(period, -1.0), Duration::from_millis(7_500));
        assert_eq!(first_beat(period, f64::NAN), period);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_opened_together_beat_apart_then_every_period() {
        let period = Duration::from_secs(15);
        let opened = Instant::now();
        let streams: Vec<_> = (0..64)
            .map(|_| {
                tokio::spawn(async move {
                    let mut beats = ticks(period);
                    let first = beats.tick().await - opened;
                    let second = beats.tick().await - opened;
                    (first, second)
                })
            })
            .collect();
        let mut firsts = Vec::new();
        for stream in streams {
            let (first, second) = stream.await.unwrap();
            assert!(first >= period / 2 && first <= period, "{first:?}");
            assert_eq!(second - first, period);
            firsts.push(first);
        }
        firsts.sort();
        firsts.dedup();
        assert!(
            firsts.len() > 32,
            "64 streams share {} phases",
            firsts.len()
        );
    }

    #[test]
    fn a_tiny_period_is_raised() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let beats = runtime.block_on(async { ticks(Duration::ZERO) });
        assert_eq!(beats.period(), MIN_PERIOD);
    }
}
