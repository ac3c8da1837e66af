#!/usr/bin/env bash
# Starts the whole sidestream stack on loopback and keeps it running until
# Ctrl-C (what `make run` calls after building the release binaries and the
# filter):
#
#   etcd            127.0.0.1:2379   config store (/sidestream/v1/...)
#   control plane   127.0.0.1:18000  gRPC config stream, admin 127.0.0.1:18001
#   redis-server    127.0.0.1:6379   the push servers' shared broker and the
#                                    limiter's buckets and counts
#   limiter         127.0.0.1:18300  mesh-wide stream limits (gRPC), admin 127.0.0.1:18301
#   push stable     127.0.0.1:18081  (gRPC 18091)
#   push canary     127.0.0.1:18082  (gRPC 18092)
#   Envoy           127.0.0.1:10000  with the filter (envoy-config/stack.yaml),
#                                    admin 127.0.0.1:9901
#   ticker          publishes to topic `ticker` every second through Envoy
#
# etcd is seeded with examples/config/ through `sidestreamctl apply`. Data and
# logs live under .run/ (wiped at each start, so a second run starts clean);
# .run/pids/NAME.pid holds each process id. A push server that exits is
# restarted (kill one to watch clients resume); anything else exiting, or
# Ctrl-C, stops the whole stack.
#
# Environment overrides (the integration tests use them to run the same stack
# on free ports):
#   STACK_RUN_DIR            data and logs                [.run]
#   STACK_BIN_DIR            sidestream binaries          [target/release]
#   STACK_WASM               the filter module            [target/wasm32-wasip1/wasm-release/sidestream_filter.wasm]
#   STACK_SEED               what to apply to etcd        [examples/config]
#   STACK_TICKER             1 = run the ticker           [1]
#   STACK_ENVOY_CONCURRENCY  Envoy workers                [2]
#   STACK_DRAIN              push servers' drain on stop  [2s]
#   STACK_LIMITER_LEASE      the limiter's lease          [15s]
#   ports: STACK_ETCD_PORT STACK_ETCD_PEER_PORT STACK_CP_GRPC_PORT STACK_CP_ADMIN_PORT
#          STACK_REDIS_PORT STACK_LIMITER_PORT STACK_LIMITER_ADMIN_PORT
#          STACK_PUSH_STABLE_PORT STACK_PUSH_STABLE_GRPC_PORT
#          STACK_PUSH_CANARY_PORT STACK_PUSH_CANARY_GRPC_PORT STACK_ENVOY_PORT
#          STACK_ENVOY_ADMIN_PORT
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

run_dir="${STACK_RUN_DIR:-.run}"
bin_dir="${STACK_BIN_DIR:-target/release}"
wasm="${STACK_WASM:-target/wasm32-wasip1/wasm-release/sidestream_filter.wasm}"
seed="${STACK_SEED:-examples/config}"
ticker="${STACK_TICKER:-1}"
concurrency="${STACK_ENVOY_CONCURRENCY:-2}"
drain="${STACK_DRAIN:-2s}"
lease="${STACK_LIMITER_LEASE:-15s}"
STACK_ETCD_PORT="${STACK_ETCD_PORT:-2379}"
STACK_ETCD_PEER_PORT="${STACK_ETCD_PEER_PORT:-2380}"
STACK_CP_GRPC_PORT="${STACK_CP_GRPC_PORT:-18000}"
STACK_CP_ADMIN_PORT="${STACK_CP_ADMIN_PORT:-18001}"
STACK_REDIS_PORT="${STACK_REDIS_PORT:-6379}"
STACK_LIMITER_PORT="${STACK_LIMITER_PORT:-18300}"
STACK_LIMITER_ADMIN_PORT="${STACK_LIMITER_ADMIN_PORT:-18301}"
STACK_PUSH_STABLE_PORT="${STACK_PUSH_STABLE_PORT:-18081}"
STACK_PUSH_STABLE_GRPC_PORT="${STACK_PUSH_STABLE_GRPC_PORT:-18091}"
STACK_PUSH_CANARY_PORT="${STACK_PUSH_CANARY_PORT:-18082}"
STACK_PUSH_CANARY_GRPC_PORT="${STACK_PUSH_CANARY_GRPC_PORT:-18092}"
STACK_ENVOY_PORT="${STACK_ENVOY_PORT:-10000}"
STACK_ENVOY_ADMIN_PORT="${STACK_ENVOY_ADMIN_PORT:-9901}"

