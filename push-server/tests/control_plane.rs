//! Topic settings from a control plane: a fake `ConfigDiscovery` server (the
//! real one is another crate) streams snapshots; the push server applies,
//! ACKs, NACKs invalid ones keeping the last good topics, and reconnects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sidestream_core::config::{Item, Snapshot, TopicSettings};
use sidestream_proto::config::v1::config_discovery_server::{
    ConfigDiscovery, ConfigDiscoveryServer,
};
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse};
use sidestream_push::daemon::{self, ControlPlane, DaemonConfig};
use sidestream_push::topics::TopicRegistry;
use sidestream_push::Settings;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

type Responses = mpsc::Sender<Result<ConfigResponse, Status>>;

#[derive(Clone)]
struct FakeControlPlane {
    requests: mpsc::UnboundedSender<ConfigRequest>,
    streams: mpsc::UnboundedSender<Responses>,
}

#[tonic::async_trait]
impl ConfigDiscovery for FakeControlPlane {
    type StreamConfigStream = ReceiverStream<Result<ConfigResponse, Status>>;

    async fn stream_config(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let mut inbound = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                let _ = requests.send(request);
            }
        });
        let (tx, rx) = mpsc::channel(8);
        let _ = self.streams.send(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn response(version: &str, nonce: &str, snapshot_json: Vec<u8>) -> ConfigResponse {
    ConfigResponse {
        version_info: version.into(),
        nonce: nonce.into(),
        snapshot_json,
        ..Default::default()
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

#[tokio::test]
async fn topics_come_from_the_control_plane_with_ack_nack_and_reconnect() {
    let (requests_tx, mut requests) = mpsc::unbounded_channel();
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigDiscoveryServer::new(FakeControlPlane {
                requests: requests_tx,
                streams: streams_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // Only configured topics exist on this server.
    let settings = Settings {
        node_id: "push-test-0".into(),
        ..Settings::default()
    };
    // The daemon as the binary runs it, following the fake control plane.
    let mut config = DaemonConfig::loopback(settings, TopicRegistry::new(Vec::new(), false));
    config.control_plane = Some(ControlPlane {
        endpoint,
        cluster: "push-test".into(),
    });
    let daemon = daemon::start_with(config).await.unwrap();
    let base = format!("http://{}", daemon.http_addr);

    let client = reqwest::Client::new();
    let publish = |body: &'static str| {
        client
            .post(format!("{base}/v1/topics/cp-topic/messages"))
            .body(body)
            .send()
    };
    assert_eq!(
        publish("x").await.unwrap().status(),
        404,
        "unknown before the first snapshot"
    );

    let first = next(&mut requests).await;
    let node = first.node.expect("node in the first request");
    assert_eq!(
        (
            node.id.as_str(),
            node.cluster.as_str(),
            node.client_kind.as_str()
        ),
        ("push-test-0", "push-test", "push-server")
    );
    assert_eq!(first.kinds, ["topics"]);
    let responses = next(&mut streams).await;

    let mut topic = TopicSettings::defaults("cp-topic");
    topic.max_message_bytes = 5;
    let snapshot = Snapshot::from_items([Item::Topic(topic)]).to_json();
    responses
        .send(Ok(response("7-aaaa", "n1", snapshot)))
        .await
        .unwrap();
    let ack = next(&mut requests).await;
    assert_eq!(
        (
            ack.version_info.as_str(),
            ack.response_nonce.as_str(),
            ack.error_detail
        ),
        ("7-aaaa", "n1", None)
    );
    assert_eq!(publish("12345").await.unwrap().status(), 201);
    assert_eq!(publish("123456").await.unwrap().status(), 413);

    // An invalid snapshot is NACKed; the last good topics stay.
    let invalid = br#"{"topics": {"cp-topic": {"maxMessageBytes": 0}}}"#.to_vec();
    responses
        .send(Ok(response("8-bbbb", "n2", invalid)))
        .await
        .unwrap();
    let nack = next(&mut requests).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("7-aaaa", "n2")
    );
    assert!(nack
        .error_detail
        .expect("error detail")
        .message
        .contains("maxMessageBytes"));
    assert_eq!(publish("12345").await.unwrap().status(), 201);

    // The control plane goes away; the push server comes back, naming the version it runs.
    drop(responses);
    let again = next(&mut requests).await;
    assert!(again.node.is_some());
    assert_eq!(again.version_info, "7-aaaa");
    let _responses = next(&mut streams).await;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sidestream_push_config_updates_total{result=\"ack\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sidestream_push_config_updates_total{result=\"nack\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        publish("12345").await.unwrap().status(),
        201,
        "last good topics kept while disconnected"
    );
    drop(daemon);
}
