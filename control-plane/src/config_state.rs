//! The validated view of the etcd prefix: the last good item of every key,
//! the keys whose latest value was rejected, and keys that belong to no kind.
//! Pure: fed changes, it answers whether the snapshot content changed.
//!
//! A full read that finds an invalid value for a key with no last good value
//! in memory (a fresh start) looks for one in etcd's history first: see
//! [`history`], [`ConfigState::history_walk`] and
//! [`ConfigState::replace_all_recovering`].

pub mod history;

use std::collections::BTreeMap;

use serde::Serialize;
use sidestream_core::config::{classify_key, parse_spec, Item, Snapshot};

use crate::watch::Change;
use history::{HistoryWalk, Recovered};

/// A value the control plane refused; the key keeps its last good value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The mod revision of the value served instead; `None` when the key has
    /// no good value and is left out of the snapshot.
    pub serving_revision: Option<i64>,
    /// The value served instead was found in etcd's history by a full read
    /// (there was no last good value in memory).
    pub serving_from_history: bool,
}

/// A key under the prefix that is no config object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Recovered from etcd's history, not the key's current value.
    from_history: bool,
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
        self.replace_all_recovering(revision, kvs, Vec::new(), now_unix_millis)
    }

    /// [`Self::replace_all`], with earlier valid values found in etcd's
    /// history for keys whose current value is invalid and that have no last
    /// good value here: such a key serves its recovered value (the rejection
    /// of the current value is still reported, naming the revision served).
    pub fn replace_all_recovering(
        &mut self,
        revision: i64,
        kvs: Vec<(String, Vec<u8>, i64)>,
        recovered: Vec<Recovered>,
        now_unix_millis: u64,
    ) -> ApplyReport {
        let mut recovered: BTreeMap<String, Recovered> = recovered
            .into_iter()
            .map(|found| (found.key.clone(), found))
            .collect();
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
            let found = recovered
                .remove(&key)
                .filter(|found| found.rejected_revision == mod_revision);
            report.merge(self.put(key, value, mod_revision, now_unix_millis, found));
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
                } => report.merge(self.put(key, value, mod_revision, now_unix_millis, None)),
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

    /// Whether a full read must look through etcd's history for the last good
    /// value of `key`: its current value (written at `mod_revision` into a key
    /// created at `create_revision`) is invalid, there is no last good value
    /// in memory, and this rejection was not already handled. Returns the walk.
    pub fn history_walk(
        &self,
        key: &str,
        value: &[u8],
        mod_revision: i64,
        create_revision: i64,
        max_steps: usize,
    ) -> Option<HistoryWalk> {
        if self.items.contains_key(key)
            || self
                .rejected
                .get(key)
                .is_some_and(|rejection| rejection.revision == mod_revision)
        {
            return None;
        }
        let (kind, name) = classify_key(key).ok()?;
        if parse_spec(kind, &name, value).is_ok() {
            return None;
        }
        HistoryWalk::new(
            key.to_owned(),
            kind,
            name,
            mod_revision,
            create_revision,
            max_steps,
        )
    }

    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        mod_revision: i64,
        now_unix_millis: u64,
        recovered: Option<Recovered>,
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
                entry.from_history = false;
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
                        from_history: false,
                    },
                );
                report.changed = !same_content;
            }
            Err(error) => {
                if let Some(found) = recovered.filter(|_| !self.items.contains_key(&key)) {
                    self.items.insert(
                        key.clone(),
                        Entry {
                            mod_revision: found.mod_revision,
                            value: found.value,
                            item: found.item,
                            from_history: true,
                        },
                    );
                    report.changed = true;
                }
                let serving = self.items.get(&key);
                let rejection = Rejection {
                    key: key.clone(),
                    revision: mod_revision,
                    reason: error.to_string(),
                    rejected_at_unix_millis: now_unix_millis,
                    serving_revision: serving.map(|entry| entry.mod_revision),
                    serving_from_history: serving.is_some_and(|entry| entry.from_history),
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