# Plain logs in the log files (tracing honours NO_COLOR).
export NO_COLOR=1

etcd_url="http://127.0.0.1:$STACK_ETCD_PORT"
cp_admin="http://127.0.0.1:$STACK_CP_ADMIN_PORT"
envoy_url="http://127.0.0.1:$STACK_ENVOY_PORT"
envoy_admin="http://127.0.0.1:$STACK_ENVOY_ADMIN_PORT"

say() { printf 'run-stack: %s\n' "$*"; }
die() { printf 'run-stack: %s\n' "$*" >&2; exit 1; }

# --- preflight --------------------------------------------------------------
# The push server refuses a duration without a unit (as the control plane does).
case "$drain" in
  *[0-9] | *.) die "STACK_DRAIN='$drain' needs a unit: ${drain}ms, ${drain}s, ${drain}m" ;;
esac
case "$lease" in
  *[0-9] | *.) die "STACK_LIMITER_LEASE='$lease' needs a unit: ${lease}ms, ${lease}s, ${lease}m" ;;
esac
for tool in etcd redis-server redis-cli envoy curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; run scripts/install-deps.sh run"
done
for bin in sidestream-control-plane sidestream-push sidestream-limiter sidestreamctl; do
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin is missing; build it with 'cargo build --release --workspace --bins' (make run does)"
done
[ -f "$wasm" ] || die "the filter $wasm is missing; build it with 'make filter'"
[ -e "$seed" ] || die "the seed config $seed is missing"

mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
# Whether a process runs (a zombie, dead but not yet reaped, does not).
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -qs '^[0-9]* (.*) Z ' "/proc/$1/stat"; }
if [ -f "$run_dir/stack.pid" ]; then
  old="$(cat "$run_dir/stack.pid" 2>/dev/null || true)"
  if alive "$old" && [ "$old" != "$$" ]; then
    die "a stack is already running from $run_dir (pid $old); stop it with Ctrl-C in its terminal or 'kill $old'"
  fi
fi

