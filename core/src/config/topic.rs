//! TopicSettings (`v1/topics/<name>`), read by the push servers.

use std::collections::BTreeSet;
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
    /// Subscription tokens refused by subject (their `sub` claim): refused
    /// at open, and open streams holding one end within a second of these
    /// settings arriving; at most 10000, each 1..=256 bytes without
    /// control characters.
    #[serde(default)]
    pub revoked_subjects: Vec<String>,
    /// Subscription tokens refused by id (their `jti` claim), as
    /// `revokedSubjects`; at most 10000, each 1..=256 bytes without control
    /// characters.
    #[serde(default)]
    pub revoked_token_ids: Vec<String>,
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
            revoked_subjects: Vec::new(),
            revoked_token_ids: Vec::new(),
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
    /// Token subjects (`sub`) refused for subscribing.
    pub revoked_subjects: BTreeSet<String>,
    /// Token ids (`jti`) refused for subscribing.
    pub revoked_token_ids: BTreeSet<String>,
}

/// Why a topic refuses a subscription token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its subject is in `revokedSubjects`.
    Subject,
    /// Its id is in `revokedTokenIds`.
    TokenId,
}

impl Revoked {
    /// The settings field that refuses the token.
    pub fn field(self) -> &'static str {
        match self {
            Revoked::Subject => "revokedSubjects",
            Revoked::TokenId => "revokedTokenIds",
        }
    }
}

/// Most entries of one revocation list.
pub const MAX_REVOKED: usize = 10_000;
/// Longest entry of a revocation list, in bytes.
const MAX_REVOKED_LEN: usize = 256;

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
            revoked_subjects: BTreeSet::new(),
            revoked_token_ids: BTreeSet::new(),
        }
    }

    /// Whether a subscription token with subject `sub` and id `jti` is
    /// refused here, and by which list.
    pub fn revokes(&self, sub: Option<&str>, jti: Option<&str>) -> Option<Revoked> {
        if sub.is_some_and(|sub| self.revoked_subjects.contains(sub)) {
            return Some(Revoked::Subject);
        }
        if jti.is_some_and(|jti| self.revoked_token_ids.contains(jti)) {
            return Some(Revoked::TokenId);
        }
        None
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
        let revoked_subjects =
            revocation_list(&mut problems, "revokedSubjects", &raw.revoked_subjects);
        let revoked_token_ids =
            revocation_list(&mut problems, "revokedTokenIds", &raw.revoked_token_ids);
        problems.into_result(TopicSettings {
            name: name.to_owned(),
            history_size: usize::try_from(raw.history_size).unwrap_or(usize::MAX),
            history_max_age: Duration::from_secs(raw.history_max_age_seconds),
            max_message_bytes: usize::try_from(raw.max_message_bytes).unwrap_or(usize::MAX),
            publish_keys: raw.publish_keys,
            subscribe_auth: raw.subscribe_auth,
            revoked_subjects,
            revoked_token_ids,
        })
    }

    pub fn to_raw(&self) -> RawTopicSettings {
        RawTopicSettings {
            history_size: self.history_size as u64,
            history_max_age_seconds: self.history_max_age.as_secs(),
            max_message_bytes: self.max_message_bytes as u64,
            publish_keys: self.publish_keys.clone(),
            subscribe_auth: self.subscribe_auth,
            revoked_subjects: self.revoked_subjects.iter().cloned().collect(),
            revoked_token_ids: self.revoked_token_ids.iter().cloned().collect(),
        }
    }
}

/// Checks one revocation list (size, entries, duplicates) and returns it as a set.
fn revocation_list(problems: &mut Problems, field: &str, list: &[String]) -> BTreeSet<String> {
    if list.len() > MAX_REVOKED {
        problems.push(
            field,
            format!("{} entries is above {MAX_REVOKED}", list.len()),
        );
        return BTreeSet::new();
    }
    let mut set = BTreeSet::new();
    for (i, entry) in list.iter().enumerate() {
        if entry.is_empty() || entry.len() > MAX_REVOKED_LEN {
            problems.push(
                format!("{field}[{i}]"),
                format!("must be 1..={MAX_REVOKED_LEN} bytes, not {}", entry.len()),
            );
        } else if entry.chars().any(char::is_control) {
            problems.push(
                format!("{field}[{i}]"),
                format!("{entry:?} holds a control character"),
            );
        } else if !set.insert(entry.clone()) {
            problems.push(
                format!("{field}[{i}]"),
                format!("'{entry}' is listed twice"),
            );
        }
    }
    set
}
