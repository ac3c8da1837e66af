//! An SSE subscription as the push server opens it (both the axum route and
//! the direct HTTP/1.1 path call `sse::open`): any query string (topics,
//! `lastEventId`, `eventName`, `token`) and any `Last-Event-ID` and
//! `Authorization` headers, against a memory broker with history; the
//! stream's frames are then read until none is ready. A refusal is a client
//! error; an opened stream starts with `retry:` and its ids decode.
//!
//! Input: the query string on the first line, then `name: value` header
//! lines. `$T`, `$N`, `$P` stand for the epochs of the topics `ticker`,
//! `news`, `private`, and `$J` for a valid token.
#![no_main]

#[path = "../common/push.rs"]
mod push;
#[path = "../common/text.rs"]
mod text;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use http_body::Body as _;
use libfuzzer_sys::fuzz_target;
use sidestream_push::event_id;
use sidestream_push::http::{sse, QueryParams};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    push::runtime().block_on(run(input));
});

async fn run(input: &str) {
    let (state, heads) = push::state().await;
    let input = push::expand(input, &heads);
    let (query, header_text) = input.split_once('\n').unwrap_or((&input, ""));
    let query = QueryParams::parse(Some(query));
    let topics = query.all("topic").count();
    let mut headers = HeaderMap::new();
    for (name, value) in text::header_lines(header_text).into_iter().take(32) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let mut body = match sse::open(&state, None, &query, &headers).await {
        Ok(body) => body,
        Err(error) => {
            let status = error.into_response().status();
            assert!(
                status.is_client_error() || status.as_u16() == 503,
                "{status}"
            );
            return;
        }
    };
    let mut first = true;
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..256 {
        let frame = match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) | Poll::Pending => break,
            Poll::Ready(Some(Err(never))) => match never {},
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let text = String::from_utf8_lossy(&data);
        if first {
            assert!(text.starts_with("retry:"), "{text:?}");
            first = false;
        }
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("id: ") {
                assert!(
                    event_id::decode(id, topics).is_ok(),
                    "id {id:?} of a {topics}-topic stream"
                );
            }
        }
    }
}
