//! The filter's OCI image (`make wasm-image`, built by `tools/wasm-image`) as
//! real OCI tools and a real registry see it:
//! - `skopeo` (Debian) reads the OCI archive: an OCI manifest with one
//!   `tar+gzip` layer and the `module.wasm.image/variant: compat` annotation
//!   (Istio's Wasm image format, compat variant), its digest the one the
//!   builder printed; the layer unpacks (with `tar`) to exactly the module, as
//!   `plugin.wasm`; building twice gives the same bytes;
//! - `skopeo copy` pushes it unchanged to `dir:` and to a real registry
//!   (Debian's `docker-registry`, the CNCF distribution registry, on
//!   loopback), and the registry serves it the way Istio's agent fetches it:
//!   the manifest digest the WasmPlugin pins, the last layer an OCI tar+gzip
//!   layer holding `plugin.wasm`;
//! - `scripts/istio-sha.sh` (what `make wasm-image` runs) pins that digest in
//!   the WasmPlugin and `--check` catches an image of another module.
//!
//! Needs the built module (`make filter`), the builder (`cargo build
//! --workspace --bins`), and skopeo and docker-registry (`scripts/install-deps.sh test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sidestream_tests::{
    binary, filter_wasm, free_port, run_dir, wait_http_ok, workspace_root, Proc,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const IMAGE: &str = "registry.example.com/sidestream/sidestream-filter:0.1.0";

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn run_ok(command: &mut Command) -> Vec<u8> {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `sha256:<hex>` of `bytes`, by coreutils' sha256sum (not our code).
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to sha256sum");
    let output = child.wait_with_output().expect("sha256sum output");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    format!(
        "sha256:{}",
        text.split_whitespace().next().expect("a digest")
    )
}

/// Runs the builder; returns the manifest digest it printed.
fn build_image(module: &Path, out: &Path, image: &str) -> String {
    let stdout = run_ok(
        Command::new(binary("sidestream-wasm-image").expect("the builder is built"))
            .arg("--module")
            .arg(module)
            .arg("--out")
            .arg(out)
            .args(["--image", image]),
    );
    let digest = String::from_utf8(stdout).expect("UTF-8").trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "the builder prints the manifest digest, got '{digest}'"
    );
    digest
}

/// skopeo with a policy of our own (accept anything: the images are ours),
/// so the machine's /etc/containers/policy.json does not matter.
fn skopeo(dir: &Path) -> Command {
    let policy = dir.join("policy.json");
    if !policy.exists() {
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("write policy");
    }
    let mut command = Command::new("skopeo");
    command.arg("--policy").arg(policy);
    command
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Unpacks a tar+gzip layer with Debian's tar; returns every file in it
/// (path relative to the layer's root, contents).
fn unpack_layer(layer: &Path, into: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(into).expect("mkdir");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(layer)
            .arg("-C")
            .arg(into),
    );
    let mut files = Vec::new();
    let mut stack = vec![into.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(into)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                files.push((name, std::fs::read(&path).expect("read")));
            }
        }
    }
    files.sort();
    files
}

