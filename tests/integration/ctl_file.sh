#!/usr/bin/env bash
# ctl_file.sh — the FUSE side of a disk's ctl file, without a running job:
#  - -o bandwidth=N takes K/M/G/T suffixes; a malformed N is refused at
#    start with a clear message and exit status 2;
#  - every disk lists ctl, mode 0644 root's (0664 and the group's with
#    manage_group); reading it shows the settings (pivot auto, the
#    -o bandwidth default) and the commands;
#  - malformed writes (an unknown command, bandwidth -5 / 1Q / missing /
#    overflowing, two commands in one write, a NUL, 4097 bytes, 1 MiB) get
#    EINVAL or E2BIG with a log line, change nothing, and the daemon keeps
#    serving; truncate to 0 is harmless, to another size EINVAL; ctl's
#    name and attributes are chainfs's (EPERM);
#  - a user who may not change snapshots gets EACCES on writing, and may
#    read; a member of manage_group may write;
#  - from a shell, with no job: `echo abort > ctl`, `printf pivot > ctl`
#    and `echo "bandwidth 10M" >> ctl` get ENOENT; `echo "pivot manual" >
#    ctl` is taken and shown (these need the engine's cfs_engine_ctl).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

NOBODY_GID=$(id -g nobody)
# a group nobody is not in by default, for manage_group
GROUP=users
getent group "$GROUP" >/dev/null || it_skip "no group '$GROUP' on this host"
GROUP_GID=$(getent group "$GROUP" | cut -d: -f3)

# --- -o bandwidth=N: malformed values are refused before anything starts ---------
mkdir -p "$T/mnt0"
for bad in 1Q -5 "" 10MB 1.5M 18446744073709551616 16777216T; do
  status=0
  out=$("$CHAINFS" -f -c "$IT_URI" -o "state_dir=$T/state,bandwidth=$bad" "$T/mnt0" 2>&1) || status=$?
  it_assert_eq 2 "$status" "-o bandwidth='$bad' exits 2"
  it_assert_contains "$out" "-o bandwidth=$bad: not a number of bytes/s" "-o bandwidth='$bad': the message says why"
  mountpoint -q "$T/mnt0" && it_fail "$T/mnt0 got mounted with bandwidth=$bad"
done
out=$("$CHAINFS" --help)
it_assert_contains "$out" "-o bandwidth=N" "--help lists -o bandwidth"

D="$IT_PREFIX-ctl"
it_make_image "$T/vda.qcow2" 64M
it_define "$D" "$T/vda.qcow2"
it_mount "allow_other,bandwidth=10M"
it_wait_dom "$D"
C="$MNT/$D/vda/ctl"

# --- the node ---------------------------------------------------------------------
it_assert_eq "chain chain.json ctl job job.json snapshots wait" "$(it_ls "$MNT/$D/vda")" "the disk lists ctl"
it_assert_eq "644 root root regular file" "$(stat -c '%a %U %G %F' "$C")" "ctl is 0644, root's"
size=$(stat -c %s "$C")
content=$(cat "$C")
it_assert_eq "$size" "$(($(wc -c <"$C")))" "stat gives ctl's exact size"

# --- reading ----------------------------------------------------------------------
it_assert_eq "auto" "$(sed -n 's/^pivot: *//p' "$C")" "ctl shows pivot: auto"
it_assert_eq "10.0MiB/s" "$(sed -n 's/^bandwidth: *//p' "$C")" "ctl shows the -o bandwidth default"
for cmd in "abort " "pivot " "pivot manual " "pivot auto " "bandwidth N " "copy DEST " "finish "; do
  grep -q "^$cmd" "$C" || it_fail "ctl does not list '$cmd'"
done
it_log "ok: ctl lists its commands"

