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
//! goes to hyper, which reads the bytes already taken first and answers
//! malformed requests with its own 4xx; [`super::detect`] is that first step.
//!
//! Every write to the socket must complete within the write deadline: a
//! subscriber whose connection does not drain is cut (logged with the reason,
//! counted in `sidestream_push_write_deadline_disconnects_total`) and resumes
//! with the `Last-Event-ID` of the last event it read whole.

use std::future::Future;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::error::PushError;
use crate::http::sse::{self, SseBody};
use crate::http::QueryParams;
use crate::hub::ConnectionControl;
use crate::message::MessageId;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::uring::Link;

/// The path served directly.
const EVENTS_PATH: &str = "/v1/events";
/// What a request served here starts with.
const REQUEST_PREFIX: &[u8] = b"GET /v1/events";
/// Most headers parsed (a head with more goes to hyper, which takes 100).
const MAX_HEADERS: usize = 48;
/// Frames gathered into one write.
const MAX_BATCH_FRAMES: usize = 64;
/// Bytes gathered into one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long a cut connection may still write.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// Reads of a client's stray bytes per poll before other tasks get a turn.
const CLIENT_READS_PER_POLL: usize = 16;

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\naccess-control-allow-origin: *\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";

/// A parsed SSE request.
pub struct SseRequest {
    query: QueryParams,
    headers: HeaderMap,
}

/// What the start of a connection is to the direct path.
pub(crate) enum Head {
    /// A complete `GET /v1/events` head over HTTP/1.1, served here.
    Ours(SseRequest),
    /// A complete head this path refuses (with this error).
    Refused(PushError),
    /// Not for this path: hyper serves it.
    Other,
    /// Not complete yet.
    Partial,
}

