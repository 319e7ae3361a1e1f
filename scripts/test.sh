#!/usr/bin/env bash
# test.sh — every test chainfs has, from nothing: install what is missing,
# build, make sure libvirtd runs, then
#   1. unit tests                      (build/)
#   2. integration tests               (build/, real libvirtd + QEMU + FUSE;
#                                       without the guest suite)
#      then the Debian package         (suite package: tests/package/deb.sh
#                                       builds its own .deb from a copy of
#                                       the tree, installs and removes it;
#                                       once, never sanitized)
#   3. the same two, built with -Db_sanitize=address,undefined (build-asan/)
#   4. fault-injection tests           (build-asan/; issue 3)
#   5. the tests with the real Linux guest (build-asan/, suite guest, two
#      at a time; issue 10)
#   6. every libFuzzer target for CHAINFS_FUZZ_SECONDS (default 10) on its
#      seed corpus (build-fuzz/, clang; scripts/fuzz.sh runs them longer)
# The fault and guest tests (25 of the 45 minutes CI may take on two cores
# without KVM) run once, with the sanitized daemon, which checks more than
# the plain one; `meson test -C build --suite fault` (or guest) runs them
# against the plain build.
# and end with one line totalling them all: "N passed, N failed, N skipped".
# Exits non-zero if anything failed. Run as root:
#
#     sudo bash scripts/test.sh
#
# Integration and fault tests skip themselves (exit 77) where they cannot
# run at all (not root, no /dev/fuse, no libvirtd).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
  bash scripts/deps.sh
else
  bash scripts/deps.sh || echo "test: not root; carrying on with what is installed" >&2
fi
[ -d build ] || meson setup build
ninja -C build
# shellcheck source=scripts/libvirtd.sh
. scripts/libvirtd.sh
libvirtd_ensure || echo "test: no libvirtd; the integration tests will skip" >&2

PASSED=0
FAILED=0
SKIPPED=0
FAILED_SUITES=()
# What failed, kept for the end of the output: CI shows only its tail, and
# the suite's own log may be pages above it (or gone, when a later round
# rewrites testlog.json in the same build dir). Near misses too: the
# "slow:" lines of it_wait_until, from every test, passed or not.
DIGEST=$(mktemp)
SLOW=$(mktemp)
WHY=$(mktemp)
trap 'rm -f "$DIGEST" "$SLOW" "$WHY"' EXIT

# digest DIR SUITE — from DIR's last meson run: each test that did not
# pass to $DIGEST (name, result, time; the lines that say why it failed
# — it_fail, it_assert_*, cmocka, the sanitizers — wherever they are in
# its output; then its last 30 lines, which for an integration test are
# mostly the chainfs log dumped at exit), a line per failed test to
# $WHY, every test's "slow:" lines to $SLOW.
digest() {
  python3 - "$1/meson-logs/testlog.json" "$1" "$2" "$DIGEST" "$SLOW" "$WHY" <<'PY' || true
import json, re, sys
path, d, suite, digest, slow, why = sys.argv[1:7]
WHY_RE = re.compile(r"\] (FAIL|expected|actual):|\] .* does not contain |"
                    r"\[  (FAILED|ERROR) +\]|: error: |ERROR: \w+Sanitizer|"
                    r"runtime error: |^SUMMARY: \w+Sanitizer|Assertion .* failed")
def cut(l, n=400):
    return l if len(l) <= n else l[:n] + f" …({len(l) - n} more)"
try:
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
except OSError:
    sys.exit(0)
with open(digest, "a") as dg, open(slow, "a") as sl, open(why, "a") as wy:
    for line in lines:
        try:
            t = json.loads(line)
        except ValueError:
            continue
        out = ((t.get("stdout") or "") + "\n" + (t.get("stderr") or "")).strip()
        for l in out.splitlines():
            if "] slow: " in l:
                print(f"{d} {suite}: {l}", file=sl)
        if t.get("result") in ("OK", "SKIP", "EXPECTEDFAIL"):
            continue
        head = (f"{d} {suite}: {t.get('name')} {t.get('result')} "
                f"(exit {t.get('returncode')}, {t.get('duration', 0):.1f} s)")
        print("--- " + head, file=dg)
        whys = [l for l in out.splitlines() if WHY_RE.search(l)]
        for l in whys[:12]:
            print("  why: " + cut(l), file=dg)
        if len(whys) > 12:
            print(f"  why: … and {len(whys) - 12} more such lines", file=dg)
        for l in out.splitlines()[-30:]:
            print("    " + cut(l), file=dg)
        print(head + (" — " + cut(whys[0], 300) if whys else ""), file=wy)
PY
}

