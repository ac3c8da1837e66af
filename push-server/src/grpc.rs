//! The gRPC API (`sidestream.push.v1.Push`): `Subscribe` and `Publish`, the
//! same topics, ids, resume and auth as HTTP. A subscription whose token
//! expires or is revoked ends with `UNAUTHENTICATED` and the metadata
//! [`TOKEN_END_METADATA`] and [`RESUME_METADATA`] (where to resume with a
//! fresh token).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use sidestream_proto::push::v1::push_server::{Push, PushServer};
use sidestream_proto::push::v1::{
    subscribe_event, Heartbeat, Message as ProtoMessage, PublishRequest, PublishResponse, Reset,
    SubscribeEvent, SubscribeRequest, Subscribed,
};
use tokio::sync::mpsc;
use tokio::time::Interval;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::PushError;
use crate::hub::ConnectionControl;
use crate::message::{Draft, MessageId};
use crate::metrics::Transport;
use crate::session::{TokenEnd, TokenEvent};
use crate::state::AppState;
use crate::subscription::{Event, Subscription};

/// The tonic service.
#[derive(Debug, Clone)]
pub struct PushService {
    state: Arc<AppState>,
}

/// The gRPC service for a server (add it to a `tonic::transport::Server`).
pub fn service(state: Arc<AppState>) -> PushServer<PushService> {
    PushServer::new(PushService { state })
}

fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    crate::auth::bearer(Some(value)).map(str::to_owned)
}

fn traceparent<T>(request: &Request<T>) -> Option<String> {
    crate::trace::accept_traceparent(metadata(request, "traceparent"))
}

fn metadata<'a, T>(request: &'a Request<T>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|v| v.to_str().ok())
}

/// The request's span, continuing its W3C trace context.
fn request_span<T>(kind: &'static str, request: &Request<T>) -> tracing::Span {
    crate::trace::server_span(
        kind,
        traceparent(request).as_deref(),
        metadata(request, "tracestate"),
    )
}

#[tonic::async_trait]
impl Push for PushService {
    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<SubscribeEvent, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let token = bearer(&request);
        let span = request_span("grpc-subscribe", &request);
        let _entered = span.enter();
        let topics = request.into_inner().topics;
        if topics.is_empty() {
            return Err(PushError::BadRequest("name at least one topic".into()).into());
        }
        crate::subscription::check_topic_count(topics.len())?;
        let mut positions = Vec::with_capacity(topics.len());
        for (i, position) in topics.iter().enumerate() {
            if topics[..i].iter().any(|p| p.topic == position.topic) {
                return Err(PushError::BadRequest(format!(
                    "topic '{}' is listed twice",
                    position.topic
                ))
                .into());
            }
            let settings = self.state.topics.get(&position.topic)?;
            let grant = self.state.auth.authorize_subscribe(
                &position.topic,
                &settings,
                token.as_deref(),
            )?;
            let from = if position.from.is_empty() {
                None
            } else {
                Some(
                    position
                        .from
                        .parse::<MessageId>()
                        .map_err(|e| PushError::BadRequest(e.to_string()))?,
                )
            };
            positions.push((from, grant));
        }
        let control = Arc::new(ConnectionControl::default());
        let mut subscription =
            Subscription::open(&self.state, Transport::Grpc, Some(control.clone()))?;
        subscription.reserve_topics(topics.len());
        drop(_entered);
        for (position, (from, grant)) in topics.iter().zip(positions) {
            subscription.add_held(&position.topic, from, grant).await?;
        }
        let stream = GrpcStream {
            subscription,
            heartbeat: crate::heartbeat::ticks(self.state.settings.heartbeat),
            done: false,
        };
        Ok(Response::new(Box::pin(forward(stream, control, span))))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let token = bearer(&request);
        let traceparent = traceparent(&request);
        let span = request_span("grpc-publish", &request);
        let request = request.into_inner();
        let draft = Draft {
            data: request.data,
            event: Some(request.event).filter(|e| !e.is_empty()),
            idempotency_key: Some(request.idempotency_key).filter(|k| !k.is_empty()),
            traceparent,
        };
        let published = tracing::Instrument::instrument(
            crate::publish::publish(&self.state, &request.topic, token.as_deref(), draft),
            span,
        )
        .await?;
        Ok(Response::new(PublishResponse {
            id: published.id.to_string(),
            duplicate: published.duplicate,
        }))
    }
}

