//! `Last-Event-ID` and resume positions, pure: any text as a stream id for a
//! stream of 1 to 64 topics, and as one message id and one epoch. Input:
//! `<topic count> <id>` (a count that does not read as 1..=64 is 1). What
//! decodes encodes back to an id that decodes to the same positions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream_push::event_id::{decode, encode};
use sidestream_push::message::{Epoch, MessageId};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (count, id) = input.split_once(' ').unwrap_or(("1", input));
    let topics = count.parse::<usize>().unwrap_or(1).clamp(1, 64);
    if let Ok(positions) = decode(id, topics) {
        assert_eq!(positions.len(), topics);
        let text = encode(&positions);
        assert_eq!(decode(&text, topics), Ok(positions), "{text:?}");
    }
    if let Ok(message) = id.parse::<MessageId>() {
        let text = message.to_string();
        assert_eq!(text.parse::<MessageId>(), Ok(message), "{text:?}");
        assert_eq!(decode(&text, 1), Ok(vec![message]));
    }
    if let Ok(epoch) = id.parse::<Epoch>() {
        assert_eq!(epoch.to_string().parse::<Epoch>(), Ok(epoch));
    }
});
