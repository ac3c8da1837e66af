use super::*;
use crate::config::{parse_spec_value, Item, Kind};
use crate::HeaderList;
use serde_json::json;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn policy(name: &str, spec: serde_json::Value) -> StreamLimitPolicy {
    match parse_spec_value(Kind::StreamLimit, name, spec) {
        Ok(Item::StreamLimit(p)) => p,
        other => panic!("not a stream limit policy: {other:?}"),
    }
}

/// The issue's standalone policy.
fn tenant_policy() -> StreamLimitPolicy {
    policy(
        "tenant-streams",
        json!({
            "streamKinds": ["sse", "websocket"],
            "key": { "source": "header", "name": "x-tenant-id" },
            "newStreamsPerSecond": 5, "burst": 5, "maxConcurrent": 20
        }),
    )
}

type Headers<'a> = Vec<(&'a str, &'a str)>;

fn req(pairs: &[(&str, &str)]) -> HeaderList {
    HeaderList::from_pairs(pairs.iter().copied())
}

#[test]
fn detect_stream_table() {
    let cases: Vec<(Headers, Option<StreamKind>)> = vec![
        (
            vec![(":method", "GET"), ("accept", "text/event-stream")],
            Some(StreamKind::Sse),
        ),
        (
            vec![
                (":method", "GET"),
                ("accept", "text/html, Text/Event-Stream;q=0.9"),
            ],
            Some(StreamKind::Sse),
        ),
        (
            vec![(":method", "POST"), ("accept", "text/event-stream")],
            None,
        ),
        (vec![(":method", "GET"), ("accept", "text/html")], None),
        (vec![(":method", "GET")], None),
        (
            vec![
                (":method", "GET"),
                ("connection", "Upgrade"),
                ("upgrade", "WebSocket"),
            ],
            Some(StreamKind::WebSocket),
        ),
        (
            vec![(":method", "GET"), ("upgrade", "h2c, websocket")],
            Some(StreamKind::WebSocket),
        ),
        (vec![(":method", "GET"), ("upgrade", "h2c")], None),
        (
            vec![(":method", "CONNECT"), (":protocol", "websocket")],
            Some(StreamKind::WebSocket),
        ),
        (
            vec![(":method", "CONNECT"), (":protocol", "webtransport")],
            None,
        ),
        (vec![(":method", "GET"), (":protocol", "websocket")], None),
        (
            vec![(":method", "POST"), ("content-type", "application/grpc")],
            Some(StreamKind::Grpc),
        ),
        (
            vec![
                (":method", "POST"),
                ("content-type", "application/grpc+proto"),
            ],
            Some(StreamKind::Grpc),
        ),
        (
            vec![
                (":method", "POST"),
                ("content-type", "application/grpc-web+proto"),
            ],
            Some(StreamKind::Grpc),
        ),
        (
            vec![(":method", "POST"), ("content-type", "application/json")],
            None,
        ),
        (
            vec![(":method", "POST"), ("content-type", "application/gr")],
            None,
        ),
    ];
    for (headers, expected) in cases {
        assert_eq!(
            detect_stream(&req(&headers)),
            expected,
            "headers {headers:?}"
        );
    }
}

#[test]
fn select_matches_kind_route_and_priority() {
    let a = policy("a", json!({ "newStreamsPerSecond": 1, "burst": 1 }));
    let b = policy(
        "b",
        json!({ "priority": 1, "streamKinds": ["grpc"], "match": { "pathPrefixes": ["/rpc"] },
                "newStreamsPerSecond": 1, "burst": 1 }),
    );
    let policies = vec![a, b];
    let r = req(&[(":path", "/rpc/x")]);
    assert_eq!(
        select(&policies, &r, StreamKind::Grpc).map(|p| p.name.as_str()),
        Some("b")
    );
    assert_eq!(
        select(&policies, &r, StreamKind::Sse).map(|p| p.name.as_str()),
        Some("a")
    );
    let r = req(&[(":path", "/other")]);
    assert_eq!(
        select(&policies, &r, StreamKind::Grpc).map(|p| p.name.as_str()),
        Some("a")
    );
    assert_eq!(select(&policies[1..], &r, StreamKind::Grpc), None);
}

