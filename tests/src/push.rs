//! `sidestream-push` as a real process on ephemeral loopback ports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{binary, free_port, wait_http_ok, Proc};

/// A running push server owned by a test.
pub struct PushServer {
    pub proc: Proc,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl PushServer {
    /// Starts `sidestream-push --node-id <name>` with `args` added, and waits
    /// until `/healthz/ready` answers 200.
    pub async fn start(name: &str, dir: &Path, args: &[&str]) -> anyhow::Result<PushServer> {
        let http_port = free_port()?;
        let grpc_port = free_port()?;
        let mut command = Command::new(binary("sidestream-push")?);
        command
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--node-id", name])
            .args(args)
            .env("RUST_LOG", "info");
        let proc = Proc::spawn(name, dir, command)?;
        let server = PushServer {
            proc,
            http_port,
            grpc_port,
        };
        if let Err(error) = wait_http_ok(
            &format!("{}/healthz/ready", server.url()),
            Duration::from_secs(20),
        )
        .await
        {
            anyhow::bail!("{name} not ready: {error:#}\nlog:\n{}", server.proc.log());
        }
        Ok(server)
    }

    /// The HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Publishes `data` to `topic` over HTTP; returns the message id.
    pub async fn publish(&self, topic: &str, data: &str) -> anyhow::Result<String> {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/topics/{topic}/messages", self.url()))
            .body(data.to_owned())
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(
            status == 201,
            "publish to {topic} answered {status}: {body}"
        );
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("publish answer without an id: {body}"))
    }

    /// Resident memory of the process (kB), from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{}/status", self.proc.pid()))
    }
}
