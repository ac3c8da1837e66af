//! A push server's state for the push-server fuzz targets: the memory broker,
//! three configured topics with history, a fixed JWT key and static publish
//! key. A new state per input, so a crash replays from its input alone.

// Each target uses a part of this file.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use sidestream_push::message::{Draft, MessageId};
use sidestream_push::topics::TopicRegistry;
use sidestream_push::{AppState, BrokerSpec, Settings};
use tokio::runtime::Runtime;

/// The HS256 key tokens are checked with.
pub const JWT_SECRET: &str = "fuzz-jwt-secret-0123456789";
/// The static publish key of topic `news`.
pub const STATIC_KEY: &str = "static-key-0123456789";
/// Topics: `ticker` (40 messages published, 32 kept), `news` (3 messages, a
/// static publish key), `private` (subscribing needs a token, 1 message).
pub const TOPICS: [&str; 3] = ["ticker", "news", "private"];

/// One current-thread runtime for every input.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => panic!("no runtime: {error}"),
        }
    })
}

/// A fresh server state and the head id of each of [`TOPICS`].
pub async fn state() -> (Arc<AppState>, [MessageId; 3]) {
    let mut ticker = TopicSettings::defaults("ticker");
    ticker.history_size = 32;
    ticker.max_message_bytes = 4096;
    let mut news = TopicSettings::defaults("news");
    news.publish_keys = vec![STATIC_KEY.to_owned()];
    news.max_message_bytes = 1024;
    let mut private = TopicSettings::defaults("private");
    private.subscribe_auth = SubscribeAuth::Token;
    let settings = Settings {
        jwt_secret: Some(JWT_SECRET.to_owned()),
        publish_open: false,
        queue_capacity: 16,
        max_topics: 8,
        heartbeat: Duration::from_secs(3600),
        ..Settings::default()
    };
    let topics = TopicRegistry::new(vec![ticker, news, private], false);
    let state = match AppState::new(settings, topics, &BrokerSpec::Memory).await {
        Ok(state) => state,
        Err(error) => panic!("memory broker: {error}"),
    };
    let mut heads = [MessageId {
        epoch: sidestream_push::message::Epoch(0),
        seq: 0,
    }; 3];
    for (i, (topic, count)) in TOPICS.iter().zip([40, 3, 1]).enumerate() {
        let name: Arc<str> = Arc::from(*topic);
        let settings = match state.topics.get(topic) {
            Ok(settings) => settings,
            Err(error) => panic!("topic {topic}: {error}"),
        };
        for n in 0..count {
            let draft = Draft {
                data: Bytes::from(format!("message {n}")),
                event: (n % 2 == 0).then(|| "tick".to_owned()),
                idempotency_key: Some(format!("seed-{n}")),
                traceparent: None,
            };
            match state.broker.publish(&name, &settings, draft).await {
                Ok(published) => heads[i] = published.id,
                Err(error) => panic!("seeding {topic}: {error}"),
            }
        }
    }
    (state, heads)
}

/// A JWT signed with [`JWT_SECRET`], valid for a day from its first use:
/// subscribe to `private` and `tick*`, publish to `news` and `ticker`.
pub fn valid_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 86_400;
        let claims = serde_json::json!({
            "sub": "fuzz",
            "exp": exp,
            "subscribe": ["private", "tick*"],
            "publish": ["news", "ticker"],
        });
        match jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        ) {
            Ok(token) => token,
            Err(error) => panic!("signing a token: {error}"),
        }
    })
}

/// Substitutions in inputs: `$T`, `$N` and `$P` stand for the epochs of the
/// three topics (random per state), `$J` for [`valid_token`], so inputs can
/// name the current epoch and carry a good token.
pub fn expand(text: &str, heads: &[MessageId; 3]) -> String {
    if !text.contains('$') {
        return text.to_owned();
    }
    text.replace("$T", &heads[0].epoch.to_string())
        .replace("$N", &heads[1].epoch.to_string())
        .replace("$P", &heads[2].epoch.to_string())
        .replace("$J", valid_token())
}
