//! The daemon: flags, validated into a [`DaemonConfig`], and [`start`], which
//! builds the state, binds both listeners (port 0 works, so tests run the
//! real wiring in-process), serves HTTP and gRPC and follows the control
//! plane. `main.rs` parses the flags and calls it; SIGTERM is its
//! [`RunningDaemon::drain_and_stop`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::BrokerError;
use crate::server::{self, Shutdown};
use crate::state::{AppState, BrokerSpec, Settings};
use crate::topics::{self, TopicFileError, TopicRegistry};
use crate::uring::{self, FanoutIo};

/// Duration flags: the parser every sidestream daemon shares.
pub use sidestream_core::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishAuth {
    /// A token is required unless the HTTP listener is bound to loopback.
    Auto,
    /// A token is always required.
    Required,
    /// Anyone may publish.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicPolicy {
    /// Topics without settings use the defaults.
    Open,
    /// Only configured topics exist (404 otherwise).
    Configured,
}

/// sidestream's push server: SSE, WebSocket and gRPC streams with topic history and lossless resume.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidestream-push", version)]
pub struct DaemonArgs {
    /// HTTP listen address (SSE, WebSocket, publish, health, metrics).
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_LISTEN",
        default_value = "127.0.0.1:18080"
    )]
    pub listen: SocketAddr,
    /// gRPC listen address (sidestream.push.v1.Push).
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_GRPC_LISTEN",
        default_value = "127.0.0.1:18090"
    )]
    pub grpc_listen: SocketAddr,
    /// `memory`, or `redis://host:port[/db]` for Redis Streams shared by several push servers.
    #[arg(long, env = "SIDESTREAM_PUSH_BROKER", default_value = "memory")]
    pub broker: String,
    /// Key prefix in Redis.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_REDIS_PREFIX",
        default_value = "sidestream:push"
    )]
    pub redis_prefix: String,
    /// Control plane gRPC address for live topic settings, e.g. http://127.0.0.1:18000.
    #[arg(long, env = "SIDESTREAM_PUSH_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// Cluster name reported to the control plane.
    #[arg(long, env = "SIDESTREAM_PUSH_CLUSTER", default_value = "push")]
    pub cluster: String,
    /// File of TopicSettings documents (JSON or YAML).
    #[arg(long, env = "SIDESTREAM_PUSH_CONFIG")]
    pub config: Option<PathBuf>,
    /// This server's name (logs, control plane).
    #[arg(long, env = "SIDESTREAM_PUSH_NODE_ID")]
    pub node_id: Option<String>,
    /// Whether unconfigured topics exist.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_TOPICS",
        value_enum,
        default_value = "open"
    )]
    pub topics: TopicPolicy,
    /// Who may publish.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_PUBLISH_AUTH",
        value_enum,
        default_value = "auto"
    )]
    pub publish_auth: PublishAuth,
    /// HS256 secret for publish and subscription JWTs.
    #[arg(long, env = "SIDESTREAM_PUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How long a WebSocket whose subscription token expired keeps streaming
    /// while it may still renew it with a `refresh` frame (SSE and gRPC
    /// streams end at expiry).
    #[arg(long, env = "SIDESTREAM_PUSH_TOKEN_REFRESH_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub token_refresh_grace: Duration,
    /// Heartbeat interval (SSE comment, WebSocket ping, gRPC heartbeat).
    #[arg(long, env = "SIDESTREAM_PUSH_HEARTBEAT", value_parser = parse_duration, default_value = "15s")]
    pub heartbeat: Duration,
    /// Per-subscriber queue in messages; a subscriber this far behind is cut.
    #[arg(long, env = "SIDESTREAM_PUSH_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Per-subscriber queue in bytes of message data (4 MiB); a subscriber
    /// whose queue would hold more is cut. One message of any size fits.
    #[arg(long, env = "SIDESTREAM_PUSH_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub queue_bytes: usize,
    /// The SSE `retry` sent on connect.
    #[arg(long, env = "SIDESTREAM_PUSH_RETRY", value_parser = parse_duration, default_value = "2s")]
    pub retry: Duration,
    /// Drain: streams end with retry = this plus up to --drain-retry-jitter.
    #[arg(long, env = "SIDESTREAM_PUSH_DRAIN_RETRY", value_parser = parse_duration, default_value = "1s")]
    pub drain_retry: Duration,
    #[arg(long, env = "SIDESTREAM_PUSH_DRAIN_RETRY_JITTER", value_parser = parse_duration, default_value = "5s")]
    pub drain_retry_jitter: Duration,
    /// Drain: how long to wait for streams to end before exiting.
    #[arg(long, visible_alias = "drain-timeout", env = "SIDESTREAM_PUSH_DRAIN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub drain_grace: Duration,
    /// Deliveries slower than this (publish → write) go to /debug/slow-deliveries.
    #[arg(long, env = "SIDESTREAM_PUSH_SLOW_DELIVERY_THRESHOLD", value_parser = parse_duration, default_value = "50ms")]
    pub slow_delivery_threshold: Duration,
    /// Slow deliveries kept.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_SLOW_DELIVERY_RING",
        default_value_t = 256
    )]
    pub slow_delivery_ring: usize,
    /// How long an idempotency key is remembered.
    #[arg(long, env = "SIDESTREAM_PUSH_IDEMPOTENCY_WINDOW", value_parser = parse_duration, default_value = "10m")]
    pub idempotency_window: Duration,
    /// Readiness fails while more deliveries than this are queued.
    #[arg(long, env = "SIDESTREAM_PUSH_MAX_BACKLOG", default_value_t = 1_000_000)]
    pub max_backlog: usize,
    /// Topics the memory broker keeps at most.
    #[arg(long, env = "SIDESTREAM_PUSH_MAX_TOPICS", default_value_t = 100_000)]
    pub max_topics: usize,
    /// How long an HTTP client may take to send a request head (408 after).
    #[arg(long, env = "SIDESTREAM_PUSH_REQUEST_HEAD_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub request_head_timeout: Duration,
    /// How long one write to an SSE subscriber may take; one whose connection
    /// does not drain within it is cut (it resumes with Last-Event-ID).
    #[arg(long, env = "SIDESTREAM_PUSH_WRITE_DEADLINE", value_parser = parse_duration, default_value = "10s")]
    pub write_deadline: Duration,
    /// TCP keepalive on accepted connections: idle time before the first probe (0s: off).
    #[arg(long, env = "SIDESTREAM_PUSH_TCP_KEEPALIVE", value_parser = parse_duration, default_value = "60s")]
    pub tcp_keepalive: Duration,
    /// How SSE fan-out writes reach idle subscribers' sockets: io_uring
    /// batches (one message's sends, up to 256 per system call), or a write
    /// per subscriber from its own task (epoll). `auto`: io_uring where the
    /// kernel allows it, else epoll (logged); `uring`: refuse to start
    /// without it. The path taken is in the startup log and the
    /// `sidestream_push_fanout_io` metric.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_FANOUT_IO",
        value_enum,
        default_value = "auto"
    )]
    pub fanout_io: FanoutIo,
}

