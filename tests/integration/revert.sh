#!/usr/bin/env bash
# revert.sh — `revert NAME [force]` in <dom>/ctl and <dom>/<disk>/ctl
# (issue 10 §4) on a real libvirtd:
#   1. a two-disk chain made through the mount while the domain runs
#      (snapshots s1, s2 of both disks; the guest writes a pattern per
#      disk before each and after the last);
#   2. running: revert is EBUSY at domain and disk level, nothing changes;
#   3. shut off: revert s2 (the newest) at domain level: both disks run
#      on a new overlay on s2's frozen layer; qemu-io reads the patterns
#      of s2's time, the later writes are gone; s2's old overlays deleted;
#      s2 stays (snapshots/, virsh snapshot-list, snapshot-current);
#   4. revert s1 without force: ENOTEMPTY, nothing changed; with force:
#      s1's patterns, s2 gone from the mount and from virsh snapshot-list
#      (and --tree), s1 current;
#   5. disk level: a snapshot of vda alone, reverted in vda's ctl: vdb
#      untouched;
#   6. no file left outside a chain; the domain starts on the reverted
#      chain and the guest reads s1's patterns;
#   7. a `virsh start` loop racing a revert (started 0 to 1 s after it):
#      the revert is EBUSY and the domain runs on the old chain, or it is
#      done and the domain runs on the new one; never on a deleted file
#      (the start failing on the lock while the revert runs is what
#      tests/fault/revert_kill9.sh checks, deterministically).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-revert"
vda="$T/vda.qcow2"
vdb="$T/vdb.qcow2"
it_make_image "$vda" 64M
it_make_image "$vdb" 64M
it_write_pattern "$vda" 0x11 0 1M
it_write_pattern "$vdb" 0x21 0 1M
it_define "$D" "$vda" "$vdb"
it_start "$D"
it_mount
it_wait_dom "$D"

# snap NAME — one snapshot of both disks, through the mount: mkdir of
# <dom>/snapshots/NAME. Where this build has no domain-level mkdir yet
# (EOPNOTSUPP), the same snapshot is taken with virsh (one atomic
# snapshot of both disks, overlays in the mount's overlay_dir): the
# revert is what this test is about.
snap() {
  local name=$1 err
  err=$(it_errno mkdir "$MNT/$D/snapshots/$name")
  case "$err" in
    OK) it_log "mkdir $D/snapshots/$name" ;;
    EOPNOTSUPP | ENOTSUP)
      it_log "no domain-level mkdir in this build: snapshot $name of vda and vdb with virsh"
      it_virsh snapshot-create-as "$D" "$name" --disk-only --atomic \
        --diskspec "vda,file=$T/overlays/$D.vda.$name.qcow2" \
        --diskspec "vdb,file=$T/overlays/$D.vdb.$name.qcow2" >/dev/null ||
        it_fail "virsh snapshot-create-as $name"
      ;;
    *) it_fail "mkdir $D/snapshots/$name: $err" ;;
  esac
}
snaps_are() { [ "$(it_snapshots "$D" "$1")" = "$2" ]; }
# revert_errno WHERE COMMAND — WHERE "" (the domain's ctl) or a disk
revert_errno() { it_ctl_errno "$D" "$1" "$2\n"; }
# active DISK — the definition's source of DISK
active() { it_domblk "$D" "$1"; }
# check_both PA PB — vda reads PA and vdb PB at 0+1M (the active image
# of the definition, through its chain)
check_both() {
  it_check_pattern "$(active vda)" "$1" 0 1M
  it_check_pattern "$(active vdb)" "$2" 0 1M
}
# tree_of — snapshot-list --tree, one "NAME PARENT" line per snapshot
# ("-" for a root), in the tree's order
tree_of() {
  local n
  for n in $(it_virsh snapshot-list "$D" --tree | sed 's/^[|+ -]*//;/^$/d'); do
    printf '%s %s\n' "$n" "$(it_virsh snapshot-parent "$D" "$n" 2>/dev/null | sed '/^$/d' || true)"
  done | sed 's/ $/ -/'
}
current() { it_virsh snapshot-current "$D" --name | sed '/^$/d'; }

# --- 1. the chain ------------------------------------------------------------------
it_guest_write "$D" 0x12 0 1M virtio-disk0
it_guest_write "$D" 0x22 0 1M virtio-disk1
snap s1
it_guest_write "$D" 0x13 0 1M virtio-disk0
it_guest_write "$D" 0x23 0 1M virtio-disk1
snap s2
it_guest_write "$D" 0x14 0 1M virtio-disk0
it_guest_write "$D" 0x24 0 1M virtio-disk1
it_wait_until 20 "vda/snapshots/ shows s1 s2" snaps_are vda "s1 s2"
it_wait_until 20 "vdb/snapshots/ shows s1 s2" snaps_are vdb "s1 s2"
s2_vda=$(active vda)
s2_vdb=$(active vdb)
s1_vda=$(it_chain "$s2_vda" | sed -n 2p)
s1_vdb=$(it_chain "$s2_vdb" | sed -n 2p)

