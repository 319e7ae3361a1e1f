#!/usr/bin/env bash
# remote_tcp.sh — two libvirt hosts in one mount (issue 12, first
# acceptance item): this machine's libvirtd (`-c local=qemu:///system`)
# and the second host of host2_lib.sh (`-c remote=qemu+tcp://ADDR/system`,
# a system libvirtd in its own mount and network namespace, over a veth).
# The remote domain's images are in $R, a tmpfs only the second host sees:
# on this machine $R holds decoys at the same names (the base, every
# overlay name chainfs will pick). Then:
#   0. the tree shows both hosts, each with its own domain only;
#   1. mkdir s1, s2 on the running remote domain (64 MiB, no OS, a qcow2
#      virtio disk; a guest-like qemu-io pattern written through the disk
#      device after each): libvirt creates each overlay on its host —
#      domblklist there names it, it exists there, and this machine's $R
#      and $T/overlays are listed and checksummed unchanged (the issue's
#      "chainfs writes the overlay locally" would show here); an empty
#      file that is not chainfs's sits at s1's overlay name on the second
#      host (libvirt would take it over and format it): the pool over $R
#      tells chainfs the name is taken, s1's overlay is the next name,
#      and the empty file stays as it was to the end (size, inode, mtime,
#      sha256);
#   2. rmdir s2, the active layer, with guest writes while the merge
#      copies and while it waits in ready; `cat wait`: completed, pivoted,
#      the overlay deleted through the second host's storage pool;
#   3. mkdir s3, rmdir s1 (a middle layer, a commit held back by the
#      bandwidth limit from its first byte), then h2_kill: only the remote
#      subtree says stale, its mkdir and rmdir get ENOTCONN, while on the
#      local host's domain mkdir, rmdir and `cat wait` work; h2_restart:
#      chainfs reconnects by itself, the merge that QEMU carried on
#      completes (`cat wait`);
# every pattern reads back, the remote ones on the second host.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/host2_lib.sh"
it_init

D="$IT_PREFIX-rtcp"  # on the second host
DL="$IT_PREFIX-ltcp" # on this one
R="$T/r"             # the second host's images (a tmpfs there, decoys here)
L="$T/l"             # the local domain's images
POOL="$IT_PREFIX-rpool"
mkdir -p "$R" "$L"
chmod 0755 "$R" "$L"
RD="remote/$D" # the domains' directories under the mount
LD="local/$DL"

# on_h2 FUNCTION ARGS... — a lib.sh helper against the second host: its
# virsh (IT_URI) and its files (IT_IMG_RUN).
on_h2() {
  # shellcheck disable=SC2034 # read by the lib.sh helper called
  local IT_URI=$H2_URI IT_IMG_RUN=(h2_run)
  "$@"
}

# the decoys: every name the second host will use, other contents here
for f in "$R/base.qcow2" "$R/$D.vda.s1.qcow2" "$R/$D.vda.s1.2.qcow2" "$R/$D.vda.s2.qcow2" \
  "$R/$D.vda.s3.qcow2" "$R/$D.vda.s4.qcow2"; do
  printf 'decoy %s: not the image the second host means\n' "${f##*/}" >"$f"
done
local_sums() {
  find "$R" "$T/overlays" -printf '%y %m %u %s %T@ %p\n' | sort
  find "$R" "$T/overlays" -type f -exec sha256sum {} + | sort
}
SUMS_BEFORE=$(local_sums)
local_unchanged() {
  it_assert_eq "$SUMS_BEFORE" "$(local_sums)" \
    "after $1: nothing in this machine's \$T/r and \$T/overlays was created, changed or deleted"
}

h2_start
h2_run mount -t tmpfs -o size=192m,mode=0755 cfsh2img "$R" || it_fail "tmpfs on \$T/r in the second host's namespace"
on_h2 it_make_image "$R/base.qcow2" 64M
on_h2 it_write_pattern "$R/base.qcow2" 0x11 0 1M
cat >"$T/pool.xml" <<XML
<pool type='dir'><name>$POOL</name><target><path>$R</path></target></pool>
XML
h2_virsh pool-create "$T/pool.xml" >/dev/null || it_fail "pool-create $POOL on the second host"
on_h2 it_domain_xml "$D" "$R/base.qcow2" >"$T/$D.xml"
grep -q "type=.qcow2." "$T/$D.xml" || it_fail "the domain XML does not say qcow2: $(cat "$T/$D.xml")"
h2_virsh define "$T/$D.xml" >/dev/null || it_fail "define $D on the second host"
h2_virsh start "$D" >/dev/null || it_fail "start $D on the second host"
it_make_image "$L/base.qcow2" 64M
it_write_pattern "$L/base.qcow2" 0x91 0 1M
it_define "$DL" "$L/base.qcow2"
it_start "$DL"

