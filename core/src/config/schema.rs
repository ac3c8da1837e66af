//! JSON Schemas generated from the raw config types (schemars, draft 2020-12).
//! `docs/schema/*.json` are these, written by `SIDESTREAM_BLESS=1 cargo test
//! -p sidestream-core --test docs` and checked by the same test.

use schemars::{schema_for, JsonSchema};

use super::{
    Kind, RawFilterBootstrap, RawReleasePolicy, RawSnapshot, RawStreamLimitPolicy,
    RawTopicSettings, RawTraceSettings,
};

/// A config file: one document or a list of them.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // schema only
enum DocumentFile {
    One(Document),
    Many(Vec<Document>),
}

/// One config document: `kind`, `name` (the etcd key's last segment) and
/// `spec` (the etcd value).
#[derive(JsonSchema)]
#[serde(tag = "kind", deny_unknown_fields)]
#[allow(dead_code)] // schema only
enum Document {
    /// `v1/trace`.
    TraceSettings {
        /// `default`, or omitted.
        #[serde(default)]
        name: Option<String>,
        spec: RawTraceSettings,
    },
    /// `v1/releases/<name>`.
    ReleasePolicy {
        /// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
        #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
        name: String,
        spec: RawReleasePolicy,
    },
    /// `v1/stream-limits/<name>`.
    StreamLimitPolicy {
        /// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
        #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
        name: String,
        spec: RawStreamLimitPolicy,
    },
    /// `v1/topics/<name>`.
    TopicSettings {
        /// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
        #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
        name: String,
        spec: RawTopicSettings,
    },
}

fn to_value(schema: schemars::Schema) -> serde_json::Value {
    schema.to_value()
}

/// The schema of one kind's spec (the etcd value).
pub fn for_kind(kind: Kind) -> serde_json::Value {
    to_value(match kind {
        Kind::Trace => schema_for!(RawTraceSettings),
        Kind::Release => schema_for!(RawReleasePolicy),
        Kind::StreamLimit => schema_for!(RawStreamLimitPolicy),
        Kind::Topic => schema_for!(RawTopicSettings),
    })
}

/// The schema of a snapshot (what the control plane sends).
pub fn snapshot() -> serde_json::Value {
    to_value(schema_for!(RawSnapshot))
}

/// The schema of the filter bootstrap (plugin configuration).
pub fn bootstrap() -> serde_json::Value {
    to_value(schema_for!(RawFilterBootstrap))
}

/// The schema of a config file (one document or a list).
pub fn document() -> serde_json::Value {
    to_value(schema_for!(DocumentFile))
}

/// The file name under docs/schema/ of each schema, with the schema.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("trace-settings.json", for_kind(Kind::Trace)),
        ("release-policy.json", for_kind(Kind::Release)),
        ("stream-limit-policy.json", for_kind(Kind::StreamLimit)),
        ("topic-settings.json", for_kind(Kind::Topic)),
        ("snapshot.json", snapshot()),
        ("filter-bootstrap.json", bootstrap()),
        ("document.json", document()),
    ]
}
