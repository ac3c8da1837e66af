use std::rc::Rc;

use sidestream_core::limit::StreamLimitState;
use sidestream_core::trace::parse_traceparent;

use super::*;
use crate::configure::parse_bootstrap;
use crate::fake::{FakeEnvoy, FakeHost, LocalResponse};
use crate::host::GrpcCode;
use crate::metrics::{self, Metrics};
use crate::shared::MAX_ATTEMPTS;

/// The plugin configuration embedded in envoy-config/standalone.yaml (the JSON
/// under `value: |`), so these tests run the policy the file ships.
fn standalone_bootstrap() -> String {
    let yaml = include_str!("../../../envoy-config/standalone.yaml");
    let mut lines = yaml.lines().skip_while(|line| line.trim() != "value: |");
    let _ = lines.next();
    let block: Vec<&str> = lines
        .take_while(|line| line.starts_with("                    "))
        .collect();
    block.join("\n")
}

fn vm_from(envoy: &Rc<FakeEnvoy>, bootstrap: &str) -> VmState {
    let bootstrap = parse_bootstrap(bootstrap.as_bytes()).expect("bootstrap parses");
    let metrics = Metrics::define(&FakeHost::new(envoy));
    VmState::new(bootstrap, metrics, [7; 32])
}

fn standalone_vm(envoy: &Rc<FakeEnvoy>) -> VmState {
    vm_from(envoy, &standalone_bootstrap())
}

/// Runs one request through request headers and response headers.
fn run(host: &FakeHost, vm: &VmState) -> (Verdict, RequestFlow) {
    let mut flow = RequestFlow::new();
    let verdict = flow.on_request_headers(host, vm);
    flow.on_response_headers(host, vm);
    // What the root context's tick does: batched counters reach Envoy.
    vm.metrics.flush(host);
    (verdict, flow)
}

const SSE: [(&str, &str); 4] = [
    (":method", "GET"),
    (":path", "/events"),
    (":authority", "example.com"),
    ("accept", "text/event-stream"),
];

fn sse_for(tenant: &str) -> Vec<(&str, &str)> {
    let mut headers = SSE.to_vec();
    headers.push(("x-tenant-id", tenant));
    headers
}

fn http_status(host: &FakeHost) -> Option<u32> {
    match &*host.local_response.borrow() {
        Some(LocalResponse::Http { status, .. }) => Some(*status),
        _ => None,
    }
}

fn local_header(host: &FakeHost, name: &str) -> Option<String> {
    match &*host.local_response.borrow() {
        Some(LocalResponse::Http { headers, .. }) => headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        Some(LocalResponse::Grpc { metadata, .. }) => metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        None => None,
    }
}

#[test]
fn standalone_bootstrap_is_the_documented_policy() {
    let bootstrap = parse_bootstrap(standalone_bootstrap().as_bytes()).expect("parses");
    assert!(bootstrap.control_plane.is_none());
    let defaults = &bootstrap.defaults;
    assert!(defaults.trace.enabled);
    assert_eq!(defaults.releases.len(), 1);
    assert_eq!(defaults.releases[0].name, "grey");
    assert_eq!(defaults.stream_limits.len(), 1);
    let limit = &defaults.stream_limits[0];
    assert_eq!(limit.burst, 5);
    assert_eq!(limit.max_concurrent, Some(20));
}

#[test]
fn a_request_without_trace_context_gets_a_new_trace_and_request_id() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), (":authority", "a")]);
    let (verdict, _) = run(&host, &vm);
    assert_eq!(verdict, Verdict::Continue);
    let traceparent = host.header("traceparent").expect("traceparent set");
    let parsed = parse_traceparent(&traceparent).expect("valid traceparent");
    assert!(parsed.sampled());
    let request_id = host.header("x-request-id").expect("x-request-id set");
    assert_eq!(request_id.len(), 36, "uuid: {request_id}");
    assert_eq!(envoy.metric(metrics::TRACES_STARTED.name), 1);
    assert_eq!(envoy.metric(metrics::TRACES_CONTINUED.name), 0);
    // The trace id is echoed on the response.
    let echoed = host.response_added.borrow().clone();
    assert!(
        echoed.contains(&("x-trace-id".to_owned(), parsed.trace_id_hex())),
        "{echoed:?}"
    );
}

