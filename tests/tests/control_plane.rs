//! The control plane against a real etcd: validation and rejections, watch
//! recovery (etcd restart, compaction), gRPC config discovery (ACK, NACK,
//! propagation, reconvergence after a restart), and sidestreamctl (validate,
//! apply races, history, rollback, status).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use sidestream_control_plane::ctl::store::{Store, StoreError};
use sidestream_control_plane::etcd::EtcdSettings;
use sidestream_proto::config::v1::config_discovery_client::ConfigDiscoveryClient;
use sidestream_proto::config::v1::{ConfigRequest, ConfigResponse, ErrorDetail, Node};
use sidestream_tests::etcd::Etcd;
use sidestream_tests::tls::make_certificates;
use sidestream_tests::{assert_eventually, binary, free_port, run_dir, workspace_root, Proc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const PREFIX: &str = "/sidestream";
const TOPIC_KEY: &str = "/sidestream/v1/topics/ticker";
const WAIT: Duration = Duration::from_secs(20);

/// The control plane binary, started against one etcd.
struct ControlPlane {
    proc: Proc,
    dir: PathBuf,
    etcd: String,
    grpc_port: u16,
    admin_port: u16,
    /// `None`: started without `--snapshot-cache`.
    cache: Option<PathBuf>,
    starts: u32,
    extra: Vec<String>,
}

impl ControlPlane {
    async fn start(dir: &Path, etcd: &Etcd) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with(dir, etcd, &[]).await
    }

    async fn start_with(dir: &Path, etcd: &Etcd, extra: &[&str]) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_full(dir, etcd, Some(dir.join("snapshot-cache.json")), extra).await
    }

    /// Started without `--snapshot-cache`: nothing but etcd to go by.
    async fn start_without_cache(dir: &Path, etcd: &Etcd) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_full(dir, etcd, None, &[]).await
    }

    async fn start_full(
        dir: &Path,
        etcd: &Etcd,
        cache: Option<PathBuf>,
        extra: &[&str],
    ) -> anyhow::Result<ControlPlane> {
        let grpc_port = free_port()?;
        let admin_port = free_port()?;
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let proc = Self::spawn(
            dir,
            &etcd.endpoint(),
            grpc_port,
            admin_port,
            cache.as_deref(),
            1,
            &extra,
        )?;
        let cp = ControlPlane {
            proc,
            dir: dir.to_path_buf(),
            etcd: etcd.endpoint(),
            grpc_port,
            admin_port,
            cache,
            starts: 1,
            extra,
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    fn spawn(
        dir: &Path,
        etcd: &str,
        grpc_port: u16,
        admin_port: u16,
        cache: Option<&Path>,
        n: u32,
        extra: &[String],
    ) -> anyhow::Result<Proc> {
        let mut command = Command::new(binary("sidestream-control-plane")?);
        command
            .env("RUST_LOG", "info,sidestream_control_plane=debug")
            .arg("--etcd-endpoints")
            .arg(etcd)
            .arg("--prefix")
            .arg(PREFIX)
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--debounce")
            .arg("5ms")
            .arg("--etcd-max-backoff")
            .arg("500ms")
            .args(extra);
        if let Some(cache) = cache {
            command.arg("--snapshot-cache").arg(cache);
        }
        Proc::spawn(&format!("control-plane-{n}"), dir, command)
    }

    /// Kills it (SIGKILL) and starts it again on the same ports and cache.
    fn restart_no_wait(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        self.starts += 1;
        self.proc = Self::spawn(
            &self.dir,
            &self.etcd,
            self.grpc_port,
            self.admin_port,
            self.cache.as_deref(),
            self.starts,
            &self.extra,
        )?;
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.admin("/readyz");
        let result = sidestream_tests::wait_http_ok(&url, WAIT).await;
        if result.is_err() {
            eprintln!("control plane log:\n{}", self.proc.log());
        }
        result
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    fn admin_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let response = reqwest::get(self.admin(path)).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    async fn snapshot(&self) -> anyhow::Result<Value> {
        self.json("/v1/snapshot").await
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(self.admin("/metrics")).await?.text().await?)
    }
}

/// The value of one metric line (`name{labels} value`) in an exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn topic(history_size: u32) -> String {
    format!(r#"{{"historySize": {history_size}}}"#)
}

async fn topic_history(cp: &ControlPlane, name: &str) -> anyhow::Result<Option<i64>> {
    let snapshot = cp.snapshot().await?;
    Ok(snapshot["snapshot"]["topics"][name]["historySize"].as_i64())
}

fn sidestreamctl(etcd: &str, admin: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(binary("sidestreamctl")?)
        .env_remove("SIDESTREAM_PREFIX")
        .arg("--etcd-endpoints")
        .arg(etcd)
        .arg("--prefix")
        .arg(PREFIX)
        .arg("--admin")
        .arg(admin)
        .args(args)
        .output()?)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A data-plane client holding the config stream.
struct ConfigClient {
    requests: mpsc::Sender<ConfigRequest>,
    responses: tonic::Streaming<ConfigResponse>,
}

impl ConfigClient {
    async fn connect(
        grpc: &str,
        node: &str,
        kinds: &[&str],
        running: &str,
    ) -> anyhow::Result<ConfigClient> {
        let mut client = ConfigDiscoveryClient::connect(grpc.to_owned()).await?;
        let (requests, rx) = mpsc::channel(8);
        requests
            .send(ConfigRequest {
                node: Some(Node {
                    id: node.to_owned(),
                    cluster: "test".to_owned(),
                    client_kind: "test".to_owned(),
                    metadata: Default::default(),
                }),
                kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
                version_info: running.to_owned(),
                response_nonce: String::new(),
                error_detail: None,
            })
            .await?;
        let responses = client
            .stream_config(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(ConfigClient {
            requests,
            responses,
        })
    }

    async fn next(&mut self, timeout: Duration) -> anyhow::Result<ConfigResponse> {
        tokio::time::timeout(timeout, self.responses.message())
            .await
            .map_err(|_| anyhow::anyhow!("no config response within {timeout:?}"))??
            .ok_or_else(|| anyhow::anyhow!("the config stream ended"))
    }

    async fn ack(&self, response: &ConfigResponse) -> anyhow::Result<()> {
        self.requests
            .send(ConfigRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..ConfigRequest::default()
            })
            .await?;
        Ok(())
    }

    async fn nack(
        &self,
        response: &ConfigResponse,
        running: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        self.requests
            .send(ConfigRequest {
                version_info: running.to_owned(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(ErrorDetail {
                    message: message.to_owned(),
                }),
                ..ConfigRequest::default()
            })
            .await?;
        Ok(())
    }
}

fn snapshot_json(response: &ConfigResponse) -> Value {
    serde_json::from_slice(&response.snapshot_json).unwrap_or_default()
}

#[tokio::test]
async fn sidestreamctl_validate_reports_every_problem_and_accepts_the_examples() {
    let dir = run_dir("cp-validate").unwrap();
    let examples = workspace_root().join("examples/config");
    let out = sidestreamctl(
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        &["validate", examples.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "TraceSettings",
        "ReleasePolicy push",
        "StreamLimitPolicy tenants",
        "TopicSettings ticker",
    ] {
        assert!(stdout.contains(kind), "{kind} missing: {stdout}");
    }

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "- kind: ReleasePolicy\n  name: push\n  spec:\n    groups: [stable, canary]\n    defaultGroup: stable\n    rules:\n      - {type: percent, percent: 140, by: {source: traceId}, group: canary}\n- kind: TopicSettings\n  name: ticker\n  spec: {historySize: -5}\n",
    )
    .unwrap();
    let out = sidestreamctl(
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        &["validate", bad.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}: document 1 (release policy 'push'): rules[0].percent"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}: document 2 (topic 'ticker'): historySize")),
        "{stderr}"
    );
    let out = sidestreamctl(
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        &["validate", bad.to_str().unwrap(), "-o", "json"],
    )
    .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report}");
}

