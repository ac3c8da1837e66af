//! One subscribing stream, whatever its transport: registration with the hub,
//! history replay on resume, de-duplication between replay and live messages,
//! resets, drain and slow-consumer ends. Transports turn its [`Event`]s into
//! SSE, WebSocket or gRPC frames.
//!
//! Replay is paged: one topic at a time, one page of history at a time
//! ([`replay_page`]: at most the queue capacity, 256 messages or 1 MiB of the
//! topic's largest messages), the next page fetched only once the stream has
//! written the previous one. The stream subscribes to the hub before it
//! resumes, so every message after the resume's `head` reaches its bounded
//! queue live; replay goes up to `head`, live messages already replayed are
//! skipped by sequence, and a queue that overflows meanwhile cuts the stream
//! as a slow consumer. A stream thus holds at most one page besides its queue.
//!
//! What to deliver, skip or reset is decided in [`crate::resume`]; this
//! module does the I/O around it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream as _;

use sidestream_core::backoff::Backoff;
use sidestream_core::config::TopicSettings;
use tokio::sync::mpsc;

use crate::auth::Grant;
use crate::broker::BrokerError;
use crate::error::PushError;
use crate::hub::{ConnectionControl, Delivery, StreamHandle, StreamKey, TopicKey};
use crate::message::{Message, MessageId};
use crate::metrics::Transport;
use crate::resume::{
    already_delivered, live, replay_page, resume_outcome, start_position, Live, PageStep,
    ReplayWindow, ResetReason,
};
use crate::session::{due, Due, Held, TokenEnd, TokenEvent, TokenSession};
use crate::state::AppState;
use crate::topics::MAX_TOPICS_PER_STREAM;
use crate::trace::{CloseReason, SubscriptionSpan};

/// First wait before fetching a replay page again after a broker error.
const PAGE_RETRY_INITIAL: Duration = Duration::from_millis(250);
/// Longest wait between replay page attempts.
const PAGE_RETRY_MAX: Duration = Duration::from_secs(5);

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
    /// The stream's subscription token lapsed, or ended (and the stream
    /// with it); see [`crate::session`].
    Token(TokenEvent),
}

impl Event {
    /// The topic index the event belongs to.
    fn index(&self) -> Option<usize> {
        match self {
            Event::Message { index, .. } | Event::Reset { index, .. } | Event::Live { index } => {
                Some(*index)
            }
            Event::Drain { .. } | Event::SlowConsumer | Event::Token(_) => None,
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
            Event::Drain { .. } | Event::SlowConsumer | Event::Token(_) => {}
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
    /// History still to replay, fetched a page at a time.
    replay: Option<Replay>,
    /// The subscription token the topic is held under (topics with
    /// `subscribeAuth: token`).
    held: Option<Held>,
}

impl Cursor {
    /// Whether the stream is subscribed to the topic (not left).
    pub fn is_subscribed(&self) -> bool {
        self.key.is_some()
    }
}

/// The part of a topic's history a resume has not fetched yet.
#[derive(Debug, Clone)]
struct Replay {
    settings: Arc<TopicSettings>,
    window: ReplayWindow,
}

type PageFuture =
    Pin<Box<dyn Future<Output = Result<Vec<Arc<Message>>, BrokerError>> + Send + 'static>>;

/// A replay page being fetched. (The mutex, never contended, makes the
/// stream `Sync`: transports hold `&Subscription` across awaits.)
struct PageFetch {
    topic: Arc<str>,
    future: std::sync::Mutex<PageFuture>,
}

impl std::fmt::Debug for PageFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFetch")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
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
    /// Messages in `pending` (a replay page; a live message behind a reset).
    held: usize,
    /// The most `held` has been (see [`Subscription::held_peak`]).
    held_peak: usize,
    fetch: Option<PageFetch>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Replay page retries after broker errors: jittered, so streams that
    /// replay through the same Redis blip do not retry in step.
    retry_backoff: Backoff,
    finished: bool,
    /// Token expiry and revocation; `None` until a topic holds a token.
    tokens: Option<Box<TokenSession>>,
    /// The stream's life as a span (exported with OTLP only).
    span: SubscriptionSpan,
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
        let (handle, rx, stream_key) = state.hub.open_stream(
            transport,
            state.settings.queue_capacity,
            state.settings.queue_bytes,
            connection,
        );
        Ok(Subscription {
            state: state.clone(),
            handle,
            rx,
            stream_key: Some(stream_key),
            cursors: Vec::new(),
            pending: VecDeque::new(),
            held: 0,
            held_peak: 0,
            fetch: None,
            retry: None,
            retry_backoff: Backoff::new(PAGE_RETRY_INITIAL, PAGE_RETRY_MAX),
            finished: false,
            tokens: None,
            span: SubscriptionSpan::open(transport),
        })
    }

