//! SSE subscriptions over HTTP/1.1 served straight on the socket.
//!
//! hyper keeps two 8 KiB buffers per connection (read buffer and response
//! head) for the connection's whole life; with tens of thousands of idle
//! subscribers that is most of the server's memory. The accept loop therefore
//! *peeks* at each new HTTP/1.1 connection: a plain `GET /v1/events` is parsed
//! here (the request head is read into a buffer freed right after) and its
//! events are written as a chunked response with vectored writes of the
//! shared frames, batching whatever is queued. Anything else — other paths,
//! upgrades, HTTP/2, request bodies — goes to hyper untouched (peeking
//! consumes nothing).

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Shutdown;
use crate::http::sse::{self, SseBody};
use crate::http::QueryParams;
use crate::hub::ConnectionControl;
use crate::state::AppState;

/// The path served directly.
const EVENTS_PATH: &str = "/v1/events";
/// Largest request head handled here (larger ones go to hyper).
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 48;
/// Frames gathered into one write.
const MAX_BATCH_FRAMES: usize = 64;
/// Bytes gathered into one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cut connection may still write.
const CUT_GRACE: Duration = Duration::from_secs(2);

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\naccess-control-allow-origin: *\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";

/// A parsed SSE request.
pub struct SseRequest {
    query: QueryParams,
    headers: HeaderMap,
}

/// Whether the connection starts with an SSE request this module serves; if
/// so, the request head is consumed from the socket and returned.
pub async fn take_sse_request(stream: &mut TcpStream) -> Option<SseRequest> {
    tokio::time::timeout(HEAD_TIMEOUT, peek_sse_request(stream))
        .await
        .ok()
        .flatten()
}

async fn peek_sse_request(stream: &mut TcpStream) -> Option<SseRequest> {
    let prefix = format!("GET {EVENTS_PATH}");
    let mut buf = vec![0u8; 1024];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        let compared = seen.len().min(prefix.len());
        if seen[..compared] != prefix.as_bytes()[..compared] {
            return None; // not ours: hyper serves it
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(seen) {
            Ok(httparse::Status::Complete(head_len)) => {
                let parsed = parse(&request)?;
                // Consume exactly the head.
                let mut head = vec![0u8; head_len];
                tokio::io::AsyncReadExt::read_exact(stream, &mut head)
                    .await
                    .ok()?;
                return Some(parsed);
            }
            Ok(httparse::Status::Partial) => {
                if n == buf.len() {
                    if buf.len() >= MAX_HEAD {
                        return None;
                    }
                    buf.resize(buf.len() * 2, 0);
                    continue;
                }
                // Wait for more of the head (peek returns at once while data is there).
                stream.readable().await.ok()?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => return None,
        }
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

async fn write_error(
    stream: &mut TcpStream,
    error: crate::error::PushError,
) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
