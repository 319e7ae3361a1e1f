#!/usr/bin/env bash
# nbd_stop_loop.sh — stress for stop of a hung image server (backend/nbd.c
# through imgserve_try -K, the nbd_serve scenario that once hung under
# load). Not a meson test: it takes minutes. Usage:
#
#   tests/tools/nbd_stop_loop.sh [-n RUNS] [-l LOADERS] [-c CPU] [-w MAXMS] [IMGSERVE_TRY]
#
# Runs `imgserve_try -K -w W` RUNS times (200), W cycling over 0..MAXMS ms
# (0: no pause; the read-ahead of -K ends in ~5 ms, so a W of a few ms is
# a reader preempted between its read and the SIGSTOP), beside LOADERS
# busy loops (4); with -c CPU everything (loops, imgserve_try, qemu-nbd)
# is pinned to that one CPU. A run that does not end within 10 s is a
# hang: its qemu-nbd is SIGCONTed and SIGKILLed (by the pid record it
# left), it is SIGKILLed. Prints the hangs, the slow stops (>= 3000 ms)
# and the stop times' spread; exit 1 if any run hung or was slow.
set -euo pipefail

RUNS=200 LOADERS=4 CPU='' MAXW=20
while getopts n:l:c:w: o; do
  case $o in
    n) RUNS=$OPTARG ;;
    l) LOADERS=$OPTARG ;;
    c) CPU=$OPTARG ;;
    w) MAXW=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
T=${1:-$(cd "$(dirname "$0")/../.." && pwd)/build/tests/imgserve_try}
[ -x "$T" ] || { echo "no imgserve_try at $T" >&2; exit 2; }
pin=()
[ -n "$CPU" ] && pin=(taskset -c "$CPU")

D=$(mktemp -d /var/tmp/cfsnbdloop-XXXXXX)
LOAD=()
# SIGCONT + SIGKILL the qemu-nbd each pid record names (if still that
# process: start time, exe), remove the records and sockets
kill_recorded() {
  local f q s
  for f in "$D"/state/nbd/*.pid; do
    [ -f "$f" ] || continue
    read -r q s _ <"$f"
    if [ "$(sed 's/^.*) //' /proc/"$q"/stat 2>/dev/null | cut -d' ' -f20)" = "$s" ] &&
      [ "$(basename "$(readlink /proc/"$q"/exe 2>/dev/null)")" = qemu-nbd ]; then
      kill -CONT "$q"
      kill -KILL "$q"
    fi
    rm -f "$f"
  done
  rm -f "$D"/state/nbd/*.s
}
cleanup() {
  local q
  kill_recorded
  for q in "${LOAD[@]}"; do
    kill "$q" 2>/dev/null || true
  done
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/state"
cd "$D"
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 16M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 s1.qcow2

for _ in $(seq "$LOADERS"); do
  "${pin[@]}" sh -c 'while :; do :; done' &
  LOAD+=($!)
done

hangs=0 slow=0 i=0
: >stops.txt
while [ "$i" -lt "$RUNS" ]; do
  w=$((i % (MAXW + 1)))
  rc=0
  out=$("${pin[@]}" timeout -s KILL 10 "$T" -K -w "$w" "$D/state" $((64 << 20)) \
    qcow2:"$D/s1.qcow2" qcow2:"$D/base.qcow2" 2>>err.log) || rc=$?
  if [ "$rc" -ne 0 ]; then
    hangs=$((hangs + 1))
    echo "run $i (-w $w): exit $rc (hang if 137)" >&2
    kill_recorded # its qemu-nbd, stopped, would stay
  else
    ms=${out#stopped in }
    ms=${ms% ms}
    echo "$w $ms" >>stops.txt
    if [ "$ms" -ge 3000 ]; then
      slow=$((slow + 1))
      echo "run $i (-w $w): $out" >&2
    fi
  fi
  i=$((i + 1))
done
echo "runs=$RUNS loaders=$LOADERS cpu=${CPU:-any} w=0..$MAXW: hangs=$hangs slow=$slow"
sort -n -k2 stops.txt | awk '{a[NR]=$2} END {if (NR) printf "stop ms: min %d median %d max %d\n", a[1], a[int((NR+1)/2)], a[NR]}'
[ "$hangs" -eq 0 ] && [ "$slow" -eq 0 ]