# Processes left behind by an earlier run whose script was killed outright
# (kill -9, a closed terminal): stop them, but only those whose command line
# is still the one this script started.
reap_orphans() {
  local file name pid expect cmdline
  for file in "$run_dir"/pids/*.pid; do
    [ -f "$file" ] || continue
    name="$(basename "$file" .pid)"
    pid="$(cat "$file" 2>/dev/null || true)"
    case "$name" in
      etcd) expect="$run_dir/etcd" ;;
      redis) expect="redis-server" ;;
      control-plane) expect="$run_dir/control-plane" ;;
      limiter) expect="sidestream-limiter" ;;
      push-*) expect="sidestream-push" ;;
      envoy) expect="$run_dir/envoy.yaml" ;;
      ticker) expect="publish.sh" ;;
      *) continue ;;
    esac
    alive "$pid" && [ -r "/proc/$pid/cmdline" ] || continue
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    case "$cmdline" in
      *"$expect"*)
        say "stopping $name (pid $pid) left over from an earlier run"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        ;;
    esac
  done
}
reap_orphans

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$STACK_ETCD_PORT" "$STACK_ETCD_PEER_PORT" "$STACK_CP_GRPC_PORT" "$STACK_CP_ADMIN_PORT" "$STACK_REDIS_PORT" \
  "$STACK_LIMITER_PORT" "$STACK_LIMITER_ADMIN_PORT" \
  "$STACK_PUSH_STABLE_PORT" "$STACK_PUSH_STABLE_GRPC_PORT" "$STACK_PUSH_CANARY_PORT" "$STACK_PUSH_CANARY_GRPC_PORT" \
  "$STACK_ENVOY_PORT" "$STACK_ENVOY_ADMIN_PORT"; do
  if port_busy "$port"; then
    die "127.0.0.1:$port is already in use (another stack, or a system etcd/redis?); free it or set the port variables (see the top of $0)"
  fi
done

# A clean slate: no stale data, pids or logs from an earlier run.
rm -rf "$run_dir/etcd" "$run_dir/redis" "$run_dir/logs" "$run_dir/pids" "$run_dir/ready" "$run_dir/envoy.yaml" "$run_dir/control-plane"
mkdir -p "$run_dir/etcd" "$run_dir/redis" "$run_dir/logs" "$run_dir/pids" "$run_dir/control-plane"
echo "$$" > "$run_dir/stack.pid"

# --- process bookkeeping ----------------------------------------------------
pids=()
names=()
stopping=0

start() { # start NAME COMMAND...: runs it in the background, output appended to logs/NAME.log
  local name="$1"; shift
  # A session of its own: Ctrl-C reaches only this script, which then stops
  # the processes newest first (a child killed by the terminal's SIGINT at the
  # same moment would look like a crash, and the order would be lost).
  setsid "$@" >>"$run_dir/logs/$name.log" 2>&1 &
  local pid=$! i
  echo "$pid" >"$run_dir/pids/$name.pid"
  for i in "${!names[@]}"; do
    if [ "${names[$i]}" = "$name" ]; then pids[$i]=$pid; return 0; fi
  done
  pids+=("$pid")
  names+=("$name")
}

stop_all() {
  [ "$stopping" -eq 0 ] || return 0
  stopping=1
  trap - INT TERM
  say "stopping"
  # Newest first: Envoy and the push servers before the control plane, etcd, Redis.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 15))
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} did not stop in time; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    wait "${pids[$i]}" 2>/dev/null || true
  done
  rm -rf "$run_dir/stack.pid" "$run_dir/ready" "$run_dir/pids"
  say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

fail() { # fail NAME MESSAGE: show the log of what failed, then stop everything
  say "$2"
  if [ -f "$run_dir/logs/$1.log" ]; then
    say "last lines of $run_dir/logs/$1.log:"
    tail -n 30 "$run_dir/logs/$1.log" >&2 || true
  fi
  exit 1
}

wait_until() { # wait_until NAME SECONDS COMMAND...: polls COMMAND until it succeeds
  local name="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    local i
    for i in "${!names[@]}"; do
      if [ "${names[$i]}" = "$name" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
        fail "$name" "$name exited during start-up"
      fi
    done
    [ "$SECONDS" -lt "$deadline" ] || fail "$name" "$name was not ready within ${limit}s"
    sleep 0.1
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# --- etcd -------------------------------------------------------------------
say "starting etcd on 127.0.0.1:$STACK_ETCD_PORT"
start etcd etcd --name sidestream --data-dir "$run_dir/etcd" \
  --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "http://127.0.0.1:$STACK_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$STACK_ETCD_PEER_PORT" \
  --initial-cluster "sidestream=http://127.0.0.1:$STACK_ETCD_PEER_PORT" \
  --logger zap --log-level warn
wait_until etcd 20 http_ok "$etcd_url/health"

say "seeding etcd with $seed"
if ! "$bin_dir/sidestreamctl" --etcd-endpoints "$etcd_url" apply "$seed" >"$run_dir/logs/seed.log" 2>&1; then
  fail seed "sidestreamctl apply $seed failed"
fi

# --- Redis ------------------------------------------------------------------
say "starting redis-server on 127.0.0.1:$STACK_REDIS_PORT"
start redis redis-server --bind 127.0.0.1 --port "$STACK_REDIS_PORT" --dir "$run_dir/redis" \
  --save "" --appendonly no --daemonize no
wait_until redis 10 redis-cli -p "$STACK_REDIS_PORT" ping

# --- limiter ----------------------------------------------------------------
# Mesh-wide stream limits (the seeded tenant policy is mesh-scoped): buckets
# and leased counts in the same Redis.
say "starting the limiter on 127.0.0.1:$STACK_LIMITER_PORT (admin $STACK_LIMITER_ADMIN_PORT)"
start limiter "$bin_dir/sidestream-limiter" \
  --listen "127.0.0.1:$STACK_LIMITER_PORT" --admin-listen "127.0.0.1:$STACK_LIMITER_ADMIN_PORT" \
  --redis "redis://127.0.0.1:$STACK_REDIS_PORT" --lease "$lease"
wait_until limiter 30 http_ok "http://127.0.0.1:$STACK_LIMITER_ADMIN_PORT/readyz"

# --- control plane ----------------------------------------------------------
say "starting the control plane on 127.0.0.1:$STACK_CP_GRPC_PORT (admin $STACK_CP_ADMIN_PORT)"
start control-plane "$bin_dir/sidestream-control-plane" \
  --etcd-endpoints "$etcd_url" \
  --grpc-listen "127.0.0.1:$STACK_CP_GRPC_PORT" --admin-listen "127.0.0.1:$STACK_CP_ADMIN_PORT" \
  --snapshot-cache "$run_dir/control-plane/snapshot.json"
wait_until control-plane 30 http_ok "$cp_admin/readyz"

# --- push servers -----------------------------------------------------------
start_push() { # start_push GROUP HTTP_PORT GRPC_PORT
  say "starting push server '$1' on 127.0.0.1:$2 (gRPC $3)"
  start "push-$1" "$bin_dir/sidestream-push" \
    --listen "127.0.0.1:$2" --grpc-listen "127.0.0.1:$3" \
    --broker "redis://127.0.0.1:$STACK_REDIS_PORT" \
    --control-plane "http://127.0.0.1:$STACK_CP_GRPC_PORT" \
    --node-id "$1" --drain-grace "$drain"
}
start_push stable "$STACK_PUSH_STABLE_PORT" "$STACK_PUSH_STABLE_GRPC_PORT"
start_push canary "$STACK_PUSH_CANARY_PORT" "$STACK_PUSH_CANARY_GRPC_PORT"
wait_until push-stable 30 http_ok "http://127.0.0.1:$STACK_PUSH_STABLE_PORT/healthz/ready"
wait_until push-canary 30 http_ok "http://127.0.0.1:$STACK_PUSH_CANARY_PORT/healthz/ready"

# --- Envoy ------------------------------------------------------------------
# envoy-config/stack.yaml with this run's ports and module path.
sed -E \
  -e "s#port_value: 10000\b#port_value: $STACK_ENVOY_PORT#" \
  -e "s#port_value: 9901\b#port_value: $STACK_ENVOY_ADMIN_PORT#" \
  -e "s#port_value: 18000\b#port_value: $STACK_CP_GRPC_PORT#" \
  -e "s#port_value: 18300\b#port_value: $STACK_LIMITER_PORT#" \
  -e "s#port_value: 18081\b#port_value: $STACK_PUSH_STABLE_PORT#" \
  -e "s#port_value: 18082\b#port_value: $STACK_PUSH_CANARY_PORT#" \
  -e "s#port_value: 18091\b#port_value: $STACK_PUSH_STABLE_GRPC_PORT#" \
  -e "s#port_value: 18092\b#port_value: $STACK_PUSH_CANARY_GRPC_PORT#" \
  -e "s#filename: target/wasm32-wasip1/wasm-release/sidestream_filter.wasm#filename: $wasm#" \
  envoy-config/stack.yaml >"$run_dir/envoy.yaml"
say "starting Envoy on 127.0.0.1:$STACK_ENVOY_PORT (admin $STACK_ENVOY_ADMIN_PORT)"
start envoy envoy -c "$run_dir/envoy.yaml" --concurrency "$concurrency" \
  --disable-hot-restart --log-level warn --component-log-level wasm:info
wait_until envoy 30 http_ok "$envoy_admin/ready"

# The filter has received its first snapshot from the control plane.
filter_configured() {
  local version
  version="$(curl -fsS --max-time 2 "$envoy_admin/stats?filter=sidestream.config_version\$" | sed -n 's/.*: *//p' | head -n 1)"
  [ -n "$version" ] && [ "$version" -gt 0 ]
}
wait_until envoy 30 filter_configured

