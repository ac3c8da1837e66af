//! Config errors: a subject and every problem found.

use std::fmt;

/// "release policy 'checkout': rules[1].percent: 140 is above 100" — every
/// problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What was being read: `release policy 'checkout'`, `snapshot`, ...
    pub subject: String,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

/// One problem: the JSON path of the field (camelCase, `rules[1].percent`;
/// empty for the whole value) and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn single(
        subject: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            subject: subject.into(),
            problems: vec![Problem {
                field: field.into(),
                message: message.into(),
            }],
        }
    }

    /// The problems with `prefix.` put before each field path.
    pub(crate) fn problems_under(self, prefix: &str) -> impl Iterator<Item = Problem> + '_ {
        self.problems.into_iter().map(move |p| Problem {
            field: join_path(prefix, &p.field),
            message: p.message,
        })
    }
}

pub(crate) fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [] => write!(f, "{}: invalid", self.subject),
            [one] => write!(f, "{}: {one}", self.subject),
            many => {
                write!(f, "{}: {} problems: ", self.subject, many.len())?;
                for (i, p) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// An etcd key that is not a sidestream config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key '{0}' is not under v1/")]
    NotConfig(String),
    #[error("key '{0}' is not v1/trace, v1/releases/<name>, v1/stream-limits/<name> or v1/topics/<name>")]
    UnknownKind(String),
    #[error("key '{key}': '{name}' is not a valid name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)")]
    InvalidName { key: String, name: String },
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value if nothing was found, else the error.
    pub fn finish<T>(self, subject: impl Into<String>, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                subject: subject.into(),
                problems: self.0,
            })
        }
    }

    /// For the per-kind validators, which return bare problem lists.
    pub fn into_result<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// Deserialises a raw type, naming the field path on failure.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, Vec<Problem>> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![Problem {
            field,
            message: error.into_inner().to_string(),
        }]
    })
}