# --- malformed writes: EINVAL / E2BIG, nothing changes, the daemon serves on -----
# ctl_write MODE HEX — open ctl (w: truncate, a: append) and write the
# bytes (hex) in one write(); print OK or the errno name.
ctl_write() {
  python3 - "$C" "$1" "$2" <<'PY'
import errno, os, sys
path, mode, data = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
fd = os.open(path, flags, 0o644)
try:
    n = os.write(fd, data)
    print("OK" if n == len(data) else "SHORT %d" % n)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
finally:
    os.close(fd)
PY
}
hex() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
state() {
  cat "$C" "$MNT/$D/vda/job" "$MNT/$D/vda/chain"
  it_ls "$MNT/$D/vda/snapshots"
  ls -l "$T/overlays"
}

before=$(state)
bad_cmds=("bogus\n" "bandwidth -5\n" "bandwidth 1Q\n" "bandwidth\n" "bandwidth \n"
          "bandwidth 99999999999999999999999\n" "bandwidth 16777216T\n"
          "abort\npivot\n" "pivot now\n" "ABORT\n" "\n" "abort now\n")
for cmd in "${bad_cmds[@]}"; do
  # shellcheck disable=SC2059 # the \n in each command is meant
  h=$(hex "$(printf "$cmd"; printf x)")
  h=${h%78} # (the x kept the trailing newline through $(...))
  for mode in w a; do
    it_assert_eq EINVAL "$(ctl_write $mode "$h")" "write '$cmd' (${mode}) -> EINVAL"
  done
done
it_assert_eq EINVAL "$(ctl_write w "$(hex abort)00")" "write 'abort\\0' -> EINVAL"
it_assert_eq EINVAL "$(ctl_write w "00$(hex abort)0a")" "write '\\0abort\\n' -> EINVAL"
big=$(head -c 4097 /dev/zero | tr '\0' ' ' | od -An -tx1 -v | tr -d ' \n')
big="$(hex abort)${big:10}"
it_assert_eq E2BIG "$(ctl_write w "$big")" "a 4097-byte write -> E2BIG"
it_assert_eq E2BIG "$(python3 - "$C" <<'PY'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    os.write(fd, b"abort\n" * ((1 << 20) // 6 + 1))
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
)" "a 1 MiB write -> E2BIG"
it_assert_eq "$before" "$(state)" "the malformed writes changed nothing"
grep -q "ctl $D/vda: \"bogus.*refused (Invalid argument): unknown command" "$IT_LOG" ||
  it_fail "no log line for the refused 'bogus'"
grep -q "ctl $D/vda: .*refused (Argument list too long): longer than 4096 bytes" "$IT_LOG" ||
  it_fail "no log line for the refused 4097 bytes"
it_log "ok: each refusal has its log line"
kill -0 "$IT_PID" || it_fail "the daemon died"
it_assert_eq "$content" "$(cat "$C")" "the daemon still serves ctl"

# --- truncate, names and attributes ---------------------------------------------
try() {
  python3 - "$@" <<'PY'
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
calls = {
    "truncate0": lambda: os.truncate(path, 0),
    "truncate5": lambda: os.truncate(path, 5),
    "chmod": lambda: os.chmod(path, 0o666),
    "chown": lambda: os.chown(path, 0, 0),
    "utime": lambda: os.utime(path, (1000000000, 1000000000)),
    "unlink": lambda: os.unlink(path),
    "rename": lambda: os.rename(path, path + ".x"),
    "read": lambda: open(path, "rb").read(),
    "open_write": lambda: os.close(os.open(path, os.O_WRONLY)),
    "write_abort": lambda: os.write(os.open(path, os.O_WRONLY), b"abort\n"),
}
try:
    calls[op]()
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
else:
    print("OK")
PY
}
it_assert_eq OK "$(try truncate0 "$C")" "truncate ctl to 0 is harmless"
it_assert_eq EINVAL "$(try truncate5 "$C")" "truncate ctl to 5 -> EINVAL"
for op in chmod chown utime unlink rename; do
  it_assert_eq EPERM "$(try $op "$C")" "$op ctl -> EPERM"
done
it_assert_eq "$before" "$(state)" "truncate and the refusals changed nothing"

