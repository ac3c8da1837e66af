//! The one reconnect and retry backoff of every sidestream component:
//! capped exponential with full jitter. The randomness is an argument, so the
//! schedule is tested without a clock or an RNG, and the same code runs in the
//! daemons and in the Wasm filter.
//!
//! Full jitter (a delay uniform in `[0, min(max, initial · 2^attempt))`)
//! spreads clients that failed at the same moment (every stream replaying
//! after a Redis blip, every filter VM after a control-plane restart) over the
//! whole window instead of bringing them back in step.

use std::time::Duration;

/// Reconnect delays: `initial · 2^attempt`, capped at `max`, then scaled by a
/// uniform random factor in `[0, 1)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

/// Why a backoff's bounds were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff: the initial delay must be above zero")]
    ZeroInitial,
    #[error("backoff: the maximum delay {max:?} is below the initial delay {initial:?}")]
    MaxBelowInitial { initial: Duration, max: Duration },
}

impl Backoff {
    /// A backoff from `initial` up to `max`; both must be sensible.
    pub fn try_new(initial: Duration, max: Duration) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        Ok(Backoff {
            initial,
            max,
            attempt: 0,
        })
    }

    /// A backoff from `initial` up to `max`, mending bounds instead of
    /// refusing them (for constants and already validated settings): a zero
    /// initial becomes 1 ms, a `max` below `initial` becomes `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before attempt number `attempt` (0-based) for a uniform
    /// `random` in `[0, 1)`, without changing the state.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(30));
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(random)
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let delay = self.delay(self.attempt, random);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Forgets past failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A uniform `[0, 1)` factor from 64 random bits (for hosts that hand out
/// integers, such as the filter's).
pub fn unit_interval(random: u64) -> f64 {
    // The top 53 bits: every value exactly representable, never 1.0.
    (random >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_full_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let upper: Vec<u128> = (0..6)
            .map(|_| backoff.next_delay(0.999_999).as_millis())
            .collect();
        assert_eq!(upper, vec![99, 199, 399, 799, 999, 999]);
        assert_eq!(backoff.attempts(), 6);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::ZERO);
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(100));
        assert_eq!(backoff.attempts(), 2);
    }

    #[test]
    fn bad_bounds_are_refused_or_mended() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, Duration::from_secs(1)),
            Err(BackoffError::ZeroInitial)
        );
        assert!(matches!(
            Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(BackoffError::MaxBelowInitial { .. })
        ));
        let mended = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(mended.delay(5, 0.999), Duration::from_micros(999));
    }

    #[test]
    fn never_overflows_and_ignores_bad_randomness() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(backoff.next_delay(0.5) <= Duration::from_secs(30));
        }
        assert_eq!(backoff.delay(3, f64::NAN), Duration::ZERO);
        assert_eq!(backoff.delay(3, 7.0), Duration::from_secs(8));
    }

    #[test]
    fn unit_interval_stays_below_one() {
        assert_eq!(unit_interval(0), 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
        assert!((unit_interval(1 << 63) - 0.5).abs() < 1e-12);
    }
}
