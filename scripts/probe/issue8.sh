#!/usr/bin/env bash
# issue8.sh — probe, against the libvirtd and QEMU of this machine, the
# risks docs/design/issue8.md could not settle from source (§6, §7).
#
#   CHAINFS_VIRT_TYPE=qemu scripts/probe/issue8.sh [N...]   # probes 1-5 by default
#
# Each probe builds its own throwaway domain(s) (64 MiB, no OS, qcow2 virtio
# disk, named cfsprobe8-PID-...) in a temporary directory under /var/tmp and
# prints what it observed, one "P<n>.<k> PASS|FAIL|INFO ..." line per check;
# a summary table comes at the end. Clean-up (tests/integration/lib.sh's
# it_cleanup) destroys and undefines every domain and removes every file,
# also on failure or signal. chainfs itself is not built, mounted or run.
# It never restarts libvirtd.
set -euo pipefail

# lib.sh checks for a chainfs binary; the probes mount nothing
export CHAINFS=${CHAINFS:-/bin/true}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../tests/integration/lib.sh"
IT_PREFIX="cfsprobe8-$$"
# shellcheck disable=SC2034 # read by lib.sh
IT_NAME=probe8

MIB=$((1024 * 1024))
SIZE=64M

it_init
RES="$T/results"
: >"$RES"
p_summary() {
  echo
  echo "==== summary ===="
  cat "$RES"
}
IT_CLEANUP_HOOKS+=(p_summary)
# every domain a probe may define, registered up front: a probe runs in a
# subshell, and the clean-up (in this shell) must know them all
for n in 1 3 3b 4 5; do IT_DOMAINS+=("$IT_PREFIX-p$n"); done

# ---- reporting ---------------------------------------------------------------

PROBE=""
p_res() { # p_res PASS|FAIL|INFO TEXT
  printf 'P%s %-4s %s\n' "$PROBE" "$1" "$2" | tee -a "$RES"
}
p_check() { # p_check WHAT CMD... — PASS if CMD succeeds
  local what=$1
  shift
  if "$@"; then p_res PASS "$what"; else p_res FAIL "$what"; fi
}

# ---- helpers -----------------------------------------------------------------

p_define() { # p_define DOM FILE — define without it_define's registration
  it_domain_xml "$1" "$2" >"$T/$1.xml"
  it_virsh define "$T/$1.xml" >/dev/null
}

# p_pat FILE PAT OFF LEN — FILE's chain reads PAT there (no locks taken)
p_pat() {
  local out
  out=$(qemu-io -U -r -f qcow2 -c "read -P $2 $3 $4" "$1" 2>&1) || { echo "$out" >&2; return 1; }
  case "$out" in
    *"verification failed"* | *"read failed"* | *[Ee]rror*) echo "$out" | head -3 >&2; return 1 ;;
    *"read "*) return 0 ;;
    *) echo "$out" >&2; return 1 ;;
  esac
}

# p_guest_read DOM PAT OFF LEN — the running guest's disk device reads PAT
p_guest_read() {
  local out
  out=$(it_virsh qemu-monitor-command "$1" --hmp \
    "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"read -P $2 $3 $4\"" 2>&1) ||
    { echo "$out" >&2; return 1; }
  case "$out" in
    *"verification failed"* | *rror* | *failed*) echo "$out" | head -3 >&2; return 1 ;;
    *) return 0 ;;
  esac
}

# p_flush DOM — a flush by the guest's disk device (QEMU writes its caches)
p_flush() {
  it_virsh qemu-monitor-command "$1" --hmp \
    "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"flush\"" >/dev/null
}

# p_snap DOM NAME OVERLAY — an external disk-only snapshot of vda as chainfs
# makes it (backend/libvirt.c lv_snapshot_create): chainfs writes the overlay
# itself (qcow2, backing = the current top as libvirt spells it), then
# virDomainSnapshotCreateXML(DISK_ONLY|ATOMIC|REUSE_EXT), with metadata.
p_snap() {
  local dom=$1 name=$2 ov=$3 top
  top=$(it_domblk "$dom" vda)
  qemu-img create -q -f qcow2 -b "$top" -F qcow2 "$ov" "$SIZE"
  cat >"$T/snap-$name.xml" <<EOF
<domainsnapshot><name>$name</name><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='$ov'/></disk></disks></domainsnapshot>
EOF
  it_virsh snapshot-create "$dom" --xmlfile "$T/snap-$name.xml" --disk-only --atomic --reuse-external >/dev/null
}