# --- ticker -----------------------------------------------------------------
if [ "$ticker" = "1" ]; then
  start ticker examples/live-ticker/publish.sh "$envoy_url"
fi

touch "$run_dir/ready"
cat <<EOF

sidestream is running (logs and data in $run_dir):

  demo page            $envoy_url/
  Envoy stats          $envoy_admin/stats?filter=wasmcustom.sidestream
                       $envoy_admin/stats/prometheus
  control-plane admin  $cp_admin/v1/snapshot   ($cp_admin/v1/clients, /v1/rejections, /metrics)
  limiter admin        http://127.0.0.1:$STACK_LIMITER_ADMIN_PORT/metrics   (/readyz)
  push servers         stable http://127.0.0.1:$STACK_PUSH_STABLE_PORT/metrics
                       canary http://127.0.0.1:$STACK_PUSH_CANARY_PORT/metrics

Subscribe and publish through Envoy:
  curl -N -H 'accept: text/event-stream' '$envoy_url/v1/events?topic=ticker'
  curl -d 'hello' '$envoy_url/v1/topics/ticker/messages'

Change a policy live (the control plane pushes it to Envoy in milliseconds):
  $bin_dir/sidestreamctl --etcd-endpoints $etcd_url get releases
  examples/grey-release/set-canary-percent.sh 50     # half of new streams to canary
  $bin_dir/sidestreamctl --etcd-endpoints $etcd_url --admin $cp_admin status

