use prost::Message;
use sidestream_core::config::Snapshot;
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse};

use super::*;
use crate::configure::parse_bootstrap;
use crate::fake::{FakeEnvoy, FakeHost};
use crate::metrics::{self, Metrics};

const BOOTSTRAP: &str = r#"{
  "nodeId": "ingress",
  "controlPlane": { "cluster": "sidestream-control-plane", "initialBackoffMs": 200, "maxBackoffMs": 5000 },
  "defaults": {
    "releases": { "grey": { "groups": ["stable", "canary"], "defaultGroup": "canary" } }
  }
}"#;

const NOW: u64 = 1_000_000_000_000;
const MS: u64 = 1_000_000;

fn setup() -> (std::rc::Rc<FakeEnvoy>, FakeHost, VmState, ConfigStream) {
    let envoy = FakeEnvoy::new();
    let host = FakeHost::new(&envoy);
    let bootstrap = parse_bootstrap(BOOTSTRAP.as_bytes()).expect("bootstrap");
    let settings = bootstrap.control_plane.clone().expect("control plane");
    let vm = VmState::new(bootstrap, Metrics::define(&host), [1; 32]);
    let stream = ConfigStream::new(settings, "ingress/pod-1/vm-0".to_owned());
    (envoy, host, vm, stream)
}

fn sent(host: &FakeHost) -> Vec<(u32, ConfigRequest)> {
    host.grpc_sent
        .borrow()
        .iter()
        .map(|(token, bytes)| {
            (
                *token,
                ConfigRequest::decode(bytes.as_slice()).expect("decodes"),
            )
        })
        .collect()
}

fn response(version: &str, nonce: &str, revision: i64, snapshot_json: Vec<u8>) -> Vec<u8> {
    ConfigResponse {
        version_info: version.to_owned(),
        nonce: nonce.to_owned(),
        revision,
        content_hash: String::new(),
        snapshot_json,
        observed_unix_nanos: 0,
    }
    .encode_to_vec()
}

fn empty_snapshot() -> Vec<u8> {
    Snapshot::default().to_json()
}

fn token(stream: &ConfigStream) -> u32 {
    match stream.phase() {
        Phase::Open { token } => token,
        other => panic!("stream not open: {other:?}"),
    }
}

#[test]
fn the_first_tick_opens_the_stream_and_says_hello() {
    let (_envoy, host, vm, mut stream) = setup();
    stream.on_tick(&host, &vm, NOW);
    assert_eq!(
        *host.grpc_opened.borrow(),
        vec!["sidestream-control-plane".to_owned()]
    );
    let requests = sent(&host);
    assert_eq!(requests.len(), 1);
    let (t, hello) = &requests[0];
    assert_eq!(*t, token(&stream));
    let node = hello.node.as_ref().expect("node in the first request");
    assert_eq!(node.id, "ingress/pod-1/vm-0");
    assert_eq!(node.cluster, "ingress");
    assert_eq!(node.client_kind, "filter");
    assert_eq!(hello.kinds, vec!["trace", "releases", "stream-limits"]);
    assert_eq!(hello.version_info, "");
    assert_eq!(hello.response_nonce, "");
    // Further ticks do not open more streams.
    stream.on_tick(&host, &vm, NOW + 1000 * MS);
    assert_eq!(host.grpc_opened.borrow().len(), 1);
}

#[test]
fn a_good_snapshot_is_applied_and_acked() {
    let (envoy, host, vm, mut stream) = setup();
    assert_eq!(vm.snapshot().releases.len(), 1, "embedded defaults first");
    stream.on_tick(&host, &vm, NOW);
    let t = token(&stream);
    stream.on_message(
        &host,
        &vm,
        t,
        &response("42-abcd", "n1", 42, empty_snapshot()),
    );
    assert!(vm.snapshot().releases.is_empty(), "snapshot applied");
    assert_eq!(stream.version(), "42-abcd");
    let requests = sent(&host);
    let (_, ack) = requests.last().expect("ack");
    assert_eq!(ack.version_info, "42-abcd");
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    assert_eq!(envoy.metric(metrics::CONFIG_UPDATES_APPLIED.name), 1);
    assert_eq!(envoy.metric(metrics::CONFIG_VERSION.name), 42);
}

