//! What the push server's in-process tests share: the daemon as the binary
//! runs it, on ports 0, and its metrics and publish endpoint.
// Each test binary uses a part of this.
#![allow(dead_code)]

use std::sync::Arc;

use sidestream_core::config::TopicSettings;
use sidestream_push::daemon::{self, DaemonConfig, RunningDaemon};
use sidestream_push::topics::TopicRegistry;
use sidestream_push::{AppState, Settings};

/// The daemon as the binary runs it, on ports 0 (stopped when dropped).
pub struct Server {
    /// The HTTP listener's address (`host:port`).
    pub addr: String,
    /// The HTTP listener's base URL.
    pub http: String,
    /// The gRPC listener's base URL.
    pub grpc: String,
    pub state: Arc<AppState>,
    client: reqwest::Client,
    _daemon: RunningDaemon,
}

/// Starts a daemon with `settings` and the topics `topics`.
pub async fn start(settings: Settings, topics: Vec<TopicSettings>) -> Server {
    let config = DaemonConfig::loopback(settings, TopicRegistry::new(topics, true));
    let daemon = daemon::start_with(config).await.unwrap();
    Server {
        addr: daemon.http_addr.to_string(),
        http: format!("http://{}", daemon.http_addr),
        grpc: format!("http://{}", daemon.grpc_addr),
        state: daemon.state.clone(),
        client: reqwest::Client::new(),
        _daemon: daemon,
    }
}

impl Server {
    pub fn url(&self) -> String {
        self.http.clone()
    }

    pub fn metrics(&self) -> String {
        self.state.metrics.encode(0)
    }

    /// The value of the metric line starting with `prefix`, 0 when absent.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Publishes `data` to `topic` (which must answer 201); its id.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        let response = self
            .client
            .post(format!("{}/v1/topics/{topic}/messages", self.url()))
            .body(data.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "publish to {topic}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }
}
