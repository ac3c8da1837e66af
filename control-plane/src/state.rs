//! The daemon's shared state: the validated config, the current snapshot, the
//! connected clients and the metrics. The etcd source writes it, the gRPC and
//! admin servers read it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config_state::{ApplyReport, ConfigState, Rejection};
use crate::metrics::Metrics;
use crate::revision_trace::RevisionTraces;
use crate::snapshot::{write_cache, VersionedSnapshot};

/// How many past rejections `/v1/rejections` lists.
const RECENT_REJECTIONS: usize = 100;

/// Unix time now, in nanoseconds.
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix time now, in milliseconds.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A NACK a client sent.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version the client rejected.
    pub version: String,
    /// The client's error message.
    pub error: String,
    /// When (Unix milliseconds).
    pub at_unix_millis: u64,
}

/// One connected data-plane client, as `/v1/clients` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    /// The stream's id inside this control plane.
    pub stream_id: u64,
    /// The node id the client sent.
    pub node_id: String,
    /// The node's cluster ("ingress", "push-canary").
    pub cluster: String,
    /// "filter" or "push-server".
    pub client_kind: String,
    /// Kinds it asked for (key segments).
    pub kinds: Vec<String>,
    /// The last version sent to it.
    pub sent_version: Option<String>,
    /// The last version it ACKed.
    pub acked_version: Option<String>,
    /// Milliseconds from the etcd change to its last ACK of a snapshot
    /// published while it was connected (`None` until one propagated to it).
    pub last_convergence_millis: Option<f64>,
    /// Its last NACK.
    pub last_nack: Option<Nack>,
    /// When it connected (Unix milliseconds).
    pub connected_since_unix_millis: u64,
}

/// What `/v1/rejections` lists.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionsView {
    /// Rejections counted since start.
    pub total: u64,
    /// Keys whose latest value is rejected (they keep their last good value).
    pub active: Vec<Rejection>,
    /// The most recent rejections, newest last.
    pub recent: Vec<Rejection>,
    /// Keys under the prefix that are no config object.
    pub unknown_keys: Vec<crate::config_state::UnknownKey>,
}

/// What a node NACKed, kept across its reconnects.
#[derive(Debug, Clone, Default)]
struct NodeNacks {
    versions: VecDeque<String>,
    last: Option<Nack>,
}

/// Settings of the shared state.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Wait this long after a change for more before publishing a snapshot.
    pub debounce: Duration,
    /// Where to keep the last good snapshot.
    pub snapshot_cache: Option<PathBuf>,
}

/// The daemon's shared state.
pub struct ControlPlane {
    settings: StateSettings,
    config: Mutex<ConfigState>,
    recent_rejections: Mutex<VecDeque<Rejection>>,
    rejections_total: AtomicU64,
    snapshot_tx: watch::Sender<Option<Arc<VersionedSnapshot>>>,
    pending_since: Mutex<Option<i64>>,
    publishing: Mutex<()>,
    changed: Notify,
    ready: AtomicBool,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
    nacked: Mutex<BTreeMap<String, NodeNacks>>,
    next_stream_id: AtomicU64,
    /// The metrics.
    pub metrics: Metrics,
    /// Config changes traced from etcd to every data plane's answer (OTLP).
    pub traces: RevisionTraces,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlPlane {
    /// A state with no snapshot yet (or the cached one).
    pub fn new(settings: StateSettings, cached: Option<VersionedSnapshot>) -> Arc<Self> {
        let metrics = Metrics::new();
        if let Some(cached) = &cached {
            metrics.snapshot_revision.set(cached.revision);
        }
        let (snapshot_tx, _) = watch::channel(cached.map(Arc::new));
        Arc::new(ControlPlane {
            settings,
            config: Mutex::new(ConfigState::new()),
            recent_rejections: Mutex::new(VecDeque::new()),
            rejections_total: AtomicU64::new(0),
            snapshot_tx,
            pending_since: Mutex::new(None),
            publishing: Mutex::new(()),
            changed: Notify::new(),
            ready: AtomicBool::new(false),
            clients: Mutex::new(BTreeMap::new()),
            nacked: Mutex::new(BTreeMap::new()),
            next_stream_id: AtomicU64::new(1),
            metrics,
            traces: RevisionTraces::default(),
        })
    }

    /// The current snapshot, if there is one.
    pub fn snapshot(&self) -> Option<Arc<VersionedSnapshot>> {
        self.snapshot_tx.borrow().clone()
    }

    /// Follows snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<VersionedSnapshot>>> {
        self.snapshot_tx.subscribe()
    }

