//! `GET /v1/ws` — WebSocket subscriptions with JSON text frames.
//!
//! Client → server:
//! - `{"type":"subscribe","topic":"a","from":"<message id>"?,"token":"<jwt>"?}`
//! - `{"type":"unsubscribe","topic":"a"}`
//! - `{"type":"refresh","token":"<jwt>","topic":"a"?}` (a renewed subscription
//!   token, checked as at subscribe for every topic that needs one, or for
//!   `topic` alone; it becomes the connection's token)
//!
//! Server → client:
//! - `{"type":"message","topic","id","event","data","publishedUnixNanos"}`
//! - `{"type":"reset","topic","reason","position"}` (missed messages; replay follows)
//! - `{"type":"subscribed","topic","position"}` (replay done, live from here)
//! - `{"type":"unsubscribed","topic"}`
//! - `{"type":"error","topic"?,"error","message"}` (the connection stays open)
//! - `{"type":"refreshed","topics","expiresAt"}` (the answer to `refresh`)
//! - `{"type":"token-expiring","expiresAt","closeInMs"}` (the token lapsed:
//!   refresh within `closeInMs`, the refresh grace, or the socket closes)
//! - `{"type":"drain","retryMs"}` then close 1012; `{"type":"disconnect","reason":"slow-consumer"}` then close 1013.
//! - `{"type":"token-expired","reason":"expired"|"revoked","positions"}` then
//!   close 4401 (expired) or 4403 (revoked).
//!
//! A token for topics with `subscribeAuth: token` may also come in the
//! upgrade's `Authorization` header or `token` query parameter. Pings go out
//! at the heartbeat interval.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use tracing::Instrument;

use super::{request_span, token, QueryParams};
use crate::error::PushError;
use crate::hub::ConnectionControl;
use crate::message::MessageId;
use crate::metrics::Transport;
use crate::session::{TokenEnd, TokenEvent};
use crate::state::AppState;
use crate::subscription::{Event, Subscription};

/// Close code: the server restarts (drain).
const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code: try again later (slow consumer).
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code: the subscription token expired and was not renewed.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4401;
/// Close code: the subscription token was revoked.
pub const CLOSE_TOKEN_REVOKED: u16 = 4403;
/// How long a cut subscriber gets to take its goodbye frame.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest client frame accepted.
const MAX_CLIENT_FRAME: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe {
        topic: String,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    Unsubscribe {
        topic: String,
    },
    Refresh {
        token: String,
        #[serde(default)]
        topic: Option<String>,
    },
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    connection: Option<Extension<Arc<ConnectionControl>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, PushError> {
    let upgrade = upgrade.map_err(|rejection| PushError::NotWebSocket {
        status: rejection.status(),
        message: rejection.body_text(),
    })?;
    let (span, _) = request_span("websocket", &headers);
    let query = QueryParams::parse(query.as_deref());
    let token = token(&headers, &query).map(str::to_owned);
    // After the upgrade the HTTP connection is gone: the socket gets its own
    // control, so a slow consumer that stops reading is still cut.
    drop(connection);
    let control = Arc::new(ConnectionControl::default());
    let subscription =
        span.in_scope(|| Subscription::open(&state, Transport::WebSocket, Some(control.clone())))?;
    let heartbeat = state.settings.heartbeat;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| {
            async move {
                tokio::select! {
                    () = run(socket, subscription, token, heartbeat) => {}
                    () = async {
                        control.cut_requested().await;
                        tokio::time::sleep(CUT_GRACE).await;
                    } => tracing::info!("Closed a WebSocket that stopped reading"),
                }
            }
            .instrument(span)
        }))
}

