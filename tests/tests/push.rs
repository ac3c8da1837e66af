//! The `sidestream-push` binary as a process: SIGTERM drain, two servers on
//! one real Redis, and memory under a subscriber that stops reading.

use std::time::{Duration, Instant};

use eventsource_stream::{Event as SseEvent, Eventsource};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use sidestream_proto::push::v1::push_client::PushClient;
use sidestream_proto::push::v1::{subscribe_event, SubscribeRequest, TopicPosition};
use sidestream_tests::push::PushServer;
use sidestream_tests::redis::Redis;
use sidestream_tests::run_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

type Sse = std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;

async fn sse(base: &str, query: &str, last_event_id: Option<&str>) -> Sse {
    let mut request = reqwest::Client::new().get(format!("{base}/v1/events?{query}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("subscribe");
    assert_eq!(response.status(), 200);
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string())),
    )
}

async fn next_sse(stream: &mut Sse) -> SseEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("SSE event in time")
        .expect("stream open")
        .expect("well-formed event")
}

async fn metric(base: &str, line_prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sigterm_drains_every_subscriber_with_a_jittered_retry_and_exits() {
    let dir = run_dir("push-sigterm").expect("run dir");
    let mut server = PushServer::start(
        "push-drain",
        &dir,
        &[
            "--drain-retry",
            "500ms",
            "--drain-retry-jitter",
            "3s",
            "--drain-grace",
            "8s",
        ],
    )
    .await
    .expect("push server starts");
    let base = server.url();
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(sse(&base, "topic=news", None).await);
    }
    let url = format!("ws://127.0.0.1:{}/v1/ws", server.http_port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    ws.send(WsMessage::Text(
        json!({ "type": "subscribe", "topic": "news" })
            .to_string()
            .into(),
    ))
    .await
    .expect("ws send");
    let mut grpc = PushClient::connect(server.grpc_url())
        .await
        .expect("grpc")
        .subscribe(SubscribeRequest {
            topics: vec![TopicPosition {
                topic: "news".into(),
                from: String::new(),
            }],
        })
        .await
        .expect("grpc subscribe")
        .into_inner();
    let id = server
        .publish("news", "before the drain")
        .await
        .expect("publish");
    for stream in &mut streams {
        assert_eq!(next_sse(stream).await.id, id);
    }

    server.proc.signal(15).expect("SIGTERM");

    let mut retries = Vec::new();
    for stream in &mut streams {
        let event = next_sse(stream).await;
        assert_eq!(event.event, "sidestream.drain");
        let retry = event.retry.expect("retry on the drain event");
        assert!(
            retry >= Duration::from_millis(500) && retry <= Duration::from_millis(3500),
            "{retry:?}"
        );
        retries.push(retry);
        assert!(
            tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("stream ends")
                .is_none(),
            "the stream ends after the drain event"
        );
    }
    retries.sort();
    retries.dedup();
    assert!(retries.len() > 1, "retries are jittered: {retries:?}");
    let mut ws_drain = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, ws.next()).await {
        match frame {
            WsMessage::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("json");
                if value["type"] == "drain" {
                    ws_drain = Some(value);
                }
            }
            WsMessage::Close(close) => {
                assert_eq!(close.map(|c| u16::from(c.code)), Some(1012));
                break;
            }
            _ => {}
        }
    }
    assert!(ws_drain.is_some_and(|d| d["retryMs"].as_u64().is_some()));
    let status = loop {
        match tokio::time::timeout(WAIT, grpc.message())
            .await
            .expect("grpc in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("gRPC stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let exit = server
        .proc
        .wait_exit(Duration::from_secs(8))
        .expect("exits within the grace period");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        server.proc.log().contains("Every stream drained"),
        "{}",
        server.proc.log()
    );
}

