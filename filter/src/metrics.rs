//! The filter's Envoy stats. Envoy keeps Wasm-defined metrics in its custom
//! stat namespace `wasmcustom`: Envoy 1.40 shows `sidestream.traces_started` as
//! `wasmcustom.sidestream.traces_started` in `/stats` and as
//! `sidestream_traces_started` (namespace stripped, no `envoy_` prefix) in
//! `/stats/prometheus`. Counters and gauges are Envoy-wide: every worker's VM
//! defines the same names and adds to the same stat.
//!
//! Requests per release group are one counter per (policy, group):
//! `sidestream.release.<policy>.<group>.requests`, e.g.
//! `sidestream_release_grey_canary_requests` in Prometheus form (Envoy turns every
//! character outside `[a-zA-Z0-9_]` into `_`).
//!
//! | defined as | /stats/prometheus |
//! | --- | --- |
//! | `sidestream.traces_started` | `sidestream_traces_started` (counter) |
//! | `sidestream.traces_continued` | `sidestream_traces_continued` (counter) |
//! | `sidestream.traces_invalid_parent` | `sidestream_traces_invalid_parent` (counter) |
//! | `sidestream.release.<policy>.<group>.requests` | `sidestream_release_<policy>_<group>_requests` (counter) |
//! | `sidestream.streams_admitted` | `sidestream_streams_admitted` (counter) |
//! | `sidestream.streams_refused` | `sidestream_streams_refused` (counter) |
//! | `sidestream.streams_active` | `sidestream_streams_active` (gauge) |
//! | `sidestream.config_version` | `sidestream_config_version` (gauge) |
//! | `sidestream.config_updates_applied` | `sidestream_config_updates_applied` (counter) |
//! | `sidestream.config_nacks` | `sidestream_config_nacks` (counter) |
//! | `sidestream.config_stream_reconnects` | `sidestream_config_stream_reconnects` (counter) |
//! | `sidestream.host_call_failures` | `sidestream_host_call_failures` (counter) |
//! | `sidestream.mesh_admitted` | `sidestream_mesh_admitted` (counter) |
//! | `sidestream.mesh_refused` | `sidestream_mesh_refused` (counter) |
//! | `sidestream.mesh_fallback_timeout` | `sidestream_mesh_fallback_timeout` (counter) |
//! | `sidestream.mesh_fallback_error` | `sidestream_mesh_fallback_error` (counter) |
//! | `sidestream.mesh_fallback_unavailable` | `sidestream_mesh_fallback_unavailable` (counter) |
//! | `sidestream.mesh_sync_failures` | `sidestream_mesh_sync_failures` (counter) |
//! | `sidestream.mesh_rtt_us` | `sidestream_mesh_rtt_us` (histogram, microseconds) |
//!
//! The mesh stats have no per-policy or per-key names: tenant keys are
//! unbounded, and a stat per key would grow Envoy's stat store without bound.

use std::cell::RefCell;

use crate::host::{Host, HostError, MetricKind};

/// A metric: its Envoy stat name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The stat name as the filter defines it.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// What it counts.
    pub help: &'static str,
}

