#!/usr/bin/env bash
# sidestream benchmarks (what `make bench` runs after building the release
# binaries and the filter). Results: bench/out/results/*.json|txt, plots:
# bench/results/*.svg, report: BENCHMARKS.md (filled from bench/BENCHMARKS.md.in).
#
#   scripts/bench.sh [--smoke] [filter] [stream] [propagation] [push] [mesh] [report]
#
# No benchmark names = all of them, then the report. --smoke = seconds-long
# runs with a few connections, to check the harness, not to measure.
#
# Environment (defaults in brackets):
#   CARGO_TARGET_DIR [target]   where the release binaries and the Wasm modules are
#   BENCH_PROFILE [release]     cargo profile folder of the native binaries
#   BENCH_PORT_BASE [28000]     ports used: base+0 .. base+380 on 127.0.0.1
#   BENCH_OUT [bench/out]       raw results (results/) and the servers' logs (run/)
#   SIDESTREAM_BIN_DIR [$CARGO_TARGET_DIR/$BENCH_PROFILE]  sidestream-push, sidestream-control-plane
#   SIDESTREAM_WASM             the sidestream filter module
#                               [$CARGO_TARGET_DIR/wasm32-wasip1/wasm-release/sidestream_filter.wasm]
#   BENCH_SERVER_CPU [0]        core Envoy is pinned to in the filter benchmark
#   BENCH_CLIENT_CPU [1]        core for the load client and the upstream there
#   FILTER_SECONDS [30]         per measurement (throughput and latency)
#   FILTER_ROUNDS [3]           rounds over the four variants; the median round counts
#   FILTER_CONNECTIONS [64]     wrk connections at saturation
#   FILTER_RATE [3000]          fixed request rate of the latency run
#   FILTER_VARIANTS ["none empty-wasm calls-only sidestream lua"]
#   STREAM_SUBSCRIBERS [1000]   the stream path: SSE subscribers through Envoy (1 worker)
#   STREAM_RATE [50]            messages/s published to them (each relayed to every subscriber)
#   STREAM_SECONDS [20]         per measurement; STREAM_ROUNDS [3] rounds of (no filter, filter)
#   STREAM_TOGETHER_ROUNDS [3]  rounds with the Envoys (no filter, empty, sidestream) at once, a third of the subscribers each
#   PROPAGATION_UPDATES [250]
#   PUSH_SERVERS ["sidestream-epoll sidestream-uring nchan pushpin"]  sidestream-push's variants
#                               (flags per variant: SIDESTREAM_VARIANT_ARGS below) and its peers
#   PUSH_PARTS ["memory latency saturation rates otlp"]  which push measurements to run
#                               (rates: server CPU per delivery against message rate;
#                               otlp: the fan-out with span export off, then on, sidestream only)
#   PUSH_IDLE [18000]           idle SSE connections held
#   PUSH_SUBSCRIBERS [10000]    fan-out subscribers
#   PUSH_STEPS ["1:10,2:10,5:10,10:10,20:10,40:10,80:10,160:10,240:10"]  saturation ladder (publish/s:seconds)
#   PUSH_SWEEP ["1000 2500 5000 10000"]  subscriber counts of the latency sweep
#   PUSH_SWEEP_RATE [2]         publish/s in the latency sweep (2 × 10,000 = 20,000 deliveries/s)
#   PUSH_RATES ["1:5,2:5,5:5,10:5,20:5,40:5"]  steps (publish/s:seconds) of the rate sweep
#   PUSH_RATE_SUBSCRIBERS [10000]  subscribers of the rate sweep
#   PUSH_CLIENT_THREADS [2]     load-client runtime threads
#   PUSH_CONNECT_CONCURRENCY [256]  subscriber connection attempts in flight
#   PUSH_PAYLOAD_BYTES [128]    message data size
#   PUSH_OTLP_SUBSCRIBERS [2000] PUSH_OTLP_STEPS ["10:30"]  the tracing-overhead fan-out
#   PUSHPIN_MESSAGE_RATE [1000000] PUSHPIN_MESSAGE_HWM [1000000]
#   MESH_RATES ["200 1000"]     stream opens/s over two Envoys, mesh- vs Envoy-scoped policy
#   MESH_SECONDS [20]           per open-rate measurement (after 3 s of warm-up)
#   MESH_STORM [5000]           opens of the reconnect storm over three Envoys
#   MESH_STORM_LIMIT [1000]     the storm policy's burst (no refill to speak of)
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true
cd "$(dirname "$0")/.."
ROOT=$PWD

smoke=0
what=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    filter|stream|propagation|push|mesh|report) what+=("$arg") ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "bench: unknown argument '$arg' (filter, stream, propagation, push, mesh, report, --smoke)" >&2; exit 64 ;;
  esac
