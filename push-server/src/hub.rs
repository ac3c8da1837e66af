//! Local fan-out: the streams of this node subscribed to each topic, each with
//! a queue bounded in messages and in bytes. A message is handed to every
//! subscriber's queue as one shared `Arc`; a subscriber whose queue is full is
//! cut (slow consumer) instead of growing memory. Shared or not, what a queue
//! holds stays in memory while it is queued (history may have dropped it), so
//! the byte bound is what limits the memory slow subscribers pin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::Context;

use futures::task::AtomicWaker;

use tokio::sync::{mpsc, Notify, OnceCell};

use crate::message::Message;
use crate::metrics::{Metrics, Transport};
use crate::uring::{Job, Link, Writer};

/// What a stream's queue carries.
#[derive(Debug, Clone)]
pub enum Delivery {
    Message(Arc<Message>),
    /// The server drains: end the stream, telling the client to retry later.
    Drain,
}

/// The TCP connection a stream runs on, so the server can close it when the
/// stream must end but its client does not read; for a directly served SSE
/// connection under `--fanout-io uring`, also its [`Link`] to the io_uring
/// writer.
///
/// Two ways to wait on it: [`ConnectionControl::wait_until`] (a future, any
/// number of waiters), and, for the one task that serves a directly served
/// SSE connection, [`ConnectionControl::register`] from inside its own poll,
/// which costs the idle task no waiter of its own.
#[derive(Debug, Default)]
pub struct ConnectionControl {
    /// Notified when the connection is cut or stopped or its link changes hands.
    changed: Notify,
    /// The serving task, woken on the same changes.
    task: AtomicWaker,
    was_cut: AtomicBool,
    stopped: AtomicBool,
    link: Option<Box<Link>>,
}

impl ConnectionControl {
    /// The control of a directly served SSE connection, linked to the
    /// io_uring writer when it runs.
    pub fn with_link(link: Option<Link>) -> ConnectionControl {
        ConnectionControl {
            link: link.map(Box::new),
            ..ConnectionControl::default()
        }
    }

    /// Asks the server to close the connection (after a short grace to write a goodbye).
    pub fn cut(&self) {
        if !self.was_cut.swap(true, Ordering::AcqRel) {
            self.changed();
        }
    }

    /// Whether [`ConnectionControl::cut`] was called.
    pub fn was_cut(&self) -> bool {
        self.was_cut.load(Ordering::Acquire)
    }

    /// The server stops: a directly served SSE connection closes at once
    /// (the other transports follow the server's own shutdown).
    pub fn stop(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.changed();
        }
    }

    /// Whether [`ConnectionControl::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once [`ConnectionControl::cut`] was called.
    pub async fn cut_requested(&self) {
        self.wait_until(|| self.was_cut()).await;
    }

    /// The connection's link to the io_uring writer.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_deref()
    }

    /// Wakes whoever waits on the connection (it was cut or stopped, or its
    /// link changed hands).
    pub fn changed(&self) {
        self.changed.notify_waiters();
        self.task.wake();
    }

    /// Has the serving task woken at the next change. Register, then check
    /// the state, so no change falls in between; only the last task
    /// registered is woken.
    pub fn register(&self, cx: &Context<'_>) {
        self.task.register(cx.waker());
    }

    /// Resolves once `done` holds, checked on every change.
    pub async fn wait_until(&self, mut done: impl FnMut() -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    }
}

/// One subscribing stream (an SSE response, a WebSocket, a gRPC call) as the hub sees it.
#[derive(Debug)]
pub struct StreamHandle {
    tx: mpsc::Sender<Delivery>,
    overflowed: AtomicBool,
    pub transport: Transport,
    capacity: usize,
    /// Bytes of message data queued, and the most there may be.
    queued_bytes: AtomicUsize,
    byte_capacity: usize,
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

    /// Bytes of message data queued and not yet taken by the stream.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// The stream took `message` from its queue.
    pub fn taken(&self, message: &Message) {
        self.queued_bytes
            .fetch_sub(message.data.len(), Ordering::AcqRel);
    }

