# shellcheck shell=bash
# lib.sh — shared helpers for the fault-injection scripts (issue 3).
#
# Usage, in tests/fault/NAME.sh:
#
#     # shellcheck source=tests/fault/lib.sh
#     . "$(dirname "$0")/lib.sh"
#     fault_init                      # it_init + $T/images; $CHAINFS = the chainfs binary
#     base="$FAULT_IMAGES/base.qcow2" # images in $FAULT_IMAGES: checked for orphans
#     ...                             # it_define / it_start / it_mount as in integration
#     fault_kill_daemon               # kill -9 chainfs; the mount is now stale
#     fault_remount                   # fusermount3 -u -z + it_mount, same state_dir
#     fault_wait_state DOM vda completed 120
#     fault_check_invariants DOM vda [DOM2 vdb ...]   # pairs: domain, disk
#
# Everything of tests/integration/lib.sh is available (it_*). fault_init is
# optional for scripts that only want the invariants: after a plain it_init
# they default to $T/state and to $T/overlays + $T/images. What this adds:
#
# - fault_check_invariants DOM DISK [DOM DISK ...]: the end-of-scenario
#   checks of issue 3, retried for FAULT_SETTLE_S (5) seconds while chainfs's
#   background re-read settles: chainfs's chain.json == libvirt's XML chain
#   (or, shut off, qemu-img's chain of the XML source) == `qemu-img info -U
#   --backing-chain` of the active image; no job in progress (chainfs or
#   libvirt); no file in FAULT_IMAGE_DIRS that is in no chain of any domain
#   of the script (unless FAULT_KEEP_MERGED=1); no line left in
#   FAULT_STATE_DIR/journal; `virsh snapshot-list` names only snapshots
#   whose overlays are still in their disk's chain.
# - daemon control: fault_kill_daemon (kill -9 by pid), fault_remount (start
#   chainfs again on the same state_dir and mount point, clearing the stale
#   mount first), fault_mounted (in /proc/self/mountinfo, stale or not),
#   fault_log_has REGEX (any daemon's log line of this script).
# - jobs: fault_job_state, fault_wait_state, fault_libvirt_job (libvirt's
#   own view), fault_unthrottle (`bandwidth 0` in the disk's ctl). Slowing
#   a merge down from its first byte is it_mount_slow (-o bandwidth=N)
#   and it_rmdir_throttled in the integration lib; holding a pivot is
#   `pivot manual` in ctl. No test-only build: the daemon under test is
#   the `chainfs` that ships.
# - fault_on_exit CMD: undo what the scenario broke on purpose, pass or fail.
# - fault_check_patterns IMAGE "PATTERN OFFSET LEN"...: it_check_pattern each.
set -euo pipefail

# The daemon under test is the shipped binary; meson passes it, by hand it
# defaults to the build tree's.
CHAINFS=${CHAINFS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/fs/fuse/chainfs}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"

FAULT_IMAGES=""        # $T/images: where scenarios put their own images
FAULT_IMAGE_DIRS=()    # directories checked for orphans (append to it)
FAULT_STATE_DIR=""     # chainfs's state_dir ($T/state, as it_mount uses)
FAULT_KEEP_MERGED=${FAULT_KEEP_MERGED:-0}
FAULT_SETTLE_S=${FAULT_SETTLE_S:-5}

FAULT_ON_EXIT=()       # commands fault_cleanup runs first (fault_on_exit)

# fault_init — it_init, plus the image directory, the fault defaults and a
# clean-up that runs the script's own undo commands and clears a stale
# mount before it_cleanup.
fault_init() {
  it_init
  FAULT_IMAGES="$T/images"
  mkdir -p "$FAULT_IMAGES"
  chmod 0755 "$FAULT_IMAGES"
  FAULT_IMAGE_DIRS=("$FAULT_IMAGES" "$T/overlays")
  FAULT_STATE_DIR="$T/state"
  trap fault_cleanup EXIT
  it_log "daemon under test: $CHAINFS"
}

# fault_on_exit CMD — run CMD (a string, eval'd) at exit, pass or fail,
# before the domains and the mount are cleaned up; the last one added runs
# first. For what a scenario breaks on purpose: a stopped libvirtd, a
# process sitting in the mount.
fault_on_exit() { FAULT_ON_EXIT+=("$1"); }

