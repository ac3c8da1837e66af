//! sidestream-control-plane: see the library's `daemon` module.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sidestream_control_plane::daemon::{start, DaemonArgs};
use sidestream_daemon_kit::{parse_flags, wait_for_stop, Stop, EXIT_USAGE};
use sidestream_telemetry::{LogFormat, Telemetry, TraceArgs};

// The daemon's flags and the tracing flags every daemon shares; the help
// text is the daemon's own.
#[derive(Debug, Parser)]
#[command(about = DaemonArgs::command().get_about().cloned().unwrap_or_default(), name = "sidestream-control-plane", version)]
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
    let telemetry = match Telemetry::init("sidestream-control-plane", &trace, LogFormat::Text) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("sidestream-control-plane: {error}");
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
        Ok(daemon) => match wait_for_stop(daemon.wait()).await {
            Ok(Stop::Signal) => ExitCode::SUCCESS,
            Ok(Stop::TaskEnded) => ExitCode::FAILURE,
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            tracing::error!(%error, "Cannot start");
            eprintln!("sidestream-control-plane: {error}");
            if error.is_config() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