# p_chain DOM — the live chain of vda from the live XML, "a <- b <- c" top first
p_chain() {
  it_virsh dumpxml "$1" ${2:+"$2"} | python3 -c '
import sys, xml.etree.ElementTree as ET
d = ET.fromstring(sys.stdin.read())
for disk in d.iter("disk"):
    if disk.find("target").get("dev") != "vda":
        continue
    out, n = [], disk
    while n is not None:
        s = n.find("source")
        if s is None:
            break
        out.append("%s%s" % (s.get("file"), "[%s]" % n.get("index") if n.get("index") else ""))
        n = n.find("backingStore")
    print(" <- ".join(out))'
}

# p_events_start DOM — `virsh event --all --loop` into $T/events-DOM; EVPID
p_events_start() {
  virsh -c "$IT_URI" event --domain "$1" --all --loop --timestamp >"$T/events-$1" 2>&1 &
  EVPID=$!
  sleep 1
}
p_events_stop() {
  sleep 1
  [ -z "${EVPID:-}" ] || kill "$EVPID" 2>/dev/null || true
  wait "$EVPID" 2>/dev/null || true
  EVPID=""
}
p_events() { grep -i 'block' "$T/events-$1" | sed 's/^/    /' || echo "    (no block-job event)"; }

p_qemu_pid() { cat "/run/libvirt/qemu/$1.pid"; }
# p_open_files DOM DIR — the files under DIR QEMU has open, with fd counts
p_open_files() {
  local pid
  pid=$(p_qemu_pid "$1")
  ls -l "/proc/$pid/fd" 2>/dev/null | awk -v d="$2" '$NF ~ "^"d { print $NF }' | sort | uniq -c | sed 's/^ */    /'
}

p_blocks() { echo $(($(stat -c %b "$1") * 512)); }

p_wait_ready() { # p_wait_ready DOM — until libvirt shows <mirror ready='yes'>
  local i
  for ((i = 0; i < 600; i++)); do
    it_virsh dumpxml "$1" | grep -q "<mirror.*ready='yes'" && return 0
    sleep 0.1
  done
  return 1
}

# ---- probe 1 + 2: forward merge (pull) and the snapshot metadata after it ---

