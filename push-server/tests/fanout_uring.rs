//! The io_uring fan-out writer (`--fanout-io uring`) on real sockets and the
//! real kernel: order and completeness for many subscribers, a subscriber
//! that stops reading (its sends come back partial or `EAGAIN`, its task
//! takes over, its queue bound cuts it) beside subscribers that read, drain
//! of parked streams, no heartbeat on a parked stream the ring writes to, a
//! stopping server closing direct connections on either path, and the
//! fallback to epoll when io_uring is refused (a child process under a
//! seccomp filter that fails `io_uring_setup`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{start, Server};
use sidestream_push::uring::{FanoutIo, FanoutPath};
use sidestream_push::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn uring() -> Settings {
    Settings {
        fanout_io: FanoutIo::Uring,
        ..Settings::default()
    }
}

impl Server {
    fn sends(&self, result: &str) -> f64 {
        self.metric(&format!(
            "sidestream_push_fanout_uring_sends_total{{result=\"{result}\"}}"
        ))
    }

    /// A raw SSE subscriber on the direct path, past its response head and
    /// `retry` line.
    async fn subscribe(&self, topic: &str) -> Subscriber {
        let mut stream = TcpStream::connect(&self.addr).await.unwrap();
        let head = format!("GET /v1/events?topic={topic} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut subscriber = Subscriber {
            stream,
            raw: Vec::new(),
        };
        subscriber.read_until(|text| text.contains("retry: ")).await;
        subscriber
    }
}

struct Subscriber {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl Subscriber {
    /// Reads until `done` holds for what arrived (or the server closes).
    async fn read_until(&mut self, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 16 * 1024];
        loop {
            if done(&String::from_utf8_lossy(&self.raw)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "timed out; got {:?}",
                    String::from_utf8_lossy(&self.raw[self.raw.len().saturating_sub(400)..])
                ),
            }
        }
    }

    /// Reads until `needle` is among the last bytes that arrived.
    async fn read_tail_until(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let tail = &self.raw[self.raw.len().saturating_sub(needle.len() + 64 * 1024)..];
            if tail.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!("timed out waiting for {needle:?}"),
            }
        }
    }

    /// The ids of the events received, in order (the body de-chunked first,
    /// so a chunk split anywhere shows as a broken stream).
    fn ids(&self) -> Vec<String> {
        let text = String::from_utf8(dechunk(&self.raw)).expect("UTF-8 events");
        text.lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(str::to_owned)
            .collect()
    }
}

