#!/usr/bin/env bash
# aliases.sh — a file is one file however its path is spelled (issue 6,
# items 1 and 2). A base image shared by several chains must never be
# merged into, whether the chains reach it through "../", "./", a
# symlinked directory, "//" or "/./", or as two disks of one domain; and a
# snapshot overlay another domain backs onto must never be merged away.
# Each refusal is EBUSY, names the other user, and leaves the shared file
# as it was (qemu-img compare against a copy taken before).
#
# Domain A runs with vda: a1 -> ../img/base (relative, so libvirt spells it
# $T/a/../img/base.qcow2), vdb: a2 -> base2 and vdc: a3 -> base2. For each
# spelling, a shut-off domain B has one disk bS -> base spelled that way;
# rmdir of A's a1 (a live commit into base) and of B's bS (an offline
# commit into base) are both refused. Then rmdir of A's vdb a2 is refused
# because vdc uses base2 (item 2). Last, domain D's disk backs onto the
# overlay of A's snapshot s1: rmdir of s1 on A is refused, naming D.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

A="$IT_PREFIX-al-a"
mkdir -p "$T/img" "$T/a" "$T/b" "$T/c"
chmod 0755 "$T/img" "$T/a" "$T/b" "$T/c"
ln -s img "$T/lnk"
base="$T/img/base.qcow2"
base2="$T/img/base2.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x10 0 1M
it_make_image "$base2" 64M
it_write_pattern "$base2" 0x20 0 1M
qemu-img create -q -f qcow2 -b ../img/base.qcow2 -F qcow2 "$T/a/a1.qcow2" 64M ||
  it_fail "qemu-img create a1"
it_write_pattern "$T/a/a1.qcow2" 0x11 1M 1M
it_make_image "$T/a/a2.qcow2" 64M "$base2"
it_write_pattern "$T/a/a2.qcow2" 0x21 1M 1M
it_make_image "$T/a/a3.qcow2" 64M "$base2"
it_write_pattern "$T/a/a3.qcow2" 0x31 2M 1M
cp --sparse=always "$base" "$T/base.copy"
cp --sparse=always "$base2" "$T/base2.copy"

it_define "$A" "$T/a/a1.qcow2" "$T/a/a2.qcow2" "$T/a/a3.qcow2"
it_start "$A"
it_mount
it_wait_dom "$A"
it_assert_eq "a1" "$(it_snapshots "$A" vda)" "A/vda shows a1 (named after its file)"

# it_unchanged COPY FILE WHAT — FILE reads exactly as COPY does.
it_unchanged() {
  local out
  out=$(qemu-img compare -U -f qcow2 -F qcow2 "$1" "$2" 2>&1) ||
    it_fail "$3: qemu-img compare $(it_short "$1") $(it_short "$2"): $out"
  it_log "ok: $3 ($out)"
}

# it_refused DOM DISK NAME OTHER — rmdir is EBUSY, the job file names
# OTHER (the other user), the snapshot is still listed.
it_refused() {
  local dom=$1 disk=$2 name=$3 other=$4 err
  it_expect_errno EBUSY rmdir "$MNT/$dom/$disk/snapshots/$name"
  err=$(it_job_field "$dom" "$disk" error)
  it_assert_contains "$err" "$other" "$dom/$disk job names the other user $other: $err"
  it_assert_contains "$(it_snapshots "$dom" "$disk")" "$name" "$dom/$disk/snapshots/$name is still there"
}

