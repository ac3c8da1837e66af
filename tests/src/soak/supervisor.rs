//! The whole stack as supervised processes, each of which can be SIGKILLed
//! and started again on the same ports with the same data: a 3-member etcd
//! cluster, Redis, the limiter, the control plane, two push servers on the
//! Redis broker, and Envoys with the filter (`envoy-config/stack.yaml`, ports
//! rewritten as `scripts/run-stack.sh` does, each with its own node id). The flags are run-stack.sh's;
//! what differs is that every process, not only the push servers, comes back
//! when killed, and etcd has three members so one can die without the
//! cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{binary, envoy::envoy_binary, filter_wasm, free_port, workspace_root, Proc};

/// How a component shows it is ready.
#[derive(Debug, Clone)]
enum Ready {
    /// An HTTP GET answers 2xx.
    Http(String),
    /// etcd's `/health` says `"health":"true"` (the member is in a cluster
    /// with quorum).
    Etcd(String),
    /// `redis-cli PING` answers `PONG` (not `LOADING`).
    Redis(u16),
    /// Envoy's admin `/ready` answers and the filter runs a snapshot from
    /// the control plane (`sidestream.config_version` above 0).
    Envoy(String),
}

type CommandFn = Box<dyn Fn() -> Command + Send + Sync>;

/// One supervised process.
pub struct Component {
    pub name: String,
    command: CommandFn,
    ready: Ready,
    dir: PathBuf,
    proc: Mutex<Option<Proc>>,
    pid: AtomicU32,
    kills: AtomicU32,
    starts: AtomicU32,
    peak_rss_kib: AtomicU64,
}

impl Component {
    fn new(name: &str, dir: &Path, ready: Ready, command: CommandFn) -> Arc<Component> {
        Arc::new(Component {
            name: name.to_owned(),
            command,
            ready,
            dir: dir.to_path_buf(),
            proc: Mutex::new(None),
            pid: AtomicU32::new(0),
            kills: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            peak_rss_kib: AtomicU64::new(0),
        })
    }

