//! Where messages and history live: [`memory::MemoryBroker`] in the process
//! (the default) or [`redis::RedisBroker`] in Redis Streams shared by several
//! push servers. A broker assigns ids, keeps bounded history, answers resumes
//! and hands live messages to the node's [`Hub`](crate::hub::Hub). What a
//! resume means (resets, paging) is decided in [`crate::resume`].

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sidestream_core::config::TopicSettings;

use crate::message::{Draft, Epoch, Message, MessageId};
use crate::resume::ResetReason;

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