/// Whether `seen` (the start of a connection) is a complete request served here.
pub(crate) fn classify(seen: &[u8]) -> Head {
    let compared = seen.len().min(REQUEST_PREFIX.len());
    if seen[..compared] != REQUEST_PREFIX[..compared] {
        return Head::Other; // not ours: hyper serves it
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(seen) {
        // Bytes after the head (pipelined requests) are dropped: the
        // response says `connection: close`.
        Ok(httparse::Status::Complete(_)) => parse(&request),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

fn parse(request: &httparse::Request<'_, '_>) -> Head {
    if request.method != Some("GET") || request.version != Some(1) {
        return Head::Other;
    }
    let Some(target) = request.path else {
        return Head::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != EVENTS_PATH {
        return Head::Other;
    }
    let hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    if let Some(problem) = super::detect::host_problem(hosts) {
        return Head::Refused(PushError::BadRequest(problem));
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            return Head::Other;
        };
        // Bodies (even duplicate `content-length: 0`) and upgrades: hyper's.
        if name == "upgrade"
            || name == "transfer-encoding"
            || (name == "content-length" && (header.value != b"0" || headers.contains_key(&name)))
        {
            return Head::Other;
        }
        let Ok(value) = HeaderValue::from_bytes(header.value) else {
            return Head::Other;
        };
        headers.append(name, value);
    }
    Head::Ours(SseRequest {
        query: QueryParams::parse(query),
        headers,
    })
}

/// Serves one SSE request on `stream` until the stream ends, the client
/// leaves, the subscriber is cut or the server stops. Spawned as a task of
/// its own, so an idle subscriber's task holds its stream's state and little
/// more: the one-time open is boxed and freed, and the idle wait is polled in
/// place, on the socket's readiness and the connection's control, with no
/// waiter of its own.
pub async fn serve(mut stream: TcpStream, request: Box<SseRequest>, state: Arc<AppState>) {
    let link = state
        .hub
        .writes_through_uring()
        .then(|| Link::new(stream.as_raw_fd()));
    let control = Arc::new(ConnectionControl::with_link(link));
    // The body lives here, once: what streams it borrows it (an async
    // function stores a by-value argument twice), and every write below is
    // boxed while it lasts, so an idle connection's task is no bigger than
    // its wait.
    let mut opened = Box::pin(open(&mut stream, request, &state, &control)).await;
    if let Some(body) = opened.as_mut() {
        stream_events(&mut stream, body, &control).await;
    }
    if let Some(link) = control.link() {
        // No send of the io_uring writer may refer to the socket once closed.
        until(&control, || link.close()).await;
    }
}

/// Subscribes and writes the response head: the body to stream, or `None`
/// when the request was refused (its error response written) or the head
/// could not be written.
async fn open(
    stream: &mut TcpStream,
    request: Box<SseRequest>,
    state: &Arc<AppState>,
    control: &Arc<ConnectionControl>,
) -> Option<SseBody> {
    let write_deadline = state.settings.write_deadline;
    let opened = sse::open(
        state,
        Some(control.clone()),
        &request.query,
        &request.headers,
    )
    .await;
    drop(request);
    let body = match opened {
        Ok(body) => body,
        Err(error) => {
            let _ = tokio::time::timeout(write_deadline, write_error(stream, error)).await;
            return None;
        }
    };
    let head = tokio::time::timeout(write_deadline, stream.write_all(RESPONSE_HEAD)).await;
    matches!(head, Ok(Ok(()))).then_some(body)
}

/// What the idle wait found.
enum Next {
    /// Frames to write as one chunk (none when only empty frames came), and
    /// whether the stream ended after them.
    Frames(Vec<Bytes>, bool),
    /// The stream ended (drain, slow consumer): finish the response.
    Finished,
    /// Only the stream's next live message can come, at this position's
    /// successor: park the connection on the io_uring writer.
    Park(MessageId),
    /// Close now: the client left, the server stops, or the connection was
    /// cut and its grace ran out.
    Close,
}

/// The grace timer of a cut connection, started when the cut is seen.
type Grace = Option<Pin<Box<Sleep>>>;

async fn stream_events(stream: &mut TcpStream, body: &mut SseBody, control: &ConnectionControl) {
    let write_deadline = body.state().settings.write_deadline;
    let mut grace: Grace = None;
    loop {
        let next = std::future::poll_fn(|cx| {
            if poll_closing(cx, control, &mut grace, stream).is_ready() {
                return Poll::Ready(Next::Close);
            }
            match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let mut frames = Vec::with_capacity(4);
                    push_frame(&mut frames, frame);
                    let ended = gather(cx, body, &mut frames);
                    Poll::Ready(Next::Frames(frames, ended))
                }
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(Next::Finished),
                // Polled with this task's waker first, so a delivery queued
                // from now on wakes it, parked or not.
                Poll::Pending => match control.link().and(body.idle_live()) {
                    Some(position) => Poll::Ready(Next::Park(position)),
                    None => Poll::Pending,
                },
            }
        })
        .await;
        let (frames, ended) = match next {
            Next::Frames(frames, ended) => (frames, ended),
            Next::Park(position) => {
                if let Some(link) = control.link() {
                    if !park(link, control, body, position, stream, &mut grace).await {
                        return;
                    }
                }
                continue;
            }
            Next::Finished => {
                Box::pin(finish(stream)).await;
                return;
            }
            Next::Close => return,
        };
        let write = Box::pin(tokio::time::timeout(
            write_deadline,
            write_chunk(stream, &frames, ended),
        ));
        let Some(written) = unless_ended(control, &mut grace, write).await else {
            return;
        };
        let Ok(written) = written else {
            write_deadline_cut(body.state());
            return;
        };
        if written.is_err() || ended {
            if ended {
                let _ = Box::pin(tokio::time::timeout(CUT_GRACE, stream.shutdown())).await;
            }
            return;
        }
    }
}

/// Ready when the connection is to close: the server stops, or the
/// connection was cut and its grace (to write a goodbye) ran out.
fn poll_ended(cx: &mut Context<'_>, control: &ConnectionControl, grace: &mut Grace) -> Poll<()> {
    control.register(cx);
    if control.stopped() {
        return Poll::Ready(());
    }
    if !control.was_cut() {
        return Poll::Pending;
    }
    grace
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_GRACE)))
        .as_mut()
        .poll(cx)
}

