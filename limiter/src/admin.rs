//! The admin HTTP server: `/healthz` (the process runs), `/readyz` (Redis
//! answers PING), `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::store::Store;

/// How often Redis is PINGed for readiness.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What the admin routes read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Whether the last PING was answered.
    pub redis_up: Arc<AtomicBool>,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.redis_up.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis does not answer PING\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "Cannot render the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// PINGs Redis every [`HEALTH_INTERVAL`]; readiness and the `redis_up`
/// gauge follow the answer.
pub async fn health_loop(store: Arc<Store>, state: AdminState) {
    loop {
        let result = store.ping().await;
        let up = result.is_ok();
        state.metrics.redis_up.set(i64::from(up));
        if state.redis_up.swap(up, Ordering::AcqRel) != up {
            match result {
                Ok(()) => tracing::info!("Redis answers: ready"),
                Err(error) => tracing::warn!(%error, "Redis does not answer: not ready"),
            }
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readiness_follows_redis_and_metrics_render() {
        let state = AdminState {
            redis_up: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::new()),
        };
        let app = router(state.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis does not answer PING\n".to_owned()
            )
        );
        state.redis_up.store(true, Ordering::Release);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        state.metrics.request(
            crate::metrics::Method::Acquire,
            crate::metrics::Outcome::RefusedRate,
        );
        let (status, text) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                r#"sidestream_limiter_requests_total{method="acquire",outcome="refused_rate"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# HELP sidestream_limiter_redis_up"),
            "{text}"
        );
    }
}
