#!/usr/bin/env bash
# overlay_format.sh — the overlay files chainfs writes itself before a
# snapshot (backend/qcow2.c, cfs_image_create_overlay) are byte for byte
# what `qemu-img create -f qcow2 -F FMT -b BACKING` writes, for qcow2 and
# raw backings and sizes from 512 bytes to 64 TiB; `qemu-img check` finds
# nothing wrong in them; QEMU reads the backing's data through one and
# writes into it (qemu-io patterns). No domain, no mount.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
[ -x "${MKOVERLAY:-}" ] || it_fail "no mkoverlay tool at '${MKOVERLAY:-}' (meson builds tests/mkoverlay)"

d=$(it_tmpdir)
n=0
for fmt in qcow2 raw; do
  sizes="512 1M 512M 513M 10G 4T 5T 64T"
  # a raw file cannot be 64 TiB on ext4 (16 TiB at most); a raw file's
  # size need not be a multiple of 512 (QEMU rounds it up)
  [ "$fmt" = qcow2 ] || sizes="1000000 512 1M 513M 10G 5T"
  for size in $sizes; do
    n=$((n + 1))
    b="$d/b$n.$fmt"
    qemu-img create -q -f "$fmt" "$b" "$size" || it_fail "qemu-img create $b"
    # the backing's size as QEMU sees it (a raw file: rounded up to 512)
    bytes=$(qemu-img info --output=json "$b" | jq -r '."virtual-size"')
    qemu-img create -q -f qcow2 -F "$fmt" -b "$b" "$d/q$n.qcow2" ||
      it_fail "qemu-img create the overlay of $b"
    "$MKOVERLAY" "$d/c$n.qcow2" "$b" "$fmt" "$bytes" || it_fail "mkoverlay over $b ($size)"
    cmp "$d/q$n.qcow2" "$d/c$n.qcow2" >&2 ||
      it_fail "overlay of a $size $fmt backing differs from qemu-img's"
    out=$(qemu-img check -q "$d/c$n.qcow2" 2>&1) || it_fail "qemu-img check of the overlay of a $size $fmt backing: $out"
    rm -f "$d/q$n.qcow2"
  done
  it_log "ok: overlays of $fmt backings ($sizes) equal qemu-img's byte for byte and pass qemu-img check"
done

# data through a real one: the backing's pattern reads through, a write
# lands in the overlay only
b="$d/data.qcow2"
it_make_image "$b" 64M
it_write_pattern "$b" 0x11 0 4M
"$MKOVERLAY" "$d/data-ov.qcow2" "$b" qcow2 $((64 << 20)) || it_fail "mkoverlay over $b"
it_check_pattern "$d/data-ov.qcow2" 0x11 0 4M
it_write_pattern "$d/data-ov.qcow2" 0x22 1M 1M
it_check_pattern "$d/data-ov.qcow2" 0x22 1M 1M
it_check_pattern "$b" 0x11 1M 1M
out=$(qemu-img check -q "$d/data-ov.qcow2" 2>&1) || it_fail "qemu-img check after a write: $out"

# refusals leave nothing behind; an existing file is never replaced
before=$(sha256sum <"$d/data-ov.qcow2")
if "$MKOVERLAY" "$d/data-ov.qcow2" "$b" qcow2 $((64 << 20)) 2>/dev/null; then
  it_fail "mkoverlay replaced an existing file"
fi
it_assert_eq "$before" "$(sha256sum <"$d/data-ov.qcow2")" "an existing file is left as it was"
if "$MKOVERLAY" "$d/odd.qcow2" "$b" qcow2 1000 2>/dev/null; then
  it_fail "mkoverlay took a size that is not a multiple of 512"
fi
[ ! -e "$d/odd.qcow2" ] || it_fail "a refused overlay left a file"
it_log "ok: refusals change nothing"
