//! Fuzz-like checks with a seeded RNG: every parser and decision that sees
//! input from the network, etcd or a plugin configuration returns (an error
//! or a value) and never panics, and whatever validates survives the
//! canonical round trip unchanged.
//!
//! `SIDESTREAM_FUZZ_ROUNDS=100000 cargo test -p sidestream-core --test no_panics`
//! runs longer, with another seed (the default is quick enough for every
//! `cargo test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sidestream_core::config::{self, FilterBootstrap, Kind, Snapshot};
use sidestream_core::{limit, release, trace, HeaderList, RequestView};

/// A snapshot using every kind and most fields: the seed for mutations.
fn rounds(default: u64) -> u64 {
    std::env::var("SIDESTREAM_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed_snapshot() -> Value {
    json!({
        "trace": { "enabled": true, "sampleRatio": 0.5, "requestIdHeader": "x-request-id",
                   "b3": { "accept": true, "emit": true }, "responseHeader": "x-trace-id" },
        "releases": {
            "push": {
                "match": { "hosts": ["*.example.com", "api.test"], "pathPrefixes": ["/push"] },
                "priority": 3,
                "tagHeader": "x-sidestream-group",
                "groups": ["stable", "canary"],
                "defaultGroup": "stable",
                "trustClientTag": false,
                "rules": [
                    { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
                    { "type": "header", "name": "x-env-tag", "in": ["canary", "beta"], "group": "canary" },
                    { "type": "cookie", "name": "sidestream-grey", "equals": "1", "group": "canary" },
                    { "type": "tenant", "header": "x-tenant-id", "tenants": ["acme"], "group": "canary" },
                    { "type": "percent", "percent": 12.5, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" },
                    { "type": "percent", "percent": 1, "by": { "source": "traceId" }, "group": "canary" }
                ],
                "sticky": { "cookie": "sidestream-group", "maxAgeSeconds": 86400 }
            }
        },
        "streamLimits": {
            "tenants": {
                "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
                "streamKinds": ["sse", "websocket"],
                "key": { "source": "header", "name": "x-tenant-id" },
                "newStreamsPerSecond": 2.5, "burst": 5, "maxConcurrent": 20, "failMode": "closed"
            }
        },
        "topics": {
            "ticker": { "historySize": 10, "historyMaxAgeSeconds": 60, "maxMessageBytes": 1024,
                        "publishKeys": ["0123456789abcdef"], "subscribeAuth": "none" }
        }
    })
}

fn random_string(rng: &mut StdRng, max: usize) -> String {
    const ALPHABET: &[char] = &[
        'a', 'z', 'A', '0', '9', '-', '_', '.', '*', '/', '@', '=', ',', ';', ' ', '\t', '"', ':',
        '[', ']', '#', 'é', '\u{0}', '\u{7f}', '\n', '💥',
    ];
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect()
}

/// A JSON value of any type, with numbers at the edges of every range.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    const NUMBERS: &[f64] = &[
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        0.001,
        0.0001,
        1e-9,
        99.99,
        100.0,
        100.01,
        12.345,
        1e6,
        1_000_000.001,
        1e308,
        -1e308,
        4_294_967_295.0,
        4_294_967_296.0,
        9.3e18,
        1.8446744073709552e19,
    ];
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(NUMBERS[rng.random_range(0..NUMBERS.len())]),
        3 => json!(rng.random::<i64>()),
        4 => json!(rng.random::<u64>()),
        5 => Value::String(random_string(rng, 12)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            const KEYS: &[&str] = &[
                "type",
                "name",
                "group",
                "percent",
                "by",
                "source",
                "equals",
                "in",
                "hosts",
                "pathPrefixes",
                "burst",
                "x",
            ];
            Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            KEYS[rng.random_range(0..KEYS.len())].to_owned(),
                            random_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces one random node of `value` (at any depth) with a random value,
/// or removes an object member.
fn mutate(rng: &mut StdRng, value: &mut Value) {
    let descend = rng.random_range(0..4) != 0;
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.random_range(0..keys.len())];
            if rng.random_range(0..8) == 0 {
                map.remove(key);
            } else if let Some(child) = map.get_mut(key) {
                mutate(rng, child);
            }
        }
        Value::Array(list) if descend && !list.is_empty() => {
            let i = rng.random_range(0..list.len());
            mutate(rng, &mut list[i]);
        }
        _ => *value = random_value(rng, 2),
    }
}

