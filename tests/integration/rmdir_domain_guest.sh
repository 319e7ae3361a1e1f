#!/usr/bin/env bash
# rmdir_domain_guest.sh — issue 10 acceptance: domain-level rmdir with the
# real test guest (tests/guest, guest_lib.sh) writing to both of its disks
# the whole time. s1 and s2 are libvirt snapshots of vda and vdb together
# (mkdir <dom>/snapshots/NAME: one atomic snapshot, quiesced); then
#
#   1. rmdir <dom>/snapshots/s1 (intermediate: one commit per disk, no
#      pivot) while the guest writes: completes, both disks still on s2;
#   2. rmdir <dom>/snapshots/s2 (the active snapshot: one active commit
#      per disk, each held in ready until the other is, then both pivot)
#      while the guest writes: completes, both disks on their bases;
#
# the guest keeps writing after each (its I/O never stopped), and after
# `virsh destroy` each disk's image is fsck-clean, every file the guest
# reported is there with its checksum, and the lockstep seq of vda and vdb
# agree (guest_check).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

D=$IT_PREFIX-rmdomg
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$D" "$vda" "$vdb"
guest_start "$D"
it_mount
it_wait_dom "$D"
guest_wait_more "$D" 3

# snap NAME — the domain-level mkdir: one atomic snapshot of vda and vdb,
# quiesced through the guest's agent
snap() {
  mkdir "$MNT/$D/snapshots/$1" || it_fail "mkdir $D/snapshots/$1"
  it_log "snapshot $1 of vda and vdb taken at file $(guest_last_n "$D")"
}
dom_snaps_are() { [ "$(it_ls "$MNT/$D/snapshots")" = "$1" ]; }
wait_group() {
  local out
  out=$(timeout 300 cat "$MNT/$D/wait") || it_fail "cat $D/wait failed or timed out"
  printf '%s\n' "$out"
}

snap s1
guest_wait_more "$D" 5
snap s2
guest_wait_more "$D" 5
a2=$(it_domblk "$D" vda) b2=$(it_domblk "$D" vdb)
if [ "$a2" = "$vda" ] || [ "$b2" = "$vdb" ]; then
  it_fail "mkdir did not give both disks an overlay"
fi
a1=$(jq -r '.layers[1].file' "$MNT/$D/vda/chain.json")
b1=$(jq -r '.layers[1].file' "$MNT/$D/vdb/chain.json")
it_assert_eq "yes yes" "$(sed -n 's/^quiesced: *//p' "$MNT/$D/vda/snapshots/s2/info") $(sed -n 's/^quiesced: *//p' "$MNT/$D/vdb/snapshots/s2/info")" "s2 was quiesced on both disks"
it_wait_until 20 "<dom>/snapshots/ shows s1 s2" dom_snaps_are "s1 s2"

# --- 1. the intermediate snapshot ---------------------------------------------------
n0=$(guest_last_n "$D")
rmdir "$MNT/$D/snapshots/s1" || it_fail "rmdir $D/snapshots/s1"
out=$(wait_group)
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group of s1 completed"
grep -q '^  type: *commit$' <<<"$out" || it_fail "the members were not commits"
it_assert_eq "$a2" "$(it_domblk "$D" vda)" "vda still runs on s2"
it_assert_eq "$b2" "$(it_domblk "$D" vdb)" "vdb still runs on s2"
it_check_chain "$D" vda "$a2" "$vda"
it_check_chain "$D" vdb "$b2" "$vdb"
guest_wait_more "$D" 3
it_log "ok: the guest wrote files $n0..$(guest_last_n "$D") across the merge of s1"

# --- 2. the active snapshot -----------------------------------------------------------
n0=$(guest_last_n "$D")
rmdir "$MNT/$D/snapshots/s2" || it_fail "rmdir $D/snapshots/s2"
out=$(wait_group)
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group of s2 completed"
grep -q '^members: *vda done, vdb done$' <<<"$out" || it_fail "not both disks done"
grep -q '^  type: *active-commit$' <<<"$out" || it_fail "the members were not active commits"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda pivoted to its base"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
for f in "$a1" "$b1" "$a2" "$b2"; do
  [ ! -e "$f" ] || it_fail "merged overlay $f still exists"
done
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"
it_assert_eq "" "$(it_ls "$MNT/$D/snapshots")" "<dom>/snapshots/ is empty"
it_check_chain "$D" vda "$vda"
it_check_chain "$D" vdb "$vdb"
guest_wait_more "$D" 3
it_log "ok: the guest wrote files $n0..$(guest_last_n "$D") across the merge and pivot of s2"

guest_destroy "$D"
guest_check "$D" "$vda" "$vdb"
it_log "guest_check: $(guest_last_n "$D") reported files intact, seqs ${GUEST_SEQS[*]}"