#[tokio::test]
async fn bad_flags_or_config_exit_with_64() {
    let dir = run_dir("cp-flags").unwrap();
    for args in [
        vec!["--debounce", "soon"],
        vec!["--debounce", "5"],
        vec!["--etcd-max-backoff", "5000"],
        vec!["--no-such-flag"],
        vec![
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        vec!["--prefix", "no-slash"],
    ] {
        let mut command = Command::new(binary("sidestream-control-plane").unwrap());
        command.args(&args).args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        let mut proc = Proc::spawn("flags", &dir, command).unwrap();
        let status = proc.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(64), "{args:?}: {}", proc.log());
        // A bare number is refused with the flag and a hint at the units.
        if let [flag, value] = args[..] {
            if value.parse::<u32>().is_ok() {
                let log = proc.log();
                let expected = format!("'{value}' needs a unit: {value}ms, {value}s, {value}m");
                assert!(log.contains(flag) && log.contains(&expected), "{log}");
            }
        }
    }
}

#[tokio::test]
async fn an_invalid_value_is_rejected_reported_and_changes_nothing() {
    let dir = run_dir("cp-reject").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(10)).unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(10));
    let before = cp.snapshot().await.unwrap();

    let bad_revision = etcd
        .put(
            TOPIC_KEY,
            r#"{"historySize": 2000000, "maxMessageBytes": 0}"#,
        )
        .unwrap();
    etcd.put("/sidestream/v1/widgets/x", "{}").unwrap();
    let rejections = assert_eventually!(WAIT, "rejection listed", async {
        let r = cp.json("/v1/rejections").await?;
        anyhow::ensure!(!r["active"].as_array().unwrap().is_empty(), "none yet: {r}");
        anyhow::ensure!(
            !r["unknownKeys"].as_array().unwrap().is_empty(),
            "unknown key not yet: {r}"
        );
        Ok(r)
    });
    let active = &rejections["active"][0];
    assert_eq!(active["key"], "v1/topics/ticker");
    assert_eq!(active["revision"], bad_revision);
    let reason = active["reason"].as_str().unwrap();
    assert!(
        reason.contains("historySize") && reason.contains("maxMessageBytes"),
        "{reason}"
    );
    assert_eq!(rejections["total"], 1);
    assert_eq!(rejections["unknownKeys"][0]["key"], "v1/widgets/x");

    let metrics = cp.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "sidestream_control_plane_rejections_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sidestream_control_plane_unknown_keys"),
        Some(1.0),
        "{metrics}"
    );
    let after = cp.snapshot().await.unwrap();
    assert_eq!(
        after["version"], before["version"],
        "the snapshot must not change"
    );
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(10));

    let out = sidestreamctl(&etcd.endpoint(), &cp.admin_base(), &["status"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("v1/topics/ticker at revision {bad_revision}")),
        "{stdout}"
    );
    assert!(stdout.contains("Rejections: 1 total"), "{stdout}");

    // A deleted key removes the item (and its rejection).
    etcd.delete(TOPIC_KEY).unwrap();
    assert_eventually!(WAIT, "topic removed", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await?.is_none(), "still there");
        let r = cp.json("/v1/rejections").await?;
        anyhow::ensure!(
            r["active"].as_array().unwrap().is_empty(),
            "rejection still active: {r}"
        );
        Ok(())
    });
}

