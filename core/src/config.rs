//! The config model: serde "raw" types as written in etcd and files (camelCase
//! JSON, unknown fields rejected), validated into runtime types that can no
//! longer be invalid. Errors name the subject, the field path and the value,
//! and list every problem found, not just the first.
//!
//! See docs/config.md for the reference (kept true by `tests/docs.rs`).

mod bootstrap;
mod error;
mod limit;
mod release;
mod route;
pub mod schema;
mod snapshot;
mod topic;
mod trace;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use bootstrap::{
    ControlPlaneSettings, FilterBootstrap, LimiterSettings, RawControlPlane, RawFilterBootstrap,
    RawLimiter,
};
pub use error::{ConfigError, KeyError, Problem};
pub use limit::{
    LimitKey, LimitScope, MeshFallback, MeshSettings, RawLimitKey, RawMeshSettings,
    RawStreamLimitPolicy, StreamLimitPolicy, DEFAULT_MESH_TIMEOUT_MS, MESH_TIMEOUT_MS,
};
pub use release::{
    PercentSource, RawPercentRule, RawPercentSource, RawReleasePolicy, RawReleaseRule, RawSticky,
    RawTenantRule, RawValueRule, ReleasePolicy, ReleaseRule, Sticky, ValueMatch,
};
pub use route::{HostPattern, RawRouteMatch, RouteMatch};
pub use snapshot::{RawSnapshot, Snapshot};
pub use topic::{RawTopicSettings, Revoked, SubscribeAuth, TopicSettings, MAX_REVOKED};
pub use trace::{RawB3Settings, RawTraceSettings, TraceSettings};

pub(crate) use error::Problems;

/// The four kinds of config object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Trace,
    Release,
    StreamLimit,
    Topic,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Trace, Kind::Release, Kind::StreamLimit, Kind::Topic];

    /// The `kind` of a file document: `TraceSettings`, `ReleasePolicy`, ...
    pub fn document_kind(self) -> &'static str {
        match self {
            Kind::Trace => "TraceSettings",
            Kind::Release => "ReleasePolicy",
            Kind::StreamLimit => "StreamLimitPolicy",
            Kind::Topic => "TopicSettings",
        }
    }

    /// The etcd key segment after `v1/`: `trace`, `releases`, ...
    pub fn key_segment(self) -> &'static str {
        match self {
            Kind::Trace => "trace",
            Kind::Release => "releases",
            Kind::StreamLimit => "stream-limits",
            Kind::Topic => "topics",
        }
    }

    /// Accepts the document kind, the key segment and the singular
    /// (`release`, `stream-limit`, `topic`), ASCII case-insensitively.
    pub fn parse(alias: &str) -> Option<Kind> {
        let alias = alias.to_ascii_lowercase();
        Some(match alias.as_str() {
            "trace" | "tracesettings" | "trace-settings" => Kind::Trace,
            "release" | "releases" | "releasepolicy" | "release-policy" => Kind::Release,
            "stream-limit" | "stream-limits" | "streamlimitpolicy" | "stream-limit-policy" => {
                Kind::StreamLimit
            }
            "topic" | "topics" | "topicsettings" | "topic-settings" => Kind::Topic,
            _ => return None,
        })
    }

    /// Trace settings exist once (`v1/trace`); the others are named.
    pub fn is_singleton(self) -> bool {
        matches!(self, Kind::Trace)
    }

    /// How errors name an object of this kind: `release policy 'checkout'`.
    pub fn subject(self, name: &str) -> String {
        match self {
            Kind::Trace => "trace settings".to_owned(),
            Kind::Release => format!("release policy '{name}'"),
            Kind::StreamLimit => format!("stream limit policy '{name}'"),
            Kind::Topic => format!("topic '{name}'"),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.document_kind())
    }
}

/// The name trace settings carry (their key has no name segment).
pub const TRACE_NAME: &str = "default";

/// What to do when something the decision needs cannot be had (shared data
/// unreadable, host call failed): let the request through, or refuse it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    /// Let the request through.
    #[default]
    Open,
    /// Refuse the request.
    Closed,
}