/// Why the daemon did not start: bad flags or configuration (exit 64), or
/// a listener that could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag's value is out of range.
    #[error("{0}")]
    Flag(String),
    /// The topic settings file.
    #[error(transparent)]
    Topics(#[from] TopicFileError),
    /// The broker could not be set up.
    #[error("cannot set up the broker: {0}")]
    Broker(#[source] BrokerError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the error is bad configuration (exit code 64).
    pub fn is_config(&self) -> bool {
        !matches!(self, StartError::Bind { .. })
    }
}

/// The control plane a push server takes live topic settings from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// Its gRPC address, e.g. `http://127.0.0.1:18000`.
    pub endpoint: String,
    /// The cluster name reported to it.
    pub cluster: String,
}

/// What the flags say, validated: everything [`start_with`] needs.
#[derive(Debug)]
pub struct DaemonConfig {
    pub settings: Settings,
    pub topics: TopicRegistry,
    pub broker: BrokerSpec,
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub control_plane: Option<ControlPlane>,
}

impl DaemonConfig {
    /// A memory-broker server on loopback ports chosen by the system, with
    /// no control plane: what in-process tests run.
    pub fn loopback(settings: Settings, topics: TopicRegistry) -> DaemonConfig {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        DaemonConfig {
            settings,
            topics,
            broker: BrokerSpec::Memory,
            listen: any_port,
            grpc_listen: any_port,
            control_plane: None,
        }
    }
}

