//! Topic settings live from the control plane: a `ConfigDiscovery.StreamConfig`
//! stream asking for the `topics` kind; every snapshot is validated and ACKed,
//! or NACKed with the reason (the last good topics stay in force). The stream
//! is re-opened with capped, jittered backoff.

use std::sync::Arc;
use std::time::Duration;

use sidestream_core::config::Snapshot;
use sidestream_proto::config::v1::config_discovery_client::ConfigDiscoveryClient;
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse, ErrorDetail, Node};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use sidestream_core::backoff::Backoff;

use crate::state::AppState;

const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Follows the control plane at `endpoint` forever.
pub async fn follow(state: Arc<AppState>, endpoint: String, cluster: String) {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
    // The version in force, named again when the stream is re-opened.
    let mut version = String::new();
    loop {
        match session(&state, &endpoint, &cluster, &mut version).await {
            Ok(()) => {
                tracing::info!(endpoint, "Control plane closed the config stream");
                backoff.reset();
            }
            Err(error) => {
                tracing::warn!(endpoint, error = %error, "Config stream failed; keeping the last good topics")
            }
        }
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the request stream closed")]
    Closed,
}

async fn session(
    state: &AppState,
    endpoint: &str,
    cluster: &str,
    version: &mut String,
) -> Result<(), SessionError> {
    let mut client = ConfigDiscoveryClient::connect(endpoint.to_owned()).await?;
    let (tx, rx) = mpsc::channel::<ConfigRequest>(4);
    let node = Node {
        id: state.settings.node_id.clone(),
        cluster: cluster.to_owned(),
        client_kind: "push-server".into(),
        metadata: Default::default(),
    };
    tx.send(ConfigRequest {
        node: Some(node),
        kinds: vec!["topics".into()],
        version_info: version.clone(),
        response_nonce: String::new(),
        error_detail: None,
    })
    .await
    .map_err(|_| SessionError::Closed)?;
    let mut responses = client
        .stream_config(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(endpoint, "Config stream open");
    while let Some(response) = responses.next().await {
        let response = response?;
        let reply = match apply(state, &response) {
            Ok(count) => {
                version.clone_from(&response.version_info);
                state.metrics.config_update("ack");
                tracing::info!(
                    version = %version,
                    topics = count,
                    "Applied topic settings from the control plane"
                );
                ConfigRequest {
                    node: None,
                    kinds: vec!["topics".into()],
                    version_info: version.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: None,
                }
            }
            Err(message) => {
                state.metrics.config_update("nack");
                tracing::warn!(version = response.version_info, error = %message, "Rejected a control-plane snapshot");
                ConfigRequest {
                    node: None,
                    kinds: vec!["topics".into()],
                    version_info: version.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(ErrorDetail { message }),
                }
            }
        };
        tx.send(reply).await.map_err(|_| SessionError::Closed)?;
    }
    Ok(())
}

/// Validates a snapshot and installs its topics; returns how many.
fn apply(state: &AppState, response: &ConfigResponse) -> Result<usize, String> {
    let snapshot = Snapshot::from_json(&response.snapshot_json).map_err(|e| e.to_string())?;
    let count = snapshot.topics.len();
    state
        .topics
        .apply_control_plane(snapshot.topics.into_values());
    Ok(count)
}
