use std::time::Duration;

use prost::Message;
use sidestream_proto::limits::v1::{SyncRequest, SyncResponse};

use super::*;
use crate::configure::parse_bootstrap;
use crate::fake::{FakeEnvoy, FakeHost};
use crate::metrics;
use crate::vm::VmState;

const S: u64 = 1_000_000_000;

fn vm(host: &FakeHost) -> VmState {
    let bootstrap = parse_bootstrap(br#"{ "nodeId": "mesh", "limiter": { "cluster": "lim" } }"#)
        .expect("bootstrap");
    VmState::new(bootstrap, Metrics::define(host), [5; 32])
}

fn syncs(host: &FakeHost) -> Vec<(u32, SyncRequest)> {
    host.grpc_calls
        .borrow()
        .iter()
        .filter(|c| c.method == SYNC)
        .map(|c| {
            assert_eq!(c.cluster, "lim");
            assert_eq!(c.owner, CallOwner::Current);
            (
                c.token,
                SyncRequest::decode(c.message.as_slice()).expect("a SyncRequest"),
            )
        })
        .collect()
}

#[test]
fn instances_are_the_node_id_plus_a_boot_nonce() {
    let envoy = FakeEnvoy::new();
    let host = FakeHost::new(&envoy);
    let a = vm(&host);
    let b = vm(&host);
    // Before the glue names them: the bootstrap's node id and a nonce.
    assert!(
        a.mesh.instance().starts_with("mesh/"),
        "{}",
        a.mesh.instance()
    );
    a.mesh.set_instance("mesh/pod-1/vm-0", 1);
    b.mesh
        .set_instance("mesh/pod-1/vm-0", 0x0123_4567_89ab_cdef);
    assert_eq!(a.mesh.instance(), "mesh/pod-1/vm-0/0000000000000001");
    assert_eq!(b.mesh.instance(), "mesh/pod-1/vm-0/0123456789abcdef");
    // Releases belong to the root context, so Envoy does not cancel them
    // with the stream.
    assert_eq!(a.mesh.detached_owner(Some(9)), CallOwner::Current);
    a.mesh.set_root_context(1);
    assert_eq!(
        a.mesh.detached_owner(Some(9)),
        CallOwner::Root {
            root: 1,
            current: 9
        }
    );
    assert_eq!(a.mesh.detached_owner(None), CallOwner::Current);
}

#[test]
fn the_tick_syncs_held_counts_every_third_of_the_lease() {
    let envoy = FakeEnvoy::new();
    let host = FakeHost::new(&envoy);
    let vm = vm(&host);
    let t0 = 100 * S;
    // Nothing held: no Sync, however long.
    vm.mesh.on_tick(&host, &vm.metrics, t0);
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 6 * S);
    assert!(syncs(&host).is_empty());
    {
        let mut held = vm.mesh.held.borrow_mut();
        held.acquire_sent("p", "h:a");
        held.acquire_ended(
            "p",
            "h:a",
            sidestream_core::limit::mesh::AcquireEnd::Admitted,
        );
    }
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 10 * S);
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 11 * S);
    let sent = syncs(&host);
    assert_eq!(sent.len(), 1);
    let (token, request) = &sent[0];
    assert_eq!(request.instance, vm.mesh.instance());
    assert_eq!(request.holdings.len(), 1);
    assert_eq!(
        (
            request.holdings[0].policy.as_str(),
            request.holdings[0].key.as_str(),
            request.holdings[0].open
        ),
        ("p", "h:a", 1)
    );
    // None while one is in flight.
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 12 * S);
    assert_eq!(syncs(&host).len(), 1);
    // The answer names a 3 s lease: a Sync a second later.
    let answer = SyncResponse { lease_ms: 3_000 }.encode_to_vec();
    assert!(!vm
        .mesh
        .on_root_call_answer(&host, &vm.metrics, token + 100, 0, &answer, t0 + 12 * S));
    assert!(vm
        .mesh
        .on_root_call_answer(&host, &vm.metrics, *token, 0, &answer, t0 + 12 * S));
    assert_eq!(vm.mesh.sync_period(), Duration::from_secs(1));
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 12 * S + S / 2);
    assert_eq!(syncs(&host).len(), 1);
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 13 * S);
    assert_eq!(syncs(&host).len(), 2);
    assert_eq!(envoy.metric(metrics::MESH_SYNC_FAILURES.name), 0);

    // A failed or unreadable answer is counted; the next one comes on time.
    let (token, _) = syncs(&host)[1].clone();
    assert!(vm
        .mesh
        .on_root_call_answer(&host, &vm.metrics, token, 14, &[], t0 + 13 * S));
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 14 * S);
    let (token, _) = syncs(&host)[2].clone();
    assert!(vm
        .mesh
        .on_root_call_answer(&host, &vm.metrics, token, 0, &[0xff], t0 + 14 * S));
    assert_eq!(envoy.metric(metrics::MESH_SYNC_FAILURES.name), 2);
    // An answer that never comes does not stop the Syncs for good.
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 15 * S);
    assert_eq!(syncs(&host).len(), 4);
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 16 * S);
    assert_eq!(syncs(&host).len(), 4, "in flight");
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 20 * S);
    assert_eq!(syncs(&host).len(), 5, "given up on after twice its timeout");
    // A failed dispatch is counted too.
    let (token, _) = syncs(&host)[4].clone();
    assert!(vm
        .mesh
        .on_root_call_answer(&host, &vm.metrics, token, 0, &answer, t0 + 20 * S));
    host.fail("dispatch_grpc_call");
    vm.mesh.on_tick(&host, &vm.metrics, t0 + 21 * S);
    assert_eq!(envoy.metric(metrics::MESH_SYNC_FAILURES.name), 3);
}

#[test]
fn no_limiter_no_sync() {
    let envoy = FakeEnvoy::new();
    let host = FakeHost::new(&envoy);
    let bootstrap = parse_bootstrap(br#"{ "nodeId": "x" }"#).expect("bootstrap");
    let vm = VmState::new(bootstrap, Metrics::define(&host), [5; 32]);
    vm.mesh.held.borrow_mut().acquire_sent("p", "k");
    for i in 0..20 {
        vm.mesh.on_tick(&host, &vm.metrics, i * S);
    }
    assert!(host.grpc_calls.borrow().is_empty());
}
