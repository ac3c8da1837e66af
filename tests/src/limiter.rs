//! `sidestream-limiter` as a real process on ephemeral loopback ports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{binary, free_port, wait_http_ok, Proc};

/// A running limiter owned by a test.
pub struct Limiter {
    pub proc: Proc,
    pub grpc_port: u16,
    pub admin_port: u16,
}

impl Limiter {
    /// Starts `sidestream-limiter --redis <redis>` with `args` added, and
    /// waits until `/healthz` answers (not `/readyz`: a test may start it
    /// while Redis is down).
    pub async fn start(
        name: &str,
        dir: &Path,
        redis: &str,
        args: &[&str],
    ) -> anyhow::Result<Limiter> {
        let grpc_port = free_port()?;
        let admin_port = free_port()?;
        let mut command = Command::new(binary("sidestream-limiter")?);
        command
            .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--redis", redis])
            .args(args)
            .env("RUST_LOG", "info,sidestream_limiter=debug");
        let proc = Proc::spawn(name, dir, command)?;
        let limiter = Limiter {
            proc,
            grpc_port,
            admin_port,
        };
        if let Err(error) =
            wait_http_ok(&limiter.admin_url("/healthz"), Duration::from_secs(20)).await
        {
            anyhow::bail!("{name} not up: {error:#}\nlog:\n{}", limiter.proc.log());
        }
        Ok(limiter)
    }

    /// Waits until `/readyz` answers 200 (Redis answers the limiter).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_http_ok(&self.admin_url("/readyz"), Duration::from_secs(20))
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\nlog:\n{}", self.proc.log()))
    }

    /// The gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A URL on the admin server.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}
