//! Latency recording shared by many tasks without locks: a fixed array of
//! atomic counters with linear buckets (50 µs wide, up to 10 s; larger values
//! land in the last bucket and are also tracked as the exact maximum).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Bucket width in microseconds.
pub const BUCKET_US: u64 = 50;
const BUCKETS: usize = 200_000;

/// A lock-free latency histogram in microseconds.
pub struct AtomicHistogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHistogram {
    pub fn new() -> AtomicHistogram {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record_us(&self, us: u64) {
        let i = usize::try_from(us / BUCKET_US)
            .unwrap_or(BUCKETS - 1)
            .min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Percentiles and count of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0u64;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Report the bucket's upper edge (conservative).
                    return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
                }
            }
            0.0
        };
        LatencySummary {
            count: total,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// From an hdrhistogram recorded in microseconds.
    pub fn from_hdr(h: &hdrhistogram::Histogram<u64>) -> LatencySummary {
        let ms = |v: u64| v as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let h = AtomicHistogram::new();
        for ms in 1..=100u64 {
            h.record_us(ms * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.05).abs() < 0.02, "{s:?}");
        assert!((s.p99_ms - 99.05).abs() < 0.02, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 1e-9);
    }

    #[test]
    fn huge_values_are_clamped_but_max_is_exact() {
        let h = AtomicHistogram::new();
        h.record_us(60_000_000);
        let s = h.summary();
        assert_eq!(s.count, 1);
        assert!((s.max_ms - 60_000.0).abs() < 1e-9);
    }
}