# run_suite BUILDDIR SUITE [MESON-TEST-ARGS...] — meson test, then add its
# summary to the totals.
run_suite() {
  local dir=$1 suite=$2 log rc=0 ok xfail fail xpass skip timeout
  shift 2
  log=$(mktemp)
  echo
  echo "=== $suite tests ($dir${*:+ $*})"
  meson test -C "$dir" --suite "$suite" --print-errorlogs "$@" 2>&1 | tee "$log" || rc=$?
  count() { sed -n "s/^$1: *\([0-9][0-9]*\).*/\1/p" "$log" | tail -n 1; }
  ok=$(count Ok)
  xfail=$(count 'Expected Fail')
  fail=$(count Fail)
  xpass=$(count 'Unexpected Pass')
  skip=$(count Skipped)
  timeout=$(count Timeout)
  rm -f "$log"
  if [ -z "$ok" ]; then
    echo "test: no summary from meson test ($dir, $suite): counted as one failure" >&2
    FAILED=$((FAILED + 1))
    FAILED_SUITES+=("$dir:$suite")
    return
  fi
  PASSED=$((PASSED + ok + ${xfail:-0}))
  FAILED=$((FAILED + ${fail:-0} + ${xpass:-0} + ${timeout:-0}))
  SKIPPED=$((SKIPPED + ${skip:-0}))
  digest "$dir" "$suite"
  if [ "$rc" -ne 0 ] || [ $((${fail:-0} + ${xpass:-0} + ${timeout:-0})) -ne 0 ]; then
    FAILED_SUITES+=("$dir:$suite")
  fi
}

run_suite build unit
run_suite build integration --no-suite guest
# the .deb is built from the sources by dpkg-buildpackage (its own build
# dir, Debian's flags): one round is all it needs
run_suite build package

echo
echo "=== sanitizer build (build-asan: -Db_sanitize=address,undefined)"
[ -d build-asan ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1
# No leak suppressions: every leak LeakSanitizer finds at the daemon's
# exit fails the test, including libvirt objects chainfs forgot to free.
unset LSAN_OPTIONS
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_suite build-asan unit
run_suite build-asan integration --no-suite guest
run_suite build-asan fault
run_suite build-asan guest --num-processes 2

echo
echo "=== fuzz targets (build-fuzz: clang, libFuzzer + ASan/UBSan)"
if bash scripts/fuzz.sh --build; then
  run_suite build-fuzz fuzz
else
  echo "test: the fuzz build failed (clang and libclang-rt-dev installed?): counted as one failure" >&2
  FAILED=$((FAILED + 1))
  FAILED_SUITES+=("build-fuzz:build")
fi

echo
if [ -s "$SLOW" ]; then
  echo "=== waits that used more than half their time (it_wait_until)"
  cat "$SLOW"
fi
if [ "${#FAILED_SUITES[@]}" -ne 0 ]; then
  if [ -s "$DIGEST" ]; then
    echo "=== what failed (why, then the last 30 lines of each)"
    cat "$DIGEST"
  fi
  if [ -s "$WHY" ]; then
    echo "=== the failed tests, a line each"
    cat "$WHY"
  fi
  echo "failed: ${FAILED_SUITES[*]}"
fi
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ] && [ "${#FAILED_SUITES[@]}" -eq 0 ]
