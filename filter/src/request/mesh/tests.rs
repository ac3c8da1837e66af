use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use sidestream_proto::limits::v1::{AcquireRequest, AcquireResponse, ReleaseRequest, SyncRequest};

use super::super::{RequestFlow, Verdict};
use crate::configure::parse_bootstrap;
use crate::fake::{FakeEnvoy, FakeHost, GrpcCall, LocalResponse};
use crate::host::{CallOwner, GrpcCode};
use crate::metrics::{self, Metrics};
use crate::vm::VmState;

const MS: u64 = 1_000_000;

/// A mesh-scoped copy of the standalone tenant policy, with a release policy
/// so colouring after the answer shows.
fn bootstrap(fallback: &str, limiter: bool) -> String {
    let limiter = if limiter {
        r#""limiter": { "cluster": "sidestream-limiter" },"#
    } else {
        ""
    };
    format!(
        r#"{{
  "nodeId": "mesh",
  {limiter}
  "defaults": {{
    "releases": {{ "grey": {{ "groups": ["stable", "canary"], "defaultGroup": "stable" }} }},
    "streamLimits": {{
      "tenant-streams": {{
        "streamKinds": ["sse", "websocket", "grpc"],
        "key": {{ "source": "header", "name": "x-tenant-id" }},
        "newStreamsPerSecond": 5, "burst": 2, "maxConcurrent": 20,
        "scope": "mesh", "mesh": {{ "fallback": "{fallback}", "timeoutMs": 40 }}
      }}
    }}
  }}
}}"#
    )
}

fn mesh_vm(envoy: &Rc<FakeEnvoy>, fallback: &str) -> VmState {
    vm_with(envoy, &bootstrap(fallback, true))
}

fn vm_with(envoy: &Rc<FakeEnvoy>, bootstrap: &str) -> VmState {
    let bootstrap = parse_bootstrap(bootstrap.as_bytes()).expect("bootstrap parses");
    let vm = VmState::new(bootstrap, Metrics::define(&FakeHost::new(envoy)), [3; 32]);
    vm.mesh.set_instance("mesh/envoy-1/vm-0", 0xabcd);
    vm.mesh.set_root_context(1);
    vm
}

fn sse(tenant: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":path", "/events"),
        (":authority", "example.com"),
        ("accept", "text/event-stream"),
        ("x-tenant-id", tenant),
    ]
}

fn calls(host: &FakeHost) -> Vec<GrpcCall> {
    host.grpc_calls.borrow().clone()
}

fn last_call(host: &FakeHost) -> GrpcCall {
    calls(host).pop().expect("a call was dispatched")
}

fn answer(verdict: i32, retry_after_ms: u64, limit: u32) -> Vec<u8> {
    AcquireResponse {
        verdict,
        retry_after_ms,
        reset_ms: retry_after_ms,
        limit,
        remaining: 0,
        active: 0,
        lease_ms: 3_000,
    }
    .encode_to_vec()
}

/// Opens a stream: the request pauses with an Acquire in flight.
fn open(host: &FakeHost, vm: &VmState, context: u32) -> (RequestFlow, u32) {
    let mut flow = RequestFlow::for_context(context);
    assert_eq!(flow.on_request_headers(host, vm), Verdict::Pause);
    assert!(flow.waits_for_limiter());
    (flow, last_call(host).token)
}

fn status(host: &FakeHost) -> Option<u32> {
    match &*host.local_response.borrow() {
        Some(LocalResponse::Http { status, .. }) => Some(*status),
        _ => None,
    }
}

fn local_header(host: &FakeHost, name: &str) -> Option<String> {
    match &*host.local_response.borrow() {
        Some(LocalResponse::Http { headers, .. }) => headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        Some(LocalResponse::Grpc { metadata, .. }) => metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        None => None,
    }
}

