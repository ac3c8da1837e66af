#!/usr/bin/env bash
# A reconnect storm against a tenant's stream limit, through Envoy and the
# sidestream filter: N SSE subscriptions opened at once by one tenant.
#   examples/stream-limits/storm.sh [N] [TENANT]        (N defaults to 30)
# Needs the stack running (`make run`). ENVOY_URL and ENVOY_ADMIN override
# the defaults (http://127.0.0.1:10000 and http://127.0.0.1:9901).
set -euo pipefail
n="${1:-30}"
tenant="${2:-storm-$RANDOM}"
envoy="${ENVOY_URL:-http://127.0.0.1:10000}"
admin="${ENVOY_ADMIN:-http://127.0.0.1:9901}"
push_stable="${PUSH_STABLE_URL:-http://127.0.0.1:18081}"
push_canary="${PUSH_CANARY_URL:-http://127.0.0.1:18082}"
out="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

# The filter's Envoy stats (kept under Envoy's `wasmcustom.` namespace in /stats).
stat() { curl -fsS "$admin/stats?filter=wasmcustom\.sidestream\.$1\$" | sed -n 's/.*: *//p'; }
refused_before="$(stat streams_refused || echo 0)"

echo "opening $n SSE streams at once as tenant '$tenant' ..."
for i in $(seq 1 "$n"); do
  # Each stream is held for 3 s; -D keeps the response head to read the status.
  curl -sS -N -o /dev/null -D "$out/$i.head" --max-time 3 \
    -H 'accept: text/event-stream' -H "x-tenant-id: $tenant" \
    "$envoy/v1/events?topic=ticker" 2>/dev/null &
done
sleep 1
admitted=$( (grep -l '^HTTP/1.1 200' "$out"/*.head 2>/dev/null || true) | wc -l)
refused=$( (grep -l '^HTTP/1.1 429' "$out"/*.head 2>/dev/null || true) | wc -l)
echo "admitted: $admitted   refused with 429: $refused"
first_429="$(grep -l '^HTTP/1.1 429' "$out"/*.head 2>/dev/null | head -n 1 || true)"
if [ -n "$first_429" ]; then
  echo "a refusal's headers:"
  grep -iE '^(retry-after|ratelimit-[a-z]+):' "$first_429" | sed 's/^/  /'
fi
echo "filter stats: admitted total $(stat streams_admitted), refused total $(stat streams_refused) (+$(( $(stat streams_refused) - refused_before )) now), active $(stat streams_active)"
for url in "$push_stable" "$push_canary"; do
  echo "push server $url/healthz/ready: $(curl -s -o /dev/null -w '%{http_code}' "$url/healthz/ready")"
done
wait || true
