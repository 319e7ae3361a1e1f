#!/usr/bin/env bash
# fuzz.sh — the libFuzzer targets of tests/fuzz, for as long as you like.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#       build build-fuzz/ (clang, -Dfuzz=true) if needed, then run each
#       target (default: all) for SECONDS_PER_TARGET (default 3600) in turn
#   bash scripts/fuzz.sh --totals    how long each target has run, in all
#   bash scripts/fuzz.sh --build     only set up and build build-fuzz/
#
# State lives outside the tree, in CHAINFS_FUZZ_DIR (default
# /var/tmp/chainfs-fuzz):
#   <target>/corpus/   the growing corpus (the committed seeds in
#                      tests/fuzz/corpus/<target>/ are read, never written)
#   <target>/crashes/  crash-*, leak-*, timeout-*, oom-* inputs, if any
#   <target>/last.log  libFuzzer's output of the latest run
#   runs.tsv           one line per finished run: start (UTC), target,
#                      seconds, exit code, inputs executed
# A run cut short (kill, reboot) is not counted. A finding stops that
# target's run (exit code not 0, the input in crashes/) and the next
# target starts; --totals lists such runs. Reproduce a finding with
#   build-fuzz/tests/fuzz/fuzz_<target> /var/tmp/chainfs-fuzz/<target>/crashes/<file>
# and keep the input as tests/fuzz/corpus/<target>/<name> with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${CHAINFS_FUZZ_DIR:-/var/tmp/chainfs-fuzz}
BUILD=build-fuzz

fuzz_build() {
  local out
  if [ ! -d "$BUILD" ]; then
    out=$(CC=clang meson setup "$BUILD" -Dfuzz=true -Dtests=false 2>&1) ||
      { printf '%s\n' "$out" >&2; rm -rf "$BUILD"; return 1; }
  fi
  out=$(ninja -C "$BUILD" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

fuzz_targets() {
  local f
  for f in "$BUILD"/tests/fuzz/fuzz_*; do
    case $f in *.p) continue ;; esac
    if [ -f "$f" ] && [ -x "$f" ]; then
      basename "$f" | sed 's/^fuzz_//'
    fi
  done
}

fuzz_totals() {
  local log=$STATE/runs.tsv
  if [ ! -s "$log" ]; then
    echo "fuzz: no finished run recorded in $log"
    return 0
  fi
  awk -F'\t' '
    !($2 in runs) { order[++n] = $2 }
    { runs[$2]++; execs[$2] += $5
      if ($4 == 0) clean[$2] += $3; else { bad[$2]++; badlines = badlines "\n  " $0 } }
    END {
      printf "%-8s %6s %10s %14s %8s\n", "target", "runs", "clean", "inputs", "findings"
      for (i = 1; i <= n; i++) {
        t = order[i]
        printf "%-8s %6d %8.2f h %14.0f %8d\n", t, runs[t], clean[t] / 3600, execs[t], bad[t]
      }
      if (badlines != "") print "runs that ended in a finding (start, target, seconds, exit, inputs):" badlines
    }' "$log"
}

fuzz_one() {
  local t=$1 secs=$2 dir=$STATE/$1 start t0 rc=0 execs dict=()
  mkdir -p "$dir/corpus" "$dir/crashes"
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  t0=$(date +%s)
  echo "fuzz: $start $t for $secs s (corpus $dir/corpus)"
  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 -artifact_prefix="$dir/crashes/" \
      "${dict[@]}" \
      "$dir/corpus" "tests/fuzz/corpus/$t" > "$dir/last.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/last.log" | tail -n 1)
  printf '%s\t%s\t%d\t%d\t%s\n' "$start" "$t" $(($(date +%s) - t0)) "$rc" "${execs:-0}" \
    >> "$STATE/runs.tsv"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t FOUND something (exit $rc): see $dir/last.log and $dir/crashes/" >&2
    grep -m 5 -E 'ERROR|SUMMARY|invariant' "$dir/last.log" >&2 || true
  fi
  return 0
}

main() {
  local secs=3600 targets=()
  case "${1:-}" in
    --totals) fuzz_totals; return ;;
    --build) fuzz_build; return ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; return ;;
    '') ;;
    *) secs=$1; shift ;;
  esac
  fuzz_build
  mkdir -p "$STATE"
  if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(fuzz_targets); fi
  for t in "${targets[@]}"; do
    [ -x "$BUILD/tests/fuzz/fuzz_$t" ] || { echo "fuzz: no target $t" >&2; return 1; }
  done
  for t in "${targets[@]}"; do
    fuzz_one "$t" "$secs"
  done
  fuzz_totals
}

main "$@"
