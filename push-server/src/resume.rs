//! Resume and replay, as decisions apart from any I/O: given a subscriber's
//! position and the topic's history, what to deliver, what to skip and when
//! to report a reset; and how large a replay page is. The brokers read the
//! history and [`crate::subscription`] does the I/O; both ask this module.
//!
//! - [`plan_resume`]: where a subscription starts (and the reset to report).
//! - [`start_position`]: the position a stream's cursor takes after it.
//! - [`ReplayWindow`]: the history a resume has still to fetch, page by page
//!   ([`replay_page`] messages at a time), and what each page brings.
//! - [`live`]: what a live message does to a cursor (deliver, skip a message
//!   already replayed, or report the ids it jumped over).

use sidestream_core::config::TopicSettings;

use crate::message::{Epoch, MessageId};

/// Why a subscriber is told it missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The position is older than the history still held.
    HistoryGap,
    /// The position is from another epoch (history was lost since).
    EpochChanged,
    /// The position is ahead of the topic (never issued).
    UnknownPosition,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::HistoryGap => "history-gap",
            ResetReason::EpochChanged => "epoch-changed",
            ResetReason::UnknownPosition => "unknown-position",
        }
    }
}

/// The outcome label of a resume, for metrics.
pub fn resume_outcome(reset: Option<ResetReason>) -> &'static str {
    match reset {
        None => "resumed",
        Some(ResetReason::HistoryGap) => "reset-history-gap",
        Some(ResetReason::EpochChanged) => "reset-epoch-changed",
        Some(ResetReason::UnknownPosition) => "reset-unknown-position",
    }
}

/// Messages one replay page holds at most.
pub const REPLAY_PAGE_MESSAGES: usize = 256;
/// Bytes one replay page may hold at most, counted by the topic's message
/// size limit (a page holds at least one message).
pub const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// How many messages one page of a resume's replay fetches for a subscriber
/// with a queue of `queue_capacity`: at most that queue, [`REPLAY_PAGE_MESSAGES`]
/// and [`REPLAY_PAGE_BYTES`] worth of the topic's largest messages.
pub fn replay_page(settings: &TopicSettings, queue_capacity: usize) -> usize {
    (REPLAY_PAGE_BYTES / settings.max_message_bytes.max(1))
        .min(REPLAY_PAGE_MESSAGES)
        .min(queue_capacity)
        .max(1)
}

/// The oldest publish time (unix ns) history keeps for `settings`.
pub fn oldest_kept(settings: &TopicSettings, now_unix_nanos: u64) -> u64 {
    now_unix_nanos
        .saturating_sub(u64::try_from(settings.history_max_age.as_nanos()).unwrap_or(u64::MAX))
}

/// Where a subscription starts, given the topic's state.
///
/// `epoch_start` is the sequence the current epoch began after, `head` its
/// last sequence; `held` is the sequence range of the history still held
/// (after the count and age limits), `None` when it holds nothing. Returns the
/// sequence to replay after and the reset to report.
pub fn plan_resume(
    from: Option<MessageId>,
    epoch: Epoch,
    epoch_start: u64,
    head: u64,
    held: Option<(u64, u64)>,
) -> (u64, Option<ResetReason>) {
    let Some(from) = from else {
        return (head, None);
    };
    let first_held = held.map_or(head.saturating_add(1), |(first, _)| first);
    // Epoch 0 is "before the topic had an epoch": the start of whatever epoch it has now.
    let from_seq = if from.epoch == Epoch(0) {
        epoch_start.max(from.seq)
    } else if from.epoch == epoch {
        from.seq
    } else {
        return (
            first_held.saturating_sub(1),
            Some(ResetReason::EpochChanged),
        );
    };
    if from_seq > head {
        return (head, Some(ResetReason::UnknownPosition));
    }
    if from_seq.saturating_add(1) < first_held && from_seq < head {
        return (first_held.saturating_sub(1), Some(ResetReason::HistoryGap));
    }
    (from_seq, None)
}