/// New traces started (no parent, or an invalid one).
pub const TRACES_STARTED: MetricDef = MetricDef {
    name: "sidestream.traces_started",
    kind: MetricKind::Counter,
    help: "Requests that started a new trace (no valid traceparent), including those with an invalid parent",
};
/// Traces continued from a valid parent.
pub const TRACES_CONTINUED: MetricDef = MetricDef {
    name: "sidestream.traces_continued",
    kind: MetricKind::Counter,
    help: "Requests whose valid traceparent (or accepted B3 context) was continued with a new parent-id",
};
/// Invalid parents replaced by a new trace.
pub const TRACES_INVALID_PARENT: MetricDef = MetricDef {
    name: "sidestream.traces_invalid_parent",
    kind: MetricKind::Counter,
    help: "Requests that carried an invalid traceparent; a new trace was started for them",
};
/// Streams admitted by a stream-limit policy.
pub const STREAMS_ADMITTED: MetricDef = MetricDef {
    name: "sidestream.streams_admitted",
    kind: MetricKind::Counter,
    help: "Stream requests (SSE, WebSocket, gRPC) admitted by a stream-limit policy",
};
/// Streams refused by a stream-limit policy.
pub const STREAMS_REFUSED: MetricDef = MetricDef {
    name: "sidestream.streams_refused",
    kind: MetricKind::Counter,
    help: "Stream requests refused by a stream-limit policy (rate, concurrency, or fail-closed)",
};
/// Streams open now (admitted and not yet ended), over all workers.
pub const STREAMS_ACTIVE: MetricDef = MetricDef {
    name: "sidestream.streams_active",
    kind: MetricKind::Gauge,
    help: "Admitted streams that have not ended yet, over all Envoy workers",
};
/// The etcd revision of the config in use.
pub const CONFIG_VERSION: MetricDef = MetricDef {
    name: "sidestream.config_version",
    kind: MetricKind::Gauge,
    help: "etcd revision of the snapshot the filter runs (0: the embedded defaults)",
};
/// Snapshots applied from the control plane.
pub const CONFIG_UPDATES_APPLIED: MetricDef = MetricDef {
    name: "sidestream.config_updates_applied",
    kind: MetricKind::Counter,
    help: "Config snapshots received from the control plane and applied (ACKed)",
};
/// Snapshots rejected (NACKed).
pub const CONFIG_NACKS: MetricDef = MetricDef {
    name: "sidestream.config_nacks",
    kind: MetricKind::Counter,
    help: "Config snapshots received from the control plane and rejected (NACKed); the last good one stays",
};
/// Config stream (re)connection attempts after the first.
pub const CONFIG_STREAM_RECONNECTS: MetricDef = MetricDef {
    name: "sidestream.config_stream_reconnects",
    kind: MetricKind::Counter,
    help:
        "Times the filter reopened its config stream to the control plane after it closed or failed",
};
/// Host calls that failed.
pub const HOST_CALL_FAILURES: MetricDef = MetricDef {
    name: "sidestream.host_call_failures",
    kind: MetricKind::Counter,
    help: "Host (Envoy) calls that failed; the request proceeded by the configured fail mode",
};

/// Streams a mesh-scoped policy's limiter admitted.
pub const MESH_ADMITTED: MetricDef = MetricDef {
    name: "sidestream.mesh_admitted",
    kind: MetricKind::Counter,
    help: "Streams of mesh-scoped policies that sidestream-limiter admitted",
};
/// Streams a mesh-scoped policy's limiter refused.
pub const MESH_REFUSED: MetricDef = MetricDef {
    name: "sidestream.mesh_refused",
    kind: MetricKind::Counter,
    help: "Streams of mesh-scoped policies that sidestream-limiter refused (rate or concurrency, mesh-wide)",
};
/// Fallbacks because the limiter did not answer in time.
pub const MESH_FALLBACK_TIMEOUT: MetricDef = MetricDef {
    name: "sidestream.mesh_fallback_timeout",
    kind: MetricKind::Counter,
    help: "Streams of mesh-scoped policies that got the policy's fallback: no limiter answer within the policy's timeout",
};
/// Fallbacks because the limiter answered with an error.
pub const MESH_FALLBACK_ERROR: MetricDef = MetricDef {
    name: "sidestream.mesh_fallback_error",
    kind: MetricKind::Counter,
    help: "Streams of mesh-scoped policies that got the policy's fallback: the limiter answered with an error or an unreadable message",
};
/// Fallbacks because the limiter could not be reached or asked.
pub const MESH_FALLBACK_UNAVAILABLE: MetricDef = MetricDef {
    name: "sidestream.mesh_fallback_unavailable",
    kind: MetricKind::Counter,
    help: "Streams of mesh-scoped policies that got the policy's fallback: the limiter was unreachable, or no limiter cluster is configured",
};
/// Syncs that got no good answer.
pub const MESH_SYNC_FAILURES: MetricDef = MetricDef {
    name: "sidestream.mesh_sync_failures",
    kind: MetricKind::Counter,
    help: "Sync calls to sidestream-limiter that failed; the lease is renewed by the next one (every third of the lease)",
};
/// Round trip of an Acquire.
pub const MESH_RTT_US: MetricDef = MetricDef {
    name: "sidestream.mesh_rtt_us",
    kind: MetricKind::Histogram,
    help: "Microseconds from sending an Acquire to sidestream-limiter to its answer (answers only, not timeouts or errors)",
};

