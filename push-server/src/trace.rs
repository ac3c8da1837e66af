//! W3C trace context of publish and subscribe requests, continued in spans
//! and carried with each message to the delivery log.

use sidestream_core::trace::parse_traceparent;

use crate::message::Message;
use crate::metrics::Transport;
use crate::session::{TokenEnd, TokenEvent};
use crate::subscription::Event;

/// The `traceparent` header, re-serialised, when it is valid (W3C Level 1).
pub fn accept_traceparent(header: Option<&str>) -> Option<String> {
    header
        .and_then(|value| parse_traceparent(value).ok())
        .map(|parent| parent.to_header())
}

/// The trace id (32 hex digits) of a valid, re-serialised traceparent.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

/// The span of one request: `request` in logs (with its kind and trace id),
/// the server span `kind` (`publish`, `sse`, `websocket`, `grpc-publish`,
/// `grpc-subscribe`) in OTLP, a child of `traceparent` (already accepted by
/// [`accept_traceparent`]) and its `tracestate`.
pub fn server_span(
    kind: &'static str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        kind,
        trace_id = traceparent.and_then(trace_id),
        otel.name = kind,
        otel.kind = "server",
    );
    sidestream_telemetry::continue_trace(&span, traceparent, tracestate);
    span
}

/// The context a message carries to the nodes that deliver it: the publish
/// span's own `traceparent` when spans are exported (so each node's
/// delivery span is its child), else the publisher's, unchanged (the same
/// trace id either way, for the logs and the slow-delivery ring).
pub fn carried_traceparent(publish: &tracing::Span, received: Option<String>) -> Option<String> {
    sidestream_telemetry::traceparent(publish).or(received)
}

/// One message's fan-out on this node, as one span however many subscribers
/// (a span each would be 10,000 spans per message at 10,000 subscribers):
/// from the moment the node hands the message to its local subscribers until
/// the last queue took it, a child of the context the message carries (the
/// publish span). Disabled (free) when spans are not exported.
pub fn deliver_span(message: &Message) -> tracing::Span {
    if !sidestream_telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "deliver",
        messaging.destination.name = %message.topic,
        messaging.message.id = %message.id,
        subscribers = tracing::field::Empty,
        delivered = tracing::field::Empty,
        dropped = tracing::field::Empty,
    );
    sidestream_telemetry::continue_trace(&span, message.traceparent.as_deref(), None);
    span
}

/// Records a fan-out's outcome: `subscribers` local subscribers, `delivered`
/// queues took the message, the others were cut as slow consumers (or were closing).
pub fn delivered(span: &tracing::Span, subscribers: usize, delivered: usize) {
    if span.is_disabled() {
        return;
    }
    span.record("subscribers", subscribers);
    span.record("delivered", delivered);
    span.record("dropped", subscribers.saturating_sub(delivered));
}

/// Why a subscription ended, as its span reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away, or the transport stopped writing to it.
    ClientClosed,
    /// The server drained; the client was told to come back.
    Drain,
    /// Cut as a slow consumer.
    SlowConsumer,
    /// The stream's source ended.
    Ended,
    /// Its subscription token expired (and was not renewed in time).
    TokenExpired,
    /// Its subscription token was revoked.
    TokenRevoked,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client-closed",
            CloseReason::Drain => "drain",
            CloseReason::SlowConsumer => "slow-consumer",
            CloseReason::Ended => "ended",
            CloseReason::TokenExpired => "token-expired",
            CloseReason::TokenRevoked => "token-revoked",
        }
    }
}

/// A subscription's life as a span, from open to close: its transport, then
/// at close its topics, the messages handed to its transport and why it
/// ended. A child of the subscribe request's span. Disabled (free) when spans
/// are not exported.
#[derive(Debug)]
pub struct SubscriptionSpan {
    span: tracing::Span,
    delivered: u64,
    reason: Option<CloseReason>,
}

