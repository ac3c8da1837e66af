//! The HTTP API: SSE and WebSocket subscribe, publish, health, metrics and
//! the slow-delivery ring. [`router`] builds it for [`crate::server::serve_http`]
//! (or any axum server, e.g. in tests).

pub mod admin;
pub mod publish;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;

use crate::error::PushError;
use crate::state::AppState;

/// The push server's HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", get(sse::events))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/topics/{topic}/messages", post(publish::publish))
        .route("/healthz/live", get(admin::live))
        .route("/healthz/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics))
        .route("/debug/slow-deliveries", get(admin::slow_deliveries))
        .route("/v1/topics", get(admin::topics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn no_route() -> PushError {
    PushError::NoRoute
}

async fn method_not_allowed() -> PushError {
    PushError::MethodNotAllowed
}

/// Query parameters, repeated ones kept (`topic=a&topic=b`).
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(query: Option<&str>) -> QueryParams {
        QueryParams(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name).next()
    }
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's bearer token: `Authorization: Bearer`, else the `token` query parameter.
pub fn token<'a>(headers: &'a HeaderMap, query: &'a QueryParams) -> Option<&'a str> {
    crate::auth::bearer(header(headers, "authorization"))
        .or_else(|| query.first("token").filter(|t| !t.is_empty()))
}

/// A span continuing the request's W3C trace context (exported as the
/// server span `name` when OTLP export is on), and the valid `traceparent`.
pub fn request_span(name: &'static str, headers: &HeaderMap) -> (tracing::Span, Option<String>) {
    let traceparent = crate::trace::accept_traceparent(header(headers, "traceparent"));
    let span =
        crate::trace::server_span(name, traceparent.as_deref(), header(headers, "tracestate"));
    (span, traceparent)
}
