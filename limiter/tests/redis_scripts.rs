//! The limiter's scripts on a real Redis, in-process, with the test stepping
//! time (`Clock::Micros`): the bucket decides exactly as the local limiter in
//! `sidestream_core::limit` does, and leases, Release and Sync keep the
//! counts. The daemon's gRPC answers to bad input are checked here too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sidestream_core::config::{parse_spec_value, Item, Kind, StreamLimitPolicy};
use sidestream_core::limit::{Admission, RefusalReason, StreamLimitState};
use sidestream_limiter::keys::KeyPrefix;
use sidestream_limiter::metrics::Metrics;
use sidestream_limiter::store::{Clock, Decision, RedisTarget, Store, StoreSettings, Verdict};
use sidestream_limiter::validate::{Acquire, Limits, Release, Sync, Target};
use sidestream_proto::limits::v1 as pb;
use sidestream_proto::limits::v1::stream_limiter_client::StreamLimiterClient;
use sidestream_tests::redis::Redis;

/// A realistic start (2026, in µs): the scripts' numbers must stay exact there.
const T0: u64 = 1_780_000_000_000_000;

fn store(redis: &Redis, lease: Duration) -> Store {
    Store::new(
        &StoreSettings {
            target: RedisTarget::Standalone(redis.url()),
            prefix: KeyPrefix::default(),
            lease,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
        },
        Arc::new(Metrics::new()),
    )
    .expect("store")
}

fn policy(spec: serde_json::Value) -> StreamLimitPolicy {
    match parse_spec_value(Kind::StreamLimit, "p", spec) {
        Ok(Item::StreamLimit(policy)) => policy,
        other => panic!("not a stream-limit policy: {other:?}"),
    }
}

fn limits(policy: &StreamLimitPolicy) -> Limits {
    Limits {
        rate_milli: policy.rate_milli,
        burst: policy.burst,
        max_concurrent: policy.max_concurrent.unwrap_or(0),
    }
}

fn target(policy: &str, key: &str) -> Target {
    Target {
        policy: policy.into(),
        key: key.into(),
    }
}

fn acquire(instance: &str, target: &Target, limits: Limits) -> Acquire {
    Acquire {
        instance: instance.into(),
        target: target.clone(),
        limits,
        policy_version: String::new(),
    }
}

fn release(instance: &str, target: &Target) -> Release {
    Release {
        instance: instance.into(),
        target: target.clone(),
    }
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000).max(1)).expect("secs")
}

/// The core's answer and the script's agree, to the token and the second.
fn assert_same(step: usize, core: &Admission, redis: &Decision, policy: &StreamLimitPolicy) {
    match core {
        Admission::Admitted { remaining } => {
            assert_eq!(redis.verdict, Verdict::Admitted, "step {step}: {redis:?}");
            assert_eq!(redis.remaining, *remaining, "step {step}: {redis:?}");
        }
        Admission::Refused(refusal) => {
            let verdict = match refusal.reason {
                RefusalReason::Rate => Verdict::RefusedRate,
                RefusalReason::Concurrency => Verdict::RefusedConcurrency,
            };
            assert_eq!(redis.verdict, verdict, "step {step}: {core:?} vs {redis:?}");
            assert_eq!(
                secs(redis.retry_after_ms),
                refusal.retry_after_secs,
                "step {step}: {core:?} vs {redis:?}"
            );
            assert_eq!(
                secs(redis.reset_ms),
                refusal.reset_secs,
                "step {step}: {core:?} vs {redis:?}"
            );
            if verdict == Verdict::RefusedRate {
                assert_eq!(refusal.limit, policy.burst);
                assert_eq!(redis.remaining, 0);
            }
        }
    }
}

/// The bucket in Redis holds exactly the core's state: tokens in
/// micro-tokens, the carry (Redis: nano-tokens, core: femto-tokens) and the
/// refill time (Redis: µs, core: ns). The core's state is read from its
/// documented encoding (`SL`, version 1, then little-endian tokens, carry,
/// last refill, active).
async fn assert_same_state(
    step: usize,
    core: &StreamLimitState,
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) {
    let encoded = core.encode();
    assert_eq!(
        &encoded[..3],
        b"SL\x01",
        "the core's state encoding changed"
    );
    let field = |at: usize| u64::from_le_bytes(encoded[at..at + 8].try_into().expect("8 bytes"));
    let (tokens, carry_femto, last_ns) = (field(3), field(11), field(19));
    let got: Vec<u64> = redis::cmd("HMGET")
        .arg(key)
        .arg("t")
        .arg("c")
        .arg("l")
        .query_async(redis)
        .await
        .expect("bucket");
    assert_eq!(
        got,
        [tokens, carry_femto / 1_000_000, last_ns / 1000],
        "step {step}: Redis bucket (t, c, l) vs the core's"
    );
    assert_eq!(
        carry_femto % 1_000_000,
        0,
        "step {step}: the core's carry below a nano-token"
    );
}

