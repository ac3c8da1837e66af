//! End to end through the whole stack, started as `make run` starts it
//! (scripts/run-stack.sh: etcd, control plane, Redis, two push servers, Envoy
//! with the filter), on free ports:
//! - an SSE subscription through Envoy receives published messages, and the
//!   publisher's trace id is continued by the filter;
//! - raising the canary percentage in etcd moves new streams to the canary push
//!   server, and streams already open are not cut (how fast is measured by
//!   the benchmark, not here);
//! - stream limits hold through the stack, with 429s, while the push servers
//!   stay healthy; the filter's stats are in Envoy's `/stats/prometheus`;
//! - WebSocket (HTTP/1.1 Upgrade) and gRPC (h2c) streams pass through the same
//!   listener to the push servers;
//! - Ctrl-C stops every process, and a second run on the same folder and ports
//!   works.
//!
//! Each test starts its own stack; they take turns (one stack at a time) to
//! stay within this machine's two cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sidestream_tests::assert_eventually;
use sidestream_tests::stack::{Stack, StackOptions};

static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let mut file = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut file, &mut buffer).expect("random bytes");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

fn topic_doc(topic: &str) -> Value {
    json!({ "kind": "TopicSettings", "name": topic, "spec": { "historySize": 1000, "historyMaxAgeSeconds": 3600 } })
}

