#!/usr/bin/env bash
# example_jobs_watch.sh — examples/jobs-watch.sh against a running
# two-disk domain on a mount whose merges are limited to 1 MiB/s
# (-o bandwidth): vda merges s1 (12 MiB of the guest's data, a commit
# below the active layer: about 12 s), vdb's active commit of t1 waits in
# `ready` (pivot manual).
#
#   1. before any job: --once prints "no job in progress", status 1;
#   2. while both run: --once prints one row per disk, status 0: vda
#      commit running s1, its percent and bytes those of job.json's (total
#      the disk's size), a rate between 64 KiB/s and 8 MiB/s, a time left,
#      limit 1.0MiB/s; vdb active-commit ready t1 100%, no rate, no time
#      left;
#   3. a watch loop (-n 0.2) for the domain and one for the whole mount
#      (every test's domains come and go in it) run meanwhile;
#   4. once the merges ended (pivot, vda let go at full speed, `cat wait`):
#      --once prints "no job in progress", status 1;
#   4b. rolling-snapshots.sh KEEP=1 twice with 8 MiB written between: its
#      prune (a domain-level rmdir) shows in --once with its note; SIGTERM
#      while the script waits for it: status 143 at once, saying the
#      merges go on, the lock free, and the merge does complete;
#   5. the domain destroyed and undefined while the loops read it: they
#      go on (no error on stderr) and show no job of it.
# Also: a MOUNT that is no mount: status 2.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

WATCH="$IT_ROOT/examples/jobs-watch.sh"
D="$IT_PREFIX-watch"
M=1048576

it_make_image "$T/vda.qcow2" 128M
it_make_image "$T/vdb.qcow2" 64M
it_write_pattern "$T/vda.qcow2" 0x11 0 4M
it_write_pattern "$T/vdb.qcow2" 0x21 0 4M
it_define "$D" "$T/vda.qcow2" "$T/vdb.qcow2"
it_start "$D"
it_mount_slow 1048576
it_wait_dom "$D"

loops=()
stop_loops() {
  local p
  for p in "${loops[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null || true
  done
  loops=()
  return 0
}
IT_CLEANUP_HOOKS+=(stop_loops)

# once OUT [ARGS] — jobs-watch.sh --once MNT D; OUT gets stdout; prints the status
once() {
  local out=$1 rc=0
  bash "$WATCH" --once "$MNT" "$D" >"$out" 2>"$out.err" || rc=$?
  sed 's/^/  | /' "$out" "$out.err" >&2
  [ ! -s "$out.err" ] || it_fail "jobs-watch.sh --once wrote on stderr: $(cat "$out.err")"
  echo "$rc"
}

# ---- 1. no job ---------------------------------------------------------------------
it_assert_eq 1 "$(once "$T/w0")" "--once with no job: status 1"
it_assert_eq "no job in progress" "$(cat "$T/w0")" "--once with no job says so"
rc=0
bash "$WATCH" --once "$T" >/dev/null 2>"$T/bad.err" || rc=$?
it_assert_eq 2 "$rc" "--once on a directory that is no mount: status 2"
it_assert_contains "$(cat "$T/bad.err")" "is not a mount point" "... and says why"

# ---- 2. two jobs ------------------------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir vda/snapshots/s1"
it_guest_write "$D" 0x12 0 12M virtio-disk0
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir vda/snapshots/s2"
mkdir "$MNT/$D/vdb/snapshots/t1" || it_fail "mkdir vdb/snapshots/t1"
it_guest_write "$D" 0x22 0 1M virtio-disk1
it_ctl "$D" vdb "pivot manual" || it_fail "pivot manual on vdb"

bash "$WATCH" -n 0.2 "$MNT" "$D" >"$T/loop-dom" 2>"$T/loop-dom.err" &
loops+=($!)
bash "$WATCH" -n 0.2 "$MNT" >"$T/loop-all" 2>"$T/loop-all.err" &
loops+=($!)

