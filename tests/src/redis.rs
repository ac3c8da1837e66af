//! A real Redis for tests: `redis-server` on an ephemeral loopback port, no
//! persistence, its log in the test's run folder.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_tcp, Proc};

/// A running redis-server owned by a test.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    /// Starts redis-server and waits until it accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Redis> {
        Self::start_on(dir, free_port()?).await
    }

    /// The URL the push servers take (`--broker`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on `port` (a Redis this test stopped, started
    /// again: empty, since nothing is persisted).
    pub async fn start_on(dir: &Path, port: u16) -> anyhow::Result<Redis> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir);
        let proc = Proc::spawn(&format!("redis-{port}"), dir, command)?;
        wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).await?;
        Ok(Redis { proc, port })
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        redis_cli(self.port, args)
    }
}

/// The output of one `redis-cli` command against 127.0.0.1:`port`.
pub fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Redis Cluster of three primaries (no replicas) on loopback, made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Proc>,
    pub ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts three `redis-server --cluster-enabled yes`, joins them and
    /// waits until every node reports `cluster_state:ok`.
    pub async fn start(dir: &Path) -> anyhow::Result<RedisCluster> {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            // The cluster bus, by default port + 10000, gets a free port of
            // its own (the default may land in the ephemeral range).
            let bus_port = free_port()?;
            let node_dir = dir.join(format!("redis-cluster-{port}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                ])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(&node_dir);
            nodes.push(Proc::spawn(&format!("redis-cluster-{port}"), dir, command)?);
            ports.push(port);
        }
        for port in &ports {
            wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).await?;
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for port in ports.clone() {
            crate::eventually(Duration::from_secs(30), "cluster_state:ok", || async move {
                let info = redis_cli(port, &["CLUSTER", "INFO"])?;
                anyhow::ensure!(info.contains("cluster_state:ok"), "node {port}: {info}");
                Ok(())
            })
            .await?;
        }
        Ok(RedisCluster { nodes, ports })
    }

    /// The seed list the limiter takes with `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