async fn run(
    mut socket: WebSocket,
    mut subscription: Subscription,
    mut token: Option<String>,
    heartbeat: std::time::Duration,
) {
    let mut ticks = crate::heartbeat::ticks(heartbeat);
    loop {
        tokio::select! {
            event = subscription.next_event() => {
                let Some(event) = event else { break };
                match write_event(&mut socket, &subscription, event).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
            frame = socket.recv() => {
                match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        let reply = handle_frame(&mut subscription, &mut token, text.as_str()).await;
                        if let Some(reply) = reply {
                            if send_json(&mut socket, &subscription, reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        let reply = error_frame(None, &PushError::BadRequest("send JSON text frames".into()));
                        if send_json(&mut socket, &subscription, reply).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = ticks.tick() => {
                if socket.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Handles one client text frame; returns the reply to send, if any.
/// (Public for the fuzz targets, `fuzz/fuzz_targets/ws_frame.rs`.)
#[doc(hidden)]
pub async fn handle_client_frame(
    subscription: &mut Subscription,
    upgrade_token: Option<&str>,
    text: &str,
) -> Option<serde_json::Value> {
    let mut token = upgrade_token.map(str::to_owned);
    handle_frame(subscription, &mut token, text).await
}

/// Handles one client text frame with the connection's token (which a
/// `refresh` replaces); returns the reply to send, if any.
async fn handle_frame(
    subscription: &mut Subscription,
    connection_token: &mut Option<String>,
    text: &str,
) -> Option<serde_json::Value> {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(error) => {
            return Some(error_frame(
                None,
                &PushError::BadRequest(format!("unreadable frame: {error}")),
            ));
        }
    };
    match frame {
        ClientFrame::Subscribe { topic, from, token } => {
            let result = async {
                let state = subscription.state().clone();
                let settings = state.topics.get(&topic)?;
                let grant = state.auth.authorize_subscribe(
                    &topic,
                    &settings,
                    token.as_deref().or(connection_token.as_deref()),
                )?;
                let from = match from.as_deref().filter(|f| !f.is_empty()) {
                    Some(from) => Some(
                        from.parse::<MessageId>()
                            .map_err(|e| PushError::BadRequest(e.to_string()))?,
                    ),
                    None => None,
                };
                subscription.add_held(&topic, from, grant).await
            }
            .await;
            // Success is announced by the `subscribed` event after the replay.
            result.err().map(|error| error_frame(Some(&topic), &error))
        }
        ClientFrame::Unsubscribe { topic } => {
            subscription.remove(&topic);
            Some(serde_json::json!({ "type": "unsubscribed", "topic": topic }))
        }
        ClientFrame::Refresh { token, topic } => {
            let result = refresh(subscription, &token, topic.as_deref());
            let metrics = &subscription.state().metrics;
            metrics.token_refresh(if result.is_ok() { "renewed" } else { "refused" });
            match result {
                Ok(topics) => {
                    if topic.is_none() {
                        *connection_token = Some(token);
                    }
                    Some(serde_json::json!({
                        "type": "refreshed",
                        "topics": topics,
                        "expiresAt": subscription.token_exp(),
                    }))
                }
                Err(error) => Some(error_frame(topic.as_deref(), &error)),
            }
        }
    }
}

/// Checks `token` for every subscribed topic (or `only` that one) as a
/// subscribe would, and holds them under it; all or nothing. Returns the
/// topics that hold it.
fn refresh(
    subscription: &mut Subscription,
    token: &str,
    only: Option<&str>,
) -> Result<Vec<String>, PushError> {
    let state = subscription.state().clone();
    let mut grants = Vec::new();
    for (index, cursor) in subscription.cursors().iter().enumerate() {
        if only.is_some_and(|only| only != &*cursor.name) || !cursor.is_subscribed() {
            continue;
        }
        let settings = state.topics.get(&cursor.name)?;
        let grant = state
            .auth
            .authorize_subscribe(&cursor.name, &settings, Some(token))?;
        grants.push((index, cursor.name.to_string(), grant));
    }
    if let Some(only) = only.filter(|_| grants.is_empty()) {
        return Err(PushError::BadRequest(format!(
            "refresh names topic '{}', which this socket does not subscribe to",
            only.chars().take(200).collect::<String>()
        )));
    }
    if grants.iter().all(|(_, _, grant)| grant.is_none()) {
        // Nothing here needs a token: still refuse one that is no good.
        state.auth.check_subscription_token(token)?;
    }
    let mut topics = Vec::new();
    for (index, name, grant) in grants {
        if grant.is_some() {
            topics.push(name);
        }
        subscription.hold(index, grant);
    }
    Ok(topics)
}

fn error_frame(topic: Option<&str>, error: &PushError) -> serde_json::Value {
    if let PushError::Broker(broker) = error {
        tracing::warn!(error = %broker, "Broker error");
    }
    serde_json::json!({ "type": "error", "topic": topic, "error": error.code(), "message": error.public_message() })
}

async fn send_json(
    socket: &mut WebSocket,
    subscription: &Subscription,
    value: serde_json::Value,
) -> Result<(), axum::Error> {
    let text = value.to_string();
    subscription
        .state()
        .metrics
        .control_bytes(Transport::WebSocket, text.len());
    socket.send(WsMessage::Text(Utf8Bytes::from(text))).await
}

/// Writes one event; `Ok(false)` when the stream is over.
async fn write_event(
    socket: &mut WebSocket,
    subscription: &Subscription,
    event: Event,
) -> Result<bool, axum::Error> {
    match event {
        Event::Message { message, .. } => {
            let frame = message.ws_frame();
            let len = frame.len();
            let depth = subscription.queued();
            let text = Utf8Bytes::try_from(frame).map_err(axum::Error::new)?;
            socket.send(WsMessage::Text(text)).await?;
            subscription
                .state()
                .delivered(Transport::WebSocket, &message, len, depth);
            Ok(true)
        }
        Event::Reset {
            index,
            reason,
            position,
        } => {
            let topic = subscription.cursors()[index].name.to_string();
            send_json(socket, subscription, serde_json::json!({ "type": "reset", "topic": topic, "reason": reason.as_str(), "position": position.to_string() })).await?;
            Ok(true)
        }
        Event::Live { index } => {
            let cursor = &subscription.cursors()[index];
            send_json(socket, subscription, serde_json::json!({ "type": "subscribed", "topic": &*cursor.name, "position": cursor.position.to_string() })).await?;
            Ok(true)
        }
        Event::Drain { retry_ms } => {
            send_json(
                socket,
                subscription,
                serde_json::json!({ "type": "drain", "retryMs": retry_ms }),
            )
            .await?;
            close(
                socket,
                CLOSE_SERVICE_RESTART,
                &format!("draining; retry in {retry_ms} ms"),
            )
            .await;
            Ok(false)
        }
        Event::SlowConsumer => {
            let _ = send_json(
                socket,
                subscription,
                serde_json::json!({ "type": "disconnect", "reason": "slow-consumer" }),
            )
            .await;
            close(socket, CLOSE_TRY_AGAIN_LATER, "slow consumer").await;
            Ok(false)
        }
        Event::Token(TokenEvent::Expiring { exp, close_in }) => {
            let close_in_ms = u64::try_from(close_in.as_millis()).unwrap_or(u64::MAX);
            send_json(
                socket,
                subscription,
                serde_json::json!({ "type": "token-expiring", "expiresAt": exp, "closeInMs": close_in_ms }),
            )
            .await?;
            Ok(true)
        }
        Event::Token(TokenEvent::Ended(end)) => {
            let positions: serde_json::Map<String, serde_json::Value> = subscription
                .cursors()
                .iter()
                .map(|c| (c.name.to_string(), c.position.to_string().into()))
                .collect();
            let _ = send_json(
                socket,
                subscription,
                serde_json::json!({ "type": "token-expired", "reason": end.as_str(), "positions": positions }),
            )
            .await;
            let (code, reason) = match end {
                TokenEnd::Expired => (CLOSE_TOKEN_EXPIRED, "subscription token expired"),
                TokenEnd::Revoked => (CLOSE_TOKEN_REVOKED, "subscription token revoked"),
            };
            close(socket, code, reason).await;
            Ok(false)
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        socket.send(WsMessage::Close(Some(frame))),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;

    #[test]
    fn error_frames_carry_the_public_message() {
        let frame = error_frame(Some("t"), &PushError::Broker(BrokerError::TooManyTopics(2)));
        assert_eq!(frame["error"], "too_many_topics");
        assert_eq!(frame["message"], "too many topics on this server");
        let frame = error_frame(
            None,
            &PushError::Broker(BrokerError::Protocol("secret internals".into())),
        );
        assert_eq!(
            frame["message"],
            "the message broker is unavailable; retry later"
        );
    }
}
