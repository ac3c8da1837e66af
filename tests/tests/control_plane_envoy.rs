//! etcd → control plane → Envoy's filter, live: a key written to etcd changes
//! where Envoy routes new requests without restarting anything; an invalid
//! value changes nothing; with the control plane killed Envoy keeps its last
//! good config and keeps serving, and reconverges when it is back.
//!
//! Envoy runs the committed standalone.yaml with two changes: the plugin
//! configuration names a control plane (the filter holds the config stream to
//! it), and the `sidestream-control-plane` cluster points at this test's
//! control plane.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sidestream_tests::envoy::{standalone_config, Envoy};
use sidestream_tests::etcd::Etcd;
use sidestream_tests::upstream::Upstream;
use sidestream_tests::{assert_eventually, binary, filter_wasm, free_port, run_dir, Proc};

const PREFIX: &str = "/sidestream";
const RELEASE_KEY: &str = "/sidestream/v1/releases/push";
const WAIT: Duration = Duration::from_secs(30);

/// The release policy of the test: `percent` of users (by x-user-id) to canary.
fn release(percent: u32) -> String {
    format!(
        r#"{{"match": {{"pathPrefixes": ["/v1/"]}}, "tagHeader": "x-sidestream-group",
            "groups": ["stable", "canary"], "defaultGroup": "stable",
            "rules": [{{"type": "percent", "percent": {percent},
                        "by": {{"source": "header", "name": "x-user-id"}}, "group": "canary"}}]}}"#
    )
}

struct ControlPlane {
    proc: Proc,
    admin_port: u16,
}

impl ControlPlane {
    fn spawn(
        dir: &Path,
        etcd: &Etcd,
        grpc_port: u16,
        admin_port: u16,
        n: u32,
    ) -> anyhow::Result<ControlPlane> {
        let mut command = Command::new(binary("sidestream-control-plane")?);
        command
            .env("RUST_LOG", "info,sidestream_control_plane=debug")
            .args(["--etcd-endpoints", &etcd.endpoint(), "--prefix", PREFIX])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--etcd-max-backoff", "500ms"]);
        let proc = Proc::spawn(&format!("control-plane-{n}"), dir, command)?;
        Ok(ControlPlane { proc, admin_port })
    }

