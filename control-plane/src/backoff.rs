//! Capped exponential backoff with jitter, for reconnecting to etcd. The
//! randomness is an argument so the schedule is tested without a clock.

use std::time::Duration;

/// Reconnect delays: `initial * 2^attempt`, capped at `max`, then jittered to
/// a value in `[delay / 2, delay)` ("equal jitter": never zero, never in step
/// with other control planes that lost etcd at the same moment).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and never waiting longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `jitter` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let capped = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = jitter.clamp(0.0, 1.0);
        capped.mul_f64(0.5 + jitter / 2.0)
    }

    /// Forgets past failures (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_within_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let upper: Vec<Duration> = (0..6).map(|_| backoff.next_delay(0.999_999)).collect();
        let millis: Vec<u128> = upper.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, vec![99, 199, 399, 799, 999, 999]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(backoff.attempts(), 2);
    }

    #[test]
    fn never_overflows() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(backoff.next_delay(0.5) <= Duration::from_secs(30));
        }
    }
}
