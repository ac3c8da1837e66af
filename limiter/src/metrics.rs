//! The limiter's Prometheus metrics. Names are defined once, here, each with
//! its help text; counters get the `_total` suffix from the encoder. No label
//! carries a policy or a limit key (cardinality).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Requests by method and outcome (`_total`).
pub const REQUESTS: (&str, &str) = (
    "sidestream_limiter_requests",
    "Requests by method (acquire, release, sync, should_rate_limit) and outcome (admitted, refused_rate, refused_concurrency, ok, unmatched, invalid, error)",
);
/// Redis script round trips by operation.
pub const REDIS_SECONDS: (&str, &str) = (
    "sidestream_limiter_redis_seconds",
    "Seconds per Redis round trip (one script call or PING) by operation (acquire, release, sync, rls, ping), failures included",
);
/// Whether Redis answers.
pub const REDIS_UP: (&str, &str) = (
    "sidestream_limiter_redis_up",
    "1 while Redis (every Cluster primary) answers PING, else 0; /readyz follows it",
);
/// Holdings applied by Sync (`_total`).
pub const SYNC_HOLDINGS: (&str, &str) = (
    "sidestream_limiter_sync_holdings",
    "(policy, key) holdings written by Sync requests",
);

/// A method of the service (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `Acquire`.
    Acquire,
    /// `Release`.
    Release,
    /// `Sync`.
    Sync,
    /// Envoy RLS `ShouldRateLimit`.
    ShouldRateLimit,
}

impl Method {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Acquire => "acquire",
            Method::Release => "release",
            Method::Sync => "sync",
            Method::ShouldRateLimit => "should_rate_limit",
        }
    }
}

/// What became of a request (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire admitted.
    Admitted,
    /// Acquire refused: the bucket is empty.
    RefusedRate,
    /// Acquire refused: the cap is reached.
    RefusedConcurrency,
    /// Release or Sync done.
    Ok,
    /// ShouldRateLimit: no descriptor matched a configured one.
    Unmatched,
    /// The request was invalid (InvalidArgument).
    Invalid,
    /// Redis failed or did not answer in time.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::RefusedRate => "refused_rate",
            Outcome::RefusedConcurrency => "refused_concurrency",
            Outcome::Ok => "ok",
            Outcome::Unmatched => "unmatched",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    redis_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// See [`REDIS_UP`].
    pub redis_up: Gauge,
    /// See [`SYNC_HOLDINGS`].
    pub sync_holdings: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn redis_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(REQUESTS.0, REQUESTS.1, requests.clone());
        let redis_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            redis_histogram as fn() -> Histogram,
        );
        registry.register(REDIS_SECONDS.0, REDIS_SECONDS.1, redis_seconds.clone());
        let redis_up = Gauge::default();
        registry.register(REDIS_UP.0, REDIS_UP.1, redis_up.clone());
        let sync_holdings = Counter::default();
        registry.register(SYNC_HOLDINGS.0, SYNC_HOLDINGS.1, sync_holdings.clone());
        Metrics {
            registry,
            requests,
            redis_seconds,
            redis_up,
            sync_holdings,
        }
    }

    /// Counts a finished request.
    pub fn request(&self, method: Method, outcome: Outcome) {
        self.requests
            .get_or_create(&vec![
                ("method", method.as_str()),
                ("outcome", outcome.as_str()),
            ])
            .inc();
    }

    /// Records one Redis round trip.
    pub fn redis_round_trip(&self, operation: &'static str, seconds: f64) {
        self.redis_seconds
            .get_or_create(&vec![("operation", operation)])
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
