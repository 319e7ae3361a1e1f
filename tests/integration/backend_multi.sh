#!/usr/bin/env bash
# backend_multi.sh — the libvirt backend's issue 10 ops against the real
# libvirtd, through tests/tools/beop (design docs/design/issue10.md §2.1,
# §2.3 step 5, §2.4, §4.2, §6): a running domain with two disks, a
# read-only disk and an empty cdrom:
#   - snapshot_create_multi switches both disks at once, the others
#     snapshot='no', the description comes back in read_domain's snaps[],
#     unsnappable[] names the read-only disk and the cdrom;
#   - refusals and failures change nothing and leave no overlay file: an
#     unsnappable disk, an existing overlay, an overlay directory chainfs
#     cannot write, and one QEMU cannot open (libvirt's transaction fails
#     on the second disk after the backend made both overlays);
#   - the agent ops on a domain without an agent channel: EOPNOTSUPP with
#     libvirt's text (the timeout is still accepted); with a channel and
#     no agent behind it: EOPNOTSUPP "not connected"; shut off: EINVAL;
#   - persistent_sources_set: EBUSY while running; shut off, two disks in
#     one define (one "Defined" event);
#   - snapshot_retarget_multi with make_current: `virsh snapshot-current`.
# No chainfs mount.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
BEOP=${BEOP:-$IT_ROOT/build/tests/beop}
[ -x "$BEOP" ] || it_fail "no beop tool at $BEOP (build it: ninja -C build)"

D="$IT_PREFIX-multi"
beop() { "$BEOP" "$IT_URI" "$@"; }
beop_rc() { beop "$@" 2>&1 | sed -n 's/^rc=//p'; }
beop_out() { beop "$@" 2>&1 || true; }

# disks_of NAME — snapshot NAME's <disks>: "target:snapshot[:source]" each
disks_of() {
  it_virsh snapshot-dumpxml "$D" "$1" | python3 -c '
import sys, xml.etree.ElementTree as ET
for d in ET.fromstring(sys.stdin.read()).find("disks"):
    s = d.find("source")
    print(d.get("name") + ":" + d.get("snapshot") + (":" + s.get("file") if s is not None else ""))' |
    tr '\n' ' ' | sed 's/ $//'
}
# inactive_source DISK — the persistent definition's source of DISK
inactive_source() {
  it_virsh dumpxml --inactive "$D" | python3 -c '
import sys, xml.etree.ElementTree as ET
for d in ET.fromstring(sys.stdin.read()).iter("disk"):
    if d.find("target").get("dev") == sys.argv[1]:
        s = d.find("source")
        print(s.get("file") if s is not None else "")' "$1"
}
overlays_in() { find "$1" -maxdepth 1 -name '*.X.qcow2' -printf '%f\n' | sort | tr '\n' ' ' | sed 's/ $//'; }

it_make_image "$T/a.qcow2" 64M
it_make_image "$T/b.qcow2" 64M
it_make_image "$T/ro.qcow2" 16M
it_domain_xml "$D" "$T/a.qcow2" "$T/b.qcow2" "$T/ro.qcow2" |
  sed -e "s|<source file='$T/ro.qcow2'/><target dev='vdc' bus='virtio'/>|&<readonly/>|" \
      -e "s|  </devices>|    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>\n  </devices>|" \
      >"$T/$D.xml"
grep -q '<readonly/></disk>' "$T/$D.xml" || it_fail "the domain XML has no read-only vdc"
IT_DOMAINS+=("$D")
it_virsh define "$T/$D.xml" >/dev/null || it_fail "virsh define $D"
it_start "$D"
it_guest_write "$D" 0x11 0 1M
it_guest_write "$D" 0x22 0 1M virtio-disk1

# ---- refusals first: nothing changes, no file left -------------------------
it_assert_eq "-30" "$(beop_rc multi "$D" X - "vda=$T/a.X.qcow2" "vdc=$T/ro.X.qcow2")" \
  "a read-only disk in a multi snapshot: EROFS"
it_assert_contains "$(beop_out multi "$D" X - "vda=$T/a.X.qcow2" "hdc=$T/cd.X.qcow2")" "cdrom" \
  "an empty cdrom: refused, the message says cdrom"
