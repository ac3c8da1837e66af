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
        let port = free_port()?;
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

    /// The URL the push servers take (`--broker`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
