#!/usr/bin/env bash
# Two Envoys, one limit: starts two Envoys from envoy-config/mesh.yaml (only
# their listener and admin ports changed) in front of the stack's push
# servers, opens N SSE streams for one tenant through one of them, then N
# through the other, and shows that together they admitted the tenant's cap
# (20 open streams), not twice it: both ask the stack's sidestream-limiter,
# which keeps the count in Redis.
#   examples/stream-limits/two-envoys.sh [N] [TENANT]      (N defaults to 15)
# Needs the stack running (`make run`: Redis, the limiter, the push servers)
# and the filter built. Overrides: LIMITER_PORT [18300], PUSH_STABLE_PORT
# [18081], PUSH_CANARY_PORT [18082], ENVOY_A_PORT/ENVOY_A_ADMIN [10010/9910],
# ENVOY_B_PORT/ENVOY_B_ADMIN [10020/9920], WASM (the filter module).
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-15}"
tenant="${2:-pair-$RANDOM}"
limiter_port="${LIMITER_PORT:-18300}"
stable_port="${PUSH_STABLE_PORT:-18081}"
canary_port="${PUSH_CANARY_PORT:-18082}"
a_port="${ENVOY_A_PORT:-10010}"
a_admin="${ENVOY_A_ADMIN:-9910}"
b_port="${ENVOY_B_PORT:-10020}"
b_admin="${ENVOY_B_ADMIN:-9920}"
wasm="${WASM:-target/wasm32-wasip1/wasm-release/sidestream_filter.wasm}"
out="$(mktemp -d)"
envoys=()
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for pid in "${envoys[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

[ -f "$wasm" ] || { echo "two-envoys: the filter $wasm is missing; run 'make filter'" >&2; exit 1; }
curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$stable_port/healthz/ready" ||
  { echo "two-envoys: no push server at 127.0.0.1:$stable_port; start the stack with 'make run'" >&2; exit 1; }

# mesh.yaml with this Envoy's listener and admin ports (and the stack's ports
# where they were overridden); everything else as committed.
start_envoy() { # start_envoy NAME PORT ADMIN
  sed -E \
    -e "s#port_value: 10000\b#port_value: $2#" \
    -e "s#port_value: 9901\b#port_value: $3#" \
    -e "s#port_value: 18081\b#port_value: $stable_port#" \
    -e "s#port_value: 18082\b#port_value: $canary_port#" \
    -e "s#port_value: 18300\b#port_value: $limiter_port#" \
    -e "s#filename: target/wasm32-wasip1/wasm-release/sidestream_filter.wasm#filename: $wasm#" \
    envoy-config/mesh.yaml >"$out/$1.yaml"
  envoy -c "$out/$1.yaml" --concurrency 2 --disable-hot-restart --log-level error \
    >"$out/$1.log" 2>&1 &
  envoys+=("$!")
}
start_envoy a "$a_port" "$a_admin"
start_envoy b "$b_port" "$b_admin"
for admin in "$a_admin" "$b_admin"; do
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/ready" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/ready" ||
    { echo "two-envoys: the Envoy with admin $admin did not start:" >&2; cat "$out"/*.log >&2; exit 1; }
done
echo "two Envoys from envoy-config/mesh.yaml on :$a_port and :$b_port, one limiter on :$limiter_port"

# The tenant policy (maxConcurrent 20, 5 new streams per second) is the
# seeded one; streams are opened at its refill rate, so only the cap decides.
hold=$(( n * 2 / 5 + 5 ))
echo "opening $n SSE streams for tenant '$tenant' through envoy a, then $n through envoy b (5 per second, each held ${hold}s) ..."
curls=()
for envoy in a b; do
  port="$a_port"; [ "$envoy" = b ] && port="$b_port"
  for i in $(seq 1 "$n"); do
    curl -sS -N -o /dev/null -D "$out/$envoy-$i.head" --max-time "$hold" \
      -H 'accept: text/event-stream' -H "x-tenant-id: $tenant" \
      "http://127.0.0.1:$port/v1/events?topic=ticker" 2>/dev/null &
    curls+=("$!")
    sleep 0.2
  done
done
sleep 1
count() { (grep -l "^HTTP/1.1 $2" "$out"/$1-*.head 2>/dev/null || true) | wc -l; }
a_ok=$(count a 200); b_ok=$(count b 200)
echo "envoy a: admitted $a_ok, refused with 429: $(count a 429)"
echo "envoy b: admitted $b_ok, refused with 429: $(count b 429)"
echo "together: admitted $((a_ok + b_ok)) of $((2 * n))"
first_429="$(grep -l '^HTTP/1.1 429' "$out"/*.head 2>/dev/null | head -n 1 || true)"
if [ -n "$first_429" ]; then
  echo "a refusal's headers:"
  grep -iE '^(retry-after|ratelimit-[a-z]+):' "$first_429" | sed 's/^/  /'
fi

stat() { curl -fsS "http://127.0.0.1:$1/stats?filter=wasmcustom\.sidestream\.$2\$" | sed -n 's/.*: *//p'; }
for admin in "$a_admin" "$b_admin"; do
  echo "envoy admin :$admin: mesh admitted $(stat "$admin" mesh_admitted), mesh refused $(stat "$admin" mesh_refused)," \
    "fallbacks $(( $(stat "$admin" mesh_fallback_timeout) + $(stat "$admin" mesh_fallback_unavailable) + $(stat "$admin" mesh_fallback_error) ))"
done
# The streams end when their hold is over; then the Envoys stop.
wait "${curls[@]}" 2>/dev/null || true
