//! The decisions of the etcd watch, kept pure: a state machine fed what etcd
//! said (and the time, as an argument) that answers what to do next. The I/O
//! around it lives in [`crate::source`].
//!
//! The rules (what careful etcd consumers such as Kubernetes' reflector do):
//! - read the whole prefix at revision R, then watch from R+1;
//! - apply each revision's events as one batch, in order, and only then
//!   advance R; a progress notification advances R to its header revision;
//! - a timeout or a broken stream never advances R: the next watch starts at
//!   R+1 again;
//! - a watch cancelled because R+1 was compacted, a header revision below R
//!   (etcd restored from a backup) or a new cluster id (etcd wiped) means a
//!   full re-read.

use std::time::{Duration, Instant};

/// One change under the prefix, the key relative to it ("v1/releases/push").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or updated at `mod_revision`.
    Put {
        /// Relative key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Revision of this write.
        mod_revision: i64,
    },
    /// The key was deleted at `revision`.
    Delete {
        /// Relative key.
        key: String,
        /// Revision of the delete.
        revision: i64,
    },
}

impl Change {
    /// The revision the change happened at.
    pub fn revision(&self) -> i64 {
        match self {
            Change::Put { mod_revision, .. } => *mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The relative key changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key, .. } => key,
        }
    }
}

/// A watch response, stripped of the etcd client's types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchMessage {
    /// The store revision in the response header.
    pub header_revision: i64,
    /// The cluster id in the response header (0 when absent).
    pub cluster_id: u64,
    /// The response confirms the watch was created.
    pub created: bool,
    /// The watch was cancelled by the server.
    pub canceled: bool,
    /// Set with `canceled` when the start revision was compacted.
    pub compact_revision: i64,
    /// Why the server cancelled the watch.
    pub cancel_reason: String,
    /// The events, in revision order.
    pub changes: Vec<Change>,
}

/// All events of one revision: applied together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The revision.
    pub revision: i64,
    /// Its changes, in etcd's order.
    pub changes: Vec<Change>,
}

/// Why the whole prefix must be read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncReason {
    /// The revision to watch from was compacted away.
    Compacted {
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// etcd answered with a revision below the one already applied.
    RevisionWentBackwards {
        /// The revision etcd reported.
        seen: i64,
        /// The revision already applied.
        applied: i64,
    },
    /// etcd's cluster id changed (a new, wiped cluster).
    ClusterChanged {
        /// The previous cluster id.
        was: u64,
        /// The new one.
        now: u64,
    },
}

impl ResyncReason {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ResyncReason::Compacted { .. } => "compacted",
            ResyncReason::RevisionWentBackwards { .. } => "revision_went_backwards",
            ResyncReason::ClusterChanged { .. } => "cluster_changed",
        }
    }
}

impl std::fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResyncReason::Compacted { compact_revision } => {
                write!(f, "revisions up to {compact_revision} were compacted")
            }
            ResyncReason::RevisionWentBackwards { seen, applied } => write!(
                f,
                "etcd reports revision {seen}, below the applied revision {applied}"
            ),
            ResyncReason::ClusterChanged { was, now } => {
                write!(f, "etcd cluster id changed from {was:x} to {now:x}")
            }
        }
    }
}

/// What the caller does with a watch message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply these batches in order (the machine already counts them as applied).
    Apply(Vec<Batch>),
    /// Nothing changed up to this revision (a progress notification).
    Progress {
        /// The new applied revision.
        revision: i64,
    },
    /// Drop the watch and read the whole prefix again.
    Resync(ResyncReason),
    /// Drop the watch and reconnect; the next watch starts at the same revision.
    Reconnect {
        /// Why, for the log.
        reason: String,
    },
    /// Nothing to do (e.g. the watch-created confirmation).
    Nothing,
}

/// What to do after (re)connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the whole prefix.
    ReadAll,
    /// Watch from this revision (inclusive).
    Watch {
        /// `R + 1`.
        start_revision: i64,
    },
}

/// The watch's state: the revision applied so far and when etcd last spoke.
#[derive(Debug, Clone)]
pub struct WatchMachine {
    revision: Option<i64>,
    cluster_id: Option<u64>,
    needs_full_read: bool,
    last_heard: Option<Instant>,
    idle_timeout: Duration,
    progress_interval: Duration,
    last_progress_request: Option<Instant>,
}

impl WatchMachine {
    /// A machine that has applied nothing yet. A watch that stays silent for
    /// `idle_timeout` after a progress request is dropped and reopened; progress
    /// is requested every `progress_interval` of silence.
    pub fn new(progress_interval: Duration, idle_timeout: Duration) -> Self {
        WatchMachine {
            revision: None,
            cluster_id: None,
            needs_full_read: true,
            last_heard: None,
            idle_timeout,
            progress_interval,
            last_progress_request: None,
        }
    }

