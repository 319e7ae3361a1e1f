#!/usr/bin/env bash
# nbd_serve.sh — the real image server (backend/nbd.c, design
# docs/design/issue9.md §1.2–§1.4, §3.3) through tests/tools/imgserve_try,
# against real qemu-nbd, qemu-img and qemu-io. No libvirtd, no mount.
#
#   - a qcow2 chain of 3 made with relative backing names and a raw base
#     under qcow2, each layer with its own pattern: the bytes served equal
#     `qemu-img convert -O raw` of the chain (sequential and backward reads,
#     6 streams of one server at once mixing sequential and random reads,
#     3 servers at once);
#   - every server is started from a thread that ends before the reads
#     (imgserve_try): qemu-nbd's PDEATHSIG follows the spawner thread;
#   - the data runs equal `qemu-img map`'s data entries;
#   - a wrong expected size, a missing file (ENOENT with QEMU's text) and
#     an encrypted image (EOPNOTSUPP) are refused;
#   - while a chain is held: committing into a layer above the served top
#     works, opening the served top or the raw base read-write does not;
#     no fd of ours (an inherited non-CLOEXEC one) is open in qemu-nbd;
#   - qemu-nbd killed under a reader: reads EIO with a log line naming it;
#   - stop with qemu-nbd hung (SIGSTOP) ends within 3 s: with read-ahead
#     in flight (SIGKILL of that qemu-nbd after 1 s), with the reader
#     paused 20 ms before the SIGSTOP (the read-ahead ends meanwhile, as
#     under load: stop once waited forever in nbd_shutdown there), and
#     with nothing in flight (SIGTERM after 1 s, SIGKILL after 2 s);
#   - kill -9 of the holder: its qemu-nbd ends within 1 s, the raw lock is
#     gone, and a sweep leaves STATE_DIR/nbd empty;
#   - the sweep removes a planted socket and pid records of a dead pid and
#     of a reused pid without killing anything, and stops a recorded qemu-nbd;
#   - a state_dir too long for a socket path works (sockets under /run/chainfs).
# Nothing here waits without a bound (imgserve_try under timeout, children
# by wait_for), and the exit kills (SIGCONT, SIGKILL) every qemu-nbd this
# script saw or that a pid record of its state dirs names: a failure never
# leaves a stopped qemu-nbd behind.
set -euo pipefail

