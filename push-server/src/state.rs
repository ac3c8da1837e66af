//! The server's settings and shared state.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, BrokerError};
use crate::hub::Hub;
use crate::message::{unix_nanos, Message};
use crate::metrics::{Metrics, Transport};
use crate::slow::SlowDeliveries;
use crate::topics::TopicRegistry;
use crate::uring::{self, FanoutIo, FanoutPath, Writer};

/// Where messages live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerSpec {
    Memory,
    /// `redis://host:port[/db]` and the key prefix.
    Redis {
        url: String,
        prefix: String,
    },
}

/// Tunables of one server (flags in `main.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    /// Heartbeat interval (SSE comment, WebSocket ping, gRPC heartbeat event).
    pub heartbeat: Duration,
    /// Per-subscriber queue, in messages; a subscriber that falls this far behind is cut.
    pub queue_capacity: usize,
    /// Per-subscriber queue, in bytes of message data; a subscriber whose
    /// queue would hold more is cut (one message of any size always fits).
    pub queue_bytes: usize,
    /// The SSE `retry` sent on connect.
    pub retry: Duration,
    /// On drain streams end with `retry` = `drain_retry` + up to `drain_retry_jitter`.
    pub drain_retry: Duration,
    pub drain_retry_jitter: Duration,
    /// How long a drain waits for streams to end before the process exits.
    pub drain_grace: Duration,
    /// Publishing without a token is allowed.
    pub publish_open: bool,
    pub jwt_secret: Option<String>,
    /// How long a WebSocket whose subscription token expired keeps streaming
    /// while it may still renew it with a `refresh` frame.
    pub token_refresh_grace: Duration,
    pub slow_delivery_threshold: Duration,
    pub slow_delivery_ring: usize,
    pub idempotency_window: Duration,
    /// Readiness fails while more deliveries than this are queued.
    pub max_backlog: usize,
    /// Topics the memory broker keeps at most.
    pub max_topics: usize,
    /// How long an HTTP/1.1 client may take to send a request head (slowloris).
    pub request_head_timeout: Duration,
    /// How long one write to a directly served SSE subscriber may take; a
    /// connection that does not drain within it is cut.
    pub write_deadline: Duration,
    /// TCP keepalive on accepted connections: idle time before the first
    /// probe (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// How SSE fan-out writes reach the sockets (`--fanout-io`).
    pub fanout_io: FanoutIo,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_id: "push".into(),
            heartbeat: Duration::from_secs(15),
            queue_capacity: 1024,
            queue_bytes: 4 * 1024 * 1024,
            retry: Duration::from_secs(2),
            drain_retry: Duration::from_secs(1),
            drain_retry_jitter: Duration::from_secs(5),
            drain_grace: Duration::from_secs(10),
            publish_open: true,
            jwt_secret: None,
            token_refresh_grace: Duration::from_secs(10),
            slow_delivery_threshold: Duration::from_millis(50),
            slow_delivery_ring: 256,
            idempotency_window: Duration::from_secs(600),
            max_backlog: 1_000_000,
            max_topics: 100_000,
            request_head_timeout: Duration::from_secs(30),
            write_deadline: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
            fanout_io: FanoutIo::Auto,
        }
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub topics: TopicRegistry,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub slow: SlowDeliveries,
    pub auth: Auth,
}

impl AppState {
    /// Builds the state, connecting to the broker.
    pub async fn new(
        settings: Settings,
        topics: TopicRegistry,
        broker: &BrokerSpec,
    ) -> Result<Arc<AppState>, BrokerError> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let broker: Arc<dyn Broker> = match broker {
            BrokerSpec::Memory => Arc::new(MemoryBroker::new(
                hub.clone(),
                settings.idempotency_window,
                settings.max_topics,
            )),
            BrokerSpec::Redis { url, prefix } => Arc::new(
                RedisBroker::connect(url, prefix, hub.clone(), settings.idempotency_window).await?,
            ),
        };
        let choice = match uring::choose(settings.fanout_io, uring::setup_ring) {
            Ok(choice) => choice,
            Err(error) => {
                // Refused after the daemon's own check found it working.
                tracing::warn!(%error, "io_uring refused; fan-out writes use epoll");
                uring::Choice {
                    path: FanoutPath::Epoll,
                    ring: None,
                    fallback: Some(error),
                }
            }
        };
        if let Some(error) = &choice.fallback {
            tracing::warn!(%error, "io_uring is not available here; fan-out writes use epoll (--fanout-io auto)");
        }
        let state = Arc::new_cyclic(|weak| {
            let mut path = choice.path;
            if let Some(ring) = choice.ring {
                match Writer::start(ring, weak.clone()) {
                    Ok(writer) => hub.set_writer(writer),
                    Err(error) => {
                        tracing::warn!(%error, "Cannot start the io_uring writer; fan-out writes use epoll");
                        path = FanoutPath::Epoll;
                    }
                }
            }
            metrics.set_fanout_path(path.as_str());
            AppState {
                slow: SlowDeliveries::new(
                    settings.slow_delivery_threshold,
                    settings.slow_delivery_ring,
                ),
                auth: Auth::new(settings.jwt_secret.as_deref(), settings.publish_open),
                settings,
                topics,
                hub,
                broker,
                metrics,
            }
        });
        Ok(state)
    }

    /// The fan-out write path that runs (`uring` or `epoll`).
    pub fn fanout_path(&self) -> FanoutPath {
        if self.hub.writes_through_uring() {
            FanoutPath::Uring
        } else {
            FanoutPath::Epoll
        }
    }

    /// Readiness: not draining, broker reachable, backlog within its limit.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.hub.is_draining() {
            problems.push("draining".to_owned());
        }
        if !self.broker.is_ready() {
            problems.push(format!("{} broker unreachable", self.broker.kind()));
        }
        let backlog = self.hub.backlog();
        if backlog > self.settings.max_backlog {
            problems.push(format!(
                "backlog {backlog} above {}",
                self.settings.max_backlog
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Starts draining: readiness false, no new subscribers, every stream told to retry.
    pub fn begin_drain(&self) {
        if !self.hub.is_draining() {
            tracing::info!(streams = self.hub.stream_count(), "Draining");
            self.metrics.set_draining(true);
            self.hub.drain();
        }
    }

    /// The `retry` a drained stream gets: jittered so clients do not return at once.
    pub fn drain_retry_ms(&self) -> u64 {
        let base = u64::try_from(self.settings.drain_retry.as_millis()).unwrap_or(u64::MAX);
        let jitter = u64::try_from(self.settings.drain_retry_jitter.as_millis()).unwrap_or(0);
        base.saturating_add(if jitter == 0 {
            0
        } else {
            rand::random_range(0..=jitter)
        })
    }

    /// Accounts for one message written to a subscriber.
    pub fn delivered(
        &self,
        transport: Transport,
        message: &Message,
        bytes: usize,
        queue_depth: usize,
    ) {
        let now = unix_nanos();
        let latency = Duration::from_nanos(now.saturating_sub(message.published_unix_nanos));
        self.metrics.delivered(transport, bytes, latency);
        self.slow.observe(message, transport, queue_depth, now);
        tracing::trace!(target: "sidestream_push::delivery", topic = %message.topic, id = %message.id, transport = transport.as_str(), trace_id = message.trace_id(), latency_us = latency.as_micros() as u64, "Delivered");
    }
}
