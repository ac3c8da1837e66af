//! The filter's handling of a request's header map, through the fake host of
//! its unit tests: trace context (W3C and B3), release colouring (header,
//! cookie, tenant and percent rules, sticky cookie, client tags) and stream
//! limits (shared data, and the limiter's answers for mesh-scoped ones), then
//! the response side and the end of the stream.
//! Any header names and values, any failing host calls; the filter never
//! panics, and with a working host every request leaves with a valid
//! `traceparent` and the matched policy's tag header naming one of its groups.
//!
//! Input: up to 4 requests on one Envoy, each a `%` line with options
//! (`source=<ip:port>`, `nosource`, `fail=<host call>,...`, `elapsed=<ns>`
//! since the previous request, `end`: the stream ends before the next
//! request, `answer=<grpc status>,<hex body>`: the limiter's answer to the
//! Acquire of a mesh-scoped stream, paths under `/mesh`) and then
//! `name: value` header lines. Without a `%` line the
//! whole input is one request.
#![no_main]

#[path = "../common/text.rs"]
mod text;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sidestream_core::config::FilterBootstrap;
use sidestream_core::release;
use sidestream_core::trace::parse_traceparent;
use sidestream_filter::configure::parse_bootstrap;
use sidestream_filter::fake::{FakeEnvoy, FakeHost, LocalResponse};
use sidestream_filter::metrics::Metrics;
use sidestream_filter::request::{RequestFlow, RequestHeaders, Verdict};
use sidestream_filter::vm::VmState;

/// The plugin configuration: every kind of rule and key the filter knows.
const BOOTSTRAP: &str = r#"{
  "nodeId": "fuzz",
  "failMode": "open",
  "limiter": { "cluster": "sidestream-limiter" },
  "defaults": {
    "trace": {
      "enabled": true,
      "sampleRatio": 0.5,
      "requestIdHeader": "x-request-id",
      "responseHeader": "x-trace-id",
      "b3": { "accept": true, "emit": true }
    },
    "releases": {
      "grey": {
        "tagHeader": "x-sidestream-group",
        "groups": ["stable", "canary"],
        "defaultGroup": "stable",
        "trustClientTag": false,
        "rules": [
          { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
          { "type": "header", "name": "x-env-tag", "in": ["beta", "canary"], "group": "canary" },
          { "type": "cookie", "name": "sidestream-grey", "equals": "1", "group": "canary" },
          { "type": "tenant", "header": "x-tenant-id", "tenants": ["acme", "globex"], "group": "canary" },
          { "type": "percent", "percent": 10, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" },
          { "type": "percent", "percent": 25.5, "by": { "source": "cookie", "name": "session" }, "group": "canary" }
        ],
        "sticky": { "cookie": "sidestream-group", "maxAgeSeconds": 3600 }
      },
      "shop": {
        "match": { "hosts": ["shop.example.com", "*.shop.example.com"], "pathPrefixes": ["/checkout", "/cart"] },
        "priority": 10,
        "tagHeader": "x-shop-group",
        "groups": ["stable", "canary", "beta"],
        "defaultGroup": "stable",
        "trustClientTag": true,
        "rules": [
          { "type": "percent", "percent": 50, "by": { "source": "traceId" }, "group": "beta" }
        ]
      }
    },
    "streamLimits": {
      "tenant-streams": {
        "streamKinds": ["sse", "websocket"],
        "key": { "source": "header", "name": "x-tenant-id" },
        "newStreamsPerSecond": 5,
        "burst": 2,
        "maxConcurrent": 2,
        "failMode": "open"
      },
      "mesh-streams": {
        "match": { "hosts": ["*"], "pathPrefixes": ["/mesh"] },
        "priority": 20,
        "key": { "source": "header", "name": "x-tenant-id" },
        "newStreamsPerSecond": 5,
        "burst": 2,
        "maxConcurrent": 2,
        "scope": "mesh",
        "mesh": { "fallback": "local", "timeoutMs": 50 }
      },
      "grpc-streams": {
        "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
        "priority": 5,
        "streamKinds": ["grpc"],
        "key": { "source": "clientAddress" },
        "newStreamsPerSecond": 0.5,
        "burst": 1,
        "failMode": "closed"
      }
    }
  }
}"#;

/// Host calls that can be made to fail.
const CALLS: [&str; 10] = [
    "request_headers",
    "dispatch_grpc_call",
    "now_nanos",
    "set_request_header",
    "add_response_header",
    "send_http_response",
    "send_grpc_response",
    "shared_get",
    "shared_set",
    "clear_route_cache",
];

/// One request's options (its `%` line).
struct Options<'a> {
    /// The limiter's answer to a paused request: gRPC status and body.
    answer: Option<(u32, Vec<u8>)>,
    source: Option<&'a str>,
    failing: Vec<&'static str>,
    elapsed: u64,
    ends: bool,
}

