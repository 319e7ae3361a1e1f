#!/usr/bin/env bash
# chains.sh — chains chainfs did not make are shown, named and sized as
# libvirt sees them. One domain, three disks, three ways to build a chain:
#   vda  `virsh snapshot-create-as --disk-only --atomic` (with metadata)
#   vdb  the same with --no-metadata: names come from the file names
#   vdc  built offline with `qemu-img create -b ... -F qcow2`, the top
#        defined as the disk's source; checked shut off and running
# Every disk's files are called base, s1, s2, s3 (in its own directory).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-chains"
mkdir "$T/a" "$T/b" "$T/c"
it_make_image "$T/a/base.qcow2" 64M
it_make_image "$T/b/base.qcow2" 64M
it_make_image "$T/c/base.qcow2" 64M
it_write_pattern "$T/c/base.qcow2" 0x10 0 1M
prev="$T/c/base.qcow2"
for i in 1 2 3; do
  it_make_image "$T/c/s$i.qcow2" 64M "$prev"
  it_write_pattern "$T/c/s$i.qcow2" "0x1$i" "${i}M" "${i}M"
  prev="$T/c/s$i.qcow2"
done
chain_c=("$T/c/s3.qcow2" "$T/c/s2.qcow2" "$T/c/s1.qcow2" "$T/c/base.qcow2")

it_mount
it_define "$D" "$T/a/base.qcow2" "$T/b/base.qcow2" "$T/c/s3.qcow2"
it_wait_dom "$D"
it_wait_until 2 "$D/vdc appears" test -d "$MNT/$D/vdc"

# --- shut off: vdc's qemu-img chain is already there ---------------------------
it_assert_eq "shutoff" "$(jq -r .state "$MNT/$D/vdc/chain.json")" "chain.json state of a shut-off domain"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vdc)" "shut off: vdc snapshots/ from file names"
it_assert_eq "" "$(it_snapshots "$D" vda)" "shut off: single-layer vda has no snapshots"
it_check_chain "$D" vdc "${chain_c[@]}"
it_assert_eq "filename" "$(jq -r '.layers[0].name_source' "$MNT/$D/vdc/chain.json")" "vdc names come from file names"
it_assert_eq "${chain_c[1]}" "$(sed -n 's/^frozen: *//p' "$MNT/$D/vdc/snapshots/s3/info")" "info of s3 names the layer it froze"

# --- running: build vda's and vdb's chains with virsh ----------------------------
it_start "$D"
it_wait_until 2 "$D shows as running" grep -q '^state: *running$' "$MNT/$D/vdc/chain"
for i in 1 2 3; do
  it_guest_write "$D" "0x2$i" "${i}M" 1M virtio-disk0
  it_virsh snapshot-create-as "$D" "s$i" --disk-only --atomic \
    --diskspec "vda,file=$T/a/s$i.qcow2" --diskspec vdb,snapshot=no --diskspec vdc,snapshot=no >/dev/null ||
    it_fail "virsh snapshot-create-as s$i"
  it_guest_write "$D" "0x3$i" "${i}M" 1M virtio-disk1
  it_virsh snapshot-create-as "$D" "nometa$i" --disk-only --atomic --no-metadata \
    --diskspec "vdb,file=$T/b/s$i.qcow2" --diskspec vda,snapshot=no --diskspec vdc,snapshot=no >/dev/null ||
    it_fail "virsh snapshot-create-as --no-metadata nometa$i"
done
it_assert_eq "s1 s2 s3" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "virsh snapshot-list (vdb's were --no-metadata)"

# libvirt sends no event for a snapshot another client took; chainfs
# re-reads every domain every few seconds (docs/DESIGN.md) to catch it.
vda_shows_three() { [ "$(it_snapshots "$D" vda)" = "s1 s2 s3" ]; }
vdb_shows_three() { [ "$(it_snapshots "$D" vdb)" = "s1 s2 s3" ]; }
it_poll 5 vda_shows_three ||
  it_fail "after 5 s vda shows '$(it_snapshots "$D" vda)', not the snapshots virsh took:"$'\n'"$(cat "$MNT/$D/vda/chain")"
it_poll 5 vdb_shows_three ||
  it_fail "after 5 s vdb shows '$(it_snapshots "$D" vdb)', not the --no-metadata snapshots:"$'\n'"$(cat "$MNT/$D/vdb/chain")"

it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "vda: snapshots/ from virsh snapshot-create-as"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vdb)" "vdb: snapshots/ from --no-metadata file names"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vdc)" "vdc: snapshots/ from qemu-img file names, running"
it_check_chain "$D" vda "$T/a/s3.qcow2" "$T/a/s2.qcow2" "$T/a/s1.qcow2" "$T/a/base.qcow2"
it_check_chain "$D" vdb "$T/b/s3.qcow2" "$T/b/s2.qcow2" "$T/b/s1.qcow2" "$T/b/base.qcow2"
it_check_chain "$D" vdc "${chain_c[@]}"
it_assert_eq "libvirt-metadata libvirt-metadata libvirt-metadata null" \
  "$(jq -r '[.layers[].name_source] | map(tostring) | join(" ")' "$MNT/$D/vda/chain.json")" "vda names come from libvirt metadata"
it_assert_eq "filename filename filename null" \
  "$(jq -r '[.layers[].name_source] | map(tostring) | join(" ")' "$MNT/$D/vdb/chain.json")" "vdb names come from file names"
it_assert_eq "running" "$(jq -r .state "$MNT/$D/vda/chain.json")" "chain.json state of a running domain"
for disk in vda vdb vdc; do
  it_assert_eq "$(jq -r '[.layers[] | select(.snapshot) | .snapshot] | sort | join(" ")' "$MNT/$D/$disk/chain.json")" \
    "$(it_snapshots "$D" "$disk")" "$disk: chain.json snapshot names = ls snapshots/"
  it_assert_eq "0 true" "$(jq -r '"\(.depth) \(.active)"' "$MNT/$D/$disk/snapshots/s3/info.json")" "$disk: s3 is the active layer"
  it_assert_eq "2 false" "$(jq -r '"\(.depth) \(.active)"' "$MNT/$D/$disk/snapshots/s1/info.json")" "$disk: s1 is two layers down"
done
