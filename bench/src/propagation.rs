//! Control-plane propagation: the time from an etcd put to every filter
//! instance having applied it.
//!
//! Each update writes a release policy with a new percentage through etcd's
//! JSON gateway (`/v3/kv/put`), notes the revision etcd assigned, and polls
//! until every data-plane client shows an applied version at or beyond that
//! revision: by default the control plane's ACK record (`/v1/clients`: the
//! version each filter instance acknowledged after applying it), or an
//! Envoy stat (`--observe envoy`, a gauge holding the applied revision).
//! The clock starts before the put, so etcd's own commit is included.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::histogram::LatencySummary;
use crate::http1::{parse_url, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Observe {
    /// The control plane's `/v1/clients` (acknowledged versions).
    Clients,
    /// An Envoy gauge (`--envoy-stat`) on Envoy's `/stats/prometheus`.
    Envoy,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PropagationArgs {
    #[arg(long, default_value = "http://127.0.0.1:28379")]
    pub etcd: String,
    #[arg(long, default_value = "/sidestream")]
    pub prefix: String,
    /// Control plane admin base URL.
    #[arg(long, default_value = "http://127.0.0.1:28301")]
    pub admin: String,
    #[arg(long, value_enum, default_value_t = Observe::Clients)]
    pub observe: Observe,
    /// Envoy admin base URL (for `--observe envoy`).
    #[arg(long, default_value = "http://127.0.0.1:28011")]
    pub envoy_admin: String,
    /// Prometheus name of the gauge holding the applied etcd revision.
    #[arg(long, default_value = "sidestream_config_version")]
    pub envoy_stat: String,
    #[arg(long, default_value_t = 250)]
    pub updates: usize,
    /// Pause between one update being applied everywhere and the next put.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Clients that must have applied each update; 0 = every client known
    /// when the run starts.
    #[arg(long, default_value_t = 0)]
    pub expect_clients: usize,
    /// Give up on one update after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Release policy name written (key `<prefix>/v1/releases/<name>`).
    #[arg(long, default_value = "bench")]
    pub policy: String,
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PropagationResult {
    pub label: String,
    pub observe: Observe,
    pub updates: usize,
    pub completed: usize,
    pub timeouts: usize,
    pub clients: usize,
    pub latency: LatencySummary,
    /// Every sample in milliseconds, in order.
    pub samples_ms: Vec<f64>,
}

pub async fn run(args: PropagationArgs) -> anyhow::Result<PropagationResult> {
    let (etcd_addr, _) = parse_url(&args.etcd)?;
    let mut etcd = Connection::new(etcd_addr);
    let mut observer = Observer::new(&args)?;
    let start_clients = observer.applied_revisions().await?.len();
    let clients = if args.expect_clients > 0 {
        args.expect_clients
    } else {
        start_clients
    };
    anyhow::ensure!(
        clients > 0,
        "no data-plane client is connected to the control plane"
    );
    eprintln!("propagation: {clients} client(s)");
    let key = format!(
        "{}/v1/releases/{}",
        args.prefix.trim_end_matches('/'),
        args.policy
    );
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut samples = Vec::new();
    let mut timeouts = 0;
    for i in 0..args.updates {
        let value = release_policy(i);
        let began = Instant::now();
        let revision = etcd_put(&mut etcd, &key, &value).await?;
        let deadline = began + Duration::from_millis(args.timeout_ms);
        let applied = loop {
            let revisions = observer.applied_revisions().await?;
            if revisions.len() >= clients
                && revisions.iter().filter(|r| **r >= revision).count() >= clients
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let elapsed = began.elapsed();
        if applied {
            let us = u64::try_from(elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            hist.saturating_record(us);
            samples.push(us as f64 / 1000.0);
        } else {
            timeouts += 1;
            eprintln!(
                "propagation: update {i} (revision {revision}) not applied everywhere within {} ms",
                args.timeout_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    Ok(PropagationResult {
        label: args.label.clone(),
        observe: args.observe,
        updates: args.updates,
        completed: samples.len(),
        timeouts,
        clients,
        latency: LatencySummary::from_hdr(&hist),
        samples_ms: samples,
    })
}

/// A valid release policy whose canary percentage changes with `i`, so every
/// update is a real change.
fn release_policy(i: usize) -> String {
    serde_json::json!({
        "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
        "priority": 0,
        "tagHeader": "x-sidestream-group",
        "groups": ["stable", "canary"],
        "defaultGroup": "stable",
        "trustClientTag": false,
        "rules": [
            { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
            { "type": "percent", "percent": i % 101, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" }
        ]
    })
    .to_string()
}

async fn etcd_put(conn: &mut Connection, key: &str, value: &str) -> anyhow::Result<u64> {
    let body =
        serde_json::json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) });
    let r = conn
        .request(
            "POST",
            "/v3/kv/put",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await
        .context("etcd put")?;
    if r.status != 200 {
        bail!(
            "etcd put answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let v: Value = serde_json::from_slice(&r.body)?;
    revision_of(&v["header"]["revision"]).context("etcd put response has no header.revision")
}

struct Observer {
    observe: Observe,
    conn: Connection,
    path: String,
    stat: String,
}

impl Observer {
    fn new(args: &PropagationArgs) -> anyhow::Result<Observer> {
        let (base, path) = match args.observe {
            Observe::Clients => (&args.admin, "/v1/clients".to_owned()),
            Observe::Envoy => (&args.envoy_admin, "/stats/prometheus".to_owned()),
        };
        let (addr, _) = parse_url(base)?;
        Ok(Observer {
            observe: args.observe,
            conn: Connection::new(addr),
            path,
            stat: args.envoy_stat.clone(),
        })
    }

    /// The etcd revision each client has applied.
    async fn applied_revisions(&mut self) -> anyhow::Result<Vec<u64>> {
        let r = self.conn.request("GET", &self.path, &[], b"").await?;
        if r.status != 200 {
            bail!("GET {} answered {}", self.path, r.status);
        }
        match self.observe {
            Observe::Clients => {
                let v: Value =
                    serde_json::from_slice(&r.body).context("/v1/clients is not JSON")?;
                Ok(acked_revisions(&v))
            }
            Observe::Envoy => Ok(prometheus_values(
                &String::from_utf8_lossy(&r.body),
                &self.stat,
            )),
        }
    }
}

/// Finds the client list (the document itself or its first array field) and
/// each client's acknowledged revision (a field whose name mentions "ack").
fn acked_revisions(v: &Value) -> Vec<u64> {
    let list = match v {
        Value::Array(a) => Some(a),
        Value::Object(o) => o
            .get("clients")
            .and_then(Value::as_array)
            .or_else(|| o.values().find_map(Value::as_array)),
        _ => None,
    };
    let Some(list) = list else {
        return Vec::new();
    };
    list.iter()
        .map(|client| {
            client
                .as_object()
                .and_then(|o| {
                    o.iter()
                        .filter(|(k, _)| k.to_ascii_lowercase().contains("ack"))
                        .find_map(|(_, v)| revision_of(v))
                })
                .unwrap_or(0)
        })
        .collect()
}

/// A revision from a number, a string starting with digits ("1234-ab12"),
/// or an object with a `revision` field.
fn revision_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let digits: String = s
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        }
        Value::Object(o) => o.get("revision").and_then(revision_of),
        _ => None,
    }
}

fn prometheus_values(text: &str, name: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn revisions_from_various_shapes() {
        let v = serde_json::json!({ "clients": [
            { "nodeId": "a", "ackedVersion": "42-abcdef" },
            { "nodeId": "b", "acked": { "revision": 41 } },
            { "nodeId": "c" }
        ]});
        assert_eq!(acked_revisions(&v), vec![42, 41, 0]);
        assert_eq!(revision_of(&serde_json::json!("r17:beef")), Some(17));
    }

    #[test]
    fn prometheus_gauges() {
        let text = "# TYPE x gauge\nsidestream_config_revision 12\nsidestream_config_revision_other 1\nsidestream_config_revision{worker=\"1\"} 13\n";
        assert_eq!(
            prometheus_values(text, "sidestream_config_revision"),
            vec![12, 13]
        );
    }
}
