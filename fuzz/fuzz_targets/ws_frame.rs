//! WebSocket client frames: any text frames (subscribe and unsubscribe
//! commands, resume positions, tokens) handled by the push server against a
//! memory broker with history, the resulting events drained after each.
//! Every reply is a JSON object with a `type`; per topic, the messages a
//! stream delivers never go backwards or repeat until it unsubscribes.
//!
//! Input: one frame per line, up to 8; a first line `@token <token>` is the
//! upgrade request's token. `$T`, `$N`, `$P` stand for the epochs of the
//! topics `ticker`, `news`, `private`, and `$J` for a valid token.
#![no_main]

#[path = "../common/push.rs"]
mod push;

use std::collections::HashMap;

use futures::FutureExt;
use libfuzzer_sys::fuzz_target;
use sidestream_push::http::ws::handle_client_frame;
use sidestream_push::metrics::Transport;
use sidestream_push::subscription::{Event, Subscription};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    push::runtime().block_on(run(input));
});

async fn run(input: &str) {
    let (state, heads) = push::state().await;
    let mut lines = input.lines().peekable();
    let upgrade_token = match lines.peek().and_then(|l| l.strip_prefix("@token ")) {
        Some(token) => {
            let token = push::expand(token, &heads);
            lines.next();
            Some(token)
        }
        None => None,
    };
    let Ok(mut subscription) = Subscription::open(&state, Transport::WebSocket, None) else {
        panic!("a new stream is refused");
    };
    // topic -> (epoch, seq) of the last message delivered.
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for frame in lines.take(8) {
        let text = push::expand(frame, &heads);
        let reply = handle_client_frame(&mut subscription, upgrade_token.as_deref(), &text).await;
        if let Some(reply) = &reply {
            let kind = reply.get("type").and_then(|t| t.as_str());
            assert!(kind.is_some(), "reply without a type: {reply}");
            if kind == Some("unsubscribed") {
                if let Some(topic) = reply.get("topic").and_then(|t| t.as_str()) {
                    last.remove(topic);
                }
            }
        }
        drain(&mut subscription, &mut last);
    }
}

/// Takes the events that are ready (replay pages included).
fn drain(subscription: &mut Subscription, last: &mut HashMap<String, (u64, u64)>) {
    for _ in 0..256 {
        let Some(Some(event)) = subscription.next_event().now_or_never() else {
            return;
        };
        match event {
            Event::Message { message, .. } => {
                let id = (message.id.epoch.0, message.id.seq);
                if let Some(previous) = last.get(&*message.topic) {
                    assert!(
                        previous.0 != id.0 || previous.1 < id.1,
                        "topic {}: {} after {}-{}",
                        message.topic,
                        message.id,
                        previous.0,
                        previous.1
                    );
                }
                last.insert(message.topic.to_string(), id);
            }
            Event::Reset { .. } | Event::Live { .. } => {}
            Event::Drain { .. } | Event::SlowConsumer | Event::Token(_) => return,
        }
    }
}