done
[ ${#what[@]} -gt 0 ] || what=(filter stream propagation push mesh report)

TARGET=${CARGO_TARGET_DIR:-target}
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
PROFILE=${BENCH_PROFILE:-release}
BIN="$TARGET/$PROFILE"
WASM_DIR="$TARGET/wasm32-wasip1/wasm-release"
SIDESTREAM_WASM=${SIDESTREAM_WASM:-$WASM_DIR/sidestream_filter.wasm}
SERVER_BIN=${SIDESTREAM_BIN_DIR:-$BIN}
BENCH="$BIN/sidestream-bench"
OUT=${BENCH_OUT:-$ROOT/bench/out}
RESULTS="$OUT/results"
RUN="$OUT/run"
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}

# Ports: BENCH_PORT_BASE [28000] + offsets, below the ephemeral range and away
# from the defaults the tests and `make run` use.
B=${BENCH_PORT_BASE:-28000}
P_ENVOY=$((B + 0)) P_ENVOY_ADMIN=$((B + 1))
P_PROP_ENVOY=$((B + 10)) P_PROP_ENVOY_ADMIN=$((B + 11))
P_PUSH=$((B + 80)) P_PUSH_GRPC=$((B + 90))
P_UPSTREAM_STABLE=$((B + 81)) P_UPSTREAM_CANARY=$((B + 82))
P_NCHAN=$((B + 180))
P_PUSHPIN=$((B + 280)) P_PUSHPIN_PUBLISH=$((B + 281)) P_GRIP_ORIGIN=$((B + 282))
P_PUSHPIN_PUSH_IN=$((B + 283)) P_PUSHPIN_PUSH_IN_SUB=$((B + 284)) P_PUSHPIN_COMMAND=$((B + 285))
P_CP_GRPC=$((B + 300)) P_CP_ADMIN=$((B + 301))
P_OTLP=$((B + 95))
P_STREAM_PUSH=$((B + 60)) P_STREAM_PUSH_GRPC=$((B + 61))
P_ETCD=$((B + 379)) P_ETCD_PEER=$((B + 380))
P_MESH_REDIS=$((B + 330)) P_MESH_LIMITER=$((B + 331)) P_MESH_LIMITER_ADMIN=$((B + 332))
P_MESH_ENVOY=$((B + 340))  # three Envoys: listener base+340+2i, admin base+341+2i

if [ "$smoke" = 1 ]; then
  FILTER_SECONDS=${FILTER_SECONDS:-2} FILTER_ROUNDS=${FILTER_ROUNDS:-1}
  FILTER_RATE=${FILTER_RATE:-300} FILTER_CONNECTIONS=${FILTER_CONNECTIONS:-8}
  PROPAGATION_UPDATES=${PROPAGATION_UPDATES:-10}
  PUSH_IDLE=${PUSH_IDLE:-300} PUSH_SUBSCRIBERS=${PUSH_SUBSCRIBERS:-200}
  PUSH_STEPS=${PUSH_STEPS:-2:2,5:2} PUSH_SWEEP=${PUSH_SWEEP:-100 200}
  PUSH_SWEEP_SECONDS=${PUSH_SWEEP_SECONDS:-2}
  PUSH_RATES=${PUSH_RATES:-2:2,10:2} PUSH_RATE_SUBSCRIBERS=${PUSH_RATE_SUBSCRIBERS:-200}
  STREAM_SUBSCRIBERS=${STREAM_SUBSCRIBERS:-100} STREAM_SECONDS=${STREAM_SECONDS:-3} STREAM_ROUNDS=${STREAM_ROUNDS:-1} STREAM_TOGETHER_ROUNDS=${STREAM_TOGETHER_ROUNDS:-1}
  MESH_SECONDS=${MESH_SECONDS:-2} MESH_STORM=${MESH_STORM:-500} MESH_STORM_LIMIT=${MESH_STORM_LIMIT:-100}
  PUSH_OTLP_SUBSCRIBERS=${PUSH_OTLP_SUBSCRIBERS:-100} PUSH_OTLP_STEPS=${PUSH_OTLP_STEPS:-5:2}
fi
FILTER_SECONDS=${FILTER_SECONDS:-30}
FILTER_ROUNDS=${FILTER_ROUNDS:-3}
FILTER_CONNECTIONS=${FILTER_CONNECTIONS:-64}
FILTER_RATE=${FILTER_RATE:-3000}
FILTER_VARIANTS=${FILTER_VARIANTS:-none empty-wasm calls-only sidestream lua}
STREAM_SUBSCRIBERS=${STREAM_SUBSCRIBERS:-1000}
STREAM_RATE=${STREAM_RATE:-50}
STREAM_SECONDS=${STREAM_SECONDS:-20}
STREAM_ROUNDS=${STREAM_ROUNDS:-3}
STREAM_TOGETHER_ROUNDS=${STREAM_TOGETHER_ROUNDS:-3}
PROPAGATION_UPDATES=${PROPAGATION_UPDATES:-250}
PUSH_SERVERS=${PUSH_SERVERS:-sidestream-epoll sidestream-uring nchan pushpin}
PUSH_PARTS=${PUSH_PARTS:-memory latency saturation rates otlp}
PUSH_IDLE=${PUSH_IDLE:-18000}
PUSH_SUBSCRIBERS=${PUSH_SUBSCRIBERS:-10000}
PUSH_STEPS=${PUSH_STEPS:-1:10,2:10,5:10,10:10,20:10,40:10,80:10,160:10,240:10}
PUSH_SWEEP=${PUSH_SWEEP:-1000 2500 5000 10000}
PUSH_SWEEP_RATE=${PUSH_SWEEP_RATE:-2}
PUSH_SWEEP_SECONDS=${PUSH_SWEEP_SECONDS:-15}
PUSH_RATES=${PUSH_RATES:-1:5,2:5,5:5,10:5,20:5,40:5}
PUSH_RATE_SUBSCRIBERS=${PUSH_RATE_SUBSCRIBERS:-10000}
PUSH_CLIENT_THREADS=${PUSH_CLIENT_THREADS:-2}
PUSH_CONNECT_CONCURRENCY=${PUSH_CONNECT_CONCURRENCY:-256}
PUSH_PAYLOAD_BYTES=${PUSH_PAYLOAD_BYTES:-128}
PUSH_OTLP_SUBSCRIBERS=${PUSH_OTLP_SUBSCRIBERS:-2000}
PUSH_OTLP_STEPS=${PUSH_OTLP_STEPS:-10:30}
PUSHPIN_MESSAGE_RATE=${PUSHPIN_MESSAGE_RATE:-1000000}
PUSHPIN_MESSAGE_HWM=${PUSHPIN_MESSAGE_HWM:-1000000}
MESH_RATES=${MESH_RATES:-200 1000}
MESH_SECONDS=${MESH_SECONDS:-20}
MESH_STORM=${MESH_STORM:-5000}
MESH_STORM_LIMIT=${MESH_STORM_LIMIT:-1000}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes
# Every process this script starts is recorded by pid and stopped by pid.
declare -A PIDS=()
start() { # name cmd... (output in $RUN/<name>.log)
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  PIDS[$name]=$!
  log "started $name (pid ${PIDS[$name]})"
}
stop() { # name...
  local name pid
  for name in "$@"; do
    pid=${PIDS[$name]:-}
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
  done
}
cleanup() {
  local name
  for name in "${!PIDS[@]}"; do stop "$name"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

alive() { kill -0 "${PIDS[$1]}" 2>/dev/null || die "$1 exited; log: $RUN/$1.log"$'\n'"$(tail -20 "$RUN/$1.log")"; }

wait_http() { # name url [seconds] : until the URL answers 2xx
  local name=$1 url=$2 secs=${3:-30} i
  for i in $(seq 1 $((secs * 10))); do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    alive "$name"
    sleep 0.1
  done
  die "$name did not answer $url within ${secs}s; log: $RUN/$name.log"
}

wait_answer() { # name url [seconds] : until the URL answers at all (any status)
  local name=$1 url=$2 secs=${3:-30} i code
  for i in $(seq 1 $((secs * 10))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
    if [ -n "$code" ] && [ "$code" != 000 ]; then return 0; fi
    alive "$name"
    sleep 0.1
  done
  die "$name did not answer $url within ${secs}s; log: $RUN/$name.log"
}

ports_free() { # port... : refuse to start next to someone else's server
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p is already in use by another process (set BENCH_PORT_BASE to move the benchmark's ports)"
    fi
  done
}

fill() { # template out KEY=VALUE... : replace @KEY@
  local template=$1 out=$2; shift 2
  local text kv
  text=$(cat "$template")
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  printf '%s\n' "$text" >"$out"
}

summary() { # kind file : one line for the log
  python3 - "$@" <<'EOF'
import json, sys
kind, r = sys.argv[1], json.load(open(sys.argv[2]))
if kind == "propagation":
    l = r["latency"]
    print(f"{r['completed']}/{r['updates']} applied by {r['clients']} clients: p50 {l['p50_ms']} ms, p99 {l['p99_ms']} ms, max {l['max_ms']} ms")
elif kind == "memory":
    print(f"{r['connected']} held ({r['failed']} failed), {r['rss_per_connection_bytes']:.0f} B RSS per connection")
EOF
}

core_times() { # cpu : "busy total" jiffies of one core
  awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6; print busy, total }' /proc/stat
}
core_busy() { # "busy total" before, after : percent
  echo "$1 $2" | awk '{ d = $4 - $2; p = 0; if (d > 0) p = 100 * ($3 - $1) / d; printf "%.1f\n", p }'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ------------------------------------------------------------------- setup
prepare() {
  mkdir -p "$RESULTS" "$RUN"
  # Each process may open at most the hard limit of files (20,000 here).
  ulimit -n "$(ulimit -Hn)"
  [ -x "$BENCH" ] || cargo build --profile "$PROFILE" -p sidestream-bench
  command -v envoy >/dev/null || die "envoy is not on PATH (scripts/install-deps.sh bench)"
}

# conditions [part] : (re)writes the machine description in conditions.json;
# with a part, also notes when that part ran and the load average then, so a
# report built from parts run at different times says when each was measured.
conditions() {
  python3 - "$RESULTS/conditions.json" "$smoke" "${1:-}" <<'EOF'
import json, os, platform, subprocess, sys, datetime
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or subprocess.run(cmd, capture_output=True, text=True, timeout=10).stderr.strip()
    except Exception as e:
        return f"unavailable ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
c = {
    "mode": "SMOKE (harness check, not a measurement)" if sys.argv[2] == "1" else "full",
    "last written (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    "machine": f"{os.cpu_count()} cores ({cpu}), {int(mem)//1024} MiB RAM, kernel {platform.release()}",
    "Envoy": run("envoy", "--version").split("version:")[-1].strip(),
    "nginx / Nchan": run("dpkg-query", "-W", "-f=${Version}", "nginx-light") + " / " + run("dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"),
    "Pushpin / condure / zurl": " / ".join(run("dpkg-query", "-W", "-f=${Version}", p) for p in ("pushpin", "condure", "zurl")),
    "etcd": run("etcd", "--version").splitlines()[0] if run("etcd", "--version") else "?",
    "wrk": run("dpkg-query", "-W", "-f=${Version}", "wrk"),
    "rustc": run("rustc", "--version"),
    "sidestream commit": run("git", "describe", "--always", "--dirty", "--abbrev=7"),
    "open files per process": run("bash", "-c", "ulimit -Hn"),
}
# Keep what earlier invocations noted about their parts.
try:
    old = dict(json.load(open(sys.argv[1])))
except Exception:
    old = {}
for k, v in old.items():
    if k.endswith(" measured at (UTC; load average 1/5/15 min)"):
        c.setdefault(k, v)
if sys.argv[3]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    c[f"{sys.argv[3]} measured at (UTC; load average 1/5/15 min)"] = f"{now}; {load}"
json.dump(list(c.items()), open(sys.argv[1], "w"), indent=2)
EOF
}

# ------------------------------------------------------------------ filter
filter_variant_ready() { # variant : one request through Envoy reaches the upstream as expected
  local v=$1 headers
  headers=$(curl -fsS -D - -o /dev/null --max-time 2 -H 'x-user-id: user-1' "http://127.0.0.1:$P_ENVOY/") \
    || die "request through Envoy ($v) failed; log: $RUN/envoy-$v.log"
  case "$v" in
    sidestream|lua)
      grep -qi '^x-bench-traced: 1' <<<"$headers" \
        || die "$v: the upstream saw no traceparent, the filter is not working"$'\n'"$headers"
      grep -qi '^x-trace-id: [0-9a-f]\{32\}' <<<"$headers" \
        || die "$v: no x-trace-id on the response, the filter is not working"$'\n'"$headers"
      curl -fsS -D - -o /dev/null --max-time 2 -H 'x-env-tag: canary' "http://127.0.0.1:$P_ENVOY/" \
        | grep -qi '^x-bench-group: canary' || die "$v: x-env-tag: canary did not reach the canary upstream" ;;
    calls-only)
      grep -qi '^x-bench-traced: 1' <<<"$headers" && grep -qi '^x-trace-id: ' <<<"$headers" \
        || die "$v: the empty filter did not make its host calls"$'\n'"$headers" ;;
  esac
}

filter_envoy_config() { # variant wasm-dir : writes $RUN/envoy-filter-<variant>.yaml
  local v=$1 snippet cfg="$RUN/envoy-filter-$1.yaml"
  snippet=$(cat "bench/envoy/filters/$v.yaml")
  fill bench/envoy/filter-base.yaml "$cfg" \
    "HTTP_FILTERS=$snippet" ADMIN_PORT=$P_ENVOY_ADMIN LISTEN_PORT=$P_ENVOY \
    STABLE_PORT=$P_UPSTREAM_STABLE CANARY_PORT=$P_UPSTREAM_CANARY
  fill "$cfg" "$cfg" "WASM_DIR=$2" "LUA_FILE=$ROOT/bench/lua/sidestream-equivalent.lua"
}

# Where the filter's time goes: bench/hostcall-probe times, inside Envoy's V8
# VM, each host call and decision the filter makes per request (median of the
# probe's 3 runs) -> filter-probe.json.
bench_filter_probe() { # wasm-dir
  local lines="$RESULTS/filter-probe-lines.txt"
  filter_envoy_config probe "$1"
  start envoy-probe taskset -c "$SERVER_CPU" envoy -c "$RUN/envoy-filter-probe.yaml" --concurrency 1 \
    --disable-hot-restart --log-level warn
  wait_http envoy-probe "http://127.0.0.1:$P_ENVOY_ADMIN/ready" 60
  log "filter: in-VM cost of each host call and decision (bench/hostcall-probe)"
  taskset -c "$CLIENT_CPU" wrk -t1 -c4 -d3s -H 'x-user-id: user-42' "http://127.0.0.1:$P_ENVOY/" >/dev/null
  alive envoy-probe
  stop envoy-probe
  grep -o 'sidestream-probe {.*}' "$RUN/envoy-probe.log" | sed 's/^sidestream-probe //' >"$lines" || true
  python3 - "$lines" "$RESULTS/filter-probe.json" <<'EOF' || die "the probe's results are missing; log: $RUN/envoy-probe.log"
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not runs:
    sys.exit("the probe logged no measurement")
names = [k for k in runs[0] if k != "request"]
ns = {k: statistics.median(r[k] for r in runs if k in r) for k in names}
json.dump({"runs": len(runs), "ns_per_call": ns}, open(sys.argv[2], "w"), indent=2)
EOF
}

bench_filter() {
  log "filter benchmark: Envoy --concurrency 1 pinned to cpu $SERVER_CPU, clients on cpu $CLIENT_CPU"
  local variants=($FILTER_VARIANTS) round v
  if [[ " ${variants[*]} " == *" sidestream "* ]]; then
    [ -f "$SIDESTREAM_WASM" ] || die "no sidestream filter at $SIDESTREAM_WASM (make filter, or set SIDESTREAM_WASM)"
  fi
  CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} scripts/build-filter.sh -p sidestream-empty-filter -p sidestream-hostcall-probe \
    >"$RUN/build-empty-filter.log" 2>&1 \
    || die "building the empty filter and the probe failed: $RUN/build-empty-filter.log"
  local empty="$WASM_DIR/sidestream_empty_filter.wasm"
  [ -f "$empty" ] || die "no empty filter at $empty"
  rm -f "$RESULTS"/filter-*
  local wasm_tmp="$RUN/wasm"
  mkdir -p "$wasm_tmp"
  [ ! -f "$SIDESTREAM_WASM" ] || cp "$SIDESTREAM_WASM" "$wasm_tmp/sidestream_filter.wasm"
  cp "$empty" "$wasm_tmp/sidestream_empty_filter.wasm"
  cp "$WASM_DIR/sidestream_hostcall_probe.wasm" "$wasm_tmp/"

  ports_free "$P_UPSTREAM_STABLE" "$P_UPSTREAM_CANARY" "$P_ENVOY" "$P_ENVOY_ADMIN"
  start upstream taskset -c "$CLIENT_CPU" "$BENCH" --threads 1 upstream --mode echo \
    --listen "127.0.0.1:$P_UPSTREAM_STABLE" --listen "127.0.0.1:$P_UPSTREAM_CANARY"
  wait_http upstream "http://127.0.0.1:$P_UPSTREAM_STABLE/"

  for round in $(seq 1 "$FILTER_ROUNDS"); do
    for v in "${variants[@]}"; do
      local cfg="$RUN/envoy-filter-$v.yaml"
      filter_envoy_config "$v" "$wasm_tmp"
      start "envoy-$v" taskset -c "$SERVER_CPU" envoy -c "$cfg" --concurrency 1 \
        --disable-hot-restart --log-level warn
      wait_http "envoy-$v" "http://127.0.0.1:$P_ENVOY_ADMIN/ready" 60
      filter_variant_ready "$v"
      local pid=${PIDS[envoy-$v]}
      log "filter round $round/$FILTER_ROUNDS: $v: warm-up"
      taskset -c "$CLIENT_CPU" wrk -t1 -c"$FILTER_CONNECTIONS" -d"$(( FILTER_SECONDS < 5 ? 1 : 5 ))s" \
        -H 'x-user-id: user-42' "http://127.0.0.1:$P_ENVOY/" >/dev/null
      log "filter round $round: $v: throughput (wrk -t1 -c$FILTER_CONNECTIONS -d${FILTER_SECONDS}s)"
      local t0 t1 s0 s1
      local c0s c0c c1s c1c
      c0s=$(core_times "$SERVER_CPU"); c0c=$(core_times "$CLIENT_CPU")
      t0=$(cpu_ticks "$pid"); s0=$(date +%s.%N)
      taskset -c "$CLIENT_CPU" wrk -t1 -c"$FILTER_CONNECTIONS" -d"${FILTER_SECONDS}s" --latency \
        -H 'x-user-id: user-42' "http://127.0.0.1:$P_ENVOY/" >"$RESULTS/filter-$v-wrk-r$round.txt"
      t1=$(cpu_ticks "$pid"); s1=$(date +%s.%N)
      c1s=$(core_times "$SERVER_CPU"); c1c=$(core_times "$CLIENT_CPU")
      printf 'server core %s%% busy, client core %s%% busy\n' "$(core_busy "$c0s" "$c1s")" "$(core_busy "$c0c" "$c1c")" \
        >"$RESULTS/filter-$v-cores-r$round.txt"
      awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.1f\n", 100 * (b - a) / hz / (e - s) }' >"$RESULTS/filter-$v-cpu-r$round.txt"
      log "filter round $round: $v: $(grep Requests/sec "$RESULTS/filter-$v-wrk-r$round.txt"), Envoy CPU $(cat "$RESULTS/filter-$v-cpu-r$round.txt")%, $(cat "$RESULTS/filter-$v-cores-r$round.txt")"
      log "filter round $round: $v: latency at $FILTER_RATE req/s"
      taskset -c "$CLIENT_CPU" "$BENCH" --threads 1 latency --url "http://127.0.0.1:$P_ENVOY/" \
        --rate "$FILTER_RATE" --duration "$FILTER_SECONDS" --warmup 2 --connections 16 --vary-user \
        --server-pid "$pid" --label "$v" --out "$RESULTS/filter-$v-latency-r$round.json" >/dev/null
      alive "envoy-$v"
      stop "envoy-$v"
    done
  done
  bench_filter_probe "$wasm_tmp"
  stop upstream
  # The median round (by throughput) of each variant is the reported one;
  # for latency, the round with the median p99.
  for v in "${variants[@]}"; do
    local best
    best=$(for f in "$RESULTS"/filter-"$v"-wrk-r*.txt; do
             printf '%s %s\n' "$(awk '/Requests\/sec/ {print $2}' "$f")" "$f"; done | sort -n \
           | awk '{a[NR]=$2} END {print a[int((NR+1)/2)]}')
    cp "$best" "$RESULTS/filter-$v-wrk.txt"
    cp "${best/-wrk-/-cpu-}" "$RESULTS/filter-$v-cpu.txt"
    cp "${best/-wrk-/-cores-}" "$RESULTS/filter-$v-cores.txt"
    best=$(for f in "$RESULTS"/filter-"$v"-latency-r*.json; do
             printf '%s %s\n' "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latency"]["p99_ms"])' "$f")" "$f"; done \
           | sort -n | awk '{a[NR]=$2} END {print a[int((NR+1)/2)]}')
    cp "$best" "$RESULTS/filter-$v-latency.json"
  done
  log "filter benchmark done"
}

# ------------------------------------------------------------------ stream
# The stream path (issue 11): Envoy (one worker, pinned as in the filter
# benchmark) relays SSE from sidestream-push (the upstream that streams) to
# STREAM_SUBSCRIBERS subscribers at STREAM_RATE messages/s, without and with
# the sidestream filter, alternated in STREAM_ROUNDS rounds (ABBA order). `sidestream-bench
# fanout --server-pid <Envoy>` reports Envoy's CPU time (/proc) per relayed
# message -> stream-<variant>-r<round>.json.
stream_envoy_config() { # variant wasm-dir [listen-port admin-port] : writes $RUN/envoy-stream-<variant>.yaml
  local v=$1 snippet cfg="$RUN/envoy-stream-$1.yaml" listen=${3:-$P_ENVOY} admin=${4:-$P_ENVOY_ADMIN}
  # The filter's tenant stream limit (5/s, burst 5, 20 at once per key; here
  # every subscriber has the same client address) raised so every subscriber
  # is admitted: admission still runs at each open, as for any stream.
  snippet=$(sed -e 's/"newStreamsPerSecond": 5,/"newStreamsPerSecond": 100000,/' \
    -e 's/"burst": 5,/"burst": 100000,/' -e 's/"maxConcurrent": 20,/"maxConcurrent": 100000,/' \
    "bench/envoy/filters/$v.yaml")
  fill bench/envoy/filter-base.yaml "$cfg" \
    "HTTP_FILTERS=$snippet" ADMIN_PORT=$admin LISTEN_PORT=$listen \
    STABLE_PORT=$P_STREAM_PUSH CANARY_PORT=$P_STREAM_PUSH
  fill "$cfg" "$cfg" "WASM_DIR=$2"
  if [ "$v" = sidestream ]; then
    grep -q '"maxConcurrent": 100000' "$cfg" || die "stream: could not raise the stream limit in bench/envoy/filters/$v.yaml"
  fi
}

bench_stream() {
  log "stream benchmark: Envoy --concurrency 1 pinned to cpu $SERVER_CPU relaying SSE ($STREAM_SUBSCRIBERS subscribers x $STREAM_RATE msgs/s); push server and clients on cpu $CLIENT_CPU"
  [ -f "$SIDESTREAM_WASM" ] || die "no sidestream filter at $SIDESTREAM_WASM (make filter, or set SIDESTREAM_WASM)"
  [ -x "$SERVER_BIN/sidestream-push" ] || die "missing $SERVER_BIN/sidestream-push (cargo build --release --bins)"
  rm -f "$RESULTS"/stream-*
  CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} scripts/build-filter.sh -p sidestream-empty-filter \
    >"$RUN/build-empty-filter-stream.log" 2>&1 \
    || die "building the empty filter failed: $RUN/build-empty-filter-stream.log"
  local wasm_tmp="$RUN/wasm-stream" round v
  mkdir -p "$wasm_tmp"
  cp "$SIDESTREAM_WASM" "$wasm_tmp/sidestream_filter.wasm"
  cp "$WASM_DIR/sidestream_empty_filter.wasm" "$wasm_tmp/"
  ports_free "$P_STREAM_PUSH" "$P_STREAM_PUSH_GRPC" "$P_ENVOY" "$P_ENVOY_ADMIN"
  start stream-push taskset -c "$CLIENT_CPU" "$SERVER_BIN/sidestream-push" \
    --listen "127.0.0.1:$P_STREAM_PUSH" --grpc-listen "127.0.0.1:$P_STREAM_PUSH_GRPC"
  wait_http stream-push "http://127.0.0.1:$P_STREAM_PUSH/healthz/ready"
  for round in $(seq 1 "$STREAM_ROUNDS"); do
    # ABBA: odd rounds without the filter first, even rounds with it first,
    # so a drift of the machine over the run weighs on both alike.
    local order=(none sidestream)
    [ $((round % 2)) = 1 ] || order=(sidestream none)
    for v in "${order[@]}"; do
      stream_envoy_config "$v" "$wasm_tmp"
      start "stream-envoy-$v" taskset -c "$SERVER_CPU" envoy -c "$RUN/envoy-stream-$v.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn
      wait_http "stream-envoy-$v" "http://127.0.0.1:$P_ENVOY_ADMIN/ready" 60
      local topic="stream-$v-r$round-$RANDOM" headers
      # The filter is at work on the stream: its trace id comes back.
      headers=$(curl -sS -D - -o /dev/null --max-time 1 -H 'accept: text/event-stream' \
        "http://127.0.0.1:$P_ENVOY/v1/events?topic=$topic-check" 2>/dev/null || true)
      grep -qi '^HTTP/1.1 200' <<<"$headers" || die "stream: $v: no SSE stream through Envoy"$'\n'"$headers"
      if [ "$v" = sidestream ]; then
        grep -qi '^x-trace-id: [0-9a-f]\{32\}' <<<"$headers" || die "stream: $v: no x-trace-id on the SSE response"$'\n'"$headers"
      fi
      log "stream round $round/$STREAM_ROUNDS: $v"
      taskset -c "$CLIENT_CPU" "$BENCH" --threads 1 fanout --label "stream-$v-r$round" \
        --server-pid "${PIDS[stream-envoy-$v]}" \
        --sub-url "http://127.0.0.1:$P_ENVOY/v1/events?topic=$topic" --publish-kind sidestream \
        --publish-url "http://127.0.0.1:$P_STREAM_PUSH/v1/topics/$topic/messages" --topic "$topic" \
        --subscribers "$STREAM_SUBSCRIBERS" --steps "$STREAM_RATE:$STREAM_SECONDS" \
        --payload-bytes "$PUSH_PAYLOAD_BYTES" --out "$RESULTS/stream-$v-r$round.json" >/dev/null \
        || die "stream: $v: the fan-out through Envoy failed"
      curl -fsS "http://127.0.0.1:$P_ENVOY_ADMIN/stats?filter=sidestream\.streams_" \
        >"$RESULTS/stream-$v-r$round-stats.txt" || true
      log "stream round $round: $v: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["steps"][0]; print("%d/%d delivered, Envoy %.2f us CPU per relayed message" % (s["delivered"], s["expected"], s["server_cpu_us_per_delivery"] or 0))' "$RESULTS/stream-$v-r$round.json")"
      alive "stream-envoy-$v"
      stop "stream-envoy-$v"
    done
  done
  bench_stream_together
  stop stream-push
  log "stream benchmark done"
}