it_rmdir_throttled "$D" vda s1
rmdir "$MNT/$D/vdb/snapshots/t1" || it_fail "rmdir vdb/snapshots/t1"
vdb_ready() { [ "$(it_job_field "$D" vdb state)" = ready ]; }
it_wait_until 60 "vdb's active commit is ready" vdb_ready
# a second of vda's merge: a rate to show
vda_moved() { [ "$(it_job_field "$D" vda cur)" -gt 0 ] && [ "$(it_job_field "$D" vda state)" = running ]; }
it_wait_until 30 "vda's merge has copied something" vda_moved
sleep 1.5
it_assert_eq running "$(it_job_field "$D" vda state)" "vda's merge still runs (1 MiB/s)"
it_assert_eq 0 "$(once "$T/w1")" "--once with jobs: status 0"
cur=$(it_job_field "$D" vda cur) end=$(it_job_field "$D" vda end) pct=$(it_job_field "$D" vda progress_percent)
it_assert_eq 3 "$(wc -l <"$T/w1")" "--once: a header and one row per job"
header=$(head -n 1 "$T/w1")
for col in DOMAIN DISK TYPE STATE SNAPSHOT PROGRESS BYTES RATE LEFT LIMIT NOTE; do
  it_assert_contains "$header" "$col" "the header has $col"
done
trim() { awk '{ gsub(/^ +| +$/, ""); print }' <<<"$1"; }
# the rows: columns are separated by two spaces or more (BYTES is "X / Y")
row() { awk -v d="$1" '{ n = split($0, f, /  +/); if (f[2] == d) { for (i = 1; i <= n; i++) printf "%s|", f[i]; print "" } }' "$T/w1"; }
IFS='|' read -r dom disk type state snap p bytes rate left limit note <<<"$(row vda)"
it_assert_eq "$D vda commit running s1" "$dom $disk $type $state $snap" "vda's row: domain, disk, type, state, snapshot"
p=$(trim "$p")
[[ "$p" =~ ^[0-9]+%$ ]] || it_fail "vda's PROGRESS is not a percentage: '$p'"
p=${p%\%}
if [ "$p" -lt 0 ] || [ "$p" -gt "$pct" ] || [ "$p" -ge 100 ]; then
  it_fail "vda's PROGRESS $p% is not between 0 and job.json's $pct% read after it"
fi
it_log "ok: vda's progress $p% (job.json a moment later: $pct%, $cur of $end bytes)"
bytes=$(trim "$bytes")
[[ "$bytes" =~ ^[0-9.]+(B|KiB|MiB|GiB)\ /\ 128\.0MiB$ ]] || it_fail "vda's BYTES is not 'N / 128.0MiB' (the disk's size): '$bytes'"
it_log "ok: vda's BYTES $bytes"
rate=$(trim "$rate")
rb=$(awk -v r="$rate" 'BEGIN { n = r + 0; u = r; sub(/^[0-9.]+/, "", u)
  m["B/s"] = 1; m["KiB/s"] = 1024; m["MiB/s"] = 1048576; m["GiB/s"] = 1073741824
  if (!(u in m)) { print -1; exit } printf "%d\n", n * m[u] }')
if [ "$rb" -lt $((64 * 1024)) ] || [ "$rb" -gt $((8 * M)) ]; then
  it_fail "vda's RATE '$rate' is not between 64 KiB/s and 8 MiB/s (limit 1 MiB/s)"
fi
it_log "ok: vda's RATE $rate"
left=$(trim "$left")
[[ "$left" =~ ^[0-9]+:[0-5][0-9](:[0-5][0-9])?$ ]] || it_fail "vda's LEFT is not a time: '$left'"
it_assert_eq "1.0MiB/s" "$(trim "$limit")" "vda's LIMIT is the mount's -o bandwidth"
it_assert_eq "-" "$(trim "$note")" "vda's NOTE: nothing to say"
IFS='|' read -r dom disk type state snap p bytes rate left limit note <<<"$(row vdb)"
it_assert_eq "$D vdb active-commit ready t1" "$dom $disk $type $state $snap" "vdb's row: an active commit in ready"
it_assert_eq "100% - -" "$(trim "$p") $(trim "$rate") $(trim "$left")" \
  "vdb's row: 100%, no rate, no time left (all copied, mirroring)"

# ---- 4. the jobs end -------------------------------------------------------------
it_ctl "$D" vdb pivot || it_fail "pivot on vdb"
it_unthrottle "$D" vda
out=$(it_wait_job "$D" vda 120)
grep -q '^state: *completed$' <<<"$out" || it_fail "vda's merge did not complete: $out"
out=$(it_wait_job "$D" vdb 60)
grep -q '^state: *completed$' <<<"$out" || it_fail "vdb's merge did not complete: $out"
it_log "ok: both merges completed"
it_assert_eq 1 "$(once "$T/w2")" "--once after the jobs ended: status 1"
it_assert_eq "no job in progress" "$(cat "$T/w2")" "--once after the jobs ended: no job"
grep -q "^$D  *vda  *commit  *running  *s1 " "$T/loop-dom" || it_fail "the watch loop never showed vda's merge"
grep -q "^$D  *vda  *commit  *running  *s1 " "$T/loop-all" || it_fail "the whole mount's watch loop never showed vda's merge"
it_log "ok: both watch loops showed vda's merge"
it_check_pattern "$(it_domblk "$D" vda)" 0x12 0 12M
it_check_pattern "$(it_domblk "$D" vdb)" 0x22 0 1M
it_check_pattern "$(it_domblk "$D" vdb)" 0x21 1M 3M

