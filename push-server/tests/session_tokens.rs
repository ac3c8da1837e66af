//! Subscription tokens on open streams, with the push server in-process on
//! loopback and real clients (eventsource-stream, tokio-tungstenite, the
//! tonic client): a WebSocket renews its token in band across expiry with no
//! reconnect; SSE and gRPC streams end at expiry saying where to resume, and a
//! reconnect with a fresh token loses nothing; an expired token is refused at
//! open; revocation ends a matching stream. Tokens are HS256 JWTs minted here
//! with the server's secret and lifetimes of a second (plus the server's 5 s
//! leeway). Messages are published all along, so every test also proves that
//! nothing is lost or repeated across the token's end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use eventsource_stream::{Event as SseEvent, Eventsource};
use futures::{SinkExt, Stream, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use sidestream_proto::push::v1::push_client::PushClient;
use sidestream_proto::push::v1::{
    subscribe_event, SubscribeEvent, SubscribeRequest, TopicPosition,
};
use sidestream_push::Settings;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "session-token-test-secret";
const TOPIC: &str = "account.alice";
/// Longest wait for one event (a token's end is its `exp` plus 5 s of leeway).
const WAIT: Duration = Duration::from_secs(20);

fn token_topic(name: &str) -> TopicSettings {
    let mut settings = TopicSettings::defaults(name);
    settings.subscribe_auth = SubscribeAuth::Token;
    settings
}

async fn start() -> Server {
    let settings = Settings {
        jwt_secret: Some(SECRET.into()),
        token_refresh_grace: Duration::from_secs(2),
        heartbeat: Duration::from_secs(1),
        ..Settings::default()
    };
    common::start(settings, vec![token_topic(TOPIC)]).await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A subscription token for `sub` on [`TOPIC`] expiring `exp` (Unix seconds).
fn token(sub: &str, jti: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "jti": jti, "exp": exp, "subscribe": [TOPIC] }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Publishes `1`, `2`, … to [`TOPIC`] every 50 ms until stopped; counts them.
struct Publisher {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(server: &Server) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let url = format!("{}/v1/topics/{TOPIC}/messages", server.http);
        let task = tokio::spawn({
            let stop = stop.clone();
            let sent = sent.clone();
            async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let seq = sent.load(Ordering::SeqCst) + 1;
                    let response = client.post(&url).body(seq.to_string()).send().await;
                    assert_eq!(response.unwrap().status(), 201, "publish {seq}");
                    sent.store(seq, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Publisher { stop, sent, task }
    }

    /// Stops publishing; returns how many messages were published.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.sent.load(Ordering::SeqCst)
    }
}

fn seq(data: &str) -> u64 {
    data.parse()
        .unwrap_or_else(|_| panic!("a sequence number: {data}"))
}

fn expect_every_message_once(received: &[u64], published: u64) {
    assert_eq!(
        received,
        (1..=published).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(server: &Server, token: &str) -> Ws {
    let url = format!(
        "{}/v1/ws?token={token}",
        server.http.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn ws_send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .unwrap();
}

async fn next_ws(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("WebSocket frame in time")
            .expect("open")
            .unwrap();
        match frame {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            WsMessage::Close(close) => {
                return json!({
                    "type": "closed",
                    "code": close.as_ref().map(|c| u16::from(c.code)),
                    "reason": close.as_ref().map(|c| c.reason.to_string()),
                })
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_renews_its_token_in_band_across_expiry_without_losing_a_message() {
    let server = start().await;
    let mut ws = ws_connect(&server, &token("alice", "t1", unix_now() + 1)).await;
    ws_send(&mut ws, json!({ "type": "subscribe", "topic": TOPIC })).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    let publisher = Publisher::start(&server);
    let mut received = Vec::new();
    let mut refreshed = None;
    let mut warnings = 0;
    // First token: renewed after the server says it lapsed, within the grace.
    // Second: let it lapse (warned again), and read on past the first token's
    // close, then stop publishing and take the rest.
    let first_close = loop {
        let frame = next_ws(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "message" => received.push(seq(frame["data"].as_str().unwrap())),
            "token-expiring" => {
                warnings += 1;
                let close_in = frame["closeInMs"].as_u64().unwrap();
                assert!(close_in > 0 && close_in <= 2000, "{frame}");
                let second = token("alice", "t2", unix_now() + 1);
                ws_send(&mut ws, json!({ "type": "refresh", "token": second })).await;
                break Instant::now() + Duration::from_millis(close_in);
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    loop {
        let frame = next_ws(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "message" => received.push(seq(frame["data"].as_str().unwrap())),
            "refreshed" => {
                assert_eq!(frame["topics"], json!([TOPIC]), "{frame}");
                refreshed = Some(frame["expiresAt"].as_u64().unwrap());
            }
            "token-expiring" => {
                warnings += 1;
                assert_eq!(frame["expiresAt"].as_u64(), refreshed, "{frame}");
                break;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert!(
        Instant::now() > first_close,
        "the socket lived past the first token's close"
    );
    let published = publisher.stop().await;
    // The rest, then the end of the second token's grace.
    let end = loop {
        let frame = next_ws(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "message" => received.push(seq(frame["data"].as_str().unwrap())),
            "token-expired" => break frame,
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    assert_eq!(end["reason"], "expired");
    let last = end["positions"][TOPIC].as_str().unwrap();
    assert!(last.ends_with(&format!("-{published}")), "{end}");
    let close = next_ws(&mut ws).await;
    assert_eq!(close["code"], 4401, "{close}");
    assert_eq!(warnings, 2);
    expect_every_message_once(&received, published);
    let metrics = server.state.metrics.encode(0);
    for series in [
        "sidestream_push_token_refreshes_total{result=\"renewed\"} 1",
        "sidestream_push_token_stream_ends_total{transport=\"websocket\",reason=\"expired\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    eprintln!("one WebSocket, two tokens: {published} messages, none lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_checked_like_a_subscribe_and_a_bad_one_changes_nothing() {
    let server = start().await;
    let exp = unix_now() + 600;
    let mut ws = ws_connect(&server, &token("alice", "t1", exp)).await;
    ws_send(&mut ws, json!({ "type": "subscribe", "topic": TOPIC })).await;
    assert_eq!(next_ws(&mut ws).await["type"], "subscribed");
    let other_topic = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": exp + 60, "subscribe": ["account.bob"] }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (token, error) in [
        (other_topic, "forbidden"),
        (token("alice", "t0", unix_now() - 60), "unauthorized"),
        ("not-a-jwt".to_owned(), "unauthorized"),
    ] {
        ws_send(&mut ws, json!({ "type": "refresh", "token": token })).await;
        let frame = next_ws(&mut ws).await;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["error"], error, "{frame}");
    }
    ws_send(
        &mut ws,
        json!({ "type": "refresh", "topic": "prices", "token": token("alice", "t2", exp) }),
    )
    .await;
    let frame = next_ws(&mut ws).await;
    assert_eq!(
        frame["message"],
        "refresh names topic 'prices', which this socket does not subscribe to"
    );
    // Still on the first token, and still delivering.
    let id = reqwest::Client::new()
        .post(format!("{}/v1/topics/{TOPIC}/messages", server.http))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(id.status(), 201);
    let frame = next_ws(&mut ws).await;
    assert_eq!(frame["type"], "message", "{frame}");
    ws_send(
        &mut ws,
        json!({ "type": "refresh", "token": token("alice", "t3", exp + 300) }),
    )
    .await;
    let frame = next_ws(&mut ws).await;
    assert_eq!(
        frame,
        json!({ "type": "refreshed", "topics": [TOPIC], "expiresAt": exp + 300 })
    );
}

type Sse = std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;

async fn sse(server: &Server, token: &str, last_event_id: Option<&str>) -> Sse {
    let mut request = reqwest::Client::new()
        .get(format!("{}/v1/events?topic={TOPIC}", server.http))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string())),
    )
}

async fn next_sse(stream: &mut Sse) -> Option<SseEvent> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("SSE event in time")
        .map(Result::unwrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_ends_at_expiry_and_a_fresh_token_resumes_it_exactly() {
    let server = start().await;
    let first = token("alice", "t1", unix_now() + 1);
    let mut stream = sse(&server, &first, None).await;
    let publisher = Publisher::start(&server);
    let mut received = Vec::new();
    let mut last_message_id = String::new();
    let end = loop {
        let event = next_sse(&mut stream).await.expect("the stream goes on");
        match event.event.as_str() {
            "message" => {
                received.push(seq(&event.data));
                last_message_id = event.id;
            }
            "sidestream.token-expired" => break event,
            other => panic!("unexpected event {other}: {event:?}"),
        }
    };
    let data: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(data["reason"], "expired");
    assert_eq!(end.id, last_message_id, "the id of the last event");
    assert_eq!(data["lastEventId"], last_message_id.as_str());
    assert!(next_sse(&mut stream).await.is_none(), "the stream ends");
    // The old token no longer opens a stream.
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/events?topic={TOPIC}", server.http))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Messages published meanwhile are in history; a fresh token resumes.
    let second = token("alice", "t2", unix_now() + 600);
    let mut stream = sse(&server, &second, Some(&end.id)).await;
    let published = publisher.stop().await;
    while received.last() != Some(&published) {
        let event = next_sse(&mut stream).await.expect("the stream goes on");
        assert_eq!(event.event, "message", "{event:?}");
        received.push(seq(&event.data));
    }
    expect_every_message_once(&received, published);
    eprintln!("SSE across a token's end: {published} messages, none lost or repeated");
}

async fn grpc_subscribe(
    server: &Server,
    token: &str,
    from: &str,
) -> tonic::Streaming<SubscribeEvent> {
    let mut client = PushClient::connect(server.grpc.clone()).await.unwrap();
    let mut request = tonic::Request::new(SubscribeRequest {
        topics: vec![TopicPosition {
            topic: TOPIC.into(),
            from: from.into(),
        }],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.subscribe(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_ends_unauthenticated_at_expiry_with_its_resume_position() {
    let server = start().await;
    let mut stream = grpc_subscribe(&server, &token("alice", "t1", unix_now() + 1), "").await;
    let publisher = Publisher::start(&server);
    let mut received = Vec::new();
    let mut last_id = String::new();
    let status = loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("gRPC event in time");
        match event.map(|e| e.and_then(|e| e.event)) {
            Ok(Some(subscribe_event::Event::Message(message))) => {
                received.push(seq(std::str::from_utf8(&message.data).unwrap()));
                last_id = message.id;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let metadata = status.metadata();
    assert_eq!(metadata.get("sidestream-token-end").unwrap(), "expired");
    let resume = metadata.get("sidestream-resume").unwrap().to_str().unwrap();
    assert_eq!(resume, format!("{TOPIC}={last_id}"));
    let from = resume.split_once('=').unwrap().1;
    let mut stream = grpc_subscribe(&server, &token("alice", "t2", unix_now() + 600), from).await;
    let published = publisher.stop().await;
    while received.last() != Some(&published) {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("gRPC event in time")
            .unwrap()
            .and_then(|e| e.event);
        if let Some(subscribe_event::Event::Message(message)) = event {
            received.push(seq(std::str::from_utf8(&message.data).unwrap()));
        }
    }
    expect_every_message_once(&received, published);
}

#[tokio::test]
async fn an_expired_token_is_refused_at_open_saying_so() {
    let server = start().await;
    let exp = unix_now() - 60;
    let expired = token("alice", "old", exp);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events?topic={TOPIC}", server.http))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"sidestream\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let message = body["message"].as_str().unwrap();
    let expected_start = format!("the subscription token expired (exp {exp}, ");
    assert!(
        message.starts_with(&expected_start)
            && message.ends_with(" s ago); subscribe with a fresh token"),
        "{body}"
    );

    let mut ws = ws_connect(&server, &expired).await;
    ws_send(&mut ws, json!({ "type": "subscribe", "topic": TOPIC })).await;
    let frame = next_ws(&mut ws).await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["error"], "unauthorized");
    assert!(
        frame["message"]
            .as_str()
            .unwrap()
            .starts_with(&expected_start),
        "{frame}"
    );

    let mut client = PushClient::connect(server.grpc.clone()).await.unwrap();
    let mut request = tonic::Request::new(SubscribeRequest {
        topics: vec![TopicPosition {
            topic: TOPIC.into(),
            from: String::new(),
        }],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {expired}").parse().unwrap(),
    );
    let status = client.subscribe(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().starts_with(&expected_start), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_closes_its_websocket_and_spares_the_others() {
    let server = start().await;
    let exp = unix_now() + 600;
    let mut mallory = ws_connect(&server, &token("mallory", "m1", exp)).await;
    let mut alice = ws_connect(&server, &token("alice", "a1", exp)).await;
    for ws in [&mut mallory, &mut alice] {
        ws_send(ws, json!({ "type": "subscribe", "topic": TOPIC })).await;
        assert_eq!(next_ws(ws).await["type"], "subscribed");
    }
    let mut revoking = token_topic(TOPIC);
    revoking.revoked_subjects.insert("mallory".into());
    server.state.topics.apply_control_plane([revoking]);
    let frame = next_ws(&mut mallory).await;
    assert_eq!(frame["type"], "token-expired", "{frame}");
    assert_eq!(frame["reason"], "revoked");
    assert_eq!(next_ws(&mut mallory).await["code"], 4403);
    // A refresh cannot bring a revoked subject back, nor can a new socket.
    let mut again = ws_connect(&server, &token("mallory", "m2", exp)).await;
    ws_send(&mut again, json!({ "type": "subscribe", "topic": TOPIC })).await;
    let frame = next_ws(&mut again).await;
    assert_eq!(
        frame["message"],
        format!("the subscription token was revoked: its sub 'mallory' is in topic '{TOPIC}''s revokedSubjects")
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/topics/{TOPIC}/messages", server.http))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(next_ws(&mut alice).await["type"], "message");
    let metrics = server.state.metrics.encode(0);
    let series =
        "sidestream_push_token_stream_ends_total{transport=\"websocket\",reason=\"revoked\"} 1";
    assert!(metrics.contains(series), "{series} in\n{metrics}");
}
