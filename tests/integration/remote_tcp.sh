#!/usr/bin/env bash
# remote_tcp.sh — chainfs on a remote host over qemu+tcp (issue 12): the
# second libvirt host of host2_lib.sh (a system libvirtd in its own mount
# and network namespace, reached over a veth) is the mount's only host.
# Its images are in $R, a tmpfs that only the second host sees: on this
# machine $R is another directory holding decoys at the same names
# (the base, every overlay name chainfs will pick). Then:
#   1. mkdir s1, s2 on the running remote domain (64 MiB, no OS, a qcow2
#      virtio disk; a guest-like qemu-io pattern written through the disk
#      device after each): libvirt creates each overlay on its host —
#      domblklist there names it, it exists there, and this machine's $R
#      and $T/overlays are listed and checksummed unchanged (the issue's
#      "chainfs writes the overlay locally" would show here);
#   2. rmdir s2, the active layer, with guest writes while the merge
#      copies (limited by -o bandwidth); `cat wait`: completed, pivoted,
#      the overlay deleted through the second host's storage pool;
#   3. mkdir s3, rmdir s1 (a middle layer, a commit held back by the
#      bandwidth limit from its first byte), then h2_kill: the tree says
#      stale, mkdir and rmdir get ENOTCONN; h2_restart: chainfs reconnects
#      by itself, the merge that QEMU carried on completes (`cat wait`);
# every pattern reads back on the second host.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/host2_lib.sh"
it_init

D="$IT_PREFIX-rtcp"
R="$T/r" # the second host's images (a tmpfs there, decoys here)
POOL="$IT_PREFIX-rpool"
mkdir -p "$R"
chmod 0755 "$R"

# on_h2 FUNCTION ARGS... — a lib.sh helper against the second host: its
# virsh (IT_URI) and its files (IT_IMG_RUN).
on_h2() {
  # shellcheck disable=SC2034 # read by the lib.sh helper called
  local IT_URI=$H2_URI IT_IMG_RUN=(h2_run)
  "$@"
}

# the decoys: every name the second host will use, other contents here
for f in "$R/base.qcow2" "$R/$D.vda.s1.qcow2" "$R/$D.vda.s2.qcow2" "$R/$D.vda.s3.qcow2" \
  "$R/$D.vda.s4.qcow2"; do
  printf 'decoy %s: not the image the second host means\n' "${f##*/}" >"$f"
done
local_sums() {
  find "$R" "$T/overlays" -printf '%y %m %u %s %T@ %p\n' | sort
  find "$R" "$T/overlays" -type f -exec sha256sum {} + | sort
}
SUMS_BEFORE=$(local_sums)
local_unchanged() {
  it_assert_eq "$SUMS_BEFORE" "$(local_sums)" \
    "after $1: nothing in this machine's \$T/r and \$T/overlays was created, changed or deleted"
}

h2_start
h2_run mount -t tmpfs -o size=192m,mode=0755 cfsh2img "$R" || it_fail "tmpfs on \$T/r in the second host's namespace"
on_h2 it_make_image "$R/base.qcow2" 64M
on_h2 it_write_pattern "$R/base.qcow2" 0x11 0 1M
cat >"$T/pool.xml" <<EOF
<pool type='dir'><name>$POOL</name><target><path>$R</path></target></pool>
EOF
h2_virsh pool-create "$T/pool.xml" >/dev/null || it_fail "pool-create $POOL on the second host"
on_h2 it_domain_xml "$D" "$R/base.qcow2" >"$T/$D.xml"
grep -q "type=.qcow2." "$T/$D.xml" || it_fail "the domain XML does not say qcow2: $(cat "$T/$D.xml")"
h2_virsh define "$T/$D.xml" >/dev/null || it_fail "define $D on the second host"
h2_virsh start "$D" >/dev/null || it_fail "start $D on the second host"

# 256 KiB/s: a middle commit takes 2 s per 512 KiB chunk; an active commit
# still copies QEMU's first mirror burst (up to 32 MiB) at once.
BW=262144
IT_URI=$H2_URI          # the mount's one host; it_cleanup's domains are h2_stop's
IT_OVERLAY_DIR=""       # overlays beside the active image, on the second host
T0=$(it_now_ms)
it_mount_slow "$BW"
it_log "mounted in $(($(it_now_ms) - T0)) ms"
it_wait_dom "$D"
grep -q "image files: not on this machine" "$IT_LOG" ||
  it_fail "chainfs did not judge $H2_URI remote: $(grep 'image files' "$IT_LOG")"
it_log "ok: chainfs judged $H2_URI remote: $(grep -o 'image files: .*' "$IT_LOG" | head -n 1)"

# --- 1. mkdir: libvirt makes the overlays on its host -----------------------------
declare -A file
for s in s1 s2; do
  mkdir "$MNT/$D/vda/snapshots/$s" || it_fail "mkdir vda/snapshots/$s on the remote domain"
  file[$s]=$(on_h2 it_domblk "$D" vda)
  it_assert_eq "$R/$D.vda.$s.qcow2" "${file[$s]}" "domblklist on the second host: the overlay of $s beside the active image"
  h2_run test -s "${file[$s]}" || it_fail "the overlay of $s is not on the second host"
  local_unchanged "mkdir $s"
  on_h2 it_guest_write "$D" "0x2${s#s}" "${s#s}M" 1M
done
it_assert_eq "s1 s2" "$(it_snapshots "$D" vda)" "ls snapshots/"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$R/base.qcow2")" \
  "$(jq -r '.layers[].file' "$MNT/$D/vda/chain.json")" "chain.json: the second host's paths"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$R/base.qcow2")" "$(on_h2 it_chain "${file[s2]}")" \
  "qemu-img on the second host: the same chain"

