//! What each sidestreamctl command does: read files, talk to etcd or the
//! control plane's admin API, and hand the result to [`render`].

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use sidestream_core::config::{key_for, schema, Document, Kind, TRACE_NAME};

use super::args::{Command, CtlArgs, Output};
use super::files::load;
use super::render::{self, Outcome};
use super::store::{Plan, Store, StoreError};
use super::{CtlError, EXIT_OK};
use crate::admin::{ClientInfo, RejectionsView, SnapshotView};
use crate::etcd::EtcdArgs;

/// Runs one command; returns the exit code of a success.
pub async fn execute(args: CtlArgs) -> Result<u8, CtlError> {
    let CtlArgs {
        etcd,
        admin,
        output,
        command,
    } = args;
    match command {
        Command::Validate { paths } => {
            render::validated(&load_valid(&paths)?, output);
        }
        Command::Schema { kind } => {
            let value = match kind {
                Some(kind) => schema::for_kind(kind),
                None => schema::document(),
            };
            render::json(&value);
        }
        Command::Status => {
            let status = AdminStatus::fetch(&admin).await?;
            render::status(&status, output);
        }
        Command::Apply {
            paths,
            dry_run,
            base_revision,
        } => {
            let store = connect(&etcd).await?;
            let documents = load_valid(&paths)?;
            let plan = store.plan(&documents, base_revision).await?;
            write(&store, &plan, dry_run, output, |revision| {
                format!(
                    "Applied {} change(s) at revision {revision}.",
                    plan.changes.len()
                )
            })
            .await?;
        }
        Command::Rollback {
            kind,
            name,
            to_revision,
            dry_run,
        } => {
            let store = connect(&etcd).await?;
            let name = object_name(kind, name)?;
            let plan = store.plan_rollback(kind, &name, to_revision).await?;
            write(&store, &plan, dry_run, output, |revision| {
                format!("Rolled {kind} {name} back to its value at revision {to_revision} (now revision {revision}).")
            })
            .await?;
        }
        Command::Diff { paths } => {
            let store = connect(&etcd).await?;
            let documents = load_valid(&paths)?;
            let plan = store.plan(&documents, None).await?;
            render::plan(&plan, output, None);
        }
        Command::Get { kind, name } => {
            let store = connect(&etcd).await?;
            let items = match (kind, name) {
                (Some(kind), Some(name)) => {
                    let name = object_name(kind, Some(name))?;
                    let found = store.get(kind, &name, None).await?.ok_or_else(|| {
                        StoreError::NotFound(store.settings().full_key(&key_for(kind, &name)))
                    })?;
                    vec![found]
                }
                (kind, _) => store.list(kind).await?.0,
            };
            render::objects(&items, output);
        }
        Command::Delete { kind, name } => {
            let store = connect(&etcd).await?;
            let name = object_name(kind, name)?;
            let revision = store.delete(kind, &name).await?;
            render::deleted(kind, &name, revision, output);
        }
        Command::History { kind, name, limit } => {
            let store = connect(&etcd).await?;
            let name = object_name(kind, name)?;
            let history = store.history(kind, &name, limit).await?;
            render::history(&history, output);
        }
    }
    Ok(EXIT_OK)
}

async fn connect(etcd: &EtcdArgs) -> Result<Store, CtlError> {
    Ok(Store::connect(etcd.settings()?).await?)
}

/// The name of a `kind` object: trace settings have one fixed name, every
/// other kind needs one.
fn object_name(kind: Kind, name: Option<String>) -> Result<String, CtlError> {
    match (kind.is_singleton(), name) {
        (true, None) => Ok(TRACE_NAME.to_owned()),
        (true, Some(name)) if name == TRACE_NAME => Ok(name),
        (true, Some(name)) => Err(CtlError::Usage(format!(
            "trace settings have no name ('{name}' given)"
        ))),
        (false, Some(name)) => Ok(name),
        (false, None) => Err(CtlError::Usage(format!("{kind} needs a NAME"))),
    }
}

/// The documents of `paths`, or every problem in them.
fn load_valid(paths: &[PathBuf]) -> Result<Vec<Document>, CtlError> {
    let (loaded, problems) = load(paths);
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    Ok(loaded.into_iter().map(|l| l.document).collect())
}

/// Writes a planned change the way `apply` and `rollback` both do: a dry run
/// or an empty plan is only shown; otherwise it is shown, committed in one
/// transaction (stale if any key changed since it was read) and `summary` of
/// the new revision tells people what happened.
async fn write(
    store: &Store,
    plan: &Plan,
    dry_run: bool,
    output: Output,
    summary: impl FnOnce(i64) -> String,
) -> Result<(), CtlError> {
    if dry_run || plan.changes.is_empty() {
        let outcome = Outcome {
            dry_run,
            revision: None,
        };
        render::plan(plan, output, Some(outcome));
        return Ok(());
    }
    render::writing(plan, output);
    let revision = store.commit(plan).await?;
    render::written(plan, output, revision, &summary(revision));
    Ok(())
}

/// What `status` shows, read from the control plane's admin API as the
/// types it serves.
#[derive(Debug)]
pub struct AdminStatus {
    /// `/v1/snapshot` (`None` while it has none: 503).
    pub snapshot: Option<SnapshotView>,
    /// `/v1/clients`.
    pub clients: Vec<ClientInfo>,
    /// `/v1/rejections`.
    pub rejections: RejectionsView,
}

impl AdminStatus {
    /// Reads the three views from the admin API at `base`.
    pub async fn fetch(base: &str) -> Result<AdminStatus, CtlError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CtlError::Admin {
                url: base.to_owned(),
                message: e.to_string(),
            })?;
        let admin = AdminApi { client, base };
        Ok(AdminStatus {
            snapshot: admin.get_unless_unavailable("/v1/snapshot").await?,
            clients: admin.get("/v1/clients").await?,
            rejections: admin.get("/v1/rejections").await?,
        })
    }
}

