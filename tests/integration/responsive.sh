#!/usr/bin/env bash
# responsive.sh — while a merge runs (limited to 4 MiB/s from its first
# byte by -o bandwidth), reads of the tree
# stay fast: `ls snapshots/`, `cat job` and `cat chain` each return within
# 100 ms, for 10 s and for as long as it takes `job` to show the progress
# moving. Then the merge is let go and `cat wait` sees it complete.
#
# A limited active commit moves in steps, not smoothly: QEMU copies a burst
# (up to 32 MiB) and then sleeps until the limit is met (8 s for 32 MiB at
# 4 MiB/s). So the progress is watched until it moves (up to
# RESPONSIVE_MAX_S, 120 s), and the layer holds 160 MiB: five such steps,
# 40 s in all, never over before the watch ends.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

LIMIT_MS=${RESPONSIVE_LIMIT_MS:-100}
MAX_S=${RESPONSIVE_MAX_S:-120}
D="$IT_PREFIX-resp"
base="$T/base.qcow2"
ov="$T/ov.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 200M 1M
it_make_image "$ov" 256M "$base"
# 160 MiB to merge: at full speed a fraction of a second, at 4 MiB/s 40 s
# (in steps of 32 MiB: five of them).
it_write_pattern "$ov" 0x77 0 160M
it_define "$D" "$ov"
it_start "$D"
it_mount_slow $((4 * 1024 * 1024))
it_wait_dom "$D"
it_assert_eq "ov" "$(it_snapshots "$D" vda)" "the overlay is snapshot ov"

# Limited from its start by the mount option: a virsh started after rmdir
# returns can come too late (the whole merge took 0.45 s in a loaded
# sanitizer run).
it_rmdir_throttled "$D" vda ov

results=$(python3 - "$MNT/$D/vda" 10 "$MAX_S" <<'PY'
import json, os, sys, time
d, seconds, max_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = {"ls snapshots/": [], "cat job": [], "cat chain": []}
samples = []  # (t, state, cur)
def timed(name, fn):
    t0 = time.monotonic()
    r = fn()
    lat[name].append((time.monotonic() - t0) * 1000)
    return r
def read(p):
    with open(p, "rb") as f:
        return f.read()
t0 = time.monotonic()
moved = False
while True:
    t = time.monotonic() - t0
    if (t >= seconds and moved) or t >= max_s:
        break
    snaps = timed("ls snapshots/", lambda: os.listdir(os.path.join(d, "snapshots")))
    job = timed("cat job", lambda: read(os.path.join(d, "job"))).decode()
    timed("cat chain", lambda: read(os.path.join(d, "chain")))
    j = json.loads(read(os.path.join(d, "job.json")))
    pct = [l.split()[1] for l in job.splitlines() if l.startswith("progress:")]
    samples.append((j["state"], j["cur"], j["end"], pct[0] if pct else "?", len(snaps)))
    moved = moved or j["cur"] > samples[0][1]
    time.sleep(0.1)
for name, v in lat.items():
    v.sort()
    print("lat %s|%d|%.1f|%.1f" % (name, len(v), v[len(v) // 2], v[-1]))
print("states %s" % " ".join(sorted(set(s[0] for s in samples))))
print("first %d %d %s" % samples[0][1:4])
print("last %d %d %s" % samples[-1][1:4])
print("snaps %d" % max(s[4] for s in samples))
print("seconds %.1f" % (time.monotonic() - t0))
PY
) || it_fail "measuring reads during the merge"
it_ctl "$D" vda "bandwidth 0" || true
printf '%s\n' "$results" >&2

fails=0
while IFS='|' read -r name n p50 max; do
  name=${name#lat }
  it_log "$name: $n reads during the merge, median ${p50} ms, max ${max} ms (limit ${LIMIT_MS} ms)"
  awk -v m="$max" -v l="$LIMIT_MS" 'BEGIN { exit !(m <= l) }' || {
    echo "[$IT_NAME] $name took ${max} ms > ${LIMIT_MS} ms" >&2
    fails=1
  }
done < <(grep '^lat ' <<<"$results")
[ "$fails" -eq 0 ] || it_fail "reads were slow while a merge ran"
secs=$(sed -n 's/^seconds //p' <<<"$results")
it_assert_eq "running" "$(sed -n 's/^states //p' <<<"$results")" "the job was running (not ready, not done) all ${secs} s"
read -r _ cur0 _ pct0 <<<"$(grep '^first ' <<<"$results")"
read -r _ cur1 end1 pct1 <<<"$(grep '^last ' <<<"$results")"
[ "$cur1" -gt "$cur0" ] || it_fail "job progress did not move in ${secs} s: cur $cur0 -> $cur1"
it_log "ok: job progress moved from $cur0 ($pct0) to $cur1 ($pct1) of $end1 bytes in ${secs} s"
it_assert_eq "0" "$(sed -n 's/^snaps //p' <<<"$results")" "ov stayed out of snapshots/ during the merge"

out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the merge completed"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "domblklist shows the base"
it_destroy "$D"
it_check_pattern "$base" 0x77 0 160M
it_check_pattern "$base" 0x11 200M 1M