: >"$T/b.X.qcow2"
it_assert_eq "-17" "$(beop_rc multi "$D" X - "vda=$T/a.X.qcow2" "vdb=$T/b.X.qcow2")" \
  "an existing overlay file for the second disk: EEXIST"
rm -f "$T/b.X.qcow2"
it_assert_eq "-2" "$(beop_rc multi "$D" X - "vda=$T/a.X.qcow2" "vdb=$T/nodir/b.X.qcow2")" \
  "the second overlay's directory does not exist: ENOENT"
# a directory QEMU (libvirt-qemu) cannot enter: the backend makes both
# overlays, libvirt's call fails on vdb's, nothing switches, both go
mkdir -m 0700 "$T/locked"
out=$(beop_out multi "$D" X - "vda=$T/a.X.qcow2" "vdb=$T/locked/b.X.qcow2")
it_log "libvirt on an overlay QEMU cannot open: $out"
case "$out" in rc=0*) it_fail "a snapshot onto an overlay QEMU cannot open succeeded" ;; esac
it_assert_contains "$out" "vdb" "the failure names the disk vdb"
it_assert_eq "" "$(overlays_in "$T")$(overlays_in "$T/locked")" "no overlay file left by the failures"
[ ! -e "$T/a.X.qcow2" ] || it_fail "a.X.qcow2 left behind"
it_assert_eq "$T/a.qcow2" "$(it_domblk "$D" vda)" "vda unchanged by the failures"
it_assert_eq "$T/b.qcow2" "$(it_domblk "$D" vdb)" "vdb unchanged by the failures"
it_assert_eq "" "$(it_snapshot_names "$D")" "no snapshot metadata from the failures"

# ---- the two-disk snapshot -----------------------------------------------
desc='chainfs: quiesced=no reason=no guest agent channel <&>'
it_assert_eq "0" "$(beop_rc multi "$D" S1 "$desc" "vda=$T/a.S1.qcow2" "vdb=$T/b.S1.qcow2")" \
  "snapshot_create_multi S1 of vda and vdb"
it_assert_eq "$T/a.S1.qcow2" "$(it_domblk "$D" vda)" "vda switched to its overlay"
it_assert_eq "$T/b.S1.qcow2" "$(it_domblk "$D" vdb)" "vdb switched to its overlay"
it_assert_eq "$T/ro.qcow2" "$(it_domblk "$D" vdc)" "vdc (read-only) untouched"
it_assert_eq "vda:external:$T/a.S1.qcow2 vdb:external:$T/b.S1.qcow2 vdc:no hdc:no" \
  "$(disks_of S1)" "S1's <disks>: both external, vdc and hdc snapshot='no'"
it_assert_eq "$desc" "$(it_virsh snapshot-dumpxml "$D" S1 | python3 -c '
import sys, xml.etree.ElementTree as ET; print(ET.fromstring(sys.stdin.read()).findtext("description"))')" \
  "S1's <description> as given"
it_guest_write "$D" 0x33 1M 1M
it_guest_write "$D" 0x44 1M 1M virtio-disk1
it_assert_eq "$T/a.qcow2" "$(qemu-img info -U --output=json "$T/a.S1.qcow2" | jq -r '.["backing-filename"]')" \
  "a.S1.qcow2 backs onto a.qcow2"
it_assert_eq "0" "$(beop_rc multi "$D" S2 - "vda=$T/a.S2.qcow2" "vdb=$T/b.S2.qcow2")" "a second one, S2"
it_assert_eq "-17" "$(beop_rc multi "$D" S2 - "vda=$T/a.S2b.qcow2" "vdb=$T/b.S2b.qcow2")" \
  "a name libvirt has: EEXIST"
if [ -e "$T/a.S2b.qcow2" ] || [ -e "$T/b.S2b.qcow2" ]; then it_fail "overlays left by the EEXIST refusal"; fi

