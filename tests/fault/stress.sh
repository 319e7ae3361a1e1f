#!/usr/bin/env bash
# stress.sh — issue 3: "4 domains x 2 disks, 8 concurrent workers doing
# random mkdir / rmdir / cat / ls for 5 minutes with live writes; the
# invariants hold at the end and every worker's errors are only EBUSY or
# EEXIST".
#
# Eight python3 workers, one per disk, for STRESS_SECONDS (default 300).
# Each one alone changes its disk, so a name leaves its disk's snapshots/
# only by its own worker's rmdir: any ENOENT is chainfs's fault, not a race
# between workers. Each loop picks at random:
#   mkdir snapshots/NAME  NAME unique to the worker ("wI-N"), or now and then
#                         one of four names shared by both workers of the
#                         domain ("shared-K"): libvirt names snapshots per
#                         domain, so the other disk's holds it -> EEXIST
#   rmdir snapshots/NAME  a name from its own `ls snapshots/`: active or
#                         middle layer; an earlier merge may still run -> EBUSY
#   cat chain, chain.json, job, job.json, wait, NAME/info, NAME/info.json
#   ls snapshots/
# and records each operation's errno. What it reads must be whole (JSON
# parses, `layers:` matches the rows), every `ls snapshots/` must list
# exactly the names the worker made and has not removed (no lost update),
# EEXIST only ever for a shared name, no merge may fail, and no operation
# may take longer than 60 s (a hang counts as TIMEOUT; a worker stuck in a
# request the daemon never answers is killed 150 s after the deadline).
# Every EBUSY must be chainfs's own: a mkdir/rmdir that chainfs passed on
# and libvirt refused (the daemon logs "failed (...)") means chainfs lost
# track of a job, except libvirt's EEXIST when both workers of a domain make
# the same shared name at the same moment.
#
# Meanwhile a writer process makes two of the four guests write (HMP
# qemu-io + flush) into both their disks every second or so, each write a
# fresh 64 KiB pattern at a fresh offset, so that every one can be checked.
#
# At the end: `cat wait` on every disk, the errno tally per operation, every
# error other than EBUSY/EEXIST listed with its context (and failing the
# test), fault_check_invariants on all eight disks, and every pattern —
# written before start and by the guests during the run — read back
# through each disk's chain.
set -euo pipefail
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"

STRESS_SECONDS=${STRESS_SECONDS:-300}
[ -z "${STRESS_MOUNT_OPTS:-}" ] || it_log "mount options: $STRESS_MOUNT_OPTS"
NDOM=4
DISKS=(vda vdb)
DEVS=(virtio-disk0 virtio-disk1) # the disks' device aliases, for HMP qemu-io

fault_init
PIDS=() # our workers and writer: stopped by pid at exit if still there
stop_ours() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null
  done
}
fault_on_exit stop_ours
# STRESS_ARTIFACTS=DIR keeps the operation logs and the daemon's log (for
# a failure's post-mortem: $T goes away at exit).
keep_artifacts() {
  [ -n "${STRESS_ARTIFACTS:-}" ] || return 0
  mkdir -p "$STRESS_ARTIFACTS" &&
    cp "$T"/ops.*.jsonl "$T"/writes.txt "$IT_LOG" "$STRESS_ARTIFACTS/" 2>/dev/null
  it_log "operation logs and chainfs.log copied to $STRESS_ARTIFACTS"
}
fault_on_exit keep_artifacts

# ---- the domains ------------------------------------------------------------

