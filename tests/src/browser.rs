//! A real browser for tests: headless Chromium (Debian's `chromium`) driven
//! over the Chrome DevTools Protocol on a loopback debugging port, with a
//! fresh profile per browser. [`Chromium::evaluate`] runs JavaScript in the
//! page and returns its JSON value.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_binary() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A headless Chromium showing one page; dropping it ends the browser.
pub struct Chromium {
    child: Child,
    socket: tokio::sync::Mutex<Socket>,
    next_id: std::sync::atomic::AtomicU64,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium on `url`, output to `<dir>/chromium.log`, and attaches
    /// to the page.
    pub async fn open(url: &str, dir: &std::path::Path) -> anyhow::Result<Chromium> {
        let binary = chromium_binary();
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing; run scripts/install-deps.sh test (Debian package chromium)",
            binary.display()
        );
        let profile = tempfile::tempdir()?;
        let port = crate::free_port()?;
        let log = std::fs::File::create(dir.join("chromium.log"))?;
        let mut command = Command::new(&binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group: dropping the browser ends its helpers too.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        let result = async {
            let list_url = format!("http://127.0.0.1:{port}/json/list");
            let target = crate::eventually(
                Duration::from_secs(30),
                "Chromium's page target",
                || async {
                    let targets: Value = reqwest::get(&list_url).await?.json().await?;
                    targets
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| {
                            t["type"] == "page"
                                && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                        })
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                        .ok_or_else(|| anyhow::anyhow!("no page for {url} yet: {targets}"))
                },
            )
            .await?;
            let (socket, _) = tokio_tungstenite::connect_async(target.as_str()).await?;
            Ok::<Socket, anyhow::Error>(socket)
        }
        .await;
        match result {
            Ok(socket) => Ok(Chromium {
                child,
                socket: tokio::sync::Mutex::new(socket),
                next_id: std::sync::atomic::AtomicU64::new(1),
                _profile: profile,
            }),
            Err(error) => {
                kill_group(&child);
                let mut child = child;
                let _ = child.wait();
                Err(error.context(format!(
                    "Chromium on {url} (log in {})",
                    dir.join("chromium.log").display()
                )))
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut socket = self.socket.lock().await;
        let request = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true, "awaitPromise": true }
        });
        socket.send(Message::text(request.to_string())).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = socket.next().await {
                if let Message::Text(text) = message? {
                    let value: Value = serde_json::from_str(text.as_str())?;
                    if value["id"] == id {
                        return Ok(value);
                    }
                }
            }
            anyhow::bail!("the DevTools connection closed")
        })
        .await
        .map_err(|_| anyhow::anyhow!("no DevTools answer within 10 s"))??;
        if let Some(error) = reply.get("error") {
            anyhow::bail!("Runtime.evaluate failed: {error}");
        }
        if let Some(exception) = reply["result"].get("exceptionDetails") {
            anyhow::bail!("the page threw: {exception}");
        }
        Ok(reply["result"]["result"]["value"].clone())
    }
}

fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .status();
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}
