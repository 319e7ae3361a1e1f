/* nbd.c — the real image server (include/chainfs/imgserve.h): one
 * `qemu-nbd --read-only` per frozen chain, read through libnbd over a
 * private, already unlinked unix socket. The only file that includes
 * <libnbd.h>. Design: docs/design/issue9.md §1.2–§1.4, §3.3.
 *
 * Processes. qemu-nbd is forked by one long-lived spawner thread (a
 * PR_SET_PDEATHSIG follows the thread that forked, and libfuse retires
 * its idle workers), socket-activated (LISTEN_FDS=1, the listening socket
 * on fd 3), with nothing else of ours open in it (close_range(4, ...):
 * the STATE_DIR/lock flock fd above all). Its stderr goes to a pipe we
 * read when something fails. No --fork, no --persistent: it ends when its
 * last client goes, and on our death by PDEATHSIG. Only the pid we forked
 * is ever signalled, and only while it is not reaped.
 *
 * Reading. K connections, each owned by one I/O thread taking chunk jobs
 * from the server's queue. A stream reads ahead up to WINDOW 1 MiB chunks
 * while reads are sequential; other reads are split into jobs that read
 * straight into the caller's buffer.
 *
 * Locks. QEMU unshares write on each qcow2 file of the chain by itself;
 * for raw files we hold an OFD read lock on byte 201 (QEMU's "write not
 * shared" byte) for the server's lifetime (§3.3). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libnbd.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chainfs/backend.h"
#include "chainfs/imgserve.h"
#include "chainfs/log.h"
#include "chainfs/util.h"

extern char **environ;

#ifndef NBD_CONNS
#define NBD_CONNS 4                    /* K: connections and I/O threads */
#endif
#ifndef CHUNK
#define CHUNK (1u << 20)               /* read-ahead chunk, aligned */
#endif
#ifndef WINDOW
#define WINDOW 8                       /* chunks ahead of a sequential reader */
#endif
#define WINDOW_SMALL 2                 /* ... once the memory cap is reached */
#define WINDOW_MEM_CAP (256u << 20)    /* read-ahead memory of all streams */
#define MAX_SERVERS 64
#define ERRBUF 2048                    /* qemu-nbd's stderr kept for messages */
#define BS_MAX_LEN ((uint64_t)UINT32_MAX - 511)

/* ---- types ----------------------------------------------------------------- */

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct job {
    struct job *next;        /* the server's queue */
    uint64_t off;
    size_t len;
    char *buf;
    bool own_buf;            /* a read-ahead chunk (freed with the job) */
    bool orphan;             /* dropped while running: the worker frees it */
    enum job_state state;
    int err;                 /* 0 or -errno, once DONE */
};

struct nbd_priv;

struct cfs_img {
    struct nbd_priv *p;
    struct cfs_img *next;    /* the imgserve's list of running servers */
    char *label;
    uint64_t size;
    pid_t pid;
    char *pid_path;
    int err_fd;              /* read end of qemu-nbd's stderr, O_NONBLOCK */
    int *lock_fds;           /* raw files' byte-201 locks */
    size_t n_lock_fds;

    struct nbd_handle *h[NBD_CONNS];
    int sock[NBD_CONNS];     /* h[i]'s socket (the handle owns it), or -1:
                                kept to shutdown(2) a read stuck on it */
    pthread_t io[NBD_CONNS];
    size_t n_io;

    pthread_mutex_t lock;    /* queue, jobs, dead, reaping, stderr text */
    pthread_cond_t work;     /* a job was queued / quit */
    pthread_cond_t done;     /* a job finished */
    struct job *head, *tail;
    bool quit;
    atomic_bool dead;
    bool reaped;
    int wstatus;
    char errtext[ERRBUF];
    size_t errlen;

    pthread_mutex_t ext_lock;
    bool ext_ready;
    struct cfs_extent *runs;
    size_t n_runs;
};

struct cfs_img_stream {
    struct cfs_img *img;
    uint64_t next_off;       /* end of the previous read */
    unsigned window;
    struct job *win[WINDOW + 64]; /* read-ahead chunks, sorted by offset */
    size_t n_win;
    char *spare[WINDOW + 2]; /* chunk buffers kept for reuse: a fresh one
                                costs a page fault per 4 KiB */
    size_t n_spare;
};

struct spawn_req {
    const char *exe;
    char *const *argv;
    char *const *envp;
    char *pid_digits;        /* inside envp's LISTEN_PID=, 24 bytes */
    int lsock, errw, devnull;
    int maxfd;
    pid_t ppid;
    pid_t pid;               /* result */
    int err;                 /* errno of fork */
    bool done;
};

struct nbd_priv {
    char *state_dir;
    char *nbd_dir;           /* STATE_DIR/nbd: pid records, sockets */
    char *sock_dir;          /* nbd_dir, or a mkdtemp under /run/chainfs */
    bool sock_dir_tmp;
    char *qemu_nbd;
    pthread_mutex_t lock;    /* servers, seq, sock_dir, spawner request */
    pthread_cond_t sp_cond;
    struct spawn_req *req;
    bool sp_quit;
    bool sp_up;
    pthread_t spawner;
    struct cfs_img *servers;
    unsigned n_servers;
    unsigned seq;
    atomic_uint seq_streams; /* open streams, for the read-ahead memory cap */
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* /proc/PID/stat field 22 (start time in clock ticks since boot); 0 if
 * the process does not exist. */
static unsigned long long proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    /* after ')' come fields 3, 4, ...: field 22 is the 20th of them */
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return 0;
    }
    return strtoull(p + 1, NULL, 10);
}

/* Make DIR a 0700 directory owned by us. 0 or -errno (message set). */
static int ensure_private_dir(const char *dir)
{
    struct stat st;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cfs_backend_set_errmsg("cannot create %s: %s", dir, strerror(e));
        return -e;
    }
    if (lstat(dir, &st) < 0) {
        int e = errno;
        cfs_backend_set_errmsg("cannot stat %s: %s", dir, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        cfs_backend_set_errmsg("%s is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        cfs_backend_set_errmsg("%s is owned by uid %u, not by us", dir, (unsigned)st.st_uid);
        return -EACCES;
    }
    if ((st.st_mode & 07777) != 0700 && chmod(dir, 0700) < 0) {
        int e = errno;
        cfs_backend_set_errmsg("cannot chmod 0700 %s: %s", dir, strerror(e));
        return -e;
    }
    return 0;
}

/* The path of qemu-nbd to execve (resolved before the fork: execvp is not
 * async-signal-safe). NULL if none is executable. Caller frees. */
static char *resolve_exe(const char *name)
{
    if (strchr(name, '/'))
        return access(name, X_OK) == 0 ? strdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    char *copy = strdup(path), *save = NULL, *out = NULL;
    if (!copy)
        return NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *cand;
        if (asprintf(&cand, "%s/%s", *d ? d : ".", name) < 0)
            break;
        struct stat st;
        if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
            out = cand;
            break;
        }
        free(cand);
    }
    free(copy);
    return out;
}

