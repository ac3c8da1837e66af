//! TraceSettings (`v1/trace`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{check, Problem, Problems};

/// Trace settings: how the filter stamps and continues traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTraceSettings {
    /// Stamp and continue traces at all. `false` turns off every header this
    /// kind writes (traceparent, request id, B3, response echo).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share of new traces marked sampled, 0..=1. Continued traces keep the
    /// caller's sampled flag.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(serialize_with = "super::serialize_number")]
    pub sample_ratio: f64,
    /// Request header set to a fresh UUID v4 when the request lacks it;
    /// `null` disables.
    #[serde(default = "default_request_id_header")]
    pub request_id_header: Option<String>,
    /// B3 (Zipkin) propagation.
    #[serde(default)]
    pub b3: RawB3Settings,
    /// Response header that echoes the trace id to the client; `null` (the
    /// default) disables.
    #[serde(default)]
    pub response_header: Option<String>,
}

/// B3 propagation settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawB3Settings {
    /// Read B3 (single `b3` header, else `x-b3-*`) when there is no valid
    /// `traceparent`.
    #[serde(default)]
    pub accept: bool,
    /// Also write the single `b3` header (and remove stale `x-b3-*`).
    #[serde(default)]
    pub emit: bool,
}

fn default_true() -> bool {
    true
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_request_id_header() -> Option<String> {
    Some("x-request-id".to_owned())
}

impl Default for RawTraceSettings {
    fn default() -> Self {
        RawTraceSettings {
            enabled: true,
            sample_ratio: 1.0,
            request_id_header: default_request_id_header(),
            b3: RawB3Settings::default(),
            response_header: None,
        }
    }
}

/// Validated trace settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub enabled: bool,
    /// 0..=1.
    pub sample_ratio: f64,
    /// Lowercase header name.
    pub request_id_header: Option<String>,
    pub b3_accept: bool,
    pub b3_emit: bool,
    /// Lowercase header name.
    pub response_header: Option<String>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            enabled: true,
            sample_ratio: 1.0,
            request_id_header: default_request_id_header(),
            b3_accept: false,
            b3_emit: false,
            response_header: None,
        }
    }
}

impl TraceSettings {
    pub fn to_raw(&self) -> RawTraceSettings {
        RawTraceSettings {
            enabled: self.enabled,
            sample_ratio: self.sample_ratio,
            request_id_header: self.request_id_header.clone(),
            b3: RawB3Settings {
                accept: self.b3_accept,
                emit: self.b3_emit,
            },
            response_header: self.response_header.clone(),
        }
    }

    /// New traces are sampled when a uniformly random u64 is below this.
    /// `u64::MAX` means always (ratio 1), 0 never.
    pub fn sample_threshold(&self) -> u64 {
        if self.sample_ratio >= 1.0 {
            u64::MAX
        } else if self.sample_ratio <= 0.0 {
            0
        } else {
            // 2^64 * ratio, saturating.
            (self.sample_ratio * 18_446_744_073_709_551_616.0) as u64
        }
    }
}

impl TryFrom<RawTraceSettings> for TraceSettings {
    type Error = Vec<Problem>;

    fn try_from(raw: RawTraceSettings) -> Result<Self, Self::Error> {
        let mut problems = Problems::default();
        if !raw.sample_ratio.is_finite() || !(0.0..=1.0).contains(&raw.sample_ratio) {
            problems.push(
                "sampleRatio",
                format!("{} is not within 0..=1", raw.sample_ratio),
            );
        }
        let request_id_header = raw
            .request_id_header
            .as_deref()
            .map(|h| check::header_name(&mut problems, "requestIdHeader", h));
        let response_header = raw
            .response_header
            .as_deref()
            .map(|h| check::header_name(&mut problems, "responseHeader", h));
        for (field, name) in [
            ("requestIdHeader", &request_id_header),
            ("responseHeader", &response_header),
        ] {
            if let Some(name) = name {
                if name.starts_with("x-b3-")
                    || matches!(name.as_str(), "traceparent" | "tracestate" | "b3")
                {
                    problems.push(field, format!("'{name}' is a trace context header"));
                }
            }
        }
        problems.into_result(TraceSettings {
            enabled: raw.enabled,
            sample_ratio: raw.sample_ratio,
            request_id_header,
            b3_accept: raw.b3.accept,
            b3_emit: raw.b3.emit,
            response_header,
        })
    }
}