struct AdminApi<'a> {
    client: reqwest::Client,
    base: &'a str,
}

impl AdminApi<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn error(&self, path: &str, message: String) -> CtlError {
        CtlError::Admin {
            url: self.url(path),
            message,
        }
    }

    async fn send(&self, path: &str) -> Result<reqwest::Response, CtlError> {
        self.client
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.error(path, e.to_string()))
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        response: reqwest::Response,
    ) -> Result<T, CtlError> {
        let status = response.status();
        if !status.is_success() {
            return Err(self.error(path, format!("HTTP {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| self.error(path, e.to_string()))
    }

    /// GETs `path` as a `T`.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let response = self.send(path).await?;
        self.decode(path, response).await
    }

    /// GETs `path` as a `T`; `None` when the server has none yet (503).
    async fn get_unless_unavailable<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, CtlError> {
        let response = self.send(path).await?;
        if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Ok(None);
        }
        self.decode(path, response).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;

    use super::*;
    use crate::state::{ControlPlane, Nack, StateSettings};
    use crate::watch::Change;

    /// The admin router serves its views and `status` reads them back as
    /// the same types, field for field.
    #[tokio::test]
    async fn status_reads_the_views_the_admin_api_serves() {
        let state = ControlPlane::new(
            StateSettings {
                debounce: Duration::ZERO,
                snapshot_cache: None,
            },
            None,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server =
            tokio::spawn(axum::serve(listener, crate::admin::router(state.clone())).into_future());

        // No snapshot yet: shown as none, not an error.
        let before = AdminStatus::fetch(&base).await.unwrap();
        assert!(before.snapshot.is_none());
        assert!(before.clients.is_empty());
        assert_eq!(before.rejections.total, 0);

        state.update_config(1, |config| {
            config.apply_batch(
                7,
                vec![
                    Change::Put {
                        key: "v1/topics/ticks".to_owned(),
                        value: br#"{"historySize": 5}"#.to_vec(),
                        mod_revision: 6,
                    },
                    Change::Put {
                        key: "v1/releases/push".to_owned(),
                        value: b"{not json".to_vec(),
                        mod_revision: 7,
                    },
                    Change::Put {
                        key: "v1/nothing/here".to_owned(),
                        value: b"1".to_vec(),
                        mod_revision: 7,
                    },
                ],
                1_000,
            )
        });
        state.mark_ready();
        state.publish_now();
        let id = state.client_connected(ClientInfo {
            stream_id: 0,
            node_id: "envoy-1".to_owned(),
            cluster: "ingress".to_owned(),
            client_kind: "filter".to_owned(),
            kinds: vec!["topics".to_owned(), "releases".to_owned()],
            sent_version: Some("7-abc".to_owned()),
            acked_version: None,
            last_convergence_millis: Some(12.5),
            last_nack: Some(Nack {
                version: "6-def".to_owned(),
                error: "bad rule".to_owned(),
                at_unix_millis: 99,
            }),
            connected_since_unix_millis: 42,
        });

        let status = AdminStatus::fetch(&base).await.unwrap();
        let snapshot = status.snapshot.unwrap();
        let current = state.snapshot().unwrap();
        assert_eq!(snapshot.version, current.version);
        assert_eq!(snapshot.revision, 7);
        assert!(snapshot.ready);
        assert_eq!(snapshot.snapshot["topics"]["ticks"]["historySize"], 5);

        assert_eq!(status.clients.len(), 1);
        let client = &status.clients[0];
        assert_eq!(client.stream_id, id);
        assert_eq!(client.node_id, "envoy-1");
        assert_eq!(client.kinds, ["topics", "releases"]);
        assert_eq!(client.acked_version, None);
        assert_eq!(client.last_convergence_millis, Some(12.5));
        let nack = client.last_nack.as_ref().unwrap();
        assert_eq!(
            (nack.version.as_str(), nack.error.as_str()),
            ("6-def", "bad rule")
        );

        let served = state.rejections();
        assert_eq!(status.rejections.total, 1);
        assert_eq!(status.rejections.active, served.active);
        assert_eq!(status.rejections.active[0].key, "v1/releases/push");
        assert_eq!(status.rejections.recent, served.recent);
        assert_eq!(status.rejections.unknown_keys, served.unknown_keys);
        assert_eq!(status.rejections.unknown_keys[0].key, "v1/nothing/here");

        server.abort();
    }

    #[tokio::test]
    async fn an_admin_api_that_fails_is_named_in_the_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such thing") });
        let server = tokio::spawn(axum::serve(listener, router).into_future());
        let error = AdminStatus::fetch(&base).await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!("admin API {base}/v1/snapshot: HTTP 404 Not Found")
        );
        server.abort();
    }

    #[test]
    fn trace_settings_have_one_name_and_other_kinds_need_one() {
        assert_eq!(object_name(Kind::Trace, None).unwrap(), TRACE_NAME);
        assert_eq!(
            object_name(Kind::Trace, Some(TRACE_NAME.to_owned())).unwrap(),
            TRACE_NAME
        );
        let error = object_name(Kind::Trace, Some("x".to_owned())).unwrap_err();
        assert_eq!(error.to_string(), "trace settings have no name ('x' given)");
        assert_eq!(error.exit_code(), super::super::EXIT_USAGE);
        assert_eq!(object_name(Kind::Topic, Some("t".to_owned())).unwrap(), "t");
        let error = object_name(Kind::Topic, None).unwrap_err().to_string();
        assert!(error.ends_with("needs a NAME"), "{error}");
    }
}
