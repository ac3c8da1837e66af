//! Local fan-out: the streams of this node subscribed to each topic, each with
//! a bounded queue. A message is handed to every subscriber's queue as one
//! shared `Arc`; a subscriber whose queue is full is cut (slow consumer) instead
//! of growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, Notify, OnceCell};

use crate::message::Message;
use crate::metrics::{Metrics, Transport};

/// What a stream's queue carries.
#[derive(Debug, Clone)]
pub enum Delivery {
    Message(Arc<Message>),
    /// The server drains: end the stream, telling the client to retry later.
    Drain,
}

/// The TCP connection a stream runs on, so the server can close it when the
/// stream must end but its client does not read.
#[derive(Debug, Default)]
pub struct ConnectionControl {
    cut: Notify,
    was_cut: AtomicBool,
}

impl ConnectionControl {
    /// Asks the server to close the connection (after a short grace to write a goodbye).
    pub fn cut(&self) {
        if !self.was_cut.swap(true, Ordering::AcqRel) {
            self.cut.notify_one();
        }
    }

    /// Resolves once [`ConnectionControl::cut`] was called.
    pub async fn cut_requested(&self) {
        self.cut.notified().await;
    }
}

/// One subscribing stream (an SSE response, a WebSocket, a gRPC call) as the hub sees it.
#[derive(Debug)]
pub struct StreamHandle {
    tx: mpsc::Sender<Delivery>,
    overflowed: AtomicBool,
    pub transport: Transport,
    capacity: usize,
    connection: Option<Arc<ConnectionControl>>,
}

impl StreamHandle {
    /// Whether the queue overflowed (the stream must end as a slow consumer).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Deliveries queued and not yet taken by the stream.
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    fn overflow(&self, metrics: &Metrics) {
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            metrics.slow_consumer(self.transport);
            if let Some(connection) = &self.connection {
                connection.cut();
            }
        }
    }
}

/// Subscribers of one topic on this node.
#[derive(Debug)]
pub struct HubTopic {
    name: Arc<str>,
    subscribers: Mutex<Slots>,
    /// Set once the broker delivers this topic's live messages to this node.
    live: OnceCell<()>,
}

impl HubTopic {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Runs `watch` once per topic life; every subscriber awaits it before reading history.
    pub async fn ensure_live<F, Fut, E>(&self, watch: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        self.live.get_or_try_init(watch).await.map(|_| ())
    }
}

#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Option<Arc<StreamHandle>>>,
    free: Vec<usize>,
    count: usize,
}

/// A stream's registration in one topic.
#[derive(Debug)]
pub struct TopicKey {
    pub topic: Arc<HubTopic>,
    slot: usize,
}

/// A stream's registration with the hub (for drain and backlog).
#[derive(Debug)]
pub struct StreamKey(usize);

/// The node's topics and streams.
#[derive(Debug)]
pub struct Hub {
    topics: RwLock<HashMap<Arc<str>, Arc<HubTopic>>>,
    streams: Mutex<Slots>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            topics: RwLock::new(HashMap::new()),
            streams: Mutex::new(Slots::default()),
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// A new stream with a queue of `capacity` deliveries.
    pub fn open_stream(
        &self,
        transport: Transport,
        capacity: usize,
        connection: Option<Arc<ConnectionControl>>,
    ) -> (Arc<StreamHandle>, mpsc::Receiver<Delivery>, StreamKey) {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let handle = Arc::new(StreamHandle {
            tx,
            overflowed: AtomicBool::new(false),
            transport,
            capacity,
            connection,
        });
        let slot = lock(&self.streams).insert(handle.clone());
        self.metrics.stream_opened(transport);
        if self.draining.load(Ordering::Acquire) {
            let _ = handle.tx.try_send(Delivery::Drain);
        }
        (handle, rx, StreamKey(slot))
    }

    /// Forgets a stream (it ended).
    pub fn close_stream(&self, key: StreamKey, transport: Transport) {
        lock(&self.streams).remove(key.0);
        self.metrics.stream_closed(transport);
    }

