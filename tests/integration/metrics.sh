#!/usr/bin/env bash
# metrics.sh — MOUNTPOINT/.chainfs/metrics.prom on a real mount (issue 11
# §6): hidden from `ls -a` of the root, found by path; valid Prometheus
# text format (the strict checker PROMCHECK, and promtool where it is on
# PATH); read-only; one consistent content per open; its job counters
# move with a mkdir/rmdir cycle (snapshot and merge completed, running
# while the merge runs, bytes merged) and no counter goes down; a libvirt
# domain named .chainfs is not shown, and that is logged.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

[ -x "${PROMCHECK:-}" ] || it_fail "no promcheck at PROMCHECK=$PROMCHECK (ninja -C build)"

D="$IT_PREFIX-metrics"
base="$T/base.qcow2"
it_make_image "$base" 192M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount_slow 1048576
it_wait_dom "$D"
M="$MNT/.chainfs/metrics.prom"

# check FILE — valid by the strict checker, and by promtool if there is one
check() {
  "$PROMCHECK" "$1" || it_fail "$(it_short "$1") is not valid text format (promcheck above)"
  if command -v promtool >/dev/null 2>&1; then
    promtool check metrics <"$1" || it_fail "promtool check metrics refused $(it_short "$1")"
  fi
}

# snap N — a copy of metrics.prom in $T/mN.prom, checked
snap() {
  cat "$M" >"$T/m$1.prom" || it_fail "cat MNT/.chainfs/metrics.prom"
  check "$T/m$1.prom"
}

# val N SERIES — the value of SERIES in snapshot N ("" if absent)
val() { awk -v s="$2" '$1 == s { print $2 }' "$T/m$1.prom"; }

# sum N NAME — the sum over every series of family NAME in snapshot N
sum() {
  awk -v n="$2" 'index($1, n "{") == 1 || $1 == n { s += $2 } END { printf "%.0f\n", s }' "$T/m$1.prom"
}

# ---- where it is ---------------------------------------------------------------
# shellcheck disable=SC2012
root=$(ls -a "$MNT" | tr '\n' ' ')
case " $root" in *" .chainfs "*) it_fail "ls -a MNT lists .chainfs: $root" ;; esac
case " $root" in *" $D "*) ;; *) it_fail "ls -a MNT does not list $D: $root" ;; esac
it_log "ok: ls -a of the root does not list .chainfs"
[ -d "$MNT/.chainfs" ] || it_fail "stat MNT/.chainfs: not a directory"
it_assert_eq "metrics.prom" "$(ls "$MNT/.chainfs")" "ls MNT/.chainfs"
it_assert_eq "444 regular file" "$(stat -c '%a %F' "$M")" "metrics.prom is a read-only file"
it_assert_eq "555" "$(stat -c '%a' "$MNT/.chainfs")" ".chainfs is mode 0555"
got=$(python3 -c 'import os,sys,errno
try:
    os.open(sys.argv[1], os.O_WRONLY)
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])' "$M")
it_assert_eq "EROFS" "$got" "open MNT/.chainfs/metrics.prom for writing"
it_expect_errno EPERM mkdir "$MNT/.chainfs/x"
it_expect_errno EPERM rmdir "$MNT/.chainfs"

# one open reads one content, fstat's size its length (node_exporter reads
# it whole with os.ReadFile), in small reads at offsets
python3 - "$M" <<'PY' || it_fail "reads of one open of metrics.prom disagree"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
parts = []
while True:
    b = os.read(fd, 7)
    if not b:
        break
    parts.append(b)
whole = b"".join(parts)
again = os.pread(fd, len(whole) + 10, 0)
os.close(fd)
assert size == len(whole), (size, len(whole))
assert again == whole
assert whole.endswith(b"\n")
PY
it_log "ok: one open, one content; fstat size = bytes read"

# Go's runtime (node_exporter) registers every file it opens with epoll:
# the file reads as ready, and the daemon keeps nothing per poll (under
# ASan, libfuse's poll handle leaked until chainfs answered poll itself)
python3 - "$M" <<'PY' || it_fail "epoll of metrics.prom"
import os, select, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
ep = select.epoll()
ep.register(fd, select.EPOLLIN)
ev = ep.poll(1)
assert ev and ev[0][0] == fd and ev[0][1] & select.EPOLLIN, ev
ep.close()
os.close(fd)
PY
it_log "ok: epoll says metrics.prom is readable"

# ---- before ------------------------------------------------------------------------
snap 0
version=$("$CHAINFS" -V | awk 'NR == 1 { print $2 }')
it_assert_eq "1" "$(val 0 "chainfs_build_info{version=\"$version\"}")" "chainfs_build_info{version=$version} 1"
it_assert_eq "1" "$(val 0 chainfs_libvirt_up)" "chainfs_libvirt_up"
[ "$(val 0 chainfs_domains)" -ge 1 ] || it_fail "chainfs_domains < 1"
[ "$(val 0 chainfs_layers)" -ge 1 ] || it_fail "chainfs_layers < 1"
[ "$(val 0 chainfs_chain_depth_max)" -ge 1 ] || it_fail "chainfs_chain_depth_max < 1"
it_assert_eq "0" "$(sum 0 chainfs_jobs_completed_total)" "no job completed on a fresh mount"
if grep -v '^#' "$T/m0.prom" | awk '{ print $NF }' | grep -qv '^[0-9.e+-]*$'; then
  it_fail "a value is not a plain number"
fi