# --- 2. running: EBUSY, nothing changes ----------------------------------------------
it_assert_eq EBUSY "$(revert_errno "" "revert s2")" "revert of a running domain"
it_assert_eq EBUSY "$(revert_errno vda "revert s2")" "revert of a running domain's disk"
it_assert_eq EBUSY "$(revert_errno "" "revert s1 force")" "revert force of a running domain"
it_assert_eq "$s2_vda" "$(active vda)" "vda unchanged after the refusals"
it_assert_eq "$s2_vdb" "$(active vdb)" "vdb unchanged after the refusals"
grep -q 'revert s2 refused (Device or resource busy): the domain is running' "$IT_LOG" ||
  it_fail "no log line for the EBUSY refusal"

it_destroy "$D"
it_wait_until 20 "$D shut off" test "$(it_state "$D")" = "shut off"
check_both 0x14 0x24

# --- 3. revert the newest snapshot, domain level -------------------------------------
it_assert_eq OK "$(revert_errno "" "revert s2")" "revert s2 in $D/ctl"
new_vda=$(active vda)
new_vdb=$(active vdb)
[ "$new_vda" != "$s2_vda" ] || it_fail "vda still runs on s2's old overlay"
[ "$new_vdb" != "$s2_vdb" ] || it_fail "vdb still runs on s2's old overlay"
it_assert_eq "$s1_vda" "$(it_chain "$new_vda" | sed -n 2p)" "vda's new overlay backs onto s2's frozen layer"
it_assert_eq "$s1_vdb" "$(it_chain "$new_vdb" | sed -n 2p)" "vdb's new overlay backs onto s2's frozen layer"
check_both 0x13 0x23
[ ! -e "$s2_vda" ] || it_fail "s2's old vda overlay (the writes since s2) was not deleted"
[ ! -e "$s2_vdb" ] || it_fail "s2's old vdb overlay was not deleted"
it_wait_until 20 "vda/snapshots/ still shows s1 s2" snaps_are vda "s1 s2"
it_wait_until 20 "vdb/snapshots/ still shows s1 s2" snaps_are vdb "s1 s2"
it_assert_eq "s1"$'\n'"s2" "$(it_snapshot_names "$D")" "virsh snapshot-list after revert s2"
it_assert_eq "s2" "$(current)" "s2 is libvirt's current snapshot"
it_assert_eq "s1 -"$'\n'"s2 s1" "$(tree_of)" "snapshot-list --tree: s1, then s2 below it"
disks=$(it_virsh snapshot-dumpxml "$D" s2 | python3 -c '
import sys, xml.etree.ElementTree as ET
for d in ET.parse(sys.stdin).getroot().find("disks"):
    s = d.find("source")
    print(d.get("name"), d.get("snapshot"), s.get("file") if s is not None else "-")')
it_assert_contains "$disks" "vda external $new_vda" "s2's metadata names vda's new overlay"
it_assert_contains "$disks" "vdb external $new_vdb" "s2's metadata names vdb's new overlay"
it_assert_eq "" "$(cat "$T/state/journal" 2>/dev/null)" "no journal entry left"

# writes after the revert (the domain shut off: qemu-io)
it_write_pattern "$new_vda" 0x15 0 1M

# --- 4. an older snapshot: ENOTEMPTY, then force -------------------------------------
it_assert_eq ENOTEMPTY "$(revert_errno "" "revert s1")" "revert s1 without force"
it_assert_eq ENOTEMPTY "$(revert_errno vdb "revert s1")" "revert s1 on vdb without force"
grep -q 'revert s1 refused (Directory not empty): s1 is not the newest snapshot: later ones exist' "$IT_LOG" ||
  it_fail "the ENOTEMPTY refusal does not name the later snapshots in the log"
it_assert_eq "$new_vda" "$(active vda)" "vda unchanged after ENOTEMPTY"
it_assert_eq "$new_vdb" "$(active vdb)" "vdb unchanged after ENOTEMPTY"
check_both 0x15 0x23
it_assert_eq "s1"$'\n'"s2" "$(it_snapshot_names "$D")" "snapshot-list unchanged after ENOTEMPTY"

it_assert_eq OK "$(revert_errno "" "revert s1 force")" "revert s1 force"
f_vda=$(active vda)
f_vdb=$(active vdb)
it_assert_eq "$vda" "$(it_chain "$f_vda" | sed -n 2p)" "vda's new overlay backs onto the base"
it_assert_eq "$vdb" "$(it_chain "$f_vdb" | sed -n 2p)" "vdb's new overlay backs onto the base"
check_both 0x12 0x22
for f in "$new_vda" "$new_vdb" "$s1_vda" "$s1_vdb"; do
  [ ! -e "$f" ] || it_fail "$(it_short "$f") was discarded by revert s1 force but still exists"
done
it_wait_until 20 "vda/snapshots/ shows s1 only" snaps_are vda "s1"
it_wait_until 20 "vdb/snapshots/ shows s1 only" snaps_are vdb "s1"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "virsh snapshot-list: s2 is gone"
it_assert_eq "s1" "$(current)" "s1 is libvirt's current snapshot"
it_assert_eq "s1 -" "$(tree_of)" "snapshot-list --tree: s1 alone"

# --- 5. disk level -------------------------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/d1" || it_fail "mkdir vda/snapshots/d1 (shut off)"
it_write_pattern "$(active vda)" 0x16 0 1M
it_assert_eq OK "$(revert_errno vda "revert d1")" "revert d1 in vda/ctl"
check_both 0x12 0x22
it_assert_eq "$f_vdb" "$(active vdb)" "vdb untouched by vda's revert"
it_wait_until 20 "vda/snapshots/ shows d1 s1" snaps_are vda "d1 s1"
it_assert_eq ENOENT "$(revert_errno vdb "revert d1")" "vdb has no snapshot d1"
it_assert_eq ENOENT "$(revert_errno "" "revert nope")" "no snapshot nope"

# --- 6. no file outside a chain; the domain starts on the reverted chain ------------
in_chain=$( { it_chain "$(active vda)"; it_chain "$(active vdb)"; } | sort)
for f in "$T"/overlays/* "$T"/*.qcow2; do
  [ -e "$f" ] || continue
  grep -qxF "$f" <<<"$in_chain" || it_fail "$(it_short "$f") is in no chain of $D"
done
it_log "ok: every image file is in a chain of $D"
it_start "$D"
if [ -r "/var/log/libvirt/qemu/$D.log" ]; then
  it_guest_check_pattern "$D" 0x12 0 1M virtio-disk0
  it_guest_check_pattern "$D" 0x22 0 1M virtio-disk1
fi
it_assert_eq EBUSY "$(revert_errno vda "revert d1")" "revert once the domain runs again"

# --- 7. a `virsh start` racing the revert (design §4.4, §9.3) ---------------------
# The start either comes first (the revert is EBUSY, the domain runs on
# the old chain), or fails on chainfs's lock while the revert runs, or
# comes after the define (the domain runs on the reverted chain): never
# a domain running on files the revert deleted.
round=0
for delay in 0 0.2 0.4 0.6 0.8 1.0; do
  round=$((round + 1))
  it_destroy "$D"
  it_wait_until 20 "$D shut off" test "$(it_state "$D")" = "shut off"
  before=$(active vda)
  : >"$T/starts"
  (sleep "$delay"
   for ((i = 0; i < 300; i++)); do
     if out=$(virsh -q -c "$IT_URI" start "$D" 2>&1); then break; fi
     printf '%s\n' "$out" >>"$T/starts"
     sleep 0.01
   done) &
  starter=$!
  r=$(revert_errno vda "revert d1")
  wait "$starter"
  now=$(active vda)
  case "$r" in
    OK) [ "$now" != "$before" ] || it_fail "round $round: revert OK but vda still on $before" ;;
    EBUSY) it_assert_eq "$before" "$now" "round $round: refused revert changed nothing" ;;
    *) it_fail "round $round: revert d1 racing virsh start: $r" ;;
  esac
  it_wait_until 20 "$D started" test "$(it_state "$D")" = running
  live=$(it_virsh domblklist "$D" | awk '$1 == "vda" { print $2 }')
  [ -e "$live" ] || it_fail "round $round: the domain runs on $live, which is gone"
  it_assert_eq "$now" "$live" "round $round: the running domain uses the definition's vda ($r)"
  it_check_pattern "$live" 0x12 0 1M
  grep -E 'ctl [^ ]*: revert d1 ' "$IT_LOG" | tail -n 1 | sed 's/^/    chainfs: /' >&2
  it_log "ok: round $round (start after ${delay}s): revert $r, $(grep -c 'write" lock' "$T/starts" || true) start(s) refused on the lock, the domain runs on $(it_short "$live")"
done
it_log "revert: all checks passed"