#[tokio::test]
async fn two_push_servers_on_one_redis_share_topics_and_resume_across_servers() {
    let dir = run_dir("push-redis").expect("run dir");
    let redis = Redis::start(&dir).await.expect("redis starts");
    let config = dir.join("topics.yaml");
    std::fs::write(
        &config,
        "- kind: TopicSettings\n  name: small\n  spec: { historySize: 2 }\n",
    )
    .expect("config");
    let broker = redis.url();
    let args = [
        "--broker",
        broker.as_str(),
        "--config",
        config.to_str().expect("path"),
    ];
    let mut a = PushServer::start("push-a", &dir, &args)
        .await
        .expect("A starts");
    let b = PushServer::start("push-b", &dir, &args)
        .await
        .expect("B starts");

    // A subscriber on B gets what is published on A, with the same ids.
    let mut on_b = sse(&b.url(), "topic=shared&topic=other", None).await;
    let mut on_a = sse(&a.url(), "topic=shared&topic=other", None).await;
    let first = a.publish("shared", "s1").await.expect("publish on A");
    let second = b.publish("other", "o1").await.expect("publish on B");
    for stream in [&mut on_a, &mut on_b] {
        let event = next_sse(stream).await;
        assert_eq!(event.data, "s1");
        assert!(event.id.starts_with(&first), "{} vs {first}", event.id);
        let event = next_sse(stream).await;
        assert_eq!(event.data, "o1");
        assert!(event.id.ends_with(&second), "{} vs {second}", event.id);
    }
    // Ids continue across servers: one sequence per topic.
    let third = b.publish("shared", "s2").await.expect("publish on B");
    let (e1, s1) = first.split_once('-').expect("id");
    let (e3, s3) = third.split_once('-').expect("id");
    assert_eq!(e1, e3);
    assert_eq!(
        s3.parse::<u64>().expect("seq"),
        s1.parse::<u64>().expect("seq") + 1
    );
    let last_on_a = next_sse(&mut on_a).await;
    assert_eq!(last_on_a.data, "s2");
    assert_eq!(next_sse(&mut on_b).await.data, "s2");
    // A topic new to B while its reader blocks in XREAD: the reader is woken
    // (CLIENT UNBLOCK) and picks it up, and a healthy run logs no XREAD failure.
    let mut late = sse(&b.url(), "topic=late", None).await;
    b.publish("late", "l1").await.expect("publish on B");
    assert_eq!(next_sse(&mut late).await.data, "l1");
    drop(late);
    for server in [&a, &b] {
        let log = server.proc.log();
        assert!(!log.contains("Redis XREAD failed"), "{log}");
    }

    // A dies; its subscriber resumes on B and gets exactly what it missed.
    a.proc.kill();
    drop(on_a);
    for (topic, data) in [("shared", "s3"), ("other", "o2"), ("shared", "s4")] {
        b.publish(topic, data).await.expect("publish on B");
    }
    let mut resumed = sse(&b.url(), "topic=shared&topic=other", Some(&last_on_a.id)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next_sse(&mut resumed).await;
        assert_ne!(event.event, "sidestream.reset", "{event:?}");
        got.push(event.data);
    }
    got.sort();
    assert_eq!(got, ["o2", "s3", "s4"]);
    b.publish("other", "o3").await.expect("publish on B");
    assert_eq!(
        next_sse(&mut resumed).await.data,
        "o3",
        "nothing else was replayed"
    );

    // gRPC on B resumes from an id issued by A.
    let mut grpc = PushClient::connect(b.grpc_url())
        .await
        .expect("grpc")
        .subscribe(SubscribeRequest {
            topics: vec![TopicPosition {
                topic: "shared".into(),
                from: first.clone(),
            }],
        })
        .await
        .expect("grpc subscribe")
        .into_inner();
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        let event = tokio::time::timeout(WAIT, grpc.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        if let Some(subscribe_event::Event::Message(message)) = event.event {
            replayed.push(String::from_utf8_lossy(&message.data).into_owned());
        }
    }
    assert_eq!(replayed, ["s2", "s3", "s4"]);

    // History in Redis is bounded: a resume past it is told so.
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(b.publish("small", &format!("m{i}")).await.expect("publish"));
    }
    let mut gap = sse(&b.url(), "topic=small", Some(&ids[0])).await;
    let reset = next_sse(&mut gap).await;
    assert_eq!(reset.event, "sidestream.reset");
    let data: Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(data["reason"], "history-gap");
    assert_eq!(next_sse(&mut gap).await.data, "m4");
    assert_eq!(next_sse(&mut gap).await.data, "m5");

    // Redis loses the topic's state: a resume is told the epoch changed.
    let flushed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "DEL",
            "sidestream:push:shared:meta",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&flushed.stdout).trim(), "1");
    let fresh = b
        .publish("shared", "after the loss")
        .await
        .expect("publish");
    assert_ne!(fresh.split_once('-').expect("id").0, e1, "a new epoch");
    // A subscriber that was live through the loss is told too.
    let reset = next_sse(&mut resumed).await;
    assert_eq!(reset.event, "sidestream.reset");
    let data: Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(
        (data["topic"].as_str(), data["reason"].as_str()),
        (Some("shared"), Some("epoch-changed"))
    );
    assert_eq!(next_sse(&mut resumed).await.data, "after the loss");
    let mut lost = sse(&b.url(), "topic=shared", Some(&third)).await;
    let reset = next_sse(&mut lost).await;
    assert_eq!(reset.event, "sidestream.reset");
    let data: Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(data["reason"], "epoch-changed");
    let event = next_sse(&mut lost).await;
    assert_eq!(
        (event.data.as_str(), event.id.as_str()),
        ("after the loss", fresh.as_str())
    );

    // A busy topic (more messages than milliseconds since its epoch began)
    // loses its state, first its meta alone (the new epoch starts after
    // what the log still holds), then its log and meta together, as in a
    // restart without persistence (the new epoch starts after the clock,
    // which is behind what the reader followed). Either way a live
    // subscriber is told and gets the new messages.
    let redis_cli = |args: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let meta = "sidestream:push:shared:meta";
    let log = "sidestream:push:shared:log";
    for lost in [&[meta][..], &[meta, log][..]] {
        redis_cli(&["HINCRBY", meta, "seq", "100000000"]);
        b.publish("shared", "busy").await.expect("publish");
        let mut event = next_sse(&mut resumed).await;
        if event.event == "sidestream.reset" {
            event = next_sse(&mut resumed).await;
        }
        assert_eq!(event.data, "busy");
        let deleted = redis_cli(&[&["DEL"][..], lost].concat());
        assert_eq!(deleted, lost.len().to_string(), "{lost:?}");
        let after = b
            .publish("shared", "after a busy epoch")
            .await
            .expect("publish");
        let reset = next_sse(&mut resumed).await;
        assert_eq!(reset.event, "sidestream.reset", "{lost:?}: {reset:?}");
        let data: Value = serde_json::from_str(&reset.data).expect("json");
        assert_eq!(data["reason"], "epoch-changed");
        let event = next_sse(&mut resumed).await;
        assert_eq!(event.data, "after a busy epoch", "{lost:?}");
        // The stream's id is a cursor over its topics; this topic's part is
        // the published id.
        assert!(
            event.id.split('.').any(|part| part == after),
            "{after} in {}",
            event.id
        );
    }

    // Idempotency keys hold across servers.
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for server in [&b.url(), &b.url()] {
        let response = client
            .post(format!("{server}/v1/topics/shared/messages"))
            .header("idempotency-key", "k-1")
            .body("once")
            .send()
            .await
            .expect("publish");
        answers.push(response.json::<Value>().await.expect("json")["id"].clone());
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_and_server_memory_stays_bounded() {
    let dir = run_dir("push-slow").expect("run dir");
    let config = dir.join("topics.json");
    std::fs::write(
        &config,
        r#"{"kind": "TopicSettings", "name": "firehose", "spec": {"historySize": 10, "maxMessageBytes": 70000}}"#,
    )
    .expect("config");
    let server = PushServer::start(
        "push-slow",
        &dir,
        &[
            "--queue-capacity",
            "64",
            "--config",
            config.to_str().expect("path"),
        ],
    )
    .await
    .expect("push server starts");
    let base = server.url();

    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", server.http_port))
        .await
        .expect("connect");
    stuck
        .write_all(b"GET /v1/events?topic=firehose HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut fast = sse(&base, "topic=firehose", None).await;
    sidestream_tests::assert_eventually!(WAIT, "two subscribers", async {
        let n = metric(
            &base,
            "sidestream_push_topic_subscribers{topic=\"firehose\"}",
        )
        .await;
        anyhow::ensure!(n == Some(2.0), "subscribers {n:?}");
        Ok(())
    });

    let before = server.rss_kib().expect("rss");
    let payload = "x".repeat(64 * 1000);
    let client = reqwest::Client::new();
    let mut peak = before;
    let started = Instant::now();
    for i in 0..800 {
        let response = client
            .post(format!("{base}/v1/topics/firehose/messages"))
            .body(format!("{i:04}{payload}"))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 201);
        let event = next_sse(&mut fast).await;
        assert!(event.data.starts_with(&format!("{i:04}")));
        if i % 50 == 0 {
            peak = peak.max(server.rss_kib().expect("rss"));
        }
    }
    peak = peak.max(server.rss_kib().expect("rss"));
    // 51 MB went through; the stuck subscriber may pin its queue (64 × 64 kB)
    // and the connection buffers, nothing more.
    assert!(
        peak.saturating_sub(before) < 24 * 1024,
        "RSS grew from {before} kB to {peak} kB"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    sidestream_tests::assert_eventually!(WAIT, "slow consumer cut", async {
        let cut = metric(
            &base,
            "sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"}",
        )
        .await;
        anyhow::ensure!(cut == Some(1.0), "disconnects {cut:?}");
        let subscribers = metric(
            &base,
            "sidestream_push_topic_subscribers{topic=\"firehose\"}",
        )
        .await;
        anyhow::ensure!(subscribers == Some(1.0), "subscribers {subscribers:?}");
        Ok(())
    });
    // The server closed the stuck connection: reading it reaches the end.
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(WAIT, stuck.read(&mut sink))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_resume_over_a_long_redis_history_is_replayed_in_order_page_by_page() {
    let dir = run_dir("push-redis-pages").expect("run dir");
    let redis = Redis::start(&dir).await.expect("redis starts");
    let broker = redis.url();
    // A queue of 8: replay pages of 8 messages (300 messages, ~38 pages).
    let args = ["--broker", broker.as_str(), "--queue-capacity", "8"];
    let a = PushServer::start("push-pages-a", &dir, &args)
        .await
        .expect("A starts");
    let b = PushServer::start("push-pages-b", &dir, &args)
        .await
        .expect("B starts");
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(a.publish("long", &format!("m{i}")).await.expect("publish"));
    }
    let mut resumed = sse(&b.url(), "topic=long", Some(&ids[0])).await;
    for (i, id) in ids.iter().enumerate().skip(1) {
        let event = next_sse(&mut resumed).await;
        assert_eq!(event.event, "message", "{event:?}");
        assert_eq!((&event.id, event.data), (id, format!("m{i}")));
    }
    // Live delivery follows the replay, nothing repeated.
    let live = a.publish("long", "live").await.expect("publish");
    let event = next_sse(&mut resumed).await;
    assert_eq!((event.id, event.data), (live, "live".to_owned()));
    let held = metric(&b.url(), "sidestream_push_replay_held_messages ").await;
    assert_eq!(held, Some(0.0));
}

#[tokio::test]
async fn a_duration_flag_without_a_unit_exits_64_naming_the_flag() {
    let dir = run_dir("push-flags").expect("run dir");
    // (arguments, environment variable, flag named, value) of each case.
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: [Case; 4] = [
        (&["--heartbeat", "5"], None, "--heartbeat", "5"),
        (&["--drain-grace", "30"], None, "--drain-grace", "30"),
        (
            &["--request-head-timeout=2.5"],
            None,
            "--request-head-timeout",
            "2.5",
        ),
        (
            &[],
            Some(("SIDESTREAM_PUSH_IDEMPOTENCY_WINDOW", "600")),
            "--idempotency-window",
            "600",
        ),
    ];
    for (args, env, flag, value) in cases {
        let mut command = std::process::Command::new(
            sidestream_tests::binary("sidestream-push").expect("binary"),
        );
        command
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let mut proc = sidestream_tests::Proc::spawn("push-flags", &dir, command).expect("spawn");
        let status = proc.wait_exit(WAIT).expect("exits");
        let log = proc.log();
        assert_eq!(status.code(), Some(64), "{args:?}: {log}");
        let hint = format!("'{value}' needs a unit: {value}ms, {value}s, {value}m");
        assert!(log.contains(flag) && log.contains(&hint), "{args:?}: {log}");
    }
}

/// Bytes of one message in the thousand-subscriber test.
const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_that_stop_reading_cannot_grow_memory_past_the_bound() {
    // A thousand sockets here and as many in the server (which inherits the
    // limit): more descriptors than a default soft limit of 1024.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if nofile.current.is_some_and(|soft| soft < 4096) {
        let raised = rustix::process::Rlimit {
            current: nofile.maximum.map(|hard| hard.min(65536)),
            maximum: nofile.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised)
            .expect("raise the descriptor limit");
    }
    let dir = run_dir("push-thousand").expect("run dir");
    let config = dir.join("topics.json");
    std::fs::write(
        &config,
        r#"{"kind": "TopicSettings", "name": "big", "spec": {"historySize": 8, "maxMessageBytes": 1048576}}"#,
    )
    .expect("config");
    // Default queues: 1024 messages, 4 MiB.
    let server = PushServer::start(
        "push-thousand",
        &dir,
        &["--config", config.to_str().expect("path")],
    )
    .await
    .expect("push server starts");
    let base = server.url();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.http_port)
        .parse()
        .expect("addr");

    // A thousand subscribers with small receive buffers that never read.
    let mut stuck = Vec::new();
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /v1/events?topic=big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        stuck.push(stream);
    }
    sidestream_tests::assert_eventually!(WAIT, "a thousand subscribers", async {
        let n = metric(&base, "sidestream_push_topic_subscribers{topic=\"big\"}").await;
        anyhow::ensure!(n == Some(1000.0), "subscribers {n:?}");
        Ok(())
    });

    let before = server.rss_kib().expect("rss");
    let mut peak = before;
    let client = reqwest::Client::new();
    let payload = "m".repeat(MIB - 4);
    let started = Instant::now();
    for i in 0..64 {
        let response = client
            .post(format!("{base}/v1/topics/big/messages"))
            .body(format!("{i:04}{payload}"))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 201);
        peak = peak.max(server.rss_kib().expect("rss"));
    }
    let published = started.elapsed();
    // Every subscriber is cut (its queue's bytes overflowed, or a write
    // timed out) and its connection closed.
    let sampled = std::cell::Cell::new(peak);
    sidestream_tests::assert_eventually!(WAIT, "every subscriber cut", async {
        sampled.set(sampled.get().max(server.rss_kib()?));
        let slow = metric(
            &base,
            "sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"}",
        )
        .await
        .unwrap_or(0.0);
        let late = metric(
            &base,
            "sidestream_push_write_deadline_disconnects_total{transport=\"sse\"}",
        )
        .await
        .unwrap_or(0.0);
        anyhow::ensure!(slow + late == 1000.0, "cut {slow} + {late}");
        let active = metric(&base, "sidestream_push_streams_active{transport=\"sse\"}").await;
        anyhow::ensure!(active == Some(0.0), "streams {active:?}");
        Ok(())
    });
    peak = sampled.get().max(server.rss_kib().expect("rss"));
    let after = server.rss_kib().expect("rss");
    eprintln!(
        "1000 stuck subscribers, 64 x 1 MiB published in {published:?}: RSS {before} kB before, peak {peak} kB (+{} kB), {after} kB after",
        peak.saturating_sub(before)
    );
    // History (8 messages, each held as its data and its SSE frame: 16 MiB)
    // plus what the queues pin (4 MiB of data, twice, and the message each
    // stuck writer holds) is about 28 MiB; the bound leaves room for the
    // allocator. Measured: +38 MB. Without the byte bound the queues pin all
    // 64 messages (+131 MB measured), up to 1024 of them (2 GiB).
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} kB to {peak} kB"
    );
}