/// The body of a chunked response (after its head), chunk by chunk.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let mut rest = &raw[start..];
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("a chunk size");
        if size == 0 || rest.len() < line_end + 2 + size + 2 {
            break;
        }
        let data = &rest[line_end + 2..line_end + 2 + size];
        assert_eq!(&rest[line_end + 2 + size..line_end + 4 + size], b"\r\n");
        body.extend_from_slice(data);
        rest = &rest[line_end + 4 + size..];
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_in_order_through_io_uring() {
    let server = start(uring(), Vec::new()).await;
    assert_eq!(server.state.fanout_path(), FanoutPath::Uring);
    assert_eq!(
        server.metric("sidestream_push_fanout_io{path=\"uring\"}"),
        1.0
    );
    // The topic exists (and has an epoch) before anyone subscribes.
    let mut ids = vec![server.publish("t", "first").await];
    let mut subscribers = Vec::new();
    for _ in 0..200 {
        subscribers.push(server.subscribe("t").await);
    }
    ids.clear();
    for i in 0..60 {
        ids.push(server.publish("t", &format!("message {i}")).await);
        // Paced, so subscribers are idle (parked) between messages.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let last = format!("id: {}\n", ids.last().unwrap());
    for subscriber in &mut subscribers {
        assert!(subscriber.read_until(|text| text.contains(&last)).await);
        assert_eq!(subscriber.ids(), ids);
    }
    let written = server.sends("written");
    assert!(
        written >= 200.0 * 50.0,
        "most deliveries went through io_uring: {written} of {}",
        200 * 60
    );
    assert_eq!(server.sends("error"), 0.0);
    assert_eq!(
        server.metric("sidestream_push_messages_delivered_total{transport=\"sse\"}"),
        200.0 * 60.0,
        "every delivery is counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_leaves_the_ring_and_is_cut_by_its_queue_bound() {
    let server = start(
        Settings {
            queue_capacity: 64,
            queue_bytes: 1024 * 1024,
            ..uring()
        },
        Vec::new(),
    )
    .await;
    server.publish("t", "first").await;
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(server.subscribe("t").await);
    }
    // The stalled subscriber has a small receive buffer and never reads.
    let stalled = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
        stream
            .write_all(b"GET /v1/events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        stream
    };
    let payload = "x".repeat(16 * 1024);
    let mut ids = Vec::new();
    for i in 0..400 {
        let id = server.publish("t", &format!("{i} {payload}")).await;
        // The readers keep up (each has read this message before the next).
        let line = format!("id: {id}\n");
        for reader in &mut readers {
            assert!(reader.read_tail_until(&line).await, "a reader was cut");
        }
        ids.push(id);
    }
    for reader in &readers {
        assert_eq!(
            reader.ids(),
            ids,
            "a reading subscriber gets everything, in order"
        );
    }
    // The stalled subscriber's sends came back short or refused; its task
    // took over and its bounded queue cut it.
    let returned = server.sends("partial") + server.sends("again");
    assert!(
        returned >= 1.0,
        "a send to the stalled subscriber came back"
    );
    assert!(server.sends("written") > 0.0);
    assert_eq!(
        server.metric("sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"}"),
        1.0
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_parked_streams_with_the_drain_event() {
    let server = start(uring(), Vec::new()).await;
    server.publish("t", "first").await;
    let mut subscriber = server.subscribe("t").await;
    let id = server.publish("t", "second").await;
    assert!(
        subscriber
            .read_until(|text| text.contains(&format!("id: {id}\n")))
            .await
    );
    // Parked on the ring now (the message went through it).
    let deadline = Instant::now() + WAIT;
    while server.sends("written") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the message went through io_uring"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.state.begin_drain();
    assert!(
        subscriber
            .read_until(|text| text.contains("event: sidestream.drain"))
            .await
    );
    // The response ends with the last chunk and the connection closes.
    assert!(!subscriber.read_until(|_| false).await);
    assert!(subscriber.raw.ends_with(b"0\r\n\r\n"));
    assert_eq!(subscriber.ids(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_stream_the_ring_writes_to_gets_no_heartbeat_and_a_quiet_one_does() {
    let period = Duration::from_secs(1);
    let server = start(
        Settings {
            heartbeat: period,
            ..uring()
        },
        Vec::new(),
    )
    .await;
    server.publish("t", "first").await;
    let mut subscriber = server.subscribe("t").await;
    // A message every 100 ms for three and a half periods, written by the
    // ring to the parked connection: the task sees none of them, and beats
    // for none.
    let mut last = String::new();
    for i in 0..35 {
        last = server.publish("t", &format!("message {i}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        subscriber
            .read_until(|text| text.contains(&format!("id: {last}\n")))
            .await
    );
    assert!(
        server.sends("written") >= 10.0,
        "the messages went through io_uring"
    );
    let beats = |raw: &[u8]| {
        String::from_utf8(dechunk(raw))
            .unwrap()
            .lines()
            .filter(|l| *l == ":")
            .count()
    };
    assert_eq!(beats(&subscriber.raw), 0, "no heartbeat on a busy stream");
    // Quiet: the parked stream beats again.
    assert!(
        subscriber
            .read_until(|text| text.contains("\r\n:\n\n\r\n"))
            .await
    );
    assert_eq!(beats(&subscriber.raw), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_closes_direct_sse_connections_parked_or_not() {
    for fanout_io in [FanoutIo::Uring, FanoutIo::Epoll] {
        let server = start(
            Settings {
                fanout_io,
                ..Settings::default()
            },
            Vec::new(),
        )
        .await;
        server.publish("t", "first").await;
        let mut subscriber = server.subscribe("t").await;
        let id = server.publish("t", "second").await;
        assert!(
            subscriber
                .read_until(|text| text.contains(&format!("id: {id}\n")))
                .await
        );
        drop(server);
        assert!(
            !subscriber.read_until(|_| false).await,
            "{fanout_io:?}: the connection closes when the server stops"
        );
    }
}

/// The binary in a child process whose `io_uring_setup` fails with EPERM
/// (a seccomp filter, as container runtimes install).
#[cfg(target_arch = "x86_64")]
fn without_io_uring(args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sidestream-push"));
    command.args(args);
    let filter = [
        // The architecture: anything but x86-64 is let through.
        bpf(0x20, 0, 0, 4),
        bpf(0x15, 1, 0, 0xc000_003e),
        bpf(0x06, 0, 0, libc::SECCOMP_RET_ALLOW),
        // io_uring_setup fails with EPERM; every other call is allowed.
        bpf(0x20, 0, 0, 0),
        bpf(0x15, 0, 1, libc::SYS_io_uring_setup as u32),
        bpf(0x06, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        bpf(0x06, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    #[allow(unsafe_code)] // installing the filter between fork and exec
    // SAFETY: prctl is async-signal-safe; `filter` lives as long as `command`.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[cfg(target_arch = "x86_64")]
fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn where_io_uring_is_refused_auto_falls_back_to_epoll_and_uring_refuses_to_start() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let forced = without_io_uring(&[
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--fanout-io",
        "uring",
    ])
    .output()
    .unwrap();
    assert_eq!(forced.status.code(), Some(64), "{forced:?}");
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(
        stderr.contains("--fanout-io uring: io_uring is refused here")
            && stderr.contains("Operation not permitted"),
        "{stderr}"
    );

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = without_io_uring(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--grpc-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .env_remove("SIDESTREAM_PUSH_FANOUT_IO")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The log goes to stderr.
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let done = line.contains("sidestream-push listening");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(WAIT, lines).await.unwrap().unwrap();
    let log = lines.join("\n");
    assert!(
        log.contains("io_uring is not available here") && log.contains("Operation not permitted"),
        "the fallback is logged: {log}"
    );
    assert!(log.contains(r#""fanout_io":"epoll""#), "{log}");
    let base = format!("http://127.0.0.1:{port}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sidestream_push_fanout_io{path=\"epoll\"} 1"),
        "{metrics}"
    );
    // And it serves: a subscriber gets a message over the epoll path.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /v1/events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut subscriber = Subscriber {
        stream,
        raw: Vec::new(),
    };
    subscriber.read_until(|text| text.contains("retry: ")).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/topics/t/messages"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(
        subscriber
            .read_until(|text| text.contains("data: hello"))
            .await
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