read_out=$(beop read "$D")
it_log "read_domain: $read_out"
it_assert_contains "$read_out" "unsnappable vdc read-only" "unsnappable[]: vdc read-only"
it_assert_contains "$read_out" "unsnappable hdc cdrom" "unsnappable[]: hdc cdrom"
s1_line=$(printf '%s\n' "$read_out" | grep '^snap S1 ')
it_assert_contains "$s1_line" "description=$desc" "snaps[]: S1's description"
it_assert_contains "$s1_line" "current=0" "snaps[]: S1 not current"
it_assert_contains "$s1_line" "disks=vda:external:$T/a.S1.qcow2,vdb:external:$T/b.S1.qcow2,vdc:no:-,hdc:no:-" \
  "snaps[]: S1's disks"
s2_line=$(printf '%s\n' "$read_out" | grep '^snap S2 ')
it_assert_contains "$s2_line" "parent=S1 current=1" "snaps[]: S2's parent S1, S2 current"
it_assert_contains "$s2_line" "description=-" "snaps[]: S2 has no description"
created=$(printf '%s\n' "$s1_line" | sed 's/.*created=\([0-9]*\).*/\1/')
now=$(date +%s)
if [ "$created" -le $((now - 600)) ] || [ "$created" -gt "$now" ]; then
  it_fail "S1's creation time $created is not recent"
fi

# ---- the guest agent: no channel ------------------------------------------
out=$(beop_out freeze "$D")
it_assert_contains "$out" "rc=-95" "freeze without an agent channel: EOPNOTSUPP"
it_assert_contains "$out" "not configured" "libvirt's text: the agent is not configured"
it_assert_eq "-95" "$(beop_rc thaw "$D")" "thaw without an agent channel: EOPNOTSUPP"
it_assert_eq "0" "$(beop_rc agent-timeout "$D" 3)" "the agent timeout is accepted without an agent"
it_assert_eq "-22" "$(beop_rc agent-timeout "$D" 0)" "a timeout of 0 s: EINVAL"
it_assert_eq "-2" "$(beop_rc freeze "$D-nodom")" "freeze of no such domain: ENOENT"
# a channel and no agent behind it (no OS): "not connected", at once
D2="$IT_PREFIX-chan"
it_make_image "$T/c.qcow2" 16M
it_domain_xml "$D2" "$T/c.qcow2" |
  sed "s|  </devices>|    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n  </devices>|" \
    >"$T/$D2.xml"
IT_DOMAINS+=("$D2")
it_virsh define "$T/$D2.xml" >/dev/null || it_fail "virsh define $D2"
it_start "$D2"
it_assert_eq "0" "$(beop_rc agent-timeout "$D2" 2)" "the agent timeout with a channel"
t0=$(it_now_ms)
out=$(beop_out freeze "$D2")
it_assert_contains "$out" "rc=-95" "freeze with a channel and no agent: EOPNOTSUPP"
it_assert_contains "$out" "not connected" "libvirt's text: the agent is not connected"
[ $(($(it_now_ms) - t0)) -lt 10000 ] || it_fail "freeze without an agent took $(($(it_now_ms) - t0)) ms"
it_destroy "$D2"

# ---- persistent definition: refused while running --------------------------
it_assert_eq "-16" "$(beop_rc sources "$D" "vda=$T/a.qcow2" "vdb=$T/b.qcow2")" \
  "persistent_sources_set on a running domain: EBUSY"
it_destroy "$D"

out=$(beop_out freeze "$D")
it_assert_contains "$out" "rc=-22" "freeze of a shut-off domain: EINVAL"
it_assert_contains "$out" "not running" "libvirt's text: not running"
it_assert_eq "-22" "$(beop_rc thaw "$D")" "thaw of a shut-off domain: EINVAL"

# ---- a revert by hand: new overlays on S1's frozen layers, one define -------
it_make_image "$T/a.S1.1.qcow2" 64M "$T/a.qcow2"
it_make_image "$T/b.S1.1.qcow2" 64M "$T/b.qcow2"
it_assert_eq "-2" "$(beop_rc sources "$D" "vda=$T/a.S1.1.qcow2" "vdz=$T/b.S1.1.qcow2")" \
  "a disk the domain lacks: ENOENT"
it_assert_eq "$T/a.S2.qcow2" "$(inactive_source vda)" "nothing defined by the refusal"
events="$T/events"
timeout 15 virsh -q -c "$IT_URI" event --domain "$D" --event lifecycle --loop >"$events" 2>&1 &
ev_pid=$!
sleep 1
it_assert_eq "0" "$(beop_rc sources "$D" "vda=$T/a.S1.1.qcow2" "vdb=$T/b.S1.1.qcow2")" \
  "persistent_sources_set of vda and vdb"
