//! `POST /v1/topics/{topic}/messages`.
//!
//! The body is the message data (UTF-8 text); the event name comes from the
//! `event` query parameter or the `sidestream-event` header. With
//! `content-type: application/json` the body is an envelope instead:
//! `{"data": "...", "event": "...", "idempotencyKey": "..."}` (a non-string
//! `data` is published as its JSON text). The idempotency key may also come
//! in the `idempotency-key` header. Answers 201 `{"id", "topic"}`, or 200 with
//! `"duplicate": true` and the original id for a repeated idempotency key.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use tracing::Instrument;

use super::{header, request_span, token, QueryParams};
use crate::error::PushError;
use crate::message::Draft;
use crate::state::AppState;

/// Room for the JSON envelope around the data.
const ENVELOPE_SLACK: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    data: serde_json::Value,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    topic: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PushError> {
    let Path(topic) = topic.map_err(|rejection| {
        PushError::BadRequest(format!(
            "the topic in the path cannot be read: {}",
            rejection.body_text()
        ))
    })?;
    let (span, traceparent) = request_span("publish", &headers);
    async move {
        let query = QueryParams::parse(query.as_deref());
        let result = handle(&state, &topic, &query, &headers, body, traceparent).await;
        if let Err(error) = &result {
            tracing::info!(topic, error = %error, "Publish refused");
            sidestream_telemetry::set_error(&tracing::Span::current(), error.to_string());
        }
        result
    }
    .instrument(span)
    .await
}

async fn handle(
    state: &AppState,
    topic: &str,
    query: &QueryParams,
    headers: &HeaderMap,
    body: Body,
    traceparent: Option<String>,
) -> Result<Response, PushError> {
    let settings = state.topics.get(topic)?;
    // Authorise before reading a body that may be large.
    let bearer = token(headers, query);
    state.auth.authorize_publish(topic, &settings, bearer)?;
    let json = header(headers, "content-type").is_some_and(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim();
        ct.eq_ignore_ascii_case("application/json")
    });
    let limit = settings.max_message_bytes + if json { ENVELOPE_SLACK } else { 0 };
    if let Some(length) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        if length > limit {
            state.metrics.rejected("message_too_large");
            return Err(PushError::TooLarge {
                topic: topic.to_owned(),
                size: length,
                limit: settings.max_message_bytes,
            });
        }
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            state.metrics.rejected("message_too_large");
            return Err(PushError::TooLarge {
                topic: topic.to_owned(),
                size: limit + 1,
                limit: settings.max_message_bytes,
            });
        }
    };
    let mut draft = Draft {
        data: bytes,
        event: query
            .first("event")
            .or_else(|| header(headers, "sidestream-event"))
            .map(str::to_owned),
        idempotency_key: header(headers, "idempotency-key").map(str::to_owned),
        traceparent,
    };
    if json {
        let envelope: Envelope = serde_json::from_slice(&draft.data).map_err(|e| {
            PushError::BadRequest(format!(
                "JSON body must be {{\"data\", \"event\"?, \"idempotencyKey\"?}}: {e}"
            ))
        })?;
        draft.data = match envelope.data {
            serde_json::Value::String(text) => Bytes::from(text),
            other => Bytes::from(other.to_string()),
        };
        if envelope.event.is_some() {
            draft.event = envelope.event;
        }
        if envelope.idempotency_key.is_some() {
            draft.idempotency_key = envelope.idempotency_key;
        }
    }
    let published = crate::publish::publish(state, topic, bearer, draft).await?;
    let body = serde_json::json!({ "id": published.id.to_string(), "topic": topic, "duplicate": published.duplicate });
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)).into_response())
}
