#!/usr/bin/env bash
# stream_query.sh — does this machine's QEMU survive a query of its block
# nodes while a block-stream (a pull) ends? QEMU 7.2 (Debian 12) does not:
# it segfaults (docs/design/issue8.md §7.4), which is why chainfs pulls on
# a running domain only with -o live_pull=on, or where it knows QEMU is
# safe.
#
#   CHAINFS_VIRT_TYPE=qemu scripts/probe/stream_query.sh [QUERY [ROUNDS]]
#
# QUERY, sent over and over by a background loop while the foreground pulls
# (virsh blockpull --base, --wait) round after round on vda:
#   named   query-named-block-nodes {"flat": true}  (libvirt's block stats,
#           virsh domstats --block --backing, use it)      — the default
#   stats   virsh domstats --block --backing
#   snap    a disk-only snapshot of vdb
#   blkstat query-blockstats
#   none    nothing (the pulls alone)
# Each round: two snapshots of vda with a guest write into each, then a pull
# of the middle layer into the active one (base = two layers down). Prints
# "CRASH in round N" (exit 1) as soon as the domain is no longer running,
# else "no crash in ROUNDS rounds". One throwaway domain (64 MiB, no OS, two
# qcow2 virtio disks, cfsprobe-sq-PID) in a temporary directory; clean-up
# (tests/integration/lib.sh) destroys it and removes every file, also on
# failure. chainfs is not run; libvirtd is not restarted.
set -euo pipefail

export CHAINFS=${CHAINFS:-/bin/true}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../tests/integration/lib.sh"
IT_PREFIX="cfsprobe-sq-$$"
# shellcheck disable=SC2034 # read by lib.sh
IT_NAME=stream_query

QUERY=${1:-named}
ROUNDS=${2:-15}
case $QUERY in named | stats | snap | blkstat | none) ;; *)
  echo "usage: $0 [named|stats|snap|blkstat|none [ROUNDS]]" >&2
  exit 2
  ;;
esac

it_init
D="$IT_PREFIX-d"
files=()
for disk in vda vdb; do
  f="$T/$disk.0.qcow2"
  it_make_image "$f" 256M
  it_write_pattern "$f" 0x11 0 8M
  files+=("$f")
done
it_define "$D" "${files[@]}"
it_start "$D"
it_log "QEMU: $(it_virsh version | sed -n 's/.*Running hypervisor: *//p')"

# the background queries, until $T/run goes away
query_loop() {
  local j=0
  while [ -e "$T/run" ]; do
    j=$((j + 1))
    case $QUERY in
      named) it_virsh qemu-monitor-command "$D" \
        '{"execute":"query-named-block-nodes","arguments":{"flat":true}}' ;;
      stats) it_virsh domstats --block --backing "$D" ;;
      snap) it_virsh snapshot-create-as "$D" "b$j" --disk-only --no-metadata \
        --diskspec "vdb,file=$T/vdb.b$j.qcow2" --diskspec vda,snapshot=no ;;
      blkstat) it_virsh qemu-monitor-command "$D" \
        '{"execute":"query-blockstats","arguments":{"query-nodes":true}}' ;;
      none) sleep 0.1 ;;
    esac >/dev/null 2>&1 || true
  done
}
touch "$T/run"
query_loop &
QPID=$!
stop_loop() {
  rm -f "$T/run"
  wait "$QPID" 2>/dev/null || true
}
IT_CLEANUP_HOOKS+=(stop_loop)

for ((i = 1; i <= ROUNDS; i++)); do
  for k in 1 2; do
    it_virsh snapshot-create-as "$D" "s$i$k" --disk-only --no-metadata \
      --diskspec "vda,file=$T/vda.$i$k.qcow2" --diskspec vdb,snapshot=no >/dev/null
    it_guest_write "$D" "0x2$k" "${k}M" 1M
  done
  # the layer two below the active one: the pull's base
  base=$(it_virsh dumpxml "$D" | python3 -c '
import sys, xml.etree.ElementTree as E
d = E.parse(sys.stdin).getroot().find("devices/disk")
print("vda[%s]" % d.find("backingStore").find("backingStore").get("index"))')
  it_virsh blockpull "$D" vda --base "$base" --wait >/dev/null 2>&1 || true
  if [ "$(it_state "$D")" != running ]; then
    echo "CRASH in round $i (query: $QUERY): the domain is $(it_state "$D")"
    tail -n 2 "/var/log/libvirt/qemu/$D.log" 2>/dev/null || true
    exit 1
  fi
done
echo "no crash in $ROUNDS rounds (query: $QUERY)"
