//! The validated view of the etcd prefix: the last good item of every key,
//! the keys whose latest value was rejected, and keys that belong to no kind.
//! Pure: fed changes, it answers whether the snapshot content changed.

use std::collections::BTreeMap;

use serde::Serialize;
use sidestream_core::config::{classify_key, parse_spec, Item, Snapshot};

use crate::watch::Change;

/// A value the control plane refused; the key keeps its last good value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The key relative to the prefix, e.g. "v1/releases/push".
    pub key: String,
    /// The etcd revision of the rejected value.
    pub revision: i64,
    /// Every problem found in it.
    pub reason: String,
    /// When it was rejected (Unix milliseconds).
    pub rejected_at_unix_millis: u64,
}

/// A key under the prefix that is no config object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnknownKey {
    /// The key relative to the prefix.
    pub key: String,
    /// Its mod revision.
    pub revision: i64,
    /// Why it belongs to no kind.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Entry {
    mod_revision: i64,
    value: Vec<u8>,
    item: Item,
}

/// What applying changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The set of good items changed (a new snapshot is due).
    pub changed: bool,
    /// Values newly rejected.
    pub rejections: Vec<Rejection>,
    /// Keys newly found to be unknown.
    pub unknown: Vec<UnknownKey>,
}

impl ApplyReport {
    fn merge(&mut self, other: ApplyReport) {
        self.changed |= other.changed;
        self.rejections.extend(other.rejections);
        self.unknown.extend(other.unknown);
    }
}

/// The last good item per key, the current rejections and unknown keys.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    items: BTreeMap<String, Entry>,
    rejected: BTreeMap<String, Rejection>,
    unknown: BTreeMap<String, UnknownKey>,
    revision: i64,
}

impl ConfigState {
    /// An empty state at revision 0.
    pub fn new() -> Self {
        ConfigState::default()
    }

    /// The etcd revision applied so far.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Replaces everything with the prefix as read at `revision` (pairs of
    /// relative key, value, mod revision). Items whose key, value and mod
    /// revision are unchanged are reused without validating them again, and a
    /// rejection already reported for the same revision is not reported twice.
    pub fn replace_all(
        &mut self,
        revision: i64,
        kvs: Vec<(String, Vec<u8>, i64)>,
        now_unix_millis: u64,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let present: std::collections::BTreeSet<String> =
            kvs.iter().map(|(key, _, _)| key.clone()).collect();
        let gone: Vec<String> = self
            .items
            .keys()
            .chain(self.rejected.keys())
            .chain(self.unknown.keys())
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            report.merge(self.delete(&key));
        }
        for (key, value, mod_revision) in kvs {
            report.merge(self.put(key, value, mod_revision, now_unix_millis));
        }
        self.revision = revision;
        report
    }

    /// Applies one revision's changes.
    pub fn apply_batch(
        &mut self,
        revision: i64,
        changes: Vec<Change>,
        now_unix_millis: u64,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        for change in changes {
            match change {
                Change::Put {
                    key,
                    value,
                    mod_revision,
                } => report.merge(self.put(key, value, mod_revision, now_unix_millis)),
                Change::Delete { key, .. } => report.merge(self.delete(&key)),
            }
        }
        self.revision = self.revision.max(revision);
        report
    }

    /// Records that nothing changed up to `revision` (progress).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        mod_revision: i64,
        now_unix_millis: u64,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let (kind, name) = match classify_key(&key) {
            Ok(found) => found,
            Err(error) => {
                self.items.remove(&key);
                self.rejected.remove(&key);
                let unknown = UnknownKey {
                    key: key.clone(),
                    revision: mod_revision,
                    reason: error.to_string(),
                };
                if self.unknown.get(&key) != Some(&unknown) {
                    report.unknown.push(unknown.clone());
                }
                self.unknown.insert(key, unknown);
                return report;
            }
        };
        self.unknown.remove(&key);
        if let Some(entry) = self.items.get_mut(&key) {
            if entry.value == value {
                entry.mod_revision = mod_revision;
                self.rejected.remove(&key);
                return report;
            }
        }
        if let Some(rejection) = self.rejected.get(&key) {
            if rejection.revision == mod_revision {
                return report; // the same rejected value, read again
            }
        }
        match parse_spec(kind, &name, &value) {
            Ok(item) => {
                self.rejected.remove(&key);
                let same_content = self
                    .items
                    .get(&key)
                    .is_some_and(|entry| entry.item.to_spec() == item.to_spec());
                self.items.insert(
                    key,
                    Entry {
                        mod_revision,
                        value,
                        item,
                    },
                );
                report.changed = !same_content;
            }
            Err(error) => {
                let rejection = Rejection {
                    key: key.clone(),
                    revision: mod_revision,
                    reason: error.to_string(),
                    rejected_at_unix_millis: now_unix_millis,
                };
                report.rejections.push(rejection.clone());
                self.rejected.insert(key, rejection);
            }
        }
        report
    }

    fn delete(&mut self, key: &str) -> ApplyReport {
        let changed = self.items.remove(key).is_some();
        self.rejected.remove(key);
        self.unknown.remove(key);
        ApplyReport {
            changed,
            ..ApplyReport::default()
        }
    }

    /// The snapshot of every good item.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::from_items(self.items.values().map(|entry| entry.item.clone()))
    }

    /// Keys whose latest value is rejected (they keep their last good value).
    pub fn rejections(&self) -> Vec<Rejection> {
        self.rejected.values().cloned().collect()
    }

    /// Keys under the prefix that are no config object.
    pub fn unknown_keys(&self) -> Vec<UnknownKey> {
        self.unknown.values().cloned().collect()
    }

    /// The mod revision of the good value of `key`, if any.
    pub fn good_revision(&self, key: &str) -> Option<i64> {
        self.items.get(key).map(|entry| entry.mod_revision)
    }
}

#[cfg(test)]
mod tests;