# The Envoys side by side (STREAM_TOGETHER_ROUNDS rounds): no filter, the
# empty Rust Wasm filter and the sidestream filter, all at once, pinned to the
# same core, each relaying to a third of the subscribers on its own topic, so
# whatever the machine does meanwhile weighs on all alike (CPU per message
# drifts by several percent between runs one after another).
# -> stream-together-<variant>-r<round>.json
STREAM_TOGETHER=(none empty-wasm sidestream)
stream_together_port() { # variant : its listener port (admin: +1)
  case "$1" in none) echo "$P_ENVOY" ;; empty-wasm) echo $((B + 2)) ;; sidestream) echo $((B + 4)) ;; esac
}

bench_stream_together() {
  local round v share=$((STREAM_SUBSCRIBERS / ${#STREAM_TOGETHER[@]})) listen
  for round in $(seq 1 "$STREAM_TOGETHER_ROUNDS"); do
    for v in "${STREAM_TOGETHER[@]}"; do
      listen=$(stream_together_port "$v")
      ports_free "$listen" "$((listen + 1))"
      stream_envoy_config "$v" "$RUN/wasm-stream" "$listen" "$((listen + 1))"
      start "stream-envoy-$v" taskset -c "$SERVER_CPU" envoy -c "$RUN/envoy-stream-$v.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn
    done
    for v in "${STREAM_TOGETHER[@]}"; do
      wait_http "stream-envoy-$v" "http://127.0.0.1:$(($(stream_together_port "$v") + 1))/ready" 60
    done
    log "stream side by side, round $round/$STREAM_TOGETHER_ROUNDS: $share subscribers through each Envoy"
    local fanouts=()
    for v in "${STREAM_TOGETHER[@]}"; do
      local topic="stream-together-$v-r$round-$RANDOM"
      taskset -c "$CLIENT_CPU" "$BENCH" --threads 1 fanout --label "stream-together-$v-r$round" \
        --server-pid "${PIDS[stream-envoy-$v]}" \
        --sub-url "http://127.0.0.1:$(stream_together_port "$v")/v1/events?topic=$topic" --publish-kind sidestream \
        --publish-url "http://127.0.0.1:$P_STREAM_PUSH/v1/topics/$topic/messages" --topic "$topic" \
        --subscribers "$share" --steps "$STREAM_RATE:$STREAM_SECONDS" \
        --payload-bytes "$PUSH_PAYLOAD_BYTES" --out "$RESULTS/stream-together-$v-r$round.json" \
        >"$RUN/stream-together-$v.log" 2>&1 &
      fanouts+=($!)
    done
    local pid
    for pid in "${fanouts[@]}"; do
      wait "$pid" || die "stream: a side-by-side fan-out failed; logs: $RUN/stream-together-*.log"
    done
    for v in "${STREAM_TOGETHER[@]}"; do
      log "stream side by side, round $round: $v: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["steps"][0]; print("%d/%d delivered, Envoy %.2f us CPU per relayed message" % (s["delivered"], s["expected"], s["server_cpu_us_per_delivery"] or 0))' "$RESULTS/stream-together-$v-r$round.json")"
      alive "stream-envoy-$v"
      stop "stream-envoy-$v"
    done
  done
}

# ------------------------------------------------------------- propagation
bench_propagation() {
  log "propagation benchmark: etcd → control plane → Envoy (2 workers) with the sidestream filter"
  [ -f "$SIDESTREAM_WASM" ] || die "no sidestream filter at $SIDESTREAM_WASM"
  for b in sidestream-control-plane; do [ -x "$SERVER_BIN/$b" ] || die "missing $SERVER_BIN/$b (cargo build --release --bins)"; done
  rm -f "$RESULTS"/propagation*
  rm -rf "$RUN/etcd"
  ports_free "$P_ETCD" "$P_ETCD_PEER" "$P_CP_GRPC" "$P_CP_ADMIN" "$P_PROP_ENVOY" "$P_PROP_ENVOY_ADMIN"
  start etcd etcd --name bench --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$P_ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_ETCD_PEER" \
    --initial-cluster "bench=http://127.0.0.1:$P_ETCD_PEER" --log-level warn
  wait_http etcd "http://127.0.0.1:$P_ETCD/health"
  start control-plane "$SERVER_BIN/sidestream-control-plane" --etcd-endpoints "http://127.0.0.1:$P_ETCD" \
    --prefix /sidestream --grpc-listen "127.0.0.1:$P_CP_GRPC" --admin-listen "127.0.0.1:$P_CP_ADMIN"
  wait_http control-plane "http://127.0.0.1:$P_CP_ADMIN/readyz"
  local cfg="$RUN/envoy-propagation.yaml"
  cp "$SIDESTREAM_WASM" "$RUN/sidestream_filter_prop.wasm"
  fill bench/envoy/propagation.yaml "$cfg" ADMIN_PORT=$P_PROP_ENVOY_ADMIN LISTEN_PORT=$P_PROP_ENVOY \
    STABLE_PORT=$P_UPSTREAM_STABLE CANARY_PORT=$P_UPSTREAM_CANARY CP_PORT=$P_CP_GRPC \
    "WASM=$RUN/sidestream_filter_prop.wasm"
  start envoy-propagation envoy -c "$cfg" --concurrency 2 --disable-hot-restart --log-level warn
  wait_http envoy-propagation "http://127.0.0.1:$P_PROP_ENVOY_ADMIN/ready" 60
  # Wait until the filter instances have connected to the control plane.
  local i
  for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$P_CP_ADMIN/v1/clients" 2>/dev/null | grep -q '[A-Za-z]'; then break; fi
    sleep 0.2
  done
  sleep 2
  curl -fsS "http://127.0.0.1:$P_CP_ADMIN/v1/clients" >"$RESULTS/propagation-clients.json" || true
  "$BENCH" propagation --etcd "http://127.0.0.1:$P_ETCD" --admin "http://127.0.0.1:$P_CP_ADMIN" \
    --envoy-admin "http://127.0.0.1:$P_PROP_ENVOY_ADMIN" ${PROPAGATION_OBSERVE:+--observe "$PROPAGATION_OBSERVE"} \
    --updates "$PROPAGATION_UPDATES" --interval-ms 50 --label propagation \
    --out "$RESULTS/propagation.json" >/dev/null
  curl -fsS "http://127.0.0.1:$P_CP_ADMIN/metrics" >"$RESULTS/propagation-control-plane-metrics.txt" || true
  log "propagation: $(summary propagation "$RESULTS/propagation.json")"
  stop envoy-propagation control-plane etcd
}

# -------------------------------------------------------------------- push
# The servers of the push part are sidestream-push's variants (sidestream-<v>:
# the same binary with the flags below added) and the peers nchan, pushpin.
declare -A SIDESTREAM_VARIANT_ARGS=(
  [sidestream]=""
  [sidestream-epoll]="--fanout-io epoll"
  [sidestream-uring]="--fanout-io uring"
)
# A binary without a variant's flag runs that variant without it if its one
# built-in behaviour is that variant (before io_uring, every write is epoll's);
# any other such variant is skipped.
SIDESTREAM_BUILT_IN=sidestream-epoll

push_base() { # server : sidestream | nchan | pushpin
  case "$1" in sidestream|sidestream-*) echo sidestream ;; *) echo "$1" ;; esac
}

# sidestream_variant_args <server> : prints the variant's flags (one a line);
# fails (after saying why) when this binary cannot run the variant.
sidestream_variant_args() {
  local s=$1 flag
  [ -n "${SIDESTREAM_VARIANT_ARGS[$s]+set}" ] \
    || die "unknown sidestream-push variant '$s' (known: ${!SIDESTREAM_VARIANT_ARGS[*]})"
  local args=(${SIDESTREAM_VARIANT_ARGS[$s]})
  for flag in "${args[@]}"; do
    [[ "$flag" == --* ]] || continue
    if ! "$SERVER_BIN/sidestream-push" --help 2>/dev/null | grep -q -- "${flag%%=*}\b"; then
      if [ "$s" = "$SIDESTREAM_BUILT_IN" ]; then
        log "push: $s: $SERVER_BIN/sidestream-push has no $flag: its built-in path is $s, measured without the flag"
        return 0
      fi
      log "push: $s: SKIPPED: $SERVER_BIN/sidestream-push has no $flag (this build lacks the variant)"
      return 1
    fi
  done
  printf '%s\n' "${args[@]}"
}

# start_push_server <server> [flag...] : starts it (sidestream-push with the
# variant's and these flags added) as process push-<server> and sets
# SERVER_PID (the server's root process ids, space separated; their
# descendants count too).
start_push_server() {
  local s=$1
  shift
  case "$(push_base "$s")" in
    sidestream) ports_free "$P_PUSH" "$P_PUSH_GRPC" ;;
    nchan) ports_free "$P_NCHAN" ;;
    pushpin) ports_free "$P_PUSHPIN" "$P_PUSHPIN_PUBLISH" "$P_GRIP_ORIGIN" "$P_PUSHPIN_PUSH_IN" "$P_PUSHPIN_PUSH_IN_SUB" "$P_PUSHPIN_COMMAND" ;;
  esac
  case "$s" in
    sidestream|sidestream-*)
      [ -x "$SERVER_BIN/sidestream-push" ] || die "missing $SERVER_BIN/sidestream-push"
      local variant
      variant=$(sidestream_variant_args "$s") || die "sidestream-push cannot run variant $s"
      start "push-$s" "$SERVER_BIN/sidestream-push" --listen "127.0.0.1:$P_PUSH" --grpc-listen "127.0.0.1:$P_PUSH_GRPC" \
        $variant "$@"
      wait_http "push-$s" "http://127.0.0.1:$P_PUSH/healthz/ready"
      SERVER_PID=${PIDS[push-$s]} ;;
    nchan)
      local dir="$RUN/nchan"
      rm -rf "$dir"; mkdir -p "$dir"
      fill bench/nchan/nginx.conf "$dir/nginx.conf" "RUN_DIR=$dir" PORT=$P_NCHAN WORKERS="$(nproc)"
      start push-nchan nginx -p "$dir" -c "$dir/nginx.conf"
      wait_answer push-nchan "http://127.0.0.1:$P_NCHAN/pub?id=ping"
      SERVER_PID=${PIDS[push-nchan]} ;;
    pushpin)
      local dir="$RUN/pushpin"
      rm -rf "$dir"; mkdir -p "$dir/log"
      fill bench/pushpin/pushpin.conf "$dir/pushpin.conf" "RUN_DIR=$dir" PORT=$P_PUSHPIN \
        PUBLISH_PORT=$P_PUSHPIN_PUBLISH PUSH_IN_PORT=$P_PUSHPIN_PUSH_IN PUSH_IN_SUB_PORT=$P_PUSHPIN_PUSH_IN_SUB \
        COMMAND_PORT=$P_PUSHPIN_COMMAND MESSAGE_RATE=$PUSHPIN_MESSAGE_RATE MESSAGE_HWM=$PUSHPIN_MESSAGE_HWM
      echo "* 127.0.0.1:$P_GRIP_ORIGIN" >"$dir/routes"
      fill bench/pushpin/zurl.conf "$dir/zurl.conf" "RUN_DIR=$dir"
      start grip-origin "$BENCH" --threads 1 upstream --mode grip --listen "127.0.0.1:$P_GRIP_ORIGIN"
      start pushpin-zurl zurl "--config=$dir/zurl.conf"
      start push-pushpin pushpin --config "$dir/pushpin.conf" --merge-output
      wait_answer push-pushpin "http://127.0.0.1:$P_PUSHPIN_PUBLISH/publish/"
      wait_answer push-pushpin "http://127.0.0.1:$P_PUSHPIN/"
      alive pushpin-zurl
      # Pushpin's processes (runner, condure, proxy, handler) and its zurl.
      SERVER_PID="${PIDS[push-pushpin]} ${PIDS[pushpin-zurl]}" ;;
    *) die "unknown push server $s" ;;
  esac
}