impl SubscriptionSpan {
    pub fn open(transport: Transport) -> SubscriptionSpan {
        let span = if sidestream_telemetry::exporting() {
            tracing::info_span!(
                "subscription",
                transport = transport.as_str(),
                topics = tracing::field::Empty,
                delivered = tracing::field::Empty,
                close_reason = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        SubscriptionSpan {
            span,
            delivered: 0,
            reason: None,
        }
    }

    /// Counts the event handed to the transport; an ending event names the reason.
    pub fn observe(&mut self, event: Option<&Event>) {
        match event {
            Some(Event::Message { .. }) => self.delivered += 1,
            Some(Event::Drain { .. }) => self.close_reason(CloseReason::Drain),
            Some(Event::SlowConsumer) => self.close_reason(CloseReason::SlowConsumer),
            Some(Event::Token(TokenEvent::Ended(TokenEnd::Expired))) => {
                self.close_reason(CloseReason::TokenExpired);
            }
            Some(Event::Token(TokenEvent::Ended(TokenEnd::Revoked))) => {
                self.close_reason(CloseReason::TokenRevoked);
            }
            // Other events do not end the stream by themselves; a transport
            // ending it for another cause says so with `close_reason`.
            Some(_) => {}
            None => self.close_reason(CloseReason::Ended),
        }
    }

    /// `count` messages were written outside the stream's events (by the
    /// io_uring writer).
    pub fn delivered(&mut self, count: u64) {
        self.delivered += count;
    }

    /// The first reason given is the one reported.
    pub fn close_reason(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
    }

    /// Ends the span with `topics` topics subscribed at the end.
    pub fn close(&mut self, topics: usize) {
        if self.span.is_disabled() {
            return;
        }
        let reason = self.reason.unwrap_or(CloseReason::ClientClosed);
        self.span.record("topics", topics);
        self.span.record("delivered", self.delivered);
        self.span.record("close_reason", reason.as_str());
        self.span = tracing::Span::none();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sidestream_telemetry::testing::capture;

    use super::*;
    use crate::hub::Hub;
    use crate::message::{Epoch, MessageId};
    use crate::metrics::Metrics;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn message(seq: u64, traceparent: Option<String>) -> Arc<Message> {
        Arc::new(Message::new(
            Arc::from("t"),
            MessageId {
                epoch: Epoch(1),
                seq,
            },
            None,
            bytes::Bytes::from_static(b"x"),
            0,
            traceparent.map(String::into_boxed_str),
        ))
    }

    #[test]
    fn one_deliver_span_per_fan_out_under_the_carried_publish_span() {
        let ((publish, carried, second), spans) = capture(|| {
            let publish = server_span("publish", Some(PARENT), None);
            let carried = carried_traceparent(&publish, Some(PARENT.to_owned()));
            let publish_id = sidestream_telemetry::traceparent(&publish);
            drop(publish);
            let hub = Hub::new(Arc::new(Metrics::new()));
            let topic: Arc<str> = Arc::from("t");
            let mut streams = Vec::new();
            for capacity in [10, 10, 1] {
                let (handle, rx, key) = hub.open_stream(Transport::Sse, capacity, 1 << 20, None);
                let sub = hub.subscribe(&topic, &handle);
                streams.push((handle, rx, key, sub));
            }
            assert_eq!(hub.dispatch(&message(1, None)), 3);
            // The third queue is full now: cut.
            let second = message(2, carried.clone());
            assert_eq!(hub.dispatch(&second), 2);
            (publish_id, carried, second.id.to_string())
        });
        // The publish span hands on its own context, in the same trace.
        let carried = carried.unwrap();
        assert_eq!(Some(&carried), publish.as_ref());
        assert_eq!(trace_id(&carried), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_ne!(&carried[36..52], "00f067aa0ba902b7");
        let delivers: Vec<_> = spans.iter().filter(|s| s.name == "deliver").collect();
        assert_eq!(delivers.len(), 2, "{spans:#?}");
        // Without a carried context the fan-out is a trace of its own.
        assert_eq!(delivers[0].parent_span_id, "0000000000000000");
        assert_eq!(delivers[0].attribute("delivered"), Some("3"));
        let deliver = delivers[1];
        assert_eq!(deliver.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(deliver.parent_span_id, &carried[36..52]);
        assert_eq!(deliver.attribute("messaging.destination.name"), Some("t"));
        assert_eq!(
            deliver.attribute("messaging.message.id"),
            Some(second.as_str())
        );
        assert_eq!(deliver.attribute("subscribers"), Some("3"));
        assert_eq!(deliver.attribute("delivered"), Some("2"));
        assert_eq!(deliver.attribute("dropped"), Some("1"));
    }

    #[test]
    fn a_subscription_span_counts_messages_and_keeps_the_first_close_reason() {
        let ((), spans) = capture(|| {
            let mut span = SubscriptionSpan::open(Transport::WebSocket);
            let message = Event::Message {
                index: 0,
                message: message(1, None),
            };
            span.observe(Some(&message));
            span.observe(Some(&Event::Live { index: 0 }));
            span.observe(Some(&message));
            span.observe(Some(&Event::SlowConsumer));
            span.observe(None);
            span.close(2);
            let mut quiet = SubscriptionSpan::open(Transport::Grpc);
            quiet.close(1);
            let mut expired = SubscriptionSpan::open(Transport::Sse);
            expired.observe(Some(&Event::Token(TokenEvent::Ended(TokenEnd::Expired))));
            expired.close(1);
        });
        let [cut, quiet, expired] = spans.as_slice() else {
            panic!("three spans: {spans:#?}");
        };
        assert_eq!(expired.attribute("close_reason"), Some("token-expired"));
        assert_eq!(cut.attribute("transport"), Some("websocket"));
        assert_eq!(cut.attribute("delivered"), Some("2"));
        assert_eq!(cut.attribute("topics"), Some("2"));
        assert_eq!(cut.attribute("close_reason"), Some("slow-consumer"));
        assert_eq!(quiet.attribute("delivered"), Some("0"));
        assert_eq!(quiet.attribute("close_reason"), Some("client-closed"));
    }

    #[test]
    fn keeps_valid_parents_only() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let accepted = accept_traceparent(Some(valid));
        assert_eq!(accepted.as_deref(), Some(valid));
        assert_eq!(
            accepted.as_deref().and_then(trace_id),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            accept_traceparent(Some(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )),
            None
        );
        assert_eq!(accept_traceparent(Some("garbage")), None);
        assert_eq!(accept_traceparent(None), None);
    }
}
