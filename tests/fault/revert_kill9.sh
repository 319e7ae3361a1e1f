#!/usr/bin/env bash
# revert_kill9.sh — kill -9 the daemon at each phase of a revert (issue 10
# §4.3), then start it again: the domain boots on a whole chain, the old
# one or the reverted one, never half of each.
#
# For each stop point (CHAINFS_FAULT=revert:POINT makes the daemon log a
# line and stop itself there; this script then kills it with SIGKILL):
#   prepare    the new overlays made and journaled, the definition untouched
#   switching  journaled "switching", the define not made yet
#   defined    the define made, "switched" not journaled yet
#   switched   journaled "switched", the metadata not changed yet
#   cleanup    journaled "cleanup", the discarded files not deleted yet
# a domain with vda and vdb (patterns 0x12 at s1, 0x13 at s2, 0x14 after)
# shut off gets `revert s1 force` in its ctl. While the daemon is stopped
# the byte-201 locks hold: before the define a `virsh start` fails
# ("Failed to get "write" lock"); after it the start boots the reverted
# chain (the new overlays are not locked: the chain they start is whole).
# After the kill and the restart: recovery rolled back (prepare,
# switching: both disks read 0x14, the new overlays are gone) or forward
# (defined, switched, cleanup: both read 0x12, s2 is gone from libvirt,
# the discarded files are deleted); the domain runs; no orphan file, no
# journal entry, the metadata names only files in the chains.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

# shellcheck disable=SC2206 # a list of words on purpose
POINTS=(${REVERT_POINTS:-prepare switching defined switched cleanup})

# snap DOM NAME — one snapshot of vda and vdb through the mount (mkdir
# <dom>/snapshots/NAME); with virsh where this build has no domain-level
# mkdir yet (EOPNOTSUPP): the revert is what this test is about.
snap() {
  local dom=$1 name=$2 err
  err=$(it_errno mkdir "$MNT/$dom/snapshots/$name")
  case "$err" in
    OK) ;;
    EOPNOTSUPP | ENOTSUP)
      it_virsh snapshot-create-as "$dom" "$name" --disk-only --atomic \
        --diskspec "vda,file=$T/overlays/$dom.vda.$name.qcow2" \
        --diskspec "vdb,file=$T/overlays/$dom.vdb.$name.qcow2" >/dev/null ||
        it_fail "virsh snapshot-create-as $name"
      ;;
    *) it_fail "mkdir $dom/snapshots/$name: $err" ;;
  esac
}

# stopped PID — the process is stopped (state T in /proc/PID/stat).
stopped() { [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = T ]; }

run_point() {
  local point=$1 D="$IT_PREFIX-rk-$1" a b out echo_pid reverted
  a="$FAULT_IMAGES/$point.vda.qcow2"
  b="$FAULT_IMAGES/$point.vdb.qcow2"
  it_make_image "$a" 64M
  it_make_image "$b" 64M
  it_write_pattern "$a" 0x11 0 1M
  it_write_pattern "$b" 0x21 0 1M
  it_define "$D" "$a" "$b"
  it_start "$D"
  export CHAINFS_FAULT="revert:$point"
  it_mount
  unset CHAINFS_FAULT
  it_wait_dom "$D"
  it_guest_write "$D" 0x12 0 1M virtio-disk0
  it_guest_write "$D" 0x12 0 1M virtio-disk1
  snap "$D" s1
  it_guest_write "$D" 0x13 0 1M virtio-disk0
  it_guest_write "$D" 0x13 0 1M virtio-disk1
  snap "$D" s2
  it_guest_write "$D" 0x14 0 1M virtio-disk0
  it_guest_write "$D" 0x14 0 1M virtio-disk1
  it_destroy "$D"
  it_wait_until 20 "$D shut off" test "$(it_state "$D")" = "shut off"
  local old_vda old_vdb
  old_vda=$(it_domblk "$D" vda)
  old_vdb=$(it_domblk "$D" vdb)

  # the revert, stopped at POINT (the write blocks until the daemon dies)
  (echo "revert s1 force" >"$MNT/$D/ctl") 2>/dev/null &
  echo_pid=$!
  it_wait_until 60 "the daemon stops at revert:$point" stopped "$IT_PID"
  fault_log_has "fault stop point revert:$point reached" ||
    it_fail "stopped, but not at revert:$point"
  case "$point" in
    prepare | switching)
      out=$(it_virsh start "$D" 2>&1) && it_fail "virsh start during the revert ($point) succeeded: the locks did not hold"
      it_assert_contains "$out" 'Failed to get "write" lock' "virsh start during the revert ($point) fails on the lock"
      it_assert_eq "shut off" "$(it_state "$D")" "the domain stays shut off"
      reverted=no
      ;;
    *)
      # after the define: the definition names the new overlays, which
      # are not locked; a start boots the reverted chain, whole
      it_start "$D"
      reverted=yes
      ;;
  esac
  fault_kill_daemon
  wait "$echo_pid" 2>/dev/null || true
  fault_remount
  it_wait_dom "$D"
  it_wait_until 30 "recovery closes the revert's journal entry" test ! -s "$T/state/journal"
  fault_log_has "recovery: $D: revert s1 (undone|finished)" ||
    it_fail "no recovery line for the revert of $D"
  [ "$(it_state "$D")" = running ] || it_start "$D"

  local pa=0x14 va vb
  [ "$reverted" = no ] || pa=0x12
  va=$(it_domblk "$D" vda)
  vb=$(it_domblk "$D" vdb)
  it_check_pattern "$va" "$pa" 0 1M
  it_check_pattern "$vb" "$pa" 0 1M
  if [ "$reverted" = no ]; then
    it_assert_eq "$old_vda" "$va" "vda runs on its old chain ($point)"
    it_assert_eq "$old_vdb" "$vb" "vdb runs on its old chain ($point)"
    it_assert_eq "s1"$'\n'"s2" "$(it_snapshot_names "$D")" "s1 and s2 kept ($point)"
  else
    [ ! -e "$old_vda" ] || it_fail "vda's discarded overlay is still there ($point)"
    it_assert_eq "s1" "$(it_snapshot_names "$D")" "s2 forgotten ($point)"
    it_assert_eq "s1" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "s1 current ($point)"
  fi
  if [ -r "/var/log/libvirt/qemu/$D.log" ]; then
    it_guest_check_pattern "$D" "$pa" 0 1M virtio-disk0
    it_guest_check_pattern "$D" "$pa" 0 1M virtio-disk1
  fi
  fault_check_invariants "$D" vda "$D" vdb
  it_log "ok: kill -9 at revert:$point: the domain runs on the $([ "$reverted" = yes ] && echo reverted || echo old) chain"
  it_virsh destroy "$D" >/dev/null 2>&1 || true
  it_unmount || it_fail "unmount after revert:$point"
  # the next point's files are checked alone
  it_virsh undefine --snapshots-metadata "$D" >/dev/null || it_fail "undefine $D"
  rm -f "$FAULT_IMAGES"/* "$T"/overlays/*
}

for p in "${POINTS[@]}"; do
  it_log "---- kill -9 at revert:$p ----"
  run_point "$p"
done
it_log "revert_kill9: every stop point recovered to a whole chain"
