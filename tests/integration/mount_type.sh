#!/usr/bin/env bash
# mount_type.sh — chainfs mounted like a filesystem (issue 11 §3):
#  - /proc/mounts and `mount` say "qemu:///system on DIR type
#    fuse.chainfs": the URI as libvirt resolved it (none given: libvirt's
#    default), the type from subtype=chainfs; a user's own fsname= and
#    subtype= win;
#  - `mount -t fuse.chainfs qemu:///system DIR -o allow_other` (util-linux
#    mount -> mount.fuse3 -> `chainfs qemu:///system DIR -o
#    rw,allow_other,dev,suid`) mounts, with allow_other; `umount DIR`
#    unmounts and the detached daemon exits 0 (tests/tools/reaper.c
#    collects its status);
#  - README's /etc/fstab line, taken from README itself, works the same
#    through `mount -T FSTAB DIR` (util-linux's alternative fstab), with
#    only the mount point changed and a state_dir of the test's added.
# mount clears PATH for its helpers, and mount.fuse3 runs `chainfs`
# through /bin/sh, whose default PATH begins with /usr/local/sbin: the
# script runs in a mount namespace of its own (unshare) in which the
# build's chainfs is bind-mounted there. Nothing of it reaches the host;
# chainfs in it takes libvirt's files for remote (another namespace),
# which changes nothing here (the tree is only listed).
if [ -z "${CFS_MOUNT_TYPE_NS:-}" ] && [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1; then
  exec unshare --mount --propagation private env CFS_MOUNT_TYPE_NS=1 bash "$0" "$@"
fi
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
[ -n "${CFS_MOUNT_TYPE_NS:-}" ] || it_skip "unshare is not installed"
[ -x "${REAPER:-}" ] || it_fail "no reaper tool at '${REAPER:-}'"
command -v findmnt >/dev/null 2>&1 || it_skip "findmnt is not installed"
[ -x /sbin/mount.fuse3 ] || [ -x /usr/sbin/mount.fuse3 ] || it_skip "no mount.fuse3 (fuse3)"

mkdir -p "$T/bin"
ln -s "$CHAINFS" "$T/bin/chainfs"
mount --bind "$T/bin" /usr/local/sbin || it_fail "bind $T/bin on /usr/local/sbin in the test's namespace"
it_assert_eq "/usr/local/sbin/chainfs" "$(env -i /bin/sh -c 'command -v chainfs')" \
  "sh with its default PATH finds the build's chainfs"

D="$IT_PREFIX-mt"
it_make_image "$T/vda.qcow2" 64M
it_define "$D" "$T/vda.qcow2"

# src_type DIR — "SOURCE TYPE" of the mount on DIR, as /proc/mounts has it
src_type() { findmnt -n -o SOURCE,FSTYPE --mountpoint "$1" | tr -s ' '; }

# --- started directly: the resolved URI and the type -------------------------------
M1="$T/m1"
mkdir -p "$M1" "$T/s1"
env -u LIBVIRT_DEFAULT_URI "$CHAINFS" -o "state_dir=$T/s1" "$M1" >>"$IT_LOG" 2>&1 ||
  it_fail "chainfs without -c"
it_assert_eq "qemu:///system fuse.chainfs" "$(src_type "$M1")" \
  "no URI given: the source is the URI libvirt connected to"
it_assert_contains "$(mount)" "qemu:///system on $M1 type fuse.chainfs (" "mount lists it as a fuse.chainfs"
it_assert_eq "qemu:///system $M1 fuse.chainfs" "$(awk -v m="$M1" '$2 == m { print $1, $2, $3 }' /proc/mounts)" \
  "/proc/mounts says fuse.chainfs"
fusermount3 -u "$M1" || it_fail "fusermount3 -u $M1"
it_wait_until 10 "the daemon of $M1 unmounted" sh -c "! mountpoint -q '$M1'"

# the user's own fsname and subtype win (a state_dir of its own: the
# daemon just unmounted may still be exiting, and holds s1's lock until
# it has)
mkdir -p "$T/s1b"
"$CHAINFS" -c "$IT_URI" -o "state_dir=$T/s1b,fsname=mine,subtype=theirs" "$M1" >>"$IT_LOG" 2>&1 ||
  it_fail "chainfs -o fsname=mine,subtype=theirs"
it_assert_eq "mine fuse.theirs" "$(src_type "$M1")" "the user's fsname and subtype win"
fusermount3 -u "$M1" || it_fail "fusermount3 -u $M1"
it_wait_until 10 "the daemon of $M1 unmounted" sh -c "! mountpoint -q '$M1'"

# --- mount and umount through util-linux -------------------------------------------
# mounted COMMAND... — run COMMAND (a mount) under reaper; sets RPID,
# RLOG and DPID, the detached daemon that COMMAND left behind
mounted() {
  local i
  RLOG="$T/reaper.$RANDOM.log"
  : >"$RLOG"
  "$REAPER" "$RLOG" "$@" >>"$IT_LOG" 2>&1 &
  RPID=$!
  for ((i = 0; i < 600; i++)); do
    [ -s "$RLOG" ] && break
    sleep 0.05
  done
  it_assert_eq "0" "$(awk 'NR == 1 { print $2 }' "$RLOG")" "$* exits 0"
  DPID=$(pgrep -P "$RPID" || true)
  [ -n "$DPID" ] || it_fail "no chainfs running after $*"
  it_log "daemon: $(tr '\0' ' ' <"/proc/$DPID/cmdline")"
}
# unmounted DIR — umount DIR, wait for the daemon, check it exited 0
unmounted() {
  umount "$1" || it_fail "umount $1"
  mountpoint -q "$1" && it_fail "$1 is still mounted after umount"
  wait "$RPID" || true
  it_assert_eq "0" "$(awk -v p="$DPID" '$1 == p { print $2 }' "$RLOG")" "after umount $(it_short "$1") the daemon exited 0"
  RPID=""
}
mt_cleanup() {
  [ -n "${RPID:-}" ] || return 0
  [ -n "${DPID:-}" ] && kill -TERM "$DPID" 2>/dev/null
  wait "$RPID"
  return 0
}
IT_CLEANUP_HOOKS+=(mt_cleanup)

MNT="$T/mnt"
mkdir -p "$MNT" "$T/s2"
mounted mount -t fuse.chainfs qemu:///system "$MNT" -o "allow_other,state_dir=$T/s2"
it_assert_eq "qemu:///system fuse.chainfs" "$(src_type "$MNT")" "mount -t fuse.chainfs: /proc/mounts says fuse.chainfs"
it_assert_contains ",$(findmnt -n -o OPTIONS --mountpoint "$MNT")," ",allow_other," "allow_other reached the kernel"
it_wait_dom "$D"
unmounted "$MNT"

# --- README's fstab line -------------------------------------------------------------
line=$(awk '/^    [^ ]+ +\/[^ ]* +fuse\.chainfs +[^ ]+ +0 +0$/' "$IT_ROOT/README.md")
[ -n "$line" ] || it_fail "no fstab line (SOURCE DIR fuse.chainfs OPTS 0 0) in README.md"
[ "$(wc -l <<<"$line")" -eq 1 ] || it_fail "more than one fstab line in README.md: $line"
read -r f_src f_dir f_type f_opts f_freq f_pass <<<"$line"
it_log "README's fstab line: $f_src $f_dir $f_type $f_opts $f_freq $f_pass"
mkdir -p "$T/s3"
printf '%s %s %s %s %s %s\n' "$f_src" "$MNT" "$f_type" "$f_opts,state_dir=$T/s3" "$f_freq" "$f_pass" >"$T/fstab"
mounted mount -T "$T/fstab" "$MNT"
it_assert_eq "$f_src $f_type" "$(src_type "$MNT")" "the fstab line mounts $f_src as $f_type"
opts=",$(findmnt -n -o OPTIONS --mountpoint "$MNT"),"
for o in ${f_opts//,/ }; do
  case "$o" in
    noauto | nofail | _netdev | x-*) ;; # for mount and systemd, not the kernel
    *) it_assert_contains "$opts" ",$o," "fstab option $o is in effect" ;;
  esac
done
it_wait_dom "$D"
unmounted "$MNT"
