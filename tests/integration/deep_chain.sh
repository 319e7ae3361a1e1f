#!/usr/bin/env bash
# deep_chain.sh — issue 12: a shut-off domain on a chain of DEEP_LAYERS
# (500) layers plus its active layer, built with `qemu-img create -u`
# (backing not opened: O(1) per layer) and 4 KiB clusters, qemu-io
# patterns in a few layers. The whole chain is shown (the old cap was 256):
#   `cat chain` lists every file, ls snapshots/ every layer above the base,
#   stat of every snapshot directory, mkdir, rmdir of a layer in the
#   middle (an offline commit that opens TOP and BASE only), and every
#   pattern reads back through the chain afterwards.
# Each operation's time is logged ("time: OP N ms"): DEEP_LAYERS=5 gives
# the shallow figures to compare (the benchmark proper is
# tests/bench/scale.sh part B).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

N=${DEEP_LAYERS:-500}
D="$IT_PREFIX-deep"
C="$T/chain"
mkdir "$C"
SIZE=64M
MID=$((N / 2))

# l0000.qcow2 (base) <- l0001 <- ... <- l$N (active): N layers below the
# active one. Every name has the same length, so one `qemu-img create -u`
# (backing not opened) makes a template that differs from each layer's
# own file only in the backing name's digits: the layers are copies of it
# with those patched (byte for byte what qemu-img writes for each, checked
# on one), 500 qemu-img runs being ~45 s on a busy machine.
t0=$(it_now_ms)
img() { "${IT_IMG_RUN[@]}" qemu-img "$@" || it_fail "qemu-img $*"; }
name() { printf 'l%04d' "$1"; }
img create -q -f qcow2 -o cluster_size=4096 "$C/$(name 0).qcow2" "$SIZE"
img create -q -f qcow2 -o cluster_size=4096 -u -b "$(name 0).qcow2" -F qcow2 "$C/template.qcow2" "$SIZE"
python3 - "$C" "$N" <<'PY' || it_fail "copying the template layers"
import sys
d, n = sys.argv[1], int(sys.argv[2])
t = open(f"{d}/template.qcow2", "rb").read()
old = b"l0000.qcow2"
at = t.index(old)
assert t.count(old) == 1
for i in range(1, n + 1):
    with open(f"{d}/l{i:04d}.qcow2", "wb") as f:
        f.write(t[:at] + b"l%04d.qcow2" % (i - 1) + t[at + len(old):])
PY
rm -f "$C/template.qcow2"
# the check: qemu-img's own file for one layer is the same bytes
img create -q -f qcow2 -o cluster_size=4096 -u -b "$(name $((N - 1))).qcow2" -F qcow2 "$T/check.qcow2" "$SIZE"
cmp -s "$T/check.qcow2" "$C/$(name "$N").qcow2" || it_fail "a patched layer differs from qemu-img's"
it_log "built a chain of $N layers + the active one in $(($(it_now_ms) - t0)) ms"
active="$C/$(name "$N").qcow2"

# write_layer FILE PATTERN OFFSET — 64 KiB of PATTERN into FILE alone
# (whole clusters: nothing is read from below, so its backing chain is
# not opened, which would cost ~1 ms per layer)
write_layer() {
  local out
  out=$("${IT_IMG_RUN[@]}" qemu-io -c "write -P $2 $3 64k" \
    "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$1\"},\"backing\":null}" 2>&1) ||
    it_fail "qemu-io write $2 into $1: $out"
  case "$out" in *wrote*) ;; *) it_fail "qemu-io write $2 into $1: $out" ;; esac
}
write_layer "$C/$(name 0).qcow2" 0x10 0
write_layer "$C/$(name $((MID + 1))).qcow2" 0x20 64k
write_layer "$C/$(name $((N - 1))).qcow2" 0x30 128k
write_layer "$active" 0x40 192k

it_define "$D" "$active"
it_mount
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"

# timed OP CMD... — run CMD, log its time
timed() {
  local op=$1 t
  shift
  t=$(it_now_ms)
  "$@" || it_fail "$op failed"
  it_log "time: $op $(($(it_now_ms) - t)) ms"
}

