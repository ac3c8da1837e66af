//! The control plane's Prometheus metrics. Names are defined once, here, each
//! with its help text; counters get the `_total` suffix from the encoder.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Watch events received from etcd (exported with `_total`).
pub const WATCH_EVENTS: (&str, &str) = (
    "sidestream_control_plane_watch_events",
    "etcd watch events received under the prefix",
);
/// Full re-reads of the prefix, by reason (`_total`).
pub const RESYNCS: (&str, &str) = (
    "sidestream_control_plane_resyncs",
    "Full re-reads of the etcd prefix, by reason (initial, compacted, revision_went_backwards, cluster_changed)",
);
/// etcd values rejected by validation (`_total`).
pub const REJECTIONS: (&str, &str) = (
    "sidestream_control_plane_rejections",
    "etcd values rejected by validation; the key keeps its last good value",
);
/// Keys under the prefix that are no config object.
pub const UNKNOWN_KEYS: (&str, &str) = (
    "sidestream_control_plane_unknown_keys",
    "Keys under the prefix that belong to no config kind",
);
/// Reconnections to etcd (`_total`).
pub const ETCD_RECONNECTS: (&str, &str) = (
    "sidestream_control_plane_etcd_reconnects",
    "Times the etcd connection or watch was re-established after a failure",
);
/// Whether the etcd watch is established right now.
pub const ETCD_CONNECTED: (&str, &str) = (
    "sidestream_control_plane_etcd_connected",
    "1 while the etcd watch is established, 0 while connecting or reconnecting",
);
/// Whether the control plane has read etcd fully at least once.
pub const READY: (&str, &str) = (
    "sidestream_control_plane_ready",
    "1 after the first full read of etcd, else 0",
);
/// Connected data-plane clients.
pub const CONNECTED_CLIENTS: (&str, &str) = (
    "sidestream_control_plane_connected_clients",
    "Data-plane clients holding a config stream",
);
/// The etcd revision of the current snapshot.
pub const SNAPSHOT_REVISION: (&str, &str) = (
    "sidestream_control_plane_snapshot_revision",
    "etcd revision the current snapshot reflects",
);
/// Snapshots published (`_total`).
pub const SNAPSHOTS_PUBLISHED: (&str, &str) = (
    "sidestream_control_plane_snapshots_published",
    "Snapshots published (content changes)",
);
/// Config responses sent (`_total`).
pub const RESPONSES_SENT: (&str, &str) = (
    "sidestream_control_plane_responses_sent",
    "Config responses sent to data-plane clients",
);
/// ACKs received (`_total`).
pub const ACKS: (&str, &str) = (
    "sidestream_control_plane_acks",
    "Config responses acknowledged by data-plane clients",
);
/// NACKs received (`_total`).
pub const NACKS: (&str, &str) = (
    "sidestream_control_plane_nacks",
    "Config responses rejected by data-plane clients",
);
/// Seconds from the etcd change to a client's ACK, per client.
pub const CONVERGENCE_SECONDS: (&str, &str) = (
    "sidestream_control_plane_convergence_seconds",
    "Seconds from the control plane seeing an etcd change to a client ACKing the snapshot, per client node; only snapshots published while the client was connected",
);

/// Labels of per-reason and per-client series.
pub type Labels = Vec<(String, String)>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// See [`WATCH_EVENTS`].
    pub watch_events: Counter,
    /// See [`RESYNCS`].
    pub resyncs: Family<Labels, Counter>,
    /// See [`REJECTIONS`].
    pub rejections: Counter,
    /// See [`UNKNOWN_KEYS`].
    pub unknown_keys: Gauge,
    /// See [`ETCD_RECONNECTS`].
    pub etcd_reconnects: Counter,
    /// See [`ETCD_CONNECTED`].
    pub etcd_connected: Gauge,
    /// See [`READY`].
    pub ready: Gauge,
    /// See [`CONNECTED_CLIENTS`].
    pub connected_clients: Gauge,
    /// See [`SNAPSHOT_REVISION`].
    pub snapshot_revision: Gauge,
    /// See [`SNAPSHOTS_PUBLISHED`].
    pub snapshots_published: Counter,
    /// See [`RESPONSES_SENT`].
    pub responses_sent: Counter,
    /// See [`ACKS`].
    pub acks: Counter,
    /// See [`NACKS`].
    pub nacks: Counter,
    /// See [`CONVERGENCE_SECONDS`].
    pub convergence: Family<Labels, Histogram>,
}

