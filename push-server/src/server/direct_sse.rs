//! SSE subscriptions over HTTP/1.1 served straight on the socket.
//!
//! hyper keeps two 8 KiB buffers per connection (read buffer and response
//! head) for the connection's whole life, and will not go below 8 KiB
//! (`max_buf_size` asserts at least 8192); with tens of thousands of idle
//! subscribers that is most of the server's memory. The accept loop therefore
//! reads the start of each new connection: a plain HTTP/1.1 `GET /v1/events`
//! is parsed here (the request head is read into a buffer freed right after)
//! and its events are written as a chunked response with vectored writes of
//! the shared frames, batching whatever is queued. Anything else — other
//! paths, other methods, HTTP/1.0, upgrades, HTTP/2, request bodies,
//! absolute-form targets, heads above 8 KiB, unparsable heads —
//! goes to hyper, which reads the bytes already taken first ([`Rewind`]) and
//! answers malformed requests with its own 4xx. A head that does not arrive
//! within the head timeout gets 408.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Shutdown;
use crate::error::PushError;
use crate::http::sse::{self, SseBody};
use crate::http::QueryParams;
use crate::hub::ConnectionControl;
use crate::state::AppState;

/// The path served directly.
const EVENTS_PATH: &str = "/v1/events";
/// What a request served here starts with.
const REQUEST_PREFIX: &[u8] = b"GET /v1/events";
/// First read of a connection.
const FIRST_READ: usize = 1024;
/// Largest request head handled here (larger ones go to hyper).
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 48;
/// Frames gathered into one write.
const MAX_BATCH_FRAMES: usize = 64;
/// Bytes gathered into one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long a cut connection may still write.
const CUT_GRACE: Duration = Duration::from_secs(2);

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\naccess-control-allow-origin: *\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";

/// A parsed SSE request.
pub struct SseRequest {
    query: QueryParams,
    headers: HeaderMap,
}

/// What a new connection turned out to be.
pub enum Opening {
    /// A `GET /v1/events` served here; its head has been consumed.
    Sse(TcpStream, SseRequest),
    /// Anything else: hyper serves it, reading the bytes already taken first.
    Other(Rewind),
    /// The connection closed, or its head did not arrive in time (answered).
    Done,
}

/// Reads the start of a new connection and tells who serves it. The head
/// must arrive within `head_timeout` (slowloris): a client that sent part of
/// one gets 408, one that sent nothing is closed.
pub async fn open(mut stream: TcpStream, head_timeout: Duration) -> Opening {
    let mut buf = vec![0u8; FIRST_READ];
    let mut filled = 0;
    let deadline = tokio::time::sleep(head_timeout);
    tokio::pin!(deadline);
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buf[filled..]) => read,
            () = &mut deadline => {
                if filled > 0 {
                    let _ = tokio::time::timeout(
                        CUT_GRACE,
                        write_error(&mut stream, PushError::RequestTimeout),
                    )
                    .await;
                }
                return Opening::Done;
            }
        };
        match read {
            Ok(0) if filled == 0 => return Opening::Done,
            // A partial head and EOF: hyper answers it.
            Ok(0) => return Opening::Other(Rewind::new(stream, buf, filled)),
            Ok(n) => filled += n,
            Err(_) => return Opening::Done,
        }
        match classify(&buf[..filled]) {
            Head::Ours(request) => return Opening::Sse(stream, request),
            Head::Other => return Opening::Other(Rewind::new(stream, buf, filled)),
            Head::Partial if filled < buf.len() => {}
            Head::Partial if buf.len() < MAX_HEAD => buf.resize(buf.len() * 2, 0),
            Head::Partial => return Opening::Other(Rewind::new(stream, buf, filled)),
        }
    }
}

enum Head {
    Ours(SseRequest),
    Other,
    Partial,
}