fault_cleanup() {
  local rc=$? i
  set +e
  for ((i = ${#FAULT_ON_EXIT[@]} - 1; i >= 0; i--)); do
    eval "${FAULT_ON_EXIT[i]}"
  done
  # A test that failed between a kill -9 and the restart leaves the mount
  # stale: it_cleanup's `mountpoint` cannot stat it, so clear it here or
  # $T could not be removed.
  if [ -n "$MNT" ] && [ -z "$IT_PID" ] && fault_mounted "$MNT"; then
    fusermount3 -u -z "$MNT" 2>/dev/null
  fi
  (exit "$rc")
  it_cleanup
}

# ---- the daemon --------------------------------------------------------------

# fault_mounted [MNT] — MNT (default $MNT) is in our mount table, whether
# its daemon is alive or not (`mountpoint` stats it, which a stale FUSE
# mount refuses with ENOTCONN).
fault_mounted() {
  local m=${1:-$MNT}
  awk -v m="$m" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# fault_kill_daemon — kill -9 the chainfs this script started (by its pid),
# reap it and forget it, so that the clean-up does not count its status.
# The mount stays behind, stale.
fault_kill_daemon() {
  local pid=$IT_PID status=0
  [ -n "$pid" ] || it_fail "fault_kill_daemon: no daemon running"
  kill -KILL "$pid" || it_fail "kill -9 $pid"
  # (braces: bash's own "Killed" notice goes to /dev/null, not the log)
  { wait "$pid"; } 2>/dev/null || status=$?
  IT_PID=""
  [ "$status" -eq 137 ] || it_fail "chainfs (pid $pid) exited $status before the kill -9 reached it"
  it_log "chainfs (pid $pid) killed with SIGKILL; $(it_short "$MNT") left behind stale"
}

# fault_clear_stale [MNT] — the fix chainfs's message names: lazily
# unmount a stale mount of MNT (default $MNT).
# shellcheck disable=SC2120 # MNT is optional
fault_clear_stale() {
  local m=${1:-$MNT}
  if fault_mounted "$m"; then
    fusermount3 -u -z "$m" || it_fail "fusermount3 -u -z $(it_short "$m")"
    it_log "cleared the stale mount $(it_short "$m") (fusermount3 -u -z)"
  fi
}

# fault_remount [EXTRA_OPTS] — start chainfs again on the same state_dir
# and mount point after a kill or an unmount (it_mount appends to the
# same log, so a failure shows both daemons' lines).
# shellcheck disable=SC2120 # EXTRA_OPTS is optional
fault_remount() {
  [ -z "$IT_PID" ] || it_fail "fault_remount: chainfs (pid $IT_PID) is still running"
  fault_clear_stale "$MNT"
  echo "---- chainfs started again ($(date +%T.%3N)) ----" >>"$IT_LOG"
  it_mount "$@"
}

# fault_log_has REGEX — the daemon log (all daemons of the script) has a
# line matching the extended REGEX.
fault_log_has() { grep -Eq -- "$1" "$IT_LOG"; }

# ---- jobs ----------------------------------------------------------------------

# fault_job_state DOM DISK — chainfs's job state (job.json), or "?" if the
# file cannot be read.
fault_job_state() {
  jq -r .state "$MNT/$1/$2/job.json" 2>/dev/null || echo "?"
}

# fault_state_is DOM DISK STATE — for polling.
fault_state_is() { [ "$(fault_job_state "$1" "$2")" = "$3" ]; }

# fault_wait_state DOM DISK STATE [TIMEOUT_S] — poll job.json until its
# state is STATE (default timeout 60 s); fail with the job on timeout.
fault_wait_state() {
  local dom=$1 disk=$2 want=$3 timeout=${4:-60}
  if ! it_poll "$timeout" fault_state_is "$dom" "$disk" "$want"; then
    cat "$MNT/$dom/$disk/job" >&2 2>/dev/null || true
    it_fail "job of $dom/$disk did not reach state $want within ${timeout}s (it is $(fault_job_state "$dom" "$disk"))"
  fi
  it_log "ok: job of $dom/$disk is $want"
}

# fault_unthrottle DOM DISK — let the block job run at full speed again.
fault_unthrottle() {
  it_ctl "$1" "$2" "bandwidth 0" ||
    it_fail "echo 'bandwidth 0' > $1/$2/ctl (no block job any more?)"
  it_log "block job of $1/$2 let go at full speed"
}

# fault_libvirt_job DOM DISK — libvirt's block job line for the disk, ""
# when there is none.
fault_libvirt_job() {
  # virsh prints the job's progress line on stderr
  { it_virsh blockjob "$1" "$2" --info 2>&1 || true; } | grep -E '\[ *[0-9.]+ *%\]' || true
}

# ---- invariants ------------------------------------------------------------------

# fault_check_invariants DOM DISK [DOM DISK ...] — the invariants of issue 3,
# retried for up to FAULT_SETTLE_S seconds; fails the test with every
# difference of the last attempt.
fault_check_invariants() {
  local t0 deadline
  if [ $(($# % 2)) -ne 0 ] || [ $# -eq 0 ]; then
    it_fail "usage: fault_check_invariants DOM DISK [DOM DISK ...]"
  fi
  t0=$(it_now_ms)
  deadline=$((t0 + FAULT_SETTLE_S * 1000))
  until fault_compare_invariants "$@" 2>"$T/invariants.err"; do
    if [ "$(it_now_ms)" -ge "$deadline" ]; then
      cat "$T/invariants.err" >&2
      it_fail "invariants of $*"
    fi
    sleep 0.25
  done
  it_log "ok: invariants hold for $* (chainfs == libvirt XML == qemu-img; no orphan, no open journal entry, no stray snapshot metadata; after $(($(it_now_ms) - t0)) ms)"
}

# fault_xml_chain DOM DISK — the disk's chain by libvirt, active first:
# the live XML's source + backingStore chain for a running domain; for a
# shut-off one (whose XML has no backingStore) qemu-img's chain of the
# XML's source. Prints "MIRROR" as a line if the disk has a <mirror>.
fault_xml_chain() {
  local dom=$1 disk=$2 xml files
  xml=$(it_virsh dumpxml "$dom") || return 1
  files=$(XML=$xml python3 - "$disk" <<'PY'
import os, sys
import xml.etree.ElementTree as ET
disk = sys.argv[1]
root = ET.fromstring(os.environ["XML"])
running = root.get("id") not in (None, "-1")
for d in root.findall("./devices/disk"):
    t = d.find("target")
    if t is None or t.get("dev") != disk:
        continue
    if d.find("mirror") is not None:
        print("MIRROR")
    node = d
    while node is not None:
        s = node.find("source")
        if s is None:
            break
        f = s.get("file") or s.get("dev")
        if f is None:
            break
        print(f)
        if not running:
            break  # the inactive XML does not carry the chain
        node = node.find("backingStore")
    sys.exit(0)
sys.exit(3)  # no such disk
PY
) || return 1
  if ! grep -q "^<domain [^>]* id='[0-9]" <<<"$xml"; then
    it_chain "$(grep -vx MIRROR <<<"$files")" || return 1
    grep -x MIRROR <<<"$files" || true
  else
    printf '%s\n' "$files"
  fi
}

# fault_all_chain_files — every file in any chain of any disk of any
# domain this script defined (and still exists), one per line.
fault_all_chain_files() {
  local dom src
  for dom in "${IT_DOMAINS[@]}"; do
    it_virsh domid "$dom" >/dev/null 2>&1 || continue
    while read -r src; do
      case "$src" in "" | -) continue ;; esac
      it_chain "$src" 2>/dev/null || echo "$src"
    done < <(it_virsh domblklist "$dom" | awk '{ print $2 }')
  done
}

# fault_compare_invariants DOM DISK ... — one attempt; differences on stderr.
fault_compare_invariants() {
  local dom disk ours xmlc qimg bad=0 d f all name files sf line jobst lvjob
  local state=${FAULT_STATE_DIR:-$T/state} dirs=("${FAULT_IMAGE_DIRS[@]}")
  # Scripts that call it_init rather than fault_init: $T/overlays and
  # $T/images are their image directories, $T/state their state_dir.
  [ "${#dirs[@]}" -gt 0 ] || dirs=("$T/overlays" "$T/images")
  while [ $# -gt 0 ]; do
    dom=$1 disk=$2
    shift 2
    ours=$(jq -r '.layers[].file' "$MNT/$dom/$disk/chain.json" 2>&1) || {
      echo "  $dom/$disk: chain.json unreadable: $ours" >&2
      bad=1
      continue
    }
    xmlc=$(fault_xml_chain "$dom" "$disk") || {
      echo "  $dom/$disk: no chain from libvirt's XML" >&2
      bad=1
      continue
    }
    if grep -qx MIRROR <<<"$xmlc"; then
      echo "  $dom/$disk: libvirt's XML still has a <mirror> (a job is in progress)" >&2
      bad=1
      xmlc=$(grep -vx MIRROR <<<"$xmlc")
    fi
    qimg=$(it_chain "$(head -n 1 <<<"$xmlc")" 2>&1) || {
      echo "  $dom/$disk: qemu-img info failed: $qimg" >&2
      bad=1
      continue
    }
    if [ "$ours" != "$xmlc" ]; then
      echo "  $dom/$disk: chainfs's chain ($(tr '\n' ' ' <<<"$ours")) != libvirt's XML chain ($(tr '\n' ' ' <<<"$xmlc"))" >&2
      bad=1
    fi
    if [ "$xmlc" != "$qimg" ]; then
      echo "  $dom/$disk: libvirt's XML chain ($(tr '\n' ' ' <<<"$xmlc")) != qemu-img's ($(tr '\n' ' ' <<<"$qimg"))" >&2
      bad=1
    fi
    jobst=$(fault_job_state "$dom" "$disk")
    case "$jobst" in
      running | ready | pivoting | "?")
        echo "  $dom/$disk: chainfs's job is $jobst (expected no job in progress)" >&2
        bad=1 ;;
    esac
    lvjob=$(fault_libvirt_job "$dom" "$disk")
    if [ -n "$lvjob" ]; then
      echo "  $dom/$disk: libvirt still has a block job: $lvjob" >&2
      bad=1
    fi
    # libvirt's snapshot metadata: every external overlay a snapshot of this
    # domain names for this disk must still be in this disk's chain.
    while read -r name; do
      [ -n "$name" ] || continue
      files=$(it_virsh snapshot-dumpxml "$dom" "$name" 2>/dev/null | python3 -c '
import sys, xml.etree.ElementTree as ET
disk = sys.argv[1]
root = ET.fromstring(sys.stdin.read())
for d in root.findall("./disks/disk"):
    if d.get("name") != disk or d.get("snapshot", "external") != "external":
        continue
    s = d.find("source")
    if s is not None and (s.get("file") or s.get("dev")):
        print(s.get("file") or s.get("dev"))
' "$disk") || {
        echo "  $dom: virsh snapshot-dumpxml $name failed" >&2
        bad=1
        continue
      }
      while read -r sf; do
        [ -n "$sf" ] || continue
        if ! grep -qxF -- "$sf" <<<"$qimg"; then
          echo "  $dom/$disk: libvirt snapshot $name names $sf, which is in no chain of $disk" >&2
          bad=1
        fi
      done <<<"$files"
    done < <(it_virsh snapshot-list "$dom" --name 2>/dev/null)
  done
  # Orphans: image files of the script that no domain's chain uses.
  if [ "$FAULT_KEEP_MERGED" != 1 ]; then
    all=$(fault_all_chain_files)
    for d in "${dirs[@]}"; do
      [ -d "$d" ] || continue
      while IFS= read -r -d '' f; do
        if ! grep -qxF -- "$f" <<<"$all"; then
          echo "  orphan: $(it_short "$f") is in no chain" >&2
          bad=1
        fi
      done < <(find "$d" -maxdepth 1 -type f -print0)
    done
  fi
  # The journal: every entry closed.
  if [ -s "$state/journal" ]; then
    while IFS= read -r line; do
      [ -n "${line//[[:space:]]/}" ] || continue
      echo "  journal entry still open: $line" >&2
      bad=1
    done <"$state/journal"
  fi
  return "$bad"
}

# fault_check_patterns IMAGE "PATTERN OFFSET LEN"... — it_check_pattern for
# each triple (IMAGE read through its chain, no QEMU writing it).
fault_check_patterns() {
  local img=$1 p
  shift
  for p in "$@"; do
    # shellcheck disable=SC2086 # the triple is split on purpose
    it_check_pattern "$img" $p
  done
}
