//! One subscribing stream, whatever its transport: registration with the hub,
//! history replay on resume, de-duplication between replay and live messages,
//! resets, drain and slow-consumer ends. Transports turn its [`Event`]s into
//! SSE, WebSocket or gRPC frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::broker::{resume_outcome, ResetReason};
use crate::error::PushError;
use crate::hub::{ConnectionControl, Delivery, StreamHandle, StreamKey, TopicKey};
use crate::message::{Epoch, Message, MessageId};
use crate::metrics::Transport;
use crate::state::AppState;
use crate::topics::MAX_TOPICS_PER_STREAM;

/// What a stream writes next.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message of topic `index`.
    Message { index: usize, message: Arc<Message> },
    /// Topic `index` missed messages; the stream continues from `position`.
    Reset {
        index: usize,
        reason: ResetReason,
        position: MessageId,
    },
    /// Topic `index`'s replay is over; live from here.
    Live { index: usize },
    /// The server drains; reconnect after `retry_ms`.
    Drain { retry_ms: u64 },
    /// The subscriber fell too far behind and is cut.
    SlowConsumer,
}

impl Event {
    /// The topic index the event belongs to.
    fn index(&self) -> Option<usize> {
        match self {
            Event::Message { index, .. } | Event::Reset { index, .. } | Event::Live { index } => {
                Some(*index)
            }
            Event::Drain { .. } | Event::SlowConsumer => None,
        }
    }

    /// Renumbers the event after topic `removed` left the stream.
    fn shift_down_after(&mut self, removed: usize) {
        match self {
            Event::Message { index, .. } | Event::Reset { index, .. } | Event::Live { index } => {
                if *index > removed {
                    *index -= 1;
                }
            }
            Event::Drain { .. } | Event::SlowConsumer => {}
        }
    }
}

/// Refuses a stream of more than [`MAX_TOPICS_PER_STREAM`] topics (checked
/// before any per-topic work, so a huge topic list costs nothing).
pub fn check_topic_count(count: usize) -> Result<(), PushError> {
    if count > MAX_TOPICS_PER_STREAM {
        return Err(PushError::BadRequest(format!(
            "a stream may subscribe to at most {MAX_TOPICS_PER_STREAM} topics"
        )));
    }
    Ok(())
}

/// One topic of a stream.
#[derive(Debug)]
pub struct Cursor {
    pub name: Arc<str>,
    /// The position of the last event written for this topic.
    pub position: MessageId,
    key: Option<TopicKey>,
}

/// A stream's subscriptions.
#[derive(Debug)]
pub struct Subscription {
    state: Arc<AppState>,
    handle: Arc<StreamHandle>,
    rx: mpsc::Receiver<Delivery>,
    stream_key: Option<StreamKey>,
    cursors: Vec<Cursor>,
    pending: VecDeque<Event>,
    finished: bool,
}

impl Subscription {
    /// A new stream (refused while draining).
    pub fn open(
        state: &Arc<AppState>,
        transport: Transport,
        connection: Option<Arc<ConnectionControl>>,
    ) -> Result<Subscription, PushError> {
        if state.hub.is_draining() {
            return Err(PushError::Draining {
                retry_ms: state.drain_retry_ms(),
            });
        }
        let (handle, rx, stream_key) =
            state
                .hub
                .open_stream(transport, state.settings.queue_capacity, connection);
        Ok(Subscription {
            state: state.clone(),
            handle,
            rx,
            stream_key: Some(stream_key),
            cursors: Vec::new(),
            pending: VecDeque::new(),
            finished: false,
        })
    }

