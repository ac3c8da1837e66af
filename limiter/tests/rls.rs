//! Envoy's own rate-limit filter (`envoy.filters.http.ratelimit`, RLS v3)
//! against the limiter, on a real Envoy and a real Redis: it draws from the
//! same token bucket as the sidestream filter's Acquire for the same policy
//! and key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sidestream_proto::limits::v1 as pb;
use sidestream_proto::limits::v1::stream_limiter_client::StreamLimiterClient;
use sidestream_tests::envoy::Envoy;
use sidestream_tests::redis::Redis;
use sidestream_tests::upstream::Upstream;

const RLS_CONFIG: &str = r#"{
  "domain": "sidestream",
  "descriptors": [
    { "key": "tenant", "policy": "tenant-streams",
      "spec": { "key": { "source": "header", "name": "x-tenant-id" },
                "newStreamsPerSecond": 0.001, "burst": 3, "maxConcurrent": 20 } }
  ]
}"#;

fn envoy_config(listener: u16, admin: u16, upstream: u16, limiter: u16) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: main
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: rls
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            cluster: upstream
                            rate_limits:
                              - actions:
                                  - request_headers:
                                      header_name: x-tenant-id
                                      descriptor_key: tenant
                http_filters:
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: sidestream
                      failure_mode_deny: false
                      timeout: 2s
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service:
                          envoy_grpc: {{ cluster_name: limiter }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
    - name: limiter
      type: STATIC
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: limiter
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {limiter} }} }} }}
"#
    )
}

async fn get(client: &reqwest::Client, url: &str, tenant: Option<&str>) -> reqwest::Response {
    let mut request = client.get(url);
    if let Some(tenant) = tenant {
        request = request.header("x-tenant-id", tenant);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn envoys_rate_limit_filter_shares_the_buckets_of_acquire() {
    let dir = sidestream_tests::run_dir("limiter-rls").expect("dir");
    let redis = Redis::start(&dir).await.expect("redis");
    let config = dir.join("rls.json");
    std::fs::write(&config, RLS_CONFIG).expect("config");
    let args = <sidestream_limiter::daemon::DaemonArgs as clap::Parser>::try_parse_from([
        "sidestream-limiter",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--redis",
        &redis.url(),
        "--rls-config",
        config.to_str().expect("utf-8"),
    ])
    .expect("flags");
    let daemon = sidestream_limiter::daemon::start(args)
        .await
        .expect("start");
    let upstream = Upstream::start("upstream").await.expect("upstream");
    let ports = Envoy::ports(upstream.port(), upstream.port()).expect("ports");
    let envoy = Envoy::start(
        "limiter-rls-envoy",
        ports,
        &envoy_config(
            ports.listener,
            ports.admin,
            upstream.port(),
            daemon.grpc_addr.port(),
        ),
    )
    .await
    .expect("envoy");

    // The sidestream filter's Acquire takes the first of acme's 3 tokens.
    let mut limiter = StreamLimiterClient::connect(format!("http://{}", daemon.grpc_addr))
        .await
        .expect("connect");
    let acquire = pb::AcquireRequest {
        instance: "vm-0".into(),
        policy: "tenant-streams".into(),
        key: "h:acme".into(),
        limits: Some(pb::Limits {
            rate_milli: 1,
            burst: 3,
            max_concurrent: 20,
        }),
        policy_version: String::new(),
    };
    let answer = limiter
        .acquire(acquire.clone())
        .await
        .expect("acquire")
        .into_inner();
    assert_eq!(
        (answer.verdict(), answer.remaining),
        (pb::Verdict::Admitted, 2)
    );

    // Envoy's rate-limit filter gets the other two, then 429 with retry-after.
    let http = reqwest::Client::new();
    let url = envoy.url("/hello");
    for _ in 0..2 {
        let response = get(&http, &url, Some("acme")).await;
        assert_eq!(response.status(), 200);
    }
    let refused = get(&http, &url, Some("acme")).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    // One token every 1000 s.
    assert!((1..=1000).contains(&retry_after), "{retry_after}");
    // Other tenants and requests without the header are not limited by acme's bucket.
    assert_eq!(get(&http, &url, Some("globex")).await.status(), 200);
    assert_eq!(get(&http, &url, None).await.status(), 200);

    // And Acquire sees the bucket Envoy emptied.
    let answer = limiter
        .acquire(acquire)
        .await
        .expect("acquire")
        .into_inner();
    assert_eq!(answer.verdict(), pb::Verdict::RefusedRate, "{answer:?}");
    // RLS holds no concurrent slot: only the Acquire's stream is active.
    assert_eq!(answer.active, 1);

    let metrics = reqwest::get(format!("http://{}/metrics", daemon.admin_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"sidestream_limiter_requests_total{method="should_rate_limit",outcome="admitted"} 3"#,
        r#"sidestream_limiter_requests_total{method="should_rate_limit",outcome="refused_rate"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}
