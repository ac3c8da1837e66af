//! Topic settings: from `--config` files and from the control plane, with
//! defaults for topics nobody configured (unless `--topics configured`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use sidestream_core::config::{self, Item, Kind, TopicSettings};
use tokio::sync::watch;

use crate::error::PushError;

/// Longest topic list one stream may subscribe to.
pub const MAX_TOPICS_PER_STREAM: usize = 64;

/// Whether `name` is a valid topic name (`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`).
pub fn valid_topic_name(name: &str) -> bool {
    config::valid_name(name)
}

/// The settings every topic is served with, by name.
#[derive(Debug)]
pub struct TopicRegistry {
    allow_unconfigured: bool,
    defaults: Arc<TopicSettings>,
    table: RwLock<TopicTable>,
    /// Bumped each time the control plane's topics are replaced: streams
    /// holding tokens re-check their revocation lists.
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct TopicTable {
    from_file: BTreeMap<String, Arc<TopicSettings>>,
    /// The control plane's topics (they win over the file's); `None` before the first snapshot.
    from_control_plane: Option<BTreeMap<String, Arc<TopicSettings>>>,
}

impl TopicRegistry {
    /// A registry holding the file's topics.
    pub fn new(from_file: Vec<TopicSettings>, allow_unconfigured: bool) -> TopicRegistry {
        TopicRegistry {
            allow_unconfigured,
            defaults: Arc::new(TopicSettings::defaults("default")),
            table: RwLock::new(TopicTable {
                from_file: from_file
                    .into_iter()
                    .map(|settings| (settings.name.clone(), Arc::new(settings)))
                    .collect(),
                from_control_plane: None,
            }),
            changes: watch::Sender::new(0),
        }
    }

    /// Tells when the settings change (each new control-plane snapshot).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The settings of `topic`: configured, else the defaults (when unconfigured topics are allowed).
    pub fn get(&self, topic: &str) -> Result<Arc<TopicSettings>, PushError> {
        if !valid_topic_name(topic) {
            return Err(PushError::InvalidTopic(topic.chars().take(200).collect()));
        }
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(settings) = table
            .from_control_plane
            .as_ref()
            .and_then(|topics| topics.get(topic))
            .or_else(|| table.from_file.get(topic))
        {
            return Ok(settings.clone());
        }
        if self.allow_unconfigured {
            Ok(self.defaults.clone())
        } else {
            Err(PushError::UnknownTopic(topic.to_owned()))
        }
    }

    /// Replaces the control plane's topics (a new snapshot).
    pub fn apply_control_plane(&self, topics: impl IntoIterator<Item = TopicSettings>) {
        let topics = topics
            .into_iter()
            .map(|settings| (settings.name.clone(), Arc::new(settings)))
            .collect();
        let mut table = self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table.from_control_plane = Some(topics);
        drop(table);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Names of every configured topic (file and control plane).
    pub fn configured(&self) -> Vec<String> {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut names: Vec<String> = table.from_file.keys().cloned().collect();
        if let Some(topics) = &table.from_control_plane {
            names.extend(topics.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }
}

/// A `--config` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicFileError {
    #[error("cannot read topic settings file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topic settings file {path} is neither JSON nor YAML: {message}")]
    Syntax { path: String, message: String },
    #[error("topic settings file {path}: {source}")]
    Invalid {
        path: String,
        source: config::ConfigError,
    },
}

/// Reads the TopicSettings documents of a file (JSON or YAML; one document or
/// a list). Documents of other kinds are skipped with a warning.
pub fn load_file(path: &Path) -> Result<Vec<TopicSettings>, TopicFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TopicFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_documents(&text).map_err(|error| match error {
        ParseError::Syntax(message) => TopicFileError::Syntax {
            path: shown.clone(),
            message,
        },
        ParseError::Invalid(source) => TopicFileError::Invalid {
            path: shown.clone(),
            source,
        },
    })
}

enum ParseError {
    Syntax(String),
    Invalid(config::ConfigError),
}

fn parse_documents(text: &str) -> Result<Vec<TopicSettings>, ParseError> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => serde_norway::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?,
    };
    let documents = config::documents_from_value(value).map_err(ParseError::Invalid)?;
    let mut topics = Vec::new();
    for document in documents {
        if document.kind != Kind::Topic {
            tracing::warn!(kind = document.kind.document_kind(), name = %document.name, "Skipping a document that is not TopicSettings");
            continue;
        }
        match document.validate().map_err(ParseError::Invalid)? {
            Item::Topic(settings) => topics.push(settings),
            other => tracing::warn!(
                kind = other.kind().document_kind(),
                "Skipping a document that is not TopicSettings"
            ),
        }
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_documents_and_falls_back_to_defaults() {
        let topics = match parse_documents(
            "- kind: TopicSettings\n  name: prices\n  spec: { historySize: 5, maxMessageBytes: 10 }\n- kind: TopicSettings\n  name: news\n  spec: {}\n",
        ) {
            Ok(topics) => topics,
            Err(_) => panic!("valid documents refused"),
        };
        let registry = TopicRegistry::new(topics, true);
        let prices = registry.get("prices").unwrap();
        assert_eq!((prices.history_size, prices.max_message_bytes), (5, 10));
        assert_eq!(registry.get("other").unwrap().history_size, 1000);
        assert!(matches!(
            registry.get("bad topic"),
            Err(PushError::InvalidTopic(_))
        ));

        let strict = TopicRegistry::new(Vec::new(), false);
        assert!(matches!(
            strict.get("other"),
            Err(PushError::UnknownTopic(_))
        ));
        strict.apply_control_plane([TopicSettings::defaults("other")]);
        assert!(strict.get("other").is_ok());
    }

    #[test]
    fn invalid_documents_are_refused() {
        assert!(matches!(
            parse_documents("{\"kind\": \"TopicSettings\", \"name\": \"t\", \"spec\": {\"maxMessageBytes\": 0}}"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_documents("{: ["),
            Err(ParseError::Syntax(_))
        ));
    }
}