    pub fn transport(&self) -> Transport {
        self.handle.transport
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The topics, in subscription order.
    pub fn cursors(&self) -> &[Cursor] {
        &self.cursors
    }

    /// Positions of every topic (for the SSE id).
    pub fn positions(&self) -> Vec<MessageId> {
        self.cursors.iter().map(|c| c.position).collect()
    }

    /// Deliveries waiting in the queue.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Subscribes to `topic` (auth is the caller's), replaying history after
    /// `from`. Returns the topic's index. Subscribing twice is a no-op.
    pub async fn add(&mut self, topic: &str, from: Option<MessageId>) -> Result<usize, PushError> {
        let settings = self.state.topics.get(topic)?;
        if let Some(index) = self.cursors.iter().position(|c| &*c.name == topic) {
            if self.cursors[index].key.is_some() {
                return Ok(index);
            }
        }
        let active = self.cursors.iter().filter(|c| c.key.is_some()).count();
        check_topic_count(active + 1)?;
        let name: Arc<str> = Arc::from(topic);
        let key = self.state.hub.subscribe(&name, &self.handle);
        let broker = self.state.broker.clone();
        let live = key.topic.ensure_live(|| broker.watch(&name)).await;
        let resume = match live {
            Ok(()) => self.state.broker.resume(&name, &settings, from).await,
            Err(error) => Err(error),
        };
        let resume = match resume {
            Ok(resume) => resume,
            Err(error) => {
                self.release(key);
                return Err(error.into());
            }
        };
        if from.is_some() {
            self.state.metrics.resume(resume_outcome(resume.reset));
        }
        let index = match self.cursors.iter().position(|c| &*c.name == topic) {
            Some(index) => index,
            None => {
                self.cursors.push(Cursor {
                    name: name.clone(),
                    position: resume.position,
                    key: None,
                });
                self.cursors.len() - 1
            }
        };
        let cursor = &mut self.cursors[index];
        cursor.key = Some(key);
        // Without a reset the replay continues the client's own position.
        cursor.position = match (from, resume.reset) {
            (Some(from), None) if from.epoch != Epoch(0) => from,
            _ => resume.position,
        };
        if let Some(reason) = resume.reset {
            tracing::info!(topic, reason = reason.as_str(), from = ?from.map(|f| f.to_string()), position = %resume.position, "Resume reset");
            self.pending.push_back(Event::Reset {
                index,
                reason,
                position: resume.position,
            });
        }
        for message in resume.messages {
            self.pending.push_back(Event::Message { index, message });
        }
        self.pending.push_back(Event::Live { index });
        Ok(index)
    }

    /// Unsubscribes from `topic`: its cursor and pending events go (the
    /// indexes of later topics shift down), so a client that subscribes to
    /// and leaves ever new topics does not grow the stream.
    pub fn remove(&mut self, topic: &str) -> bool {
        let Some(index) = self.cursors.iter().position(|c| &*c.name == topic) else {
            return false;
        };
        let cursor = self.cursors.remove(index);
        self.pending.retain(|event| event.index() != Some(index));
        for event in &mut self.pending {
            event.shift_down_after(index);
        }
        match cursor.key {
            Some(key) => {
                self.release(key);
                true
            }
            None => false,
        }
    }

    fn release(&self, key: TopicKey) {
        let broker = &self.state.broker;
        self.state
            .hub
            .unsubscribe(key, |topic| broker.unwatch(topic));
    }

    fn is_active(&self, index: usize) -> bool {
        self.cursors.get(index).is_some_and(|c| c.key.is_some())
    }

    /// The next event.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if self.handle.overflowed() {
                self.finished = true;
                tracing::info!(
                    transport = self.handle.transport.as_str(),
                    capacity = self.state.settings.queue_capacity,
                    "Slow consumer cut"
                );
                return Poll::Ready(Some(Event::SlowConsumer));
            }
            if let Some(event) = self.pending.pop_front() {
                match &event {
                    Event::Message { index, message } if self.is_active(*index) => {
                        let cursor = &mut self.cursors[*index];
                        if message.id.epoch == cursor.position.epoch
                            && message.id.seq <= cursor.position.seq
                        {
                            continue;
                        }
                        cursor.position = message.id;
                    }
                    Event::Reset {
                        index, position, ..
                    } if self.is_active(*index) => self.cursors[*index].position = *position,
                    Event::Live { index } if self.is_active(*index) => {}
                    Event::Message { .. } | Event::Reset { .. } | Event::Live { .. } => continue,
                    Event::Drain { .. } | Event::SlowConsumer => self.finished = true,
                }
                return Poll::Ready(Some(event));
            }
            if self.state.hub.is_draining() {
                self.finished = true;
                return Poll::Ready(Some(Event::Drain {
                    retry_ms: self.state.drain_retry_ms(),
                }));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Delivery::Message(message))) => {
                    let Some(index) = self.cursors.iter().position(|c| {
                        Arc::ptr_eq(&c.name, &message.topic) || c.name == message.topic
                    }) else {
                        continue;
                    };
                    if !self.is_active(index) {
                        continue;
                    }
                    let cursor = &mut self.cursors[index];
                    // A topic that had no message when subscribed: its first
                    // message, whatever its sequence, is the next one.
                    let position = if cursor.position.epoch == Epoch(0) {
                        MessageId {
                            epoch: message.id.epoch,
                            seq: message.id.seq.saturating_sub(1),
                        }
                    } else {
                        cursor.position
                    };
                    if message.id.epoch == position.epoch {
                        if message.id.seq <= position.seq {
                            continue; // already replayed from history
                        }
                        if message.id.seq == position.seq + 1 {
                            cursor.position = message.id;
                            return Poll::Ready(Some(Event::Message { index, message }));
                        }
                    }
                    // A hole or a new epoch while live: say so, then go on.
                    let reason = if message.id.epoch == position.epoch {
                        ResetReason::HistoryGap
                    } else {
                        ResetReason::EpochChanged
                    };
                    let reset_position = MessageId {
                        epoch: message.id.epoch,
                        seq: message.id.seq.saturating_sub(1),
                    };
                    tracing::warn!(topic = %message.topic, reason = reason.as_str(), from = %position, to = %message.id, "Live delivery skipped ids");
                    cursor.position = reset_position;
                    self.pending.push_back(Event::Message { index, message });
                    return Poll::Ready(Some(Event::Reset {
                        index,
                        reason,
                        position: reset_position,
                    }));
                }
                Poll::Ready(Some(Delivery::Drain)) => continue,
                Poll::Ready(None) => {
                    self.finished = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next event (async form).
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let keys: Vec<TopicKey> = self
            .cursors
            .iter_mut()
            .filter_map(|c| c.key.take())
            .collect();
        for key in keys {
            self.release(key);
        }
        if let Some(key) = self.stream_key.take() {
            self.state.hub.close_stream(key, self.handle.transport);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Draft;
    use crate::topics::TopicRegistry;
    use crate::{BrokerSpec, Settings};
    use bytes::Bytes;

    async fn state() -> Arc<AppState> {
        AppState::new(
            Settings::default(),
            TopicRegistry::new(Vec::new(), true),
            &BrokerSpec::Memory,
        )
        .await
        .unwrap()
    }

    async fn publish(state: &AppState, topic: &str, data: &'static str) -> MessageId {
        let draft = Draft {
            data: Bytes::from_static(data.as_bytes()),
            event: None,
            idempotency_key: None,
            traceparent: None,
        };
        crate::publish::publish(state, topic, None, draft)
            .await
            .unwrap()
            .id
    }

    #[tokio::test]
    async fn leaving_topics_does_not_grow_the_stream() {
        let state = state().await;
        let mut subscription = Subscription::open(&state, Transport::WebSocket, None).unwrap();
        for i in 0..(MAX_TOPICS_PER_STREAM * 4) {
            let topic = format!("t{i}");
            subscription.add(&topic, None).await.unwrap();
            assert!(subscription.remove(&topic));
        }
        assert_eq!(subscription.cursors().len(), 0);
    }

    #[tokio::test]
    async fn events_of_later_topics_follow_their_topic_after_a_leave() {
        let state = state().await;
        let a = publish(&state, "a", "from a").await;
        publish(&state, "b", "from b").await;
        let start = MessageId {
            epoch: a.epoch,
            seq: 0,
        };
        let mut subscription = Subscription::open(&state, Transport::WebSocket, None).unwrap();
        subscription.add("a", Some(start)).await.unwrap();
        subscription.add("b", Some(start)).await.unwrap();
        assert!(subscription.remove("a"));
        let Some(Event::Message { index, message }) = subscription.next_event().await else {
            panic!("the replay of b");
        };
        assert_eq!(&*subscription.cursors()[index].name, "b");
        assert_eq!(&message.data[..], b"from b");
        assert!(matches!(
            subscription.next_event().await,
            Some(Event::Live { index: 0 })
        ));
    }

    #[tokio::test]
    async fn a_live_message_of_another_epoch_at_sequence_zero_is_a_reset() {
        let state = state().await;
        let mut subscription = Subscription::open(&state, Transport::Sse, None).unwrap();
        subscription.add("a", None).await.unwrap();
        assert!(matches!(
            subscription.next_event().await,
            Some(Event::Live { .. })
        ));
        let odd = MessageId {
            epoch: Epoch(1),
            seq: 0,
        };
        let message = Message::new(Arc::from("a"), odd, None, Bytes::new(), 0, None);
        state.hub.dispatch(&Arc::new(message));
        assert!(matches!(
            subscription.next_event().await,
            Some(Event::Reset {
                reason: ResetReason::EpochChanged,
                ..
            })
        ));
    }
}
