#!/usr/bin/env bash
# Opens new SSE streams through Envoy as random users, N at a time about once a
# second, and prints where each batch went (Envoy's x-sidestream-upstream).
#   examples/grey-release/watch.sh [N]        (default 20; Ctrl-C to stop)
# Each simulated user has its own x-user-id (what the `push` policy's percent
# rule hashes) and its own x-tenant-id (so one tenant's stream limit does not
# throttle the simulation). ENVOY_URL overrides http://127.0.0.1:10000.
set -euo pipefail
n="${1:-20}"
envoy="${ENVOY_URL:-http://127.0.0.1:10000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
while :; do
  rm -f "$work"/*
  for i in $(seq 1 "$n"); do
    user="user-$RANDOM$RANDOM"
    curl -sS -N -o /dev/null -D "$work/$i" --max-time 0.5 \
      -H 'accept: text/event-stream' -H "x-user-id: $user" -H "x-tenant-id: $user" \
      "$envoy/v1/events?topic=ticker" 2>/dev/null &
  done
  wait || true
  stable=$( (grep -lis '^x-sidestream-upstream: push-stable' "$work"/* || true) | wc -l)
  canary=$( (grep -lis '^x-sidestream-upstream: push-canary' "$work"/* || true) | wc -l)
  total=$((stable + canary))
  printf '%s  new streams: stable %3d  canary %3d  (%3d%% canary)%s\n' "$(date +%T)" "$stable" "$canary" \
    $(( total > 0 ? canary * 100 / total : 0 )) \
    "$([ "$total" -lt "$n" ] && echo "  not served: $((n - total))" || true)"
  sleep 0.5
done
