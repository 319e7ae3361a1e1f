#!/usr/bin/env bash
# refusals.sh — everything a user may try on the tree other than mkdir and
# rmdir of a snapshot is refused with a clear errno, never ENOSYS, and
# changes nothing: a file's content is read-only (EROFS: open for
# writing, truncate); names and attributes are chainfs's (EPERM: chmod,
# chown, utimes, create, mkfifo/mknod, symlink, link, rename, unlink,
# mkdir/rmdir outside snapshots/). Also: the refusal of a mkdir whose
# name holds a newline logs the name on one line (no forged log line).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-ro"
it_make_image "$T/vda.qcow2" 64M
it_define "$D" "$T/vda.qcow2"
it_mount
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"
mkdir "$S/s1" || it_fail "mkdir snapshots/s1"

# try OP PATH [ARG] — run one os.* call, print the errno name or OK.
try() {
  python3 - "$@" <<'PY'
import errno, os, stat, sys
op, path = sys.argv[1], sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else None
calls = {
    "chmod": lambda: os.chmod(path, 0o644),
    "chown": lambda: os.chown(path, 0, 0),
    "utime": lambda: os.utime(path),                       # touch of an existing name
    "utime_set": lambda: os.utime(path, (1000000000, 1000000000)),
    "open_write": lambda: os.close(os.open(path, os.O_WRONLY)),
    "open_append": lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)),
    "open_rdwr": lambda: os.close(os.open(path, os.O_RDWR)),
    "open_trunc": lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC)),
    "truncate": lambda: os.truncate(path, 0),
    "create": lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
    "mkfifo": lambda: os.mkfifo(path),
    "mknod": lambda: os.mknod(path, 0o644 | stat.S_IFREG),
    "symlink": lambda: os.symlink("target", path),
    "link": lambda: os.link(arg, path),
    "rename": lambda: os.rename(path, arg),
    "unlink": lambda: os.unlink(path),
    "mkdir": lambda: os.mkdir(path),
    "rmdir": lambda: os.rmdir(path),
}
try:
    calls[op]()
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
else:
    print("OK")
PY
}

# What a refusal must not change: the tree (only our domain: other domains
# on this host come and go) and overlay_dir; libvirt's view is compared
# once at the end (libvirt calls are slow on a busy host).
world() {
  stat -c '%n %a %s %u %g %F' "$MNT"
  find "$MNT/$D" -printf '%p %m %s %u %g %y\n' | sort
  cat "$MNT/$D/vda/chain" "$S/s1/info"
  ls -l "$T/overlays"
}
libvirt_view() {
  it_virsh domblklist "$D"
  it_snapshot_names "$D"
}
libvirt_before=$(libvirt_view)

# expect ERRNO OP PATH [ARG] — OP fails with ERRNO and changes nothing.
expect() {
  local want=$1 before after got
  shift
  before=$(world)
  got=$(try "$@")
  it_assert_eq "$want" "$got" "$1 $(it_short "$2") -> $want"
  after=$(world)
  it_assert_eq "$before" "$after" "$1 $(it_short "$2") changed nothing"
}

dirs=("$MNT" "$MNT/$D" "$MNT/$D/vda" "$S" "$S/s1")
files=("$MNT/$D/vda/chain" "$MNT/$D/vda/chain.json" "$MNT/$D/vda/job"
       "$MNT/$D/vda/job.json" "$MNT/$D/vda/wait" "$S/s1/info" "$S/s1/info.json")

# --- attributes of every kind of node: EPERM ---------------------------------------
for p in "${dirs[@]}" "${files[@]}"; do
  expect EPERM chmod "$p"
  expect EPERM chown "$p"
  expect EPERM utime "$p"
  expect EPERM utime_set "$p"
done

# --- file contents: EROFS ---------------------------------------------------------
for p in "${files[@]}"; do
  expect EROFS open_write "$p"
  expect EROFS open_rdwr "$p"
  expect EROFS open_append "$p"
  expect EROFS open_trunc "$p"
  expect EROFS truncate "$p"
done

# --- new names anywhere: EPERM (mkdir is a snapshot only in snapshots/) -------------
for d in "${dirs[@]}"; do
  expect EPERM create "$d/newfile"
  expect EPERM mkfifo "$d/newfifo"
  expect EPERM mknod "$d/newnode"
  expect EPERM symlink "$d/newlink"
  expect EPERM link "$d/newhard" "$MNT/$D/vda/chain"
done
for d in "$MNT" "$MNT/$D" "$MNT/$D/vda" "$S/s1"; do
  expect EPERM mkdir "$d/newdir"
done

# --- names that exist: EPERM -----------------------------------------------------
for p in "${files[@]}"; do
  expect EPERM unlink "$p"
  expect EPERM rename "$p" "$MNT/$D/vda/renamed"
done
expect EPERM rename "$S/s1" "$S/s9"
expect EPERM rename "$MNT/$D" "$MNT/$D-renamed"
for d in "$MNT/$D" "$MNT/$D/vda"; do
  expect EPERM rmdir "$d"
done

# --- the shell tools say so too ---------------------------------------------------
out=$(touch "$MNT/$D/vda/chain" 2>&1) && it_fail "touch chain succeeded"
it_assert_contains "$out" "Read-only file system" "touch chain: Read-only file system"
out=$(touch "$S/newfile" 2>&1) && it_fail "touch snapshots/newfile succeeded"
it_assert_contains "$out" "Operation not permitted" "touch snapshots/newfile: Operation not permitted"
out=$(mkfifo "$MNT/$D/fifo" 2>&1) && it_fail "mkfifo succeeded"
it_assert_contains "$out" "Operation not permitted" "mkfifo: Operation not permitted"
out=$(chmod 0777 "$MNT/$D/vda/job" 2>&1) && it_fail "chmod succeeded"
it_assert_contains "$out" "Operation not permitted" "chmod: Operation not permitted"
if grep -q "Function not implemented" "$IT_LOG"; then
  it_fail "the log mentions ENOSYS"
fi

# --- a newline in a refused mkdir name does not forge a log line --------------------
forged="x
2026-01-01T00:00:00.000Z chainfs info: forged"
# (its refusal is shown in the disk's job file, as every refusal is)
it_assert_eq EINVAL "$(try mkdir "$S/$forged")" "mkdir of a name with a newline -> EINVAL"
grep -q '^2026-01-01T00:00:00.000Z chainfs info: forged' "$IT_LOG" &&
  it_fail "a mkdir name forged a log line"
grep -qF 'snapshots/x\n2026-01-01T00:00:00.000Z chainfs info: forged refused (Invalid argument)' "$IT_LOG" ||
  it_fail "no one-line refusal of the mkdir with a newline in its name"
it_log "ok: the refusal of a name with a newline is one log line, the newline escaped"

it_assert_eq "s1" "$(it_snapshots "$D" vda)" "snapshots/ still lists s1 alone"
it_assert_eq "$libvirt_before" "$(libvirt_view)" "libvirt's disks and snapshots did not change"
