//! The filter module as an OCI image that Istio pulls for a WasmPlugin with
//! `url: oci://…`, packed as an OCI archive (an OCI image layout in one tar,
//! which `skopeo copy oci-archive:… docker://…` pushes to a registry).
//!
//! The image is the *compat* variant of the Wasm image specification Istio
//! documents (solo-io/wasm `spec/spec-compat.md`), the variant istio-agent's
//! image fetcher tries first:
//! - exactly one layer, `application/vnd.oci.image.layer.v1.tar+gzip`: a tar
//!   holding the module as `plugin.wasm` at its root;
//! - an OCI image config, `application/vnd.oci.image.config.v1+json`, for the
//!   platform `wasip1`/`wasm` (Go's names, which the OCI image spec follows);
//! - the manifest annotation `module.wasm.image/variant: compat`.
//!
//! Every byte is a function of the module's bytes, so building twice gives the
//! same manifest digest, the value Istio compares with the WasmPlugin's
//! `sha256` for an `oci://` URL: tar entries have mtime 0, uid and gid 0 and
//! fixed modes; gzip has no timestamp and no file name; JSON comes from structs
//! whose fields serialise in declaration order; the config has no creation
//! time. The tag only names the image inside the archive (`index.json`), it is
//! not in the manifest: retagging never changes the digest.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The manifest annotation the compat variant requires with an OCI layer.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
pub const VARIANT: &str = "compat";
/// The file in the layer that Istio loads.
pub const MODULE_FILE: &str = "plugin.wasm";
/// Names the image inside an OCI image layout (`oci-archive:<file>:<tag>`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
pub const OS: &str = "wasip1";
pub const ARCHITECTURE: &str = "wasm";

const WASM_MAGIC: &[u8] = b"\0asm";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "the module is not a Wasm binary: its {len} bytes do not start with the Wasm magic \\0asm and a version"
    )]
    NotWasm { len: usize },
    #[error(
        "image reference '{0}': expected registry/repository:tag (for example registry.example.com/sidestream/sidestream-filter:0.1.0)"
    )]
    NoTag(String),
    #[error("image reference '{0}': give it without the oci:// prefix")]
    Scheme(String),
    #[error(
        "image reference '{0}': name the image by tag; its digest goes in the WasmPlugin's sha256"
    )]
    ByDigest(String),
    #[error(
        "image reference '{reference}': tag '{tag}' is not an OCI tag (1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)"
    )]
    BadTag { reference: String, tag: String },
    #[error("packing {what}: {source}")]
    Pack {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("encoding {what} as JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// An image reference `registry/repository:tag`, as a WasmPlugin's
/// `url: oci://<reference>` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    pub repository: String,
    pub tag: String,
}

impl ImageReference {
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        if reference.contains("://") {
            return Err(ImageError::Scheme(reference.to_owned()));
        }
        if reference.contains('@') {
            return Err(ImageError::ByDigest(reference.to_owned()));
        }
        // The tag follows the last ':' after the last '/' (a ':' before it is
        // a registry port).
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = reference[last_slash..].rfind(':').map(|i| i + last_slash) else {
            return Err(ImageError::NoTag(reference.to_owned()));
        };
        let (repository, tag) = (&reference[..colon], &reference[colon + 1..]);
        if repository.is_empty() || repository.ends_with('/') {
            return Err(ImageError::NoTag(reference.to_owned()));
        }
        if !is_tag(tag) {
            return Err(ImageError::BadTag {
                reference: reference.to_owned(),
                tag: tag.to_owned(),
            });
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl std::fmt::Display for ImageReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// OCI distribution's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && tag.len() <= 128
}

/// A built image: the OCI archive and the digests in it (`sha256:<hex>`).
#[derive(Debug, Clone)]
pub struct WasmImage {
    pub archive: Vec<u8>,
    /// What Istio checks against the WasmPlugin's `sha256` (without `sha256:`).
    pub manifest_digest: String,
    pub config_digest: String,
    /// The gzipped layer blob.
    pub layer_digest: String,
    /// The uncompressed layer tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

impl<'a> Descriptor<'a> {
    fn of(media_type: &'a str, blob: &[u8]) -> Self {
        Self {
            media_type,
            digest: sha256_digest(blob),
            size: blob.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<String>,
}

fn json(what: &'static str, value: &impl Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|source| ImageError::Json { what, source })
}

/// Builds the image of `module`, named `tag` in the archive.
pub fn build(module: &[u8], tag: &str) -> Result<WasmImage, ImageError> {
    if module.len() < 8 || !module.starts_with(WASM_MAGIC) {
        return Err(ImageError::NotWasm { len: module.len() });
    }
    if !is_tag(tag) {
        return Err(ImageError::BadTag {
            reference: tag.to_owned(),
            tag: tag.to_owned(),
        });
    }
    let pack = |what| move |source| ImageError::Pack { what, source };

    let layer_tar = {
        let mut tar = tar::Builder::new(Vec::new());
        append_file(&mut tar, MODULE_FILE, module).map_err(pack("the layer tar"))?;
        tar.into_inner().map_err(pack("the layer tar"))?
    };
    let diff_id = sha256_digest(&layer_tar);
    let layer = gzip(&layer_tar).map_err(pack("the layer"))?;

    let config = json(
        "the image config",
        &ImageConfig {
            architecture: ARCHITECTURE,
            os: OS,
            rootfs: RootFs {
                kind: "layers",
                diff_ids: vec![diff_id.clone()],
            },
        },
    )?;
    let manifest = json(
        "the manifest",
        &Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE,
            config: Descriptor::of(CONFIG_MEDIA_TYPE, &config),
            layers: vec![Descriptor::of(LAYER_MEDIA_TYPE, &layer)],
            annotations: BTreeMap::from([(VARIANT_ANNOTATION, VARIANT)]),
        },
    )?;
    let mut manifest_descriptor = Descriptor::of(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_descriptor
        .annotations
        .insert(REF_NAME_ANNOTATION, tag);
    let index = json(
        "index.json",
        &Index {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE,
            manifests: vec![manifest_descriptor],
        },
    )?;

    let mut blobs = [&config, &layer, &manifest].map(|blob| (sha256_digest(blob), blob));
    blobs.sort();
    let archive = {
        let mut tar = tar::Builder::new(Vec::new());
        let what = pack("the OCI archive");
        append_file(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(what)?;
        append_file(&mut tar, "index.json", &index).map_err(what)?;
        append_dir(&mut tar, "blobs/").map_err(what)?;
        append_dir(&mut tar, "blobs/sha256/").map_err(what)?;
        for (digest, blob) in &blobs {
            let hex = digest.trim_start_matches("sha256:");
            append_file(&mut tar, &format!("blobs/sha256/{hex}"), blob).map_err(what)?;
        }
        tar.into_inner().map_err(what)?
    };

    Ok(WasmImage {
        archive,
        manifest_digest: sha256_digest(&manifest),
        config_digest: sha256_digest(&config),
        layer_digest: sha256_digest(&layer),
        diff_id,
    })
}

/// A ustar header owned by root, dated 1970-01-01.
fn header(entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut header, path, std::io::empty())
}

/// gzip with no timestamp, no file name and OS "unknown".
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests;
