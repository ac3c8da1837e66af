//! A real etcd for tests: one member on ephemeral loopback ports with its data
//! in the test's run folder. It can be killed and restarted keeping its data,
//! and compacted; `etcdctl` does the writes so a test sees exactly what an
//! operator would do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{eventually, free_port, Proc};

/// A running (or stopped) etcd member owned by a test.
pub struct Etcd {
    proc: Option<Proc>,
    dir: PathBuf,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    starts: u32,
    extra_args: Vec<String>,
    user: Option<String>,
}

impl Etcd {
    /// Starts etcd with its data in `<dir>/etcd-data` and waits until it is healthy.
    pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
        Etcd::start_with(dir, &[]).await
    }

    /// Starts etcd with extra flags (e.g. `--auth-token-ttl 1`).
    pub async fn start_with(dir: &Path, extra_args: &[&str]) -> anyhow::Result<Etcd> {
        let mut etcd = Etcd {
            proc: None,
            dir: dir.to_path_buf(),
            data_dir: dir.join("etcd-data"),
            client_port: free_port()?,
            peer_port: free_port()?,
            starts: 0,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            user: None,
        };
        etcd.spawn().await?;
        Ok(etcd)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg("sidestream-test")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("sidestream-test={peer}"))
            .arg("--experimental-watch-progress-notify-interval")
            .arg("2s")
            .args(&self.extra_args);
        self.starts += 1;
        let name = format!("etcd-{}", self.starts);
        self.proc = Some(Proc::spawn(&name, &self.dir, command)?);
        let health = format!("{client}/health");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(20), "etcd healthy", || async {
            let body = http.get(&health).send().await?.text().await?;
            anyhow::ensure!(body.contains("\"health\":\"true\""), "not yet: {body}");
            Ok(())
        })
        .await
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Creates the `root` user with `password` and turns authentication on;
    /// later `etcdctl` calls authenticate as root.
    pub fn enable_auth(&mut self, password: &str) -> anyhow::Result<()> {
        for args in [
            vec![
                "user",
                "add",
                "root",
                "--new-user-password",
                password,
                "--interactive=false",
            ],
            vec!["auth", "enable"],
        ] {
            let output = self.etcdctl_command().args(&args).output()?;
            anyhow::ensure!(
                output.status.success(),
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.user = Some(format!("root:{password}"));
        Ok(())
    }

    fn etcdctl_command(&self) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint());
        if let Some(user) = &self.user {
            command.arg("--user").arg(user);
        }
        command
    }

    /// Kills etcd, deletes its data and starts an empty one on the same ports
    /// (as if it was restored from nothing: revisions start again at 1).
    pub async fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)?;
        }
        self.user = None;
        self.spawn().await
    }

    /// Runs `etcdctl` against this etcd with `-w json`; returns its output as JSON.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let output = self
            .etcdctl_command()
            .arg("-w")
            .arg("json")
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Writes `value` at `key`; returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> anyhow::Result<i64> {
        let out = self.etcdctl(&["put", key, value])?;
        revision_of(&out)
    }

    /// Deletes `key`; returns the new revision.
    pub fn delete(&self, key: &str) -> anyhow::Result<i64> {
        let out = self.etcdctl(&["del", key])?;
        revision_of(&out)
    }

    /// The current revision of the store.
    pub fn revision(&self) -> anyhow::Result<i64> {
        let out = self.etcdctl(&["get", "--limit", "1", "/"])?;
        revision_of(&out)
    }

    /// Compacts history up to `revision` (physically, so watches from before it fail).
    pub fn compact(&self, revision: i64) -> anyhow::Result<()> {
        let output = self
            .etcdctl_command()
            .arg("compact")
            .arg("--physical")
            .arg(revision.to_string())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl compact {revision} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// The log of the current etcd process.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

fn revision_of(out: &serde_json::Value) -> anyhow::Result<i64> {
    out["header"]["revision"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no header.revision in {out}"))
}

/// The member is killed with its test. Its data (about 120 MB, most of it
/// etcd's preallocated WAL) is deleted unless the test is panicking, so a
/// passing run leaves only the logs under `target/<profile>/test-runs/` and
/// a failed assertion keeps everything to look at.
impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
