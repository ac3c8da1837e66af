//! The first step of every HTTP connection: finding out what it is, as
//! linkerd's `detect` does — a typed result ([`Detection`]), a read deadline,
//! and the bytes already read replayed to whoever serves the connection
//! ([`Rewind`], linkerd's `PrefixedIo`).
//!
//! The start of a connection is read until it is known: a complete HTTP/1.1
//! `GET /v1/events` head ([`super::direct_sse`] serves it on the socket; the
//! head buffer is freed), the HTTP/2 preface, or other HTTP/1 (hyper serves
//! those two, reading the bytes taken here first). A head with a missing or
//! repeated `Host` is refused here with 400 (RFC 9112 §3.2). The head must
//! arrive within the head deadline; hyper gets what is left of it for the
//! first request head, not a fresh one ([`Rewind::head_deadline`]).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::direct_sse::{self, Head, SseRequest};
use crate::error::PushError;
use crate::metrics::Metrics;

/// First read of a connection.
const FIRST_READ: usize = 1024;
/// Largest request head read here (a larger one goes to hyper, partly read).
const MAX_HEAD: usize = 8 * 1024;
/// What an HTTP/2 connection with prior knowledge starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a new connection turned out to be.
pub enum Detection {
    /// A `GET /v1/events` over HTTP/1.1, served on the socket; its head has been consumed.
    DirectSse(TcpStream, Box<SseRequest>),
    /// Anything else HTTP: hyper serves it, reading the bytes already taken first.
    Hyper(Rewind, HyperProtocol),
    /// A head refused here (answered 400: a missing or repeated `Host`).
    BadRequest,
    /// No complete head within the deadline (answered 408 when one had begun).
    TimedOut,
    /// Closed, or failed, before sending anything.
    Closed,
}

impl Detection {
    /// The label of [`crate::metrics::CONNECTIONS_DETECTED`].
    pub fn label(&self) -> &'static str {
        match self {
            Detection::DirectSse(..) => "sse",
            Detection::Hyper(_, HyperProtocol::Http1) => "http1",
            Detection::Hyper(_, HyperProtocol::Http2) => "http2",
            Detection::BadRequest => "bad-request",
            Detection::TimedOut => "timeout",
            Detection::Closed => "closed",
        }
    }
}

/// The protocol of a connection handed to hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HyperProtocol {
    Http1,
    /// Prior knowledge (the preface), as h2c clients and gRPC-style clients send it.
    Http2,
}

/// Reads the start of a new connection until it is known what it is. The
/// head must arrive by `deadline` (slowloris): a client that sent part of one
/// gets 408, one that sent nothing is closed. Answers (400, 408) get at most
/// `write_deadline` to be written.
pub async fn detect(
    mut stream: TcpStream,
    deadline: Instant,
    write_deadline: Duration,
) -> Detection {
    let mut buf = vec![0u8; FIRST_READ];
    let mut filled = 0;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..])).await;
        match read {
            Err(_) => {
                if filled > 0 {
                    answer(&mut stream, PushError::RequestTimeout, write_deadline).await;
                }
                return Detection::TimedOut;
            }
            Ok(Ok(0)) if filled == 0 => return Detection::Closed,
            // A partial head and EOF: hyper answers it.
            Ok(Ok(0)) => {
                let protocol = hyper_protocol(&buf[..filled]).unwrap_or(HyperProtocol::Http1);
                return Detection::Hyper(Rewind::new(stream, buf, filled), protocol);
            }
            Ok(Ok(n)) => filled += n,
            Ok(Err(_)) => return Detection::Closed,
        }
        match direct_sse::classify(&buf[..filled]) {
            Head::Ours(request) => return Detection::DirectSse(stream, Box::new(request)),
            Head::Refused(error) => {
                answer(&mut stream, error, write_deadline).await;
                return Detection::BadRequest;
            }
            Head::Other => {
                if let Some(protocol) = hyper_protocol(&buf[..filled]) {
                    return Detection::Hyper(Rewind::new(stream, buf, filled), protocol);
                }
                // The start of the HTTP/2 preface: read on.
            }
            Head::Partial => {}
        }
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Detection::Hyper(Rewind::new(stream, buf, filled), HyperProtocol::Http1);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// HTTP/2 when `seen` is the preface, HTTP/1 when it cannot be; `None` while
/// `seen` is the start of the preface.
fn hyper_protocol(seen: &[u8]) -> Option<HyperProtocol> {
    let compared = seen.len().min(H2_PREFACE.len());
    if seen[..compared] != H2_PREFACE[..compared] {
        Some(HyperProtocol::Http1)
    } else if compared == H2_PREFACE.len() {
        Some(HyperProtocol::Http2)
    } else {
        None
    }
}

async fn answer(stream: &mut TcpStream, error: PushError, write_deadline: Duration) {
    let _ = tokio::time::timeout(write_deadline, direct_sse::write_error(stream, error)).await;
}

