#!/usr/bin/env bash
# Builds the sidestream Wasm filter to
#   target/wasm32-wasip1/wasm-release/sidestream_filter.wasm
# Uses rustup's wasm32-wasip1 target when it is installed; otherwise Debian's
# rustc-web with build-std (see DEVELOPERS.md).
# The sidestream filter (and the benchmark's empty filter) is then trimmed to
# the exports in filter/exports.txt (binaryen's wasm-metadce, plus a rename of
# one export: see filter/src/stream_end.rs); cargo's untrimmed module stays
# beside it as <name>.untrimmed.wasm.
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

# Keeps only the exports filter/exports.txt lists, and the code they reach;
# a line `NAME = SYMBOL` keeps the export SYMBOL and ships it named NAME.
#   trim_module <lib name>   (sidestream_filter, sidestream_empty_filter)
trim_module() {
  local lib=$1
  local out=${CARGO_TARGET_DIR:-target}/wasm32-wasip1/wasm-release
  # cargo's own output: the module above it is a hard link to it, or our trimmed copy.
  local built=$out/deps/$lib.wasm
  if ! command -v wasm-metadce >/dev/null 2>&1; then
    echo "build-filter: wasm-metadce (Debian package binaryen) is missing; run scripts/install-deps.sh build" >&2
    exit 1
  fi
  if [ ! -f "$built" ]; then
    echo "build-filter: cargo's module $built is missing" >&2
    exit 1
  fi
  local keep=() renames=() line name symbol
  while IFS= read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [ -n "$line" ] || continue
    name=${line%%=*} symbol=${line#*=}
    if [ -z "$name" ] || [ -z "$symbol" ] || [[ "$symbol" == *=* ]]; then
      echo "build-filter: filter/exports.txt: '$line' is neither NAME nor NAME = SYMBOL" >&2
      exit 1
    fi
    keep+=("$symbol")
    [ "$name" = "$symbol" ] || renames+=("$symbol=$name")
  done <filter/exports.txt
  if [ ${#keep[@]} -eq 0 ]; then
    echo "build-filter: filter/exports.txt lists no export" >&2
    exit 1
  fi
  # The reachability graph: the host (the root) reaches each kept export; an
  # export the graph does not reach is removed, then the code nothing reaches.
  local graph=$out/$lib.exports.json reaches="" nodes=""
  for name in "${keep[@]}"; do
    reaches+="${reaches:+, }\"export:$name\""
    nodes+=$',\n'"  {\"name\": \"export:$name\", \"export\": \"$name\"}"
  done
  printf '[\n  {"name": "host", "root": true, "reaches": [%s]}%s\n]\n' "$reaches" "$nodes" >"$graph"
  cp "$built" "$out/$lib.untrimmed.wasm"
  # -g keeps the names section: function names in Envoy's backtraces.
  wasm-metadce -g --graph-file "$graph" "$built" -o "$out/$lib.wasm.tmp" >/dev/null
  [ ${#renames[@]} -eq 0 ] || rename_exports "$out/$lib.wasm.tmp" "${renames[@]}"
  # A new file rather than a write through cargo's hard link into deps/.
  mv -f "$out/$lib.wasm.tmp" "$out/$lib.wasm"
}

# rename_exports <module> <from=to>... : renames exports in place (the export
# section only; binaryen has no pass for it). Fails on a name that is not
# exported or a rename onto a name already exported.
rename_exports() {
  python3 - "$@" <<'EOF'
import sys

path, renames = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])

def leb(buf, i):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i

def uleb(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)

data = open(path, "rb").read()
if data[:8] != b"\0asm\x01\0\0\0":
    sys.exit(f"build-filter: {path} is not a Wasm module")
out, i, renamed = bytearray(data[:8]), 8, set()
while i < len(data):
    section = data[i]
    size, start = leb(data, i + 1)
    body, i = data[start:start + size], start + size
    if section == 7:  # exports: name, kind, index
        count, k = leb(body, 0)
        names, entries = [], bytearray(uleb(count))
        for _ in range(count):
            n, k = leb(body, k)
            name, k = body[k:k + n].decode(), k + n
            _, end = leb(body, k + 1)
            rest, k = body[k:end], end
            if name in renames:
                renamed.add(name)
                name = renames[name]
            names.append(name)
            entries += uleb(len(name.encode())) + name.encode() + rest
        if len(set(names)) != len(names):
            sys.exit(f"build-filter: renaming {renames} in {path} would export a name twice")
        body = bytes(entries)
    out += bytes([section]) + uleb(len(body)) + body
missing = set(renames) - renamed
if missing:
    sys.exit(f"build-filter: {path} does not export {sorted(missing)} (filter/exports.txt)")
open(path, "wb").write(out)
EOF
}

build
# The filter and the benchmark's empty filter ship trimmed to the same exports.
for arg in "${pkgs[@]}"; do
  case "$arg" in
    sidestream-filter|-psidestream-filter) trim_module sidestream_filter ;;
    sidestream-empty-filter|-psidestream-empty-filter) trim_module sidestream_empty_filter ;;
  esac
done
