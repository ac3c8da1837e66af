//! Small HTTP/1.1 servers the benchmarks put behind the proxies under test.
//!
//! * [`Mode::Echo`]: the fast upstream behind Envoy. It answers `200 ok` and
//!   reports in response headers whether the request carried a `traceparent`
//!   and which release group header it carried, so the load client can check
//!   that the filter under test really did its work during the measurement.
//! * [`Mode::Grip`]: the origin behind Pushpin. It answers every request with
//!   a GRIP hold (`Grip-Hold: stream`) on the channel named by the last path
//!   segment, so Pushpin keeps the client's SSE stream open and fans
//!   published messages out to it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Echo,
    Grip,
}

/// Serves on every address until the process is killed.
pub async fn serve(mode: Mode, listen: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("upstream ({mode:?}) listening on {addr}");
        tasks.push(tokio::spawn(accept_loop(mode, listener)));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn accept_loop(mode: Mode, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service =
                service_fn(move |req| async move { Ok::<_, Infallible>(respond(mode, &req)) });
            // Errors here are clients going away; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(mode: Mode, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(200);
    match mode {
        Mode::Echo => {
            let traced = if req.headers().contains_key("traceparent") {
                "1"
            } else {
                "0"
            };
            let group = req
                .headers()
                .get("x-sidestream-group")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            builder = builder
                .header("content-type", "text/plain")
                .header("x-bench-traced", traced)
                .header("x-bench-group", group);
            builder
                .body(Full::new(Bytes::from_static(b"ok\n")))
                .unwrap_or_default()
        }
        Mode::Grip => {
            let channel = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("bench")
                .to_owned();
            builder
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .header("grip-hold", "stream")
                .header("grip-channel", channel)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default()
        }
    }
}
