//! Finding a key's last good value in etcd's history, for a full read that
//! meets an invalid value with no last good value in memory (a fresh start,
//! or a key that never validated while this process ran). Pure: the walk says
//! which revision to read the key at next and judges what etcd answered; the
//! reads themselves are done by [`crate::source`].
//!
//! The walk reads the key at `mod_revision - 1` (its previous version), then
//! at that version's `mod_revision - 1`, and so on, and stops at the first
//! value that validates, at the key's creation, at a compacted revision, or
//! after a bounded number of reads.

use sidestream_core::config::{parse_spec, Item, Kind};

/// How many earlier versions of a key a full read looks at, at most.
pub const HISTORY_STEPS: usize = 20;

/// What reading the key at an earlier revision gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRead {
    /// The key's value as of that revision.
    Value {
        /// The value.
        value: Vec<u8>,
        /// When that value was written.
        mod_revision: i64,
        /// When the key was (last) created.
        create_revision: i64,
    },
    /// The key did not exist at that revision.
    Absent,
    /// etcd no longer keeps that revision.
    Compacted,
}

/// An earlier, valid value of a key whose current value is rejected.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The key relative to the prefix.
    pub key: String,
    /// The earlier value.
    pub value: Vec<u8>,
    /// The revision it was written at.
    pub mod_revision: i64,
    /// The revision of the rejected current value.
    pub rejected_revision: i64,
    /// The earlier value, validated.
    pub item: Item,
}

/// What to do after a read.
#[derive(Debug, Clone)]
pub enum WalkStep {
    /// Read the key at [`HistoryWalk::next_revision`].
    Continue,
    /// The most recent earlier value that validates.
    Recovered(Box<Recovered>),
    /// There is no earlier valid value to be had; why.
    GaveUp(String),
}

/// The walk back through one key's history.
#[derive(Debug, Clone)]
pub struct HistoryWalk {
    key: String,
    kind: Kind,
    name: String,
    rejected_revision: i64,
    next: Option<i64>,
    steps_left: usize,
    max_steps: usize,
}

impl HistoryWalk {
    /// A walk for `key` (of `kind`/`name`) whose current value, written at
    /// `mod_revision` into a key created at `create_revision`, was rejected;
    /// `None` when the key has no earlier version (it was created with this
    /// value) or `max_steps` is 0.
    pub fn new(
        key: String,
        kind: Kind,
        name: String,
        mod_revision: i64,
        create_revision: i64,
        max_steps: usize,
    ) -> Option<Self> {
        if mod_revision <= create_revision || mod_revision <= 1 || max_steps == 0 {
            return None;
        }
        Some(HistoryWalk {
            key,
            kind,
            name,
            rejected_revision: mod_revision,
            next: Some(mod_revision - 1),
            steps_left: max_steps,
            max_steps,
        })
    }

    /// The key relative to the prefix.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The revision of the rejected current value.
    pub fn rejected_revision(&self) -> i64 {
        self.rejected_revision
    }

    /// The revision to read the key at next, if the walk goes on.
    pub fn next_revision(&self) -> Option<i64> {
        self.next
    }

    /// Judges what reading the key at [`Self::next_revision`] gave.
    pub fn on_read(&mut self, read: HistoryRead) -> WalkStep {
        let Some(at) = self.next.take() else {
            return WalkStep::GaveUp("the walk is over".to_owned());
        };
        self.steps_left = self.steps_left.saturating_sub(1);
        let (value, mod_revision, create_revision) = match read {
            HistoryRead::Compacted => {
                return WalkStep::GaveUp(format!(
                    "revision {at} was compacted before a valid value was found"
                ))
            }
            HistoryRead::Absent => {
                return WalkStep::GaveUp(format!("the key did not exist at revision {at}"))
            }
            HistoryRead::Value {
                value,
                mod_revision,
                create_revision,
            } => (value, mod_revision, create_revision),
        };
        if mod_revision > at || mod_revision <= 0 {
            return WalkStep::GaveUp(format!(
                "etcd answered a read at revision {at} with a value of revision {mod_revision}"
            ));
        }
        match parse_spec(self.kind, &self.name, &value) {
            Ok(item) => WalkStep::Recovered(Box::new(Recovered {
                key: self.key.clone(),
                value,
                mod_revision,
                rejected_revision: self.rejected_revision,
                item,
            })),
            Err(_) if mod_revision <= create_revision => WalkStep::GaveUp(format!(
                "no valid value since the key was created at revision {create_revision}"
            )),
            Err(_) if self.steps_left == 0 => WalkStep::GaveUp(format!(
                "none of the {} earlier versions read is valid",
                self.max_steps
            )),
            Err(_) => {
                self.next = Some(mod_revision - 1);
                WalkStep::Continue
            }
        }
    }
}
