//! A stream of a mesh-scoped policy: the request waits for the limiter's
//! Acquire answer, is resumed or refused on it, and gives its slot back
//! (Release) when it ends. What an answer means is decided by
//! `sidestream_core::limit::mesh::decide`; this is the glue around it.

use std::time::Duration;

use prost::Message;
use sidestream_core::config::{FailMode, MeshFallback, StreamLimitPolicy};
use sidestream_core::limit::mesh::{
    self, AcquireEnd, AnswerVerdict, CallOutcome, FallbackCause, LimiterAnswer, MeshDecision,
};
use sidestream_core::limit::StreamKind;
use sidestream_proto::limits::v1::{AcquireResponse, STREAM_LIMITER_SERVICE};

use super::{RequestFlow, RequestHeaders, Verdict};
use crate::host::{CallOwner, Host};
use crate::mesh::{ACQUIRE, RELEASE, RELEASE_TIMEOUT};
use crate::vm::{Applied, VmState};

/// An Acquire the request waits for.
#[derive(Debug)]
pub(super) struct PendingAcquire {
    token: u32,
    policy: StreamLimitPolicy,
    kind: StreamKind,
    key: String,
    /// Host time the call was sent (None: the clock failed).
    sent_at: Option<u64>,
    /// What colouring needs once the stream is admitted.
    pub(super) resume: Option<Resume>,
}

/// The request as it was when it paused.
#[derive(Debug)]
pub(super) struct Resume {
    pub(super) applied: Applied,
    pub(super) headers: RequestHeaders,
    pub(super) trace_id: String,
}

