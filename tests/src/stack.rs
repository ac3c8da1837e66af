//! The whole stack, started exactly as `make run` starts it: by running
//! `scripts/run-stack.sh`, with environment overrides for free ports, this
//! test's run folder, the binaries of this build (debug) and the filter
//! module. The script's own readiness waits (etcd, Redis, control plane, push
//! servers, Envoy, and the filter's first snapshot) must pass before
//! [`Stack::start`] returns.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ports one stack listens on (all on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct StackPorts {
    pub etcd: u16,
    pub etcd_peer: u16,
    pub control_plane_grpc: u16,
    pub control_plane_admin: u16,
    pub redis: u16,
    pub limiter: u16,
    pub limiter_admin: u16,
    pub push_stable: u16,
    pub push_stable_grpc: u16,
    pub push_canary: u16,
    pub push_canary_grpc: u16,
    pub envoy: u16,
    pub envoy_admin: u16,
}

impl StackPorts {
    /// Thirteen distinct free ports (see [`crate::free_port`]).
    pub fn free() -> anyhow::Result<StackPorts> {
        let ports: Vec<u16> = (0..13)
            .map(|_| crate::free_port())
            .collect::<Result<_, _>>()?;
        Ok(StackPorts {
            etcd: ports[0],
            etcd_peer: ports[1],
            control_plane_grpc: ports[2],
            control_plane_admin: ports[3],
            redis: ports[4],
            push_stable: ports[5],
            push_stable_grpc: ports[6],
            push_canary: ports[7],
            push_canary_grpc: ports[8],
            envoy: ports[9],
            envoy_admin: ports[10],
            limiter: ports[11],
            limiter_admin: ports[12],
        })
    }

    fn env(&self) -> [(&'static str, u16); 13] {
        [
            ("STACK_ETCD_PORT", self.etcd),
            ("STACK_ETCD_PEER_PORT", self.etcd_peer),
            ("STACK_CP_GRPC_PORT", self.control_plane_grpc),
            ("STACK_CP_ADMIN_PORT", self.control_plane_admin),
            ("STACK_REDIS_PORT", self.redis),
            ("STACK_LIMITER_PORT", self.limiter),
            ("STACK_LIMITER_ADMIN_PORT", self.limiter_admin),
            ("STACK_PUSH_STABLE_PORT", self.push_stable),
            ("STACK_PUSH_STABLE_GRPC_PORT", self.push_stable_grpc),
            ("STACK_PUSH_CANARY_PORT", self.push_canary),
            ("STACK_PUSH_CANARY_GRPC_PORT", self.push_canary_grpc),
            ("STACK_ENVOY_PORT", self.envoy),
            ("STACK_ENVOY_ADMIN_PORT", self.envoy_admin),
        ]
    }
}

/// Options for [`Stack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Run the live-ticker publisher (`make run` does; tests usually publish themselves).
    pub ticker: bool,
    /// Extra environment for run-stack.sh.
    pub env: BTreeMap<String, String>,
    /// Run in this folder instead of a fresh one (a second run over a first).
    pub dir: Option<PathBuf>,
    /// Listen on these ports instead of fresh ones.
    pub ports: Option<StackPorts>,
}

/// A running stack; dropping it stops everything (SIGTERM to the script, which
/// stops its processes, then SIGKILL to the whole process group).
pub struct Stack {
    pub ports: StackPorts,
    pub dir: PathBuf,
    child: Child,
    stopped: bool,
    keep_data: bool,
}

impl Stack {
    /// Starts the stack as `make run` does, without the ticker.
    pub async fn start(name: &str) -> anyhow::Result<Stack> {
        Stack::start_with(name, StackOptions::default()).await
    }

