#!/usr/bin/env bash
# offline_middle.sh — rmdir of a middle layer of a shut-off domain (an
# offline commit of TOP into BASE, then a rebase of the layer above). Issue
# 12: qemu-img commit is given TOP over BASE only (a json: image whose BASE
# has "backing": null), so QEMU opens two files whatever the depth. The
# cases where that could differ from QEMU opening the whole chain:
#   vda  a raw BASE:          base.raw <- s1 <- s2 (active); rmdir s1
#   vdb  a BASE that has its own backing file and is smaller than TOP:
#        b0 (32M) <- b1 (32M) <- t (64M) <- a (active); rmdir t
# Every pattern written in any layer reads back from the active layer; the
# data beyond BASE's old end too; BASE's header keeps its backing file.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-offmid"
mkdir "$T/a" "$T/b"
"${IT_IMG_RUN[@]}" qemu-img create -q -f raw "$T/a/base.raw" 64M || it_fail "qemu-img create base.raw"
it_write_pattern "$T/a/base.raw" 0x11 0 1M
it_make_image "$T/a/s1.qcow2" 64M "$T/a/base.raw"
it_write_pattern "$T/a/s1.qcow2" 0x12 1M 1M
it_write_pattern "$T/a/s1.qcow2" 0x13 0 64k # over the base's data
it_make_image "$T/a/s2.qcow2" 64M "$T/a/s1.qcow2"
it_write_pattern "$T/a/s2.qcow2" 0x14 2M 1M

it_make_image "$T/b/b0.qcow2" 32M
it_write_pattern "$T/b/b0.qcow2" 0x21 0 1M
it_make_image "$T/b/b1.qcow2" 32M "$T/b/b0.qcow2"
it_write_pattern "$T/b/b1.qcow2" 0x22 1M 1M
it_make_image "$T/b/t.qcow2" 64M "$T/b/b1.qcow2"
it_write_pattern "$T/b/t.qcow2" 0x23 2M 1M
it_write_pattern "$T/b/t.qcow2" 0x24 40M 1M # beyond BASE's 32M
it_make_image "$T/b/a.qcow2" 64M "$T/b/t.qcow2"
it_write_pattern "$T/b/a.qcow2" 0x25 3M 1M

it_define "$D" "$T/a/s2.qcow2" "$T/b/a.qcow2"
it_mount
it_wait_dom "$D"
it_assert_eq "s1 s2" "$(it_snapshots "$D" vda)" "vda: ls snapshots/"
it_assert_eq "a b1 t" "$(it_snapshots "$D" vdb)" "vdb: ls snapshots/"

rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir vda/snapshots/s1"
it_wait_job "$D" vda >/dev/null
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "vda: offline commit completed"
it_assert_eq "$(printf '%s\n' "$T/a/s2.qcow2" "$T/a/base.raw")" "$(it_chain "$T/a/s2.qcow2")" "vda: s2 backs onto the raw base"
[ ! -e "$T/a/s1.qcow2" ] || it_fail "vda: the merged s1 still exists"
it_check_pattern "$T/a/s2.qcow2" 0x13 0 64k
it_check_pattern "$T/a/s2.qcow2" 0x11 64k 960k
it_check_pattern "$T/a/s2.qcow2" 0x12 1M 1M
it_check_pattern "$T/a/s2.qcow2" 0x14 2M 1M
it_check_pattern "$T/a/base.raw" 0x12 1M 1M

rmdir "$MNT/$D/vdb/snapshots/t" || it_fail "rmdir vdb/snapshots/t"
it_wait_job "$D" vdb >/dev/null
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vdb/job.json")" "vdb: offline commit completed"
it_assert_eq "$(printf '%s\n' "$T/b/a.qcow2" "$T/b/b1.qcow2" "$T/b/b0.qcow2")" "$(it_chain "$T/b/a.qcow2")" \
  "vdb: a backs onto b1, b1 still onto b0"
[ ! -e "$T/b/t.qcow2" ] || it_fail "vdb: the merged t still exists"
it_assert_eq 67108864 "$("${IT_IMG_RUN[@]}" qemu-img info -U --output=json "$T/b/b1.qcow2" | jq -r '."virtual-size"')" \
  "vdb: BASE grew to TOP's size"
it_check_pattern "$T/b/a.qcow2" 0x21 0 1M
it_check_pattern "$T/b/a.qcow2" 0x22 1M 1M
it_check_pattern "$T/b/a.qcow2" 0x23 2M 1M
it_check_pattern "$T/b/a.qcow2" 0x25 3M 1M
it_check_pattern "$T/b/a.qcow2" 0x24 40M 1M
it_check_pattern "$T/b/a.qcow2" 0x00 50M 1M
it_check_pattern "$T/b/b0.qcow2" 0x00 1M 1M # nothing went below BASE
it_assert_eq "a b1" "$(it_snapshots "$D" vdb)" "vdb: ls snapshots/ after"
