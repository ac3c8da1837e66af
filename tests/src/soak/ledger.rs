//! What the soak checks, as a pure function: one subscriber's sequence of one
//! topic against the messages the server acknowledged.
//!
//! Words, precisely:
//! - **published**: a publish the server acknowledged with an id (a publish
//!   retried under the same idempotency key counts once, with the id the
//!   server answered).
//! - **lost**: a published message missing from a subscriber's sequence with
//!   no reset covering it (the subscriber went from a position before it to
//!   one after it by a message, not by a reset).
//! - **reset-covered**: a published message a subscriber did not get because
//!   a reset (`sidestream.reset`, a `reset` frame, a gRPC `Reset`) moved its
//!   position past it: missed, but told.
//! - **duplicate**: a message id delivered to the same subscriber twice.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// A message id `<epoch>-<seq>` (or a position: `<epoch>-0` is "before the
/// first message").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id {
    pub epoch: String,
    pub seq: u64,
}

impl Id {
    /// Parses `<epoch>-<seq>`.
    pub fn parse(text: &str) -> anyhow::Result<Id> {
        let (epoch, seq) = text
            .rsplit_once('-')
            .ok_or_else(|| anyhow::anyhow!("id '{text}' is not <epoch>-<seq>"))?;
        anyhow::ensure!(!epoch.is_empty(), "id '{text}' has no epoch");
        let seq = seq
            .parse()
            .map_err(|e| anyhow::anyhow!("id '{text}': sequence: {e}"))?;
        Ok(Id {
            epoch: epoch.to_owned(),
            seq,
        })
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Splits an SSE stream id (positions of every topic of the stream, in the
/// order of its `topic` parameters, joined by `.`; a bare sequence has the
/// epoch of the position before it) into one position per topic. `None`
/// for a topic with nothing yet.
pub fn split_stream_id(text: &str) -> anyhow::Result<Vec<Option<Id>>> {
    let mut epoch: Option<String> = None;
    let mut positions = Vec::new();
    for part in text.split('.') {
        if part.contains('-') {
            let id = Id::parse(part)?;
            epoch = Some(id.epoch.clone());
            positions.push(Some(id));
        } else {
            let seq: u64 = part
                .parse()
                .map_err(|e| anyhow::anyhow!("stream id '{text}': part '{part}': {e}"))?;
            positions.push(match (&epoch, seq) {
                (_, 0) => None,
                (Some(epoch), seq) => Some(Id {
                    epoch: epoch.clone(),
                    seq,
                }),
                (None, _) => anyhow::bail!("stream id '{text}': '{part}' has no epoch before it"),
            });
        }
    }
    Ok(positions)
}

/// One thing a subscriber saw on one topic, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Message { id: Id, data: String },
    Reset { position: Id, reason: String },
}

/// The published messages of one topic, in the order the server acknowledged
/// them (one publisher per topic, publishing one at a time, so this is id
/// order; a new epoch's ids come after the old one's).
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub messages: Vec<(Id, String)>,
    epochs: Vec<String>,
}

impl Published {
    pub fn push(&mut self, id: Id, data: String) {
        if !self.epochs.contains(&id.epoch) {
            self.epochs.push(id.epoch.clone());
        }
        self.messages.push((id, data));
    }

    /// The last acknowledged id.
    pub fn last(&self) -> Option<&Id> {
        self.messages.last().map(|(id, _)| id)
    }

    /// A total order over this topic's ids: epochs in the order they were
    /// first acknowledged (an epoch never acknowledged sorts last), then seq.
    fn key(&self, id: &Id) -> (usize, u64) {
        let rank = self
            .epochs
            .iter()
            .position(|e| *e == id.epoch)
            .unwrap_or(self.epochs.len());
        (rank, id.seq)
    }

    /// Published messages strictly after `after` and up to `upto` (inclusive
    /// when `inclusive`).
    fn between(&self, after: &Id, upto: &Id, inclusive: bool) -> Vec<&(Id, String)> {
        let low = self.key(after);
        let high = self.key(upto);
        self.messages
            .iter()
            .filter(|(id, _)| {
                let k = self.key(id);
                k > low && (k < high || (inclusive && k == high))
            })
            .collect()
    }

