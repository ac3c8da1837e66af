//! Publishing, shared by HTTP and gRPC: auth, limits, validation, then the broker.

use std::sync::Arc;

use crate::broker::Published;
use crate::error::PushError;
use crate::message::Draft;
use crate::state::AppState;

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Longest event name.
pub const MAX_EVENT_NAME: usize = 64;

/// Publishes `draft` to `topic` for the bearer of `token`.
pub async fn publish(
    state: &AppState,
    topic: &str,
    token: Option<&str>,
    draft: Draft,
) -> Result<Published, PushError> {
    let result = publish_checked(state, topic, token, draft).await;
    // The request span (HTTP or gRPC) is the publish span.
    let span = tracing::Span::current();
    sidestream_telemetry::set_attribute(&span, "messaging.destination.name", topic.to_owned());
    match &result {
        Ok(published) => {
            if published.duplicate {
                state.metrics.duplicates.inc();
            } else {
                state.metrics.published.inc();
            }
            sidestream_telemetry::set_attribute(
                &span,
                "messaging.message.id",
                published.id.to_string(),
            );
            sidestream_telemetry::set_attribute(&span, "duplicate", published.duplicate);
        }
        Err(error) => {
            state.metrics.rejected(error.code());
            sidestream_telemetry::set_error(&span, error.to_string());
        }
    }
    result
}

async fn publish_checked(
    state: &AppState,
    topic: &str,
    token: Option<&str>,
    draft: Draft,
) -> Result<Published, PushError> {
    let settings = state.topics.get(topic)?;
    state.auth.authorize_publish(topic, &settings, token)?;
    if draft.data.len() > settings.max_message_bytes {
        return Err(PushError::TooLarge {
            topic: topic.to_owned(),
            size: draft.data.len(),
            limit: settings.max_message_bytes,
        });
    }
    if std::str::from_utf8(&draft.data).is_err() {
        return Err(PushError::BadRequest(
            "message data must be UTF-8 text".into(),
        ));
    }
    if let Some(event) = &draft.event {
        validate_event_name(event)?;
    }
    if let Some(key) = &draft.idempotency_key {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY
            || !key.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            return Err(PushError::BadRequest(format!(
                "idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            )));
        }
    }
    let topic: Arc<str> = Arc::from(topic);
    let mut draft = draft;
    draft.traceparent =
        crate::trace::carried_traceparent(&tracing::Span::current(), draft.traceparent.take());
    let trace_id = draft
        .traceparent
        .as_deref()
        .and_then(crate::trace::trace_id)
        .map(str::to_owned);
    let published = state.broker.publish(&topic, &settings, draft).await?;
    tracing::info!(topic = %topic, id = %published.id, duplicate = published.duplicate, trace_id, "Published");
    Ok(published)
}

/// Event names: 1-64 of `A-Z a-z 0-9 . _ : -`; `sidestream.*` is reserved.
pub fn validate_event_name(event: &str) -> Result<(), PushError> {
    if event.is_empty()
        || event.len() > MAX_EVENT_NAME
        || !event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(PushError::BadRequest(format!(
            "event name '{}' must be 1-{MAX_EVENT_NAME} of A-Z a-z 0-9 . _ : -",
            event.chars().take(80).collect::<String>()
        )));
    }
    if event.starts_with("sidestream.") {
        return Err(PushError::BadRequest(format!(
            "event name '{event}' is reserved (sidestream.*)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        for good in ["tick", "price.update", "a:b-c_d"] {
            assert!(validate_event_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "has space",
            "line\nbreak",
            "sidestream.reset",
            &"x".repeat(65),
        ] {
            assert!(validate_event_name(bad).is_err(), "{bad}");
        }
    }
}
