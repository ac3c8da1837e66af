//! Every Envoy bootstrap in envoy-config/ passes `envoy --mode validate`.
//!
//! The files name the filter by its path relative to the repository root
//! (`target/wasm32-wasip1/wasm-release/sidestream_filter.wasm`), which Envoy
//! checks exists; the test validates each file as written, with only that path
//! pointed at the module this build produced (`make filter`, honouring
//! CARGO_TARGET_DIR), from the repository root so the other relative paths
//! (the demo page) resolve as they do for `make run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;
use std::process::Command;

const MODULE_PATH: &str = "target/wasm32-wasip1/wasm-release/sidestream_filter.wasm";

fn envoy_configs() -> Vec<PathBuf> {
    let dir = sidestream_tests::workspace_root().join("envoy-config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("envoy-config/ exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
        })
        .collect();
    files.sort();
    files
}

fn validate(config: &str, dir: &std::path::Path, label: &str) -> (bool, String) {
    let rendered = dir.join(format!("{label}.yaml"));
    std::fs::write(&rendered, config).expect("write rendered config");
    let output = Command::new("envoy")
        .current_dir(sidestream_tests::workspace_root())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&rendered)
        .output()
        .unwrap_or_else(|e| panic!("cannot run envoy ({e}); run scripts/install-deps.sh test"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && text.contains(" OK"), text)
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let module = sidestream_tests::filter_wasm().expect("the filter is built (make filter)");
    let files = envoy_configs();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for expected in ["standalone.yaml", "stack.yaml", "mesh.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "envoy-config/{expected} is missing"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, name) in files.iter().zip(&names) {
        let text = std::fs::read_to_string(file).expect("readable config");
        assert!(
            text.contains(MODULE_PATH),
            "{name}: loads the filter from {MODULE_PATH} (relative to the repository root)"
        );
        let config = text.replace(MODULE_PATH, &module.to_string_lossy());
        let (ok, output) = validate(&config, dir.path(), name.trim_end_matches(".yaml"));
        assert!(
            ok,
            "envoy --mode validate rejected envoy-config/{name}:\n{output}"
        );
    }
}

#[test]
fn envoy_validate_rejects_a_broken_config() {
    let module = sidestream_tests::filter_wasm().expect("the filter is built (make filter)");
    let file = sidestream_tests::workspace_root().join("envoy-config/stack.yaml");
    let text = std::fs::read_to_string(file).expect("stack.yaml");
    let broken = text
        .replace(MODULE_PATH, &module.to_string_lossy())
        .replace("cluster: push-canary,", "cluster: push-nowhere,");
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, output) = validate(&broken, dir.path(), "broken");
    assert!(
        !ok,
        "envoy accepted a route to an unknown cluster:\n{output}"
    );
}

#[test]
fn stack_config_has_the_stream_settings() {
    let file = sidestream_tests::workspace_root().join("envoy-config/stack.yaml");
    let text = std::fs::read_to_string(file).expect("stack.yaml");
    let config: serde_json::Value = serde_norway::from_str(&text).expect("stack.yaml is YAML");
    let listener = &config["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);
    assert_eq!(
        config["admin"]["address"]["socket_address"]["port_value"],
        9901
    );
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["codec_type"], "AUTO", "HTTP/1.1 and h2c on one port");
    assert_eq!(hcm["upgrade_configs"][0]["upgrade_type"], "websocket");
    let idle: u64 = hcm["stream_idle_timeout"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .expect("stream_idle_timeout in seconds");
    assert!(
        idle > 60,
        "stream idle timeout {idle}s must be well above the push heartbeat"
    );
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("routes");
    for route in routes.iter().filter(|r| r["route"].is_object()) {
        assert_eq!(
            route["route"]["timeout"], "0s",
            "no route timeout for streams: {route}"
        );
    }
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .expect("http filters")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(
        filters,
        ["sidestream", "envoy.filters.http.router"],
        "nothing buffers or compresses SSE"
    );
    let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
    assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    let bootstrap: serde_json::Value = serde_json::from_str(
        wasm["configuration"]["value"]
            .as_str()
            .expect("plugin configuration"),
    )
    .expect("plugin configuration is JSON");
    let cluster = bootstrap["controlPlane"]["cluster"]
        .as_str()
        .expect("control plane cluster");
    // The filter accepts it: the same parser and validation its on_configure runs.
    let validated = sidestream_core::config::FilterBootstrap::from_json(
        wasm["configuration"]["value"]
            .as_str()
            .expect("plugin configuration")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("stack.yaml's plugin configuration is not a valid bootstrap: {e}"));
    assert_eq!(
        validated.control_plane.expect("control plane").cluster,
        cluster
    );
    let clusters = config["static_resources"]["clusters"]
        .as_array()
        .expect("clusters");
    let cp = clusters
        .iter()
        .find(|c| c["name"] == cluster)
        .expect("the filter's control-plane cluster exists");
    assert!(
        !cp["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_null(),
        "the control-plane cluster speaks HTTP/2 (gRPC)"
    );
    for (name, port) in [
        ("sidestream-control-plane", 18000),
        ("push-stable", 18081),
        ("push-canary", 18082),
        ("push-stable-grpc", 18091),
        ("push-canary-grpc", 18092),
    ] {
        let c = clusters
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("cluster {name}"));
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            port,
            "cluster {name}"
        );
    }
}