/// A control plane that starts with no snapshot cache while a key's current
/// value is invalid has no last good value in memory: it serves the key's most
/// recent valid value from etcd's history instead of dropping the key, and
/// still lists the rejection, naming the revision it serves.
#[tokio::test]
async fn a_fresh_start_serves_the_last_valid_value_from_etcd_history() {
    let dir = run_dir("cp-history").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    let good_revision = etcd.put(TOPIC_KEY, &topic(10)).unwrap();
    // Unrelated writes in between, and two invalid versions on top.
    etcd.put("/sidestream/v1/topics/news", &topic(3)).unwrap();
    etcd.put(TOPIC_KEY, r#"{"historySize": -1}"#).unwrap();
    let bad_revision = etcd
        .put(
            TOPIC_KEY,
            r#"{"historySize": 2000000, "maxMessageBytes": 0}"#,
        )
        .unwrap();
    // A key created invalid has no earlier value: it stays out.
    let fresh_bad_revision = etcd
        .put("/sidestream/v1/topics/broken", r#"{"historySize": -5}"#)
        .unwrap();

    let cp = ControlPlane::start_without_cache(&dir, &etcd)
        .await
        .unwrap();
    let snapshot = cp.snapshot().await.unwrap();
    assert_eq!(
        snapshot["snapshot"]["topics"]["ticker"]["historySize"], 10,
        "the last valid value is served: {snapshot}"
    );
    assert_eq!(snapshot["snapshot"]["topics"]["news"]["historySize"], 3);
    assert!(
        snapshot["snapshot"]["topics"].get("broken").is_none(),
        "{snapshot}"
    );

    let rejections = cp.json("/v1/rejections").await.unwrap();
    let active = rejections["active"].as_array().unwrap();
    assert_eq!(active.len(), 2, "{rejections}");
    let ticker = active
        .iter()
        .find(|r| r["key"] == "v1/topics/ticker")
        .unwrap_or_else(|| panic!("ticker rejection listed: {rejections}"));
    assert_eq!(ticker["revision"], bad_revision);
    assert_eq!(ticker["servingRevision"], good_revision);
    assert_eq!(ticker["servingFromHistory"], true);
    let reason = ticker["reason"].as_str().unwrap();
    assert!(reason.contains("maxMessageBytes"), "{reason}");
    let broken = active
        .iter()
        .find(|r| r["key"] == "v1/topics/broken")
        .unwrap_or_else(|| panic!("broken rejection listed: {rejections}"));
    assert_eq!(broken["revision"], fresh_bad_revision);
    assert!(broken["servingRevision"].is_null(), "{rejections}");
    assert_eq!(rejections["total"], 2);
    let metrics = cp.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "sidestream_control_plane_rejections_total"),
        Some(2.0),
        "{metrics}"
    );

    // A valid write takes over from the recovered value.
    etcd.put(TOPIC_KEY, &topic(11)).unwrap();
    assert_eventually!(WAIT, "new value served, rejection cleared", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(11), "not yet");
        let r = cp.json("/v1/rejections").await?;
        anyhow::ensure!(
            r["active"].as_array().unwrap().len() == 1,
            "ticker rejection still active: {r}"
        );
        Ok(())
    });
}