    /// Adds a stream to a topic's subscribers.
    pub fn subscribe(&self, topic: &Arc<str>, handle: &Arc<StreamHandle>) -> TopicKey {
        // Insert under the map lock (read): a topic is only forgotten under the
        // write lock, so a subscriber never lands in a topic being dropped.
        {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            if let Some(hub_topic) = topics.get(topic) {
                return self.insert(hub_topic, handle);
            }
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let hub_topic = topics.entry(topic.clone()).or_insert_with(|| {
            Arc::new(HubTopic {
                name: topic.clone(),
                subscribers: Mutex::new(Slots::default()),
                live: OnceCell::new(),
            })
        });
        self.insert(hub_topic, handle)
    }

    fn insert(&self, hub_topic: &Arc<HubTopic>, handle: &Arc<StreamHandle>) -> TopicKey {
        let mut subscribers = lock(&hub_topic.subscribers);
        let slot = subscribers.insert(handle.clone());
        self.metrics.topic_subscribers(&hub_topic.name).inc();
        TopicKey {
            topic: hub_topic.clone(),
            slot,
        }
    }

    /// Removes a stream from a topic; the topic is forgotten when its last
    /// subscriber leaves, and `forget` runs then, under the hub's lock (so the
    /// broker stops watching before anyone can subscribe to the topic anew).
    pub fn unsubscribe(&self, key: TopicKey, forget: impl FnOnce(&str)) {
        let empty = {
            let mut subscribers = lock(&key.topic.subscribers);
            subscribers.remove(key.slot);
            self.metrics.topic_subscribers(&key.topic.name).dec();
            subscribers.count == 0
        };
        if !empty {
            return;
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let still_empty = lock(&key.topic.subscribers).count == 0;
        let current = topics
            .get(&key.topic.name)
            .is_some_and(|t| Arc::ptr_eq(t, &key.topic));
        if still_empty && current {
            topics.remove(&key.topic.name);
            self.metrics.forget_topic(&key.topic.name);
            forget(&key.topic.name);
        }
    }

    /// Hands a message to every local subscriber of its topic. Returns how
    /// many queues took it.
    pub fn dispatch(&self, message: &Arc<Message>) -> usize {
        let hub_topic = {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            match topics.get(&message.topic) {
                Some(t) => t.clone(),
                None => return 0,
            }
        };
        let mut delivered = 0;
        let subscribers = lock(&hub_topic.subscribers);
        for handle in subscribers.slots.iter().flatten() {
            if handle.overflowed() {
                continue;
            }
            match handle.tx.try_send(Delivery::Message(message.clone())) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(topic = %message.topic, transport = handle.transport.as_str(), "Subscriber queue full: cutting a slow consumer");
                    handle.overflow(&self.metrics);
                }
                // The stream is ending; it unsubscribes itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Starts draining: every stream is told to end.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let streams = lock(&self.streams);
        for handle in streams.slots.iter().flatten() {
            // A full queue is being read; the stream sees `is_draining` after it.
            let _ = handle.tx.try_send(Delivery::Drain);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).count
    }

    /// Deliveries queued in every stream and not yet written (streams already
    /// cut as slow consumers are not counted: their queue goes with them).
    pub fn backlog(&self) -> usize {
        lock(&self.streams)
            .slots
            .iter()
            .flatten()
            .filter(|h| !h.overflowed())
            .map(|h| h.queued())
            .sum()
    }

    /// Local subscriber counts by topic.
    pub fn topic_counts(&self) -> Vec<(String, usize)> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut counts: Vec<(String, usize)> = topics
            .values()
            .map(|t| (t.name.to_string(), lock(&t.subscribers).count))
            .collect();
        counts.sort();
        counts
    }
}

impl Slots {
    fn insert(&mut self, handle: Arc<StreamHandle>) -> usize {
        self.count += 1;
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(handle);
                slot
            }
            None => {
                self.slots.push(Some(handle));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(entry) = self.slots.get_mut(slot) {
            if entry.take().is_some() {
                self.count -= 1;
                self.free.push(slot);
            }
        }
        // Give memory back when a crowd left.
        if self.count == 0 && self.slots.len() > 64 {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