/// Every fixed metric, in definition order.
pub const ALL: [MetricDef; 18] = [
    TRACES_STARTED,
    TRACES_CONTINUED,
    TRACES_INVALID_PARENT,
    STREAMS_ADMITTED,
    STREAMS_REFUSED,
    STREAMS_ACTIVE,
    CONFIG_VERSION,
    CONFIG_UPDATES_APPLIED,
    CONFIG_NACKS,
    CONFIG_STREAM_RECONNECTS,
    HOST_CALL_FAILURES,
    MESH_ADMITTED,
    MESH_REFUSED,
    MESH_FALLBACK_TIMEOUT,
    MESH_FALLBACK_ERROR,
    MESH_FALLBACK_UNAVAILABLE,
    MESH_SYNC_FAILURES,
    MESH_RTT_US,
];

/// Help text of the per-group counters `sidestream.release.<policy>.<group>.requests`.
pub const RELEASE_REQUESTS_HELP: &str =
    "Requests coloured by the release policy <policy> into the group <group>";

/// The longest policy or group segment put into a metric name.
const MAX_NAME_SEGMENT: usize = 64;

/// Name of the per-(policy, group) request counter.
pub fn release_requests_name(policy: &str, group: &str) -> String {
    format!(
        "sidestream.release.{}.{}.requests",
        segment(policy),
        segment(group)
    )
}

/// A name segment that cannot add dots (stat-name separators) or grow unbounded.
fn segment(value: &str) -> String {
    value
        .chars()
        .take(MAX_NAME_SEGMENT)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The ids Envoy gave this VM's metrics. A metric whose definition failed is
/// `None`: its updates are skipped (the failure was logged once).
#[derive(Debug, Default)]
pub struct Metrics {
    pub traces_started: Option<u32>,
    pub traces_continued: Option<u32>,
    pub traces_invalid_parent: Option<u32>,
    pub streams_admitted: Option<u32>,
    pub streams_refused: Option<u32>,
    pub streams_active: Option<u32>,
    pub config_version: Option<u32>,
    pub config_updates_applied: Option<u32>,
    pub config_nacks: Option<u32>,
    pub config_stream_reconnects: Option<u32>,
    pub host_call_failures: Option<u32>,
    pub mesh_admitted: Option<u32>,
    pub mesh_refused: Option<u32>,
    pub mesh_fallback_timeout: Option<u32>,
    pub mesh_fallback_error: Option<u32>,
    pub mesh_fallback_unavailable: Option<u32>,
    pub mesh_sync_failures: Option<u32>,
    pub mesh_rtt_us: Option<u32>,
    release_requests: RefCell<Vec<ReleaseCounter>>,
    /// Per-request counter deltas not yet given to Envoy: (metric id, delta),
    /// one entry per metric, kept (at zero) between flushes. The root context
    /// flushes them on its tick ([`FLUSH_PERIOD`] at most apart), so a request
    /// costs no `increment_metric` host call; gauges and rare counters stay
    /// immediate.
    pending: RefCell<Vec<(u32, i64)>>,
}

/// How often the root context flushes the batched counters when no control
/// plane sets a faster tick. Stats lag requests by at most this much; Envoy
/// itself flushes stats to sinks far less often (5 s by default).
pub const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug)]
struct ReleaseCounter {
    policy: String,
    group: String,
    id: Option<u32>,
}

/// The most per-group counters one VM defines; beyond it requests are not counted
/// per group (policies × groups are small in practice; this bounds a runaway config).
const MAX_RELEASE_COUNTERS: usize = 1024;

