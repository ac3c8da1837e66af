//! `sidestream-bench`: load clients, helper servers and the report.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sidestream_bench::{fanout, latency, memory, mesh, otlp_sink, propagation, report, upstream};

#[derive(Parser)]
#[command(version, about = "sidestream's benchmark harness (see BENCHMARKS.md)")]
struct Cli {
    /// Tokio worker threads (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the fast upstream (echo) or the Pushpin GRIP origin.
    Upstream {
        #[arg(long, value_enum, default_value_t = upstream::Mode::Echo)]
        mode: upstream::Mode,
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Fixed-rate HTTP latency run.
    Latency(latency::LatencyArgs),
    /// SSE fan-out run against one push server.
    Fanout(fanout::FanoutArgs),
    /// Idle SSE connections and server memory per connection.
    Memory(memory::MemoryArgs),
    /// (internal) one process holding SSE connections, started by `memory`.
    Hold(memory::HoldArgs),
    /// etcd put → applied by every filter instance.
    Propagation(propagation::PropagationArgs),
    /// Stream opens of one tenant through Envoys (mesh-wide limits).
    Opens(mesh::OpensArgs),
    /// An OTLP/gRPC trace receiver that counts spans (the tracing-overhead run).
    OtlpSink(otlp_sink::OtlpSinkArgs),
    /// Plots and BENCHMARKS.md from a results folder.
    Report(report::ReportArgs),
    /// Resident memory (RSS, PSS) of process trees, in KiB, as JSON.
    Rss {
        #[arg(required = true)]
        pids: Vec<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cli.threads > 1 {
            b.worker_threads(cli.threads);
        }
        b
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Upstream { mode, listen } => upstream::serve(mode, listen).await,
        Cmd::Latency(args) => {
            let out = args.out.clone();
            let r = latency::run(args).await?;
            emit(out, &r)
        }
        Cmd::Fanout(args) => {
            let out = args.out.clone();
            let r = fanout::run(args).await?;
            emit(out, &r)
        }
        Cmd::Memory(args) => {
            let out = args.out.clone();
            let r = memory::memory(args).await?;
            emit(out, &r)
        }
        Cmd::Hold(args) => {
            let done = args.ready_file.with_extension("done");
            let r = memory::hold(args).await?;
            memory::write_json(&done, &r)
        }
        Cmd::Propagation(args) => {
            let out = args.out.clone();
            let r = propagation::run(args).await?;
            emit(out, &r)
        }
        Cmd::OtlpSink(args) => {
            let r = otlp_sink::run(args).await?;
            eprintln!("otlp-sink: {} spans in {} requests", r.spans, r.requests);
            Ok(())
        }
        Cmd::Opens(args) => {
            let out = args.out.clone();
            let r = mesh::run(args).await?;
            emit(out, &r)
        }
        Cmd::Report(args) => report::run(&args),
        Cmd::Rss { pids } => {
            let m = memory::ProcessMemory::of_trees(&pids)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
    }
}

fn emit(out: Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    if let Some(path) = out {
        memory::write_json(&path, value)?;
    }
    Ok(())
}