/* ---- the spawner thread ----------------------------------------------------- */

/* In the child: async-signal-safe calls only (the parent has threads). */
static void child_exec(const struct spawn_req *r)
{
    static const char execfail[] = "chainfs: cannot execute qemu-nbd\n";
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != r->ppid)
        _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL); /* SIGKILL, SIGSTOP, glibc's own: EINVAL */
    /* move the three fds out of the way first, so that none of them is
     * overwritten before it is copied, and so that fd 3 is a fresh dup
     * without FD_CLOEXEC (dup2(3, 3) would keep the flag) */
    int nl = fcntl(r->lsock, F_DUPFD, 10);
    int ne = fcntl(r->errw, F_DUPFD, 10);
    int nn = fcntl(r->devnull, F_DUPFD, 10);
    if (nl < 0 || ne < 0 || nn < 0)
        _exit(126);
    if (dup2(nn, 0) < 0 || dup2(nn, 1) < 0 || dup2(ne, 2) < 0 || dup2(nl, 3) < 0)
        _exit(126);
    if (syscall(SYS_close_range, 4u, ~0u, 0u) < 0) {
        for (int fd = 4; fd < r->maxfd; fd++)
            close(fd);
    }
    /* LISTEN_PID=<our pid>, written into the preallocated env string */
    char digits[24];
    int n = 0;
    for (unsigned long v = (unsigned long)getpid(); v; v /= 10)
        digits[n++] = (char)('0' + v % 10);
    for (int i = 0; i < n; i++)
        r->pid_digits[i] = digits[n - 1 - i];
    r->pid_digits[n] = '\0';
    execve(r->exe, r->argv, r->envp);
    if (write(2, execfail, sizeof(execfail) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(127);
}

static void *spawner_main(void *arg)
{
    struct nbd_priv *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->sp_quit) {
        struct spawn_req *r = p->req;
        if (!r || r->done) {
            pthread_cond_wait(&p->sp_cond, &p->lock);
            continue;
        }
        pthread_mutex_unlock(&p->lock);
        pid_t pid = fork();
        if (pid == 0)
            child_exec(r);
        int e = pid < 0 ? errno : 0;
        pthread_mutex_lock(&p->lock);
        r->pid = pid;
        r->err = e;
        r->done = true;
        pthread_cond_broadcast(&p->sp_cond);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static int spawner_start(struct nbd_priv *p)
{
    /* under p->lock */
    if (p->sp_up)
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->spawner, NULL, spawner_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -rc;
    p->sp_up = true;
    return 0;
}

/* Fork R on the spawner thread; R->pid / R->err set. */
static int spawn(struct nbd_priv *p, struct spawn_req *r)
{
    pthread_mutex_lock(&p->lock);
    int rc = spawner_start(p);
    if (rc < 0) {
        pthread_mutex_unlock(&p->lock);
        return rc;
    }
    while (p->req)
        pthread_cond_wait(&p->sp_cond, &p->lock);
    p->req = r;
    pthread_cond_broadcast(&p->sp_cond);
    while (!r->done)
        pthread_cond_wait(&p->sp_cond, &p->lock);
    p->req = NULL;
    pthread_cond_broadcast(&p->sp_cond);
    pthread_mutex_unlock(&p->lock);
    return r->pid < 0 ? -r->err : 0;
}

/* ---- the child: reaping, stderr --------------------------------------------- */

/* Reap IMG's child if it has ended. Under img->lock. */
static bool reap_locked(struct cfs_img *img)
{
    if (!img->reaped) {
        int st;
        pid_t r = waitpid(img->pid, &st, WNOHANG);
        if (r == img->pid) {
            img->reaped = true;
            img->wstatus = st;
        }
    }
    return img->reaped;
}

/* Append what qemu-nbd wrote to stderr so far, keeping the last ERRBUF
 * bytes (also called on every sequential read, so that a chatty qemu-nbd
 * never blocks on a full pipe). Under img->lock. */
static void drain_stderr_locked(struct cfs_img *img)
{
    if (img->err_fd < 0)
        return;
    for (;;) {
        char buf[512];
        ssize_t n = read(img->err_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t cap = sizeof(img->errtext) - 1;
        size_t take = (size_t)n;
        if (img->errlen + take > cap) {
            size_t drop = img->errlen + take - cap;
            memmove(img->errtext, img->errtext + drop, img->errlen - drop);
            img->errlen -= drop;
        }
        memcpy(img->errtext + img->errlen, buf, take);
        img->errlen += take;
        img->errtext[img->errlen] = '\0';
    }
}

/* qemu-nbd's stderr as one line ("; " for newlines) into OUT. */
static void stderr_line(struct cfs_img *img, char *out, size_t outsz)
{
    size_t o = 0;
    const char *s = img->errtext;
    while (*s && (*s == '\n' || *s == ' '))
        s++;
    for (; *s && o + 3 < outsz; s++) {
        if (*s == '\n') {
            if (s[1]) {
                out[o++] = ';';
                out[o++] = ' ';
            }
        } else if ((unsigned char)*s >= 0x20) {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
}

static int errno_of_qemu_text(const char *t)
{
    if (strstr(t, "Failed to get") && strstr(t, "lock"))
        return -EBUSY;
    if (strstr(t, "No such file"))
        return -ENOENT;
    /* an encrypted image asks for its secret: not served (design §1.2) */
    if (strstr(t, "encrypt.key-secret") || strstr(t, "is encrypted"))
        return -EOPNOTSUPP;
    return -EIO;
}

static void describe_status(const struct cfs_img *img, char *out, size_t outsz)
{
    if (!img->reaped)
        snprintf(out, outsz, "still running");
    else if (WIFEXITED(img->wstatus))
        snprintf(out, outsz, "exit status %d", WEXITSTATUS(img->wstatus));
    else if (WIFSIGNALED(img->wstatus))
        snprintf(out, outsz, "killed by signal %d", WTERMSIG(img->wstatus));
    else
        snprintf(out, outsz, "status 0x%x", (unsigned)img->wstatus);
}

/* The server's connection failed: mark it dead, log once with qemu-nbd's
 * own text. WHY: libnbd's message. */
static void mark_dead(struct cfs_img *img, const char *why)
{
    bool was = atomic_exchange(&img->dead, true);
    if (was)
        return;
    pthread_mutex_lock(&img->lock);
    /* give a dying qemu-nbd a moment to finish its message and exit */
    for (int i = 0; i < 20 && !reap_locked(img); i++) {
        pthread_mutex_unlock(&img->lock);
        sleep_ms(5);
        pthread_mutex_lock(&img->lock);
    }
    drain_stderr_locked(img);
    char text[ERRBUF], status[64];
    stderr_line(img, text, sizeof(text));
    describe_status(img, status, sizeof(status));
    bool stopping = img->quit; /* stop's own SIGKILL: logged there */
    pthread_mutex_unlock(&img->lock);
    if (!stopping)
        cfs_log(LOG_ERR, "disk.raw %s: qemu-nbd (pid %d) lost: %s; %s; qemu-nbd said: %s",
            img->label, (int)img->pid, why ? why : "connection failed", status,
            text[0] ? text : "nothing");
}

/* End IMG's child: wait up to 1 s for it to exit by itself, then SIGTERM,
 * then SIGKILL after 1 s more. Only this pid, only while not reaped. */
static void end_child(struct cfs_img *img)
{
    if (img->pid <= 0)
        return;
    pthread_mutex_lock(&img->lock);
    int sig = 0;
    uint64_t t0 = now_ms();
    while (!reap_locked(img)) {
        uint64_t el = now_ms() - t0;
        if (sig == 0 && el >= 1000) {
            sig = SIGTERM;
            kill(img->pid, SIGTERM);
            cfs_log(LOG_WARNING, "disk.raw %s: qemu-nbd (pid %d) still running 1 s after "
                    "its last connection closed: SIGTERM", img->label, (int)img->pid);
        } else if (sig == SIGTERM && el >= 2000) {
            sig = SIGKILL;
            kill(img->pid, SIGKILL);
            cfs_log(LOG_WARNING, "disk.raw %s: qemu-nbd (pid %d) ignored SIGTERM: SIGKILL",
                    img->label, (int)img->pid);
            int st = 0;
            pthread_mutex_unlock(&img->lock);
            while (waitpid(img->pid, &st, 0) < 0 && errno == EINTR)
                ;
            pthread_mutex_lock(&img->lock);
            img->reaped = true;
            img->wstatus = st;
            break;
        }
        pthread_mutex_unlock(&img->lock);
        sleep_ms(5);
        pthread_mutex_lock(&img->lock);
    }
    drain_stderr_locked(img);
    pthread_mutex_unlock(&img->lock);
}

/* ---- I/O threads ------------------------------------------------------------ */

struct io_arg {
    struct cfs_img *img;
    struct nbd_handle *h;
};

static bool conn_error(struct nbd_handle *h, int e)
{
    return nbd_aio_is_dead(h) > 0 || nbd_aio_is_closed(h) > 0 || e == ENOTCONN ||
           e == ECONNRESET || e == EPIPE || e == ESHUTDOWN;
}

static void *io_main(void *arg)
{
    struct io_arg a = *(struct io_arg *)arg;
    free(arg);
    struct cfs_img *img = a.img;
    pthread_mutex_lock(&img->lock);
    for (;;) {
        while (!img->quit && !img->head)
            pthread_cond_wait(&img->work, &img->lock);
        if (img->quit && !img->head)
            break;
        struct job *j = img->head;
        img->head = j->next;
        if (!img->head)
            img->tail = NULL;
        j->next = NULL;
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&img->lock);

        int rc = 0;
        if (atomic_load(&img->dead)) {
            rc = -EIO;
        } else if (nbd_pread(a.h, j->buf, j->len, j->off, 0) < 0) {
            int e = nbd_get_errno();
            const char *msg = nbd_get_error();
            if (conn_error(a.h, e)) {
                mark_dead(img, msg);
                rc = -EIO;
            } else {
                rc = -(e ? e : EIO);
                cfs_log(LOG_ERR, "disk.raw %s: read of %zu bytes at %" PRIu64 " failed: %s",
                        img->label, j->len, j->off, msg ? msg : strerror(-rc));
            }
        }

        pthread_mutex_lock(&img->lock);
        j->state = JOB_DONE;
        j->err = rc;
        if (j->orphan) {
            if (j->own_buf)
                free(j->buf);
            free(j);
        } else {
            pthread_cond_broadcast(&img->done);
        }
    }
    pthread_mutex_unlock(&img->lock);
    return NULL;
}

/* Queue J. Under img->lock. */
static void enqueue_locked(struct cfs_img *img, struct job *j)
{
    j->state = JOB_QUEUED;
    j->next = NULL;
    if (img->tail)
        img->tail->next = j;
    else
        img->head = j;
    img->tail = j;
    pthread_cond_signal(&img->work);
}

/* Forget J (a read-ahead chunk): unqueue and free (its buffer kept in
 * ST's spares if there is room), or leave it to its worker if running.
 * Under img->lock. */
static void drop_job_locked(struct cfs_img *img, struct job *j, struct cfs_img_stream *st)
{
    if (j->state == JOB_RUNNING) {
        j->orphan = true;
        return;
    }
    if (j->state == JOB_QUEUED) {
        struct job **pp = &img->head, *prev = NULL;
        while (*pp && *pp != j) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp) {
            *pp = j->next;
            if (img->tail == j)
                img->tail = prev;
        }
    }
    if (j->own_buf) {
        if (st && st->n_spare < sizeof(st->spare) / sizeof(st->spare[0]))
            st->spare[st->n_spare++] = j->buf;
        else
            free(j->buf);
    }
    free(j);
}

/* ---- start ------------------------------------------------------------------ */

static int choose_sock_dir_locked(struct nbd_priv *p)
{
    if (p->sock_dir)
        return 0;
    /* <pid>-<seq>.s: at most 10 + 1 + 10 + 2 characters */
    if (strlen(p->nbd_dir) + 1 + 23 + 1 <= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        p->sock_dir = strdup(p->nbd_dir);
        return p->sock_dir ? 0 : -ENOMEM;
    }
    int rc = ensure_private_dir("/run/chainfs");
    if (rc < 0)
        return rc;
    char tmpl[] = "/run/chainfs/nbd.XXXXXX";
    if (!mkdtemp(tmpl)) {
        int e = errno;
        cfs_backend_set_errmsg("cannot create a socket directory under /run/chainfs: %s",
                               strerror(e));
        return -e;
    }
    p->sock_dir = strdup(tmpl);
    p->sock_dir_tmp = true;
    cfs_log(LOG_INFO, "nbd sockets in %s (%s/nbd is too long for a socket path)",
            tmpl, p->state_dir);
    return p->sock_dir ? 0 : -ENOMEM;
}

/* Open every raw file of SPEC and lock its byte 201 (and refuse a raw
 * file someone holds open for writing): cfs_image_hold_writers. */
static int take_raw_locks(struct cfs_img *img, const struct cfs_img_spec *spec)
{
    img->lock_fds = calloc(spec->n_layers, sizeof(int));
    if (!img->lock_fds)
        return -ENOMEM;
    for (size_t i = 0; i < spec->n_layers; i++) {
        const struct cfs_img_layer *l = &spec->layers[i];
        if (l->is_block || strcmp(l->format, "raw") != 0)
            continue;
        int fd = -1;
        char *why = NULL;
        int r = cfs_image_hold_writers(l->path, &fd, &why);
        if (r < 0) {
            cfs_backend_set_errmsg("disk.raw %s: %s", spec->label, why ? why : strerror(-r));
            free(why);
            return r;
        }
        img->lock_fds[img->n_lock_fds++] = fd;
    }
    return 0;
}

static void drop_raw_locks(struct cfs_img *img)
{
    for (size_t i = 0; i < img->n_lock_fds; i++)
        close(img->lock_fds[i]);
    free(img->lock_fds);
    img->lock_fds = NULL;
    img->n_lock_fds = 0;
}

static int write_pid_record(const char *path, pid_t pid)
{
    unsigned long long st = proc_start_time(pid);
    char line[64];
    int n = snprintf(line, sizeof(line), "%d %llu\n", (int)pid, st);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = cfs_write_all(fd, line, (size_t)n) < 0 ? -EIO : 0;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* Close connection I (its I/O thread has ended): send NBD_CMD_DISC if the
 * connection is up and the socket takes it now, then close the socket;
 * qemu-nbd sees its client gone either way. Never nbd_shutdown: it polls
 * with no timeout until the server closes the connection, which a
 * stopped or hung qemu-nbd never does (stop then waited forever, and
 * end_child never got to SIGKILL it). nbd_aio_disconnect does not wait. */
static void close_conn(struct cfs_img *img, size_t i)
{
    if (!img->h[i])
        return;
    if (nbd_aio_is_ready(img->h[i]) > 0)
        nbd_aio_disconnect(img->h[i], 0);
    nbd_close(img->h[i]);
    img->h[i] = NULL;
    img->sock[i] = -1;
}

/* Free IMG's resources (no threads running, child ended or never). */
static void img_free(struct cfs_img *img)
{
    for (size_t i = 0; i < NBD_CONNS; i++)
        close_conn(img, i);
    drop_raw_locks(img);
    if (img->pid_path) {
        unlink(img->pid_path);
        free(img->pid_path);
    }
    if (img->err_fd >= 0)
        close(img->err_fd);
    while (img->head) {
        struct job *j = img->head;
        img->head = j->next;
        if (j->own_buf)
            free(j->buf);
        free(j);
    }
    free(img->runs);
    free(img->label);
    pthread_mutex_destroy(&img->lock);
    pthread_mutex_destroy(&img->ext_lock);
    pthread_cond_destroy(&img->work);
    pthread_cond_destroy(&img->done);
    free(img);
}

/* End the I/O threads. One stuck in a read (qemu-nbd hung: stopped, or on
 * a dead NFS server) is freed after 1 s: SIGKILL of this server's qemu-nbd,
 * and shutdown(2) of our end of every connection, so that the read fails
 * even while a qemu-nbd in uninterruptible sleep has not died yet. */
static void stop_io_threads(struct cfs_img *img)
{
    pthread_mutex_lock(&img->lock);
    img->quit = true;
    pthread_cond_broadcast(&img->work);
    pthread_mutex_unlock(&img->lock);
    /* one deadline for all of them, on the monotonic clock (a step of the
     * wall clock neither shortens nor stretches it) */
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += 1;
    bool killed = false;
    for (size_t i = 0; i < img->n_io; i++) {
        if (killed || pthread_clockjoin_np(img->io[i], NULL, CLOCK_MONOTONIC, &dl) == 0) {
            if (killed)
                pthread_join(img->io[i], NULL);
            continue;
        }
        killed = true;
        pthread_mutex_lock(&img->lock);
        if (img->pid > 0 && !reap_locked(img)) {
            cfs_log(LOG_WARNING, "disk.raw %s: qemu-nbd (pid %d) does not answer 1 s after "
                    "the last release: SIGKILL", img->label, (int)img->pid);
            kill(img->pid, SIGKILL);
        }
        pthread_mutex_unlock(&img->lock);
        /* the fds stay open (the handles own them): no reuse under a
         * thread still polling one */
        for (size_t c = 0; c < NBD_CONNS; c++)
            if (img->sock[c] >= 0)
                shutdown(img->sock[c], SHUT_RDWR);
        pthread_join(img->io[i], NULL);
    }
    img->n_io = 0;
}

/* qemu-nbd allocates a fresh buffer for every request (blk_try_blockalign
 * in nbd/server.c). With glibc's defaults a 1 MiB buffer is mmapped and
 * faulted in page by page at each request, then unmapped: measured here,
 * that is half the CPU of reading a cached image (1.5 s instead of 0.7 s
 * per GiB, 266k page faults instead of 10k). Keeping requests of up to
 * 64 MiB in its heap, and the heap untrimmed below 64 MiB, removes that;
 * qemu-nbd then holds what K requests need at once. A GLIBC_TUNABLES the
 * caller set is left as it is. */
#define QEMU_NBD_TUNABLES \
    "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=67108864"

/* The environment for qemu-nbd: ours without LISTEN_*, plus LISTEN_FDS=1,
 * LISTEN_PID= with room for the digits the child writes, and the malloc
 * tunables above. */
static char **build_env(char *listen_pid, char **digits)
{
    size_t n = 0;
    bool tunables = false;
    for (char **e = environ; e && *e; e++)
        n++;
    char **env = calloc(n + 4, sizeof(char *));
    if (!env)
        return NULL;
    size_t o = 0;
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "LISTEN_", 7) == 0)
            continue;
        if (strncmp(*e, "GLIBC_TUNABLES=", 15) == 0)
            tunables = true;
        env[o++] = *e;
    }
    if (!tunables)
        env[o++] = (char *)QEMU_NBD_TUNABLES;
    env[o++] = (char *)"LISTEN_FDS=1";
    strcpy(listen_pid, "LISTEN_PID=");
    *digits = listen_pid + strlen("LISTEN_PID=");
    (*digits)[0] = '\0';
    env[o++] = listen_pid;
    env[o] = NULL;
    return env;
}

static int nbd_start(struct cfs_imgserve *s, const struct cfs_img_spec *spec,
                     struct cfs_img **out)
{
    struct nbd_priv *p = s->priv;
    const char *label = spec && spec->label ? spec->label : "?";
    *out = NULL;
    cfs_backend_set_errmsg(NULL);

    const char *jerr = NULL;
    char *json = cfs_imgserve_chain_json(spec, &jerr);
    if (!json) {
        cfs_backend_set_errmsg("disk.raw %s: %s", label, jerr);
        return -EIO;
    }
    char *exe = resolve_exe(p->qemu_nbd ? p->qemu_nbd : "qemu-nbd");
    if (!exe) {
        cfs_backend_set_errmsg("disk.raw %s: qemu-nbd not found (%s; install qemu-utils)",
                               label, p->qemu_nbd ? p->qemu_nbd : "not in PATH");
        free(json);
        return -EIO;
    }

    struct cfs_img *img = calloc(1, sizeof(*img));
    int rc = -ENOMEM;
    int lsock = -1, errp[2] = {-1, -1}, devnull = -1;
    int cfd[NBD_CONNS];
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    bool sock_bound = false;
    char **env = NULL;
    for (size_t i = 0; i < NBD_CONNS; i++)
        cfd[i] = -1;
    if (!img)
        goto out_free;
    img->p = p;
    img->err_fd = -1;
    for (size_t i = 0; i < NBD_CONNS; i++)
        img->sock[i] = -1;
    img->size = spec->virtual_size;
    pthread_mutex_init(&img->lock, NULL);
    pthread_mutex_init(&img->ext_lock, NULL);
    pthread_cond_init(&img->work, NULL);
    pthread_cond_init(&img->done, NULL);
    img->label = strdup(label);
    if (!img->label)
        goto fail;

    pthread_mutex_lock(&p->lock);
    if (p->n_servers >= MAX_SERVERS) {
        pthread_mutex_unlock(&p->lock);
        cfs_backend_set_errmsg("disk.raw %s: %d image servers already running", label,
                               MAX_SERVERS);
        cfs_log(LOG_WARNING, "disk.raw %s: refused, %d image servers already running",
                label, MAX_SERVERS);
        rc = -EAGAIN;
        goto fail;
    }
    rc = ensure_private_dir(p->nbd_dir);
    if (rc == 0)
        rc = choose_sock_dir_locked(p);
    unsigned seq = ++p->seq;
    p->n_servers++; /* reserved; given back on failure */
    pthread_mutex_unlock(&p->lock);
    if (rc < 0) {
        pthread_mutex_lock(&p->lock);
        p->n_servers--;
        pthread_mutex_unlock(&p->lock);
        goto fail;
    }

    rc = take_raw_locks(img, spec);
    if (rc < 0)
        goto fail_reserved;

    if (asprintf(&img->pid_path, "%s/%d-%u.pid", p->nbd_dir, (int)getpid(), seq) < 0) {
        img->pid_path = NULL;
        rc = -ENOMEM;
        goto fail_reserved;
    }
    snprintf(sock_path, sizeof(sock_path), "%s/%d-%u.s", p->sock_dir, (int)getpid(), seq);

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lsock < 0) {
        rc = -errno;
        cfs_backend_set_errmsg("disk.raw %s: socket: %s", label, strerror(-rc));
        goto fail_reserved;
    }
    unlink(sock_path);
    if (bind(lsock, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lsock, 16) < 0) {
        rc = -errno;
        cfs_backend_set_errmsg("disk.raw %s: cannot listen on %s: %s", label, sock_path,
                               strerror(-rc));
        goto fail_reserved;
    }
    sock_bound = true;
    if (pipe2(errp, O_CLOEXEC) < 0 ||
        (devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0) {
        rc = -errno;
        cfs_backend_set_errmsg("disk.raw %s: pipe: %s", label, strerror(-rc));
        goto fail_reserved;
    }
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    img->err_fd = errp[0];
    errp[0] = -1;

    char listen_pid[48];
    char *digits = NULL;
    env = build_env(listen_pid, &digits);
    if (!env) {
        rc = -ENOMEM;
        goto fail_reserved;
    }
    char *argv[] = {exe, (char *)"--read-only", (char *)"--shared=0",
                    (char *)"--cache=writeback", (char *)"--aio=threads",
                    (char *)"--discard=ignore", json, NULL};
    struct rlimit rl;
    int maxfd = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < 1u << 20)
        maxfd = (int)rl.rlim_cur;
    struct spawn_req req = {.exe = exe, .argv = argv, .envp = env, .pid_digits = digits,
                            .lsock = lsock, .errw = errp[1], .devnull = devnull,
                            .maxfd = maxfd, .ppid = getpid(), .pid = -1};
    rc = spawn(p, &req);
    close(errp[1]);
    errp[1] = -1;
    close(devnull);
    devnull = -1;
    if (rc < 0) {
        cfs_backend_set_errmsg("disk.raw %s: fork: %s", label, strerror(-rc));
        goto fail_reserved;
    }
    img->pid = req.pid;
    if (write_pid_record(img->pid_path, img->pid) < 0)
        cfs_log(LOG_WARNING, "disk.raw %s: cannot write %s: %s", label, img->pid_path,
                strerror(errno));

    /* K connections into the backlog, then nobody else can connect */
    for (size_t i = 0; i < NBD_CONNS; i++) {
        cfd[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cfd[i] < 0 || connect(cfd[i], (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            rc = -errno;
            cfs_backend_set_errmsg("disk.raw %s: cannot connect to %s: %s", label, sock_path,
                                   strerror(-rc));
            goto fail_child;
        }
    }
    unlink(sock_path);
    sock_bound = false;
    close(lsock);
    lsock = -1;

    /* the handshakes, all of them before any use (design §6.1) */
    const char *nerr = NULL;
    int nerrno = 0;
    for (size_t i = 0; i < NBD_CONNS; i++) {
        struct nbd_handle *h = nbd_create();
        if (!h) {
            nerr = nbd_get_error();
            nerrno = nbd_get_errno();
            break;
        }
        img->h[i] = h;
        if (nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
            nbd_set_pread_initialize(h, false) < 0) {
            nerr = nbd_get_error();
            nerrno = nbd_get_errno();
            break;
        }
        int fd = cfd[i];
        cfd[i] = -1; /* the handle owns it from here */
        if (nbd_connect_socket(h, fd) < 0) {
            nerr = nbd_get_error();
            nerrno = nbd_get_errno();
            break;
        }
        img->sock[i] = fd;
    }
    if (nerr || nerrno) {
        char nmsg[512];
        snprintf(nmsg, sizeof(nmsg), "%s", nerr ? nerr : strerror(nerrno));
        /* qemu-nbd most probably exited: wait for it and take its text */
        pthread_mutex_lock(&img->lock);
        uint64_t t0 = now_ms();
        while (!reap_locked(img) && now_ms() - t0 < 2000) {
            pthread_mutex_unlock(&img->lock);
            sleep_ms(5);
            pthread_mutex_lock(&img->lock);
        }
        drain_stderr_locked(img);
        char text[ERRBUF];
        stderr_line(img, text, sizeof(text));
        pthread_mutex_unlock(&img->lock);
        rc = text[0] ? errno_of_qemu_text(text) : -EIO;
        cfs_backend_set_errmsg("disk.raw %s: %s", label, text[0] ? text : nmsg);
        goto fail_child;
    }

    /* the checks */
    for (size_t i = 0; i < NBD_CONNS; i++) {
        int64_t size = nbd_get_size(img->h[i]);
        if (size < 0 || (uint64_t)size != spec->virtual_size) {
            rc = -EIO;
            cfs_backend_set_errmsg("disk.raw %s: qemu-nbd serves %" PRId64 " bytes, "
                                   "expected %" PRIu64, label, size, spec->virtual_size);
            goto fail_child;
        }
        if (nbd_is_read_only(img->h[i]) != 1 ||
            nbd_can_meta_context(img->h[i], LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
            rc = -EIO;
            cfs_backend_set_errmsg("disk.raw %s: qemu-nbd's export is not read-only or "
                                   "has no base:allocation", label);
            goto fail_child;
        }
    }

    for (size_t i = 0; i < NBD_CONNS; i++) {
        struct io_arg *a = malloc(sizeof(*a));
        if (!a) {
            rc = -ENOMEM;
            goto fail_threads;
        }
        a->img = img;
        a->h = img->h[i];
        int e = pthread_create(&img->io[i], NULL, io_main, a);
        if (e != 0) {
            free(a);
            rc = -e;
            cfs_backend_set_errmsg("disk.raw %s: thread: %s", label, strerror(e));
            goto fail_threads;
        }
        img->n_io++;
    }

    pthread_mutex_lock(&p->lock);
    img->next = p->servers;
    p->servers = img;
    pthread_mutex_unlock(&p->lock);
    cfs_log(LOG_DEBUG, "disk.raw %s: qemu-nbd pid %d serving %" PRIu64 " bytes", label,
            (int)img->pid, img->size);
    free(env);
    free(json);
    free(exe);
    *out = img;
    return 0;

fail_threads:
    stop_io_threads(img);
fail_child:
    for (size_t i = 0; i < NBD_CONNS; i++) {
        if (cfd[i] >= 0)
            close(cfd[i]);
        if (img->h[i]) {
            nbd_close(img->h[i]);
            img->h[i] = NULL;
            img->sock[i] = -1;
        }
    }
    if (lsock >= 0) {
        close(lsock);
        lsock = -1;
    }
    end_child(img);
fail_reserved:
    pthread_mutex_lock(&p->lock);
    p->n_servers--;
    pthread_mutex_unlock(&p->lock);
fail:
    if (sock_bound)
        unlink(sock_path);
    if (lsock >= 0)
        close(lsock);
    if (errp[0] >= 0)
        close(errp[0]);
    if (errp[1] >= 0)
        close(errp[1]);
    if (devnull >= 0)
        close(devnull);
    img_free(img);
out_free:
    free(env);
    free(json);
    free(exe);
    if (rc == -ENOMEM && !cfs_backend_errmsg()[0])
        cfs_backend_set_errmsg("disk.raw %s: out of memory", label);
    return rc;
}

/* ---- stop ------------------------------------------------------------------- */

static void nbd_stop(struct cfs_img *img)
{
    if (!img)
        return;
    struct nbd_priv *p = img->p;
    pthread_mutex_lock(&p->lock);
    for (struct cfs_img **pp = &p->servers; *pp; pp = &(*pp)->next) {
        if (*pp == img) {
            *pp = img->next;
            p->n_servers--;
            break;
        }
    }
    pthread_mutex_unlock(&p->lock);
    stop_io_threads(img);
    for (size_t i = 0; i < NBD_CONNS; i++)
        close_conn(img, i);
    end_child(img);
    cfs_log(LOG_DEBUG, "disk.raw %s: qemu-nbd pid %d stopped", img->label, (int)img->pid);
    img_free(img);
}

/* ---- streams ---------------------------------------------------------------- */

static int nbd_stream_open(struct cfs_img *img, struct cfs_img_stream **out)
{
    struct cfs_img_stream *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->img = img;
    unsigned n = atomic_fetch_add(&img->p->seq_streams, 1) + 1;
    st->window = (uint64_t)n * WINDOW * CHUNK <= WINDOW_MEM_CAP ? WINDOW : WINDOW_SMALL;
    *out = st;
    return 0;
}

static void nbd_stream_close(struct cfs_img_stream *st)
{
    if (!st)
        return;
    struct cfs_img *img = st->img;
    pthread_mutex_lock(&img->lock);
    for (size_t i = 0; i < st->n_win; i++)
        drop_job_locked(img, st->win[i], NULL);
    st->n_win = 0;
    pthread_mutex_unlock(&img->lock);
    for (size_t i = 0; i < st->n_spare; i++)
        free(st->spare[i]);
    atomic_fetch_sub(&img->p->seq_streams, 1);
    free(st);
}

/* Wait until every job in JOBS is done; the first error. Under img->lock. */
static int wait_jobs_locked(struct cfs_img *img, struct job **jobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        while (jobs[i]->state != JOB_DONE)
            pthread_cond_wait(&img->done, &img->lock);
    for (size_t i = 0; i < n; i++)
        if (jobs[i]->err)
            return jobs[i]->err;
    return 0;
}

/* A read that is not sequential: jobs straight into BUF. */
static ssize_t read_direct(struct cfs_img_stream *st, char *buf, size_t len, uint64_t off)
{
    struct cfs_img *img = st->img;
    size_t n = (len + CHUNK - 1) / CHUNK;
    struct job *jobs_small[8];
    struct job **jobs = n <= 8 ? jobs_small : calloc(n, sizeof(*jobs));
    struct job *mem = calloc(n, sizeof(struct job));
    if (!jobs || !mem) {
        if (jobs != jobs_small)
            free(jobs);
        free(mem);
        return -ENOMEM;
    }
    pthread_mutex_lock(&img->lock);
    for (size_t i = 0; i < n; i++) {
        struct job *j = &mem[i];
        j->off = off + (uint64_t)i * CHUNK;
        j->len = i + 1 < n ? CHUNK : len - i * (size_t)CHUNK;
        j->buf = buf + i * (size_t)CHUNK;
        jobs[i] = j;
        enqueue_locked(img, j);
    }
    int rc = wait_jobs_locked(img, jobs, n);
    pthread_mutex_unlock(&img->lock);
    if (jobs != jobs_small)
        free(jobs);
    free(mem);
    return rc < 0 ? rc : (ssize_t)len;
}

/* A sequential read: keep the window [align(off), off + window) queued,
 * wait for the chunks covering the request, copy out. */
static ssize_t read_ahead(struct cfs_img_stream *st, char *buf, size_t len, uint64_t off)
{
    struct cfs_img *img = st->img;
    uint64_t start = off & ~(uint64_t)(CHUNK - 1);
    uint64_t end = off + (uint64_t)st->window * CHUNK;
    if (end < off + len)
        end = off + len;
    end = (end + CHUNK - 1) & ~(uint64_t)(CHUNK - 1);
    if (end > img->size)
        end = img->size;
    size_t need = (size_t)((end - start + CHUNK - 1) / CHUNK);
    if (need > sizeof(st->win) / sizeof(st->win[0]))
        return read_direct(st, buf, len, off); /* a huge read: no window */

    pthread_mutex_lock(&img->lock);
    drain_stderr_locked(img);
    /* keep the chunks inside [start, end), in order */
    struct job *keep[sizeof(st->win) / sizeof(st->win[0])];
    size_t nk = 0;
    for (size_t i = 0; i < st->n_win; i++) {
        struct job *j = st->win[i];
        if (j->off >= start && j->off < end && !(j->state == JOB_DONE && j->err))
            keep[nk++] = j;
        else
            drop_job_locked(img, j, st);
    }
    size_t nw = 0, k = 0;
    for (uint64_t c = start; c < end; c += CHUNK) {
        if (k < nk && keep[k]->off == c) {
            st->win[nw++] = keep[k++];
            continue;
        }
        struct job *j = calloc(1, sizeof(*j));
        char *b = !j ? NULL : st->n_spare ? st->spare[--st->n_spare] : malloc(CHUNK);
        if (!b) {
            free(j);
            break; /* fewer chunks ahead; the covering ones are checked below */
        }
        j->off = c;
        j->len = (size_t)(end - c < CHUNK ? end - c : CHUNK);
        j->buf = b;
        j->own_buf = true;
        st->win[nw++] = j;
        enqueue_locked(img, j);
    }
    for (; k < nk; k++)
        drop_job_locked(img, keep[k], st);
    st->n_win = nw;

    /* the chunks covering [off, off + len) */
    size_t first = 0;
    while (first < nw && st->win[first]->off + st->win[first]->len <= off)
        first++;
    size_t last = first;
    while (last < nw && st->win[last]->off < off + len)
        last++;
    if (last == first || st->win[first]->off > off ||
        st->win[last - 1]->off + st->win[last - 1]->len < off + len) {
        pthread_mutex_unlock(&img->lock);
        return -ENOMEM; /* could not allocate the chunks this read needs */
    }
    int rc = wait_jobs_locked(img, st->win + first, last - first);
    if (rc == 0) {
        for (size_t i = first; i < last; i++) {
            struct job *j = st->win[i];
            uint64_t a = j->off > off ? j->off : off;
            uint64_t b = j->off + j->len < off + len ? j->off + j->len : off + len;
            memcpy(buf + (a - off), j->buf + (a - j->off), (size_t)(b - a));
        }
    }
    pthread_mutex_unlock(&img->lock);
    return rc < 0 ? rc : (ssize_t)len;
}

static ssize_t nbd_stream_read(struct cfs_img_stream *st, void *buf, size_t len,
                               uint64_t off)
{
    struct cfs_img *img = st->img;
    if (off >= img->size || len == 0)
        return 0;
    if (len > img->size - off)
        len = (size_t)(img->size - off);
    if (atomic_load(&img->dead)) {
        cfs_backend_set_errmsg("disk.raw %s: qemu-nbd is gone", img->label);
        return -EIO;
    }
    ssize_t r;
    if (off == st->next_off)
        r = read_ahead(st, buf, len, off);
    else {
        /* not sequential: empty the window, read only what is asked */
        pthread_mutex_lock(&img->lock);
        for (size_t i = 0; i < st->n_win; i++)
            drop_job_locked(img, st->win[i], st);
        st->n_win = 0;
        pthread_mutex_unlock(&img->lock);
        r = read_direct(st, buf, len, off);
    }
    if (r >= 0)
        st->next_off = off + (uint64_t)r;
    else
        cfs_backend_set_errmsg("disk.raw %s: read of %zu bytes at %" PRIu64 ": %s",
                               img->label, len, off, strerror((int)-r));
    return r;
}

/* ---- extents ---------------------------------------------------------------- */

struct bs_ctx {
    struct cfs_img *img;
    uint64_t end;            /* end of the last extent seen */
    struct cfs_extent *runs;
    size_t n, cap;
    bool oom;
};

static int bs_cb(void *user, const char *context, uint64_t offset, uint32_t *entries,
                 size_t nr, int *error)
{
    (void)error;
    struct bs_ctx *c = user;
    if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    uint64_t cur = offset;
    for (size_t i = 0; i + 1 < nr; i += 2) {
        uint64_t len = entries[i];
        uint32_t flags = entries[i + 1];
        if (cur >= c->img->size)
            break;
        if (len > c->img->size - cur)
            len = c->img->size - cur;
        if (!(flags & (LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO)) && len) {
            if (c->n && c->runs[c->n - 1].off + c->runs[c->n - 1].len == cur) {
                c->runs[c->n - 1].len += len;
            } else {
                if (c->n == c->cap) {
                    size_t nc = c->cap ? c->cap * 2 : 64;
                    struct cfs_extent *r = realloc(c->runs, nc * sizeof(*r));
                    if (!r) {
                        c->oom = true;
                        return -1;
                    }
                    c->runs = r;
                    c->cap = nc;
                }
                c->runs[c->n].off = cur;
                c->runs[c->n].len = len;
                c->n++;
            }
        }
        cur += len;
    }
    if (cur > c->end)
        c->end = cur;
    return 0;
}

static int nbd_extents(struct cfs_img *img, const struct cfs_extent **runs, size_t *n)
{
    pthread_mutex_lock(&img->ext_lock);
    if (img->ext_ready) {
        *runs = img->runs;
        *n = img->n_runs;
        pthread_mutex_unlock(&img->ext_lock);
        return 0;
    }
    int rc = 0;
    if (atomic_load(&img->dead)) {
        cfs_backend_set_errmsg("disk.raw %s: qemu-nbd is gone", img->label);
        rc = -EIO;
        goto out;
    }
    struct bs_ctx c = {.img = img};
    struct nbd_handle *h = img->h[0];
    uint64_t pos = 0;
    while (pos < img->size) {
        uint64_t len = img->size - pos;
        if (len > BS_MAX_LEN)
            len = BS_MAX_LEN;
        c.end = pos;
        nbd_extent_callback cb = {.callback = bs_cb, .user_data = &c};
        if (nbd_block_status(h, len, pos, cb, 0) < 0) {
            int e = c.oom ? ENOMEM : nbd_get_errno();
            const char *msg = nbd_get_error();
            if (conn_error(h, e)) {
                mark_dead(img, msg);
                e = EIO;
            }
            cfs_backend_set_errmsg("disk.raw %s: block status at %" PRIu64 ": %s",
                                   img->label, pos, msg ? msg : strerror(e ? e : EIO));
            rc = -(e ? e : EIO);
            free(c.runs);
            goto out;
        }
        if (c.end <= pos) {
            cfs_backend_set_errmsg("disk.raw %s: block status at %" PRIu64
                                   " made no progress", img->label, pos);
            free(c.runs);
            rc = -EIO;
            goto out;
        }
        pos = c.end;
    }
    img->runs = c.runs;
    img->n_runs = c.n;
    img->ext_ready = true;
    *runs = img->runs;
    *n = img->n_runs;
out:
    pthread_mutex_unlock(&img->ext_lock);
    return rc;
}

/* ---- sweep ------------------------------------------------------------------ */

static bool is_qemu_nbd(pid_t pid)
{
    char path[64], exe[PATH_MAX];
    snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
    ssize_t n = readlink(path, exe, sizeof(exe) - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    char *del = strstr(exe, " (deleted)");
    if (del && del[10] == '\0')
        *del = '\0';
    const char *base = strrchr(exe, '/');
    base = base ? base + 1 : exe;
    return strcmp(base, "qemu-nbd") == 0;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a > b && strcmp(s + a - b, suf) == 0;
}

/* A pid record: stop the qemu-nbd it names if it is still the same
 * process (same start time) and still qemu-nbd. */
static bool ours_running(struct nbd_priv *p, pid_t pid)
{
    bool found = false;
    pthread_mutex_lock(&p->lock);
    for (struct cfs_img *i = p->servers; i && !found; i = i->next)
        found = i->pid == pid;
    pthread_mutex_unlock(&p->lock);
    return found;
}

static void sweep_record(struct nbd_priv *p, int dfd, const char *dir, const char *name)
{
    char line[96] = "";
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        ssize_t n = read(fd, line, sizeof(line) - 1);
        line[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    int pid = 0;
    unsigned long long start = 0;
    if (sscanf(line, "%d %llu", &pid, &start) == 2 && pid > 1 && ours_running(p, pid))
        return; /* a server of this daemon: not stale */
    if (sscanf(line, "%d %llu", &pid, &start) == 2 && pid > 1 && start != 0 &&
        proc_start_time(pid) == start && is_qemu_nbd(pid)) {
        cfs_log(LOG_INFO, "nbd sweep: stopping qemu-nbd pid %d left by a previous daemon "
                "(%s/%s)", pid, dir, name);
        kill(pid, SIGTERM);
        uint64_t t0 = now_ms();
        while (proc_start_time(pid) == start && now_ms() - t0 < 1000)
            sleep_ms(10);
        if (proc_start_time(pid) == start && is_qemu_nbd(pid)) {
            /* a zombie has no exe link any more; only a live one is killed */
            cfs_log(LOG_WARNING, "nbd sweep: qemu-nbd pid %d ignored SIGTERM: SIGKILL", pid);
            kill(pid, SIGKILL);
        }
    }
    if (unlinkat(dfd, name, 0) == 0)
        cfs_log(LOG_INFO, "nbd sweep: removed %s/%s", dir, name);
}

static int nbd_sweep(struct cfs_imgserve *s)
{
    struct nbd_priv *p = s->priv;
    cfs_backend_set_errmsg(NULL);
    int rc = ensure_private_dir(p->nbd_dir);
    if (rc < 0)
        return rc;
    DIR *d = opendir(p->nbd_dir);
    if (!d) {
        rc = -errno;
        cfs_backend_set_errmsg("cannot open %s: %s", p->nbd_dir, strerror(-rc));
        return rc;
    }
    int dfd = dirfd(d);
    /* pid records first (their processes still hold the sockets' names
     * only until the unlink below, which needs nothing of them) */
    struct dirent *e;
    while ((e = readdir(d)))
        if (has_suffix(e->d_name, ".pid"))
            sweep_record(p, dfd, p->nbd_dir, e->d_name);
    rewinddir(d);
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".s"))
            continue;
        if (unlinkat(dfd, e->d_name, 0) == 0)
            cfs_log(LOG_INFO, "nbd sweep: removed %s/%s", p->nbd_dir, e->d_name);
    }
    closedir(d);
    return 0;
}

/* ---- the imgserve ----------------------------------------------------------- */

static void nbd_destroy(struct cfs_imgserve *s)
{
    if (!s)
        return;
    struct nbd_priv *p = s->priv;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        struct cfs_img *img = p->servers;
        pthread_mutex_unlock(&p->lock);
        if (!img)
            break;
        nbd_stop(img);
    }
    pthread_mutex_lock(&p->lock);
    p->sp_quit = true;
    pthread_cond_broadcast(&p->sp_cond);
    bool up = p->sp_up;
    pthread_mutex_unlock(&p->lock);
    if (up)
        pthread_join(p->spawner, NULL);
    if (p->sock_dir_tmp)
        rmdir(p->sock_dir);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->sp_cond);
    free(p->sock_dir);
    free(p->nbd_dir);
    free(p->state_dir);
    free(p->qemu_nbd);
    free(p);
    free(s);
}

