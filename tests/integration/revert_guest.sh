#!/usr/bin/env bash
# revert_guest.sh — issue 10 acceptance, revert with the real test guest
# (docs/design/issue10.md §4, §7 `revert`): the guest writes numbered
# files on vda (the seq in lockstep on vda and vdb); snapshot s1 of both
# disks is taken through the mount (quiesced where an agent freeze
# happens); the guest writes on; the domain is shut off; `revert s1` in
# the domain's ctl. Then:
#   - the reverted images hold exactly the files of s1's frozen layers
#     (same names, same sha256; fsck clean; every file reported up to the
#     snapshot intact, none later with a quiesced snapshot);
#   - the guest boots on the reverted chain (READY, guest-ping), goes on
#     writing from s1's seq, and after `virsh destroy` every file it
#     reported is intact (guest_check).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

D=$IT_PREFIX-rguest
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$D" "$vda" "$vdb"
it_mount
it_wait_dom "$D"
guest_start "$D"
guest_wait_n "$D" 5

# s1 through the mount: <dom>/snapshots/s1 (chainfs freezes through the
# agent); where this build has no domain-level mkdir yet, libvirt's own
# quiesced atomic snapshot of both disks, overlays in overlay_dir.
freezes=$(guest_freezes "$D")
err=$(it_errno mkdir "$MNT/$D/snapshots/s1")
case "$err" in
  OK) it_log "mkdir $D/snapshots/s1" ;;
  EOPNOTSUPP | ENOTSUP)
    it_log "no domain-level mkdir in this build: virsh snapshot-create-as s1 --quiesce"
    it_virsh snapshot-create-as "$D" s1 --disk-only --atomic --quiesce \
      --diskspec "vda,file=$T/overlays/$D.vda.s1.qcow2" \
      --diskspec "vdb,file=$T/overlays/$D.vdb.s1.qcow2" >/dev/null ||
      it_fail "virsh snapshot-create-as s1"
    ;;
  *) it_fail "mkdir $D/snapshots/s1: $err" ;;
esac
frozen_vda=$(it_chain "$(it_domblk "$D" vda)" | sed -n 2p)
frozen_vdb=$(it_chain "$(it_domblk "$D" vdb)" | sed -n 2p)
exact=()
if [ "$(guest_freezes "$D")" -gt "$freezes" ]; then
  n=$(guest_n_at_freeze "$D" $((freezes + 1)))
  exact=(--exact)
  it_log "s1 is quiesced: the guest had reported files 1..$n"
else
  n=$(guest_seq "$frozen_vda")
  it_log "s1 is crash-consistent: seq $n in vda's frozen layer"
fi
guest_wait_more "$D" 4
after=$(guest_last_n "$D")
[ "$after" -gt "$n" ] || it_fail "the guest wrote nothing after s1"
guest_destroy "$D"

it_assert_eq OK "$(it_ctl_errno "$D" "" 'revert s1\n')" "revert s1 in $D/ctl"
new_vda=$(it_domblk "$D" vda)
new_vdb=$(it_domblk "$D" vdb)
it_assert_eq "$frozen_vda" "$(it_chain "$new_vda" | sed -n 2p)" "vda's new overlay backs onto s1's frozen layer"
it_assert_eq "$frozen_vdb" "$(it_chain "$new_vdb" | sed -n 2p)" "vdb's new overlay backs onto s1's frozen layer"

# files_of IMAGE — "f.<n> sha256" of every file the guest wrote in IMAGE
# (its chain, journal replayed on a scratch copy)
files_of() {
  local s out
  guest_scratch "$1"
  s=$GUEST_SCRATCH
  out=$(mktemp -d "$T/rdump.XXXXXX")
  debugfs -R "rdump / $out" "$s" >/dev/null 2>&1 || it_fail "debugfs rdump of $(it_short "$1")"
  (cd "$out" && find . -maxdepth 1 -name 'f.*' -printf '%f\0' | xargs -0 -r sha256sum) |
    awk '{ print $2, $1 }' | LC_ALL=C sort
  rm -rf "$s" "$out"
}
want=$(files_of "$frozen_vda")
have=$(files_of "$new_vda")
[ -n "$want" ] || it_fail "s1's frozen layer holds no file of the guest"
it_assert_eq "$want" "$have" "the reverted vda holds exactly the files of s1 ($(wc -l <<<"$want") files)"
it_assert_eq "$(guest_seq "$frozen_vdb")" "$(guest_seq "$new_vdb")" "the reverted vdb holds s1's seq"
guest_check --upto "$n" "${exact[@]}" "$D" "$new_vda" "$new_vdb"
it_log "ok: after the revert: files up to $n, none of the $((after - n)) written after s1"

# the guest boots on the reverted chain and goes on from there
guest_start "$D"
it_assert_contains "$(tr -d '\r' <"$(guest_console "$D")" | grep -a '^READY ' | tail -n 1)" "disks=vda,vdb" \
  "the reverted guest is READY"
guest_wait_more "$D" 3
guest_destroy "$D"
guest_check "$D" "$(it_domblk "$D" vda)" "$(it_domblk "$D" vdb)"
it_log "revert_guest: the guest booted on the reverted chain, every file it reported is intact"
