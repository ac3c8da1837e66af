//! The push server in-process on loopback, driven by real clients: an SSE
//! parser that follows the WHATWG spec (eventsource-stream), a WebSocket client
//! (tokio-tungstenite) and the generated tonic client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{start, Server};
use eventsource_stream::{Event as SseEvent, Eventsource};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use sidestream_proto::push::v1::push_client::PushClient;
use sidestream_proto::push::v1::{
    subscribe_event, PublishRequest, SubscribeEvent, SubscribeRequest, TopicPosition,
};
use sidestream_push::server;
use sidestream_push::topics::TopicRegistry;
use sidestream_push::{AppState, BrokerSpec, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

fn topic(name: &str, edit: impl FnOnce(&mut TopicSettings)) -> TopicSettings {
    let mut settings = TopicSettings::defaults(name);
    edit(&mut settings);
    settings
}

async fn publish(server: &Server, topic: &str, data: &str, event: Option<&str>) -> String {
    let mut url = format!("{}/v1/topics/{topic}/messages", server.http);
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

type Sse = std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;

/// Polls `condition` every 10 ms until it holds, failing with `what` after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn sse(server: &Server, query: &str, last_event_id: Option<&str>) -> Sse {
    let mut request = reqwest::Client::new().get(format!("{}/v1/events?{query}", server.http));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    assert_eq!(response.headers()["content-type"], "text/event-stream");
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
        .unwrap()
}

async fn ws_subscribe(
    server: &Server,
    topic: &str,
    from: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/v1/ws", server.http.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let frame = json!({ "type": "subscribe", "topic": topic, "from": from });
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .unwrap();
    ws
}

async fn next_ws(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("WebSocket frame in time")
            .expect("open")
            .unwrap();
        match frame {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            WsMessage::Close(close) => {
                return json!({ "type": "closed", "code": close.map(|c| u16::from(c.code)) })
            }
            _ => continue,
        }
    }
}

async fn grpc_subscribe(
    server: &Server,
    topics: &[(&str, &str)],
) -> tonic::Streaming<SubscribeEvent> {
    let mut client = PushClient::connect(server.grpc.clone()).await.unwrap();
    let request = SubscribeRequest {
        topics: topics
            .iter()
            .map(|(t, from)| TopicPosition {
                topic: (*t).into(),
                from: (*from).into(),
            })
            .collect(),
    };
    client.subscribe(request).await.unwrap().into_inner()
}

async fn next_grpc(
    stream: &mut tonic::Streaming<SubscribeEvent>,
) -> Result<subscribe_event::Event, tonic::Status> {
    loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("gRPC event in time")?;
        match event.and_then(|e| e.event) {
            Some(subscribe_event::Event::Heartbeat(_)) => continue,
            Some(event) => return Ok(event),
            None => return Err(tonic::Status::cancelled("stream ended")),
        }
    }
}