#[test]
fn a_valid_parent_keeps_its_trace_id_with_a_new_parent_id() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let host = FakeHost::with_request(
        &envoy,
        &[
            (":path", "/"),
            ("traceparent", parent),
            ("x-request-id", "mine"),
        ],
    );
    run(&host, &vm);
    let traceparent = host.header("traceparent").expect("traceparent");
    let parsed = parse_traceparent(&traceparent).expect("valid");
    assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(traceparent, parent, "new parent id");
    assert_eq!(host.header("x-request-id").as_deref(), Some("mine"));
    assert_eq!(envoy.metric(metrics::TRACES_CONTINUED.name), 1);
    assert_eq!(envoy.metric(metrics::TRACES_STARTED.name), 0);
}

#[test]
fn an_invalid_or_malformed_parent_starts_a_new_trace() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let long = "f".repeat(10_000);
    let bad = [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
        "00-é-ü-01",
        long.as_str(),
    ];
    for (i, value) in bad.iter().enumerate() {
        let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("traceparent", value)]);
        let (verdict, _) = run(&host, &vm);
        assert_eq!(verdict, Verdict::Continue);
        let traceparent = host.header("traceparent").expect("traceparent");
        let parsed = parse_traceparent(&traceparent).expect("valid new traceparent");
        assert!(!value.contains(&parsed.trace_id_hex()));
        assert_eq!(
            envoy.metric(metrics::TRACES_INVALID_PARENT.name),
            i as i64 + 1,
            "{value}"
        );
    }
    assert_eq!(envoy.metric(metrics::TRACES_STARTED.name), bad.len() as i64);
    // An empty traceparent is treated as none (core's call): still a new trace.
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("traceparent", "")]);
    run(&host, &vm);
    parse_traceparent(&host.header("traceparent").expect("set")).expect("valid");
    assert_eq!(
        envoy.metric(metrics::TRACES_STARTED.name),
        bad.len() as i64 + 1
    );
}

#[test]
fn trace_ids_differ_between_requests() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let host = FakeHost::with_request(&envoy, &[(":path", "/")]);
        run(&host, &vm);
        assert!(seen.insert(host.header("traceparent").expect("set")));
    }
}

#[test]
fn env_tag_canary_is_coloured_canary_and_the_route_is_recomputed() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("x-env-tag", "canary")]);
    run(&host, &vm);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("canary"));
    assert_eq!(host.route_cleared.get(), 1);
    assert_eq!(envoy.metric("sidestream.release.grey.canary.requests"), 1);
}

#[test]
fn a_forged_tag_alone_is_overwritten() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("x-sidestream-group", "canary")]);
    run(&host, &vm);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("stable"));
    assert_eq!(host.route_cleared.get(), 1, "the route saw the forged tag");
    assert_eq!(envoy.metric("sidestream.release.grey.stable.requests"), 1);
}

#[test]
fn a_tag_that_already_names_the_chosen_group_is_not_rerouted() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("x-sidestream-group", "stable")]);
    run(&host, &vm);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("stable"));
    assert_eq!(
        host.route_cleared.get(),
        0,
        "the route already saw this group"
    );
    assert_eq!(envoy.metric("sidestream.release.grey.stable.requests"), 1);
    // A repeated tag header is not the chosen group: it is overwritten.
    let host = FakeHost::with_request(
        &envoy,
        &[
            (":path", "/"),
            ("x-sidestream-group", "stable"),
            ("x-sidestream-group", "stable"),
        ],
    );
    run(&host, &vm);
    assert_eq!(host.route_cleared.get(), 1);
}

#[test]
fn request_counters_reach_envoy_at_the_flush() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::new(&envoy);
    for _ in 0..3 {
        host.set_request(&[(":path", "/")]);
        RequestFlow::new().on_request_headers(&host, &vm);
    }
    assert_eq!(envoy.metric(metrics::TRACES_STARTED.name), 0, "batched");
    vm.metrics.flush(&host);
    assert_eq!(envoy.metric(metrics::TRACES_STARTED.name), 3);
    assert_eq!(envoy.metric("sidestream.release.grey.stable.requests"), 3);
    vm.metrics.flush(&host);
    assert_eq!(
        envoy.metric(metrics::TRACES_STARTED.name),
        3,
        "flushed once"
    );
}