/// Feeds a stream's events to tonic through a one-slot channel. h2 stops
/// polling a response body whose client does not read; without this hop
/// such a subscriber would pin its full queue for as long as it stays
/// connected. Here, once the hub cuts it, the subscription (and its queue)
/// is dropped at once and RESOURCE_EXHAUSTED waits for the client.
fn forward(
    mut stream: GrpcStream,
    control: Arc<ConnectionControl>,
    span: tracing::Span,
) -> ReceiverStream<Result<SubscribeEvent, Status>> {
    let (tx, rx) = mpsc::channel(1);
    let task = async move {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = control.cut_requested() => break,
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            tokio::select! {
                sent = tx.send(item) => if sent.is_err() { return },
                () = control.cut_requested() => break,
            }
        }
        drop(stream);
        tracing::info!("Cut a gRPC subscriber that stopped reading");
        let _ = tx.send(Err(PushError::SlowConsumer.into())).await;
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    ReceiverStream::new(rx)
}

struct GrpcStream {
    subscription: Subscription,
    heartbeat: Interval,
    done: bool,
}

/// gRPC metadata of a stream ended by its token: `expired` or `revoked`.
pub const TOKEN_END_METADATA: &str = "sidestream-token-end";
/// gRPC metadata of a stream ended by its token: where to resume, as
/// `topic=<message id>` pairs joined by `,` (the `from` of each topic).
pub const RESUME_METADATA: &str = "sidestream-resume";

/// `UNAUTHENTICATED`, saying why and where to resume with a fresh token.
fn token_ended(subscription: &Subscription, end: TokenEnd) -> Status {
    let message = match end {
        TokenEnd::Expired => {
            "the subscription token expired; subscribe again with a fresh token from the positions in sidestream-resume"
        }
        TokenEnd::Revoked => "the subscription token was revoked",
    };
    let mut status: Status = PushError::Unauthorized(message.into()).into();
    let resume = subscription
        .cursors()
        .iter()
        .map(|c| format!("{}={}", c.name, c.position))
        .collect::<Vec<_>>()
        .join(",");
    let metadata = status.metadata_mut();
    metadata.insert(
        TOKEN_END_METADATA,
        tonic::metadata::MetadataValue::from_static(end.as_str()),
    );
    if let Ok(value) = resume.parse() {
        metadata.insert(RESUME_METADATA, value);
    }
    status
}

fn event(event: subscribe_event::Event) -> Option<Result<SubscribeEvent, Status>> {
    Some(Ok(SubscribeEvent { event: Some(event) }))
}

impl Stream for GrpcStream {
    type Item = Result<SubscribeEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.subscription.poll_event(cx) {
            Poll::Ready(Some(Event::Message { message, .. })) => {
                let depth = this.subscription.queued();
                this.subscription.state().delivered(
                    Transport::Grpc,
                    &message,
                    message.data.len(),
                    depth,
                );
                Poll::Ready(event(subscribe_event::Event::Message(ProtoMessage {
                    topic: message.topic.to_string(),
                    id: message.id.to_string(),
                    event: message.event.as_deref().unwrap_or_default().to_owned(),
                    data: message.data.clone(),
                    published_unix_nanos: i64::try_from(message.published_unix_nanos)
                        .unwrap_or(i64::MAX),
                })))
            }
            Poll::Ready(Some(Event::Reset {
                index,
                reason,
                position,
            })) => Poll::Ready(event(subscribe_event::Event::Reset(Reset {
                topic: this.subscription.cursors()[index].name.to_string(),
                reason: reason.as_str().to_owned(),
                position: position.to_string(),
            }))),
            Poll::Ready(Some(Event::Live { index })) => {
                let cursor = &this.subscription.cursors()[index];
                Poll::Ready(event(subscribe_event::Event::Subscribed(Subscribed {
                    topic: cursor.name.to_string(),
                    position: cursor.position.to_string(),
                })))
            }
            Poll::Ready(Some(Event::Drain { retry_ms })) => {
                this.done = true;
                Poll::Ready(Some(Err(PushError::Draining { retry_ms }.into())))
            }
            Poll::Ready(Some(Event::SlowConsumer)) => {
                this.done = true;
                Poll::Ready(Some(Err(PushError::SlowConsumer.into())))
            }
            Poll::Ready(Some(Event::Token(TokenEvent::Ended(end)))) => {
                this.done = true;
                Poll::Ready(Some(Err(token_ended(&this.subscription, end))))
            }
            // gRPC has no renewal in band (no grace): never announced.
            Poll::Ready(Some(Event::Token(TokenEvent::Expiring { .. }))) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.heartbeat.poll_tick(cx).is_ready() {
                    return Poll::Ready(event(subscribe_event::Event::Heartbeat(Heartbeat {})));
                }
                Poll::Pending
            }
        }
    }
}
