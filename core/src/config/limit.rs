//! StreamLimitPolicy (`v1/stream-limits/<name>`). The bucket lives in `crate::limit`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::route::{RawRouteMatch, RouteMatch};
use super::{check, FailMode, Problem, Problems};
use crate::limit::StreamKind;

/// A stream rate-limit policy: a token bucket for new streams and a cap on
/// concurrent streams, per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawStreamLimitPolicy {
    /// Requests this policy applies to (default: all). A stream is matched by
    /// the first policy in (priority desc, name asc) order that lists its kind.
    #[serde(rename = "match", default)]
    pub route: RawRouteMatch,
    /// Higher wins when several policies match a stream.
    #[serde(default)]
    pub priority: i32,
    /// Stream kinds limited (at least one, each once).
    #[serde(default = "default_stream_kinds")]
    pub stream_kinds: Vec<StreamKind>,
    /// What a bucket is kept per.
    #[serde(default)]
    pub key: RawLimitKey,
    /// Token refill rate: new streams per second, > 0, ≤ 1000000, at most 3
    /// decimals.
    #[schemars(range(min = 0.001, max = 1_000_000.0))]
    #[serde(serialize_with = "super::serialize_number")]
    pub new_streams_per_second: f64,
    /// Bucket size: streams that may open at once after a quiet spell,
    /// 1..=1000000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
    /// Cap on streams open at the same time per key, 1..=1000000; `null`
    /// (the default) means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_concurrent: Option<u32>,
    /// When the shared state cannot be read or written: `open` lets the
    /// stream through, `closed` refuses it.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Where the limits hold: `envoy` (each Envoy keeps its own buckets in
    /// shared data, no network hop) or `mesh` (every Envoy asks
    /// sidestream-limiter, so the limits hold across all of them).
    #[serde(default)]
    pub scope: LimitScope,
    /// Settings of a `mesh`-scoped policy (absent: the defaults); only with
    /// `scope: mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<RawMeshSettings>,
}

/// Where a stream-limit policy's limits hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LimitScope {
    /// Per Envoy: buckets in the Envoy's shared data.
    #[default]
    Envoy,
    /// Mesh-wide: buckets in sidestream-limiter (Redis).
    Mesh,
}

impl LimitScope {
    /// `envoy` or `mesh`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Envoy => "envoy",
            LimitScope::Mesh => "mesh",
        }
    }
}

/// How a mesh-scoped policy asks the limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMeshSettings {
    /// What applies when the limiter does not answer within `timeoutMs` or
    /// answers with an error: `local` (this policy's limits in the Envoy's
    /// shared data), `refuse` (503, like failMode closed) or `admit`.
    #[serde(default)]
    pub fallback: MeshFallback,
    /// How long a stream open waits for the limiter, 1..=5000 milliseconds.
    #[serde(default = "default_mesh_timeout_ms")]
    #[schemars(range(min = 1, max = 5000))]
    pub timeout_ms: u64,
}

fn default_mesh_timeout_ms() -> u64 {
    DEFAULT_MESH_TIMEOUT_MS
}

impl Default for RawMeshSettings {
    fn default() -> Self {
        RawMeshSettings {
            fallback: MeshFallback::default(),
            timeout_ms: DEFAULT_MESH_TIMEOUT_MS,
        }
    }
}

/// What applies to a stream of a mesh-scoped policy when the limiter gives
/// no usable answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MeshFallback {
    /// The policy's own limits, kept per Envoy as for `scope: envoy`.
    #[default]
    Local,
    /// Refuse the stream (503, as failMode closed does).
    Refuse,
    /// Let the stream through, uncounted.
    Admit,
}

impl MeshFallback {
    /// `local`, `refuse` or `admit`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshFallback::Local => "local",
            MeshFallback::Refuse => "refuse",
            MeshFallback::Admit => "admit",
        }
    }
}

/// The default of `mesh.timeoutMs`.
pub const DEFAULT_MESH_TIMEOUT_MS: u64 = 50;
/// The bounds of `mesh.timeoutMs`.
pub const MESH_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=5000;

/// A mesh-scoped policy's settings (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshSettings {
    pub fallback: MeshFallback,
    /// 1 ms..=5 s.
    pub timeout: Duration,
}

fn default_stream_kinds() -> Vec<StreamKind> {
    vec![StreamKind::Sse, StreamKind::WebSocket, StreamKind::Grpc]
}

/// What the bucket is kept per.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "source", rename_all = "camelCase", deny_unknown_fields)]
pub enum RawLimitKey {
    /// A request header (e.g. a tenant id); the client address when absent.
    Header {
        /// Header name (lowercase).
        name: String,
    },
    /// The client address (without port).
    #[default]
    ClientAddress,
    /// One bucket for the whole policy.
    Route,
}

/// What the bucket is kept per (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// Lowercase header name; falls back to the client address.
    Header(String),
    ClientAddress,
    Route,
}

