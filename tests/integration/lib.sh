# shellcheck shell=bash
# lib.sh — shared helpers for the integration scripts.
#
# Every script sources this file and calls `it_init` first. A script works
# inside one temporary directory $T (under /var/tmp, mode 0755 so that QEMU,
# running as libvirt-qemu, can reach the images), creates its own domains
# (all named "$IT_PREFIX-..."), mounts chainfs on $T/mnt with state_dir and
# overlay_dir inside $T, and on exit — pass, fail or signal — unmounts,
# checks that the daemon exited 0, destroys and undefines every domain it
# created and removes $T. It never touches a domain, file or process it did
# not create. Exit codes follow meson: 0 pass, 1 fail, 77 skip.
set -euo pipefail

IT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IT_PREFIX="cfsit-$$"
IT_URI=qemu:///system
CHAINFS=${CHAINFS:-$IT_ROOT/build/fs/fuse/chainfs}
IT_NAME=$(basename "$0" .sh)

T=""          # the script's temporary directory
MNT=""        # the chainfs mount point, once it_mount ran
IT_PID=""     # the chainfs daemon's pid
IT_LOG=""     # the chainfs daemon's stderr and stdout
IT_DOMAINS=() # every domain this script defined
IT_VIRT_TYPE=""
IT_CLEANUP_HOOKS=() # functions it_cleanup calls after the unmount, before removing $T
# shellcheck disable=SC2034 # read by hooks in other files
IT_RC=0             # the script's exit status, for the hooks
IT_BANDWIDTH=""       # it_mount_slow's bytes/s, for it_rmdir_throttled
IT_IMG_RUN=()       # command prefix for qemu-img and qemu-io (private_libvirtd.sh's pd_in)

# ---- messages and assertions -------------------------------------------------

it_log() { printf '[%s %s] %s\n' "$IT_NAME" "$(date +%T.%3N)" "$*" >&2; }

it_fail() {
  printf '[%s] FAIL: %s\n' "$IT_NAME" "$*" >&2
  exit 1
}

it_skip() {
  printf '[%s] SKIP: %s\n' "$IT_NAME" "$*" >&2
  exit 77
}

# it_assert_eq EXPECTED ACTUAL WHAT
it_assert_eq() {
  if [ "$1" != "$2" ]; then
    printf '[%s] expected: %s\n[%s] actual:   %s\n' "$IT_NAME" "$1" "$IT_NAME" "$2" >&2
    it_fail "$3"
  fi
  it_log "ok: $3"
}

# it_assert_contains HAYSTACK NEEDLE WHAT
it_assert_contains() {
  case "$1" in
    *"$2"*) it_log "ok: $3" ;;
    *) printf '[%s] %q does not contain %q\n' "$IT_NAME" "$1" "$2" >&2; it_fail "$3" ;;
  esac
}

# it_errno OP PATH — run os.OP(PATH) (mkdir, rmdir, listdir, stat, open) and
# print the errno name it failed with, or "OK". Shell messages vary; errno
# names do not.
it_errno() {
  python3 - "$1" "$2" <<'PY'
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "open":
        with open(path, "rb") as f:
            f.read()
    else:
        getattr(os, op)(path)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
else:
    print("OK")
PY
}

# it_expect_errno ERRNO_NAME OP PATH — assert that os.OP(PATH) fails with it.
it_expect_errno() {
  local got
  got=$(it_errno "$2" "$3")
  it_assert_eq "$1" "$got" "$2 $(it_short "$3") -> $1"
}

