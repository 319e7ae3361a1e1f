#!/usr/bin/env bash
# hosts_kill9.sh — kill -9 of a two-host chainfs (issue 12, second
# acceptance item) while a merge runs on each host: this machine's
# libvirtd ("local") and the second host of host2_lib.sh over qemu+tcp
# ("remote"; its images on a tmpfs only it sees). On each, a running
# 64 MiB no-OS domain on a three-layer chain (a pattern per layer) has its
# middle layer merged (rmdir: a live commit held at 256 KiB/s by -o
# bandwidth from its first byte). chainfs is killed with SIGKILL (its own
# pid) with both merges copying, the guests write on, and chainfs is
# started again on the same state_dir: each host's journal
# (state/hosts/NAME/journal) brings its merge back, both complete
# (`cat wait`), the merged files are gone on their hosts, both journals
# are empty, libvirt has no block job left, and every pattern — per
# layer, and the guests' writes before, during and after the outage —
# reads back through the new chains.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/../integration/host2_lib.sh"
fault_init

D="$IT_PREFIX-hkr"  # on the second host
DL="$IT_PREFIX-hkl" # on this one
R="$T/r"            # the second host's images (a tmpfs there)
L="$FAULT_IMAGES"
RD="remote/$D"
LD="local/$DL"
BW=262144
mkdir -p "$R"
chmod 0755 "$R"

on_h2() {
  # shellcheck disable=SC2034 # read by the lib.sh helper called
  local IT_URI=$H2_URI IT_IMG_RUN=(h2_run)
  "$@"
}

# chain3 DOM DIR — base, DOM.vda.s1 (8 MiB: half a minute at 256 KiB/s),
# DOM.vda.s2 in DIR, a pattern in each (run with on_h2 for the second host).
chain3() {
  local dom=$1 dir=$2
  it_make_image "$dir/base.qcow2" 64M
  it_write_pattern "$dir/base.qcow2" 0x11 0 4M
  it_make_image "$dir/$dom.vda.s1.qcow2" 64M "$dir/base.qcow2"
  it_write_pattern "$dir/$dom.vda.s1.qcow2" 0x22 2M 8M
  it_make_image "$dir/$dom.vda.s2.qcow2" 64M "$dir/$dom.vda.s1.qcow2"
  it_write_pattern "$dir/$dom.vda.s2.qcow2" 0x33 20M 1M
}

h2_start
h2_run mount -t tmpfs -o size=128m,mode=0755 cfsh2img "$R" || it_fail "tmpfs on \$T/r in the second host's namespace"
on_h2 chain3 "$D" "$R"
# a storage pool over $R: chainfs deletes a merged file on the second host
# through it (without one the file stays, listed as leftover)
cat >"$T/pool.xml" <<XML
<pool type='dir'><name>$IT_PREFIX-hkpool</name><target><path>$R</path></target></pool>
XML
h2_virsh pool-create "$T/pool.xml" >/dev/null || it_fail "pool-create on the second host"
on_h2 it_domain_xml "$D" "$R/$D.vda.s2.qcow2" >"$T/$D.xml"
h2_virsh define "$T/$D.xml" >/dev/null || it_fail "define $D on the second host"
h2_virsh start "$D" >/dev/null || it_fail "start $D on the second host"
chain3 "$DL" "$L"
it_define "$DL" "$L/$DL.vda.s2.qcow2"
it_start "$DL"

h2_mount_fleet "bandwidth=$BW"
it_wait_dom "$RD"
it_wait_dom "$LD"
for p in "$RD" "$LD"; do
  it_assert_eq "s1 s2" "$(it_snapshots "$p" vda)" "$p: snapshots/ shows s1 s2"
  rmdir "$MNT/$p/vda/snapshots/s1" || it_fail "rmdir $p/vda/snapshots/s1"
done
it_assert_eq "$BW" "$(on_h2 it_libvirt_bandwidth "$D" vda)" "remote: the merge started limited to $BW bytes/s"
it_assert_eq "$BW" "$(it_libvirt_bandwidth "$DL" vda)" "local: the merge started limited to $BW bytes/s"
for p in "$RD" "$LD"; do
  it_assert_eq "commit running" "$(jq -r '"\(.type) \(.state)"' "$MNT/$p/vda/job.json")" "$p: a middle commit, copying"
done
on_h2 it_guest_write "$D" 0x44 40M 1M
it_guest_write "$DL" 0x44 40M 1M