/// A small deterministic generator (the sequences must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Thousands of steps per policy: time moves by random amounts (now and then
/// backwards, as a stepped clock does), streams open and end; every answer
/// of the script equals the core's `StreamLimitState::admit` at that time.
#[tokio::test]
async fn the_bucket_decides_as_the_local_limiter_does() {
    let dir = sidestream_tests::run_dir("limiter-bucket-vs-core").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    // Leases longer than the simulated months, so that the core (which has
    // none) and Redis count the same streams.
    let store = store(&redis, Duration::from_secs(365 * 86_400));
    let mut connection = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let policies = [
        json_policy(5.0, 5, Some(3)),
        json_policy(1.2, 3, None),
        json_policy(0.25, 2, Some(1)),
        json_policy(0.001, 3, None),
        json_policy(1_000_000.0, 1, None),
        json_policy(1000.0, 1_000_000, Some(2)),
        json_policy(333.333, 7, Some(5)),
    ];
    for (p, policy) in policies.iter().enumerate() {
        let mut random = Lcg(0x5eed + p as u64);
        let target = target("p", &format!("vs-core-{p}"));
        let bucket_key = KeyPrefix::default().keys(&target).bucket;
        let mut now_us = T0;
        let mut core = StreamLimitState::new(policy, now_us * 1000);
        // Steps scaled to the refill time of one token.
        let token_us = (1_000_000_000 / policy.rate_milli).max(1);
        let mut admitted = 0_u32;
        let mut refused = 0_u32;
        for step in 0..1500 {
            match random.below(20) {
                0 => now_us -= random.below(token_us.min(5_000_000)),
                1 => {
                    now_us += random.below(
                        token_us
                            .saturating_mul(u64::from(policy.burst))
                            .min(100_000_000_000),
                    )
                }
                2..=9 => now_us += random.below(token_us * 2),
                _ => {}
            }
            if core.active() > 0 && random.below(3) == 0 {
                core.finish();
                store
                    .release(&release("vm", &target))
                    .await
                    .expect("release");
                continue;
            }
            let want = core.admit(policy, now_us * 1000);
            let got = store
                .acquire(
                    &acquire("vm", &target, limits(policy)),
                    Clock::Micros(now_us),
                )
                .await
                .expect("acquire");
            assert_same(step, &want, &got, policy);
            assert_same_state(step, &core, &mut connection, &bucket_key).await;
            if let Admission::Admitted { .. } = want {
                admitted += 1;
                assert_eq!(got.active, core.active(), "step {step}");
            } else {
                refused += 1;
            }
        }
        assert!(
            admitted > 10 && refused > 10,
            "policy {p}: admitted {admitted}, refused {refused}"
        );
    }
}

fn json_policy(rate: f64, burst: u32, max_concurrent: Option<u32>) -> StreamLimitPolicy {
    let mut spec = serde_json::json!({
        "streamKinds": ["sse"],
        "newStreamsPerSecond": rate,
        "burst": burst,
    });
    if let Some(max) = max_concurrent {
        spec["maxConcurrent"] = max.into();
    }
    policy(spec)
}