stop_push_server() {
  case "$1" in
    pushpin) stop push-pushpin pushpin-zurl grip-origin ;;
    *) stop "push-$1" ;;
  esac
}

sub_url() { # server topic
  case "$(push_base "$1")" in
    sidestream) echo "http://127.0.0.1:$P_PUSH/v1/events?topic=$2" ;;
    nchan) echo "http://127.0.0.1:$P_NCHAN/sub/$2" ;;
    pushpin) echo "http://127.0.0.1:$P_PUSHPIN/events/$2" ;;
  esac
}
publish_url() { # server topic
  case "$(push_base "$1")" in
    sidestream) echo "http://127.0.0.1:$P_PUSH/v1/topics/$2/messages" ;;
    nchan) echo "http://127.0.0.1:$P_NCHAN/pub?id=$2" ;;
    pushpin) echo "http://127.0.0.1:$P_PUSHPIN_PUBLISH/publish/" ;;
  esac
}

fanout() { # server label subscribers steps sources
  local s=$1 label=$2 n=$3 steps=$4 sources=$5 topic="bench-$2-$RANDOM" pid pid_args=()
  for pid in $SERVER_PID; do pid_args+=(--server-pid "$pid"); done
  "$BENCH" --threads "$PUSH_CLIENT_THREADS" fanout --label "$label" "${pid_args[@]}" \
    --sub-url "$(sub_url "$s" "$topic")" --publish-kind "$(push_base "$s")" --publish-url "$(publish_url "$s" "$topic")" \
    --topic "$topic" --subscribers "$n" --sources "$sources" --steps "$steps" \
    --connect-concurrency "$PUSH_CONNECT_CONCURRENCY" --payload-bytes "$PUSH_PAYLOAD_BYTES" \
    --out "$RESULTS/fanout-$label.json" >/dev/null
}