# Path relative to the mount or $T, for readable messages.
it_short() {
  local p=$1
  [ -n "$MNT" ] && p=${p/#"$MNT"/MNT}
  [ -n "$T" ] && p=${p/#"$T"/\$T}
  printf '%s' "$p"
}

# it_poll TIMEOUT_S CMD... — run CMD every 50 ms until it succeeds (status
# 0) or TIMEOUT_S seconds (may be fractional) have passed (status 1).
it_poll() {
  local deadline
  deadline=$(($(date +%s%N) + $(awk -v t="$1" 'BEGIN { printf "%.0f", t * 1e9 }')))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# it_wait_until TIMEOUT_S WHAT CMD... — it_poll, failing the test on
# timeout. A wait that used more than half its time is logged ("slow:"),
# so a near miss on a loaded machine shows before it becomes a failure.
it_wait_until() {
  local timeout=$1 what=$2 t0 took
  shift 2
  t0=$(it_now_ms)
  it_poll "$timeout" "$@" || it_fail "timed out after ${timeout}s: $what"
  took=$(($(it_now_ms) - t0))
  if [ $((took * 2)) -gt "$(awk -v t="$timeout" 'BEGIN { printf "%.0f", t * 1000 }')" ]; then
    it_log "slow: $what took ${took} ms of ${timeout} s"
  fi
  return 0
}

# it_now_ms — a monotonic-enough wall clock in milliseconds.
it_now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- set-up and clean-up -----------------------------------------------------

# it_init — check requirements (skip when this machine cannot run
# integration tests at all), create $T, install the clean-up trap.
it_init() {
  local tool
  [ "$(id -u)" -eq 0 ] || it_skip "integration tests need root (libvirt qemu:///system, FUSE)"
  [ -c /dev/fuse ] || it_skip "no /dev/fuse"
  for tool in virsh qemu-img qemu-io jq python3 fusermount3 mountpoint; do
    command -v "$tool" >/dev/null 2>&1 || it_skip "$tool is not installed (run scripts/deps.sh)"
  done
  # shellcheck source=scripts/libvirtd.sh
  . "$IT_ROOT/scripts/libvirtd.sh"
  libvirtd_ensure || it_skip "no libvirtd answers on $IT_URI and none could be started"
  [ -x "$CHAINFS" ] || it_fail "no chainfs binary at $CHAINFS (build it: ninja -C build)"

  T=$(mktemp -d "/var/tmp/$IT_PREFIX.XXXXXX")
  chmod 0755 "$T"
  mkdir -p "$T/state" "$T/overlays"
  IT_LOG="$T/chainfs.log"
  trap it_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  IT_VIRT_TYPE=$(libvirtd_virt_type) || it_fail "CHAINFS_VIRT_TYPE=$CHAINFS_VIRT_TYPE: expected kvm or qemu"
  it_log "temp dir $T, domains $IT_PREFIX-*, virt type $IT_VIRT_TYPE${CHAINFS_VIRT_TYPE:+ (forced by CHAINFS_VIRT_TYPE)}"
}

# it_tmpdir — a new 0755 directory inside $T; prints its path.
it_tmpdir() {
  local d
  d=$(mktemp -d "$T/d.XXXXXX")
  chmod 0755 "$d"
  printf '%s\n' "$d"
}

it_cleanup() {
  local rc=$? dom hook
  set +e
  trap - EXIT INT TERM
  # Domains first: libvirt runs QEMU in a mount namespace of its own, a
  # copy of the host's taken at start, and a QEMU started while chainfs
  # was mounted keeps the FUSE connection alive after the unmount (where /
  # is not a shared mount). lifecycle.sh tests that case on purpose.
  for dom in "${IT_DOMAINS[@]}"; do
    it_virsh domid "$dom" >/dev/null 2>&1 || continue
    it_virsh destroy "$dom" >/dev/null 2>&1
    it_virsh undefine --snapshots-metadata "$dom" >/dev/null 2>&1 ||
      it_virsh undefine "$dom" >/dev/null 2>&1
  done
  it_unmount || { [ "$rc" -ne 0 ] || rc=1; }
  # shellcheck disable=SC2034 # read by the hooks
  IT_RC=$rc
  for hook in "${IT_CLEANUP_HOOKS[@]}"; do
    "$hook" || { [ "$rc" -ne 0 ] || rc=1; }
  done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -n "$IT_LOG" ] && [ -s "$IT_LOG" ]; then
    echo "[$IT_NAME] ---- chainfs log (last 200 lines) ----" >&2
    tail -n 200 "$IT_LOG" >&2
    echo "[$IT_NAME] ---- end of chainfs log ----" >&2
  fi
  if [ -n "$T" ] && [ -d "$T" ]; then
    if [ -n "$MNT" ] && mountpoint -q "$MNT"; then
      echo "[$IT_NAME] $MNT is still mounted; leaving $T in place" >&2
    else
      rm -rf "$T"
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    echo "[$IT_NAME] PASS" >&2
  fi
  exit "$rc"
}

# ---- libvirt -----------------------------------------------------------------

it_virsh() { virsh -q -c "$IT_URI" "$@"; }

# it_mount_slow [BYTES] [EXTRA_OPTS] — it_mount with -o bandwidth=BYTES
# (default 1048576, 1 MiB/s): every merge chainfs starts is limited from
# its first byte (QEMU's rate limit, nothing races the merge). BYTES is
# kept in IT_BANDWIDTH for it_rmdir_throttled. (`bandwidth N` in ctl only
# changes a job that already runs: it cannot slow a merge's first burst.)
it_mount_slow() {
  IT_BANDWIDTH=${1:-1048576}
  it_mount "bandwidth=$IT_BANDWIDTH${2:+,$2}"
}

# it_ctl DOM DISK COMMAND — one write of COMMAND (echo's newline) to the
# disk's ctl file; the write's result is the command's.
it_ctl() {
  echo "$3" >"$MNT/$1/$2/ctl"
}

# it_ctl_errno DOM DISK TEXT [SIZE] — one write(2) of TEXT (backslash
# escapes such as \n interpreted) to the disk's ctl, or of SIZE bytes of
# TEXT repeated; print the errno name it failed with, or OK.
it_ctl_errno() {
  python3 - "$MNT/$1/$2/ctl" "$3" "${4:-0}" <<'PY'
import errno, os, sys
path, text, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = text.encode().decode("unicode_escape").encode("latin-1")
if size:
    data = (data * (size // max(len(data), 1) + 1))[:size]
try:
    fd = os.open(path, os.O_WRONLY)
    try:
        n = os.write(fd, data)
    finally:
        os.close(fd)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
else:
    print("OK" if n == len(data) else "SHORT-%d" % n)
PY
}

# it_unthrottle DOM DISK — lift the limit of the disk's running merge
# through ctl (chainfs journals it: a restart does not slow it down again).
# Fails if no job runs (ENOENT).
it_unthrottle() {
  it_ctl "$1" "$2" "bandwidth 0" || it_fail "echo 'bandwidth 0' > $1/$2/ctl"
  it_log "merge of $1/$2 let go at full speed"
}

# it_libvirt_bandwidth DOM DISK — the bandwidth (bytes/s) libvirt has for
# the disk's block job; "" if no job (virsh prints its line on stderr).
it_libvirt_bandwidth() {
  { it_virsh blockjob "$1" "$2" --info --bytes 2>&1 || true; } |
    sed -n 's/.*[Bb]andwidth limit: *\([0-9][0-9]*\) bytes\/s.*/\1/p'
}

# it_rmdir_throttled DOM DISK NAME — rmdir snapshots/NAME on a mount made
# by it_mount_slow, and check that libvirt's job has the limit from the
# start (IT_BANDWIDTH bytes/s). An active commit still copies QEMU's first
# mirror burst (up to 32 MiB) at once and then sleeps until the limit is
# met: give an active layer well over 64 MiB.
it_rmdir_throttled() {
  local dom=$1 disk=$2 name=$3 bw
  [ -n "${IT_BANDWIDTH:-}" ] ||
    it_fail "it_rmdir_throttled: mount with it_mount_slow (-o bandwidth=N) first"
  rmdir "$MNT/$dom/$disk/snapshots/$name" || it_fail "rmdir $dom/$disk/snapshots/$name"
  bw=$(it_libvirt_bandwidth "$dom" "$disk")
  [ "$bw" = "$IT_BANDWIDTH" ] ||
    it_fail "the merge of $name did not start limited to $IT_BANDWIDTH bytes/s (libvirt: '$bw'; $({ it_virsh blockjob "$dom" "$disk" --info --bytes 2>&1 || true; } | tr '\n' ' '))"
  it_log "rmdir $dom/$disk/snapshots/$name: merge started at $IT_BANDWIDTH bytes/s"
}

# kvm or qemu (TCG), whichever QEMU can use here, or CHAINFS_VIRT_TYPE
# (scripts/libvirtd.sh).
it_virt_type() {
  [ -n "$IT_VIRT_TYPE" ] || IT_VIRT_TYPE=$(libvirtd_virt_type)
  printf '%s\n' "$IT_VIRT_TYPE"
}

# it_domain_xml NAME FILE... — a 64 MiB, 1-vCPU domain with no OS and one
# virtio disk per FILE: vda, vdb, vdc, ... (format as qemu-img sees it; a
# block device FILE makes a <disk type='block'>).
it_domain_xml() {
  local name=$1 f fmt type src letters=abcdefghij i=0
  shift
  printf "<domain type='%s'>\n" "$(it_virt_type)"
  printf '  <name>%s</name>\n' "$name"
  printf "  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n"
  printf "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
  printf "  <features><acpi/></features>\n" # PCI hot-plug needs ACPI
  printf "  <on_poweroff>destroy</on_poweroff>\n  <on_crash>destroy</on_crash>\n"
  printf '  <devices>\n'
  for f in "$@"; do
    fmt=$(it_image_format "$f")
    type=file src=file
    [ -b "$f" ] && type=block src=dev
    printf "    <disk type='%s' device='disk'><driver name='qemu' type='%s'/><source %s='%s'/><target dev='vd%s' bus='virtio'/></disk>\n" \
      "$type" "$fmt" "$src" "$f" "${letters:i:1}"
    i=$((i + 1))
  done
  printf '  </devices>\n</domain>\n'
}

# it_define NAME FILE... — define a (shut-off) domain with disks vda, vdb,
# ... on FILEs; it is destroyed and undefined at exit. Defining is slow
# (seconds) on hosts where libvirt keeps re-probing QEMU: define few.
it_define() {
  local name=$1
  case "$name" in "$IT_PREFIX"-*) ;; *) it_fail "domain name $name lacks prefix $IT_PREFIX-" ;; esac
  it_domain_xml "$@" >"$T/$name.xml"
  IT_DOMAINS+=("$name")
  it_virsh define "$T/$name.xml" >/dev/null || it_fail "virsh define $name"
}

it_start() { it_virsh start "$1" >/dev/null || it_fail "virsh start $1"; }

it_destroy() { it_virsh destroy "$1" >/dev/null || it_fail "virsh destroy $1"; }

# it_domblk DOM DEV — the disk's active source as libvirt sees it.
it_domblk() {
  it_virsh domblklist "$1" | awk -v dev="$2" '$1 == dev { print $2 }'
}

# it_snapshot_names DOM — libvirt's snapshot names, one per line, sorted.
it_snapshot_names() {
  it_virsh snapshot-list "$1" --name | sed '/^$/d' | sort
}

# it_state DOM — "running", "shut off", ...
it_state() { it_virsh domstate "$1" | sed '/^$/d'; }

# ---- images and data patterns ------------------------------------------------

# it_make_image FILE SIZE [BACKING] — a new qcow2 image.
it_make_image() {
  if [ -n "${3:-}" ]; then
    "${IT_IMG_RUN[@]}" qemu-img create -q -f qcow2 -b "$3" -F "$(it_image_format "$3")" "$1" "$2" ||
      it_fail "qemu-img create $1 on $3"
  else
    "${IT_IMG_RUN[@]}" qemu-img create -q -f qcow2 "$1" "$2" || it_fail "qemu-img create $1"
  fi
}

it_image_format() {
  "${IT_IMG_RUN[@]}" qemu-img info -U --output=json "$1" | jq -r .format
}

# it_chain FILE — the files of FILE's backing chain, FILE first.
it_chain() {
  "${IT_IMG_RUN[@]}" qemu-img info -U --backing-chain --output=json "$1" | jq -r '.[].filename'
}

# it_write_pattern FILE PATTERN OFFSET LEN — write bytes of PATTERN (0xNN)
# into FILE, which no running QEMU may have open.
it_write_pattern() {
  local out
  out=$("${IT_IMG_RUN[@]}" qemu-io -f "$(it_image_format "$1")" -c "write -P $2 $3 $4" "$1" 2>&1) ||
    it_fail "qemu-io write $2 at $3 into $1: $out"
  case "$out" in
    *wrote*) ;;
    *) it_fail "qemu-io write $2 at $3 into $1: $out" ;;
  esac
}