impl TryFrom<DaemonArgs> for DaemonConfig {
    type Error = StartError;

    /// Checks the flags and reads the topic settings file.
    fn try_from(args: DaemonArgs) -> Result<DaemonConfig, StartError> {
        let broker = match args.broker.as_str() {
            "memory" => BrokerSpec::Memory,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                BrokerSpec::Redis {
                    url: url.to_owned(),
                    prefix: args.redis_prefix.clone(),
                }
            }
            other => {
                return Err(StartError::Flag(format!(
                    "--broker must be 'memory' or redis://host:port, not '{other}'"
                )))
            }
        };
        if args.queue_capacity == 0 {
            return Err(StartError::Flag(
                "--queue-capacity must be at least 1".into(),
            ));
        }
        if args.queue_bytes == 0 {
            return Err(StartError::Flag("--queue-bytes must be at least 1".into()));
        }
        if args.request_head_timeout.is_zero() {
            return Err(StartError::Flag(
                "--request-head-timeout must be above 0".into(),
            ));
        }
        if args.write_deadline.is_zero() {
            return Err(StartError::Flag("--write-deadline must be above 0".into()));
        }
        if args.fanout_io == FanoutIo::Uring {
            if let Err(error) = uring::setup_ring() {
                return Err(StartError::Flag(format!(
                    "--fanout-io uring: io_uring is refused here ({error}); use --fanout-io auto or epoll"
                )));
            }
        }
        let file_topics = match &args.config {
            Some(path) => topics::load_file(path)?,
            None => Vec::new(),
        };
        let publish_open = match args.publish_auth {
            PublishAuth::Open => true,
            PublishAuth::Required => false,
            PublishAuth::Auto => args.listen.ip().is_loopback(),
        };
        let node_id = args
            .node_id
            .unwrap_or_else(|| format!("push-{}", std::process::id()));
        let settings = Settings {
            node_id,
            heartbeat: args.heartbeat,
            queue_capacity: args.queue_capacity,
            queue_bytes: args.queue_bytes,
            retry: args.retry,
            drain_retry: args.drain_retry,
            drain_retry_jitter: args.drain_retry_jitter,
            drain_grace: args.drain_grace,
            publish_open,
            jwt_secret: args.jwt_secret,
            token_refresh_grace: args.token_refresh_grace,
            slow_delivery_threshold: args.slow_delivery_threshold,
            slow_delivery_ring: args.slow_delivery_ring,
            idempotency_window: args.idempotency_window,
            max_backlog: args.max_backlog,
            max_topics: args.max_topics,
            request_head_timeout: args.request_head_timeout,
            write_deadline: args.write_deadline,
            tcp_keepalive: Some(args.tcp_keepalive).filter(|idle| !idle.is_zero()),
            fanout_io: args.fanout_io,
        };
        Ok(DaemonConfig {
            settings,
            topics: TopicRegistry::new(file_topics, args.topics == TopicPolicy::Open),
            broker,
            listen: args.listen,
            grpc_listen: args.grpc_listen,
            control_plane: args.control_plane.map(|endpoint| ControlPlane {
                endpoint,
                cluster: args.cluster,
            }),
        })
    }
}