# 256 KiB/s: a middle commit takes 2 s per 512 KiB chunk; an active commit
# may copy QEMU's first mirror burst at once.
BW=262144
T0=$(it_now_ms)
h2_mount_fleet "bandwidth=$BW"
it_log "mounted in $(($(it_now_ms) - T0)) ms"
it_wait_dom "$RD"
it_wait_dom "$LD"
grep -q "image files: not on this machine (qemu+tcp://$H2_ADDR/system reaches libvirt over tcp)" "$IT_LOG" ||
  it_fail "chainfs did not judge $H2_URI remote: $(grep 'image files' "$IT_LOG")"
it_log "ok: chainfs judged $H2_URI remote"

# --- 0. the tree ---------------------------------------------------------------------
it_assert_eq "local remote" "$(it_ls "$MNT")" "ls MNT: the two hosts"
it_assert_eq "$D" "$(it_ls "$MNT/remote")" "ls MNT/remote: the second host's one domain"
case " $(it_ls "$MNT/local") " in
  *" $DL "*) ;;
  *) it_fail "ls MNT/local does not list $DL" ;;
esac
case " $(it_ls "$MNT/local") " in
  *" $D "*) it_fail "ls MNT/local lists the second host's $D" ;;
esac
it_log "ok: MNT/local lists $DL, not $D"

# --- 1. mkdir: libvirt makes the overlays on its host -----------------------------
# someone's empty file at s1's overlay name there, put after the pool's
# scan (chainfs must have the pool refreshed to see it)
EMPTY="$R/$D.vda.s1.qcow2"
h2_run touch -d @1000000000 "$EMPTY" || it_fail "an empty file at $EMPTY on the second host"
empty_stat() { h2_run stat -c '%F %s %i %Y %a %U' "$EMPTY" && h2_run sha256sum "$EMPTY"; }
EMPTY_STAT=$(empty_stat)
it_assert_eq "regular empty file 0" "$(head -n1 <<<"$EMPTY_STAT" | cut -d' ' -f1-4)" "the empty file on the second host"
# the backend's file_exists against the second host (beop): the empty file
# is seen once the pool is refreshed; a free name; a directory no pool
# has: cannot tell (-EOPNOTSUPP); a pool whose refresh fails (its
# directory gone): an error, never "no file"
BEOP=${BEOP:-$IT_ROOT/build/tests/beop}
[ -x "$BEOP" ] || it_fail "no beop tool at $BEOP (build it: ninja -C build)"
file_exists_rc() { { "$BEOP" "$H2_URI" file-exists "$1" 2>&1 || true; } | sed -n 's/^rc=//p'; }
it_assert_eq 1 "$(file_exists_rc "$EMPTY")" "file_exists of the empty file put behind the pool's back"
it_assert_eq 0 "$(file_exists_rc "$R/$D.vda.s1.2.qcow2")" "file_exists of a free name in the pool"
it_assert_eq -95 "$(file_exists_rc "$T/$D.vda.s1.qcow2")" "file_exists in a directory no pool has: -EOPNOTSUPP"
h2_run mkdir "$R/gone" || it_fail "mkdir \$R/gone on the second host"
cat >"$T/pool-gone.xml" <<XML
<pool type='dir'><name>$POOL-gone</name><target><path>$R/gone</path></target></pool>
XML
h2_virsh pool-create "$T/pool-gone.xml" >/dev/null || it_fail "pool-create $POOL-gone on the second host"
h2_run rmdir "$R/gone" || it_fail "rmdir \$R/gone on the second host"
rc=$(file_exists_rc "$R/gone/x.qcow2")
case "$rc" in
  -95 | 0 | 1 | "") it_fail "file_exists in a pool whose refresh fails answered '$rc', not an error" ;;
  -*) it_log "ok: file_exists in a pool whose refresh fails: rc=$rc" ;;
  *) it_fail "file_exists in a pool whose refresh fails answered '$rc'" ;;
esac
h2_virsh pool-destroy "$POOL-gone" >/dev/null 2>&1 || true # libvirt may have stopped it
empty_untouched() {
  it_assert_eq "$EMPTY_STAT" "$(empty_stat)" "after $1: the empty file at s1's name on the second host is untouched"
}
declare -A file
declare -A want=([s1]="$R/$D.vda.s1.2.qcow2" [s2]="$R/$D.vda.s2.qcow2")
for s in s1 s2; do
  mkdir "$MNT/$RD/vda/snapshots/$s" || it_fail "mkdir $RD/vda/snapshots/$s"
  file[$s]=$(on_h2 it_domblk "$D" vda)
  it_assert_eq "${want[$s]}" "${file[$s]}" "domblklist on the second host: the overlay of $s beside the active image"
  empty_untouched "mkdir $s"
  h2_run test -s "${file[$s]}" || it_fail "the overlay of $s is not on the second host"
  local_unchanged "mkdir $s"
  on_h2 it_guest_write "$D" "0x2${s#s}" "${s#s}M" 1M