fn options(line: &str) -> Options<'_> {
    let mut options = Options {
        answer: None,
        source: Some("192.0.2.7:40000"),
        failing: Vec::new(),
        elapsed: 1_000_000,
        ends: false,
    };
    for word in line.split_whitespace() {
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        match name {
            "source" => options.source = Some(value),
            "nosource" => options.source = None,
            "fail" => options.failing.extend(
                value
                    .split(',')
                    .filter_map(|call| CALLS.iter().find(|c| **c == call).copied()),
            ),
            "elapsed" => options.elapsed = value.parse().unwrap_or(0),
            "end" => options.ends = true,
            "answer" => {
                let (status, body) = value.split_once(',').unwrap_or((value, ""));
                options.answer = Some((status.parse().unwrap_or(0), hex(body)));
            }
            _ => {}
        }
    }
    options
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let mut requests = text::sections(input, "%");
    if requests.is_empty() {
        requests.push(("", input));
    }
    static PARSED: OnceLock<FilterBootstrap> = OnceLock::new();
    let bootstrap = PARSED.get_or_init(|| match parse_bootstrap(BOOTSTRAP.as_bytes()) {
        Ok(bootstrap) => bootstrap,
        Err(error) => panic!("the fuzz bootstrap does not parse: {error}"),
    });
    // A new Envoy and VM per input: a crash replays from its input alone.
    let envoy = FakeEnvoy::new();
    let metrics = Metrics::define(&FakeHost::new(&envoy));
    let vm = VmState::new(bootstrap.clone(), metrics, [7; 32]);
    let mut now = 1_000_000_000_000u64;
    for (line, headers) in requests.into_iter().take(4) {
        let options = options(line);
        now = now.saturating_add(options.elapsed);
        // Envoy hands the filter lowercase names.
        let owned: Vec<(String, &str)> = text::header_lines(headers)
            .into_iter()
            .take(64)
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let mut host = FakeHost::with_request(&envoy, &headers);
        host.source = options.source.map(str::to_owned);
        host.now.set(now);
        for call in &options.failing {
            host.fail(call);
        }
        let mut flow = RequestFlow::new();
        let verdict = flow.on_request_headers(&host, &vm);
        flow.on_response_headers(&host, &vm);
        vm.metrics.flush(&host);
        if options.failing.is_empty() {
            check(&host, &vm, &headers, verdict);
        }
        if verdict == Verdict::Pause {
            // The limiter answers the Acquire the request waits for.
            let token = host.grpc_calls.borrow().last().map(|call| call.token);
            if let (Some(token), Some((status, body))) = (token, &options.answer) {
                flow.on_limiter_answer(&host, &vm, token, *status, body);
                let local = host.local_response.borrow().clone();
                match local {
                    Some(LocalResponse::Http { status, .. }) => {
                        assert!(status == 429 || status == 503, "status {status}")
                    }
                    Some(LocalResponse::Grpc { .. }) => {}
                    None if options.failing.is_empty() => check_release(&host, &vm, &headers),
                    None => {}
                }
            }
        }
        if options.ends {
            flow.on_stream_end(&host, &vm);
            flow.on_stream_end(&host, &vm);
            assert!(!flow.holds_stream());
        }
    }
});

/// Bytes from hex digits (pairs; anything else ends them).
fn hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map_while(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// What a request that met a working host leaves with.
fn check(host: &FakeHost, vm: &VmState, sent: &[(&str, &str)], verdict: Verdict) {
    let local = host.local_response.borrow();
    match verdict {
        Verdict::Stop => assert!(local.is_some(), "stopped without a local response"),
        Verdict::Continue | Verdict::Pause => {
            assert!(local.is_none(), "a local response, yet {verdict:?}")
        }
    }
    if let Some(LocalResponse::Http { status, .. }) = &*local {
        assert!(*status == 429 || *status == 503, "status {status}");
    }
    if verdict == Verdict::Stop {
        return;
    }
    let traceparent = host.header("traceparent");
    let valid = traceparent.as_deref().map(parse_traceparent);
    assert!(
        matches!(valid, Some(Ok(_))),
        "traceparent {traceparent:?} after the filter"
    );
    // A paused request is coloured when the limiter's answer resumes it.
    if verdict == Verdict::Continue {
        check_release(host, vm, sent);
    }
}

/// The policy that matched wrote one of its groups; with none matching, the
/// untrusted tag header is gone.
fn check_release(host: &FakeHost, vm: &VmState, sent: &[(&str, &str)]) {
    let request = RequestHeaders::from_pairs(
        sent.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let snapshot = vm.snapshot();
    match release::select(&snapshot.releases, &request) {
        Some(policy) => {
            let group = host.header(&policy.tag_header);
            assert!(
                group.as_ref().is_some_and(|g| policy.groups.contains(g)),
                "policy {} left {} = {group:?}",
                policy.name,
                policy.tag_header
            );
        }
        None => assert_eq!(host.header("x-sidestream-group"), None),
    }
}
