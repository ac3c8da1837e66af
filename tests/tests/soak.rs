//! The soak: the whole stack (a 3-member etcd cluster, Redis, the limiter,
//! the control plane, two push servers on the Redis broker, two Envoys with
//! the filter) under steady publishing on several topics, with subscribers over
//! SSE, WebSocket and gRPC joining and leaving (resuming from their last id),
//! config changes written to etcd through `sidestreamctl`, while processes
//! are SIGKILLed and started again at random (a seeded RNG; the seed is
//! printed). At the end:
//!
//! - every subscriber's sequence of every topic is complete from where it
//!   started to the last published message, or a reset covers each gap; no
//!   message twice, none out of order, none altered (see
//!   `sidestream_tests::soak::ledger` for what "published" and "lost" mean);
//! - every config change reached every data plane before the next one was
//!   written: every Envoy's `sidestream.config_version` and the ACK of every
//!   filter VM and both push servers at the control plane's `/v1/clients`;
//! - every process came back after each kill, and its RSS (sampled from
//!   /proc twice a second) stayed under its bound.
//!
//! Environment: `SOAK_SECONDS` (60; `make soak` runs 600), `SOAK_SEED`
//! (random), `SOAK_REDIS_AOF` (1: Redis with `appendfsync always`; 0: no
//! persistence, so a killed Redis loses history and subscribers must get
//! resets), `SOAK_PUBLISH_INTERVAL_MS` (100 per topic).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sidestream_proto::push::v1::{
    push_client::PushClient, subscribe_event, PublishRequest, SubscribeRequest, TopicPosition,
};
use sidestream_tests::soak::ledger::{self, split_stream_id, Id, Published, Seen, Verdict};
use sidestream_tests::soak::supervisor::{
    envoy_config_version, Component, SoakStack, SoakStackOptions,
};
use sidestream_tests::soak::Rng;
use tokio::sync::watch;

const TOPICS: [&str; 4] = ["soak-a", "soak-b", "soak-c", "soak-d"];
const ENVOY_CONCURRENCY: u32 = 2;
/// Envoys in front of the push servers; publishers and subscribers are spread
/// over them.
const ENVOYS: usize = 2;

/// RSS bounds (MiB) per process kind, checked against the peak of every
/// sample of every incarnation: about three times what a 600 s run peaked at
/// (docs/operations.md), so growth shows and noise does not. Debug builds of
/// our daemons; Envoy and etcd as packaged.
fn rss_bound_mib(name: &str) -> u64 {
    match name {
        n if n.starts_with("etcd") => 160,
        "redis" => 64,
        "limiter" | "control-plane" => 64,
        n if n.starts_with("push") => 96,
        n if n.starts_with("envoy") => 320,
        _ => 64,
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}='{text}' is not a whole number: {e}")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone)]
struct Settings {
    seconds: u64,
    seed: u64,
    redis_aof: bool,
    publish_interval: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let aof = env_u64("SOAK_REDIS_AOF", 1);
        assert!(aof <= 1, "SOAK_REDIS_AOF must be 0 or 1, not {aof}");
        Settings {
            seconds: env_u64("SOAK_SECONDS", 60),
            seed: env_u64("SOAK_SEED", Rng::seed_from_clock() % 1_000_000_000),
            redis_aof: aof == 1,
            publish_interval: Duration::from_millis(env_u64("SOAK_PUBLISH_INTERVAL_MS", 100)),
        }
    }
}

fn secs(since: Instant) -> String {
    format!("{:7.1}s", since.elapsed().as_secs_f64())
}

// --- config documents -------------------------------------------------------

fn topic_doc(topic: &str) -> Value {
    json!({
        "kind": "TopicSettings",
        "name": topic,
        "spec": { "historySize": 200000, "historyMaxAgeSeconds": 7200, "maxMessageBytes": 1024 }
    })
}