/// A release policy that wins over the seeded ones (priority 1000): `percent`
/// of users, by `x-user-id`, go to canary.
fn grey_policy(percent: u32) -> Value {
    json!({
        "kind": "ReleasePolicy",
        "name": "e2e-grey",
        "spec": {
            "match": { "hosts": ["*"], "pathPrefixes": ["/v1/"] },
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

/// An open SSE stream through Envoy.
struct Subscription {
    upstream: String,
    trace_id: Option<String>,
    events: BoxStream<'static, Result<Event, String>>,
}

impl Subscription {
    async fn next_message(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        loop {
            let event = tokio::time::timeout(timeout, self.events.next())
                .await
                .map_err(|_| anyhow::anyhow!("no event within {timeout:?}"))?
                .ok_or_else(|| anyhow::anyhow!("the stream ended"))?
                .map_err(|e| anyhow::anyhow!("bad SSE: {e}"))?;
            if event.event.is_empty() || event.event == "message" {
                return Ok(event);
            }
        }
    }
}

/// Opens `GET /v1/events?topic=...` through Envoy with extra headers; `Err` if
/// the answer is not a 200 event stream.
async fn subscribe(
    client: &reqwest::Client,
    stack: &Stack,
    topic: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Subscription> {
    let mut request = client
        .get(format!("{}/v1/events?topic={topic}", stack.envoy_url()))
        .header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // Every stream is its own tenant unless the test says otherwise, so the
    // seeded per-tenant limit (5 new streams per second) does not get in the way.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("x-tenant-id"))
    {
        request = request.header("x-tenant-id", format!("e2e-{}", random_hex(8)));
    }
    let response = request.send().await?;
    let status = response.status();
    anyhow::ensure!(status == 200, "status {status}: {:?}", response.headers());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type}"
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let upstream = header("x-sidestream-upstream").unwrap_or_default();
    let trace_id = header("x-trace-id");
    let events = response
        .bytes_stream()
        .eventsource()
        .map(|item| item.map_err(|e| e.to_string()))
        .boxed();
    Ok(Subscription {
        upstream,
        trace_id,
        events,
    })
}

/// Publishes through Envoy with a fresh traceparent; returns (message id,
/// trace id sent, trace id Envoy echoed).
async fn publish(
    client: &reqwest::Client,
    stack: &Stack,
    topic: &str,
    body: &str,
) -> anyhow::Result<(String, String, Option<String>)> {
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    let response = client
        .post(format!("{}/v1/topics/{topic}/messages", stack.envoy_url()))
        .header("traceparent", traceparent)
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status();
    let echoed = response
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await?;
    anyhow::ensure!(status == 201, "publish answered {status}: {text}");
    let answer: Value = serde_json::from_str(&text)?;
    let id = answer["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("publish answer without id: {text}"))?
        .to_owned();
    Ok((id, trace_id, echoed))
}

/// Waits until a subscription to `topic` through Envoy is accepted (the topic
/// has reached the push servers from etcd through the control plane).
async fn wait_topic(client: &reqwest::Client, stack: &Stack, topic: &str) {
    assert_eventually!(
        Duration::from_secs(10),
        "topic reaches the push servers",
        async {
            subscribe(client, stack, topic, &[("x-sidestream-group", "stable")])
                .await
                .map(|_| ())
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_through_envoy_delivers_published_messages_with_their_trace() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start("e2e-sse").await.expect("stack starts");
    let client = reqwest::Client::new();
    stack
        .apply(
            "trace-and-topic",
            &json!([
                { "kind": "TraceSettings", "name": "default", "spec": { "enabled": true, "sampleRatio": 1.0, "responseHeader": "x-trace-id" } },
                topic_doc("e2e-trace")
            ]),
        )
        .expect("apply");
    wait_topic(&client, &stack, "e2e-trace").await;
    // The trace settings reached the filter: responses echo the trace id.
    let mut subscription = assert_eventually!(
        Duration::from_secs(5),
        "subscription echoes a trace id",
        async {
            let subscription = subscribe(&client, &stack, "e2e-trace", &[]).await?;
            anyhow::ensure!(
                subscription.trace_id.is_some(),
                "no x-trace-id on the subscription"
            );
            Ok(subscription)
        }
    );
    let stream_trace = subscription.trace_id.clone().expect("trace id");
    assert_eq!(stream_trace.len(), 32, "trace id {stream_trace}");
    assert!(
        subscription.upstream.starts_with("push-"),
        "served by {}",
        subscription.upstream
    );

    let mut sent = Vec::new();
    for seq in 1..=3 {
        let body = format!("{{\"seq\":{seq}}}");
        let (id, trace_id, echoed) = publish(&client, &stack, "e2e-trace", &body)
            .await
            .expect("publish");
        assert_eq!(
            echoed.as_deref(),
            Some(trace_id.as_str()),
            "the filter continued the publisher's trace"
        );
        sent.push((id, body, trace_id));
    }
    for (id, body, _) in &sent {
        let event = subscription
            .next_message(Duration::from_secs(5))
            .await
            .expect("message");
        assert_eq!(&event.data, body);
        assert_eq!(
            &event.id, id,
            "a one-topic stream's event id is the message id"
        );
    }
    // The push server continued the same traces: the publisher's trace ids are in its log.
    let logs = format!("{}{}", stack.log("push-stable"), stack.log("push-canary"));
    for (_, _, trace_id) in &sent {
        assert!(
            logs.contains(trace_id.as_str()),
            "push server logs carry trace {trace_id}"
        );
    }
}

/// The group Envoy routed a new stream to, for user `user`.
async fn stream_upstream(
    client: &reqwest::Client,
    stack: &Stack,
    topic: &str,
    user: &str,
) -> anyhow::Result<String> {
    let subscription = subscribe(client, stack, topic, &[("x-user-id", user)]).await?;
    Ok(subscription.upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_percentage_moves_new_streams_live_and_keeps_open_ones() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start("e2e-grey").await.expect("stack starts");
    let client = reqwest::Client::new();
    stack
        .apply("grey-0", &json!([topic_doc("e2e-grey"), grey_policy(0)]))
        .expect("apply 0%");
    wait_topic(&client, &stack, "e2e-grey").await;
    let version_at_zero =
        assert_eventually!(Duration::from_secs(5), "0% reaches the filter", async {
            anyhow::ensure!(
                stream_upstream(&client, &stack, "e2e-grey", "probe").await? == "push-stable"
            );
            stack
                .envoy_stat("sidestream.config_version")
                .await?
                .ok_or_else(|| anyhow::anyhow!("no config_version"))
        });

    // Twenty users at 0%: all on stable.
    let mut open = Vec::new();
    for user in 0..20 {
        let subscription = subscribe(
            &client,
            &stack,
            "e2e-grey",
            &[("x-user-id", &format!("user-{user}"))],
        )
        .await
        .expect("subscribe");
        assert_eq!(subscription.upstream, "push-stable", "user-{user} at 0%");
        open.push(subscription);
    }

    // 100%: new streams move to canary (how fast is the benchmark's question;
    // here a generous deadline).
    stack
        .apply("grey-100", &grey_policy(100))
        .expect("apply 100%");
    let applied = Instant::now();
    assert_eventually!(
        Duration::from_secs(30),
        "new streams go to canary after raising it to 100%",
        async {
            let upstream = stream_upstream(&client, &stack, "e2e-grey", "user-new").await?;
            anyhow::ensure!(
                upstream == "push-canary",
                "new streams still go to {upstream}"
            );
            Ok(())
        }
    );
    let moved_after = applied.elapsed();
    let version_at_hundred = stack
        .envoy_stat("sidestream.config_version")
        .await
        .expect("stat")
        .expect("version");
    assert!(
        version_at_hundred > version_at_zero,
        "config version went {version_at_zero} → {version_at_hundred}"
    );
    for user in 0..5 {
        let upstream = stream_upstream(&client, &stack, "e2e-grey", &format!("later-{user}"))
            .await
            .expect("subscribe");
        assert_eq!(
            upstream, "push-canary",
            "new stream for later-{user} at 100%"
        );
    }

    // The twenty streams opened before the change are still open and still deliver.
    let (_, _, _) = publish(&client, &stack, "e2e-grey", "after-the-flip")
        .await
        .expect("publish");
    for (i, subscription) in open.iter_mut().enumerate() {
        let event = subscription
            .next_message(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("stream {i} opened before the flip: {e}"));
        assert_eq!(event.data, "after-the-flip");
    }
    eprintln!(
        "new streams moved to canary {moved_after:?} after the etcd write (polled; not asserted)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limits_hold_through_the_stack_and_stats_are_exported() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start("e2e-limits").await.expect("stack starts");
    let client = reqwest::Client::new();
    // Burst 5, no refill to speak of (one token per 1000 s), at most 8 open.
    let limit = json!({
        "kind": "StreamLimitPolicy",
        "name": "e2e-tenant",
        "spec": {
            "match": { "hosts": ["*"], "pathPrefixes": ["/v1/"] },
            "priority": 1000,
            "streamKinds": ["sse", "websocket"],
            "key": { "source": "header", "name": "x-tenant-id" },
            "newStreamsPerSecond": 0.001,
            "burst": 5,
            "failMode": "open"
        }
    });
    stack
        .apply("limits", &json!([topic_doc("e2e-limits"), limit]))
        .expect("apply");
    wait_topic(&client, &stack, "e2e-limits").await;
    let policy_version = assert_eventually!(
        Duration::from_secs(5),
        "the limit reaches the filter",
        async {
            let text = reqwest::get(format!("{}/v1/snapshot", stack.control_plane_admin_url()))
                .await?
                .text()
                .await?;
            anyhow::ensure!(text.contains("e2e-tenant"), "not in the snapshot yet");
            let version = stack
                .envoy_stat("sidestream.config_version")
                .await?
                .unwrap_or(0);
            let snapshot: Value = serde_json::from_str(&text)?;
            let wanted = snapshot["version"]["revision"]
                .as_i64()
                .or_else(|| snapshot["revision"].as_i64())
                .unwrap_or(1);
            anyhow::ensure!(
                version >= wanted,
                "filter at {version}, snapshot at {wanted}"
            );
            Ok(version)
        }
    );
    assert!(policy_version > 0);

    // A reconnect storm: 30 opens at once from one tenant.
    let opens = (0..30).map(|_| {
        let client = client.clone();
        let url = format!("{}/v1/events?topic=e2e-limits", stack.envoy_url());
        async move {
            client
                .get(url)
                .header("accept", "text/event-stream")
                .header("x-tenant-id", "storm")
                .send()
                .await
        }
    });
    let responses: Vec<reqwest::Response> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.expect("response"))
        .collect();
    let admitted = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(admitted, 5, "exactly the burst is admitted");
    assert_eq!(refused.len(), 25, "the rest is refused with 429");
    for response in &refused {
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("429 carries retry-after in seconds");
        assert!(retry_after >= 1);
    }
    // Another tenant is not affected, and the push servers stay healthy.
    subscribe(&client, &stack, "e2e-limits", &[("x-tenant-id", "calm")])
        .await
        .expect("another tenant");
    for group in ["stable", "canary"] {
        let status = reqwest::get(format!("{}/healthz/ready", stack.push_url(group)))
            .await
            .expect("ready")
            .status();
        assert_eq!(status, 200, "push {group} healthy after the storm");
    }

    // The filter's stats, in Prometheus form.
    let prometheus = reqwest::get(format!("{}/stats/prometheus", stack.envoy_admin_url()))
        .await
        .expect("prometheus")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> Option<f64> {
        prometheus
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert!(
        value("sidestream_streams_refused").unwrap_or(0.0) >= 25.0,
        "refusals counted:\n{prometheus}"
    );
    assert!(
        value("sidestream_streams_admitted").unwrap_or(0.0) >= 6.0,
        "admissions counted"
    );
    assert!(
        value("sidestream_streams_active").unwrap_or(0.0) >= 5.0,
        "open streams counted"
    );
    assert!(
        value("sidestream_config_version").unwrap_or(0.0) >= policy_version as f64,
        "config version exported"
    );
    // Per-request counters reach Envoy at each VM's next flush (a tick).
    assert_eventually!(Duration::from_secs(5), "traces counted", async {
        let text = reqwest::get(format!("{}/stats/prometheus", stack.envoy_admin_url()))
            .await?
            .text()
            .await?;
        let started: f64 = text
            .lines()
            .find(|l| l.split([' ', '{']).next() == Some("sidestream_traces_started"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        anyhow::ensure!(started >= 30.0, "traces_started {started}");
        Ok(())
    });
    drop(responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_everything_and_a_second_run_works() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let mut stack = Stack::start("e2e-restart").await.expect("stack starts");
    let names = [
        "etcd",
        "redis",
        "control-plane",
        "push-stable",
        "push-canary",
        "envoy",
    ];
    let pids: Vec<u32> = names.iter().map(|n| stack.pid(n).expect("pid")).collect();
    let ports = stack.ports.clone();
    let dir = stack.dir.clone();
    let status = stack.interrupt().expect("stops");
    assert_eq!(
        status.code(),
        Some(130),
        "run-stack.sh exits 130 after stopping everything on Ctrl-C: {status}\n{}",
        stack.script_log()
    );
    for (name, pid) in names.iter().zip(&pids) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{name} (pid {pid}) still runs after Ctrl-C"
        );
    }
    assert!(!dir.join("stack.pid").exists(), "stack.pid removed");
    assert!(
        stack.script_log().contains("run-stack: stopped"),
        "{}",
        stack.script_log()
    );
    stack.keep_data();
    drop(stack);

    // Same folder, same ports: no stale pid file, data or port in the way.
    let stack = Stack::start_with(
        "e2e-restart",
        StackOptions {
            dir: Some(dir),
            ports: Some(ports),
            ..StackOptions::default()
        },
    )
    .await
    .expect("a second run starts");
    let client = reqwest::Client::new();
    stack
        .apply("topic", &topic_doc("e2e-restart"))
        .expect("apply");
    wait_topic(&client, &stack, "e2e-restart").await;
    for (name, old_pid) in names.iter().zip(&pids) {
        assert_ne!(
            stack.pid(name).expect("pid"),
            *old_pid,
            "{name} is a new process"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_grpc_streams_pass_through_envoy() {
    use sidestream_proto::push::v1::{
        push_client::PushClient, subscribe_event, PublishRequest, SubscribeRequest, TopicPosition,
    };
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start("e2e-transports").await.expect("stack starts");
    let client = reqwest::Client::new();
    let topic = "e2e-transports";
    stack.apply("topic", &topic_doc(topic)).expect("apply");
    wait_topic(&client, &stack, topic).await;

    // WebSocket through Envoy's HTTP/1.1 Upgrade.
    let mut request = format!("ws://127.0.0.1:{}/v1/ws", stack.ports.envoy)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-tenant-id", "e2e-ws".parse().expect("header"));
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket through Envoy");
    assert_eq!(
        response
            .headers()
            .get("x-sidestream-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("push-stable")
    );
    ws.send(Message::text(
        json!({ "type": "subscribe", "topic": topic }).to_string(),
    ))
    .await
    .expect("subscribe frame");
    let subscribed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(text) = frame.expect("frame") {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                if value["type"] == "subscribed" {
                    return true;
                }
            }
        }
        false
    })
    .await
    .expect("subscribed frame in time");
    assert!(subscribed, "WebSocket subscription confirmed");

    // gRPC over HTTP/2 cleartext (prior knowledge) through the same listener.
    let channel = tonic::transport::Channel::from_shared(stack.envoy_url())
        .expect("uri")
        .connect()
        .await
        .expect("h2c connection to Envoy");
    let mut grpc = PushClient::new(channel);
    let mut subscribe = tonic::Request::new(SubscribeRequest {
        topics: vec![TopicPosition {
            topic: topic.to_owned(),
            from: String::new(),
        }],
    });
    subscribe
        .metadata_mut()
        .insert("x-tenant-id", "e2e-grpc".parse().expect("metadata"));
    let mut events = grpc
        .subscribe(subscribe)
        .await
        .expect("gRPC subscribe through Envoy")
        .into_inner();
    let live = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.message().await.expect("gRPC event") {
            if matches!(event.event, Some(subscribe_event::Event::Subscribed(_))) {
                return true;
            }
        }
        false
    })
    .await
    .expect("subscribed event in time");
    assert!(live, "gRPC subscription confirmed");

    // Publish over gRPC through Envoy; both streams get the message, same id.
    let published = grpc
        .publish(PublishRequest {
            topic: topic.to_owned(),
            data: "over-every-transport".into(),
            ..PublishRequest::default()
        })
        .await
        .expect("gRPC publish through Envoy")
        .into_inner();
    let grpc_message = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.message().await.expect("event").expect("stream open");
            if let Some(subscribe_event::Event::Message(message)) = event.event {
                return message;
            }
        }
    })
    .await
    .expect("gRPC message in time");
    assert_eq!(grpc_message.id, published.id);
    assert_eq!(&grpc_message.data[..], b"over-every-transport");
    let ws_message = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Text(text))) = ws.next().await {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                if value["type"] == "message" {
                    return value;
                }
            }
        }
    })
    .await
    .expect("WebSocket message in time");
    assert_eq!(ws_message["id"], published.id.as_str());
    assert_eq!(ws_message["data"], "over-every-transport");

    // The gRPC calls went to the push servers' gRPC ports.
    let grpc_requests = reqwest::get(format!(
        "{}/stats?filter=cluster\\.push-stable-grpc\\.upstream_rq_total$",
        stack.envoy_admin_url()
    ))
    .await
    .expect("stats")
    .text()
    .await
    .expect("text");
    let total: u64 = grpc_requests
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        total >= 2,
        "gRPC routed to push-stable-grpc: {grpc_requests}"
    );
}

