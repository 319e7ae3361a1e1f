#!/usr/bin/env bash
# hosts_cli.sh — several libvirt hosts in one mount, the command line and
# the tree (issue 12 item 1; the full two-host acceptance test with live
# merges, kills and restarts is hosts.sh):
#   1. bad host names and clashes are refused before anything starts
#      (exit 2, a message naming them);
#   2. a lone -c NAME=URI: no host level (NAME is not used); then
#      this host (-c local=URI) and host2_lib.sh's second libvirtd
#      (-o connect=h2=qemu+tcp://...) mounted at once: / lists "h2 local",
#      each host shows its own domain only, /proc/mounts says
#      chainfs:local,h2, .chainfs/metrics.prom has host labels (promcheck),
#      the journals are in state_dir/hosts/NAME, log lines say "host h2:",
#      a mkdir under h2/ has libvirt make the overlay on the second host;
#   3. the second host down at start: the mount still starts, h2/ is
#      empty and its metrics say down, the local host works; its libvirtd
#      started: its domain shows; killed again: its mkdir is ENOTCONN and
#      its chain stale, the local host's chain is not and its mkdir works.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/host2_lib.sh"
it_init

PROMCHECK=${PROMCHECK:-${CHAINFS_BUILD_ROOT:+$CHAINFS_BUILD_ROOT/tests/promcheck}}
L="$IT_PREFIX-l"
R="$IT_PREFIX-r"
IMG=$(it_tmpdir)
MNT="$T/mnt"
mkdir -p "$MNT"

# 1. names
expect_usage() {
  local out rc=0
  out=$("$CHAINFS" "$@" "$MNT" 2>&1) || rc=$?
  it_assert_eq 2 "$rc" "chainfs $* exits 2"
  it_assert_contains "$out" "$EXPECT" "chainfs $* says why"
  mountpoint -q "$MNT" && it_fail "chainfs $* mounted"
  return 0
}
EXPECT="two hosts named 'a'" expect_usage -c a=qemu:///system -o connect=a=qemu:///session
EXPECT="two hosts named 'localhost'" expect_usage -c qemu:///system -c qemu:///session
EXPECT="NAME 1 to 64 characters" expect_usage -c .chainfs=qemu:///system -c b=qemu:///system
it_log "ok: bad and repeated host names refused"

# 2. two hosts
h2_start
it_make_image "$IMG/l.qcow2" 16M
it_make_image "$IMG/r.qcow2" 16M
it_domain_xml "$R" "$IMG/r.qcow2" >"$T/$R.xml"
it_define "$L" "$IMG/l.qcow2"
# one host with a NAME: accepted, and the tree has no host level
"$CHAINFS" -f -c "solo=$IT_URI" -o "state_dir=$T/state1" "$MNT" >>"$IT_LOG" 2>&1 &
IT_PID=$!
it_wait_until 10 "the one-host mount" mountpoint -q "$MNT"
it_wait_until 5 "$L at the root of a one-host mount" test -d "$MNT/$L"
[ -e "$MNT/solo" ] && it_fail "a lone -c solo=URI made a host directory"
[ -e "$T/state1/hosts" ] && it_fail "a lone -c solo=URI made a per-host state directory"
it_unmount || it_fail "unmount the one-host mount"
it_log "ok: a lone -c NAME=URI has no host level"
h2_virsh define "$T/$R.xml" >/dev/null || it_fail "define $R on the second host"

mount_two() {
  "$CHAINFS" -f -c "local=$IT_URI" -o "connect=h2=$H2_URI,state_dir=$T/state,keepalive=1:2" \
    "$MNT" >>"$IT_LOG" 2>&1 &
  IT_PID=$!
  it_wait_until 10 "the mount" mountpoint -q "$MNT"
}
mount_two
it_assert_eq "h2 local" "$(it_ls "$MNT")" "/ lists the hosts"
it_wait_until 5 "$L in local/" test -d "$MNT/local/$L"
it_wait_until 5 "$R in h2/" test -d "$MNT/h2/$R"
[ -e "$MNT/h2/$L" ] && it_fail "$L shows on the second host"
[ -e "$MNT/local/$R" ] && it_fail "$R shows on this host"
it_assert_contains "$(cat "$MNT/h2/$R/vda/chain")" "$IMG/r.qcow2" "h2's chain"
it_assert_eq "chainfs:local,h2" "$(awk -v m="$MNT" '$2 == m { print $1 }' /proc/mounts)" "the mount's source"
[ -e "$MNT/h2/.chainfs" ] && it_fail "a host has a .chainfs"
cp "$MNT/.chainfs/metrics.prom" "$T/m.prom"
it_assert_contains "$(cat "$T/m.prom")" 'chainfs_libvirt_up{host="h2"} 1' "h2 up in the metrics"
it_assert_contains "$(cat "$T/m.prom")" 'chainfs_libvirt_up{host="local"} 1' "local up in the metrics"
if [ -x "$PROMCHECK" ]; then
  "$PROMCHECK" "$T/m.prom" || it_fail "promcheck refused the fleet's metrics.prom"
fi
[ -d "$T/state/hosts/h2" ] && [ -d "$T/state/hosts/local" ] || it_fail "no per-host state directories"
grep -q "host h2: " "$IT_LOG" || it_fail "no log line carries the host h2"
# a change routed to the second host: libvirt creates the overlay there
it_expect_errno OK mkdir "$MNT/h2/$R/vda/snapshots/s1"
it_assert_contains "$(h2_virsh domblklist "$R" | awk '$1 == "vda" { print $2 }')" ".s1." "$R's new overlay on the second host"
it_wait_until 5 "h2's chain shows the overlay" grep -q "$R.vda.s1.qcow2" "$MNT/h2/$R/vda/chain"
it_log "ok: two hosts in one mount"
it_unmount || it_fail "unmount"

# 3. the second host down at start
h2_kill
mount_two
it_assert_eq "h2 local" "$(it_ls "$MNT")" "/ lists both hosts with h2 down"
it_assert_eq "" "$(it_ls "$MNT/h2")" "h2/ is empty while it was never reached"
it_assert_contains "$(cat "$MNT/.chainfs/metrics.prom")" 'chainfs_libvirt_up{host="h2"} 0' "h2 down in the metrics"
it_wait_until 5 "$L in local/" test -d "$MNT/local/$L"
h2_restart
it_wait_until 15 "$R in h2/ once its libvirtd answers" test -d "$MNT/h2/$R"
it_assert_contains "$(cat "$MNT/.chainfs/metrics.prom")" 'chainfs_libvirt_up{host="h2"} 1' "h2 up in the metrics"
it_log "ok: a host down at start connects later"
# and goes away again: its changes ENOTCONN, its files stale, this
# host's changes work
h2_kill
it_expect_errno ENOTCONN mkdir "$MNT/h2/$R/vda/snapshots/s2"
it_wait_until 5 "h2's chain says stale" grep -q '^stale:' "$MNT/h2/$R/vda/chain"
grep -q '^stale:' "$MNT/local/$L/vda/chain" && it_fail "this host's chain is stale"
it_expect_errno OK mkdir "$MNT/local/$L/vda/snapshots/l1"
it_log "ok: only the host that went away is stale"
h2_restart
