//! The W3C Trace Context test setup: Envoy running the committed
//! `envoy-config/trace-context.yaml` (the filter on an inbound and an outbound
//! listener, ports rewritten) and, between the two listeners, the test service
//! the suite (<https://github.com/w3c/trace-context>, folder `test/`) asks for.
//!
//! The service answers a POST whose body is a JSON list of
//! `{"url": ..., "arguments": ...}`: for each element, in order, it POSTs
//! `arguments` (JSON) to `url` through the outbound listener, carrying the
//! `traceparent` and `tracestate` headers it received (every field, in order).
//! The callback's `host:port` goes into `x-envoy-original-dst-host`, which the
//! outbound listener's ORIGINAL_DST cluster connects to. It answers 200 with
//! `[{"url": ..., "status": ...}]` once every callback was answered, 400 when
//! the body is not such a list, 502 naming the callback that could not be made.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::envoy::{Envoy, EnvoyPorts};
use crate::{filter_wasm, free_port, workspace_root};

/// Path of the committed trace-context bootstrap.
pub fn config_path() -> std::path::PathBuf {
    workspace_root().join("envoy-config/trace-context.yaml")
}

/// The headers the service carries from its request to each callback.
pub const PROPAGATED: [&str; 2] = ["traceparent", "tracestate"];

/// Header naming the callback's `host:port` for the outbound ORIGINAL_DST cluster.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

/// Ports of one trace-context setup.
#[derive(Debug, Clone, Copy)]
pub struct TraceContextPorts {
    /// Envoy's inbound listener (the suite's `SERVICE_ENDPOINT`).
    pub inbound: u16,
    /// Envoy's outbound listener (the service sends its callbacks here).
    pub outbound: u16,
    pub admin: u16,
    /// The service.
    pub service: u16,
}

impl TraceContextPorts {
    /// The ports as `envoy-config/trace-context.yaml` writes them.
    pub const COMMITTED: TraceContextPorts = TraceContextPorts {
        inbound: 10010,
        outbound: 10011,
        admin: 9911,
        service: 18090,
    };

    /// Fresh ports for a test.
    pub fn free() -> anyhow::Result<TraceContextPorts> {
        Ok(TraceContextPorts {
            inbound: free_port()?,
            outbound: free_port()?,
            admin: free_port()?,
            service: free_port()?,
        })
    }
}

/// trace-context.yaml with its fixed ports replaced by `ports` and the filter
/// path by `wasm`. Fails if the file no longer has exactly one of each.
pub fn config(ports: &TraceContextPorts, wasm: &Path) -> anyhow::Result<String> {
    let path = config_path();
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let committed = TraceContextPorts::COMMITTED;
    let filter = crate::envoy::STANDALONE_FILTER_PATH;
    let replacements = [
        (committed.inbound, ports.inbound),
        (committed.outbound, ports.outbound),
        (committed.admin, ports.admin),
        (committed.service, ports.service),
    ]
    .map(|(from, to)| (format!("port_value: {from} "), format!("port_value: {to} ")));
    for (from, to) in replacements {
        let count = text.matches(&from).count();
        anyhow::ensure!(
            count == 1,
            "{} holds '{from}' {count} times, expected once",
            path.display()
        );
        text = text.replacen(&from, &to, 1);
    }
    let from = format!("filename: {filter}");
    let count = text.matches(&from).count();
    anyhow::ensure!(
        count == 2,
        "{} holds '{from}' {count} times, expected twice (inbound and outbound)",
        path.display()
    );
    Ok(text.replace(&from, &format!("filename: {}", wasm.display())))
}

/// The service: every POST is a list of callbacks to make through `outbound`.
pub fn router(outbound: SocketAddr) -> anyhow::Result<Router> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    Ok(Router::new()
        .fallback(post(handle))
        .with_state(Service { outbound, client }))
}

