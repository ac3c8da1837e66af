//! A stream's heartbeat ticks (SSE comment, WebSocket ping, gRPC
//! heartbeat): every `--heartbeat`, the first one period after the stream
//! opened.
//!
//! The phase is not randomised. Tried: streams opened together (a reconnect
//! storm, a benchmark's subscribers) then beat apart, but 10,000 timers
//! spread over the period wake the runtime's threads some 700 times a
//! second, and the server's CPU per delivery at 10,000 subscribers × 1
//! message/s went up by 35–50% (BENCHMARKS.md section 3). Firing together,
//! they are handled in one pass of the timer wheel; and an SSE stream that
//! was written to during the period writes nothing at its tick
//! ([`crate::http::sse::SseBody::poll_heartbeat`]), so a busy storm's ticks
//! cost a poll each.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The shortest period (a smaller `--heartbeat` is raised to it).
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Ticks every `period` (at least 10 ms), the first one period from now; a
/// tick polled late is followed by the next a whole period later.
pub fn ticks(period: Duration) -> Interval {
    let period = period.max(MIN_PERIOD);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_beat_is_one_period_after_the_open_then_every_period() {
        let period = Duration::from_secs(15);
        let opened = Instant::now();
        let mut beats = ticks(period);
        assert_eq!(beats.tick().await - opened, period);
        assert_eq!(beats.tick().await - opened, 2 * period);
        // Polled late: the next is a whole period after the late one.
        tokio::time::sleep(Duration::from_secs(20)).await;
        beats.tick().await;
        let late = Instant::now();
        assert_eq!(beats.tick().await - late, period);
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
