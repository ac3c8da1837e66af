//! Idle-connection benchmark: hold many SSE connections open and measure the
//! server's memory per connection.
//!
//! `memory` measures the server's resident memory (RSS, and PSS so pages
//! shared between a server's processes are not counted twice), starts several
//! `hold` child processes (each process may open at most `ulimit -n` files),
//! each connecting from its own 127.0.0.x source addresses, waits until every
//! connection is up, lets the server settle, measures again, and reports
//! `(after - before) / connections`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::sse::{parse_sources, subscriber, Shared, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub connections: usize,
    #[arg(long, default_value = "")]
    pub sources: String,
    /// Written (JSON) once every connection is up or failed.
    #[arg(long)]
    pub ready_file: PathBuf,
    /// The process exits when this file appears.
    #[arg(long)]
    pub stop_file: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldReport {
    pub connected: u64,
    pub failed: u64,
    #[serde(default)]
    pub retries: u64,
    pub closed: u64,
    pub seconds: f64,
    pub first_error: Option<String>,
}

/// One holding process: open, report ready, keep everything open until told
/// to stop, report again (how many were still open).
pub async fn hold(args: HoldArgs) -> anyhow::Result<HoldReport> {
    let target = Target::sse(&args.url)?;
    let sources = Arc::new(parse_sources(&args.sources)?);
    let shared = Shared::new(0, false, args.connect_concurrency);
    let began = Instant::now();
    for _ in 0..args.connections {
        tokio::spawn(subscriber(target.clone(), sources.clone(), shared.clone()));
    }
    let deadline = began + Duration::from_secs_f64(args.timeout);
    let report = |shared: &Shared| HoldReport {
        connected: shared.connected.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        retries: shared.retries.load(Ordering::Relaxed),
        closed: shared.closed.load(Ordering::Relaxed),
        seconds: began.elapsed().as_secs_f64(),
        first_error: shared.first_error(),
    };
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.connections as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_json(&args.ready_file, &report(&shared))?;
    while !args.stop_file.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(report(&shared))
}

#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    #[arg(long)]
    pub url: String,
    /// Server processes (their descendants are included).
    #[arg(long = "server-pid", required = true)]
    pub server_pids: Vec<u32>,
    #[arg(long, default_value_t = 18_000)]
    pub connections: usize,
    /// Holding processes; connections are split evenly.
    #[arg(long, default_value_t = 2)]
    pub processes: usize,
    /// Source addresses, split between the processes.
    #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
    pub sources: String,
    /// Seconds to let the server settle before each measurement.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    #[arg(long, default_value = "")]
    pub label: String,
    /// Scratch folder for the ready/stop files.
    #[arg(long, default_value = "bench/out/tmp")]
    pub work_dir: PathBuf,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub label: String,
    pub connections_requested: usize,
    pub connected: u64,
    pub failed: u64,
    /// Failed connection attempts that were retried.
    pub connect_retries: u64,
    /// Connections that had ended by the time the holders stopped.
    pub closed_before_stop: u64,
    pub processes_measured: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub pss_before_kib: u64,
    pub pss_after_kib: u64,
    pub rss_per_connection_bytes: f64,
    pub pss_per_connection_bytes: f64,
    pub connect_seconds: f64,
    pub first_error: Option<String>,
}