#[test]
fn the_grey_cookie_colours_canary() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(
        &envoy,
        &[
            (":path", "/"),
            ("cookie", "a=b"),
            ("cookie", "sidestream-grey=1"),
        ],
    );
    run(&host, &vm);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("canary"));
}

#[test]
fn a_users_group_is_stable_and_about_ten_percent_are_canary() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let mut canary = 0;
    for user in 0..2000 {
        let user = format!("user-{user}");
        let mut groups = Vec::new();
        for _ in 0..3 {
            let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("x-user-id", &user)]);
            run(&host, &vm);
            groups.push(host.header("x-sidestream-group").expect("tagged"));
        }
        assert!(groups.iter().all(|g| *g == groups[0]), "{user}: {groups:?}");
        if groups[0] == "canary" {
            canary += 1;
        }
    }
    assert!((120..=280).contains(&canary), "{canary} of 2000 canary");
}

#[test]
fn a_burst_of_sse_opens_across_two_workers_admits_exactly_the_burst() {
    let envoy = FakeEnvoy::new();
    let workers = [standalone_vm(&envoy), standalone_vm(&envoy)];
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        let vm = &workers[i % 2];
        let host = FakeHost::with_request(&envoy, &sse_for("acme"));
        let (verdict, flow) = run(&host, vm);
        match verdict {
            Verdict::Continue => {
                assert!(flow.holds_stream());
                admitted.push(flow);
            }
            Verdict::Stop => {
                refused += 1;
                assert_eq!(http_status(&host), Some(429));
                assert!(local_header(&host, "retry-after").is_some());
                assert_eq!(local_header(&host, "ratelimit-limit").as_deref(), Some("5"));
                assert!(local_header(&host, "ratelimit-policy").is_some());
                assert_eq!(
                    local_header(&host, "content-type").as_deref(),
                    Some("application/json")
                );
            }
            Verdict::Pause => panic!("an envoy-scoped policy never waits"),
        }
    }
    assert_eq!(admitted.len(), 5);
    assert_eq!(refused, 25);
    assert_eq!(envoy.metric(metrics::STREAMS_ADMITTED.name), 5);
    assert_eq!(envoy.metric(metrics::STREAMS_REFUSED.name), 25);
    assert_eq!(envoy.metric(metrics::STREAMS_ACTIVE.name), 5);
    // Another tenant has its own bucket.
    let host = FakeHost::with_request(&envoy, &sse_for("globex"));
    assert_eq!(run(&host, &workers[0]).0, Verdict::Continue);
    // Non-stream requests are not limited.
    let host = FakeHost::with_request(&envoy, &[(":path", "/"), ("x-tenant-id", "acme")]);
    assert_eq!(run(&host, &workers[1]).0, Verdict::Continue);
}

#[test]
fn the_bucket_refills_with_time() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    for _ in 0..5 {
        assert_eq!(run(&host, &vm).0, Verdict::Continue);
    }
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    host.now.set(host.now.get() + 200_000_000); // 5/s: one token per 200 ms
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
}

#[test]
fn the_concurrency_cap_refuses_the_21st_and_admits_after_one_ends() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    let mut open = Vec::new();
    for _ in 0..20 {
        // Space opens so the rate never refuses.
        host.now.set(host.now.get() + 250_000_000);
        host.set_request(&sse_for("acme"));
        let (verdict, flow) = run(&host, &vm);
        assert_eq!(verdict, Verdict::Continue);
        open.push(flow);
    }
    host.now.set(host.now.get() + 250_000_000);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    assert_eq!(http_status(&host), Some(429));
    assert_eq!(
        local_header(&host, "ratelimit-limit").as_deref(),
        Some("20")
    );

    // One stream ends, reported twice: counted once.
    let mut ended = open.pop().expect("open");
    ended.on_stream_end(&host, &vm);
    ended.on_stream_end(&host, &vm);
    assert_eq!(envoy.metric(metrics::STREAMS_ACTIVE.name), 19);
    host.now.set(host.now.get() + 250_000_000);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    host.now.set(host.now.get() + 250_000_000);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Stop);

    let key = envoy
        .shared_keys()
        .into_iter()
        .find(|k| k.starts_with(LIMIT_KEY_PREFIX))
        .expect("limit key");
    let (value, _) = host.shared_get(&key).expect("read");
    let state = StreamLimitState::decode(&value.expect("value")).expect("decodes");
    assert_eq!(state.active(), 20);
}

