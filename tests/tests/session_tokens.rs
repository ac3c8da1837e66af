//! Subscription tokens with real processes.
//!
//! - Revocation through the control plane: etcd holds a topic with
//!   `subscribeAuth: token`; the real control plane streams it to the real push
//!   server; two SSE subscribers hold tokens of different subjects; writing
//!   the topic again with `revokedSubjects: [mallory]` ends Mallory's stream
//!   with `sidestream.token-expired` (reason `revoked`) and Alice's goes on.
//! - A real browser: headless Chromium on the live-ticker page
//!   (examples/live-ticker/index.html) with tokens on (`tokenUrl`), against a
//!   push server whose topic needs a token. Tokens live a second (plus the
//!   server's 5 s leeway), so the page's stream ends with
//!   `sidestream.token-expired` several times while messages keep being
//!   published; each time the page fetches a fresh token and resumes from the
//!   event's id, and it ends with every message exactly once, in order.
//!
//! Tokens are HS256 JWTs minted here with the secret the push server runs with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sidestream_tests::browser::Chromium;
use sidestream_tests::etcd::Etcd;
use sidestream_tests::push::PushServer;
use sidestream_tests::{assert_eventually, binary, free_port, run_dir, wait_http_ok, Proc};

const SECRET: &str = "session-token-e2e-secret";
const WAIT: Duration = Duration::from_secs(30);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, topic: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "jti": format!("{sub}-{exp}"), "exp": exp, "subscribe": [topic] }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

type Sse = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

async fn sse(push: &PushServer, topic: &str, token: &str) -> Sse {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events?topic={topic}", push.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    Box::pin(response.bytes_stream().eventsource())
}

