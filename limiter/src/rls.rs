//! Envoy's rate limit service (RLS v3, `ShouldRateLimit`) on the limiter's
//! buckets, so Envoy's own rate-limit filter and the sidestream filter's
//! mesh-scoped policies draw from the same token buckets.
//!
//! RLS requests carry no numbers, so this part has a config file
//! (`--rls-config`): a domain, and for each descriptor key the stream-limit
//! policy it stands for, written as in etcd (`docs/config.md`). A descriptor
//! `[(key, value)]` takes a token from that policy's bucket for the key the
//! filter would compute from the same value (`h:<value>` for a header key,
//! `a:<ip>` for the client address, `route`), through the same `core` code.
//! RLS cannot release, so it holds no concurrent slot; at the policy's cap it
//! answers OVER_LIMIT as Acquire would.

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sidestream_core::config::{parse_spec_value, Item, Kind, LimitKey, StreamLimitPolicy};
use sidestream_core::RequestView;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::LimiterError;
use crate::metrics::{Method, Metrics, Outcome};
use crate::store::{Clock, Decision, Store, Verdict};
use crate::validate::{Limits, Target};

/// The generated messages and service (Envoy's field numbers).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

use pb::rate_limit_response::rate_limit::Unit;
use pb::rate_limit_response::{Code, DescriptorStatus, RateLimit};

/// Most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRlsConfig {
    domain: String,
    descriptors: Vec<RawRlsDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRlsDescriptor {
    key: String,
    policy: String,
    spec: serde_json::Value,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RlsConfigError {
    /// Unreadable.
    #[error("--rls-config {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Not the expected JSON.
    #[error("--rls-config {path}: {error}")]
    Json {
        /// The file.
        path: String,
        /// serde's message (line and column).
        error: serde_json::Error,
    },
    /// A value is wrong.
    #[error("--rls-config {path}: {field}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// Which value (`descriptors[1].spec`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// One descriptor key and the policy it stands for.
#[derive(Debug, Clone)]
pub struct RlsDescriptor {
    /// The descriptor entry's key (`tenant`).
    pub key: String,
    /// The policy, validated as the control plane validates it.
    pub policy: StreamLimitPolicy,
}

/// The checked config.
#[derive(Debug, Clone)]
pub struct RlsConfig {
    /// The RLS domain served; requests for other domains are under limit.
    pub domain: String,
    /// Descriptor keys, each once.
    pub descriptors: Vec<RlsDescriptor>,
}

impl RlsConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<RlsConfig, RlsConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|error| RlsConfigError::Read {
            path: shown.clone(),
            error,
        })?;
        Self::parse(&shown, &text)
    }

    /// Checks a config (`path` names it in errors).
    pub fn parse(path: &str, text: &[u8]) -> Result<RlsConfig, RlsConfigError> {
        let raw: RawRlsConfig =
            serde_json::from_slice(text).map_err(|error| RlsConfigError::Json {
                path: path.to_owned(),
                error,
            })?;
        let invalid = |field: String, problem: String| RlsConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        if raw.domain.is_empty() {
            return Err(invalid("domain".into(), "must not be empty".into()));
        }
        let mut seen = HashSet::new();
        let mut descriptors = Vec::with_capacity(raw.descriptors.len());
        for (i, descriptor) in raw.descriptors.into_iter().enumerate() {
            if descriptor.key.is_empty() {
                return Err(invalid(
                    format!("descriptors[{i}].key"),
                    "must not be empty".into(),
                ));
            }
            if !seen.insert(descriptor.key.clone()) {
                return Err(invalid(
                    format!("descriptors[{i}].key"),
                    format!("'{}' is listed twice", descriptor.key),
                ));
            }
            let policy =
                match parse_spec_value(Kind::StreamLimit, &descriptor.policy, descriptor.spec) {
                    Ok(Item::StreamLimit(policy)) => policy,
                    Ok(other) => {
                        return Err(invalid(
                            format!("descriptors[{i}].spec"),
                            format!("not a stream-limit policy: {:?}", other.kind()),
                        ))
                    }
                    Err(error) => {
                        return Err(invalid(format!("descriptors[{i}]"), error.to_string()))
                    }
                };
            descriptors.push(RlsDescriptor {
                key: descriptor.key,
                policy,
            });
        }
        Ok(RlsConfig {
            domain: raw.domain,
            descriptors,
        })
    }

    /// The policy a descriptor stands for and the limit key within it, or
    /// None when no rule matches (one entry whose key is configured).
    pub fn target(
        &self,
        descriptor: &pb::RateLimitDescriptor,
    ) -> Option<(&StreamLimitPolicy, Target)> {
        let [entry] = descriptor.entries.as_slice() else {
            return None;
        };
        let rule = self.descriptors.iter().find(|d| d.key == entry.key)?;
        let policy = &rule.policy;
        let key = match &policy.key {
            LimitKey::Header(name) => policy.key(
                &OneHeader {
                    name,
                    value: &entry.value,
                },
                None,
            ),
            LimitKey::ClientAddress => policy.key(&NoHeaders, Some(&entry.value)),
            LimitKey::Route => policy.key(&NoHeaders, None),
        };
        Some((
            policy,
            Target {
                policy: policy.name.clone(),
                key,
            },
        ))
    }
}

