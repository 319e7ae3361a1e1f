#!/usr/bin/env bash
# lifecycle.sh — the tree follows libvirt without a remount: a domain
# defined, started, given a disk by hot-plug, destroyed and undefined while
# mounted shows each change within 1 s of the virsh command returning.
# And `fusermount3 -u` ends the daemon (status 0) while a domain started
# under the mount still runs: libvirt gave that QEMU a private copy of the
# host's mounts, chainfs's included.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-life"
D2="$IT_PREFIX-life2"
it_make_image "$T/vda.qcow2" 64M
it_make_image "$T/vdb.qcow2" 64M
it_make_image "$T/other.qcow2" 64M
it_mount

ls_has() { it_ls "$1" | tr ' ' '\n' | grep -qxF "$2"; }
ls_lacks() { ! ls_has "$@"; }
state_is() { grep -q "^state: *$1\$" "$MNT/$D/vda/chain"; }

# within_1s WHAT CMD... — CMD holds within 1 s; log how long it took.
within_1s() {
  local what=$1 t0
  shift
  t0=$(it_now_ms)
  it_poll 1 "$@" || it_fail "$what: not visible within 1 s"
  it_log "ok: $what: visible after $(($(it_now_ms) - t0)) ms"
}

ls_lacks "$MNT" "$D" || it_fail "$D is in the mount before it was defined"
it_define "$D" "$T/vda.qcow2"
within_1s "define shows the domain in ls MOUNT" ls_has "$MNT" "$D"
within_1s "define shows its disk" ls_has "$MNT/$D" vda
it_assert_eq "shutoff" "$(jq -r .state "$MNT/$D/vda/chain.json")" "a defined domain is shut off"

it_start "$D"
within_1s "start shows state running" state_is running

it_virsh attach-disk "$D" "$T/vdb.qcow2" vdb --targetbus virtio --subdriver qcow2 --live >/dev/null ||
  it_fail "virsh attach-disk --live"
within_1s "hot-plug shows disk vdb" ls_has "$MNT/$D" vdb

it_destroy "$D"
within_1s "destroy shows state shutoff" state_is shutoff
within_1s "destroy drops the hot-plugged (live-only) disk vdb" ls_lacks "$MNT/$D" vdb
ls_has "$MNT" "$D" || it_fail "a destroyed persistent domain must stay in the tree"

it_virsh undefine "$D" >/dev/null || it_fail "virsh undefine"
within_1s "undefine removes the domain from ls MOUNT" ls_lacks "$MNT" "$D"
[ ! -e "$MNT/$D" ] || it_fail "$MNT/$D still resolves after undefine"
it_log "ok: $D no longer resolves"

# --- unmount while a domain started under the mount runs -------------------------
it_define "$D2" "$T/other.qcow2"
it_start "$D2"
within_1s "the second domain shows as running" grep -q '^state: *running$' "$MNT/$D2/vda/chain"
it_unmount || it_fail "fusermount3 -u with $D2 (started under the mount) running: the daemon did not exit 0 within 10 s"
[ "$(it_state "$D2")" = running ] || it_fail "$D2 stopped running"
it_log "ok: the daemon exited 0 at unmount while $D2 runs"