#[tokio::test]
async fn a_publish_reaches_every_transport_with_the_same_id() {
    let server = start(Settings::default(), Vec::new()).await;
    let mut events = sse(&server, "topic=prices", None).await;
    let mut ws = ws_subscribe(&server, "prices", None).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    let mut grpc = grpc_subscribe(&server, &[("prices", "")]).await;
    assert!(matches!(
        next_grpc(&mut grpc).await,
        Ok(subscribe_event::Event::Subscribed(_))
    ));

    let id = publish(&server, "prices", "line one\nline two", Some("tick")).await;

    let event = next_sse(&mut events).await;
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.data.as_str()),
        (id.as_str(), "tick", "line one\nline two")
    );
    let frame = next_ws(&mut ws).await;
    assert_eq!(frame["type"], "message");
    assert_eq!(
        (
            frame["id"].as_str(),
            frame["topic"].as_str(),
            frame["event"].as_str()
        ),
        (Some(id.as_str()), Some("prices"), Some("tick"))
    );
    assert_eq!(frame["data"], "line one\nline two");
    match next_grpc(&mut grpc).await {
        Ok(subscribe_event::Event::Message(message)) => {
            assert_eq!(
                (
                    message.id.as_str(),
                    message.topic.as_str(),
                    message.event.as_str()
                ),
                (id.as_str(), "prices", "tick")
            );
            assert_eq!(&message.data[..], b"line one\nline two");
        }
        other => panic!("expected a message, got {other:?}"),
    }

    // Publishing over gRPC reaches the HTTP subscribers too, with the next id.
    let mut client = PushClient::connect(server.grpc.clone()).await.unwrap();
    let published = client
        .publish(PublishRequest {
            topic: "prices".into(),
            data: "{\"p\":1}".into(),
            event: String::new(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = next_sse(&mut events).await;
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.data.as_str()),
        (published.id.as_str(), "message", "{\"p\":1}")
    );
    assert_eq!(next_ws(&mut ws).await["id"], published.id);
    let first: sidestream_push::message::MessageId = id.parse().unwrap();
    let second: sidestream_push::message::MessageId = published.id.parse().unwrap();
    assert_eq!((second.epoch, second.seq), (first.epoch, first.seq + 1));
}

#[tokio::test]
async fn last_event_id_resumes_two_topics_with_exactly_the_missed_messages() {
    let server = start(Settings::default(), Vec::new()).await;
    let mut events = sse(&server, "topic=a&topic=b", None).await;
    publish(&server, "a", "a1", None).await;
    publish(&server, "b", "b1", None).await;
    assert_eq!(next_sse(&mut events).await.data, "a1");
    let seen = next_sse(&mut events).await;
    assert_eq!(seen.data, "b1");
    drop(events);

    for (topic, data) in [("a", "a2"), ("b", "b2"), ("a", "a3"), ("c", "c1")] {
        publish(&server, topic, data, None).await;
    }
    let mut resumed = sse(&server, "topic=a&topic=b", Some(&seen.id)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next_sse(&mut resumed).await;
        assert_ne!(event.event, "sidestream.reset", "{event:?}");
        got.push(event.data);
    }
    got.sort();
    assert_eq!(got, ["a2", "a3", "b2"]);
    // Nothing else was missed: the next event is a new message.
    publish(&server, "b", "b3", None).await;
    let next = next_sse(&mut resumed).await;
    assert_eq!(next.data, "b3");

    // The query form (for clients that cannot set headers) resumes the same way.
    let mut by_query = sse(
        &server,
        &format!("topic=a&topic=b&lastEventId={}", seen.id),
        None,
    )
    .await;
    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(next_sse(&mut by_query).await.data);
    }
    again.sort();
    assert_eq!(again, ["a2", "a3", "b2", "b3"]);
}