    /// Starts the process (its log is `logs/<name>-<n>.log`, n counting starts).
    fn spawn(&self) -> anyhow::Result<()> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let proc = Proc::spawn(
            &format!("{}-{n}", self.name),
            &self.dir.join("logs"),
            (self.command)(),
        )?;
        self.pid.store(proc.pid(), Ordering::SeqCst);
        *self.proc.lock().unwrap() = Some(proc);
        Ok(())
    }

    /// Starts the process and waits until it is ready.
    pub async fn start(&self, timeout: Duration) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready(timeout).await
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&self) {
        if let Some(mut proc) = self.proc.lock().unwrap().take() {
            proc.kill();
            self.kills.fetch_add(1, Ordering::SeqCst);
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Stops it for good (the end of the soak): SIGKILL, not counted as a kill.
    pub fn stop(&self) {
        if let Some(mut proc) = self.proc.lock().unwrap().take() {
            proc.kill();
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Waits until the component is ready; fails if it exits first.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Some(proc) = self.proc.lock().unwrap().as_mut() {
                if let Some(status) = proc.try_exit()? {
                    anyhow::bail!(
                        "{} exited ({status}) before it was ready; log:\n{}",
                        self.name,
                        self.log_tail(40)
                    );
                }
            }
            let error = match self.check_ready(&http).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} not ready within {timeout:?} ({error:#}); log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        match &self.ready {
            Ready::Http(url) => {
                http.get(url).send().await?.error_for_status()?;
            }
            Ready::Etcd(url) => {
                let body = http.get(url).send().await?.text().await?;
                anyhow::ensure!(body.contains("\"health\":\"true\""), "{body}");
            }
            Ready::Redis(port) => {
                let answer = crate::redis::redis_cli(*port, &["PING"])?;
                anyhow::ensure!(answer.trim() == "PONG", "PING: {}", answer.trim());
            }
            Ready::Envoy(admin) => {
                http.get(format!("{admin}/ready"))
                    .send()
                    .await?
                    .error_for_status()?;
                let version = envoy_config_version(http, admin).await?;
                anyhow::ensure!(version > 0, "the filter has no snapshot yet");
            }
        }
        Ok(())
    }

    /// The process id, 0 while it is down.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Reads its RSS and keeps the peak.
    pub fn sample_rss(&self) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        if let Some(kib) = super::rss_kib(pid) {
            self.peak_rss_kib.fetch_max(kib, Ordering::SeqCst);
        }
    }

    pub fn kills(&self) -> u32 {
        self.kills.load(Ordering::SeqCst)
    }

    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.peak_rss_kib.load(Ordering::SeqCst)
    }

    /// The last `lines` lines of the current process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self
            .proc
            .lock()
            .unwrap()
            .as_ref()
            .map(Proc::log)
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The filter's `sidestream.config_version` gauge from Envoy's admin.
pub async fn envoy_config_version(http: &reqwest::Client, admin: &str) -> anyhow::Result<i64> {
    let text = http
        .get(format!("{admin}/stats?filter=sidestream\\.config_version$"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .find(|(name, _)| name.ends_with("sidestream.config_version"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no sidestream.config_version in {text:?}"))
}

/// Options of the soak's stack.
#[derive(Debug, Clone)]
pub struct SoakStackOptions {
    /// Redis with an append-only file fsynced on every write (a killed Redis
    /// comes back with everything it acknowledged), or no persistence at all
    /// (a killed Redis comes back empty: new epochs, and resets).
    pub redis_aof: bool,
    /// Envoy workers.
    pub envoy_concurrency: u32,
    /// How many Envoys (`envoy-1`, `envoy-2`, ...), all on the same control
    /// plane, limiter and push servers.
    pub envoys: usize,
}

/// The running stack.
pub struct SoakStack {
    pub dir: PathBuf,
    pub components: Vec<Arc<Component>>,
    pub etcd_endpoints: String,
    /// Each Envoy's (listener, admin) port.
    pub envoy_ports: Vec<(u16, u16)>,
    pub control_plane_admin_port: u16,
    pub redis_port: u16,
}

impl SoakStack {
    /// Starts everything, in run-stack.sh's order, and seeds etcd with
    /// `examples/config` (as `make run` does).
    pub async fn start(dir: &Path, options: &SoakStackOptions) -> anyhow::Result<SoakStack> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let root = workspace_root();
        let bin = |name: &str| binary(name);
        let (push, control_plane, limiter) = (
            bin("sidestream-push")?,
            bin("sidestream-control-plane")?,
            bin("sidestream-limiter")?,
        );
        bin("sidestreamctl")?;
        let wasm = filter_wasm()?;

        let etcd_ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let redis_port = free_port()?;
        let (limiter_port, limiter_admin) = (free_port()?, free_port()?);
        let (cp_grpc, cp_admin) = (free_port()?, free_port()?);
        let (stable, stable_grpc) = (free_port()?, free_port()?);
        let (canary, canary_grpc) = (free_port()?, free_port()?);
        let envoy_ports: Vec<(u16, u16)> = (0..options.envoys)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;

        let initial_cluster = etcd_ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("etcd-{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let etcd_endpoints = etcd_ports
            .iter()
            .map(|(client, _)| format!("http://127.0.0.1:{client}"))
            .collect::<Vec<_>>()
            .join(",");

        let mut components = Vec::new();
        let mut etcd_members = Vec::new();
        for (i, (client, peer)) in etcd_ports.iter().copied().enumerate() {
            let name = format!("etcd-{}", i + 1);
            let data = dir.join(&name);
            let cluster = initial_cluster.clone();
            let member = name.clone();
            let member_component = Component::new(
                &name,
                dir,
                Ready::Etcd(format!("http://127.0.0.1:{client}/health")),
                Box::new(move || {
                    let client = format!("http://127.0.0.1:{client}");
                    let peer = format!("http://127.0.0.1:{peer}");
                    let mut c = Command::new("etcd");
                    c.arg("--name")
                        .arg(&member)
                        .arg("--data-dir")
                        .arg(&data)
                        .args(["--listen-client-urls", &client])
                        .args(["--advertise-client-urls", &client])
                        .args(["--listen-peer-urls", &peer])
                        .args(["--initial-advertise-peer-urls", &peer])
                        .args(["--initial-cluster", &cluster])
                        .args(["--initial-cluster-state", "new"])
                        .args(["--initial-cluster-token", "sidestream-soak"])
                        .args(["--experimental-watch-progress-notify-interval", "2s"])
                        .args(["--logger", "zap", "--log-level", "warn"]);
                    c
                }),
            );
            etcd_members.push(member_component);
        }
        // The members wait for each other: start all three, then wait.
        for member in &etcd_members {
            member.spawn()?;
        }
        for member in &etcd_members {
            member.wait_ready(Duration::from_secs(60)).await?;
        }
        components.extend(etcd_members);

        let redis_dir = dir.join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let aof = options.redis_aof;
        let redis = Component::new(
            "redis",
            dir,
            Ready::Redis(redis_port),
            Box::new(move || {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
                    .arg("--dir")
                    .arg(&redis_dir)
                    .args(["--save", "", "--daemonize", "no"]);
                if aof {
                    c.args(["--appendonly", "yes", "--appendfsync", "always"]);
                } else {
                    c.args(["--appendonly", "no"]);
                }
                c
            }),
        );
        redis.start(Duration::from_secs(20)).await?;
        components.push(redis);

        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let limiter_component = {
            let redis_url = redis_url.clone();
            Component::new(
                "limiter",
                dir,
                Ready::Http(format!("http://127.0.0.1:{limiter_admin}/readyz")),
                Box::new(move || {
                    let mut c = Command::new(&limiter);
                    c.args(["--listen", &format!("127.0.0.1:{limiter_port}")])
                        .args(["--admin-listen", &format!("127.0.0.1:{limiter_admin}")])
                        .args(["--redis", &redis_url])
                        .args(["--lease", "15s"])
                        .env("NO_COLOR", "1");
                    c
                }),
            )
        };
        limiter_component.start(Duration::from_secs(30)).await?;
        components.push(limiter_component);

        let snapshot_cache = dir.join("control-plane-snapshot.json");
        let endpoints = etcd_endpoints.clone();
        let cp = Component::new(
            "control-plane",
            dir,
            Ready::Http(format!("http://127.0.0.1:{cp_admin}/readyz")),
            Box::new(move || {
                let mut c = Command::new(&control_plane);
                c.args(["--etcd-endpoints", &endpoints])
                    .args(["--grpc-listen", &format!("127.0.0.1:{cp_grpc}")])
                    .args(["--admin-listen", &format!("127.0.0.1:{cp_admin}")])
                    .arg("--snapshot-cache")
                    .arg(&snapshot_cache)
                    .env("NO_COLOR", "1");
                c
            }),
        );

        let mut stack = SoakStack {
            dir: dir.to_path_buf(),
            components: Vec::new(),
            etcd_endpoints,
            envoy_ports: envoy_ports.clone(),
            control_plane_admin_port: cp_admin,
            redis_port,
        };
        stack.ctl(&["apply", &root.join("examples/config").to_string_lossy()])?;

        cp.start(Duration::from_secs(30)).await?;
        components.push(cp);

        for (group, http_port, grpc_port) in [
            ("stable", stable, stable_grpc),
            ("canary", canary, canary_grpc),
        ] {
            let push = push.clone();
            let redis_url = redis_url.clone();
            let server = Component::new(
                &format!("push-{group}"),
                dir,
                Ready::Http(format!("http://127.0.0.1:{http_port}/healthz/ready")),
                Box::new(move || {
                    let mut c = Command::new(&push);
                    c.args(["--listen", &format!("127.0.0.1:{http_port}")])
                        .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
                        .args(["--broker", &redis_url])
                        .args(["--control-plane", &format!("http://127.0.0.1:{cp_grpc}")])
                        .args(["--node-id", group])
                        .args(["--drain-grace", "2s"])
                        .env("NO_COLOR", "1");
                    c
                }),
            );
            server.start(Duration::from_secs(30)).await?;
            components.push(server);
        }

        for (i, (envoy_port, envoy_admin)) in envoy_ports.iter().copied().enumerate() {
            let name = format!("envoy-{}", i + 1);
            let config = stack_envoy_config(
                &[
                    (10000, envoy_port),
                    (9901, envoy_admin),
                    (18000, cp_grpc),
                    (18300, limiter_port),
                    (18081, stable),
                    (18082, canary),
                    (18091, stable_grpc),
                    (18092, canary_grpc),
                ],
                &wasm,
            )?;
            let config_path = dir.join(format!("{name}.yaml"));
            std::fs::write(&config_path, config)?;
            let concurrency = options.envoy_concurrency.to_string();
            // Its own node id, as every Envoy of a mesh has (the filter's
            // config-stream node id and the limiter's instance ids carry it).
            let node = format!("sidestream-soak-{}", i + 1);
            let envoy = Component::new(
                &name,
                dir,
                Ready::Envoy(format!("http://127.0.0.1:{envoy_admin}")),
                Box::new(move || {
                    let mut c = Command::new(envoy_binary());
                    c.current_dir(workspace_root())
                        .arg("-c")
                        .arg(&config_path)
                        .args(["--service-node", &node])
                        .args(["--concurrency", &concurrency, "--disable-hot-restart"])
                        .args(["--log-level", "warn", "--component-log-level", "wasm:info"]);
                    c
                }),
            );
            envoy.start(Duration::from_secs(60)).await?;
            components.push(envoy);
        }

        stack.components = components;
        Ok(stack)
    }

    /// A component by name (`etcd-1`, `redis`, `limiter`, `control-plane`,
    /// `push-stable`, `push-canary`, `envoy-1`).
    pub fn component(&self, name: &str) -> &Arc<Component> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no component {name}"))
    }

    /// Envoy `i`'s (from 0) listener.
    pub fn envoy_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.envoy_ports[i].0)
    }

    /// Envoy `i`'s (from 0) admin.
    pub fn envoy_admin_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.envoy_ports[i].1)
    }

    pub fn control_plane_admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control_plane_admin_port)
    }

    /// Runs `sidestreamctl --etcd-endpoints <all three> ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(binary("sidestreamctl")?)
            .current_dir(workspace_root())
            .args(["--etcd-endpoints", &self.etcd_endpoints])
            .args(["--admin", &self.control_plane_admin_url()])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "sidestreamctl {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Writes one config document to a file and `sidestreamctl apply`s it.
    pub fn apply(&self, file_name: &str, document: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{file_name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(document)?)?;
        self.ctl(&["apply", &path.to_string_lossy()])?;
        Ok(())
    }

    /// The `mod_revision` of an etcd key (etcdctl, any member).
    pub fn mod_revision(&self, key: &str) -> anyhow::Result<i64> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.etcd_endpoints,
                "-w",
                "json",
                "get",
                key,
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl get {key}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        value["kvs"][0]["mod_revision"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no mod_revision for {key}: {value}"))
    }

    /// Every component's logs are in this folder.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