done
it_assert_eq "s1 s2" "$(it_snapshots "$RD" vda)" "ls $RD/vda/snapshots/"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$R/base.qcow2")" \
  "$(jq -r '.layers[].file' "$MNT/$RD/vda/chain.json")" "chain.json: the second host's paths"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$R/base.qcow2")" "$(on_h2 it_chain "${file[s2]}")" \
  "qemu-img on the second host: the same chain"

# --- 2. rmdir of the active layer, guest writes during the merge -------------------
# QEMU's mirror may copy its first burst (tens of MiB) at full speed
# whatever the limit: held in ready by `pivot manual`, the merge is still
# on when the writes after the rmdir land, and when the one after it
# reached ready does.
on_h2 it_guest_write "$D" 0x2f 16M 4M
it_ctl "$RD" vda "pivot manual" || it_fail "echo 'pivot manual' > $RD/vda/ctl"
rmdir "$MNT/$RD/vda/snapshots/s2" || it_fail "rmdir $RD/vda/snapshots/s2"
it_assert_eq "$BW" "$(on_h2 it_libvirt_bandwidth "$D" vda)" "the merge started limited to $BW bytes/s"
it_assert_eq "s1" "$(it_snapshots "$RD" vda)" "s2 left snapshots/ as soon as rmdir returned"
it_assert_contains "$(cat "$MNT/$RD/vda/job")" "active-commit" "job shows an active commit"
on_h2 it_guest_write "$D" 0x33 60M 1M
on_h2 it_guest_write "$D" 0x44 0 4K
it_assert_contains "running ready" "$(it_job_field "$RD" vda state)" "the merge is still on after the guest writes"
it_unthrottle "$RD" vda
it_wait_until 30 "the active commit reaches ready" sh -c "[ \"\$(jq -r .state '$MNT/$RD/vda/job.json')\" = ready ]"
on_h2 it_guest_write "$D" 0x35 24M 1M
it_assert_eq "ready" "$(it_job_field "$RD" vda state)" "the merge waits in ready after the guest writes"
it_ctl "$RD" vda "pivot" || it_fail "echo pivot > $RD/vda/ctl"
it_ctl "$RD" vda "pivot auto" || it_fail "echo 'pivot auto' > $RD/vda/ctl"
out=$(it_wait_job "$RD" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the active commit completed"
it_assert_eq "${file[s1]}" "$(on_h2 it_domblk "$D" vda)" "pivoted to s1's overlay"
it_assert_eq "null" "$(jq -r .leftover "$MNT/$RD/vda/job.json")" "no leftover: deleted through the pool"
h2_run test ! -e "${file[s2]}" || it_fail "s2's overlay is still on the second host"
it_assert_eq "s1" "$(on_h2 it_snapshot_names "$D")" "the second host's snapshot-list: s1"
local_unchanged "rmdir s2"

# --- 3. the second libvirtd goes away with a merge running there ------------------
# 8 MiB more in s1 (the active layer now): its merge below, at 256 KiB/s,
# has a minute to outlast the outage and the reconnection
on_h2 it_guest_write "$D" 0x5e 32M 8M
mkdir "$MNT/$RD/vda/snapshots/s3" || it_fail "mkdir $RD/vda/snapshots/s3"
file[s3]=$(on_h2 it_domblk "$D" vda)
it_assert_eq "$R/$D.vda.s3.qcow2" "${file[s3]}" "the overlay of s3 on the second host"
on_h2 it_guest_write "$D" 0x53 3M 1M
# s1 holds 16 MiB now: a commit at 256 KiB/s, a minute unless let go
rmdir "$MNT/$RD/vda/snapshots/s1" || it_fail "rmdir $RD/vda/snapshots/s1"
it_assert_eq "$BW" "$(on_h2 it_libvirt_bandwidth "$D" vda)" "the middle commit started limited to $BW bytes/s"
it_assert_eq "commit" "$(it_job_field "$RD" vda type)" "a middle commit (no pivot)"

h2_kill
stale_json() { [ "$(jq -r .stale "$MNT/$1/vda/chain.json")" = "$2" ] && [ "$(jq -r .stale "$MNT/$1/vda/job.json")" = "$2" ]; }
remote_stale() {
  grep -q '^stale: *yes' "$MNT/$RD/vda/chain" && grep -q '^stale: *yes' "$MNT/$RD/vda/job" && stale_json "$RD" true
}
it_wait_until 10 "the remote host's chain, job and their JSON say stale" remote_stale
it_log "ok: the remote host's chain, chain.json, job, job.json say stale"
stale_json "$LD" false || it_fail "the local host's chain.json or job.json says stale"
! grep -q '^stale:' "$MNT/$LD/vda/chain" || it_fail "the local host's chain says stale"
it_log "ok: the local host's subtree is not stale"
it_assert_eq "local remote" "$(it_ls "$MNT")" "ls MNT: still the two hosts"
it_assert_eq "running" "$(it_job_field "$RD" vda state)" "the stale job is the merge, running"
# within_ms MS WHAT CMD... — run CMD, fail if it took more than MS ms:
# nothing may hold a FUSE thread long on a host that is away
within_ms() {
  local max=$1 what=$2 t0 dt
  shift 2
  t0=$(it_now_ms)
  "$@" || it_fail "$what failed"
  dt=$(($(it_now_ms) - t0))
  [ "$dt" -le "$max" ] || it_fail "$what took $dt ms (more than $max)"
  it_log "ok: $what in $dt ms"
}
within_ms 5000 "the refused remote mkdir" it_expect_errno ENOTCONN mkdir "$MNT/$RD/vda/snapshots/s4"
within_ms 5000 "the refused remote rmdir" it_expect_errno ENOTCONN rmdir "$MNT/$RD/vda/snapshots/s3"
it_assert_eq "s3" "$(it_snapshots "$RD" vda)" "the refused changes left the remote snapshots/ alone"
local_unchanged "the refused mkdir and rmdir"
# the local host works meanwhile, in its usual time
within_ms 10000 "the local mkdir while the remote host is down" mkdir "$MNT/$LD/vda/snapshots/l1"
ltop=$(it_domblk "$DL" vda)
[ "$ltop" != "$L/base.qcow2" ] || it_fail "the local mkdir did not change the active layer"
it_guest_write "$DL" 0x92 1M 256K
within_ms 10000 "the local rmdir while the remote host is down" rmdir "$MNT/$LD/vda/snapshots/l1"
out=$(it_wait_job "$LD" vda 60)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the local merge completed while the remote host is down"
it_assert_eq "$L/base.qcow2" "$(it_domblk "$DL" vda)" "the local domain pivoted back to its base"
[ ! -e "$ltop" ] || it_fail "the merged local overlay $ltop still exists"
remote_stale || it_fail "the remote host is no longer stale while its libvirtd is down"

h2_restart
T0=$(it_now_ms)
remote_back() { stale_json "$RD" false && ! grep -q '^stale:' "$MNT/$RD/vda/chain"; }
it_wait_until 30 "chainfs reconnects to the second host by itself" remote_back
it_log "ok: reconnected $(($(it_now_ms) - T0)) ms after the restart"
it_assert_eq "running" "$(it_job_field "$RD" vda state)" "the merge is still followed after the reconnection"
on_h2 it_guest_write "$D" 0x66 62M 1M
it_unthrottle "$RD" vda
out=$(it_wait_job "$RD" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge left running completed after the restart"
it_assert_eq "${file[s3]}" "$(on_h2 it_domblk "$D" vda)" "no pivot: s3 is still the active layer"
it_assert_eq "$(printf '%s\n' "${file[s3]}" "$R/base.qcow2")" "$(on_h2 it_chain "${file[s3]}")" \
  "s3 backs onto the base now (qemu-img on the second host)"
h2_run test ! -e "${file[s1]}" || it_fail "s1's overlay is still on the second host"
it_assert_eq "s3" "$(it_snapshots "$RD" vda)" "ls $RD/vda/snapshots/: s3"
local_unchanged "the merge of s1"
empty_untouched "the merge of s1"
h2_fleet_journals_empty
h2_fleet_logs_named "$D" "$DL"

h2_virsh destroy "$D" >/dev/null || it_fail "destroy $D"
it_destroy "$DL"
on_h2 it_check_patterns "${file[s3]}" "0x44 0 4K" "0x11 4K 1020K" "0x21 1M 1M" "0x22 2M 1M" "0x53 3M 1M" \
  "0x2f 16M 4M" "0x35 24M 1M" "0x5e 32M 8M" "0x33 60M 1M" "0x66 62M 1M"
on_h2 it_check_patterns "$R/base.qcow2" "0x2f 16M 4M"
it_check_patterns "$L/base.qcow2" "0x91 0 1M" "0x92 1M 256K"
