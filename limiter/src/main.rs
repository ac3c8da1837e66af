//! sidestream-limiter: see the library's `daemon` module.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use sidestream_daemon_kit::{parse_flags, wait_for_stop, Stop, EXIT_USAGE};
use sidestream_limiter::daemon::{start, DaemonArgs};
use sidestream_telemetry::{LogFormat, Telemetry, TraceArgs};

/// How long calls in flight may take after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// The daemon's flags and the tracing flags every daemon shares; the help
// text is the daemon's own.
#[derive(Debug, Parser)]
#[command(about = DaemonArgs::command().get_about().cloned().unwrap_or_default(), name = "sidestream-limiter", version)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
    #[command(flatten)]
    trace: TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { args, trace } = match parse_flags::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let telemetry = match Telemetry::init("sidestream-limiter", &trace, LogFormat::Text) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("sidestream-limiter: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = run(args).await;
    // Export the last spans before the runtime goes.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

async fn run(args: DaemonArgs) -> ExitCode {
    match start(args).await {
        Ok(mut daemon) => {
            let stop = wait_for_stop(daemon.wait()).await;
            match stop {
                Ok(Stop::Signal) => {
                    // Stateless: only the calls in flight are worth waiting for.
                    tracing::info!("Stopping: finishing the calls in flight");
                    daemon.shutdown(SHUTDOWN_GRACE).await;
                    ExitCode::SUCCESS
                }
                Ok(Stop::TaskEnded) => ExitCode::FAILURE,
                Err(error) => {
                    tracing::error!(%error, "Cannot listen for SIGTERM");
                    ExitCode::FAILURE
                }
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
