//! The config stream to the control plane (proto/sidestream/config/v1/discovery.proto),
//! held from the root context of every Wasm VM.
//!
//! **One stream per worker VM, not one per Envoy.** Each Envoy worker runs its own
//! VM with its own root context, and a request only sees the snapshot of the VM it
//! runs in. With one stream per VM, each worker applies a pushed snapshot the
//! moment it arrives: no hop through shared data, no polling on a tick, nothing
//! to elect or fail over, and the control plane sees (and records convergence
//! for) every worker that actually serves traffic. The cost is one small
//! long-lived HTTP/2 stream per worker (plus one for Envoy's main-thread VM),
//! each with its own node id `<nodeId>/<Envoy node id>/vm-<n>` (see
//! [`crate::configure::stream_node_id`]). One-per-Envoy would need a leader
//! VM to copy snapshots into shared data and every other VM to poll for them,
//! adding up to a tick of latency to every update and a failover path.
//!
//! State machine: `Waiting { retry_at }` → (tick at or after `retry_at`) open the
//! stream and send the first request (node, kinds, the version in force) →
//! `Open`. Each response is parsed with `Snapshot::from_json`: on success it is
//! put in force atomically (requests already running keep the one they started
//! with) and ACKed; on failure it is NACKed with the error and the last good
//! snapshot stays. A close goes back to `Waiting` with a capped, jittered,
//! exponential backoff; the backoff resets once a stream delivers a response.
//! Until the first snapshot the VM runs the bootstrap's embedded defaults.
//! Token buckets and stream counters live in shared data keyed by policy name and
//! key, so a snapshot that leaves a policy unchanged leaves its state untouched.

use std::time::Duration;

use prost::Message;
use sidestream_core::backoff::{unit_interval, Backoff};
use sidestream_core::config::{ControlPlaneSettings, Snapshot};
use sidestream_proto::config::v1::{
    ConfigRequest, ConfigResponse, ErrorDetail, Node, STREAM_CONFIG_METHOD, STREAM_CONFIG_SERVICE,
};

use crate::host::{GrpcHost, Host};
use crate::vm::VmState;

/// How often the root context ticks while a control plane is configured.
pub const TICK_PERIOD: Duration = Duration::from_millis(50);

/// The kinds the filter asks for (topics are the push servers' business).
pub const KINDS: [&str; 3] = ["trace", "releases", "stream-limits"];

/// What the node says it is.
pub const CLIENT_KIND: &str = "filter";

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No stream; open one at the first tick at or after `retry_at` (ns).
    Waiting { retry_at: u64 },
    /// A stream is open under this token.
    Open { token: u32 },
}

/// One VM's config stream.
#[derive(Debug)]
pub struct ConfigStream {
    settings: ControlPlaneSettings,
    node_id: String,
    phase: Phase,
    /// Reconnect delays; reset once a stream delivers a response.
    backoff: Backoff,
    /// Whether a stream was opened before (later opens are reconnects).
    opened_before: bool,
    /// The version in force ("" while the embedded defaults run).
    version: String,
}

