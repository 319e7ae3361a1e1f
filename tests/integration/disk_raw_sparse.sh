#!/usr/bin/env bash
# disk_raw_sparse.sh — issue 9: `cp --sparse=always` of the disk.raw of a
# 4 GiB disk with 200 MiB written reads about 200 MiB (the bytes chainfs
# served, from its close line) and makes a file `du` counts at about
# 200 MiB, equal to the frozen chain. stat gives an estimate of the data
# (the qcow2 file's allocation), fstat of the open file the exact figure.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-sparse"
base="$T/base.qcow2"
it_make_image "$base" 4G
it_write_pattern "$base" 0x31 0 50M
it_write_pattern "$base" 0x32 1G 50M
it_write_pattern "$base" 0x33 3G 100M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir s1"
it_guest_write "$D" 0x44 2G 4M

raw="$MNT/$D/vda/snapshots/s1/disk.raw"
blocks=$(python3 - "$raw" <<'PY'
import os, sys
st = os.stat(sys.argv[1])
fd = os.open(sys.argv[1], os.O_RDONLY)
fst = os.fstat(fd)
os.close(fd)
print(st.st_size, st.st_blocks * 512, fst.st_blocks * 512)
PY
) || it_fail "stat/fstat of disk.raw"
read -r size est exact <<<"$blocks"
it_assert_eq 4294967296 "$size" "st_size is the virtual size"
it_log "stat st_blocks: $((est >> 20)) MiB (estimate), fstat: $((exact >> 20)) MiB (exact)"
[ "$exact" -eq $((200 << 20)) ] || it_fail "fstat st_blocks: $exact bytes, expected exactly 200 MiB of data"
[ "$est" -ge $((200 << 20)) ] && [ "$est" -le $((210 << 20)) ] || it_fail "stat st_blocks estimate $est bytes, expected 200..210 MiB"

cp --sparse=always "$raw" "$T/out.raw" || it_fail "cp --sparse=always"
# (FUSE's release comes after close(2) returned)
it_wait_until 5 "chainfs logs cp's close" grep -q "disk.raw of $D/vda s1 closed: .* cp$" "$IT_LOG"
line=$(grep "disk.raw of $D/vda s1 closed: .* cp$" "$IT_LOG" | tail -n 1)
served=$(sed -n 's/.*read (\([0-9]*\) bytes).*/\1/p' <<<"$line")
it_log "chainfs: $line"
[ -n "$served" ] || it_fail "no close line with the bytes served"
[ "$served" -ge $((200 << 20)) ] && [ "$served" -le $((216 << 20)) ] ||
  it_fail "cp made chainfs serve $served bytes, expected about 200 MiB"
du=$(du -B1 "$T/out.raw" | cut -f1)
it_log "du of the copy: $((du >> 20)) MiB; served $((served >> 20)) MiB"
[ "$du" -ge $((199 << 20)) ] && [ "$du" -le $((216 << 20)) ] || it_fail "du of the copy is $du bytes, expected about 200 MiB"
out=$(qemu-img compare -U -f raw -F qcow2 "$T/out.raw" "$base" 2>&1) || it_fail "the copy differs from the frozen chain: $out"
it_log "ok: the copy equals the frozen chain ($out)"
