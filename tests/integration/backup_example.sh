#!/usr/bin/env bash
# backup_example.sh — examples/backup.sh on a running two-disk domain
# (issue 9 §5.1, issue 10 §6: one domain-level snapshot per domain):
#  1. a backup (no guest agent: the summary says `quiesced: no` and why,
#     and it goes on crash-consistent), on a terminal (pv's progress bar
#     when pv is installed), the guest writing to both disks while the
#     snapshot exists: one snapshot name on both disks, each DISK.raw
#     equals the disk as it was before the backup (qemu-img convert of the
#     whole chain), the checksum file checks, chain.json and info.json are
#     kept; no backup-* snapshot is left, in the domain's or a disk's
#     snapshots/ or in libvirt, each chain has its old files again, and
#     the guest's writes made meanwhile are in the disks;
#  1b. -q without a guest agent: not quiesced, so nothing is backed up,
#     exit 1, the snapshot merged back;
#  2. a copy that fails (a directory where vdb.raw.part goes): exit 1, the
#     summary names vdb, vda is backed up, the snapshot merged back;
#  3. SIGTERM while vda's disk.raw is open (a cp that holds it open a
#     while first): the reader is stopped and both snapshots are merged
#     back (no EBUSY left over);
#  4. a restore as examples/restore.md says: both backups checked and
#     converted to qcow2, each identical to its disk at the backup
#     (qemu-img compare); the domain shut off, vda pointed at its new
#     image (its old <backingStore> dropped), the old snapshot's metadata
#     dropped; vdb's backup written over its one file (convert -n); the
#     guest reads the backed-up patterns on both, and zeros where the old
#     disks got data after the backup; vda's old files are kept.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
command -v script >/dev/null 2>&1 || it_skip "script (util-linux) is not installed"

BACKUP="$IT_ROOT/examples/backup.sh"
D="$IT_PREFIX-backup"
M=1048576

# vda: base (0x11) <- l1 (0x12) <- s1's overlay (0x13, by the guest)
# vdb: base (0x21) <- the guest's writes (0x22)
it_make_image "$T/vda.qcow2" 128M
it_write_pattern "$T/vda.qcow2" 0x11 0 32M
it_make_image "$T/vda.l1.qcow2" 128M "$T/vda.qcow2"
it_write_pattern "$T/vda.l1.qcow2" 0x12 32M 8M
it_make_image "$T/vdb.qcow2" 128M
it_write_pattern "$T/vdb.qcow2" 0x21 0 24M
it_define "$D" "$T/vda.l1.qcow2" "$T/vdb.qcow2"
it_start "$D"
it_mount
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir vda/snapshots/s1"
it_guest_write "$D" 0x13 40M 4M virtio-disk0
it_guest_write "$D" 0x22 24M 4M virtio-disk1

declare -A chain0
for disk in vda vdb; do
  chain0[$disk]=$(it_chain "$(it_domblk "$D" "$disk")" | tr '\n' ' ')
  # what each backup must hold: the whole chain as it is now (the guest
  # writes nothing until the writer below starts)
  qemu-img convert -U -O raw "$(it_domblk "$D" "$disk")" "$T/exp1_$disk.raw" ||
    it_fail "qemu-img convert of $disk's chain"
done
it_log "chains: vda ${chain0[vda]}; vdb ${chain0[vdb]}"

# backups DISK — the backup-* snapshots in DISK's snapshots/
backups() {
  local s
  for s in "$MNT/$D/$1/snapshots"/backup-*; do
    [ -e "$s" ] && printf '%s\n' "${s##*/}"
  done
  return 0
}
both_snapshotted() { [ -n "$(backups vda)" ] && [ -n "$(backups vdb)" ]; }

