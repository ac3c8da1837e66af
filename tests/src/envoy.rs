//! Real Envoy for the filter tests: the committed `envoy-config/standalone.yaml`
//! with only its ports (and the filter's path) rewritten, so a test proves the
//! file as shipped; admin helpers for stats; and a raw HTTP/1.1 client that opens
//! many separate connections and holds streams open.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{filter_wasm, free_port, run_dir, workspace_root, Proc};

/// Path of the committed standalone bootstrap.
pub fn standalone_path() -> PathBuf {
    workspace_root().join("envoy-config/standalone.yaml")
}

/// The filter path as standalone.yaml names it (relative to the repository root).
pub const STANDALONE_FILTER_PATH: &str = "target/wasm32-wasip1/wasm-release/sidestream_filter.wasm";

/// Ports of one Envoy under test.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    pub listener: u16,
    pub admin: u16,
    pub stable: u16,
    pub canary: u16,
}

/// standalone.yaml with its fixed ports (10000, 9901, 18081, 18082) replaced by
/// `ports` and the filter path by `wasm`. Fails if the file no longer has
/// exactly one of each, so a changed contract is noticed.
pub fn standalone_config(ports: &EnvoyPorts, wasm: &Path) -> anyhow::Result<String> {
    let path = standalone_path();
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let replacements = [
        (
            "port_value: 10000".to_owned(),
            format!("port_value: {}", ports.listener),
        ),
        (
            "port_value: 9901".to_owned(),
            format!("port_value: {}", ports.admin),
        ),
        (
            "port_value: 18081".to_owned(),
            format!("port_value: {}", ports.stable),
        ),
        (
            "port_value: 18082".to_owned(),
            format!("port_value: {}", ports.canary),
        ),
        (
            format!("filename: {STANDALONE_FILTER_PATH}"),
            format!("filename: {}", wasm.display()),
        ),
    ];
    for (from, to) in replacements {
        let count = text.matches(&from).count();
        anyhow::ensure!(
            count == 1,
            "{} holds '{from}' {count} times, expected once",
            path.display()
        );
        text = text.replacen(&from, &to, 1);
    }
    Ok(text)
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub ports: EnvoyPorts,
    pub dir: PathBuf,
}

/// The Envoy binary: `$ENVOY` or `envoy` on PATH.
pub fn envoy_binary() -> String {
    std::env::var("ENVOY").unwrap_or_else(|_| "envoy".to_owned())
}

impl Envoy {
    /// Fresh ephemeral ports for the listener and admin, with the given upstreams.
    pub fn ports(stable: u16, canary: u16) -> anyhow::Result<EnvoyPorts> {
        Ok(EnvoyPorts {
            listener: free_port()?,
            admin: free_port()?,
            stable,
            canary,
        })
    }

    /// Starts the committed standalone.yaml (ports rewritten) with 2 workers.
    pub async fn standalone(name: &str, ports: EnvoyPorts) -> anyhow::Result<Envoy> {
        let config = standalone_config(&ports, &filter_wasm()?)?;
        Envoy::start(name, ports, &config).await
    }

    /// Writes `config` to the run folder and starts Envoy (`--concurrency 2`)
    /// from the repository root; waits until the admin says LIVE and the listener
    /// accepts connections.
    pub async fn start(name: &str, ports: EnvoyPorts, config: &str) -> anyhow::Result<Envoy> {
        let mut envoy = Envoy::spawn(name, ports, config)?;
        let ready = crate::wait_http_ok(&envoy.admin_url("/ready"), Duration::from_secs(30)).await;
        if let Err(error) = ready {
            let exited = envoy.proc.try_exit()?;
            anyhow::bail!(
                "envoy not ready ({error:#}); exited: {exited:?}; log:\n{}",
                envoy.proc.log()
            );
        }
        crate::wait_tcp(
            &format!("127.0.0.1:{}", ports.listener),
            Duration::from_secs(10),
        )
        .await?;
        Ok(envoy)
    }

    /// Starts Envoy without waiting for it (for configs expected to fail).
    pub fn spawn(name: &str, ports: EnvoyPorts, config: &str) -> anyhow::Result<Envoy> {
        let dir = run_dir(name)?;
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(envoy_binary());
        command
            .current_dir(workspace_root())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "2", "--disable-hot-restart"])
            .args(["--log-level", "info"]);
        let proc = Proc::spawn("envoy", &dir, command)?;
        Ok(Envoy { proc, ports, dir })
    }

    /// `http://127.0.0.1:<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.listener)
    }

    /// The listener's `host:port`.
    pub fn listener_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.listener)
    }

    /// `http://127.0.0.1:<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }

    /// The admin's `/stats/prometheus` text.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(self.admin_url("/stats/prometheus"))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Every stat from `/stats` (text form `name: value`) whose value is a number.
    pub async fn stats(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let text = reqwest::get(self.admin_url("/stats"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One stat's value from `/stats` (None if absent).
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .stats()
            .await?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    /// Downstream connections each worker of the listener accepted
    /// (`listener.127.0.0.1_<port>.worker_<n>.downstream_cx_total`).
    pub async fn worker_connections(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let prefix = format!("listener.127.0.0.1_{}.worker_", self.ports.listener);
        Ok(self
            .stats()
            .await?
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix) && n.ends_with(".downstream_cx_total"))
            .collect())
    }
}

/// The head of an HTTP/1.1 response read from a raw connection.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes read after the head (start of the body).
    pub rest: Vec<u8>,
}

impl ResponseHead {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes a GET request (HTTP/1.1, keep-alive) with extra headers.
pub async fn send_get(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(())
}

/// Reads a response head (status line and headers) within `timeout`.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> anyhow::Result<ResponseHead> {
    let mut buffer = Vec::with_capacity(1024);
    let end = tokio::time::timeout(timeout, async {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<usize, anyhow::Error>(end);
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed before the response head");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .context("timed out reading the response head")??;
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line '{status_line}'"))?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    Ok(ResponseHead {
        status,
        headers,
        rest: buffer[end + 4..].to_vec(),
    })
}

/// Opens a connection, sends a GET and reads the response head; the connection
/// stays open (a stream is held until the returned `TcpStream` is dropped).
pub async fn open_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(ResponseHead, TcpStream)> {
    let mut stream = TcpStream::connect(addr).await?;
    send_get(&mut stream, addr, path, headers).await?;
    let head = read_head(&mut stream, Duration::from_secs(10)).await?;
    Ok((head, stream))
}
