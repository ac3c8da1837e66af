#!/usr/bin/env bash
# Pins the Wasm module the WasmPlugin (istio/wasm-plugin-sidestream.yaml) loads.
#   scripts/istio-sha.sh                 print the sha256 of the built module
#   scripts/istio-sha.sh --write URL     set spec.url to URL and spec.sha256 to the
#                                        built module's checksum (publish that file at URL)
#   scripts/istio-sha.sh --check         exit 1 unless spec.sha256 is the built module's
# The module is target/wasm32-wasip1/wasm-release/sidestream_filter.wasm
# (`make filter`; CARGO_TARGET_DIR is honoured). Istio refuses a module whose
# checksum differs from spec.sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
module="$target/wasm32-wasip1/wasm-release/sidestream_filter.wasm"
manifest=istio/wasm-plugin-sidestream.yaml

if [ ! -f "$module" ]; then
  echo "istio-sha: $module is missing; build it with 'make filter'" >&2
  exit 1
fi
sha=$(sha256sum "$module" | cut -d' ' -f1)

case "${1:-}" in
  "")
    echo "$sha"
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
    sed -i -E \
      -e "s|^(  url: ).*|\1${url}|" \
      -e "s|^(  sha256: ).*|\1${sha}|" \
      "$manifest"
    echo "istio-sha: $manifest now loads $url (sha256 $sha)"
    ;;
  --check)
    pinned=$(sed -n -E 's/^  sha256: *([0-9a-f]*).*/\1/p' "$manifest")
    if [ "$pinned" != "$sha" ]; then
      echo "istio-sha: $manifest pins sha256 $pinned, the built module is $sha" >&2
      exit 1
    fi
    echo "istio-sha: $manifest pins the built module ($sha)"
    ;;
  *)
    echo "usage: scripts/istio-sha.sh [--write URL | --check]" >&2
    exit 64
    ;;
esac
