#!/usr/bin/env bash
# run.sh EXE CORPUS DICT CRASHDIR — one bounded run of a libFuzzer target,
# as `meson test --suite fuzz` (and so scripts/test.sh) does it.
#
# Fuzzes for CHAINFS_FUZZ_SECONDS (default 10) on a temporary copy of the
# committed seed corpus CORPUS (nothing is written into the source tree),
# with DICT if not empty. A crash, leak, sanitizer report, timeout (> 10 s
# for one input) or RSS over 2 GiB fails the test; the input that did it
# is kept in CRASHDIR and its name printed. Exit 0 otherwise.
set -euo pipefail

exe=$1 corpus=$2 dict=$3 crashdir=$4
secs=${CHAINFS_FUZZ_SECONDS:-10}

work=$(mktemp -d "${TMPDIR:-/tmp}/chainfs-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/crash"
cp -- "$corpus"/* "$work/corpus/" 2>/dev/null || true

# Leaks count (no suppressions); UB aborts (-fno-sanitize-recover too).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
unset LSAN_OPTIONS

args=(-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10
      -print_final_stats=1 -artifact_prefix="$work/crash/")
[ -n "$dict" ] && args+=(-dict="$dict")

rc=0
"$exe" "${args[@]}" "$work/corpus" 2>&1 |
  sed -u '/^#[0-9]\+[[:space:]]\+\(NEW\|REDUCE\|pulse\)/d' || rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$work/crash")" ]; then
  mkdir -p "$crashdir"
  cp -- "$work"/crash/* "$crashdir/" 2>/dev/null || true
  echo "fuzz: $(basename "$exe") failed (exit $rc); inputs kept in $crashdir:" >&2
  ls -l "$crashdir" >&2 || true
  echo "fuzz: reproduce with: $exe $crashdir/<file>" >&2
  exit 1
fi
echo "fuzz: $(basename "$exe"): ${secs} s, no finding"
