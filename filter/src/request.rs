//! One HTTP request through the filter: trace, stream limit, release colouring,
//! then the response side and the end of the stream. Generic over [`Host`] so it
//! runs natively against a fake host in the unit tests (`request/tests.rs`).
//!
//! Every decision is made by `sidestream_core`; this module reads headers, calls
//! the decision and applies it with as few host calls as it can.

use sidestream_core::config::{FailMode, Snapshot, StreamLimitPolicy};
use sidestream_core::limit::{self, Admission, Refusal, StreamKind, StreamLimitState};
use sidestream_core::release;
use sidestream_core::trace::{self, TraceOutcome};
use sidestream_core::RequestView;

use crate::host::{GrpcCode, Host, HostError};
use crate::shared::{self, Step, UpdateError};
use crate::vm::{Applied, VmState};

/// Prefix of the shared-data keys holding stream-limit state:
/// `sidestream.limit.<policy>.<key>`.
pub const LIMIT_KEY_PREFIX: &str = "sidestream.limit.";

/// The longest shared-data key the filter writes. Policy names are at most 128
/// characters and core bounds the limit key (it hashes long values); a key that
/// still comes out longer is refused by fail mode rather than stored.
pub const MAX_SHARED_KEY_LEN: usize = 512;

/// What the glue should tell Envoy after the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on.
    Continue,
    /// A local response was sent: stop the request here.
    Stop,
    /// Waiting for the limiter: pause the request; the answer resumes it
    /// ([`RequestFlow::on_limiter_answer`]) or refuses it.
    Pause,
}

/// The per-request state between callbacks.
#[derive(Debug, Default)]
pub struct RequestFlow {
    /// Headers to add to the response (trace id echo, sticky cookie).
    response_headers: Vec<(String, String)>,
    /// The shared-data key of an admitted stream, until its end is counted.
    open_stream: Option<String>,
    /// This HTTP context's id (the glue's), for calls that outlive it.
    context_id: Option<u32>,
    /// The Acquire this request waits for.
    pending: Option<Box<mesh::PendingAcquire>>,
    /// (policy, key) of a stream the limiter admitted, until it is released.
    mesh_stream: Option<(String, String)>,
}

impl RequestFlow {
    /// A flow for a new request.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flow for a new request in the HTTP context `context_id`.
    pub fn for_context(context_id: u32) -> Self {
        RequestFlow {
            context_id: Some(context_id),
            ..Self::default()
        }
    }

    /// Whether an admitted stream is still counted as open (locally or
    /// mesh-wide).
    pub fn holds_stream(&self) -> bool {
        self.open_stream.is_some() || self.mesh_stream.is_some()
    }

    /// Whether the request waits for the limiter.
    pub fn waits_for_limiter(&self) -> bool {
        self.pending.is_some()
    }

    /// The request headers arrived.
    pub fn on_request_headers<H: Host>(&mut self, host: &H, vm: &VmState) -> Verdict {
        let applied = vm.applied();
        let snapshot = &applied.snapshot;
        let headers = match host.request_headers() {
            Ok(map) => match RequestHeaders::parse(map) {
                Ok(headers) => headers,
                Err(error) => {
                    vm.metrics.host_failure(
                        host,
                        &HostError::new(
                            "get_header_map_pairs(request headers)",
                            format_args!("{error}"),
                        ),
                    );
                    return self.fail(host, vm, vm.fail_mode, false);
                }
            },
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                return self.fail(host, vm, vm.fail_mode, false);
            }
        };

        let trace_id = self.trace(host, vm, snapshot, &headers);

        if !snapshot.stream_limits.is_empty() {
            if let Some(kind) = limit::detect_stream(&headers) {
                if let Some(policy) = limit::select(&snapshot.stream_limits, &headers, kind) {
                    let verdict = if policy.mesh.is_some() {
                        self.ask_limiter(host, vm, policy, kind, &headers)
                    } else {
                        self.admit(host, vm, policy, kind, &headers)
                    };
                    match verdict {
                        Verdict::Continue => {}
                        Verdict::Stop => return Verdict::Stop,
                        Verdict::Pause => {
                            // Coloured once the limiter admits the stream.
                            if let Some(pending) = self.pending.as_mut() {
                                pending.resume = Some(mesh::Resume {
                                    applied,
                                    headers,
                                    trace_id,
                                });
                            }
                            return Verdict::Pause;
                        }
                    }
                }
            }
        }