# check_clean — no backup-* snapshot anywhere, the chains as before.
check_clean() {
  local disk s
  for s in "$MNT/$D/snapshots"/backup-*; do
    [ -e "$s" ] && it_fail "$1: ${s##*/} left in the domain's snapshots/"
  done
  for disk in vda vdb; do
    it_assert_eq "" "$(backups "$disk")" "$1: no backup-* in $disk/snapshots/"
    it_assert_eq "${chain0[$disk]}" "$(it_chain "$(it_domblk "$D" "$disk")" | tr '\n' ' ')" \
      "$1: $disk's chain has its old files again"
  done
  it_assert_eq "s1" "$(it_snapshot_names "$D")" "$1: libvirt lists no backup-* snapshot"
}

# ---- 1. a backup, the guest writing meanwhile ---------------------------------
out1="$T/out1"
# the guest's writes go to 100M..104M of both disks, only once both
# snapshots exist: into their overlays, never into what is copied
touch "$T/writing" "$T/writes"
(
  until both_snapshotted; do
    [ -e "$T/writing" ] || exit 0
    sleep 0.05
  done
  n=0
  while [ -e "$T/writing" ]; do
    for dev in virtio-disk0 virtio-disk1; do
      if out=$(virsh -q -c "$IT_URI" qemu-monitor-command "$D" --hmp \
        "qemu-io -d /machine/peripheral/$dev/virtio-backend \"write -P 0x7f $((100 + n % 4))M 1M\"" 2>&1); then
        echo "$dev" >>"$T/writes"
      else
        echo "$dev: $out" >>"$T/writer.err"
      fi
    done
    n=$((n + 1))
  done
) &
writer=$!
# on a terminal (script(1)), as a person runs it: the progress display runs
status=0
# (-c: an old caller's option, accepted and ignored)
script -qec "bash '$BACKUP' -m '$MNT' -o '$out1' -c '$IT_URI' '$D'" /dev/null >"$T/run1.out" 2>&1 ||
  status=$?
writes_during=$(wc -l <"$T/writes")
sed 's/\r$//' "$T/run1.out" | tr '\r' '\n' | sed 's/^/  | /' >&2
it_assert_eq 0 "$status" "backup.sh exits 0"
[ "$writes_during" -ge 1 ] || it_fail "the guest wrote nothing while backup.sh's snapshots existed"
# at least one more round, so that every 1 MiB of the region was written
writes_at_least() { [ "$(wc -l <"$T/writes")" -ge "$1" ]; }
it_poll 60 writes_at_least $((writes_during + 8)) ||
  it_fail "the guest writer did not write both disks' region: $(wc -l <"$T/writes") writes, $writes_during while backup.sh ran; errors: $(tail -n 3 "$T/writer.err" 2>/dev/null)"
rm -f "$T/writing"
wait "$writer"
it_log "ok: the guest wrote $writes_during MiB while backup.sh ran"
run1=$(sed 's/\r$//' "$T/run1.out" | tr '\r' '\n')
grep -q "^$D: snapshot backup-[0-9TZ]*-[0-9]* quiesced: no (.\+)$" <<<"$run1" ||
  it_fail "the summary does not say the snapshot was not quiesced, and why"
grep -q "^$D: snapshot backup-[0-9TZ]*-[0-9]* merged back$" <<<"$run1" ||
  it_fail "the summary does not say the snapshot was merged back"
[ "$(jq -r .name "$out1/$D/vda.info.json")" = "$(jq -r .name "$out1/$D/vdb.info.json")" ] ||
  it_fail "vda and vdb were not backed up from one snapshot"
