//! Spans over OTLP, received by a real OTLP/gRPC receiver on loopback
//! (`sidestream_tests::otlp`): one message's trace from the publish through
//! Envoy (the filter stamping the traceparent) to its delivery, a
//! subscription's life, gRPC publish continuing its caller's context, delivery
//! on another node (through Redis) under the publish span, a
//! config change from etcd to the data plane's ACK, and nothing at all with
//! export off.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sidestream_proto::config::v1::config_discovery_client::ConfigDiscoveryClient;
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse, ErrorDetail, Node};
use sidestream_proto::push::v1::push_client::PushClient;
use sidestream_proto::push::v1::PublishRequest;
use sidestream_tests::envoy::Envoy;
use sidestream_tests::etcd::Etcd;
use sidestream_tests::otlp::{OtlpReceiver, ReceivedSpan};
use sidestream_tests::redis::Redis;
use sidestream_tests::{assert_eventually, binary, free_port, run_dir, wait_http_ok, Proc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(30);

/// OTLP span kinds.
const SERVER: i32 = 2;

/// The OTEL_* variables a child must not inherit from whoever runs the tests.
const OTEL_VARIABLES: [&str; 6] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// A push server with `env` set (and no other OTEL_* variable), open publish.
struct Push {
    proc: Proc,
    http: u16,
    grpc: u16,
}

impl Push {
    async fn start(name: &str, dir: &Path, env: &[(&str, &str)]) -> Push {
        Push::start_with(name, dir, &[], env).await
    }

    async fn start_with(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Push {
        let http = free_port().unwrap();
        let grpc = free_port().unwrap();
        let mut command = Command::new(binary("sidestream-push").unwrap());
        command
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--node-id", name, "--publish-auth", "open"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for variable in OTEL_VARIABLES {
            command.env_remove(variable);
        }
        // Batches leave every 100 ms instead of every 5 s.
        command.env("OTEL_BSP_SCHEDULE_DELAY", "100");
        command.envs(env.iter().copied());
        let proc = Proc::spawn(name, dir, command).unwrap();
        let url = format!("http://127.0.0.1:{http}/healthz/ready");
        if let Err(error) = wait_http_ok(&url, WAIT).await {
            panic!("{name} not ready: {error:#}\n{}", proc.log());
        }
        Push { proc, http, grpc }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn subscribers(&self, topic: &str) -> anyhow::Result<u64> {
        let topics: serde_json::Value = reqwest::get(self.url("/v1/topics")).await?.json().await?;
        Ok(topics["subscribers"][topic].as_u64().unwrap_or(0))
    }
}

/// Reads an SSE response until its text holds `needle`.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no '{needle}' within {WAIT:?}; got {text:?}"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended before '{needle}': {text:?}"))?;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    Ok(text)
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    trace: &str,
    name: &str,
) -> anyhow::Result<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == trace && s.name == name)
        .ok_or_else(|| {
            let seen: Vec<_> = spans.iter().map(|s| (&s.name, &s.trace_id)).collect();
            anyhow::anyhow!("no '{name}' span in trace {trace}; received {seen:?}")
        })
}

fn parent_of<'a>(spans: &'a [ReceivedSpan], child: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_span_id)
}