    /// The last revision fully applied.
    pub fn revision(&self) -> Option<i64> {
        self.revision
    }

    /// What to do on a fresh connection.
    pub fn next(&self) -> Next {
        match self.revision {
            Some(revision) if !self.needs_full_read => Next::Watch {
                start_revision: revision + 1,
            },
            _ => Next::ReadAll,
        }
    }

    /// A full read returned the prefix at `revision` from cluster `cluster_id`.
    /// Returns the reason this read was a resync that went backwards, if it was.
    pub fn on_full_read(&mut self, revision: i64, cluster_id: u64) -> Option<ResyncReason> {
        let backwards = match self.revision {
            Some(applied) if revision < applied => Some(ResyncReason::RevisionWentBackwards {
                seen: revision,
                applied,
            }),
            _ => None,
        };
        self.revision = Some(revision);
        if cluster_id != 0 {
            self.cluster_id = Some(cluster_id);
        }
        self.needs_full_read = false;
        backwards
    }

    /// A watch was opened at `now`.
    pub fn on_watch_started(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.last_progress_request = None;
    }

    /// etcd sent `message` at `now`.
    pub fn on_message(&mut self, message: WatchMessage, now: Instant) -> Step {
        self.last_heard = Some(now);
        self.last_progress_request = None;
        let Some(applied) = self.revision else {
            self.needs_full_read = true;
            return Step::Reconnect {
                reason: "watch message before the first full read".to_owned(),
            };
        };
        if message.canceled {
            if message.compact_revision > 0 {
                self.needs_full_read = true;
                return Step::Resync(ResyncReason::Compacted {
                    compact_revision: message.compact_revision,
                });
            }
            return Step::Reconnect {
                reason: format!("watch cancelled by etcd: {}", message.cancel_reason),
            };
        }
        if let (Some(was), now_id) = (self.cluster_id, message.cluster_id) {
            if now_id != 0 && now_id != was {
                self.needs_full_read = true;
                return Step::Resync(ResyncReason::ClusterChanged { was, now: now_id });
            }
        }
        if message.header_revision > 0 && message.header_revision < applied {
            self.needs_full_read = true;
            return Step::Resync(ResyncReason::RevisionWentBackwards {
                seen: message.header_revision,
                applied,
            });
        }
        if message.created {
            return Step::Nothing;
        }
        if message.changes.is_empty() {
            // A progress notification: etcd sends these only to watchers that
            // are caught up, so every revision up to the header is seen.
            if message.header_revision > applied {
                self.revision = Some(message.header_revision);
                return Step::Progress {
                    revision: message.header_revision,
                };
            }
            return Step::Nothing;
        }
        let mut batches: Vec<Batch> = Vec::new();
        for change in message.changes {
            let revision = change.revision();
            if revision <= applied {
                continue; // already applied (never expected from a watch at R+1)
            }
            match batches.last_mut() {
                Some(batch) if batch.revision == revision => batch.changes.push(change),
                _ => batches.push(Batch {
                    revision,
                    changes: vec![change],
                }),
            }
        }
        match batches.last() {
            Some(last) => {
                self.revision = Some(last.revision);
                Step::Apply(batches)
            }
            None => Step::Nothing,
        }
    }

    /// The watch stream failed or ended: reconnect; the revision stays.
    pub fn on_stream_lost(&mut self, reason: String) -> Step {
        self.last_heard = None;
        Step::Reconnect { reason }
    }

    /// Whether to ask etcd for a progress notification at `now`.
    pub fn progress_due(&mut self, now: Instant) -> bool {
        let Some(last) = self.last_heard else {
            return false;
        };
        if self.last_progress_request.is_some() {
            return false;
        }
        if now.saturating_duration_since(last) >= self.progress_interval {
            self.last_progress_request = Some(now);
            return true;
        }
        false
    }

    /// Checks for a silent watch at `now`: after a progress request went
    /// unanswered for the idle timeout, the watch is reopened at the same
    /// revision (never skipping ahead).
    pub fn check_idle(&mut self, now: Instant) -> Option<Step> {
        let asked = self.last_progress_request?;
        if now.saturating_duration_since(asked) >= self.idle_timeout {
            self.last_heard = None;
            self.last_progress_request = None;
            return Some(Step::Reconnect {
                reason: format!(
                    "no answer from etcd for {:?} after a progress request",
                    self.idle_timeout
                ),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests;
