//! Publish requests through the push server's router (`POST
//! /v1/topics/{topic}/messages`): any topic segment, query (`event`,
//! `token`), headers (content type, `idempotency-key`, `sidestream-event`,
//! `authorization`, `content-length`) and body, plain or a JSON envelope,
//! into the memory broker. A request is answered 201, 200 (a repeated
//! idempotency key, with the first id) or a 4xx with a JSON error; never a 5xx.
//!
//! Input: up to 4 requests, each a `%` line with the path after
//! `/v1/topics/` (`ticker/messages?event=tick`), then `name: value` header
//! lines, a blank line and the body. `$T`, `$N`, `$P` stand for the epochs of
//! the topics `ticker`, `news`, `private`, and `$J` for a valid token.
#![no_main]

#[path = "../common/push.rs"]
mod push;
#[path = "../common/text.rs"]
mod text;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sidestream_push::message::MessageId;
use tower::ServiceExt;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    push::runtime().block_on(run(input));
});

async fn run(input: &str) {
    let (state, heads) = push::state().await;
    let router = sidestream_push::http::router(state);
    let input = push::expand(input, &heads);
    for (path, request) in text::sections(&input, "%").into_iter().take(4) {
        let (head, body) = request
            .split_once("\r\n\r\n")
            .or_else(|| request.split_once("\n\n"))
            .unwrap_or((request, ""));
        let uri = format!("/v1/topics/{path}");
        let mut builder = Request::builder().method(Method::POST).uri(&uri);
        for (name, value) in text::header_lines(head).into_iter().take(32) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                builder = builder.header(name, value);
            }
        }
        let Ok(request) = builder.body(Body::from(body.to_owned())) else {
            continue; // not a request hyper would hand over (a bad URI)
        };
        let response = match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let Ok(bytes) = response.into_body().collect().await.map(|b| b.to_bytes()) else {
            panic!("the response body cannot be read");
        };
        let json: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(json) => json,
            Err(error) => panic!("{status}: not JSON ({error}): {bytes:?}"),
        };
        match status {
            StatusCode::CREATED | StatusCode::OK => {
                let id = json.get("id").and_then(|id| id.as_str()).unwrap_or("");
                assert!(id.parse::<MessageId>().is_ok(), "{status}: {json}");
                assert_eq!(
                    json.get("duplicate").and_then(|d| d.as_bool()),
                    Some(status == StatusCode::OK),
                    "{json}"
                );
            }
            status if status.is_client_error() => {
                assert!(json.get("error").is_some(), "{status}: {json}");
            }
            status => panic!("{status} for {uri}: {json}"),
        }
    }
}
