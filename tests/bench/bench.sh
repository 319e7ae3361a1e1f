#!/usr/bin/env bash
# bench.sh — chainfs against virsh on the same domain, side by side.
#
#   mkdir snapshots/NAME       vs  virsh snapshot-create-as --disk-only --atomic
#   rmdir NAME && cat wait     vs  virsh blockcommit --active --pivot --wait
#     (active layer holding 256 MiB of guest-written data, identical chains)
#   cat chain                  vs  virsh domblklist
#   rmdir of the active snapshot over a small layer (a forward merge, issue
#   8: base 256 MiB written, s1 4 MiB, active 200 MiB) + cat wait
#                              vs  virsh blockcommit --active --shallow --pivot --wait
#     (time, and bytes copied against the smaller layer's data; N_FWD runs,
#     default 3; mounted -o live_pull=on: QEMU 7.2 may crash if something
#     else queries the domain's block nodes as a pull ends, and nothing
#     else queries this private domain)
#   copy DEST shallow; cat wait vs virsh blockcopy --shallow --pivot --wait
#     --transient-job (active layer holding 128 MiB of guest-written data;
#     issue 8)
#   rmdir of three adjacent snapshots (32 MiB each, the newest active) +
#     cat wait vs three virsh blockcommit --active --shallow --pivot --wait
#     in a row (issue 8's queue; N_FWD runs)
#   cat snapshots/s1/disk.raw > /dev/null of a 1 GiB fully written
#     snapshot (a shut-off domain of its own) vs qemu-img convert -O raw
#     of the same chain to /dev/shm and vs qemu-img dd (MiB/s, N_RAW runs,
#     default 3, after one warm-up read; issue 9: target >= 0.8x convert);
#     and the time from open to the first byte (the server's start)
#
# Each is timed N times (default 7, after one untimed warm-up); the medians
# are printed with their ratio and the target from issue 2. Not part of CI:
#
#     sudo bash tests/bench/bench.sh            # N=7
#     sudo N=15 bash tests/bench/bench.sh
#
# Uses the integration helpers (tests/integration/lib.sh): its own domain,
# files and mount, all removed on exit. CHAINFS defaults to build/fs/fuse/chainfs.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/../integration/lib.sh"
N=${N:-7}
IT_NAME=bench
it_init

D="$IT_PREFIX-bench"
base="$T/base.qcow2"
it_make_image "$base" 512M
it_define "$D" "$base"
it_start "$D"
it_mount live_pull=on
it_wait_dom "$D"
V="$MNT/$D/vda"
N_FWD=${N_FWD:-3}

# ms CMD... — run CMD (output discarded), print its wall time in ms (3 decimals).
ms() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null || { echo "bench: failed: $*" >&2; return 1; }
  t1=$(date +%s%N)
  awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f\n", d / 1e6 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Chains are kept identical: every timed operation starts from the base
# alone, and each side's snapshot is merged away by its own tool.
vs_snapshot() { it_virsh snapshot-create-as "$D" "$1" --disk-only --atomic --diskspec "vda,file=$T/overlays/$1.qcow2"; }
vs_merge() {
  it_virsh blockcommit "$D" vda --active --pivot --wait >/dev/null
  it_virsh snapshot-delete "$D" "$1" --metadata >/dev/null
  rm -f "$T/overlays/$1.qcow2"
}
cfs_merge() { rmdir "$V/snapshots/$1" && cat "$V/wait" >/dev/null; }
fill_256m() {
  local off
  for off in 0 64M 128M 192M; do
    it_guest_write "$D" 0x5a "$off" 64M 2>/dev/null
  done
}
rmdir_wait() { rmdir "$V/snapshots/$1" && cat "$V/wait"; }
at_base() { [ "$(it_domblk "$D" vda)" = "$base" ] || it_fail "chain not back at the base"; }

: >"$T/mkdir.cfs"
: >"$T/mkdir.virsh"
: >"$T/commit.cfs"
: >"$T/commit.virsh"
: >"$T/chain.cfs"
: >"$T/chain.virsh"

it_log "mkdir vs virsh snapshot-create-as, $N runs each (+1 warm-up)"
for ((i = 0; i <= N; i++)); do
  t=$(ms mkdir "$V/snapshots/m$i")
  cfs_merge "m$i"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/mkdir.cfs"
  at_base
  t=$(ms vs_snapshot "v$i")
  vs_merge "v$i"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/mkdir.virsh"
  at_base
done

