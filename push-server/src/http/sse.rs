//! `GET /v1/events?topic=a&topic=b` — Server-Sent Events.
//!
//! On connect the stream writes `retry: <ms>`; then one event per message
//! (`id`, `event` when the message has one, `data`), `sidestream.reset`
//! events (data `{"topic", "reason", "position"}`) when a resume missed
//! messages, heartbeat comments, and at the end `sidestream.drain` (with a
//! jittered `retry`) or `sidestream.disconnect` (`{"reason":"slow-consumer"}`),
//! or `sidestream.token-expired` (`{"reason":"expired"|"revoked","lastEventId"}`,
//! with the `id` of the last event) when the stream's subscription token ends.
//! `Last-Event-ID` (header, or the `lastEventId` query parameter) resumes every
//! topic; see [`crate::event_id`] for the id format.
//!
//! `eventName=topic` names each message event by its topic (`<topic>`, or
//! `<topic>:<event>` when the publisher named the event), so a browser
//! `EventSource` on several topics listens per topic; control events keep
//! their `sidestream.*` names. Without it (or with `eventName=published`) the
//! output is the publisher's event name, as it always was.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header as h, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tokio::time::Interval;
use tracing::Instrument;

use super::{header, request_span, token, QueryParams};
use crate::error::PushError;
use crate::event_id;
use crate::hub::ConnectionControl;
use crate::message::SseEventNames;
use crate::metrics::Transport;
use crate::session::TokenEvent;
use crate::state::AppState;
use crate::subscription::{Event, Subscription};

const HEARTBEAT: &[u8] = b":\n\n";

/// The event ending a stream whose subscription token expired or was revoked.
pub const TOKEN_EXPIRED_EVENT: &str = "sidestream.token-expired";

/// The query parameter choosing what `event:` holds.
pub const EVENT_NAME_PARAM: &str = "eventName";

/// Topics that cannot name events: the server's own control events and the
/// events an `EventSource` dispatches itself.
fn reserved_event_name(topic: &str) -> bool {
    topic.starts_with("sidestream.") || topic == "open" || topic == "error"
}

