#!/usr/bin/env bash
# offline_concurrent.sh — changes to two disks of one shut-off domain at
# the same time: each offline merge rewrites the domain's definition
# (read the inactive XML, qemu-img commit, define), and an offline mkdir
# has libvirt rewrite it. One change must not put back the other disk's
# old source (a file chainfs then deletes as merged: the domain could not
# start). A domain with disks vda and vdb, each with three snapshots made
# while it ran (libvirt then writes the chain into the inactive XML as
# <backingStore>, which a middle merge's define drops), each layer with
# its own pattern (16 MiB, so that qemu-img commit takes a while; 64 MiB
# more in the layers merged while a mkdir runs); then,
# shut off, rounds of two changes started together:
#   1. rmdir + rmdir, both middle layers (the definition still has the
#      <backingStore> chains);
# then two more snapshots on each disk, made while shut off, and:
#   2. rmdir + rmdir, both active layers;
#   3. rmdir of vda's active layer + rmdir of a middle layer of vdb;
#   4. rmdir of vdb's active layer, and while its qemu-img commit runs a
#      mkdir on vda;
#   5. the same with the disks swapped;
#   6. rmdir + rmdir, both active layers again;
# after each: `cat wait` on both disks (both jobs completed), and for each
# disk the inactive definition names the expected file as its source
# (domblklist --inactive), every file it names (source and <backingStore>)
# exists and is in the expected chain, in order; the chain of qemu-img info
# --backing-chain and chainfs's chain are the expected layers, and every
# pattern written reads back. Finally the domain starts on those files.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-offconc"
MB=$((1024 * 1024))
LAYER=$((16 * MB))
it_make_image "$T/vda.qcow2" 256M
it_make_image "$T/vdb.qcow2" 256M
it_write_pattern "$T/vda.qcow2" 0xa0 0 "$LAYER"
it_write_pattern "$T/vdb.qcow2" 0xb0 0 "$LAYER"
it_define "$D" "$T/vda.qcow2" "$T/vdb.qcow2"

# Per disk: the expected chain, active layer first, and the patterns
# written ("PATTERN OFFSET LEN"). Layer k of a disk holds pattern 0x?k at
# k * 16 MiB; a merge never loses one, so the list only grows.
# shellcheck disable=SC2034 # read through namerefs (local -n)
CHAIN_vda=("$T/vda.qcow2")
CHAIN_vdb=("$T/vdb.qcow2")
# shellcheck disable=SC2034 # read through namerefs
PATS_vda=("0xa0 0 $LAYER")
# shellcheck disable=SC2034 # read through namerefs
PATS_vdb=("0xb0 0 $LAYER")
declare -A FILE_OF=() # snapshot name -> its overlay file

inactive_src() {
  it_virsh domblklist --inactive "$D" | awk -v dev="$1" '$1 == dev { print $2 }'
}

# inactive_files DISK — every file the inactive definition names for DISK:
# its source, then those of its <backingStore> chain (libvirt writes one
# there after a snapshot of the running domain; a define can carry an old
# one, naming a merged file, and libvirt then starts on it).
inactive_files() {
  it_virsh dumpxml --inactive "$D" | python3 -c '
import sys, xml.etree.ElementTree as ET
for disk in ET.parse(sys.stdin).getroot().iter("disk"):
    t = disk.find("target")
    if t is None or t.get("dev") != sys.argv[1]:
        continue
    node = disk
    while node is not None:
        s = node.find("source")
        if s is None or s.get("file") is None:
            break
        print(s.get("file"))
        node = node.find("backingStore")
' "$1"
}

# add_layer DISK NAME K RUNNING — mkdir DISK/snapshots/NAME, then write
# layer K's pattern into the new overlay (by the guest if RUNNING).
add_layer() {
  local disk=$1 name=$2 k=$3 running=$4
  mkdir "$MNT/$D/$disk/snapshots/$name" || it_fail "mkdir $disk/snapshots/$name"
  layer_added "$disk" "$name" "$k" "$running"
}