#[test]
fn keys() {
    let p = tenant_policy();
    assert_eq!(
        p.key(&req(&[("x-tenant-id", "acme")]), Some("10.0.0.1:5555")),
        "h:acme"
    );
    assert_eq!(p.key(&req(&[]), Some("10.0.0.1:5555")), "a:10.0.0.1");
    assert_eq!(
        p.key(&req(&[("x-tenant-id", "")]), Some("[::1]:80")),
        "a:::1"
    );
    assert_eq!(p.key(&req(&[]), None), "a:unknown");
    let long = "t".repeat(200);
    let k = p.key(&req(&[("x-tenant-id", &long)]), None);
    assert!(k.len() <= MAX_KEY_LEN, "{k}");
    assert!(k.starts_with("h:#"));
    assert_eq!(k, p.key(&req(&[("x-tenant-id", &long)]), Some("1.2.3.4")));
    assert_ne!(k, p.key(&req(&[("x-tenant-id", &"u".repeat(200))]), None));
    assert!(p
        .key(&req(&[("x-tenant-id", "a b")]), None)
        .starts_with("h:#"));

    let by_addr = policy(
        "addr",
        json!({ "key": { "source": "clientAddress" }, "newStreamsPerSecond": 1, "burst": 1 }),
    );
    assert_eq!(
        by_addr.key(&req(&[("x-tenant-id", "acme")]), Some("192.168.1.9:1")),
        "a:192.168.1.9"
    );
    let route = policy(
        "r",
        json!({ "key": { "source": "route" }, "newStreamsPerSecond": 1, "burst": 1 }),
    );
    assert_eq!(route.key(&req(&[]), Some("1.1.1.1:1")), "route");
}

#[test]
fn the_client_address_is_needed_exactly_when_the_key_uses_it() {
    let by_addr = policy(
        "addr",
        json!({ "key": { "source": "clientAddress" }, "newStreamsPerSecond": 1, "burst": 1 }),
    );
    let route = policy(
        "r",
        json!({ "key": { "source": "route" }, "newStreamsPerSecond": 1, "burst": 1 }),
    );
    let cases = [
        (&tenant_policy(), vec![("x-tenant-id", "acme")]),
        (&tenant_policy(), vec![]),
        (&tenant_policy(), vec![("x-tenant-id", "")]),
        (&by_addr, vec![("x-tenant-id", "acme")]),
        (&route, vec![]),
    ];
    for (p, headers) in cases {
        let r = req(&headers);
        // The key differs with the address exactly when it is needed.
        let uses = p.key(&r, Some("10.9.8.7:1")) != p.key(&r, None);
        assert_eq!(p.needs_client_address(&r), uses, "{} {headers:?}", p.name);
    }
}

fn admitted(a: &Admission) -> bool {
    matches!(a, Admission::Admitted { .. })
}

