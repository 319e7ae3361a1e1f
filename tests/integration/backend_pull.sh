#!/usr/bin/env bash
# backend_pull.sh — the libvirt backend's forward-merge ops against the
# real libvirtd (design docs/design/issue8.md §2.1, §2.4; the same steps
# as probe 1+2 of scripts/probe/issue8.sh, made by the backend through
# tests/tools/beop): pull_start's refusals, a pull of s1 into the active
# s2 keeping base, then snapshot_drop of S2 and snapshot_retarget of S1
# onto s2's file, after which libvirt's own `snapshot-delete S1` works.
# No chainfs mount; no image file is written or deleted by the ops.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
BEOP=${BEOP:-$IT_ROOT/build/tests/beop}
[ -x "$BEOP" ] || it_fail "no beop tool at $BEOP (build it: ninja -C build)"

D="$IT_PREFIX-bepull"
base="$T/base.qcow2"
s1="$T/s1.qcow2"
s2="$T/s2.qcow2"

beop() { "$BEOP" "$IT_URI" "$@"; }
# beop_rc OP... — the rc line beop printed
beop_rc() { beop "$@" 2>&1 | sed -n 's/^rc=//p'; }

# snap NAME OVERLAY — a disk-only external snapshot as chainfs makes it
snap() {
  local top
  top=$(it_domblk "$D" vda)
  qemu-img create -q -f qcow2 -b "$top" -F qcow2 "$2" 64M || it_fail "overlay $2"
  cat >"$T/snap-$1.xml" <<XML
<domainsnapshot><name>$1</name><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='$2'/></disk></disks></domainsnapshot>
XML
  it_virsh snapshot-create "$D" --xmlfile "$T/snap-$1.xml" --disk-only --atomic \
    --reuse-external >/dev/null || it_fail "snapshot $1"
}

# chain — the live chain of vda from the live XML, top first, one a line
chain() {
  it_virsh dumpxml "$D" | python3 -c '
import sys, xml.etree.ElementTree as ET
for disk in ET.fromstring(sys.stdin.read()).iter("disk"):
    if disk.find("target").get("dev") != "vda":
        continue
    n = disk
    while n is not None and n.find("source") is not None:
        print(n.find("source").get("file"))
        n = n.find("backingStore")'
}

# index_of FILE — libvirt's index of FILE's layer in the live XML of vda
# (a backing layer carries it on <backingStore>, the top on <source>)
index_of() {
  it_virsh dumpxml "$D" | python3 -c '
import sys, xml.etree.ElementTree as ET
for disk in ET.fromstring(sys.stdin.read()).iter("disk"):
    if disk.find("target").get("dev") != "vda":
        continue
    s = disk.find("source")
    if s.get("file") == sys.argv[1]:
        print(s.get("index") or "")
    for b in disk.iter("backingStore"):
        s = b.find("source")
        if s is not None and s.get("file") == sys.argv[1]:
            print(b.get("index") or "")' "$1"
}

# disks_source NAME — what snapshot NAME's <disks> names for vda
disks_source() {
  it_virsh snapshot-dumpxml "$D" "$1" |
    sed -n "/<disks>/,/<\/disks>/s/.*<source file='\([^']*\)'.*/\1/p"
}
domain_source() {
  it_virsh snapshot-dumpxml "$D" "$1" |
    sed -n "/<domain type/,/<\/domain>/s/.*<source file='\([^']*\)'.*/\1/p" | head -1
}

it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 4M
it_define "$D" "$base"
it_start "$D"
snap S1 "$s1"
it_guest_write "$D" 0x22 4M 8M
snap S2 "$s2"
it_guest_write "$D" 0x33 12M 4M
it_assert_eq "$s2 $s1 $base" "$(chain | tr '\n' ' ' | sed 's/ $//')" "chain before the pull"

# refusals, and nothing started by them
it_assert_eq "-22" "$(beop_rc pull "$D" vda "$s1" "$base" 0)" "pull with a TOP that is not the active layer: EINVAL"
s1_index=$(index_of "$s1")
[ -n "$s1_index" ] || it_fail "no index for s1.qcow2 in the live XML"
it_assert_eq "-22" "$(beop_rc pull "$D" vda "vda[$s1_index]" "$base" 0)" "pull with TOP vda[$s1_index] (s1, not active): EINVAL"
it_assert_eq "-2" "$(beop_rc pull "$D" vda "$s2" "$T/nothere.qcow2" 0)" "pull onto a base not in the chain: ENOENT"
it_assert_eq "-2" "$(beop_rc pull "$D" vda "$s2" "$s2" 0)" "pull onto the active layer itself: ENOENT"
it_assert_eq "-2" "$(beop_rc pull "$D" vdz "$s2" "$base" 0)" "pull on a disk the domain lacks: ENOENT"
it_assert_eq "-2" "$(beop_rc pull "$D-nodom" vda "$s2" "$base" 0)" "pull on no such domain: ENOENT"
it_assert_eq "none" "$(beop job "$D" vda | head -1)" "no job after the refusals"

