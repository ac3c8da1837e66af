//! Messages and their ids, and the wire frames built once per message and
//! shared by every subscriber.
//!
//! A message id is `<epoch>-<seq>`: `seq` counts a topic's messages from 1 and
//! `epoch` (lowercase base 36) names the generation of the topic's history (a
//! new epoch starts when the history is lost: an in-memory broker restarted, a
//! Redis stream deleted). Ids order per topic within an epoch; comparing a
//! resume position with what history holds tells whether anything was missed.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

/// The generation of a topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A fresh random epoch (never 0, at most 8 base-36 digits).
    pub fn random() -> Epoch {
        Epoch(rand::random_range(1..(36u64.pow(8))))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 13];
        let mut n = self.0;
        let mut i = digits.len();
        loop {
            i -= 1;
            let d = (n % 36) as u8;
            digits[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n /= 36;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            fmt::Write::write_char(f, char::from(d))?;
        }
        Ok(())
    }
}

impl FromStr for Epoch {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Epoch, IdError> {
        if s.is_empty() || s.len() > 13 {
            return Err(IdError::Malformed(s.to_owned()));
        }
        let mut n: u64 = 0;
        for c in s.bytes() {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'z' => c - b'a' + 10,
                _ => return Err(IdError::Malformed(s.to_owned())),
            };
            n = n
                .checked_mul(36)
                .and_then(|n| n.checked_add(u64::from(d)))
                .ok_or_else(|| IdError::Malformed(s.to_owned()))?;
        }
        Ok(Epoch(n))
    }
}

/// A position in a topic: the id of a message, or (`seq` 0) the start of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub epoch: Epoch,
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// A message id or resume position that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("'{0}' is not a message id (expected '<epoch>-<seq>', e.g. 'k3x9a2-17')")]
    Malformed(String),
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<MessageId, IdError> {
        let (epoch, seq) = s
            .split_once('-')
            .ok_or_else(|| IdError::Malformed(s.to_owned()))?;
        let epoch = epoch
            .parse()
            .map_err(|_| IdError::Malformed(s.to_owned()))?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Malformed(s.to_owned()));
        }
        let seq = seq.parse().map_err(|_| IdError::Malformed(s.to_owned()))?;
        Ok(MessageId { epoch, seq })
    }
}

/// What a publisher hands in.
#[derive(Debug, Clone)]
pub struct Draft {
    /// UTF-8 text (SSE and the WebSocket JSON frames carry text).
    pub data: Bytes,
    pub event: Option<String>,
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` of the publish, carried to the delivery log.
    pub traceparent: Option<String>,
}

/// A published message, shared (`Arc`) by the history and every subscriber queue.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub id: MessageId,
    pub event: Option<Box<str>>,
    pub data: Bytes,
    pub published_unix_nanos: u64,
    /// When this node handed the message to its local subscribers.
    pub dispatched_unix_nanos: u64,
    pub traceparent: Option<Box<str>>,
    /// The SSE event with its id line: what a one-topic SSE stream writes.
    sse_frame: Bytes,
    /// Where the id line ends in `sse_frame` (and in `sse_topic_frame`).
    sse_body_start: usize,
    /// The SSE event named by its topic ([`SseEventNames::Topic`]), built on
    /// first use and shared like `sse_frame`.
    sse_topic_frame: OnceLock<Bytes>,
    ws_frame: OnceLock<Bytes>,
}

/// What an SSE stream writes in each message's `event:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SseEventNames {
    /// The publisher's event name, none when it gave none (a browser then
    /// dispatches the event as `message`). What a stream writes unless it
    /// asks otherwise.
    #[default]
    Published,
    /// The topic's name, or `<topic>:<event>` for a message published with
    /// an event name (topic names cannot hold `:`), so a browser
    /// `EventSource` on several topics listens per topic.
    Topic,
}

impl Message {
    /// Builds a message and serialises its SSE frame once.
    pub fn new(
        topic: Arc<str>,
        id: MessageId,
        event: Option<Box<str>>,
        data: Bytes,
        published_unix_nanos: u64,
        traceparent: Option<Box<str>>,
    ) -> Message {
        let mut frame =
            BytesMut::with_capacity(data.len() + 48 + event.as_deref().map_or(0, str::len));
        frame.put_slice(b"id: ");
        frame.put_slice(id.to_string().as_bytes());
        frame.put_u8(b'\n');
        let sse_body_start = frame.len();
        write_sse_fields(&mut frame, event.as_deref(), &data);
        Message {
            topic,
            id,
            event,
            data,
            published_unix_nanos,
            dispatched_unix_nanos: unix_nanos(),
            traceparent,
            sse_frame: frame.freeze(),
            sse_body_start,
            sse_topic_frame: OnceLock::new(),
            ws_frame: OnceLock::new(),
        }
    }

    /// The complete SSE event (`id`, `event`, `data` lines and the blank
    /// line) with its events named by `names`: what a one-topic stream writes.
    pub fn sse_frame(&self, names: SseEventNames) -> Bytes {
        match names {
            SseEventNames::Published => self.sse_frame.clone(),
            SseEventNames::Topic => self
                .sse_topic_frame
                .get_or_init(|| self.build_topic_frame())
                .clone(),
        }
    }

