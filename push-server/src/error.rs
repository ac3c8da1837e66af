//! The push server's one error type: HTTP responses (`IntoResponse`) and gRPC
//! statuses (`From<PushError> for tonic::Status`) are both made here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::broker::BrokerError;
use crate::event_id::EventIdError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("'{0}' is not a valid topic name (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)")]
    InvalidTopic(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("message of {size} bytes exceeds topic '{topic}''s limit of {limit} bytes")]
    TooLarge {
        topic: String,
        size: usize,
        limit: usize,
    },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    EventId(#[from] EventIdError),
    #[error("the server is draining; reconnect in {retry_ms} ms")]
    Draining { retry_ms: u64 },
    #[error("the message broker is unavailable")]
    Broker(#[source] BrokerError),
    #[error("slow consumer: the subscriber queue overflowed; resume from the last id")]
    SlowConsumer,
    #[error("the request head did not arrive in time")]
    RequestTimeout,
    #[error("no such endpoint")]
    NoRoute,
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    #[error("not a WebSocket upgrade: {message}")]
    NotWebSocket { status: StatusCode, message: String },
}

impl From<BrokerError> for PushError {
    fn from(error: BrokerError) -> Self {
        PushError::Broker(error)
    }
}

impl PushError {
    /// A stable, machine-readable code for the response body.
    pub fn code(&self) -> &'static str {
        match self {
            PushError::InvalidTopic(_) => "invalid_topic",
            PushError::UnknownTopic(_) => "unknown_topic",
            PushError::BadRequest(_) => "bad_request",
            PushError::Unauthorized(_) => "unauthorized",
            PushError::Forbidden(_) => "forbidden",
            PushError::TooLarge { .. } => "message_too_large",
            PushError::UnsupportedMediaType(_) => "unsupported_media_type",
            PushError::EventId(_) => "bad_last_event_id",
            PushError::Draining { .. } => "draining",
            PushError::Broker(BrokerError::TooManyTopics(_)) => "too_many_topics",
            PushError::Broker(_) => "broker_unavailable",
            PushError::SlowConsumer => "slow_consumer",
            PushError::RequestTimeout => "request_timeout",
            PushError::NoRoute => "not_found",
            PushError::MethodNotAllowed => "method_not_allowed",
            PushError::NotWebSocket { .. } => "bad_websocket_upgrade",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            PushError::InvalidTopic(_) | PushError::BadRequest(_) | PushError::EventId(_) => {
                StatusCode::BAD_REQUEST
            }
            PushError::UnknownTopic(_) => StatusCode::NOT_FOUND,
            PushError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            PushError::Forbidden(_) => StatusCode::FORBIDDEN,
            PushError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PushError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PushError::Draining { .. } | PushError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            PushError::SlowConsumer => StatusCode::TOO_MANY_REQUESTS,
            PushError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            PushError::NoRoute => StatusCode::NOT_FOUND,
            PushError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PushError::NotWebSocket { status, .. } => *status,
        }
    }

    /// The message shown to clients (broker details stay in the log).
    pub fn public_message(&self) -> String {
        match self {
            PushError::Broker(BrokerError::TooManyTopics(_)) => {
                "too many topics on this server".into()
            }
            PushError::Broker(_) => "the message broker is unavailable; retry later".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        if let PushError::Broker(error) = &self {
            tracing::warn!(%error, "Broker error");
        }
        let status = self.status();
        let body = serde_json::json!({ "error": self.code(), "message": self.public_message() });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            PushError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sidestream\""),
                );
            }
            PushError::Draining { retry_ms } => {
                if let Ok(value) =
                    HeaderValue::from_str(&retry_ms.div_ceil(1000).max(1).to_string())
                {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            PushError::Broker(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<PushError> for tonic::Status {
    fn from(error: PushError) -> tonic::Status {
        if let PushError::Broker(error) = &error {
            tracing::warn!(%error, "Broker error");
        }
        let message = error.public_message();
        let mut status = match &error {
            PushError::InvalidTopic(_)
            | PushError::BadRequest(_)
            | PushError::EventId(_)
            | PushError::UnsupportedMediaType(_) => tonic::Status::invalid_argument(message),
            PushError::UnknownTopic(_) => tonic::Status::not_found(message),
            PushError::Unauthorized(_) => tonic::Status::unauthenticated(message),
            PushError::Forbidden(_) => tonic::Status::permission_denied(message),
            PushError::TooLarge { .. } => tonic::Status::out_of_range(message),
            PushError::Broker(BrokerError::TooManyTopics(_)) | PushError::SlowConsumer => {
                tonic::Status::resource_exhausted(message)
            }
            PushError::Draining { .. } | PushError::Broker(_) => {
                tonic::Status::unavailable(message)
            }
            PushError::RequestTimeout => tonic::Status::deadline_exceeded(message),
            PushError::NoRoute | PushError::MethodNotAllowed => {
                tonic::Status::unimplemented(message)
            }
            PushError::NotWebSocket { .. } => tonic::Status::invalid_argument(message),
        };
        if let PushError::Draining { retry_ms } = &error {
            if let Ok(value) = retry_ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS_METADATA, value);
            }
        }
        status
    }
}

/// gRPC metadata telling a client when to come back (drain).
pub const RETRY_AFTER_MS_METADATA: &str = "sidestream-retry-after-ms";