Ctrl-C stops everything.
EOF

# Stay up until Ctrl-C. A push server that exits (crash, or killed to try a
# resume) is restarted, as Kubernetes would; any other process exiting stops
# the stack.
restarts=0
restart_push() { # restart_push NAME
  restarts=$((restarts + 1))
  [ "$restarts" -le 50 ] || fail "$1" "push servers exited too often; giving up"
  say "$1 exited; restarting it"
  case "$1" in
    push-stable) start_push stable "$STACK_PUSH_STABLE_PORT" "$STACK_PUSH_STABLE_GRPC_PORT"
                 wait_until push-stable 30 http_ok "http://127.0.0.1:$STACK_PUSH_STABLE_PORT/healthz/ready" ;;
    push-canary) start_push canary "$STACK_PUSH_CANARY_PORT" "$STACK_PUSH_CANARY_GRPC_PORT"
                 wait_until push-canary 30 http_ok "http://127.0.0.1:$STACK_PUSH_CANARY_PORT/healthz/ready" ;;
  esac
  say "$1 is back"
}
while :; do
  exited=""
  wait -n -p exited "${pids[@]}" 2>/dev/null || true
  [ "$stopping" -eq 0 ] || break
  [ -n "$exited" ] || continue
  for i in "${!pids[@]}"; do
    [ "${pids[$i]}" = "$exited" ] || continue
    case "${names[$i]}" in
      push-stable|push-canary) restart_push "${names[$i]}" ;;
      *) fail "${names[$i]}" "${names[$i]} exited unexpectedly" ;;
    esac
  done
done