#[tokio::test]
async fn a_long_resume_is_replayed_in_order_a_page_at_a_time_on_every_transport() {
    // A queue of 4: the replay goes 4 messages at a time.
    let server = start(
        Settings {
            queue_capacity: 4,
            ..Settings::default()
        },
        Vec::new(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(publish(&server, "long", &format!("m{i}"), None).await);
    }
    let held = || server.state.metrics.replay_held_now();
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, id)| (id.clone(), format!("m{i}")))
        .collect();

    let mut events = sse(&server, "topic=long", Some(&ids[0])).await;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = next_sse(&mut events).await;
        assert_eq!(event.event, "message", "{event:?}");
        got.push((event.id, event.data));
        assert!(held() <= 4, "{} held", held());
    }
    assert_eq!(got, expected);
    drop(events);

    let mut ws = ws_subscribe(&server, "long", Some(&ids[0])).await;
    let mut got = Vec::new();
    loop {
        let frame = next_ws(&mut ws).await;
        match frame["type"].as_str() {
            Some("message") => got.push((
                frame["id"].as_str().unwrap().to_owned(),
                frame["data"].as_str().unwrap().to_owned(),
            )),
            Some("subscribed") => break,
            _ => panic!("unexpected {frame}"),
        }
        assert!(held() <= 4, "{} held", held());
    }
    assert_eq!(got, expected);
    drop(ws);

    let mut grpc = grpc_subscribe(&server, &[("long", ids[0].as_str())]).await;
    let mut got = Vec::new();
    loop {
        match next_grpc(&mut grpc).await.unwrap() {
            subscribe_event::Event::Message(message) => got.push((
                message.id,
                String::from_utf8(message.data.to_vec()).unwrap(),
            )),
            subscribe_event::Event::Subscribed(_) => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(held() <= 4, "{} held", held());
    }
    assert_eq!(got, expected);
    // Live delivery follows the replay.
    let live = publish(&server, "long", "live", None).await;
    match next_grpc(&mut grpc).await.unwrap() {
        subscribe_event::Event::Message(message) => assert_eq!(message.id, live),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_past_history_gets_the_reset_signal_on_every_transport() {
    let server = start(
        Settings::default(),
        vec![topic("short", |t| t.history_size = 2)],
    )
    .await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(publish(&server, "short", &format!("m{i}"), None).await);
    }
    let mut events = sse(&server, "topic=short", Some(&ids[0])).await;
    let reset = next_sse(&mut events).await;
    assert_eq!(reset.event, "sidestream.reset");
    let data: Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(
        (data["topic"].as_str(), data["reason"].as_str()),
        (Some("short"), Some("history-gap"))
    );
    assert_eq!(next_sse(&mut events).await.data, "m4");
    assert_eq!(next_sse(&mut events).await.data, "m5");

    // Another epoch (history lost, e.g. a restart) is a reset too.
    let mut other = sse(&server, "topic=short", Some("zz9-3")).await;
    let reset = next_sse(&mut other).await;
    let data: Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(
        (reset.event.as_str(), data["reason"].as_str()),
        ("sidestream.reset", Some("epoch-changed"))
    );
    assert_eq!(next_sse(&mut other).await.data, "m4");

    let mut ws = ws_subscribe(&server, "short", Some(&ids[1])).await;
    let frame = next_ws(&mut ws).await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["topic"].as_str(),
            frame["reason"].as_str()
        ),
        (Some("reset"), Some("short"), Some("history-gap"))
    );
    assert_eq!(next_ws(&mut ws).await["data"], "m4");

    let mut grpc = grpc_subscribe(&server, &[("short", &ids[0])]).await;
    match next_grpc(&mut grpc).await {
        Ok(subscribe_event::Event::Reset(reset)) => assert_eq!(
            (reset.topic.as_str(), reset.reason.as_str()),
            ("short", "history-gap")
        ),
        other => panic!("expected a reset, got {other:?}"),
    }
    // A resume within history gets no reset.
    let mut within = grpc_subscribe(&server, &[("short", &ids[3])]).await;
    match next_grpc(&mut within).await {
        Ok(subscribe_event::Event::Message(message)) => assert_eq!(message.id, ids[4]),
        other => panic!("expected m5, got {other:?}"),
    }
    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sidestream_push_resumes_total{outcome=\"reset-history-gap\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sidestream_push_resumes_total{outcome=\"reset-epoch-changed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_while_others_keep_up_and_memory_stays_bounded() {
    let capacity = 32;
    let settings = Settings {
        queue_capacity: capacity,
        ..Settings::default()
    };
    let server = start(settings, vec![topic("firehose", |t| t.history_size = 100)]).await;

    // The slow one: a raw connection that asks for the stream and never reads.
    let addr = server.http.trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stuck
        .write_all(b"GET /v1/events?topic=firehose HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut fast = sse(&server, "topic=firehose", None).await;
    wait_until("both subscribers connect", || {
        server
            .state
            .metrics
            .active_streams(sidestream_push::metrics::Transport::Sse)
            >= 2
    })
    .await;

    let payload = "x".repeat(16 * 1024);
    let client = reqwest::Client::new();
    let total = 1500;
    let mut max_backlog = 0;
    let mut worst = Duration::ZERO;
    for i in 0..total {
        let sent = Instant::now();
        let response = client
            .post(format!("{}/v1/topics/firehose/messages", server.http))
            .body(format!("{i}:{payload}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let event = next_sse(&mut fast).await;
        worst = worst.max(sent.elapsed());
        assert!(
            event.data.starts_with(&format!("{i}:")),
            "fast subscriber got every message in order"
        );
        max_backlog = max_backlog.max(server.state.hub.backlog());
    }
    // Never more queued than the queues hold, whatever the stuck client does.
    assert!(max_backlog <= 2 * capacity, "backlog {max_backlog}");
    assert!(
        worst < Duration::from_secs(1),
        "the fast subscriber's worst publish→receive was {worst:?}"
    );

    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"} 1"),
        "{metrics}"
    );
    // The stuck client's stream is gone and its connection closed.
    wait_until("the slow stream ends", || {
        server
            .state
            .metrics
            .active_streams(sidestream_push::metrics::Transport::Sse)
            == 1
    })
    .await;
    let mut sink = vec![0u8; 1 << 20];
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stuck.read(&mut sink))
            .await
            .expect("connection closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&sink[..n]),
        }
    }
    assert!(
        received.len() < total * payload.len(),
        "the slow subscriber did not get everything"
    );
}