/// A module other than the filter: the filter plus one custom section.
fn another_module(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(filter_wasm().expect("the filter is built")).expect("read");
    bytes.extend_from_slice(&[0, 2, 1, b'x']);
    let path = dir.join("another.wasm");
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn skopeo_reads_the_archive_as_a_compat_wasm_image() {
    let dir = run_dir("wasm-image-skopeo").unwrap();
    let module_path = filter_wasm().unwrap();
    let module = std::fs::read(&module_path).unwrap();
    let archive = dir.join("sidestream-filter.oci.tar");
    let digest = build_image(&module_path, &archive, IMAGE);

    // Reproducible: a second build is the same, byte for byte.
    let again = dir.join("again.oci.tar");
    assert_eq!(build_image(&module_path, &again, IMAGE), digest);
    assert!(
        std::fs::read(&archive).unwrap() == std::fs::read(&again).unwrap(),
        "two builds of the same module differ"
    );

    let reference = format!("oci-archive:{}", archive.display());
    let raw = run_ok(skopeo(&dir).args(["inspect", "--raw", &reference]));
    assert_eq!(
        sha256(&raw),
        digest,
        "the manifest's digest is what the builder printed"
    );
    let manifest = json(&raw);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        1,
        "the compat variant has exactly one layer: {manifest}"
    );
    assert_eq!(layers[0]["mediaType"], OCI_LAYER);
    let layer_digest = layers[0]["digest"].as_str().unwrap().to_owned();

    let inspect = json(&run_ok(skopeo(&dir).args(["inspect", &reference])));
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Layers"], serde_json::json!([layer_digest]));
    assert_eq!(inspect["Os"], "wasip1");
    assert_eq!(inspect["Architecture"], "wasm");
    // The tag the archive names the image by.
    let tagged = format!("{reference}:0.1.0");
    assert_eq!(
        json(&run_ok(skopeo(&dir).args(["inspect", &tagged])))["Digest"],
        digest.as_str()
    );
    let config = json(&run_ok(
        skopeo(&dir).args(["inspect", "--config", "--raw", &reference]),
    ));

    // A real tool copies it unchanged: manifest bytes and blobs.
    let copy = dir.join("copy");
    run_ok(
        skopeo(&dir)
            .args(["copy", "--quiet", &reference])
            .arg(format!("dir:{}", copy.display())),
    );
    assert!(
        std::fs::read(copy.join("manifest.json")).unwrap() == raw,
        "skopeo copy rewrote the manifest"
    );
    let layer_path = copy.join(layer_digest.trim_start_matches("sha256:"));
    let layer = std::fs::read(&layer_path).unwrap();
    assert_eq!(
        sha256(&layer),
        layer_digest,
        "the layer blob's sha256 is its digest"
    );
    assert_eq!(layers[0]["size"], layer.len());

    let files = unpack_layer(&layer_path, &dir.join("unpacked"));
    assert_eq!(
        files
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["plugin.wasm"],
        "the layer holds plugin.wasm at its root and nothing else"
    );
    assert!(
        files[0].1 == module,
        "plugin.wasm is not the built module, byte for byte"
    );

    // The config's diff_id is the uncompressed layer's digest.
    let uncompressed = run_ok(Command::new("gzip").arg("-dc").arg(&layer_path));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([sha256(&uncompressed)])
    );
}