impl ConfigStream {
    /// A stream to be opened at the first tick.
    pub fn new(settings: ControlPlaneSettings, node_id: String) -> Self {
        let backoff = Backoff::new(settings.initial_backoff, settings.max_backoff);
        ConfigStream {
            settings,
            node_id,
            phase: Phase::Waiting { retry_at: 0 },
            backoff,
            opened_before: false,
            version: String::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The version in force ("" = embedded defaults).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The node id the stream announces.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The root context ticked.
    pub fn on_tick<H: Host + GrpcHost>(&mut self, host: &H, vm: &VmState, now: u64) {
        if let Phase::Waiting { retry_at } = self.phase {
            if now >= retry_at {
                self.open(host, vm, now);
            }
        }
    }

    fn open<H: Host + GrpcHost>(&mut self, host: &H, vm: &VmState, now: u64) {
        if self.opened_before {
            vm.metrics.add(host, vm.metrics.config_stream_reconnects, 1);
        }
        self.opened_before = true;
        let token = match host.open_grpc_stream(
            &self.settings.cluster,
            STREAM_CONFIG_SERVICE,
            STREAM_CONFIG_METHOD,
            &[],
        ) {
            Ok(token) => token,
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                self.retry_later(vm, now);
                return;
            }
        };
        let hello = ConfigRequest {
            node: Some(Node {
                id: self.node_id.clone(),
                cluster: vm.bootstrap.node_id.clone(),
                client_kind: CLIENT_KIND.to_owned(),
                metadata: Default::default(),
            }),
            kinds: KINDS.iter().map(|kind| (*kind).to_owned()).collect(),
            version_info: self.version.clone(),
            response_nonce: String::new(),
            error_detail: None,
        };
        if let Err(error) = host.send_grpc_stream_message(token, &hello.encode_to_vec()) {
            vm.metrics.host_failure(host, &error);
            if let Err(error) = host.cancel_grpc_stream(token) {
                vm.metrics.host_failure(host, &error);
            }
            self.retry_later(vm, now);
            return;
        }
        log::info!(
            "sidestream: config stream opened to cluster {} as {}",
            self.settings.cluster,
            self.node_id
        );
        self.phase = Phase::Open { token };
    }

    /// A response arrived on stream `token`.
    pub fn on_message<H: Host + GrpcHost>(
        &mut self,
        host: &H,
        vm: &VmState,
        token: u32,
        message: &[u8],
    ) {
        if self.phase != (Phase::Open { token }) {
            return;
        }
        self.backoff.reset();
        let response = match ConfigResponse::decode(message) {
            Ok(response) => response,
            Err(error) => {
                let error = format!("undecodable ConfigResponse: {error}");
                self.nack(host, vm, token, String::new(), error);
                return;
            }
        };
        match Snapshot::from_json(&response.snapshot_json) {
            Ok(snapshot) => {
                vm.replace_snapshot(snapshot);
                self.version = response.version_info.clone();
                vm.metrics.add(host, vm.metrics.config_updates_applied, 1);
                vm.metrics.set(
                    host,
                    vm.metrics.config_version,
                    u64::try_from(response.revision).unwrap_or(0),
                );
                log::info!("sidestream: config {} applied", self.version);
                let ack = ConfigRequest {
                    version_info: self.version.clone(),
                    response_nonce: response.nonce,
                    ..ConfigRequest::default()
                };
                self.send(host, vm, token, &ack);
            }
            Err(error) => {
                let error = format!("config {} rejected: {error}", response.version_info);
                self.nack(host, vm, token, response.nonce, error);
            }
        }
    }

    fn nack<H: Host + GrpcHost>(
        &mut self,
        host: &H,
        vm: &VmState,
        token: u32,
        nonce: String,
        error: String,
    ) {
        log::warn!("sidestream: {error}; keeping config '{}'", self.version);
        vm.metrics.add(host, vm.metrics.config_nacks, 1);
        let nack = ConfigRequest {
            version_info: self.version.clone(),
            response_nonce: nonce,
            error_detail: Some(ErrorDetail { message: error }),
            ..ConfigRequest::default()
        };
        self.send(host, vm, token, &nack);
    }

    fn send<H: Host + GrpcHost>(
        &mut self,
        host: &H,
        vm: &VmState,
        token: u32,
        request: &ConfigRequest,
    ) {
        if let Err(error) = host.send_grpc_stream_message(token, &request.encode_to_vec()) {
            vm.metrics.host_failure(host, &error);
        }
    }

    /// Stream `token` closed (by the server, the cluster, or a failure).
    pub fn on_close(&mut self, vm: &VmState, token: u32, status: u32, message: &str, now: u64) {
        if self.phase != (Phase::Open { token }) {
            return;
        }
        log::warn!(
            "sidestream: config stream to {} closed (grpc-status {status} {message}); keeping config '{}'",
            self.settings.cluster,
            self.version
        );
        self.retry_later(vm, now);
    }

    fn retry_later(&mut self, vm: &VmState, now: u64) {
        let delay = self.backoff.next_delay(unit_interval(vm.random_u64()));
        self.phase = Phase::Waiting {
            retry_at: now.saturating_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)),
        };
    }
}

#[cfg(test)]
mod tests;
