//! gRPC config discovery: one bidirectional stream per data-plane client,
//! xDS style. The client names itself and the kinds it wants; the server sends
//! the current snapshot (filtered to those kinds) and every new one; the client
//! ACKs or NACKs each by nonce. A version a client NACKed is not sent to it
//! again. For a snapshot published while the client was connected (a change
//! propagated to it), the time from the etcd change to the ACK is recorded per
//! client; the snapshot a (re)connecting client gets first is not, since its
//! age says how long ago the config last changed, not how fast it spread.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sidestream_core::config::Kind;
use sidestream_proto::config::v1::config_discovery_server::{
    ConfigDiscovery, ConfigDiscoveryServer,
};
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::revision_trace::Answer;
use crate::snapshot::VersionedSnapshot;
use crate::state::{unix_millis, unix_nanos, ClientInfo, ControlPlane, Nack};

/// Errors of a config stream, mapped to `tonic::Status` in one place.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The first request carried no node.
    #[error("the first ConfigRequest must carry a node with an id")]
    MissingNode,
    /// A kind the server does not know.
    #[error("unknown kind {0:?} (expected trace, releases, stream-limits or topics)")]
    UnknownKind(String),
    /// The client closed the stream before its first request.
    #[error("the stream ended before the first ConfigRequest")]
    NoRequest,
    /// The client's stream failed.
    #[error("client stream: {0}")]
    Client(#[from] Status),
}

impl From<DiscoveryError> for Status {
    fn from(error: DiscoveryError) -> Status {
        match error {
            DiscoveryError::MissingNode
            | DiscoveryError::UnknownKind(_)
            | DiscoveryError::NoRequest => Status::invalid_argument(error.to_string()),
            DiscoveryError::Client(status) => status,
        }
    }
}

/// The ConfigDiscovery service over the shared state.
#[derive(Clone)]
pub struct DiscoveryService {
    state: Arc<ControlPlane>,
}

/// The tonic server for [`DiscoveryService`], ready to add to a router.
pub fn service(state: Arc<ControlPlane>) -> ConfigDiscoveryServer<DiscoveryService> {
    ConfigDiscoveryServer::new(DiscoveryService { state })
}

