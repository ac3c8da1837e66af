//! Mesh-wide stream limits end to end: three real Envoys (2 workers each)
//! running the committed envoy-config/mesh.yaml, two sidestream-limiter
//! replicas and one Redis. The Envoys' tenant limits hold across all of them;
//! a killed Envoy's slots come back within the lease; a killed limiter replica
//! or a stopped Redis changes what the filter does exactly as documented.
//!
//! mesh.yaml is rendered with the test's ports, both limiter replicas as the
//! `sidestream-limiter` cluster (health-checked on their `/readyz`, as a
//! Kubernetes Service would only route to ready pods), and policy numbers that
//! make the results exact: no refill to speak of (one token per 1000 s), so an
//! admission is a token and nothing else.
//!
//! Needs the filter (`make filter`) and `cargo build --workspace --bins`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sidestream_tests::assert_eventually;
use sidestream_tests::envoy::{open_get, Envoy, EnvoyPorts, ResponseHead};
use sidestream_tests::limiter::Limiter;
use sidestream_tests::redis::Redis;
use sidestream_tests::upstream::Upstream;
use sidestream_tests::{filter_wasm, run_dir, workspace_root};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Three Envoys, two limiters and Redis at once are what this machine can
/// run; the tests take turns.
static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The limiters' lease in these tests (the filter syncs every third of it).
const LEASE: Duration = Duration::from_secs(3);

/// The burst of the `/burst/` policy and the cap of `tenant-streams`.
const LIMIT: usize = 20;

const FALLBACKS: [&str; 3] = [
    "sidestream_mesh_fallback_timeout",
    "sidestream_mesh_fallback_error",
    "sidestream_mesh_fallback_unavailable",
];

/// The policies the Envoys embed: mesh.yaml's `tenant-streams` with a cap of
/// 20 and tokens enough for every test (so only the cap decides), and a
/// `burst` policy for `/burst/` whose 20 tokens do not come back.
fn policies(timeout_ms: u64, fallback: &str) -> Value {
    json!({
        "tenant-streams": {
            "streamKinds": ["sse", "websocket"],
            "key": { "source": "header", "name": "x-tenant-id" },
            "newStreamsPerSecond": 0.001,
            "burst": 1000,
            "maxConcurrent": LIMIT,
            "failMode": "open",
            "scope": "mesh",
            "mesh": { "fallback": fallback, "timeoutMs": timeout_ms }
        },
        "burst": {
            "match": { "pathPrefixes": ["/burst/"] },
            "priority": 10,
            "streamKinds": ["sse"],
            "key": { "source": "header", "name": "x-tenant-id" },
            "newStreamsPerSecond": 0.001,
            "burst": LIMIT,
            "scope": "mesh",
            "mesh": { "fallback": fallback, "timeoutMs": timeout_ms }
        }
    })
}

