//! An empty proxy-wasm HTTP filter for the filter benchmark's baseline.
//!
//! It registers a root context and an HTTP context whose callbacks all keep
//! their default (continue), so Envoy still crosses into the Wasm VM for
//! every callback the module exports: what remains is the cost of
//! the Wasm machinery itself, against which the sidestream filter's own work
//! is measured. It is built and trimmed exactly as the sidestream filter is
//! (scripts/build-filter.sh: the exports of filter/exports.txt, the stream's
//! end in one VM entry), so both pay for the same callbacks.

// The stream's end in one VM entry, exactly as the sidestream filter ships it
// (scripts/build-filter.sh trims this module to filter/exports.txt too).
#[path = "../../../filter/src/stream_end.rs"]
mod stream_end;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot) });
}}

struct EmptyRoot;

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyHttp))
    }
}

struct EmptyHttp;

impl Context for EmptyHttp {}

impl HttpContext for EmptyHttp {}