# it_check_pattern FILE PATTERN OFFSET LEN — read FILE (through its backing
# chain, read-only and without taking locks) and check every byte.
# qemu-io's exit code does not report a mismatch; its message does.
it_check_pattern() {
  local out
  out=$("${IT_IMG_RUN[@]}" qemu-io -U -r -f "$(it_image_format "$1")" -c "read -P $2 $3 $4" "$1" 2>&1) ||
    it_fail "qemu-io read $2 at $3 from $(it_short "$1"): $out"
  case "$out" in
    *"Pattern verification failed"* | *"read failed"* | *[Ee]rror*)
      it_fail "pattern $2 at $3+$4 in $(it_short "$1"): $out" ;;
    *"read "*) it_log "ok: pattern $2 at $3+$4 reads back from $(it_short "$1")" ;;
    *) it_fail "qemu-io read $2 at $3 from $(it_short "$1"): $out" ;;
  esac
}

# it_check_patterns FILE "PATTERN OFFSET LEN"... — it_check_pattern of
# each triple, in one qemu-io run (one process start, not one per triple).
it_check_patterns() {
  local f=$1 out p args=() n=0 got
  shift
  for p in "$@"; do
    args+=(-c "read -P $p")
    n=$((n + 1))
  done
  out=$("${IT_IMG_RUN[@]}" qemu-io -U -r -f "$(it_image_format "$f")" "${args[@]}" "$f" 2>&1) ||
    it_fail "qemu-io read of $n patterns from $(it_short "$f"): $out"
  case "$out" in
    *"Pattern verification failed"* | *"read failed"* | *[Ee]rror*)
      it_fail "patterns in $(it_short "$f"): $out" ;;
  esac
  got=$(grep -c '^read [0-9]' <<<"$out" || true)
  [ "$got" = "$n" ] || it_fail "qemu-io read $got of $n patterns from $(it_short "$f"): $out"
  it_log "ok: patterns $(printf '[%s] ' "$@")read back from $(it_short "$f")"
}

