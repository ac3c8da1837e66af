#!/usr/bin/env bash
# Runs the official W3C Trace Context test suite against Envoy with the
# sidestream filter, as the suite is meant to be run (not part of `make test`:
# CI cannot fetch the suite; tests/tests/w3c_trace_context.rs carries its cases
# as our own test).
#
#   git clone https://github.com/w3c/trace-context /path/to/trace-context
#   python3 -m pip install aiohttp
#   scripts/w3c-suite.sh /path/to/trace-context [test.py patterns...]
#
# It builds the filter and `trace-context-service`, starts Envoy with
# envoy-config/trace-context.yaml (inbound 127.0.0.1:10010 → service
# 127.0.0.1:18090 → outbound 127.0.0.1:10011, the filter on both listeners,
# admin 127.0.0.1:9911) and the service, then runs the suite's test/test.py
# with SERVICE_ENDPOINT=http://127.0.0.1:10010/test once per spec level. The
# suite's harness listens on 127.0.0.1:7777. Logs go to .run/w3c-suite/.
#
# Environment:
#   SPEC_LEVELS   spec levels to run, one suite run each   [1 2]
#   STRICT_LEVEL  the suite's strictness                   [2]
#   PYTHON        a Python with aiohttp                    [python3]
# Exit status: 0 when every run passed, 1 when one failed, 64 on bad usage.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 64
fi
checkout="$(cd "$1" 2>/dev/null && pwd)" || {
  echo "w3c-suite: '$1' is not a directory (a checkout of github.com/w3c/trace-context)" >&2
  exit 64
}
shift
if [ ! -f "$checkout/test/test.py" ]; then
  echo "w3c-suite: $checkout/test/test.py is missing; give a checkout of github.com/w3c/trace-context" >&2
  exit 64
fi
python="${PYTHON:-python3}"
if ! "$python" -c 'import aiohttp' 2>/dev/null; then
  echo "w3c-suite: '$python' cannot import aiohttp; run '$python -m pip install aiohttp' or set PYTHON" >&2
  exit 64
fi
spec_levels="${SPEC_LEVELS:-1 2}"
strict_level="${STRICT_LEVEL:-2}"

cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/build-filter.sh
cargo build -p sidestream-tests --bin trace-context-service

run_dir="$root/.run/w3c-suite"
rm -rf "$run_dir"
mkdir -p "$run_dir"
# The committed config names the module relative to the repository root;
# point it at the one just built (CARGO_TARGET_DIR may be elsewhere).
module="$target/wasm32-wasip1/wasm-release/sidestream_filter.wasm"
sed "s#filename: target/wasm32-wasip1/wasm-release/sidestream_filter.wasm#filename: $module#" \
  envoy-config/trace-context.yaml > "$run_dir/envoy.yaml"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

"$target/debug/trace-context-service" > "$run_dir/service.log" 2>&1 &
pids+=($!)
envoy -c "$run_dir/envoy.yaml" --concurrency 2 --disable-hot-restart > "$run_dir/envoy.log" 2>&1 &
pids+=($!)

ready() {
  curl -sf -o /dev/null http://127.0.0.1:9911/ready &&
    (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null &&
    (exec 3<>/dev/tcp/127.0.0.1/10011) 2>/dev/null
}
for _ in $(seq 1 150); do
  ready && break
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "w3c-suite: a process exited early; see $run_dir/service.log and $run_dir/envoy.log" >&2
      tail -n 20 "$run_dir/service.log" "$run_dir/envoy.log" >&2
      exit 1
    fi
  done
  sleep 0.2
done
if ! ready; then
  echo "w3c-suite: Envoy or the service is not ready after 30s; see $run_dir/" >&2
  exit 1
fi

failed=0
for level in $spec_levels; do
  echo "w3c-suite: SPEC_LEVEL=$level STRICT_LEVEL=$strict_level"
  if ! (cd "$checkout/test" &&
    SPEC_LEVEL="$level" STRICT_LEVEL="$strict_level" \
      "$python" test.py http://127.0.0.1:10010/test "$@"); then
    failed=1
    echo "w3c-suite: the suite failed at SPEC_LEVEL=$level STRICT_LEVEL=$strict_level" >&2
  fi
done
exit "$failed"