sleep 1
kill "$ev_pid" 2>/dev/null || true
wait "$ev_pid" 2>/dev/null || true
it_assert_eq "1" "$(grep -c 'Defined' "$events" || true)" "one define for two disks"
it_assert_eq "$T/a.S1.1.qcow2" "$(inactive_source vda)" "vda defined on its new overlay"
it_assert_eq "$T/b.S1.1.qcow2" "$(inactive_source vdb)" "vdb defined on its new overlay"
it_assert_eq "$T/ro.qcow2" "$(inactive_source vdc)" "vdc untouched by the define"
it_assert_eq "0" "$(it_virsh dumpxml --inactive "$D" | grep -c '<backingStore' || true)" \
  "no <backingStore> left in the definition"

# ---- retarget S1 onto them, current --------------------------------------
it_assert_eq "-2" "$(beop_rc retarget-multi "$D" S1 current "vda=$T/a.S1.1.qcow2" "vdc=$T/x.qcow2")" \
  "a retarget naming a disk S1 has no file for: ENOENT"
it_assert_eq "S2" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "S2 still current after the refusal"
it_assert_eq "0" "$(beop_rc retarget-multi "$D" S1 current "vda=$T/a.S1.1.qcow2" "vdb=$T/b.S1.1.qcow2")" \
  "snapshot_retarget_multi S1 onto the new overlays, current"
it_assert_eq "S1" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "S1 is libvirt's current snapshot"
it_assert_eq "vda:external:$T/a.S1.1.qcow2 vdb:external:$T/b.S1.1.qcow2 vdc:no hdc:no" \
  "$(disks_of S1)" "S1's <disks> name the new overlays"
it_assert_eq "$desc" "$(it_virsh snapshot-dumpxml "$D" S1 | python3 -c '
import sys, xml.etree.ElementTree as ET; print(ET.fromstring(sys.stdin.read()).findtext("description"))')" \
  "S1 keeps its description"
s1_line=$(beop read "$D" | grep '^snap S1 ')
it_assert_contains "$s1_line" "current=1" "read_domain: S1 current"
it_assert_contains "$s1_line" "disks=vda:external:$T/a.S1.1.qcow2,vdb:external:$T/b.S1.1.qcow2" \
  "read_domain: S1 names the new overlays (the cache was refreshed)"
it_assert_eq "0" "$(beop_rc retarget-multi "$D" S2 keep "vda=$T/a.S2.qcow2")" "a retarget without current"
it_assert_eq "S1" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "S1 still current"

# the reverted domain starts on the new chain, with S1's data
it_start "$D"
it_assert_eq "$T/a.S1.1.qcow2" "$(it_domblk "$D" vda)" "the domain runs on vda's new overlay"
it_guest_check_pattern "$D" 0x11 0 1M
it_guest_check_pattern "$D" 0x00 1M 1M
it_guest_check_pattern "$D" 0x22 0 1M virtio-disk1

# a snapshot deleted behind the backend's back (virsh): the cached facts
# of its child follow libvirt's reparenting on the next read
it_assert_eq "0" "$(beop_rc multi "$D" T1 - "vda=$T/a.T1.qcow2" "vdb=$T/b.T1.qcow2")" "T1 (parent S1)"
it_assert_eq "0" "$(beop_rc multi "$D" T2 - "vda=$T/a.T2.qcow2" "vdb=$T/b.T2.qcow2")" "T2 (parent T1)"
beop read-again "$D" "$T/go" >"$T/again" 2>&1 &
again_pid=$!
it_wait_until 30 "the first read" grep -q 'first read rc=0' "$T/again"
it_virsh snapshot-delete "$D" T1 --metadata >/dev/null || it_fail "virsh snapshot-delete T1 --metadata"
: >"$T/go"
wait "$again_pid" || it_fail "beop read-again: $(cat "$T/again")"
it_assert_contains "$(grep '^snap T2 ' "$T/again")" "parent=S1 current=1" \
  "T2's parent is S1 after T1 went (the cache did not serve T1)"
it_log "PASS"
