//! Prometheus metrics (`/metrics`). Every name is a constant with its help
//! text; counters get `_total` appended by the encoder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// How a subscriber is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Sse,
    WebSocket,
    Grpc,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Sse, Transport::WebSocket, Transport::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
            Transport::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::Sse => 0,
            Transport::WebSocket => 1,
            Transport::Grpc => 2,
        }
    }
}

pub const STREAMS_ACTIVE: (&str, &str) = (
    "sidestream_push_streams_active",
    "Open subscriber streams, by transport",
);
pub const TOPIC_SUBSCRIBERS: (&str, &str) = (
    "sidestream_push_topic_subscribers",
    "Subscribers on this node, by topic",
);
pub const MESSAGES_PUBLISHED: (&str, &str) = (
    "sidestream_push_messages_published",
    "Messages accepted for publishing on this node (duplicates excluded)",
);
pub const PUBLISH_DUPLICATES: (&str, &str) = (
    "sidestream_push_publish_duplicates",
    "Publishes answered with an earlier message id (idempotency key seen)",
);
pub const PUBLISH_REJECTED: (&str, &str) = (
    "sidestream_push_publish_rejected",
    "Publishes refused, by reason",
);
pub const MESSAGES_DELIVERED: (&str, &str) = (
    "sidestream_push_messages_delivered",
    "Messages written to subscribers, by transport",
);
pub const BYTES_SENT: (&str, &str) = (
    "sidestream_push_bytes_sent",
    "Bytes of events written to subscribers, by transport",
);
pub const BACKLOG: (&str, &str) = (
    "sidestream_push_backlog_messages",
    "Deliveries queued for subscribers and not yet written",
);
pub const SLOW_CONSUMER_DISCONNECTS: (&str, &str) = (
    "sidestream_push_slow_consumer_disconnects",
    "Subscribers cut because their queue overflowed, by transport",
);
pub const RESUMES: (&str, &str) = (
    "sidestream_push_resumes",
    "Subscriptions that gave a resume position, by outcome",
);
pub const PUBLISH_TO_WRITE: (&str, &str) = (
    "sidestream_push_publish_to_write_seconds",
    "Time from publish to the event being handed to the subscriber's connection, by transport",
);
pub const REPLAY_HELD: (&str, &str) = (
    "sidestream_push_replay_held_messages",
    "Messages streams hold outside their queues: history pages of resumes being replayed (at most one page per stream)",
);
pub const DRAINING: (&str, &str) = (
    "sidestream_push_draining",
    "1 while the server drains (SIGTERM)",
);
pub const FANOUT_IO: (&str, &str) = (
    "sidestream_push_fanout_io",
    "1 for the path SSE fan-out writes take (--fanout-io): uring (io_uring batches) or epoll (a write per subscriber from its task)",
);
pub const FANOUT_URING_SENDS: (&str, &str) = (
    "sidestream_push_fanout_uring_sends",
    "Sends of the io_uring fan-out writer, by result: written (whole), partial (the rest handed to the subscriber's task), again (socket full: handed to the task), error",
);
pub const CONFIG_UPDATES: (&str, &str) = (
    "sidestream_push_config_updates",
    "Control-plane snapshots, by result (ack, nack)",
);
pub const CONNECTIONS_DETECTED: (&str, &str) = (
    "sidestream_push_connections_detected",
    "New HTTP connections by what their first bytes were: sse (served directly), http1 or http2 (served by hyper), bad-request (refused), timeout (no request head in time), closed (closed before a request)",
);
pub const REQUEST_HEAD_TIMEOUTS: (&str, &str) = (
    "sidestream_push_request_head_timeouts",
    "HTTP connections closed because a request head did not arrive within the head deadline (408 when one had begun)",
);
pub const WRITE_DEADLINE_DISCONNECTS: (&str, &str) = (
    "sidestream_push_write_deadline_disconnects",
    "Subscribers cut because their connection did not take a write within the write deadline, by transport",
);
pub const TOKEN_STREAM_ENDS: (&str, &str) = (
    "sidestream_push_token_stream_ends",
    "Streams ended by their subscription token, by transport and reason: expired (at exp plus leeway; a WebSocket after the refresh grace) or revoked (listed in the topic's revokedSubjects or revokedTokenIds)",
);
pub const TOKEN_REFRESHES: (&str, &str) = (
    "sidestream_push_token_refreshes",
    "WebSocket refresh frames by result: renewed (the socket holds the new token) or refused (an error frame; the old token stays)",
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenEndLabel {
    transport: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

/// Per-transport handles, taken once so the hot path never looks up a family.
#[derive(Debug, Clone)]
struct PerTransport {
    active: Gauge,
    delivered: Counter,
    bytes: Counter,
    slow: Counter,
    write_deadline: Counter,
    latency: LatencyHistogram,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    per_transport: [PerTransport; 3],
    topic_subscribers: Family<TopicLabel, Gauge>,
    pub published: Counter,
    pub duplicates: Counter,
    rejected: Family<ReasonLabel, Counter>,
    resumes: Family<OutcomeLabel, Counter>,
    backlog: Gauge,
    replay_held: Gauge,
    draining: Gauge,
    fanout_io: Family<PathLabel, Gauge>,
    uring_sends: Family<ResultLabel, Counter>,
    config_updates: Family<ResultLabel, Counter>,
    connections_detected: Family<ProtocolLabel, Counter>,
    head_timeouts: Counter,
    token_ends: Family<TokenEndLabel, Counter>,
    token_refreshes: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let active = Family::<TransportLabel, Gauge>::default();
        let delivered = Family::<TransportLabel, Counter>::default();
        let bytes = Family::<TransportLabel, Counter>::default();
        let slow = Family::<TransportLabel, Counter>::default();
        let write_deadline = Family::<TransportLabel, Counter>::default();
        let latency = Family::<TransportLabel, LatencyHistogram>::default();
        let per_transport = Transport::ALL.map(|t| {
            let label = TransportLabel {
                transport: t.as_str(),
            };
            PerTransport {
                active: active.get_or_create(&label).clone(),
                delivered: delivered.get_or_create(&label).clone(),
                bytes: bytes.get_or_create(&label).clone(),
                slow: slow.get_or_create(&label).clone(),
                write_deadline: write_deadline.get_or_create(&label).clone(),
                latency: latency.get_or_create(&label).clone(),
            }
        });
        let metrics = Metrics {
            per_transport,
            topic_subscribers: Family::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            rejected: Family::default(),
            resumes: Family::default(),
            backlog: Gauge::default(),
            replay_held: Gauge::default(),
            draining: Gauge::default(),
            fanout_io: Family::default(),
            uring_sends: Family::default(),
            config_updates: Family::default(),
            connections_detected: Family::default(),
            head_timeouts: Counter::default(),
            token_ends: Family::default(),
            token_refreshes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(STREAMS_ACTIVE.0, STREAMS_ACTIVE.1, active);
        registry.register(
            TOPIC_SUBSCRIBERS.0,
            TOPIC_SUBSCRIBERS.1,
            metrics.topic_subscribers.clone(),
        );
        registry.register(
            MESSAGES_PUBLISHED.0,
            MESSAGES_PUBLISHED.1,
            metrics.published.clone(),
        );
        registry.register(
            PUBLISH_DUPLICATES.0,
            PUBLISH_DUPLICATES.1,
            metrics.duplicates.clone(),
        );
        registry.register(
            PUBLISH_REJECTED.0,
            PUBLISH_REJECTED.1,
            metrics.rejected.clone(),
        );
        registry.register(MESSAGES_DELIVERED.0, MESSAGES_DELIVERED.1, delivered);
        registry.register(BYTES_SENT.0, BYTES_SENT.1, bytes);
        registry.register(BACKLOG.0, BACKLOG.1, metrics.backlog.clone());
        registry.register(
            SLOW_CONSUMER_DISCONNECTS.0,
            SLOW_CONSUMER_DISCONNECTS.1,
            slow,
        );
        registry.register(RESUMES.0, RESUMES.1, metrics.resumes.clone());
        registry.register(PUBLISH_TO_WRITE.0, PUBLISH_TO_WRITE.1, latency);
        registry.register(REPLAY_HELD.0, REPLAY_HELD.1, metrics.replay_held.clone());
        registry.register(DRAINING.0, DRAINING.1, metrics.draining.clone());
        registry.register(FANOUT_IO.0, FANOUT_IO.1, metrics.fanout_io.clone());
        registry.register(
            FANOUT_URING_SENDS.0,
            FANOUT_URING_SENDS.1,
            metrics.uring_sends.clone(),
        );
        registry.register(
            CONFIG_UPDATES.0,
            CONFIG_UPDATES.1,
            metrics.config_updates.clone(),
        );
        registry.register(
            CONNECTIONS_DETECTED.0,
            CONNECTIONS_DETECTED.1,
            metrics.connections_detected.clone(),
        );
        registry.register(
            REQUEST_HEAD_TIMEOUTS.0,
            REQUEST_HEAD_TIMEOUTS.1,
            metrics.head_timeouts.clone(),
        );
        registry.register(
            WRITE_DEADLINE_DISCONNECTS.0,
            WRITE_DEADLINE_DISCONNECTS.1,
            write_deadline,
        );
        registry.register(
            TOKEN_STREAM_ENDS.0,
            TOKEN_STREAM_ENDS.1,
            metrics.token_ends.clone(),
        );
        registry.register(
            TOKEN_REFRESHES.0,
            TOKEN_REFRESHES.1,
            metrics.token_refreshes.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    fn transport(&self, transport: Transport) -> &PerTransport {
        &self.per_transport[transport.index()]
    }

    pub fn stream_opened(&self, transport: Transport) {
        self.transport(transport).active.inc();
    }

    pub fn stream_closed(&self, transport: Transport) {
        self.transport(transport).active.dec();
    }

    /// One event written to a subscriber.
    pub fn delivered(&self, transport: Transport, bytes: usize, latency: Duration) {
        let t = self.transport(transport);
        t.delivered.inc();
        t.bytes.inc_by(bytes as u64);
        t.latency.observe(latency);
    }

    /// Bytes written that are not messages (resets, heartbeats, retry lines).
    pub fn control_bytes(&self, transport: Transport, bytes: usize) {
        self.transport(transport).bytes.inc_by(bytes as u64);
    }

    pub fn slow_consumer(&self, transport: Transport) {
        self.transport(transport).slow.inc();
    }

    /// A subscriber cut because its connection did not take a write in time.
    pub fn write_deadline_disconnect(&self, transport: Transport) {
        self.transport(transport).write_deadline.inc();
    }

    /// A stream ended by its subscription token (`expired` or `revoked`).
    pub fn token_stream_end(&self, transport: Transport, reason: &'static str) {
        self.token_ends
            .get_or_create(&TokenEndLabel {
                transport: transport.as_str(),
                reason,
            })
            .inc();
    }

    /// A WebSocket `refresh` frame: `renewed` or `refused`.
    pub fn token_refresh(&self, result: &'static str) {
        self.token_refreshes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A new HTTP connection, by what its first bytes were (see [`CONNECTIONS_DETECTED`]).
    pub fn connection_detected(&self, protocol: &'static str) {
        self.connections_detected
            .get_or_create(&ProtocolLabel { protocol })
            .inc();
    }

    /// A connection closed because its request head was late.
    pub fn request_head_timeout(&self) {
        self.head_timeouts.inc();
    }

    pub fn active_streams(&self, transport: Transport) -> i64 {
        self.transport(transport).active.get()
    }

    pub fn topic_subscribers(&self, topic: &str) -> Gauge {
        self.topic_subscribers
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .clone()
    }

    pub fn forget_topic(&self, topic: &str) {
        self.topic_subscribers.remove(&TopicLabel {
            topic: topic.to_owned(),
        });
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn resume(&self, outcome: &'static str) {
        self.resumes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn config_update(&self, result: &'static str) {
        self.config_updates
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// `delta` messages more (or fewer) held by streams as replay pages.
    pub fn replay_held(&self, delta: i64) {
        if delta != 0 {
            self.replay_held.inc_by(delta);
        }
    }

    /// Messages held by streams as replay pages now.
    pub fn replay_held_now(&self) -> i64 {
        self.replay_held.get()
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// `count` sends of the io_uring writer ended with `result`.
    pub fn uring_sends(&self, result: &'static str, count: u64) {
        if count > 0 {
            self.uring_sends
                .get_or_create(&ResultLabel { result })
                .inc_by(count);
        }
    }

    /// The fan-out write path that runs (`uring` or `epoll`).
    pub fn set_fanout_path(&self, path: &'static str) {
        self.fanout_io.clear();
        self.fanout_io.get_or_create(&PathLabel { path }).set(1);
    }

    /// The OpenMetrics text, with the backlog gauge set to `backlog` first.
    pub fn encode(&self, backlog: usize) -> String {
        self.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("Encoding metrics failed");
        }
        out
    }
}

/// Upper bounds (seconds) of the latency buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A lock-free histogram (prometheus-client's takes a lock per observation,
/// too much at hundreds of thousands of deliveries a second).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    buckets: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder accumulates the per-bucket counts itself.
        let mut count = 0u64;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, bound) in LATENCY_BUCKETS
            .iter()
            .chain([f64::INFINITY].iter())
            .enumerate()
        {
            let n = self.inner.buckets[i].load(Ordering::Relaxed);
            count += n;
            buckets.push((*bound, n));
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
