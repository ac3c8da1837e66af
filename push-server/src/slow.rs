//! Tail-latency forensics: a bounded ring of recent deliveries whose
//! publish-to-write time exceeded a threshold, served at `/debug/slow-deliveries`,
//! so a p999 spike can be explained afterwards without logging every message.
//!
//! Under a large fan-out most deliveries of a message can be slow, so keeping
//! one costs no allocation: the ring holds the shared topic name and copies of
//! the ids, and text is made only when the ring is read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::message::{Message, MessageId};
use crate::metrics::Transport;

/// One slow delivery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowDelivery {
    pub topic: String,
    pub id: String,
    pub transport: &'static str,
    /// Deliveries still queued for this subscriber when this one was written.
    pub queue_depth: usize,
    pub trace_id: Option<String>,
    pub published_unix_nanos: u64,
    pub dispatched_unix_nanos: u64,
    pub written_unix_nanos: u64,
    /// Publish → handed to this node's subscriber queues (broker time).
    pub publish_to_dispatch_micros: u64,
    /// Queue → written to the connection (subscriber time).
    pub dispatch_to_write_micros: u64,
    pub publish_to_write_micros: u64,
}

/// The ring of slow deliveries.
/// A slow delivery as the ring keeps it (see the module's documentation).
#[derive(Debug, Clone)]
struct Record {
    topic: Arc<str>,
    id: MessageId,
    transport: &'static str,
    queue_depth: usize,
    /// The 32 hex digits of the message's trace id.
    trace_id: Option<[u8; 32]>,
    published_unix_nanos: u64,
    dispatched_unix_nanos: u64,
    written_unix_nanos: u64,
}

impl Record {
    fn publish_to_write_micros(&self) -> u64 {
        self.written_unix_nanos
            .saturating_sub(self.published_unix_nanos)
            / 1000
    }

    fn report(&self) -> SlowDelivery {
        SlowDelivery {
            topic: self.topic.to_string(),
            id: self.id.to_string(),
            transport: self.transport,
            queue_depth: self.queue_depth,
            trace_id: self
                .trace_id
                .and_then(|hex| std::str::from_utf8(&hex).ok().map(str::to_owned)),
            published_unix_nanos: self.published_unix_nanos,
            dispatched_unix_nanos: self.dispatched_unix_nanos,
            written_unix_nanos: self.written_unix_nanos,
            publish_to_dispatch_micros: self
                .dispatched_unix_nanos
                .saturating_sub(self.published_unix_nanos)
                / 1000,
            dispatch_to_write_micros: self
                .written_unix_nanos
                .saturating_sub(self.dispatched_unix_nanos)
                / 1000,
            publish_to_write_micros: self.publish_to_write_micros(),
        }
    }
}

#[derive(Debug)]
pub struct SlowDeliveries {
    threshold_nanos: u64,
    capacity: usize,
    ring: Mutex<VecDeque<Record>>,
    seen: AtomicU64,
}

impl SlowDeliveries {
    pub fn new(threshold: Duration, capacity: usize) -> SlowDeliveries {
        SlowDeliveries {
            threshold_nanos: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
            ring: Mutex::new(VecDeque::new()),
            seen: AtomicU64::new(0),
        }
    }

    /// Keeps the delivery if it was slow.
    pub fn observe(
        &self,
        message: &Message,
        transport: Transport,
        queue_depth: usize,
        written_unix_nanos: u64,
    ) {
        let total = written_unix_nanos.saturating_sub(message.published_unix_nanos);
        if total < self.threshold_nanos {
            return;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        let record = Record {
            topic: message.topic.clone(),
            id: message.id,
            transport: transport.as_str(),
            queue_depth,
            trace_id: message
                .trace_id()
                .and_then(|id| id.as_bytes().try_into().ok()),
            published_unix_nanos: message.published_unix_nanos,
            dispatched_unix_nanos: message.dispatched_unix_nanos,
            written_unix_nanos,
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The ring, slowest first, as JSON.
    pub fn report(&self) -> serde_json::Value {
        let mut deliveries: Vec<SlowDelivery> = self
            .ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Record::report)
            .collect();
        deliveries.sort_by_key(|d| std::cmp::Reverse(d.publish_to_write_micros));
        serde_json::json!({
            "thresholdMicros": self.threshold_nanos / 1000,
            "capacity": self.capacity,
            "slowDeliveriesSeen": self.seen.load(Ordering::Relaxed),
            "deliveries": deliveries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Epoch, MessageId};
    use std::sync::Arc;

    #[test]
    fn keeps_only_slow_ones_and_stays_bounded() {
        let slow = SlowDeliveries::new(Duration::from_millis(10), 2);
        let message = Message::new(
            Arc::from("t"),
            MessageId {
                epoch: Epoch(1),
                seq: 1,
            },
            None,
            bytes::Bytes::new(),
            1_000_000_000,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        slow.observe(&message, Transport::Sse, 0, 1_005_000_000);
        assert_eq!(slow.report()["deliveries"].as_array().unwrap().len(), 0);
        for ms in [20, 30, 40] {
            slow.observe(&message, Transport::Sse, 3, 1_000_000_000 + ms * 1_000_000);
        }
        let report = slow.report();
        let deliveries = report["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[0]["publishToWriteMicros"], 40_000);
        assert_eq!(deliveries[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(deliveries[0]["topic"], "t");
        assert_eq!(deliveries[0]["id"], "1-1");
        assert_eq!(deliveries[0]["transport"], Transport::Sse.as_str());
        assert_eq!(deliveries[0]["queueDepth"], 3);
        assert_eq!(deliveries[1]["publishToWriteMicros"], 30_000);
        assert_eq!(report["slowDeliveriesSeen"], 3);
    }

    #[test]
    fn a_message_without_a_trace_has_no_trace_id() {
        let slow = SlowDeliveries::new(Duration::from_millis(10), 4);
        let message = Message::new(
            Arc::from("news"),
            MessageId {
                epoch: Epoch(36),
                seq: 7,
            },
            None,
            bytes::Bytes::new(),
            1_000_000_000,
            None,
        );
        slow.observe(&message, Transport::Sse, 0, 2_000_000_000);
        let report = slow.report();
        let delivery = &report["deliveries"][0];
        assert_eq!(delivery["id"], "10-7");
        assert_eq!(delivery["traceId"], serde_json::Value::Null);
        assert_eq!(delivery["publishToWriteMicros"], 1_000_000);
    }
}