/// Wins over the seeded release policy (priority 1000): `percent` of users
/// (by `x-user-id`) to canary, for SSE, WebSocket and gRPC alike.
fn grey_doc(percent: u64) -> Value {
    json!({
        "kind": "ReleasePolicy",
        "name": "soak-grey",
        "spec": {
            "match": { "hosts": ["*"], "pathPrefixes": ["/v1/", "/sidestream.push.v1."] },
            "priority": 1000,
            "tagHeader": "x-sidestream-group",
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "trustClientTag": false,
            "rules": [
                { "type": "percent", "percent": percent, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" }
            ]
        }
    })
}

/// The seeded mesh-scoped `tenants` limits with other numbers (always
/// above what one soak subscriber, its own tenant, needs).
fn tenants_doc(per_second: u64, max_concurrent: u64) -> Value {
    json!({
        "kind": "StreamLimitPolicy",
        "name": "tenants",
        "spec": {
            "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
            "priority": 0,
            "streamKinds": ["sse", "websocket"],
            "key": { "source": "header", "name": "x-tenant-id" },
            "newStreamsPerSecond": per_second,
            "burst": per_second,
            "maxConcurrent": max_concurrent,
            "failMode": "open",
            "scope": "mesh",
            "mesh": { "fallback": "local", "timeoutMs": 50 }
        }
    })
}

// --- config convergence -----------------------------------------------------

/// Whether revision `revision` reached every data plane: every Envoy's
/// gauge, and at the control plane every filter VM (of every Envoy at least
/// one per worker plus the main thread's) and both push servers ACKed a
/// version at or past it.
async fn converged(http: &reqwest::Client, stack: &SoakStack, revision: i64) -> anyhow::Result<()> {
    for i in 0..ENVOYS {
        let gauge = envoy_config_version(http, &stack.envoy_admin_url(i)).await?;
        anyhow::ensure!(
            gauge >= revision,
            "envoy-{}'s config_version is {gauge}",
            i + 1
        );
    }
    let clients: Vec<Value> = http
        .get(format!("{}/v1/clients", stack.control_plane_admin_url()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let acked = |client: &Value| -> i64 {
        client["ackedVersion"]
            .as_str()
            .and_then(|v| v.split('-').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(-1)
    };
    let mut filters = [0u32; ENVOYS];
    let mut pushes = 0;
    for client in &clients {
        let kind = client["clientKind"].as_str().unwrap_or("");
        anyhow::ensure!(
            acked(client) >= revision,
            "{kind} {} ACKed {}",
            client["nodeId"],
            client["ackedVersion"]
        );
        match kind {
            "filter" => {
                // `<plugin nodeId>/<Envoy node id>/vm-<n>`
                let node = client["nodeId"].as_str().unwrap_or("");
                for (i, count) in filters.iter_mut().enumerate() {
                    if node.contains(&format!("/sidestream-soak-{}/", i + 1)) {
                        *count += 1;
                    }
                }
            }
            "push-server" => pushes += 1,
            _ => {}
        }
    }
    for (i, count) in filters.iter().enumerate() {
        anyhow::ensure!(
            *count > ENVOY_CONCURRENCY,
            "{count} filter VMs of envoy-{} connected, expected {}",
            i + 1,
            ENVOY_CONCURRENCY + 1
        );
    }
    anyhow::ensure!(pushes >= 2, "{pushes} push servers connected");
    Ok(())
}

async fn wait_converged(
    stack: &SoakStack,
    revision: i64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match converged(&http, stack, revision).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(error) => last = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("revision {revision} not on every data plane within {timeout:?}: {last}")
}

#[derive(Debug, Default)]
struct ConfigReport {
    written: u64,
    converged: u64,
    slowest: Duration,
    failures: Vec<String>,
}

/// Writes a config change every few seconds (a release percentage or the
/// tenants' limits) and waits until it is on every data plane before the next.
async fn change_config(
    stack: Arc<SoakStack>,
    mut rng: Rng,
    until: Instant,
    start: Instant,
) -> ConfigReport {
    let mut report = ConfigReport::default();
    let mut n = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(1000, 4000)).await;
        n += 1;
        let (file, key, document) = if n % 2 == 1 {
            let percent = rng.range(0, 100);
            (
                "soak-grey",
                "/sidestream/v1/releases/soak-grey",
                grey_doc(percent),
            )
        } else {
            let per_second = rng.range(5, 20);
            let cap = rng.range(20, 60);
            (
                "tenants",
                "/sidestream/v1/stream-limits/tenants",
                tenants_doc(per_second, cap),
            )
        };
        // A write may meet an etcd member that was just killed: retry.
        let stack2 = stack.clone();
        let written = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let attempt = stack2
                    .apply(file, &document)
                    .and_then(|()| stack2.mod_revision(key));
                match attempt {
                    Ok(revision) => return Ok(revision),
                    Err(error) if Instant::now() > deadline => return Err(error),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        })
        .await
        .expect("config writer");
        let revision = match written {
            Ok(revision) => revision,
            Err(error) => {
                report.failures.push(format!("write {file}: {error:#}"));
                continue;
            }
        };
        report.written += 1;
        match wait_converged(&stack, revision, Duration::from_secs(120)).await {
            Ok(took) => {
                report.converged += 1;
                report.slowest = report.slowest.max(took);
                println!(
                    "{} config {file} revision {revision} on every data plane in {took:.1?}",
                    secs(start)
                );
            }
            Err(error) => {
                println!("{} config {file}: {error:#}", secs(start));
                report.failures.push(format!("{error:#}"));
            }
        }
    }
    report
}

// --- chaos ------------------------------------------------------------------

#[derive(Debug, Default)]
struct ChaosReport {
    failures: Vec<String>,
}

/// Kills one process at a time (SIGKILL), leaves it down for up to 2 s,
/// starts it again and waits until it is ready; victims come in shuffled
/// rounds so every kind is hit in turn.
async fn chaos(
    components: Vec<Arc<Component>>,
    mut rng: Rng,
    until: Instant,
    start: Instant,
) -> ChaosReport {
    let mut report = ChaosReport::default();
    let kinds = [
        "push-stable",
        "push-canary",
        "control-plane",
        "etcd",
        "redis",
        "limiter",
        "envoy",
    ];
    let mut round: Vec<&str> = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(1500, 4000)).await;
        if Instant::now() >= until {
            break;
        }
        if round.is_empty() {
            round = kinds.to_vec();
            rng.shuffle(&mut round);
        }
        let kind = round.pop().expect("a victim");
        let name = match kind {
            "etcd" => format!("etcd-{}", rng.range(1, 3)),
            "envoy" => format!("envoy-{}", rng.range(1, ENVOYS as u64)),
            _ => kind.to_owned(),
        };
        let component = components
            .iter()
            .find(|c| c.name == name)
            .expect("component")
            .clone();
        component.kill();
        let down = rng.millis(0, 2000);
        println!("{} kill -9 {name}; down for {down:.1?}", secs(start));
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        let mut outcome = component.start(Duration::from_secs(90)).await;
        if outcome.is_err() {
            // One more try before calling it a process that does not recover.
            component.kill();
            outcome = component.start(Duration::from_secs(90)).await;
        }
        match outcome {
            Ok(()) => println!(
                "{} {name} ready again after {:.1?}",
                secs(start),
                restarted.elapsed()
            ),
            Err(error) => {
                println!("{} {name} did not recover: {error:#}", secs(start));
                report
                    .failures
                    .push(format!("{name} did not recover: {error:#}"));
                break;
            }
        }
    }
    report
}

