//! The few host calls the filter makes, behind a trait so the per-request and
//! config-stream logic runs natively against a fake host in unit tests.
//!
//! [`ProxyWasmHost`] is the real implementation: it uses the `proxy_wasm::hostcalls`
//! functions that return `Result` (the SDK's `Context` helpers unwrap).

use std::fmt;

/// A host call that did not succeed, with the call's name for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// The host call, e.g. `"set_shared_data"`.
    pub call: &'static str,
    /// What the host answered, e.g. `"NotFound"`.
    pub status: String,
}

impl HostError {
    /// A failure of `call` with the host's status.
    pub fn new(call: &'static str, status: impl fmt::Debug) -> Self {
        Self {
            call,
            status: format!("{status:?}"),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host call {} failed: {}", self.call, self.status)
    }
}

impl std::error::Error for HostError {}

/// Outcome of a compare-and-swap write to shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedSetError {
    /// Someone else wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused the call.
    Host(HostError),
}

/// Kinds of Envoy custom metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge (set or moved up and down).
    Gauge,
    /// Histogram (each recorded value is one sample).
    Histogram,
}

/// Which context owns a gRPC call, and so gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOwner {
    /// The context making the call (its answer comes back to it).
    Current,
    /// The VM's root context, for a call that must outlive the HTTP stream
    /// making it (Envoy cancels an HTTP context's calls when the stream is
    /// deleted): fire and forget, its answer is not read. `current` is the
    /// HTTP context to switch back to.
    Root { root: u32, current: u32 },
}

/// A gRPC status code the filter answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    /// 8, RESOURCE_EXHAUSTED: a stream limit refused the call.
    ResourceExhausted,
    /// 14, UNAVAILABLE: the limit state could not be read (fail closed).
    Unavailable,
}

/// The host calls of an HTTP stream and its VM.
pub trait Host {
    /// All request headers (lowercase names, pseudo-headers included), as
    /// the host serialises a header map (read by
    /// [`crate::request::RequestHeaders::parse`]); empty when there are none.
    fn request_headers(&self) -> Result<Vec<u8>, HostError>;
    /// Sets (or with `None` removes) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), HostError>;
    /// Adds a response header (used from the response-headers callback).
    fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Answers the request locally with an HTTP response.
    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError>;
    /// Answers a gRPC request locally with a trailers-only response.
    fn send_grpc_response(
        &self,
        code: GrpcCode,
        message: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), HostError>;
    /// Reads a shared-data key: its value and compare-and-swap token.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes a shared-data key if its token still is `cas` (`None`: unconditionally).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError>;
    /// Makes Envoy pick the route again (after the tag header changed).
    fn clear_route_cache(&self) -> Result<(), HostError>;
    /// The downstream peer address (`ip:port`), if the host knows it.
    fn source_address(&self) -> Result<Option<String>, HostError>;
    /// Envoy's own node id (the proxy-wasm property `node.id`, or the
    /// attribute `xds.node.id` where Envoy has only that; in Istio unique per
    /// pod), `None` when Envoy has none.
    fn envoy_node_id(&self) -> Result<Option<String>, HostError>;
    /// Wall-clock time in nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> Result<u64, HostError>;
    /// Defines (or finds) a custom metric.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds `delta` to a counter or gauge.
    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError>;
    /// Sets a gauge, or records a histogram sample.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// Lets a paused request go on (after an asynchronous decision).
    fn resume_http_request(&self) -> Result<(), HostError>;
    /// Sends a unary gRPC call (`message` is the encoded request) to
    /// `cluster`; returns its token. The answer arrives as
    /// `on_grpc_call_response` of the owning context, or as a failure status
    /// after `timeout`.
    fn dispatch_grpc_call(
        &self,
        owner: CallOwner,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: std::time::Duration,
    ) -> Result<u32, HostError>;
}

/// The host calls of the config stream (root context).
pub trait GrpcHost {
    /// Opens a bidirectional gRPC stream to `cluster`; returns its token.
    fn open_grpc_stream(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError>;
    /// Sends one message on an open stream.
    fn send_grpc_stream_message(&self, token: u32, message: &[u8]) -> Result<(), HostError>;
    /// Cancels a stream (no further callbacks).
    fn cancel_grpc_stream(&self, token: u32) -> Result<(), HostError>;
}

/// The real host: Envoy through proxy-wasm.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyWasmHost;

mod proxy;