        self.colour(host, vm, &applied, &headers, &trace_id);
        Verdict::Continue
    }

    /// The response headers arrived (also for local responses).
    pub fn on_response_headers<H: Host>(&mut self, host: &H, vm: &VmState) {
        for (name, value) in self.response_headers.drain(..) {
            if let Err(error) = host.add_response_header(&name, &value) {
                vm.metrics.host_failure(host, &error);
            }
        }
    }

    /// The stream is over (finished, reset, or the client went away): an
    /// admitted stream stops counting against its key. Safe to call twice.
    pub fn on_stream_end<H: Host>(&mut self, host: &H, vm: &VmState) {
        self.end_mesh_stream(host, vm);
        let Some(key) = self.open_stream.take() else {
            return;
        };
        vm.metrics.add(host, vm.metrics.streams_active, -1);
        let result = shared::update(host, &key, |current| {
            match current.and_then(StreamLimitState::decode) {
                Some(mut state) => {
                    state.finish();
                    Step::Write(state.encode(), ())
                }
                // Gone or unreadable: nothing to give back.
                None => Step::Skip(()),
            }
        });
        match result {
            Ok(()) => {}
            Err(UpdateError::Host(error)) => vm.metrics.host_failure(host, &error),
            Err(UpdateError::Contended) => {
                log::warn!("sidestream: stream end not counted for {key}: shared data contended");
                vm.metrics.host_failure(
                    host,
                    &HostError::new("set_shared_data", "CasMismatch after retries"),
                );
            }
        }
    }

    /// Continues or starts the trace; returns the trace id (hex).
    fn trace<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        snapshot: &Snapshot,
        headers: &RequestHeaders,
    ) -> String {
        let settings = &snapshot.trace;
        let decision = trace::decide(settings, headers, &mut |buf: &mut [u8]| vm.fill_random(buf));
        let counter = match decision.outcome {
            TraceOutcome::Started => Some(vm.metrics.traces_started),
            TraceOutcome::Continued => Some(vm.metrics.traces_continued),
            TraceOutcome::InvalidParent => {
                vm.metrics.count(vm.metrics.traces_invalid_parent, 1);
                Some(vm.metrics.traces_started)
            }
            TraceOutcome::Disabled => None,
        };
        if let Some(counter) = counter {
            vm.metrics.count(counter, 1);
        }
        for name in &decision.remove_headers {
            if let Err(error) = host.set_request_header(name, None) {
                vm.metrics.host_failure(host, &error);
            }
        }
        for (name, value) in &decision.set_headers {
            if let Err(error) = host.set_request_header(name, Some(value)) {
                vm.metrics.host_failure(host, &error);
            }
        }
        if let Some((name, value)) = decision.response_header {
            self.response_headers.push((name.to_owned(), value));
        }
        decision.trace_id_hex
    }

    /// Chooses the release group, writes the tag header and re-routes. A
    /// request no policy matches loses the tag headers of the policies that
    /// do not trust client tags: Envoy routes on them, so a client-sent value
    /// would otherwise pick the group.
    fn colour<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        applied: &Applied,
        headers: &RequestHeaders,
        trace_id: &str,
    ) {
        let Some(policy) = release::select(&applied.snapshot.releases, headers) else {
            strip_untrusted_tags(host, vm, &applied.untrusted_tag_headers, headers);
            return;
        };
        let decision = policy.decide(headers, trace_id);
        // A request that already carries exactly the chosen group was routed on
        // it: writing the same value and re-routing would change nothing.
        if headers.header(decision.tag_header) != Some(decision.group) {
            if let Err(error) = host.set_request_header(decision.tag_header, Some(decision.group)) {
                vm.metrics.host_failure(host, &error);
            }
            if let Err(error) = host.clear_route_cache() {
                vm.metrics.host_failure(host, &error);
            }
        }
        vm.metrics
            .count_release(host, decision.policy, decision.group);
        if let Some(cookie) = decision.set_cookie {
            self.response_headers
                .push(("set-cookie".to_owned(), cookie));
        }
    }

    /// Admits the stream through the shared token bucket and concurrency cap,
    /// or refuses it.
    fn admit<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        policy: &StreamLimitPolicy,
        kind: StreamKind,
        headers: &RequestHeaders,
    ) -> Verdict {
        let key = format!(
            "{LIMIT_KEY_PREFIX}{}.{}",
            policy.name,
            limit_key(host, vm, policy, headers)
        );
        if key.len() > MAX_SHARED_KEY_LEN {
            log::warn!("sidestream: stream-limit key longer than {MAX_SHARED_KEY_LEN} bytes");
            return self.fail(host, vm, policy.fail_mode, true);
        }
        let now = match host.now_nanos() {
            Ok(now) => now,
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                return self.fail(host, vm, policy.fail_mode, true);
            }
        };
        // The refusal of the last attempt, if it decided one: a refusal whose
        // write is lost (contention, a failed write) still refuses.
        let mut refused = None;
        let result = shared::update(host, &key, |current| {
            let mut state = current
                .and_then(StreamLimitState::decode)
                .unwrap_or_else(|| StreamLimitState::new(policy, now));
            let admission = state.admit(policy, now);
            let encoded = state.encode();
            match admission {
                Admission::Admitted { .. } => {
                    refused = None;
                    Step::Write(encoded, admission)
                }
                // A refusal may have refilled the bucket (or restarted the
                // refill after the clock stepped back): store that, or the
                // next request computes from the stale state again.
                Admission::Refused(ref refusal) => {
                    refused = Some(refusal.clone());
                    if current == Some(encoded.as_slice()) {
                        Step::Skip(admission)
                    } else {
                        Step::Write(encoded, admission)
                    }
                }
            }
        });
        let result = match (result, refused) {
            (Err(error), Some(refusal)) => {
                let error = match error {
                    UpdateError::Host(error) => error,
                    UpdateError::Contended => {
                        HostError::new("set_shared_data", "CasMismatch after retries")
                    }
                };
                vm.metrics.host_failure(host, &error);
                Ok(Admission::Refused(refusal))
            }
            (result, _) => result,
        };
        match result {
            Ok(Admission::Admitted { .. }) => {
                self.open_stream = Some(key);
                vm.metrics.add(host, vm.metrics.streams_admitted, 1);
                vm.metrics.add(host, vm.metrics.streams_active, 1);
                Verdict::Continue
            }
            Ok(Admission::Refused(refusal)) => self.refuse(host, vm, policy, kind, &refusal),
            Err(UpdateError::Host(error)) => {
                vm.metrics.host_failure(host, &error);
                self.fail(host, vm, policy.fail_mode, true)
            }
            Err(UpdateError::Contended) => {
                vm.metrics.host_failure(
                    host,
                    &HostError::new("set_shared_data", "CasMismatch after retries"),
                );
                self.fail(host, vm, policy.fail_mode, true)
            }
        }
    }

    /// Answers a refused stream: 429 with `retry-after` and the RateLimit
    /// headers, or gRPC RESOURCE_EXHAUSTED with them as metadata.
    fn refuse<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        policy: &StreamLimitPolicy,
        kind: StreamKind,
        refusal: &Refusal,
    ) -> Verdict {
        vm.metrics.add(host, vm.metrics.streams_refused, 1);
        let headers = refusal.headers(policy);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let sent = if kind == StreamKind::Grpc {
            host.send_grpc_response(
                GrpcCode::ResourceExhausted,
                "stream limit reached; retry later",
                &headers,
            )
        } else {
            let body = refusal_body(policy, refusal.retry_after_secs);
            let mut all = headers;
            all.push(("content-type", "application/json"));
            host.send_http_response(429, &all, body.as_bytes())
        };
        if let Err(error) = sent {
            vm.metrics.host_failure(host, &error);
        }
        Verdict::Stop
    }

    /// Something needed could not be had: open lets the request through
    /// (a stream goes uncounted), closed answers 503.
    fn fail<H: Host>(&mut self, host: &H, vm: &VmState, mode: FailMode, stream: bool) -> Verdict {
        match mode {
            FailMode::Open => Verdict::Continue,
            FailMode::Closed => {
                if stream {
                    vm.metrics.add(host, vm.metrics.streams_refused, 1);
                }
                let sent = host.send_http_response(
                    503,
                    &[("content-type", "application/json"), ("retry-after", "1")],
                    b"{\"error\":\"sidestream: stream admission unavailable\"}\n",
                );
                if let Err(error) = sent {
                    vm.metrics.host_failure(host, &error);
                }
                Verdict::Stop
            }
        }
    }
}