# layer_added DISK NAME K RUNNING — the bookkeeping and pattern of a
# layer NAME that mkdir just made.
layer_added() {
  local disk=$1 name=$2 k=$3 running=$4 src pat dev
  local -n chain="CHAIN_$disk" pats="PATS_$disk"
  if [ "$running" = yes ]; then src=$(it_domblk "$D" "$disk"); else src=$(inactive_src "$disk"); fi
  [ "$src" != "${chain[0]}" ] || it_fail "mkdir $disk/snapshots/$name did not change the disk's source"
  FILE_OF[$name]=$src
  chain=("$src" "${chain[@]}")
  pat=$(printf '0x%s%x' "${disk:2:1}" "$k")
  if [ "$running" = yes ]; then
    dev=virtio-disk0
    [ "$disk" = vdb ] && dev=virtio-disk1
    it_guest_write "$D" "$pat" $((k * LAYER)) "$LAYER" "$dev"
  else
    it_write_pattern "$src" "$pat" $((k * LAYER)) "$LAYER"
  fi
  pats+=("$pat $((k * LAYER)) $LAYER")
}

# bulk DISK — 64 MiB more (pattern 0x?f at 160 MiB) into DISK's active
# layer: its merge takes longer, for a mkdir to run during it.
bulk() {
  local disk=$1 pat
  # shellcheck disable=SC2178 # namerefs to arrays
  local -n chain="CHAIN_$disk" pats="PATS_$disk"
  pat=$(printf '0x%sf' "${disk:2:1}")
  it_write_pattern "${chain[0]}" "$pat" $((160 * MB)) $((64 * MB))
  pats+=("$pat $((160 * MB)) $((64 * MB))")
}

# merged DISK NAME — NAME's layer left DISK's expected chain.
merged() {
  local disk=$1 name=$2 f out=()
  # shellcheck disable=SC2178 # a nameref to an array
  local -n chain="CHAIN_$disk"
  for f in "${chain[@]}"; do
    [ "$f" = "${FILE_OF[$name]}" ] || out+=("$f")
  done
  [ "${#out[@]}" -lt "${#chain[@]}" ] || it_fail "test bug: $name is not in $disk's chain"
  chain=("${out[@]}")
}

# check_disk DISK — the definition, the files, chainfs and the data agree
# with the expected chain.
check_disk() {
  local disk=$1 src p named f
  # shellcheck disable=SC2178 # namerefs to arrays
  local -n chain="CHAIN_$disk" pats="PATS_$disk"
  src=$(inactive_src "$disk")
  it_assert_eq "${chain[0]}" "$src" "the inactive definition names $disk's expected active layer"
  named=$(inactive_files "$disk")
  while IFS= read -r f; do
    [ -e "$f" ] || it_fail "the inactive definition names $f for $disk, a file that does not exist"
  done <<<"$named"
  # what it names of the chain, if more than the source, is the chain's top
  it_assert_eq "$named" "$(printf '%s\n' "${chain[@]}" | head -n "$(wc -l <<<"$named")")" \
    "the inactive definition names $disk's files that exist, in the chain's order"
  it_assert_eq "$(printf '%s\n' "${chain[@]}")" "$(it_chain "$src")" "qemu-img: the backing chain of $disk"
  it_check_chain "$D" "$disk" "${chain[@]}"
  for p in "${pats[@]}"; do
    # shellcheck disable=SC2086 # "PATTERN OFFSET LEN"
    it_check_pattern "$src" $p
  done
}

wait_both() {
  local disk out
  for disk in vda vdb; do
    out=$(it_wait_job "$D" "$disk")
    it_log "cat $disk/wait:"$'\n'"$out"
    it_assert_eq "completed" "$(it_job_field "$D" "$disk" state)" "job.json: the job on $disk completed"
  done
}

check_both() {
  check_disk vda
  check_disk vdb
}