/// A validated config object.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Trace(TraceSettings),
    Release(ReleasePolicy),
    StreamLimit(StreamLimitPolicy),
    Topic(TopicSettings),
}

impl Item {
    pub fn kind(&self) -> Kind {
        match self {
            Item::Trace(_) => Kind::Trace,
            Item::Release(_) => Kind::Release,
            Item::StreamLimit(_) => Kind::StreamLimit,
            Item::Topic(_) => Kind::Topic,
        }
    }

    /// The object's name (`default` for trace settings).
    pub fn name(&self) -> &str {
        match self {
            Item::Trace(_) => TRACE_NAME,
            Item::Release(p) => &p.name,
            Item::StreamLimit(p) => &p.name,
            Item::Topic(t) => &t.name,
        }
    }

    /// The canonical spec JSON (defaults filled in); parsing it again gives
    /// the same item.
    pub fn to_spec(&self) -> serde_json::Value {
        let value = match self {
            Item::Trace(t) => serde_json::to_value(t.to_raw()),
            Item::Release(p) => serde_json::to_value(p.to_raw()),
            Item::StreamLimit(p) => serde_json::to_value(p.to_raw()),
            Item::Topic(t) => serde_json::to_value(t.to_raw()),
        };
        // Serialising these plain structs cannot fail (string keys, finite floats).
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// Parses and validates one etcd value (or a document's spec).
pub fn parse_spec(kind: Kind, name: &str, spec: &[u8]) -> Result<Item, ConfigError> {
    match serde_json::from_slice::<serde_json::Value>(spec) {
        Ok(value) => parse_spec_value(kind, name, value),
        Err(error) => Err(ConfigError::single(
            kind.subject(name),
            "",
            format!("invalid JSON: {error}"),
        )),
    }
}

/// Validates a spec already parsed as JSON.
pub fn parse_spec_value(
    kind: Kind,
    name: &str,
    spec: serde_json::Value,
) -> Result<Item, ConfigError> {
    let subject = kind.subject(name);
    if !kind.is_singleton() && !valid_name(name) {
        return Err(ConfigError::single(
            subject,
            "name",
            format!("'{name}' is not a valid name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)"),
        ));
    }
    if kind.is_singleton() && !(name.is_empty() || name == TRACE_NAME) {
        return Err(ConfigError::single(
            subject,
            "name",
            format!("'{name}': trace settings are named '{TRACE_NAME}' (or not named)"),
        ));
    }
    let result = match kind {
        Kind::Trace => error::deserialize::<RawTraceSettings>(spec)
            .and_then(TraceSettings::try_from)
            .map(Item::Trace),
        Kind::Release => release::deserialize_policy(spec)
            .and_then(|raw| ReleasePolicy::from_raw(name, raw))
            .map(Item::Release),
        Kind::StreamLimit => error::deserialize::<RawStreamLimitPolicy>(spec)
            .and_then(|raw| StreamLimitPolicy::from_raw(name, raw))
            .map(Item::StreamLimit),
        Kind::Topic => error::deserialize::<RawTopicSettings>(spec)
            .and_then(|raw| TopicSettings::from_raw(name, raw))
            .map(Item::Topic),
    };
    result.map_err(|problems| ConfigError { subject, problems })
}

/// Names of releases, stream limits and topics: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where an etcd key (relative to the prefix, e.g. `v1/releases/push`) belongs.
/// A single leading `/` is tolerated.
pub fn classify_key(relative_key: &str) -> Result<(Kind, String), KeyError> {
    let key = relative_key.strip_prefix('/').unwrap_or(relative_key);
    let Some(rest) = key.strip_prefix("v1/") else {
        return Err(KeyError::NotConfig(relative_key.to_owned()));
    };
    if rest == Kind::Trace.key_segment() {
        return Ok((Kind::Trace, TRACE_NAME.to_owned()));
    }
    let Some((segment, name)) = rest.split_once('/') else {
        return Err(KeyError::UnknownKind(relative_key.to_owned()));
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| !k.is_singleton() && k.key_segment() == segment)
        .ok_or_else(|| KeyError::UnknownKind(relative_key.to_owned()))?;
    if !valid_name(name) {
        return Err(KeyError::InvalidName {
            key: relative_key.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok((kind, name.to_owned()))
}

/// The etcd key (relative to the prefix) of an object: `v1/releases/push`,
/// `v1/trace` (the name is ignored for trace settings).
pub fn key_for(kind: Kind, name: &str) -> String {
    if kind.is_singleton() {
        format!("v1/{}", kind.key_segment())
    } else {
        format!("v1/{}/{name}", kind.key_segment())
    }
}

/// One file document (sidestreamctl): `kind`, `name`, `spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub kind: Kind,
    pub name: String,
    pub spec: serde_json::Value,
}

impl Document {
    /// Validates the spec.
    pub fn validate(&self) -> Result<Item, ConfigError> {
        parse_spec_value(self.kind, &self.name, self.spec.clone())
    }

    /// The etcd key (relative to the prefix).
    pub fn key(&self) -> String {
        key_for(self.kind, &self.name)
    }
}

/// Reads file documents: one object or a list of them (`kind`, `name`,
/// `spec`). Checks the document shape (kind known, name valid, spec an
/// object, no other fields) for every document and reports every problem;
/// the specs themselves are checked by [`Document::validate`].
pub fn documents_from_value(value: serde_json::Value) -> Result<Vec<Document>, ConfigError> {
    let (list, indexed) = match value {
        serde_json::Value::Array(list) => (list, true),
        other => (vec![other], false),
    };
    let mut problems = Problems::default();
    let mut documents = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        let at = |field: &str| {
            let base = if indexed {
                format!("[{index}]")
            } else {
                String::new()
            };
            match (base.is_empty(), field.is_empty()) {
                (_, true) => base,
                (true, false) => field.to_owned(),
                (false, false) => format!("{base}.{field}"),
            }
        };
        let serde_json::Value::Object(mut map) = item else {
            problems.push(
                at(""),
                "a document must be an object with kind, name and spec",
            );
            continue;
        };
        let kind_value = map.remove("kind");
        let name_value = map.remove("name");
        let spec = map.remove("spec");
        for extra in map.keys() {
            problems.push(
                at(extra),
                format!("unknown field `{extra}`, expected `kind`, `name` or `spec`"),
            );
        }
        let kind = match kind_value {
            Some(serde_json::Value::String(k)) => match Kind::parse(&k) {
                Some(kind) => Some(kind),
                None => {
                    problems.push(
                        at("kind"),
                        format!(
                            "'{k}' is not a kind (TraceSettings, ReleasePolicy, StreamLimitPolicy, TopicSettings)"
                        ),
                    );
                    None
                }
            },
            Some(other) => {
                problems.push(at("kind"), format!("{other} is not a string"));
                None
            }
            None => {
                problems.push(at("kind"), "missing");
                None
            }
        };
        let name = match name_value {
            Some(serde_json::Value::String(n)) => Some(n),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => {
                problems.push(at("name"), format!("{other} is not a string"));
                continue;
            }
        };
        let spec = match spec {
            Some(spec @ serde_json::Value::Object(_)) => Some(spec),
            Some(serde_json::Value::Null) | None => {
                problems.push(at("spec"), "missing (an object)");
                None
            }
            Some(other) => {
                problems.push(at("spec"), format!("{other} is not an object"));
                None
            }
        };
        let Some(kind) = kind else { continue };
        let name = match (kind.is_singleton(), name) {
            (true, None) => TRACE_NAME.to_owned(),
            (true, Some(n)) if n == TRACE_NAME || n.is_empty() => TRACE_NAME.to_owned(),
            (true, Some(n)) => {
                problems.push(
                    at("name"),
                    format!("'{n}': trace settings are named '{TRACE_NAME}' (or not named)"),
                );
                continue;
            }
            (false, None) => {
                problems.push(at("name"), "missing");
                continue;
            }
            (false, Some(n)) if !valid_name(&n) => {
                problems.push(
                    at("name"),
                    format!("'{n}' is not a valid name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)"),
                );
                continue;
            }
            (false, Some(n)) => n,
        };
        if let Some(spec) = spec {
            documents.push(Document { kind, name, spec });
        }
    }
    problems.finish("documents", documents)
}

/// Writes a whole-numbered float as an integer (`10`, not `10.0`), so
/// canonical specs read as people write them.
pub(crate) fn serialize_number<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        s.serialize_i64(*value as i64)
    } else {
        s.serialize_f64(*value)
    }
}

/// Validation helpers shared by the kinds.
pub(crate) mod check {
    use super::Problems;