    /// Whether the first full read of etcd is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs `f` on the validated config and handles its report: rejections
    /// are counted, logged and remembered; a content change schedules a
    /// snapshot. `observed_unix_nanos` is when the change was seen.
    pub fn update_config<F>(&self, observed_unix_nanos: i64, f: F)
    where
        F: FnOnce(&mut ConfigState) -> ApplyReport,
    {
        let validate = self.traces.validating();
        let (report, unknown, revision) = {
            let mut config = lock(&self.config);
            let report = validate.in_scope(|| f(&mut config));
            (report, config.unknown_keys().len(), config.revision())
        };
        self.metrics
            .unknown_keys
            .set(i64::try_from(unknown).unwrap_or(i64::MAX));
        for unknown in &report.unknown {
            warn!(key = %unknown.key, revision = unknown.revision, reason = %unknown.reason, "Unknown key under the prefix; ignored");
        }
        if !report.rejections.is_empty() {
            let mut recent = lock(&self.recent_rejections);
            for rejection in &report.rejections {
                warn!(
                    key = %rejection.key,
                    revision = rejection.revision,
                    reason = %rejection.reason,
                    serving_revision = ?rejection.serving_revision,
                    serving_from_history = rejection.serving_from_history,
                    "Rejected etcd value; keeping the last good value"
                );
                self.metrics.rejections.inc();
                self.rejections_total.fetch_add(1, Ordering::Relaxed);
                recent.push_back(rejection.clone());
                while recent.len() > RECENT_REJECTIONS {
                    recent.pop_front();
                }
            }
        }
        // A change, or the first read with no snapshot yet: publish.
        let publishing = report.changed || self.snapshot().is_none() || !self.is_ready();
        if publishing {
            let mut pending = lock(&self.pending_since);
            pending.get_or_insert(observed_unix_nanos);
            drop(pending);
            self.changed.notify_one();
        }
        let publishing = publishing || lock(&self.pending_since).is_some();
        self.traces
            .validated(&validate, revision, &report, publishing);
    }

    /// Runs `f` on the validated config without changing it.
    pub fn read_config<R>(&self, f: impl FnOnce(&ConfigState) -> R) -> R {
        f(&lock(&self.config))
    }

    /// Marks the first full read done.
    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.metrics.ready.set(1);
            info!("First full read of etcd done; ready");
        }
    }

    /// Publishes snapshots as changes arrive, `debounce` after the first one.
    pub async fn run_publisher(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            if !self.settings.debounce.is_zero() {
                tokio::time::sleep(self.settings.debounce).await;
            }
            self.publish_now();
        }
    }

    /// Builds a snapshot from the config and publishes it if its content differs.
    pub fn publish_now(&self) {
        // One publisher at a time, so a snapshot built earlier is never sent
        // after one built later.
        let _publishing = lock(&self.publishing);
        let Some(observed) = lock(&self.pending_since).take() else {
            return;
        };
        let (snapshot, revision) = {
            let config = lock(&self.config);
            (config.snapshot(), config.revision())
        };
        let next = VersionedSnapshot::new(snapshot, revision, observed);
        if let Some(current) = self.snapshot() {
            if current.content_hash == next.content_hash {
                self.traces.unchanged();
                return;
            }
        }
        let next = Arc::new(next);
        info!(version = %next.version, revision, "Publishing snapshot");
        self.metrics.snapshot_revision.set(revision);
        self.metrics.snapshots_published.inc();
        // On disk before any client can ACK it, so a restarted control plane
        // never serves an older snapshot than its clients run.
        if let Some(path) = &self.settings.snapshot_cache {
            if let Err(error) = write_cache(path, &next) {
                warn!(%error, "Cannot write the snapshot cache");
            }
        }
        let streams: Vec<u64> = lock(&self.clients).keys().copied().collect();
        self.traces.published(&next.version, revision, streams);
        self.snapshot_tx.send_replace(Some(next.clone()));
    }

    /// What `/v1/rejections` shows.
    pub fn rejections(&self) -> RejectionsView {
        let (active, unknown_keys) = {
            let config = lock(&self.config);
            (config.rejections(), config.unknown_keys())
        };
        RejectionsView {
            total: self.rejections_total.load(Ordering::Relaxed),
            active,
            recent: lock(&self.recent_rejections).iter().cloned().collect(),
            unknown_keys,
        }
    }

    /// Registers a new client stream; returns its id.
    pub fn client_connected(&self, mut info: ClientInfo) -> u64 {
        let id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        info.stream_id = id;
        if info.last_nack.is_none() {
            info.last_nack = lock(&self.nacked)
                .get(&info.node_id)
                .and_then(|n| n.last.clone());
        }
        lock(&self.clients).insert(id, info);
        self.metrics.connected_clients.inc();
        id
    }

    /// Forgets a client stream.
    pub fn client_disconnected(&self, id: u64) {
        if lock(&self.clients).remove(&id).is_some() {
            self.metrics.connected_clients.dec();
        }
        self.traces.disconnected(id);
    }

    /// Updates a client's entry.
    pub fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some(info) = lock(&self.clients).get_mut(&id) {
            f(info);
        }
    }

    /// Every connected client.
    pub fn clients(&self) -> Vec<ClientInfo> {
        lock(&self.clients).values().cloned().collect()
    }

    /// Remembers that `node_id` NACKed a version (kept across its reconnects).
    pub fn remember_nack(&self, node_id: &str, nack: &Nack) {
        let mut nacked = lock(&self.nacked);
        let node = nacked.entry(node_id.to_owned()).or_default();
        if !node.versions.iter().any(|v| *v == nack.version) {
            node.versions.push_back(nack.version.clone());
            if node.versions.len() > 16 {
                node.versions.pop_front();
            }
        }
        node.last = Some(nack.clone());
    }

    /// Whether `node_id` NACKed `version`.
    pub fn was_nacked(&self, node_id: &str, version: &str) -> bool {
        lock(&self.nacked)
            .get(node_id)
            .is_some_and(|node| node.versions.iter().any(|v| v == version))
    }
}