# the pull, limited to 1 MiB/s (8 MiB to copy): still running right after
# it started
# by libvirt's index notation, as the engine calls commit_start
s2_index=$(index_of "$s2")
base_index=$(index_of "$base")
{ [ -n "$s2_index" ] && [ -n "$base_index" ]; } || it_fail "no index for s2 or base in the live XML"
it_assert_eq "0" "$(beop_rc pull "$D" vda "vda[$s2_index]" "vda[$base_index]" $((1024 * 1024)))" \
  "pull_start vda[$s2_index] (s2) onto vda[$base_index] (base)"
job=$(beop job "$D" vda | head -1)
it_assert_contains "$job" "pull " "a pull job runs right after pull_start"
it_assert_eq "-16" "$(beop_rc pull "$D" vda "$s2" "$base" 0)" "a second pull while one runs: EBUSY"
pull_done() { [ "$(beop job "$D" vda | head -1)" = none ]; }
it_wait_until 120 "the pull to end" pull_done
it_assert_eq "$s2 $base" "$(chain | tr '\n' ' ' | sed 's/ $//')" "chain after the pull: s1 left"
[ -f "$s1" ] || it_fail "the pull's op deleted s1.qcow2"
it_assert_eq "$base" "$(qemu-img info -U --output=json "$s2" | jq -r '.["backing-filename"]')" \
  "s2.qcow2's backing string is base's absolute path (no _RELATIVE)"
it_virsh qemu-monitor-command "$D" --hmp \
  "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"flush\"" >/dev/null
it_check_pattern "$s2" 0x11 0 4M
it_check_pattern "$s2" 0x22 4M 8M
it_check_pattern "$s2" 0x33 12M 4M

# libvirt's pull touched no snapshot
it_assert_eq "$s1" "$(disks_source S1)" "S1 still names s1.qcow2 after the pull"

# snapshot_retarget / snapshot_drop refusals
it_assert_eq "-2" "$(beop_rc retarget "$D" S1 vdb "$s2")" "retarget a disk S1 does not name: ENOENT"
it_assert_eq "-2" "$(beop_rc retarget "$D" S9 vda "$s2")" "retarget no such snapshot: ENOENT"
it_assert_eq "-2" "$(beop_rc drop "$D" S9)" "drop no such snapshot: ENOENT"
it_assert_eq "$s1" "$(disks_source S1)" "S1 unchanged by the refusals"

# §2.4: drop S2, retarget S1 onto s2.qcow2
it_assert_eq "0" "$(beop_rc drop "$D" S2)" "snapshot_drop S2"
it_assert_eq "S1" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "only S1 left"
[ -f "$s2" ] || it_fail "snapshot_drop deleted s2.qcow2"
it_assert_eq "S1" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "S1 current after dropping S2"
it_assert_eq "0" "$(beop_rc retarget "$D" S1 vda "$s2")" "snapshot_retarget S1 onto s2.qcow2"
it_assert_eq "$s2" "$(disks_source S1)" "S1's <disks> names s2.qcow2"
it_assert_eq "$base" "$(domain_source S1)" "S1's <domain> copy still names base"
it_assert_eq "S1" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "S1 still current after the redefine"
it_assert_eq "0" "$(beop_rc retarget "$D" S1 vda "$s2")" "snapshot_retarget again (idempotent)"

# libvirt's own deletion of S1 now works (it commits s2 into base)
timeout 120 virsh -q -c "$IT_URI" snapshot-delete "$D" S1 >/dev/null || it_fail "virsh snapshot-delete S1 after the repair"
it_assert_eq "" "$(it_snapshot_names "$D")" "no snapshot left"
top=$(it_domblk "$D" vda)
it_check_pattern "$top" 0x11 0 4M
it_check_pattern "$top" 0x22 4M 8M
it_check_pattern "$top" 0x33 12M 4M
it_log "PASS"