#[test]
fn a_key_created_by_another_worker_meanwhile_is_not_overwritten() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    // Another worker admits a stream and creates the key between our read
    // (key absent) and our write.
    let snapshot = vm.snapshot();
    let policy = &snapshot.stream_limits[0];
    let mut theirs = StreamLimitState::new(policy, host.now.get());
    assert!(matches!(
        theirs.admit(policy, host.now.get()),
        limit::Admission::Admitted { .. }
    ));
    let key = format!("{LIMIT_KEY_PREFIX}{}.h:acme", policy.name);
    *host.racing_write.borrow_mut() = Some((key.clone(), theirs.encode()));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    let (value, _) = host.shared_get(&key).expect("read");
    let state = StreamLimitState::decode(&value.expect("value")).expect("decodes");
    assert_eq!(state.active(), 2, "both admissions counted");
}

#[test]
fn cas_conflicts_are_retried() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    host.injected_conflicts.set(3);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    assert_eq!(envoy.metric(metrics::STREAMS_ADMITTED.name), 2);
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 0);
}

#[test]
fn endless_contention_follows_the_fail_mode() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy); // failMode open
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    host.injected_conflicts
        .set(u32::try_from(MAX_ATTEMPTS).expect("small") + 1);
    host.set_request(&sse_for("acme"));
    let (verdict, flow) = run(&host, &vm);
    assert_eq!(verdict, Verdict::Continue);
    assert!(!flow.holds_stream(), "admitted uncounted");
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 1);

    let closed =
        standalone_bootstrap().replace("\"failMode\": \"open\"\n", "\"failMode\": \"closed\"\n");
    assert!(closed.contains("\"failMode\": \"closed\""));
    let envoy = FakeEnvoy::new();
    let vm = vm_from(&envoy, &closed);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    host.fail("shared_get");
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    assert_eq!(http_status(&host), Some(503));
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 1);
}

#[test]
fn failing_host_calls_are_counted_and_the_request_goes_on() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    host.fail("shared_get");
    host.fail("clear_route_cache");
    let (verdict, flow) = run(&host, &vm);
    assert_eq!(verdict, Verdict::Continue);
    assert!(!flow.holds_stream());
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 2);

    let host = FakeHost::with_request(&envoy, &[(":path", "/")]);
    host.fail("request_headers");
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 3);
}

#[test]
fn grpc_streams_are_refused_with_resource_exhausted() {
    let bootstrap = standalone_bootstrap().replace(
        "\"streamKinds\": [\"sse\", \"websocket\"]",
        "\"streamKinds\": [\"grpc\"]",
    );
    assert!(bootstrap.contains("[\"grpc\"]"));
    let envoy = FakeEnvoy::new();
    let vm = vm_from(&envoy, &bootstrap);
    let grpc = [
        (":method", "POST"),
        (":path", "/pkg.Service/Watch"),
        ("content-type", "application/grpc"),
        ("x-tenant-id", "acme"),
    ];
    let host = FakeHost::with_request(&envoy, &grpc);
    for _ in 0..5 {
        assert_eq!(run(&host, &vm).0, Verdict::Continue);
    }
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    let response = host.local_response.borrow().clone();
    match response {
        Some(LocalResponse::Grpc { code, metadata, .. }) => {
            assert_eq!(code, GrpcCode::ResourceExhausted);
            assert!(metadata.iter().any(|(n, _)| n == "retry-after"));
        }
        other => panic!("expected a gRPC refusal, got {other:?}"),
    }
}