    /// Counts `size` bytes in, unless the queue already holds something and
    /// would then hold more than its byte capacity.
    fn reserve(&self, size: usize) -> bool {
        let mut queued = self.queued_bytes.load(Ordering::Acquire);
        loop {
            if queued > 0 && queued.saturating_add(size) > self.byte_capacity {
                return false;
            }
            match self.queued_bytes.compare_exchange_weak(
                queued,
                queued + size,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => queued = now,
            }
        }
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
    /// Set by [`Hub::stop_connections`].
    stopping: AtomicBool,
    /// The io_uring fan-out writer, when it runs (`--fanout-io`).
    writer: OnceLock<Writer>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            topics: RwLock::new(HashMap::new()),
            streams: Mutex::new(Slots::default()),
            metrics,
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        }
    }

    /// Hands parked SSE connections' deliveries to `writer` from now on.
    pub fn set_writer(&self, writer: Writer) {
        let _ = self.writer.set(writer);
    }

    /// Whether parked SSE connections are written through io_uring.
    pub fn writes_through_uring(&self) -> bool {
        self.writer.get().is_some_and(Writer::usable)
    }

    /// A new stream with a queue of `capacity` deliveries and
    /// `byte_capacity` bytes of message data (one message always fits).
    pub fn open_stream(
        &self,
        transport: Transport,
        capacity: usize,
        byte_capacity: usize,
        connection: Option<Arc<ConnectionControl>>,
    ) -> (Arc<StreamHandle>, mpsc::Receiver<Delivery>, StreamKey) {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let handle = Arc::new(StreamHandle {
            tx,
            overflowed: AtomicBool::new(false),
            transport,
            capacity,
            queued_bytes: AtomicUsize::new(0),
            byte_capacity,
            connection,
        });
        let slot = lock(&self.streams).insert(handle.clone());
        // Registered first, checked after: a stop between the two is seen by
        // one side or the other.
        if self.stopping.load(Ordering::SeqCst) {
            if let Some(connection) = &handle.connection {
                connection.stop();
            }
        }
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

    /// Hands a message to every local subscriber of its topic: to the
    /// io_uring writer for the connections parked there waiting for exactly
    /// this message, to the subscriber's queue otherwise. Returns how many
    /// took it.
    pub fn dispatch(&self, message: &Arc<Message>) -> usize {
        let hub_topic = {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            match topics.get(&message.topic) {
                Some(t) => t.clone(),
                None => return 0,
            }
        };
        let span = crate::trace::deliver_span(message);
        let writer = self.writer.get().filter(|w| w.usable());
        // A writer still sending earlier messages is behind: this message
        // takes the queues, whose tasks batch what piles up.
        let take = writer.is_some_and(Writer::idle);
        // One job per way of framing the message (published or topic names).
        let mut jobs: [Option<Job>; 2] = [None, None];
        let mut delivered = 0;
        let subscribers = lock(&hub_topic.subscribers);
        for handle in subscribers.slots.iter().flatten() {
            if handle.overflowed() {
                continue;
            }
            if writer.is_some() {
                if let Some(connection) = &handle.connection {
                    if let Some(names) = connection.link().and_then(|l| l.claim(message.id, take)) {
                        jobs[names as usize]
                            .get_or_insert_with(|| Job::new(message, names))
                            .push(connection.clone());
                        delivered += 1;
                        continue;
                    }
                }
            }
            let size = message.data.len();
            if !handle.reserve(size) {
                tracing::debug!(topic = %message.topic, transport = handle.transport.as_str(), queued_bytes = handle.queued_bytes(), "Subscriber queue bytes full: cutting a slow consumer");
                handle.overflow(&self.metrics);
                continue;
            }
            match handle.tx.try_send(Delivery::Message(message.clone())) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    handle.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                    tracing::debug!(topic = %message.topic, transport = handle.transport.as_str(), "Subscriber queue full: cutting a slow consumer");
                    handle.overflow(&self.metrics);
                }
                // The stream is ending; it unsubscribes itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    handle.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                }
            }
        }
        crate::trace::delivered(&span, subscribers.count, delivered);
        drop(subscribers);
        if let Some(writer) = writer {
            for job in jobs.into_iter().flatten() {
                writer.submit(job);
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

    /// The server stops: every stream's connection is stopped (see
    /// [`ConnectionControl::stop`]), and so is any opened from now on.
    pub fn stop_connections(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let streams = lock(&self.streams);
        for handle in streams.slots.iter().flatten() {
            if let Some(connection) = &handle.connection {
                connection.stop();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Epoch, MessageId};

    fn message(topic: &Arc<str>, seq: u64, size: usize) -> Arc<Message> {
        Arc::new(Message::new(
            topic.clone(),
            MessageId {
                epoch: Epoch(1),
                seq,
            },
            None,
            bytes::Bytes::from(vec![b'x'; size]),
            0,
            None,
        ))
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_as_well_as_in_messages() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let topic: Arc<str> = Arc::from("t");
        let (handle, mut rx, _key) = hub.open_stream(Transport::Sse, 100, 10, None);
        let _sub = hub.subscribe(&topic, &handle);
        // A message above the byte capacity fits in an empty queue.
        assert_eq!(hub.dispatch(&message(&topic, 1, 25)), 1);
        assert_eq!(handle.queued_bytes(), 25);
        let Ok(Delivery::Message(taken)) = rx.try_recv() else {
            panic!("the message is queued");
        };
        handle.taken(&taken);
        assert_eq!(handle.queued_bytes(), 0);
        // 4 + 4 fit in 10 bytes; 4 more would not: cut, though 97 slots are free.
        assert_eq!(hub.dispatch(&message(&topic, 2, 4)), 1);
        assert_eq!(hub.dispatch(&message(&topic, 3, 4)), 1);
        assert!(!handle.overflowed());
        assert_eq!(hub.dispatch(&message(&topic, 4, 4)), 0);
        assert!(handle.overflowed());
        assert_eq!(handle.queued(), 2);
        assert_eq!(handle.queued_bytes(), 8);
        assert!(metrics
            .encode(0)
            .contains("sidestream_push_slow_consumer_disconnects_total{transport=\"sse\"} 1"));
    }

    #[test]
    fn a_queue_is_still_bounded_in_messages() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let topic: Arc<str> = Arc::from("t");
        let (handle, _rx, _key) = hub.open_stream(Transport::WebSocket, 2, 1 << 20, None);
        let _sub = hub.subscribe(&topic, &handle);
        for seq in 1..=2 {
            assert_eq!(hub.dispatch(&message(&topic, seq, 1)), 1);
        }
        assert_eq!(hub.dispatch(&message(&topic, 3, 1)), 0);
        assert!(handle.overflowed());
        // What was refused is not counted as queued.
        assert_eq!(handle.queued_bytes(), 2);
    }

    #[test]
    fn a_stop_reaches_open_streams_and_streams_opened_after_it() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let before = Arc::new(ConnectionControl::default());
        let _open = hub.open_stream(Transport::Sse, 4, 1024, Some(before.clone()));
        let without = hub.open_stream(Transport::Grpc, 4, 1024, None);
        hub.stop_connections();
        assert!(before.stopped());
        assert!(!before.was_cut(), "a stop is not a cut (no grace)");
        let after = Arc::new(ConnectionControl::default());
        let _late = hub.open_stream(Transport::Sse, 4, 1024, Some(after.clone()));
        assert!(after.stopped());
        drop(without);
    }

    #[test]
    fn a_registered_task_is_woken_by_a_cut_a_stop_and_a_hand_over() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let control = ConnectionControl::default();
        control.register(&cx);
        control.cut();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // A second cut changes nothing and wakes no one.
        control.register(&cx);
        control.cut();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        control.stop();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        control.register(&cx);
        control.changed();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        // Woken once per registration.
        control.changed();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
    }
}