fn yaml(name: &str) -> serde_json::Value {
    let file = sidestream_tests::workspace_root()
        .join("envoy-config")
        .join(name);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"))
}

fn plugin_config(config: &serde_json::Value) -> &str {
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("plugin configuration")
}

/// mesh.yaml is standalone.yaml with `tenant-streams` mesh-scoped and a
/// cluster for the limiter at 127.0.0.1:18300: the same listener, admin,
/// upstreams and embedded policies otherwise.
#[test]
fn mesh_config_is_standalone_with_a_mesh_scoped_tenant_policy() {
    use sidestream_core::config::{FilterBootstrap, LimitScope, MeshFallback};
    let standalone = yaml("standalone.yaml");
    let mesh = yaml("mesh.yaml");
    assert_eq!(
        mesh["admin"]["address"]["socket_address"]["port_value"],
        9901
    );
    let listener = &mesh["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);

    let theirs = FilterBootstrap::from_json(plugin_config(&standalone).as_bytes())
        .expect("standalone.yaml's bootstrap");
    let ours = FilterBootstrap::from_json(plugin_config(&mesh).as_bytes()).unwrap_or_else(|e| {
        panic!("mesh.yaml's plugin configuration is not a valid bootstrap: {e}")
    });
    let limiter = ours
        .limiter
        .clone()
        .expect("mesh.yaml names the limiter")
        .cluster;
    assert!(
        ours.control_plane.is_none(),
        "no control plane, as standalone"
    );
    assert_eq!(ours.defaults.trace, theirs.defaults.trace);
    assert_eq!(ours.defaults.releases, theirs.defaults.releases);
    assert_eq!(
        ours.defaults.stream_limits.len(),
        theirs.defaults.stream_limits.len()
    );
    for (mine, standalone) in ours
        .defaults
        .stream_limits
        .iter()
        .zip(&theirs.defaults.stream_limits)
    {
        let mut as_envoy = mine.clone();
        if mine.name == "tenant-streams" {
            assert_eq!(mine.scope(), LimitScope::Mesh);
            let settings = mine.mesh.expect("mesh settings");
            assert_eq!(settings.fallback, MeshFallback::Local);
            assert_eq!(settings.timeout, std::time::Duration::from_millis(50));
            as_envoy.mesh = None;
        }
        assert_eq!(
            &as_envoy, standalone,
            "policy {} differs beyond its scope",
            mine.name
        );
    }
    assert!(
        ours.defaults
            .stream_limits
            .iter()
            .any(|p| p.name == "tenant-streams"),
        "the tenant-streams policy"
    );

    // The listener is standalone's apart from the plugin configuration.
    let without_config = |config: &serde_json::Value| {
        let mut listener = config["static_resources"]["listeners"][0].clone();
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
            ["typed_config"]["config"]["configuration"] = serde_json::Value::Null;
        listener
    };
    assert_eq!(without_config(&mesh), without_config(&standalone));

    // Standalone's clusters, plus the limiter's (HTTP/2, 18300).
    let clusters = mesh["static_resources"]["clusters"]
        .as_array()
        .expect("clusters");
    let standalone_clusters = standalone["static_resources"]["clusters"]
        .as_array()
        .expect("clusters");
    assert_eq!(clusters.len(), standalone_clusters.len() + 1);
    for cluster in standalone_clusters {
        assert!(clusters.contains(cluster), "{cluster} kept as is");
    }
    let limiter_cluster = clusters
        .iter()
        .find(|c| c["name"] == limiter.as_str())
        .expect("the filter's limiter cluster exists");
    assert!(
        !limiter_cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_null(),
        "the limiter cluster speaks HTTP/2 (gRPC)"
    );
    let address = &limiter_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        ["endpoint"]["address"]["socket_address"];
    assert_eq!(address["address"], "127.0.0.1");
    assert_eq!(address["port_value"], 18300);
}