# it_guest_write DOM PATTERN OFFSET LEN [DEVICE] — a write by the running
# guest's disk device (HMP qemu-io on the virtio backend), then a flush.
it_guest_write() {
  local dom=$1 dev=${5:-virtio-disk0} out cmd
  for cmd in "write -P $2 $3 $4" "flush"; do
    out=$(it_virsh qemu-monitor-command "$dom" --hmp \
      "qemu-io -d /machine/peripheral/$dev/virtio-backend \"$cmd\"" 2>&1) ||
      it_fail "guest $cmd on $dom: $out"
    case "$out" in
      *rror* | *failed* | *"not found"* | *"Could not"*) it_fail "guest $cmd on $dom: $out" ;;
    esac
  done
  it_log "guest $dom wrote $2 at $3+$4"
}

# it_guest_check_pattern DOM PATTERN OFFSET LEN [DEVICE] — a read by the
# running guest's disk device (HMP qemu-io on the virtio backend) that
# checks every byte: what the guest sees through QEMU's own chain. HMP
# returns nothing of qemu-io's output: QEMU prints it on its stdout,
# which libvirt sends to the domain's log; the new part of it is read.
it_guest_check_pattern() {
  local dom=$1 dev=${5:-virtio-disk0} out log size new i
  log="/var/log/libvirt/qemu/$dom.log"
  [ -r "$log" ] || it_skip "no readable QEMU log $log for the guest's qemu-io output"
  size=$(stat -c %s "$log")
  out=$(it_virsh qemu-monitor-command "$dom" --hmp \
    "qemu-io -d /machine/peripheral/$dev/virtio-backend \"read -P $2 $3 $4\"" 2>&1) ||
    it_fail "guest read $2 at $3 on $dom: $out"
  case "$out" in
    *rror* | *failed* | *"not found"* | *"Could not"*) it_fail "guest read $2 at $3 on $dom: $out" ;;
  esac
  for ((i = 0; i < 100; i++)); do
    new=$(tail -c +"$((size + 1))" "$log")
    case "$new" in *"read "*" bytes at offset"*) break ;; esac
    sleep 0.05
  done
  case "$new" in
    *"Pattern verification failed"* | *"read failed"*)
      it_fail "the guest $dom does not read $2 at $3+$4: $new" ;;
    *"read "*" bytes at offset"*) it_log "ok: the guest $dom reads $2 at $3+$4" ;;
    *) it_fail "guest read $2 at $3 on $dom: no qemu-io output in $log" ;;
  esac
}