# --- users who may not change snapshots ------------------------------------------
as_nobody() {
  setpriv --reuid=nobody --regid="$NOBODY_GID" --clear-groups "$@"
}
as_member() {
  setpriv --reuid=nobody --regid="$NOBODY_GID" --groups="$GROUP_GID" "$@"
}
it_assert_eq OK "$(as_nobody bash -c "$(declare -f try); try read '$C'")" "nobody may read ctl"
it_assert_eq EACCES "$(as_nobody bash -c "$(declare -f try); try open_write '$C'")" "nobody may not open ctl for writing"
out=$(as_nobody bash -c "echo abort > '$C'" 2>&1) && it_fail "nobody's echo abort > ctl succeeded"
it_assert_contains "$out" "Permission denied" "nobody: echo abort > ctl: Permission denied"
it_assert_eq "$before" "$(state)" "nobody's attempts changed nothing"

# --- with manage_group: the group's node ------------------------------------------
it_unmount || it_fail "unmount"
it_mount "allow_other,manage_group=$GROUP"
it_wait_dom "$D"
it_assert_eq "664 root $GROUP" "$(stat -c '%a %U %G' "$C")" "with manage_group, ctl is 0664 and the group's"
it_assert_eq "unlimited" "$(sed -n 's/^bandwidth: *//p' "$C")" "without -o bandwidth, ctl shows unlimited"
it_assert_eq EACCES "$(as_nobody bash -c "$(declare -f try); try open_write '$C'")" "a non-member may not open ctl for writing"

# --- what needs the engine (cfs_engine_ctl) ---------------------------------------
# A member of the group reaches the engine: with no job on the disk,
# abort gets ENOENT (the permission check let it through).
it_assert_eq ENOENT "$(as_member bash -c "$(declare -f try); try write_abort '$C'")" "a member of $GROUP: abort with no job -> ENOENT"
out=$(bash -c "echo abort > '$C'" 2>&1) && it_fail "echo abort > ctl with no job succeeded"
it_assert_contains "$out" "No such file or directory" "echo abort > ctl with no job: ENOENT"
out=$(bash -c "printf pivot > '$C'" 2>&1) && it_fail "printf pivot > ctl with no job succeeded"
it_assert_contains "$out" "No such file or directory" "printf pivot > ctl with no job: ENOENT"
out=$(bash -c "echo 'bandwidth 10M' >> '$C'" 2>&1) && it_fail "echo bandwidth 10M >> ctl with no job succeeded"
it_assert_contains "$out" "No such file or directory" "echo \"bandwidth 10M\" >> ctl with no job: ENOENT"
# copy DEST makes chainfs (root) create files: a member only where the
# member may create files (issue 8); the domain is shut off, so a copy
# that passes reaches the engine's EOPNOTSUPP
rootdir=$(it_tmpdir)
out=$(as_member bash -c "echo 'copy $rootdir/x.qcow2 flatten' > '$C'" 2>&1) &&
  it_fail "a member's copy into a root-only directory succeeded"
it_assert_contains "$out" "Permission denied" "a member may not copy into a directory it cannot write"
[ ! -e "$rootdir/x.qcow2" ] || it_fail "a refused copy created $rootdir/x.qcow2"
memberdir=$(it_tmpdir)
chgrp "$GROUP" "$memberdir"
chmod 0775 "$memberdir"
out=$(as_member bash -c "echo 'copy $memberdir/x.qcow2 flatten' > '$C'" 2>&1) &&
  it_fail "copy of a shut-off domain's disk succeeded"
it_assert_contains "$out" "Operation not supported" "a member's copy into its group's directory reaches the engine"
echo "pivot manual" >"$C" || it_fail "echo \"pivot manual\" > ctl"
it_assert_eq "manual" "$(sed -n 's/^pivot: *//p' "$C")" "ctl shows pivot: manual"
echo "pivot auto" >"$C" || it_fail "echo \"pivot auto\" > ctl"
it_assert_eq "auto" "$(sed -n 's/^pivot: *//p' "$C")" "ctl shows pivot: auto again"