    async fn start(
        dir: &Path,
        etcd: &Etcd,
        grpc_port: u16,
        admin_port: u16,
        n: u32,
    ) -> anyhow::Result<ControlPlane> {
        let cp = ControlPlane::spawn(dir, etcd, grpc_port, admin_port, n)?;
        sidestream_tests::wait_http_ok(&cp.admin("/readyz"), WAIT).await?;
        Ok(cp)
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(reqwest::get(self.admin(path))
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until at least one filter client is connected and every client
    /// ACKed the current snapshot.
    async fn converged(&self) -> anyhow::Result<String> {
        let version = self.json("/v1/snapshot").await?["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let clients = self.json("/v1/clients").await?;
        let clients = clients.as_array().cloned().unwrap_or_default();
        // Envoy runs with --concurrency 2: two worker VMs plus the main thread's
        // VM, each holding its own stream.
        let filters = clients
            .iter()
            .filter(|c| c["clientKind"] == "filter")
            .count();
        anyhow::ensure!(
            filters >= 3,
            "{filters} filter streams connected, expected 3: {clients:?}"
        );
        for client in &clients {
            anyhow::ensure!(
                client["ackedVersion"] == version.as_str(),
                "{} runs {} not {version}",
                client["nodeId"],
                client["ackedVersion"]
            );
        }
        Ok(version)
    }
}

/// standalone.yaml, its filter pointed at a control plane on `grpc_port`.
fn envoy_config(
    envoy_ports: &sidestream_tests::envoy::EnvoyPorts,
    grpc_port: u16,
) -> anyhow::Result<String> {
    let text = standalone_config(envoy_ports, &filter_wasm()?)?;
    let node = "\"nodeId\": \"standalone\",";
    anyhow::ensure!(
        text.matches(node).count() == 1,
        "standalone.yaml changed: no single {node}"
    );
    let text = text.replacen(
        node,
        "\"nodeId\": \"envoy-test\", \"controlPlane\": { \"cluster\": \"sidestream-control-plane\", \"initialBackoffMs\": 100, \"maxBackoffMs\": 1000 },",
        1,
    );
    anyhow::ensure!(
        text.trim_end()
            .ends_with(&format!("port_value: {} }}", envoy_ports.canary)),
        "standalone.yaml no longer ends with its clusters"
    );
    Ok(format!(
        "{text}
  - name: sidestream-control-plane
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: sidestream-control-plane
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {grpc_port} }}
"
    ))
}

/// Which upstream served each of `users` requests to /v1/ticker.
async fn upstreams_for(envoy: &Envoy, users: u32) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut served = Vec::new();
    for user in 0..users {
        let body: Value = client
            .get(envoy.url("/v1/ticker"))
            .header("x-user-id", format!("user-{user}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        served.push(body["upstream"].as_str().unwrap_or("?").to_owned());
    }
    Ok(served)
}

async fn all_to(envoy: &Envoy, upstream: &str) -> anyhow::Result<()> {
    let served = upstreams_for(envoy, 20).await?;
    anyhow::ensure!(
        served.iter().all(|u| u == upstream),
        "not all to {upstream}: {served:?}"
    );
    Ok(())
}

/// Times the filter reopened its config stream, over all its VMs.
async fn config_stream_reconnects(envoy: &Envoy) -> anyhow::Result<i64> {
    Ok(envoy
        .stat("wasmcustom.sidestream.config_stream_reconnects")
        .await?
        .unwrap_or(0))
}

#[tokio::test]
async fn etcd_keys_drive_envoy_live_and_envoy_survives_the_control_plane() {
    let dir = run_dir("cp-envoy").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(RELEASE_KEY, &release(0)).unwrap();
    let (grpc_port, admin_port) = (free_port().unwrap(), free_port().unwrap());
    let mut cp = ControlPlane::start(&dir, &etcd, grpc_port, admin_port, 1)
        .await
        .unwrap();
    let stable = Upstream::start("stable").await.unwrap();
    let canary = Upstream::start("canary").await.unwrap();
    let ports = Envoy::ports(stable.port(), canary.port()).unwrap();
    let envoy = Envoy::start(
        "cp-envoy-envoy",
        ports,
        &envoy_config(&ports, grpc_port).unwrap(),
    )
    .await
    .unwrap();

    // The filter connects, applies the snapshot and ACKs it; 0% → everyone on stable.
    assert_eventually!(WAIT, "Envoy converged on 0%", async {
        cp.converged().await
    });
    assert_eventually!(WAIT, "everyone on stable", async {
        all_to(&envoy, "stable").await
    });

    // A key written to etcd changes routing, nothing restarted.
    etcd.put(RELEASE_KEY, &release(100)).unwrap();
    assert_eventually!(WAIT, "new requests go to canary", async {
        all_to(&envoy, "canary").await
    });
    let version = assert_eventually!(WAIT, "every worker ACKed", async { cp.converged().await });

    // An invalid value: rejected, the snapshot and Envoy's behaviour unchanged.
    etcd.put(
        RELEASE_KEY,
        r#"{"groups": ["stable"], "defaultGroup": "canary"}"#,
    )
    .unwrap();
    assert_eventually!(WAIT, "rejection listed", async {
        let r = cp.json("/v1/rejections").await?;
        anyhow::ensure!(r["active"][0]["key"] == "v1/releases/push", "{r}");
        Ok(())
    });
    assert_eq!(
        cp.json("/v1/snapshot").await.unwrap()["version"],
        version.as_str()
    );
    all_to(&envoy, "canary").await.unwrap();

    // Control plane killed: Envoy keeps its last good config and keeps serving.
    let reconnects_before = config_stream_reconnects(&envoy).await.unwrap();
    cp.proc.kill();
    etcd.put(RELEASE_KEY, &release(0)).unwrap();
    all_to(&envoy, "canary").await.unwrap();
    // Every VM's stream (two workers and the main thread) closed and was
    // opened again against the dead control plane: still the last good config.
    assert_eventually!(
        WAIT,
        "each filter stream retried the dead control plane",
        async {
            let reconnects = config_stream_reconnects(&envoy).await?;
            anyhow::ensure!(
                reconnects >= reconnects_before + 3,
                "{reconnects} reconnects ({reconnects_before} before the kill)"
            );
            Ok(())
        }
    );
    all_to(&envoy, "canary").await.unwrap();

    // Restarted: the filter reconnects and converges on what etcd says now.
    cp = ControlPlane::start(&dir, &etcd, grpc_port, admin_port, 2)
        .await
        .unwrap();
    assert_eventually!(WAIT, "reconverged on 0%", async {
        all_to(&envoy, "stable").await
    });
    assert_eventually!(WAIT, "every worker ACKed after the restart", async {
        cp.converged().await
    });
    drop(envoy);
}