// --- publishers -------------------------------------------------------------

#[derive(Debug, Default)]
struct PublisherReport {
    published: Published,
    failed_attempts: u64,
    duplicate_answers: u64,
    abandoned: u64,
}

enum PublishVia {
    Http(reqwest::Client),
    Grpc(PushClient<tonic::transport::Channel>),
}

async fn publish_once(
    via: &mut PublishVia,
    envoy: &str,
    topic: &str,
    key: &str,
    data: &str,
    user: &str,
) -> anyhow::Result<(Id, bool)> {
    match via {
        PublishVia::Http(http) => {
            let response = http
                .post(format!("{envoy}/v1/topics/{topic}/messages"))
                .header("idempotency-key", key)
                .header("x-user-id", user)
                .header("content-type", "text/plain")
                .body(data.to_owned())
                .send()
                .await?;
            let status = response.status();
            let text = response.text().await?;
            anyhow::ensure!(
                status == 201 || status == 200,
                "publish answered {status}: {text}"
            );
            let answer: Value = serde_json::from_str(&text)?;
            let id = answer["id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no id in {text}"))?;
            Ok((Id::parse(id)?, answer["duplicate"] == true))
        }
        PublishVia::Grpc(client) => {
            let mut request = tonic::Request::new(PublishRequest {
                topic: topic.to_owned(),
                data: data.as_bytes().to_vec().into(),
                idempotency_key: key.to_owned(),
                ..PublishRequest::default()
            });
            request.metadata_mut().insert("x-user-id", user.parse()?);
            request.set_timeout(Duration::from_secs(5));
            let answer = client.publish(request).await?.into_inner();
            Ok((Id::parse(&answer.id)?, answer.duplicate))
        }
    }
}

