//! The HTTP listener against clients that break the rules or the pace, on raw
//! sockets (tokio `TcpStream`): pipelined requests, duplicate
//! `content-length`, many headers, a missing or repeated `Host`, a slowloris
//! head, a client that stops reading, and TCP keepalive on accepted sockets.
//! The server runs in-process, so its metrics are read directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use sidestream_core::config::TopicSettings;
use sidestream_push::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{start, Server};

const WAIT: Duration = Duration::from_secs(10);

impl Server {
    fn detected(&self, protocol: &str) -> f64 {
        self.metric(&format!(
            "sidestream_push_connections_detected_total{{protocol=\"{protocol}\"}}"
        ))
    }
}

/// Polls `condition` every 10 ms until it holds, failing with `what` after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads from `stream` until `until` is in what arrived (or the server
/// closes); returns what arrived.
async fn read_until(stream: &mut TcpStream, until: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 16 * 1024];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{until:?} did not arrive in time; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads until the server closes the connection.
async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server closes in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Sends `request` on a new connection; returns everything until the server closes.
async fn exchange(server: &Server, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_end(&mut stream).await
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_or_dropped_after_an_sse_stream() {
    let server = start(Settings::default(), Vec::new()).await;
    // Through hyper: three requests in one write, three answers in order.
    let answer = exchange(
        &server,
        b"GET /healthz/live HTTP/1.1\r\nhost: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nhost: x\r\n\r\n\
          GET /v1/topics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 200", "HTTP/1.1 404", "HTTP/1.1 200"],
        "{answer}"
    );
    assert!(answer.contains("ok\n") && answer.contains("\"not_found\""));

    // A publish, then a subscription in the same write: hyper serves both.
    let body = "first";
    let pipelined = format!(
        "POST /v1/topics/p/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}\
         GET /v1/events?topic=p HTTP/1.1\r\nhost: x\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let seen = read_until(&mut stream, "retry:").await;
    assert!(seen.starts_with("HTTP/1.1 201 "), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    server.publish("p", "second").await;
    let seen = read_until(&mut stream, "data: second").await;
    assert!(
        !seen.contains("data: first"),
        "live from the subscription on: {seen}"
    );

    // Served directly: the stream's response closes the connection, so a
    // request pipelined after it is not served (its topic gets nothing).
    let before = server.detected("sse");
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\n\r\n\
              GET /v1/events?topic=b HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, "retry:").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(server.detected("sse"), before + 1.0);
    server.publish("b", "for b").await;
    server.publish("a", "for a").await;
    let seen = read_until(&mut stream, "data: for a").await;
    assert!(!seen.contains("for b"), "{seen}");
    assert_eq!(seen.matches("HTTP/1.1").count(), 0, "{seen}");
}

#[tokio::test]
async fn duplicate_content_lengths_are_refused_and_nothing_is_published() {
    let server = start(Settings::default(), Vec::new()).await;
    for request in [
        &b"POST /v1/topics/d/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde"[..],
        b"POST /v1/topics/d/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 5\r\n\r\nabcde",
        // An SSE request with a body is not the direct path's: hyper refuses it.
        b"GET /v1/events?topic=d HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 2\r\n\r\nab",
    ] {
        let answer = exchange(&server, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(server.state.metrics.published.get(), 0);
    assert_eq!(server.detected("sse"), 0.0);
    assert_eq!(server.detected("http1"), 3.0);
    // Content-Length beside Transfer-Encoding: the chunked body counts
    // (RFC 9112 §6.3) and the connection closes after the answer (a
    // keep-alive one would make `exchange` wait in vain).
    let answer = exchange(
        &server,
        b"POST /v1/topics/d/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let id = body["id"].as_str().unwrap();
    let (epoch, seq) = id.split_once('-').unwrap();
    assert_eq!(seq, "1");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events?topic=d", server.url()))
        .header("last-event-id", format!("{epoch}-0"))
        .send()
        .await
        .unwrap();
    let mut events = response.bytes_stream().eventsource();
    let event = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((event.id.as_str(), event.data.as_str()), (id, "abc"));
}

/// `GET /v1/events?topic=h` with `count` header lines in all (Host first).
fn head_with_headers(count: usize) -> String {
    let mut head = String::from("GET /v1/events?topic=h HTTP/1.1\r\nhost: x\r\n");
    for i in 1..count {
        head.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test]
async fn many_headers_go_to_hyper_up_to_its_limit_of_100() {
    let server = start(Settings::default(), Vec::new()).await;
    // (header lines, who serves it, answer).
    for (count, protocol, status) in [
        (48, "sse", "HTTP/1.1 200 OK"),
        (49, "http1", "HTTP/1.1 200 OK"),
        (100, "http1", "HTTP/1.1 200 OK"),
        (101, "http1", "HTTP/1.1 431 "),
    ] {
        let before = server.detected(protocol);
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        stream
            .write_all(head_with_headers(count).as_bytes())
            .await
            .unwrap();
        let until = if status.ends_with("200 OK") {
            "retry:"
        } else {
            "\r\n\r\n"
        };
        let answer = read_until(&mut stream, until).await;
        assert!(answer.starts_with(status), "{count} headers: {answer}");
        assert_eq!(server.detected(protocol), before + 1.0, "{count} headers");
    }
}

#[tokio::test]
async fn a_missing_or_repeated_host_is_refused_with_400_on_both_paths() {
    let server = start(Settings::default(), Vec::new()).await;
    // (request, path, what the message says).
    let cases: [(&[u8], &str, &str); 6] = [
        (b"GET /v1/events?topic=a HTTP/1.1\r\n\r\n", "bad-request", "no Host header"),
        (
            b"GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n",
            "bad-request",
            "2 Host headers",
        ),
        (
            b"GET /v1/events?topic=a HTTP/1.1\r\nhost: a b\r\n\r\n",
            "bad-request",
            "'a b' is not a host[:port]",
        ),
        (
            b"POST /v1/topics/h/messages HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi",
            "http1",
            "no Host header",
        ),
        (
            b"POST /v1/topics/h/messages HTTP/1.1\r\nHost: x\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
            "http1",
            "2 Host headers",
        ),
        (
            // A WebSocket upgrade goes to hyper too.
            b"GET /v1/ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "http1",
            "no Host header",
        ),
    ];
    for (request, protocol, problem) in cases {
        let before = server.detected(protocol);
        // The connection closes after the 400 (keep-alive or not).
        let answer = exchange(&server, request).await;
        let shown = String::from_utf8_lossy(request);
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{shown}: {answer}"
        );
        assert!(answer.contains("\"bad_request\""), "{shown}: {answer}");
        assert!(answer.contains(problem), "{shown}: {answer}");
        assert_eq!(server.detected(protocol), before + 1.0, "{shown}");
    }
    assert_eq!(server.state.metrics.published.get(), 0);
    // HTTP/1.0 needs no Host; an empty one is valid (RFC 9112 §3.2).
    for request in [
        &b"GET /healthz/live HTTP/1.0\r\n\r\n"[..],
        b"GET /healthz/live HTTP/1.1\r\nhost:\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(&server, request).await;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 OK\r\n"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_slowloris_head_is_cut_at_the_head_deadline_even_after_the_hand_off_to_hyper() {
    let deadline = Duration::from_secs(3);
    let settings = Settings {
        request_head_timeout: deadline,
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;

    // A head above the direct path's 8 KiB: the direct path reads 8 KiB over
    // two thirds of the deadline, then hands the connection to hyper. The
    // rest trickles in a byte every 50 ms. A deadline restarted by hyper
    // would answer at 2 s + 3 s; the carried one answers at 3 s.
    let big_head = {
        let mut head = String::from("GET /v1/events?topic=s HTTP/1.1\r\nhost: x\r\n");
        head.push_str(&format!("x-padding: {}\r\n", "p".repeat(10 * 1024)));
        head.push_str("\r\n");
        head
    };
    let slow_big = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        let bytes = big_head.as_bytes();
        // Before the last of the 8 KiB is written, the server cannot have
        // handed the connection to hyper.
        let mut handed_off_after = Duration::ZERO;
        for piece in bytes[..8 * 1024].chunks(512) {
            handed_off_after = started.elapsed();
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(deadline / 24).await;
        }
        let answer = trickle(&mut stream, &bytes[8 * 1024..]).await;
        (answer, started.elapsed(), Some(handed_off_after))
    };
    // A publish head trickled from its first byte: hyper's from the start.
    let slow_publish = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        let head = b"POST /v1/topics/s/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi";
        let answer = trickle(&mut stream, head).await;
        (answer, started.elapsed(), None)
    };
    // The direct path's own: an SSE head that never ends.
    let slow_sse = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        let mut endless = b"GET /v1/events?topic=s HTTP/1.1\r\nhost: x\r\nx-long: ".to_vec();
        endless.extend(std::iter::repeat_n(b'y', 4096));
        let answer = trickle(&mut stream, &endless).await;
        (answer, started.elapsed(), None)
    };
    let results = tokio::join!(slow_big, slow_publish, slow_sse);
    for (name, (answer, elapsed, handed_off_after)) in [
        ("head above 8 KiB", results.0),
        ("publish", results.1),
        ("sse", results.2),
    ] {
        assert!(answer.starts_with("HTTP/1.1 408 "), "{name}: {answer}");
        assert!(answer.contains("\"request_timeout\""), "{name}: {answer}");
        assert!(elapsed >= deadline, "{name}: answered after {elapsed:?}");
        let answered_by = match handed_off_after {
            // A deadline restarted by hyper starts at the hand-off at the
            // earliest and answers a whole deadline later; the carried one
            // answers before that, however slow this machine is.
            Some(handed_off_after) => handed_off_after + deadline,
            // Hyper's own deadline from the first byte, or the direct path's:
            // at the deadline, with room for a loaded machine.
            None => deadline * 2,
        };
        assert!(
            elapsed < answered_by,
            "{name}: answered after {elapsed:?}, not at the {deadline:?} deadline (due by {answered_by:?}{})",
            if handed_off_after.is_some() {
                ", when a deadline restarted at the hand-off would answer"
            } else {
                ""
            }
        );
    }
    assert_eq!(
        server.metric("sidestream_push_request_head_timeouts_total"),
        3.0
    );
    assert_eq!(server.detected("http1"), 2.0);
    assert_eq!(server.detected("timeout"), 1.0);
}

/// Sends `bytes` one every 50 ms until the server answers; returns the answer.
async fn trickle(stream: &mut TcpStream, bytes: &[u8]) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
        }
    }
    // The rest of the answer, until the server closes.
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_http2_connection_is_detected_and_held_to_the_head_deadline() {
    let settings = Settings {
        request_head_timeout: Duration::from_millis(500),
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    // The preface in two writes, then an empty SETTINGS frame, then nothing.
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("closed at the head deadline")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    // hyper's SETTINGS frame came first (type 4), then the connection ended.
    assert!(seen.len() >= 9 && seen[3] == 4, "{seen:?}");
    assert_eq!(server.detected("http2"), 1.0);
    assert_eq!(
        server.metric("sidestream_push_request_head_timeouts_total"),
        1.0
    );
}

/// Undoes HTTP/1.1 chunked encoding for the complete chunks of `raw`.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let Ok(len) = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
        else {
            return out;
        };
        let start = line_end + 2;
        if len == 0 || rest.len() < start + len {
            // The end, or a chunk cut short: take what arrived of it.
            out.extend_from_slice(&rest[start.min(rest.len())..rest.len().min(start + len)]);
            return out;
        }
        out.extend_from_slice(&rest[start..start + len]);
        rest = &rest[(start + len + 2).min(rest.len())..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_the_write_deadline_and_resumes() {
    let settings = Settings {
        write_deadline: Duration::from_millis(800),
        // Room enough that the queue never overflows: the deadline cuts.
        queue_capacity: 100_000,
        queue_bytes: 1 << 30,
        ..Settings::default()
    };
    let mut topic = TopicSettings::defaults("w");
    topic.history_size = 10_000;
    let server = start(settings, vec![topic]).await;

    // A small receive buffer, and no reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    stuck
        .write_all(b"GET /v1/events?topic=w HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("subscribed", || {
        server
            .state
            .metrics
            .active_streams(sidestream_push::metrics::Transport::Sse)
            == 1
    })
    .await;
    // Publish until the socket stopped draining: deliveries stay queued.
    let payload = "x".repeat(16 * 1024);
    let mut published = Vec::new();
    while server.state.hub.backlog() < 8 {
        assert!(published.len() < 5000, "the socket never filled");
        let i = published.len();
        published.push(server.publish("w", &format!("{i:05}:{payload}")).await);
    }
    wait_until("cut at the write deadline", || {
        server.metric("sidestream_push_write_deadline_disconnects_total{transport=\"sse\"}") == 1.0
            && server
                .state
                .metrics
                .active_streams(sidestream_push::metrics::Transport::Sse)
                == 0
    })
    .await;
    assert_eq!(
        server.metric("sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"}"),
        0.0
    );

    // What reached the client, then the end of the connection.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(WAIT, stuck.read(&mut buf))
            .await
            .expect("closed")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let text = String::from_utf8(dechunk(&raw[head_end..])).unwrap();
    // Whole events only (the last one may be cut short).
    let events: Vec<&str> = text.split("\n\n").collect();
    let whole = &events[..events.len() - 1];
    let ids: Vec<&str> = whole
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
        .collect();
    assert!(ids.len() < published.len(), "not everything was delivered");
    assert_eq!(ids, published[..ids.len()], "in order, nothing skipped");

    // Resuming from the last whole event gets exactly the rest.
    let mut request = reqwest::Client::new().get(format!("{}/v1/events?topic=w", server.url()));
    if let Some(last) = ids.last() {
        request = request.header("last-event-id", *last);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut resumed = response.bytes_stream().eventsource();
    for (i, id) in published.iter().enumerate().skip(ids.len()) {
        let event = tokio::time::timeout(WAIT, resumed.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        assert_eq!(&event.id, id);
        assert!(event.data.starts_with(&format!("{i:05}:")));
    }
}

/// The kernel's timer on the server side of the connection from
/// `client_port` to `server_port` (/proc/net/tcp: `tr` and `tm->when` in
/// hundredths of a second).
fn server_socket_timer(server_port: u16, client_port: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{server_port:04X}");
    let remote = format!(":{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(fields[1].ends_with(&local) && fields[2].ends_with(&remote)) {
            return None;
        }
        let (kind, when) = fields[5].split_once(':')?;
        Some((kind.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
    })
}

#[tokio::test]
async fn accepted_connections_get_tcp_keepalive() {
    for keepalive in [Some(Duration::from_secs(20)), None] {
        let settings = Settings {
            tcp_keepalive: keepalive,
            ..Settings::default()
        };
        let server = start(settings, Vec::new()).await;
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        stream
            .write_all(b"GET /v1/events?topic=k HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut stream, "retry:").await;
        let server_port = server.addr.rsplit(':').next().unwrap().parse().unwrap();
        let client_port = stream.local_addr().unwrap().port();
        match keepalive {
            // Once what was sent is acknowledged, the keepalive timer (2) runs.
            Some(idle) => {
                let limit = idle.as_secs() * 100;
                wait_until("the keepalive timer runs", || {
                    matches!(
                        server_socket_timer(server_port, client_port),
                        Some((2, when)) if when <= limit && when > limit / 2
                    )
                })
                .await
            }
            None => {
                // The socket is found, idle, and no keepalive timer runs.
                wait_until("the socket is idle", || {
                    server_socket_timer(server_port, client_port).is_some_and(|(kind, _)| kind != 1)
                })
                .await;
                assert_eq!(
                    server_socket_timer(server_port, client_port).map(|(kind, _)| kind),
                    Some(0)
                );
            }
        }
    }
}