# ---- the mount ---------------------------------------------------------------

# it_mount [EXTRA_OPTS] — start chainfs in the foreground (in the
# background of this script) on $T/mnt; wait until it is mounted.
# IT_OVERLAY_DIR (default $T/overlays) is its overlay_dir; set it empty
# for a mount without one.
# shellcheck disable=SC2120 # EXTRA_OPTS is optional
it_mount() {
  local opts="state_dir=$T/state" i
  [ -z "${IT_OVERLAY_DIR-$T/overlays}" ] || opts="$opts,overlay_dir=${IT_OVERLAY_DIR-$T/overlays}"
  [ -n "${1:-}" ] && opts="$opts,$1"
  MNT="$T/mnt"
  mkdir -p "$MNT"
  "$CHAINFS" -f -c "$IT_URI" -o "$opts" "$MNT" >>"$IT_LOG" 2>&1 &
  IT_PID=$!
  for ((i = 0; i < 200; i++)); do
    mountpoint -q "$MNT" && break
    kill -0 "$IT_PID" 2>/dev/null || it_fail "chainfs exited before mounting"
    sleep 0.05
  done
  mountpoint -q "$MNT" || it_fail "chainfs did not mount $MNT within 10 s"
  it_log "chainfs (pid $IT_PID) mounted on $MNT"
}