NAME=nbd_serve
IMGSERVE_TRY=${IMGSERVE_TRY:-$(cd "$(dirname "$0")/../.." && pwd)/build/tests/imgserve_try}
log() { printf '[%s %s] %s\n' "$NAME" "$(date +%T.%3N)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

for tool in qemu-img qemu-io qemu-nbd python3 cmp; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (run scripts/deps.sh)"
done
[ -x "$IMGSERVE_TRY" ] || fail "no imgserve_try at $IMGSERVE_TRY (build it: ninja -C build)"

D=/var/tmp/cfsnbd-$$
PIDS=()          # background processes this script started
QNBDS=()         # "PID START" of the qemu-nbd processes this script saw
TRY_SECS=${TRY_SECS:-120}   # the most one imgserve_try may take

# proc_start PID — its start time (field 22 of /proc/PID/stat), or nothing
proc_start() { sed 's/^.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f20; }
# kill_qnbd PID START — SIGCONT then SIGKILL PID if it is still that
# process (same start time) and qemu-nbd
kill_qnbd() {
  [ -n "${2:-}" ] && [ "$(proc_start "$1")" = "$2" ] || return 0
  [ "$(basename "$(readlink /proc/"$1"/exe 2>/dev/null)")" = qemu-nbd ] || return 0
  kill -CONT "$1" 2>/dev/null
  kill -KILL "$1" 2>/dev/null
  return 0
}
# pstate PID — its state letter (R, S, T, Z...), or nothing if gone
pstate() { sed -n 's/^[0-9]* (.*) \(.\) .*/\1/p' /proc/"$1"/stat 2>/dev/null; }
# wait_for PID SECS — wait for a child of this script for at most SECS
# seconds: its exit status, or 124 (logged) if it still runs
wait_for() {
  local end=$((SECONDS + $2 + 1)) st
  while st=$(pstate "$1") && [ -n "$st" ] && [ "$st" != Z ]; do
    if [ "$SECONDS" -ge "$end" ]; then
      log "pid $1 ($(tr '\0' ' ' </proc/"$1"/cmdline 2>/dev/null | cut -c1-80)) still runs after $2 s"
      return 124
    fi
    sleep 0.05
  done
  wait "$1"
}
cleanup() {
  local rc=$? p f q s
  set +e
  # qemu-nbd first: a stopped one never ends by itself, and a holder
  # stuck in a stop on it is freed when it dies
  for f in "${QNBDS[@]}"; do
    read -r q s <<<"$f"
    kill_qnbd "$q" "$s"
  done
  for f in "$D"/state/nbd/*.pid ${LONG:+"$LONG"/nbd/*.pid}; do
    [ -f "$f" ] && read -r q s _ <"$f" && kill_qnbd "$q" "$s"
  done
  # only those still our children (a pid waited for may be reused)
  local live=()
  for p in "${PIDS[@]}"; do
    [ "$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | cut -d' ' -f2)" = $$ ] && live+=("$p")
  done
  for p in "${live[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in "${live[@]}"; do
    if ! wait_for "$p" 5 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  rm -rf "$D"
  [ -n "${LONG:-}" ] && rm -rf "$LONG"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$D/state"
cd "$D"

# try ARGS... — imgserve_try, for at most TRY_SECS seconds (its qemu-nbd,
# if it hangs, is killed at exit through the pid record it left). In our
# process group (--foreground): a test runner's kill of the group reaches
# it and its qemu-nbd, stopped or not.
try() {
  local rc=0
  timeout --foreground -k 5 "$TRY_SECS" "$IMGSERVE_TRY" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    log "imgserve_try $1 did not end within $TRY_SECS s"
  fi
  return "$rc"
}
MiB=$((1024 * 1024))
SIZE=$((64 * MiB))

# ---- the chains ---------------------------------------------------------------
# base.qcow2 <- s1.qcow2 <- s2.qcow2 <- s3.qcow2, relative backing names
# (made from inside $D), each layer with its own pattern; s2 also writes
# zeroes over base data (a zero cluster: a hole for the map).
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 8M' -c 'write -P 0x12 40M 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 s1.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 4M 8M' -c 'write -P 0x23 63M 1M' s1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b s1.qcow2 -F qcow2 s2.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 30M 1M' -c 'write -z 40M 1M' -c 'write -P 0x34 5M 64k' \
  s2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b s2.qcow2 -F qcow2 s3.qcow2
qemu-io -f qcow2 -c 'write -P 0x44 0 1M' s3.qcow2 >/dev/null
qemu-img info s2.qcow2 | grep -q '^backing file: s1.qcow2$' || fail "s2's backing name is not relative"
# rbase.raw <- r1.qcow2 <- r2.qcow2
qemu-img create -q -f raw rbase.raw 64M
qemu-io -f raw -c 'write -P 0x55 0 16M' rbase.raw >/dev/null
qemu-img create -q -f qcow2 -b rbase.raw -F raw r1.qcow2
qemu-io -f qcow2 -c 'write -P 0x66 8M 4M' r1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b r1.qcow2 -F qcow2 r2.qcow2

QCHAIN=(qcow2:"$D/s2.qcow2" qcow2:"$D/s1.qcow2" qcow2:"$D/base.qcow2")
RCHAIN=(qcow2:"$D/r1.qcow2" raw:"$D/rbase.raw")

# ---- content ------------------------------------------------------------------
qemu-img convert -O raw s2.qcow2 ref-s2.raw
try "$D/state" "$SIZE" "${QCHAIN[@]}" >out-s2.raw || fail "read of the qcow2 chain"
cmp out-s2.raw ref-s2.raw || fail "qcow2 chain: served bytes differ from qemu-img convert"
try -R "$D/state" "$SIZE" "${QCHAIN[@]}" >outR-s2.raw || fail "backward read of the qcow2 chain"
cmp outR-s2.raw ref-s2.raw || fail "qcow2 chain: backward read differs"
out=$(try -P 6 -C ref-s2.raw "$D/state" "$SIZE" "${QCHAIN[@]}") || fail "6 parallel streams"
[ "$out" = ok ] || fail "parallel streams: $out"
log "qcow2 chain of 3 (relative backing names): equal to qemu-img convert, forward, backward, 6 streams at once"
try "$D/state" "$SIZE" "${QCHAIN[@]}" >out-a.raw &
a=$!
try "$D/state" "$SIZE" "${QCHAIN[@]}" >out-b.raw &
b=$!
try "$D/state" "$SIZE" "${RCHAIN[@]}" >out-c.raw &
c=$!
PIDS+=("$a" "$b" "$c")
for p in "$a" "$b" "$c"; do
  wait_for "$p" $((TRY_SECS + 10)) || fail "three servers at once: one failed"
done
cmp out-a.raw ref-s2.raw || fail "two servers of one chain at once: bytes differ"
cmp out-b.raw ref-s2.raw || fail "two servers of one chain at once: bytes differ"
qemu-img convert -O raw r1.qcow2 ref-r1.raw
cmp out-c.raw ref-r1.raw || fail "a server of another chain beside them: bytes differ"
rm -f out-a.raw out-b.raw out-c.raw
log "two servers of one chain and one of another at once: all equal"

try "$D/state" "$SIZE" "${RCHAIN[@]}" >out-r1.raw || fail "read of the raw-based chain"
cmp out-r1.raw ref-r1.raw || fail "raw base: served bytes differ from qemu-img convert"
log "raw base under qcow2: equal to qemu-img convert"
rm -f out-s2.raw outR-s2.raw out-r1.raw ref-s2.raw ref-r1.raw

# ---- the data runs ----------------------------------------------------------------
# qemu-img map's entries with "data": true, adjacent ones merged
map_runs() {
  qemu-img map --output=json "$1" | python3 -c '
import json, sys
runs = []
for e in json.load(sys.stdin):
    if not e["data"]:
        continue
    if runs and runs[-1][0] + runs[-1][1] == e["start"]:
        runs[-1][1] += e["length"]
    else:
        runs.append([e["start"], e["length"]])
for s, l in runs:
    print(s, l)'
}
for pair in "s2.qcow2:QCHAIN" "r1.qcow2:RCHAIN"; do
  img=${pair%%:*}
  declare -n chain=${pair#*:}
  map_runs "$img" >want.map
  try -m "$D/state" "$SIZE" "${chain[@]}" >got.map || fail "extents of $img"
  [ -s want.map ] || fail "qemu-img map shows no data in $img"
  diff -u want.map got.map >&2 || fail "extents of $img differ from qemu-img map"
  unset -n chain
done
log "extents equal qemu-img map's data runs (qcow2 chain with a zero cluster, raw base)"

# ---- refusals -----------------------------------------------------------------
if try "$D/state" $((SIZE + 512)) "${QCHAIN[@]}" >/dev/null 2>err.txt; then
  fail "a wrong expected size was served"
fi
grep -q 'rc=-5 .*expected' err.txt || fail "wrong size: not EIO with the sizes: $(cat err.txt)"
if try "$D/state" "$SIZE" qcow2:"$D/s2.qcow2" qcow2:"$D/gone.qcow2" >/dev/null 2>err.txt; then
  fail "a chain with a missing file was served"
fi
grep -q 'rc=-2 .*No such file' err.txt || fail "missing file: not ENOENT with the text: $(cat err.txt)"
if try "$D/state" "$SIZE" qcow2:"$D/r1.qcow2" raw:"$D/gone.raw" >/dev/null 2>err.txt; then
  fail "a chain with a missing raw file was served"
fi
grep -q 'rc=-2 .*No such file' err.txt || fail "missing raw: not ENOENT: $(cat err.txt)"
# QEMU times its PBKDF on the thread's CPU clock to size the LUKS header;
# under load that measurement can fail ("Unable to get accurate CPU
# usage"): a failure of qemu-img's benchmark, not of ours, so retried
for i in 1 2 3 4 5; do
  qemu-img create -q -f qcow2 --object secret,id=sec0,data=cfs-$$ \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 enc.qcow2 1M \
    2>err.txt && break
  if ! grep -q 'Unable to get accurate CPU usage' err.txt || [ "$i" -eq 5 ]; then
    fail "cannot create the encrypted image: $(cat err.txt)"
  fi
  log "qemu-img create of the encrypted image: $(cat err.txt); again"
done
if try "$D/state" $MiB qcow2:"$D/enc.qcow2" >/dev/null 2>err.txt; then
  fail "an encrypted image was served"
fi
grep -q 'rc=-95 .*key-secret' err.txt || fail "encrypted: not EOPNOTSUPP with the text: $(cat err.txt)"
[ -z "$(ls -A state/nbd)" ] || fail "state/nbd not empty after the runs: $(ls -A state/nbd)"
log "wrong size -> EIO, missing file -> ENOENT with qemu-nbd's text, encrypted -> EOPNOTSUPP; nothing left in state/nbd"

# ---- holding a chain: locks, fds ------------------------------------------------
# hold CHAIN... — start a holder in the background with an inherited fd 9
# (like the daemon's lock file); sets HOLDER and QNBD (its qemu-nbd pids)
hold() {
  : >hold.out
  "$IMGSERVE_TRY" -H "$D/state" "$SIZE" "$@" >hold.out 2>hold.err 9>"$D/fd9-canary" &
  HOLDER=$!
  PIDS+=("$HOLDER")
  local _
  for _ in $(seq 100); do
    grep -q ready hold.out && break
    kill -0 "$HOLDER" 2>/dev/null || fail "holder exited: $(cat hold.err)"
    sleep 0.05
  done
  grep -q ready hold.out || fail "holder not ready after 5 s"
  QNBD=()
  local c kids
  mapfile -t kids < <(cat /proc/"$HOLDER"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d')
  for c in "${kids[@]}"; do
    [ "$(basename "$(readlink /proc/"$c"/exe)")" = qemu-nbd ] && QNBD+=("$c")
  done
  for c in "${QNBD[@]}"; do
    QNBDS+=("$c $(proc_start "$c")")
  done
  [ "${#QNBD[@]}" -eq 1 ] || fail "expected one qemu-nbd child of the holder, found ${QNBD[*]:-none}"
}
# alive PID — a process that runs (not gone, not a zombie)
alive() {
  local st
  st=$(sed -n 's/^[0-9]* (.*) \(.\) .*/\1/p' /proc/"$1"/stat 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

hold "${QCHAIN[@]:1}"   # serves s1 over base
for f in /proc/"${QNBD[0]}"/fd/*; do
  case $(readlink "$f") in
    *fd9-canary*) fail "an inherited fd of the holder is open in qemu-nbd" ;;
    *hold.out*) fail "the holder's stdout is open in qemu-nbd" ;;
  esac
done
[ -z "$(find state/nbd -name '*.s')" ] || fail "the socket path was not unlinked: $(ls state/nbd)"
[ -n "$(find state/nbd -name '*.pid')" ] || fail "no pid record while serving"
qemu-img commit -q s3.qcow2 || fail "commit of s3 into s2 (above the served s1) refused"
if qemu-io -f qcow2 -c 'write -P 0x77 0 64k' s1.qcow2 >/dev/null 2>err.txt; then
  fail "qemu-io opened the served s1 read-write"
fi
grep -q 'Failed to get .*lock' err.txt || fail "s1 refusal without QEMU's lock text: $(cat err.txt)"
if qemu-img commit -q s2.qcow2 2>err.txt; then
  fail "commit of s2 into the served s1 worked"
fi
kill -TERM "$HOLDER"
wait_for "$HOLDER" 30 || fail "holder exited $? on SIGTERM"
alive "${QNBD[0]}" && fail "qemu-nbd ${QNBD[0]} still runs after the holder stopped"
[ -z "$(ls -A state/nbd)" ] || fail "state/nbd not empty after stop: $(ls -A state/nbd)"
log "held qcow2 chain: commit above works, s1 rw refused (lock), no inherited fd in qemu-nbd; stop cleans up"

hold "${RCHAIN[@]}"
q=${QNBD[0]}
if qemu-io -f raw -c 'write -P 0x99 0 64k' rbase.raw >/dev/null 2>err.txt; then
  fail "qemu-io wrote the raw base under a reader"
fi
grep -q 'Failed to get .*lock' err.txt || fail "raw base refusal without the lock text: $(cat err.txt)"
if qemu-io -f qcow2 -c 'write -P 0x99 0 64k' r1.qcow2 >/dev/null 2>err.txt; then
  fail "qemu-io opened the served r1 read-write"
fi
qemu-io -r -f raw -c 'read -P 0x55 0 64k' rbase.raw >/dev/null || fail "raw base not readable by others"
log "held raw-based chain: raw base and r1 refused read-write (byte-201 lock), readable"

# ---- kill -9 of the holder --------------------------------------------------------
kill -KILL "$HOLDER"
t0=$(date +%s%N)
while alive "$q"; do
  [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 1000 ] || fail "qemu-nbd $q still runs 1 s after kill -9 of its parent"
  sleep 0.02
done
wait "$HOLDER" 2>/dev/null || true
log "kill -9 of the holder: qemu-nbd $q gone after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
qemu-io -f raw -c 'write -P 0x55 0 64k' rbase.raw >/dev/null || fail "raw base still locked after the holder died"
[ -n "$(find state/nbd -name '*.pid')" ] || fail "expected the dead holder's pid record"
try -S "$D/state" 2>sweep.log || fail "sweep: $(cat sweep.log)"
grep -q 'removed .*\.pid' sweep.log || fail "sweep did not log the removal: $(cat sweep.log)"
[ -z "$(ls -A state/nbd)" ] || fail "state/nbd not empty after the sweep: $(ls -A state/nbd)"
log "sweep after the kill: state/nbd empty"

# ---- qemu-nbd killed under a reader -------------------------------------------------
hold "${QCHAIN[@]}"
q=${QNBD[0]}
kill -KILL "$q"
kill -USR1 "$HOLDER"
rc=0
wait_for "$HOLDER" 30 || rc=$?
[ "$rc" -ne 124 ] || fail "holder still runs 30 s after its qemu-nbd was killed"
[ "$rc" -ne 0 ] || fail "reads worked after qemu-nbd was killed"
grep -q 'stream_read: rc=-5' hold.err || fail "no EIO after qemu-nbd was killed: $(cat hold.err)"
grep -q "qemu-nbd (pid $q) lost: .*killed by signal 9" hold.err ||
  fail "no log line naming the dead qemu-nbd: $(cat hold.err)"
[ -z "$(ls -A state/nbd)" ] || fail "state/nbd not empty after a dead server's stop: $(ls -A state/nbd)"
log "qemu-nbd killed under a reader: reads EIO, one log line with its status, stop cleans up"

# ---- stop with qemu-nbd hung -----------------------------------------------------
# stop_hung WHAT ARGS... — imgserve_try ARGS (a -K or -k run) ends within
# 20 s, its stop within 3 s, and leaves nothing in state/nbd
stop_hung() {
  local what=$1 out ms
  shift
  out=$(TRY_SECS=20 try "$@" "$D/state" "$SIZE" "${QCHAIN[@]}" 2>err.txt) ||
    fail "stop of a hung server, $what: $(cat err.txt)"
  ms=${out#stopped in }
  ms=${ms% ms}
  [ "$ms" -lt 3000 ] || fail "stop of a hung server, $what, took $ms ms"
  [ -z "$(ls -A state/nbd)" ] || fail "state/nbd not empty after a hung server's stop, $what: $(ls -A state/nbd)"
  log "stop with qemu-nbd SIGSTOPped, $what: $out"
}
stop_hung "read-ahead in flight" -K
stop_hung "reader paused 20 ms before the SIGSTOP (read-ahead done)" -K -w 20
stop_hung "nothing in flight" -k

# ---- the sweep on planted things ---------------------------------------------------
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' \
  "$D/state/nbd/99999-1.s"
sh -c 'exit 0' &
dead=$!
wait_for "$dead" 5 || true
echo "$dead 12345" >state/nbd/99999-2.pid
sleep 300 &
innocent=$!
PIDS+=("$innocent")
sleep 0.1
start=$(sed 's/^.*) //' /proc/"$innocent"/stat | cut -d' ' -f20)
echo "$innocent $((start + 1))" >state/nbd/99999-3.pid   # a reused pid: other start time
echo "$innocent $start" >state/nbd/99999-4.pid           # same process, but not qemu-nbd
echo "garbage" >state/nbd/99999-5.pid
try -S "$D/state" 2>sweep.log || fail "sweep: $(cat sweep.log)"
alive "$innocent" || fail "the sweep killed a process that is not qemu-nbd"
[ -z "$(ls -A state/nbd)" ] || fail "planted files left by the sweep: $(ls -A state/nbd)"
[ "$(grep -c 'removed' sweep.log)" -eq 5 ] || fail "expected 5 removal lines: $(cat sweep.log)"
grep -q stopping sweep.log && fail "the sweep stopped something: $(cat sweep.log)"
log "sweep: planted socket and 4 pid records removed, nothing killed"

# a recorded qemu-nbd that still runs (as if PDEATHSIG had not reached it)
qemu-nbd --read-only --persistent --socket="$D/own.sock" -f qcow2 "$D/base.qcow2" 2>/dev/null &
own=$!
PIDS+=("$own")
QNBDS+=("$own $(proc_start "$own")")
for _ in $(seq 100); do [ -S "$D/own.sock" ] && break; sleep 0.05; done
start=$(sed 's/^.*) //' /proc/"$own"/stat | cut -d' ' -f20)
echo "$own $start" >state/nbd/99999-6.pid
try -S "$D/state" 2>sweep.log || fail "sweep: $(cat sweep.log)"
grep -q "stopping qemu-nbd pid $own" sweep.log || fail "recorded qemu-nbd not stopped: $(cat sweep.log)"
wait_for "$own" 5 2>/dev/null || true
alive "$own" && fail "recorded qemu-nbd $own still runs after the sweep"
log "sweep: a recorded, still running qemu-nbd stopped"

# ---- a state_dir too long for sun_path ------------------------------------------
if [ -w /run ]; then
  LONG=$D/$(printf 'x%.0s' $(seq 100))
  mkdir -p "$LONG"
  qemu-img convert -O raw r1.qcow2 ref-r1.raw
  try "$LONG" "$SIZE" "${RCHAIN[@]}" >out-r1.raw || fail "read with a long state_dir"
  cmp out-r1.raw ref-r1.raw || fail "long state_dir: bytes differ"
  [ -z "$(ls -A "$LONG/nbd")" ] || fail "long state_dir: $LONG/nbd not empty"
  rm -f out-r1.raw ref-r1.raw
  log "state_dir of ${#LONG} characters: served through /run/chainfs"
fi
log "PASS"