/// envoy-config/mesh.yaml with this Envoy's ports, the built filter, the
/// limiters as the `sidestream-limiter` cluster and `policies` as the
/// embedded stream limits. Fails if mesh.yaml no longer has the shape the
/// contract promises (the cluster, the mesh-scoped tenant policy).
fn mesh_config(ports: &EnvoyPorts, limiters: &[&Limiter], policies: &Value) -> String {
    let path = workspace_root().join("envoy-config/mesh.yaml");
    let text = std::fs::read_to_string(&path).expect("envoy-config/mesh.yaml");
    let mut config: Value = serde_norway::from_str(&text).expect("mesh.yaml is YAML");
    config["admin"]["address"]["socket_address"]["port_value"] = json!(ports.admin);
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = json!(ports.listener);
    let wasm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"];
    wasm["vm_config"]["code"]["local"]["filename"] =
        json!(filter_wasm().expect("the filter is built (make filter)"));
    let mut bootstrap: Value = serde_json::from_str(
        wasm["configuration"]["value"]
            .as_str()
            .expect("plugin configuration"),
    )
    .expect("plugin configuration is JSON");
    assert_eq!(
        bootstrap["defaults"]["streamLimits"]["tenant-streams"]["scope"], "mesh",
        "mesh.yaml's tenant-streams is mesh-scoped"
    );
    let cluster = bootstrap["limiter"]["cluster"]
        .as_str()
        .expect("mesh.yaml names the limiter cluster")
        .to_owned();
    bootstrap["defaults"]["streamLimits"] = policies.clone();
    wasm["configuration"]["value"] = json!(bootstrap.to_string());
    for cluster in config["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        let port = match cluster["name"].as_str() {
            Some("stable") => ports.stable,
            Some("canary") => ports.canary,
            _ => continue,
        };
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"] = json!(port);
    }
    let limiter_cluster = config["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
        .iter_mut()
        .find(|c| c["name"] == cluster.as_str())
        .expect("mesh.yaml has the limiter's cluster");
    let endpoints: Vec<Value> = limiters
        .iter()
        .map(|l| {
            json!({ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": l.grpc_port } },
                "health_check_config": { "port_value": l.admin_port }
            } })
        })
        .collect();
    limiter_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = json!(endpoints);
    limiter_cluster["health_checks"] = json!([{
        "timeout": "2s",
        "interval": "0.3s",
        // Not the default minute: the test asks before any traffic flows.
        "no_traffic_interval": "0.3s",
        "no_traffic_healthy_interval": "0.3s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "http_health_check": { "path": "/readyz", "codec_client_type": "HTTP1" }
    }]);
    serde_json::to_string_pretty(&config).expect("config")
}

struct Mesh {
    dir: std::path::PathBuf,
    redis: Redis,
    limiters: Vec<Limiter>,
    envoys: Vec<Envoy>,
    _stable: Upstream,
    _canary: Upstream,
}

impl Mesh {
    async fn start(name: &str, policies: &Value) -> Mesh {
        let dir = run_dir(name).expect("run dir");
        let redis = Redis::start(&dir).await.expect("redis");
        let lease = format!("{}ms", LEASE.as_millis());
        let mut limiters = Vec::new();
        for i in 0..2 {
            let limiter = Limiter::start(
                &format!("limiter-{i}"),
                &dir,
                &redis.url(),
                &["--lease", &lease],
            )
            .await
            .expect("limiter starts");
            limiter.wait_ready().await.expect("limiter ready");
            limiters.push(limiter);
        }
        let stable = Upstream::start("stable").await.expect("stable upstream");
        let canary = Upstream::start("canary").await.expect("canary upstream");
        let mut envoys = Vec::new();
        for i in 0..3 {
            let ports = Envoy::ports(stable.port(), canary.port()).expect("ports");
            let refs: Vec<&Limiter> = limiters.iter().collect();
            let config = mesh_config(&ports, &refs, policies);
            let envoy = Envoy::start(&format!("{name}-envoy-{i}"), ports, &config)
                .await
                .expect("envoy starts");
            envoys.push(envoy);
        }
        let mesh = Mesh {
            dir,
            redis,
            limiters,
            envoys,
            _stable: stable,
            _canary: canary,
        };
        for envoy in &mesh.envoys {
            mesh.wait_limiters_healthy(envoy, 2).await;
        }
        mesh
    }

    /// Waits until `envoy` sees `count` healthy limiter endpoints.
    async fn wait_limiters_healthy(&self, envoy: &Envoy, count: usize) {
        assert_eventually!(
            Duration::from_secs(20),
            "Envoy sees the healthy limiters",
            async {
                let text = reqwest::get(envoy.admin_url("/clusters"))
                    .await?
                    .text()
                    .await?;
                let healthy = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("sidestream-limiter::")
                            && l.contains("::health_flags::healthy")
                    })
                    .count();
                anyhow::ensure!(healthy == count, "{healthy} healthy, want {count}:\n{text}");
                Ok(())
            }
        );
    }

    /// The sum of a Prometheus stat over the Envoys.
    async fn stat(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for envoy in &self.envoys {
            sum += prometheus_value(&envoy.prometheus().await.expect("stats"), name);
        }
        sum
    }

    async fn fallbacks(&self) -> f64 {
        let mut sum = 0.0;
        for name in FALLBACKS {
            sum += self.stat(name).await;
        }
        sum
    }
}