#[tokio::test]
async fn publishing_and_subscribing_refuse_without_the_right_token() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let secret = "test-secret";
    let settings = Settings {
        publish_open: false,
        jwt_secret: Some(secret.into()),
        ..Settings::default()
    };
    let topics = vec![
        topic("open", |t| {
            t.publish_keys = vec!["publish-key-0123456789".into()]
        }),
        topic("private", |t| t.subscribe_auth = SubscribeAuth::Token),
    ];
    let server = start(settings, topics).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let jwt = |claims: Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let client = reqwest::Client::new();
    let post = |topic: &str, token: Option<String>| {
        let mut request = client
            .post(format!("{}/v1/topics/{topic}/messages", server.http))
            .body("hi");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let response = post("open", None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].as_str().unwrap().contains("bearer token"));

    assert_eq!(
        post("open", Some("not-a-key-or-a-jwt".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post("open", Some("publish-key-0123456789".into()))
            .await
            .unwrap()
            .status(),
        201
    );
    let news_only = jwt(json!({ "exp": exp, "publish": ["news.*"] }));
    let response = post("open", Some(news_only.clone())).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "forbidden"
    );
    assert_eq!(
        post("news.eu", Some(news_only)).await.unwrap().status(),
        201
    );

    // Subscription tokens.
    let get = |query: &str, token: Option<String>| {
        let mut request = client.get(format!("{}/v1/events?{query}", server.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(get("topic=private", None).await.unwrap().status(), 401);
    let other = jwt(json!({ "exp": exp, "subscribe": ["other"] }));
    assert_eq!(
        get("topic=private", Some(other)).await.unwrap().status(),
        403
    );
    let allowed = jwt(json!({ "exp": exp, "subscribe": ["private"] }));
    assert_eq!(
        get("topic=private", Some(allowed.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(&format!("topic=private&token={allowed}"), None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get("topic=open", None).await.unwrap().status(), 200);

    // gRPC: the same rules, as statuses.
    let mut grpc = PushClient::connect(server.grpc.clone()).await.unwrap();
    let status = grpc
        .publish(PublishRequest {
            topic: "open".into(),
            data: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = grpc
        .subscribe(SubscribeRequest {
            topics: vec![TopicPosition {
                topic: "private".into(),
                from: String::new(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // WebSocket: an error frame, the connection stays usable.
    let mut ws = ws_subscribe(&server, "private", None).await;
    let frame = next_ws(&mut ws).await;
    assert_eq!(
        (frame["type"].as_str(), frame["error"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    ws.send(WsMessage::Text(
        json!({ "type": "subscribe", "topic": "private", "token": allowed })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
}

#[tokio::test]
async fn oversized_and_malformed_input_is_refused_clearly() {
    let server = start(
        Settings::default(),
        vec![topic("tiny", |t| t.max_message_bytes = 10)],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/topics/tiny/messages", server.http);
    assert_eq!(
        client
            .post(&url)
            .body("0123456789")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let response = client.post(&url).body("0123456789A").send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "message_too_large");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limit of 10 bytes"),
        "{body}"
    );
    let envelope = json!({ "data": "0123456789A", "event": "e" });
    assert_eq!(
        client
            .post(&url)
            .json(&envelope)
            .send()
            .await
            .unwrap()
            .status(),
        413
    );
    let envelope = json!({ "data": "ok", "event": "e" });
    assert_eq!(
        client
            .post(&url)
            .json(&envelope)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );

    let mut grpc = PushClient::connect(server.grpc.clone()).await.unwrap();
    let status = grpc
        .publish(PublishRequest {
            topic: "tiny".into(),
            data: vec![b'x'; 11].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);

    let cases: &[(&str, u16, &str)] = &[
        ("/v1/events?topic=bad%20name", 400, "invalid_topic"),
        ("/v1/events", 400, "bad_request"),
        ("/v1/events?topic=a&topic=a", 400, "bad_request"),
        (
            "/v1/events?topic=a&topic=b&lastEventId=k1-3",
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=a&lastEventId=nonsense",
            400,
            "bad_last_event_id",
        ),
    ];
    for (path, status, code) in cases {
        let response = client
            .get(format!("{}{path}", server.http))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), *status, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            *code,
            "{path}"
        );
    }
    let response = client
        .post(format!(
            "{}/v1/topics/t/messages?event=sidestream.reset",
            server.http
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .post(format!("{}/v1/topics/t/messages", server.http))
        .body(vec![0xffu8, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_retried_publish_with_an_idempotency_key_is_delivered_once() {
    let server = start(Settings::default(), Vec::new()).await;
    let mut events = sse(&server, "topic=orders", None).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/topics/orders/messages", server.http);
    let first = client
        .post(&url)
        .header("idempotency-key", "order-17")
        .body("placed")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let retry = client
        .post(&url)
        .header("idempotency-key", "order-17")
        .body("placed")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(
        (retry["id"].clone(), retry["duplicate"].clone()),
        (first["id"].clone(), json!(true))
    );
    let envelope = json!({ "data": "placed", "idempotencyKey": "order-17" });
    let again: Value = client
        .post(&url)
        .json(&envelope)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], first["id"]);
    publish(&server, "orders", "next", None).await;
    assert_eq!(next_sse(&mut events).await.data, "placed");
    assert_eq!(next_sse(&mut events).await.data, "next");
}

#[tokio::test]
async fn draining_tells_every_subscriber_to_retry_later_and_refuses_new_ones() {
    let settings = Settings {
        drain_retry: Duration::from_millis(500),
        drain_retry_jitter: Duration::from_millis(1000),
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let mut events = sse(&server, "topic=t", None).await;
    let mut ws = ws_subscribe(&server, "t", None).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    let mut grpc = grpc_subscribe(&server, &[("t", "")]).await;
    assert!(matches!(
        next_grpc(&mut grpc).await,
        Ok(subscribe_event::Event::Subscribed(_))
    ));
    let ready = reqwest::get(format!("{}/healthz/ready", server.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let state = server.state.clone();
    let drained = tokio::spawn(async move { server::drain(&state, Duration::from_secs(5)).await });

    let drain = next_sse(&mut events).await;
    assert_eq!(drain.event, "sidestream.drain");
    let retry = drain.retry.expect("a retry on the drain event");
    assert!(
        retry >= Duration::from_millis(500) && retry <= Duration::from_millis(1500),
        "{retry:?}"
    );
    assert!(
        tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .is_none(),
        "the SSE stream ends"
    );
    let frame = next_ws(&mut ws).await;
    assert_eq!(frame["type"], "drain");
    assert_eq!(
        next_ws(&mut ws).await,
        json!({ "type": "closed", "code": 1012 })
    );
    let status = next_grpc(&mut grpc).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.metadata().get("sidestream-retry-after-ms").is_some());
    assert_eq!(
        drained.await.unwrap(),
        0,
        "every stream ended within the grace period"
    );

    let ready = reqwest::get(format!("{}/healthz/ready", server.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("draining"));
    let refused = reqwest::get(format!("{}/v1/events?topic=t", server.http))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        reqwest::get(format!("{}/healthz/live", server.http))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn quiet_streams_get_heartbeats() {
    let settings = Settings {
        heartbeat: Duration::from_millis(100),
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let response = reqwest::get(format!("{}/v1/events?topic=quiet", server.http))
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.windows(3).any(|w| w == b":\n\n") {
        assert!(
            Instant::now() < deadline,
            "no heartbeat: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
    assert!(
        seen.starts_with(b"retry: 2000\n\n"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );

    let mut ws = ws_subscribe(&server, "quiet", None).await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no WebSocket ping");
        if let WsMessage::Ping(_) = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            break;
        }
    }
    let mut grpc = grpc_subscribe(&server, &[("quiet", "")]).await;
    let mut heartbeat = false;
    for _ in 0..3 {
        if let Some(SubscribeEvent {
            event: Some(subscribe_event::Event::Heartbeat(_)),
        }) = tokio::time::timeout(WAIT, grpc.message())
            .await
            .unwrap()
            .unwrap()
        {
            heartbeat = true;
            break;
        }
    }
    assert!(heartbeat, "no gRPC heartbeat");
}

#[tokio::test]
async fn slow_deliveries_are_kept_with_their_trace_id_and_metrics_are_exposed() {
    let settings = Settings {
        slow_delivery_threshold: Duration::ZERO,
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let mut events = sse(&server, "topic=traced", None).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/topics/traced/messages", server.http))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    next_sse(&mut events).await;
    let report: Value = reqwest::get(format!("{}/debug/slow-deliveries", server.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delivery = &report["deliveries"][0];
    assert_eq!(
        (delivery["topic"].as_str(), delivery["transport"].as_str()),
        (Some("traced"), Some("sse"))
    );
    assert_eq!(delivery["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sidestream_push_streams_active{transport=\"sse\"} 1",
        "sidestream_push_topic_subscribers{topic=\"traced\"} 1",
        "sidestream_push_messages_published_total 1",
        "sidestream_push_messages_delivered_total{transport=\"sse\"} 1",
        "sidestream_push_backlog_messages 0",
        "sidestream_push_publish_to_write_seconds_count{transport=\"sse\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains("sidestream_push_bytes_sent_total{transport=\"sse\"}"));
}

#[tokio::test]
async fn websocket_subscriptions_follow_subscribe_and_unsubscribe_frames() {
    let server = start(Settings::default(), Vec::new()).await;
    let mut ws = ws_subscribe(&server, "x", None).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    ws.send(WsMessage::Text(
        json!({ "type": "subscribe", "topic": "y" })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_ws(&mut ws).await["topic"], "y");
    publish(&server, "x", "x1", None).await;
    publish(&server, "y", "y1", None).await;
    assert_eq!(next_ws(&mut ws).await["data"], "x1");
    assert_eq!(next_ws(&mut ws).await["data"], "y1");
    ws.send(WsMessage::Text(
        json!({ "type": "unsubscribe", "topic": "x" })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_ws(&mut ws).await,
        json!({ "type": "unsubscribed", "topic": "x" })
    );
    publish(&server, "x", "x2", None).await;
    publish(&server, "y", "y2", None).await;
    assert_eq!(next_ws(&mut ws).await["data"], "y2");
    ws.send(WsMessage::Text("{\"type\":\"dance\"}".into()))
        .await
        .unwrap();
    assert_eq!(next_ws(&mut ws).await["error"], "bad_request");
}

#[tokio::test]
async fn the_router_serves_sse_on_any_axum_server() {
    // serve_http answers HTTP/1.1 SSE requests directly; the axum route (used
    // for HTTP/2 and by embedders) must behave the same.
    let state = AppState::new(
        Settings::default(),
        TopicRegistry::new(Vec::new(), true),
        &BrokerSpec::Memory,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, sidestream_push::http::router(state)).await });
    let response = reqwest::get(format!("{base}/v1/events?topic=plain&topic=other"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let published: Value = reqwest::Client::new()
        .post(format!("{base}/v1/topics/plain/messages?event=e"))
        .body("hello")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((event.event.as_str(), event.data.as_str()), ("e", "hello"));
    let id = published["id"].as_str().unwrap();
    let (epoch, _) = id.split_once('-').unwrap();
    // Two topics: the id holds both positions, the second of the same epoch written as a bare seq.
    assert_eq!(event.id, format!("{id}.0"), "epoch {epoch}");
}

#[tokio::test]
async fn subscribers_that_leave_are_forgotten() {
    let server = start(Settings::default(), Vec::new()).await;
    let events = sse(&server, "topic=gone&topic=too", None).await;
    let mut ws = ws_subscribe(&server, "gone", None).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    assert_eq!(
        server.state.hub.topic_counts(),
        [("gone".to_owned(), 2), ("too".to_owned(), 1)]
    );
    drop(events);
    ws.close(None).await.unwrap();
    wait_until("every stream and topic count is forgotten", || {
        server.state.hub.stream_count() == 0 && server.state.hub.topic_counts().is_empty()
    })
    .await;
}

#[tokio::test]
async fn readiness_fails_while_the_backlog_is_above_its_limit() {
    let settings = Settings {
        max_backlog: 5,
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    // A gRPC subscriber that never reads: HTTP/2 flow control stops the
    // stream, so deliveries queue up on the server.
    let mut idle = grpc_subscribe(&server, &[("backlog", "")]).await;
    assert!(matches!(
        next_grpc(&mut idle).await,
        Ok(subscribe_event::Event::Subscribed(_))
    ));
    let payload = "y".repeat(16 * 1024);
    // Enough to fill the HTTP/2 windows and send buffers, not the queue (1024).
    for _ in 0..300 {
        publish(&server, "backlog", &payload, None).await;
    }
    let ready = reqwest::get(format!("{}/healthz/ready", server.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["problems"][0].as_str().unwrap().starts_with("backlog"),
        "{body}"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The gauge shows the backlog readiness refused on: above the limit (5),
    // and no more than the 300 deliveries published.
    let backlog: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sidestream_push_backlog_messages "))
        .unwrap_or_else(|| panic!("no sidestream_push_backlog_messages in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        backlog > 5.0 && backlog <= 300.0,
        "sidestream_push_backlog_messages {backlog}, expected above the limit 5 and at most 300"
    );

    drop(idle);
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = reqwest::get(format!("{}/healthz/ready", server.http))
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ready again once the subscriber left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_grpc_subscriber_that_falls_behind_is_cut_with_resource_exhausted() {
    let settings = Settings {
        queue_capacity: 4,
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let mut lagging = grpc_subscribe(&server, &[("lag", "")]).await;
    assert!(matches!(
        next_grpc(&mut lagging).await,
        Ok(subscribe_event::Event::Subscribed(_))
    ));
    let payload = "z".repeat(16 * 1024);
    let mut last = String::new();
    for _ in 0..300 {
        last = publish(&server, "lag", &payload, None).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sidestream_push_slow_consumer_disconnects_total{transport=\"grpc\"} 1"),
        "{metrics}"
    );
    // The cut subscriber's queue is let go while its client still does not read.
    wait_until("the cut gRPC stream is dropped", || {
        server.state.hub.stream_count() == 0
    })
    .await;
    // Reading again: what was queued, then the cut. Never the last message.
    let status = loop {
        match next_grpc(&mut lagging).await {
            Ok(subscribe_event::Event::Message(message)) => assert_ne!(message.id, last),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("slow consumer"));
}

/// Sends `request` on a new connection and reads until the server closes or
/// `until` is in what arrived; returns what arrived.
async fn raw_exchange(server: &Server, chunks: &[&[u8]], gap: Duration, until: &str) -> String {
    let addr = server.http.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        stream.write_all(chunk).await.unwrap();
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no answer in time; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_request_head_that_never_ends_gets_408_in_time() {
    let settings = Settings {
        request_head_timeout: Duration::from_millis(300),
        ..Settings::default()
    };
    let server = start(settings, Vec::new()).await;
    let started = Instant::now();
    // Slowloris: the head of an SSE request, without its final empty line.
    let answer = raw_exchange(
        &server,
        &[b"GET /v1/events?topic=a HTTP/1.1\r\n", b"host: x\r\n"],
        Duration::from_millis(50),
        "}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn requests_the_direct_path_passes_on_reach_hyper_intact() {
    let server = start(Settings::default(), Vec::new()).await;
    // A head sent in pieces is still served directly.
    let answer = raw_exchange(
        &server,
        &[
            b"GET /v1/ev",
            b"ents?topic=a HTTP/1.1\r\nho",
            b"st: x\r\n\r\n",
        ],
        Duration::from_millis(30),
        "retry:",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // HTTP/1.0, and a head above the direct path's 8 KiB, are read in full
    // by the direct path, then served by hyper from the same bytes.
    let answer = raw_exchange(
        &server,
        &[b"GET /v1/events?topic=a HTTP/1.0\r\n\r\n"],
        Duration::ZERO,
        "retry:",
    )
    .await;
    assert!(answer.contains(" 200 OK\r\n"), "{answer}");
    assert!(answer.contains("text/event-stream"), "{answer}");
    let padding = format!("x-padding: {}\r\n", "p".repeat(12 * 1024));
    let big = format!("GET /v1/events?topic=a HTTP/1.1\r\nhost: x\r\n{padding}\r\n");
    let answer = raw_exchange(&server, &[big.as_bytes()], Duration::ZERO, "retry:").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // A publish whose head starts like an SSE request's prefix would not.
    let body = "hello";
    let publish = format!(
        "POST /v1/topics/a/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(&server, &[publish.as_bytes()], Duration::ZERO, "}").await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
}

#[tokio::test]
async fn a_huge_topic_list_is_refused_at_once() {
    let server = start(Settings::default(), Vec::new()).await;
    let mut client = PushClient::connect(server.grpc.clone()).await.unwrap();
    let request = SubscribeRequest {
        topics: (0..200_000)
            .map(|i| TopicPosition {
                topic: format!("t{i}"),
                from: String::new(),
            })
            .collect(),
    };
    let started = Instant::now();
    let status = client.subscribe(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("at most 64 topics"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let query: String = (0..65).map(|i| format!("topic=t{i}&")).collect();
    let response = reqwest::get(format!("{}/v1/events?{query}", server.http))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn refusals_outside_the_handlers_get_the_same_json_errors() {
    let server = start(Settings::default(), Vec::new()).await;
    let client = reqwest::Client::new();
    let cases = [
        (
            client.get(format!("{}/nope", server.http)),
            404,
            "not_found",
        ),
        (
            client.delete(format!("{}/v1/events?topic=a", server.http)),
            405,
            "method_not_allowed",
        ),
        (
            client.get(format!("{}/v1/ws", server.http)),
            400,
            "bad_websocket_upgrade",
        ),
        (
            client
                .post(format!("{}/v1/topics/%FF/messages", server.http))
                .body("x"),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
