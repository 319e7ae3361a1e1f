#!/usr/bin/env python3
"""Probe for docs/design/issue9.md §1.3: qemu-nbd started the way chainfs
would start it: chainfs binds and listens on the socket itself (0700
directory), forks, the child sets PR_SET_PDEATHSIG, closes every other fd,
and execs qemu-nbd with LISTEN_FDS=1/LISTEN_PID (systemd socket activation).
The client can connect at once (no waiting for a socket file to appear).
Prints the time from fork to the first block-status answer."""
import ctypes, os, signal, socket, subprocess, sys, tempfile, time
t = tempfile.mkdtemp(prefix="issue9act.")
img = os.path.join(t, "a.qcow2")
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "16M"], check=True)
subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", img], check=True, capture_output=True)
d = os.path.join(t, "nbd"); os.mkdir(d, 0o700)
path = os.path.join(d, "1.s")
libc = ctypes.CDLL(None, use_errno=True)
for run in range(4):
    persistent = run < 3
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path); ls.listen(16)
    t0 = time.monotonic()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        libc.prctl(1, signal.SIGTERM)                 # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(127)
        if ls.fileno() != 3:
            os.dup2(ls.fileno(), 3)
        os.set_inheritable(3, True)                    # dup2(3, 3) would keep FD_CLOEXEC
        os.closerange(4, 65536)                        # chainfs: close_range(4, ~0U, 0)
        env = {"PATH": os.environ["PATH"], "LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
        os.execvpe("qemu-nbd", ["qemu-nbd", "--read-only", "--format=qcow2"] +
                   (["--persistent"] if persistent else []) +
                   ["--shared=0", "--cache=writeback", "--aio=threads", img], env)
    ls.close()
    r = subprocess.run(["nbdinfo", "--map", "nbd+unix:///?socket=" + path], capture_output=True, text=True)
    t1 = time.monotonic()
    print("run %d: first answer after %.0f ms, rc=%d, map: %s" % (run, (t1 - t0) * 1000, r.returncode,
          " | ".join(l.strip() for l in r.stdout.splitlines()) or r.stderr.strip()))
    if not persistent:
        # without --persistent qemu-nbd should end by itself once its last client left
        for _ in range(40):
            p, st = os.waitpid(pid, os.WNOHANG)
            if p: break
            time.sleep(0.05)
        print("  without --persistent, after the only client disconnected: exited by itself=%s%s" %
              (bool(p), (", status %d" % st) if p else ""))
        if not p:
            os.kill(pid, signal.SIGTERM); os.waitpid(pid, 0)
    else:
        os.kill(pid, signal.SIGTERM); os.waitpid(pid, 0)
    print("  after exit: socket file left=%s (chainfs unlinks it itself: qemu-nbd did not create it)" % os.path.exists(path))
    if os.path.exists(path): os.unlink(path)
subprocess.run(["rm", "-rf", t])