#[tokio::test]
async fn a_registry_serves_the_image_as_istio_pulls_it() {
    let dir = run_dir("wasm-image-registry").unwrap();
    let module_path = filter_wasm().unwrap();
    let module = std::fs::read(&module_path).unwrap();
    let archive = dir.join("sidestream-filter.oci.tar");
    let port = free_port().unwrap();
    let image = format!("127.0.0.1:{port}/sidestream/sidestream-filter:0.1.0");
    let digest = build_image(&module_path, &archive, &image);

    // Debian's docker-registry (CNCF distribution), plain HTTP on loopback.
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let mut command = Command::new("docker-registry");
    command.arg("serve").arg(&config);
    let registry = Proc::spawn("docker-registry", &dir, command).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    if let Err(error) = wait_http_ok(&format!("{base}/v2/"), Duration::from_secs(20)).await {
        panic!("{error:#}; registry log:\n{}", registry.log());
    }

    // The WasmPlugin, pinned by what `make wasm-image` runs.
    let plugin = dir.join("wasm-plugin-sidestream.yaml");
    std::fs::copy(
        workspace_root().join("istio/wasm-plugin-sidestream.yaml"),
        &plugin,
    )
    .unwrap();
    let url = format!("oci://{image}");
    run_ok(
        Command::new(workspace_root().join("scripts/istio-sha.sh"))
            .args(["--write", &url])
            .env("WASM_IMAGE", &archive)
            .env("WASM_PLUGIN", &plugin),
    );
    let pinned: Value = serde_norway::from_str(&std::fs::read_to_string(&plugin).unwrap()).unwrap();
    assert_eq!(pinned["spec"]["url"], url.as_str());
    let sha256_field = pinned["spec"]["sha256"].as_str().unwrap().to_owned();

    let output = run(skopeo(&dir)
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{image}")));
    assert!(
        output.status.success(),
        "skopeo copy to the registry failed:\n{}\nregistry log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        registry.log()
    );

    // What Istio's agent does for an oci:// URL (pkg/wasm/imagefetcher.go):
    // fetch the manifest by tag, compare its digest with spec.sha256, take the
    // last layer, require the OCI tar+gzip media type, and load plugin.wasm.
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/v2/sidestream/sidestream-filter/manifests/0.1.0"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET manifest: {}",
        response.status()
    );
    assert_eq!(response.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
    let raw = response.bytes().await.unwrap();
    assert_eq!(sha256(&raw), digest);
    assert_eq!(
        format!("sha256:{sha256_field}"),
        digest,
        "the WasmPlugin's sha256 is the digest of the manifest the registry serves, which Istio compares"
    );
    let manifest = json(&raw);
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(layer["mediaType"], OCI_LAYER);
    let blob = client
        .get(format!(
            "{base}/v2/sidestream/sidestream-filter/blobs/{}",
            layer["digest"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert!(blob.status().is_success(), "GET layer: {}", blob.status());
    let blob = blob.bytes().await.unwrap();
    assert_eq!(sha256(&blob), layer["digest"].as_str().unwrap());
    let layer_path = dir.join("layer.tar.gz");
    std::fs::write(&layer_path, &blob).unwrap();
    let files = unpack_layer(&layer_path, &dir.join("pulled"));
    let wasm = files
        .iter()
        .find(|(name, _)| {
            Path::new(name)
                .file_name()
                .is_some_and(|n| n == "plugin.wasm")
        })
        .unwrap_or_else(|| {
            panic!(
                "no plugin.wasm in the layer: {:?}",
                files.iter().map(|f| &f.0).collect::<Vec<_>>()
            )
        });
    assert!(
        wasm.1.starts_with(b"\0asm"),
        "Istio's check of the Wasm magic"
    );
    assert!(
        wasm.1 == module,
        "the pulled plugin.wasm is not the built module"
    );
}

#[test]
fn istio_sha_pins_the_image_digest_and_catches_another_module() {
    let dir = run_dir("wasm-image-pin").unwrap();
    let module_path = filter_wasm().unwrap();
    let archive = dir.join("sidestream-filter.oci.tar");
    let digest = build_image(&module_path, &archive, IMAGE);
    let original =
        std::fs::read_to_string(workspace_root().join("istio/wasm-plugin-sidestream.yaml"))
            .unwrap();
    let plugin = dir.join("wasm-plugin-sidestream.yaml");
    std::fs::write(&plugin, &original).unwrap();
    let script = workspace_root().join("scripts/istio-sha.sh");
    let istio_sha = |image: &Path, args: &[&str]| {
        run(Command::new(&script)
            .args(args)
            .env("WASM_IMAGE", image)
            .env("WASM_PLUGIN", &plugin))
    };

    let url = format!("oci://{IMAGE}");
    let written = istio_sha(&archive, &["--write", &url]);
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let hex = digest.trim_start_matches("sha256:");
    let text = std::fs::read_to_string(&plugin).unwrap();
    // Only spec.url and spec.sha256 changed.
    let changed: Vec<(&str, &str)> = original
        .lines()
        .zip(text.lines())
        .filter(|(before, after)| before != after)
        .collect();
    assert_eq!(original.lines().count(), text.lines().count());
    for (_, after) in &changed {
        assert!(
            *after == format!("  url: {url}") || *after == format!("  sha256: {hex}"),
            "unexpected change: {after}"
        );
    }
    assert!(text.contains(&format!("\n  url: {url}\n")), "{text}");
    assert!(text.contains(&format!("\n  sha256: {hex}\n")), "{text}");

    let check = istio_sha(&archive, &["--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // An image of another module has another digest, and --check says so.
    let other = dir.join("other.oci.tar");
    let other_digest = build_image(&another_module(&dir), &other, IMAGE);
    assert_ne!(other_digest, digest);
    let check = istio_sha(&other, &["--check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success(),
        "--check passed for an image of another module"
    );
    assert!(
        stderr.contains(hex) && stderr.contains(other_digest.trim_start_matches("sha256:")),
        "--check names both digests: {stderr}"
    );

    // No archive: the script says how to build one.
    let missing = istio_sha(&dir.join("missing.oci.tar"), &["--write", &url]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("make wasm-image"));
}

#[test]
fn the_builder_refuses_bad_input_by_name() {
    let dir = run_dir("wasm-image-bad-input").unwrap();
    let builder = binary("sidestream-wasm-image").unwrap();
    let not_wasm = workspace_root().join("Cargo.toml");
    let module = filter_wasm().unwrap();
    let out = dir.join("never.oci.tar");
    for (module, image, says) in [
        (not_wasm.as_path(), IMAGE, "not a Wasm binary"),
        (
            module.as_path(),
            "registry.example.com/sidestream-filter",
            "expected registry/repository:tag",
        ),
        (
            module.as_path(),
            "oci://registry.example.com/f:1",
            "without the oci:// prefix",
        ),
        (dir.join("missing.wasm").as_path(), IMAGE, "make filter"),
    ] {
        let output = run(Command::new(&builder)
            .arg("--module")
            .arg(module)
            .arg("--out")
            .arg(&out)
            .args(["--image", image]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{module:?} {image}: {stderr}"
        );
        assert!(
            stderr.contains(says),
            "{module:?} {image}: expected '{says}' in: {stderr}"
        );
        assert!(!out.exists(), "nothing written on bad input");
    }
}
