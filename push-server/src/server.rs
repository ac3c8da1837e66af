//! Serving: the HTTP accept loop (each connection's protocol found by
//! [`detect`]; SSE subscriptions on HTTP/1.1 served directly, see
//! [`direct_sse`]; everything else by hyper, with a handle to cut each
//! connection), the gRPC server, and the drain.

pub mod detect;
pub mod direct_sse;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use futures::future::Either;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::error::PushError;
use crate::hub::ConnectionControl;
use crate::state::AppState;
use detect::Detection;

/// Largest buffer hyper keeps per connection (read and write).
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;
/// How long a cut connection may still write before it is closed.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// TCP keepalive: time between probes once they started.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes before the kernel drops the connection.
const KEEPALIVE_PROBES: u32 = 3;

/// A signal that the servers should stop (set after the drain).
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Serves the HTTP API on `listener` until `shutdown`.
pub async fn serve_http(listener: TcpListener, state: Arc<AppState>, shutdown: Shutdown) {
    let router = crate::http::router(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.settings.request_head_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .writev(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream, state.settings.tcp_keepalive);
        tokio::spawn(serve_connection(
            stream,
            peer,
            state.clone(),
            router.clone(),
            builder.clone(),
            shutdown.clone(),
        ));
    }
}

/// TCP keepalive on an accepted connection (`None`: off): a peer that
/// vanished without a FIN or RST is found after `idle` plus a few probes.
fn set_keepalive(stream: &TcpStream, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return;
    };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "Cannot set TCP keepalive");
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: Shutdown,
) {
    // One head deadline from the accept, whoever reads the head.
    let deadline = tokio::time::Instant::now() + state.settings.request_head_timeout;
    let detection = Box::pin(detect::detect(
        stream,
        deadline,
        state.settings.write_deadline,
    ))
    .await;
    state.metrics.connection_detected(detection.label());
    match detection {
        Detection::DirectSse(stream, request) => {
            // A task of its own: an idle subscriber then holds only what its
            // stream needs, not this task (stopped through the hub, see
            // `Hub::stop_connections`).
            tokio::spawn(direct_sse::serve(stream, request, state));
        }
        Detection::Hyper(stream, protocol) => {
            let (stream, request_seen) =
                stream.head_deadline(deadline, protocol, state.metrics.clone());
            Box::pin(serve_hyper(
                stream,
                request_seen,
                peer,
                router,
                builder,
                shutdown,
            ))
            .await;
        }
        Detection::TimedOut => state.metrics.request_head_timeout(),
        Detection::BadRequest | Detection::Closed => {}
    }
}

async fn serve_hyper(
    stream: detect::Rewind,
    request_seen: Arc<AtomicBool>,
    peer: SocketAddr,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: Shutdown,
) {
    let control = Arc::new(ConnectionControl::default());
    let request_control = control.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request_seen.store(true, Ordering::Release);
        if let Some(refused) = refuse_host(&request) {
            return Either::Left(std::future::ready(Ok(refused)));
        }
        request.extensions_mut().insert(request_control.clone());
        Either::Right(router.clone().oneshot(request))
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "Connection ended with an error");
            }
            return;
        }
        () = control.cut_requested() => {
            tracing::debug!(%peer, "Cutting a connection");
        }
        () = shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
        }
    }
    let _ = tokio::time::timeout(CUT_GRACE, connection).await;
}

/// The 400 for an HTTP/1.1 request whose `Host` breaks RFC 9112 §3.2 (the
/// connection closes after it: the client is confused about something).
fn refuse_host<B>(request: &hyper::Request<B>) -> Option<axum::response::Response> {
    if request.version() != hyper::Version::HTTP_11 {
        return None;
    }
    let hosts = request
        .headers()
        .get_all(hyper::header::HOST)
        .iter()
        .map(|v| v.as_bytes());
    let problem = detect::host_problem(hosts)?;
    let mut response = PushError::BadRequest(problem).into_response();
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    Some(response)
}

/// Serves the gRPC API on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let keepalive = state.settings.tcp_keepalive;
    let incoming = sidestream_daemon_kit::grpc_incoming(listener).map(move |accepted| {
        if let Ok(stream) = &accepted {
            set_keepalive(stream, keepalive);
        }
        accepted
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(crate::grpc::service(state))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await
}

/// Drains: readiness false, streams told to retry, then waits until they are
/// gone or `grace` passed. Returns the streams still open.
pub async fn drain(state: &AppState, grace: Duration) -> usize {
    state.begin_drain();
    let deadline = Instant::now() + grace;
    loop {
        let open = state.hub.stream_count();
        if open == 0 || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves at SIGTERM or SIGINT.
pub async fn termination() {
    {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM"),
                        _ = int.recv() => tracing::info!("SIGINT"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
