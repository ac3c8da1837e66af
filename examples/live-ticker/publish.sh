#!/usr/bin/env bash
# Publishes a price tick to topic `ticker` every second through Envoy, as a
# traced client: each publish carries a W3C traceparent whose trace id is also
# in the message, so the page shows the trace that followed the message from
# here through Envoy (the filter continues it) to the push server.
#   examples/live-ticker/publish.sh [ENVOY_URL] [TOPIC] [INTERVAL_SECONDS]
set -euo pipefail
envoy="${1:-http://127.0.0.1:10000}"
topic="${2:-ticker}"
interval="${3:-1}"
seq=0
price=10000  # in cents
while :; do
  seq=$((seq + 1))
  price=$((price + RANDOM % 201 - 100))
  [ "$price" -gt 100 ] || price=100
  trace_id="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  span_id="$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
  body="$(printf '{"seq":%d,"symbol":"SIDE","price":"%d.%02d","traceId":"%s","publishedAt":"%s"}' \
    "$seq" $((price / 100)) $((price % 100)) "$trace_id" "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)")"
  if ! curl -fsS -o /dev/null --max-time 5 \
      -H "traceparent: 00-$trace_id-$span_id-01" \
      -H 'content-type: text/plain' \
      --data-binary "$body" \
      "$envoy/v1/topics/$topic/messages"; then
    echo "publish.sh: publish $seq failed; retrying next tick" >&2
  fi
  sleep "$interval"
done