#[tokio::test]
async fn grpc_client_acks_sees_updates_within_milliseconds_and_nacked_versions_are_not_resent() {
    let dir = run_dir("cp-grpc").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(10)).unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();

    let mut client = ConfigClient::connect(&cp.grpc(), "push-1", &["topics"], "")
        .await
        .unwrap();
    let first = client.next(WAIT).await.unwrap();
    assert_eq!(snapshot_json(&first)["topics"]["ticker"]["historySize"], 10);
    let (revision, hash) = first.version_info.split_once('-').unwrap();
    assert_eq!(revision.parse::<i64>().unwrap(), first.revision);
    assert_eq!(hash.len(), 16);
    assert_eq!(
        first.content_hash,
        sidestream_control_plane::snapshot::content_hash(&first.snapshot_json)
    );
    client.ack(&first).await.unwrap();
    assert_eventually!(WAIT, "ACK recorded", async {
        let clients = cp.json("/v1/clients").await?;
        anyhow::ensure!(
            clients[0]["ackedVersion"] == first.version_info.as_str(),
            "{clients}"
        );
        anyhow::ensure!(clients[0]["nodeId"] == "push-1", "{clients}");
        Ok(())
    });

    // Propagation: etcd put → response on the stream.
    let mut worst = Duration::ZERO;
    let mut last = first.clone();
    for size in 11..16 {
        etcd.put(TOPIC_KEY, &topic(size)).unwrap();
        let put_done = Instant::now();
        let response = client.next(Duration::from_secs(5)).await.unwrap();
        worst = worst.max(put_done.elapsed());
        assert_eq!(
            snapshot_json(&response)["topics"]["ticker"]["historySize"],
            size
        );
        client.ack(&response).await.unwrap();
        last = response;
    }
    eprintln!("slowest etcd put → config response: {worst:?}");
    assert!(
        worst < Duration::from_millis(250),
        "propagation took {worst:?}"
    );
    let metrics = assert_eventually!(WAIT, "every ACK counted", async {
        let m = cp.metrics().await?;
        let acks = metric(&m, "sidestream_control_plane_acks_total");
        anyhow::ensure!(acks == Some(6.0), "acks {acks:?}");
        Ok(m)
    });
    // Convergence is the 5 propagated changes; the ACK of the snapshot the
    // client got on connecting measures that snapshot's age, not propagation.
    assert_eq!(
        metric(
            &metrics,
            "sidestream_control_plane_convergence_seconds_count{node=\"push-1\"}",
        ),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sidestream_control_plane_connected_clients"),
        Some(1.0)
    );
    // A client connecting now (an Envoy restart) gets the current snapshot and
    // ACKs it: counted as an ACK, no convergence sample, no convergence time.
    let mut late = ConfigClient::connect(&cp.grpc(), "push-late", &["topics"], "")
        .await
        .unwrap();
    let initial = late.next(WAIT).await.unwrap();
    assert_eq!(initial.version_info, last.version_info);
    late.ack(&initial).await.unwrap();
    let metrics = assert_eventually!(WAIT, "the late client's ACK counted", async {
        let m = cp.metrics().await?;
        let acks = metric(&m, "sidestream_control_plane_acks_total");
        anyhow::ensure!(acks == Some(7.0), "acks {acks:?}");
        Ok(m)
    });
    assert_eq!(
        metric(
            &metrics,
            "sidestream_control_plane_convergence_seconds_count{node=\"push-late\"}",
        ),
        None,
        "{metrics}"
    );
    let clients = cp.json("/v1/clients").await.unwrap();
    let late_info = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["nodeId"] == "push-late")
        .cloned()
        .unwrap();
    assert_eq!(late_info["ackedVersion"], last.version_info.as_str());
    assert_eq!(late_info["lastConvergenceMillis"], Value::Null, "{clients}");
    drop(late);

    // NACK: the version is not sent again to this client, even after a reconnect.
    etcd.put(TOPIC_KEY, &topic(99)).unwrap();
    let bad = client.next(Duration::from_secs(5)).await.unwrap();
    client
        .nack(&bad, &last.version_info, "cannot apply: test says no")
        .await
        .unwrap();
    assert_eventually!(WAIT, "NACK recorded", async {
        let clients = cp.json("/v1/clients").await?;
        anyhow::ensure!(
            clients[0]["lastNack"]["version"] == bad.version_info.as_str(),
            "{clients}"
        );
        anyhow::ensure!(
            clients[0]["ackedVersion"] == last.version_info.as_str(),
            "{clients}"
        );
        Ok(())
    });
    drop(client);
    let mut client = ConfigClient::connect(&cp.grpc(), "push-1", &["topics"], &last.version_info)
        .await
        .unwrap();
    let resent = client.next(Duration::from_millis(700)).await;
    assert!(
        resent.is_err(),
        "a NACKed version was sent again: {resent:?}"
    );
    // Another client gets it; and a new version reaches the first client.
    let mut other = ConfigClient::connect(&cp.grpc(), "push-2", &[], "")
        .await
        .unwrap();
    assert_eq!(
        other.next(WAIT).await.unwrap().version_info,
        bad.version_info
    );
    etcd.put(TOPIC_KEY, &topic(20)).unwrap();
    let next = client.next(Duration::from_secs(5)).await.unwrap();
    assert_ne!(next.version_info, bad.version_info);
    assert_eq!(snapshot_json(&next)["topics"]["ticker"]["historySize"], 20);
    let out = sidestreamctl(&etcd.endpoint(), &cp.admin_base(), &["status"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("last NACK") && stdout.contains("test says no"),
        "{stdout}"
    );
}