it_log "rmdir + cat wait vs virsh blockcommit --active --pivot --wait, 256 MiB, $N runs each (+1 warm-up)"
for ((i = 0; i <= N; i++)); do
  mkdir "$V/snapshots/c$i"
  fill_256m
  t=$(ms rmdir_wait "c$i")
  grep -q '^state: *completed$' "$V/job" || it_fail "rmdir c$i did not complete: $(cat "$V/job")"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/commit.cfs"
  at_base
  vs_snapshot "b$i" >/dev/null
  fill_256m
  t=$(ms it_virsh blockcommit "$D" vda --active --pivot --wait)
  it_virsh snapshot-delete "$D" "b$i" --metadata >/dev/null
  rm -f "$T/overlays/b$i.qcow2"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/commit.virsh"
  at_base
done

it_log "cat chain vs virsh domblklist, $N runs each (+1 warm-up)"
mkdir "$V/snapshots/keep"
for ((i = 0; i <= N; i++)); do
  t=$(ms cat "$V/chain")
  [ "$i" -eq 0 ] || echo "$t" >>"$T/chain.cfs"
  t=$(ms it_virsh domblklist "$D")
  [ "$i" -eq 0 ] || echo "$t" >>"$T/chain.virsh"
done

# ---- forward merge (issue 8 §2) ----------------------------------------------
: >"$T/fwd.cfs"
: >"$T/fwd.virsh"
: >"$T/fwdbytes.cfs"
: >"$T/fwdbytes.virsh"
alloc() { echo $(($(stat -c %b "$1") * 512)); }
# the same writes on both sides: s1 4 MiB at 400M, the active layer 200 MiB
fill_small() { it_guest_write "$D" 0x61 400M 4M 2>/dev/null; }
fill_200m() {
  local off
  for off in 0 64M 128M; do it_guest_write "$D" 0x62 "$off" 64M 2>/dev/null; done
  it_guest_write "$D" 0x62 192M 8M 2>/dev/null
}
rmdir "$V/snapshots/keep"
cat "$V/wait" >/dev/null
at_base
for off in 0 64M 128M 192M; do it_guest_write "$D" 0x60 "$off" 64M 2>/dev/null; done
it_log "forward merge: rmdir + cat wait vs virsh blockcommit --active --pivot --wait, $N_FWD runs each"
for ((i = 1; i <= N_FWD; i++)); do
  mkdir "$V/snapshots/f$i"
  fill_small
  mkdir "$V/snapshots/g$i"
  fill_200m
  t=$(ms rmdir_wait "g$i")
  grep -q '^state: *completed$' "$V/job" || it_fail "rmdir g$i did not complete: $(cat "$V/job")"
  [ "$(jq -r .direction "$V/job.json")" = pull ] || it_fail "rmdir g$i did not pull: $(cat "$V/job")"
  echo "$t" >>"$T/fwd.cfs"
  echo "$(jq -r .bytes_copied "$V/job.json") $(jq -r .bytes_pull "$V/job.json")" >>"$T/fwdbytes.cfs"
  rmdir_wait "f$i" >/dev/null # back to the base (untimed)
  at_base

  vs_snapshot "u$i" >/dev/null
  fill_small
  u=$(it_domblk "$D" vda)
  vs_snapshot "w$i" >/dev/null
  fill_200m
  before=$(alloc "$u")
  # --shallow: into the layer right below (without it virsh commits down
  # to the bottom of the chain, the base image)
  t=$(ms it_virsh blockcommit "$D" vda --active --shallow --pivot --wait)
  echo "$t" >>"$T/fwd.virsh"
  echo "$(($(alloc "$u") - before)) $(alloc "$u")" >>"$T/fwdbytes.virsh"
  it_virsh snapshot-delete "$D" "w$i" --metadata >/dev/null
  rm -f "$T/overlays/w$i.qcow2"
  it_virsh blockcommit "$D" vda --active --pivot --wait >/dev/null
  it_virsh snapshot-delete "$D" "u$i" --metadata >/dev/null
  rm -f "$T/overlays/u$i.qcow2"
  at_base
done

