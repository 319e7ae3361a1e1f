#!/bin/bash
# Probe for docs/design/issue9.md §3/§4: what QEMU 7.2's image locks do when
# qemu-nbd --read-only serves a frozen chain and something commits into it;
# what block status qemu-nbd reports; relative backing paths; raw base.
# Small images only (16 MiB), run with nice -n 19. Usage: issue9_locks.sh > log 2>&1
set -u
T=$(mktemp -d /tmp/issue9probe.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3; rm -rf "$T"; }
trap cleanup EXIT
cd "$T" || exit 1
run() { echo "\$ $*"; "$@" 2>&1 | sed 's/^/  /'; echo "  rc=${PIPESTATUS[0]}"; }
serve() { # serve FILE SOCK [extra]: start a read-only qemu-nbd, remember its pid
  local f=$1 s=$2; shift 2
  qemu-nbd --read-only --format=qcow2 --socket="$s" --persistent --shared=4 \
     --cache=none --aio=threads --fork --pid-file="$s.pid" "$@" "$f" || { echo "  qemu-nbd failed"; return 1; }
  PIDS+=("$(cat "$s.pid")"); echo "  qemu-nbd pid $(cat "$s.pid") serving $f on $s"
}
stop() { local p; p=$(cat "$1.pid"); kill "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; echo "  stopped $p"; }
qemu-nbd --version | head -1; nbdinfo --version | head -2

echo "== 1. qcow2 chain base <- s1 <- s2 <- s3, patterns per layer (relative backing paths)"
qemu-img create -q -f qcow2 base.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x11 0 4M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 s1.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 2M 2M' s1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b s1.qcow2 s2.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 8M 1M' s2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b s2.qcow2 s3.qcow2
run qemu-img info --backing-chain -U s3.qcow2 --output=human
echo "-- snapshot s2's frozen image is s1.qcow2 (+ base); serve it from another cwd (relative backing resolved against the image's directory)"
mkdir sock; chmod 700 sock
(cd / && serve "$T/s1.qcow2" "$T/sock/s2.sock")
run nbdinfo --size "nbd+unix:///?socket=$T/sock/s2.sock"
run nbdinfo --map "nbd+unix:///?socket=$T/sock/s2.sock"
run nbdinfo --map=qemu:allocation-depth "nbd+unix:///?socket=$T/sock/s2.sock"
run nbdinfo --can cache "nbd+unix:///?socket=$T/sock/s2.sock"
nbdinfo --json "nbd+unix:///?socket=$T/sock/s2.sock" | grep -E '"(block_size_(minimum|preferred|maximum)|is_read_only|can_multi_conn|export-size)"'
qemu-img convert -U -O raw s1.qcow2 ref.raw
nbdcopy "nbd+unix:///?socket=$T/sock/s2.sock" out.raw && run cmp ref.raw out.raw
echo "-- qemu-img map of the frozen chain (what st_blocks/SEEK_DATA could come from without qemu-nbd)"
run qemu-img map -U --output=json s1.qcow2

echo "== 2. commits into files the reader holds (qemu-img commit = the offline merge)"
echo "-- commit s2 into s1 (s1 is the reader's top): expect a write-lock error"
run qemu-img commit -q s2.qcow2
echo "-- commit s1 into base (base is the reader's backing file): expect a write-lock error"
run qemu-img commit -q s1.qcow2
echo "-- the write a live commit needs on the layer below (opened read-write by another process): qcow2 base under the reader"
run qemu-io -f qcow2 -c 'write -P 0x77 0 64k' base.qcow2
echo "-- the same on s1 (the reader's top)"
run qemu-io -f qcow2 -c 'write -P 0x77 0 64k' s1.qcow2
echo "-- commit s3 into s2 (above the reader): expect success"
run qemu-img commit -q s3.qcow2
echo "-- a second reader of the same frozen image, and a 'guest' (qemu-nbd rw on the active s3) alongside"
serve "$T/s1.qcow2" "$T/sock/s2b.sock"
qemu-nbd --format=qcow2 --socket="$T/sock/guest.sock" --fork --persistent --pid-file="$T/sock/guest.sock.pid" "$T/s3.qcow2" && { PIDS+=("$(cat sock/guest.sock.pid)"); echo "  rw qemu-nbd on active s3 started alongside the readers"; }
stop "$T/sock/guest.sock"
echo "-- a reader of the active layer is refused while a writer holds it (why chainfs never opens the active layer)"
qemu-nbd --format=qcow2 --socket="$T/sock/guest.sock" --fork --persistent --pid-file="$T/sock/guest.sock.pid" "$T/s3.qcow2" && PIDS+=("$(cat sock/guest.sock.pid)")
(serve "$T/s3.qcow2" "$T/sock/active.sock"; true)
stop "$T/sock/guest.sock"
echo "-- after both readers stop, commit s1 into base works"
stop "$T/sock/s2.sock"; stop "$T/sock/s2b.sock"
run qemu-img commit -q s2.qcow2

echo "== 3. raw base: base.raw <- r1.qcow2 <- r2.qcow2; reader serves r1 (snapshot r2's frozen image)"
qemu-img create -q -f raw rbase.raw 16M
qemu-io -f raw -c 'write -P 0x44 0 1M' rbase.raw >/dev/null
qemu-img create -q -f qcow2 -F raw -b rbase.raw r1.qcow2
qemu-io -f qcow2 -c 'write -P 0x55 4M 1M' r1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b r1.qcow2 r2.qcow2
serve "$T/r1.qcow2" "$T/sock/r.sock"
run nbdinfo --map "nbd+unix:///?socket=$T/sock/r.sock"
echo "-- open the raw base read-write while the reader is open (what a commit of r1 into it needs)"
run qemu-io -f raw -c 'write -P 0x66 0 64k' rbase.raw
md5a=$(nbdcopy "nbd+unix:///?socket=$T/sock/r.sock" - | md5sum)
echo "-- commit r1 into the raw base while the reader is open"
run qemu-img commit -q r1.qcow2
md5b=$(nbdcopy "nbd+unix:///?socket=$T/sock/r.sock" - | md5sum)
echo "  reader's content before: $md5a"; echo "  reader's content after:  $md5b"
stop "$T/sock/r.sock"
echo "-- mitigation for a raw base: chainfs itself holds an OFD read lock on QEMU's byte 201 (RAW_LOCK_SHARED_BASE + bit of BLK_PERM_WRITE = 'write not shared')"
python3 - "$T/rbase.raw" <<'PY'
import fcntl, os, struct, subprocess, sys
F_OFD_SETLK = 37
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_RDLCK, os.SEEK_SET, 201, 1, 0))
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x67 0 64k", sys.argv[1]], capture_output=True, text=True)
print("  qemu-io rw with byte 201 held: rc=%d %s" % (r.returncode, (r.stdout + r.stderr).strip().replace("\n", " | ")))
r = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read 0 64k", sys.argv[1]], capture_output=True, text=True)
print("  qemu-io read-only with byte 201 held: rc=%d" % r.returncode)
os.close(fd)
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x67 0 64k", sys.argv[1]], capture_output=True, text=True)
print("  qemu-io rw after release: rc=%d" % r.returncode)
PY
echo "-- raw top served with --format=qcow2 is refused (format must come from the chain, never probed)"
(qemu-nbd --read-only --format=qcow2 --socket="$T/sock/x.sock" --fork --pid-file="$T/sock/x.pid" rbase.raw 2>&1 | sed 's/^/  /'; true)
echo "-- raw top served with --format=raw"
qemu-nbd --read-only --format=raw --socket="$T/sock/x.sock" --fork --persistent --pid-file="$T/sock/x.pid" rbase.raw && PIDS+=("$(cat sock/x.pid)")
run nbdinfo --map "nbd+unix:///?socket=$T/sock/x.sock"
stop "$T/sock/x"