async fn next_sse(stream: &mut Sse) -> eventsource_stream::Event {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an SSE event in time")
        .expect("the stream goes on")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_through_the_control_plane_ends_its_open_streams() {
    const TOPIC: &str = "account.shared";
    let key = format!("/sidestream/v1/topics/{TOPIC}");
    let dir = run_dir("session-revocation").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(&key, r#"{"subscribeAuth":"token"}"#).unwrap();
    let (cp_grpc, cp_admin) = (free_port().unwrap(), free_port().unwrap());
    let mut command = Command::new(binary("sidestream-control-plane").unwrap());
    command
        .args(["--etcd-endpoints", &etcd.endpoint()])
        .args(["--prefix", "/sidestream"])
        .args(["--grpc-listen", &format!("127.0.0.1:{cp_grpc}")])
        .args(["--admin-listen", &format!("127.0.0.1:{cp_admin}")])
        .args(["--debounce", "5ms"])
        .env("RUST_LOG", "info");
    let control_plane = Proc::spawn("control-plane", &dir, command).unwrap();
    wait_http_ok(&format!("http://127.0.0.1:{cp_admin}/readyz"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", control_plane.log()));
    let push = PushServer::start(
        "push",
        &dir,
        &[
            "--control-plane",
            &format!("http://127.0.0.1:{cp_grpc}"),
            "--jwt-secret",
            SECRET,
            "--topics",
            "configured",
        ],
    )
    .await
    .unwrap();
    assert_eventually!(WAIT, "the topic reaches the push server", async {
        let topics: Value = reqwest::get(format!("{}/v1/topics", push.url()))
            .await?
            .json()
            .await?;
        anyhow::ensure!(topics["configured"] == json!([TOPIC]), "{topics}");
        Ok(())
    });

    let exp = unix_now() + 3600;
    let mut mallory = sse(&push, TOPIC, &token("mallory", TOPIC, exp)).await;
    let mut alice = sse(&push, TOPIC, &token("alice", TOPIC, exp)).await;
    let first = push.publish(TOPIC, "before").await.unwrap();
    for stream in [&mut mallory, &mut alice] {
        let event = next_sse(stream).await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (first.as_str(), "before")
        );
    }

    let written = Instant::now();
    etcd.put(
        &key,
        r#"{"subscribeAuth":"token","revokedSubjects":["mallory"]}"#,
    )
    .unwrap();
    let end = next_sse(&mut mallory).await;
    let took = written.elapsed();
    assert_eq!(end.event, "sidestream.token-expired", "{end:?}");
    let data: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(data, json!({ "reason": "revoked", "lastEventId": first }));
    assert_eq!(end.id, first, "the id of the last message");
    assert!(
        tokio::time::timeout(WAIT, mallory.next())
            .await
            .unwrap()
            .is_none(),
        "Mallory's stream ends"
    );
    eprintln!("etcd put → Mallory's stream ended: {took:?}");

    // Mallory cannot come back; Alice never left.
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/events?topic={TOPIC}", push.url()))
        .bearer_auth(token("mallory", TOPIC, exp + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["message"],
        format!("the subscription token was revoked: its sub 'mallory' is in topic '{TOPIC}''s revokedSubjects")
    );
    let second = push.publish(TOPIC, "after").await.unwrap();
    let event = next_sse(&mut alice).await;
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (second.as_str(), "after")
    );
    drop(control_plane);
}

/// The live-ticker page and the token endpoint of "the application" (in a
/// deployment, its backend mints subscription tokens for its users).
struct PageServer {
    url: String,
    minted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn page_server(topic: &'static str, lifetime: u64) -> PageServer {
    use axum::routing::get;
    let page = std::fs::read_to_string(
        sidestream_tests::workspace_root().join("examples/live-ticker/index.html"),
    )
    .unwrap();
    let minted = Arc::new(AtomicU64::new(0));
    let counter = minted.clone();
    let app = axum::Router::new()
        .route("/", get(move || async move { axum::response::Html(page) }))
        .route(
            "/token",
            get(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({ "token": token("browser", topic, unix_now() + lifetime) }))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    PageServer { url, minted, task }
}

/// The page's record: seq of every message received in order, and renewals.
async fn page_state(browser: &Chromium) -> anyhow::Result<(Vec<u64>, u64, u64)> {
    let text = browser
        .evaluate("JSON.stringify(window.sidestreamTicker || null)")
        .await?;
    let state: Value = serde_json::from_str(text.as_str().unwrap_or("null"))?;
    anyhow::ensure!(state.is_object(), "the page has no ticker state yet");
    let seqs = state["received"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["data"].as_str().unwrap_or("").parse::<u64>().unwrap_or(0))
        .collect();
    Ok((
        seqs,
        state["renewals"].as_u64().unwrap_or(0),
        state["opens"].as_u64().unwrap_or(0),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_ticker_page_renews_its_token_across_expiry_and_gets_every_message_once() {
    const TOPIC: &str = "ticker-tokens";
    let dir = run_dir("browser-session-tokens").unwrap();
    std::fs::write(
        dir.join("topics.yaml"),
        format!("- kind: TopicSettings\n  name: {TOPIC}\n  spec:\n    subscribeAuth: token\n"),
    )
    .unwrap();
    let topics = dir.join("topics.yaml");
    let push = PushServer::start(
        "push",
        &dir,
        &["--config", topics.to_str().unwrap(), "--jwt-secret", SECRET],
    )
    .await
    .unwrap();
    let pages = page_server(TOPIC, 1).await;
    let url = format!(
        "{}/?topic={TOPIC}&push={}&tokenUrl=/token",
        pages.url,
        push.url()
    );
    let browser = Chromium::open(&url, &dir).await.unwrap();
    assert_eventually!(WAIT, "the page's EventSource is open", async {
        let (_, _, opens) = page_state(&browser).await?;
        anyhow::ensure!(opens >= 1, "not connected yet");
        Ok(())
    });

    // Publish until the page has renewed its token twice, then a few more.
    let client = reqwest::Client::new();
    let publish = |seq: u64| {
        let client = client.clone();
        let url = format!("{}/v1/topics/{TOPIC}/messages", push.url());
        async move {
            let response = client.post(url).body(seq.to_string()).send().await.unwrap();
            assert_eq!(response.status(), 201, "publish {seq}");
        }
    };
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        published += 1;
        publish(published).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, renewals, _) = page_state(&browser).await.unwrap();
        if renewals >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page renewed its token {renewals} times in 60 s"
        );
    }
    for _ in 0..10 {
        published += 1;
        publish(published).await;
    }
    let (seqs, renewals, opens) =
        assert_eventually!(WAIT, "every message reaches the page", async {
            let (seqs, renewals, opens) = page_state(&browser).await?;
            anyhow::ensure!(
                seqs.len() as u64 >= published,
                "{} of {published}: {seqs:?}",
                seqs.len()
            );
            Ok((seqs, renewals, opens))
        });
    assert_eq!(
        seqs,
        (1..=published).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
    assert!(opens >= 3, "a new stream per token: {opens} opened");
    let minted = pages.minted.load(Ordering::SeqCst);
    assert!(minted >= 3, "a fresh token per stream: {minted} minted");
    eprintln!(
        "the page got {published} messages in order across {renewals} token renewals ({opens} streams, {minted} tokens)"
    );
    browser
        .evaluate("window.sidestreamTicker.received.length")
        .await
        .unwrap();
}