#[tokio::test]
async fn etcd_killed_and_restarted_the_control_plane_resumes_without_losing_updates() {
    let dir = run_dir("cp-etcd-restart").unwrap();
    let mut etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(1)).unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(1));
    assert_eventually!(WAIT, "the watch is established", async {
        let m = cp.metrics().await?;
        let connected = metric(&m, "sidestream_control_plane_etcd_connected");
        anyhow::ensure!(connected == Some(1.0), "etcd_connected {connected:?}");
        Ok(())
    });

    etcd.kill();
    assert_eventually!(WAIT, "the control plane notices etcd is gone", async {
        let m = cp.metrics().await?;
        let n = metric(&m, "sidestream_control_plane_etcd_reconnects_total").unwrap_or(0.0);
        anyhow::ensure!(n >= 1.0, "no reconnect yet");
        let connected = metric(&m, "sidestream_control_plane_etcd_connected");
        anyhow::ensure!(connected == Some(0.0), "etcd_connected {connected:?}");
        Ok(())
    });
    // Still serving the last good snapshot, and still ready (by definition:
    // ready once etcd was read fully); etcd_connected is what says it is lost.
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(1));
    let readyz = reqwest::get(cp.admin("/readyz")).await.unwrap();
    assert_eq!(readyz.status().as_u16(), 200);
    let m = cp.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "sidestream_control_plane_etcd_connected"),
        Some(0.0),
        "{m}"
    );
    etcd.restart().await.unwrap();
    // Written as soon as etcd is back, before the control plane reconnects.
    etcd.put(TOPIC_KEY, &topic(2)).unwrap();
    etcd.put("/sidestream/v1/topics/news", &topic(3)).unwrap();
    assert_eventually!(WAIT, "both updates applied", async {
        anyhow::ensure!(
            topic_history(&cp, "ticker").await? == Some(2),
            "ticker not updated"
        );
        anyhow::ensure!(topic_history(&cp, "news").await? == Some(3), "news missing");
        Ok(())
    });
    assert_eventually!(WAIT, "the watch is established again", async {
        let m = cp.metrics().await?;
        let connected = metric(&m, "sidestream_control_plane_etcd_connected");
        anyhow::ensure!(connected == Some(1.0), "etcd_connected {connected:?}");
        Ok(())
    });
    let metrics = cp.metrics().await.unwrap();
    // Resumed by watching from the next revision: no full re-read needed.
    assert_eq!(
        metric(
            &metrics,
            "sidestream_control_plane_resyncs_total{reason=\"compacted\"}"
        ),
        None,
        "{metrics}"
    );
}