declare -A spell=(
  [dotdot]="$T/b/b.qcow2|../img/base.qcow2"
  [dot]="$T/img/b-dot.qcow2|./base.qcow2"
  [symlink]="$T/c/b.qcow2|$T/lnk/base.qcow2"
  [slashslash]="$T/b/b-ss.qcow2|$T/img//base.qcow2"
  [slashdot]="$T/b/b-sd.qcow2|$T/img/./base.qcow2"
)
for s in dotdot dot symlink slashslash slashdot; do
  f=${spell[$s]%%|*}
  backing=${spell[$s]#*|}
  B="$IT_PREFIX-al-$s"
  qemu-img create -q -f qcow2 -b "$backing" -F qcow2 "$f" 64M ||
    it_fail "qemu-img create $f on $backing"
  it_write_pattern "$f" 0x40 3M 1M
  it_define "$B" "$f"
  it_wait_dom "$B"
  bname=$(it_snapshots "$B" vda)
  it_log "spelling $s: $(it_short "$f") backs onto $backing (snapshot $bname)"

  # A's live commit of a1 into base: B uses base
  it_refused "$A" vda a1 "$B"
  it_unchanged "$T/base.copy" "$base" "$s: base unchanged after rmdir on A"
  # B's offline commit of its overlay into base: A uses base
  it_refused "$B" vda "$bname" "$A"
  it_unchanged "$T/base.copy" "$base" "$s: base unchanged after rmdir on B"
  [ -e "$f" ] || it_fail "$s: B's overlay $f was deleted"
  it_check_pattern "$f" 0x40 3M 1M
  it_check_pattern "$f" 0x10 0 1M

  it_virsh undefine "$B" >/dev/null || it_fail "virsh undefine $B"
  it_wait_until 10 "$B leaves the mount" test ! -e "$MNT/$B"
done
it_check_pattern "$T/a/a1.qcow2" 0x11 1M 1M

# Item 2: two disks of one domain on one base.
it_refused "$A" vdb a2 "vdc"
it_unchanged "$T/base2.copy" "$base2" "base2 unchanged after rmdir of A/vdb/a2"
it_check_pattern "$T/a/a3.qcow2" 0x31 2M 1M
it_check_pattern "$T/a/a2.qcow2" 0x21 1M 1M

# D backs onto the overlay of A's snapshot s1.
mkdir "$MNT/$A/vda/snapshots/s1" || it_fail "mkdir s1"
s1file=$(it_domblk "$A" vda)
it_guest_write "$A" 0x51 4M 1M
mkdir "$MNT/$A/vda/snapshots/s2" || it_fail "mkdir s2"
D="$IT_PREFIX-al-d"
# spelled through the symlinked directory of $T/overlays
ln -s overlays "$T/ovl"
it_make_image "$T/c/d.qcow2" 64M "$T/ovl/${s1file##*/}"
it_write_pattern "$T/c/d.qcow2" 0x60 5M 1M
it_define "$D" "$T/c/d.qcow2"
it_wait_dom "$D"
cp --sparse=always "$T/a/a1.qcow2" "$T/a/a1.copy" # same directory: its backing is relative
it_refused "$A" vda s1 "$D"
[ -e "$s1file" ] || it_fail "A's overlay $s1file was deleted"
it_unchanged "$T/a/a1.copy" "$T/a/a1.qcow2" "a1 unchanged after rmdir of A/vda/s1"
it_check_pattern "$T/c/d.qcow2" 0x60 5M 1M
it_check_pattern "$T/c/d.qcow2" 0x51 4M 1M
it_check_pattern "$T/c/d.qcow2" 0x11 1M 1M
it_check_pattern "$T/c/d.qcow2" 0x10 0 1M
it_assert_eq "a1 s1 s2" "$(it_snapshots "$A" vda)" "A/vda still shows a1 s1 s2"

# chain shows canonical paths; chain.json keeps the XML's spelling too
it_assert_contains "$(cat "$MNT/$A/vda/chain")" "$base" "chain shows base's canonical path"
it_assert_eq "$T/a/../img/base.qcow2" \
  "$(jq -r '.layers[-1].xml_path' "$MNT/$A/vda/chain.json")" \
  "chain.json keeps the path as libvirt's XML spells it"
it_assert_eq "$base" "$(jq -r '.layers[-1].file' "$MNT/$A/vda/chain.json")" \
  "chain.json file is the canonical path"