shutoff() { grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"; }

# --- the chains ---------------------------------------------------------------------
it_start "$D"
it_mount
it_wait_dom "$D"
for k in 1 2 3; do
  add_layer vda "a$k" "$k" yes
  add_layer vdb "b$k" "$k" yes
done
it_destroy "$D"
it_wait_until 5 "chainfs sees the domain shut off" shutoff
it_log "the inactive definition names for vda: $(inactive_files vda | tr '\n' ' ')"
check_both

# rmdir_pair NAME_A NAME_B — rmdir vda's NAME_A and vdb's NAME_B together.
# Every merge here commits (`merge NAME commit` in ctl): the layers are
# the same size, and the cost rule of issue 8 would pull some of the
# active ones (kept apart from the definition race this script checks).
rmdir_pair() {
  local ra=0 rb=0
  it_ctl "$D" vda "merge $1 commit" || it_fail "echo 'merge $1 commit' > vda/ctl"
  it_ctl "$D" vdb "merge $2 commit" || it_fail "echo 'merge $2 commit' > vdb/ctl"
  rmdir "$MNT/$D/vda/snapshots/$1" & pa=$!
  rmdir "$MNT/$D/vdb/snapshots/$2" & pb=$!
  wait "$pa" || ra=$?
  wait "$pb" || rb=$?
  [ "$ra" -eq 0 ] || it_fail "rmdir vda/snapshots/$1"
  [ "$rb" -eq 0 ] || it_fail "rmdir vdb/snapshots/$2"
  wait_both
  merged vda "$1"
  merged vdb "$2"
  check_both
}

# --- 1. both middle layers (made while running) ------------------------------------
it_log "round 1: rmdir a2 (middle) & rmdir b2 (middle)"
rmdir_pair a2 b2

for k in 4 5; do
  add_layer vda "a$k" "$k" no
  add_layer vdb "b$k" "$k" no
  [ "$k" -ne 4 ] || bulk vdb # merged in round 4
done
check_both

# --- 2. both active layers ----------------------------------------------------------
it_log "round 2: rmdir a5 (active) & rmdir b5 (active)"
rmdir_pair a5 b5

# --- 3. an active layer and a middle layer ------------------------------------------
it_log "round 3: rmdir a4 (active) & rmdir b3 (middle)"
rmdir_pair a4 b3

# merge_runs DISK SNAP — wait (up to 10 s) until the merge of SNAP on DISK
# is past its start: its qemu-img commit runs (or it has already ended).
# (`job` shows the disk's previous job, completed, until this one starts.)
merge_runs() {
  local i
  for ((i = 0; i < 2000; i++)); do
    awk -v snap="$2" '$1 == "snapshot:" && $2 == snap { s = 1 }
      $1 == "state:" && $2 ~ /^(running|cleanup|completed|failed)$/ { r = 1 }
      END { exit !(s && r) }' "$MNT/$D/$1/job" 2>/dev/null && return 0
    sleep 0.005
  done
  it_fail "the merge of $2 on $1 did not start within 10 s"
}

# mkdir_during DISK NAME OTHER SNAP — rmdir OTHER/snapshots/SNAP, and once
# its merge runs (qemu-img commit, after it read the definition), mkdir
# DISK/snapshots/NAME: libvirt changes the definition during the merge.
mkdir_during() {
  local rr=0
  it_ctl "$D" "$3" "merge $4 commit" || it_fail "echo 'merge $4 commit' > $3/ctl"
  rmdir "$MNT/$D/$3/snapshots/$4" & pb=$!
  merge_runs "$3" "$4"
  sleep 0.02 # it read the definition as it started; qemu-img takes ~100 ms
  mkdir "$MNT/$D/$1/snapshots/$2" || it_fail "mkdir $1/snapshots/$2"
  if grep -q '^state: *running' "$MNT/$D/$3/job"; then
    it_log "the merge on $3 still ran after the mkdir"
  else
    it_log "the merge on $3 ended before the mkdir did"
  fi
  wait "$pb" || rr=$?
  [ "$rr" -eq 0 ] || it_fail "rmdir $3/snapshots/$4"
  wait_both
}

# --- 4. mkdir on vda, rmdir of vdb's active layer -----------------------------------
it_log "round 4: rmdir b4 (active), during it mkdir a6"
mkdir_during vda a6 vdb b4
layer_added vda a6 6 no
bulk vda # merged in round 5
merged vdb b4
check_both

# --- 5. rmdir of vda's active layer, mkdir on vdb -----------------------------------
it_log "round 5: rmdir a6 (active), during it mkdir b6"
mkdir_during vdb b6 vda a6
merged vda a6
layer_added vdb b6 6 no
check_both

# --- 6. both active layers again ----------------------------------------------------
it_log "round 6: rmdir a3 (active) & rmdir b6 (active)"
rmdir_pair a3 b6

it_assert_eq "a1 b1" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "libvirt lists the snapshots left, a1 and b1"
it_start "$D"
it_assert_eq "${CHAIN_vda[0]}" "$(it_domblk "$D" vda)" "the domain started, vda on its expected layer"
it_assert_eq "${CHAIN_vdb[0]}" "$(it_domblk "$D" vdb)" "the domain started, vdb on its expected layer"
