//! sidestream-limiter: mesh-wide stream limits. A stateless gRPC service
//! (`sidestream.limits.v1.StreamLimiter`) that every filter VM asks before it
//! admits a stream of a mesh-scoped policy. All state lives in Redis or Redis
//! Cluster, so any number of replicas serve the same limits:
//!
//! - a token bucket per (policy, key) with the local limiter's semantics
//!   (`sidestream_core::limit::StreamLimitState`), on Redis's clock;
//! - per (policy, key), each instance's open-stream count under a lease that
//!   Acquire and Sync renew: a crashed Envoy's slots come back within one lease.
//!
//! Requests carry the policy's numbers (see `limits.proto`), so the limiter
//! needs no config source; only Envoy's RLS API ([`rls`], optional) has a
//! file naming the policies its descriptors stand for. The binary is thin:
//! it calls [`daemon::start`].

pub mod admin;
pub mod daemon;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod rls;
pub mod service;
pub mod store;
pub mod validate;
