#!/usr/bin/env bash
# Builds the sidestream Wasm filter to
#   target/wasm32-wasip1/wasm-release/sidestream_filter.wasm
# Uses rustup's wasm32-wasip1 target when it is installed; otherwise Debian's
# rustc-web with build-std (see DEVELOPERS.md).
#   scripts/build-filter.sh [-p CRATE]...   (default: -p sidestream-filter)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(-p sidestream-filter)

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  exec cargo build --target wasm32-wasip1 --profile wasm-release "${pkgs[@]}"
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
  exec /usr/bin/cargo build --target wasm32-wasip1 --profile wasm-release \
  -Zbuild-std=std,panic_abort "${pkgs[@]}"