    pub fn transport(&self) -> Transport {
        self.handle.transport
    }

    /// Room for `topics` more topics, exactly: the stream keeps its cursors
    /// for its whole life, so a stream that knows its topics up front (SSE,
    /// gRPC) holds no spare ones.
    pub fn reserve_topics(&mut self, topics: usize) {
        self.cursors.reserve_exact(topics);
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

    /// The position of the stream's one topic when nothing but that topic's
    /// next live message can come next: one topic, live (no replay, nothing
    /// pending), no token to watch, an empty queue, not ending. Such a
    /// stream's connection may be parked on the io_uring writer
    /// ([`crate::uring`]).
    pub fn idle_live(&self) -> Option<MessageId> {
        let [cursor] = self.cursors.as_slice() else {
            return None;
        };
        let idle = cursor.key.is_some()
            && !self.replaying()
            && self.pending.is_empty()
            && self.retry.is_none()
            && !self.finished
            && self.tokens.is_none()
            && self.rx.is_empty()
            && !self.handle.overflowed()
            && !self.state.hub.is_draining()
            && cursor.position.epoch != crate::message::Epoch(0);
        idle.then_some(cursor.position)
    }

    /// The io_uring writer delivered the stream's one topic up to `last`
    /// (see [`Subscription::idle_live`]).
    pub fn delivered_directly(&mut self, last: MessageId) {
        let [cursor] = self.cursors.as_mut_slice() else {
            return;
        };
        if last.epoch == cursor.position.epoch && last.seq > cursor.position.seq {
            self.span.delivered(last.seq - cursor.position.seq);
            cursor.position = last;
        }
    }

    /// The most messages this stream has held outside its queue at once
    /// (history pages of its resumes): at most one page.
    pub fn held_peak(&self) -> usize {
        self.held_peak
    }

    /// Whether a replay is under way (its pages are fetched one at a time,
    /// one topic at a time).
    fn replaying(&self) -> bool {
        self.held > 0 || self.fetch.is_some() || self.cursors.iter().any(|c| c.replay.is_some())
    }

    fn push_pending(&mut self, event: Event) {
        if matches!(event, Event::Message { .. }) {
            self.held += 1;
            self.held_peak = self.held_peak.max(self.held);
            self.state.metrics.replay_held(1);
        }
        self.pending.push_back(event);
    }

    fn pop_pending(&mut self) -> Option<Event> {
        let event = self.pending.pop_front()?;
        if matches!(event, Event::Message { .. }) {
            self.held -= 1;
            self.state.metrics.replay_held(-1);
        }
        if self.pending.is_empty() {
            // Pending events come at the start and in replay pages; a live
            // stream (most of its life) keeps no buffer for them.
            self.pending = VecDeque::new();
        }
        Some(event)
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
        // One topic replays at a time: a topic added meanwhile gets its plan
        // (and reset) now and its history when its turn comes.
        let limit = if from.is_some() && !self.replaying() {
            replay_page(&settings, self.state.settings.queue_capacity)
        } else {
            0
        };
        let resume = match live {
            Ok(()) => {
                self.state
                    .broker
                    .resume(&name, &settings, from, limit)
                    .await
            }
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
                    replay: None,
                    held: None,
                });
                self.cursors.len() - 1
            }
        };
        let cursor = &mut self.cursors[index];
        cursor.key = Some(key);
        cursor.position = start_position(from, resume.reset, resume.position);
        if let Some(reason) = resume.reset {
            tracing::info!(topic, reason = reason.as_str(), from = ?from.map(|f| f.to_string()), position = %resume.position, "Resume reset");
            self.push_pending(Event::Reset {
                index,
                reason,
                position: resume.position,
            });
        }
        let rest = ReplayWindow::after_resume(
            from.is_some(),
            resume.position,
            resume.messages.iter().map(|m| m.id),
            resume.head,
        );
        for message in resume.messages {
            self.push_pending(Event::Message { index, message });
        }
        match rest {
            Some(window) => self.cursors[index].replay = Some(Replay { settings, window }),
            None => self.push_pending(Event::Live { index }),
        }
        Ok(index)
    }

    /// [`Subscription::add`] for a topic authorised with `grant` (from
    /// [`crate::auth::Auth::authorize_subscribe`]): the stream ends when the
    /// token does, or when the topic's settings revoke it.
    pub async fn add_held(
        &mut self,
        topic: &str,
        from: Option<MessageId>,
        grant: Option<Grant>,
    ) -> Result<usize, PushError> {
        let index = self.add(topic, from).await?;
        self.hold(index, grant);
        Ok(index)
    }

    /// Holds topic `index` under `grant` from now on (a renewed token).
    pub fn hold(&mut self, index: usize, grant: Option<Grant>) {
        let Some(cursor) = self.cursors.get_mut(index) else {
            return;
        };
        cursor.held = grant.map(|grant| {
            Held::new(
                grant,
                tokio::time::Instant::now(),
                crate::message::unix_nanos(),
            )
        });
        if cursor.held.is_some() && self.tokens.is_none() {
            self.tokens = Some(Box::new(TokenSession::new(self.state.topics.changes())));
        }
        self.update_token_end();
    }

    /// The earliest `exp` (Unix seconds) of the tokens the stream holds.
    pub fn token_exp(&self) -> Option<u64> {
        self.tokens.as_ref()?.end.map(|(_, exp)| exp)
    }

    fn update_token_end(&mut self) {
        let end = self
            .cursors
            .iter()
            .filter(|c| c.key.is_some())
            .filter_map(|c| c.held.as_ref())
            .map(|held| (held.end, held.grant.exp))
            .min();
        if let Some(tokens) = &mut self.tokens {
            tokens.end = end;
        }
    }

    /// Why the current topic settings refuse a token the stream holds.
    fn revoked(&self) -> Option<String> {
        self.cursors.iter().find_map(|cursor| {
            let held = cursor.held.as_ref().filter(|_| cursor.key.is_some())?;
            let settings = self.state.topics.get(&cursor.name).ok()?;
            crate::auth::revocation(&cursor.name, &settings, &held.grant)
        })
    }

    /// Token expiry and revocation: one timer, and the settings' changes.
    fn poll_tokens(&mut self, cx: &mut Context<'_>) -> Option<TokenEvent> {
        let tokens = self.tokens.as_mut()?;
        let mut changed = false;
        while let Poll::Ready(Some(_)) = Pin::new(&mut tokens.changes).poll_next(cx) {
            changed = true;
        }
        if changed {
            if let Some(why) = self.revoked() {
                tracing::info!(transport = self.handle.transport.as_str(), reason = %why, "Subscription token revoked: ending the stream");
                self.state
                    .metrics
                    .token_stream_end(self.handle.transport, TokenEnd::Revoked.as_str());
                return Some(TokenEvent::Ended(TokenEnd::Revoked));
            }
        }
        let grace = if self.handle.transport == Transport::WebSocket {
            self.state.settings.token_refresh_grace
        } else {
            Duration::ZERO
        };
        let tokens = self.tokens.as_mut()?;
        let end = tokens.end;
        let mut now = tokio::time::Instant::now();
        loop {
            match due(now, end.map(|(at, _)| at), grace, tokens.warned) {
                Due::Never => return None,
                Due::At(at) => {
                    if tokens.timer.deadline() != at {
                        tokens.timer.as_mut().reset(at);
                    }
                    if tokens.timer.as_mut().poll(cx).is_pending() {
                        return None;
                    }
                    now = now.max(at);
                }
                Due::Warn { close_at } => {
                    tokens.warned = end.map(|(at, _)| at);
                    let exp = end.map(|(_, exp)| exp).unwrap_or_default();
                    return Some(TokenEvent::Expiring {
                        exp,
                        close_in: close_at.saturating_duration_since(now),
                    });
                }
                Due::Expired => {
                    tracing::info!(
                        transport = self.handle.transport.as_str(),
                        exp = end.map(|(_, exp)| exp),
                        "Subscription token expired: ending the stream"
                    );
                    self.state
                        .metrics
                        .token_stream_end(self.handle.transport, TokenEnd::Expired.as_str());
                    return Some(TokenEvent::Ended(TokenEnd::Expired));
                }
            }
        }
    }

    /// Unsubscribes from `topic`: its cursor and pending events go (the
    /// indexes of later topics shift down), so a client that subscribes to
    /// and leaves ever new topics does not grow the stream.
    pub fn remove(&mut self, topic: &str) -> bool {
        let Some(index) = self.cursors.iter().position(|c| &*c.name == topic) else {
            return false;
        };
        let cursor = self.cursors.remove(index);
        if self
            .fetch
            .as_ref()
            .is_some_and(|fetch| fetch.topic == cursor.name)
        {
            self.fetch = None;
        }
        let mut dropped = 0;
        self.pending.retain(|event| {
            let keep = event.index() != Some(index);
            if !keep && matches!(event, Event::Message { .. }) {
                dropped += 1;
            }
            keep
        });
        self.held -= dropped;
        self.state
            .metrics
            .replay_held(-i64::try_from(dropped).unwrap_or(i64::MAX));
        for event in &mut self.pending {
            event.shift_down_after(index);
        }
        self.update_token_end();
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

    /// Drives the replay: fetches the next page of the first topic that has
    /// history left, once the previous page is written. `None` when no
    /// replay is under way; `Ready` when events were queued.
    fn poll_replay(&mut self, cx: &mut Context<'_>) -> Option<Poll<()>> {
        loop {
            if let Some(sleep) = &mut self.retry {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Some(Poll::Pending);
                }
                self.retry = None;
            }
            if self.fetch.is_none() {
                let cursor = self
                    .cursors
                    .iter()
                    .find(|c| c.replay.is_some() && c.key.is_some())?;
                let replay = cursor.replay.clone()?;
                let topic = cursor.name.clone();
                let broker = self.state.broker.clone();
                let limit = replay_page(&replay.settings, self.state.settings.queue_capacity);
                let name = topic.clone();
                let future = async move {
                    broker
                        .history(
                            &name,
                            &replay.settings,
                            replay.window.epoch,
                            replay.window.after,
                            limit,
                        )
                        .await
                };
                self.fetch = Some(PageFetch {
                    topic,
                    future: std::sync::Mutex::new(Box::pin(future)),
                });
            }
            let fetch = self.fetch.as_mut()?;
            let future = fetch.future.get_mut().unwrap_or_else(|p| p.into_inner());
            let Poll::Ready(result) = future.as_mut().poll(cx) else {
                return Some(Poll::Pending);
            };
            let topic = fetch.topic.clone();
            self.fetch = None;
            let Some(index) = self
                .cursors
                .iter()
                .position(|c| c.name == topic && c.replay.is_some())
            else {
                return Some(Poll::Ready(()));
            };
            match result {
                Ok(page) => {
                    self.retry_backoff.reset();
                    self.take_page(index, page);
                    return Some(Poll::Ready(()));
                }
                Err(error) => {
                    let delay = self.retry_backoff.next_delay(rand::random::<f64>());
                    tracing::warn!(%error, topic = %topic, retry_ms = delay.as_millis() as u64, "Cannot read a replay page; retrying");
                    self.retry = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }

    /// Queues a replay page of topic `index`: its messages, a reset for a
    /// hole (history trimmed while replaying), and the end of the replay at
    /// its `until` or when history has nothing more.
    fn take_page(&mut self, index: usize, page: Vec<Arc<Message>>) {
        let Some(replay) = self.cursors[index].replay.take() else {
            return;
        };
        let ids: Vec<MessageId> = page.iter().map(|m| m.id).collect();
        let taken = replay.window.take_page(&ids);
        let mut page: Vec<Option<Arc<Message>>> = page.into_iter().map(Some).collect();
        for step in taken.steps {
            match step {
                PageStep::Deliver(at) => {
                    if let Some(message) = page.get_mut(at).and_then(Option::take) {
                        self.push_pending(Event::Message { index, message });
                    }
                }
                PageStep::Reset { position } => {
                    tracing::warn!(topic = %self.cursors[index].name, after = replay.window.after, until = replay.window.until, %position, "History trimmed during a replay");
                    self.push_pending(Event::Reset {
                        index,
                        reason: ResetReason::HistoryGap,
                        position,
                    });
                }
            }
        }
        match taken.rest {
            Some(window) => {
                self.cursors[index].replay = Some(Replay {
                    settings: replay.settings,
                    window,
                })
            }
            None => self.push_pending(Event::Live { index }),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let event = self.poll_next_event(cx);
        if let Poll::Ready(event) = &event {
            self.span.observe(event.as_ref());
        }
        event
    }

    /// Why the stream ends, for its span, when the transport ends it (the
    /// first reason given is kept).
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        self.span.close_reason(reason);
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if self.handle.overflowed() {
                self.finished = true;
                tracing::info!(
                    transport = self.handle.transport.as_str(),
                    capacity = self.state.settings.queue_capacity,
                    queue_bytes = self.state.settings.queue_bytes,
                    "Slow consumer cut"
                );
                return Poll::Ready(Some(Event::SlowConsumer));
            }
            if let Some(token) = self.poll_tokens(cx) {
                if matches!(token, TokenEvent::Ended(_)) {
                    self.finished = true;
                }
                return Poll::Ready(Some(Event::Token(token)));
            }
            if let Some(event) = self.pop_pending() {
                match &event {
                    Event::Message { index, message } if self.is_active(*index) => {
                        let cursor = &mut self.cursors[*index];
                        if already_delivered(cursor.position, message.id) {
                            continue;
                        }
                        cursor.position = message.id;
                    }
                    Event::Reset {
                        index, position, ..
                    } if self.is_active(*index) => self.cursors[*index].position = *position,
                    Event::Live { index } if self.is_active(*index) => {}
                    Event::Message { .. } | Event::Reset { .. } | Event::Live { .. } => continue,
                    Event::Drain { .. }
                    | Event::SlowConsumer
                    | Event::Token(TokenEvent::Ended(_)) => self.finished = true,
                    Event::Token(TokenEvent::Expiring { .. }) => {}
                }
                return Poll::Ready(Some(event));
            }
            if self.state.hub.is_draining() {
                self.finished = true;
                return Poll::Ready(Some(Event::Drain {
                    retry_ms: self.state.drain_retry_ms(),
                }));
            }
            // Live messages wait in the queue until the replay is over.
            match self.poll_replay(cx) {
                Some(Poll::Ready(())) => continue,
                Some(Poll::Pending) => return Poll::Pending,
                None => {}
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Delivery::Message(message))) => {
                    self.handle.taken(&message);
                    let Some(index) = self.cursors.iter().position(|c| {
                        Arc::ptr_eq(&c.name, &message.topic) || c.name == message.topic
                    }) else {
                        continue;
                    };
                    if !self.is_active(index) {
                        continue;
                    }
                    let cursor = &mut self.cursors[index];
                    match live(cursor.position, message.id) {
                        Live::Skip => continue,
                        Live::Deliver => {
                            cursor.position = message.id;
                            return Poll::Ready(Some(Event::Message { index, message }));
                        }
                        Live::ResetThenDeliver { reason, position } => {
                            tracing::warn!(topic = %message.topic, reason = reason.as_str(), from = %cursor.position, to = %message.id, "Live delivery skipped ids");
                            cursor.position = position;
                            self.push_pending(Event::Message { index, message });
                            return Poll::Ready(Some(Event::Reset {
                                index,
                                reason,
                                position,
                            }));
                        }
                    }
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
        self.span.close(self.cursors.len());
        self.state
            .metrics
            .replay_held(-i64::try_from(self.held).unwrap_or(i64::MAX));
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
    use crate::message::{Draft, Epoch};
    use crate::topics::TopicRegistry;
    use crate::{BrokerSpec, Settings};
    use bytes::Bytes;
    use std::time::Duration;

    async fn state() -> Arc<AppState> {
        state_with(1024, Vec::new()).await
    }

    async fn state_with(queue_capacity: usize, topics: Vec<TopicSettings>) -> Arc<AppState> {
        AppState::new(
            Settings {
                queue_capacity,
                ..Settings::default()
            },
            TopicRegistry::new(topics, true),
            &BrokerSpec::Memory,
        )
        .await
        .unwrap()
    }

    /// Reads events until topic `index` is live and `count` messages came;
    /// returns (topic index, seq) of every message and the resets.
    async fn read(subscription: &mut Subscription, count: usize) -> Vec<(usize, u64)> {
        let mut got = Vec::new();
        while got.len() < count {
            let event = tokio::time::timeout(Duration::from_secs(5), subscription.next_event())
                .await
                .expect("an event in time")
                .expect("the stream goes on");
            match event {
                Event::Message { index, message } => got.push((index, message.id.seq)),
                Event::Live { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                subscription.held_peak() <= 4,
                "held {} messages",
                subscription.held_peak()
            );
        }
        got
    }

    #[tokio::test]
    async fn a_resume_over_a_long_history_is_replayed_a_page_at_a_time() {
        // Queue of 4: pages of 4, so the stream never holds more than 4
        // messages besides its queue, whatever the history.
        let state = state_with(4, Vec::new()).await;
        let first = publish(&state, "big", "m").await;
        for _ in 1..300 {
            publish(&state, "big", "m").await;
        }
        let start = MessageId {
            epoch: first.epoch,
            seq: 0,
        };
        let mut subscription = Subscription::open(&state, Transport::Sse, None).unwrap();
        subscription.add("big", Some(start)).await.unwrap();
        assert!(subscription.held_peak() <= 4);
        let mut got = read(&mut subscription, 100).await;
        // Live messages published mid-replay wait in the queue, after it.
        for _ in 0..3 {
            publish(&state, "big", "live").await;
        }
        assert!(state.metrics.replay_held_now() <= 4);
        got.extend(read(&mut subscription, 203).await);
        let expected: Vec<(usize, u64)> = (1..=303).map(|seq| (0, seq)).collect();
        assert_eq!(got, expected);
        assert_eq!(subscription.held_peak(), 4);
        assert_eq!(state.metrics.replay_held_now(), 0);
        drop(subscription);
        assert_eq!(state.metrics.replay_held_now(), 0);
    }

    #[tokio::test]
    async fn several_topics_are_replayed_one_page_at_a_time() {
        let state = state_with(4, Vec::new()).await;
        let mut epoch = Epoch(0);
        for topic in ["a", "b", "c"] {
            for _ in 0..50 {
                epoch = publish(&state, topic, "m").await.epoch;
            }
        }
        let start = MessageId { epoch, seq: 0 };
        let mut subscription = Subscription::open(&state, Transport::Grpc, None).unwrap();
        for topic in ["a", "b", "c"] {
            subscription.add(topic, Some(start)).await.unwrap();
            assert!(subscription.held_peak() <= 4);
        }
        let got = read(&mut subscription, 150).await;
        for index in 0..3 {
            let seqs: Vec<u64> = got
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, seq)| *seq)
                .collect();
            assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "topic {index}");
        }
    }

    #[tokio::test]
    async fn history_trimmed_during_a_replay_is_a_reset_and_nothing_repeats() {
        let mut settings = TopicSettings::defaults("t");
        settings.history_size = 20;
        // Pages of 16 (1 MiB of 64 KiB messages), a queue of 64.
        let state = state_with(64, vec![settings]).await;
        let mut epoch = Epoch(0);
        for _ in 0..20 {
            epoch = publish(&state, "t", "m").await.epoch;
        }
        let mut subscription = Subscription::open(&state, Transport::WebSocket, None).unwrap();
        subscription
            .add("t", Some(MessageId { epoch, seq: 0 }))
            .await
            .unwrap();
        // 1..=16 are held; 17..=20 are trimmed before their page is read.
        for _ in 0..30 {
            publish(&state, "t", "m").await;
        }
        let mut seqs = Vec::new();
        let mut resets = Vec::new();
        while seqs.last() != Some(&50) {
            match subscription.next_event().await.expect("an event") {
                Event::Message { message, .. } => seqs.push(message.id.seq),
                Event::Reset {
                    reason, position, ..
                } => resets.push((reason, position.seq, seqs.len())),
                Event::Live { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let expected: Vec<u64> = (1..=16).chain(31..=50).collect();
        assert_eq!(seqs, expected);
        assert_eq!(resets, [(ResetReason::HistoryGap, 30, 16)]);
        assert!(subscription.held_peak() <= 16);
    }

    /// A grant whose `exp` is `secs` from now (whole seconds, as JWTs have).
    fn grant(sub: &str, secs: u64) -> Grant {
        Grant {
            sub: Some(sub.into()),
            jti: None,
            exp: crate::message::unix_nanos() / 1_000_000_000 + secs,
        }
    }

    fn token_topic(name: &str) -> TopicSettings {
        let mut settings = TopicSettings::defaults(name);
        settings.subscribe_auth = sidestream_core::config::SubscribeAuth::Token;
        settings
    }

    async fn next_token_event(subscription: &mut Subscription) -> TokenEvent {
        loop {
            match subscription.next_event().await.expect("an event") {
                Event::Token(token) => return token,
                Event::Live { .. } | Event::Message { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_sse_stream_ends_when_its_token_does() {
        let state = state_with(16, vec![token_topic("t")]).await;
        let mut subscription = Subscription::open(&state, Transport::Sse, None).unwrap();
        let start = tokio::time::Instant::now();
        subscription
            .add_held("t", None, Some(grant("alice", 10)))
            .await
            .unwrap();
        assert_eq!(
            next_token_event(&mut subscription).await,
            TokenEvent::Ended(TokenEnd::Expired)
        );
        // `exp` (9-10 s away in whole seconds) plus the 5 s leeway.
        let lived = start.elapsed();
        assert!(
            lived > Duration::from_secs(13) && lived <= Duration::from_secs(15),
            "{lived:?}"
        );
        assert!(subscription.next_event().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_is_warned_renews_and_ends_after_the_grace_without_renewal() {
        let state = state_with(16, vec![token_topic("t")]).await;
        let mut subscription = Subscription::open(&state, Transport::WebSocket, None).unwrap();
        let index = subscription
            .add_held("t", None, Some(grant("alice", 10)))
            .await
            .unwrap();
        let TokenEvent::Expiring { close_in, .. } = next_token_event(&mut subscription).await
        else {
            panic!("a warning first");
        };
        // The grace (less the timer's millisecond).
        let grace = state.settings.token_refresh_grace;
        assert!(
            close_in <= grace && close_in + Duration::from_millis(5) > grace,
            "{close_in:?}"
        );
        // Messages keep coming during the grace.
        publish(&state, "t", "in the grace").await;
        let Some(Event::Message { message, .. }) = subscription.next_event().await else {
            panic!("the message");
        };
        assert_eq!(&message.data[..], b"in the grace");
        // A renewal within the grace: the stream goes on past the old close.
        let renewed = grant("alice", 60);
        subscription.hold(index, Some(renewed.clone()));
        assert_eq!(subscription.token_exp(), Some(renewed.exp));
        let renewed_at = tokio::time::Instant::now();
        let TokenEvent::Expiring { exp, .. } = next_token_event(&mut subscription).await else {
            panic!("a warning for the new token");
        };
        assert_eq!(exp, renewed.exp);
        assert!(renewed_at.elapsed() > Duration::from_secs(60));
        assert_eq!(
            next_token_event(&mut subscription).await,
            TokenEvent::Ended(TokenEnd::Expired)
        );
        assert!(renewed_at.elapsed() >= Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_ends_a_matching_stream_as_soon_as_the_settings_arrive() {
        let state = state_with(16, vec![token_topic("t"), token_topic("u")]).await;
        let mut mallory = Subscription::open(&state, Transport::Grpc, None).unwrap();
        mallory
            .add_held("t", None, Some(grant("mallory", 3600)))
            .await
            .unwrap();
        let mut alice = Subscription::open(&state, Transport::Sse, None).unwrap();
        alice
            .add_held("t", None, Some(grant("alice", 3600)))
            .await
            .unwrap();
        // A stream of another topic is not concerned by t's list.
        let mut elsewhere = Subscription::open(&state, Transport::WebSocket, None).unwrap();
        elsewhere
            .add_held("u", None, Some(grant("mallory", 3600)))
            .await
            .unwrap();
        for subscription in [&mut mallory, &mut alice, &mut elsewhere] {
            assert!(matches!(
                subscription.next_event().await,
                Some(Event::Live { .. })
            ));
        }
        let mut revoking = token_topic("t");
        revoking.revoked_subjects.insert("mallory".into());
        state
            .topics
            .apply_control_plane([revoking, token_topic("u")]);
        // The clock is paused: the stream ends without a moment passing.
        let event = tokio::time::timeout(Duration::from_secs(1), mallory.next_event())
            .await
            .expect("within a second");
        assert!(matches!(
            event,
            Some(Event::Token(TokenEvent::Ended(TokenEnd::Revoked)))
        ));
        assert!(mallory.next_event().await.is_none());
        publish(&state, "t", "for alice").await;
        publish(&state, "u", "for mallory elsewhere").await;
        assert!(matches!(
            alice.next_event().await,
            Some(Event::Message { .. })
        ));
        assert!(matches!(
            elsewhere.next_event().await,
            Some(Event::Message { .. })
        ));
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