# ---- copy (issue 8 §1) --------------------------------------------------------
it_log "copy DEST shallow + cat wait vs virsh blockcopy --shallow --pivot --wait --transient-job, 128 MiB, $N runs each (+1 warm-up)"
: >"$T/copy.cfs"
: >"$T/copy.virsh"
fill_128m() {
  local off
  for off in 256M 320M; do
    it_guest_write "$D" 0x6b "$off" 64M 2>/dev/null
  done
}
copy_wait() { echo "copy $1 shallow" >"$V/ctl" && cat "$V/wait"; }
for ((i = 0; i <= N; i++)); do
  # chainfs: base <- y$i (128 MiB) -> copied to $T/cfs-copy$i.qcow2, then
  # merged back into the base (rmdir of y$i, whose file the copy is now)
  mkdir "$V/snapshots/y$i"
  fill_128m
  t=$(ms copy_wait "$T/cfs-copy$i.qcow2")
  grep -q '^state: *completed$' "$V/job" || it_fail "copy $i did not complete: $(cat "$V/job")"
  [ "$(it_domblk "$D" vda)" = "$T/cfs-copy$i.qcow2" ] || it_fail "copy $i did not pivot"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/copy.cfs"
  rm -f "$T/overlays/$D.vda.y$i.qcow2" # the old active file, kept by copy
  cfs_merge "y$i"
  at_base
  # virsh: the same chain, copied to a file virsh creates
  vs_snapshot "w$i" >/dev/null
  fill_128m
  t=$(ms it_virsh blockcopy "$D" vda "$T/vs-copy$i.qcow2" --shallow --pivot --wait --transient-job)
  [ "$(it_domblk "$D" vda)" = "$T/vs-copy$i.qcow2" ] || it_fail "virsh blockcopy $i did not pivot"
  [ "$i" -eq 0 ] || echo "$t" >>"$T/copy.virsh"
  it_virsh blockcommit "$D" vda --active --pivot --wait >/dev/null
  it_virsh snapshot-delete "$D" "w$i" --metadata >/dev/null
  rm -f "$T/overlays/w$i.qcow2" "$T/vs-copy$i.qcow2"
  at_base
done

# ---- three adjacent deletions (issue 8 §3) -----------------------------------
# base <- 1 <- 2 <- 3 (active), 32 MiB written into each: `rmdir 3 2 1` +
# cat wait (the queue merges the run in as few jobs as it can) vs three
# `virsh blockcommit --active --shallow --pivot --wait` in a row (each
# rewrites what the one before merged). Target: <= 0.6x.
it_log "rmdir of three adjacent snapshots + cat wait vs three virsh blockcommit in a row, $N_FWD runs each"
: >"$T/three.cfs"
: >"$T/three.virsh"
fill_layer() { it_guest_write "$D" "$1" "$2" 32M 2>/dev/null; }
rmdir3_wait() { rmdir "$V/snapshots/$1" "$V/snapshots/$2" "$V/snapshots/$3" && cat "$V/wait"; }
virsh3() {
  local k
  for k in 1 2 3; do
    it_virsh blockcommit "$D" vda --active --shallow --pivot --wait || return 1
  done
}
for ((i = 1; i <= N_FWD; i++)); do
  mkdir "$V/snapshots/q1-$i" && fill_layer 0x81 0
  mkdir "$V/snapshots/q2-$i" && fill_layer 0x82 32M
  mkdir "$V/snapshots/q3-$i" && fill_layer 0x83 64M
  t=$(ms rmdir3_wait "q3-$i" "q2-$i" "q1-$i")
  grep -q '^state: *completed$' "$V/job" || it_fail "rmdir q3 q2 q1 ($i) did not complete: $(cat "$V/job")"
  echo "$t" >>"$T/three.cfs"
  at_base
  for k in 1 2 3; do
    vs_snapshot "x$k-$i" >/dev/null
    fill_layer "0x9$k" "$(((k - 1) * 32))M"
  done
  t=$(ms virsh3)
  echo "$t" >>"$T/three.virsh"
  for k in 1 2 3; do
    it_virsh snapshot-delete "$D" "x$k-$i" --metadata >/dev/null
    rm -f "$T/overlays/x$k-$i.qcow2"
  done
  at_base
done

# ---- disk.raw (issue 9) ------------------------------------------------------
# A shut-off domain of its own (nothing else writes the page cache meanwhile),
# 1 GiB written in full in its base; s1 made offline, so disk.raw of s1 is
# the base. Read once unmeasured (page cache warm for every reader alike).
N_RAW=${N_RAW:-3}
R="$IT_PREFIX-rawbench"
rbase="$T/rbase.qcow2"
it_make_image "$rbase" 1G
it_write_pattern "$rbase" 0x5a 0 1G
it_define "$R" "$rbase"
it_wait_dom "$R"
mkdir "$MNT/$R/vda/snapshots/s1" || it_fail "mkdir $R s1"
RAW="$MNT/$R/vda/snapshots/s1/disk.raw"
it_log "disk.raw: cat of 1 GiB vs qemu-img convert / dd of the same chain, $N_RAW runs each"
cat "$RAW" >/dev/null || it_fail "warm-up read of disk.raw"
: >"$T/raw.cat"
: >"$T/raw.convert"
: >"$T/raw.dd"
: >"$T/raw.first"
shm=$(mktemp -d /dev/shm/cfsbench.XXXXXX)
it_cleanup_shm() { rm -rf "$shm"; }
IT_CLEANUP_HOOKS+=(it_cleanup_shm)
mibs() { awk -v ms="$1" 'BEGIN { printf "%.1f\n", 1024 / (ms / 1000) }'; }
first_byte() { head -c 1 "$RAW" >/dev/null; }
for ((i = 1; i <= N_RAW; i++)); do
  mibs "$(ms cat "$RAW")" >>"$T/raw.cat"
  mibs "$(ms qemu-img convert -U -f qcow2 -O raw "$rbase" "$shm/x.raw")" >>"$T/raw.convert"
  rm -f "$shm/x.raw"
  mibs "$(ms qemu-img dd -U -f qcow2 -O raw bs=4M "if=$rbase" "of=$shm/y.raw")" >>"$T/raw.dd"
  rm -f "$shm/y.raw"
  ms first_byte >>"$T/raw.first"