#[tokio::test]
async fn compaction_past_the_watched_revision_forces_a_full_resync_without_losing_updates() {
    let dir = run_dir("cp-compact").unwrap();
    let mut etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(1)).unwrap();
    etcd.put("/sidestream/v1/topics/old", &topic(5)).unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    assert_eq!(topic_history(&cp, "old").await.unwrap(), Some(5));

    // Freeze the control plane, break its watch, change and compact behind its back.
    cp.proc.signal(19).unwrap(); // SIGSTOP
    etcd.restart().await.unwrap();
    etcd.put(TOPIC_KEY, &topic(2)).unwrap();
    etcd.delete("/sidestream/v1/topics/old").unwrap();
    let revision = etcd.put("/sidestream/v1/topics/new", &topic(7)).unwrap();
    etcd.put("/unrelated/key", "x").unwrap();
    etcd.compact(revision).unwrap();
    cp.proc.signal(18).unwrap(); // SIGCONT

    assert_eventually!(WAIT, "every update applied after the resync", async {
        anyhow::ensure!(
            topic_history(&cp, "ticker").await? == Some(2),
            "ticker not updated"
        );
        anyhow::ensure!(
            topic_history(&cp, "old").await?.is_none(),
            "deleted topic still there"
        );
        anyhow::ensure!(
            topic_history(&cp, "new").await? == Some(7),
            "new topic missing"
        );
        Ok(())
    });
    let metrics = cp.metrics().await.unwrap();
    assert!(
        metric(
            &metrics,
            "sidestream_control_plane_resyncs_total{reason=\"compacted\"}"
        ) >= Some(1.0),
        "{metrics}\n{}",
        cp.proc.log()
    );
    // And it keeps watching after the resync.
    etcd.put(TOPIC_KEY, &topic(3)).unwrap();
    assert_eventually!(WAIT, "watching again", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(3), "not yet");
        Ok(())
    });
}

#[tokio::test]
async fn etcd_wiped_revision_goes_backwards_and_a_full_resync_follows() {
    let dir = run_dir("cp-wipe").unwrap();
    let mut etcd = Etcd::start(&dir).await.unwrap();
    for size in 1..6 {
        etcd.put(TOPIC_KEY, &topic(size)).unwrap();
    }
    etcd.put("/sidestream/v1/topics/gone", &topic(1)).unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(5));

    etcd.wipe_and_restart().await.unwrap();
    etcd.put(TOPIC_KEY, &topic(9)).unwrap();
    assert_eventually!(WAIT, "the new etcd's content served", async {
        anyhow::ensure!(
            topic_history(&cp, "ticker").await? == Some(9),
            "ticker not 9"
        );
        anyhow::ensure!(
            topic_history(&cp, "gone").await?.is_none(),
            "old key still served"
        );
        Ok(())
    });
    let metrics = cp.metrics().await.unwrap();
    assert!(
        metric(
            &metrics,
            "sidestream_control_plane_resyncs_total{reason=\"revision_went_backwards\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    // Watching goes on from the new etcd's revisions.
    etcd.put(TOPIC_KEY, &topic(10)).unwrap();
    assert_eventually!(WAIT, "watching the new etcd", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(10), "not yet");
        Ok(())
    });
}

#[tokio::test]
async fn racing_applies_one_wins_and_the_other_is_told_its_base_is_stale() {
    let dir = run_dir("cp-race").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(1)).unwrap();
    let base = etcd.revision().unwrap();
    let a = dir.join("a.yaml");
    let b = dir.join("b.yaml");
    std::fs::write(
        &a,
        "kind: TopicSettings\nname: ticker\nspec: {historySize: 100}\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "kind: TopicSettings\nname: ticker\nspec: {historySize: 200}\n",
    )
    .unwrap();

    // Both users read the key at the same revision; A writes first.
    let base = base.to_string();
    let out = sidestreamctl(
        &etcd.endpoint(),
        "",
        &["apply", a.to_str().unwrap(), "--base-revision", &base],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("-   \"historySize\": 1") || stdout.contains("- "),
        "diff shown: {stdout}"
    );
    let winner: Value = etcd.etcdctl(&["get", TOPIC_KEY]).unwrap();
    let won_at = winner["kvs"][0]["mod_revision"].as_i64().unwrap();
    let out = sidestreamctl(
        &etcd.endpoint(),
        "",
        &["apply", b.to_str().unwrap(), "--base-revision", &base],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "base is stale: key {TOPIC_KEY} changed at revision {won_at} since you read it"
        )),
        "{stderr}"
    );
    let now: Value = etcd.etcdctl(&["get", TOPIC_KEY]).unwrap();
    assert_eq!(
        now["kvs"][0]["mod_revision"].as_i64(),
        Some(won_at),
        "the loser wrote nothing"
    );

    // The same race through the library: two plans from one read, two commits.
    let store = Store::connect(EtcdSettings::plain(vec![etcd.endpoint()], PREFIX))
        .await
        .unwrap();
    let doc = |size: u32| sidestream_core::config::Document {
        kind: sidestream_core::config::Kind::Topic,
        name: "ticker".into(),
        spec: serde_json::json!({"historySize": size}),
    };
    let first = store.plan(&[doc(300)], None).await.unwrap();
    let second = store.plan(&[doc(400)], None).await.unwrap();
    let revision = store.commit(&first).await.unwrap();
    match store.commit(&second).await {
        Err(StoreError::Stale {
            key,
            revision: changed,
            ..
        }) => {
            assert_eq!(key, TOPIC_KEY);
            assert_eq!(changed, revision);
        }
        other => panic!("expected a stale base, got {other:?}"),
    }
}