#[tokio::test]
async fn one_message_is_one_trace_from_the_publish_through_envoy_to_its_delivery() {
    let dir = run_dir("otlp-message").unwrap();
    let receiver = OtlpReceiver::start(0).await.unwrap();
    // Export configured the standard way: the SDK reads the endpoint and the name.
    let push = Push::start(
        "push-otlp",
        &dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_SERVICE_NAME", "push-under-test"),
        ],
    )
    .await;
    let envoy = Envoy::standalone("otlp-envoy", Envoy::ports(push.http, push.http).unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();

    // A subscriber through Envoy: its request gets a trace of its own.
    let mut sse = http
        .get(envoy.url("/v1/events?topic=otlp"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let subscribe_trace = sse.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eventually!(WAIT, "subscribed", async {
        anyhow::ensure!(push.subscribers("otlp").await? == 1);
        Ok(())
    });

    // The publish through Envoy: the filter starts the trace and echoes its id.
    let published = http
        .post(envoy.url("/v1/topics/otlp/messages"))
        .body("hello over otlp")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let trace = published.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(trace.len(), 32, "{trace}");
    let body: serde_json::Value = published.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    read_until(&mut sse, "hello over otlp").await.unwrap();
    assert_ne!(trace, subscribe_trace);

    let (publish, deliver) = assert_eventually!(WAIT, "publish and deliver spans", async {
        let spans = receiver.spans();
        let publish = find(&spans, &trace, "publish")?.clone();
        let deliver = find(&spans, &trace, "deliver")?.clone();
        Ok((publish, deliver))
    });
    // The publish: a server span, child of the hop the filter stamped.
    assert_eq!(publish.service, "push-under-test");
    assert_eq!(publish.kind, SERVER);
    assert_eq!(publish.parent_span_id.len(), 16, "{publish:?}");
    assert_ne!(publish.parent_span_id, "0000000000000000");
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some("otlp")
    );
    assert_eq!(publish.attribute("messaging.message.id"), Some(id.as_str()));
    // The delivery: one span for the fan-out, child of the publish span.
    assert_eq!(deliver.parent_span_id, publish.span_id);
    assert_eq!(deliver.attribute("messaging.message.id"), Some(id.as_str()));
    assert_eq!(deliver.attribute("subscribers"), Some("1"));
    assert_eq!(deliver.attribute("delivered"), Some("1"));
    assert_eq!(deliver.attribute("dropped"), Some("0"));
    assert!(deliver.start_unix_nanos >= publish.start_unix_nanos);
    assert!(deliver.end_unix_nanos <= publish.end_unix_nanos);

    // A client's own traceparent: the filter keeps its trace id and makes a
    // new hop, which parents the publish span.
    let client_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let published = http
        .post(envoy.url("/v1/topics/otlp/messages"))
        .header("traceparent", client_parent)
        .body("continued")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    assert_eq!(
        published.headers()["x-trace-id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    read_until(&mut sse, "continued").await.unwrap();
    assert_eventually!(WAIT, "the continued trace", async {
        let spans = receiver.spans();
        let publish = find(&spans, "0af7651916cd43dd8448eb211c80319c", "publish")?;
        let deliver = find(&spans, "0af7651916cd43dd8448eb211c80319c", "deliver")?;
        anyhow::ensure!(publish.parent_span_id != "b7ad6b7169203331", "{publish:?}");
        anyhow::ensure!(publish.parent_span_id.len() == 16, "{publish:?}");
        anyhow::ensure!(deliver.parent_span_id == publish.span_id, "{deliver:?}");
        Ok(())
    });

    // A parent the client did not sample: the filter keeps the decision and
    // the default sampler (parentbased_always_on) follows it, on delivery too.
    let unsampled = "00-5ee1e2a2b6b54c6fb0fbd9c3a4d2e6f1-b7ad6b7169203331-00";
    let published = http
        .post(envoy.url("/v1/topics/otlp/messages"))
        .header("traceparent", unsampled)
        .body("not sampled")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    read_until(&mut sse, "not sampled").await.unwrap();
    // Spans leave in order: once a later message's spans arrived, the
    // unsampled one's would have too.
    let published = http
        .post(envoy.url("/v1/topics/otlp/messages"))
        .body("sampled again")
        .send()
        .await
        .unwrap();
    let later = published.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    read_until(&mut sse, "sampled again").await.unwrap();
    assert_eventually!(WAIT, "the later message's spans", async {
        find(&receiver.spans(), &later, "deliver").map(|_| ())
    });
    let spans = receiver.spans();
    assert!(
        !spans
            .iter()
            .any(|s| s.trace_id == "5ee1e2a2b6b54c6fb0fbd9c3a4d2e6f1"),
        "an unsampled trace was exported"
    );

    // The subscription's life ends when its client goes.
    drop(sse);
    let subscription = assert_eventually!(WAIT, "the subscription span", async {
        let spans = receiver.spans();
        Ok(find(&spans, &subscribe_trace, "subscription")?.clone())
    });
    assert_eq!(subscription.attribute("transport"), Some("sse"));
    assert_eq!(subscription.attribute("topics"), Some("1"));
    assert_eq!(subscription.attribute("delivered"), Some("4"));
    assert_eq!(
        subscription.attribute("close_reason"),
        Some("client-closed")
    );
    let spans = receiver.spans();
    let request = parent_of(&spans, &subscription).expect("the subscribe request span");
    assert_eq!(request.name, "sse");
    assert_eq!(request.kind, SERVER);
    assert_ne!(request.parent_span_id, "", "a child of the filter's hop");

    // gRPC publish: a child of exactly the traceparent in its metadata.
    let mut client = PushClient::connect(format!("http://127.0.0.1:{}", push.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(PublishRequest {
        topic: "otlp-grpc".into(),
        data: "over grpc".into(),
        ..PublishRequest::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    client.publish(request).await.unwrap();
    assert_eventually!(WAIT, "the gRPC publish span", async {
        let spans = receiver.spans();
        let publish = find(&spans, "4bf92f3577b34da6a3ce929d0e0e4736", "grpc-publish")?;
        anyhow::ensure!(publish.parent_span_id == "00f067aa0ba902b7", "{publish:?}");
        anyhow::ensure!(publish.kind == SERVER, "{publish:?}");
        anyhow::ensure!(
            publish.attribute("messaging.destination.name") == Some("otlp-grpc"),
            "{publish:?}"
        );
        Ok(())
    });

    // An export failure or a dropped span would be a warning in the log.
    let log = push.proc.log();
    assert!(log.contains("Exporting spans over OTLP"), "{log}");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
}

#[tokio::test]
async fn a_message_delivered_by_another_node_is_delivered_under_its_publish_span() {
    let dir = run_dir("otlp-redis").unwrap();
    let receiver = OtlpReceiver::start(0).await.unwrap();
    let redis = Redis::start(&dir).await.unwrap();
    let endpoint = receiver.endpoint();
    let broker = ["--broker", &redis.url()];
    let publisher = Push::start_with(
        "push-a",
        &dir,
        &broker,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "push-a"),
        ],
    )
    .await;
    let deliverer = Push::start_with(
        "push-b",
        &dir,
        &broker,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "push-b"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut sse = http
        .get(deliverer.url("/v1/events?topic=across"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eventually!(WAIT, "subscribed on push-b", async {
        anyhow::ensure!(deliverer.subscribers("across").await? == 1);
        Ok(())
    });
    let published = http
        .post(publisher.url("/v1/topics/across/messages"))
        .header(
            "traceparent",
            "00-7d3f0c9e1a2b4c5d8e9f0a1b2c3d4e5f-1122334455667788-01",
        )
        .body("across nodes")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    read_until(&mut sse, "across nodes").await.unwrap();
    let trace = "7d3f0c9e1a2b4c5d8e9f0a1b2c3d4e5f";
    let (publish, deliver) = assert_eventually!(WAIT, "publish on a, deliver on b", async {
        let spans = receiver.spans();
        let publish = find(&spans, trace, "publish")?.clone();
        let deliver = find(&spans, trace, "deliver")?.clone();
        Ok((publish, deliver))
    });
    assert_eq!(publish.service, "push-a");
    assert_eq!(publish.parent_span_id, "1122334455667788");
    // The publish span's context went through Redis with the message.
    assert_eq!(deliver.service, "push-b");
    assert_eq!(deliver.parent_span_id, publish.span_id);
    assert_eq!(deliver.attribute("subscribers"), Some("1"));
    assert_eq!(deliver.attribute("delivered"), Some("1"));
    // push-a has no subscriber of the topic: no fan-out, no deliver span.
    let spans = receiver.spans();
    let delivers: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == "deliver")
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(delivers, ["push-b"]);
}

#[tokio::test]
async fn with_export_off_nothing_is_sent_and_nothing_complains() {
    let dir = run_dir("otlp-off").unwrap();
    let receiver = OtlpReceiver::start(0).await.unwrap();
    // Everything but an endpoint: export stays off.
    let mut push = Push::start(
        "push-no-otlp",
        &dir,
        &[
            ("OTEL_SERVICE_NAME", "push-under-test"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut sse = http
        .get(push.url("/v1/events?topic=quiet"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eventually!(WAIT, "subscribed", async {
        anyhow::ensure!(push.subscribers("quiet").await? == 1);
        Ok(())
    });
    let published = http
        .post(push.url("/v1/topics/quiet/messages"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("unseen")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    read_until(&mut sse, "unseen").await.unwrap();
    drop(sse);
    // Exiting flushes whatever an exporter holds: after exit, nothing was sent.
    push.proc.signal(15).unwrap();
    let status = push.proc.wait_exit(WAIT).unwrap();
    assert!(status.success(), "{status:?}\n{}", push.proc.log());
    assert_eq!(receiver.requests(), 0);
    let log = push.proc.log();
    assert!(!log.contains("Exporting spans"), "{log}");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    assert!(!log.to_lowercase().contains("opentelemetry"), "{log}");
}

/// A data plane holding the config stream.
struct ConfigClient {
    requests: mpsc::Sender<ConfigRequest>,
    responses: tonic::Streaming<ConfigResponse>,
}

impl ConfigClient {
    async fn connect(grpc: &str, node: &str) -> ConfigClient {
        let mut client = ConfigDiscoveryClient::connect(grpc.to_owned())
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(8);
        requests
            .send(ConfigRequest {
                node: Some(Node {
                    id: node.to_owned(),
                    cluster: "test".to_owned(),
                    client_kind: "test".to_owned(),
                    metadata: Default::default(),
                }),
                kinds: vec!["topics".to_owned()],
                ..ConfigRequest::default()
            })
            .await
            .unwrap();
        let responses = client
            .stream_config(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        ConfigClient {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> ConfigResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a config response")
            .unwrap()
            .expect("the stream is open")
    }

    async fn ack(&self, response: &ConfigResponse) {
        self.requests
            .send(ConfigRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..ConfigRequest::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_config_change_is_one_trace_from_etcd_to_the_data_planes_ack() {
    let dir = run_dir("otlp-control-plane").unwrap();
    let receiver = OtlpReceiver::start(0).await.unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put("/sidestream/v1/topics/ticker", r#"{"historySize": 10}"#)
        .unwrap();
    let grpc = free_port().unwrap();
    let admin = free_port().unwrap();
    let mut command = Command::new(binary("sidestream-control-plane").unwrap());
    command
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--prefix",
            "/sidestream",
        ])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--otlp-endpoint", &receiver.endpoint()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    for variable in OTEL_VARIABLES {
        command.env_remove(variable);
    }
    let proc = Proc::spawn("control-plane", &dir, command).unwrap();
    if let Err(error) = wait_http_ok(&format!("http://127.0.0.1:{admin}/readyz"), WAIT).await {
        panic!("control plane not ready: {error:#}\n{}", proc.log());
    }

    let mut client =
        ConfigClient::connect(&format!("http://127.0.0.1:{grpc}"), "push-traced").await;
    let first = client.next().await;
    client.ack(&first).await;
    let revision = etcd
        .put("/sidestream/v1/topics/ticker", r#"{"historySize": 20}"#)
        .unwrap();
    let change = client.next().await;
    assert_eq!(change.revision, revision);
    client.ack(&change).await;

    let (trace, validate) = assert_eventually!(WAIT, "the change's trace", async {
        let spans = receiver.spans();
        let trace = spans
            .iter()
            .find(|s| {
                s.name == "config.revision" && s.attribute("version") == Some(&change.version_info)
            })
            .ok_or_else(|| anyhow::anyhow!("no config.revision span for {}", change.version_info))?
            .clone();
        let validate = find(&spans, &trace.trace_id, "validate")?.clone();
        Ok((trace, validate))
    });
    assert_eq!(trace.service, "sidestream-control-plane");
    assert_eq!(trace.parent_span_id, "", "a root: the etcd event starts it");
    assert_eq!(
        trace.attribute("revision"),
        Some(revision.to_string().as_str())
    );
    assert_eq!(trace.attribute("outcome"), Some("converged"));
    assert_eq!(trace.attribute("data_planes"), Some("1"));
    assert_eq!(trace.attribute("acks"), Some("1"));
    assert_eq!(trace.attribute("nacks"), Some("0"));
    let acks: Vec<_> = trace
        .events
        .iter()
        .filter(|(name, _)| name == "ack")
        .collect();
    assert_eq!(acks.len(), 1, "{:?}", trace.events);
    assert_eq!(
        acks[0].1.get("node").map(String::as_str),
        Some("push-traced")
    );
    assert!(acks[0].1.contains_key("convergence_ms"), "{:?}", acks[0]);
    // Validation is a child of the revision, and over before the ACK.
    assert_eq!(validate.parent_span_id, trace.span_id);
    assert_eq!(
        validate.attribute("revision"),
        Some(revision.to_string().as_str())
    );
    assert_eq!(validate.attribute("changed"), Some("true"));
    assert_eq!(validate.attribute("rejections"), Some("0"));
    assert!(validate.end_unix_nanos <= trace.end_unix_nanos);

    // A data plane that rejects a change: a `nack` event with its error.
    etcd.put("/sidestream/v1/topics/ticker", r#"{"historySize": 30}"#)
        .unwrap();
    let rejected = client.next().await;
    client
        .requests
        .send(ConfigRequest {
            version_info: change.version_info.clone(),
            response_nonce: rejected.nonce.clone(),
            error_detail: Some(ErrorDetail {
                message: "cannot apply: test says no".to_owned(),
            }),
            ..ConfigRequest::default()
        })
        .await
        .unwrap();
    let trace = assert_eventually!(WAIT, "the rejected change's trace", async {
        receiver
            .spans()
            .into_iter()
            .find(|s| {
                s.name == "config.revision"
                    && s.attribute("version") == Some(&rejected.version_info)
            })
            .ok_or_else(|| anyhow::anyhow!("no config.revision span for {}", rejected.version_info))
    });
    assert_eq!(trace.attribute("outcome"), Some("converged"));
    assert_eq!(trace.attribute("acks"), Some("0"));
    assert_eq!(trace.attribute("nacks"), Some("1"));
    let nacks: Vec<_> = trace
        .events
        .iter()
        .filter(|(name, _)| name == "nack")
        .collect();
    assert_eq!(nacks.len(), 1, "{:?}", trace.events);
    assert_eq!(
        nacks[0].1.get("node").map(String::as_str),
        Some("push-traced")
    );
    assert_eq!(
        nacks[0].1.get("error").map(String::as_str),
        Some("cannot apply: test says no")
    );
}

#[test]
fn a_bad_otlp_endpoint_is_refused_with_exit_64_by_every_daemon() {
    for daemon in [
        "sidestream-push",
        "sidestream-control-plane",
        "sidestream-limiter",
    ] {
        let mut command = Command::new(binary(daemon).unwrap());
        for variable in OTEL_VARIABLES {
            command.env_remove(variable);
        }
        let output = command
            .args(["--otlp-endpoint", "collector:4317"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{daemon}: {stderr}");
        assert!(
            stderr.contains("OTLP endpoint 'collector:4317' must be an http:// URL"),
            "{daemon}: {stderr}"
        );
    }
}