probe12() {
  local dom=$IT_PREFIX-p1 d a0 a1 s1blocks out x
  PROBE=1
  d=$(it_tmpdir)
  it_make_image "$d/base.qcow2" $SIZE
  it_write_pattern "$d/base.qcow2" 0x11 0 4M
  p_define "$dom" "$d/base.qcow2"
  it_start "$dom"
  p_snap "$dom" S1 "$d/s1.qcow2"
  it_guest_write "$dom" 0x22 4M 8M
  p_snap "$dom" S2 "$d/s2.qcow2"
  it_guest_write "$dom" 0x33 12M 4M
  p_res INFO "chain before: $(p_chain "$dom")"
  s1blocks=$(p_blocks "$d/s1.qcow2")
  a0=$(p_blocks "$d/s2.qcow2")
  p_events_start "$dom"
  out=$(it_virsh blockpull "$dom" vda --base "$d/base.qcow2" --wait 2>&1) && x=0 || x=$?
  p_events_stop
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "virsh blockpull vda --base base --wait: rc $x: $(echo "$out" | tr '\n' ' ')"
  p_res INFO "events:"
  p_events "$dom" | tee -a "$RES"
  out=$(p_chain "$dom")
  p_check "live chain after: $out" test "$out" = "$d/s2.qcow2 <- $d/base.qcow2[1]" -o "$out" = "$d/s2.qcow2 <- $d/base.qcow2"
  p_res INFO "persistent chain after: $(p_chain "$dom" --inactive)"
  p_res INFO "qemu-img chain of s2: $(it_chain "$d/s2.qcow2" | tr '\n' ' ')"
  # before any flush: QEMU may hold the pulled clusters' L2 entries in its
  # qcow2 metadata cache, so another reader of the file may not see them yet
  if p_pat "$d/s2.qcow2" 0x22 4M 8M 2>/dev/null; then x=yes; else x=no; fi
  p_res INFO "qemu-io -U on s2 sees s1's data (0x22) right after the pull, before a flush: $x"
  p_flush "$dom"
  p_check "pattern 0x11 (base) reads back via s2" p_pat "$d/s2.qcow2" 0x11 0 4M
  p_check "pattern 0x22 (s1) reads back via s2 after a guest flush" p_pat "$d/s2.qcow2" 0x22 4M 8M
  p_check "pattern 0x33 (s2) reads back via s2" p_pat "$d/s2.qcow2" 0x33 12M 4M
  p_check "guest reads 0x22 after the pull" p_guest_read "$dom" 0x22 4M 8M
  a1=$(p_blocks "$d/s2.qcow2")
  p_res INFO "s2 st_blocks*512 $a0 -> $a1 (growth $((a1 - a0))); s1 st_blocks*512 $s1blocks"
  p_check "growth of s2 within [s1's data - 1 MiB, s1's allocation + 1 MiB]" \
    test $((a1 - a0)) -ge $((8 * MIB - MIB)) -a $((a1 - a0)) -le $((s1blocks + MIB))
  p_check "s1.qcow2 is no longer open by QEMU" test -z "$(p_open_files "$dom" "$d/s1")"

  PROBE=2
  p_res INFO "snapshot-list --tree after the pull: $(it_virsh snapshot-list "$dom" --tree | tr '\n' ' ')"
  p_res INFO "snapshot-list --current: $(it_virsh snapshot-current "$dom" --name 2>&1)"
  for x in S1 S2; do
    p_res INFO "$x <disks> source after the pull: $(it_virsh snapshot-dumpxml "$dom" $x | sed -n "/<disks>/,/<\/disks>/s/.*<source file='\([^']*\)'.*/\1/p" | tr '\n' ' ')"
    p_res INFO "$x <domain> disk chain (source, backingStore...): $(it_virsh snapshot-dumpxml "$dom" $x | sed -n "/<domain type/,/<\/domain>/s/.*<source file='\([^']*\)'.*/\1/p" | tr '\n' ' ')"
  done
  # control: libvirt's own deletion of S1 before the repair (the design
  # expects a refusal: S1's <disks> source s1.qcow2 left the chain)
  out=$(timeout 120 virsh -c "$IT_URI" snapshot-delete "$dom" S1 2>&1) && x=0 || x=$?
  p_res "$([ $x != 0 ] && echo PASS || echo FAIL)" "unrepaired snapshot-delete S1 is refused: rc $x $(echo "$out" | tr '\n' ' ')"
  # design §2.4 step 1: drop S2 (names only vda) metadata-only
  out=$(it_virsh snapshot-delete "$dom" S2 --metadata 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "snapshot-delete S2 --metadata: rc $x $(echo "$out" | tr '\n' ' ')"
  p_res INFO "current after dropping S2: $(it_virsh snapshot-current "$dom" --name 2>&1)"
  # step 2: retarget S1 — only <disks><disk name='vda'><source file> changes
  it_virsh snapshot-dumpxml "$dom" S1 --security-info >"$T/S1.xml"
  python3 - "$T/S1.xml" "$d/s1.qcow2" "$d/s2.qcow2" <<'PY'
import sys
p, old, new = sys.argv[1:]
t = open(p).read()
a = t.index("<disks>"); b = t.index("</disks>")
seg = t[a:b]
assert "<source file='%s'" % old in seg, seg
t = t[:a] + seg.replace("<source file='%s'" % old, "<source file='%s'" % new) + t[b:]
open(p, "w").write(t)
PY
  out=$(it_virsh snapshot-create "$dom" --xmlfile "$T/S1.xml" --redefine 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "redefine S1 with <disks> source s2.qcow2: rc $x $(echo "$out" | tr '\n' ' ')"
  p_res INFO "S1 <disks> source now: $(it_virsh snapshot-dumpxml "$dom" S1 | sed -n "/<disks>/,/<\/disks>/s/.*<source file='\([^']*\)'.*/\1/p")"
  p_res INFO "snapshot-list --tree: $(it_virsh snapshot-list "$dom" --tree | tr '\n' ' '); current: $(it_virsh snapshot-current "$dom" --name 2>&1)"
  # step 3: libvirt's own deletion of S1 (external: block commit s2 -> base)
  p_events_start "$dom"
  out=$(timeout 120 virsh -c "$IT_URI" snapshot-delete "$dom" S1 2>&1) && x=0 || x=$?
  p_events_stop
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "virsh snapshot-delete S1 (full, libvirt commits): rc $x $(echo "$out" | tr '\n' ' ')"
  p_events "$dom" | tee -a "$RES"
  p_res INFO "chain after: $(p_chain "$dom"); persistent: $(p_chain "$dom" --inactive)"
  p_res INFO "snapshot-list --tree: '$(it_virsh snapshot-list "$dom" --tree | tr '\n' ' ')'"
  p_check "patterns 0x11/0x22/0x33 read back from the live top" \
    eval 'top=$(it_domblk "$dom" vda); p_pat "$top" 0x11 0 4M && p_pat "$top" 0x22 4M 8M && p_pat "$top" 0x33 12M 4M'
}

