//! A measuring proxy-wasm module for the filter benchmark.
//!
//! Loaded into Envoy in place of the sidestream filter (same V8 runtime, same
//! plugin configuration), it answers the question the throughput numbers
//! cannot: where does the filter's time per request go? On a few requests
//! (after a warm-up, so V8 has compiled everything) it runs each host call the
//! sidestream filter makes for a plain request, and each pure decision it
//! takes, `ITERATIONS` times in a loop timed with Envoy's clock, and logs one
//! line: `sidestream-probe {json}` with nanoseconds per operation.
//! `scripts/bench.sh filter` collects those lines into `filter-probe.json`.
//!
//! What a loop cannot time from inside the VM is a call from Envoy *into* the
//! VM. One is measured indirectly: reading a header that is present costs
//! the lookup plus one call into the VM to allocate the value's memory, so
//! `get_present_header - get_absent_header` is that call.
//!
//! Whole map or one header at a time: `get_needed_headers` reads, one call
//! each, exactly the headers the filter's decisions look at on this request
//! (recorded by running them), against `get_all_request_headers`, one call
//! for the whole map. `get_all_request_headers_raw` is the same host call
//! without the SDK's decoding into owned strings: the in-VM share of it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sidestream_core::config::{FilterBootstrap, Snapshot};
use sidestream_core::limit::StreamLimitState;
use sidestream_core::{limit, release, trace, HeaderList, RequestView};

/// Iterations of each timed loop.
const ITERATIONS: u64 = 2_000;
/// The requests (counted per VM) that run the probe: after a warm-up.
const PROBE_REQUESTS: [u64; 3] = [500, 1_000, 1_500];
/// A traceparent value as the filter writes it.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { probe: None })
    });
}}

struct Probe {
    snapshot: Snapshot,
    rng: RefCell<ChaCha12Rng>,
    counter: u32,
    requests: Cell<u64>,
}

struct ProbeRoot {
    probe: Option<Rc<Probe>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                hostcalls::log(
                    LogLevel::Error,
                    &format!("sidestream-probe: no configuration: {status:?}"),
                )
                .ok();
                return false;
            }
        };
        let bootstrap = match FilterBootstrap::from_json(&bytes) {
            Ok(bootstrap) => bootstrap,
            Err(error) => {
                hostcalls::log(
                    LogLevel::Error,
                    &format!("sidestream-probe: invalid configuration: {error}"),
                )
                .ok();
                return false;
            }
        };
        let counter =
            match hostcalls::define_metric(MetricType::Counter, "sidestream_probe_requests") {
                Ok(id) => id,
                Err(status) => {
                    hostcalls::log(
                        LogLevel::Error,
                        &format!("sidestream-probe: cannot define a metric: {status:?}"),
                    )
                    .ok();
                    return false;
                }
            };
        self.probe = Some(Rc::new(Probe {
            snapshot: bootstrap.defaults,
            rng: RefCell::new(ChaCha12Rng::seed_from_u64(7)),
            counter,
            requests: Cell::new(0),
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.probe.as_ref().map(|probe| -> Box<dyn HttpContext> {
            Box::new(ProbeHttp {
                probe: Rc::clone(probe),
                report: None,
            })
        })
    }
}

struct ProbeHttp {
    probe: Rc<Probe>,
    /// Request-side timings, completed and logged on the response headers.
    report: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let n = self.probe.requests.get() + 1;
        self.probe.requests.set(n);
        if PROBE_REQUESTS.contains(&n) {
            self.report = Some(request_side(&self.probe));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        if let Some(mut report) = self.report.take() {
            let ns = time(|| {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "x-trace-id",
                    Some("0af7651916cd43dd8448eb211c80319c"),
                );
            });
            report.insert("set_response_header".to_owned(), ns.into());
            let line = serde_json::Value::Object(report);
            hostcalls::log(LogLevel::Warn, &format!("sidestream-probe {line}")).ok();
        }
        Action::Continue
    }
}

/// A header view that records every name the decisions ask for.
struct Recording<'a> {
    headers: &'a HeaderList,
    asked: RefCell<Vec<String>>,
}

impl RequestView for Recording<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        let mut asked = self.asked.borrow_mut();
        if !asked.iter().any(|n| n == name) {
            asked.push(name.to_owned());
        }
        self.headers.header(name)
    }
}