fn prometheus_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (metric, value) = l.rsplit_once(' ')?;
            (metric == name || metric.starts_with(&format!("{name}{{")))
                .then(|| value.parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// Opens an SSE stream for `tenant` through `envoy`; the stream stays open
/// while the returned connection lives.
async fn open_sse(envoy: &Envoy, path: &str, tenant: &str) -> (ResponseHead, TcpStream) {
    open_get(
        &envoy.listener_addr(),
        path,
        &[("accept", "text/event-stream"), ("x-tenant-id", tenant)],
    )
    .await
    .unwrap_or_else(|e| panic!("open {path} for {tenant}: {e:#}"))
}

/// Opens `count` streams for `tenant`, round robin over `envoys`; returns
/// the admitted ones (held open) and the refusals' heads.
async fn open_many(
    envoys: &[&Envoy],
    path: &str,
    tenant: &str,
    count: usize,
) -> (Vec<TcpStream>, Vec<ResponseHead>) {
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..count {
        let (head, stream) = open_sse(envoys[i % envoys.len()], path, tenant).await;
        match head.status {
            200 => admitted.push(stream),
            429 => refused.push(head),
            other => panic!("stream {i} for {tenant}: status {other}: {head:?}"),
        }
    }
    (admitted, refused)
}

/// One more stream for `tenant` through `envoy` is refused for concurrency.
async fn refused_for_concurrency(envoy: &Envoy, tenant: &str) -> anyhow::Result<()> {
    let (head, _stream) = open_sse(envoy, "/sse", tenant).await;
    anyhow::ensure!(head.status == 429, "status {} (admitted)", head.status);
    anyhow::ensure!(
        head.header("ratelimit-limit") == Some(&LIMIT.to_string()),
        "not a concurrency refusal: {head:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_cap_hold_across_three_envoys() {
    let _turn = ONE_MESH_AT_A_TIME.lock().await;
    let mesh = Mesh::start("mesh-limits", &policies(2_000, "local")).await;
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();

    // 30 opens for one tenant over three Envoys (six worker VMs): exactly
    // the burst, mesh-wide. Each Envoy alone would admit 20 by itself.
    let (admitted, refused) = open_many(&envoys, "/burst/sse", "acme", 30).await;
    assert_eq!(admitted.len(), LIMIT, "admitted mesh-wide");
    assert_eq!(refused.len(), 30 - LIMIT);
    for head in &refused {
        assert_eq!(head.header("ratelimit-limit"), Some("20"), "{head:?}");
        assert_eq!(head.header("ratelimit-remaining"), Some("0"), "{head:?}");
        assert_eq!(
            head.header("ratelimit-policy"),
            Some("1;w=1000;burst=20"),
            "{head:?}"
        );
        let retry: u64 = head
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after");
        assert!(retry > 900, "a token is ~1000 s away: {retry}");
    }
    drop(admitted);

    // The cap: 20 streams open across the Envoys, the 21st refused wherever
    // it lands, and admitted again once one closes.
    let (mut held, refused) = open_many(&envoys, "/sse", "globex", LIMIT).await;
    assert_eq!((held.len(), refused.len()), (LIMIT, 0));
    for envoy in &envoys {
        refused_for_concurrency(envoy, "globex")
            .await
            .unwrap_or_else(|e| panic!("the 21st stream: {e:#}"));
    }
    drop(held.pop());
    let reopened = assert_eventually!(
        Duration::from_secs(10),
        "a stream is admitted again once one closed",
        async {
            let (head, stream) = open_sse(envoys[2], "/sse", "globex").await;
            anyhow::ensure!(head.status == 200, "status {}", head.status);
            Ok(stream)
        }
    );
    held.push(reopened);
    refused_for_concurrency(envoys[0], "globex")
        .await
        .expect("full again");
    // Another tenant is not affected.
    let (head, _other) = open_sse(envoys[1], "/sse", "initech").await;
    assert_eq!(head.status, 200);

    // Everything was the limiter's decision.
    assert_eq!(mesh.fallbacks().await, 0.0, "no fallbacks");
    assert_eventually!(
        Duration::from_secs(5),
        "the mesh stats count every decision",
        async {
            let admitted = mesh.stat("sidestream_mesh_admitted").await;
            let refused = mesh.stat("sidestream_mesh_refused").await;
            anyhow::ensure!(
                admitted >= 42.0 && refused >= 14.0,
                "admitted {admitted}, refused {refused}"
            );
            Ok(())
        }
    );
    // The round-trip histogram has the samples once Envoy merged it (at
    // its stats flush, every 5 s by default).
    assert_eventually!(
        Duration::from_secs(15),
        "the limiter round trips are in the histogram",
        async {
            let samples = mesh.stat("sidestream_mesh_rtt_us_count").await;
            anyhow::ensure!(samples >= 56.0, "rtt samples {samples}");
            Ok(())
        }
    );
    drop(held);
    let _ = &mesh.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_envoy_frees_its_slots_within_the_lease_and_a_live_one_keeps_them() {
    let _turn = ONE_MESH_AT_A_TIME.lock().await;
    let mut mesh = Mesh::start("mesh-kill-envoy", &policies(2_000, "local")).await;
    let (doomed, rest) = mesh.envoys.split_first().expect("three envoys");
    let (on_doomed, _) = open_many(&[doomed], "/sse", "acme", 10).await;
    let (on_rest, _) = open_many(&[&rest[0], &rest[1]], "/sse", "acme", 10).await;
    assert_eq!((on_doomed.len(), on_rest.len()), (10, 10));

    // Alive: the slots stay taken for several leases (the filter's Syncs
    // renew them), whichever Envoy asks.
    let started = Instant::now();
    while started.elapsed() < LEASE * 4 {
        refused_for_concurrency(&rest[1], "acme")
            .await
            .unwrap_or_else(|e| panic!("freed early after {:?}: {e:#}", started.elapsed()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Killed: no Release, no Sync; its 10 slots come back within a lease
    // (each of its worker VMs is an instance with its own lease, so they
    // come back in steps).
    doomed.proc.signal(9).expect("SIGKILL envoy");
    let killed = Instant::now();
    let reopened = std::sync::Arc::new(Mutex::new(Vec::new()));
    assert_eventually!(
        LEASE * 2 + Duration::from_secs(2),
        "the killed Envoy's 10 slots are free again",
        async {
            let mut reopened = reopened.lock().await;
            while reopened.len() < 10 {
                let (head, stream) = open_sse(&rest[reopened.len() % 2], "/sse", "acme").await;
                anyhow::ensure!(
                    head.status == 200,
                    "{} of 10 back after {:?}",
                    reopened.len(),
                    killed.elapsed()
                );
                reopened.push(stream);
            }
            Ok(())
        }
    );
    let freed_after = killed.elapsed();
    assert!(
        freed_after <= LEASE + Duration::from_secs(2),
        "slots came back after {freed_after:?}, the lease is {LEASE:?}"
    );
    // Exactly its 10.
    refused_for_concurrency(&rest[0], "acme")
        .await
        .expect("full again with the killed Envoy's slots reused");
    drop((on_doomed, on_rest, reopened));
    mesh.envoys.remove(0).proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_limiter_replica_leaves_the_other_answering() {
    let _turn = ONE_MESH_AT_A_TIME.lock().await;
    let mesh = Mesh::start("mesh-kill-limiter", &policies(2_000, "refuse")).await;
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();
    let (before, _) = open_many(&envoys, "/sse", "acme", 12).await;
    assert_eq!(before.len(), 12);
    drop(envoys);

    mesh.limiters[0].proc.signal(9).expect("SIGKILL limiter");
    for envoy in &mesh.envoys {
        mesh.wait_limiters_healthy(envoy, 1).await;
    }
    let admitted_before = mesh.stat("sidestream_mesh_admitted").await;
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();
    // 15 more: the other replica admits up to the cap and refuses the rest
    // (fallback `refuse` would answer 503 and fail open_many).
    let (after, refused) = open_many(&envoys, "/sse", "acme", 15).await;
    assert_eq!(
        (after.len(), refused.len()),
        (LIMIT - 12, 15 - (LIMIT - 12))
    );
    assert_eventually!(
        Duration::from_secs(5),
        "the surviving replica decided",
        async {
            let admitted = mesh.stat("sidestream_mesh_admitted").await;
            anyhow::ensure!(
                admitted - admitted_before == (LIMIT - 12) as f64,
                "admitted {admitted} (before {admitted_before})"
            );
            Ok(())
        }
    );
    // The held streams stay counted through the Syncs the survivor takes.
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    refused_for_concurrency(envoys[1], "acme")
        .await
        .expect("still full a lease later");
    assert_eq!(mesh.fallbacks().await, 0.0, "no fallbacks");
    drop((before, after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_opens_fall_back_and_with_redis_back_sync_repairs_the_counts() {
    let _turn = ONE_MESH_AT_A_TIME.lock().await;
    let mut mesh = Mesh::start("mesh-redis-down", &policies(300, "local")).await;
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();
    let (held, _) = open_many(&envoys, "/sse", "acme", 6).await;
    assert_eq!(held.len(), 6);
    drop(envoys);

    // Redis stops: every open gets the policy's fallback (the local limits,
    // here within one Envoy's cap of 20), counted by cause.
    let port = mesh.redis.port;
    mesh.redis.proc.kill();
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();
    let before = mesh.fallbacks().await;
    let (during, refused) = open_many(&envoys, "/sse", "hooli", 9).await;
    assert_eq!((during.len(), refused.len()), (9, 0), "local limits admit");
    assert_eventually!(Duration::from_secs(5), "the fallbacks are counted", async {
        let fallbacks = mesh.fallbacks().await;
        anyhow::ensure!(fallbacks - before == 9.0, "{fallbacks} (before {before})");
        Ok(())
    });
    assert_eq!(mesh.stat("sidestream_mesh_admitted").await, 6.0);
    drop(during);
    drop(envoys);

    // Redis is back, empty: the Syncs (every second here) tell it the 6
    // streams still open, so the cap counts them again.
    let redis = Redis::start_on(&mesh.dir, port).await.expect("redis again");
    mesh.redis = redis;
    for limiter in &mesh.limiters {
        limiter.wait_ready().await.expect("limiter ready again");
    }
    for envoy in &mesh.envoys {
        mesh.wait_limiters_healthy(envoy, 2).await;
    }
    assert_eventually!(
        Duration::from_secs(10),
        "the held streams are counted in Redis again",
        async {
            let keys = mesh.redis.cli(&["--scan"])?;
            anyhow::ensure!(!keys.trim().is_empty(), "no keys yet");
            Ok(())
        }
    );
    tokio::time::sleep(LEASE / 2).await;
    let envoys: Vec<&Envoy> = mesh.envoys.iter().collect();
    let (after, refused) = open_many(&envoys, "/sse", "acme", 20).await;
    assert_eq!(
        (after.len(), refused.len()),
        (LIMIT - 6, 6),
        "the cap counts the streams opened before Redis went away"
    );
    let fallbacks = mesh.fallbacks().await;
    assert_eq!(fallbacks - before, 9.0, "no fallbacks once Redis is back");
    drop((held, after));
}