#[test]
fn a_bad_snapshot_is_nacked_and_the_last_good_one_stays() {
    let (envoy, host, vm, mut stream) = setup();
    stream.on_tick(&host, &vm, NOW);
    let t = token(&stream);
    stream.on_message(
        &host,
        &vm,
        t,
        &response("7-aaaa", "n1", 7, empty_snapshot()),
    );
    let bad = br#"{"releases":{"x":{"groups":["a"],"defaultGroup":"nope"}}}"#.to_vec();
    stream.on_message(&host, &vm, t, &response("8-bbbb", "n2", 8, bad));
    assert_eq!(stream.version(), "7-aaaa");
    assert!(vm.snapshot().releases.is_empty(), "last good kept");
    let requests = sent(&host);
    let (_, nack) = requests.last().expect("nack");
    assert_eq!(nack.version_info, "7-aaaa");
    assert_eq!(nack.response_nonce, "n2");
    let detail = nack.error_detail.as_ref().expect("error detail");
    assert!(detail.message.contains("8-bbbb"), "{}", detail.message);
    assert!(
        detail.message.contains("defaultGroup"),
        "{}",
        detail.message
    );
    assert_eq!(envoy.metric(metrics::CONFIG_NACKS.name), 1);
    assert_eq!(envoy.metric(metrics::CONFIG_VERSION.name), 7);

    // Undecodable bytes are NACKed too.
    stream.on_message(&host, &vm, t, &[0xff, 0xff, 0xff]);
    assert_eq!(envoy.metric(metrics::CONFIG_NACKS.name), 2);
    assert_eq!(stream.version(), "7-aaaa");
}

#[test]
fn a_closed_stream_is_reopened_after_a_jittered_backoff_with_the_version_in_force() {
    let (envoy, host, vm, mut stream) = setup();
    stream.on_tick(&host, &vm, NOW);
    let t = token(&stream);
    stream.on_message(
        &host,
        &vm,
        t,
        &response("3-cccc", "n1", 3, empty_snapshot()),
    );
    stream.on_close(&vm, t, 14, "unavailable", NOW + 10 * MS);
    let Phase::Waiting { retry_at } = stream.phase() else {
        panic!("waiting expected");
    };
    let delay = retry_at - (NOW + 10 * MS);
    assert!(
        (0..200 * MS).contains(&delay),
        "full jitter within the first window: {delay}"
    );
    // Still keeps the applied config.
    assert!(vm.snapshot().releases.is_empty());
    stream.on_tick(&host, &vm, retry_at - 1);
    assert_eq!(host.grpc_opened.borrow().len(), 1);
    stream.on_tick(&host, &vm, retry_at);
    assert_eq!(host.grpc_opened.borrow().len(), 2);
    assert_eq!(envoy.metric(metrics::CONFIG_STREAM_RECONNECTS.name), 1);
    let requests = sent(&host);
    let (t2, hello) = requests.last().expect("hello");
    assert_ne!(*t2, t);
    assert_eq!(hello.version_info, "3-cccc");
    assert!(hello.node.is_some());
    // Messages and closes of the old stream are ignored.
    stream.on_message(&host, &vm, t, &response("9-dddd", "x", 9, empty_snapshot()));
    assert_eq!(stream.version(), "3-cccc");
    stream.on_close(&vm, t, 14, "", NOW);
    assert_eq!(stream.phase(), Phase::Open { token: *t2 });
}

#[test]
fn failed_attempts_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
    let (envoy, host, vm, mut stream) = setup();
    host.fail("open_grpc_stream");
    let mut now = NOW;
    let mut delays = Vec::new();
    for _ in 0..10 {
        stream.on_tick(&host, &vm, now);
        let Phase::Waiting { retry_at } = stream.phase() else {
            panic!("waiting expected");
        };
        delays.push((retry_at - now) / MS);
        now = retry_at;
    }
    // Full jitter: [0, d) for d = 200, 400, 800, ... capped at 5000.
    let ceilings = [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000];
    for (delay, ceiling) in delays.iter().zip(ceilings) {
        assert!((0..ceiling).contains(delay), "{delays:?}");
    }
    // The window grew: five draws from 5 s windows all landing under 200 ms
    // would take a backoff that does not double (odds about 10^-7 otherwise).
    assert!(delays[5..].iter().any(|d| *d >= 200), "{delays:?}");
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 10);
    assert_eq!(envoy.metric(metrics::CONFIG_STREAM_RECONNECTS.name), 9);

    host.failing.borrow_mut().clear();
    stream.on_tick(&host, &vm, now);
    let t = token(&stream);
    stream.on_message(&host, &vm, t, &response("1-a", "n", 1, empty_snapshot()));
    stream.on_close(&vm, t, 0, "", now);
    let Phase::Waiting { retry_at } = stream.phase() else {
        panic!("waiting expected");
    };
    assert!(retry_at - now <= 200 * MS, "backoff reset after a response");
}

#[test]
fn a_failed_hello_cancels_the_stream_and_retries() {
    let (_envoy, host, vm, mut stream) = setup();
    host.fail("send_grpc_stream_message");
    stream.on_tick(&host, &vm, NOW);
    assert_eq!(*host.grpc_cancelled.borrow(), vec![1]);
    assert!(matches!(stream.phase(), Phase::Waiting { .. }));
}
