//! The `sidestream.limits.v1.StreamLimiter` gRPC service: check the request,
//! run the script, answer; count the outcome.

use std::sync::Arc;

use sidestream_proto::limits::v1 as pb;
use sidestream_proto::limits::v1::stream_limiter_server::{StreamLimiter, StreamLimiterServer};
use tonic::{Request, Response, Status};
use tracing::{debug, warn, Instrument};

use crate::error::LimiterError;
use crate::metrics::{Method, Metrics, Outcome};
use crate::store::{Clock, Store, Verdict};
use crate::validate;

/// Largest request accepted (a Sync of 100,000 holdings fits).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The service over a [`Store`].
#[derive(Debug, Clone)]
pub struct LimiterService {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl LimiterService {
    /// A service answering from `store`.
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        LimiterService { store, metrics }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> StreamLimiterServer<LimiterService> {
        StreamLimiterServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Counts and logs a failed request, and turns it into a status.
    fn failed(&self, method: Method, error: LimiterError) -> Status {
        let span = tracing::Span::current();
        span.record("outcome", error_outcome(&error).as_str());
        sidestream_telemetry::set_error(&span, error.to_string());
        match &error {
            LimiterError::Invalid(invalid) => {
                debug!(method = method.as_str(), %invalid, "Invalid request");
                self.metrics.request(method, Outcome::Invalid);
            }
            LimiterError::Store(store) => {
                warn!(method = method.as_str(), error = %store, "Redis call failed");
                self.metrics.request(method, Outcome::Error);
            }
        }
        Status::from(error)
    }

    async fn acquire_checked(
        &self,
        request: &pb::AcquireRequest,
    ) -> Result<pb::AcquireResponse, LimiterError> {
        let call = validate::Acquire::try_from(request)?;
        let decision = self.store.acquire(&call, Clock::Redis).await?;
        let (verdict, limit, outcome) = match decision.verdict {
            Verdict::Admitted => (pb::Verdict::Admitted, call.limits.burst, Outcome::Admitted),
            Verdict::RefusedRate => (
                pb::Verdict::RefusedRate,
                call.limits.burst,
                Outcome::RefusedRate,
            ),
            Verdict::RefusedConcurrency => (
                pb::Verdict::RefusedConcurrency,
                call.limits.max_concurrent,
                Outcome::RefusedConcurrency,
            ),
        };
        self.metrics.request(Method::Acquire, outcome);
        tracing::Span::current().record("outcome", outcome.as_str());
        debug!(
            instance = %call.instance,
            policy = %call.target.policy,
            policy_version = %call.policy_version,
            outcome = outcome.as_str(),
            active = decision.active,
            "Acquire"
        );
        Ok(pb::AcquireResponse {
            verdict: verdict.into(),
            retry_after_ms: decision.retry_after_ms,
            reset_ms: decision.reset_ms,
            limit,
            remaining: decision.remaining,
            active: decision.active,
            lease_ms: self.store.lease_ms(),
        })
    }
}

fn error_outcome(error: &LimiterError) -> Outcome {
    match error {
        LimiterError::Invalid(_) => Outcome::Invalid,
        LimiterError::Store(_) => Outcome::Error,
    }
}

/// The span of one call: a server span `StreamLimiter/<Method>` continuing
/// the caller's W3C trace context (`traceparent`/`tracestate` metadata), with
/// the call's outcome.
pub(crate) fn call_span<T>(method: Method, request: &Request<T>) -> tracing::Span {
    let metadata = |name| {
        request
            .metadata()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let name = match method {
        Method::Acquire => "StreamLimiter/Acquire",
        Method::Release => "StreamLimiter/Release",
        Method::Sync => "StreamLimiter/Sync",
        Method::ShouldRateLimit => "RateLimitService/ShouldRateLimit",
    };
    let span = tracing::info_span!(
        "call",
        method = method.as_str(),
        outcome = tracing::field::Empty,
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
    );
    sidestream_telemetry::continue_trace(&span, metadata("traceparent"), metadata("tracestate"));
    span
}

#[tonic::async_trait]
impl StreamLimiter for LimiterService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let span = call_span(Method::Acquire, &request);
        async {
            self.acquire_checked(request.get_ref())
                .await
                .map(Response::new)
                .map_err(|e| self.failed(Method::Acquire, e))
        }
        .instrument(span)
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let span = call_span(Method::Release, &request);
        async {
            let result = async {
                let call = validate::Release::try_from(request.get_ref())?;
                Ok::<_, LimiterError>(self.store.release(&call).await?)
            }
            .await;
            match result {
                Ok(held) => {
                    self.metrics.request(Method::Release, Outcome::Ok);
                    tracing::Span::current().record("outcome", Outcome::Ok.as_str());
                    Ok(Response::new(pb::ReleaseResponse { held }))
                }
                Err(error) => Err(self.failed(Method::Release, error)),
            }
        }
        .instrument(span)
        .await
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let span = call_span(Method::Sync, &request);
        async {
            let result = async {
                let call = validate::Sync::try_from(request.get_ref())?;
                Ok::<_, LimiterError>(self.store.sync(&call, Clock::Redis).await?)
            }
            .await;
            match result {
                Ok(()) => {
                    self.metrics.request(Method::Sync, Outcome::Ok);
                    tracing::Span::current().record("outcome", Outcome::Ok.as_str());
                    Ok(Response::new(pb::SyncResponse {
                        lease_ms: self.store.lease_ms(),
                    }))
                }
                Err(error) => Err(self.failed(Method::Sync, error)),
            }
        }
        .instrument(span)
        .await
    }
}