# Tracing overhead: the same fan-out against sidestream-push with span export
# off, then on (OTLP/gRPC to a sink that counts spans); the report compares the
# server's CPU per delivery.
bench_otlp() {
  [ -x "$SERVER_BIN/sidestream-push" ] || die "missing $SERVER_BIN/sidestream-push"
  rm -f "$RESULTS"/fanout-otlp-*.json "$RESULTS/otlp-sink.json"
  ports_free "$P_OTLP"
  local export
  for export in off on; do
    log "push: sidestream: tracing overhead, export $export, $PUSH_OTLP_SUBSCRIBERS subscribers, steps $PUSH_OTLP_STEPS"
    if [ "$export" = on ]; then
      start otlp-sink "$BENCH" --threads 1 otlp-sink --listen "127.0.0.1:$P_OTLP" --out "$RESULTS/otlp-sink.json"
      start_push_server sidestream --otlp-endpoint "http://127.0.0.1:$P_OTLP"
    else
      start_push_server sidestream
    fi
    fanout sidestream "otlp-$export" "$PUSH_OTLP_SUBSCRIBERS" "$PUSH_OTLP_STEPS" 127.0.0.50-127.0.0.53
    alive push-sidestream
    # Stopping the server flushes its last spans; then the sink writes its count.
    stop_push_server sidestream
    stop otlp-sink
    sleep 2
  done
  [ -f "$RESULTS/otlp-sink.json" ] || die "the OTLP sink wrote no count; log: $RUN/otlp-sink.log"
  log "push: tracing overhead: the sink received $(cat "$RESULTS/otlp-sink.json")"
}