echo "== 4. what a killed parent leaves: qemu-nbd --fork survives its parent; the socket file stays"
sh -c "qemu-nbd --read-only --format=qcow2 --socket=$T/sock/orphan.sock --persistent --fork --pid-file=$T/sock/orphan.pid $T/base.qcow2" 
p=$(cat sock/orphan.pid); PIDS+=("$p")
echo "  parent shell gone; qemu-nbd $p alive: $(kill -0 "$p" 2>/dev/null && echo yes || echo no); ppid $(ps -o ppid= -p "$p")"
kill "$p"; sleep 0.3; echo "  after SIGTERM: socket file left: $(test -S sock/orphan.sock && echo yes || echo no); pid file left: $(test -e sock/orphan.pid && echo yes || echo no)"
echo "-- without --fork, child of a process that dies with SIGKILL and PR_SET_PDEATHSIG=SIGTERM"
python3 - "$T" <<'PY'
import ctypes, os, signal, sys, time, subprocess
t = sys.argv[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:               # the "daemon"
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:
        libc.prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
        os.execvp("qemu-nbd", ["qemu-nbd", "--read-only", "--format=qcow2",
                  "--socket=%s/sock/pd.sock" % t, "--persistent", "%s/base.qcow2" % t])
    os.write(w, str(child).encode()); time.sleep(60); os._exit(0)
os.close(w)
child = int(os.read(r, 32)); time.sleep(0.5)
print("  before: socket file exists=%s" % os.path.exists(t + "/sock/pd.sock"))
os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); time.sleep(0.5)
try: state = open("/proc/%d/stat" % child).read().split(")")[1].split()[0]
except FileNotFoundError: state = "gone"
print("  qemu-nbd after the daemon's SIGKILL: process state=%s (Z = exited, not yet reaped by the subreaper) socket file left=%s" % (state, os.path.exists(t + "/sock/pd.sock")))
PY
echo "== done"