# it_wait_dom DOM — wait (up to 5 s) until DOM's directory shows.
it_wait_dom() {
  it_wait_until 5 "$1 appears in the mount" test -d "$MNT/$1"
}

# it_ls DIR — names in DIR, space-separated, sorted.
it_ls() {
  # shellcheck disable=SC2012 # names are ours: [A-Za-z0-9._-]
  ls -1 "$1" | sort | tr '\n' ' ' | sed 's/ $//'
}

# it_wait_job DOM DISK — `cat wait` on the disk (bounded by TIMEOUT s,
# default 300); prints what wait returned.
it_wait_job() {
  local out
  out=$(timeout "${3:-300}" cat "$MNT/$1/$2/wait") || it_fail "cat $1/$2/wait failed or timed out"
  printf '%s\n' "$out"
}

# it_unmount — unmount $MNT (lazily if it stays busy), wait for the daemon
# to exit, and check it exited 0. Returns non-zero if anything went wrong.
it_unmount() {
  local i status ok=0
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then
    for ((i = 0; i < 10; i++)); do
      fusermount3 -u "$MNT" 2>/dev/null && break
      sleep 0.5
    done
    if mountpoint -q "$MNT"; then
      echo "[$IT_NAME] FAIL: $MNT still busy after 5 s; lazy unmount" >&2
      fusermount3 -u -z "$MNT"
      ok=1
    fi
  fi
  if [ -n "$IT_PID" ]; then
    for ((i = 0; i < 100; i++)); do
      kill -0 "$IT_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$IT_PID" 2>/dev/null; then
      echo "[$IT_NAME] FAIL: chainfs (pid $IT_PID) still running 10 s after unmount; SIGTERM" >&2
      if command -v gdb >/dev/null 2>&1; then
        echo "[$IT_NAME] ---- chainfs threads ----" >&2
        timeout 30 gdb -batch -p "$IT_PID" -ex 'thread apply all bt' 2>/dev/null |
          grep -E '^(Thread|#)' | head -n 150 >&2
      fi
      kill -TERM "$IT_PID" 2>/dev/null
      sleep 1
      kill -KILL "$IT_PID" 2>/dev/null
      ok=1
    fi
    status=0
    wait "$IT_PID" || status=$?
    if [ "$status" -ne 0 ]; then
      echo "[$IT_NAME] FAIL: chainfs exited with status $status (expected 0)" >&2
      ok=1
    else
      it_log "chainfs (pid $IT_PID) exited 0"
    fi
    IT_PID=""
  fi
  return "$ok"
}

# it_snapshots DOM DISK — `ls snapshots/`, space-separated, sorted.
it_snapshots() { it_ls "$MNT/$1/$2/snapshots"; }