/// A request with one header: the descriptor's value under the policy's
/// header name.
struct OneHeader<'a> {
    name: &'a str,
    value: &'a str,
}

impl RequestView for OneHeader<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        (name == self.name).then_some(self.value)
    }
}

struct NoHeaders;

impl RequestView for NoHeaders {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}

/// A rate in thousandths per second as Envoy's `requests_per_unit` and
/// unit: the shortest unit with a whole number, else per day rounded up.
pub fn rate_limit(name: &str, rate_milli: u64) -> RateLimit {
    let units = [
        (Unit::Second, 1),
        (Unit::Minute, 60),
        (Unit::Hour, 3600),
        (Unit::Day, 86_400),
    ];
    let (unit, per_unit) = units
        .iter()
        .find(|(_, secs)| (rate_milli * secs).is_multiple_of(1000))
        .map(|(unit, secs)| (*unit, rate_milli * secs / 1000))
        .unwrap_or((Unit::Day, (rate_milli * 86_400).div_ceil(1000)));
    RateLimit {
        name: name.to_owned(),
        requests_per_unit: u32::try_from(per_unit).unwrap_or(u32::MAX),
        unit: unit.into(),
    }
}

fn duration(ms: u64) -> pb::Duration {
    pb::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The RLS service over the limiter's store.
#[derive(Debug, Clone)]
pub struct RlsService {
    config: Arc<RlsConfig>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl RlsService {
    /// A service answering `config`'s domain from `store`.
    pub fn new(config: RlsConfig, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        RlsService {
            config: Arc::new(config),
            store,
            metrics,
        }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> pb::rate_limit_service_server::RateLimitServiceServer<RlsService> {
        pb::rate_limit_service_server::RateLimitServiceServer::new(self)
    }

    async fn decide(
        &self,
        request: &pb::RateLimitRequest,
    ) -> Result<(pb::RateLimitResponse, Outcome), LimiterError> {
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(crate::validate::Invalid {
                field: "descriptors".into(),
                problem: format!(
                    "{} entries, more than {MAX_DESCRIPTORS}",
                    request.descriptors.len()
                ),
            }
            .into());
        }
        let tokens = request.hits_addend.max(1);
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        let mut outcome = Outcome::Unmatched;
        let mut retry_after_ms = 0;
        for descriptor in &request.descriptors {
            let matched = if request.domain == self.config.domain {
                self.config.target(descriptor)
            } else {
                None
            };
            let Some((policy, target)) = matched else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok.into(),
                    ..DescriptorStatus::default()
                });
                continue;
            };
            let limits = Limits {
                rate_milli: policy.rate_milli,
                burst: policy.burst,
                max_concurrent: policy.max_concurrent.unwrap_or(0),
            };
            let decision = if tokens > policy.burst {
                // More than the bucket holds: never under limit.
                Decision {
                    verdict: Verdict::RefusedRate,
                    retry_after_ms: 1000,
                    reset_ms: 1000,
                    remaining: 0,
                    active: 0,
                }
            } else {
                self.store
                    .take_tokens(&target, limits, tokens, Clock::Redis)
                    .await?
            };
            let code = match decision.verdict {
                Verdict::Admitted => {
                    if outcome == Outcome::Unmatched {
                        outcome = Outcome::Admitted;
                    }
                    Code::Ok
                }
                Verdict::RefusedRate | Verdict::RefusedConcurrency => {
                    if !matches!(outcome, Outcome::RefusedRate | Outcome::RefusedConcurrency) {
                        outcome = if decision.verdict == Verdict::RefusedRate {
                            Outcome::RefusedRate
                        } else {
                            Outcome::RefusedConcurrency
                        };
                    }
                    retry_after_ms = retry_after_ms.max(decision.retry_after_ms);
                    Code::OverLimit
                }
            };
            statuses.push(DescriptorStatus {
                code: code.into(),
                current_limit: Some(rate_limit(&policy.name, policy.rate_milli)),
                limit_remaining: decision.remaining,
                duration_until_reset: Some(duration(decision.reset_ms)),
            });
        }
        let over = statuses
            .iter()
            .any(|s| s.code == i32::from(Code::OverLimit));
        let mut response = pb::RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok }.into(),
            statuses,
            ..pb::RateLimitResponse::default()
        };
        if over {
            response.response_headers_to_add.push(pb::HeaderValue {
                key: "retry-after".into(),
                value: retry_after_ms.div_ceil(1000).max(1).to_string(),
            });
        }
        Ok((response, outcome))
    }
}

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<pb::RateLimitRequest>,
    ) -> Result<Response<pb::RateLimitResponse>, Status> {
        let span = crate::service::call_span(Method::ShouldRateLimit, &request);
        let result = self
            .decide(request.get_ref())
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(LimiterError::Invalid(_)) => Outcome::Invalid,
            Err(LimiterError::Store(store)) => {
                tracing::warn!(parent: &span, error = %store, "Redis call failed (RLS)");
                Outcome::Error
            }
        };
        span.record("outcome", outcome.as_str());
        self.metrics.request(Method::ShouldRateLimit, outcome);
        result
            .map(|(response, _)| Response::new(response))
            .map_err(Status::from)
    }
}