impl Metrics {
    /// Defines every fixed metric.
    pub fn define(host: &impl Host) -> Metrics {
        let define = |def: MetricDef| match host.define_metric(def.kind, def.name) {
            Ok(id) => Some(id),
            Err(error) => {
                log::error!("sidestream: cannot define metric {}: {error}", def.name);
                None
            }
        };
        Metrics {
            traces_started: define(TRACES_STARTED),
            traces_continued: define(TRACES_CONTINUED),
            traces_invalid_parent: define(TRACES_INVALID_PARENT),
            streams_admitted: define(STREAMS_ADMITTED),
            streams_refused: define(STREAMS_REFUSED),
            streams_active: define(STREAMS_ACTIVE),
            config_version: define(CONFIG_VERSION),
            config_updates_applied: define(CONFIG_UPDATES_APPLIED),
            config_nacks: define(CONFIG_NACKS),
            config_stream_reconnects: define(CONFIG_STREAM_RECONNECTS),
            host_call_failures: define(HOST_CALL_FAILURES),
            mesh_admitted: define(MESH_ADMITTED),
            mesh_refused: define(MESH_REFUSED),
            mesh_fallback_timeout: define(MESH_FALLBACK_TIMEOUT),
            mesh_fallback_error: define(MESH_FALLBACK_ERROR),
            mesh_fallback_unavailable: define(MESH_FALLBACK_UNAVAILABLE),
            mesh_sync_failures: define(MESH_SYNC_FAILURES),
            mesh_rtt_us: define(MESH_RTT_US),
            release_requests: RefCell::new(Vec::new()),
            pending: RefCell::new(Vec::new()),
        }
    }

    /// Adds `delta` to a counter or gauge; a failure is logged and counted.
    pub fn add(&self, host: &impl Host, id: Option<u32>, delta: i64) {
        if let Some(id) = id {
            if let Err(error) = host.increment_metric(id, delta) {
                self.host_failure(host, &error);
            }
        }
    }

    /// Adds `delta` to a counter in the VM-local batch; Envoy sees it at the
    /// next [`Metrics::flush`]. For per-request counters only.
    pub fn count(&self, id: Option<u32>, delta: i64) {
        if let Some(id) = id {
            let mut pending = self.pending.borrow_mut();
            match pending.iter_mut().find(|(seen, _)| *seen == id) {
                Some((_, sum)) => *sum += delta,
                None => pending.push((id, delta)),
            }
        }
    }

    /// Gives the batched counter deltas to Envoy: one host call per metric
    /// that moved since the last flush.
    pub fn flush(&self, host: &impl Host) {
        let mut pending = self.pending.borrow_mut();
        for (id, sum) in pending.iter_mut() {
            let delta = std::mem::replace(sum, 0);
            if delta != 0 {
                if let Err(error) = host.increment_metric(*id, delta) {
                    self.host_failure(host, &error);
                }
            }
        }
    }

    /// Sets a gauge; a failure is logged and counted.
    pub fn set(&self, host: &impl Host, id: Option<u32>, value: u64) {
        if let Some(id) = id {
            if let Err(error) = host.record_metric(id, value) {
                self.host_failure(host, &error);
            }
        }
    }

    /// The fallback counter of `cause`.
    pub fn mesh_fallback(&self, cause: sidestream_core::limit::mesh::FallbackCause) -> Option<u32> {
        use sidestream_core::limit::mesh::FallbackCause;
        match cause {
            FallbackCause::Timeout => self.mesh_fallback_timeout,
            FallbackCause::Error => self.mesh_fallback_error,
            FallbackCause::Unavailable => self.mesh_fallback_unavailable,
        }
    }

    /// Logs a failed host call and counts it in `sidestream.host_call_failures`.
    pub fn host_failure(&self, host: &impl Host, error: &HostError) {
        log::warn!("sidestream: {error}");
        if let Some(id) = self.host_call_failures {
            if let Err(again) = host.increment_metric(id, 1) {
                log::warn!("sidestream: {again}");
            }
        }
    }

    /// Counts one request coloured by `policy` into `group`.
    pub fn count_release(&self, host: &impl Host, policy: &str, group: &str) {
        let id = {
            let mut counters = self.release_requests.borrow_mut();
            match counters
                .iter()
                .find(|c| c.policy == policy && c.group == group)
            {
                Some(counter) => counter.id,
                None if counters.len() >= MAX_RELEASE_COUNTERS => None,
                None => {
                    let name = release_requests_name(policy, group);
                    let id = match host.define_metric(MetricKind::Counter, &name) {
                        Ok(id) => Some(id),
                        Err(error) => {
                            log::error!("sidestream: cannot define metric {name}: {error}");
                            None
                        }
                    };
                    counters.push(ReleaseCounter {
                        policy: policy.to_owned(),
                        group: group.to_owned(),
                        id,
                    });
                    id
                }
            }
        };
        self.count(id, 1);
    }
}
