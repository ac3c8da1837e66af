//! The etcd side of the daemon: full reads and the watch, driven by the pure
//! [`WatchMachine`], with capped jittered reconnects (the etcd client does not
//! reconnect a watch by itself). A new client is built on every reconnect, so
//! an expired auth token is replaced by a fresh one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, KvClient, WatchOptions, WatchResponse};
use tracing::{debug, info, warn};

use crate::config_state::history::{HistoryRead, HistoryWalk, Recovered, WalkStep, HISTORY_STEPS};
use crate::config_state::ApplyReport;
use crate::etcd::{is_compacted, EtcdSettings};
use crate::state::{unix_millis, unix_nanos, ControlPlane};
use crate::watch::{Change, Next, Step, WatchMachine, WatchMessage};
use sidestream_core::backoff::Backoff;

/// Timing of the etcd watch.
#[derive(Debug, Clone)]
pub struct WatchTiming {
    /// First reconnect delay.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Ask etcd for progress after this much silence.
    pub progress_interval: Duration,
    /// Reopen the watch when a progress request stays unanswered this long.
    pub idle_timeout: Duration,
    /// Longest wait for a full read.
    pub read_timeout: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            progress_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a watch session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Lost(String),
}

/// Follows etcd forever, feeding `state`.
pub async fn run(settings: EtcdSettings, state: Arc<ControlPlane>, timing: WatchTiming) {
    let mut machine = WatchMachine::new(timing.progress_interval, timing.idle_timeout);
    let mut backoff = Backoff::new(timing.initial_backoff, timing.max_backoff);
    let mut first = true;
    loop {
        if !first {
            let delay = backoff.next_delay(rand::random::<f64>());
            debug!(?delay, "Waiting before reconnecting to etcd");
            tokio::time::sleep(delay).await;
            state.metrics.etcd_reconnects.inc();
        }
        first = false;
        let client = match settings.connect().await {
            Ok(client) => client,
            Err(error) => {
                state.metrics.etcd_connected.set(0);
                warn!(%error, endpoints = ?settings.endpoints, "Cannot connect to etcd");
                continue;
            }
        };
        if let Err(error) = session(
            &client,
            &settings,
            &state,
            &mut machine,
            &mut backoff,
            &timing,
        )
        .await
        {
            state.metrics.etcd_connected.set(0);
            warn!(%error, revision = ?machine.revision(), "etcd watch interrupted; resuming from the same revision");
        }
    }
}

async fn session(
    client: &Client,
    settings: &EtcdSettings,
    state: &ControlPlane,
    machine: &mut WatchMachine,
    backoff: &mut Backoff,
    timing: &WatchTiming,
) -> Result<(), SessionError> {
    loop {
        match machine.next() {
            Next::ReadAll => {
                full_read(client, settings, state, machine, timing).await?;
                backoff.reset();
            }
            Next::Watch { start_revision } => {
                watch(client, settings, state, machine, backoff, start_revision).await?;
            }
        }
    }
}

async fn full_read(
    client: &Client,
    settings: &EtcdSettings,
    state: &ControlPlane,
    machine: &mut WatchMachine,
    timing: &WatchTiming,
) -> Result<(), SessionError> {
    let prefix = settings.key_prefix();
    let mut kv = client.kv_client();
    let response = tokio::time::timeout(
        timing.read_timeout,
        kv.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| SessionError::Lost(format!("full read took over {:?}", timing.read_timeout)))??;
    let observed = unix_nanos();
    let (revision, cluster_id) = response
        .header()
        .map(|h| (h.revision(), h.cluster_id()))
        .unwrap_or((0, 0));
    let mut kvs = Vec::with_capacity(response.kvs().len());
    let mut create_revisions = Vec::with_capacity(response.kvs().len());
    for pair in response.kvs() {
        let Ok(key) = pair.key_str() else { continue };
        let Some(relative) = settings.relative_key(key) else {
            continue;
        };
        kvs.push((
            relative.to_owned(),
            pair.value().to_vec(),
            pair.mod_revision(),
        ));
        create_revisions.push(pair.create_revision());
    }
    // An invalid value with no last good value in memory (a fresh start):
    // serve the key's most recent valid value from etcd's history, if any,
    // so that the first snapshot already holds it.
    let walks: Vec<HistoryWalk> = state.read_config(|config| {
        kvs.iter()
            .zip(&create_revisions)
            .filter_map(|((key, value, mod_revision), create_revision)| {
                config.history_walk(key, value, *mod_revision, *create_revision, HISTORY_STEPS)
            })
            .collect()
    });
    let mut recovered = Vec::with_capacity(walks.len());
    for walk in walks {
        if let Some(found) = walk_history(&mut kv, settings, walk, timing).await? {
            recovered.push(found);
        }
    }
    let reason = if machine.revision().is_none() {
        "initial"
    } else {
        "resync"
    };
    if let Some(backwards) = machine.on_full_read(revision, cluster_id) {
        warn!(%backwards, "etcd went back in time; the full read replaces everything");
    }
    info!(revision, keys = kvs.len(), reason, "Read the whole prefix");
    let now = unix_millis();
    state.update_config(observed, |config| {
        config.replace_all_recovering(revision, kvs, recovered, now)
    });
    // A full read is published at once (no debounce), and only then is the
    // control plane ready: /readyz means "serving what etcd holds".
    state.publish_now();
    state.mark_ready();
    Ok(())
}