/// A started push server.
#[derive(Debug)]
pub struct RunningDaemon {
    /// The shared state.
    pub state: Arc<AppState>,
    /// Where HTTP (SSE, WebSocket, publish, health, metrics) listens.
    pub http_addr: SocketAddr,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    shutdown: Shutdown,
    servers: Vec<JoinHandle<()>>,
    follow: Option<JoinHandle<()>>,
}

impl RunningDaemon {
    /// Drains (readiness false, streams told when to come back, up to the
    /// drain grace for them to go), then stops both servers.
    pub async fn drain_and_stop(mut self) {
        let left = server::drain(&self.state, self.state.settings.drain_grace).await;
        if left > 0 {
            tracing::warn!(
                streams = left,
                "Grace period over; closing the streams still open"
            );
        } else {
            tracing::info!("Every stream drained");
        }
        self.stop();
        let servers = std::mem::take(&mut self.servers);
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for task in servers {
                let _ = task.await;
            }
        })
        .await;
        tracing::info!("Stopped");
    }

    /// Stops both servers and closes every stream's connection at once.
    fn stop(&self) {
        self.state.hub.stop_connections();
        self.shutdown.trigger();
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.stop();
        if let Some(follow) = self.follow.take() {
            follow.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// Checks the flags, then [`start_with`] them.
pub async fn start(args: DaemonArgs) -> Result<RunningDaemon, StartError> {
    start_with(DaemonConfig::try_from(args)?).await
}

/// Sets up the broker, binds both listeners and starts serving (and
/// following the control plane, when there is one).
pub async fn start_with(config: DaemonConfig) -> Result<RunningDaemon, StartError> {
    let DaemonConfig {
        settings,
        topics,
        broker,
        listen,
        grpc_listen,
        control_plane,
    } = config;
    let node_id = settings.node_id.clone();
    let publish_open = settings.publish_open;
    let state = AppState::new(settings, topics, &broker)
        .await
        .map_err(StartError::Broker)?;
    let (http, http_addr) = bind(listen).await?;
    let (grpc, grpc_addr) = bind(grpc_listen).await?;
    tracing::info!(
        node_id,
        http = %http_addr,
        grpc = %grpc_addr,
        broker = state.broker.kind(),
        publish_open,
        fanout_io = state.fanout_path().as_str(),
        "sidestream-push listening"
    );
    let shutdown = Shutdown::default();
    let servers = vec![
        tokio::spawn(server::serve_http(http, state.clone(), shutdown.clone())),
        tokio::spawn({
            let serving = server::serve_grpc(grpc, state.clone(), shutdown.clone());
            async move {
                if let Err(error) = serving.await {
                    tracing::error!(%error, "gRPC server stopped");
                }
            }
        }),
    ];
    let follow = control_plane.map(|ControlPlane { endpoint, cluster }| {
        tokio::spawn(crate::control_plane::follow(
            state.clone(),
            endpoint,
            cluster,
        ))
    });
    Ok(RunningDaemon {
        state,
        http_addr,
        grpc_addr,
        shutdown,
        servers,
        follow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag that takes a duration.
    const DURATION_FLAGS: [&str; 10] = [
        "--heartbeat",
        "--retry",
        "--drain-retry",
        "--drain-retry-jitter",
        "--drain-grace",
        "--slow-delivery-threshold",
        "--idempotency-window",
        "--request-head-timeout",
        "--write-deadline",
        "--tcp-keepalive",
    ];

    fn args(flags: &[&str]) -> DaemonArgs {
        DaemonArgs::try_parse_from(std::iter::once("sidestream-push").chain(flags.iter().copied()))
            .expect("flags")
    }

    #[test]
    fn a_bare_number_needs_a_unit() {
        for flag in DURATION_FLAGS {
            let error = DaemonArgs::try_parse_from(["sidestream-push", flag, "5"]).expect_err(flag);
            let text = error.to_string();
            assert!(
                text.contains(flag) && text.contains("'5' needs a unit: 5ms, 5s, 5m"),
                "{text}"
            );
            assert!(error.use_stderr(), "{flag}: exits 64");
            assert!(DaemonArgs::try_parse_from(["sidestream-push", flag, "5s"]).is_ok());
        }
    }

    #[test]
    fn flags_become_settings() {
        let config = DaemonConfig::try_from(args(&[
            "--queue-capacity",
            "7",
            "--tcp-keepalive",
            "0s",
            "--node-id",
            "n1",
            "--control-plane",
            "http://127.0.0.1:18000",
            "--cluster",
            "edge",
        ]))
        .expect("valid");
        assert_eq!(config.settings.queue_capacity, 7);
        assert_eq!(
            config.settings.tcp_keepalive, None,
            "0s turns keepalive off"
        );
        assert_eq!(config.settings.node_id, "n1");
        assert!(config.settings.publish_open, "auto: open on loopback");
        assert_eq!(
            config.control_plane,
            Some(ControlPlane {
                endpoint: "http://127.0.0.1:18000".into(),
                cluster: "edge".into(),
            })
        );
        let config = DaemonConfig::try_from(args(&["--listen", "0.0.0.0:18080"])).expect("valid");
        assert!(!config.settings.publish_open, "auto: a token off loopback");
        assert!(config.control_plane.is_none());
        let config =
            DaemonConfig::try_from(args(&["--broker", "redis://127.0.0.1:6379/2"])).expect("valid");
        assert!(matches!(
            config.broker,
            BrokerSpec::Redis { ref url, ref prefix }
                if url == "redis://127.0.0.1:6379/2" && prefix == "sidestream:push"
        ));
    }

    #[test]
    fn bad_values_are_configuration_errors_naming_the_flag() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["--broker", "kafka://x"],
                "--broker must be 'memory' or redis://host:port, not 'kafka://x'",
            ),
            (
                &["--queue-capacity", "0"],
                "--queue-capacity must be at least 1",
            ),
            (&["--queue-bytes", "0"], "--queue-bytes must be at least 1"),
            (
                &["--request-head-timeout", "0s"],
                "--request-head-timeout must be above 0",
            ),
            (
                &["--write-deadline", "0ms"],
                "--write-deadline must be above 0",
            ),
        ];
        for (flags, message) in cases {
            let error = DaemonConfig::try_from(args(flags)).expect_err(message);
            assert_eq!(error.to_string(), message);
            assert!(error.is_config(), "{message}");
        }
        let error = DaemonConfig::try_from(args(&["--config", "/nonexistent/topics.yaml"]))
            .expect_err("missing file");
        assert!(
            error.to_string().contains("/nonexistent/topics.yaml") && error.is_config(),
            "{error}"
        );
    }

    /// From flags to serving, in-process on port 0.
    #[tokio::test]
    async fn starts_from_flags_on_port_zero_and_drains() {
        let daemon = start(args(&[
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--drain-grace",
            "1s",
        ]))
        .await
        .expect("start");
        assert_ne!(daemon.http_addr.port(), 0);
        assert_ne!(daemon.grpc_addr.port(), 0);
        let ready = reqwest::get(format!("http://{}/healthz/ready", daemon.http_addr))
            .await
            .expect("readiness");
        assert_eq!(ready.status().as_u16(), 200);
        let http_addr = daemon.http_addr;
        daemon.drain_and_stop().await;
        assert!(
            reqwest::get(format!("http://{http_addr}/healthz/ready"))
                .await
                .is_err(),
            "stopped"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_not_a_configuration_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let mut config =
            DaemonConfig::loopback(Settings::default(), TopicRegistry::new(Vec::new(), true));
        config.grpc_listen = addr;
        let error = start_with(config).await.expect_err("taken");
        assert!(!error.is_config());
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{error}"
        );
    }
}