done
rmdir "$MNT/$R/vda/snapshots/s1" && cat "$MNT/$R/vda/wait" >/dev/null

echo
printf 'chainfs benchmark: %s runs each, medians in ms, domain type %s, %s\n' "$N" "$(it_virt_type)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf '%-44s %10s %10s %7s %8s  %s\n' "operation (chainfs vs virsh)" chainfs virsh ratio target verdict
missed=0
row() { # LABEL KEY TARGET
  local c v r ok
  c=$(median <"$T/$2.cfs")
  v=$(median <"$T/$2.virsh")
  r=$(awk -v c="$c" -v v="$v" 'BEGIN { printf "%.2f", c / v }')
  if awk -v r="$r" -v t="$3" 'BEGIN { exit !(r <= t) }'; then ok=met; else ok=MISSED; missed=1; fi
  printf '%-44s %10.1f %10.1f %7s %8s  %s\n' "$1" "$c" "$v" "$r" "<= $3" "$ok"
}
row "mkdir vs snapshot-create-as --disk-only" mkdir 0.7
row "rmdir+cat wait vs blockcommit --pivot (256M)" commit 1.1
row "cat chain vs domblklist" chain 0.2
row "copy shallow+wait vs blockcopy --shallow" copy 1.1
row "rmdir 3 adjacent+wait vs 3 blockcommits" three 0.6
# the issue sets no time target for the forward merge: shown, not judged
c=$(median <"$T/fwd.cfs")
v=$(median <"$T/fwd.virsh")
printf '%-44s %10.1f %10.1f %7s %8s  %s\n' "forward merge rmdir+wait vs blockcommit" "$c" "$v" \
  "$(awk -v c="$c" -v v="$v" 'BEGIN { printf "%.2f", c / v }')" "-" "(time: no target)"
# bytes: chainfs's pull copied (job.json bytes_copied) against the smaller
# layer's data (bytes_pull: s1's allocation); virsh's commit wrote into s1
fc=$(awk '{ s += $1 } END { printf "%d", s / NR }' "$T/fwdbytes.cfs")
fs=$(awk '{ s += $2 } END { printf "%d", s / NR }' "$T/fwdbytes.cfs")
vc=$(awk '{ s += $1 } END { printf "%d", s / NR }' "$T/fwdbytes.virsh")
r=$(awk -v c="$fc" -v s="$fs" 'BEGIN { printf "%.2f", c / s }')
if awk -v r="$r" 'BEGIN { exit !(r <= 1.1) }'; then ok=met; else ok=MISSED; missed=1; fi
printf '%-44s %9.1fM %9.1fM %7s %8s  %s\n' "forward merge bytes copied (vs smaller layer)" \
  "$(awk -v b="$fc" 'BEGIN { print b / 1048576 }')" "$(awk -v b="$vc" 'BEGIN { print b / 1048576 }')" \
  "$r" "<= 1.1" "$ok"
printf '%-44s %9.1fM\n' "  the smaller layer's data (s1)" "$(awk -v b="$fs" 'BEGIN { print b / 1048576 }')"
# disk.raw: throughput, higher is better
rc=$(median <"$T/raw.cat")
rv=$(median <"$T/raw.convert")
rd=$(median <"$T/raw.dd")
r=$(awk -v c="$rc" -v v="$rv" 'BEGIN { printf "%.2f", c / v }')
if awk -v r="$r" 'BEGIN { exit !(r >= 0.8) }'; then ok=met; else ok=MISSED; missed=1; fi
printf '%-44s %8.1f/s %8.1f/s %7s %8s  %s\n' "cat disk.raw vs qemu-img convert (MiB/s)" "$rc" "$rv" "$r" ">= 0.8" "$ok"
printf '%-44s %8.1f/s %8.1f/s %7s\n' "cat disk.raw vs qemu-img dd (MiB/s)" "$rc" "$rd" \
  "$(awk -v c="$rc" -v v="$rd" 'BEGIN { printf "%.2f", c / v }')"
printf '%-44s %10.1f\n' "disk.raw open to first byte (ms)" "$(median <"$T/raw.first")"
[ "$missed" -eq 0 ] || echo "(a target was missed)"
