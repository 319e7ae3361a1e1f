#!/usr/bin/env bash
# cdrom.sh — removable drives, as the errno table says: a cdrom with
# media is a disk of the tree, read-only (mkdir: EROFS, with the reason
# in the log and in `job`); an empty cdrom has no source, so it is not
# in the tree (mkdir under it: ENOENT) until media is inserted; ejecting
# the media takes it out again. Shut off and running.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-cd"
it_make_image "$T/vda.qcow2" 64M
qemu-img create -q -f raw "$T/media.iso" 4M || it_fail "qemu-img create media.iso"
qemu-img create -q -f raw "$T/media2.iso" 4M || it_fail "qemu-img create media2.iso"
it_domain_xml "$D" "$T/vda.qcow2" | sed "s|  </devices>|    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>\n    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$T/media.iso'/><target dev='hdd' bus='ide'/><readonly/></disk>\n  </devices>|" >"$T/$D.xml"
IT_DOMAINS+=("$D")
it_virsh define "$T/$D.xml" >/dev/null || it_fail "virsh define $D"
it_mount
it_wait_dom "$D"

check_drives() {
  local what=$1 out
  it_assert_eq "ctl hdd job job.json snapshots vda wait" "$(it_ls "$MNT/$D")" "$what: the empty cdrom hdc is not listed, hdd with media is"
  it_expect_errno ENOENT stat "$MNT/$D/hdc"
  it_expect_errno ENOENT mkdir "$MNT/$D/hdc/snapshots/x"
  out=$(cat "$MNT/$D/hdd/chain")
  it_assert_contains "$out" "$T/media.iso" "$what: hdd's chain shows its media"
  it_assert_eq "1" "$(jq -r '.layers | length' "$MNT/$D/hdd/chain.json")" "$what: one layer"
  it_expect_errno EROFS mkdir "$MNT/$D/hdd/snapshots/x"
  it_assert_contains "$(sed -n 's/^error: *//p' "$MNT/$D/hdd/job")" "read-only" "$what: job says why"
  it_assert_eq "" "$(it_snapshots "$D" hdd)" "$what: no snapshot of the cdrom"
  it_assert_eq "$T/media.iso" "$(it_domblk "$D" hdd)" "$what: hdd still has its media"
}

check_drives "shut off"
it_start "$D"
it_wait_until 5 "the running domain's state shows" grep -q "^state: *running" "$MNT/$D/vda/chain"
check_drives "running"

# media inserted into the empty drive: it shows; ejected: it goes
it_virsh change-media "$D" hdc "$T/media2.iso" --insert --live >/dev/null ||
  it_fail "virsh change-media --insert"
it_wait_until 10 "hdc appears once it has media" test -e "$MNT/$D/hdc/chain"
it_assert_contains "$(cat "$MNT/$D/hdc/chain")" "$T/media2.iso" "hdc's chain shows the inserted media"
it_expect_errno EROFS mkdir "$MNT/$D/hdc/snapshots/x"
it_virsh change-media "$D" hdc --eject --live >/dev/null || it_fail "virsh change-media --eject"
it_wait_until 10 "hdc goes once ejected" bash -c "! test -e '$MNT/$D/hdc'"
it_assert_eq "ctl hdd job job.json snapshots vda wait" "$(it_ls "$MNT/$D")" "the ejected drive is not listed"

grep -q "mkdir $D/hdd/snapshots/x refused (Read-only file system): the disk is read-only" "$IT_LOG" ||
  it_fail "no log line for the refused mkdir on the cdrom"
it_log "ok: the log says why the cdrom was refused"
