//! SSE event names (`eventName=topic`) on both HTTP paths: the direct
//! HTTP/1.1 path of `serve_http` and the axum router (what hyper serves for
//! HTTP/2, HTTP/1.0 and embedders). Both serve one `AppState`, so one publish
//! reaches a subscriber on each and their bytes can be compared exactly; an
//! SSE parser that follows the WHATWG spec (eventsource-stream) reads what a
//! browser would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use sidestream_push::daemon::{self, DaemonConfig, RunningDaemon};
use sidestream_push::server;
use sidestream_push::topics::TopicRegistry;
use sidestream_push::{AppState, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// One state served twice: `direct` by the daemon as the binary runs it
/// (`serve_http`), `router` by axum alone.
struct Servers {
    direct: String,
    router: String,
    state: Arc<AppState>,
    _daemon: RunningDaemon,
}

async fn start(settings: Settings) -> Servers {
    let config = DaemonConfig::loopback(settings, TopicRegistry::new(Vec::new(), true));
    let daemon = daemon::start_with(config).await.unwrap();
    let router = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let servers = Servers {
        direct: daemon.http_addr.to_string(),
        router: router.local_addr().unwrap().to_string(),
        state: daemon.state.clone(),
        _daemon: daemon,
    };
    let app = sidestream_push::http::router(servers.state.clone());
    tokio::spawn(async move { axum::serve(router, app).await });
    servers
}

/// Publishes over HTTP; returns the message id.
async fn publish(servers: &Servers, topic: &str, data: &str, event: Option<&str>) -> String {
    let mut url = format!("http://{}/v1/topics/{topic}/messages", servers.direct);
    if let Some(event) = event {
        url.push_str(&format!("?event={event}"));
    }
    let response = reqwest::Client::new()
        .post(url)
        .body(data.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "publish to {topic}");
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// An SSE response read off the socket as it arrives.
struct RawSse {
    stream: TcpStream,
    received: Vec<u8>,
}

impl RawSse {
    /// Sends `GET <target> HTTP/1.1` (with `headers`) to `addr`.
    async fn open(addr: &str, target: &str, headers: &[(&str, &str)]) -> RawSse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = format!("GET {target} HTTP/1.1\r\nhost: {addr}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        RawSse {
            stream,
            received: Vec::new(),
        }
    }

    /// The status line and headers, once complete.
    fn head(&self) -> Option<String> {
        let end = find(&self.received, b"\r\n\r\n")?;
        Some(String::from_utf8_lossy(&self.received[..end]).into_owned())
    }

    /// The body so far, de-chunked (complete chunks only).
    fn body(&self) -> String {
        let Some(end) = find(&self.received, b"\r\n\r\n") else {
            return String::new();
        };
        let head = self.head().unwrap_or_default().to_ascii_lowercase();
        let body = &self.received[end + 4..];
        if !head.contains("transfer-encoding: chunked") {
            return String::from_utf8_lossy(body).into_owned();
        }
        let mut out = Vec::new();
        let mut rest = body;
        while let Some(line_end) = find(rest, b"\r\n") {
            let Ok(size) = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end]).unwrap_or("").trim(),
                16,
            ) else {
                break;
            };
            let start = line_end + 2;
            if size == 0 || rest.len() < start + size + 2 {
                break;
            }
            out.extend_from_slice(&rest[start..start + size]);
            rest = &rest[start + size + 2..];
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until `done(body)` holds or the server closes; the body.
    async fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        while !done(&self.body()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.received.extend_from_slice(&buf[..n]),
                Err(_) => panic!("{what}: not in time; got {:?}", self.body()),
            }
        }
        self.body()
    }

    /// Reads until the body holds `events` events (blank-line ended blocks).
    async fn events(&mut self, events: usize) -> String {
        self.read_until(&format!("{events} events"), |body| {
            body.matches("\n\n").count() >= events
        })
        .await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The epoch of a message id (`<epoch>-<seq>`).
fn epoch(id: &str) -> &str {
    id.split_once('-').unwrap().0
}

#[tokio::test]
async fn without_event_name_topic_the_output_is_what_it_always_was_on_both_paths() {
    let servers = start(Settings::default()).await;
    let targets = [
        "/v1/events?topic=a",
        "/v1/events?topic=a&eventName=published",
        "/v1/events?topic=a&topic=b",
        "/v1/events?topic=a&topic=b&eventName=published",
    ];
    let mut streams = Vec::new();
    for addr in [&servers.direct, &servers.router] {
        for target in targets {
            let mut sse = RawSse::open(addr, target, &[]).await;
            sse.events(1).await;
            streams.push((addr.clone(), target, sse));
        }
    }
    let first = publish(&servers, "a", "1", Some("tick")).await;
    publish(&servers, "b", "x\ny", None).await;
    let e = epoch(&first).to_owned();
    for (addr, target, sse) in &mut streams {
        let expected = if target.contains("topic=b") {
            format!(
                "retry: 2000\n\nid: {e}-1.0\nevent: tick\ndata: 1\n\nid: {e}-1.1\ndata: x\ndata: y\n\n"
            )
        } else {
            format!("retry: 2000\n\nid: {e}-1\nevent: tick\ndata: 1\n\n")
        };
        let count = expected.matches("\n\n").count();
        let body = sse.events(count).await;
        assert_eq!(body, expected, "{addr}{target}");
        let head = sse.head().unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
    }
}

#[tokio::test]
async fn event_name_topic_names_each_event_by_its_topic_on_both_paths() {
    let servers = start(Settings::default()).await;
    let mut streams = Vec::new();
    for addr in [&servers.direct, &servers.router] {
        for target in [
            "/v1/events?topic=prices&topic=news&eventName=topic",
            "/v1/events?topic=prices&eventName=topic",
        ] {
            let mut sse = RawSse::open(addr, target, &[]).await;
            sse.events(1).await;
            streams.push((addr.clone(), target, sse));
        }
    }
    let first = publish(&servers, "prices", "101.5", None).await;
    publish(&servers, "news", "hello\nworld", None).await;
    publish(&servers, "prices", "102", Some("tick")).await;
    let e = epoch(&first).to_owned();
    for (addr, target, sse) in &mut streams {
        let expected = if target.contains("news") {
            format!(
                "retry: 2000\n\n\
                 id: {e}-1.0\nevent: prices\ndata: 101.5\n\n\
                 id: {e}-1.1\nevent: news\ndata: hello\ndata: world\n\n\
                 id: {e}-2.1\nevent: prices:tick\ndata: 102\n\n"
            )
        } else {
            format!(
                "retry: 2000\n\n\
                 id: {e}-1\nevent: prices\ndata: 101.5\n\n\
                 id: {e}-2\nevent: prices:tick\ndata: 102\n\n"
            )
        };
        let count = expected.matches("\n\n").count();
        assert_eq!(sse.events(count).await, expected, "{addr}{target}");
    }

    // What a WHATWG parser (a browser's) makes of it.
    let response = reqwest::get(format!(
        "http://{}/v1/events?topic=prices&topic=news&eventName=topic&lastEventId={e}-0.0",
        servers.router
    ))
    .await
    .unwrap();
    let mut events = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push((event.event, event.data, event.id));
    }
    assert_eq!(
        seen,
        [
            // A resume replays one topic after the other.
            ("prices".into(), "101.5".into(), format!("{e}-1.0")),
            ("prices:tick".into(), "102".into(), format!("{e}-2.0")),
            ("news".into(), "hello\nworld".into(), format!("{e}-2.1")),
        ]
    );
}