/// Serves [`router`] on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, outbound: SocketAddr) -> anyhow::Result<()> {
    axum::serve(listener, router(outbound)?).await?;
    Ok(())
}

#[derive(Clone)]
struct Service {
    outbound: SocketAddr,
    client: reqwest::Client,
}

/// One element of the request body.
struct Callback {
    url: reqwest::Url,
    arguments: Value,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn callbacks(body: &[u8]) -> Result<Vec<Callback>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err(format!(
            "the body is not a JSON list of {{url, arguments}}: {value}"
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let url = item
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("callback {index} has no string 'url': {item}"))?;
            let url = reqwest::Url::parse(url)
                .map_err(|e| format!("callback {index}: url '{url}' is invalid: {e}"))?;
            if url.scheme() != "http" || url.host_str().is_none() {
                return Err(format!(
                    "callback {index}: url '{url}' is not http://host:port/..."
                ));
            }
            let arguments = match item.get("arguments") {
                None | Some(Value::Null) => Value::Array(Vec::new()),
                Some(arguments) => arguments.clone(),
            };
            Ok(Callback { url, arguments })
        })
        .collect()
}

async fn handle(State(service): State<Service>, headers: HeaderMap, body: Bytes) -> Response {
    let callbacks = match callbacks(&body) {
        Ok(callbacks) => callbacks,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut results = Vec::with_capacity(callbacks.len());
    for callback in callbacks {
        match service.call(&headers, &callback).await {
            Ok(status) => results.push(json!({ "url": callback.url.as_str(), "status": status })),
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("callback {}: {e:#}", callback.url),
                )
            }
        }
    }
    Json(Value::Array(results)).into_response()
}

impl Service {
    /// POSTs one callback through the outbound listener; its status code.
    async fn call(&self, received: &HeaderMap, callback: &Callback) -> anyhow::Result<u16> {
        let url = &callback.url;
        let host = url.host_str().context("no host")?;
        let port = url.port_or_known_default().context("no port")?;
        let authority = format!("{host}:{port}");
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        let mut headers = HeaderMap::new();
        for name in PROPAGATED {
            for value in received.get_all(name) {
                headers.append(HeaderName::from_static(name), value.clone());
            }
        }
        let response = self
            .client
            .post(format!("http://{}{path}", self.outbound))
            .headers(headers)
            .header(reqwest::header::HOST, &authority)
            .header(ORIGINAL_DST_HEADER, &authority)
            .json(&callback.arguments)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }
}

/// A running setup: Envoy with the filter on both listeners and the service.
pub struct TraceContextSetup {
    pub envoy: Envoy,
    pub ports: TraceContextPorts,
    service: tokio::task::JoinHandle<()>,
}

impl TraceContextSetup {
    /// Starts the service and Envoy on fresh ports; waits until both listeners
    /// accept connections.
    pub async fn start(name: &str) -> anyhow::Result<TraceContextSetup> {
        let ports = TraceContextPorts::free()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", ports.service)).await?;
        let outbound = SocketAddr::from(([127, 0, 0, 1], ports.outbound));
        let app = router(outbound)?;
        let service = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let config = config(&ports, &filter_wasm()?)?;
        // Envoy::start waits for the admin and `listener`; the upstream fields
        // are only descriptive.
        let envoy_ports = EnvoyPorts {
            listener: ports.inbound,
            admin: ports.admin,
            stable: ports.service,
            canary: ports.outbound,
        };
        let envoy = Envoy::start(name, envoy_ports, &config).await?;
        crate::wait_tcp(
            &format!("127.0.0.1:{}", ports.outbound),
            Duration::from_secs(10),
        )
        .await?;
        Ok(TraceContextSetup {
            envoy,
            ports,
            service,
        })
    }

    /// The suite's `SERVICE_ENDPOINT`: the service behind the inbound listener.
    pub fn service_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/test", self.ports.inbound)
    }
}

impl Drop for TraceContextSetup {
    fn drop(&mut self) {
        self.service.abort();
    }
}