/// Leases on the test's clock: an instance that keeps syncing keeps its
/// slots; one that stops loses them once its lease has run out, not before.
#[tokio::test]
async fn leases_free_the_slots_of_an_instance_that_stops_syncing() {
    let dir = sidestream_tests::run_dir("limiter-leases").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let lease_us = 2_000_000;
    let store = store(&redis, Duration::from_micros(lease_us));
    let target = target("p", "lease");
    let limits = Limits {
        rate_milli: 1_000_000,
        burst: 1000,
        max_concurrent: 2,
    };
    let mut now = T0;
    for _ in 0..2 {
        let d = store
            .acquire(&acquire("a", &target, limits), Clock::Micros(now))
            .await
            .expect("a");
        assert_eq!(d.verdict, Verdict::Admitted);
    }
    let sync = Sync {
        instance: "a".into(),
        holdings: vec![(target.clone(), 2)],
    };
    // Ten leases long, `a` syncs every third of a lease: `b` never gets in.
    for _ in 0..30 {
        now += lease_us / 3;
        store.sync(&sync, Clock::Micros(now)).await.expect("sync");
        let d = store
            .acquire(&acquire("b", &target, limits), Clock::Micros(now))
            .await
            .expect("b");
        assert_eq!(d.verdict, Verdict::RefusedConcurrency, "{d:?}");
        assert_eq!(d.active, 2);
    }
    // `a` stops. Just before its lease ends the slots are still its own ...
    let last_sync = now;
    let d = store
        .acquire(
            &acquire("b", &target, limits),
            Clock::Micros(last_sync + lease_us - 1),
        )
        .await
        .expect("b");
    assert_eq!(d.verdict, Verdict::RefusedConcurrency, "{d:?}");
    // ... at its end they are free.
    let d = store
        .acquire(
            &acquire("b", &target, limits),
            Clock::Micros(last_sync + lease_us),
        )
        .await
        .expect("b");
    assert_eq!(d.verdict, Verdict::Admitted, "{d:?}");
    assert_eq!(d.active, 1, "only b's stream counts: {d:?}");
    let holders = redis
        .cli(&["HGETALL", &KeyPrefix::default().keys(&target).holders])
        .expect("holders");
    assert_eq!(holders.split_whitespace().collect::<Vec<_>>(), ["b", "1"]);
}