/// The header names the filter's decisions (trace, stream detection and
/// limits, release) look at for this request.
fn needed_headers(probe: &Probe, headers: &HeaderList) -> Vec<String> {
    let view = Recording {
        headers,
        asked: RefCell::new(Vec::new()),
    };
    let mut random = |buf: &mut [u8]| probe.rng.borrow_mut().fill_bytes(buf);
    let _ = trace::decide(&probe.snapshot.trace, &view, &mut random);
    if !probe.snapshot.stream_limits.is_empty() {
        if let Some(kind) = limit::detect_stream(&view) {
            let _ = limit::select(&probe.snapshot.stream_limits, &view, kind);
        }
    }
    if let Some(policy) = release::select(&probe.snapshot.releases, &view) {
        let _ = policy.decide(&view, "0af7651916cd43dd8448eb211c80319c");
    }
    view.asked.into_inner()
}

/// The request header map read as the sidestream filter reads it.
#[path = "../../../filter/src/header_map_abi.rs"]
mod header_map_abi;

/// Nanoseconds per call of `op`, over `ITERATIONS` calls.
fn time(mut op: impl FnMut()) -> f64 {
    let now = || {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    let start = now();
    for _ in 0..ITERATIONS {
        op();
    }
    let elapsed = now().saturating_sub(start);
    (elapsed as f64 / ITERATIONS as f64 * 10.0).round() / 10.0
}

fn request_side(probe: &Probe) -> serde_json::Map<String, serde_json::Value> {
    let mut report = serde_json::Map::new();
    let mut put = |name: &str, ns: f64| {
        report.insert(name.to_owned(), ns.into());
    };
    put(
        "clock",
        time(|| {
            std::hint::black_box(hostcalls::get_current_time().ok());
        }),
    );
    put(
        "get_all_request_headers",
        time(|| {
            std::hint::black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        }),
    );
    put(
        "get_all_request_headers_raw",
        time(|| {
            std::hint::black_box(
                header_map_abi::request_header_map()
                    .map(|map| map.len())
                    .ok(),
            );
        }),
    );
    put(
        "get_absent_header",
        time(|| {
            std::hint::black_box(
                hostcalls::get_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "x-sidestream-probe-absent",
                )
                .ok(),
            );
        }),
    );
    put(
        "get_present_header",
        time(|| {
            std::hint::black_box(
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-user-id").ok(),
            );
        }),
    );
    put(
        "set_request_header",
        time(|| {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "traceparent",
                Some(TRACEPARENT),
            );
        }),
    );
    put(
        "clear_route_cache",
        time(|| {
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        }),
    );
    put(
        "increment_metric",
        time(|| {
            let _ = hostcalls::increment_metric(probe.counter, 1);
        }),
    );
    put(
        "get_shared_data",
        time(|| {
            std::hint::black_box(hostcalls::get_shared_data("sidestream.probe").ok());
        }),
    );
    put(
        "set_shared_data",
        time(|| {
            let _ = hostcalls::set_shared_data(
                "sidestream.probe",
                Some(b"0123456789abcdef0123456789abcdef"),
                None,
            );
        }),
    );

    // The pure decisions, on the headers this request carries.
    let pairs = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let headers = HeaderList(pairs);
    let needed = needed_headers(probe, &headers);
    put(
        "get_needed_headers",
        time(|| {
            for name in &needed {
                std::hint::black_box(
                    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok(),
                );
            }
        }),
    );
    put("needed_headers", needed.len() as f64);
    put(
        "needed_headers_present",
        needed
            .iter()
            .filter(|n| headers.header(n).is_some())
            .count() as f64,
    );
    put("request_headers", headers.0.len() as f64);
    let mut random = |buf: &mut [u8]| probe.rng.borrow_mut().fill_bytes(buf);
    put(
        "trace_decide",
        time(|| {
            std::hint::black_box(trace::decide(&probe.snapshot.trace, &headers, &mut random));
        }),
    );
    put(
        "release_decide",
        time(|| {
            let chosen = release::select(&probe.snapshot.releases, &headers).map(|policy| {
                policy
                    .decide(&headers, "0af7651916cd43dd8448eb211c80319c")
                    .group
            });
            std::hint::black_box(chosen);
        }),
    );
    if let Some(policy) = probe.snapshot.stream_limits.first() {
        let mut state = StreamLimitState::new(policy, 0);
        let mut now = 0u64;
        put(
            "stream_admit",
            time(|| {
                now += 1_000_000;
                let decoded = StreamLimitState::decode(&state.encode());
                if let Some(mut decoded) = decoded {
                    std::hint::black_box(decoded.admit(policy, now));
                    decoded.finish();
                    state = decoded;
                }
            }),
        );
    }
    put("request", probe.requests.get() as f64);
    report
}
