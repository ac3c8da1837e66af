//! `sidestream-bench otlp-sink`: an OTLP/gRPC trace receiver that counts what
//! it gets and drops it, the collector the push server exports to in the
//! tracing-overhead run. On SIGTERM or SIGINT it writes
//! `{"requests": N, "spans": M}` to `--out` and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, Clone, clap::Args)]
pub struct OtlpSinkArgs {
    /// Where to listen for OTLP/gRPC (`--otlp-endpoint http://<this>`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the counts go at exit (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// What the sink received.
#[derive(Debug, Default, Serialize)]
pub struct Received {
    pub requests: u64,
    pub spans: u64,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    requests: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans
            .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn run(args: OtlpSinkArgs) -> anyhow::Result<Received> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let counts = Counts::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counts.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    let mut terminate = signal(SignalKind::terminate())?;
    eprintln!("otlp-sink listening on {}", args.listen);
    tokio::select! {
        served = server => served?,
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let received = Received {
        requests: counts.requests.load(Ordering::Relaxed),
        spans: counts.spans.load(Ordering::Relaxed),
    };
    crate::memory::write_json(&args.out, &received)?;
    Ok(received)
}