/// Parses the kinds a client asked for (empty: every kind).
pub fn parse_kinds(kinds: &[String]) -> Result<Vec<Kind>, DiscoveryError> {
    let mut parsed = Vec::new();
    for kind in kinds {
        let kind = Kind::parse(kind).ok_or_else(|| DiscoveryError::UnknownKind(kind.clone()))?;
        if !parsed.contains(&kind) {
            parsed.push(kind);
        }
    }
    Ok(parsed)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ConfigResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for DiscoveryService {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await
            .map_err(DiscoveryError::from)?
            .ok_or(DiscoveryError::NoRequest)?;
        let node = first
            .node
            .clone()
            .filter(|node| !node.id.is_empty())
            .ok_or(DiscoveryError::MissingNode)?;
        let kinds = parse_kinds(&first.kinds)?;
        // Subscribed before the client is registered: whatever is current now
        // is its initial snapshot; anything published later propagated to it.
        let snapshots = self.state.subscribe();
        let kind_names = if kinds.is_empty() {
            Kind::ALL
                .iter()
                .map(|k| k.key_segment().to_owned())
                .collect()
        } else {
            kinds.iter().map(|k| k.key_segment().to_owned()).collect()
        };
        let stream_id = self.state.client_connected(ClientInfo {
            stream_id: 0,
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            client_kind: node.client_kind.clone(),
            kinds: kind_names,
            sent_version: None,
            acked_version: if first.version_info.is_empty() {
                None
            } else {
                Some(first.version_info.clone())
            },
            last_convergence_millis: None,
            last_nack: None,
            connected_since_unix_millis: unix_millis(),
        });
        info!(node = %node.id, cluster = %node.cluster, stream_id, "Config client connected");
        let (tx, rx) = mpsc::channel(4);
        let session = ClientSession {
            state: self.state.clone(),
            stream_id,
            node_id: node.id,
            kinds,
            sent: HashMap::new(),
            nonce: 0,
            running_version: first.version_info,
        };
        tokio::spawn(session.run(incoming, snapshots, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Sent {
    version: String,
    observed_unix_nanos: i64,
    /// Published while the client was connected: its ACK measures propagation.
    propagated: bool,
}

/// Why a snapshot is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The snapshot current when the client connected.
    Initial,
    /// A snapshot published while the client was connected.
    Propagated,
}

struct ClientSession {
    state: Arc<ControlPlane>,
    stream_id: u64,
    node_id: String,
    kinds: Vec<Kind>,
    sent: HashMap<String, Sent>,
    nonce: u64,
    running_version: String,
}

impl ClientSession {
    async fn run(
        mut self,
        mut incoming: Streaming<ConfigRequest>,
        mut snapshots: watch::Receiver<Option<Arc<VersionedSnapshot>>>,
        tx: mpsc::Sender<Result<ConfigResponse, Status>>,
    ) {
        let mut last_offered: Option<String> = None;
        let current = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = current {
            if !self.send(&snapshot, Delivery::Initial, &tx).await {
                return self.finish();
            }
            last_offered = Some(snapshot.version.clone());
        }
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let current = snapshots.borrow_and_update().clone();
                    let Some(snapshot) = current else { continue };
                    if last_offered.as_deref() == Some(snapshot.version.as_str()) {
                        continue;
                    }
                    last_offered = Some(snapshot.version.clone());
                    if !self.send(&snapshot, Delivery::Propagated, &tx).await {
                        break;
                    }
                }
                request = incoming.message() => {
                    match request {
                        Ok(Some(request)) => self.on_request(request),
                        Ok(None) => break,
                        Err(status) => {
                            debug!(node = %self.node_id, %status, "Config client stream failed");
                            break;
                        }
                    }
                }
                () = tx.closed() => break,
            }
        }
        self.finish();
    }

    fn finish(&self) {
        info!(node = %self.node_id, stream_id = self.stream_id, "Config client disconnected");
        self.state.client_disconnected(self.stream_id);
    }

    /// Sends `snapshot` unless the client runs it or NACKed it; false when the
    /// client is gone.
    async fn send(
        &mut self,
        snapshot: &VersionedSnapshot,
        delivery: Delivery,
        tx: &mpsc::Sender<Result<ConfigResponse, Status>>,
    ) -> bool {
        if self.running_version == snapshot.version {
            return true;
        }
        if self.state.was_nacked(&self.node_id, &snapshot.version) {
            debug!(node = %self.node_id, version = %snapshot.version, "Not resending a NACKed version");
            return true;
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", self.stream_id, self.nonce);
        let (json, hash) = snapshot.filtered(&self.kinds);
        let response = ConfigResponse {
            version_info: snapshot.version.clone(),
            nonce: nonce.clone(),
            revision: snapshot.revision,
            content_hash: hash,
            snapshot_json: json,
            observed_unix_nanos: snapshot.observed_unix_nanos,
        };
        // Keep only the few newest nonces: an ACK for anything older is stale.
        if self.sent.len() > 16 {
            self.sent.clear();
        }
        self.sent.insert(
            nonce,
            Sent {
                version: snapshot.version.clone(),
                observed_unix_nanos: snapshot.observed_unix_nanos,
                propagated: delivery == Delivery::Propagated,
            },
        );
        let version = snapshot.version.clone();
        self.state.update_client(self.stream_id, |info| {
            info.sent_version = Some(version);
        });
        self.state.metrics.responses_sent.inc();
        tx.send(Ok(response)).await.is_ok()
    }

    fn on_request(&mut self, request: ConfigRequest) {
        let Some(sent) = self.sent.remove(&request.response_nonce) else {
            if !request.response_nonce.is_empty() {
                debug!(node = %self.node_id, nonce = %request.response_nonce, "Answer to an unknown nonce; ignored");
            }
            return;
        };
        self.running_version = request.version_info.clone();
        if let Some(error) = request.error_detail {
            warn!(node = %self.node_id, version = %sent.version, error = %error.message, "Client rejected a snapshot (NACK)");
            self.state.metrics.nacks.inc();
            let nack = Nack {
                version: sent.version,
                error: error.message,
                at_unix_millis: unix_millis(),
            };
            self.state.remember_nack(&self.node_id, &nack);
            self.state.traces.answered(
                &nack.version,
                self.stream_id,
                &self.node_id,
                Answer::Nack { error: &nack.error },
            );
            let running = request.version_info;
            self.state.update_client(self.stream_id, |info| {
                info.last_nack = Some(nack);
                if !running.is_empty() {
                    info.acked_version = Some(running);
                }
            });
            return;
        }
        self.state.metrics.acks.inc();
        let version = sent.version;
        if !sent.propagated {
            // The snapshot it got on connecting: its age is not propagation.
            debug!(node = %self.node_id, %version, "Client applied its initial snapshot (ACK)");
            self.state.traces.answered(
                &version,
                self.stream_id,
                &self.node_id,
                Answer::Ack {
                    convergence_ms: None,
                },
            );
            self.state.update_client(self.stream_id, |info| {
                info.acked_version = Some(version);
            });
            return;
        }
        let elapsed_nanos = unix_nanos().saturating_sub(sent.observed_unix_nanos).max(0);
        #[allow(clippy::cast_precision_loss)]
        let seconds = elapsed_nanos as f64 / 1e9;
        self.state
            .metrics
            .observe_convergence(&self.node_id, seconds);
        debug!(node = %self.node_id, %version, convergence_ms = seconds * 1e3, "Client applied a snapshot (ACK)");
        self.state.traces.answered(
            &version,
            self.stream_id,
            &self.node_id,
            Answer::Ack {
                convergence_ms: Some(seconds * 1e3),
            },
        );
        self.state.update_client(self.stream_id, |info| {
            info.acked_version = Some(version);
            info.last_convergence_millis = Some(seconds * 1e3);
        });
    }
}