# ---- 4b. rolling-snapshots.sh's merge, seen, and the script interrupted -------------
ROLL="$IT_ROOT/examples/rolling-snapshots.sh"
LOCK="$T/rolling.lock"
bash "$ROLL" -L "$LOCK" "$MNT" 1 "$D" >"$T/roll1" 2>&1 || it_fail "rolling-snapshots.sh run 1: $(cat "$T/roll1")"
r1=$(sed -n 's/^[^ ]*: snapshot \([^ ]*\) taken.*/\1/p' "$T/roll1")
it_guest_write "$D" 0x13 16M 8M virtio-disk0
bash "$ROLL" -L "$LOCK" "$MNT" 1 "$D" >"$T/roll2" 2>&1 &
roller=$!
in_rows() { bash "$WATCH" --once "$MNT" "$D" >"$T/w3" 2>&1 && grep -q "$1" "$T/w3"; }
it_wait_until 30 "jobs-watch shows the merge of $r1 as part of a domain-level rmdir" \
  in_rows "domain-level rmdir $r1"
sed 's/^/  | /' "$T/w3" >&2
# it says so once its rmdirs returned, then waits
it_wait_until 10 "rolling-snapshots.sh says it merges $r1 away" grep -q ": merging $r1 away$" "$T/roll2"
kill -0 "$roller" 2>/dev/null || it_fail "rolling-snapshots.sh did not wait for the merge"
kill -TERM "$roller"
t0=$(it_now_ms)
rc=0
wait "$roller" || rc=$?
sed 's/^/  | /' "$T/roll2" >&2
it_assert_eq 143 "$rc" "rolling-snapshots.sh, SIGTERM while it waits for the merge: status 143"
[ $(($(it_now_ms) - t0)) -lt 3000 ] || it_fail "rolling-snapshots.sh took $(($(it_now_ms) - t0)) ms to end on SIGTERM"
it_assert_contains "$(cat "$T/roll2")" "interrupted; merges already started go on in chainfs (see: cat $MNT/$D/job)" "it says the merges go on, and where to look"
flock -n "$LOCK" true || it_fail "the lock is still held after rolling-snapshots.sh ended"
it_log "ok: the lock is free"
it_assert_eq "" "$(cat "$LOCK")" "the lock file names no holder"
bash "$WATCH" --once "$MNT" "$D" >/dev/null || it_fail "the merge stopped with the script"
it_log "ok: the merge goes on without the script"
it_unthrottle "$D" vda
out=$(timeout 120 cat "$MNT/$D/wait") || it_fail "cat $D/wait"
grep -q '^state: *completed$' <<<"$out" || it_fail "the domain-level merge of $r1 did not complete: $out"
[ ! -e "$MNT/$D/snapshots/$r1" ] || it_fail "$r1 is still there"
it_log "ok: $r1 merged away after the script was stopped"
it_check_pattern "$(it_domblk "$D" vda)" 0x13 16M 8M

# ---- 5. the domain goes away under the loops -----------------------------------------
it_virsh destroy "$D" >/dev/null || it_fail "virsh destroy"
it_virsh undefine --snapshots-metadata "$D" >/dev/null || it_fail "virsh undefine"
it_wait_until 20 "the domain leaves the mount" test ! -e "$MNT/$D"
size=$(stat -c %s "$T/loop-dom")
grown() { [ "$(stat -c %s "$T/loop-dom")" -gt "$((size + 200))" ]; }
it_wait_until 10 "the domain's watch loop goes on" grown
for p in "${loops[@]}"; do
  kill -0 "$p" 2>/dev/null || it_fail "a watch loop (pid $p) ended"
done
# at least one whole frame (about 110 bytes) since the domain left
new=$(tail -c +"$((size + 1))" "$T/loop-dom")
it_assert_contains "$new" $'\nno job in progress\n' "the domain's loop shows no job once it is gone"
if grep -q "^$D " <<<"$new"; then
  it_fail "the domain's loop still shows a row of the domain once it is gone"
fi
stop_loops
it_assert_eq "" "$(cat "$T/loop-dom.err" "$T/loop-all.err")" "the watch loops wrote nothing on stderr"