# ---- a mkdir/rmdir cycle --------------------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
# well over 64 MiB in the active layer: the merge runs throttled for a while
it_guest_write "$D" 0x22 1M 96M
snap 1
it_assert_eq "1" "$(val 1 'chainfs_jobs_started_total{type="snapshot"}')" "snapshot started"
it_assert_eq "1" "$(val 1 'chainfs_jobs_completed_total{type="snapshot"}')" "snapshot completed"
[ -n "$(val 1 'chainfs_job_last_duration_seconds{type="snapshot"}')" ] ||
  it_fail "no chainfs_job_last_duration_seconds{type=\"snapshot\"}"
depth=$(jq '.layers | length' "$MNT/$D/vda/chain.json")
it_assert_eq "2" "$depth" "the disk's chain has 2 layers"
[ "$(val 1 chainfs_chain_depth_max)" -ge 2 ] || it_fail "chainfs_chain_depth_max < 2 with s1"

it_rmdir_throttled "$D" vda s1
type=$(it_job_field "$D" vda type)
it_log "the merge is a $type"
snap 2
it_assert_eq "1" "$(val 2 "chainfs_jobs_running{type=\"$type\"}")" "the $type runs"
it_assert_eq "1" "$(val 2 "chainfs_jobs_started_total{type=\"$type\"}")" "the $type started"
it_unthrottle "$D" vda
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed"
snap 3
it_log "after the cycle:"$'\n'"$(grep -v '^#' "$T/m3.prom")"
it_assert_eq "0" "$(val 3 "chainfs_jobs_running{type=\"$type\"}")" "the $type no longer runs"
it_assert_eq "1" "$(val 3 "chainfs_jobs_completed_total{type=\"$type\"}")" "the $type completed"
it_assert_eq "0" "$(sum 3 chainfs_jobs_failed_total)" "no job failed"
merged=$(val 3 "chainfs_merged_bytes_total{type=\"$type\"}")
[ "$merged" -gt 0 ] || it_fail "chainfs_merged_bytes_total{type=\"$type\"} is $merged after the merge"
it_log "ok: $merged bytes merged"
[ -n "$(val 3 "chainfs_job_last_duration_seconds{type=\"$type\"}")" ] ||
  it_fail "no last duration of the $type"

# no counter went down, no series went away
for n in 1 2 3; do
  prev=$((n - 1))
  while read -r series v; do
    now=$(val "$n" "$series")
    [ -n "$now" ] || it_fail "series $series of snapshot $prev is gone in snapshot $n"
    case "$series" in
      *_total*) awk -v a="$v" -v b="$now" 'BEGIN { exit !(b >= a) }' ||
        it_fail "counter $series went down: $v -> $now" ;;
    esac
  done < <(grep -v '^#' "$T/m$prev.prom")
done
it_log "ok: counters only went up"

# ---- node_exporter's textfile collector, where it is installed --------------------
ne=$(command -v node_exporter || command -v prometheus-node-exporter || true)
if [ -n "$ne" ] && command -v curl >/dev/null 2>&1; then
  port=$((20000 + $$ % 20000))
  "$ne" --collector.disable-defaults --collector.textfile \
    --collector.textfile.directory="$MNT/.chainfs" \
    --web.listen-address="127.0.0.1:$port" >"$T/ne.log" 2>&1 &
  ne_pid=$!
  ne_stop() { kill "$ne_pid" 2>/dev/null || true; wait "$ne_pid" 2>/dev/null || true; }
  IT_CLEANUP_HOOKS+=(ne_stop)
  it_wait_until 10 "node_exporter answers on port $port" \
    curl -sf "http://127.0.0.1:$port/metrics" -o "$T/ne.prom"
  it_assert_eq "0" "$(awk '$1 == "node_textfile_scrape_error" { print $2 }' "$T/ne.prom")" \
    "node_exporter read metrics.prom without an error"
  it_assert_eq "1" "$(awk -v s="chainfs_jobs_completed_total{type=\"$type\"}" '$1 == s { print $2 }' "$T/ne.prom")" \
    "node_exporter serves chainfs_jobs_completed_total{type=\"$type\"}"
  ne_stop
else
  it_log "no node_exporter (or curl) here: the textfile collector's own read skipped"
fi

# ---- a domain named .chainfs --------------------------------------------------------
if virsh -q -c "$IT_URI" domid .chainfs >/dev/null 2>&1; then
  it_log "a domain named .chainfs exists already (not ours): its part skipped"
else
  it_make_image "$T/own.qcow2" 16M
  it_domain_xml .chainfs "$T/own.qcow2" >"$T/own.xml"
  if it_virsh define "$T/own.xml" >/dev/null 2>&1; then
    IT_DOMAINS+=(.chainfs)
    # the mount re-reads the list within its refresh (and at the event)
    it_wait_until 20 "the log says the domain .chainfs is not shown" \
      grep -q "domain .chainfs is not shown" "$IT_LOG"
    # shellcheck disable=SC2012
    root=$(ls -a "$MNT" | tr '\n' ' ')
    case " $root" in *" .chainfs "*) it_fail "ls -a MNT lists .chainfs with such a domain: $root" ;; esac
    it_assert_eq "metrics.prom" "$(ls "$MNT/.chainfs")" "MNT/.chainfs is still chainfs's own"
    snap 4
    it_assert_eq "1" "$(grep -c 'domain .chainfs is not shown' "$IT_LOG")" "logged once"
    it_virsh undefine .chainfs >/dev/null || it_fail "virsh undefine .chainfs"
  else
    it_log "libvirt refused a domain named .chainfs here: its part skipped"
  fi
fi
