//! sidestream-limiter as a real process (the built binary) on a real Redis,
//! two replicas, a stopped Redis and a 3-primary Redis Cluster. The bucket's
//! arithmetic against the core limiter, leases on a stepped clock and bad
//! input are in limiter/tests/redis_scripts.rs.

use std::time::{Duration, Instant};

use sidestream_proto::limits::v1 as pb;
use sidestream_proto::limits::v1::stream_limiter_client::StreamLimiterClient;
use sidestream_tests::limiter::Limiter;
use sidestream_tests::redis::{Redis, RedisCluster};
use sidestream_tests::{assert_eventually, run_dir};
use tonic::transport::Channel;

type Client = StreamLimiterClient<Channel>;

async fn client(limiter: &Limiter) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(limiter.grpc_url())
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    StreamLimiterClient::new(channel)
}

fn acquire_request(instance: &str, key: &str, limits: pb::Limits) -> pb::AcquireRequest {
    pb::AcquireRequest {
        instance: instance.into(),
        policy: "tenant-streams".into(),
        key: key.into(),
        limits: Some(limits),
        policy_version: "1-test".into(),
    }
}

async fn acquire(
    client: &mut Client,
    instance: &str,
    key: &str,
    limits: pb::Limits,
) -> pb::AcquireResponse {
    client
        .acquire(acquire_request(instance, key, limits))
        .await
        .expect("acquire")
        .into_inner()
}

async fn release(client: &mut Client, instance: &str, key: &str) -> u32 {
    client
        .release(pb::ReleaseRequest {
            instance: instance.into(),
            policy: "tenant-streams".into(),
            key: key.into(),
        })
        .await
        .expect("release")
        .into_inner()
        .held
}

async fn sync(client: &mut Client, instance: &str, holdings: &[(&str, u32)]) -> pb::SyncResponse {
    client
        .sync(pb::SyncRequest {
            instance: instance.into(),
            holdings: holdings
                .iter()
                .map(|(key, open)| pb::Holding {
                    policy: "tenant-streams".into(),
                    key: (*key).into(),
                    open: *open,
                })
                .collect(),
        })
        .await
        .expect("sync")
        .into_inner()
}

/// Burst `burst` with so slow a refill that none comes during the test.
fn burst_only(burst: u32, max_concurrent: u32) -> pb::Limits {
    pb::Limits {
        rate_milli: 1,
        burst,
        max_concurrent,
    }
}

