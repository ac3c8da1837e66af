//! The validated set of all config objects (what the control plane sends).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{deserialize, join_path};
use super::{
    parse_spec_value, ConfigError, Item, Kind, Problems, RawReleasePolicy, RawStreamLimitPolicy,
    RawTopicSettings, RawTraceSettings, ReleasePolicy, StreamLimitPolicy, TopicSettings,
    TraceSettings,
};

/// A snapshot as JSON: every config object, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSnapshot {
    /// Trace settings; `null` or absent means the defaults.
    #[serde(default)]
    pub trace: Option<RawTraceSettings>,
    /// Release policies by name.
    #[serde(default)]
    pub releases: BTreeMap<String, RawReleasePolicy>,
    /// Stream-limit policies by name.
    #[serde(default)]
    pub stream_limits: BTreeMap<String, RawStreamLimitPolicy>,
    /// Topic settings by topic name.
    #[serde(default)]
    pub topics: BTreeMap<String, RawTopicSettings>,
}

/// The snapshot shape with specs left as JSON, so each is validated on its
/// own and every problem is reported.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LooseSnapshot {
    #[serde(default)]
    trace: Option<serde_json::Value>,
    #[serde(default)]
    releases: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    stream_limits: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    topics: BTreeMap<String, serde_json::Value>,
}

/// A validated, immutable set of config objects. `releases` and
/// `stream_limits` are kept in match order (priority desc, name asc).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub trace: TraceSettings,
    pub releases: Vec<ReleasePolicy>,
    pub stream_limits: Vec<StreamLimitPolicy>,
    pub topics: BTreeMap<String, TopicSettings>,
}

impl Snapshot {
    /// Parses and validates a snapshot; reports every problem of every object.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => Snapshot::from_value(value),
            Err(error) => Err(ConfigError::single(
                "snapshot",
                "",
                format!("invalid JSON: {error}"),
            )),
        }
    }

    /// As [`Snapshot::from_json`], from parsed JSON.
    pub fn from_value(value: serde_json::Value) -> Result<Snapshot, ConfigError> {
        let mut problems = Problems::default();
        let snapshot = Snapshot::from_value_into(value, "", &mut problems);
        problems.finish("snapshot", snapshot)
    }

    /// Validates into `problems`, field paths under `prefix`.
    pub(crate) fn from_value_into(
        value: serde_json::Value,
        prefix: &str,
        problems: &mut Problems,
    ) -> Snapshot {
        let loose: LooseSnapshot = match deserialize(value) {
            Ok(loose) => loose,
            Err(found) => {
                for p in found {
                    problems.push(join_path(prefix, &p.field), p.message);
                }
                return Snapshot::default();
            }
        };
        let mut items = Vec::new();
        let mut take = |kind: Kind, name: &str, field: String, spec: serde_json::Value| {
            match parse_spec_value(kind, name, spec) {
                Ok(item) => items.push(item),
                Err(error) => {
                    for p in error.problems_under(&join_path(prefix, &field)) {
                        problems.0.push(p);
                    }
                }
            }
        };
        if let Some(trace) = loose.trace.filter(|t| !t.is_null()) {
            take(Kind::Trace, "", "trace".to_owned(), trace);
        }
        for (name, spec) in loose.releases {
            let field = format!("releases.{name}");
            take(Kind::Release, &name, field, spec);
        }
        for (name, spec) in loose.stream_limits {
            let field = format!("streamLimits.{name}");
            take(Kind::StreamLimit, &name, field, spec);
        }
        for (name, spec) in loose.topics {
            let field = format!("topics.{name}");
            take(Kind::Topic, &name, field, spec);
        }
        Snapshot::from_items(items)
    }

    /// The raw (serialisable) form.
    pub fn to_raw(&self) -> RawSnapshot {
        RawSnapshot {
            trace: Some(self.trace.to_raw()),
            releases: self
                .releases
                .iter()
                .map(|p| (p.name.clone(), p.to_raw()))
                .collect(),
            stream_limits: self
                .stream_limits
                .iter()
                .map(|p| (p.name.clone(), p.to_raw()))
                .collect(),
            topics: self
                .topics
                .values()
                .map(|t| (t.name.clone(), t.to_raw()))
                .collect(),
        }
    }

    /// Canonical JSON: the same snapshot always gives the same bytes (names
    /// sorted, defaults filled in, fields in a fixed order), and
    /// `from_json(to_json(s)) == s`.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain structs with string keys and finite floats always serialise.
        serde_json::to_vec(&self.to_raw()).unwrap_or_default()
    }

    /// Builds a snapshot from validated objects; a later object of the same
    /// kind and name replaces an earlier one.
    pub fn from_items(items: impl IntoIterator<Item = Item>) -> Snapshot {
        let mut trace = TraceSettings::default();
        let mut releases = BTreeMap::new();
        let mut stream_limits = BTreeMap::new();
        let mut topics = BTreeMap::new();
        for item in items {
            match item {
                Item::Trace(t) => trace = t,
                Item::Release(p) => {
                    releases.insert(p.name.clone(), p);
                }
                Item::StreamLimit(p) => {
                    stream_limits.insert(p.name.clone(), p);
                }
                Item::Topic(t) => {
                    topics.insert(t.name.clone(), t);
                }
            }
        }
        let mut releases: Vec<ReleasePolicy> = releases.into_values().collect();
        releases.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut stream_limits: Vec<StreamLimitPolicy> = stream_limits.into_values().collect();
        stream_limits.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        Snapshot {
            trace,
            releases,
            stream_limits,
            topics,
        }
    }

    /// Every object as an item (trace settings first).
    pub fn items(&self) -> Vec<Item> {
        let mut items = vec![Item::Trace(self.trace.clone())];
        items.extend(self.releases.iter().cloned().map(Item::Release));
        items.extend(self.stream_limits.iter().cloned().map(Item::StreamLimit));
        items.extend(self.topics.values().cloned().map(Item::Topic));
        items
    }

    /// The part of the snapshot a client needs: objects of the other kinds
    /// are left out (trace settings fall back to the defaults).
    pub fn only(&self, kinds: &[Kind]) -> Snapshot {
        Snapshot {
            trace: if kinds.contains(&Kind::Trace) {
                self.trace.clone()
            } else {
                TraceSettings::default()
            },
            releases: if kinds.contains(&Kind::Release) {
                self.releases.clone()
            } else {
                Vec::new()
            },
            stream_limits: if kinds.contains(&Kind::StreamLimit) {
                self.stream_limits.clone()
            } else {
                Vec::new()
            },
            topics: if kinds.contains(&Kind::Topic) {
                self.topics.clone()
            } else {
                BTreeMap::new()
            },
        }
    }
}