/// Whether `seen` (the start of a connection) is a complete request served here.
fn classify(seen: &[u8]) -> Head {
    let compared = seen.len().min(REQUEST_PREFIX.len());
    if seen[..compared] != REQUEST_PREFIX[..compared] {
        return Head::Other; // not ours: hyper serves it
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(seen) {
        // Bytes after the head (pipelined requests) are dropped: the
        // response says `connection: close`.
        Ok(httparse::Status::Complete(_)) => match parse(&request) {
            Some(parsed) => Head::Ours(parsed),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

fn parse(request: &httparse::Request<'_, '_>) -> Option<SseRequest> {
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != EVENTS_PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        if name == "upgrade"
            || name == "transfer-encoding"
            || (name == "content-length" && header.value != b"0")
        {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(header.value).ok()?);
    }
    Some(SseRequest {
        query: QueryParams::parse(query),
        headers,
    })
}

/// Serves one SSE request on `stream` until the stream ends, the client
/// leaves, the subscriber is cut or the server shuts down.
pub async fn serve(
    mut stream: TcpStream,
    request: SseRequest,
    state: Arc<AppState>,
    shutdown: Shutdown,
) {
    let control = Arc::new(ConnectionControl::default());
    // Boxed one-time phases keep the long-lived task small.
    let opened = Box::pin(sse::open(
        &state,
        Some(control.clone()),
        &request.query,
        &request.headers,
    ))
    .await;
    drop(request);
    let mut body = match opened {
        Ok(body) => body,
        Err(error) => {
            let _ = Box::pin(write_error(&mut stream, error)).await;
            return;
        }
    };
    if stream.write_all(RESPONSE_HEAD).await.is_err() {
        return;
    }
    let cut = async {
        control.cut_requested().await;
        tokio::time::sleep(CUT_GRACE).await;
    };
    tokio::pin!(cut);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            frame = body.frame() => frame,
            () = client_gone(&stream) => return,
            () = &mut cut => return,
            () = &mut stop => return,
        };
        let Some(Ok(first)) = first else {
            // The stream ended (drain, slow consumer): finish the response.
            let _ = tokio::time::timeout(CUT_GRACE, stream.write_all(b"0\r\n\r\n")).await;
            let _ = tokio::time::timeout(CUT_GRACE, stream.shutdown()).await;
            return;
        };
        let mut frames: Vec<Bytes> = Vec::with_capacity(4);
        let mut ended = false;
        push_frame(&mut frames, first);
        gather(&mut body, &mut frames, &mut ended);
        let written = tokio::select! {
            written = write_chunk(&mut stream, &frames, ended) => written,
            () = &mut cut => return,
            () = &mut stop => return,
        };
        if written.is_err() || ended {
            if ended {
                let _ = tokio::time::timeout(CUT_GRACE, stream.shutdown()).await;
            }
            return;
        }
    }
}

fn push_frame(frames: &mut Vec<Bytes>, frame: http_body::Frame<Bytes>) {
    if let Ok(data) = frame.into_data() {
        if !data.is_empty() {
            frames.push(data);
        }
    }
}

/// Adds the frames that are ready now, up to the batch limits.
fn gather(body: &mut SseBody, frames: &mut Vec<Bytes>, ended: &mut bool) {
    let mut bytes: usize = frames.iter().map(Bytes::len).sum();
    while frames.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                push_frame(frames, frame);
                bytes += frames.last().map_or(0, Bytes::len);
            }
            Some(None) => {
                *ended = true;
                return;
            }
            Some(Some(Err(never))) => match never {},
            None => return,
        }
    }
}

/// Writes `frames` as one HTTP chunk (and the last chunk when `end`).
async fn write_chunk(stream: &mut TcpStream, frames: &[Bytes], end: bool) -> std::io::Result<()> {
    let len: usize = frames.iter().map(Bytes::len).sum();
    if len == 0 && !end {
        return Ok(());
    }
    let mut header_buf = [0u8; 20];
    let header = chunk_header(len, &mut header_buf);
    let trailer: &[u8] = if end { b"\r\n0\r\n\r\n" } else { b"\r\n" };
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() + 2);
    if len > 0 {
        slices.push(IoSlice::new(header));
        slices.extend(frames.iter().map(|f| IoSlice::new(f)));
        slices.push(IoSlice::new(trailer));
    } else {
        slices.push(IoSlice::new(b"0\r\n\r\n"));
    }
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        let n = stream.write_vectored(remaining).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, n);
    }
    Ok(())
}

/// `<len in hex>\r\n`, written into `buf`.
fn chunk_header(len: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let count = digits.len() - i;
    buf[..count].copy_from_slice(&digits[i..]);
    buf[count..count + 2].copy_from_slice(b"\r\n");
    &buf[..count + 2]
}

/// Resolves when the client closed its side (or the socket failed).
async fn client_gone(stream: &TcpStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let read = {
            let mut scratch = [0u8; 64];
            stream.try_read(&mut scratch)
        };
        match read {
            Ok(0) => return,
            Ok(_) => {} // pipelined bytes: ignored, the response closes the connection
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn write_error(stream: &mut TcpStream, error: PushError) -> std::io::Result<()> {
    let response = error.into_response();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// A connection whose first bytes were already read: reads return them
/// first (then the buffer is freed), writes go straight to the socket.
pub struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
}

impl Rewind {
    fn new(stream: TcpStream, mut buf: Vec<u8>, filled: usize) -> Rewind {
        buf.truncate(filled);
        Rewind {
            prefix: Bytes::from(buf),
            stream,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = Bytes::new(); // free the head buffer
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_classified() {
        let ours = "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(matches!(classify(ours.as_bytes()), Head::Ours(_)));
        for partial in [
            "G",
            "GET /v1/ev",
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\n",
        ] {
            assert!(
                matches!(classify(partial.as_bytes()), Head::Partial),
                "{partial}"
            );
        }
        for other in [
            "POST /v1/topics/a/messages HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET http://x/v1/events?topic=a HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /v1/events?topic=a HTTP/1.0\r\n\r\n",
            "GET /v1/eventsx?topic=a HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n",
            "GET /v1/events?topic=a HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(matches!(classify(other.as_bytes()), Head::Other), "{other}");
        }
    }

    #[test]
    fn chunk_headers_are_hex() {
        let mut buf = [0u8; 20];
        for (len, text) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (65536, "10000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            assert_eq!(chunk_header(len, &mut buf), text.as_bytes());
        }
    }
}