# ---- probe 3: shallow copy, REUSE_EXT, DEST backed by the same frozen layers -

probe3() {
  local dom=$IT_PREFIX-p3 d e out x bg pid t0
  PROBE=3
  d=$(it_tmpdir)
  e=$(it_tmpdir)
  it_make_image "$d/base.qcow2" $SIZE
  it_write_pattern "$d/base.qcow2" 0x11 0 4M
  p_define "$dom" "$d/base.qcow2"
  it_start "$dom"
  p_snap "$dom" S1 "$d/s1.qcow2"
  it_guest_write "$dom" 0x22 4M 16M
  p_res INFO "chain: $(p_chain "$dom"); persistent: $(p_chain "$dom" --inactive)"
  qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 "$e/dest.qcow2" $SIZE
  p_events_start "$dom"
  t0=$(it_now_ms)
  virsh -c "$IT_URI" blockcopy "$dom" vda "$e/dest.qcow2" --format qcow2 --shallow --reuse-external \
    --transient-job --pivot --wait --bandwidth 2 >"$T/p3.out" 2>&1 &
  bg=$!
  sleep 0.3
  p_res INFO "job while guest writes: $(it_virsh blockjob "$dom" vda --info 2>&1 | tr '\n' ' ')"
  p_res INFO "files QEMU has open while the copy runs: $(p_open_files "$dom" "$T" | tr '\n' ' ')"
  it_guest_write "$dom" 0x44 20M 2M
  it_guest_write "$dom" 0x55 4M 1M
  wait "$bg" && x=0 || x=$?
  t0=$(($(it_now_ms) - t0))
  p_events_stop
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockcopy --shallow --reuse-external --transient-job --pivot --wait: rc $x in $t0 ms: $(tr '\n' ' ' <"$T/p3.out")"
  p_events "$dom" | tee -a "$RES"
  p_check "domblklist shows DEST" test "$(it_domblk "$dom" vda)" = "$e/dest.qcow2"
  p_res INFO "live chain: $(p_chain "$dom")"
  out=$(p_chain "$dom" --inactive)
  p_res INFO "dumpxml --inactive chain: $out"
  p_check "persistent definition names DEST (inactive top was the live top)" test "${out%% *}" = "$e/dest.qcow2"
  p_check "guest reads base 0x11 after the pivot (frozen file opened twice? R1)" p_guest_read "$dom" 0x11 0 4M
  p_check "guest reads 0x55/0x22/0x44 after the pivot" \
    eval 'p_guest_read "$dom" 0x55 4M 1M && p_guest_read "$dom" 0x22 5M 15M && p_guest_read "$dom" 0x44 20M 2M'
  p_check "DEST's chain (qemu-io) reads 0x11 0x55 0x22 0x44" \
    eval 'p_pat "$e/dest.qcow2" 0x11 0 4M && p_pat "$e/dest.qcow2" 0x55 4M 1M && p_pat "$e/dest.qcow2" 0x22 5M 15M && p_pat "$e/dest.qcow2" 0x44 20M 2M'
  it_guest_write "$dom" 0x66 30M 1M
  p_check "guest writes after the pivot land in DEST" p_pat "$e/dest.qcow2" 0x66 30M 1M
  p_res INFO "files of the old chain QEMU has open: $(p_open_files "$dom" "$d" | tr '\n' ' ')"
  p_res INFO "owner of base.qcow2 / s1.qcow2 / dest.qcow2: $(stat -c %U "$d/base.qcow2" "$d/s1.qcow2" "$e/dest.qcow2" | tr '\n' ' ')"
  # R4: the definition libvirt saved is used at the next start
  it_destroy "$dom"
  out=$(it_virsh start "$dom" 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "destroy + start after the pivot: rc $x $(echo "$out" | tr '\n' ' '); chain $(p_chain "$dom")"
  p_check "after restart guest reads 0x66 and 0x11" eval 'p_guest_read "$dom" 0x66 30M 1M && p_guest_read "$dom" 0x11 0 4M'
}

# probe 3b: the same copy when the persistent definition's top is NOT the
# live top (design §0.4: libvirt then leaves the definition alone)
probe3b() {
  local dom=$IT_PREFIX-p3b d e out x
  PROBE=3b
  d=$(it_tmpdir)
  e=$(it_tmpdir)
  it_make_image "$d/base.qcow2" $SIZE
  it_write_pattern "$d/base.qcow2" 0x11 0 4M
  it_make_image "$d/other.qcow2" $SIZE "$d/base.qcow2"
  p_define "$dom" "$d/base.qcow2"
  it_start "$dom"
  p_snap "$dom" S1 "$d/s1.qcow2"
  it_guest_write "$dom" 0x22 4M 4M
  # the persistent definition now names other.qcow2 (a redefine while running)
  it_domain_xml "$dom" "$d/other.qcow2" |
    sed "s#<name>.*</name>#&<uuid>$(it_virsh domuuid "$dom" | sed '/^$/d')</uuid>#" >"$T/$dom-other.xml"
  it_virsh define "$T/$dom-other.xml" >/dev/null
  p_res INFO "live top $(it_domblk "$dom" vda); persistent chain: $(p_chain "$dom" --inactive)"
  qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 "$e/dest.qcow2" $SIZE
  out=$(it_virsh blockcopy "$dom" vda "$e/dest.qcow2" --format qcow2 --shallow --reuse-external \
    --transient-job --pivot --wait 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockcopy --shallow --reuse-external --pivot: rc $x $(echo "$out" | tr '\n' ' ')"
  p_check "domblklist shows DEST" test "$(it_domblk "$dom" vda)" = "$e/dest.qcow2"
  out=$(p_chain "$dom" --inactive)
  p_check "persistent definition left alone (still other.qcow2): $out" test "${out%% *}" = "$d/other.qcow2"
}

# ---- probe 4: finish = abort of a READY copy without pivot -------------------

probe4() {
  local dom=$IT_PREFIX-p4 d e out x t0 pid
  PROBE=4
  d=$(it_tmpdir)
  e=$(it_tmpdir)
  it_make_image "$d/base.qcow2" $SIZE
  it_write_pattern "$d/base.qcow2" 0x11 0 4M
  p_define "$dom" "$d/base.qcow2"
  it_start "$dom"
  it_guest_write "$dom" 0x22 4M 8M
  # flatten: DEST without backing (design: finish is refused for shallow)
  qemu-img create -q -f qcow2 "$e/dest.qcow2" $SIZE
  p_events_start "$dom"
  out=$(it_virsh blockcopy "$dom" vda "$e/dest.qcow2" --format qcow2 --reuse-external \
    --transient-job --wait 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockcopy --reuse-external --transient-job --wait (no pivot): rc $x $(echo "$out" | tr '\n' ' ')"
  p_check "mirror ready" p_wait_ready "$dom"
  it_guest_write "$dom" 0x33 12M 4M # mirrored write, before finish
  t0=$(it_now_ms)
  out=$(it_virsh blockjob "$dom" vda --abort 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockjob --abort of the READY copy: rc $x in $(($(it_now_ms) - t0)) ms $(echo "$out" | tr '\n' ' ')"
  p_res INFO "blockjob --info after: $(it_virsh blockjob "$dom" vda --info 2>&1 | tr '\n' ' ')"
  it_guest_write "$dom" 0x44 20M 1M # after finish: must not reach DEST
  p_events_stop
  p_res INFO "events:"
  p_events "$dom" | tee -a "$RES"
  p_check "event after finish is CANCELED (design §0.1)" grep -qi 'block.*cancel' "$T/events-$dom"
  p_check "domblklist still the source" test "$(it_domblk "$dom" vda)" = "$d/base.qcow2"
  pid=$(p_qemu_pid "$dom")
  p_check "DEST is no longer open by QEMU" test -z "$(p_open_files "$dom" "$e")"
  out=$(qemu-img check -f qcow2 "$e/dest.qcow2" 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "qemu-img check DEST: rc $x $(echo "$out" | tr '\n' ' ')"
  p_check "DEST has 0x11 0x22 and the write made before finish (0x33)" \
    eval 'p_pat "$e/dest.qcow2" 0x11 0 4M && p_pat "$e/dest.qcow2" 0x22 4M 8M && p_pat "$e/dest.qcow2" 0x33 12M 4M'
  p_check "DEST does not have the write made after finish" p_pat "$e/dest.qcow2" 0x00 20M 1M
}

# ---- probe 5: the `chain` mode (deferred backing) -----------------------------

probe5() {
  local dom=$IT_PREFIX-p5 d e out x bg t0 f
  PROBE=5
  d=$(it_tmpdir)
  e=$(it_tmpdir)
  it_make_image "$d/base.qcow2" $SIZE
  it_write_pattern "$d/base.qcow2" 0x11 0 4M
  p_define "$dom" "$d/base.qcow2"
  it_start "$dom"
  p_snap "$dom" S1 "$d/s1.qcow2"
  it_guest_write "$dom" 0x22 4M 8M
  p_snap "$dom" S2 "$d/s2.qcow2"
  it_guest_write "$dom" 0x33 12M 4M
  p_res INFO "chain: $(p_chain "$dom")"
  # the destination chain, empty, before the copy starts
  qemu-img create -q -f qcow2 "$e/base.qcow2" $SIZE
  qemu-img create -q -f qcow2 -b "$e/base.qcow2" -F qcow2 "$e/s1.qcow2" $SIZE
  qemu-img create -q -f qcow2 -b "$e/s1.qcow2" -F qcow2 "$e/s2.qcow2" $SIZE
  p_events_start "$dom"
  out=$(it_virsh blockcopy "$dom" vda "$e/s2.qcow2" --format qcow2 --shallow --reuse-external \
    --transient-job --wait 2>&1) && x=0 || x=$?
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockcopy --shallow --reuse-external --transient-job --wait into the empty copy chain: rc $x $(echo "$out" | tr '\n' ' ')"
  p_res INFO "live XML <mirror>: $(it_virsh dumpxml "$dom" | sed -n '/<mirror/,/<\/mirror>/p' | tr -s ' \n' ' ')"
  p_res INFO "files of the copy dir QEMU has open while mirroring: $(p_open_files "$dom" "$e" | tr '\n' ' ')"
  it_guest_write "$dom" 0x44 20M 2M # mirrored
  # fill the frozen copies while the mirror runs, bottom first (vdsm's way)
  out=$(qemu-img convert -n -f qcow2 -O qcow2 "$d/base.qcow2" "$e/base.qcow2" 2>&1) && x=0 || x=$?
  if [ $x != 0 ]; then
    p_res INFO "convert base without -U: rc $x $(echo "$out" | tr '\n' ' '); retrying with -U"
    out=$(qemu-img convert -U -n -f qcow2 -O qcow2 "$d/base.qcow2" "$e/base.qcow2" 2>&1) && x=0 || x=$?
  fi
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "qemu-img convert -n base -> copy while mirroring: rc $x $(echo "$out" | tr '\n' ' ')"
  out=$(qemu-img convert -n -f qcow2 -O qcow2 -B "$e/base.qcow2" -F qcow2 "$d/s1.qcow2" "$e/s1.qcow2" 2>&1) && x=0 || x=$?
  if [ $x != 0 ]; then
    p_res INFO "convert s1 without -U: rc $x $(echo "$out" | tr '\n' ' '); retrying with -U"
    out=$(qemu-img convert -U -n -f qcow2 -O qcow2 -B "$e/base.qcow2" -F qcow2 "$d/s1.qcow2" "$e/s1.qcow2" 2>&1) && x=0 || x=$?
  fi
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "qemu-img convert -n -B s1 -> copy while mirroring: rc $x $(echo "$out" | tr '\n' ' ')"
  for f in base s1; do
    p_res INFO "$f: source alloc $(p_blocks "$d/$f.qcow2"), copy alloc $(p_blocks "$e/$f.qcow2")"
  done
  p_check "copy of s1 holds only s1's data (0x22 via copy chain, base region 0x11)" \
    eval 'p_pat "$e/s1.qcow2" 0x22 4M 8M && p_pat "$e/s1.qcow2" 0x11 0 4M'
  p_check "mirror ready" p_wait_ready "$dom"
  t0=$(it_now_ms)
  out=$(it_virsh blockjob "$dom" vda --pivot 2>&1) && x=0 || x=$?
  t0=$(($(it_now_ms) - t0))
  p_events_stop
  p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "blockjob --pivot: rc $x in $t0 ms $(echo "$out" | tr '\n' ' ')"
  p_events "$dom" | tee -a "$RES"
  out=$(p_chain "$dom")
  p_check "live chain is the copies: $out" eval 'case "$out" in "$e/s2.qcow2 <- $e/s1.qcow2"*"<- $e/base.qcow2"*) [ "${out//$d\//}" = "$out" ] ;; *) false ;; esac'
  p_res INFO "persistent chain: $(p_chain "$dom" --inactive)"
  p_check "guest reads 0x11 0x22 0x33 0x44 from the new chain" \
    eval 'p_guest_read "$dom" 0x11 0 4M && p_guest_read "$dom" 0x22 4M 8M && p_guest_read "$dom" 0x33 12M 4M && p_guest_read "$dom" 0x44 20M 2M'
  p_check "copy chain (qemu-io) reads 0x11 0x22 0x33 0x44" \
    eval 'p_pat "$e/s2.qcow2" 0x11 0 4M && p_pat "$e/s2.qcow2" 0x22 4M 8M && p_pat "$e/s2.qcow2" 0x33 12M 4M && p_pat "$e/s2.qcow2" 0x44 20M 2M'
  out=$(p_open_files "$dom" "$d")
  p_res INFO "old-chain files QEMU still has open: '${out:-none}'"
  p_check "no old-chain file open by QEMU" test -z "$out"
  p_res INFO "copy files QEMU has open: $(p_open_files "$dom" "$e" | tr '\n' ' ')"
  for f in base s1 s2; do
    out=$(qemu-img check -U -f qcow2 "$e/$f.qcow2" 2>&1) && x=0 || x=$?
    p_res "$([ $x = 0 ] && echo PASS || echo FAIL)" "qemu-img check -U copy $f: rc $x"
  done
  it_guest_write "$dom" 0x55 30M 1M
  p_check "guest writes land in the copy top" p_pat "$e/s2.qcow2" 0x55 30M 1M
  p_res INFO "snapshot <disks> sources after the pivot (libvirt does not retarget): S1 $(it_virsh snapshot-dumpxml "$dom" S1 | grep -o "source file='[^']*'" | head -1), S2 $(it_virsh snapshot-dumpxml "$dom" S2 | grep -o "source file='[^']*'" | head -1)"
}

# ---- main --------------------------------------------------------------------

run() { # run N FUNC — the probe in a subshell: a failure ends only it
  local rc
  echo "==== probe $1 ===="
  set +e
  (
    set -e
    EVPID=""
    trap '[ -z "$EVPID" ] || kill "$EVPID" 2>/dev/null' EXIT
    "$2"
  )
  rc=$?
  set -e
  [ "$rc" = 0 ] || printf 'P%s ABORTED (status %s): see the output above\n' "$1" "$rc" | tee -a "$RES"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(1 3 4 5)
for n in "${want[@]}"; do
  case "$n" in
    1 | 2) run 1-2 probe12 ;;
    3) run 3 probe3; run 3b probe3b ;;
    4) run 4 probe4 ;;
    5) run 5 probe5 ;;
    *) it_fail "no probe $n" ;;
  esac
done
