//! `sidestream-push`: flags → settings → servers; SIGTERM drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sidestream_core::duration::parse_duration;
use sidestream_push::server::{self, Shutdown};
use sidestream_push::state::{AppState, BrokerSpec, Settings};
use sidestream_push::topics::{self, TopicRegistry};
use sidestream_telemetry::{LogFormat, Telemetry, TraceArgs};

/// Exit code for bad flags or config (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublishAuth {
    /// A token is required unless the HTTP listener is bound to loopback.
    Auto,
    /// A token is always required.
    Required,
    /// Anyone may publish.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TopicPolicy {
    /// Topics without settings use the defaults.
    Open,
    /// Only configured topics exist (404 otherwise).
    Configured,
}

/// sidestream's push server: SSE, WebSocket and gRPC streams with topic history and lossless resume.
#[derive(Debug, Parser)]
#[command(name = "sidestream-push", version)]
struct Cli {
    /// HTTP listen address (SSE, WebSocket, publish, health, metrics).
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_LISTEN",
        default_value = "127.0.0.1:18080"
    )]
    listen: SocketAddr,
    /// gRPC listen address (sidestream.push.v1.Push).
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_GRPC_LISTEN",
        default_value = "127.0.0.1:18090"
    )]
    grpc_listen: SocketAddr,
    /// `memory`, or `redis://host:port[/db]` for Redis Streams shared by several push servers.
    #[arg(long, env = "SIDESTREAM_PUSH_BROKER", default_value = "memory")]
    broker: String,
    /// Key prefix in Redis.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_REDIS_PREFIX",
        default_value = "sidestream:push"
    )]
    redis_prefix: String,
    /// Control plane gRPC address for live topic settings, e.g. http://127.0.0.1:18000.
    #[arg(long, env = "SIDESTREAM_PUSH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Cluster name reported to the control plane.
    #[arg(long, env = "SIDESTREAM_PUSH_CLUSTER", default_value = "push")]
    cluster: String,
    /// File of TopicSettings documents (JSON or YAML).
    #[arg(long, env = "SIDESTREAM_PUSH_CONFIG")]
    config: Option<PathBuf>,
    /// This server's name (logs, control plane).
    #[arg(long, env = "SIDESTREAM_PUSH_NODE_ID")]
    node_id: Option<String>,
    /// Whether unconfigured topics exist.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_TOPICS",
        value_enum,
        default_value = "open"
    )]
    topics: TopicPolicy,
    /// Who may publish.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_PUBLISH_AUTH",
        value_enum,
        default_value = "auto"
    )]
    publish_auth: PublishAuth,
    /// HS256 secret for publish and subscription JWTs.
    #[arg(long, env = "SIDESTREAM_PUSH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// How long a WebSocket whose subscription token expired keeps streaming
    /// while it may still renew it with a `refresh` frame (SSE and gRPC
    /// streams end at expiry).
    #[arg(long, env = "SIDESTREAM_PUSH_TOKEN_REFRESH_GRACE", value_parser = parse_duration, default_value = "10s")]
    token_refresh_grace: Duration,
    /// Heartbeat interval (SSE comment, WebSocket ping, gRPC heartbeat).
    #[arg(long, env = "SIDESTREAM_PUSH_HEARTBEAT", value_parser = parse_duration, default_value = "15s")]
    heartbeat: Duration,
    /// Per-subscriber queue in messages; a subscriber this far behind is cut.
    #[arg(long, env = "SIDESTREAM_PUSH_QUEUE_CAPACITY", default_value_t = 1024)]
    queue_capacity: usize,
    /// Per-subscriber queue in bytes of message data (4 MiB); a subscriber
    /// whose queue would hold more is cut. One message of any size fits.
    #[arg(long, env = "SIDESTREAM_PUSH_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    queue_bytes: usize,
    /// The SSE `retry` sent on connect.
    #[arg(long, env = "SIDESTREAM_PUSH_RETRY", value_parser = parse_duration, default_value = "2s")]
    retry: Duration,
    /// Drain: streams end with retry = this plus up to --drain-retry-jitter.
    #[arg(long, env = "SIDESTREAM_PUSH_DRAIN_RETRY", value_parser = parse_duration, default_value = "1s")]
    drain_retry: Duration,
    #[arg(long, env = "SIDESTREAM_PUSH_DRAIN_RETRY_JITTER", value_parser = parse_duration, default_value = "5s")]
    drain_retry_jitter: Duration,
    /// Drain: how long to wait for streams to end before exiting.
    #[arg(long, visible_alias = "drain-timeout", env = "SIDESTREAM_PUSH_DRAIN_GRACE", value_parser = parse_duration, default_value = "10s")]
    drain_grace: Duration,
    /// Deliveries slower than this (publish → write) go to /debug/slow-deliveries.
    #[arg(long, env = "SIDESTREAM_PUSH_SLOW_DELIVERY_THRESHOLD", value_parser = parse_duration, default_value = "50ms")]
    slow_delivery_threshold: Duration,
    /// Slow deliveries kept.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_SLOW_DELIVERY_RING",
        default_value_t = 256
    )]
    slow_delivery_ring: usize,
    /// How long an idempotency key is remembered.
    #[arg(long, env = "SIDESTREAM_PUSH_IDEMPOTENCY_WINDOW", value_parser = parse_duration, default_value = "10m")]
    idempotency_window: Duration,
    /// Readiness fails while more deliveries than this are queued.
    #[arg(long, env = "SIDESTREAM_PUSH_MAX_BACKLOG", default_value_t = 1_000_000)]
    max_backlog: usize,
    /// Topics the memory broker keeps at most.
    #[arg(long, env = "SIDESTREAM_PUSH_MAX_TOPICS", default_value_t = 100_000)]
    max_topics: usize,
    /// How long an HTTP client may take to send a request head (408 after).
    #[arg(long, env = "SIDESTREAM_PUSH_REQUEST_HEAD_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    request_head_timeout: Duration,
    /// How long one write to an SSE subscriber may take; one whose connection
    /// does not drain within it is cut (it resumes with Last-Event-ID).
    #[arg(long, env = "SIDESTREAM_PUSH_WRITE_DEADLINE", value_parser = parse_duration, default_value = "10s")]
    write_deadline: Duration,
    /// TCP keepalive on accepted connections: idle time before the first probe (0s: off).
    #[arg(long, env = "SIDESTREAM_PUSH_TCP_KEEPALIVE", value_parser = parse_duration, default_value = "60s")]
    tcp_keepalive: Duration,
    /// Log format.
    #[arg(
        long,
        env = "SIDESTREAM_PUSH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    trace: TraceArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sidestream-push: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        Telemetry::init("sidestream-push", &cli.trace, cli.log_format)
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("sidestream-push: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = runtime.block_on(run(cli));
    // Flush the last spans while the runtime still runs the exporter.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(error)) => {
            tracing::error!("{error:#}");
            eprintln!("sidestream-push: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(error)) => {
            tracing::error!("{error:#}");
            eprintln!("sidestream-push: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let broker = match cli.broker.as_str() {
        "memory" => BrokerSpec::Memory,
        url if url.starts_with("redis://") || url.starts_with("rediss://") => BrokerSpec::Redis {
            url: url.to_owned(),
            prefix: cli.redis_prefix.clone(),
        },
        other => {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--broker must be 'memory' or redis://host:port, not '{other}'"
            )))
        }
    };
    if cli.queue_capacity == 0 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--queue-capacity must be at least 1"
        )));
    }
    if cli.queue_bytes == 0 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--queue-bytes must be at least 1"
        )));
    }
    if cli.request_head_timeout.is_zero() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--request-head-timeout must be above 0"
        )));
    }
    if cli.write_deadline.is_zero() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--write-deadline must be above 0"
        )));
    }
    let file_topics = match &cli.config {
        Some(path) => topics::load_file(path).map_err(|e| Failure::Usage(e.into()))?,
        None => Vec::new(),
    };
    let publish_open = match cli.publish_auth {
        PublishAuth::Open => true,
        PublishAuth::Required => false,
        PublishAuth::Auto => cli.listen.ip().is_loopback(),
    };
    let node_id = cli
        .node_id
        .clone()
        .unwrap_or_else(|| format!("push-{}", std::process::id()));
    let settings = Settings {
        node_id: node_id.clone(),
        heartbeat: cli.heartbeat,
        queue_capacity: cli.queue_capacity,
        queue_bytes: cli.queue_bytes,
        retry: cli.retry,
        drain_retry: cli.drain_retry,
        drain_retry_jitter: cli.drain_retry_jitter,
        drain_grace: cli.drain_grace,
        publish_open,
        jwt_secret: cli.jwt_secret.clone(),
        token_refresh_grace: cli.token_refresh_grace,
        slow_delivery_threshold: cli.slow_delivery_threshold,
        slow_delivery_ring: cli.slow_delivery_ring,
        idempotency_window: cli.idempotency_window,
        max_backlog: cli.max_backlog,
        max_topics: cli.max_topics,
        request_head_timeout: cli.request_head_timeout,
        write_deadline: cli.write_deadline,
        tcp_keepalive: Some(cli.tcp_keepalive).filter(|idle| !idle.is_zero()),
    };
    let registry = TopicRegistry::new(file_topics, cli.topics == TopicPolicy::Open);
    let state = AppState::new(settings, registry, &broker)
        .await
        .context("cannot set up the broker")
        .map_err(Failure::Usage)?;
    let http = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))
        .map_err(Failure::Runtime)?;
    let grpc = tokio::net::TcpListener::bind(cli.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.grpc_listen))
        .map_err(Failure::Runtime)?;
    tracing::info!(
        node_id,
        http = %cli.listen,
        grpc = %cli.grpc_listen,
        broker = state.broker.kind(),
        publish_open,
        "sidestream-push listening"
    );
    let shutdown = Shutdown::default();
    let http_task = tokio::spawn(server::serve_http(http, state.clone(), shutdown.clone()));
    let grpc_task = tokio::spawn(server::serve_grpc(grpc, state.clone(), shutdown.clone()));
    if let Some(endpoint) = cli.control_plane.clone() {
        tokio::spawn(sidestream_push::control_plane::follow(
            state.clone(),
            endpoint,
            cli.cluster.clone(),
        ));
    }
    server::termination().await;
    drain_and_stop(&state, cli.drain_grace, &shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let _ = http_task.await;
        let _ = grpc_task.await;
    })
    .await;
    tracing::info!("Stopped");
    Ok(())
}

async fn drain_and_stop(state: &Arc<AppState>, grace: Duration, shutdown: &Shutdown) {
    let left = server::drain(state, grace).await;
    if left > 0 {
        tracing::warn!(
            streams = left,
            "Grace period over; closing the streams still open"
        );
    } else {
        tracing::info!("Every stream drained");
    }
    shutdown.trigger();
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

    #[test]
    fn a_bare_number_needs_a_unit() {
        for flag in DURATION_FLAGS {
            let error = Cli::try_parse_from(["sidestream-push", flag, "5"]).expect_err(flag);
            let text = error.to_string();
            assert!(
                text.contains(flag) && text.contains("'5' needs a unit: 5ms, 5s, 5m"),
                "{text}"
            );
            assert!(error.use_stderr(), "{flag}: exits 64");
            assert!(Cli::try_parse_from(["sidestream-push", flag, "5s"]).is_ok());
        }
    }
}
