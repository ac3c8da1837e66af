//! sidestream-filter: the proxy-wasm glue that puts sidestream's decisions into
//! Envoy (see design.md, "The filter, per request").
//!
//! - [`request`]: one HTTP request — trace, stream limit, release colouring,
//!   response headers, end of stream.
//! - [`config_stream`]: the config stream to the control plane, per worker VM.
//! - [`host`]: the host calls behind a trait ([`host::ProxyWasmHost`] in Envoy, a
//!   fake in unit tests); [`shared`]: compare-and-swap updates of shared data.
//! - [`metrics`]: the Envoy stats (names, help texts, where they show).
//! - `glue` (Wasm only): the proxy-wasm root and HTTP contexts; `stream_end`
//!   (Wasm only): `proxy_on_done` and `proxy_on_delete` in one VM entry.
//!
//! The decisions themselves are `sidestream_core`'s.

pub mod config_stream;
pub mod configure;
mod header_map_abi;
pub mod host;
pub mod mesh;
pub mod metrics;
pub mod request;
pub mod shared;
pub mod vm;

// Built for Wasm; clippy checks it natively too.
#[cfg(any(target_arch = "wasm32", clippy))]
mod glue;
// The stream's end in one VM entry (the module's `proxy_on_done`).
#[cfg(any(target_arch = "wasm32", clippy))]
mod stream_end;

// The fake host of the unit tests; public for the fuzz targets (fuzz/).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fake;