/// The policy's bucket key for this request; the client address is asked of
/// the host only when the key needs it.
fn limit_key<H: Host>(
    host: &H,
    vm: &VmState,
    policy: &StreamLimitPolicy,
    headers: &RequestHeaders,
) -> String {
    let client = if policy.needs_client_address(headers) {
        match host.source_address() {
            Ok(address) => address,
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                None
            }
        }
    } else {
        None
    };
    policy.key(headers, client.as_deref())
}

/// Removes the request's client-sent `tag_headers`; re-routes if any was there.
fn strip_untrusted_tags<H: Host>(
    host: &H,
    vm: &VmState,
    tag_headers: &[String],
    headers: &RequestHeaders,
) {
    let mut removed = false;
    for name in tag_headers {
        if headers.header(name).is_none() {
            continue;
        }
        match host.set_request_header(name, None) {
            Ok(()) => removed = true,
            Err(error) => vm.metrics.host_failure(host, &error),
        }
    }
    if removed {
        if let Err(error) = host.clear_route_cache() {
            vm.metrics.host_failure(host, &error);
        }
    }
}

/// The small JSON body of a 429.
fn refusal_body(policy: &StreamLimitPolicy, retry_after_secs: u32) -> String {
    let body = serde_json::json!({
        "error": "stream limit reached",
        "policy": policy.name,
        "retryAfterSeconds": retry_after_secs,
    });
    format!("{body}\n")
}

mod headers;
mod mesh;
#[cfg(test)]
mod tests;

pub use headers::{serialize_pairs, HeaderMapError, RequestHeaders};
