//! The filter's bootstrap: Envoy's plugin configuration (WasmPlugin `pluginConfig`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{deserialize, join_path};
use super::{ConfigError, FailMode, Problems, RawSnapshot, Snapshot};

/// The filter's plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawFilterBootstrap {
    /// The node id the filter reports to the control plane (1..=128
    /// characters).
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// Where the config stream comes from; absent means the embedded
    /// defaults only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<RawControlPlane>,
    /// Where mesh-scoped stream-limit policies ask; absent means such
    /// policies always apply their fallback (the embedded defaults may then
    /// not hold one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limiter: Option<RawLimiter>,
    /// What to do on host-call failures the policies' own failMode does not
    /// cover: `open` lets the request through, `closed` refuses it.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// The snapshot used until the first one arrives from the control plane.
    #[serde(default)]
    pub defaults: RawSnapshot,
}

fn default_node_id() -> String {
    "sidestream".to_owned()
}

/// The control-plane connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawControlPlane {
    /// The Envoy cluster (HTTP/2) of the control plane.
    pub cluster: String,
    /// Timeout of the gRPC stream in milliseconds; 0 means none.
    #[serde(default)]
    pub timeout_ms: u64,
    /// First reconnect delay, 1..=maxBackoffMs milliseconds.
    #[serde(default = "default_initial_backoff")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub initial_backoff_ms: u64,
    /// Largest reconnect delay (jittered), ≤ 3600000 milliseconds.
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub max_backoff_ms: u64,
}

fn default_initial_backoff() -> u64 {
    250
}

fn default_max_backoff() -> u64 {
    30_000
}

/// The connection to sidestream-limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLimiter {
    /// The Envoy cluster (HTTP/2) of sidestream-limiter.
    pub cluster: String,
}

/// The validated limiter connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterSettings {
    pub cluster: String,
}

/// The validated control-plane connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneSettings {
    pub cluster: String,
    /// Zero means no timeout.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The validated bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterBootstrap {
    pub node_id: String,
    pub control_plane: Option<ControlPlaneSettings>,
    pub limiter: Option<LimiterSettings>,
    pub fail_mode: FailMode,
    pub defaults: Snapshot,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LooseBootstrap {
    #[serde(default = "default_node_id")]
    node_id: String,
    #[serde(default)]
    control_plane: Option<RawControlPlane>,
    #[serde(default)]
    limiter: Option<RawLimiter>,
    #[serde(default)]
    fail_mode: FailMode,
    #[serde(default)]
    defaults: Option<serde_json::Value>,
}

impl FilterBootstrap {
    /// Parses and validates the plugin configuration. Empty input means all
    /// defaults (no control plane, default trace settings, no policies).
    pub fn from_json(bytes: &[u8]) -> Result<FilterBootstrap, ConfigError> {
        let text = bytes.trim_ascii();
        let value = if text.is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_slice::<serde_json::Value>(text).map_err(|error| {
                ConfigError::single("filter bootstrap", "", format!("invalid JSON: {error}"))
            })?
        };
        let mut problems = Problems::default();
        let loose: LooseBootstrap = match deserialize(value) {
            Ok(loose) => loose,
            Err(found) => {
                problems.0 = found;
                return Err(ConfigError {
                    subject: "filter bootstrap".to_owned(),
                    problems: problems.0,
                });
            }
        };
        if loose.node_id.is_empty()
            || loose.node_id.len() > 128
            || !loose.node_id.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            problems.push(
                "nodeId",
                format!(
                    "'{}' must be 1..=128 visible ASCII characters",
                    loose.node_id
                ),
            );
        }
        let control_plane = loose.control_plane.map(|cp| {
            if !is_cluster_name(&cp.cluster) {
                problems.push(
                    "controlPlane.cluster",
                    format!("'{}' is not a cluster name", cp.cluster),
                );
            }
            if cp.max_backoff_ms > 3_600_000 {
                problems.push(
                    "controlPlane.maxBackoffMs",
                    format!("{} is above 3600000", cp.max_backoff_ms),
                );
            }
            if cp.initial_backoff_ms == 0 || cp.initial_backoff_ms > cp.max_backoff_ms {
                problems.push(
                    "controlPlane.initialBackoffMs",
                    format!(
                        "{} is not within 1..=maxBackoffMs ({})",
                        cp.initial_backoff_ms, cp.max_backoff_ms
                    ),
                );
            }
            ControlPlaneSettings {
                cluster: cp.cluster,
                timeout: Duration::from_millis(cp.timeout_ms),
                initial_backoff: Duration::from_millis(cp.initial_backoff_ms),
                max_backoff: Duration::from_millis(cp.max_backoff_ms),
            }
        });
        let limiter = loose.limiter.map(|limiter| {
            if !is_cluster_name(&limiter.cluster) {
                problems.push(
                    "limiter.cluster",
                    format!("'{}' is not a cluster name", limiter.cluster),
                );
            }
            LimiterSettings {
                cluster: limiter.cluster,
            }
        });
        let defaults = match loose.defaults {
            Some(value) if !value.is_null() => {
                Snapshot::from_value_into(value, &join_path("", "defaults"), &mut problems)
            }
            _ => Snapshot::default(),
        };
        if limiter.is_none() {
            for policy in defaults.stream_limits.iter().filter(|p| p.mesh.is_some()) {
                problems.push(
                    format!("defaults.streamLimits.{}.scope", policy.name),
                    "mesh needs the limiter's cluster (limiter.cluster); without it the policy could only ever apply its fallback",
                );
            }
        }
        problems.finish(
            "filter bootstrap",
            FilterBootstrap {
                node_id: loose.node_id,
                control_plane,
                limiter,
                fail_mode: loose.fail_mode,
                defaults,
            },
        )
    }

    /// The raw (serialisable) form.
    pub fn to_raw(&self) -> RawFilterBootstrap {
        RawFilterBootstrap {
            node_id: self.node_id.clone(),
            control_plane: self.control_plane.as_ref().map(|cp| RawControlPlane {
                cluster: cp.cluster.clone(),
                timeout_ms: u64::try_from(cp.timeout.as_millis()).unwrap_or(u64::MAX),
                initial_backoff_ms: u64::try_from(cp.initial_backoff.as_millis())
                    .unwrap_or(u64::MAX),
                max_backoff_ms: u64::try_from(cp.max_backoff.as_millis()).unwrap_or(u64::MAX),
            }),
            limiter: self.limiter.as_ref().map(|limiter| RawLimiter {
                cluster: limiter.cluster.clone(),
            }),
            fail_mode: self.fail_mode,
            defaults: self.defaults.to_raw(),
        }
    }
}

/// An Envoy cluster name: visible ASCII, at least one character.
fn is_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x21..0x7f).contains(&b))
}