    fn data(&self, id: &Id) -> Option<&str> {
        self.messages
            .iter()
            .find(|(m, _)| m == id)
            .map(|(_, d)| d.as_str())
    }
}

/// The verdict on one subscriber's sequence of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Messages delivered (first deliveries).
    pub delivered: u64,
    /// Resets received.
    pub resets: u64,
    /// Published messages skipped by a reset.
    pub reset_covered: u64,
    /// Published messages skipped without a reset.
    pub lost: Vec<Id>,
    /// Sequence numbers skipped without a reset that no publish was
    /// acknowledged with (a publish whose answer never came).
    pub skipped_unacknowledged: u64,
    /// Ids delivered a second time.
    pub duplicates: Vec<Id>,
    /// Ids that came after a later one, not delivered before.
    pub out_of_order: Vec<Id>,
    /// Messages of a new epoch with no reset before them.
    pub unannounced_epochs: u64,
    /// Messages whose data is not what was published under that id.
    pub corrupt: Vec<Id>,
    /// Published messages after the subscriber's last position (it did not
    /// catch up before the end).
    pub behind: u64,
    /// Messages whose data came before under another id: one publish stored
    /// twice (its retry was not recognised by its idempotency key).
    pub republished: Vec<Id>,
}

impl Verdict {
    /// Nothing lost, duplicated, reordered or corrupt, and caught up.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.skipped_unacknowledged == 0
            && self.duplicates.is_empty()
            && self.out_of_order.is_empty()
            && self.unannounced_epochs == 0
            && self.corrupt.is_empty()
            && self.behind == 0
            && self.republished.is_empty()
    }
}

