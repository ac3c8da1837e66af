#!/usr/bin/env bash
# Pins the Wasm module the WasmPlugin (istio/wasm-plugin-sidestream.yaml) loads.
#   scripts/istio-sha.sh                 print the sha256 of the built module
#   scripts/istio-sha.sh --write URL     set spec.url to URL and spec.sha256 to what
#                                        Istio checks for that URL (publish it at URL)
#   scripts/istio-sha.sh --check         exit 1 unless spec.sha256 is what Istio checks
#                                        for spec.url
# What Istio checks against spec.sha256 depends on the URL:
# - http(s):// and file://: the sha256 of the module itself,
#   target/wasm32-wasip1/wasm-release/sidestream_filter.wasm (`make filter`);
# - oci://: the digest of the image's manifest; the image is the OCI archive
#   target/wasm-image/sidestream-filter.oci.tar (`make wasm-image`), whose
#   manifest digest is read from its index.json.
# CARGO_TARGET_DIR is honoured; WASM_IMAGE overrides the archive's path and
# WASM_PLUGIN the manifest's (tests use both). Istio refuses a module whose
# checksum differs from spec.sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
module="$target/wasm32-wasip1/wasm-release/sidestream_filter.wasm"
image="${WASM_IMAGE:-$target/wasm-image/sidestream-filter.oci.tar}"
manifest="${WASM_PLUGIN:-istio/wasm-plugin-sidestream.yaml}"

module_sha() {
  if [ ! -f "$module" ]; then
    echo "istio-sha: $module is missing; build it with 'make filter'" >&2
    exit 1
  fi
  sha256sum "$module" | cut -d' ' -f1
}

# The manifest digest of the one image in the OCI archive, without "sha256:".
image_digest() {
  if [ ! -f "$image" ]; then
    echo "istio-sha: $image is missing; build it with 'make wasm-image'" >&2
    exit 1
  fi
  local index digests
  if ! index=$(tar -xOf "$image" index.json 2>/dev/null); then
    echo "istio-sha: $image is not an OCI archive (no index.json in it)" >&2
    exit 1
  fi
  digests=$(grep -oE '"digest" *: *"sha256:[0-9a-f]{64}"' <<<"$index" | grep -oE '[0-9a-f]{64}' || true)
  if [ "$(grep -c . <<<"$digests")" != 1 ]; then
    echo "istio-sha: $image: expected index.json to list exactly one manifest, found: ${digests:-none}" >&2
    exit 1
  fi
  echo "$digests"
}

# What Istio compares with spec.sha256 when it loads URL.
expected_sha() {
  case "$1" in
    oci://*) image_digest ;;
    *) module_sha ;;
  esac
}

case "${1:-}" in
  "")
    module_sha
    ;;
  --write)
    url="${2:-}"
    if [ -z "$url" ]; then
      echo "usage: scripts/istio-sha.sh --write URL" >&2
      exit 64
    fi
    case "$url" in
      http://*|https://*|oci://*|file://*) ;;
      *) echo "istio-sha: URL must start with http://, https://, oci:// or file://" >&2; exit 64 ;;
    esac
    sha=$(expected_sha "$url")
    sed -i -E \
      -e "s|^(  url: ).*|\1${url}|" \
      -e "s|^(  sha256: ).*|\1${sha}|" \
      "$manifest"
    echo "istio-sha: $manifest now loads $url (sha256 $sha)"
    ;;
  --check)
    url=$(sed -n -E 's/^  url: *([^ ]*).*/\1/p' "$manifest")
    pinned=$(sed -n -E 's/^  sha256: *([0-9a-f]*).*/\1/p' "$manifest")
    sha=$(expected_sha "$url")
    what="the built module"
    case "$url" in oci://*) what="the image in $image" ;; esac
    if [ "$pinned" != "$sha" ]; then
      echo "istio-sha: $manifest pins sha256 $pinned for $url, $what is $sha" >&2
      exit 1
    fi
    echo "istio-sha: $manifest pins $what ($sha)"
    ;;
  *)
    echo "usage: scripts/istio-sha.sh [--write URL | --check]" >&2
    exit 64
    ;;
esac