#[test]
fn burst_then_exact_refill() {
    let p = tenant_policy();
    let mut s = StreamLimitState::new(&p, 0);
    for expected_remaining in [4, 3, 2, 1, 0] {
        assert_eq!(
            s.admit(&p, 0),
            Admission::Admitted {
                remaining: expected_remaining
            }
        );
    }
    let Admission::Refused(refusal) = s.admit(&p, 0) else {
        panic!("sixth stream admitted")
    };
    assert_eq!(
        refusal,
        Refusal {
            reason: RefusalReason::Rate,
            retry_after_secs: 1,
            limit: 5,
            reset_secs: 1
        }
    );
    // 199.999999 ms: not quite a token
    assert!(!admitted(&s.admit(&p, 200 * MS - 1)));
    // 200 ms: exactly one more
    assert!(admitted(&s.admit(&p, 200 * MS)));
    assert!(!admitted(&s.admit(&p, 200 * MS)));
    // 400 ms: one more again, and the refusal says when the next one comes
    assert!(admitted(&s.admit(&p, 400 * MS)));
    assert_eq!(s.active(), 7);
    // a long pause refills to the burst, not beyond
    for _ in 0..7 {
        s.finish();
    }
    let mut n = 0;
    while admitted(&s.admit(&p, 100 * SEC)) {
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn slow_rates_and_fractional_refill_accumulate_exactly() {
    // 0.5 streams/s: a token every 2 s; retry-after counts whole seconds up
    let p = policy("slow", json!({ "newStreamsPerSecond": 0.5, "burst": 2 }));
    let mut s = StreamLimitState::new(&p, 10 * SEC);
    assert!(admitted(&s.admit(&p, 10 * SEC)));
    assert!(admitted(&s.admit(&p, 10 * SEC)));
    let Admission::Refused(r) = s.admit(&p, 10 * SEC) else {
        panic!("admitted")
    };
    assert_eq!((r.retry_after_secs, r.reset_secs), (2, 4));
    let Admission::Refused(r) = s.admit(&p, 10 * SEC + 500 * MS) else {
        panic!("admitted")
    };
    assert_eq!(
        (r.retry_after_secs, r.reset_secs),
        (2, 4),
        "1.5 s rounds up"
    );
    assert!(admitted(&s.admit(&p, 12 * SEC)));
    assert_eq!(
        r.headers(&p),
        vec![
            ("retry-after", "2".to_owned()),
            ("ratelimit-limit", "2".to_owned()),
            ("ratelimit-remaining", "0".to_owned()),
            ("ratelimit-reset", "4".to_owned()),
            ("ratelimit-policy", "1;w=2;burst=2".to_owned()),
        ]
    );

    // 3 streams/s refilled in 1 ns steps: carries keep the sum exact
    let p = policy("thirds", json!({ "newStreamsPerSecond": 3, "burst": 1 }));
    let mut s = StreamLimitState::new(&p, 0);
    assert!(admitted(&s.admit(&p, 0)));
    let third = SEC / 3; // 333_333_333 ns: 0.999999999 tokens
    let mut t = 0;
    for _ in 0..3 {
        t += third / 3;
        assert!(!admitted(&s.admit(&p, t)));
    }
    t = third + 1; // 333_333_334 ns: 1.000000002 tokens
    assert!(admitted(&s.admit(&p, t)));
}

#[test]
fn concurrency_cap_until_finish() {
    let p = policy(
        "cap",
        json!({ "newStreamsPerSecond": 1000, "burst": 100, "maxConcurrent": 20 }),
    );
    let mut s = StreamLimitState::new(&p, 0);
    for _ in 0..20 {
        assert!(admitted(&s.admit(&p, 0)));
    }
    assert_eq!(s.active(), 20);
    let Admission::Refused(r) = s.admit(&p, 0) else {
        panic!("21st admitted")
    };
    assert_eq!(r.reason, RefusalReason::Concurrency);
    assert_eq!((r.retry_after_secs, r.limit), (1, 20));
    assert_eq!(s.tokens(), 80, "a concurrency refusal takes no token");
    s.finish();
    assert_eq!(s.active(), 19);
    assert!(admitted(&s.admit(&p, 0)));
    assert!(!admitted(&s.admit(&p, 0)));
    let headers = r.headers(&p);
    assert_eq!(headers[1], ("ratelimit-limit", "20".to_owned()));
    assert_eq!(
        headers[4],
        (
            "ratelimit-policy",
            "1000;w=1;burst=100;concurrent=20".to_owned()
        )
    );
    // finish never goes below zero
    let mut fresh = StreamLimitState::new(&p, 0);
    fresh.finish();
    assert_eq!(fresh.active(), 0);
}

#[test]
fn clock_going_backwards_adds_nothing_and_refills_from_now() {
    let p = tenant_policy();
    let mut s = StreamLimitState::new(&p, 10 * SEC);
    for _ in 0..5 {
        assert!(admitted(&s.admit(&p, 10 * SEC)));
    }
    // The wall clock is stepped back 5 s: no tokens appear, and the refusal
    // tells the truth about the wait measured on the clock as it now reads.
    let Admission::Refused(r) = s.admit(&p, 5 * SEC) else {
        panic!("a step back admitted a stream")
    };
    assert_eq!(
        (r.reason, r.retry_after_secs, r.reset_secs),
        (RefusalReason::Rate, 1, 1)
    );
    assert!(!admitted(&s.admit(&p, 5 * SEC + 199 * MS)));
    // 200 ms after the step, not 200 ms after the old (now future) time
    assert!(admitted(&s.admit(&p, 5 * SEC + 200 * MS)));
    assert!(!admitted(&s.admit(&p, 5 * SEC + 200 * MS)));
    // a small step back while tokens remain: nothing gained, nothing lost
    let mut s = StreamLimitState::new(&p, 10 * SEC);
    for _ in 0..4 {
        assert!(admitted(&s.admit(&p, 10 * SEC)));
    }
    assert_eq!(
        s.admit(&p, 10 * SEC - MS),
        Admission::Admitted { remaining: 0 }
    );
    assert!(!admitted(&s.admit(&p, 10 * SEC - MS + 199 * MS)));
    assert!(admitted(&s.admit(&p, 10 * SEC - MS + 200 * MS)));
}

#[test]
fn a_stored_time_far_in_the_future_does_not_freeze_the_bucket() {
    // A state written with a wrong clock (or a full bucket seen at a
    // future time) must not block the key until that time comes.
    let p = tenant_policy();
    let mut s = StreamLimitState::new(&p, u64::MAX - SEC);
    assert!(admitted(&s.admit(&p, u64::MAX - SEC)));
    let mut s = StreamLimitState::decode(&s.encode()).unwrap();
    let now = 1_000 * SEC;
    for _ in 0..4 {
        assert!(admitted(&s.admit(&p, now)));
    }
    assert!(!admitted(&s.admit(&p, now)));
    assert!(admitted(&s.admit(&p, now + 200 * MS)));
}

#[test]
fn long_idle_and_extreme_values_do_not_overflow() {
    let p = tenant_policy();
    // idle from 0 to the end of time: refills to the burst exactly
    let mut s = StreamLimitState::new(&p, 0);
    for _ in 0..5 {
        assert!(admitted(&s.admit(&p, 0)));
    }
    assert_eq!(s.admit(&p, u64::MAX), Admission::Admitted { remaining: 4 });
    // the fastest and slowest valid rates, the largest burst
    let fast = policy(
        "fast",
        json!({ "newStreamsPerSecond": 1_000_000, "burst": 1_000_000 }),
    );
    let mut s = StreamLimitState::new(&fast, 0);
    s.tokens = 0;
    assert_eq!(
        s.admit(&fast, u64::MAX),
        Admission::Admitted { remaining: 999_999 }
    );
    let slow = policy("slow", json!({ "newStreamsPerSecond": 0.001, "burst": 1 }));
    let mut s = StreamLimitState::new(&slow, 0);
    assert!(admitted(&s.admit(&slow, 0)));
    let Admission::Refused(r) = s.admit(&slow, 0) else {
        panic!("admitted")
    };
    assert_eq!((r.retry_after_secs, r.reset_secs), (1000, 1000));
    assert!(!admitted(&s.admit(&slow, 1000 * SEC - 1)));
    assert!(admitted(&s.admit(&slow, 1000 * SEC)));
    // the policy's fields are public: out-of-range values must not panic
    let mut wild = p.clone();
    wild.rate_milli = u64::MAX;
    wild.burst = u32::MAX;
    let mut s = StreamLimitState::new(&wild, 0);
    s.tokens = 0;
    assert!(admitted(&s.admit(&wild, u64::MAX)));
    wild.burst = 0;
    wild.rate_milli = 0;
    let mut s = StreamLimitState::new(&wild, 0);
    let Admission::Refused(r) = s.admit(&wild, u64::MAX) else {
        panic!("a bucket of size 0 admitted")
    };
    assert!(r.retry_after_secs >= 1);
}

#[test]
fn refill_is_exact_over_many_irregular_steps() {
    // 7 streams/s, burst 1000: after any sequence of refills the tokens
    // equal floor(7 × elapsed) exactly, whatever the step sizes.
    let p = policy("exact", json!({ "newStreamsPerSecond": 7, "burst": 1000 }));
    let mut s = StreamLimitState::new(&p, 0);
    while admitted(&s.admit(&p, 0)) {}
    let mut now = 0u64;
    let mut admitted_total = 0u64;
    let mut step = 1u64;
    while now < 60 * SEC {
        step = (step * 7919 + 13) % (97 * MS) + 1;
        now += step;
        while admitted(&s.admit(&p, now)) {
            admitted_total += 1;
        }
        assert_eq!(
            admitted_total,
            u64::try_from(u128::from(now) * 7 / 1_000_000_000).unwrap(),
            "at {now} ns"
        );
    }
}

#[test]
fn encode_decode() {
    let p = tenant_policy();
    let mut s = StreamLimitState::new(&p, 123_456_789);
    s.admit(&p, 123_456_789);
    s.admit(&p, 123_456_789 + 77 * MS + 3);
    let bytes = s.encode();
    assert_eq!(bytes.len(), 31);
    assert_eq!(&bytes[..3], b"SL\x01");
    assert_eq!(StreamLimitState::decode(&bytes), Some(s));
    // garbage is rejected
    assert_eq!(StreamLimitState::decode(&[]), None);
    assert_eq!(StreamLimitState::decode(&bytes[..30]), None);
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(StreamLimitState::decode(&longer), None);
    let mut wrong_version = bytes.clone();
    wrong_version[2] = 2;
    assert_eq!(StreamLimitState::decode(&wrong_version), None);
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert_eq!(StreamLimitState::decode(&wrong_magic), None);
    let mut bad_carry = bytes.clone();
    bad_carry[11..19].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(StreamLimitState::decode(&bad_carry), None);
    assert_eq!(
        StreamLimitState::decode(b"not a bucket state at all!!!!!"),
        None
    );
    // state survives a round trip mid-refill and keeps counting exactly
    let mut a = StreamLimitState::new(&p, 0);
    let mut b = a;
    for i in 1..=50u64 {
        let now = i * 37 * MS + 11;
        let ra = a.admit(&p, now);
        let mut decoded = StreamLimitState::decode(&b.encode()).unwrap();
        let rb = decoded.admit(&p, now);
        b = decoded;
        assert_eq!(ra, rb);
    }
}

#[test]
fn policy_header_for_fractional_rates() {
    let cases = [
        (1.0, "1;w=1"),
        (2.5, "5;w=2"),
        (0.25, "1;w=4"),
        (0.001, "1;w=1000"),
        (1.2, "6;w=5"),
    ];
    for (rate, expected) in cases {
        let p = policy("r", json!({ "newStreamsPerSecond": rate, "burst": 3 }));
        assert_eq!(
            p.ratelimit_policy(),
            format!("{expected};burst=3"),
            "rate {rate}"
        );
    }
}