    /// RFC 9110 token characters.
    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    /// A header name: a token (lowercased), not a pseudo-header.
    pub fn header_name(problems: &mut Problems, field: &str, value: &str) -> String {
        if value.is_empty() || value.len() > 128 || !value.bytes().all(is_tchar) {
            problems.push(
                field,
                format!("'{value}' is not a valid header name (a token of at most 128 characters)"),
            );
        }
        value.to_ascii_lowercase()
    }

    /// A header name the filter looks up or writes as given: a token, in
    /// lowercase (Envoy keeps header names lowercase and the filter compares
    /// them so), not a pseudo-header.
    pub fn lowercase_header_name(problems: &mut Problems, field: &str, value: &str) -> String {
        if value.starts_with(':') {
            problems.push(
                field,
                format!("'{value}' is a pseudo-header; name a regular request header"),
            );
        } else if value.is_empty() || value.len() > 128 || !value.bytes().all(is_tchar) {
            problems.push(
                field,
                format!("'{value}' is not a valid header name (a token of at most 128 characters)"),
            );
        } else if value.bytes().any(|b| b.is_ascii_uppercase()) {
            problems.push(
                field,
                format!(
                    "'{value}' is not lowercase; header names are compared in lowercase, write '{}'",
                    value.to_ascii_lowercase()
                ),
            );
        }
        value.to_owned()
    }

