//! sidestreamctl: see the library's `ctl` module.

use std::process::ExitCode;

use clap::Parser;
use sidestream_control_plane::ctl::{run, CtlArgs, EXIT_USAGE};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match CtlArgs::try_parse() {
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
    ExitCode::from(run(args).await)
}