# --- 2. rmdir of the active layer, guest writes during the merge -------------------
# QEMU's mirror may copy its first burst (tens of MiB) at full speed
# whatever the limit: held in ready by `pivot manual`, the merge is still
# on when the writes after the rmdir land, and when the one after it
# reached ready does.
on_h2 it_guest_write "$D" 0x2f 16M 4M
it_ctl "$D" vda "pivot manual" || it_fail "echo 'pivot manual' > ctl"
on_h2 it_rmdir_throttled "$D" vda s2
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "s2 left snapshots/ as soon as rmdir returned"
it_assert_contains "$(cat "$MNT/$D/vda/job")" "active-commit" "job shows an active commit"
on_h2 it_guest_write "$D" 0x33 60M 1M
on_h2 it_guest_write "$D" 0x44 0 4K
it_assert_contains "running ready" "$(it_job_field "$D" vda state)" "the merge is still on after the guest writes"
it_unthrottle "$D" vda
it_wait_until 30 "the active commit reaches ready" sh -c "[ \"\$(jq -r .state '$MNT/$D/vda/job.json')\" = ready ]"
on_h2 it_guest_write "$D" 0x35 24M 1M
it_assert_eq "ready" "$(it_job_field "$D" vda state)" "the merge waits in ready after the guest writes"
it_ctl "$D" vda "pivot" || it_fail "echo pivot > ctl"
it_ctl "$D" vda "pivot auto" || it_fail "echo 'pivot auto' > ctl"
out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the active commit completed"
it_assert_eq "${file[s1]}" "$(on_h2 it_domblk "$D" vda)" "pivoted to s1's overlay"
it_assert_eq "null" "$(jq -r .leftover "$MNT/$D/vda/job.json")" "no leftover: deleted through the pool"
h2_run test ! -e "${file[s2]}" || it_fail "s2's overlay is still on the second host"
it_assert_eq "s1" "$(on_h2 it_snapshot_names "$D")" "the second host's snapshot-list: s1"
local_unchanged "rmdir s2"

# --- 3. a merge left running while the second libvirtd goes away ------------------
mkdir "$MNT/$D/vda/snapshots/s3" || it_fail "mkdir vda/snapshots/s3"
file[s3]=$(on_h2 it_domblk "$D" vda)
it_assert_eq "$R/$D.vda.s3.qcow2" "${file[s3]}" "the overlay of s3 on the second host"
on_h2 it_guest_write "$D" 0x53 3M 1M
# s1 holds 8 MiB now: a commit at 256 KiB/s, half a minute unless let go
on_h2 it_rmdir_throttled "$D" vda s1
it_assert_eq "commit" "$(it_job_field "$D" vda type)" "a middle commit (no pivot)"

h2_kill
stale_everywhere() {
  grep -q '^stale: *yes' "$MNT/$D/vda/chain" &&
    grep -q '^stale: *yes' "$MNT/$D/vda/job" &&
    [ "$(jq -r .stale "$MNT/$D/vda/chain.json")" = true ] &&
    [ "$(jq -r .stale "$MNT/$D/vda/job.json")" = true ]
}
it_wait_until 10 "chain, job and their JSON say stale" stale_everywhere
it_log "ok: the remote host's chain, chain.json, job, job.json say stale"
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the stale job is the merge, running"
it_expect_errno ENOTCONN mkdir "$MNT/$D/vda/snapshots/s4"
it_expect_errno ENOTCONN rmdir "$MNT/$D/vda/snapshots/s3"
it_assert_eq "s3" "$(it_snapshots "$D" vda)" "the refused changes left snapshots/ alone"
local_unchanged "the refused mkdir and rmdir"

h2_restart
not_stale() {
  [ "$(jq -r .stale "$MNT/$D/vda/chain.json")" = false ] &&
    [ "$(jq -r .stale "$MNT/$D/vda/job.json")" = false ] &&
    ! grep -q '^stale:' "$MNT/$D/vda/chain"
}
T0=$(it_now_ms)
it_wait_until 30 "chainfs reconnects to the second host by itself" not_stale
it_log "ok: reconnected $(($(it_now_ms) - T0)) ms after the restart"
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the merge is still followed after the reconnection"
on_h2 it_guest_write "$D" 0x66 62M 1M
it_unthrottle "$D" vda
out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge left running completed after the restart"
it_assert_eq "${file[s3]}" "$(on_h2 it_domblk "$D" vda)" "no pivot: s3 is still the active layer"
it_assert_eq "$(printf '%s\n' "${file[s3]}" "$R/base.qcow2")" "$(on_h2 it_chain "${file[s3]}")" \
  "s3 backs onto the base now (qemu-img on the second host)"
h2_run test ! -e "${file[s1]}" || it_fail "s1's overlay is still on the second host"
it_assert_eq "s3" "$(it_snapshots "$D" vda)" "ls snapshots/: s3"
local_unchanged "the merge of s1"

h2_virsh destroy "$D" >/dev/null || it_fail "destroy $D"
on_h2 it_check_pattern "${file[s3]}" 0x44 0 4K
on_h2 it_check_pattern "${file[s3]}" 0x11 4K 1020K
on_h2 it_check_pattern "${file[s3]}" 0x21 1M 1M
on_h2 it_check_pattern "${file[s3]}" 0x22 2M 1M
on_h2 it_check_pattern "${file[s3]}" 0x53 3M 1M
on_h2 it_check_pattern "${file[s3]}" 0x2f 16M 4M
on_h2 it_check_pattern "${file[s3]}" 0x35 24M 1M
on_h2 it_check_pattern "${file[s3]}" 0x33 60M 1M
on_h2 it_check_pattern "${file[s3]}" 0x66 62M 1M
on_h2 it_check_pattern "$R/base.qcow2" 0x2f 16M 4M
