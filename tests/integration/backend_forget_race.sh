#!/usr/bin/env bash
# backend_forget_race.sh — snapshot_forget is atomic per snapshot (design
# docs/design/issue10.md §0.10, §3.6): two disks of one two-disk snapshot
# forgotten at the same time (what a job group's pivot does) must both
# take effect. The first forget makes its disk snapshot='no', the second
# finds no disk naming a layer any more and deletes the metadata; a
# forget that read the snapshot's XML before the other's redefine would
# put the other disk back as external, and the snapshot would stay.
# Through tests/tools/beop (forget-together: one thread per disk, let go
# at once) against the real libvirtd; no chainfs mount; metadata only.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
BEOP=${BEOP:-$IT_ROOT/build/tests/beop}
[ -x "$BEOP" ] || it_fail "no beop tool at $BEOP (build it: ninja -C build)"

D="$IT_PREFIX-forget"
beop() { "$BEOP" "$IT_URI" "$@"; }
ROUNDS=${ROUNDS:-6}

it_make_image "$T/a.qcow2" 16M
it_make_image "$T/b.qcow2" 16M
it_define "$D" "$T/a.qcow2" "$T/b.qcow2"

lost=0
for i in $(seq 1 "$ROUNDS"); do
  out=$(beop multi "$D" "R$i" - "vda=$T/a.R$i.qcow2" "vdb=$T/b.R$i.qcow2" 2>&1) ||
    it_fail "two-disk snapshot R$i: $out"
  out=$(beop forget-together "$D" "R$i" vda vdb 2>&1) || it_fail "forget R$i: $out"
  if it_snapshot_names "$D" | grep -qx "R$i"; then
    lost=$((lost + 1))
    it_log "round $i: R$i still there after both forgets: $(it_virsh snapshot-dumpxml "$D" "R$i" |
      sed -n '/<disks>/,/<\/disks>/p' | tr -d '\n' | tr -s ' ')"
    it_virsh snapshot-delete "$D" "R$i" --metadata >/dev/null || it_fail "clean-up of R$i"
  fi
  # the chains are untouched: metadata only
  it_assert_eq "$T/a.R$i.qcow2" "$(it_domblk "$D" vda)" "round $i: vda's source unchanged by the forgets"
done
it_assert_eq "0" "$lost" "no forget lost in $ROUNDS rounds of two concurrent forgets"
it_assert_eq "" "$(it_snapshot_names "$D")" "no snapshot metadata left"
it_log "PASS"
