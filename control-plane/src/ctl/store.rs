//! sidestreamctl's etcd operations. Every write is a transaction that compares
//! the `mod_revision` read when the change was planned, so two users cannot
//! overwrite each other: the slower one is told its base is stale.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use sidestream_core::config::{key_for, parse_spec, ConfigError, Document, Kind};

use crate::etcd::{is_compacted, EtcdSettings};

/// Errors of sidestreamctl's etcd operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Someone changed the key since it was read.
    #[error("base is stale: key {key} changed at revision {revision} since you read it (at mod revision {base}); read it again and retry")]
    Stale {
        /// The full key.
        key: String,
        /// The revision of the change that won (0 when it was deleted).
        revision: i64,
        /// The mod revision the plan was based on (0: absent).
        base: i64,
    },
    /// The key does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The requested revision was compacted.
    #[error("revision {0} was compacted; etcd no longer has it")]
    Compacted(i64),
    /// The old value does not validate any more.
    #[error("the value at revision {revision} is not valid: {error}")]
    Invalid {
        /// The revision.
        revision: i64,
        /// Why.
        error: ConfigError,
    },
    /// The key held no value at that revision.
    #[error("{key} had no value at revision {revision}")]
    NoValueAt {
        /// The full key.
        key: String,
        /// The revision.
        revision: i64,
    },
}

/// A key as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// Kind.
    #[serde(serialize_with = "kind_name")]
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Full key.
    pub key: String,
    /// Raw value.
    #[serde(skip)]
    pub value: Vec<u8>,
    /// Revision of the last write.
    pub mod_revision: i64,
    /// Revision of the creation.
    pub create_revision: i64,
    /// Writes since creation.
    pub version: i64,
}

fn kind_name<S: serde::Serializer>(kind: &Kind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.document_kind())
}

impl Stored {
    /// The value as JSON (a string holding the raw text when it is not JSON).
    pub fn spec(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.value).into_owned())
        })
    }
}

/// One key to write.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// Kind.
    #[serde(serialize_with = "kind_name")]
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Full key.
    pub key: String,
    /// What is there now (as read), if anything.
    pub old: Option<serde_json::Value>,
    /// What will be written.
    pub new: serde_json::Value,
    /// The mod revision read (0: the key was absent); the write requires it unchanged.
    pub base_mod_revision: i64,
}

/// The changes an apply will make.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Keys to write.
    pub changes: Vec<PlannedChange>,
    /// Keys already holding the same spec.
    pub unchanged: Vec<String>,
}

/// One entry of a key's history.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Revision of this write.
    pub mod_revision: i64,
    /// Revision at which this incarnation of the key was created.
    pub create_revision: i64,
    /// Writes since creation.
    pub version: i64,
    /// The value.
    pub spec: serde_json::Value,
    /// Whether it validates today.
    pub valid: bool,
}

/// A key's history as far as etcd still keeps it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Full key.
    pub key: String,
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// Older revisions exist but were compacted.
    pub truncated_by_compaction: bool,
}

/// sidestreamctl's view of etcd.
pub struct Store {
    client: Client,
    settings: EtcdSettings,
}

impl Store {
    /// Connects.
    pub async fn connect(settings: EtcdSettings) -> Result<Store, StoreError> {
        let client = settings.connect().await?;
        Ok(Store { client, settings })
    }