/// Why a request's `Host` breaks RFC 9112 §3.2 (an HTTP/1.1 request has
/// exactly one, empty or `host[:port]`), given the values of its `Host` lines.
pub fn host_problem<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut values = values.into_iter();
    let Some(value) = values.next() else {
        return Some(
            "the request has no Host header; HTTP/1.1 requires one (RFC 9112 §3.2)".into(),
        );
    };
    let repeated = 1 + values.count();
    if repeated > 1 {
        return Some(format!(
            "the request has {repeated} Host headers; HTTP/1.1 allows one (RFC 9112 §3.2)"
        ));
    }
    if value.is_empty() {
        return None;
    }
    let valid = !value.contains(&b'@')
        && axum::http::uri::Authority::try_from(value)
            .is_ok_and(|a| a.as_str().len() == value.len());
    if valid {
        return None;
    }
    let shown: String = String::from_utf8_lossy(value).chars().take(64).collect();
    Some(format!(
        "Host '{shown}' is not a host[:port] (RFC 9112 §3.2)"
    ))
}

/// A connection whose first bytes were already read: reads return them
/// first (then the buffer is freed), writes go straight to the socket.
/// Until the first request head is read it may carry what is left of the
/// head deadline ([`Rewind::head_deadline`]).
pub struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
    head: Option<HeadDeadline>,
}

/// The rest of a connection's head deadline, applied to hyper's reads until
/// the service sees the first request.
struct HeadDeadline {
    sleep: Pin<Box<Sleep>>,
    request_seen: Arc<AtomicBool>,
    /// The 408 to write when the deadline passes (HTTP/1: hyper has written
    /// nothing before the first head; HTTP/2: none, the connection just ends).
    answer: Option<Bytes>,
    metrics: Arc<Metrics>,
}

impl Rewind {
    fn new(stream: TcpStream, mut buf: Vec<u8>, filled: usize) -> Rewind {
        buf.truncate(filled);
        Rewind {
            prefix: Bytes::from(buf),
            stream,
            head: None,
        }
    }

    /// Applies `deadline` (the connection's head deadline, already running
    /// since the accept) to the first request head hyper reads. The flag
    /// returned must be set when a request reaches the service; from then on
    /// hyper's own header timeout applies.
    pub fn head_deadline(
        mut self,
        deadline: Instant,
        protocol: HyperProtocol,
        metrics: Arc<Metrics>,
    ) -> (Rewind, Arc<AtomicBool>) {
        let request_seen = Arc::new(AtomicBool::new(false));
        let answer = match protocol {
            HyperProtocol::Http1 => Some(Bytes::from(direct_sse::response_bytes(
                PushError::RequestTimeout,
            ))),
            HyperProtocol::Http2 => None,
        };
        self.head = Some(HeadDeadline {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            request_seen: request_seen.clone(),
            answer,
            metrics,
        });
        (self, request_seen)
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
        if let Some(head) = &mut this.head {
            if head.request_seen.load(Ordering::Acquire) {
                this.head = None; // hyper's header timeout from here
            } else if head.sleep.as_mut().poll(cx).is_ready() {
                head.metrics.request_head_timeout();
                if let Some(answer) = head.answer.take() {
                    // Nothing was written on this connection yet, so the
                    // small answer fits in the socket's send buffer.
                    let _ = this.stream.try_write(&answer);
                }
                this.head = None;
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request head did not arrive in time",
                )));
            }
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
    fn the_http2_preface_is_told_from_http1() {
        for (seen, want) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
                Some(HyperProtocol::Http2),
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04",
                Some(HyperProtocol::Http2),
            ),
            (b"PRI * HTTP/2", None),
            (b"P", None),
            (
                b"POST /v1/topics/a/messages HTTP/1.1\r\n",
                Some(HyperProtocol::Http1),
            ),
            (b"PRI * HTTP/1.1\r\n\r\n", Some(HyperProtocol::Http1)),
        ] {
            assert_eq!(
                hyper_protocol(seen),
                want,
                "{}",
                String::from_utf8_lossy(seen)
            );
        }
    }

    #[test]
    fn host_must_be_there_once_and_well_formed() {
        let none: [&[u8]; 0] = [];
        assert!(host_problem(none).is_some_and(|p| p.contains("no Host header")));
        let two: [&[u8]; 2] = [b"a", b"a"];
        assert!(host_problem(two).is_some_and(|p| p.contains("2 Host headers")));
        for good in [
            &b""[..],
            b"example.com",
            b"example.com:8080",
            b"127.0.0.1:80",
            b"[::1]:80",
            b"x",
        ] {
            assert_eq!(
                host_problem([good]),
                None,
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"a b"[..],
            b"user@host",
            b"host/path",
            b"host:port:x",
            b"\xff",
        ] {
            let problem = host_problem([bad]);
            assert!(
                problem
                    .as_deref()
                    .is_some_and(|p| p.contains("is not a host[:port]")),
                "{}: {problem:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