it_assert_eq domain "$(jq -r .scope "$out1/$D/vda.info.json")" "the backup's snapshot is domain-level"
it_assert_contains "$run1" "$D/vda: backed up to $out1/$D/vda.raw" "the summary: vda backed up"
it_assert_contains "$run1" "$D/vdb: backed up to $out1/$D/vdb.raw" "the summary: vdb backed up"
for disk in vda vdb; do
  cmp "$T/exp1_$disk.raw" "$out1/$D/$disk.raw" || it_fail "$disk.raw differs from the disk before the backup"
  it_log "ok: $disk.raw equals the disk as it was; the writes after the snapshot are absent"
  (cd "$out1/$D" && sha256sum -c --quiet "$disk.raw.sha256") || it_fail "sha256sum -c $disk.raw.sha256"
  name=$(jq -r .name "$out1/$D/$disk.info.json")
  it_assert_eq "$(it_domblk "$D" "$disk")" "$(jq -r .frozen "$out1/$D/$disk.info.json")" \
    "$disk.info.json: the snapshot froze the disk's active file"
  it_assert_eq "$name" "$(jq -r '.layers[0].snapshot' "$out1/$D/$disk.chain.json")" \
    "$disk.chain.json: the chain with the backup's snapshot on top"
  grep -q "disk.raw of $D/$disk $name closed: .* by pid [0-9]* cp" "$IT_LOG" ||
    it_fail "the chainfs log has no close of $name's disk.raw by cp"
  alloc=$(($(stat -c %b "$out1/$D/$disk.raw") * 512))
  [ "$alloc" -lt $((64 * M)) ] || it_fail "$disk.raw is not sparse: $alloc bytes allocated of 128 MiB"
  it_log "ok: $disk.raw is sparse ($alloc bytes allocated)"
done
it_assert_eq "" "$(find "$out1" -name '*.part')" "no .part file left"
# pv's frame: "DOM/vda: 29.2MiB 0:00:00 [0.00 B/s] [=>   ] 22%". These
# copies take a fraction of a second: cp may be done before pv draws.
if ! command -v pv >/dev/null 2>&1; then
  it_log "no pv here: no progress bar to look for"
elif grep -Eq "$D/vd[ab]: *[0-9.]+[KMGT]?i?B [0-9]+:[0-9:]+ \[" <<<"$run1"; then
  it_log "ok: pv drew the progress on the terminal"
else
  it_log "cp was done before pv drew a frame (not an error)"
fi
check_clean "backup"
# the writes made while the snapshots existed are in the disks
it_check_pattern "$(it_domblk "$D" vda)" 0x7f 100M 4M
it_check_pattern "$(it_domblk "$D" vdb)" 0x7f 100M 4M
it_check_pattern "$(it_domblk "$D" vda)" 0x13 40M 4M
it_check_pattern "$(it_domblk "$D" vdb)" 0x22 24M 4M

# refresh the expected content: the writer's region is part of it now
for disk in vda vdb; do
  qemu-img convert -U -O raw "$(it_domblk "$D" "$disk")" "$T/exp2_$disk.raw" ||
    it_fail "qemu-img convert of $disk's chain"
done

# ---- 1b. -q: no guest agent, so no quiesced snapshot: nothing backed up ----
outq="$T/outq"
status=0
bash "$BACKUP" -m "$MNT" -o "$outq" -q "$D" >"$T/runq.out" 2>"$T/runq.err" || status=$?
sed 's/^/  | /' "$T/runq.err" "$T/runq.out" >&2
it_assert_eq 1 "$status" "backup.sh -q exits 1 when the snapshot is not quiesced"
runq=$(cat "$T/runq.out")
for disk in vda vdb; do
  it_assert_contains "$runq" "$D/$disk: FAILED: not quiesced (-q)" "-q: $disk is not backed up"
done
grep -q "^$D: snapshot backup-[0-9TZ]*-[0-9]* merged back$" <<<"$runq" ||
  it_fail "-q: the snapshot was not reported merged back"
it_assert_eq "" "$(find "$outq" -type f)" "-q: no file written"
check_clean "-q"