/// Publishes `<topic>:<n>` every interval, one at a time, each under its own
/// idempotency key, retrying a failed publish with the same key (for up to a
/// minute; then it is abandoned and not counted). The first one (n = 0) is
/// the genesis every subscriber starts after.
async fn publisher(
    topic: &'static str,
    envoy: String,
    grpc: bool,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    genesis: tokio::sync::oneshot::Sender<Id>,
    mut rng: Rng,
) -> PublisherReport {
    let mut report = PublisherReport::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut via = if grpc {
        let channel = tonic::transport::Channel::from_shared(envoy.clone())
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        PublishVia::Grpc(PushClient::new(channel))
    } else {
        PublishVia::Http(http)
    };
    let mut genesis = Some(genesis);
    let run = format!("{:x}", rng.next_u64());
    for n in 0u64.. {
        if n > 0 && *stop.borrow() {
            break;
        }
        let key = format!("soak-{run}-{topic}-{n}");
        let data = format!("{topic}:{n}");
        let first_try = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let user = format!("publisher-{}", rng.range(0, 999));
            match publish_once(&mut via, &envoy, topic, &key, &data, &user).await {
                Ok((id, duplicate)) => {
                    if duplicate {
                        report.duplicate_answers += 1;
                    }
                    if let Some(tx) = genesis.take() {
                        let _ = tx.send(id.clone());
                    }
                    report.published.push(id, data.clone());
                    break;
                }
                Err(_) if first_try.elapsed() < Duration::from_secs(60) => {
                    report.failed_attempts += 1;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => {
                    assert!(
                        genesis.is_none(),
                        "the genesis publish to {topic} failed: {error:#}"
                    );
                    report.abandoned += 1;
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
    report
}

// --- subscribers ------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Sse,
    WebSocket,
    Grpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::WebSocket => "WebSocket",
            Transport::Grpc => "gRPC",
        }
    }
}

/// Where the subscribers must get to (set once publishing stopped) and the
/// order to give up.
#[derive(Default)]
struct Finish {
    targets: Mutex<Option<HashMap<String, Id>>>,
    give_up: AtomicBool,
}

struct Subscriber {
    name: String,
    transport: Transport,
    user: String,
    topics: Vec<&'static str>,
    start: Vec<Id>,
    positions: Vec<Id>,
    /// The SSE stream id to resume with (all topics' positions).
    sse_last_id: String,
    seen: Vec<Vec<Seen>>,
    sessions: u64,
    leaves: u64,
    broken: u64,
    refused: u64,
    caught_up: bool,
}

enum SessionEnd {
    Left,
    Done,
}

impl Subscriber {
    fn topic_index(&self, topic: &str) -> anyhow::Result<usize> {
        self.topics.iter().position(|t| *t == topic).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an event of topic '{topic}' it did not subscribe",
                self.name
            )
        })
    }

    fn message(&mut self, topic: &str, id: Id, data: String) -> anyhow::Result<()> {
        let i = self.topic_index(topic)?;
        self.positions[i] = id.clone();
        self.seen[i].push(Seen::Message { id, data });
        Ok(())
    }

    fn reset(&mut self, topic: &str, position: Id, reason: String) -> anyhow::Result<()> {
        let i = self.topic_index(topic)?;
        self.positions[i] = position.clone();
        self.seen[i].push(Seen::Reset { position, reason });
        Ok(())
    }

    /// Whether every topic reached its target (after publishing stopped).
    fn done(&self, finish: &Finish) -> bool {
        let targets = finish.targets.lock().unwrap();
        let Some(targets) = targets.as_ref() else {
            return false;
        };
        self.topics
            .iter()
            .zip(&self.positions)
            .all(|(topic, position)| {
                targets
                    .get(*topic)
                    .is_none_or(|t| t.epoch == position.epoch && position.seq >= t.seq)
            })
    }

    fn finishing(&self, finish: &Finish) -> bool {
        finish.targets.lock().unwrap().is_some()
    }
}

fn request_headers(sub: &Subscriber) -> [(&'static str, String); 2] {
    [
        ("x-tenant-id", format!("soak-{}", sub.name)),
        ("x-user-id", sub.user.clone()),
    ]
}

/// Waits for the next item of a session, leaving when its time is up (unless
/// the soak is finishing) and checking for the end twice a second.
async fn next_or_leave<T>(
    sub: &Subscriber,
    finish: &Finish,
    leave_at: tokio::time::Instant,
    next: impl std::future::Future<Output = T>,
) -> Result<T, SessionEnd> {
    tokio::pin!(next);
    loop {
        if sub.done(finish) || finish.give_up.load(Ordering::SeqCst) {
            return Err(SessionEnd::Done);
        }
        let tick = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            item = &mut next => return Ok(item),
            _ = tick => {
                if !sub.finishing(finish) && tokio::time::Instant::now() >= leave_at {
                    return Err(SessionEnd::Left);
                }
            }
        }
    }
}

