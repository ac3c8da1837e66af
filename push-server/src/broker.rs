//! Where messages and history live: [`memory::MemoryBroker`] in the process
//! (the default) or [`redis::RedisBroker`] in Redis Streams shared by several
//! push servers. A broker assigns ids, keeps bounded history, answers resumes
//! and hands live messages to the node's [`Hub`](crate::hub::Hub).

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sidestream_core::config::TopicSettings;

use crate::message::{Draft, Epoch, Message, MessageId};

/// A boxed future borrowing the broker.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Protocol(String),
    #[error("too many topics on this node ({0}); refusing a new one")]
    TooManyTopics(usize),
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: MessageId,
    /// The idempotency key was seen within the window; `id` is the original's.
    pub duplicate: bool,
}

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

/// What a subscription to one topic starts with.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The first messages to replay, in order: at most the `limit` asked for.
    /// The rest comes page by page from [`Broker::history`].
    pub messages: Vec<Arc<Message>>,
    /// Set when the subscriber missed messages.
    pub reset: Option<ResetReason>,
    /// Where the replay starts: the last position not replayed (`messages`
    /// follow it).
    pub position: MessageId,
    /// The topic's last sequence when the resume was planned: the replay goes
    /// up to it; later messages reach the subscriber live (it subscribed to
    /// the hub before resuming).
    pub head: u64,
}

/// The store and distributor of messages.
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a message (assigning its id) and gets it to every node's subscribers.
    fn publish<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        draft: Draft,
    ) -> BrokerFuture<'a, Published>;

    /// Plans a subscription's start: the reset to report and the position
    /// after `from` (or just the current position, for `None`), with at most
    /// `limit` messages of history after it.
    fn resume<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        from: Option<MessageId>,
        limit: usize,
    ) -> BrokerFuture<'a, Resume>;

    /// The next page of a replay: at most `limit` messages of `epoch` after
    /// sequence `after`, in order. Empty when history holds none.
    fn history<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        epoch: Epoch,
        after: u64,
        limit: usize,
    ) -> BrokerFuture<'a, Vec<Arc<Message>>>;

    /// Starts delivering `topic`'s live messages to this node's hub; returns
    /// once every message published after the return is sure to arrive.
    fn watch<'a>(&'a self, topic: &'a Arc<str>) -> BrokerFuture<'a, ()>;

    /// Stops delivering `topic` to this node (no local subscriber left).
    fn unwatch(&self, topic: &str);

    /// Whether the broker can serve (for readiness).
    fn is_ready(&self) -> bool;

    /// "memory" or "redis".
    fn kind(&self) -> &'static str;
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

/// The outcome label of a resume, for metrics.
pub fn resume_outcome(reset: Option<ResetReason>) -> &'static str {
    match reset {
        None => "resumed",
        Some(ResetReason::HistoryGap) => "reset-history-gap",
        Some(ResetReason::EpochChanged) => "reset-epoch-changed",
        Some(ResetReason::UnknownPosition) => "reset-unknown-position",
    }
}

/// The oldest publish time (unix ns) history keeps for `settings`.
pub fn oldest_kept(settings: &TopicSettings, now_unix_nanos: u64) -> u64 {
    now_unix_nanos
        .saturating_sub(u64::try_from(settings.history_max_age.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch(77);

    fn at(epoch: u64, seq: u64) -> Option<MessageId> {
        Some(MessageId {
            epoch: Epoch(epoch),
            seq,
        })
    }

    #[test]
    fn replay_pages_are_bounded_by_queue_count_and_bytes() {
        let mut settings = TopicSettings::defaults("t");
        settings.max_message_bytes = 64 * 1024;
        assert_eq!(replay_page(&settings, 1024), 16);
        assert_eq!(replay_page(&settings, 4), 4);
        settings.max_message_bytes = 100;
        assert_eq!(replay_page(&settings, 1024), REPLAY_PAGE_MESSAGES);
        settings.max_message_bytes = 16 * 1024 * 1024;
        assert_eq!(replay_page(&settings, 1024), 1);
    }

    #[test]
    fn resume_plans() {
        use ResetReason::*;
        type Case = (
            Option<MessageId>,
            u64,
            Option<(u64, u64)>,
            (u64, Option<ResetReason>),
        );
        let cases: &[Case] = &[
            // fresh subscription: live only
            (None, 10, Some((1, 10)), (10, None)),
            // within history
            (at(77, 4), 10, Some((1, 10)), (4, None)),
            (at(77, 10), 10, Some((1, 10)), (10, None)),
            // exactly before the first held message: nothing missed
            (at(77, 4), 10, Some((5, 10)), (4, None)),
            // older than history
            (at(77, 3), 10, Some((5, 10)), (4, Some(HistoryGap))),
            // history aged out entirely
            (at(77, 3), 10, None, (10, Some(HistoryGap))),
            (at(77, 10), 10, None, (10, None)),
            // other epoch: everything held is replayed
            (at(5, 3), 10, Some((5, 10)), (4, Some(EpochChanged))),
            (at(5, 3), 0, None, (0, Some(EpochChanged))),
            // a position never issued
            (at(77, 11), 10, Some((1, 10)), (10, Some(UnknownPosition))),
            // "before any epoch"
            (at(0, 0), 3, Some((1, 3)), (0, None)),
            (at(0, 0), 9, Some((4, 9)), (3, Some(HistoryGap))),
        ];
        // An epoch that started after sequence 5000 (Redis: its start time).
        assert_eq!(
            plan_resume(at(0, 0), E, 5000, 5003, Some((5001, 5003))),
            (5000, None)
        );
        assert_eq!(
            plan_resume(at(0, 0), E, 5000, 5009, Some((5004, 5009))),
            (5003, Some(HistoryGap))
        );
        assert_eq!(
            plan_resume(at(5, 3), E, 5000, 5003, Some((5001, 5003))),
            (5000, Some(EpochChanged))
        );
        for (from, head, held, expected) in cases {
            assert_eq!(
                plan_resume(*from, E, 0, *head, *held),
                *expected,
                "from {from:?} head {head} held {held:?}"
            );
        }
    }
}