impl fmt::Display for Verdict {
    /// What is wrong, with at most five ids of each kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let few = |ids: &[Id]| {
            let mut text: Vec<String> = ids.iter().take(5).map(Id::to_string).collect();
            if ids.len() > 5 {
                text.push(format!("and {} more", ids.len() - 5));
            }
            text.join(", ")
        };
        let mut parts = Vec::new();
        for (what, ids) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicates),
            ("out of order", &self.out_of_order),
            ("altered", &self.corrupt),
            (
                "published twice (the same data under another id)",
                &self.republished,
            ),
        ] {
            if !ids.is_empty() {
                parts.push(format!("{} {what} ({})", ids.len(), few(ids)));
            }
        }
        if self.skipped_unacknowledged > 0 {
            parts.push(format!(
                "{} unacknowledged sequence numbers skipped",
                self.skipped_unacknowledged
            ));
        }
        if self.unannounced_epochs > 0 {
            parts.push(format!(
                "{} new epochs without a reset",
                self.unannounced_epochs
            ));
        }
        if self.behind > 0 {
            parts.push(format!("{} published messages never reached", self.behind));
        }
        if parts.is_empty() {
            parts.push("clean".to_owned());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Checks what one subscriber saw of one topic, from its starting position
/// `start` (it asked for the messages after it), against `published`; the
/// subscriber should have reached the last published message.
pub fn check(start: &Id, seen: &[Seen], published: &Published) -> Verdict {
    let mut verdict = Verdict::default();
    let mut cursor = start.clone();
    let mut delivered: HashSet<Id> = HashSet::new();
    let mut data_seen: HashMap<&str, &Id> = HashMap::new();
    // A reset to epoch 0 ("0-0", before any epoch: the server found the
    // topic without one, e.g. Redis came back empty) says delivery goes on
    // with the first message of the next epoch, whose start the client is
    // not told.
    let mut before_next_epoch = false;
    for item in seen {
        match item {
            Seen::Message { id, data } => {
                let mut base_unknown = false;
                if before_next_epoch {
                    before_next_epoch = false;
                    if published.key(id).0 > published.key(&cursor).0 {
                        let epoch_start = Id {
                            epoch: id.epoch.clone(),
                            seq: 0,
                        };
                        verdict.reset_covered +=
                            published.between(&cursor, &epoch_start, false).len() as u64;
                        cursor = epoch_start;
                        base_unknown = true;
                    }
                }
                if published.key(id) <= published.key(&cursor) {
                    if delivered.contains(id) {
                        verdict.duplicates.push(id.clone());
                    } else {
                        verdict.out_of_order.push(id.clone());
                        delivered.insert(id.clone());
                    }
                    continue;
                }
                let gap = published.between(&cursor, id, false);
                verdict.lost.extend(gap.iter().map(|(g, _)| g.clone()));
                if id.epoch != cursor.epoch {
                    verdict.unannounced_epochs += 1;
                } else if !base_unknown {
                    let skipped = id.seq - cursor.seq - 1;
                    verdict.skipped_unacknowledged += skipped.saturating_sub(gap.len() as u64);
                }
                if let Some(expected) = published.data(id) {
                    if expected != data {
                        verdict.corrupt.push(id.clone());
                    }
                }
                match data_seen.get(data.as_str()) {
                    Some(first) if *first != id => verdict.republished.push(id.clone()),
                    _ => {
                        data_seen.insert(data, id);
                    }
                }
                verdict.delivered += 1;
                delivered.insert(id.clone());
                cursor = id.clone();
            }
            Seen::Reset { position, .. } => {
                verdict.resets += 1;
                if position.epoch == "0" {
                    before_next_epoch = true;
                    continue;
                }
                before_next_epoch = false;
                verdict.reset_covered += published.between(&cursor, position, true).len() as u64;
                cursor = position.clone();
            }
        }
    }
    if let Some(last) = published.last() {
        verdict.behind = published.between(&cursor, last, true).len() as u64;
    }
    verdict
}

/// A compact account of a sequence, for a failure's report: runs of
/// consecutive messages as `epoch-first..last`, resets as
/// `RESET(reason)->position`.
pub fn summarize(start: &Id, seen: &[Seen]) -> String {
    let mut parts = vec![format!("from {start}")];
    let mut run: Option<(Id, Id)> = None;
    let flush = |run: &mut Option<(Id, Id)>, parts: &mut Vec<String>| {
        if let Some((first, last)) = run.take() {
            if first == last {
                parts.push(first.to_string());
            } else {
                parts.push(format!("{first}..{}", last.seq));
            }
        }
    };
    for item in seen {
        match item {
            Seen::Message { id, .. } => match &mut run {
                Some((_, last)) if last.epoch == id.epoch && last.seq + 1 == id.seq => {
                    *last = id.clone();
                }
                _ => {
                    flush(&mut run, &mut parts);
                    run = Some((id.clone(), id.clone()));
                }
            },
            Seen::Reset { position, reason } => {
                flush(&mut run, &mut parts);
                parts.push(format!("RESET({reason})->{position}"));
            }
        }
    }
    flush(&mut run, &mut parts);
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Id {
        Id::parse(text).unwrap()
    }

    fn msg(text: &str) -> Seen {
        Seen::Message {
            id: id(text),
            data: format!("data {text}"),
        }
    }

    fn reset(text: &str) -> Seen {
        Seen::Reset {
            position: id(text),
            reason: "epoch-changed".into(),
        }
    }

    /// a-1 .. a-5 published, then (Redis lost) b-1000 .. b-1002.
    fn published() -> Published {
        let mut p = Published::default();
        for text in ["a-1", "a-2", "a-3", "a-4", "a-5", "b-1001", "b-1002"] {
            p.push(id(text), format!("data {text}"));
        }
        p
    }

    #[test]
    fn a_complete_sequence_is_clean() {
        let seen: Vec<Seen> = ["a-2", "a-3", "a-4", "a-5", "b-1001", "b-1002"]
            .iter()
            .map(|t| msg(t))
            .collect();
        let v = check(&id("a-1"), &seen[..4], &published());
        // Up to a-5 with the epoch change announced:
        let mut with_reset = seen[..4].to_vec();
        with_reset.push(reset("b-1000"));
        with_reset.extend(seen[4..].iter().cloned());
        let v2 = check(&id("a-1"), &with_reset, &published());
        assert!(v2.is_clean(), "{v2:?}");
        assert_eq!(v2.delivered, 6);
        assert_eq!(v2.resets, 1);
        assert_eq!(v2.reset_covered, 0);
        // Stopping at a-5 leaves it two behind.
        assert_eq!(v.behind, 2);
        assert!(!v.is_clean());
    }

    #[test]
    fn a_gap_without_a_reset_is_loss_and_with_one_is_covered() {
        let lost = check(
            &id("a-1"),
            &[
                msg("a-2"),
                msg("a-5"),
                reset("b-1000"),
                msg("b-1001"),
                msg("b-1002"),
            ],
            &published(),
        );
        assert_eq!(lost.lost, vec![id("a-3"), id("a-4")]);
        assert!(!lost.is_clean());
        let covered = check(
            &id("a-1"),
            &[
                msg("a-2"),
                reset("a-4"),
                msg("a-5"),
                reset("b-1000"),
                msg("b-1001"),
                msg("b-1002"),
            ],
            &published(),
        );
        assert!(covered.is_clean(), "{covered:?}");
        assert_eq!(covered.reset_covered, 2);
        assert_eq!(covered.resets, 2);
    }

    #[test]
    fn a_new_epoch_without_a_reset_is_reported() {
        let v = check(
            &id("a-1"),
            &[
                msg("a-2"),
                msg("a-3"),
                msg("a-4"),
                msg("a-5"),
                msg("b-1001"),
                msg("b-1002"),
            ],
            &published(),
        );
        assert_eq!(v.unannounced_epochs, 1);
        assert!(v.lost.is_empty());
        assert!(!v.is_clean());
    }

    #[test]
    fn duplicates_reordering_corruption_and_unacknowledged_skips_are_reported() {
        let mut seen = vec![msg("a-2"), msg("a-3"), msg("a-3"), msg("a-5"), msg("a-4")];
        seen.push(Seen::Message {
            id: id("b-1001"),
            data: "something else".into(),
        });
        let v = check(&id("a-1"), &seen, &published());
        assert_eq!(v.duplicates, vec![id("a-3")]);
        assert_eq!(v.lost, vec![id("a-4")]);
        assert_eq!(v.out_of_order, vec![id("a-4")]);
        assert_eq!(v.corrupt, vec![id("b-1001")]);
        assert_eq!(v.behind, 1);

        // a-6 was never acknowledged (its publisher saw no answer) but a-7 was.
        let mut p = Published::default();
        p.push(id("a-5"), "x".into());
        p.push(id("a-7"), "y".into());
        let v = check(
            &id("a-5"),
            &[Seen::Message {
                id: id("a-7"),
                data: "y".into(),
            }],
            &p,
        );
        assert_eq!(v.skipped_unacknowledged, 1);
        assert!(v.lost.is_empty());
        assert!(!v.is_clean());

        // a-6 published twice: its retry stored it again as a-7.
        let mut p = Published::default();
        p.push(id("a-6"), "same".into());
        p.push(id("a-7"), "same".into());
        let same = |text| Seen::Message {
            id: id(text),
            data: "same".into(),
        };
        let v = check(&id("a-5"), &[same("a-6"), same("a-7")], &p);
        assert_eq!(v.republished, vec![id("a-7")]);
        assert!(!v.is_clean());
    }

    #[test]
    fn a_reset_to_before_any_epoch_continues_with_the_next_epoch() {
        // Redis came back empty: reset to 0-0, then epoch b from its start.
        let clean = check(
            &id("a-3"),
            &[msg("a-4"), reset("0-0"), msg("b-1001"), msg("b-1002")],
            &published(),
        );
        assert!(clean.is_clean(), "{clean}");
        assert_eq!(clean.reset_covered, 1); // a-5
                                            // The first message of the new epoch missing, with no reset for it.
        let lost = check(&id("a-3"), &[reset("0-0"), msg("b-1002")], &published());
        assert_eq!(lost.lost, vec![id("b-1001")]);
        assert_eq!(lost.reset_covered, 2);
    }

    #[test]
    fn summaries_collapse_runs() {
        let seen = [
            msg("a-2"),
            msg("a-3"),
            msg("a-5"),
            reset("b-1000"),
            msg("b-1001"),
        ];
        assert_eq!(
            summarize(&id("a-1"), &seen),
            "from a-1 a-2..3 a-5 RESET(epoch-changed)->b-1000 b-1001"
        );
    }

    #[test]
    fn stream_ids_split_into_positions() {
        assert_eq!(
            split_stream_id("k3x9a2-17.4.0").unwrap(),
            vec![Some(id("k3x9a2-17")), Some(id("k3x9a2-4")), None]
        );
        assert_eq!(
            split_stream_id("k3x9a2-17.q1w2-4").unwrap(),
            vec![Some(id("k3x9a2-17")), Some(id("q1w2-4"))]
        );
        assert!(split_stream_id("17.4").is_err());
        assert!(split_stream_id("a-x").is_err());
    }
}
