//! Mesh-scoped stream limits, the VM's side: the limiter's cluster, this
//! instance's name, the streams it holds per (policy, key), and the Sync it
//! sends from the root context's tick. The per-request side (Acquire,
//! Release) is in `request/mesh.rs`; the decisions are `sidestream_core`'s
//! (`limit::mesh`).
//!
//! **Instance.** Each VM is one instance to the limiter:
//! `<config-stream node id>/<boot nonce>`, i.e.
//! `<nodeId>/<Envoy node id>/vm-<n>/<16 hex>`. The nonce is drawn from the
//! VM's CSPRNG at configuration, so a restarted Envoy (whose VMs number
//! themselves from 0 again) is a new instance, and the dead one's slots expire
//! with its lease instead of being taken over.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use prost::Message;
use sidestream_core::config::StreamLimitPolicy;
use sidestream_core::limit::mesh::{HeldStreams, SyncSchedule};
use sidestream_proto::limits::v1::{
    AcquireRequest, Holding, Limits, ReleaseRequest, SyncRequest, SyncResponse,
    STREAM_LIMITER_SERVICE,
};

use crate::host::{CallOwner, Host};
use crate::metrics::Metrics;

/// `StreamLimiter.Acquire`.
pub const ACQUIRE: &str = "Acquire";
/// `StreamLimiter.Release`.
pub const RELEASE: &str = "Release";
/// `StreamLimiter.Sync`.
pub const SYNC: &str = "Sync";

/// How long a Release may take (nobody waits for it).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a Sync may take; a lost one is repeated a third of a lease later.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// The per-VM state of mesh-scoped limits.
#[derive(Debug)]
pub struct MeshClient {
    cluster: Option<String>,
    instance: RefCell<String>,
    root_context: Cell<Option<u32>>,
    /// Streams this instance holds per (policy, key).
    pub held: RefCell<HeldStreams>,
    schedule: RefCell<SyncSchedule>,
    /// The Sync in flight (its token and when it was sent), if any.
    sync_in_flight: Cell<Option<(u32, u64)>>,
    /// When this instance last sent a Release.
    last_release: Cell<Option<u64>>,
}

impl MeshClient {
    /// A client for the limiter at `cluster` (none: mesh-scoped policies fall
    /// back), named `instance` until [`MeshClient::set_instance`].
    pub fn new(cluster: Option<String>, instance: String) -> Self {
        MeshClient {
            cluster,
            instance: RefCell::new(instance),
            root_context: Cell::new(None),
            held: RefCell::new(HeldStreams::default()),
            schedule: RefCell::new(SyncSchedule::default()),
            sync_in_flight: Cell::new(None),
            last_release: Cell::new(None),
        }
    }

    /// The limiter's Envoy cluster.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// This instance's name as the limiter knows it.
    pub fn instance(&self) -> String {
        self.instance.borrow().clone()
    }

    /// Names this instance `<node id>/<nonce as 16 hex>`.
    pub fn set_instance(&self, node_id: &str, nonce: u64) {
        *self.instance.borrow_mut() = instance_name(node_id, nonce);
    }

    /// The VM's root context id, which owns Release calls.
    pub fn set_root_context(&self, id: u32) {
        self.root_context.set(Some(id));
    }

    /// Who owns a call made from the HTTP context `current` that must
    /// outlive it.
    pub fn detached_owner(&self, current: Option<u32>) -> CallOwner {
        match (self.root_context.get(), current) {
            (Some(root), Some(current)) if root != current => CallOwner::Root { root, current },
            _ => CallOwner::Current,
        }
    }

    /// The limiter said its lease.
    pub fn lease_said(&self, lease_ms: u64, now: u64) {
        self.schedule.borrow_mut().lease_said(lease_ms, now);
    }

    /// The Sync period now.
    pub fn sync_period(&self) -> Duration {
        self.schedule.borrow().period()
    }

    /// An encoded Acquire for a stream of `policy` under `key`.
    pub fn acquire_request(&self, policy: &StreamLimitPolicy, key: &str) -> Vec<u8> {
        AcquireRequest {
            instance: self.instance(),
            policy: policy.name.clone(),
            key: key.to_owned(),
            limits: Some(Limits {
                rate_milli: policy.rate_milli,
                burst: policy.burst,
                max_concurrent: policy.max_concurrent.unwrap_or(0),
            }),
            policy_version: String::new(),
        }
        .encode_to_vec()
    }

    /// A Release was sent at `now` (a Sync due meanwhile waits for it).
    pub fn release_sent(&self, now: u64) {
        self.last_release.set(Some(now));
    }

    /// An encoded Release of one stream of (policy, key).
    pub fn release_request(&self, policy: &str, key: &str) -> Vec<u8> {
        ReleaseRequest {
            instance: self.instance(),
            policy: policy.to_owned(),
            key: key.to_owned(),
        }
        .encode_to_vec()
    }

    /// The root context ticked: sends a Sync when one is due and this
    /// instance has something to say (and none is in flight).
    pub fn on_tick<H: Host>(&self, host: &H, metrics: &Metrics, now: u64) {
        let Some(cluster) = self.cluster.as_deref() else {
            return;
        };
        if let Some((_, sent)) = self.sync_in_flight.get() {
            // Envoy ends the call at SYNC_TIMEOUT; this only guards against a
            // callback that never comes.
            let stuck = now.saturating_sub(sent) > 2 * nanos(SYNC_TIMEOUT);
            if !stuck {
                return;
            }
            self.sync_in_flight.set(None);
        }
        let due = self.schedule.borrow_mut().due(now, self.last_release.get());
        if !due || self.held.borrow().is_empty() {
            return;
        }
        let holdings: Vec<Holding> = self
            .held
            .borrow_mut()
            .sync()
            .into_iter()
            .map(|h| Holding {
                policy: h.policy,
                key: h.key,
                open: h.open,
            })
            .collect();
        if holdings.is_empty() {
            return;
        }
        let request = SyncRequest {
            instance: self.instance(),
            holdings,
        };
        match host.dispatch_grpc_call(
            CallOwner::Current,
            cluster,
            STREAM_LIMITER_SERVICE,
            SYNC,
            &request.encode_to_vec(),
            SYNC_TIMEOUT,
        ) {
            Ok(token) => self.sync_in_flight.set(Some((token, now))),
            Err(error) => {
                metrics.host_failure(host, &error);
                metrics.add(host, metrics.mesh_sync_failures, 1);
            }
        }
    }

    /// A unary call owned by the root context ended. Returns whether it was
    /// this client's Sync.
    pub fn on_root_call_answer<H: Host>(
        &self,
        host: &H,
        metrics: &Metrics,
        token: u32,
        grpc_status: u32,
        body: &[u8],
        now: u64,
    ) -> bool {
        match self.sync_in_flight.get() {
            Some((sync, _)) if sync == token => self.sync_in_flight.set(None),
            _ => return false,
        }
        if grpc_status != 0 {
            log::warn!("sidestream: Sync to the limiter failed (grpc-status {grpc_status})");
            metrics.add(host, metrics.mesh_sync_failures, 1);
            return true;
        }
        match SyncResponse::decode(body) {
            Ok(response) => self.lease_said(response.lease_ms, now),
            Err(error) => {
                log::warn!("sidestream: undecodable SyncResponse from the limiter: {error}");
                metrics.add(host, metrics.mesh_sync_failures, 1);
            }
        }
        true
    }
}

/// `<node id>/<nonce as 16 hex>`.
pub fn instance_name(node_id: &str, nonce: u64) -> String {
    format!("{node_id}/{nonce:016x}")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
