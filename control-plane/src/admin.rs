//! The admin HTTP API (axum): health, readiness, metrics, the current
//! snapshot, connected clients and rejections.
//!
//! The JSON views are the types below (and those re-exported here); the
//! control plane serialises them and `sidestreamctl status` deserialises the
//! same types, so the two cannot drift apart.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::state::ControlPlane;

pub use crate::config_state::{Rejection, UnknownKey};
pub use crate::state::{ClientInfo, Nack, RejectionsView};

/// Errors of the admin API; details are logged, not leaked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No snapshot yet (etcd never read and no cache).
    #[error("no snapshot yet")]
    NoSnapshot,
    /// The snapshot could not be rendered.
    #[error("snapshot JSON: {0}")]
    Render(#[from] serde_json::Error),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::NoSnapshot => {
                (StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n").into_response()
            }
            AdminError::Render(error) => {
                tracing::error!(%error, "Cannot render the snapshot");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

/// The current snapshot as `/v1/snapshot` shows it.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    /// "<revision>-<hash16>".
    pub version: String,
    /// etcd revision.
    pub revision: i64,
    /// SHA-256 of the snapshot JSON.
    pub content_hash: String,
    /// When the change was seen (Unix ns).
    pub observed_unix_nanos: i64,
    /// Whether the first full read of etcd is done (else this is the cache).
    pub ready: bool,
    /// The snapshot.
    pub snapshot: Value,
}

/// The admin router over the shared state.
pub fn router(state: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/clients", get(clients))
        .route("/v1/rejections", get(rejections))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<ControlPlane>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full read of etcd\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<ControlPlane>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn snapshot(
    State(state): State<Arc<ControlPlane>>,
) -> Result<Json<SnapshotView>, AdminError> {
    let current = state.snapshot().ok_or(AdminError::NoSnapshot)?;
    Ok(Json(SnapshotView {
        version: current.version.clone(),
        revision: current.revision,
        content_hash: current.content_hash.clone(),
        observed_unix_nanos: current.observed_unix_nanos,
        ready: state.is_ready(),
        snapshot: serde_json::from_slice(&current.json)?,
    }))
}

async fn clients(State(state): State<Arc<ControlPlane>>) -> Json<Vec<ClientInfo>> {
    Json(state.clients())
}

async fn rejections(State(state): State<Arc<ControlPlane>>) -> Json<RejectionsView> {
    Json(state.rejections())
}
