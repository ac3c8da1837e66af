//! Child processes that die with the test: stdout and stderr go to a log file
//! in the test's run folder, and dropping a [`Proc`] kills it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process owned by a test.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with its output in `<dir>/<name>.log`.
    pub fn spawn(name: &str, dir: &Path, mut command: Command) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name} ({command:?}): {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far, for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by number (15 for SIGTERM, 9 for SIGKILL, 19 for SIGSTOP).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())?;
        let rc = send_signal(pid, signal);
        anyhow::ensure!(rc == 0, "kill({pid}, {signal}) failed for {}", self.name);
        Ok(())
    }

    /// Whether the process has exited, with its status code if so.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn send_signal(pid: i32, signal: i32) -> i32 {
    // `kill(1)` keeps this crate free of `unsafe` (the workspace denies it).
    match Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
    {
        Ok(status) if status.success() => 0,
        _ => -1,
    }
}