/// Release gives one back and never goes below zero; Sync sets the true
/// count (repairing a lost Release) and 0 drops the instance.
#[tokio::test]
async fn release_and_sync_keep_the_counts() {
    let dir = sidestream_tests::run_dir("limiter-release-sync").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let store = store(&redis, Duration::from_secs(15));
    let target = target("p", "counts");
    let limits = Limits {
        rate_milli: 1_000_000,
        burst: 1000,
        max_concurrent: 3,
    };
    for _ in 0..3 {
        let d = store
            .acquire(&acquire("a", &target, limits), Clock::Redis)
            .await
            .expect("a");
        assert_eq!(d.verdict, Verdict::Admitted);
    }
    let d = store
        .acquire(&acquire("b", &target, limits), Clock::Redis)
        .await
        .expect("b");
    assert_eq!(d.verdict, Verdict::RefusedConcurrency);
    assert_eq!((d.active, d.retry_after_ms, d.reset_ms), (3, 1000, 1000));
    // One Release frees one slot.
    assert_eq!(
        store
            .release(&release("a", &target))
            .await
            .expect("release"),
        2
    );
    let d = store
        .acquire(&acquire("b", &target, limits), Clock::Redis)
        .await
        .expect("b");
    assert_eq!((d.verdict, d.active), (Verdict::Admitted, 3));
    // `a`'s two other Releases are lost; its Sync says it holds none.
    store
        .sync(
            &Sync {
                instance: "a".into(),
                holdings: vec![(target.clone(), 0)],
            },
            Clock::Redis,
        )
        .await
        .expect("sync");
    for want in [2, 3] {
        let d = store
            .acquire(&acquire("b", &target, limits), Clock::Redis)
            .await
            .expect("b");
        assert_eq!((d.verdict, d.active), (Verdict::Admitted, want));
    }
    // Releasing more than is held stops at zero and removes the entry.
    for want in [2, 1, 0, 0, 0] {
        assert_eq!(
            store
                .release(&release("b", &target))
                .await
                .expect("release"),
            want
        );
    }
    assert_eq!(
        store
            .release(&release("never", &target))
            .await
            .expect("release"),
        0
    );
    let keys = KeyPrefix::default().keys(&target);
    assert_eq!(
        redis
            .cli(&["EXISTS", &keys.holders, &keys.leases])
            .expect("exists")
            .trim(),
        "0"
    );
    // Sync sets counts above what Acquire gave (streams the limiter never
    // saw, e.g. admitted by the fallback while Redis was down).
    store
        .sync(
            &Sync {
                instance: "c".into(),
                holdings: vec![(target.clone(), 5)],
            },
            Clock::Redis,
        )
        .await
        .expect("sync");
    let d = store
        .acquire(&acquire("b", &target, limits), Clock::Redis)
        .await
        .expect("b");
    assert_eq!((d.verdict, d.active), (Verdict::RefusedConcurrency, 5));
    // Every key the limiter writes expires.
    let scan = redis.cli(&["--scan"]).expect("scan");
    let keys: Vec<&str> = scan.lines().collect();
    assert!(!keys.is_empty());
    for key in keys {
        let ttl: i64 = redis
            .cli(&["PTTL", key])
            .expect("pttl")
            .trim()
            .parse()
            .expect("ttl");
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

fn good_acquire() -> pb::AcquireRequest {
    pb::AcquireRequest {
        instance: "vm-1".into(),
        policy: "tenant-streams".into(),
        key: "h:acme".into(),
        limits: Some(pb::Limits {
            rate_milli: 1000,
            burst: 2,
            max_concurrent: 2,
        }),
        policy_version: "7-abc".into(),
    }
}

/// Everything in Redis, key by key, with its content (not its TTL).
fn dump(redis: &Redis) -> Vec<(String, String)> {
    let scan = redis.cli(&["--scan"]).expect("scan");
    let mut keys: Vec<&str> = scan.lines().collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|key| {
            let kind = redis.cli(&["TYPE", key]).expect("type");
            let content = match kind.trim() {
                "hash" => redis.cli(&["HGETALL", key]),
                "zset" => redis.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                other => Ok(other.to_owned()),
            }
            .expect("content");
            (key.to_owned(), content)
        })
        .collect()
}

/// Bad requests over gRPC get INVALID_ARGUMENT naming the field, and Redis
/// is exactly as before.
#[tokio::test]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let dir = sidestream_tests::run_dir("limiter-bad-input").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let args = <sidestream_limiter::daemon::DaemonArgs as clap::Parser>::try_parse_from([
        "sidestream-limiter",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--redis",
        &redis.url(),
    ])
    .expect("flags");
    let daemon = sidestream_limiter::daemon::start(args)
        .await
        .expect("start");
    let mut client = StreamLimiterClient::connect(format!("http://{}", daemon.grpc_addr))
        .await
        .expect("connect");
    let admitted = client
        .acquire(good_acquire())
        .await
        .expect("acquire")
        .into_inner();
    assert_eq!(admitted.verdict(), pb::Verdict::Admitted);
    let before = dump(&redis);
    assert_eq!(before.len(), 3, "{before:?}");

    let mut cases: Vec<(pb::AcquireRequest, &str)> = Vec::new();
    let mut r = good_acquire();
    r.limits = None;
    cases.push((r, "limits: missing"));
    let mut r = good_acquire();
    r.limits = Some(pb::Limits::default());
    cases.push((r, "limits.rate_milli: 0 is outside 1..=1000000000"));
    let mut r = good_acquire();
    r.policy = "tenant streams!".into();
    cases.push((r, "policy: 'tenant streams!' has ' ' at byte 6"));
    let mut r = good_acquire();
    r.policy.clear();
    cases.push((r, "policy: must not be empty"));
    let mut r = good_acquire();
    r.key = "k".repeat(257);
    cases.push((r, "key: 257 bytes, more than 256"));
    let mut r = good_acquire();
    r.instance.clear();
    cases.push((r, "instance: must not be empty"));
    for (request, message) in cases {
        let status = client.acquire(request).await.expect_err(message);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(message),
            "{message}: {status:?}"
        );
    }
    let status = client
        .release(pb::ReleaseRequest {
            instance: "vm-1".into(),
            policy: "tenant-streams".into(),
            key: "\u{0}".into(),
        })
        .await
        .expect_err("control character");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "key: control character U+0000 at byte 0");
    // One bad holding: none of the good ones is applied either.
    let status = client
        .sync(pb::SyncRequest {
            instance: "vm-1".into(),
            holdings: vec![
                pb::Holding {
                    policy: "tenant-streams".into(),
                    key: "h:acme".into(),
                    open: 0,
                },
                pb::Holding {
                    policy: "tenant-streams".into(),
                    key: "h:other".into(),
                    open: 4,
                },
                pb::Holding {
                    policy: "tenant-streams".into(),
                    key: "x".repeat(300),
                    open: 1,
                },
            ],
        })
        .await
        .expect_err("long key");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "holdings[2].key: 300 bytes, more than 256"
    );
    assert_eq!(dump(&redis), before);

    // The refusals are counted as invalid, by method.
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.admin_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"sidestream_limiter_requests_total{method="acquire",outcome="invalid"} 6"#,
        r#"sidestream_limiter_requests_total{method="acquire",outcome="admitted"} 1"#,
        r#"sidestream_limiter_requests_total{method="release",outcome="invalid"} 1"#,
        r#"sidestream_limiter_requests_total{method="sync",outcome="invalid"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
}