# --- the whole chain, every layer named --------------------------------------------
timed "cat chain" cat "$MNT/$D/vda/chain" >"$T/chain.txt"
files=$(grep -c "$C/l[0-9]*\.qcow2" "$T/chain.txt")
it_assert_eq "$((N + 1))" "$files" "cat chain lists all $N layers and the active one"
timed "ls snapshots/" ls "$S" >"$T/ls.txt"
it_assert_eq "$N" "$(wc -l <"$T/ls.txt")" "ls snapshots/ lists every layer above the base"
it_assert_eq "$(name 1)" "$(head -1 "$T/ls.txt")" "the lowest snapshot"
it_assert_eq "$(name "$N")" "$(tail -1 "$T/ls.txt")" "the active layer"
stat_all() { (cd "$S" && stat -c %n -- *) >"$T/stat.txt"; }
timed "stat of every snapshot dir" stat_all
it_assert_eq "$N" "$(wc -l <"$T/stat.txt")" "stat of every snapshot directory"
cat_info() { cat "$S/$(name "$MID")/info" >/dev/null; }
timed "cat snapshots/$(name "$MID")/info" cat_info

# --- mkdir on top --------------------------------------------------------------------
timed "mkdir" mkdir "$S/top"
new=$(it_domblk "$D" vda)
[ "$new" != "$active" ] || it_fail "mkdir did not change the disk's source"
it_wait_until 5 "ls snapshots/ shows top" test -d "$S/top"
it_assert_eq "$((N + 1))" "$(ls "$S" | wc -l)" "ls snapshots/ after mkdir"

# --- rmdir in the middle: MID+1 is committed into MID ------------------------------------
top="$C/$(name $((MID + 1))).qcow2"
base="$C/$(name "$MID").qcow2"
rm_mid() { rmdir "$S/$(name $((MID + 1)))" && it_wait_job "$D" vda >/dev/null; }
timed "rmdir of layer $((MID + 1)) (offline commit, to its end)" rm_mid
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "the offline merge completed"
[ ! -e "$top" ] || it_fail "the merged layer $top still exists"
it_assert_eq "$base" "$("${IT_IMG_RUN[@]}" qemu-img info -U --output=json "$C/$(name $((MID + 2))).qcow2" |
  jq -r '."full-backing-filename"')" "the layer above backs onto the one below"
it_assert_eq "$(printf 'l%04d.qcow2' "$((MID - 1))")" "$("${IT_IMG_RUN[@]}" qemu-img info -U --output=json "$base" |
  jq -r '."backing-filename"')" "the base of the merge keeps its own backing file"
it_wait_until 5 "ls snapshots/ no longer shows $(name $((MID + 1)))" test ! -e "$S/$(name $((MID + 1)))"
it_assert_eq "$N" "$(ls "$S" | wc -l)" "ls snapshots/ after rmdir"
timed "cat chain (after)" cat "$MNT/$D/vda/chain" >"$T/chain.txt"
it_assert_eq "$N" "$(grep -c "$C/l[0-9]*\.qcow2" "$T/chain.txt")" "cat chain: one layer less"

# --- every pattern, through the whole chain (one qemu-io: it opens the
# chain once) ------------------------------------------------------------------------------
# (QEMU opening a 500-layer chain takes seconds: ~12 s here, ~3 s for 250
# layers, more than linear.) check_patterns FILE "PATTERN OFFSET"...
# through FILE's chain; SOLO=1: FILE alone (its backing not opened)
check_patterns() {
  local f=$1 out args=() p img
  shift
  for p in "$@"; do args+=(-c "read -P ${p% *} ${p#* } 64k"); done
  img=$f
  [ -z "${SOLO:-}" ] ||
    img="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$f\"},\"backing\":null}"
  out=$("${IT_IMG_RUN[@]}" qemu-io -U -r "${args[@]}" "$img" 2>&1) ||
    it_fail "qemu-io read from $f: $out"
  case "$out" in
    *"Pattern verification failed"* | *"read failed"* | *[Ee]rror*) it_fail "patterns in $f: $out" ;;
  esac
  [ "$(grep -c '^read 65536/65536' <<<"$out")" = "$#" ] || it_fail "patterns in $f: $out"
  it_log "ok: patterns $* read back from $(it_short "$f")${SOLO:+ alone}"
}
check_patterns "$new" "0x10 0" "0x20 64k" "0x30 128k" "0x40 192k" "0x00 256k"
# the data went into BASE, and nowhere below it
SOLO=1 check_patterns "$base" "0x20 64k" "0x00 0"
SOLO=1 check_patterns "$C/$(name $((MID - 1))).qcow2" "0x00 64k"