/// A validated stream-limit policy.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamLimitPolicy {
    pub name: String,
    pub route: RouteMatch,
    pub priority: i32,
    pub stream_kinds: Vec<StreamKind>,
    pub key: LimitKey,
    pub new_streams_per_second: f64,
    /// The rate in thousandths of a stream per second (1..=10^9).
    pub rate_milli: u64,
    pub burst: u32,
    pub max_concurrent: Option<u32>,
    pub fail_mode: FailMode,
    /// `Some` for a mesh-scoped policy (the limiter decides), `None` for an
    /// Envoy-scoped one.
    pub mesh: Option<MeshSettings>,
}

const MAX_BURST: u32 = 1_000_000;

impl StreamLimitPolicy {
    pub(crate) fn from_raw(name: &str, raw: RawStreamLimitPolicy) -> Result<Self, Vec<Problem>> {
        let mut problems = Problems::default();
        let route = RouteMatch::from_raw(raw.route, &mut problems);
        if raw.stream_kinds.is_empty() {
            problems.push(
                "streamKinds",
                "must list at least one of sse, websocket, grpc",
            );
        }
        let mut stream_kinds: Vec<StreamKind> = Vec::with_capacity(3);
        for (i, k) in raw.stream_kinds.iter().enumerate() {
            if stream_kinds.contains(k) {
                problems.push(
                    format!("streamKinds[{i}]"),
                    format!("'{}' is listed twice", k.as_str()),
                );
            } else {
                stream_kinds.push(*k);
            }
        }
        let key = match raw.key {
            RawLimitKey::Header { name } => LimitKey::Header(check::lowercase_header_name(
                &mut problems,
                "key.name",
                &name,
            )),
            RawLimitKey::ClientAddress => LimitKey::ClientAddress,
            RawLimitKey::Route => LimitKey::Route,
        };
        let rate = raw.new_streams_per_second;
        let rate_milli = if !rate.is_finite() || rate <= 0.0 {
            problems.push("newStreamsPerSecond", format!("{rate} is not above 0"));
            1
        } else if rate > 1_000_000.0 {
            problems.push("newStreamsPerSecond", format!("{rate} is above 1000000"));
            1
        } else {
            match check::fixed_point(rate, 3) {
                Some(0) => {
                    problems.push(
                        "newStreamsPerSecond",
                        format!("{rate} is below 0.001 (the smallest rate)"),
                    );
                    1
                }
                Some(milli) => milli,
                None => {
                    problems.push(
                        "newStreamsPerSecond",
                        format!("{rate} has more than 3 decimals"),
                    );
                    1
                }
            }
        };
        if !(1..=MAX_BURST).contains(&raw.burst) {
            problems.push(
                "burst",
                format!("{} is not within 1..={MAX_BURST}", raw.burst),
            );
        }
        if let Some(max) = raw.max_concurrent {
            if !(1..=MAX_BURST).contains(&max) {
                problems.push(
                    "maxConcurrent",
                    format!("{max} is not within 1..={MAX_BURST}"),
                );
            }
        }
        let mesh = match (raw.scope, raw.mesh) {
            (LimitScope::Envoy, None) => None,
            (LimitScope::Envoy, Some(_)) => {
                problems.push(
                    "mesh",
                    "mesh settings need scope: mesh (this policy's scope is envoy)",
                );
                None
            }
            (LimitScope::Mesh, settings) => {
                let settings = settings.unwrap_or_default();
                if !MESH_TIMEOUT_MS.contains(&settings.timeout_ms) {
                    problems.push(
                        "mesh.timeoutMs",
                        format!(
                            "{} is not within {}..={} milliseconds",
                            settings.timeout_ms,
                            MESH_TIMEOUT_MS.start(),
                            MESH_TIMEOUT_MS.end()
                        ),
                    );
                }
                Some(MeshSettings {
                    fallback: settings.fallback,
                    timeout: Duration::from_millis(settings.timeout_ms),
                })
            }
        };
        problems.into_result(StreamLimitPolicy {
            name: name.to_owned(),
            route,
            priority: raw.priority,
            stream_kinds,
            key,
            new_streams_per_second: rate,
            rate_milli,
            burst: raw.burst,
            max_concurrent: raw.max_concurrent,
            fail_mode: raw.fail_mode,
            mesh,
        })
    }

    pub fn to_raw(&self) -> RawStreamLimitPolicy {
        RawStreamLimitPolicy {
            route: self.route.to_raw(),
            priority: self.priority,
            stream_kinds: self.stream_kinds.clone(),
            key: match &self.key {
                LimitKey::Header(name) => RawLimitKey::Header { name: name.clone() },
                LimitKey::ClientAddress => RawLimitKey::ClientAddress,
                LimitKey::Route => RawLimitKey::Route,
            },
            new_streams_per_second: self.new_streams_per_second,
            burst: self.burst,
            max_concurrent: self.max_concurrent,
            fail_mode: self.fail_mode,
            scope: self.scope(),
            mesh: self.mesh.map(|mesh| RawMeshSettings {
                fallback: mesh.fallback,
                timeout_ms: u64::try_from(mesh.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// `mesh` when the limiter decides, else `envoy`.
    pub fn scope(&self) -> LimitScope {
        if self.mesh.is_some() {
            LimitScope::Mesh
        } else {
            LimitScope::Envoy
        }
    }
}