# ---- 2. the copy of vdb fails ------------------------------------------------
out2="$T/out2"
mkdir -p "$out2/$D/vdb.raw.part" # a directory where the copy goes
status=0
bash "$BACKUP" -m "$MNT" -o "$out2" "$D" >"$T/run2.out" 2>"$T/run2.err" || status=$?
sed 's/^/  | /' "$T/run2.err" "$T/run2.out" >&2
[ "$status" -ne 0 ] || it_fail "backup.sh exits 0 although vdb's copy failed"
it_assert_eq 1 "$status" "backup.sh exits 1 when a copy failed"
run2=$(cat "$T/run2.out")
it_assert_contains "$run2" "$D/vdb: FAILED: cp: cannot overwrite directory" "the summary names vdb's failure and why"
it_assert_contains "$run2" "$D/vda: backed up" "vda is backed up all the same"
grep -q "^$D: snapshot backup-[0-9TZ]*-[0-9]* merged back$" <<<"$run2" ||
  it_fail "after the failure, the snapshot was not reported merged back"
cmp "$T/exp2_vda.raw" "$out2/$D/vda.raw" || it_fail "vda.raw of the failed run differs"
[ ! -e "$out2/$D/vdb.raw" ] || it_fail "vdb.raw exists although its copy failed"
[ -d "$out2/$D/vdb.raw.part" ] || it_fail "the directory in the way was removed"
check_clean "failed copy"

# ---- 3. SIGTERM while it runs --------------------------------------------------
out3="$T/out3"
# a cp that opens disk.raw, writes 1 MiB of the .part and holds disk.raw
# open a minute before copying
slow="$T/slowbin"
mkdir -p "$slow"
cat >"$slow/cp" <<EOF
#!/bin/bash
case "\${*: -2:1}" in
  */disk.raw)
    exec 3<"\${*: -2:1}" || exit 1
    head -c 1M <&3 >"\${*: -1}" || exit 1 # a first part of the copy
    touch "$T/cp-holds-disk.raw"
    sleep 60 3<&- &
    wait \$! ;;
esac
exec $(command -v cp) "\$@"
EOF
chmod +x "$slow/cp"
PATH="$slow:$PATH" bash "$BACKUP" -m "$MNT" -o "$out3" "$D" >"$T/run3.out" 2>"$T/run3.err" &
bpid=$!
it_wait_until 60 "backup.sh's cp opened vda's disk.raw" test -e "$T/cp-holds-disk.raw"
grep -q '^readers:.*backup-' "$MNT/$D/vda/job" || it_fail "job does not list the backup's reader"
it_log "ok: job lists the backup's reader: $(grep '^readers:' "$MNT/$D/vda/job")"
[ -f "$out3/$D/vda.raw.part" ] || it_fail "no vda.raw.part while the copy runs"
kill -TERM "$bpid"
status=0
wait "$bpid" || status=$?
sed 's/^/  | /' "$T/run3.err" "$T/run3.out" >&2
it_assert_eq 143 "$status" "backup.sh killed by SIGTERM exits 143"
run3=$(cat "$T/run3.out")
grep -q "^$D: snapshot backup-[0-9TZ]*-[0-9]* merged back$" <<<"$run3" ||
  it_fail "after SIGTERM, the snapshot was not reported merged back"
it_assert_contains "$run3" "$D/vda: FAILED: interrupted" "the summary says vda was not copied"
grep -q 'NOT merged back' <<<"$run3" && it_fail "after SIGTERM, a snapshot was not merged back"
it_assert_eq "" "$(find "$out3" -name '*.part' 2>/dev/null)" "no .part file left after SIGTERM"
check_clean "SIGTERM"

# ---- 4. restore vda as examples/restore.md says -------------------------------
it_destroy "$D"
it_wait_until 20 "chainfs sees the domain shut off" grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"
for disk in vda vdb; do
  (cd "$out1/$D" && sha256sum -c --quiet "$disk.raw.sha256") || it_fail "restore: the checksum of $disk.raw"
  qemu-img convert -f raw -O qcow2 "$out1/$D/$disk.raw" "$T/restored-$disk.qcow2" ||
    it_fail "restore: qemu-img convert of $disk.raw"
  out=$(qemu-img compare -f qcow2 -F raw "$T/restored-$disk.qcow2" "$T/exp1_$disk.raw" 2>&1) ||
    it_fail "restore: $disk's restored image differs from the disk at the backup: $out"
  it_log "ok: restore: $disk's restored image and the disk at the backup: $out"