#[tokio::test]
async fn resets_and_drains_keep_their_sidestream_names_with_event_name_topic() {
    let settings = Settings {
        drain_retry: Duration::from_millis(700),
        drain_retry_jitter: Duration::ZERO,
        ..Settings::default()
    };
    let servers = start(settings).await;
    let first = publish(&servers, "a", "one", None).await;
    let e = epoch(&first).to_owned();
    // A position from an epoch the server never had: a reset, then history.
    let mut streams = Vec::new();
    for addr in [&servers.direct, &servers.router] {
        let mut sse = RawSse::open(
            addr,
            "/v1/events?topic=a&topic=b&eventName=topic",
            &[("last-event-id", "zz-5.3")],
        )
        .await;
        sse.events(1).await;
        streams.push(sse);
    }
    for sse in &mut streams {
        let body = sse.events(4).await;
        assert_eq!(
            body,
            format!(
                "retry: 2000\n\n\
                 id: {e}-0.0\nevent: sidestream.reset\ndata: {{\"position\":\"{e}-0\",\"reason\":\"epoch-changed\",\"topic\":\"a\"}}\n\n\
                 id: {e}-1.0\nevent: a\ndata: one\n\n\
                 id: {e}-1.0\nevent: sidestream.reset\ndata: {{\"position\":\"{e}-0\",\"reason\":\"epoch-changed\",\"topic\":\"b\"}}\n\n"
            )
        );
    }
    let state = servers.state.clone();
    let drained = tokio::spawn(async move { server::drain(&state, Duration::from_secs(5)).await });
    for sse in &mut streams {
        let body = sse.read_until("drain", |b| b.contains("drain")).await;
        assert!(
            body.ends_with(
                "retry: 700\nevent: sidestream.drain\ndata: {\"reason\":\"draining\",\"retryMs\":700}\n\n"
            ),
            "{body}"
        );
    }
    assert_eq!(drained.await.unwrap(), 0);
}

#[tokio::test]
async fn bad_event_name_requests_are_refused_naming_what_was_wrong_on_both_paths() {
    let servers = start(Settings::default()).await;
    let cases = [
        ("topic=a&eventName=topics", "eventName 'topics' is not"),
        ("topic=a&eventName=", "eventName '' is not"),
        (
            "topic=a&eventName=topic&eventName=topic",
            "eventName is given more than once",
        ),
        (
            "topic=a&topic=sidestream.reset&eventName=topic",
            "topic 'sidestream.reset' cannot name events",
        ),
        (
            "topic=error&eventName=topic",
            "topic 'error' cannot name events",
        ),
        (
            "topic=open&eventName=topic",
            "topic 'open' cannot name events",
        ),
    ];
    for addr in [&servers.direct, &servers.router] {
        for (query, message) in cases {
            let response = reqwest::get(format!("http://{addr}/v1/events?{query}"))
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{addr} {query}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "bad_request", "{body}");
            assert!(
                body["message"].as_str().unwrap().contains(message),
                "{query}: {body}"
            );
        }
        // Without eventName=topic such topics are ordinary topics.
        let response = reqwest::get(format!(
            "http://{addr}/v1/events?topic=error&topic=sidestream.reset"
        ))
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
    }
}
