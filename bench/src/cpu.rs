//! CPU time of processes from `/proc/<pid>/stat` (user + system, all threads),
//! so a benchmark can say how much CPU the server and the load client each
//! spent per delivered message.

use crate::memory::process_tree;

/// Seconds of CPU used so far, in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Split {
    pub user: f64,
    pub system: f64,
}

impl Split {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// What was used between `before` and `self`.
    pub fn since(&self, before: &Split) -> Split {
        Split {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

/// Seconds of CPU (user + system) used so far by `roots` and every process below them.
pub fn of_trees(roots: &[u32]) -> anyhow::Result<f64> {
    Ok(split_of_trees(roots)?.total())
}

/// [`of_trees`], user space and kernel apart.
pub fn split_of_trees(roots: &[u32]) -> anyhow::Result<Split> {
    let (user, system) = process_tree(roots)?
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| stat_split(&stat))
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds));
    let hz = clock_ticks_per_second();
    Ok(Split {
        user: user as f64 / hz,
        system: system as f64 / hz,
    })
}

/// Seconds of CPU used so far by this process.
pub fn own() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_ticks(&stat))
        .map_or(0.0, |ticks| ticks as f64 / clock_ticks_per_second())
}

/// `utime + stime` of one `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    stat_split(stat).map(|(utime, stime)| utime + stime)
}

/// `(utime, stime)` of one `/proc/<pid>/stat` line. The command name may
/// contain spaces and parentheses, so fields are counted after the last `)`.
fn stat_split(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")": state(3) ppid(4) ... utime(14) stime(15): utime is the 12th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` times); 100 on Linux.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks: &f64| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_tricky_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 5 1000 200";
        assert_eq!(stat_ticks(stat), Some(325));
        assert_eq!(stat_split(stat), Some((250, 75)));
    }

    #[test]
    fn this_process_uses_cpu() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own() > 0.0);
        let mine = of_trees(&[std::process::id()]).unwrap_or(0.0);
        assert!(mine > 0.0, "CPU of this process tree: {mine}");
        let split = split_of_trees(&[std::process::id()]).unwrap();
        assert!(split.user > 0.0, "{split:?}");
        assert!(split.total() >= mine, "{split:?} against {mine}");
    }
}
