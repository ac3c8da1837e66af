//! The daemon: flags, and starting the gRPC server, the admin server and the
//! Redis health loop on listeners it binds (port 0 works, so tests run it
//! in-process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Server, ServerTlsConfig};
use tracing::info;

use crate::admin::AdminState;
use crate::keys::{KeyPrefix, PrefixError, DEFAULT_PREFIX};
use crate::metrics::Metrics;
use crate::service::LimiterService;
use crate::store::{RedisTarget, RedisTargetError, Store, StoreError, StoreSettings};

/// Duration flags: the parser every sidestream daemon shares.
pub use sidestream_core::duration::parse_duration;

/// Shortest and longest `--lease`.
pub const LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(500)..=Duration::from_secs(3600);

/// sidestream-limiter: mesh-wide stream limits. A stateless gRPC service
/// (sidestream.limits.v1.StreamLimiter) keeping token buckets and leased
/// concurrent-stream counts in Redis or Redis Cluster; run any number of
/// replicas on one Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidestream-limiter", version)]
pub struct DaemonArgs {
    /// Address of the gRPC server.
    #[arg(
        long,
        env = "SIDESTREAM_LIMITER_LISTEN",
        default_value = "127.0.0.1:18300"
    )]
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "SIDESTREAM_LIMITER_ADMIN_LISTEN",
        default_value = "127.0.0.1:18301"
    )]
    pub admin_listen: SocketAddr,
    /// Redis: one URL (redis://host:port[/db]); with --redis-cluster a
    /// comma-separated list of Cluster seed node URLs.
    #[arg(
        long,
        env = "SIDESTREAM_LIMITER_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: String,
    /// --redis names Redis Cluster nodes.
    #[arg(long, env = "SIDESTREAM_LIMITER_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key the limiter writes.
    #[arg(long, env = "SIDESTREAM_LIMITER_REDIS_PREFIX", default_value = DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Longest wait for a Redis connection ("1s").
    #[arg(long, env = "SIDESTREAM_LIMITER_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_connect_timeout: Duration,
    /// Longest wait for one Redis call; past it the request gets UNAVAILABLE
    /// ("500ms").
    #[arg(long, env = "SIDESTREAM_LIMITER_REDIS_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// The lease on an instance's concurrent slots: an instance that stops
    /// syncing loses them this long after its last Acquire or Sync (500ms..=1h).
    #[arg(long, env = "SIDESTREAM_LIMITER_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Serve gRPC over TLS with this certificate (PEM; with --tls-key).
    #[arg(long, env = "SIDESTREAM_LIMITER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SIDESTREAM_LIMITER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM; needs --tls-cert).
    #[arg(long, env = "SIDESTREAM_LIMITER_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Also serve Envoy's rate limit service (RLS v3) on the same buckets:
    /// a JSON file with the domain and the policy each descriptor key stands
    /// for (see docs/operations.md).
    #[arg(long, env = "SIDESTREAM_LIMITER_RLS_CONFIG")]
    pub rls_config: Option<PathBuf>,
}