    /// The SSE event without its id line (multi-topic streams write their own id).
    pub fn sse_body(&self, names: SseEventNames) -> Bytes {
        self.sse_frame(names).slice(self.sse_body_start..)
    }

    /// The SSE event named `<topic>` or `<topic>:<event>`, with the same id line.
    fn build_topic_frame(&self) -> Bytes {
        let event = self.event.as_deref();
        let name_len = self.topic.len() + event.map_or(0, |e| e.len() + 1);
        let mut frame = BytesMut::with_capacity(self.sse_frame.len() + name_len + 8);
        frame.put_slice(&self.sse_frame[..self.sse_body_start]);
        let name = match event {
            Some(event) => format!("{}:{event}", self.topic),
            None => self.topic.to_string(),
        };
        write_sse_fields(&mut frame, Some(&name), &self.data);
        frame.freeze()
    }

    /// The WebSocket JSON text frame, built on first use and shared.
    pub fn ws_frame(&self) -> Bytes {
        self.ws_frame
            .get_or_init(|| {
                let frame = serde_json::json!({
                    "type": "message",
                    "topic": &*self.topic,
                    "id": self.id.to_string(),
                    "event": self.event.as_deref(),
                    "data": String::from_utf8_lossy(&self.data),
                    "publishedUnixNanos": self.published_unix_nanos,
                });
                Bytes::from(frame.to_string())
            })
            .clone()
    }

    /// The trace id (32 hex digits) of the publish, when it carried a valid traceparent.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(crate::trace::trace_id)
    }
}

/// Writes `event:` (when given) and one `data:` line per line of `data`, then
/// the blank line ending the event. Lines end at CRLF, CR or LF, as SSE parsers split them.
pub fn write_sse_fields(out: &mut BytesMut, event: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                break;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.put_u8(b'\n');
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in [
            MessageId {
                epoch: Epoch(1),
                seq: 0,
            },
            MessageId {
                epoch: Epoch(36u64.pow(8) - 1),
                seq: 17,
            },
            MessageId {
                epoch: Epoch(u64::MAX),
                seq: u64::MAX,
            },
        ] {
            assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        }
        assert_eq!(
            MessageId {
                epoch: Epoch(35),
                seq: 3
            }
            .to_string(),
            "z-3"
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "-",
            "a-",
            "-1",
            "A-1",
            "a-1-2",
            "a-x",
            "a- 1",
            "zzzzzzzzzzzzzz-1",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sse_frames_split_lines_like_parsers_do() {
        let message = Message::new(
            Arc::from("t"),
            MessageId {
                epoch: Epoch(10),
                seq: 2,
            },
            Some("tick".into()),
            Bytes::from_static(b"a\r\nb\rc\nd"),
            0,
            None,
        );
        assert_eq!(
            &message.sse_frame(SseEventNames::Published)[..],
            b"id: a-2\nevent: tick\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(
            &message.sse_body(SseEventNames::Published)[..],
            b"event: tick\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let empty = Message::new(
            Arc::from("t"),
            MessageId {
                epoch: Epoch(1),
                seq: 1,
            },
            None,
            Bytes::new(),
            0,
            None,
        );
        assert_eq!(
            &empty.sse_frame(SseEventNames::Published)[..],
            b"id: 1-1\ndata: \n\n"
        );
    }

    #[test]
    fn topic_named_frames_are_built_once_and_shared() {
        let typed = Message::new(
            Arc::from("prices.eu"),
            MessageId {
                epoch: Epoch(10),
                seq: 2,
            },
            Some("tick".into()),
            Bytes::from_static(b"1\n2"),
            0,
            None,
        );
        let frame = typed.sse_frame(SseEventNames::Topic);
        assert_eq!(
            &frame[..],
            b"id: a-2\nevent: prices.eu:tick\ndata: 1\ndata: 2\n\n"
        );
        assert_eq!(
            &typed.sse_body(SseEventNames::Topic)[..],
            b"event: prices.eu:tick\ndata: 1\ndata: 2\n\n"
        );
        // Every subscriber gets the same bytes, not a copy of its own.
        let again = typed.sse_frame(SseEventNames::Topic);
        assert_eq!(frame.as_ptr(), again.as_ptr());
        assert_eq!(
            typed.sse_body(SseEventNames::Topic).as_ptr(),
            typed.sse_body(SseEventNames::Topic).as_ptr()
        );
        // The publisher-named frame is untouched.
        assert_eq!(
            &typed.sse_frame(SseEventNames::Published)[..],
            b"id: a-2\nevent: tick\ndata: 1\ndata: 2\n\n"
        );
        let untyped = Message::new(
            Arc::from("news"),
            MessageId {
                epoch: Epoch(1),
                seq: 7,
            },
            None,
            Bytes::from_static(b"hello"),
            0,
            None,
        );
        assert_eq!(
            &untyped.sse_frame(SseEventNames::Topic)[..],
            b"id: 1-7\nevent: news\ndata: hello\n\n"
        );
    }
}