async fn sse_session(
    sub: &mut Subscriber,
    envoy: &str,
    finish: &Finish,
    leave_at: tokio::time::Instant,
) -> anyhow::Result<SessionEnd> {
    let query: Vec<String> = sub.topics.iter().map(|t| format!("topic={t}")).collect();
    let url = format!("{envoy}/v1/events?{}&eventName=topic", query.join("&"));
    let mut request = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .header("last-event-id", &sub.sse_last_id);
    for (name, value) in request_headers(sub) {
        request = request.header(name, value);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), request.send()).await??;
    let status = response.status();
    if status == 429 {
        sub.refused += 1;
    }
    anyhow::ensure!(status == 200, "SSE answered {status}");
    sub.sessions += 1;
    let mut events = response.bytes_stream().eventsource();
    loop {
        let event = match next_or_leave(sub, finish, leave_at, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(error))) => anyhow::bail!("SSE stream broke: {error}"),
            Ok(None) => anyhow::bail!("SSE stream ended"),
            Err(end) => return Ok(end),
        };
        match event.event.as_str() {
            "sidestream.reset" => {
                let data: Value = serde_json::from_str(&event.data)?;
                let topic = data["topic"].as_str().unwrap_or_default().to_owned();
                let position = Id::parse(data["position"].as_str().unwrap_or_default())?;
                let reason = data["reason"].as_str().unwrap_or_default().to_owned();
                sub.reset(&topic, position, reason)?;
                if !event.id.is_empty() {
                    sub.sse_last_id = event.id.clone();
                }
            }
            name if name.starts_with("sidestream.") => {
                anyhow::bail!("SSE {name}: {}", event.data)
            }
            name => {
                let topic = name.split(':').next().unwrap_or(name);
                let i = sub.topic_index(topic)?;
                let positions = split_stream_id(&event.id)?;
                let id = positions.get(i).cloned().flatten().ok_or_else(|| {
                    anyhow::anyhow!("SSE id '{}' has no position for {topic}", event.id)
                })?;
                sub.message(topic, id, event.data.clone())?;
                sub.sse_last_id = event.id.clone();
            }
        }
    }
}

async fn ws_session(
    sub: &mut Subscriber,
    envoy_port: u16,
    finish: &Finish,
    leave_at: tokio::time::Instant,
) -> anyhow::Result<SessionEnd> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = format!("ws://127.0.0.1:{envoy_port}/v1/ws").into_client_request()?;
    for (name, value) in request_headers(sub) {
        request.headers_mut().insert(name, value.parse()?);
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await?;
    let (mut ws, _) = match connected {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            if response.status() == 429 {
                sub.refused += 1;
            }
            anyhow::bail!("WebSocket upgrade answered {}", response.status());
        }
        Err(error) => return Err(error.into()),
    };
    sub.sessions += 1;
    for (topic, from) in sub.topics.iter().zip(&sub.positions) {
        let frame = json!({ "type": "subscribe", "topic": topic, "from": from.to_string() });
        ws.send(Message::text(frame.to_string())).await?;
    }
    loop {
        let frame = match next_or_leave(sub, finish, leave_at, ws.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) => anyhow::bail!("WebSocket broke: {error}"),
            Ok(None) => anyhow::bail!("WebSocket ended"),
            Err(end) => {
                let _ = ws.close(None).await;
                return Ok(end);
            }
        };
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(close) => anyhow::bail!("WebSocket closed: {close:?}"),
            _ => continue,
        };
        let value: Value = serde_json::from_str(text.as_str())?;
        let topic = value["topic"].as_str().unwrap_or_default().to_owned();
        match value["type"].as_str().unwrap_or_default() {
            "message" => {
                let id = Id::parse(value["id"].as_str().unwrap_or_default())?;
                let data = value["data"].as_str().unwrap_or_default().to_owned();
                sub.message(&topic, id, data)?;
            }
            "reset" => {
                let position = Id::parse(value["position"].as_str().unwrap_or_default())?;
                let reason = value["reason"].as_str().unwrap_or_default().to_owned();
                sub.reset(&topic, position, reason)?;
            }
            "subscribed" => {}
            other => anyhow::bail!("WebSocket {other} frame: {text}"),
        }
    }
}

