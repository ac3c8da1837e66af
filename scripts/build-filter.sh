#!/usr/bin/env bash
# Builds the sidestream Wasm filter to
#   target/wasm32-wasip1/wasm-release/sidestream_filter.wasm
# Uses rustup's wasm32-wasip1 target when it is installed; otherwise Debian's
# rustc-web with build-std (see DEVELOPERS.md).
# The sidestream filter is then trimmed to the exports in filter/exports.txt
# (binaryen's wasm-metadce); cargo's untrimmed module stays beside it as
# sidestream_filter.untrimmed.wasm.
#   scripts/build-filter.sh [-p CRATE]...   (default: -p sidestream-filter)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(-p sidestream-filter)

build() {
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    cargo build --target wasm32-wasip1 --profile wasm-release "${pkgs[@]}"
    return
  fi
  for tool in /usr/bin/rustc /usr/bin/cargo /usr/bin/wasm-ld; do
    if [ ! -x "$tool" ]; then
      echo "build-filter: $tool is missing and rustup has no wasm32-wasip1 target; run scripts/install-deps.sh build" >&2
      exit 1
    fi
  done
  if [ ! -d /usr/lib/wasm32-wasi ]; then
    echo "build-filter: /usr/lib/wasm32-wasi (Debian wasi-libc) is missing; run scripts/install-deps.sh build" >&2
    exit 1
  fi
  # Debian's rustc-web ships the wasm32 std as source only (rust-web-src): build it.
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/bin/wasm-ld \
    RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
    /usr/bin/cargo build --target wasm32-wasip1 --profile wasm-release \
    -Zbuild-std=std,panic_abort "${pkgs[@]}"
}

# Keeps only the exports filter/exports.txt lists, and the code they reach.
trim_filter() {
  local out=${CARGO_TARGET_DIR:-target}/wasm32-wasip1/wasm-release
  # cargo's own output: the module above it is a hard link to it, or our trimmed copy.
  local built=$out/deps/sidestream_filter.wasm
  if ! command -v wasm-metadce >/dev/null 2>&1; then
    echo "build-filter: wasm-metadce (Debian package binaryen) is missing; run scripts/install-deps.sh build" >&2
    exit 1
  fi
  if [ ! -f "$built" ]; then
    echo "build-filter: cargo's module $built is missing" >&2
    exit 1
  fi
  local names=() line
  while IFS= read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [ -z "$line" ] || names+=("$line")
  done <filter/exports.txt
  if [ ${#names[@]} -eq 0 ]; then
    echo "build-filter: filter/exports.txt lists no export" >&2
    exit 1
  fi
  # The reachability graph: the host (the root) reaches each kept export; an
  # export the graph does not reach is removed, then the code nothing reaches.
  local graph=$out/sidestream_filter.exports.json name reaches="" nodes=""
  for name in "${names[@]}"; do
    reaches+="${reaches:+, }\"export:$name\""
    nodes+=$',\n'"  {\"name\": \"export:$name\", \"export\": \"$name\"}"
  done
  printf '[\n  {"name": "host", "root": true, "reaches": [%s]}%s\n]\n' "$reaches" "$nodes" >"$graph"
  cp "$built" "$out/sidestream_filter.untrimmed.wasm"
  # -g keeps the names section: function names in Envoy's backtraces.
  wasm-metadce -g --graph-file "$graph" "$built" -o "$out/sidestream_filter.wasm.tmp" >/dev/null
  # A new file rather than a write through cargo's hard link into deps/.
  mv -f "$out/sidestream_filter.wasm.tmp" "$out/sidestream_filter.wasm"
}

build
for arg in "${pkgs[@]}"; do
  if [ "$arg" = sidestream-filter ] || [ "$arg" = -psidestream-filter ]; then
    trim_filter
  fi
done