    /// Headers a release policy may not write its group to: Envoy, the
    /// upstream or the filter's own tracing depend on them.
    pub const RESERVED_TAG_HEADERS: [&str; 12] = [
        "host",
        "cookie",
        "set-cookie",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "traceparent",
        "tracestate",
        "x-request-id",
        "authorization",
    ];

    /// A release policy's tag header: a lowercase header name, not reserved.
    pub fn tag_header(problems: &mut Problems, field: &str, value: &str) -> String {
        let before = problems.0.len();
        let name = lowercase_header_name(problems, field, value);
        if problems.0.len() == before && RESERVED_TAG_HEADERS.contains(&name.as_str()) {
            problems.push(
                field,
                format!("'{value}' is reserved (Envoy, the upstream or tracing rely on it); choose another tag header"),
            );
        }
        name
    }

    /// A cookie name: a token.
    pub fn cookie_name(problems: &mut Problems, field: &str, value: &str) -> String {
        if value.is_empty() || value.len() > 128 || !value.bytes().all(is_tchar) {
            problems.push(
                field,
                format!("'{value}' is not a valid cookie name (a token of at most 128 characters)"),
            );
        }
        value.to_owned()
    }

    /// A value compared against a header or cookie: visible ASCII and spaces,
    /// at most 1024 characters.
    pub fn match_value(problems: &mut Problems, field: &str, value: &str) {
        if value.is_empty()
            || value.len() > 1024
            || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            problems.push(
                field,
                format!("'{value}' must be 1..=1024 printable ASCII characters"),
            );
        }
    }

    /// A decimal with at most `decimals` places, as an integer count of
    /// 10^-decimals units, or None if it has more places.
    ///
    /// The slack only absorbs binary floating-point error (a decimal read
    /// from JSON and scaled is off by a few ulps, ~1e-16 relative), so
    /// `10.000001` is not taken for `10`.
    pub fn fixed_point(value: f64, decimals: i32) -> Option<u64> {
        let scale = 10f64.powi(decimals);
        let scaled = value * scale;
        let rounded = scaled.round();
        if !value.is_finite()
            || value < 0.0
            || (scaled - rounded).abs() > 1e-12 * scaled.abs().max(1.0)
        {
            return None;
        }
        // Range-checked by the callers before use; saturating cast.
        Some(rounded as u64)
    }
}