async fn grpc_session(
    sub: &mut Subscriber,
    envoy: &str,
    finish: &Finish,
    leave_at: tokio::time::Instant,
) -> anyhow::Result<SessionEnd> {
    let channel = tokio::time::timeout(
        Duration::from_secs(10),
        tonic::transport::Channel::from_shared(envoy.to_owned())?.connect(),
    )
    .await??;
    let mut client = PushClient::new(channel);
    let mut request = tonic::Request::new(SubscribeRequest {
        topics: sub
            .topics
            .iter()
            .zip(&sub.positions)
            .map(|(topic, from)| TopicPosition {
                topic: (*topic).to_owned(),
                from: from.to_string(),
            })
            .collect(),
    });
    for (name, value) in request_headers(sub) {
        request.metadata_mut().insert(name, value.parse()?);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client.subscribe(request)).await?;
    let mut events = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::ResourceExhausted {
                sub.refused += 1;
            }
            anyhow::bail!("gRPC subscribe: {status}");
        }
    };
    sub.sessions += 1;
    loop {
        let event = match next_or_leave(sub, finish, leave_at, events.message()).await {
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) => anyhow::bail!("gRPC stream ended"),
            Ok(Err(status)) => anyhow::bail!("gRPC stream: {status}"),
            Err(end) => return Ok(end),
        };
        match event.event {
            Some(subscribe_event::Event::Message(m)) => {
                let data = String::from_utf8_lossy(&m.data).into_owned();
                sub.message(&m.topic, Id::parse(&m.id)?, data)?;
            }
            Some(subscribe_event::Event::Reset(r)) => {
                sub.reset(&r.topic, Id::parse(&r.position)?, r.reason)?;
            }
            _ => {}
        }
    }
}

