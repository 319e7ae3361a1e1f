#!/usr/bin/env bash
# outside_snapshot.sh — mkdir and rmdir act on the chain as libvirt has it
# now, not on chainfs's cached copy (issue 6, item 5). libvirt sends no
# event for an external snapshot taken outside chainfs, and chainfs
# re-reads every 3 s; within that window, mkdir used to put the new
# snapshot on the stale chain and rmdir to merge it into the layer below
# the outside snapshot, merging that one too.
#
# ROUNDS (20) times in a row: `virsh snapshot-create-as` (external,
# disk-only) then at once mkdir snapshots/xN, read its info, rmdir it and
# `cat wait`. Every time, xN's info names the outside snapshot's overlay
# as its frozen layer, and the merge takes xN alone: the outside snapshot,
# its overlay file and its libvirt metadata survive, and the guest's data
# reads back.
#
# Then ROUNDS2 (5) times the other order: mkdir snapshots/yN, an outside
# snapshot qN on top of it, rmdir yN at once. yN is no longer the active
# layer: it is merged as a middle layer (no pivot), qN stays active and
# now backs onto the layer yN froze.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

ROUNDS=${ROUNDS:-20}
D="$IT_PREFIX-outside"
base="$T/base.qcow2"
mkdir -p "$T/out"
chmod 0755 "$T/out"
it_make_image "$base" 64M
it_write_pattern "$base" 0x10 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
# the first re-read after the mount is over: from here on, the tree
# lags libvirt by up to the 3 s re-read period
sleep 0.5

good_info=0 good_merge=0
outs=()
for ((i = 1; i <= ROUNDS; i++)); do
  o="$T/out/o$i.qcow2"
  it_virsh snapshot-create-as "$D" "o$i" --disk-only --atomic \
    --diskspec "vda,file=$o" >/dev/null || it_fail "virsh snapshot-create-as o$i"
  mkdir "$MNT/$D/vda/snapshots/x$i" || it_fail "round $i: mkdir x$i"
  frozen=$(sed -n 's/^frozen: *//p' "$MNT/$D/vda/snapshots/x$i/info")
  rmdir "$MNT/$D/vda/snapshots/x$i" || it_fail "round $i: rmdir x$i"
  out=$(it_wait_job "$D" vda)
  outs+=("$o")
  if [ "$frozen" = "$o" ]; then
    good_info=$((good_info + 1))
  else
    it_log "round $i: x$i's info names $(it_short "$frozen") as frozen, not $(it_short "$o")"
  fi
  state=$(sed -n 's/^state: *//p' <<<"$out")
  snap=$(sed -n 's/^snapshot: *//p' <<<"$out")
  names=$(it_snapshot_names "$D" | tr '\n' ' ')
  active=$(it_domblk "$D" vda)
  ok=1
  if [ "$state" != completed ] || [ "$snap" != "x$i" ]; then ok=0; it_log "round $i: job: $out"; fi
  [ "$active" = "$o" ] || { ok=0; it_log "round $i: active layer $(it_short "$active"), not $(it_short "$o")"; }
  for ((k = 1; k <= i; k++)); do
    [ -e "$T/out/o$k.qcow2" ] || { ok=0; it_log "round $i: o$k's overlay was deleted"; }
    case " $names" in *" o$k "*) ;; *) ok=0; it_log "round $i: snapshot o$k lost its metadata ($names)" ;; esac
  done
  case " $names" in *" x$i "*) ok=0; it_log "round $i: x$i's metadata is left" ;; esac
  [ "$ok" = 1 ] && good_merge=$((good_merge + 1))
done
it_log "info named the outside overlay $good_info/$ROUNDS times; rmdir merged x alone $good_merge/$ROUNDS times"
it_assert_eq "$ROUNDS" "$good_info" "x's info named the outside snapshot's overlay every time"
it_assert_eq "$ROUNDS" "$good_merge" "every rmdir merged x alone"

# the whole chain, active first: every outside overlay, then the base
expect=("$base")
for o in "${outs[@]}"; do expect=("$o" "${expect[@]}"); done
it_assert_eq "$(printf '%s\n' "${expect[@]}")" "$(it_chain "$(it_domblk "$D" vda)")" \
  "qemu-img: the chain is every outside overlay on the base"
it_guest_write "$D" 0x22 1M 1M
it_check_pattern "$(it_domblk "$D" vda)" 0x22 1M 1M
it_check_pattern "$(it_domblk "$D" vda)" 0x10 0 1M

ROUNDS2=${ROUNDS2:-5}
good=0
for ((i = 1; i <= ROUNDS2; i++)); do
  below=$(it_domblk "$D" vda)
  mkdir "$MNT/$D/vda/snapshots/y$i" || it_fail "round $i: mkdir y$i"
  y=$(it_domblk "$D" vda)
  it_guest_write "$D" "0x4$i" "$((i + 4))M" 1M
  q="$T/out/q$i.qcow2"
  it_virsh snapshot-create-as "$D" "q$i" --disk-only --atomic \
    --diskspec "vda,file=$q" >/dev/null || it_fail "virsh snapshot-create-as q$i"
  rmdir "$MNT/$D/vda/snapshots/y$i" || it_fail "round $i: rmdir y$i right after an outside snapshot on top of it"
  out=$(it_wait_job "$D" vda)
  ok=1
  job=$(jq -r '"\(.type) \(.state) \(.snapshot)"' "$MNT/$D/vda/job.json")
  [ "$job" = "commit completed y$i" ] || { ok=0; it_log "round $i: job $job: $out"; }
  [ "$(it_domblk "$D" vda)" = "$q" ] || { ok=0; it_log "round $i: active layer $(it_domblk "$D" vda), not $q"; }
  [ "$(it_chain "$q" | sed -n 2p)" = "$below" ] || { ok=0; it_log "round $i: q$i backs onto $(it_chain "$q" | sed -n 2p), not $below"; }
  [ ! -e "$y" ] || { ok=0; it_log "round $i: y$i's overlay is left"; }
  case " $(it_snapshot_names "$D" | tr '\n' ' ')" in *" q$i "*) ;; *) ok=0; it_log "round $i: q$i lost its metadata" ;; esac
  it_check_pattern "$q" "0x4$i" "$((i + 4))M" 1M
  [ "$ok" = 1 ] && good=$((good + 1))
done
it_log "rmdir after an outside snapshot on top merged y alone $good/$ROUNDS2 times"
it_assert_eq "$ROUNDS2" "$good" "every y merged as a middle layer, the outside snapshot on top kept"
it_check_pattern "$(it_domblk "$D" vda)" 0x22 1M 1M
it_check_pattern "$(it_domblk "$D" vda)" 0x10 0 1M