# Before start, each disk gets two patterns of its own (0xIJ: domain I,
# disk J) at the start and the end of the disk; the guests' writes during
# the run go in between (8M..56M), never over them.
DOMS=()
for ((i = 0; i < NDOM; i++)); do
  d="$IT_PREFIX-st$i"
  DOMS+=("$d")
  files=()
  for ((j = 0; j < ${#DISKS[@]}; j++)); do
    f="$FAULT_IMAGES/$d.${DISKS[j]}.qcow2"
    it_make_image "$f" 64M
    it_write_pattern "$f" "0x$((i + 1))$((j + 1))" 0 1M
    it_write_pattern "$f" "0x$((i + 1))$((j + 1))" 60M 1M
    files+=("$f")
  done
  it_define "$d" "${files[@]}"
done
for d in "${DOMS[@]}"; do it_start "$d"; done
# STRESS_MOUNT_OPTS: more -o options (e.g. live_pull=on, to try chainfs's
# quiet domain while it pulls; docs/design/issue8.md §7.4)
it_mount "${STRESS_MOUNT_OPTS:-}"
for d in "${DOMS[@]}"; do it_wait_dom "$d"; done

# ---- the workers ---------------------------------------------------------------

cat >"$T/worker.py" <<'PY'
# worker.py MNT DOM DISK INDEX SECONDS OUT SEED — one disk's random
# operations; one JSON line per operation in OUT.
import errno, json, os, random, re, signal, sys, time

mnt, dom, disk, idx, seconds, out, seed = sys.argv[1:8]
idx, seconds = int(idx), float(seconds)
rnd = random.Random(int(seed))
ddir = os.path.join(mnt, dom, disk)
sdir = os.path.join(ddir, "snapshots")
log = open(out, "w", buffering=1)
deadline = time.monotonic() + seconds
OP_TIMEOUT = 60
counter = 0


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


signal.signal(signal.SIGALRM, on_alarm)


def record(op, path, result, dt, note=""):
    log.write(json.dumps({"t": round(time.time(), 3), "dom": dom, "disk": disk,
                          "op": op, "path": os.path.relpath(path, mnt),
                          "result": result, "ms": round(dt * 1000),
                          "note": note}) + "\n")


def run(op, path, fn):
    """Run fn() with a time limit; record its errno. Returns (result, value)."""
    t0 = time.monotonic()
    value, note = None, ""
    signal.alarm(OP_TIMEOUT)
    try:
        value = fn()
        result = "OK"
    except Timeout:
        result = "TIMEOUT"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
        note = e.strerror or ""
    finally:
        signal.alarm(0)
    record(op, path, result, time.monotonic() - t0, note)
    return result, value


def anomaly(op, path, what):
    record(op, path, "ANOMALY", 0, what)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# What snapshots/ must list: this worker alone changes its disk, so the
# names it made and has not removed, exactly ("no lost update").
expected = set()


def listdir():
    r, names = run("ls", sdir, lambda: sorted(os.listdir(sdir)))
    if r != "OK":
        return None
    if set(names) != expected:
        anomaly("ls", sdir, "lists %s, expected %s" % (names, sorted(expected)))
        expected.clear()
        expected.update(names)  # report each divergence once
    return names


def check_json(op, path, data):
    try:
        return json.loads(data)
    except ValueError as e:
        anomaly(op, path, "not whole JSON (%s): %r" % (e, data[:200]))
        return None


def check_job(op, path, j):
    # A merge that fails under no fault is a bug; a refused mkdir/rmdir
    # also leaves state failed, with an error that starts "mkdir NAME:" or
    # "rmdir NAME:".
    if j and j.get("state") == "failed" and j.get("type") in ("commit", "active-commit", "offline-commit", "pull", "offline-pull"):
        err = j.get("error") or ""
        if not re.match(r"^(mkdir|rmdir) \S+: ", err):
            anomaly(op, path, "merge of %s failed: %s" % (j.get("snapshot"), err))


def do_mkdir():
    global counter
    if rnd.random() < 0.2:
        name = "shared-%d" % rnd.randrange(4)
    else:
        counter += 1
        name = "w%d-%d" % (idx, counter)
    p = os.path.join(sdir, name)
    r, _ = run("mkdir", p, lambda: os.mkdir(p))
    if r == "EEXIST" and not name.startswith("shared-"):
        anomaly("mkdir", p, "EEXIST for a name nobody made before")
    if r == "OK":
        expected.add(name)
        if not os.path.isdir(p):
            anomaly("mkdir", p, "mkdir succeeded but the name is not listed")


def do_rmdir():
    names = listdir()
    if not names:
        return
    # any layer: the active one (active commit + pivot) or a middle one
    name = rnd.choice(names)
    p = os.path.join(sdir, name)
    r, _ = run("rmdir", p, lambda: os.rmdir(p))
    if r == "OK":
        expected.discard(name)
        if os.path.lexists(p):
            # it may only come back if its merge failed
            jr, j = run("cat", os.path.join(ddir, "job.json"),
                        lambda: read(os.path.join(ddir, "job.json")))
            anomaly("rmdir", p, "rmdir succeeded but the name is still there; job: %r" % (j,))


def do_cat():
    what = rnd.choice(["chain", "chain.json", "job", "job.json", "wait",
                       "info", "info.json"])
    if what.startswith("info"):
        names = listdir()
        if not names:
            return
        p = os.path.join(sdir, rnd.choice(names), what)
    else:
        p = os.path.join(ddir, what)
    r, data = run("cat", p, lambda: read(p))
    if r != "OK":
        return
    if not data.endswith(b"\n"):
        anomaly("cat", p, "does not end with a newline: %r" % data[-80:])
    text = data.decode("utf-8", "replace")
    if what.endswith(".json"):
        j = check_json("cat", p, data)
        if what == "job.json":
            check_job("cat", p, j)
    elif what == "chain":
        m = re.search(r"^layers: *(\d+)$", text, re.M)
        rows = [l for l in text.split("\n\n", 1)[-1].splitlines()[1:] if l.strip()]
        if not m or int(m.group(1)) != len(rows):
            anomaly("cat", p, "layers: line does not match the table: %r" % text)
    elif what in ("job", "wait"):
        st = re.search(r"^state: *(\S+)$", text, re.M)
        if not st:
            anomaly("cat", p, "no state: line: %r" % text)
        elif what == "wait" and st.group(1) in ("running", "ready", "pivoting"):
            anomaly("cat", p, "wait returned while a job is in progress: %r" % text)
        else:
            ty = re.search(r"^type: *(\S+)$", text, re.M)
            er = re.search(r"^error: *(.*)$", text, re.M)
            check_job("cat", p, {"state": st.group(1), "type": ty and ty.group(1),
                                 "error": er and er.group(1),
                                 "snapshot": None})


OPS = [(do_mkdir, 30), (do_rmdir, 25), (do_cat, 35), (listdir, 10)]
while time.monotonic() < deadline:
    # a long chain gets merged down rather than grown further
    ops = OPS
    try:
        n = len(os.listdir(sdir))
    except OSError:
        n = 0
    if n >= 6:
        ops = [(do_rmdir, 60), (do_cat, 30), (listdir, 10)]
    fn = rnd.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
    fn()
    time.sleep(rnd.random() * 0.1)
log.close()
PY

# The guests' writes: domains 0 and 1, both disks, one 64 KiB pattern at a
# time at the next free offset of 8M..56M. Each successful write+flush is
# recorded as "DOM DISK PATTERN OFFSET LEN" in OUT; a failure as "ERROR ...".
cat >"$T/writer.py" <<'PY'
# writer.py SECONDS OUT DOM:DISK:DEVICE... — live guest writes through HMP.
import subprocess, sys, time

seconds, out = float(sys.argv[1]), sys.argv[2]
targets = [t.split(":") for t in sys.argv[3:]]
log = open(out, "w", buffering=1)
deadline = time.monotonic() + seconds
nxt = {tuple(t[:2]): 8 << 20 for t in targets}
n = 0
while time.monotonic() < deadline:
    for dom, disk, dev in targets:
        off = nxt[(dom, disk)]
        if off + (64 << 10) > 56 << 20:
            continue
        pat = "0x%02x" % (0x40 + n % 0x40)
        n += 1
        ok = True
        for cmd in ("write -P %s %d 65536" % (pat, off), "flush"):
            hmp = 'qemu-io -d /machine/peripheral/%s/virtio-backend "%s"' % (dev, cmd)
            r = subprocess.run(["virsh", "-q", "-c", "qemu:///system",
                                "qemu-monitor-command", dom, "--hmp", hmp],
                               capture_output=True, text=True, timeout=60)
            text = r.stdout + r.stderr
            if r.returncode != 0 or any(w in text for w in
                                        ("rror", "failed", "not found", "Could not")):
                log.write("ERROR %s %s %s: %s\n" % (dom, disk, cmd, text.strip()))
                ok = False
                break
        if ok:
            log.write("%s %s %s %d 65536\n" % (dom, disk, pat, off))
            nxt[(dom, disk)] = off + (64 << 10)
    time.sleep(1)
log.close()
PY

it_log "stress: ${#DOMS[@]} domains x ${#DISKS[@]} disks, 8 workers, ${STRESS_SECONDS}s, live writes on ${DOMS[0]} and ${DOMS[1]}"
# libvirtd must stay up during the run: on a shared host another test
# (libvirtd_restart.sh) restarting it would make ENOTCONN legitimate.
libvirtd_pids() { pidof libvirtd virtqemud 2>/dev/null || true; }
LIBVIRTD_PIDS=$(libvirtd_pids)
SEED=${STRESS_SEED:-$$}
it_log "random seed $SEED (STRESS_SEED=$SEED repeats the choices)"
w=0
for d in "${DOMS[@]}"; do
  for disk in "${DISKS[@]}"; do
    python3 "$T/worker.py" "$MNT" "$d" "$disk" "$w" "$STRESS_SECONDS" \
      "$T/ops.$w.jsonl" "$((SEED + w))" 2>"$T/worker.$w.err" &
    PIDS+=($!)
    w=$((w + 1))
  done
done
python3 "$T/writer.py" "$STRESS_SECONDS" "$T/writes.txt" \
  "${DOMS[0]}:vda:${DEVS[0]}" "${DOMS[0]}:vdb:${DEVS[1]}" \
  "${DOMS[1]}:vda:${DEVS[0]}" "${DOMS[1]}:vdb:${DEVS[1]}" 2>"$T/writer.err" &
PIDS+=($!)

# Every process ends by itself at its deadline, and an operation gives up
# after 60 s (SIGALRM interrupts it). But a FUSE request the daemon never
# answers is not ended by a caught signal, only by a fatal one: whatever
# is still running 150 s after the deadline is hung, and is killed.
hung=()
end=$(($(date +%s) + STRESS_SECONDS + 150))
for p in "${PIDS[@]}"; do
  while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
done
for ((w = 0; w < ${#PIDS[@]}; w++)); do
  p=${PIDS[w]}
  if kill -0 "$p" 2>/dev/null; then
    kill -KILL "$p" 2>/dev/null
    hung+=("$w (pid $p; last operation done: $(tail -n 1 "$T/ops.$w.jsonl" 2>/dev/null || echo -))")
  fi
done
status=0
for p in "${PIDS[@]}"; do
  wait "$p" 2>/dev/null || status=$?
done
PIDS=()
if [ "${#hung[@]}" -gt 0 ]; then
  printf '[stress] hung: %s\n' "${hung[@]}" >&2
  it_fail "${#hung[@]} worker(s) still stuck 150 s after the deadline (the last one is the writer)"
fi
for w in "$T"/worker.*.err "$T/writer.err"; do
  if [ -s "$w" ]; then
    cat "$w" >&2
    it_fail "$(basename "$w"): the process wrote errors"
  fi
done
[ "$status" -eq 0 ] || it_fail "a worker or the writer exited $status"
it_log "workers done"
# Every libvirtd that ran at the start still runs (a private daemon that
# another test started meanwhile is not a restart of this one).
for p in $LIBVIRTD_PIDS; do
  case "$(cat "/proc/$p/comm" 2>/dev/null)" in
    libvirtd | virtqemud) ;;
    *) it_fail "libvirtd was restarted during the run (pid $LIBVIRTD_PIDS, now $(libvirtd_pids)) by something else than this test; its results mean nothing: run it again alone" ;;
  esac
done

# ---- the end -----------------------------------------------------------------

# Every disk idle.
for d in "${DOMS[@]}"; do
  for disk in "${DISKS[@]}"; do
    out=$(it_wait_job "$d" "$disk" 120)
    it_log "$d/$disk last job: $(sed -n 's/^state: *//p' <<<"$out") $(sed -n 's/^type: *//p' <<<"$out") $(sed -n 's/^snapshot: *//p' <<<"$out")"
  done
done

# The tally: operations and errnos; anything but OK/EBUSY/EEXIST listed.
cat "$T"/ops.*.jsonl >"$T/ops.all.jsonl"
python3 - "$T/ops.all.jsonl" "$T/writes.txt" "$IT_LOG" >&2 <<'PY' || it_fail "workers saw errors other than EBUSY/EEXIST, or anomalies (listed above)"
import collections, json, re, sys
ops = [json.loads(l) for l in open(sys.argv[1])]
# chainfs's own refusals are logged "refused (...)"; "failed (...)" means
# libvirt refused a mkdir/rmdir that chainfs let through. With one worker
# per disk, that only happens rightly for two workers of a domain making
# the same shared name at the same moment (libvirt: "domain moment NAME
# already exists" -> EEXIST); anything else, e.g. libvirt saying "busy",
# means chainfs lost track of a job or a layer.
lv = [l.rstrip() for l in open(sys.argv[3], errors="replace")
      if re.search(r" (mkdir|rmdir) \S+ failed \(", l)
      and not re.search(r" mkdir \S+/snapshots/shared-\d+ failed \(File exists\)", l)]
tally = collections.defaultdict(collections.Counter)
slow = collections.defaultdict(int)
for o in ops:
    tally[o["op"]][o["result"]] += 1
    slow[o["op"]] = max(slow[o["op"]], o["ms"])
writes = [l for l in open(sys.argv[2]) if l.strip()]
werr = [l for l in writes if l.startswith("ERROR")]
print("[stress] %d operations by 8 workers; %d guest writes (%d failed)" %
      (sum(sum(c.values()) for c in tally.values()), len(writes) - len(werr), len(werr)))
for op in sorted(tally):
    print("[stress]   %-6s %6d  %s  (slowest %d ms)" % (
        op, sum(tally[op].values()),
        ", ".join("%s %d" % kv for kv in sorted(tally[op].items())), slow[op]))
bad = [o for o in ops if o["result"] not in ("OK", "EBUSY", "EEXIST")]
for o in bad[:50]:
    print("[stress] BAD: %s %s -> %s %s (%d ms) at %s" % (
        o["op"], o["path"], o["result"], o["note"], o["ms"], o["t"]))
if len(bad) > 50:
    print("[stress] ... and %d more" % (len(bad) - 50))
for l in werr[:20]:
    print("[stress] BAD guest write: " + l.strip())
print("[stress] %d mkdir/rmdir refused by libvirt rather than by chainfs" % len(lv))
for l in lv[:20]:
    print("[stress] BAD libvirt refusal: " + l)
sys.exit(1 if bad or werr or lv else 0)
PY
it_log "ok: every worker's errors are EBUSY or EEXIST (all from chainfs); no anomaly; every guest write succeeded"

# The invariants, on all eight disks.
pairs=()
for d in "${DOMS[@]}"; do
  for disk in "${DISKS[@]}"; do pairs+=("$d" "$disk"); done
done
# (A first look, for the record: what, if anything, still had to settle
# right after the last `cat wait`.)
if ! fault_compare_invariants "${pairs[@]}" 2>"$T/invariants.first"; then
  it_log "first look at the invariants, before settling:"
  cat "$T/invariants.first" >&2
fi
fault_check_invariants "${pairs[@]}"

# Every pattern reads back through each disk's chain: one qemu-io per disk.
for ((i = 0; i < NDOM; i++)); do
  d=${DOMS[i]}
  for ((j = 0; j < ${#DISKS[@]}; j++)); do
    disk=${DISKS[j]}
    p="0x$((i + 1))$((j + 1))"
    cmds=(-c "read -P $p 0 1M" -c "read -P $p 60M 1M")
    n=2
    while read -r wd wdisk wp woff wlen; do
      if [ "$wd" != "$d" ] || [ "$wdisk" != "$disk" ]; then continue; fi
      cmds+=(-c "read -P $wp $woff $wlen")
      n=$((n + 1))
    done <"$T/writes.txt"
    active=$(it_domblk "$d" "$disk")
    out=$(qemu-io -U -r -f qcow2 "${cmds[@]}" "$active" 2>&1) ||
      it_fail "qemu-io on $(it_short "$active"): $out"
    case "$out" in
      *"Pattern verification failed"* | *"read failed"* | *[Ee]rror*)
        it_fail "patterns of $d/$disk: $(grep -E 'failed|rror' <<<"$out" | head -n 5)" ;;
    esac
    got=$(grep -c '^read ' <<<"$out" || true)
    it_assert_eq "$n" "$got" "all $n patterns of $d/$disk read back through its chain ($(sed -n 's/^layers: *//p' "$MNT/$d/$disk/chain") layers)"
  done
done