    pub async fn start_with(name: &str, options: StackOptions) -> anyhow::Result<Stack> {
        let dir = match options.dir {
            Some(dir) => dir,
            None => crate::run_dir(name)?,
        };
        let ports = match options.ports {
            Some(ports) => ports,
            None => StackPorts::free()?,
        };
        let root = crate::workspace_root();
        let bin_dir = crate::profile_dir()?;
        for bin in [
            "sidestream-control-plane",
            "sidestream-push",
            "sidestream-limiter",
            "sidestreamctl",
        ] {
            crate::binary(bin)?;
        }
        let wasm = crate::filter_wasm()?;
        // A `ready` left by a run that was killed outright must not count.
        let _ = std::fs::remove_file(dir.join("ready"));
        let log = std::fs::File::create(dir.join("run-stack.log"))?;
        let mut command = Command::new(root.join("scripts/run-stack.sh"));
        command
            .current_dir(&root)
            .env("STACK_RUN_DIR", &dir)
            .env("STACK_BIN_DIR", &bin_dir)
            .env("STACK_WASM", &wasm)
            .env("STACK_TICKER", if options.ticker { "1" } else { "0" })
            .envs(ports.env().iter().map(|(k, v)| (*k, v.to_string())))
            .envs(&options.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group, so dropping the stack can end every process in it.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start scripts/run-stack.sh: {e}"))?;
        let mut stack = Stack {
            ports,
            dir,
            child,
            stopped: false,
            keep_data: false,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if stack.dir.join("ready").is_file() {
                return Ok(stack);
            }
            if let Some(status) = stack.child.try_wait()? {
                anyhow::bail!(
                    "scripts/run-stack.sh exited ({status}) before the stack was ready:\n{}",
                    stack.script_log()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the stack was not ready within 120 s:\n{}",
                    stack.script_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Envoy's listener, e.g. `http://127.0.0.1:43121`.
    pub fn envoy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.envoy)
    }

    /// Envoy's admin endpoint.
    pub fn envoy_admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.envoy_admin)
    }

    /// The control plane's admin endpoint.
    pub fn control_plane_admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.control_plane_admin)
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.etcd)
    }

    /// A push server's HTTP URL, by group (`stable` or `canary`).
    pub fn push_url(&self, group: &str) -> String {
        let port = if group == "canary" {
            self.ports.push_canary
        } else {
            self.ports.push_stable
        };
        format!("http://127.0.0.1:{port}")
    }

    /// What run-stack.sh printed.
    pub fn script_log(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("run-stack.log")).unwrap_or_default();
        text.push_str(&format!(
            "\n(process logs in {})",
            self.dir.join("logs").display()
        ));
        text
    }

    /// One process's log (`etcd`, `control-plane`, `redis`, `limiter`, `push-stable`,
    /// `push-canary`, `envoy`, `seed`, `ticker`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The current process id of one of the stack's processes.
    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        let path = self.dir.join("pids").join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("no pid file {}: {e}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// `sidestreamctl` with this stack's etcd and control-plane admin.
    pub fn sidestreamctl(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(crate::binary("sidestreamctl")?);
        command
            .current_dir(crate::workspace_root())
            .arg("--etcd-endpoints")
            .arg(self.etcd_url())
            .arg("--admin")
            .arg(self.control_plane_admin_url());
        Ok(command)
    }

    /// Runs `sidestreamctl ARGS...` and returns its stdout, failing on a non-zero exit.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .sidestreamctl()?
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

    /// Writes `documents` (one config document or a list) to a file in the run
    /// folder and `sidestreamctl apply`s it.
    pub fn apply(&self, file_name: &str, documents: &serde_json::Value) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{file_name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(documents)?)?;
        let path = path
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("run folder path is not UTF-8"))?
            .to_owned();
        self.ctl(&["apply", &path])
    }

    /// Sends a signal to one of the stack's processes (e.g. 9 to kill a push
    /// server, which run-stack.sh then restarts).
    pub fn signal(&self, name: &str, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid(name)?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} ({name}) failed");
        Ok(())
    }

    /// A gauge or counter the filter defines, from Envoy's `/stats` (e.g.
    /// `sidestream.config_version`; Envoy lists it as `wasmcustom.sidestream...`).
    pub async fn envoy_stat(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let url = format!(
            "{}/stats?filter={}$",
            self.envoy_admin_url(),
            name.replace('.', "\\.")
        );
        let text = reqwest::get(&url).await?.error_for_status()?.text().await?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(stat, _)| *stat == name || stat.strip_prefix("wasmcustom.") == Some(name))
            .and_then(|(_, value)| value.trim().parse().ok()))
    }

    /// Interrupts the stack as Ctrl-C in its terminal does (SIGINT to the whole
    /// process group) and waits for run-stack.sh to finish.
    pub fn interrupt(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.stopped = true;
        let _ = Command::new("kill")
            .arg("-INT")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        self.wait_script(Duration::from_secs(30))
    }

    fn wait_script(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                kill_group(self.child.id());
                let _ = self.child.wait();
                anyhow::bail!(
                    "run-stack.sh did not stop within {timeout:?}:\n{}",
                    self.script_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps etcd's data when the stack is dropped (for a second run over
    /// the first in the same folder).
    pub fn keep_data(&mut self) {
        self.keep_data = true;
    }

    /// Stops the stack as `kill <script pid>` does (SIGTERM to run-stack.sh,
    /// which stops its processes) and waits for it to finish.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.stopped = true;
        signal_pid(self.child.id(), "-TERM");
        self.wait_script(Duration::from_secs(30))
    }

    /// The folder holding the stack's logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status();
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
        // Whatever is left in the group (nothing, normally).
        kill_group(self.child.id());
        let _ = self.child.wait();
        // etcd's data (about 60 MB of preallocated WAL) goes with a passing
        // test; a panicking one keeps it next to the logs.
        if !self.keep_data && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
        }
    }
}