#[test]
fn a_mesh_stream_asks_the_limiter_and_waits() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let (_flow, _) = open(&host, &vm, 7);
    let call = last_call(&host);
    assert_eq!(call.owner, CallOwner::Current);
    assert_eq!(call.cluster, "sidestream-limiter");
    assert_eq!(call.service, "sidestream.limits.v1.StreamLimiter");
    assert_eq!(call.method, "Acquire");
    assert_eq!(call.timeout, Duration::from_millis(40));
    let request = AcquireRequest::decode(call.message.as_slice()).expect("an AcquireRequest");
    assert_eq!(request.instance, "mesh/envoy-1/vm-0/000000000000abcd");
    assert_eq!(request.policy, "tenant-streams");
    assert_eq!(request.key, "h:acme");
    let limits = request.limits.expect("limits");
    assert_eq!(
        (limits.rate_milli, limits.burst, limits.max_concurrent),
        (5000, 2, 20)
    );
    // Nothing decided yet: not coloured, nothing local, nothing counted.
    assert_eq!(host.header("x-sidestream-group"), None);
    assert!(envoy
        .shared_keys()
        .iter()
        .all(|k| !k.starts_with("sidestream.limit.")));
    assert_eq!(host.resumed.get(), 0);
    assert_eq!(envoy.metric(metrics::STREAMS_ADMITTED.name), 0);
}

#[test]
fn admitted_resumes_coloured_and_the_end_releases_from_the_root() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let (mut flow, token) = open(&host, &vm, 7);
    host.now.set(host.now.get() + 2 * MS);
    flow.on_limiter_answer(&host, &vm, token, 0, &answer(1, 0, 2));
    assert_eq!(host.resumed.get(), 1);
    assert_eq!(host.local_response.borrow().clone(), None);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("stable"));
    assert!(flow.holds_stream());
    assert_eq!(envoy.metric(metrics::MESH_ADMITTED.name), 1);
    assert_eq!(envoy.metric(metrics::STREAMS_ADMITTED.name), 1);
    assert_eq!(envoy.metric(metrics::STREAMS_ACTIVE.name), 1);
    assert_eq!(envoy.samples(metrics::MESH_RTT_US.name), [2000]);
    assert_eq!(vm.mesh.held.borrow().open("tenant-streams", "h:acme"), 1);
    // The limiter's lease (3 s) sets the Sync period.
    assert_eq!(vm.mesh.sync_period(), Duration::from_secs(1));
    // A second answer for the same token changes nothing.
    flow.on_limiter_answer(&host, &vm, token, 0, &answer(1, 0, 2));
    assert_eq!(host.resumed.get(), 1);

    flow.on_stream_end(&host, &vm);
    flow.on_stream_end(&host, &vm);
    let release = last_call(&host);
    assert_eq!(release.method, "Release");
    assert_eq!(
        release.owner,
        CallOwner::Root {
            root: 1,
            current: 7
        }
    );
    let request = ReleaseRequest::decode(release.message.as_slice()).expect("a ReleaseRequest");
    assert_eq!(
        (
            request.instance.as_str(),
            request.policy.as_str(),
            request.key.as_str()
        ),
        (
            "mesh/envoy-1/vm-0/000000000000abcd",
            "tenant-streams",
            "h:acme"
        )
    );
    assert_eq!(calls(&host).len(), 2, "one Release for two end callbacks");
    assert_eq!(envoy.metric(metrics::STREAMS_ACTIVE.name), 0);
    assert_eq!(vm.mesh.held.borrow().open("tenant-streams", "h:acme"), 0);
}

