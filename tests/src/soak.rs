//! The soak's pieces: the whole stack as separately supervised processes
//! (so any one of them can be SIGKILLed and started again, which
//! `scripts/run-stack.sh` does only for push servers), a seeded random
//! number generator, and the ledger that checks every subscriber's sequence.

pub mod ledger;
pub mod supervisor;

/// SplitMix64: small, seedable, good enough to choose victims and delays
/// (a soak must be replayable from its printed seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }

    /// A duration uniform in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.range(low, high))
    }

    /// Shuffles `items` (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            items.swap(i, j);
        }
    }

    /// A fresh seed from the clock and the process id.
    pub fn seed_from_clock() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 32)
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`),
/// `None` when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..16).map(|_| a.range(0, 9)).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.range(0, 9)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| *x <= 9));
        let mut c = Rng::new(43);
        let zs: Vec<u64> = (0..16).map(|_| c.range(0, 9)).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut rng = Rng::new(7);
        let mut items: Vec<u32> = (0..10).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