pub async fn memory(args: MemoryArgs) -> anyhow::Result<MemoryResult> {
    std::fs::create_dir_all(&args.work_dir)?;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let before = ProcessMemory::of_trees(&args.server_pids)?;
    let sources = parse_sources(&args.sources)?;
    let n = args.processes.max(1);
    let stop = args
        .work_dir
        .join(format!("hold-{}-stop", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let exe = std::env::current_exe()?;
    let mut children: Vec<(Child, PathBuf)> = Vec::new();
    let began = Instant::now();
    for i in 0..n {
        let count = args.connections / n + usize::from(i < args.connections % n);
        let mine: Vec<String> = sources
            .iter()
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, ip)| ip.to_string())
            .collect();
        let ready = args
            .work_dir
            .join(format!("hold-{}-{i}-ready", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(&exe)
            .arg("hold")
            .args(["--url", &args.url])
            .args(["--connections", &count.to_string()])
            .args(["--sources", &mine.join(",")])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--stop-file")
            .arg(&stop)
            .spawn()
            .context("start hold process")?;
        children.push((child, ready));
    }
    let mut reports = Vec::new();
    for (child, ready) in &mut children {
        loop {
            if ready.exists() {
                let text = std::fs::read_to_string(&*ready)?;
                if let Ok(r) = serde_json::from_str::<HoldReport>(&text) {
                    reports.push(r);
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("hold process exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let connect_seconds = began.elapsed().as_secs_f64();
    let connected: u64 = reports.iter().map(|r| r.connected).sum();
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    let connect_retries: u64 = reports.iter().map(|r| r.retries).sum();
    eprintln!(
        "memory {}: {connected} connected, {failed} failed in {connect_seconds:.1}s",
        args.label
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = ProcessMemory::of_trees(&args.server_pids)?;
    std::fs::write(&stop, b"stop")?;
    let mut closed = 0;
    let mut first_error = reports.iter().find_map(|r| r.first_error.clone());
    for (child, _) in &mut children {
        let output = child.wait()?;
        if !output.success() {
            first_error.get_or_insert_with(|| format!("hold process failed: {output}"));
        }
    }
    // The holders print their final report on stdout; we only need the
    // closed counts, which they also wrote to their ready files' siblings.
    for (_, ready) in &children {
        let done = ready.with_extension("done");
        if let Ok(text) = std::fs::read_to_string(&done) {
            if let Ok(r) = serde_json::from_str::<HoldReport>(&text) {
                closed += r.closed;
            }
        }
    }
    let _ = std::fs::remove_file(&stop);
    let per = |a: u64, b: u64| {
        if connected == 0 {
            0.0
        } else {
            (a.saturating_sub(b) as f64 * 1024.0) / connected as f64
        }
    };
    Ok(MemoryResult {
        label: args.label.clone(),
        connections_requested: args.connections,
        connected,
        failed,
        connect_retries,
        closed_before_stop: closed,
        processes_measured: after.processes,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        pss_before_kib: before.pss_kib,
        pss_after_kib: after.pss_kib,
        rss_per_connection_bytes: per(after.rss_kib, before.rss_kib),
        pss_per_connection_bytes: per(after.pss_kib, before.pss_kib),
        connect_seconds,
        first_error,
    })
}

/// Resident memory of a set of process trees.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessMemory {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl ProcessMemory {
    /// Sums the roots and all their descendants.
    pub fn of_trees(roots: &[u32]) -> anyhow::Result<ProcessMemory> {
        let mut m = ProcessMemory::default();
        for pid in process_tree(roots)? {
            let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
                continue;
            };
            m.processes += 1;
            m.rss_kib += field_kib(&rollup, "Rss:");
            m.pss_kib += field_kib(&rollup, "Pss:");
        }
        if m.processes == 0 {
            bail!("none of the server processes {roots:?} exists");
        }
        Ok(m)
    }
}

/// `roots` and all their descendants.
pub fn process_tree(roots: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut pids: Vec<u32> = roots.to_vec();
    let parents = all_parents()?;
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        for (child, parent) in &parents {
            if *parent == p && !pids.contains(child) {
                pids.push(*child);
            }
        }
        i += 1;
    }
    Ok(pids)
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn all_parents() -> anyhow::Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    Ok(out)
}

pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_this_process() {
        let m = ProcessMemory::of_trees(&[std::process::id()]).unwrap();
        assert!(m.processes >= 1);
        assert!(m.rss_kib > 0 && m.pss_kib > 0);
    }
}