impl RequestFlow {
    /// Sends the Acquire of a mesh-scoped stream: `Pause` while it is in
    /// flight; without a limiter (or when the call cannot be made) the
    /// policy's fallback decides at once.
    pub(super) fn ask_limiter<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        policy: &StreamLimitPolicy,
        kind: StreamKind,
        headers: &RequestHeaders,
    ) -> Verdict {
        let Some(settings) = policy.mesh else {
            return self.admit(host, vm, policy, kind, headers);
        };
        let key = super::limit_key(host, vm, policy, headers);
        let Some(cluster) = vm.mesh.cluster() else {
            let decision = mesh::decide(&settings, CallOutcome::NotSent);
            return self.apply_now(host, vm, policy, kind, headers, decision);
        };
        let sent_at = match host.now_nanos() {
            Ok(now) => Some(now),
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                None
            }
        };
        let message = vm.mesh.acquire_request(policy, &key);
        match host.dispatch_grpc_call(
            CallOwner::Current,
            cluster,
            STREAM_LIMITER_SERVICE,
            ACQUIRE,
            &message,
            settings.timeout,
        ) {
            Ok(token) => {
                vm.mesh.held.borrow_mut().acquire_sent(&policy.name, &key);
                self.pending = Some(Box::new(PendingAcquire {
                    token,
                    policy: policy.clone(),
                    kind,
                    key,
                    sent_at,
                    resume: None,
                }));
                Verdict::Pause
            }
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                let decision = mesh::decide(&settings, CallOutcome::NotSent);
                self.apply_now(host, vm, policy, kind, headers, decision)
            }
        }
    }

    /// A decision reached before the request paused (only a fallback can be).
    fn apply_now<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        policy: &StreamLimitPolicy,
        kind: StreamKind,
        headers: &RequestHeaders,
        decision: MeshDecision,
    ) -> Verdict {
        match decision {
            MeshDecision::Fallback(cause, fallback) => {
                self.fall_back(host, vm, policy, kind, headers, cause, fallback)
            }
            MeshDecision::Admit | MeshDecision::Refuse(_) => {
                // Not reachable without an answer; admit uncounted rather
                // than strand the request.
                Verdict::Continue
            }
        }
    }

    /// The answer to the unary call `token` of this HTTP context arrived
    /// (`grpc_status` 0 with the response `body`, or a failure status).
    /// Resumes the request, or answers it with a refusal. Anything but the
    /// awaited Acquire is ignored (a Release answered while the stream
    /// lives); any body is safe to pass.
    pub fn on_limiter_answer<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        token: u32,
        grpc_status: u32,
        body: &[u8],
    ) {
        let Some(pending) = self.pending.take_if(|p| p.token == token) else {
            return;
        };
        let PendingAcquire {
            policy,
            kind,
            key,
            sent_at,
            resume,
            ..
        } = *pending;
        let now = match host.now_nanos() {
            Ok(now) => Some(now),
            Err(error) => {
                vm.metrics.host_failure(host, &error);
                None
            }
        };
        let elapsed = match (now, sent_at) {
            (Some(now), Some(sent)) => Duration::from_nanos(now.saturating_sub(sent)),
            _ => Duration::ZERO,
        };
        let outcome = if grpc_status != 0 {
            log::warn!(
                "sidestream: limiter Acquire for policy {} failed (grpc-status {grpc_status}) after {elapsed:?}",
                policy.name
            );
            CallOutcome::Failed {
                grpc_status,
                elapsed,
            }
        } else {
            match AcquireResponse::decode(body) {
                Ok(response) => {
                    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                    vm.metrics.set(host, vm.metrics.mesh_rtt_us, micros);
                    if let Some(now) = now {
                        vm.mesh.lease_said(response.lease_ms, now);
                    }
                    CallOutcome::Answered(LimiterAnswer {
                        verdict: AnswerVerdict::from_proto(response.verdict),
                        retry_after_ms: response.retry_after_ms,
                        reset_ms: response.reset_ms,
                        limit: response.limit,
                        lease_ms: response.lease_ms,
                    })
                }
                Err(error) => {
                    log::warn!("sidestream: undecodable AcquireResponse from the limiter: {error}");
                    CallOutcome::Undecodable
                }
            }
        };
        let Some(settings) = policy.mesh else {
            return;
        };
        let decision = mesh::decide(&settings, outcome);
        let end = match decision {
            MeshDecision::Admit => AcquireEnd::Admitted,
            MeshDecision::Refuse(_) => AcquireEnd::Refused,
            MeshDecision::Fallback(..) => AcquireEnd::Unknown,
        };
        vm.mesh
            .held
            .borrow_mut()
            .acquire_ended(&policy.name, &key, end);
        let empty = RequestHeaders::default();
        let headers = resume.as_ref().map_or(&empty, |r| &r.headers);
        let verdict = match decision {
            MeshDecision::Admit => {
                self.mesh_stream = Some((policy.name.clone(), key));
                vm.metrics.add(host, vm.metrics.mesh_admitted, 1);
                vm.metrics.add(host, vm.metrics.streams_admitted, 1);
                vm.metrics.add(host, vm.metrics.streams_active, 1);
                Verdict::Continue
            }
            MeshDecision::Refuse(refusal) => {
                vm.metrics.add(host, vm.metrics.mesh_refused, 1);
                self.refuse(host, vm, &policy, kind, &refusal)
            }
            MeshDecision::Fallback(cause, fallback) => {
                self.fall_back(host, vm, &policy, kind, headers, cause, fallback)
            }
        };
        if verdict == Verdict::Continue {
            if let Some(resume) = &resume {
                self.colour(host, vm, &resume.applied, &resume.headers, &resume.trace_id);
            }
            if let Err(error) = host.resume_http_request() {
                vm.metrics.host_failure(host, &error);
            }
        }
    }

    /// The limiter gave no usable answer: count why, then apply the policy's
    /// fallback.
    #[allow(clippy::too_many_arguments)]
    fn fall_back<H: Host>(
        &mut self,
        host: &H,
        vm: &VmState,
        policy: &StreamLimitPolicy,
        kind: StreamKind,
        headers: &RequestHeaders,
        cause: FallbackCause,
        fallback: MeshFallback,
    ) -> Verdict {
        vm.metrics.add(host, vm.metrics.mesh_fallback(cause), 1);
        match fallback {
            MeshFallback::Local => self.admit(host, vm, policy, kind, headers),
            MeshFallback::Admit => {
                vm.metrics.add(host, vm.metrics.streams_admitted, 1);
                Verdict::Continue
            }
            MeshFallback::Refuse => self.fail(host, vm, FailMode::Closed, true),
        }
    }

    /// The stream ended: an Acquire still in flight is left for the next
    /// Sync to settle; a mesh-wide slot is given back (Release, owned by the
    /// root context so Envoy does not cancel it with this stream).
    pub(super) fn end_mesh_stream<H: Host>(&mut self, host: &H, vm: &VmState) {
        if let Some(pending) = self.pending.take() {
            vm.mesh.held.borrow_mut().acquire_ended(
                &pending.policy.name,
                &pending.key,
                AcquireEnd::Unknown,
            );
        }
        let Some((policy, key)) = self.mesh_stream.take() else {
            return;
        };
        vm.mesh.held.borrow_mut().released(&policy, &key);
        vm.metrics.add(host, vm.metrics.streams_active, -1);
        let Some(cluster) = vm.mesh.cluster() else {
            return;
        };
        let message = vm.mesh.release_request(&policy, &key);
        match host.dispatch_grpc_call(
            vm.mesh.detached_owner(self.context_id),
            cluster,
            STREAM_LIMITER_SERVICE,
            RELEASE,
            &message,
            RELEASE_TIMEOUT,
        ) {
            Ok(_) => match host.now_nanos() {
                Ok(now) => vm.mesh.release_sent(now),
                Err(error) => vm.metrics.host_failure(host, &error),
            },
            // The next Sync states the true count.
            Err(error) => vm.metrics.host_failure(host, &error),
        }
    }
}

#[cfg(test)]
mod tests;
