#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeMap;
use std::io::Read as _;

use serde_json::Value;

use super::*;

/// The smallest valid module (magic and version 1) plus a custom section,
/// so two test modules can differ.
fn module(name: &str) -> Vec<u8> {
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.push(0); // custom section
    bytes.push(u8::try_from(name.len() + 1).unwrap());
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// Every entry of a tar: path → (header, contents).
fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, (entry.header().clone(), data));
    }
    out
}

fn blob<'a>(files: &'a BTreeMap<String, (tar::Header, Vec<u8>)>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let (_, data) = files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("no blob {digest}"));
    assert_eq!(sha256_digest(data), digest, "blob named by its digest");
    data
}

#[test]
fn the_archive_is_an_oci_layout_of_a_compat_wasm_image() {
    let module = module("sidestream");
    let image = build(&module, "0.1.0").unwrap();
    let files = entries(&image.archive);
    let mut want: Vec<String> = ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        .map(String::from)
        .into();
    for digest in [
        &image.config_digest,
        &image.layer_digest,
        &image.manifest_digest,
    ] {
        want.push(format!(
            "blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        ));
    }
    want.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), want);
    let layout: Value = serde_json::from_slice(&files["oci-layout"].1).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");

    let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifests[0]["digest"], image.manifest_digest.as_str());
    assert_eq!(manifests[0]["annotations"][REF_NAME_ANNOTATION], "0.1.0");

    let manifest_bytes = blob(&files, &image.manifest_digest);
    assert_eq!(manifests[0]["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["annotations"][VARIANT_ANNOTATION], "compat");
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the compat variant has exactly one layer");
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
    assert_eq!(layers[0]["digest"], image.layer_digest.as_str());

    let layer = blob(&files, &image.layer_digest);
    assert_eq!(layers[0]["size"], layer.len());
    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(layer)
        .read_to_end(&mut layer_tar)
        .unwrap();
    let layer_files = entries(&layer_tar);
    assert_eq!(layer_files.keys().collect::<Vec<_>>(), [MODULE_FILE]);
    let (header, data) = &layer_files[MODULE_FILE];
    assert_eq!(data, &module, "the layer holds the module, byte for byte");
    assert_eq!(header.mode().unwrap(), 0o644);
    assert_eq!(header.mtime().unwrap(), 0);
    assert_eq!(header.uid().unwrap(), 0);

    let config: Value = serde_json::from_slice(blob(&files, &image.config_digest)).unwrap();
    assert_eq!(config["os"], OS);
    assert_eq!(config["architecture"], ARCHITECTURE);
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&layer_tar));
    assert_eq!(image.diff_id, sha256_digest(&layer_tar));

    for (path, (header, _)) in &files {
        assert_eq!(header.mtime().unwrap(), 0, "{path}: mtime");
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
    }
}

#[test]
fn the_image_is_a_function_of_the_module_only() {
    let a = build(&module("one"), "0.1.0").unwrap();
    let again = build(&module("one"), "0.1.0").unwrap();
    assert_eq!(a.archive, again.archive, "byte for byte");
    assert_eq!(a.manifest_digest, again.manifest_digest);

    let retagged = build(&module("one"), "latest").unwrap();
    assert_eq!(
        retagged.manifest_digest, a.manifest_digest,
        "the tag is not in the manifest"
    );
    assert_ne!(
        retagged.archive, a.archive,
        "the tag names the image in index.json"
    );

    let other = build(&module("two"), "0.1.0").unwrap();
    assert_ne!(other.manifest_digest, a.manifest_digest);
    assert_ne!(other.layer_digest, a.layer_digest);
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    for bytes in [
        &b""[..],
        b"\0asm",
        b"\x7fELF\x02\x01\x01\0\0\0",
        b"plain text, not a module",
    ] {
        let error = build(bytes, "0.1.0").unwrap_err();
        assert!(
            matches!(error, ImageError::NotWasm { len } if len == bytes.len()),
            "{bytes:?}: {error}"
        );
        assert!(error.to_string().contains("not a Wasm binary"), "{error}");
    }
}

#[test]
fn image_references_need_a_tag() {
    for (reference, repository, tag) in [
        (
            "registry.example.com/sidestream/sidestream-filter:0.1.0",
            "registry.example.com/sidestream/sidestream-filter",
            "0.1.0",
        ),
        (
            "localhost:5000/filter:v1_rc-2",
            "localhost:5000/filter",
            "v1_rc-2",
        ),
        ("filter:latest", "filter", "latest"),
    ] {
        let parsed = ImageReference::parse(reference).unwrap();
        assert_eq!(
            (parsed.repository.as_str(), parsed.tag.as_str()),
            (repository, tag)
        );
        assert_eq!(parsed.to_string(), reference);
    }
    for (reference, says) in [
        (
            "registry.example.com/sidestream/sidestream-filter",
            "expected registry/repository:tag",
        ),
        ("localhost:5000/filter", "expected registry/repository:tag"),
        (":0.1.0", "expected registry/repository:tag"),
        ("", "expected registry/repository:tag"),
        (
            "oci://registry.example.com/filter:0.1.0",
            "without the oci:// prefix",
        ),
        (
            "registry.example.com/filter@sha256:abcd",
            "name the image by tag",
        ),
        ("registry.example.com/filter:", "tag '' is not an OCI tag"),
        (
            "registry.example.com/filter:-rc",
            "tag '-rc' is not an OCI tag",
        ),
        (
            "registry.example.com/filter:a+b",
            "tag 'a+b' is not an OCI tag",
        ),
    ] {
        let error = ImageReference::parse(reference).unwrap_err().to_string();
        assert!(error.contains(says), "{reference:?}: {error}");
        assert!(
            error.contains(reference),
            "{reference:?}: the error names it: {error}"
        );
    }
    let long = format!("filter:{}", "a".repeat(129));
    assert!(
        ImageReference::parse(&long).is_err(),
        "a tag of 129 characters"
    );
    assert!(ImageReference::parse(&format!("filter:{}", "a".repeat(128))).is_ok());
}
