//! Small upstreams for the filter tests: each names itself and echoes what it
//! received as JSON; `/sse` holds a Server-Sent Events stream open and `/ws` a
//! WebSocket, counting the streams open now.
//!
//! Every response body (and the first SSE event / WebSocket message) is
//! `{"upstream": "<name>", "method": "...", "path": "...", "headers": {name: value}}`
//! (repeated headers joined with `, `).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Map, Value};

/// A running upstream; dropping it stops it.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    name: String,
    open_streams: AtomicUsize,
}

impl Upstream {
    /// Starts an upstream named `name` on an ephemeral loopback port.
    pub async fn start(name: &str) -> anyhow::Result<Upstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            open_streams: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/sse", get(sse))
            .route("/ws", get(websocket))
            .fallback(any(echo))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream {
            name: name.to_owned(),
            addr,
            shared,
            task,
        })
    }

    /// The upstream's name (what it answers in `"upstream"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SSE and WebSocket streams open at this upstream now.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The echo document of a request.
fn describe(name: &str, method: &str, path: &str, headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (header, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(header.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(header.as_str().to_owned(), Value::String(value));
            }
        }
    }
    json!({ "upstream": name, "method": method, "path": path, "headers": map })
}

async fn echo(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    Json(describe(
        &shared.name,
        request.method().as_str(),
        &path,
        request.headers(),
    ))
    .into_response()
}

/// Decrements the open-stream count when the stream is dropped (client gone).
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open_streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(Arc::clone(shared))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn sse(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hello = describe(&shared.name, "GET", "/sse", &headers);
    let guard = StreamGuard::new(&shared);
    let first = stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("hello").data(hello.to_string()))
    });
    // Then nothing but keep-alive comments until the client goes away; the guard
    // lives as long as the stream.
    let rest = stream::pending::<Result<Event, Infallible>>().map(move |event| {
        let _ = &guard;
        event
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::new().interval(Duration::from_secs(1)))
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let hello = describe(&shared.name, "GET", "/ws", &headers);
    upgrade.on_upgrade(move |socket| serve_websocket(socket, shared, hello))
}

async fn serve_websocket(mut socket: WebSocket, shared: Arc<Shared>, hello: Value) {
    let _guard = StreamGuard::new(&shared);
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}