/// Whatever validates must come back unchanged from its canonical JSON.
fn check_snapshot(bytes: &[u8]) {
    if let Ok(snapshot) = Snapshot::from_json(bytes) {
        let canonical = snapshot.to_json();
        let again = Snapshot::from_json(&canonical)
            .unwrap_or_else(|e| panic!("canonical JSON does not validate: {e}"));
        assert_eq!(
            again,
            snapshot,
            "round trip of {}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(again.to_json(), canonical);
    }
}

#[test]
fn config_parsers_never_panic() {
    let seed = seed_snapshot();
    let seed_text = seed.to_string().into_bytes();
    check_snapshot(&seed_text);
    assert!(Snapshot::from_json(&seed_text).is_ok(), "the seed is valid");
    let seed_rng = rounds(0);
    let mut rng = StdRng::seed_from_u64(0x5eed ^ seed_rng);
    for round in 0..rounds(3_000) {
        // random bytes
        let bytes: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let _ = Snapshot::from_json(&bytes);
        let _ = FilterBootstrap::from_json(&bytes);
        for kind in Kind::ALL {
            let _ = config::parse_spec(kind, "n", &bytes);
        }
        // byte-level damage to valid JSON: truncation and flipped bytes
        let mut damaged = seed_text.clone();
        damaged.truncate(rng.random_range(0..=damaged.len()));
        for _ in 0..rng.random_range(0..4) {
            if !damaged.is_empty() {
                let i = rng.random_range(0..damaged.len());
                damaged[i] = b"{}[]\",:0-9.eE ntf"[rng.random_range(0..17)];
            }
        }
        let _ = Snapshot::from_json(&damaged);
        // structural damage: valid JSON with wrong types, edge numbers,
        // missing and unknown fields at any depth
        let mut value = seed.clone();
        for _ in 0..1 + round % 3 {
            mutate(&mut rng, &mut value);
        }
        let text = value.to_string().into_bytes();
        check_snapshot(&text);
        let bootstrap = json!({ "nodeId": "n", "defaults": value.clone() }).to_string();
        let _ = FilterBootstrap::from_json(bootstrap.as_bytes());
        for (kind, spec) in [
            (Kind::Trace, &value["trace"]),
            (Kind::Release, &value["releases"]["push"]),
            (Kind::StreamLimit, &value["streamLimits"]["tenants"]),
            (Kind::Topic, &value["topics"]["ticker"]),
        ] {
            if let Ok(item) = config::parse_spec_value(kind, "n", spec.clone()) {
                let again = config::parse_spec_value(kind, "n", item.to_spec())
                    .unwrap_or_else(|e| panic!("canonical spec does not validate: {e}"));
                assert_eq!(again, item);
            }
            // a failure names the subject and every problem's message
            if let Err(e) = config::parse_spec_value(kind, "n", spec.clone()) {
                assert!(!e.problems.is_empty());
                assert!(e.to_string().starts_with(&e.subject));
            }
        }
        let _ = config::documents_from_value(random_value(&mut rng, 3));
    }
}

#[test]
fn request_decisions_never_panic() {
    let mut rng = StdRng::seed_from_u64(7 ^ rounds(0));
    let snapshot = Snapshot::from_json(seed_snapshot().to_string().as_bytes()).unwrap();
    const NAMES: &[&str] = &[
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-request-id",
        "x-sidestream-group",
        "x-env-tag",
        "cookie",
        "x-tenant-id",
        "x-user-id",
        ":authority",
        "host",
        ":path",
        ":method",
        ":protocol",
        "upgrade",
        "accept",
        "content-type",
    ];
    const SAMPLES: &[&str] = &[
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "a3ce929d0e0e4736-00f067aa0ba902b7-d",
        "a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "rojo=1,congo=2",
        "sidestream-group=canary; sidestream-grey=1",
        "canary",
        "GET",
        "CONNECT",
        "websocket",
        "text/event-stream",
        "application/grpc",
        "api.example.com:443",
        "[::1]:80",
        "/push/x?y",
        "1",
        "d",
        "",
    ];
    let mut random = {
        let mut r = StdRng::seed_from_u64(9);
        move |buf: &mut [u8]| r.fill(buf)
    };
    let mut state = limit::StreamLimitState::new(&snapshot.stream_limits[0], 0);
    let mut now = 0u64;
    for _ in 0..rounds(20_000) {
        let mut headers = HeaderList::default();
        for _ in 0..rng.random_range(0..8) {
            let name = NAMES[rng.random_range(0..NAMES.len())];
            let value = if rng.random() {
                SAMPLES[rng.random_range(0..SAMPLES.len())].to_owned()
            } else {
                random_string(&mut rng, 70)
            };
            headers = headers.with(name, &value);
        }
        let _ = trace::parse_traceparent(headers.header("traceparent").unwrap_or(""));
        let _ = trace::parse_tracestate(headers.header("tracestate").unwrap_or(""));
        let _ = trace::b3::from_request(&headers);
        let decision = trace::decide(&snapshot.trace, &headers, &mut random);
        for (_, value) in &decision.set_headers {
            assert!(
                value.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{value:?}"
            );
        }
        if let Some(policy) = release::select(&snapshot.releases, &headers) {
            let d = policy.decide(&headers, &decision.trace_id_hex);
            assert!(policy.groups.iter().any(|g| g == d.group));
        }
        if let Some(kind) = limit::detect_stream(&headers) {
            if let Some(policy) = limit::select(&snapshot.stream_limits, &headers, kind) {
                let address = random_string(&mut rng, 20);
                let key = policy.key(&headers, Some(&address));
                assert!(key.len() <= limit::MAX_KEY_LEN, "{key}");
                // the clock jumps either way, by up to a day
                let jump = rng.random_range(0..86_400_000_000_000u64);
                now = if rng.random_range(0..4) == 0 {
                    now.saturating_sub(jump)
                } else {
                    now.saturating_add(jump)
                };
                if let limit::Admission::Refused(r) = state.admit(policy, now) {
                    assert!(r.retry_after_secs >= 1 && r.reset_secs >= r.retry_after_secs);
                    let _ = r.headers(policy);
                } else if rng.random() {
                    state.finish();
                }
                state = limit::StreamLimitState::decode(&state.encode()).unwrap();
            }
        }
        let bytes: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
        let _ = limit::StreamLimitState::decode(&bytes);
    }
}