/// The position a stream's cursor takes after a resume planned at `planned`:
/// without a reset the replay continues the client's own position (an
/// epoch-0 "from the start" position takes the topic's).
pub fn start_position(
    from: Option<MessageId>,
    reset: Option<ResetReason>,
    planned: MessageId,
) -> MessageId {
    match (from, reset) {
        (Some(from), None) if from.epoch != Epoch(0) => from,
        _ => planned,
    }
}

/// Whether a message at `id` was already written to a cursor at `position`
/// (a replayed message met again, live or in a later page).
pub fn already_delivered(position: MessageId, id: MessageId) -> bool {
    id.epoch == position.epoch && id.seq <= position.seq
}

/// The part of a topic's history a resume has not fetched yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    pub epoch: Epoch,
    /// The last sequence fetched.
    pub after: u64,
    /// The topic's head when the resume was planned: later messages arrive live.
    pub until: u64,
}

/// One thing a replay page asks the stream to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStep {
    /// Write the page's message at this index.
    Deliver(usize),
    /// History was trimmed under the replay: report a gap, the stream going
    /// on from `position`.
    Reset { position: MessageId },
}

/// What one page of a replay brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub steps: Vec<PageStep>,
    /// The history still to fetch; `None` when the replay is over (live from
    /// here).
    pub rest: Option<ReplayWindow>,
}

impl ReplayWindow {
    /// The history left after a resume replayed `first_page` from
    /// `position` (the planned one) up to `head`: `None` when nothing is
    /// left, or nothing was asked (`resuming` false: live only).
    pub fn after_resume(
        resuming: bool,
        position: MessageId,
        first_page: impl IntoIterator<Item = MessageId>,
        head: u64,
    ) -> Option<ReplayWindow> {
        let after = first_page
            .into_iter()
            .fold(position.seq, |after, id| after.max(id.seq));
        (resuming && after < head).then_some(ReplayWindow {
            epoch: position.epoch,
            after,
            until: head,
        })
    }

    /// Takes a page fetched after `self.after` (`ids` are its messages' ids,
    /// in order): messages of another epoch or already fetched are skipped, a
    /// hole is a reset before the next message, and a page that brings
    /// nothing new while `until` is not reached means history holds no more
    /// (a reset to `until`, live after).
    pub fn take_page(self, ids: &[MessageId]) -> Page {
        let mut window = self;
        let mut steps = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            if id.epoch != window.epoch || id.seq <= window.after {
                continue;
            }
            if id.seq > window.after.saturating_add(1) {
                steps.push(PageStep::Reset {
                    position: MessageId {
                        epoch: window.epoch,
                        seq: id.seq - 1,
                    },
                });
            }
            window.after = id.seq;
            steps.push(PageStep::Deliver(index));
        }
        if window.after == self.after && window.after < window.until {
            steps.push(PageStep::Reset {
                position: MessageId {
                    epoch: window.epoch,
                    seq: window.until,
                },
            });
            window.after = window.until;
        }
        Page {
            steps,
            rest: (window.after < window.until).then_some(window),
        }
    }
}

/// What a live message does to a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Already replayed from history: drop it.
    Skip,
    /// The next message: write it.
    Deliver,
    /// The message jumped over ids (a hole, or a new epoch): report the reset,
    /// the cursor going to `position`, then write the message.
    ResetThenDeliver {
        reason: ResetReason,
        position: MessageId,
    },
}

/// What a live message at `id` does to a cursor at `position`. A cursor of
/// epoch 0 (the topic had no message when subscribed) takes whatever
/// message comes first as the next one.
pub fn live(position: MessageId, id: MessageId) -> Live {
    let position = if position.epoch == Epoch(0) {
        MessageId {
            epoch: id.epoch,
            seq: id.seq.saturating_sub(1),
        }
    } else {
        position
    };
    if id.epoch == position.epoch {
        if id.seq <= position.seq {
            return Live::Skip;
        }
        if id.seq == position.seq.saturating_add(1) {
            return Live::Deliver;
        }
    }
    let reason = if id.epoch == position.epoch {
        ResetReason::HistoryGap
    } else {
        ResetReason::EpochChanged
    };
    Live::ResetThenDeliver {
        reason,
        position: MessageId {
            epoch: id.epoch,
            seq: id.seq.saturating_sub(1),
        },
    }
}

#[cfg(test)]
mod tests;