/// Ready when an idle connection is to close: [`poll_ended`], or its client left.
fn poll_closing(
    cx: &mut Context<'_>,
    control: &ConnectionControl,
    grace: &mut Grace,
    stream: &TcpStream,
) -> Poll<()> {
    if poll_ended(cx, control, grace).is_ready() {
        return Poll::Ready(());
    }
    poll_client_gone(cx, stream)
}

/// Ready when the client closed its side (or the socket failed). What it
/// sends is read and dropped: the response says `connection: close`.
fn poll_client_gone(cx: &mut Context<'_>, stream: &TcpStream) -> Poll<()> {
    for _ in 0..CLIENT_READS_PER_POLL {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
        let mut scratch = [0u8; 256];
        match stream.try_read(&mut scratch) {
            Ok(0) => return Poll::Ready(()),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(()),
        }
    }
    // A client that keeps sending: let other tasks run, then read on.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Ends the response (its last chunk) and the connection's write side.
async fn finish(stream: &mut TcpStream) {
    let _ = tokio::time::timeout(CUT_GRACE, stream.write_all(b"0\r\n\r\n")).await;
    let _ = tokio::time::timeout(CUT_GRACE, stream.shutdown()).await;
}

/// `work`'s output, or `None` if the connection is to close first (see
/// [`poll_ended`]). `work` comes boxed: it is a write, and a connection's
/// task need not be big enough to hold one while it waits.
async fn unless_ended<F: Future>(
    control: &ConnectionControl,
    grace: &mut Grace,
    mut work: Pin<Box<F>>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if poll_ended(cx, control, grace).is_ready() {
            return Poll::Ready(None);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

/// `ask`'s first answer, asked again at every change of the connection.
async fn until<T>(control: &ConnectionControl, mut ask: impl FnMut() -> Option<T>) -> T {
    std::future::poll_fn(|cx| {
        control.register(cx);
        ask().map_or(Poll::Pending, Poll::Ready)
    })
    .await
}

/// The client does not read (or its network stalled): cut. Its last whole
/// event's id resumes it.
fn write_deadline_cut(state: &AppState) {
    state.metrics.write_deadline_disconnect(Transport::Sse);
    tracing::info!(
        reason = "write-deadline",
        deadline = ?state.settings.write_deadline,
        transport = Transport::Sse.as_str(),
        "Subscriber cut: its connection did not take a write in time"
    );
}

/// Parks the idle connection on the io_uring writer (its next message is
/// written there) until something else is to be written — a queued
/// delivery, a heartbeat, the writer handing the connection back — then
/// takes it back: the stream's position follows what the writer wrote, and
/// what a send left unwritten is written first. False when the connection
/// is to close.
async fn park(
    link: &Link,
    control: &ConnectionControl,
    body: &mut SseBody,
    position: MessageId,
    stream: &mut TcpStream,
    grace: &mut Grace,
) -> bool {
    let next = MessageId {
        epoch: position.epoch,
        seq: position.seq.saturating_add(1),
    };
    if !link.park(next, body.names()) {
        return false;
    }
    // A delivery queued before the link was parked is written by the task.
    if body.queued() == 0 {
        // What the writer wrote keeps the heartbeat away too.
        let mut seen = position;
        let mut written = || {
            let last = link.last();
            std::mem::replace(&mut seen, last) != last
        };
        let open = std::future::poll_fn(|cx| {
            if poll_closing(cx, control, grace, stream).is_ready() {
                return Poll::Ready(false);
            }
            // The writer's hand-back wakes this task (registered above); a
            // delivery queued wakes it through the body's last poll.
            if link.is_task() || body.queued() > 0 {
                return Poll::Ready(true);
            }
            body.poll_heartbeat(cx, &mut written).map(|()| true)
        })
        .await;
        if !open {
            // What the writer sent while parked still counts for the stream
            // (its span's deliveries) before the stream ends.
            let last = until(control, || link.close()).await;
            body.delivered_directly(last);
            return false;
        }
    }
    let returned = until(control, || link.take_back()).await;
    body.delivered_directly(returned.last);
    let Some(rest) = returned.rest else {
        return true;
    };
    let state = body.state().clone();
    let write = Box::pin(tokio::time::timeout(
        state.settings.write_deadline,
        stream.write_all(&rest.bytes),
    ));
    match unless_ended(control, grace, write).await {
        Some(Ok(Ok(()))) => {
            let frame_len = rest.message.sse_frame(body.names()).len();
            state.delivered(Transport::Sse, &rest.message, frame_len, 0);
            true
        }
        Some(Ok(Err(_))) | None => false,
        Some(Err(_)) => {
            write_deadline_cut(&state);
            false
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

/// Adds the frames that are ready now, up to the batch limits; true when
/// the stream ended. Polled with the task's own waker, which the body's
/// queue and timers already hold, so none is swapped.
fn gather(cx: &mut Context<'_>, body: &mut SseBody, frames: &mut Vec<Bytes>) -> bool {
    let mut bytes: usize = frames.iter().map(Bytes::len).sum();
    while frames.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
        match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
            Poll::Ready(Some(Ok(frame))) => {
                push_frame(frames, frame);
                bytes += frames.last().map_or(0, Bytes::len);
            }
            Poll::Ready(None) => return true,
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Pending => return false,
        }
    }
    false
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

/// Writes `error`'s response and closes the connection's write side.
pub(super) async fn write_error(stream: &mut TcpStream, error: PushError) -> std::io::Result<()> {
    stream.write_all(&response_bytes(error)).await?;
    stream.shutdown().await
}

/// `error`'s response as bytes on the wire (HTTP/1.1, `connection: close`).
pub(super) fn response_bytes(error: PushError) -> Vec<u8> {
    let response = error.into_response();
    let (parts, body) = response.into_parts();
    // The error bodies are JSON in memory: ready at once.
    let body = axum::body::to_bytes(body, 64 * 1024)
        .now_or_never()
        .and_then(Result::ok)
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
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most bytes an idle subscriber's task may hold (its future; tokio's
    /// task adds about 160 and rounds up to a multiple of 128). Every
    /// connection pays it: at `75126d4` the future was 2,160 bytes, boxed
    /// inside a second task of 512.
    const TASK_BUDGET: usize = 896;

    #[tokio::test]
    async fn an_idle_subscriber_task_stays_small() {
        let state = crate::state::AppState::new(
            crate::Settings::default(),
            crate::topics::TopicRegistry::new(Vec::new(), true),
            &crate::BrokerSpec::Memory,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let Head::Ours(request) = classify(b"GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\n\r\n")
        else {
            panic!("a plain SSE request is served directly");
        };
        let task = serve(stream, Box::new(request), state);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= TASK_BUDGET,
            "the task of a directly served SSE connection is {size} bytes (budget {TASK_BUDGET}): \
             box what only a write or the open needs, and pass big values by reference"
        );
    }

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
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 4\r\n\r\n",
        ] {
            assert!(matches!(classify(other.as_bytes()), Head::Other), "{other}");
        }
        for (refused, problem) in [
            ("GET /v1/events?topic=a HTTP/1.1\r\n\r\n", "no Host header"),
            (
                "GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\nHost: y\r\n\r\n",
                "2 Host headers",
            ),
            (
                "GET /v1/events?topic=a HTTP/1.1\r\nhost: a b\r\n\r\n",
                "is not a host[:port]",
            ),
        ] {
            match classify(refused.as_bytes()) {
                Head::Refused(PushError::BadRequest(message)) => {
                    assert!(message.contains(problem), "{refused}: {message}")
                }
                _ => panic!("{refused}: not refused"),
            }
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
