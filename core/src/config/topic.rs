//! TopicSettings (`v1/topics/<name>`), read by the push servers.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Problem, Problems};

/// Settings of one push topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTopicSettings {
    /// Messages kept for resuming subscribers, 0..=1000000.
    #[serde(default = "default_history_size")]
    #[schemars(range(max = 1_000_000))]
    pub history_size: u64,
    /// Messages older than this are dropped from history, ≥ 1 second.
    #[serde(default = "default_history_max_age")]
    #[schemars(range(min = 1))]
    pub history_max_age_seconds: u64,
    /// Largest message accepted for publishing, 1..=16777216 bytes (16 MiB).
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 16_777_216))]
    pub max_message_bytes: u64,
    /// Static bearer keys allowed to publish to this topic (besides JWTs);
    /// each 16..=512 visible ASCII characters.
    #[serde(default)]
    pub publish_keys: Vec<String>,
    /// Who may subscribe: `none` (anyone) or `token` (a JWT with a topic claim).
    #[serde(default)]
    pub subscribe_auth: SubscribeAuth,
}

fn default_history_size() -> u64 {
    1000
}

fn default_history_max_age() -> u64 {
    3600
}

fn default_max_message_bytes() -> u64 {
    65_536
}

impl Default for RawTopicSettings {
    fn default() -> Self {
        RawTopicSettings {
            history_size: default_history_size(),
            history_max_age_seconds: default_history_max_age(),
            max_message_bytes: default_max_message_bytes(),
            publish_keys: Vec::new(),
            subscribe_auth: SubscribeAuth::None,
        }
    }
}

/// Who may subscribe to a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SubscribeAuth {
    /// Anyone.
    #[default]
    None,
    /// A JWT with a topic claim.
    Token,
}

/// Validated topic settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub name: String,
    pub history_size: usize,
    pub history_max_age: Duration,
    pub max_message_bytes: usize,
    pub publish_keys: Vec<String>,
    pub subscribe_auth: SubscribeAuth,
}

const MAX_HISTORY: u64 = 1_000_000;
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;

impl TopicSettings {
    /// The settings a topic has when nothing is configured for it.
    pub fn defaults(name: &str) -> TopicSettings {
        let raw = RawTopicSettings::default();
        TopicSettings {
            name: name.to_owned(),
            history_size: 1000,
            history_max_age: Duration::from_secs(raw.history_max_age_seconds),
            max_message_bytes: 65_536,
            publish_keys: Vec::new(),
            subscribe_auth: SubscribeAuth::None,
        }
    }

    pub(crate) fn from_raw(name: &str, raw: RawTopicSettings) -> Result<Self, Vec<Problem>> {
        let mut problems = Problems::default();
        if raw.history_size > MAX_HISTORY {
            problems.push(
                "historySize",
                format!("{} is above {MAX_HISTORY}", raw.history_size),
            );
        }
        if raw.history_max_age_seconds == 0 {
            problems.push("historyMaxAgeSeconds", "0 is below 1");
        }
        if !(1..=MAX_MESSAGE).contains(&raw.max_message_bytes) {
            problems.push(
                "maxMessageBytes",
                format!("{} is not within 1..={MAX_MESSAGE}", raw.max_message_bytes),
            );
        }
        for (i, key) in raw.publish_keys.iter().enumerate() {
            if !(16..=512).contains(&key.len()) || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                problems.push(
                    format!("publishKeys[{i}]"),
                    "must be 16..=512 visible ASCII characters (value not shown)",
                );
            } else if raw.publish_keys[..i].contains(key) {
                problems.push(format!("publishKeys[{i}]"), "is listed twice");
            }
        }
        problems.into_result(TopicSettings {
            name: name.to_owned(),
            history_size: usize::try_from(raw.history_size).unwrap_or(usize::MAX),
            history_max_age: Duration::from_secs(raw.history_max_age_seconds),
            max_message_bytes: usize::try_from(raw.max_message_bytes).unwrap_or(usize::MAX),
            publish_keys: raw.publish_keys,
            subscribe_auth: raw.subscribe_auth,
        })
    }

    pub fn to_raw(&self) -> RawTopicSettings {
        RawTopicSettings {
            history_size: self.history_size as u64,
            history_max_age_seconds: self.history_max_age.as_secs(),
            max_message_bytes: self.max_message_bytes as u64,
            publish_keys: self.publish_keys.clone(),
            subscribe_auth: self.subscribe_auth,
        }
    }
}