bench_push() {
  local s
  local parts=" $PUSH_PARTS "
  if [[ "$parts" == *" otlp "* && " $PUSH_SERVERS " == *" sidestream"* ]]; then
    bench_otlp
  fi
  for s in $PUSH_SERVERS; do
    if [ "$(push_base "$s")" = sidestream ] && ! sidestream_variant_args "$s" >/dev/null; then
      # No stale results of an earlier build in this run's report.
      rm -f "$RESULTS/memory-$s.json" "$RESULTS"/fanout-"$s"-*.json
      continue
    fi
    if [[ "$parts" == *" memory "* ]]; then
      rm -f "$RESULTS/memory-$s.json"
      log "push: $s: idle connections ($PUSH_IDLE) and memory"
      start_push_server "$s"
      local pid pid_args=()
      for pid in $SERVER_PID; do pid_args+=(--server-pid "$pid"); done
      "$BENCH" memory --url "$(sub_url "$s" "idle")" "${pid_args[@]}" \
        --connections "$PUSH_IDLE" --processes 2 --sources 127.0.0.2-127.0.0.9 \
        --work-dir "$RUN/tmp" --label "$s" --out "$RESULTS/memory-$s.json" >/dev/null
      log "push: $s: $(summary memory "$RESULTS/memory-$s.json")"
      stop_push_server "$s"
      sleep 2
    fi
    [[ "$parts" == *" latency "* || "$parts" == *" saturation "* || "$parts" == *" rates "* ]] || continue

    start_push_server "$s"
    local n k=0 sweep=""
    if [[ "$parts" == *" latency "* ]]; then
      sweep=$PUSH_SWEEP
      rm -f "$RESULTS"/fanout-"$s"-subs-*
    fi
    for n in $sweep; do
      k=$((k + 1))
      log "push: $s: fan-out latency, $n subscribers at $PUSH_SWEEP_RATE msgs/s"
      fanout "$s" "$s-subs-$n" "$n" "$PUSH_SWEEP_RATE:$PUSH_SWEEP_SECONDS" "127.0.0.$((10 + k * 4))-127.0.0.$((13 + k * 4))"
      alive "push-$s"
      sleep 2
    done
    if [[ "$parts" == *" saturation "* ]]; then
      rm -f "$RESULTS/fanout-$s-saturation.json"
      log "push: $s: fan-out saturation, $PUSH_SUBSCRIBERS subscribers, steps $PUSH_STEPS"
      fanout "$s" "$s-saturation" "$PUSH_SUBSCRIBERS" "$PUSH_STEPS" 127.0.0.40-127.0.0.47
      alive "push-$s"
    fi
    if [[ "$parts" == *" rates "* ]]; then
      rm -f "$RESULTS/fanout-$s-rates.json"
      [[ "$parts" != *" saturation "* ]] || sleep 2
      log "push: $s: CPU per delivery against message rate, $PUSH_RATE_SUBSCRIBERS subscribers, steps $PUSH_RATES"
      fanout "$s" "$s-rates" "$PUSH_RATE_SUBSCRIBERS" "$PUSH_RATES" 127.0.0.60-127.0.0.67
      alive "push-$s"
    fi
    if [ "$s" = pushpin ]; then
      # Debian's Pushpin 1.36 cancels streams it sees packets out of sequence on.
      cat "$RUN/push-pushpin.log" "$RUN"/pushpin/log/*.log 2>/dev/null | grep -c 'out of sequence' \
        >"$RESULTS/pushpin-out-of-sequence.txt" || true
      log "push: pushpin logged $(cat "$RESULTS/pushpin-out-of-sequence.txt") 'out of sequence' cancellations"
    fi
    stop_push_server "$s"
    sleep 2
  done
}

# -------------------------------------------------------------------- mesh
# Mesh-wide stream limits (issue 9): Redis, one sidestream-limiter, and three
# Envoys (2 workers each) from envoy-config/mesh.yaml in front of the echo
# upstream, the tenant policy mesh-scoped or (for comparison) Envoy-scoped.
mesh_envoy_config() { # scope index : writes $RUN/envoy-mesh-<scope>-<i>.yaml
  python3 - "$ROOT/envoy-config/mesh.yaml" "$RUN/envoy-mesh-$1-$2.yaml" "$1" \
    "$((P_MESH_ENVOY + 2 * $2))" "$((P_MESH_ENVOY + 2 * $2 + 1))" "$P_UPSTREAM_STABLE" "$P_UPSTREAM_CANARY" \
    "$P_MESH_LIMITER" "$SIDESTREAM_WASM" "$MESH_STORM_LIMIT" <<'EOF'
import json, sys, yaml
src, out, scope, listen, admin, stable, canary, limiter, wasm, storm_limit = sys.argv[1:]
c = yaml.safe_load(open(src))
c["admin"]["address"]["socket_address"]["port_value"] = int(admin)
listener = c["static_resources"]["listeners"][0]
listener["address"]["socket_address"]["port_value"] = int(listen)
wasm_cfg = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
wasm_cfg["vm_config"]["code"]["local"]["filename"] = wasm
boot = json.loads(wasm_cfg["configuration"]["value"])
mesh = {"scope": "mesh", "mesh": {"fallback": "local", "timeoutMs": 50}} if scope == "mesh" else {"scope": "envoy"}
# The open-rate runs: mesh.yaml's tenant policy with limits no run reaches,
# so every open is admitted and the time is the decision's; the storm: a
# burst with no refill to speak of, so the admitted count is the limit.
tenant = dict(boot["defaults"]["streamLimits"]["tenant-streams"])
tenant.pop("mesh", None)
tenant.update(newStreamsPerSecond=1000000, burst=1000000, maxConcurrent=1000000, **mesh)
boot["defaults"]["streamLimits"] = {
    "tenant-streams": tenant,
    "storm": {"match": {"pathPrefixes": ["/storm/"]}, "priority": 10, "streamKinds": ["sse"],
              "key": {"source": "header", "name": "x-tenant-id"},
              "newStreamsPerSecond": 0.001, "burst": int(storm_limit), **mesh},
}
wasm_cfg["configuration"]["value"] = json.dumps(boot)
for cl in c["static_resources"]["clusters"]:
    port = {"stable": stable, "canary": canary, "sidestream-limiter": limiter}.get(cl["name"])
    if port:
        cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = int(port)
json.dump(c, open(out, "w"), indent=1)
EOF
}

redis_calls() { # : "<command calls> <EVAL/EVALSHA calls> <their usec>" since Redis started, INFO left out
  redis-cli -p "$P_MESH_REDIS" info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { name = $1; sub("cmdstat_", "", name); if (name == "info") next;
                  all += $3; if (name ~ /^eval/) { scripts += $3; usec += $5 } }
    END { print all + 0, scripts + 0, usec + 0 }'
}

mesh_cpu() { # : "<process> <CPU ticks>" of the mesh run's servers, "hz <ticks/s>", "machine <busy> <total>" (all cores)
  local name
  for name in mesh-redis mesh-limiter mesh-envoy-0 mesh-envoy-1 mesh-upstream; do
    echo "$name $(cpu_ticks "${PIDS[$name]}")"
  done
  echo "hz $(getconf CLK_TCK)"
  awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8; print "machine", busy, busy + $5 + $6 }' /proc/stat
}

mesh_rtt() { # : Envoy 0's and 1's limiter round trip histograms (interval and cumulative quantiles, µs)
  local i
  for i in 0 1; do
    curl -fsS "http://127.0.0.1:$((P_MESH_ENVOY + 2 * i + 1))/stats?filter=wasmcustom.sidestream.mesh_rtt_us" |
      sed "s/^/envoy-$i /"
  done
}

mesh_fallbacks() { # : mesh fallbacks (timeout, error, unavailable) counted by the three Envoys so far
  local i total=0 n
  for i in 0 1 2; do
    n=$(curl -fsS "http://127.0.0.1:$((P_MESH_ENVOY + 2 * i + 1))/stats?filter=wasmcustom.sidestream.mesh_fallback_" |
      awk -F': ' '{ s += $2 } END { print s + 0 }')
    total=$((total + n))
  done
  echo "$total"
}

bench_mesh() {
  log "mesh benchmark: Redis, sidestream-limiter, three Envoys (2 workers) from envoy-config/mesh.yaml"
  [ -f "$SIDESTREAM_WASM" ] || die "no sidestream filter at $SIDESTREAM_WASM"
  [ -x "$SERVER_BIN/sidestream-limiter" ] || die "missing $SERVER_BIN/sidestream-limiter (cargo build --release --bins)"
  python3 -c 'import yaml' 2>/dev/null || die "python3-yaml is missing (scripts/install-deps.sh bench)"
  rm -f "$RESULTS"/mesh-*
  ports_free "$P_MESH_REDIS" "$P_MESH_LIMITER" "$P_MESH_LIMITER_ADMIN" "$P_UPSTREAM_STABLE" "$P_UPSTREAM_CANARY" \
    $(seq "$P_MESH_ENVOY" "$((P_MESH_ENVOY + 5))")
  start mesh-redis redis-server --bind 127.0.0.1 --port "$P_MESH_REDIS" --save "" --appendonly no
  local i
  for i in $(seq 1 100); do redis-cli -p "$P_MESH_REDIS" ping >/dev/null 2>&1 && break; alive mesh-redis; sleep 0.1; done
  start mesh-limiter "$SERVER_BIN/sidestream-limiter" --listen "127.0.0.1:$P_MESH_LIMITER" \
    --admin-listen "127.0.0.1:$P_MESH_LIMITER_ADMIN" --redis "redis://127.0.0.1:$P_MESH_REDIS"
  wait_http mesh-limiter "http://127.0.0.1:$P_MESH_LIMITER_ADMIN/readyz"
  start mesh-upstream "$BENCH" --threads 1 upstream --mode echo \
    --listen "127.0.0.1:$P_UPSTREAM_STABLE" --listen "127.0.0.1:$P_UPSTREAM_CANARY"
  local scope rate before after fallbacks
  for scope in envoy mesh; do
    for i in 0 1 2; do
      mesh_envoy_config "$scope" "$i"
      start "mesh-envoy-$i" envoy -c "$RUN/envoy-mesh-$scope-$i.yaml" --concurrency 2 --disable-hot-restart --log-level warn
    done
    for i in 0 1 2; do wait_http "mesh-envoy-$i" "http://127.0.0.1:$((P_MESH_ENVOY + 2 * i + 1))/ready" 60; done
    local two=(--target "127.0.0.1:$P_MESH_ENVOY" --target "127.0.0.1:$((P_MESH_ENVOY + 2))")
    for rate in $MESH_RATES; do
      log "mesh: $scope-scoped policy, $rate opens/s over two Envoys for ${MESH_SECONDS}s"
      before=$(redis_calls) fallbacks=$(mesh_fallbacks)
      mesh_cpu >"$RESULTS/mesh-$scope-$rate-cpu-before.txt"
      curl -fsS "http://127.0.0.1:$P_MESH_LIMITER_ADMIN/metrics" >"$RESULTS/mesh-$scope-$rate-limiter-before.txt"
      "$BENCH" opens "${two[@]}" --tenant "rate-$scope-$rate" --rate "$rate" --duration "$MESH_SECONDS" \
        --warmup 3 --connections 32 --label "$scope-$rate" --out "$RESULTS/mesh-$scope-$rate.json" >/dev/null
      after=$(redis_calls)
      mesh_cpu >"$RESULTS/mesh-$scope-$rate-cpu-after.txt"
      curl -fsS "http://127.0.0.1:$P_MESH_LIMITER_ADMIN/metrics" >"$RESULTS/mesh-$scope-$rate-limiter-after.txt"
      mesh_rtt >"$RESULTS/mesh-$scope-$rate-rtt.txt"
      echo "$before $after" >"$RESULTS/mesh-$scope-$rate-redis.txt"
      echo $(($(mesh_fallbacks) - fallbacks)) >"$RESULTS/mesh-$scope-$rate-fallbacks.txt"
      for i in 0 1 2; do alive "mesh-envoy-$i"; done
    done
    log "mesh: $scope-scoped policy, a storm of $MESH_STORM opens over three Envoys against a burst of $MESH_STORM_LIMIT"
    fallbacks=$(mesh_fallbacks)
    "$BENCH" opens "${two[@]}" --target "127.0.0.1:$((P_MESH_ENVOY + 4))" --path /storm/events \
      --tenant "storm-$scope" --count "$MESH_STORM" --connections 96 --label "$scope-storm" \
      --out "$RESULTS/mesh-$scope-storm.json" >/dev/null
    echo $(($(mesh_fallbacks) - fallbacks)) >"$RESULTS/mesh-$scope-storm-fallbacks.txt"
    echo "$MESH_STORM_LIMIT" >"$RESULTS/mesh-storm-limit.txt"
    for i in 0 1 2; do
      curl -fsS "http://127.0.0.1:$((P_MESH_ENVOY + 2 * i + 1))/stats?filter=wasmcustom.sidestream.mesh" \
        >"$RESULTS/mesh-$scope-envoy-$i-stats.txt" || true
      stop "mesh-envoy-$i"
    done
  done
  curl -fsS "http://127.0.0.1:$P_MESH_LIMITER_ADMIN/metrics" >"$RESULTS/mesh-limiter-metrics.txt" || true
  stop mesh-upstream mesh-limiter mesh-redis
}

# ------------------------------------------------------------------ report
report() {
  "$BENCH" report --results "$RESULTS" --svg-dir bench/results --template bench/BENCHMARKS.md.in --markdown BENCHMARKS.md
}

prepare
for w in "${what[@]}"; do
  case "$w" in
    filter) conditions filter; bench_filter ;;
    stream) conditions stream; bench_stream ;;
    propagation) conditions propagation; bench_propagation ;;
    push) conditions push; bench_push ;;
    mesh) conditions mesh; bench_mesh ;;
    report) report ;;
  esac
done