/// The burst is admitted exactly, then refusals with retry-after; the
/// refill admits again, never more than the rate allows.
async fn burst_then_refill(client: &mut Client, key: &str) {
    // 2 streams a second, burst 5.
    let limits = pb::Limits {
        rate_milli: 2_000,
        burst: 5,
        max_concurrent: 0,
    };
    let started = Instant::now();
    let mut remaining = Vec::new();
    let mut admitted = 0_u32;
    let mut refusal = None;
    for _ in 0..8 {
        let answer = acquire(client, "vm-a", key, limits).await;
        match answer.verdict() {
            pb::Verdict::Admitted => {
                admitted += 1;
                remaining.push(answer.remaining);
                assert_eq!(answer.limit, 5);
            }
            pb::Verdict::RefusedRate => {
                refusal.get_or_insert(answer);
            }
            other => panic!("unexpected {other:?}: {answer:?}"),
        }
    }
    let elapsed_tokens = u32::try_from(started.elapsed().as_millis() / 500).expect("small");
    assert!(
        (5..=5 + elapsed_tokens).contains(&admitted),
        "admitted {admitted} of a burst of 5 ({elapsed_tokens} refilled)"
    );
    if elapsed_tokens == 0 {
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
    }
    let refusal = refusal.expect("a refusal after the burst");
    assert_eq!((refusal.limit, refusal.remaining), (5, 0));
    assert!(
        (1..=500).contains(&refusal.retry_after_ms),
        "one token comes within 500 ms: {refusal:?}"
    );
    assert!(
        (refusal.retry_after_ms..=2_500).contains(&refusal.reset_ms),
        "full within 2.5 s: {refusal:?}"
    );
    assert_eq!(refusal.lease_ms, 15_000);

    // Refill: admitted again once a token has come, and over a while no more
    // than the rate allows.
    let refill_started = Instant::now();
    let mut more = 0_u32;
    let deadline = refill_started + Duration::from_secs(10);
    while more < 3 {
        assert!(
            Instant::now() < deadline,
            "refill: only {more} admitted in 10 s"
        );
        if acquire(client, "vm-a", key, limits).await.verdict() == pb::Verdict::Admitted {
            more += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A partial token at the start, one every 500 ms since, and one for the
    // moments between the last refusal and `refill_started`.
    let allowed = 2 + u32::try_from(refill_started.elapsed().as_millis() / 500).expect("small");
    assert!(
        more <= allowed,
        "{more} admitted by refill, at most {allowed} allowed"
    );
}

/// A concurrency cap held across two instances; Release frees a slot, Sync
/// repairs a lost Release.
async fn cap_across_instances(client: &mut Client, key: &str) {
    let limits = burst_only(100, 3);
    for (instance, want_active) in [("vm-a", 1), ("vm-a", 2), ("vm-b", 3)] {
        let answer = acquire(client, instance, key, limits).await;
        assert_eq!(answer.verdict(), pb::Verdict::Admitted, "{answer:?}");
        assert_eq!(answer.active, want_active);
    }
    for instance in ["vm-a", "vm-b", "vm-c"] {
        let answer = acquire(client, instance, key, limits).await;
        assert_eq!(
            answer.verdict(),
            pb::Verdict::RefusedConcurrency,
            "{answer:?}"
        );
        assert_eq!((answer.limit, answer.active), (3, 3), "{answer:?}");
        assert_eq!((answer.retry_after_ms, answer.reset_ms), (1000, 1000));
    }
    // A concurrency refusal takes no token: 97 are left.
    assert_eq!(release(client, "vm-b", key).await, 0);
    let answer = acquire(client, "vm-c", key, limits).await;
    assert_eq!(answer.verdict(), pb::Verdict::Admitted, "{answer:?}");
    assert_eq!((answer.remaining, answer.active), (96, 3));
    // vm-a's two Releases are lost; its Sync says it holds none.
    let synced = sync(client, "vm-a", &[(key, 0)]).await;
    assert_eq!(synced.lease_ms, 15_000);
    for want_active in [2, 3] {
        let answer = acquire(client, "vm-b", key, limits).await;
        assert_eq!(
            (answer.verdict(), answer.active),
            (pb::Verdict::Admitted, want_active)
        );
    }
    let answer = acquire(client, "vm-b", key, limits).await;
    assert_eq!(
        answer.verdict(),
        pb::Verdict::RefusedConcurrency,
        "{answer:?}"
    );
}

#[tokio::test]
async fn burst_refill_and_cap_on_one_redis() {
    let dir = run_dir("limiter-one-redis").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let limiter = Limiter::start("limiter", &dir, &redis.url(), &[])
        .await
        .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let mut client = client(&limiter).await;
    burst_then_refill(&mut client, "h:acme").await;
    cap_across_instances(&mut client, "h:globex").await;
    let metrics = reqwest::get(limiter.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        r#"sidestream_limiter_requests_total{method="acquire",outcome="refused_rate"}"#,
        r#"sidestream_limiter_requests_total{method="acquire",outcome="refused_concurrency"} 4"#,
        r#"sidestream_limiter_requests_total{method="release",outcome="ok"} 1"#,
        r#"sidestream_limiter_requests_total{method="sync",outcome="ok"} 1"#,
        r#"sidestream_limiter_redis_seconds_count{operation="acquire"}"#,
        "sidestream_limiter_redis_up 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    assert!(!metrics.contains("acme"), "no tenant key in the metrics");
}

/// An instance that keeps syncing keeps its slots for many leases; once it
/// stops, they are free within one lease, and not before it has run out.
#[tokio::test]
async fn a_silent_instance_loses_its_slots_after_one_lease() {
    let dir = run_dir("limiter-lease").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let lease = Duration::from_secs(2);
    let limiter = Limiter::start("limiter", &dir, &redis.url(), &["--lease", "2s"])
        .await
        .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let mut client = client(&limiter).await;
    let limits = burst_only(1000, 4);
    for _ in 0..4 {
        let answer = acquire(&mut client, "vm-dead", "h:acme", limits).await;
        assert_eq!(answer.verdict(), pb::Verdict::Admitted);
        assert_eq!(answer.lease_ms, 2_000);
    }
    // Three leases long, the instance syncs every third of a lease.
    let until = Instant::now() + 3 * lease;
    let mut sync_sent = Instant::now();
    while Instant::now() < until {
        sync_sent = Instant::now();
        sync(&mut client, "vm-dead", &[("h:acme", 4)]).await;
        let answer = acquire(&mut client, "vm-live", "h:acme", limits).await;
        assert_eq!(
            answer.verdict(),
            pb::Verdict::RefusedConcurrency,
            "{answer:?}"
        );
        tokio::time::sleep(lease / 3).await;
    }
    // It stops. Until its lease has run out, its slots stay its own.
    let deadline = Instant::now() + 2 * lease;
    let freed = loop {
        let answer = acquire(&mut client, "vm-live", "h:acme", limits).await;
        let answered = Instant::now();
        if answer.verdict() == pb::Verdict::Admitted {
            break answered;
        }
        assert_eq!(
            answer.verdict(),
            pb::Verdict::RefusedConcurrency,
            "{answer:?}"
        );
        assert!(
            Instant::now() < deadline,
            "slots still held {:?} after the last Sync",
            sync_sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let silent_for = freed.duration_since(sync_sent);
    // Redis ran the last Sync after `sync_sent` and the admitting Acquire
    // before `freed`, on a clock that ticks with ours (a few ms for NTP
    // slewing).
    assert!(
        silent_for + Duration::from_millis(5) >= lease,
        "freed {silent_for:?} after the last Sync, before the {lease:?} lease ran out"
    );
    let answer = acquire(&mut client, "vm-live", "h:acme", limits).await;
    assert_eq!(
        (answer.verdict(), answer.active),
        (pb::Verdict::Admitted, 2)
    );
}

/// Two replicas on one Redis; one is SIGKILLed mid-way: the other keeps
/// answering, and the pair never admits more than the limits.
#[tokio::test]
async fn a_killed_replica_leaves_the_limits_whole() {
    let dir = run_dir("limiter-replicas").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let mut first = Limiter::start("limiter-1", &dir, &redis.url(), &[])
        .await
        .expect("limiter 1");
    let second = Limiter::start("limiter-2", &dir, &redis.url(), &[])
        .await
        .expect("limiter 2");
    first.wait_ready().await.expect("ready 1");
    second.wait_ready().await.expect("ready 2");
    let mut clients = [client(&first).await, client(&second).await];
    // Burst 8, cap 6.
    let limits = burst_only(8, 6);
    let mut admitted = 0;
    for i in 0..6 {
        let answer = acquire(&mut clients[i % 2], &format!("vm-{i}"), "h:acme", limits).await;
        assert_eq!(answer.verdict(), pb::Verdict::Admitted, "{answer:?}");
        admitted += 1;
    }
    first.proc.signal(9).expect("SIGKILL");
    first.proc.wait_exit(Duration::from_secs(10)).expect("exit");
    let [_, mut survivor] = clients;
    let answer = acquire(&mut survivor, "vm-x", "h:acme", limits).await;
    assert_eq!(
        answer.verdict(),
        pb::Verdict::RefusedConcurrency,
        "{answer:?}"
    );
    assert_eq!(answer.active, 6);
    for i in 0..6 {
        assert_eq!(
            release(&mut survivor, &format!("vm-{i}"), "h:acme").await,
            0
        );
    }
    // The cap is free again; the bucket has 2 tokens left.
    let mut refused_rate = 0;
    for i in 0..5 {
        let answer = acquire(&mut survivor, &format!("vm-y{i}"), "h:acme", limits).await;
        match answer.verdict() {
            pb::Verdict::Admitted => admitted += 1,
            pb::Verdict::RefusedRate => refused_rate += 1,
            other => panic!("{other:?}: {answer:?}"),
        }
    }
    assert_eq!(
        (admitted, refused_rate),
        (8, 3),
        "the burst of 8, mesh-wide"
    );
}

/// Redis stopped: Acquire is answered UNAVAILABLE by the limiter itself
/// (within its Redis timeout, well before the client's deadline), and
/// /readyz turns 503; Redis back: ready and deciding again.
#[tokio::test]
async fn redis_down_is_unavailable_and_not_ready_then_recovers() {
    let dir = run_dir("limiter-redis-down").expect("dir");
    let mut redis = Redis::start(&dir).await.expect("redis");
    let port = redis.port;
    let limiter = Limiter::start(
        "limiter",
        &dir,
        &redis.url(),
        &[
            "--redis-timeout",
            "300ms",
            "--redis-connect-timeout",
            "300ms",
        ],
    )
    .await
    .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let mut client = client(&limiter).await;
    let limits = burst_only(3, 0);
    assert_eq!(
        acquire(&mut client, "vm", "h:acme", limits).await.verdict(),
        pb::Verdict::Admitted
    );

    redis.proc.kill();
    for _ in 0..3 {
        let mut request = tonic::Request::new(acquire_request("vm", "h:acme", limits));
        request.set_timeout(Duration::from_secs(10));
        let status = client.acquire(request).await.expect_err("Redis is down");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    let http = reqwest::Client::new();
    assert_eventually!(Duration::from_secs(10), "/readyz turns 503", async {
        let response = http.get(limiter.admin_url("/readyz")).send().await?;
        anyhow::ensure!(response.status() == 503, "{}", response.status());
        let metrics = http
            .get(limiter.admin_url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        anyhow::ensure!(
            metrics.contains("sidestream_limiter_redis_up 0"),
            "{metrics}"
        );
        anyhow::ensure!(
            metrics.contains(
                r#"sidestream_limiter_requests_total{method="acquire",outcome="error"} 3"#
            ),
            "{metrics}"
        );
        Ok(())
    });

    let _redis = Redis::start_on(&dir, port).await.expect("redis again");
    limiter.wait_ready().await.expect("ready again");
    // A fresh Redis: a full bucket of 3.
    let mut verdicts = Vec::new();
    for _ in 0..4 {
        verdicts.push(acquire(&mut client, "vm", "h:acme", limits).await.verdict());
    }
    assert_eq!(
        verdicts,
        [
            pb::Verdict::Admitted,
            pb::Verdict::Admitted,
            pb::Verdict::Admitted,
            pb::Verdict::RefusedRate
        ]
    );
}

/// The same burst and cap results on a 3-primary Redis Cluster, with the
/// (policy, key) pairs spread over the primaries.
#[tokio::test]
async fn burst_and_cap_on_a_redis_cluster() {
    let dir = run_dir("limiter-cluster").expect("dir");
    let cluster = RedisCluster::start(&dir).await.expect("cluster");
    let limiter = Limiter::start("limiter", &dir, &cluster.urls(), &["--redis-cluster"])
        .await
        .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let mut client = client(&limiter).await;
    burst_then_refill(&mut client, "h:acme").await;
    cap_across_instances(&mut client, "h:globex").await;
    // Twelve tenants: each admits its burst of 3 exactly, and the Sync of
    // all twelve (slots on every primary) repairs every count.
    let keys: Vec<String> = (0..12).map(|i| format!("h:tenant-{i}")).collect();
    for key in &keys {
        let verdicts: Vec<_> = futures::future::join_all((0..5).map(|_| {
            let mut client = client.clone();
            let key = key.clone();
            async move {
                acquire(&mut client, "vm-a", &key, burst_only(3, 0))
                    .await
                    .verdict()
            }
        }))
        .await;
        let admitted = verdicts
            .iter()
            .filter(|v| **v == pb::Verdict::Admitted)
            .count();
        assert_eq!(admitted, 3, "{key}: {verdicts:?}");
    }
    let holdings: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 0)).collect();
    sync(&mut client, "vm-a", &holdings).await;
    let mut primaries_with_keys = 0;
    for port in &cluster.ports {
        let count: u64 = sidestream_tests::redis::redis_cli(*port, &["DBSIZE"])
            .expect("dbsize")
            .trim()
            .parse()
            .expect("number");
        if count > 0 {
            primaries_with_keys += 1;
        }
    }
    assert!(
        primaries_with_keys >= 2,
        "keys on {primaries_with_keys} primaries"
    );
    for key in &keys {
        let answer = acquire(&mut client, "vm-b", key, burst_only(3, 1)).await;
        // The bucket is empty (rate) but the cap is free after the Sync.
        assert_eq!(
            answer.verdict(),
            pb::Verdict::RefusedRate,
            "{key}: {answer:?}"
        );
        assert_eq!(answer.active, 0, "{key}: {answer:?}");
    }
}

/// An Acquire over TLS, with or without a client certificate.
async fn tls_acquire(
    port: u16,
    dir: &std::path::Path,
    with_client_cert: bool,
) -> anyhow::Result<pb::AcquireResponse> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |name: &str| std::fs::read(dir.join(name));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(read("client.pem")?, read("client.key")?));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = StreamLimiterClient::new(channel);
    Ok(client
        .acquire(acquire_request("vm", "h:acme", burst_only(5, 0)))
        .await?
        .into_inner())
}

/// gRPC over TLS: a client with a certificate signed by --client-ca is
/// served, one without is not.
#[tokio::test]
async fn grpc_over_tls_requires_a_client_certificate_signed_by_the_client_ca() {
    let dir = run_dir("limiter-tls").expect("dir");
    sidestream_tests::tls::make_certificates(&dir).expect("certificates");
    let redis = Redis::start(&dir).await.expect("redis");
    let file = |name: &str| dir.join(name).display().to_string();
    let limiter = Limiter::start(
        "limiter",
        &dir,
        &redis.url(),
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
            "--client-ca",
            &file("ca.pem"),
        ],
    )
    .await
    .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let answer = tls_acquire(limiter.grpc_port, &dir, true)
        .await
        .expect("with a client certificate");
    assert_eq!(
        (answer.verdict(), answer.remaining),
        (pb::Verdict::Admitted, 4)
    );
    let refused = tls_acquire(limiter.grpc_port, &dir, false).await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
}

/// Bad flags and bad flag values exit with 64 and say what is wrong.
#[tokio::test]
async fn bad_flags_exit_64_naming_the_flag() {
    let binary = sidestream_tests::binary("sidestream-limiter").expect("binary");
    for (args, message) in [
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["--lease", "15"], "'15' needs a unit"),
        (
            vec!["--lease", "50ms"],
            "--lease: 50ms is outside 500ms..=1h",
        ),
        (
            vec!["--redis", "http://127.0.0.1:6379"],
            "--redis: 'http://127.0.0.1:6379' is not a Redis URL",
        ),
        (
            vec!["--redis", "redis://127.0.0.1:1,redis://127.0.0.1:2"],
            "add --redis-cluster",
        ),
        (vec!["--redis-prefix", "x{y}"], "--redis-prefix"),
        (
            vec!["--rls-config", "/nonexistent/rls.json"],
            "--rls-config /nonexistent/rls.json: No such file",
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "TLS: cannot read /nonexistent.pem",
        ),
    ] {
        let output = std::process::Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// SIGTERM: the limiter stops taking calls and exits 0.
#[tokio::test]
async fn sigterm_exits_cleanly() {
    let dir = run_dir("limiter-sigterm").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let mut limiter = Limiter::start("limiter", &dir, &redis.url(), &[])
        .await
        .expect("limiter");
    limiter.wait_ready().await.expect("ready");
    let mut client = client(&limiter).await;
    let answer = acquire(&mut client, "vm", "h:acme", burst_only(1, 0)).await;
    assert_eq!(answer.verdict(), pb::Verdict::Admitted);
    limiter.proc.signal(15).expect("SIGTERM");
    let status = limiter
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exit");
    assert!(status.success(), "{status:?}\n{}", limiter.proc.log());
    assert!(limiter
        .proc
        .log()
        .contains("Stopping: finishing the calls in flight"));
}