impl Drop for SoakStack {
    fn drop(&mut self) {
        for component in self.components.iter().rev() {
            component.stop();
        }
        // etcd's preallocated WALs (3 × 60 MB) and Redis's AOF go with a
        // passing run; a failing one keeps them next to the logs.
        if !std::thread::panicking() {
            for name in ["etcd-1", "etcd-2", "etcd-3", "redis"] {
                let _ = std::fs::remove_dir_all(self.dir.join(name));
            }
        }
    }
}

/// `envoy-config/stack.yaml` with its fixed ports replaced (each must appear
/// exactly once, as run-stack.sh assumes) and the filter's path made absolute.
fn stack_envoy_config(ports: &[(u16, u16)], wasm: &Path) -> anyhow::Result<String> {
    let path = workspace_root().join("envoy-config/stack.yaml");
    let mut text = std::fs::read_to_string(&path)?;
    let mut replacements: Vec<(String, String)> = ports
        .iter()
        .map(|(from, to)| {
            (
                format!("port_value: {from} }}"),
                format!("port_value: {to} }}"),
            )
        })
        .collect();
    replacements.push((
        "filename: target/wasm32-wasip1/wasm-release/sidestream_filter.wasm".to_owned(),
        format!("filename: {}", wasm.display()),
    ));
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
