//! `sidestream-push`: parses the flags and runs [`daemon::start`] until
//! SIGTERM or SIGINT, then drains.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sidestream_push::daemon::{self, DaemonArgs};
use sidestream_push::server;
use sidestream_telemetry::{LogFormat, Telemetry, TraceArgs};

/// Exit code for bad flags or config (EX_USAGE).
const EXIT_USAGE: u8 = 64;

// The daemon's flags, the log format and the tracing flags every daemon
// shares; the help text is the daemon's own.
#[derive(Debug, Parser)]
#[command(about = DaemonArgs::command().get_about().cloned().unwrap_or_default(), name = "sidestream-push", version)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
    /// Log format.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    trace: TraceArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sidestream-push: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        Telemetry::init("sidestream-push", &cli.trace, cli.log_format)
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("sidestream-push: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = runtime.block_on(run(cli.args));
    // Flush the last spans while the runtime still runs the exporter.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    code
}

async fn run(args: DaemonArgs) -> ExitCode {
    match daemon::start(args).await {
        Ok(daemon) => {
            server::termination().await;
            daemon.drain_and_stop().await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "Cannot start");
            eprintln!("sidestream-push: {error}");
            if error.is_config() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_format_and_tracing_flags_sit_beside_the_daemons() {
        let cli = Cli::try_parse_from([
            "sidestream-push",
            "--log-format",
            "json",
            "--heartbeat",
            "5s",
        ])
        .expect("flags");
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.args.heartbeat, std::time::Duration::from_secs(5));
        assert!(Cli::try_parse_from(["sidestream-push", "--log-format", "xml"]).is_err());
    }
}
