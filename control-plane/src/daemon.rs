//! The daemon: flags, and starting the etcd source, the snapshot publisher, the
//! gRPC server and the admin server on listeners it binds (port 0 works, so
//! tests run it in-process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::etcd::{EtcdArgs, EtcdConfigError, EtcdSettings};
use crate::snapshot::{read_cache, CacheError};
use crate::source::WatchTiming;
use crate::state::{ControlPlane, StateSettings};

/// sidestream-control-plane: watches etcd, validates every key and streams
/// versioned snapshots to data planes over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidestream-control-plane", version)]
pub struct DaemonArgs {
    #[command(flatten)]
    /// etcd connection.
    pub etcd: EtcdArgs,
    /// Address of the gRPC config discovery server.
    #[arg(
        long,
        env = "SIDESTREAM_GRPC_LISTEN",
        default_value = "127.0.0.1:18000"
    )]
    pub grpc_listen: SocketAddr,
    /// Address of the admin HTTP server.
    #[arg(
        long,
        env = "SIDESTREAM_ADMIN_LISTEN",
        default_value = "127.0.0.1:18001"
    )]
    pub admin_listen: SocketAddr,
    /// Wait this long after a change for more before publishing ("5ms", "0ms", "1s").
    #[arg(long, env = "SIDESTREAM_DEBOUNCE", default_value = "5ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Keep the last good snapshot in this file (written atomically) and serve
    /// it at start while etcd is unreachable.
    #[arg(long, env = "SIDESTREAM_SNAPSHOT_CACHE")]
    pub snapshot_cache: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate (PEM; with --tls-key).
    #[arg(long, env = "SIDESTREAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SIDESTREAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM; needs --tls-cert).
    #[arg(long, env = "SIDESTREAM_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Longest wait between etcd reconnects ("5s").
    #[arg(long, env = "SIDESTREAM_ETCD_MAX_BACKOFF", default_value = "5s", value_parser = parse_duration)]
    pub etcd_max_backoff: Duration,
}

/// Duration flags: the parser every sidestream daemon shares.
pub use sidestream_core::duration::parse_duration;

