//! sidestream-limiter: see the library's `daemon` module.

use std::process::ExitCode;

use clap::Parser;
use sidestream_limiter::daemon::{start, DaemonArgs};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Exit code for bad flags or configuration (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match DaemonArgs::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::error!(%error, "Cannot listen for SIGTERM");
            return ExitCode::FAILURE;
        }
    };
    match start(args).await {
        Ok(daemon) => {
            // Stateless: in-flight calls are retried or fall back in the filter.
            tokio::select! {
                () = daemon.wait() => {
                    tracing::error!("A server task stopped; exiting");
                    ExitCode::FAILURE
                }
                _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
                _ = terminate.recv() => ExitCode::SUCCESS,
            }
        }
        Err(error) => {
            tracing::error!(%error, "Cannot start");
            eprintln!("sidestream-limiter: {error}");
            if error.is_config() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