#[test]
fn long_tenant_values_give_bounded_keys() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let tenant = "t".repeat(100_000);
    let host = FakeHost::with_request(&envoy, &sse_for(&tenant));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    for key in envoy.shared_keys() {
        assert!(key.len() <= MAX_SHARED_KEY_LEN, "{}", key.len());
    }
}

#[test]
fn a_new_snapshot_applies_to_new_requests_and_keeps_the_buckets() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    for _ in 0..5 {
        assert_eq!(run(&host, &vm).0, Verdict::Continue);
    }
    // A snapshot that only changes the release policy: the bucket stays empty.
    let mut snapshot = (*vm.snapshot()).clone();
    snapshot.releases.clear();
    vm.replace_snapshot(snapshot);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    assert_eq!(
        host.header("x-sidestream-group"),
        None,
        "no release policy now"
    );
}

#[test]
fn every_fixed_metric_is_defined_under_the_sidestream_prefix() {
    let envoy = FakeEnvoy::new();
    let _vm = standalone_vm(&envoy);
    let names = envoy.metric_names();
    for def in metrics::ALL {
        assert!(def.name.starts_with("sidestream."));
        assert!(!def.help.is_empty());
        assert!(names.iter().any(|n| n == def.name), "{}", def.name);
    }
}

/// The host calls of one request, in order (request headers, response
/// headers, stream end), after a first one like it (which defines its
/// release counter, once per VM).
fn calls_of(host: &FakeHost, vm: &VmState) -> Vec<&'static str> {
    let request = host.request.borrow().clone();
    let mut calls = Vec::new();
    for _ in 0..2 {
        *host.request.borrow_mut() = request.clone();
        host.calls.borrow_mut().clear();
        let mut flow = RequestFlow::new();
        assert_eq!(flow.on_request_headers(host, vm), Verdict::Continue);
        flow.on_response_headers(host, vm);
        flow.on_stream_end(host, vm);
        calls = std::mem::take(&mut *host.calls.borrow_mut());
    }
    calls
}

#[test]
fn a_plain_request_makes_five_host_calls_and_a_stream_open_a_few_more() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    // A plain request (a new trace, the stable group): read the map once,
    // write traceparent and the tag, re-route, echo the trace id. Envoy has
    // set x-request-id already; counters wait for the tick.
    let host = FakeHost::with_request(
        &envoy,
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "example.com"),
            ("x-request-id", "r-1"),
            ("x-user-id", "user-1"),
        ],
    );
    assert_eq!(
        calls_of(&host, &vm),
        [
            "request_headers",
            "set_request_header",
            "set_request_header",
            "clear_route_cache",
            "add_response_header",
        ]
    );
    // An SSE open also reads the clock, reads and writes the tenant's bucket
    // (keyed by x-tenant-id: the client address is not asked for) and counts the stream (admitted, active);
    // its end gives the slot back (active, read, write).
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    let calls = calls_of(&host, &vm);
    assert_eq!(
        calls,
        [
            "request_headers",
            "set_request_header",
            "set_request_header",
            "now_nanos",
            "shared_get",
            "shared_set",
            "increment_metric",
            "increment_metric",
            "set_request_header",
            "clear_route_cache",
            "add_response_header",
            "increment_metric",
            "shared_get",
            "shared_set",
        ],
        "{calls:?}"
    );
}

/// The standalone bootstrap with the `grey` policy limited to `/app` and a
/// second policy, `trusted`, that trusts its own tag header and covers `/t`.
fn bootstrap_with_uncovered_paths() -> String {
    let grey = "\"grey\": {\n";
    let bootstrap = standalone_bootstrap().replacen(
        grey,
        "\"trusted\": { \"match\": { \"pathPrefixes\": [\"/t\"] }, \
           \"tagHeader\": \"x-trusted-group\", \"trustClientTag\": true, \
           \"groups\": [\"stable\", \"canary\"], \"defaultGroup\": \"stable\" },\n\
         \"grey\": { \"match\": { \"pathPrefixes\": [\"/app\"] },\n",
        1,
    );
    assert!(bootstrap.contains("\"/app\""), "{bootstrap}");
    bootstrap
}