fn convergence_histogram() -> Histogram {
    // 0.5 ms .. ~33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics_family = Family::<Labels, Histogram>::new_with_constructor(
            convergence_histogram as fn() -> Histogram,
        );
        let watch_events = Counter::default();
        let resyncs = Family::<Labels, Counter>::default();
        let rejections = Counter::default();
        let unknown_keys = Gauge::default();
        let etcd_reconnects = Counter::default();
        let etcd_connected = Gauge::default();
        let ready = Gauge::default();
        let connected_clients = Gauge::default();
        let snapshot_revision = Gauge::default();
        let snapshots_published = Counter::default();
        let responses_sent = Counter::default();
        let acks = Counter::default();
        let nacks = Counter::default();
        registry.register(WATCH_EVENTS.0, WATCH_EVENTS.1, watch_events.clone());
        registry.register(RESYNCS.0, RESYNCS.1, resyncs.clone());
        registry.register(REJECTIONS.0, REJECTIONS.1, rejections.clone());
        registry.register(UNKNOWN_KEYS.0, UNKNOWN_KEYS.1, unknown_keys.clone());
        registry.register(
            ETCD_RECONNECTS.0,
            ETCD_RECONNECTS.1,
            etcd_reconnects.clone(),
        );
        registry.register(ETCD_CONNECTED.0, ETCD_CONNECTED.1, etcd_connected.clone());
        registry.register(READY.0, READY.1, ready.clone());
        registry.register(
            CONNECTED_CLIENTS.0,
            CONNECTED_CLIENTS.1,
            connected_clients.clone(),
        );
        registry.register(
            SNAPSHOT_REVISION.0,
            SNAPSHOT_REVISION.1,
            snapshot_revision.clone(),
        );
        registry.register(
            SNAPSHOTS_PUBLISHED.0,
            SNAPSHOTS_PUBLISHED.1,
            snapshots_published.clone(),
        );
        registry.register(RESPONSES_SENT.0, RESPONSES_SENT.1, responses_sent.clone());
        registry.register(ACKS.0, ACKS.1, acks.clone());
        registry.register(NACKS.0, NACKS.1, nacks.clone());
        registry.register(
            CONVERGENCE_SECONDS.0,
            CONVERGENCE_SECONDS.1,
            metrics_family.clone(),
        );
        Metrics {
            registry,
            watch_events,
            resyncs,
            rejections,
            unknown_keys,
            etcd_reconnects,
            etcd_connected,
            ready,
            connected_clients,
            snapshot_revision,
            snapshots_published,
            responses_sent,
            acks,
            nacks,
            convergence: metrics_family,
        }
    }

    /// Counts a full re-read for `reason`.
    pub fn resync(&self, reason: &str) {
        self.resyncs
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Records one client's convergence time.
    pub fn observe_convergence(&self, node: &str, seconds: f64) {
        self.convergence
            .get_or_create(&vec![("node".to_owned(), node.to_owned())])
            .observe(seconds);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_help() {
        let metrics = Metrics::new();
        metrics.rejections.inc();
        metrics.resync("compacted");
        metrics.observe_convergence("envoy-1", 0.002);
        let text = metrics.encode();
        for (name, help) in [
            WATCH_EVENTS,
            RESYNCS,
            REJECTIONS,
            UNKNOWN_KEYS,
            ETCD_RECONNECTS,
            ETCD_CONNECTED,
            READY,
            CONNECTED_CLIENTS,
            SNAPSHOT_REVISION,
            SNAPSHOTS_PUBLISHED,
            RESPONSES_SENT,
            ACKS,
            NACKS,
            CONVERGENCE_SECONDS,
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("sidestream_control_plane_etcd_connected 0"),
            "{text}"
        );
        metrics.etcd_connected.set(1);
        assert!(
            metrics
                .encode()
                .contains("sidestream_control_plane_etcd_connected 1"),
            "{text}"
        );
        assert!(
            text.contains("sidestream_control_plane_rejections_total 1"),
            "{text}"
        );
        assert!(
            text.contains("sidestream_control_plane_resyncs_total{reason=\"compacted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidestream_control_plane_convergence_seconds_count{node=\"envoy-1\"} 1"),
            "{text}"
        );
    }
}
