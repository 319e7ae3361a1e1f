#!/bin/bash
# issue10_offline.sh — probe for design issue 10 §2 and §4 on a shut-off
# domain (no guest is booted): a multi-disk external snapshot with
# REUSE_EXT and snapshot='no' disks, what libvirt 9.0's snapshot-revert says
# about it, and the metadata steps of chainfs's revert done by hand (new
# overlay, one define, NAME redefined with the new source and --current,
# a later snapshot's metadata deleted).
set -euo pipefail
D=/var/tmp/d10off-$$
V="virsh -q -c qemu:///system"
dom=d10off-$$
mkdir -p "$D"; chmod 0755 "$D"
log() { printf '[%s] %s\n' "$(date -u +%T.%3N)" "$*"; }
cleanup() {
  for s in $($V snapshot-list "$dom" --name 2>/dev/null); do
    $V snapshot-delete "$dom" "$s" --metadata >/dev/null 2>&1 || true
  done
  $V undefine "$dom" >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT

qemu-img create -q -f qcow2 "$D/vda.qcow2" 16M
qemu-img create -q -f qcow2 "$D/vdb.qcow2" 16M
qemu-img create -q -f qcow2 "$D/ro.qcow2" 16M
cat >"$D/dom.xml" <<EOF
<domain type='qemu'><name>$dom</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/ro.qcow2'/><target dev='vdc' bus='virtio'/><readonly/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
</devices></domain>
EOF
$V define "$D/dom.xml" >/dev/null
log "defined $dom (shut off): vda, vdb, vdc read-only, hdc empty cdrom"

snap() { # NAME: overlays made by us (REUSE_EXT), vdc and hdc snapshot='no'
  local n=$1
  for d in vda vdb; do
    local cur; cur=$($V domblklist "$dom" | awk -v d=$d '$1 == d {print $2}')
    qemu-img create -q -f qcow2 -b "$cur" -F qcow2 "$D/$d.$n.qcow2"
  done
  cat >"$D/$n.xml" <<EOF
<domainsnapshot><name>$n</name><description>chainfs: quiesced=no reason=domain shut off</description><disks>
<disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='$D/vda.$n.qcow2'/></disk>
<disk name='vdb' snapshot='external' type='file'><driver type='qcow2'/><source file='$D/vdb.$n.qcow2'/></disk>
<disk name='vdc' snapshot='no'/><disk name='hdc' snapshot='no'/>
</disks></domainsnapshot>
EOF
  local a b; a=$(date +%s.%N)
  $V snapshot-create "$dom" "$D/$n.xml" --disk-only --atomic --reuse-external >/dev/null
  b=$(date +%s.%N)
  log "snapshot $n (2 disks, REUSE_EXT, ATOMIC) in $(echo "$b - $a" | bc) s; domblklist: $($V domblklist "$dom" | tr -s ' ' | tr '\n' ';')"
}
snap s1
snap s2
log "snapshot-list --tree: $($V snapshot-list "$dom" --tree | tr '\n' ';')"
log "current: $($V snapshot-current "$dom" --name)"
log "snapshot-revert s2: $($V snapshot-revert "$dom" s2 2>&1 | tr '\n' ' ')"
log "after the refused revert, domblklist: $($V domblklist "$dom" | tr -s ' ' | tr '\n' ';')"

# chainfs's revert to s1 (force: s2 is later), by hand
for d in vda vdb; do
  qemu-img create -q -f qcow2 -b "$D/$d.qcow2" -F qcow2 "$D/$d.s1.2.qcow2"
done
$V dumpxml --inactive "$dom" >"$D/def.xml"
sed -i -e "s#$D/vda.s2.qcow2#$D/vda.s1.2.qcow2#" -e "s#$D/vdb.s2.qcow2#$D/vdb.s1.2.qcow2#" "$D/def.xml"
python3 - "$D/def.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
t = ET.parse(sys.argv[1]); r = t.getroot()
for disk in r.iter('disk'):
    for b in disk.findall('backingStore'):
        disk.remove(b)
t.write(sys.argv[1])
EOF
a=$(date +%s.%N); $V define "$D/def.xml" >/dev/null; b=$(date +%s.%N)
log "one define of both disks in $(echo "$b - $a" | bc) s; domblklist: $($V domblklist "$dom" | tr -s ' ' | tr '\n' ';')"
$V snapshot-dumpxml "$dom" s1 --security-info >"$D/s1.xml"
sed -i -e "s#$D/vda.s1.qcow2#$D/vda.s1.2.qcow2#" -e "s#$D/vdb.s1.qcow2#$D/vdb.s1.2.qcow2#" "$D/s1.xml"
log "delete s2 metadata: $($V snapshot-delete "$dom" s2 --metadata 2>&1 | tr '\n' ' ')"
log "redefine s1 --current: $($V snapshot-create "$dom" "$D/s1.xml" --redefine --current 2>&1 | tr '\n' ' ')"
log "snapshot-list --tree: $($V snapshot-list "$dom" --tree | tr '\n' ';'); current: $($V snapshot-current "$dom" --name)"
log "s1's disks now: $($V snapshot-dumpxml "$dom" s1 | sed -n "/<disks>/,/<\/disks>/p" | grep -o "source file='[^']*'" | tr '\n' ' ')"
log "s1's description kept: $($V snapshot-dumpxml "$dom" s1 | grep -o '<description>.*</description>')"
log "qemu-img chain of vda: $(qemu-img info -U --backing-chain "$D/vda.s1.2.qcow2" | grep '^image:' | tr '\n' ' ')"
# _QUIESCE on a shut-off domain: refused, or ignored?
log "q1 with --quiesce on the shut-off domain: rc=$($V snapshot-create-as "$dom" q1 --disk-only --quiesce --no-metadata --diskspec vda,file=$D/q1.qcow2 --diskspec vdb,snapshot=no --diskspec vdc,snapshot=no --diskspec hdc,snapshot=no >/dev/null 2>&1; echo $?); domblklist: $($V domblklist "$dom" | tr -s ' ' | tr '\n' ';')"