fault_kill_daemon
on_h2 it_guest_write "$D" 0x55 42M 1M
it_guest_write "$DL" 0x55 42M 1M
[ -n "$(IT_URI=$H2_URI fault_libvirt_job "$D" vda)" ] || it_fail "remote: the block job ended while no chainfs ran (not slowed enough?)"
[ -n "$(fault_libvirt_job "$DL" vda)" ] || it_fail "local: the block job ended while no chainfs ran (not slowed enough?)"
for h in local remote; do
  [ -s "$T/state/hosts/$h/journal" ] || it_fail "no journal entry for the $h host's merge in state/hosts/$h/journal"
done
it_log "ok: both merges go on in QEMU; both hosts' journals hold them"

fault_clear_stale
echo "---- chainfs started again ($(date +%T.%3N)) ----" >>"$IT_LOG"
h2_mount_fleet "bandwidth=$BW"
it_wait_dom "$RD"
it_wait_dom "$LD"
for dom in "$D" "$DL"; do
  it_wait_until 15 "recovery follows $dom's merge again" \
    fault_log_has "recovery: $dom/vda: merge of s1 still running; following it"
  it_log "ok: $(grep -E "recovery: $dom/vda" "$IT_LOG" | tail -n 1)"
done
for p in "$RD" "$LD"; do
  it_assert_eq "running" "$(fault_job_state "$p" vda)" "$p: after the restart job shows the merge running"
  it_assert_eq "s2" "$(it_snapshots "$p" vda)" "$p: s1 stays out of snapshots/ after the restart"
done
on_h2 it_guest_write "$D" 0x66 44M 1M
it_guest_write "$DL" 0x66 44M 1M
for p in "$RD" "$LD"; do
  fault_unthrottle "$p" vda
done
for p in "$RD" "$LD"; do
  out=$(it_wait_job "$p" vda 120)
  it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "$p: the merge completed after the restart"
done

# each host: no pivot, s1 gone, s2 on the base, no job, journal empty
it_assert_eq "$R/$D.vda.s2.qcow2" "$(on_h2 it_domblk "$D" vda)" "remote: s2 is still the active layer"
it_assert_eq "$L/$DL.vda.s2.qcow2" "$(it_domblk "$DL" vda)" "local: s2 is still the active layer"
h2_run test ! -e "$R/$D.vda.s1.qcow2" || it_fail "remote: the merged layer is still on the second host"
[ ! -e "$L/$DL.vda.s1.qcow2" ] || it_fail "local: the merged layer is still there"
it_log "ok: both merged layers' files are deleted on their hosts"
it_assert_eq "$(printf '%s\n' "$R/$D.vda.s2.qcow2" "$R/base.qcow2")" "$(on_h2 it_chain "$R/$D.vda.s2.qcow2")" \
  "remote: s2 backs onto the base (qemu-img on the second host)"
it_assert_eq "$(printf '%s\n' "$L/$DL.vda.s2.qcow2" "$L/base.qcow2")" "$(it_chain "$L/$DL.vda.s2.qcow2")" \
  "local: s2 backs onto the base"
it_assert_eq "$(on_h2 it_chain "$R/$D.vda.s2.qcow2")" "$(jq -r '.layers[].file' "$MNT/$RD/vda/chain.json")" "remote: chain.json is the new chain"
it_assert_eq "$(it_chain "$L/$DL.vda.s2.qcow2")" "$(jq -r '.layers[].file' "$MNT/$LD/vda/chain.json")" "local: chain.json is the new chain"
it_assert_eq "" "$(IT_URI=$H2_URI fault_libvirt_job "$D" vda)" "remote: libvirt has no block job left"
it_assert_eq "" "$(fault_libvirt_job "$DL" vda)" "local: libvirt has no block job left"
h2_fleet_journals_empty
h2_fleet_logs_named "$D" "$DL"

h2_virsh destroy "$D" >/dev/null || it_fail "destroy $D"
it_destroy "$DL"
for run in on_h2 ""; do
  if [ -n "$run" ]; then top="$R/$D.vda.s2.qcow2" base="$R/base.qcow2"; else top="$L/$DL.vda.s2.qcow2" base="$L/base.qcow2"; fi
  $run it_check_patterns "$top" "0x11 0 2M" "0x22 2M 8M" "0x00 12M 1M" "0x33 20M 1M" "0x44 40M 1M" "0x55 42M 1M" "0x66 44M 1M"
  $run it_check_patterns "$base" "0x22 2M 8M"
done