/// Errors starting the daemon: all are configuration errors (exit 64)
/// except binding, which is reported as is.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// etcd flags.
    #[error(transparent)]
    Etcd(#[from] EtcdConfigError),
    /// The snapshot cache is unreadable.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A TLS file is unreadable or the TLS config is invalid.
    #[error("TLS: {0}")]
    Tls(String),
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
    /// The shared state.
    pub state: Arc<ControlPlane>,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningDaemon {
    /// Waits until a server task ends (they run forever unless they fail).
    pub async fn wait(mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let (_, _, rest) = futures::future::select_all(self.tasks.drain(..)).await;
        for task in rest {
            task.abort();
        }
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

/// Checks the flags, binds both listeners and starts every task.
pub async fn start(args: DaemonArgs) -> Result<RunningDaemon, StartError> {
    let settings: EtcdSettings = args.etcd.settings()?;
    let tls = tls_config(&args)?;
    let cached = match &args.snapshot_cache {
        Some(path) => match read_cache(path) {
            Ok(cached) => cached,
            Err(error) => {
                warn!(%error, "Ignoring the snapshot cache");
                None
            }
        },
        None => None,
    };
    if let Some(cached) = &cached {
        info!(version = %cached.version, "Serving the cached snapshot until etcd is read");
    }
    let state = ControlPlane::new(
        StateSettings {
            debounce: args.debounce,
            snapshot_cache: args.snapshot_cache.clone(),
        },
        cached,
    );
    let grpc_listener = TcpListener::bind(args.grpc_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.grpc_listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: args.grpc_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: args.admin_listen,
            source,
        })?;

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let grpc = builder.add_service(crate::discovery::service(state.clone()));
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        if let Err(error) = grpc
            .serve_with_incoming(sidestream_daemon_kit::grpc_incoming(grpc_listener))
            .await
        {
            tracing::error!(%error, "gRPC server stopped");
        }
    }));
    let admin = crate::admin::router(state.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(error) = axum::serve(admin_listener, admin).await {
            tracing::error!(%error, "Admin server stopped");
        }
    }));
    tasks.push(tokio::spawn(state.clone().run_publisher()));
    let timing = WatchTiming {
        max_backoff: args.etcd_max_backoff,
        ..WatchTiming::default()
    };
    tasks.push(tokio::spawn(crate::source::run(
        settings,
        state.clone(),
        timing,
    )));
    info!(%grpc_addr, %admin_addr, "Control plane started");
    Ok(RunningDaemon {
        state,
        grpc_addr,
        admin_addr,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_needs_a_unit() {
        for (flag, value) in [("--debounce", "5"), ("--etcd-max-backoff", "5000")] {
            let error = DaemonArgs::try_parse_from(["x", flag, value]).expect_err(flag);
            let text = error.to_string();
            assert!(
                text.contains(flag) && text.contains(&format!("'{value}' needs a unit")),
                "{text}"
            );
        }
    }

    #[test]
    fn flags_have_the_contract_defaults() {
        let args = DaemonArgs::try_parse_from(["sidestream-control-plane"]).expect("defaults");
        assert_eq!(args.etcd.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(args.etcd.prefix, "/sidestream");
        assert_eq!(args.grpc_listen.to_string(), "127.0.0.1:18000");
        assert_eq!(args.admin_listen.to_string(), "127.0.0.1:18001");
        assert_eq!(args.debounce, Duration::from_millis(5));
        let args = DaemonArgs::try_parse_from(["x", "--etcd-endpoints", "http://a:1,http://b:2"])
            .expect("list");
        assert_eq!(args.etcd.etcd_endpoints.len(), 2);
        assert!(DaemonArgs::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
    }

    /// In-process on port 0, etcd unreachable: the cached snapshot is served
    /// over gRPC and the admin API, and the daemon is healthy but not ready.
    #[tokio::test]
    async fn serves_the_cache_in_process_while_etcd_is_unreachable() {
        use sidestream_core::config::Snapshot;
        use sidestream_proto::config::v1::config_discovery_client::ConfigDiscoveryClient;
        use sidestream_proto::config::v1::{ConfigRequest, Node};

        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("snapshot.json");
        let snapshot = Snapshot::from_json(br#"{"topics": {"ticker": {"historySize": 5}}}"#)
            .expect("snapshot");
        let cached = crate::snapshot::VersionedSnapshot::new(snapshot, 77, 1);
        crate::snapshot::write_cache(&cache, &cached).expect("write cache");
        let args = DaemonArgs::try_parse_from([
            "sidestream-control-plane",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--snapshot-cache",
            cache.to_str().expect("utf-8 path"),
        ])
        .expect("flags");
        let daemon = start(args).await.expect("start");
        let admin = format!("http://{}", daemon.admin_addr);
        let health = reqwest::get(format!("{admin}/healthz"))
            .await
            .expect("healthz");
        assert_eq!(health.status().as_u16(), 200);
        let ready = reqwest::get(format!("{admin}/readyz"))
            .await
            .expect("readyz");
        assert_eq!(ready.status().as_u16(), 503);
        let view: serde_json::Value = reqwest::get(format!("{admin}/v1/snapshot"))
            .await
            .expect("snapshot")
            .json()
            .await
            .expect("json");
        assert_eq!(view["version"], cached.version.as_str());
        assert_eq!(view["snapshot"]["topics"]["ticker"]["historySize"], 5);

        let mut client = ConfigDiscoveryClient::connect(format!("http://{}", daemon.grpc_addr))
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ConfigRequest {
            node: Some(Node {
                id: "unit".into(),
                ..Node::default()
            }),
            kinds: vec!["topics".into()],
            ..ConfigRequest::default()
        })
        .await
        .expect("send");
        let mut responses = client
            .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let response = responses
            .message()
            .await
            .expect("message")
            .expect("a response");
        assert_eq!(response.version_info, cached.version);
        assert_eq!(response.revision, 77);

        // A bad first request is refused with a clear status.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ConfigRequest {
            node: Some(Node {
                id: "unit".into(),
                ..Node::default()
            }),
            kinds: vec!["widgets".into()],
            ..ConfigRequest::default()
        })
        .await
        .expect("send");
        let status = client
            .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect_err("unknown kind");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("widgets"), "{status:?}");
    }
}
