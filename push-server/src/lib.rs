//! sidestream-push: the sidecar-side streaming server. Clients subscribe to
//! topics over SSE, WebSocket or gRPC; publishers post over HTTP or gRPC;
//! per-topic history with epoch-carrying ids makes reconnects lossless (or
//! says explicitly what was lost). See `README` sections in each module:
//! [`http`] (HTTP API), [`grpc`], [`event_id`] (SSE ids), [`broker`].
//!
//! The library builds the servers so tests run them in-process:
//! [`daemon::start`] (what the binary runs, on any port), and its parts
//! [`state::AppState::new`], [`http::router`], [`grpc::service`],
//! [`server::serve_http`], [`server::serve_grpc`].

pub mod auth;
pub mod broker;
pub mod control_plane;
pub mod daemon;
pub mod error;
pub mod event_id;
pub mod grpc;
pub mod heartbeat;
pub mod http;
pub mod hub;
pub mod message;
pub mod metrics;
pub mod publish;
pub mod resume;
pub mod server;
pub mod session;
pub mod slow;
pub mod state;
pub mod subscription;
pub mod topics;
pub mod trace;
pub mod uring;

pub use error::PushError;
pub use state::{AppState, BrokerSpec, Settings};