/// Errors starting the daemon: all are configuration errors (exit 64)
/// except binding, which is reported as is.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--redis` is unusable.
    #[error(transparent)]
    Redis(#[from] RedisTargetError),
    /// `--redis-prefix` is unusable.
    #[error("--redis-prefix: {0}")]
    Prefix(#[from] PrefixError),
    /// The Redis client could not be set up.
    #[error("--redis: {0}")]
    Client(#[from] StoreError),
    /// A flag's value is out of range.
    #[error("{flag}: {problem}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A TLS file is unreadable or the TLS config is invalid.
    #[error("TLS: {0}")]
    Tls(String),
    /// `--rls-config` is unusable.
    #[error(transparent)]
    Rls(#[from] crate::rls::RlsConfigError),
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

/// A started daemon.
pub struct RunningDaemon {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The Redis side (tests call it directly).
    pub store: Arc<Store>,
    /// The gRPC server first, then the admin server and the health loop.
    tasks: Vec<JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RunningDaemon {
    /// Waits until a server task ends (they run forever unless they fail).
    pub async fn wait(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let _ = futures::future::select_all(self.tasks.iter_mut()).await;
        self.stop();
    }

    /// Stops taking gRPC connections, lets the calls in flight finish (at
    /// most `grace`), then stops everything.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        if !self.tasks.is_empty() {
            let grpc = self.tasks.remove(0);
            if tokio::time::timeout(grace, grpc).await.is_err() {
                tracing::warn!(?grace, "Calls still in flight after the grace period");
            }
        }
        self.stop();
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_config(args: &DaemonArgs) -> Result<Option<ServerTlsConfig>, StartError> {
    sidestream_daemon_kit::server_tls(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.client_ca.as_deref(),
    )
    .map_err(StartError::Tls)
}

/// The Redis settings the flags describe.
pub fn store_settings(args: &DaemonArgs) -> Result<StoreSettings, StartError> {
    if !LEASE_RANGE.contains(&args.lease) {
        return Err(StartError::Flag {
            flag: "--lease",
            problem: format!("{:?} is outside 500ms..=1h", args.lease),
        });
    }
    for (flag, value) in [
        ("--redis-timeout", args.redis_timeout),
        ("--redis-connect-timeout", args.redis_connect_timeout),
    ] {
        if value.is_zero() {
            return Err(StartError::Flag {
                flag,
                problem: "must be more than 0".to_owned(),
            });
        }
    }
    Ok(StoreSettings {
        target: RedisTarget::parse(&args.redis, args.redis_cluster)?,
        prefix: KeyPrefix::new(&args.redis_prefix)?,
        lease: args.lease,
        connect_timeout: args.redis_connect_timeout,
        command_timeout: args.redis_timeout,
    })
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

/// Checks the flags, binds both listeners and starts every task. Redis may
/// be down: the limiter starts, answers UNAVAILABLE and is not ready until
/// Redis answers.
pub async fn start(args: DaemonArgs) -> Result<RunningDaemon, StartError> {
    let settings = store_settings(&args)?;
    let tls = tls_config(&args)?;
    let rls = args
        .rls_config
        .as_deref()
        .map(crate::rls::RlsConfig::load)
        .transpose()?;
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(Store::new(&settings, metrics.clone())?);
    let (grpc_listener, grpc_addr) = bind(args.listen).await?;
    let (admin_listener, admin_addr) = bind(args.admin_listen).await?;

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let rls = rls.map(|config| {
        info!(domain = %config.domain, descriptors = config.descriptors.len(), "Serving Envoy RLS");
        crate::rls::RlsService::new(config, store.clone(), metrics.clone()).into_server()
    });
    let grpc = builder
        .add_service(LimiterService::new(store.clone(), metrics.clone()).into_server())
        .add_optional_service(rls);
    let admin_state = AdminState {
        redis_up: Arc::new(AtomicBool::new(false)),
        metrics,
    };
    let (shutdown, mut shutdown_requested) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown_requested.wait_for(|stop| *stop).await;
        };
        if let Err(error) = grpc
            .serve_with_incoming_shutdown(sidestream_daemon_kit::grpc_incoming(grpc_listener), stop)
            .await
        {
            tracing::error!(%error, "gRPC server stopped");
        }
    }));
    let admin = crate::admin::router(admin_state.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(error) = axum::serve(admin_listener, admin).await {
            tracing::error!(%error, "Admin server stopped");
        }
    }));
    tasks.push(tokio::spawn(crate::admin::health_loop(
        store.clone(),
        admin_state,
    )));
    info!(%grpc_addr, %admin_addr, lease_ms = store.lease_ms(), "Limiter started");
    Ok(RunningDaemon {
        grpc_addr,
        admin_addr,
        store,
        tasks,
        shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_contract_defaults() {
        let args = DaemonArgs::try_parse_from(["sidestream-limiter"]).expect("defaults");
        assert_eq!(args.listen.to_string(), "127.0.0.1:18300");
        assert_eq!(args.admin_listen.to_string(), "127.0.0.1:18301");
        assert_eq!(args.lease, Duration::from_secs(15));
        assert_eq!(args.redis_timeout, Duration::from_millis(500));
        let settings = store_settings(&args).expect("settings");
        assert_eq!(
            settings.target,
            RedisTarget::Standalone("redis://127.0.0.1:6379".into())
        );
        assert_eq!(settings.prefix.as_str(), "sidestream:limits");
        assert!(DaemonArgs::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        assert!(DaemonArgs::try_parse_from(["x", "--lease", "15"]).is_err());
    }

    #[test]
    fn redis_targets() {
        let args = DaemonArgs::try_parse_from([
            "x",
            "--redis",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            "--redis-cluster",
        ])
        .expect("flags");
        assert_eq!(
            store_settings(&args).expect("settings").target,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        for (argv, message) in [
            (
                vec!["x", "--redis", "redis://a:1,redis://b:2"],
                "--redis lists 2 URLs; a list is for Redis Cluster seed nodes, add --redis-cluster",
            ),
            (
                vec!["x", "--redis", "http://a:1"],
                "--redis: 'http://a:1' is not a Redis URL",
            ),
            (vec!["x", "--redis", " , "], "--redis is empty"),
            (
                vec!["x", "--redis", "rediss://a:1"],
                "--redis: 'rediss://a:1' is not a Redis URL",
            ),
            (
                vec!["x", "--lease", "100ms"],
                "--lease: 100ms is outside 500ms..=1h",
            ),
            (
                vec!["x", "--redis-timeout", "0s"],
                "--redis-timeout: must be more than 0",
            ),
            (
                vec!["x", "--redis-prefix", "a{b}"],
                "--redis-prefix: Redis key prefix 'a{b}' has '{'",
            ),
        ] {
            let args = DaemonArgs::try_parse_from(argv.clone()).expect("flags parse");
            let error = store_settings(&args).expect_err(message);
            assert!(error.to_string().starts_with(message), "{argv:?}: {error}");
            assert!(error.is_config());
        }
    }
}