/// Reads `eventName` for a stream of `topics`.
fn event_names(query: &QueryParams, topics: &[&str]) -> Result<SseEventNames, PushError> {
    let mut values = query.all(EVENT_NAME_PARAM);
    let names = match values.next() {
        None | Some("published") => SseEventNames::Published,
        Some("topic") => SseEventNames::Topic,
        Some(other) => {
            return Err(PushError::BadRequest(format!(
                "{EVENT_NAME_PARAM} '{}' is not 'published' or 'topic'",
                other.chars().take(80).collect::<String>()
            )))
        }
    };
    if values.next().is_some() {
        return Err(PushError::BadRequest(format!(
            "{EVENT_NAME_PARAM} is given more than once"
        )));
    }
    if names == SseEventNames::Topic {
        if let Some(topic) = topics.iter().find(|t| reserved_event_name(t)) {
            return Err(PushError::BadRequest(format!(
                "topic '{topic}' cannot name events ('sidestream.*', 'open' and 'error' are reserved); subscribe to it without {EVENT_NAME_PARAM}=topic"
            )));
        }
    }
    Ok(names)
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    connection: Option<Extension<Arc<ConnectionControl>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, PushError> {
    let query = QueryParams::parse(query.as_deref());
    let body = open(&state, connection.map(|c| c.0), &query, &headers).await?;
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        h::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(h::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // EventSource pages served from another origin may listen (auth is by token, not cookie).
    headers.insert(
        h::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(response)
}

/// Authorises and subscribes an SSE request; the body streams its events.
/// (Shared by the axum route and the direct HTTP/1.1 path in [`crate::server`].)
pub async fn open(
    state: &Arc<AppState>,
    connection: Option<Arc<ConnectionControl>>,
    query: &QueryParams,
    headers: &HeaderMap,
) -> Result<SseBody, PushError> {
    let (span, _) = request_span("sse", headers);
    let subscription = subscribe(state, connection, query, headers)
        .instrument(span.clone())
        .await;
    let (subscription, names) = match subscription {
        Ok(subscribed) => subscribed,
        Err(error) => {
            span.in_scope(|| tracing::info!(error = %error, "SSE subscribe refused"));
            return Err(error);
        }
    };
    let retry = u64::try_from(state.settings.retry.as_millis()).unwrap_or(u64::MAX);
    Ok(SseBody::new(
        subscription,
        names,
        state.settings.heartbeat,
        retry,
    ))
}

async fn subscribe(
    state: &Arc<AppState>,
    connection: Option<Arc<ConnectionControl>>,
    query: &QueryParams,
    headers: &HeaderMap,
) -> Result<(Subscription, SseEventNames), PushError> {
    let topics: Vec<&str> = query.all("topic").collect();
    if topics.is_empty() {
        return Err(PushError::BadRequest(
            "name at least one topic: /v1/events?topic=a&topic=b".into(),
        ));
    }
    crate::subscription::check_topic_count(topics.len())?;
    for (i, topic) in topics.iter().enumerate() {
        if topics[..i].contains(topic) {
            return Err(PushError::BadRequest(format!(
                "topic '{topic}' is listed twice"
            )));
        }
    }
    let names = event_names(query, &topics)?;
    let bearer = token(headers, query);
    let mut grants = Vec::with_capacity(topics.len());
    for topic in &topics {
        let settings = state.topics.get(topic)?;
        grants.push(state.auth.authorize_subscribe(topic, &settings, bearer)?);
    }
    let last_event_id = header(headers, "last-event-id")
        .or_else(|| query.first("lastEventId"))
        .filter(|id| !id.is_empty());
    let positions = match last_event_id {
        Some(id) => Some(event_id::decode(id, topics.len())?),
        None => None,
    };
    let mut subscription = Subscription::open(state, Transport::Sse, connection)?;
    subscription.reserve_topics(topics.len());
    for (i, (topic, grant)) in topics.iter().zip(grants).enumerate() {
        subscription
            .add_held(topic, positions.as_ref().map(|p| p[i]), grant)
            .await?;
    }
    tracing::debug!(topics = ?topics, resumed = last_event_id.is_some(), ?names, "SSE subscribed");
    Ok((subscription, names))
}

/// The response body: frames straight from the subscription, no intermediate stream.
pub struct SseBody {
    subscription: Subscription,
    names: SseEventNames,
    heartbeat: Interval,
    /// The second half of an event (multi-topic streams write the id line first).
    next: Option<Bytes>,
    start: Option<Bytes>,
    done: bool,
    /// A heartbeat tick was taken while the connection was parked (see
    /// [`SseBody::poll_heartbeat`]); the next frame is the heartbeat.
    heartbeat_due: bool,
    /// Something other than a heartbeat was written since the last tick:
    /// the connection is visibly alive, and the tick passes silently.
    active: bool,
}

impl SseBody {
    fn new(
        subscription: Subscription,
        names: SseEventNames,
        heartbeat: Duration,
        retry_ms: u64,
    ) -> SseBody {
        SseBody {
            subscription,
            names,
            heartbeat: crate::heartbeat::ticks(heartbeat),
            next: None,
            start: Some(Bytes::from(format!("retry: {retry_ms}\n\n"))),
            done: false,
            heartbeat_due: false,
            active: false,
        }
    }

    /// The position of the stream's one topic when its next frame can only
    /// be that topic's next message, framed as [`SseBody::names`] says (see
    /// [`Subscription::idle_live`]).
    pub(crate) fn idle_live(&self) -> Option<crate::message::MessageId> {
        if self.start.is_some() || self.next.is_some() || self.done || self.heartbeat_due {
            return None;
        }
        self.subscription.idle_live()
    }

    pub(crate) fn state(&self) -> &Arc<AppState> {
        self.subscription.state()
    }

    /// How message events are named.
    pub(crate) fn names(&self) -> SseEventNames {
        self.names
    }

    /// Deliveries waiting in the stream's queue.
    pub(crate) fn queued(&self) -> usize {
        self.subscription.queued()
    }

    /// Ready when a heartbeat is due (the next frame is then the heartbeat):
    /// at a tick that ends a whole period in which nothing else was written,
    /// by this body or, as `written` says when asked, by the io_uring writer
    /// since it was last asked. A busy stream gets no heartbeats, and no
    /// silence lasts longer than two periods.
    pub(crate) fn poll_heartbeat(
        &mut self,
        cx: &mut Context<'_>,
        mut written: impl FnMut() -> bool,
    ) -> Poll<()> {
        if self.heartbeat_due {
            return Poll::Ready(());
        }
        while self.heartbeat.poll_tick(cx).is_ready() {
            let active = std::mem::take(&mut self.active) | written();
            if !active {
                self.heartbeat_due = true;
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// The io_uring writer wrote the stream's messages up to `last`.
    pub(crate) fn delivered_directly(&mut self, last: crate::message::MessageId) {
        self.subscription.delivered_directly(last);
    }

    fn id_line(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(b"id: ");
        out.put_slice(event_id::encode(&self.subscription.positions()).as_bytes());
        out.put_u8(b'\n');
        out
    }

    fn control_event(
        &self,
        with_id: bool,
        event: &str,
        data: &serde_json::Value,
        retry_ms: Option<u64>,
    ) -> Bytes {
        let mut out = if with_id {
            self.id_line()
        } else {
            BytesMut::with_capacity(128)
        };
        if let Some(retry) = retry_ms {
            out.put_slice(format!("retry: {retry}\n").as_bytes());
        }
        out.put_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
        out.freeze()
    }

    fn frame(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.active = true;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(start) = this.start.take() {
            this.subscription
                .state()
                .metrics
                .control_bytes(Transport::Sse, start.len());
            return this.frame(start);
        }
        if let Some(next) = this.next.take() {
            return this.frame(next);
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.subscription.poll_event(cx) {
                Poll::Ready(Some(Event::Message { message, .. })) => {
                    let depth = this.subscription.queued();
                    if this.subscription.cursors().len() == 1 {
                        let frame = message.sse_frame(this.names);
                        this.subscription.state().delivered(
                            Transport::Sse,
                            &message,
                            frame.len(),
                            depth,
                        );
                        return this.frame(frame);
                    }
                    let id = this.id_line().freeze();
                    let body = message.sse_body(this.names);
                    this.subscription.state().delivered(
                        Transport::Sse,
                        &message,
                        id.len() + body.len(),
                        depth,
                    );
                    this.next = Some(body);
                    return this.frame(id);
                }
                Poll::Ready(Some(Event::Reset {
                    index,
                    reason,
                    position,
                })) => {
                    let topic = this.subscription.cursors()[index].name.to_string();
                    let data = serde_json::json!({ "topic": topic, "reason": reason.as_str(), "position": position.to_string() });
                    let frame = this.control_event(true, "sidestream.reset", &data, None);
                    this.subscription
                        .state()
                        .metrics
                        .control_bytes(Transport::Sse, frame.len());
                    return this.frame(frame);
                }
                Poll::Ready(Some(Event::Live { .. })) => continue,
                Poll::Ready(Some(Event::Drain { retry_ms })) => {
                    this.done = true;
                    let data = serde_json::json!({ "reason": "draining", "retryMs": retry_ms });
                    let frame =
                        this.control_event(false, "sidestream.drain", &data, Some(retry_ms));
                    return this.frame(frame);
                }
                Poll::Ready(Some(Event::SlowConsumer)) => {
                    this.done = true;
                    let data = serde_json::json!({ "reason": "slow-consumer", "queueCapacity": this.subscription.state().settings.queue_capacity });
                    let frame = this.control_event(false, "sidestream.disconnect", &data, None);
                    return this.frame(frame);
                }
                Poll::Ready(Some(Event::Token(TokenEvent::Ended(end)))) => {
                    this.done = true;
                    // The id is the last event's, so a reconnect with a fresh
                    // token and this id resumes exactly.
                    let last = event_id::encode(&this.subscription.positions());
                    let data = serde_json::json!({ "reason": end.as_str(), "lastEventId": last });
                    let frame = this.control_event(true, TOKEN_EXPIRED_EVENT, &data, None);
                    this.subscription
                        .state()
                        .metrics
                        .control_bytes(Transport::Sse, frame.len());
                    return this.frame(frame);
                }
                // SSE has no renewal in band: no grace, nothing to announce.
                Poll::Ready(Some(Event::Token(TokenEvent::Expiring { .. }))) => continue,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.poll_heartbeat(cx, || false).is_ready() {
                        this.heartbeat_due = false;
                        this.subscription
                            .state()
                            .metrics
                            .control_bytes(Transport::Sse, HEARTBEAT.len());
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none() && self.start.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Draft;
    use crate::topics::TopicRegistry;
    use crate::{BrokerSpec, Settings};
    use http_body::Body as _;
    use tokio::time::Instant;

    const PERIOD: Duration = Duration::from_secs(10);

    async fn publish(state: &AppState) {
        let draft = Draft {
            data: Bytes::from_static(b"m"),
            event: None,
            idempotency_key: None,
            traceparent: None,
        };
        crate::publish::publish(state, "t", None, draft)
            .await
            .unwrap();
    }

    async fn next(body: &mut SseBody) -> Bytes {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        frame.unwrap().unwrap().into_data().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_gets_no_heartbeat_and_a_quiet_one_does() {
        let state = AppState::new(
            Settings {
                heartbeat: PERIOD,
                ..Settings::default()
            },
            TopicRegistry::new(Vec::new(), true),
            &BrokerSpec::Memory,
        )
        .await
        .unwrap();
        let mut subscription = Subscription::open(&state, Transport::Sse, None).unwrap();
        subscription.add_held("t", None, None).await.unwrap();
        let mut body = SseBody::new(subscription, SseEventNames::Published, PERIOD, 1000);
        assert_eq!(next(&mut body).await, "retry: 1000\n\n");
        // A message every 4 s for a minute: six periods, no heartbeat.
        let publisher = tokio::spawn({
            let state = state.clone();
            async move {
                for _ in 0..15 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    publish(&state).await;
                }
            }
        });
        for _ in 0..15 {
            let frame = next(&mut body).await;
            assert!(frame.starts_with(b"id: "), "{frame:?}");
        }
        publisher.await.unwrap();
        // Then quiet: a heartbeat within two periods, then one every period.
        let quiet = Instant::now();
        assert_eq!(next(&mut body).await, HEARTBEAT);
        assert!(quiet.elapsed() <= 2 * PERIOD, "{:?}", quiet.elapsed());
        let beat = Instant::now();
        assert_eq!(next(&mut body).await, HEARTBEAT);
        assert_eq!(beat.elapsed(), PERIOD);
    }
}