/// Runs one of the examples' scripts against this stack; returns its stdout.
fn run_example(stack: &Stack, script: &str, args: &[&str], timeout_secs: u32) -> String {
    let root = sidestream_tests::workspace_root();
    let ctl = sidestream_tests::binary("sidestreamctl").expect("sidestreamctl");
    let output = std::process::Command::new("timeout")
        .arg(timeout_secs.to_string())
        .arg(root.join(script))
        .args(args)
        .current_dir(&root)
        .env("SIDESTREAMCTL", ctl)
        .env("SIDESTREAM_ETCD_ENDPOINTS", stack.etcd_url())
        .env("ENVOY_URL", stack.envoy_url())
        .env("ENVOY_ADMIN", stack.envoy_admin_url())
        .env("PUSH_STABLE_URL", stack.push_url("stable"))
        .env("PUSH_CANARY_URL", stack.push_url("canary"))
        // examples/stream-limits/two-envoys.sh: the stack's ports, two more Envoys.
        .env("LIMITER_PORT", stack.ports.limiter.to_string())
        .env("PUSH_STABLE_PORT", stack.ports.push_stable.to_string())
        .env("PUSH_CANARY_PORT", stack.ports.push_canary.to_string())
        .env("WASM", sidestream_tests::filter_wasm().expect("the filter"))
        .envs(
            [
                "ENVOY_A_PORT",
                "ENVOY_A_ADMIN",
                "ENVOY_B_PORT",
                "ENVOY_B_ADMIN",
            ]
            .map(|name| {
                (
                    name,
                    sidestream_tests::free_port().expect("port").to_string(),
                )
            }),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `timeout` ends the looping ones (124); the others must succeed.
    assert!(
        output.status.success() || output.status.code() == Some(124),
        "{script} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_work_against_the_stack() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start_with(
        "e2e-examples",
        StackOptions {
            ticker: true,
            ..StackOptions::default()
        },
    )
    .await
    .expect("stack starts");
    let client = reqwest::Client::new();

    // live-ticker: the ticker publishes through Envoy, with its trace id in the message.
    let mut ticker = subscribe(&client, &stack, "ticker", &[])
        .await
        .expect("subscribe to the ticker");
    let tick = ticker
        .next_message(Duration::from_secs(5))
        .await
        .expect("a tick within 5 s");
    let body: Value = serde_json::from_str(&tick.data).expect("tick is JSON");
    assert!(body["seq"].as_u64().is_some(), "{body}");
    let trace_id = body["traceId"].as_str().expect("traceId");
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    // The push server continued the same trace (Envoy's filter kept the trace id).
    assert_eventually!(
        Duration::from_secs(5),
        "the push server logs the ticker's trace",
        async {
            let logs = format!("{}{}", stack.log("push-stable"), stack.log("push-canary"));
            anyhow::ensure!(
                logs.contains(trace_id),
                "trace {trace_id} not in the push logs"
            );
            Ok(())
        }
    );

    // grey-release: 100% to canary with the example's script, then watch it.
    let output = run_example(
        &stack,
        "examples/grey-release/set-canary-percent.sh",
        &["100"],
        30,
    );
    assert!(output.contains("100% of users"), "{output}");
    assert_eventually!(Duration::from_secs(2), "new streams on canary", async {
        let upstream = stream_upstream(&client, &stack, "ticker", "grey-user").await?;
        anyhow::ensure!(upstream == "push-canary", "still {upstream}");
        Ok(())
    });
    let watched = run_example(&stack, "examples/grey-release/watch.sh", &["10"], 3);
    assert!(
        watched.contains("stable   0  canary  10  (100% canary)"),
        "watch.sh sees every new stream on canary:\n{watched}"
    );

    // stream-limits: the storm is cut to the seeded tenant burst (5, plus refill).
    let storm = run_example(&stack, "examples/stream-limits/storm.sh", &["30"], 30);
    let count = |label: &str| -> usize {
        storm
            .split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{label}' in:\n{storm}"))
    };
    let admitted = count("admitted:");
    let refused = count("refused with 429:");
    // The burst (5) plus what the bucket refilled (5/s) while 30 curls started.
    assert!(
        admitted >= 5 && refused >= 10,
        "admitted {admitted}, refused {refused}:\n{storm}"
    );
    assert_eq!(admitted + refused, 30, "{storm}");
    assert!(
        storm.matches("healthz/ready: 200").count() == 2,
        "push servers healthy:\n{storm}"
    );

    // stream-limits, two Envoys: the seeded tenant policy is mesh-scoped, so
    // two more Envoys from envoy-config/mesh.yaml share its cap of 20 open
    // streams through the stack's limiter (separately they would admit 30).
    let pair = run_example(&stack, "examples/stream-limits/two-envoys.sh", &["15"], 60);
    let together: usize = pair
        .split("together: admitted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'together' in:\n{pair}"));
    assert_eq!(together, 20, "one cap for both Envoys:\n{pair}");
    assert!(pair.contains("envoy a: admitted 15,"), "{pair}");
    assert!(
        pair.contains("ratelimit-limit: 20"),
        "a concurrency refusal:\n{pair}"
    );
    assert_eq!(
        pair.matches("fallbacks 0").count(),
        2,
        "the limiter decided:\n{pair}"
    );
}