#[test]
fn untrusted_tag_headers_are_computed_once_per_snapshot() {
    let envoy = FakeEnvoy::new();
    let vm = vm_from(&envoy, &bootstrap_with_uncovered_paths());
    assert_eq!(&*vm.applied().untrusted_tag_headers, ["x-sidestream-group"]);
    let mut snapshot = (*vm.snapshot()).clone();
    let mut second = snapshot.releases[0].clone();
    second.name = "other".to_owned();
    second.tag_header = "x-other-group".to_owned();
    second.trust_client_tag = false;
    snapshot.releases.push(second.clone());
    second.name = "again".to_owned();
    snapshot.releases.push(second);
    vm.replace_snapshot(snapshot);
    assert_eq!(
        &*vm.applied().untrusted_tag_headers,
        ["x-other-group", "x-sidestream-group"]
    );
}

#[test]
fn a_forged_tag_on_a_path_no_policy_matches_is_removed() {
    let envoy = FakeEnvoy::new();
    let vm = vm_from(&envoy, &bootstrap_with_uncovered_paths());
    let host = FakeHost::with_request(
        &envoy,
        &[
            (":path", "/other"),
            ("x-sidestream-group", "canary"),
            ("x-trusted-group", "canary"),
        ],
    );
    assert_eq!(run(&host, &vm).0, Verdict::Continue);
    assert_eq!(
        host.header("x-sidestream-group"),
        None,
        "forged tag removed"
    );
    // A policy that trusts client tags keeps its header.
    assert_eq!(host.header("x-trusted-group").as_deref(), Some("canary"));
    assert_eq!(host.route_cleared.get(), 1, "route recomputed");
    assert_eq!(envoy.metric("sidestream.release.grey.canary.requests"), 0);
    assert_eq!(envoy.metric("sidestream.release.grey.stable.requests"), 0);

    // Nothing to remove: no re-route.
    let host = FakeHost::with_request(&envoy, &[(":path", "/other")]);
    run(&host, &vm);
    assert_eq!(host.route_cleared.get(), 0);

    // A covered path still overwrites the forged tag with the decision.
    let host = FakeHost::with_request(
        &envoy,
        &[(":path", "/app/x"), ("x-sidestream-group", "canary")],
    );
    run(&host, &vm);
    assert_eq!(host.header("x-sidestream-group").as_deref(), Some("stable"));
}

#[test]
fn a_refusal_stores_the_refill_it_computed() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy);
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    for _ in 0..5 {
        assert_eq!(run(&host, &vm).0, Verdict::Continue);
    }
    // The clock steps back ten minutes: core restarts the refill from now, and
    // the refused request must store that restart.
    host.now.set(host.now.get() - 600_000_000_000);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    // One token's time later the bucket has refilled from the new now.
    host.now.set(host.now.get() + 200_000_000);
    host.set_request(&sse_for("acme"));
    assert_eq!(run(&host, &vm).0, Verdict::Continue);

    // A refusal that changes nothing writes nothing.
    host.set_request(&sse_for("acme"));
    host.fail("shared_set");
    assert_eq!(run(&host, &vm).0, Verdict::Stop);
    assert_eq!(http_status(&host), Some(429));
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 0);
}

#[test]
fn a_refusal_whose_write_is_lost_still_refuses() {
    let envoy = FakeEnvoy::new();
    let vm = standalone_vm(&envoy); // failMode open
    let host = FakeHost::with_request(&envoy, &sse_for("acme"));
    for _ in 0..5 {
        assert_eq!(run(&host, &vm).0, Verdict::Continue);
    }
    // A millisecond's refill to store, but every write loses the race.
    host.now.set(host.now.get() + 1_000_000);
    host.injected_conflicts
        .set(u32::try_from(MAX_ATTEMPTS).expect("small") + 1);
    host.set_request(&sse_for("acme"));
    let (verdict, flow) = run(&host, &vm);
    assert_eq!(verdict, Verdict::Stop);
    assert!(!flow.holds_stream());
    assert_eq!(http_status(&host), Some(429));
    assert_eq!(envoy.metric(metrics::HOST_CALL_FAILURES.name), 1);
    assert_eq!(envoy.metric(metrics::STREAMS_REFUSED.name), 1);
}