#[tokio::test]
async fn apply_get_history_and_rollback_through_sidestreamctl() {
    let dir = run_dir("cp-ctl").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    let cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    let examples = workspace_root().join("examples/config");
    let ctl = |args: &[&str]| sidestreamctl(&etcd.endpoint(), &cp.admin_base(), args).unwrap();

    let out = ctl(&["apply", examples.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("+ ReleasePolicy push (create"),
        "{}",
        text(&out)
    );
    assert_eq!(
        ctl(&["get", "-o", "json"]).stdout,
        b"[]\n",
        "dry run wrote nothing"
    );
    let out = ctl(&["apply", examples.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eventually!(WAIT, "examples in the snapshot", async {
        let s = cp.snapshot().await?;
        anyhow::ensure!(
            s["snapshot"]["releases"]["push"]["rules"]
                .as_array()
                .map(Vec::len)
                == Some(3),
            "{s}"
        );
        anyhow::ensure!(
            s["snapshot"]["streamLimits"]["tenants"]["maxConcurrent"] == 20,
            "{s}"
        );
        anyhow::ensure!(
            s["snapshot"]["topics"]["ticker"]["historySize"] == 1000,
            "{s}"
        );
        Ok(())
    });
    let listed: Value = serde_json::from_slice(&ctl(&["get", "-o", "json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    let out = ctl(&["apply", examples.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Nothing to change"),
        "{}",
        text(&out)
    );

    // Two more versions of the topic, one of them invalid (written behind sidestreamctl's back).
    let one: Value =
        serde_json::from_slice(&ctl(&["get", "topic", "ticker", "-o", "json"]).stdout).unwrap();
    let first_revision = one[0]["modRevision"].as_i64().unwrap();
    let second_revision = etcd.put(TOPIC_KEY, &topic(5)).unwrap();
    let invalid_revision = etcd.put(TOPIC_KEY, r#"{"historySize": "lots"}"#).unwrap();
    let history: Value =
        serde_json::from_slice(&ctl(&["history", "topic", "ticker", "-o", "json"]).stdout).unwrap();
    let revisions: Vec<i64> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["modRevision"].as_i64().unwrap())
        .collect();
    assert_eq!(
        revisions,
        vec![invalid_revision, second_revision, first_revision],
        "{history}"
    );
    assert_eq!(history["entries"][0]["valid"], false);

    let out = ctl(&[
        "rollback",
        "topic",
        "ticker",
        "--to-revision",
        &invalid_revision.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{}",
        text(&out)
    );
    let out = ctl(&[
        "rollback",
        "topic",
        "ticker",
        "--to-revision",
        &second_revision.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eventually!(WAIT, "rolled back", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(5), "not yet");
        Ok(())
    });
    let out = ctl(&["delete", "topic", "ticker"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eventually!(WAIT, "deleted", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await?.is_none(), "still there");
        Ok(())
    });
    let out = ctl(&["schema", "release"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema.to_string().contains("defaultGroup"), "{schema}");
}

#[tokio::test]
async fn control_plane_restart_reconverges_clients_and_serves_its_cache_without_etcd() {
    let dir = run_dir("cp-restart").unwrap();
    let mut etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(42)).unwrap();
    let mut cp = ControlPlane::start(&dir, &etcd).await.unwrap();
    let mut client = ConfigClient::connect(&cp.grpc(), "envoy-1", &["topics"], "")
        .await
        .unwrap();
    let first = client.next(WAIT).await.unwrap();
    client.ack(&first).await.unwrap();

    // Restart with etcd down: the cached snapshot is served (not ready).
    etcd.kill();
    cp.restart_no_wait().unwrap();
    assert!(
        client.next(Duration::from_secs(5)).await.is_err(),
        "the old stream ends"
    );
    let cached = assert_eventually!(WAIT, "cached snapshot served", async {
        let s = cp.snapshot().await?;
        Ok(s)
    });
    assert_eq!(cached["version"], first.version_info.as_str());
    assert_eq!(cached["ready"], false);
    let readyz = reqwest::get(cp.admin("/readyz")).await.unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let mut fresh = ConfigClient::connect(&cp.grpc(), "envoy-2", &["topics"], "")
        .await
        .unwrap();
    assert_eq!(
        fresh.next(WAIT).await.unwrap().version_info,
        first.version_info
    );

    // The first client reconnects running the version it had: nothing to resend.
    let mut client = assert_eventually!(WAIT, "client reconnects", async {
        ConfigClient::connect(&cp.grpc(), "envoy-1", &["topics"], &first.version_info).await
    });
    etcd.restart().await.unwrap();
    cp.wait_ready().await.unwrap();
    etcd.put(TOPIC_KEY, &topic(43)).unwrap();
    let update = client.next(WAIT).await.unwrap();
    assert_eq!(
        snapshot_json(&update)["topics"]["ticker"]["historySize"],
        43
    );
    client.ack(&update).await.unwrap();
    assert_eventually!(WAIT, "reconverged", async {
        let clients = cp.json("/v1/clients").await?;
        let acked = clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["nodeId"] == "envoy-1")
            .map(|c| c["ackedVersion"].clone());
        anyhow::ensure!(
            acked == Some(Value::from(update.version_info.clone())),
            "{clients}"
        );
        Ok(())
    });
}

#[tokio::test]
async fn with_etcd_auth_expired_and_lost_tokens_are_replaced() {
    let dir = run_dir("cp-auth").unwrap();
    // Tokens live one second; a restart of etcd forgets every token.
    let mut etcd = Etcd::start_with(&dir, &["--auth-token", "simple", "--auth-token-ttl", "1"])
        .await
        .unwrap();
    etcd.enable_auth("s3cret").unwrap();
    etcd.put(TOPIC_KEY, &topic(1)).unwrap();
    let cp = ControlPlane::start_with(
        &dir,
        &etcd,
        &["--etcd-user", "root", "--etcd-password", "s3cret"],
    )
    .await
    .unwrap();
    assert_eq!(topic_history(&cp, "ticker").await.unwrap(), Some(1));

    // Let the token expire (the point of this test, so a fixed wait), then change the key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.put(TOPIC_KEY, &topic(2)).unwrap();
    assert_eventually!(WAIT, "update after the token expired", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(2), "not yet");
        Ok(())
    });
    // etcd restarted: the old token is unknown to it; the control plane logs in again.
    etcd.restart().await.unwrap();
    etcd.put(TOPIC_KEY, &topic(3)).unwrap();
    assert_eventually!(WAIT, "update after etcd forgot the token", async {
        anyhow::ensure!(topic_history(&cp, "ticker").await? == Some(3), "not yet");
        Ok(())
    });
    // Without credentials nothing is read.
    let out = sidestreamctl(&etcd.endpoint(), "", &["get"]).unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

async fn tls_stream(
    grpc_port: u16,
    dir: &Path,
    with_client_cert: bool,
) -> anyhow::Result<ConfigResponse> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let read = |name: &str| std::fs::read(dir.join(name));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(read("client.pem")?, read("client.key")?));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{grpc_port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(ConfigRequest {
            node: Some(Node {
                id: "tls-client".into(),
                ..Node::default()
            }),
            ..ConfigRequest::default()
        })
        .await?;
    let mut responses = client
        .stream_config(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.message()).await??;
    response.ok_or_else(|| anyhow::anyhow!("stream ended"))
}

#[tokio::test]
async fn grpc_over_tls_requires_a_client_certificate_signed_by_the_client_ca() {
    let dir = run_dir("cp-tls").unwrap();
    make_certificates(&dir).unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    etcd.put(TOPIC_KEY, &topic(8)).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    let cp = ControlPlane::start_with(
        &dir,
        &etcd,
        &[
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
            "--client-ca",
            &path("ca.pem"),
        ],
    )
    .await
    .unwrap();
    let response = tls_stream(cp.grpc_port, &dir, true).await.unwrap();
    assert_eq!(
        snapshot_json(&response)["topics"]["ticker"]["historySize"],
        8
    );
    let refused = tls_stream(cp.grpc_port, &dir, false).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served: {refused:?}"
    );
    // Plain text is refused too.
    let plain = ConfigClient::connect(&cp.grpc(), "plain", &[], "").await;
    let plain = match plain {
        Ok(mut client) => client.next(Duration::from_secs(3)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(plain.is_err(), "a plain-text client was served");
}

#[tokio::test]
async fn a_passing_tests_etcd_data_goes_with_its_member_and_the_log_stays() {
    let dir = run_dir("etcd-cleanup").unwrap();
    let etcd = Etcd::start(&dir).await.unwrap();
    assert!(
        dir.join("etcd-data").is_dir(),
        "etcd writes its data in the run folder"
    );
    drop(etcd);
    assert!(
        !dir.join("etcd-data").exists(),
        "the data is deleted when the member is dropped"
    );
    assert!(
        dir.join("etcd-1.log").is_file(),
        "the log stays for reading"
    );
}
