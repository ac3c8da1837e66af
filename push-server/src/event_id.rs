//! The SSE `id` of a stream: the stream's position in every one of its topics,
//! so `Last-Event-ID` resumes all of them.
//!
//! Format, for a stream of topics `t_0 .. t_{n-1}` (in the order of the
//! request's `topic` parameters, which an `EventSource` repeats on reconnect):
//! the positions `p_0 .. p_{n-1}` joined by `.`, each `<epoch>-<seq>`; a
//! position whose epoch equals the previous one's is written as `<seq>` alone.
//! A one-topic stream's id is therefore exactly the message id. Examples:
//! `k3x9a2-17` (one topic), `k3x9a2-17.4.0` (three topics of one epoch),
//! `k3x9a2-17.q1w2-4`. The topic an event belongs to is the one whose position
//! advanced (and is the `topic` of the WebSocket and gRPC frames); a stream
//! opened with `eventName=topic` also names it in each event's `event:` field.

use crate::message::{Epoch, MessageId};

/// A `Last-Event-ID` that does not fit the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    #[error("Last-Event-ID '{0}' is malformed (expected '<epoch>-<seq>' positions joined by '.')")]
    Malformed(String),
    #[error("Last-Event-ID '{id}' holds {found} positions but the stream has {expected} topics")]
    TopicCount {
        id: String,
        found: usize,
        expected: usize,
    },
}

/// Encodes the positions of a stream into an SSE id.
pub fn encode(positions: &[MessageId]) -> String {
    let mut out = String::with_capacity(positions.len() * 12);
    let mut previous: Option<Epoch> = None;
    for (i, position) in positions.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if previous == Some(position.epoch) {
            out.push_str(&position.seq.to_string());
        } else {
            out.push_str(&position.to_string());
        }
        previous = Some(position.epoch);
    }
    out
}

/// Decodes an SSE id for a stream of `topic_count` topics.
pub fn decode(id: &str, topic_count: usize) -> Result<Vec<MessageId>, EventIdError> {
    let malformed = || EventIdError::Malformed(id.chars().take(200).collect());
    let mut positions = Vec::with_capacity(topic_count);
    let mut previous: Option<Epoch> = None;
    for part in id.split('.') {
        let position = if part.contains('-') {
            part.parse::<MessageId>().map_err(|_| malformed())?
        } else {
            let epoch = previous.ok_or_else(malformed)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            MessageId {
                epoch,
                seq: part.parse().map_err(|_| malformed())?,
            }
        };
        previous = Some(position.epoch);
        positions.push(position);
        if positions.len() > topic_count {
            break;
        }
    }
    if positions.len() != topic_count {
        return Err(EventIdError::TopicCount {
            id: id.chars().take(200).collect(),
            found: if positions.len() > topic_count {
                id.split('.').count()
            } else {
                positions.len()
            },
            expected: topic_count,
        });
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId {
            epoch: Epoch(epoch),
            seq,
        }
    }

    #[test]
    fn round_trips() {
        let cases: &[(&[MessageId], &str)] = &[
            (&[id(100, 17)], "2s-17"),
            (&[id(100, 17), id(100, 4), id(100, 0)], "2s-17.4.0"),
            (
                &[id(100, 17), id(7, 4), id(7, 5), id(100, 1)],
                "2s-17.7-4.5.2s-1",
            ),
        ];
        for (positions, text) in cases {
            assert_eq!(encode(positions), *text);
            assert_eq!(decode(text, positions.len()).as_deref(), Ok(*positions));
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(matches!(
            decode("2s-17.4", 3),
            Err(EventIdError::TopicCount {
                found: 2,
                expected: 3,
                ..
            })
        ));
        assert!(matches!(
            decode("2s-17.4.5", 2),
            Err(EventIdError::TopicCount {
                found: 3,
                expected: 2,
                ..
            })
        ));
        for bad in ["", "17", "2s-17..4", "2s-x", "2s-17.-4", "2S-1"] {
            assert!(decode(bad, 2).is_err(), "{bad}");
        }
    }
}