/// Reads `walk`'s key at earlier revisions until the walk finds a valid
/// value or gives up. A compacted revision ends the walk; any other etcd
/// error ends the session (the full read is retried).
async fn walk_history(
    kv: &mut KvClient,
    settings: &EtcdSettings,
    mut walk: HistoryWalk,
    timing: &WatchTiming,
) -> Result<Option<Recovered>, SessionError> {
    let full_key = settings.full_key(walk.key());
    while let Some(at) = walk.next_revision() {
        let answer = tokio::time::timeout(
            timing.read_timeout,
            kv.get(full_key.clone(), Some(GetOptions::new().with_revision(at))),
        )
        .await
        .map_err(|_| {
            SessionError::Lost(format!(
                "reading {full_key} at revision {at} took over {:?}",
                timing.read_timeout
            ))
        })?;
        let read = match answer {
            Ok(response) => match response.kvs().first() {
                Some(pair) => HistoryRead::Value {
                    value: pair.value().to_vec(),
                    mod_revision: pair.mod_revision(),
                    create_revision: pair.create_revision(),
                },
                None => HistoryRead::Absent,
            },
            Err(error) if is_compacted(&error) => HistoryRead::Compacted,
            Err(error) => return Err(error.into()),
        };
        match walk.on_read(read) {
            WalkStep::Continue => {}
            WalkStep::Recovered(found) => {
                info!(
                    key = walk.key(),
                    rejected_revision = found.rejected_revision,
                    serving_revision = found.mod_revision,
                    "No last good value in memory; serving the most recent valid value from etcd's history"
                );
                return Ok(Some(*found));
            }
            WalkStep::GaveUp(reason) => {
                warn!(
                    key = walk.key(),
                    rejected_revision = walk.rejected_revision(),
                    %reason,
                    "No valid earlier value in etcd's history; the key is left out"
                );
                return Ok(None);
            }
        }
    }
    Ok(None)
}

fn message_of(response: &WatchResponse, settings: &EtcdSettings) -> WatchMessage {
    let (header_revision, cluster_id) = response
        .header()
        .map(|h| (h.revision(), h.cluster_id()))
        .unwrap_or((0, 0));
    let mut changes = Vec::with_capacity(response.events().len());
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        let Some(relative) = settings.relative_key(key) else {
            continue;
        };
        changes.push(match event.event_type() {
            EventType::Put => Change::Put {
                key: relative.to_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            },
            EventType::Delete => Change::Delete {
                key: relative.to_owned(),
                revision: kv.mod_revision(),
            },
        });
    }
    WatchMessage {
        header_revision,
        cluster_id,
        created: response.created(),
        canceled: response.canceled(),
        compact_revision: response.compact_revision(),
        cancel_reason: response.cancel_reason().to_owned(),
        changes,
    }
}

async fn watch(
    client: &Client,
    settings: &EtcdSettings,
    state: &ControlPlane,
    machine: &mut WatchMachine,
    backoff: &mut Backoff,
    start_revision: i64,
) -> Result<(), SessionError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision)
        .with_prev_key()
        .with_progress_notify();
    let mut watch_client = client.watch_client();
    let mut stream = watch_client
        .watch(settings.key_prefix(), Some(options))
        .await?;
    machine.on_watch_started(Instant::now());
    debug!(start_revision, "Watching etcd");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => return Err(SessionError::Lost("etcd closed the watch stream".to_owned())),
                    Err(error) => return Err(error.into()),
                };
                let observed = unix_nanos();
                let message = message_of(&response, settings);
                let step = machine.on_message(message, Instant::now());
                if !matches!(step, Step::Resync(_) | Step::Reconnect { .. }) {
                    // etcd answered the watch: it is established.
                    state.metrics.etcd_connected.set(1);
                }
                match step {
                    Step::Apply(batches) => {
                        backoff.reset();
                        for batch in batches {
                            let events = u64::try_from(batch.changes.len()).unwrap_or(u64::MAX);
                            state.metrics.watch_events.inc_by(events);
                            debug!(revision = batch.revision, events, "Applying a revision");
                            let now = unix_millis();
                            state.update_config(observed, |config| {
                                config.apply_batch(batch.revision, batch.changes, now)
                            });
                        }
                    }
                    Step::Progress { revision } => {
                        backoff.reset();
                        state.update_config(observed, |config| {
                            config.advance(revision);
                            ApplyReport::default()
                        });
                    }
                    Step::Resync(reason) => {
                        info!(%reason, "Full resync of the prefix");
                        state.metrics.resync(reason.label());
                        return Ok(());
                    }
                    Step::Reconnect { reason } => {
                        let step = machine.on_stream_lost(reason.clone());
                        debug!(?step, "Reopening the watch");
                        return Err(SessionError::Lost(reason));
                    }
                    Step::Nothing => backoff.reset(),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if machine.progress_due(now) {
                    stream.request_progress().await?;
                }
                if let Some(Step::Reconnect { reason }) = machine.check_idle(now) {
                    return Err(SessionError::Lost(reason));
                }
            }
        }
    }
}