/// Subscribes, stays for a random while, leaves, comes back with its last
/// positions; a stream that breaks (its server, Envoy or Redis killed) is
/// resumed the same way after a short pause.
async fn subscriber(
    mut sub: Subscriber,
    envoy_port: u16,
    finish: Arc<Finish>,
    mut rng: Rng,
) -> Subscriber {
    let envoy = format!("http://127.0.0.1:{envoy_port}");
    let mut pause = Duration::from_millis(200);
    loop {
        if sub.done(&finish) {
            sub.caught_up = true;
            break;
        }
        if finish.give_up.load(Ordering::SeqCst) {
            break;
        }
        let leave_at = tokio::time::Instant::now() + rng.millis(3000, 20000);
        let outcome = match sub.transport {
            Transport::Sse => sse_session(&mut sub, &envoy, &finish, leave_at).await,
            Transport::WebSocket => ws_session(&mut sub, envoy_port, &finish, leave_at).await,
            Transport::Grpc => grpc_session(&mut sub, &envoy, &finish, leave_at).await,
        };
        match outcome {
            Ok(SessionEnd::Left) => {
                sub.leaves += 1;
                pause = Duration::from_millis(200);
                tokio::time::sleep(rng.millis(0, 1500)).await;
            }
            Ok(SessionEnd::Done) => {}
            Err(_) => {
                sub.broken += 1;
                tokio::time::sleep(pause + rng.millis(0, 200)).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
    sub
}

// --- the soak ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_killed_and_nothing_lost() {
    let settings = Settings::from_env();
    println!(
        "soak: seed {} (SOAK_SEED={} replays the kills), {} s, Redis {}",
        settings.seed,
        settings.seed,
        settings.seconds,
        if settings.redis_aof {
            "with AOF (appendfsync always)"
        } else {
            "without persistence"
        }
    );
    let mut rng = Rng::new(settings.seed);
    let dir = sidestream_tests::run_dir("soak").expect("run folder");
    let stack = Arc::new(
        SoakStack::start(
            &dir,
            &SoakStackOptions {
                redis_aof: settings.redis_aof,
                envoy_concurrency: ENVOY_CONCURRENCY,
                envoys: ENVOYS,
            },
        )
        .await
        .expect("the stack starts"),
    );
    println!("soak: stack up, logs in {}", stack.logs_dir().display());

    // Topics with history enough for every resume, and the release policy
    // the config changes move; on every data plane before publishing.
    let setup = {
        let stack = stack.clone();
        tokio::task::spawn_blocking(move || {
            for topic in TOPICS {
                stack.apply(&format!("topic-{topic}"), &topic_doc(topic))?;
            }
            stack.apply("soak-grey", &grey_doc(50))?;
            stack.mod_revision("/sidestream/v1/releases/soak-grey")
        })
        .await
        .expect("setup")
        .expect("topics and policy applied")
    };
    wait_converged(&stack, setup, Duration::from_secs(60))
        .await
        .expect("the soak's config reaches every data plane");

    // Memory, twice a second, of whatever incarnation runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let components = stack.components.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                for component in &components {
                    component.sample_rss();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publishers = Vec::new();
    let mut genesis = Vec::new();
    for (i, topic) in TOPICS.iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        genesis.push(rx);
        publishers.push(tokio::spawn(publisher(
            topic,
            stack.envoy_url(i % ENVOYS),
            i % 2 == 1,
            settings.publish_interval,
            stop_rx.clone(),
            tx,
            Rng::new(rng.next_u64()),
        )));
    }
    let mut start_ids = HashMap::new();
    for (topic, rx) in TOPICS.iter().zip(genesis) {
        start_ids.insert(*topic, rx.await.expect("genesis id"));
    }

    // Nine subscribers, three per transport, on two or three topics each.
    let finish = Arc::new(Finish::default());
    let mut subscribers = Vec::new();
    for (i, transport) in [Transport::Sse, Transport::WebSocket, Transport::Grpc]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let count = 2 + i % 2;
        let topics: Vec<&'static str> =
            (0..count).map(|k| TOPICS[(i + k) % TOPICS.len()]).collect();
        let start: Vec<Id> = topics.iter().map(|t| start_ids[t].clone()).collect();
        let sub = Subscriber {
            name: format!("{}-{i}", transport.name().to_lowercase()),
            transport,
            user: format!("user-{}", rng.next_u64()),
            sse_last_id: start
                .iter()
                .map(Id::to_string)
                .collect::<Vec<_>>()
                .join("."),
            positions: start.clone(),
            seen: vec![Vec::new(); topics.len()],
            start,
            topics,
            sessions: 0,
            leaves: 0,
            broken: 0,
            refused: 0,
            caught_up: false,
        };
        subscribers.push(tokio::spawn(subscriber(
            sub,
            stack.envoy_ports[i % ENVOYS].0,
            finish.clone(),
            Rng::new(rng.next_u64()),
        )));
    }

    let until = started + Duration::from_secs(settings.seconds);
    let chaos_task = tokio::spawn(chaos(
        stack.components.clone(),
        Rng::new(rng.next_u64()),
        until,
        started,
    ));
    let config_task = tokio::spawn(change_config(
        stack.clone(),
        Rng::new(rng.next_u64()),
        until,
        started,
    ));
    let chaos_report = chaos_task.await.expect("chaos");
    let config_report = config_task.await.expect("config changes");

    // Everything up again, then publishing stops and subscribers catch up.
    for component in &stack.components {
        if let Err(error) = component.wait_ready(Duration::from_secs(60)).await {
            panic!("{} is not up at the end: {error:#}", component.name);
        }
    }
    stop_tx.send(true).expect("stop publishers");
    let mut published: BTreeMap<&str, PublisherReport> = BTreeMap::new();
    for (topic, task) in TOPICS.iter().zip(publishers) {
        published.insert(topic, task.await.expect("publisher"));
    }
    println!(
        "{} publishing stopped; subscribers catching up",
        secs(started)
    );
    *finish.targets.lock().unwrap() = Some(
        published
            .iter()
            .filter_map(|(topic, report)| {
                Some(((*topic).to_owned(), report.published.last()?.clone()))
            })
            .collect(),
    );
    let catch_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < catch_up && subscribers.iter().any(|s| !s.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finish.give_up.store(true, Ordering::SeqCst);
    let mut subs = Vec::new();
    for task in subscribers {
        subs.push(task.await.expect("subscriber"));
    }
    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let elapsed = started.elapsed();

    // --- the verdict ---------------------------------------------------------
    let mut problems: Vec<String> = Vec::new();
    // Every subscriber's sequences, compactly, next to the logs.
    let mut account = String::new();
    for sub in &subs {
        for (i, topic) in sub.topics.iter().enumerate() {
            account.push_str(&format!(
                "{} {topic}: {}\n",
                sub.name,
                ledger::summarize(&sub.start[i], &sub.seen[i])
            ));
        }
    }
    std::fs::write(stack.dir.join("sequences.txt"), account).expect("sequences.txt");
    println!(
        "\nsoak: seed {}, {:.0} s of chaos ({:.0} s in all), Redis {}",
        settings.seed,
        settings.seconds,
        elapsed.as_secs_f64(),
        if settings.redis_aof {
            "AOF appendfsync always"
        } else {
            "no persistence"
        }
    );
    println!("\n| topic | published (acknowledged) | via | failed attempts (retried) | abandoned | answered duplicate |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    for (i, (topic, report)) in published.iter().enumerate() {
        println!(
            "| {topic} | {} | {} | {} | {} | {} |",
            report.published.messages.len() - 1,
            if i % 2 == 1 { "gRPC" } else { "HTTP" },
            report.failed_attempts,
            report.abandoned,
            report.duplicate_answers
        );
    }
    println!("\n| subscriber | topics | sessions | left and resumed | broken and resumed | delivered | resets | reset-covered | lost | duplicates | other faults |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut totals = Verdict::default();
    let mut republished = 0usize;
    let mut reset_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for sub in &subs {
        let mut row = Verdict::default();
        let mut faults = Vec::new();
        for (i, topic) in sub.topics.iter().enumerate() {
            let mut verdict =
                ledger::check(&sub.start[i], &sub.seen[i], &published[topic].published);
            // Without persistence a restarted Redis has forgotten the
            // idempotency keys too: a publish retried across it may be stored
            // twice. Expected there (and counted); a fault with the AOF.
            if !settings.redis_aof {
                republished += std::mem::take(&mut verdict.republished).len();
            }
            if !verdict.is_clean() {
                problems.push(format!(
                    "{} on {topic}: {verdict}\n    sequence: {}",
                    sub.name,
                    ledger::summarize(&sub.start[i], &sub.seen[i])
                ));
                faults.push(format!("{topic}: {verdict}"));
            }
            for item in &sub.seen[i] {
                if let Seen::Reset { reason, .. } = item {
                    *reset_reasons.entry(reason.clone()).or_insert(0u64) += 1;
                }
            }
            row.delivered += verdict.delivered;
            row.resets += verdict.resets;
            row.reset_covered += verdict.reset_covered;
            row.lost.extend(verdict.lost);
            row.duplicates.extend(verdict.duplicates);
            row.behind += verdict.behind;
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sub.name,
            sub.topics.join(" "),
            sub.sessions,
            sub.leaves,
            sub.broken,
            row.delivered,
            row.resets,
            row.reset_covered,
            row.lost.len(),
            row.duplicates.len(),
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join("; ")
            }
        );
        totals.delivered += row.delivered;
        totals.resets += row.resets;
        totals.reset_covered += row.reset_covered;
        totals.lost.extend(row.lost);
        totals.duplicates.extend(row.duplicates);
        totals.behind += row.behind;
        if !sub.caught_up {
            problems.push(format!(
                "{} did not catch up with the last published messages",
                sub.name
            ));
        }
    }
    let published_total: usize = published
        .values()
        .map(|r| r.published.messages.len() - 1)
        .sum();
    println!(
        "\npublished {published_total}, delivered {} (over all subscribers), lost {}, resets {} (covering {} messages), duplicates {}",
        totals.delivered,
        totals.lost.len(),
        totals.resets,
        totals.reset_covered,
        totals.duplicates.len()
    );
    if !reset_reasons.is_empty() {
        println!("resets by reason: {reset_reasons:?}");
    }
    if !settings.redis_aof {
        println!(
            "published twice across a Redis restart (idempotency key forgotten): {republished}"
        );
    }

    println!("\n| process | kills | starts | peak RSS (MiB) | bound (MiB) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for component in &stack.components {
        let peak = component.peak_rss_kib() as f64 / 1024.0;
        let bound = rss_bound_mib(&component.name);
        println!(
            "| {} | {} | {} | {peak:.1} | {bound} |",
            component.name,
            component.kills(),
            component.starts()
        );
        if peak > bound as f64 {
            problems.push(format!(
                "{} peaked at {peak:.1} MiB, above its bound of {bound} MiB",
                component.name
            ));
        }
        if component.peak_rss_kib() == 0 {
            problems.push(format!("{}: no RSS sample", component.name));
        }
    }
    println!(
        "\nconfig changes: {} written, {} on every data plane (every Envoy's gauge, every filter VM's and both push servers' ACK) before the next; slowest {:.1?}",
        config_report.written, config_report.converged, config_report.slowest
    );
    problems.extend(config_report.failures.iter().cloned());
    problems.extend(chaos_report.failures.iter().cloned());
    if config_report.written == 0 {
        problems.push("no config change was written".to_owned());
    }
    if published_total == 0 {
        problems.push("nothing was published".to_owned());
    }
    // Each kind of process was killed at least once when the soak was long
    // enough for a full round of victims.
    if settings.seconds >= 60 {
        for kind in [
            "push-stable",
            "push-canary",
            "control-plane",
            "etcd",
            "redis",
            "limiter",
            "envoy",
        ] {
            let kills: u32 = stack
                .components
                .iter()
                .filter(|c| c.name.starts_with(kind))
                .map(|c| c.kills())
                .sum();
            if kills == 0 {
                problems.push(format!("{kind} was never killed"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "soak (seed {}) found problems (logs in {}):\n{}",
        settings.seed,
        stack.logs_dir().display(),
        problems.join("\n")
    );
}
