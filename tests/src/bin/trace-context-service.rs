//! The service behind `envoy-config/trace-context.yaml`, for running the
//! official W3C Trace Context suite by hand (`scripts/w3c-suite.sh`).
//!
//!   trace-context-service [--listen 127.0.0.1:18090] [--outbound 127.0.0.1:10011]
//!
//! See `sidestream_tests::trace_context` for what it does with a request.

use std::net::SocketAddr;
use std::process::ExitCode;

use sidestream_tests::trace_context::TraceContextPorts;

const USAGE: &str = "usage: trace-context-service [--listen HOST:PORT] [--outbound HOST:PORT]";

fn parse_args() -> Result<(SocketAddr, SocketAddr), String> {
    let committed = TraceContextPorts::COMMITTED;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], committed.service));
    let mut outbound = SocketAddr::from(([127, 0, 0, 1], committed.outbound));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let target = match flag.as_str() {
            "--listen" => &mut listen,
            "--outbound" => &mut outbound,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        };
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a HOST:PORT value\n{USAGE}"))?;
        *target = value
            .parse()
            .map_err(|e| format!("{flag} '{value}' is not HOST:PORT: {e}"))?;
    }
    Ok((listen, outbound))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (listen, outbound) = match parse_args() {
        Ok(addrs) => addrs,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("trace-context-service: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("trace-context-service: listening on {listen}, callbacks through {outbound}");
    match sidestream_tests::trace_context::serve(listener, outbound).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace-context-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}
