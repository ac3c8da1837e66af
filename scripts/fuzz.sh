#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ and reports, per target,
# the executions, the coverage (libFuzzer's `cov` edges and `ft` features)
# and whether it crashed.
#
#   scripts/fuzz.sh [--smoke] [target...]       (default: every target)
#
#   FUZZ_SECONDS=60      how long each target runs (--smoke: FUZZ_SMOKE_SECONDS=5)
#   FUZZ_RUNS            stop a target after this many executions (within FUZZ_SECONDS)
#   FUZZ_BUILD=1         0: run the targets as last built (no cargo fuzz build)
#   FUZZ_JOBS=1          targets run at the same time
#   FUZZ_SANITIZER=none  cargo fuzz's --sanitizer (none, address, ...); the
#                        project's own code has no unsafe, so the fuzzers look
#                        for panics, overflows (debug assertions are on),
#                        timeouts and memory blow-ups, and run twice as fast
#                        without ASan
#   FUZZ_REPORT          where the table goes (default fuzz/target/report.md,
#                        --smoke: fuzz/target/smoke/report.md)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>) and the
# corpus earlier runs grew (fuzz/target/corpus/<target>, not committed), with
# its dictionary (fuzz/dict/<target>.dict) when there is one. A crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit 1; replay
# it with `fuzz/target/<triple>/release/<target> <file>`.
#
# --smoke (what `make test` runs): a short run of every target, built with
# fewer codegen units so the build stays short, into its own target dir,
# with its own logs (fuzz/target/smoke/logs), so a smoke never overwrites a
# long run's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

smoke=false
targets=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=true ;;
    -*) echo "fuzz: unknown option '$arg' (--smoke)" >&2; exit 64 ;;
    *) targets+=("$arg") ;;
  esac
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (scripts/install-deps.sh fuzz)" >&2
  exit 1
fi
# cargo fuzz passes nightly flags (-Z, sanitizer coverage); a stable
# toolchain accepts them with RUSTC_BOOTSTRAP.
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

all=$(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$all"
fi
for target in "${targets[@]}"; do
  grep -qx "$target" <<<"$all" || { echo "fuzz: no target '$target' (cargo fuzz list)" >&2; exit 64; }
done

sanitizer=${FUZZ_SANITIZER:-none}
build_args=(--sanitizer "$sanitizer")
if $smoke; then
  seconds=${FUZZ_SMOKE_SECONDS:-5}
  target_dir="$root/fuzz/target/smoke"
  build_args+=(--codegen-units 16 --target-dir "$target_dir")
else
  seconds=${FUZZ_SECONDS:-60}
  target_dir="$root/fuzz/target"
fi
jobs=${FUZZ_JOBS:-1}
report=${FUZZ_REPORT:-$target_dir/report.md}
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$triple/release"

started=$(date +%s)
mkdir -p "$root/fuzz/target"
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
  echo "fuzz: building ${#targets[@]} targets (sanitizer $sanitizer)"
  # Every target at once: they share their dependencies' build.
  cargo fuzz build "${build_args[@]}" >"$root/fuzz/target/build.log" 2>&1 || {
    cat "$root/fuzz/target/build.log" >&2
    exit 1
  }
  echo "fuzz: built in $(( $(date +%s) - started )) s"
fi
echo "fuzz: running each target for ${seconds} s${FUZZ_RUNS:+ or $FUZZ_RUNS executions}"

logs="$target_dir/logs"
mkdir -p "$logs"

run_one() {
  local target=$1
  local corpus="$root/fuzz/target/corpus/$target"
  local seeds="$root/fuzz/corpus/$target"
  local args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
              -artifact_prefix="$root/fuzz/artifacts/$target/")
  [ -f "$root/fuzz/dict/$target.dict" ] && args+=(-dict="$root/fuzz/dict/$target.dict")
  [ -n "${FUZZ_RUNS:-}" ] && args+=(-runs="$FUZZ_RUNS")
  mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
  local dirs=("$corpus")
  [ -d "$seeds" ] && dirs+=("$seeds")
  # New inputs go to the first directory: the seeds stay as committed.
  if "$bin_dir/$target" "${args[@]}" "${dirs[@]}" >"$logs/$target.log" 2>&1; then
    echo ok >"$logs/$target.result"
  else
    echo crash >"$logs/$target.result"
  fi
}

running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

# libFuzzer's closing lines: `#N DONE cov: C ft: F corp: K/Sb ...` and, with
# -print_final_stats, `stat::number_of_executed_units: N`.
failed=0
{
  echo "| target | seconds | executions | exec/s | cov (edges) | ft (features) | corpus | result |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for target in "${targets[@]}"; do
    log="$logs/$target.log"
    result=$(cat "$logs/$target.result" 2>/dev/null || echo missing)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    # -a: a log may hold bytes that make grep call it binary.
    last=$(grep -aE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
    rate="-"
    if [ -n "$execs" ] && [ -n "$secs" ] && [ "$secs" -gt 0 ]; then rate=$((execs / secs)); fi
    if [ "$result" != ok ]; then
      failed=1
      artifact=$(grep -ao "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //' || true)
      result="CRASH ${artifact#"$root/"} (log ${log#"$root/"})"
    fi
    echo "| $target | ${secs:--} | ${execs:--} | $rate | ${cov:--} | ${ft:--} | ${corp:--} | $result |"
  done
} >"$report"
cat "$report"
echo "fuzz: ${#targets[@]} targets in $(( $(date +%s) - started )) s; table in ${report#"$root/"}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: a target crashed; see the logs and artifacts named above" >&2
  exit 1
fi
