//! sidestream-control-plane: watches sidestream's etcd keys, validates every
//! value with `sidestream_core`, publishes immutable versioned snapshots and
//! streams them to data planes over gRPC (xDS style); plus the admin HTTP API
//! and the library behind `sidestreamctl`.
//!
//! The binaries are thin: `sidestream-control-plane` calls [`daemon::start`],
//! `sidestreamctl` calls [`ctl::run`].

pub mod admin;
pub mod config_state;
pub mod ctl;
pub mod daemon;
pub mod discovery;
pub mod etcd;
pub mod metrics;
pub mod revision_trace;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod watch;
