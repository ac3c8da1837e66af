//! The harness for sidestream's integration tests: real processes (etcd, Envoy,
//! Redis, sidestream's binaries) on ephemeral loopback ports, readiness waits
//! with deadlines, and [`assert_eventually!`] instead of fixed sleeps.
//!
//! Binaries are taken from the Cargo target directory of the running test
//! (`make test` builds them first); the filter from
//! `target/wasm32-wasip1/wasm-release/sidestream_filter.wasm` (`make filter`).

pub mod browser;
pub mod envoy;
pub mod etcd;
pub mod limiter;
pub mod otlp;
pub mod process;
pub mod push;
pub mod redis;
pub mod soak;
pub mod stack;
pub mod tls;
pub mod trace_context;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use process::Proc;

/// The workspace root (the folder holding the top-level `Cargo.toml`):
/// `SIDESTREAM_WORKSPACE_ROOT` when set (a test runs a built test binary
/// against a copy of the repository, see `tests/tests/standalone_clone.rs`),
/// else where this crate was compiled.
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("SIDESTREAM_WORKSPACE_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Cargo profile directory the running test binary was built into
/// (`target/debug` or `target/release`).
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory from {}", exe.display()))
}

/// Path of one of sidestream's binaries, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join(name);
    anyhow::ensure!(
        path.is_file(),
        "binary '{name}' not found at {}; build it first (`make build` or `cargo build --workspace --bins`)",
        path.display()
    );
    Ok(path)
}

/// Path of the built Wasm filter.
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("wasm32-wasip1/wasm-release/sidestream_filter.wasm");
    anyhow::ensure!(
        path.is_file(),
        "Wasm filter not found at {}; build it first with `make filter`",
        path.display()
    );
    Ok(path)
}

/// Ports handed to child processes come from this range, below Linux's
/// ephemeral range (32768 and up by default): a port the kernel picked for
/// `bind(0)` can be taken by an outgoing connection's source port before the
/// child binds it, one from here cannot.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that is free now and that no other call in this test
/// process has handed out (test binaries run one at a time; each starts at an
/// offset of its own so consecutive runs don't reuse ports in TIME_WAIT).
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PORT_RANGE.start + u16::try_from(offset)?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 in {PORT_RANGE:?}")
}

/// A folder for one test's logs and data, kept under `target/test-runs/<name>`
/// so a failing test leaves its process logs behind to read.
pub fn run_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?
        .join("test-runs")
        .join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `check` until it returns `Ok` or `timeout` passes; the error of the last
/// attempt explains the failure.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                anyhow::bail!("{what}: still failing after {timeout:?}: {error:#}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Asserts that an async check (an expression yielding `anyhow::Result<T>`)
/// succeeds within a timeout, polling it; evaluates to the `T` it returned.
///
/// ```ignore
/// let body = assert_eventually!(Duration::from_secs(5), "upstream sees the header", async {
///     let body = get(&url).await?;
///     anyhow::ensure!(body.contains("x-sidestream-group"), "not yet: {body}");
///     Ok(body)
/// });
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $what:expr, $check:expr) => {
        match $crate::eventually($timeout, $what, || $check).await {
            Ok(value) => value,
            Err(error) => panic!("{error:#}"),
        }
    };
}

/// Waits until an HTTP GET of `url` answers with a success status.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    eventually(timeout, &format!("GET {url}"), || async {
        let response = client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        Ok(())
    })
    .await
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_tcp(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    eventually(timeout, &format!("connect {addr}"), || async {
        tokio::net::TcpStream::connect(addr).await?;
        Ok(())
    })
    .await
}
