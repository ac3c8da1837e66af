//! Health, metrics and forensics endpoints.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::state::AppState;

pub async fn live() -> &'static str {
    "ok\n"
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))).into_response(),
        Err(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "problems": problems })),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.encode(state.hub.backlog());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub async fn slow_deliveries(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.slow.report())
}

/// Configured topics and this node's subscribers.
pub async fn topics(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let subscribers: serde_json::Map<String, serde_json::Value> = state
        .hub
        .topic_counts()
        .into_iter()
        .map(|(topic, count)| (topic, count.into()))
        .collect();
    Json(serde_json::json!({
        "node": state.settings.node_id,
        "broker": state.broker.kind(),
        "configured": state.topics.configured(),
        "subscribers": subscribers,
    }))
}