static const struct cfs_imgserve_ops nbd_ops = {
    .name = "qemu-nbd",
    .sweep = nbd_sweep,
    .start = nbd_start,
    .stream_open = nbd_stream_open,
    .stream_read = nbd_stream_read,
    .stream_close = nbd_stream_close,
    .extents = nbd_extents,
    .stop = nbd_stop,
    .destroy = nbd_destroy,
};

struct cfs_imgserve *cfs_nbd_imgserve_new(const char *state_dir, const char *qemu_nbd)
{
    struct cfs_imgserve *s = calloc(1, sizeof(*s));
    struct nbd_priv *p = calloc(1, sizeof(*p));
    if (!s || !p)
        goto fail;
    p->state_dir = strdup(state_dir);
    p->qemu_nbd = qemu_nbd ? strdup(qemu_nbd) : NULL;
    if (!p->state_dir || (qemu_nbd && !p->qemu_nbd) ||
        asprintf(&p->nbd_dir, "%s/nbd", state_dir) < 0) {
        p->nbd_dir = NULL;
        goto fail;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->sp_cond, NULL);
    atomic_init(&p->seq_streams, 0);
    s->ops = &nbd_ops;
    s->priv = p;
    return s;
fail:
    if (p) {
        free(p->state_dir);
        free(p->qemu_nbd);
        free(p->nbd_dir);
    }
    free(p);
    free(s);
    return NULL;
}