#[tokio::test]
async fn a_subscriber_whose_socket_does_not_drain_is_cut_at_the_write_deadline_with_the_reason() {
    let dir = run_dir("push-write-deadline").expect("run dir");
    // Queues large enough never to overflow: the write deadline cuts.
    let server = PushServer::start(
        "push-write-deadline",
        &dir,
        &[
            "--write-deadline",
            "1s",
            "--queue-capacity",
            "100000",
            "--queue-bytes",
            "1073741824",
        ],
    )
    .await
    .expect("push server starts");
    let base = server.url();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.http_port)
        .parse()
        .expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stuck = socket.connect(addr).await.expect("connect");
    stuck
        .write_all(b"GET /v1/events?topic=w HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    sidestream_tests::assert_eventually!(WAIT, "subscribed", async {
        let n = metric(&base, "sidestream_push_topic_subscribers{topic=\"w\"}").await;
        anyhow::ensure!(n == Some(1.0), "subscribers {n:?}");
        Ok(())
    });
    // Publish until deliveries stay queued: the socket stopped draining.
    let payload = "x".repeat(32 * 1024);
    let mut published = 0;
    while metric(&base, "sidestream_push_backlog_messages ").await < Some(8.0) {
        assert!(published < 2000, "the socket never filled");
        server
            .publish("w", &format!("{published}:{payload}"))
            .await
            .expect("publish");
        published += 1;
    }
    sidestream_tests::assert_eventually!(WAIT, "cut at the write deadline", async {
        let cut = metric(
            &base,
            "sidestream_push_write_deadline_disconnects_total{transport=\"sse\"}",
        )
        .await;
        anyhow::ensure!(cut == Some(1.0), "write-deadline cuts {cut:?}");
        let log = server.proc.log();
        anyhow::ensure!(
            log.contains("did not take a write in time") && log.contains("write-deadline"),
            "no reason in the log"
        );
        Ok(())
    });
    let slow = metric(
        &base,
        "sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"}",
    )
    .await;
    assert_eq!(slow, Some(0.0));
    // The connection is closed: reading reaches its end.
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(WAIT, stuck.read(&mut sink))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