#[test]
fn a_mesh_refusal_is_exactly_the_local_refusal() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let (mut flow, token) = open(&host, &vm, 7);
    flow.on_limiter_answer(&host, &vm, token, 0, &answer(2, 1_400, 2));
    assert_eq!(host.resumed.get(), 0);
    assert_eq!(status(&host), Some(429));
    assert_eq!(local_header(&host, "retry-after").as_deref(), Some("2"));
    assert_eq!(local_header(&host, "ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(
        local_header(&host, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(local_header(&host, "ratelimit-reset").as_deref(), Some("2"));
    assert_eq!(
        local_header(&host, "ratelimit-policy").as_deref(),
        Some("5;w=1;burst=2;concurrent=20")
    );
    assert!(!flow.holds_stream());
    assert_eq!(envoy.metric(metrics::MESH_REFUSED.name), 1);
    assert_eq!(envoy.metric(metrics::STREAMS_REFUSED.name), 1);
    assert!(
        vm.mesh.held.borrow().is_empty()
            || vm.mesh.held.borrow().open("tenant-streams", "h:acme") == 0
    );
    flow.on_stream_end(&host, &vm);
    assert_eq!(calls(&host).len(), 1, "nothing to release");

    // gRPC: RESOURCE_EXHAUSTED with the same metadata.
    let mut headers = sse("acme");
    headers.retain(|(n, _)| *n != "accept");
    headers.push(("content-type", "application/grpc"));
    let host = FakeHost::with_request(&envoy, &headers);
    let (mut flow, token) = open(&host, &vm, 8);
    flow.on_limiter_answer(&host, &vm, token, 0, &answer(3, 1_000, 20));
    match &*host.local_response.borrow() {
        Some(LocalResponse::Grpc { code, .. }) => assert_eq!(*code, GrpcCode::ResourceExhausted),
        other => panic!("expected a gRPC refusal, got {other:?}"),
    }
    assert_eq!(
        local_header(&host, "ratelimit-limit").as_deref(),
        Some("20")
    );
    assert_eq!(local_header(&host, "retry-after").as_deref(), Some("1"));
}

#[test]
fn failures_fall_back_to_local_limits_and_are_counted_by_cause() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    // Unreachable (UNAVAILABLE at once), Envoy's timeout (UNAVAILABLE at the
    // timeout), another status, an unreadable body, an unknown verdict.
    let cases: [(u32, u64, Vec<u8>, &str); 5] = [
        (14, 1, Vec::new(), metrics::MESH_FALLBACK_UNAVAILABLE.name),
        (14, 40, Vec::new(), metrics::MESH_FALLBACK_TIMEOUT.name),
        (13, 1, Vec::new(), metrics::MESH_FALLBACK_ERROR.name),
        (
            0,
            1,
            vec![0xff, 0xff, 0xff],
            metrics::MESH_FALLBACK_ERROR.name,
        ),
        (0, 1, answer(7, 0, 0), metrics::MESH_FALLBACK_ERROR.name),
    ];
    for (i, (grpc_status, after_ms, body, counter)) in cases.into_iter().enumerate() {
        let before = envoy.metric(counter);
        let host = FakeHost::with_request(&envoy, &sse("acme"));
        let (mut flow, token) = open(&host, &vm, 10 + u32::try_from(i).expect("small"));
        host.now.set(host.now.get() + after_ms * MS);
        flow.on_limiter_answer(&host, &vm, token, grpc_status, &body);
        assert_eq!(envoy.metric(counter), before + 1, "case {i}: {counter}");
        // The local bucket (burst 2) decides: two admitted, then refused.
        if i < 2 {
            assert_eq!(host.resumed.get(), 1, "case {i}");
            assert!(flow.holds_stream(), "case {i}");
        } else {
            assert_eq!(host.resumed.get(), 0, "case {i}");
            assert_eq!(status(&host), Some(429), "case {i}");
        }
        assert!(
            envoy
                .shared_keys()
                .contains(&"sidestream.limit.tenant-streams.h:acme".to_owned()),
            "case {i}: the local bucket"
        );
    }
    assert_eq!(envoy.metric(metrics::MESH_ADMITTED.name), 0);
    // Only the unknown verdict was an answer with a round trip.
    assert_eq!(envoy.samples(metrics::MESH_RTT_US.name), [1000]);
}

#[test]
fn the_fallback_can_refuse_or_admit() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "refuse");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let (mut flow, token) = open(&host, &vm, 7);
    flow.on_limiter_answer(&host, &vm, token, 14, &[]);
    assert_eq!(status(&host), Some(503));
    assert_eq!(local_header(&host, "retry-after").as_deref(), Some("1"));
    assert_eq!(host.resumed.get(), 0);
    assert_eq!(envoy.metric(metrics::STREAMS_REFUSED.name), 1);

    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "admit");
    for _ in 0..5 {
        let host = FakeHost::with_request(&envoy, &sse("acme"));
        let (mut flow, token) = open(&host, &vm, 7);
        flow.on_limiter_answer(&host, &vm, token, 4, &[]);
        assert_eq!(host.resumed.get(), 1);
        assert_eq!(host.header("x-sidestream-group").as_deref(), Some("stable"));
        assert!(!flow.holds_stream(), "admitted uncounted");
    }
    assert!(envoy
        .shared_keys()
        .iter()
        .all(|k| !k.starts_with("sidestream.limit.")));
    assert_eq!(envoy.metric(metrics::MESH_FALLBACK_TIMEOUT.name), 5);
    assert_eq!(envoy.metric(metrics::STREAMS_ADMITTED.name), 5);
}

