//! An empty proxy-wasm HTTP filter for the filter benchmark's baselines.
//!
//! It registers a root context and an HTTP context, so Envoy still crosses
//! into the Wasm VM for every callback the module exports. It is built and
//! trimmed exactly as the sidestream filter is (scripts/build-filter.sh: the
//! exports of filter/exports.txt, the stream's end in one VM entry), so both
//! pay for the same callbacks. What it does per request depends on the
//! plugin's root id:
//!
//! - `empty`: nothing; every callback continues. What remains is the cost of
//!   the Wasm machinery itself.
//! - `calls-only`: the host calls the sidestream filter makes on the
//!   benchmark's plain request, with fixed values and no decision: read the
//!   request header map (as the filter does), write `traceparent` and the
//!   group tag, clear the route cache, add `x-trace-id` to the response. Its
//!   cost over `empty` is what that behaviour costs any Wasm filter here,
//!   Envoy's own work for it included (re-routing, the extra headers); the
//!   sidestream filter's cost over it is the filter's own code.

// The stream's end in one VM entry, exactly as the sidestream filter ships it.
#[path = "../../../filter/src/stream_end.rs"]
mod stream_end;

// The request header map read as the sidestream filter reads it.
#[path = "../../../filter/src/header_map_abi.rs"]
mod header_map_abi;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

/// The root id that turns the host calls on.
const CALLS_ONLY: &str = "calls-only";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot { calls: false }) });
}}

struct EmptyRoot {
    /// Make the sidestream filter's host calls on every request.
    calls: bool,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let root_id = match hostcalls::get_property(vec!["plugin_root_id"]) {
            Ok(id) => id.unwrap_or_default(),
            Err(status) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("empty filter: cannot read plugin_root_id: {status:?}"),
                );
                return false;
            }
        };
        self.calls = root_id == CALLS_ONLY.as_bytes();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyHttp { calls: self.calls }))
    }
}

struct EmptyHttp {
    calls: bool,
}

impl Context for EmptyHttp {}

impl HttpContext for EmptyHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        if self.calls {
            let map = header_map_abi::request_header_map();
            std::hint::black_box(map.map(|m| m.len()).ok());
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "traceparent",
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-sidestream-group",
                Some("stable"),
            );
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        if self.calls {
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "x-trace-id",
                "0af7651916cd43dd8448eb211c80319c",
            );
        }
        Action::Continue
    }
}