# it_job_field DOM DISK KEY — a value of the disk's job.json.
it_job_field() { jq -r ".$3" "$MNT/$1/$2/job.json"; }

# it_check_chain DOM DISK FILE... — chain.json of DOM/DISK lists exactly
# FILE... (active first), each with format qcow2, the virtual size libvirt
# reports (`virsh domstats --block --backing` for every layer it lists: a
# running domain, all of them; a shut-off one, the active layer; else
# qemu-img's virtual-size) and as allocation the data the file holds
# (qemu-img's actual-size). The text `chain` must list the same files in
# the same order with a matching `layers:`.
#
# A running guest's allocation moves, and chainfs re-reads it on its own
# schedule, so a mismatch is retried for up to CHECK_CHAIN_S (5) seconds
# before it counts.
it_check_chain() {
  local dom=$1 disk=$2 t0 deadline
  shift 2
  t0=$(it_now_ms)
  deadline=$((t0 + ${CHECK_CHAIN_S:-5} * 1000))
  until it_compare_chain "$dom" "$disk" "$@" 2>"$T/check_chain.err"; do
    if [ "$(it_now_ms)" -ge "$deadline" ]; then
      cat "$T/check_chain.err" >&2
      it_fail "chain of $dom/$disk"
    fi
    sleep 0.25
  done
  it_log "ok: chain of $dom/$disk is $(printf '%s ' "${@##*/}")with libvirt's sizes (matched after $(($(it_now_ms) - t0)) ms)"
}

# it_compare_chain DOM DISK FILE... — one comparison for it_check_chain;
# prints the differences on stderr.
it_compare_chain() {
  local dom=$1 disk=$2 stats qinfo
  shift 2
  stats=$(it_virsh domstats --block --backing "$dom") || return 1
  qinfo=$("${IT_IMG_RUN[@]}" qemu-img info -U --backing-chain --output=json "$1") || return 1
  STATS=$stats QINFO=$qinfo python3 - "$MNT/$dom/$disk" "$@" <<'PY'
import json, os, re, sys
d, want = sys.argv[1], sys.argv[2:]
cj = json.load(open(os.path.join(d, "chain.json")))
text = open(os.path.join(d, "chain")).read()
bad = []
files = [l["file"] for l in cj["layers"]]
if files != want:
    bad.append("chain.json files %s, expected %s" % (files, want))
stats = {}
for line in os.environ["STATS"].splitlines():
    m = re.match(r"\s*block\.(\d+)\.(\w+)=(.*)$", line)
    if m:
        stats.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
bypath = {s["path"]: s for s in stats.values() if "path" in s}
qinfo = {q["filename"]: q for q in json.loads(os.environ["QINFO"])}
for i, l in enumerate(cj["layers"]):
    f = l["file"]
    if l["index"] != i:
        bad.append("layer %d has index %r" % (i, l["index"]))
    if l["format"] != "qcow2":
        bad.append("%s: format %r, expected qcow2" % (f, l["format"]))
    if f not in qinfo:
        bad.append("%s: qemu-img does not know it" % f)
        continue
    if f in bypath and "capacity" in bypath[f]:
        vsize, src = int(bypath[f]["capacity"]), "domstats"
    else:
        vsize, src = qinfo[f]["virtual-size"], "qemu-img"
    alloc = qinfo[f]["actual-size"]
    if l["virtual_size"] != vsize:
        bad.append("%s: virtual_size %d, %s says %d" % (f, l["virtual_size"], src, vsize))
    if l["allocation"] != alloc:
        bad.append("%s: allocation %d, qemu-img's actual-size is %d" % (f, l["allocation"], alloc))
    role = "active" if i == 0 else ("base" if i == len(want) - 1 else "backing")
    if l["role"] != role:
        bad.append("%s: role %r, expected %r" % (f, l["role"], role))
m = re.search(r"^layers: *(\d+)$", text, re.M)
if not m or int(m.group(1)) != len(want):
    bad.append("chain text: layers line %r, expected %d" % (m and m.group(0), len(want)))
rows = [r for r in text.split("\n\n", 1)[-1].splitlines()[1:] if r.strip()]
tfiles = [r.split("  ")[-1].strip() for r in rows]
if tfiles != want:
    bad.append("chain text files %s, expected %s" % (tfiles, want))
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
