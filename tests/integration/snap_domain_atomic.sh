#!/usr/bin/env bash
# snap_domain_atomic.sh — issue 10, acceptance 2 (docs/design/issue10.md
# §2, §7): the real test guest writes a sequence number to vda and vdb in
# lockstep; each `mkdir MNT/DOM/snapshots/NAME` freezes the guest once
# through its agent (one FREEZE line more on the console) and takes both
# disks in one libvirt call: both frozen images hold the same seq, and the
# first one exactly the files reported before that FREEZE; info.json says
# quiesced true, scope domain, disks vda and vdb, the empty cdrom hdc left
# out and named; the name shows in both disks' snapshots/ and in libvirt's
# metadata with chainfs's description line. Control: two disk-level mkdirs
# apart do not give one instant. At the end every image is fsck-clean and
# every reported file intact.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

D=$IT_PREFIX-atomic
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
# a cdrom without media: a disk a snapshot must leave out (snapshot='no')
GUEST_EXTRA_DEVICES="    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>"
guest_define "$D" "$vda" "$vdb"
guest_start "$D"
it_mount
it_wait_dom "$D"
guest_wait_n "$D" 3

it_assert_eq "try" "$(sed -n 's/^quiesce: *//p' "$MNT/$D/ctl")" "<dom>/ctl: quiesce try (the default)"
it_assert_eq "10 s" "$(sed -n 's/^quiesce_timeout: *//p' "$MNT/$D/ctl")" "<dom>/ctl: quiesce_timeout 10 s"

# frozen_of NAME DISK — the layer below NAME's overlay in DISK (its frozen
# image), from <dom>/snapshots/NAME/info.json
frozen_of() {
  jq -r --arg d "$2" '.layers[] | select(.disk == $d) | .frozen' "$MNT/$D/snapshots/$1/info.json"
}

for k in 1 2 3 4 5; do
  name=d$k
  before=$(guest_freezes "$D")
  t0=$(it_now_ms)
  mkdir "$MNT/$D/snapshots/$name" || it_fail "mkdir $D/snapshots/$name"
  ms=$(($(it_now_ms) - t0))
  it_assert_eq $((before + 1)) "$(guest_freezes "$D")" "$name: the guest was frozen once (FREEZE $((before + 1)))"
  info=$MNT/$D/snapshots/$name/info.json
  it_assert_eq "true domain vda,vdb hdc:cdrom" \
    "$(jq -r '"\(.quiesced) \(.scope) \(.disks | join(",")) \(.excluded | map("\(.disk):\(.why)") | join(","))"' "$info")" \
    "$name: info.json: quiesced, domain scope, vda and vdb taken, hdc left out"
  it_assert_eq "ok ok" "$(jq -r '[.layers[].state] | join(" ")' "$info")" "$name: both disks' layers ok"
  it_assert_contains "$(it_snapshots "$D" vda)" "$name" "$name is in vda's snapshots/"
  it_assert_contains "$(it_snapshots "$D" vdb)" "$name" "$name is in vdb's snapshots/"
  it_assert_contains "$(it_ls "$MNT/$D/snapshots")" "$name" "$name is in the domain's snapshots/"
  it_assert_contains "$(sed -n 's/^quiesced: *//p' "$MNT/$D/vdb/snapshots/$name/info")" yes \
    "$name: vdb's info says quiesced: yes"
  fa=$(frozen_of "$name" vda)
  fb=$(frozen_of "$name" vdb)
  sa=$(guest_seq "$fa")
  sb=$(guest_seq "$fb")
  it_assert_eq "$sa" "$sb" "$name: both frozen images hold the same seq"
  it_log "ok: $name in ${ms} ms, quiesced, frozen seq vda $sa = vdb $sb"
  if [ "$k" = 1 ]; then
    first=$name
    first_n=$(guest_n_at_freeze "$D" $((before + 1)))
    first_fa=$fa
    first_fb=$fb
  fi
  guest_wait_more "$D" 2
done
it_assert_contains "$(it_virsh snapshot-dumpxml "$D" d1)" \
  "chainfs: scope=domain quiesced=yes filesystems=2 disks=vda,vdb excluded=hdc:cdrom" \
  "libvirt's metadata of d1 carries chainfs's description line"
it_assert_eq "$(printf 'd1\nd2\nd3\nd4\nd5')" "$(it_snapshot_names "$D" | sort)" "virsh snapshot-list: d1..d5"
# the quiesced pair holds exactly the files reported before its FREEZE
guest_check --upto "$first_n" --exact "$D" "$first_fa" "$first_fb"
it_assert_eq "$first_n $first_n" "${GUEST_SEQS[*]}" "$first: both frozen images hold seq $first_n"

# control: two disk-level mkdirs a moment apart are two instants
mkdir "$MNT/$D/vda/snapshots/c1" || it_fail "mkdir vda/snapshots/c1"
guest_wait_more "$D" 2
mkdir "$MNT/$D/vdb/snapshots/c2" || it_fail "mkdir vdb/snapshots/c2"
ca=$(guest_seq "$(jq -r .frozen "$MNT/$D/vda/snapshots/c1/info.json")")
cb=$(guest_seq "$(jq -r .frozen "$MNT/$D/vdb/snapshots/c2/info.json")")
[ "$ca" != "$cb" ] || it_fail "control: disk-level snapshots of vda and vdb apart hold the same seq $ca"
it_assert_eq "disk" "$(jq -r .scope "$MNT/$D/vda/snapshots/c1/info.json")" "c1: scope disk"
it_log "ok: control: disk-level c1 on vda at seq $ca, c2 on vdb at seq $cb"

guest_wait_more "$D" 2
guest_destroy "$D"
guest_check "$D" "$(it_domblk "$D" vda)" "$(it_domblk "$D" vdb)"
it_log "ok: final images clean, $(guest_last_n "$D") reported files intact, seqs ${GUEST_SEQS[*]}"
