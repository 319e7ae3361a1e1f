/* reaper — test tool: the exit status of a daemon that detached.
 *
 *   reaper LOG CMD [ARG...]
 *
 * Becomes a child subreaper (PR_SET_CHILD_SUBREAPER), runs CMD, and
 * writes one line "PID STATUS" to LOG for every process that ends below
 * it: CMD itself first, then whatever CMD left behind (a daemon that
 * forked and whose parent returned is re-parented here, not to init, so
 * its exit status can be read). STATUS is the exit code, or 128 + the
 * signal that killed it. Exits 0 once no process is left below it.
 * mount_type.sh and systemd_unit.sh: `mount -t fuse.chainfs` and the
 * unit's ExecStart start a detached chainfs; did it exit 0 at umount? */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: reaper LOG CMD [ARG...]\n");
        return 2;
    }
    FILE *log = fopen(argv[1], "a");
    if (!log) {
        fprintf(stderr, "reaper: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    setvbuf(log, NULL, _IOLBF, 0);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
        fprintf(stderr, "reaper: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
        return 2;
    }
    pid_t cmd = fork();
    if (cmd < 0) {
        fprintf(stderr, "reaper: fork: %s\n", strerror(errno));
        return 2;
    }
    if (cmd == 0) {
        fclose(log);
        execvp(argv[2], argv + 2);
        fprintf(stderr, "reaper: %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    for (;;) {
        int st;
        pid_t pid = wait(&st);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break; /* ECHILD: nothing left */
        }
        int code = WIFEXITED(st) ? WEXITSTATUS(st)
                 : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 255;
        fprintf(log, "%d %d\n", (int)pid, code);
    }
    fclose(log);
    return 0;
}