#[test]
fn no_limiter_or_no_call_falls_back_at_once() {
    // A policy pushed by the control plane to a filter without a limiter.
    let envoy = FakeEnvoy::new();
    let vm = vm_with(&envoy, r#"{ "nodeId": "x" }"#);
    let snapshot = sidestream_core::config::Snapshot::from_json(
        br#"{ "streamLimits": { "t": { "newStreamsPerSecond": 1, "burst": 1, "scope": "mesh" } } }"#,
    )
    .expect("snapshot");
    vm.replace_snapshot(snapshot);
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let mut flow = RequestFlow::for_context(7);
    assert_eq!(flow.on_request_headers(&host, &vm), Verdict::Continue);
    assert!(flow.holds_stream(), "local limits applied");
    assert!(calls(&host).is_empty());
    assert_eq!(envoy.metric(metrics::MESH_FALLBACK_UNAVAILABLE.name), 1);

    // The call cannot be dispatched (e.g. an unknown cluster).
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    host.fail("dispatch_grpc_call");
    let mut flow = RequestFlow::for_context(7);
    assert_eq!(flow.on_request_headers(&host, &vm), Verdict::Continue);
    assert!(flow.holds_stream());
    assert_eq!(envoy.metric(metrics::MESH_FALLBACK_UNAVAILABLE.name), 1);
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 1);
}

#[test]
fn a_stream_gone_before_the_answer_is_settled_by_the_next_sync() {
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "local");
    let host = FakeHost::with_request(&envoy, &sse("acme"));
    let (mut flow, token) = open(&host, &vm, 7);
    flow.on_stream_end(&host, &vm);
    assert!(!flow.waits_for_limiter());
    // A late answer is ignored.
    flow.on_limiter_answer(&host, &vm, token, 0, &answer(1, 0, 2));
    assert_eq!(host.resumed.get(), 0);
    assert!(!flow.holds_stream());
    assert_eq!(calls(&host).len(), 1, "no Release for a slot never seen");
    // The limiter may have counted it: the next Sync says 0.
    let now = host.now.get();
    vm.mesh.on_tick(&host, &vm.metrics, now);
    vm.mesh.on_tick(&host, &vm.metrics, now + 5_000 * MS);
    let sync = last_call(&host);
    assert_eq!(sync.method, "Sync");
    let request = SyncRequest::decode(sync.message.as_slice()).expect("a SyncRequest");
    assert_eq!(request.holdings.len(), 1);
    assert_eq!(request.holdings[0].key, "h:acme");
    assert_eq!(request.holdings[0].open, 0);
}

#[test]
fn hostile_answers_never_panic() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(9);
    let mut below = |n: u64| rng.next_u64() % n;
    let envoy = FakeEnvoy::new();
    let vm = mesh_vm(&envoy, "admit");
    for i in 0..2_000u32 {
        let host = FakeHost::with_request(&envoy, &sse("acme"));
        let (mut flow, token) = open(&host, &vm, i + 2);
        let len = below(64);
        let mut body: Vec<u8> = (0..len).map(|_| below(256) as u8).collect();
        if i % 3 == 0 {
            // A valid message cut short, with arbitrary numbers.
            body = answer(below(5) as i32, below(u64::MAX), below(1 << 32) as u32);
            body.truncate(below(body.len() as u64 + 1) as usize);
        }
        let status = if i % 5 == 0 { below(1 << 32) as u32 } else { 0 };
        flow.on_limiter_answer(&host, &vm, token, status, &body);
        assert!(!flow.waits_for_limiter());
        flow.on_stream_end(&host, &vm);
    }
}
