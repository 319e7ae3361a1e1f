#!/usr/bin/env bash
# libvirtd_restart.sh — libvirtd stops and starts again while an active
# merge is copying (held at 1 MiB/s). While libvirtd is away chainfs keeps
# serving the last known state marked stale (`stale: yes` in chain and job,
# "stale": true in their JSON) and refuses changes with ENOTCONN; it
# reconnects on its own once libvirtd is back (no remount, no signal), and
# the merge — which QEMU carried on meanwhile — completes: pivot, overlay
# deleted, journal empty.
#
# Only a libvirtd the test suite started itself is restarted:
# scripts/libvirtd.sh records the one it starts in
# /run/chainfs-test-libvirtd.pid. Otherwise (an administrator's libvirtd)
# the test skips, unless CHAINFS_TEST_RESTART_LIBVIRTD=1 says that
# restarting it is fine. It also skips while another test run's domains
# (cfsit-*) exist. Running domains survive a libvirtd restart.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

if LVPID=$(libvirtd_ours); then
  it_log "libvirtd (pid $LVPID) was started by the test suite ($LIBVIRTD_MARKER): restarting it is ours to do"
elif [ "${CHAINFS_TEST_RESTART_LIBVIRTD:-0}" = 1 ]; then
  LVPID=$(cat "$LIBVIRTD_PIDFILE" 2>/dev/null) || LVPID=""
  if [ -z "$LVPID" ] || [ "$(cat "/proc/$LVPID/comm" 2>/dev/null)" != libvirtd ]; then
    it_skip "CHAINFS_TEST_RESTART_LIBVIRTD=1, but $LIBVIRTD_PIDFILE names no running libvirtd"
  fi
  it_log "libvirtd (pid $LVPID) was not started by the test suite; restarting it anyway (CHAINFS_TEST_RESTART_LIBVIRTD=1)"
else
  it_skip "the running libvirtd was not started by the test suite (no $LIBVIRTD_MARKER naming it); set CHAINFS_TEST_RESTART_LIBVIRTD=1 to let this test restart it"
fi

# A libvirtd restart is felt by every client: do not pull it from under
# another test run (meson runs this suite serially; by hand, runs overlap).
others=$(it_virsh list --all --name | grep -E '^cfsit-[0-9]+-' | grep -v "^$IT_PREFIX-" || true)
if [ -n "$others" ]; then
  it_skip "another test run's domains exist ($(tr '\n' ' ' <<<"$others")); not restarting libvirtd under it"
fi

# Whatever happens below, libvirtd answers again at exit: the clean-up and
# every later test need it. (Single quotes: evaluated at exit.)
# shellcheck disable=SC2016
fault_on_exit 'libvirtd_answers || libvirtd_start || echo "[$IT_NAME] could not start libvirtd again" >&2'

D="$IT_PREFIX-lvrst"
base="$FAULT_IMAGES/base.qcow2"
top="$FAULT_IMAGES/$D.vda.s1.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_make_image "$top" 256M "$base"
# 128 MiB: after the mirror's first 32 MiB burst, over a minute and a half
# at 1 MiB/s — longer than the outage with its reconnection back-off.
it_write_pattern "$top" 0x22 2M 128M
it_define "$D" "$top"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

it_rmdir_throttled "$D" vda s1
it_guest_write "$D" 0x33 140M 1M
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the merge is copying"

# Stop exactly that libvirtd, by its pid, and wait for it to be gone.
kill -TERM "$LVPID" || it_fail "kill -TERM libvirtd $LVPID"
it_wait_until 30 "libvirtd (pid $LVPID) exits" test ! -e "/proc/$LVPID"
it_log "libvirtd (pid $LVPID) stopped"

stale_everywhere() {
  grep -q '^stale: *yes' "$MNT/$D/vda/chain" &&
    grep -q '^stale: *yes' "$MNT/$D/vda/job" &&
    [ "$(jq -r .stale "$MNT/$D/vda/chain.json")" = true ] &&
    [ "$(jq -r .stale "$MNT/$D/vda/job.json")" = true ]
}
it_wait_until 10 "chain, job and their JSON say stale" stale_everywhere
it_log "ok: chain, chain.json, job, job.json all say stale"
it_log "chain while libvirtd is away:"$'\n'"$(cat "$MNT/$D/vda/chain")"
# The last known state is still served in full.
it_assert_eq "$top $base" "$(jq -r '.layers[].file' "$MNT/$D/vda/chain.json" | tr '\n' ' ' | sed 's/ $//')" \
  "the stale chain is the last known one"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the stale job is the merge, running"
it_assert_contains "$(it_ls "$MNT")" "$D" "ls MNT still lists the domain"
it_expect_errno ENOTCONN mkdir "$MNT/$D/vda/snapshots/during-outage"
it_assert_eq "" "$(it_snapshots "$D" vda)" "the refused mkdir left snapshots/ alone"

libvirtd_start || it_fail "starting libvirtd again"
it_log "libvirtd started again (pid $(cat "$LIBVIRTD_PIDFILE"))"
not_stale() {
  [ "$(jq -r .stale "$MNT/$D/vda/chain.json")" = false ] &&
    [ "$(jq -r .stale "$MNT/$D/vda/job.json")" = false ] &&
    ! grep -q '^stale:' "$MNT/$D/vda/chain"
}
it_wait_until 60 "chainfs reconnects on its own" not_stale
it_log "ok: chainfs reconnected: $(grep -E 'connection is back' "$IT_LOG" | tail -n 1)"
it_assert_eq "running" "$(it_state "$D")" "the domain survived the libvirtd restart"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the merge is still followed after the reconnection"
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "libvirt lost the block job"
it_guest_write "$D" 0x44 150M 1M
fault_unthrottle "$D" vda

out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed after the reconnection"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "pivoted: the base is the active image"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: the merged overlay file is deleted"
# Changes work again.
mkdir "$MNT/$D/vda/snapshots/after" || it_fail "mkdir after the reconnection"
it_guest_write "$D" 0x55 160M 1M
rmdir "$MNT/$D/vda/snapshots/after" || it_fail "rmdir after the reconnection"
out=$(it_wait_job "$D" vda 60)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "mkdir + rmdir work after the reconnection"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$base" \
  "0x11 0 2M" "0x22 2M 128M" "0x33 140M 1M" "0x44 150M 1M" "0x55 160M 1M"
