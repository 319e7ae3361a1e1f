#!/usr/bin/env bash
# session_root.sh — chainfs as root on a qemu:///session daemon of another
# user, on this machine (issue 6 item 14). The daemon is
# private_libvirtd.sh's with PD_SHARE_MNT=1: a session libvirtd of a
# throwaway user, in this mount namespace, so its files are local. Its
# QEMU runs as that user and libvirt relabels nothing in session mode: an
# overlay written by root would be unusable to it. chainfs must judge the
# files local but the daemon another user's, and leave the creation of
# the overlay to libvirt: mkdir works on the running domain, the overlay
# belongs to the daemon's user, the guest writes into it, rmdir merges it
# and deletes it, and the data reads back.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/private_libvirtd.sh
. "$(dirname "$0")/private_libvirtd.sh"
it_init

PD_SHARE_MNT=1
# shellcheck disable=SC2119 # no private directories
pd_start
SIMG="$T/simg"
D="$IT_PREFIX-sess"
mkdir "$SIMG"
chown "$PD_USER:$PD_USER" "$SIMG"
chmod 0755 "$SIMG"
pd_in it_make_image "$SIMG/base.qcow2" 64M
pd_in it_write_pattern "$SIMG/base.qcow2" 0x11 0 1M
pd_in it_define "$D" "$SIMG/base.qcow2"
it_start "$D"
IT_OVERLAY_DIR="" # beside the active image, in the user's directory
it_mount
it_wait_dom "$D"
grep -q "image files: local (the libvirt daemon (pid $PD_PID) shares this mount namespace, as another user)" "$IT_LOG" ||
  it_fail "chainfs did not judge the session daemon local and another user's: $(grep 'image files' "$IT_LOG")"
it_log "ok: chainfs judged the files local, the daemon another user's"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1 (session daemon of $PD_USER)"
top=$(it_domblk "$D" vda)
it_assert_eq "$SIMG/$D.vda.s1.qcow2" "$top" "domblklist: the new overlay is active"
it_assert_eq "$PD_USER" "$(stat -c %U "$top")" "the overlay belongs to the daemon's user"
it_guest_write "$D" 0x22 1M 1M
it_check_pattern "$top" 0x22 1M 1M
it_check_pattern "$top" 0x11 0 1M

rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1"
it_wait_job "$D" vda >/dev/null
it_assert_eq "active-commit completed null" "$(jq -r '"\(.type) \(.state) \(.leftover)"' "$MNT/$D/vda/job.json")" \
  "job.json: active commit completed, nothing left over"
it_assert_eq "$SIMG/base.qcow2" "$(it_domblk "$D" vda)" "pivoted to the base"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists (local files: chainfs deletes it)"
it_log "ok: the merged overlay was deleted"
it_check_pattern "$SIMG/base.qcow2" 0x11 0 1M
it_check_pattern "$SIMG/base.qcow2" 0x22 1M 1M