done
restored="$T/restored-vda.qcow2"
if command -v virt-xml >/dev/null 2>&1; then
  # as restore.md: the old chain's <backingStore> goes, then the source
  virt-xml -c "$IT_URI" "$D" --edit --xml "xpath.delete=./devices/disk/target[@dev=\\'vda\\']/../backingStore" >/dev/null ||
    it_fail "restore: virt-xml xpath.delete of vda's backingStore"
  virt-xml -c "$IT_URI" "$D" --edit target=vda --disk "path=$restored,driver.type=qcow2" >/dev/null ||
    it_fail "restore: virt-xml --edit target=vda"
  it_log "restore: the disk pointed at the new image with virt-xml"
else
  it_virsh dumpxml --inactive --security-info "$D" >"$T/restore.xml"
  python3 - "$T/restore.xml" "$restored" <<'PY' || it_fail "restore: editing the XML"
import sys, xml.etree.ElementTree as ET
path, new = sys.argv[1], sys.argv[2]
tree = ET.parse(path)
for disk in tree.getroot().iter("disk"):
    if disk.find("target").get("dev") == "vda":
        disk.find("source").set("file", new)
        disk.find("driver").set("type", "qcow2")
        bs = disk.find("backingStore")
        if bs is not None:
            disk.remove(bs)
tree.write(path)
PY
  it_virsh define "$T/restore.xml" >/dev/null || it_fail "restore: virsh define"
  it_log "restore: the disk pointed at the new image with virsh define (no virt-xml here)"
fi
it_virsh snapshot-delete "$D" s1 --metadata >/dev/null || it_fail "restore: snapshot-delete s1 --metadata"
it_assert_eq "" "$(it_snapshot_names "$D")" "restore: no snapshot metadata names the old overlays"
# vdb as restore.md's 3b: one file, the same size: the backup written over it
it_assert_eq "$T/vdb.qcow2" "$(it_chain "$T/vdb.qcow2")" "restore: vdb is one file"
qemu-img convert -n -f raw -O qcow2 "$out1/$D/vdb.raw" "$T/vdb.qcow2" || it_fail "restore: qemu-img convert -n over vdb"
out=$(qemu-img compare -f qcow2 -F raw "$T/vdb.qcow2" "$T/exp1_vdb.raw" 2>&1) ||
  it_fail "restore: vdb written over differs from the disk at the backup: $out"
it_log "ok: restore: vdb written over with convert -n: $out"
it_start "$D"
it_assert_eq "$restored" "$(it_domblk "$D" vda)" "restore: vda runs on the restored image"
chain_is() { [ "$(jq -r '[.layers[].file] | join(" ")' "$MNT/$D/$1/chain.json")" = "$2" ]; }
it_poll 20 chain_is vda "$restored" ||
  it_fail "vda's chain in the mount is not the restored image alone: $(jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json")"
it_guest_check_pattern "$D" 0x11 0 32M virtio-disk0
it_guest_check_pattern "$D" 0x12 32M 8M virtio-disk0
it_guest_check_pattern "$D" 0x13 40M 4M virtio-disk0
# written after the backup: in the old chain, not in the restored disk
# (which would read it if the old chain were still its backing)
it_guest_check_pattern "$D" 0x00 100M 4M virtio-disk0
it_guest_check_pattern "$D" 0x21 0 24M virtio-disk1
it_guest_check_pattern "$D" 0x22 24M 4M virtio-disk1
it_guest_check_pattern "$D" 0x00 100M 4M virtio-disk1
for f in ${chain0[vda]}; do
  [ -e "$f" ] || it_fail "restore: the old chain's $f is gone"
done
it_log "ok: the old chain is left alone"