    /// The settings used.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    fn stored(&self, kv: &etcd_client::KeyValue) -> Option<Stored> {
        let key = kv.key_str().ok()?;
        let relative = self.settings.relative_key(key)?;
        let (kind, name) = sidestream_core::config::classify_key(relative).ok()?;
        Some(Stored {
            kind,
            name,
            key: key.to_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            version: kv.version(),
        })
    }

    /// The object `kind`/`name` as of `revision` (now when `None`).
    pub async fn get(
        &self,
        kind: Kind,
        name: &str,
        revision: Option<i64>,
    ) -> Result<Option<Stored>, StoreError> {
        let key = self.settings.full_key(&key_for(kind, name));
        let options = revision.map(|r| GetOptions::new().with_revision(r));
        let mut kv = self.client.kv_client();
        let response = kv.get(key, options).await.map_err(|error| match revision {
            Some(r) if is_compacted(&error) => StoreError::Compacted(r),
            _ => StoreError::Etcd(error),
        })?;
        Ok(response.kvs().first().and_then(|kv| self.stored(kv)))
    }

    /// Every object (of `kind`, when given), and the revision read at.
    pub async fn list(&self, kind: Option<Kind>) -> Result<(Vec<Stored>, i64), StoreError> {
        let prefix = match kind {
            Some(Kind::Trace) => self.settings.full_key(&key_for(Kind::Trace, "")),
            Some(kind) => self
                .settings
                .full_key(&format!("v1/{}/", kind.key_segment())),
            None => self.settings.key_prefix(),
        };
        let mut kv = self.client.kv_client();
        let response = kv
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let items = response
            .kvs()
            .iter()
            .filter_map(|kv| self.stored(kv))
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .collect();
        Ok((items, revision))
    }

    /// Plans writing `documents`: reads each key (as of `base_revision`, or
    /// now) and keeps only the documents whose spec differs.
    pub async fn plan(
        &self,
        documents: &[Document],
        base_revision: Option<i64>,
    ) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        for document in documents {
            let current = self
                .get(document.kind, &document.name, base_revision)
                .await?;
            let key = self.settings.full_key(&document.key());
            let old = current.as_ref().map(Stored::spec);
            if old.as_ref() == Some(&document.spec) {
                plan.unchanged.push(key);
                continue;
            }
            plan.changes.push(PlannedChange {
                kind: document.kind,
                name: document.name.clone(),
                key,
                old,
                new: document.spec.clone(),
                base_mod_revision: current.map_or(0, |c| c.mod_revision),
            });
        }
        Ok(plan)
    }

    /// Writes the plan in one transaction that requires every key's mod
    /// revision to be the one read; returns the new revision.
    pub async fn commit(&self, plan: &Plan) -> Result<i64, StoreError> {
        let mut compares = Vec::new();
        let mut puts = Vec::new();
        let mut gets = Vec::new();
        for change in &plan.changes {
            compares.push(Compare::mod_revision(
                change.key.clone(),
                CompareOp::Equal,
                change.base_mod_revision,
            ));
            let value = serde_json::to_vec(&change.new).unwrap_or_default();
            puts.push(TxnOp::put(change.key.clone(), value, None));
            gets.push(TxnOp::get(change.key.clone(), None));
        }
        self.transact(
            compares,
            puts,
            gets,
            plan.changes
                .iter()
                .map(|c| (c.key.clone(), c.base_mod_revision))
                .collect(),
        )
        .await
    }

    async fn transact(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        gets: Vec<TxnOp>,
        bases: Vec<(String, i64)>,
    ) -> Result<i64, StoreError> {
        let txn = Txn::new().when(compares).and_then(ops).or_else(gets);
        let mut kv = self.client.kv_client();
        let response = kv.txn(txn).await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        if response.succeeded() {
            return Ok(revision);
        }
        for (op, (key, base)) in response.op_responses().into_iter().zip(bases) {
            if let TxnOpResponse::Get(get) = op {
                let now = get
                    .kvs()
                    .first()
                    .map_or(0, etcd_client::KeyValue::mod_revision);
                if now != base {
                    return Err(StoreError::Stale {
                        key,
                        revision: if now == 0 { revision } else { now },
                        base,
                    });
                }
            }
        }
        Err(StoreError::Stale {
            key: "(unknown)".to_owned(),
            revision,
            base: 0,
        })
    }

    /// Deletes `kind`/`name` if it is still what was read; returns the revision.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<i64, StoreError> {
        let current = self
            .get(kind, name, None)
            .await?
            .ok_or_else(|| StoreError::NotFound(self.settings.full_key(&key_for(kind, name))))?;
        self.transact(
            vec![Compare::mod_revision(
                current.key.clone(),
                CompareOp::Equal,
                current.mod_revision,
            )],
            vec![TxnOp::delete(current.key.clone(), None)],
            vec![TxnOp::get(current.key.clone(), None)],
            vec![(current.key, current.mod_revision)],
        )
        .await
    }

    /// The previous values of `kind`/`name` that etcd still keeps, newest first
    /// (walking back with reads at `mod_revision - 1`).
    pub async fn history(
        &self,
        kind: Kind,
        name: &str,
        limit: usize,
    ) -> Result<History, StoreError> {
        let key = self.settings.full_key(&key_for(kind, name));
        let mut entries = Vec::new();
        let mut at: Option<i64> = None;
        let mut truncated = false;
        while entries.len() < limit {
            let stored = match self.get(kind, name, at).await {
                Ok(Some(stored)) => stored,
                Ok(None) => break,
                Err(StoreError::Compacted(_)) => {
                    truncated = true;
                    break;
                }
                Err(error) => return Err(error),
            };
            let valid = parse_spec(kind, name, &stored.value).is_ok();
            let previous = if stored.version <= 1 {
                stored.create_revision - 1
            } else {
                stored.mod_revision - 1
            };
            entries.push(HistoryEntry {
                mod_revision: stored.mod_revision,
                create_revision: stored.create_revision,
                version: stored.version,
                spec: stored.spec(),
                valid,
            });
            if previous <= 0 {
                break;
            }
            at = Some(previous);
        }
        Ok(History {
            key,
            entries,
            truncated_by_compaction: truncated,
        })
    }

    /// Plans putting back the value `kind`/`name` had at `revision`, after
    /// checking that it still validates.
    pub async fn plan_rollback(
        &self,
        kind: Kind,
        name: &str,
        revision: i64,
    ) -> Result<Plan, StoreError> {
        let key = self.settings.full_key(&key_for(kind, name));
        let old = self
            .get(kind, name, Some(revision))
            .await?
            .ok_or(StoreError::NoValueAt {
                key: key.clone(),
                revision,
            })?;
        parse_spec(kind, name, &old.value)
            .map_err(|error| StoreError::Invalid { revision, error })?;
        let document = Document {
            kind,
            name: name.to_owned(),
            spec: serde_json::from_slice(&old.value).map_err(|e| StoreError::Invalid {
                revision,
                error: ConfigError {
                    subject: kind.subject(name),
                    problems: vec![sidestream_core::config::Problem {
                        field: String::new(),
                        message: e.to_string(),
                    }],
                },
            })?,
        };
        self.plan(&[document], None).await
    }
}
