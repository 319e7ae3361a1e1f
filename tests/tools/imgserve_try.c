/* imgserve_try — test tool: the real image server (backend/nbd.c) from
 * the command line, so tests/integration/nbd_serve.sh checks it against
 * real qemu-nbd, qemu-img and qemu-io without a mount or a libvirtd.
 *
 *   imgserve_try [MODE] STATE_DIR SIZE FORMAT:PATH [FORMAT:PATH...]
 *   imgserve_try -S STATE_DIR                      (the stale sweep only)
 *
 * The server is started from a thread that has ended before any read (as
 * from a FUSE worker libfuse retires): it must outlive that thread.
 * The chain is given top first, like cfs_img_spec; SIZE is the expected
 * virtual size in bytes. A PATH that is a block device is served as
 * host_device. MODE:
 *   (none), -r  read the whole image to stdout through one stream in
 *               4 MiB reads (sequential: read-ahead is used); -b BYTES
 *               sets the read size (1048576: what FUSE asks)
 *   -R          read it in 192 KiB pieces from the end to the start (no
 *               read-ahead), write it out in order
 *   -m          print the data runs, "OFF LEN" a line
 *   -K          stop with read-ahead in flight and qemu-nbd hung: read
 *               1 MiB at 0 (chunks up to 8 MiB queued), SIGSTOP qemu-nbd,
 *               close the stream, stop; prints "stopped in N ms"
 *   -k          stop with nothing in flight and qemu-nbd hung: read the
 *               whole image through one stream first (the last read waits
 *               for every chunk still queued), then as -K: SIGSTOP, close,
 *               stop; prints "stopped in N ms"
 *   -w MS       with -K or -k: wait MS ms between the last read and the
 *               SIGSTOP (as a reader preempted there under load: the
 *               read-ahead of -K may finish meanwhile)
 *   -P N -C REF N threads, each with its own stream, read the image at
 *               once: a sequential pass in 1 MiB reads with random reads
 *               of random sizes mixed in (every 5th read), every read
 *               compared with the same bytes of the raw file REF; prints
 *               "ok" and exits 0 if all were equal
 *   -H          hold the server open: print "ready" and wait for SIGTERM
 *               or SIGINT, then stop it (exit 0); on SIGUSR1 instead,
 *               read the whole image (discarding it), then stop: the exit
 *               status tells whether the reads worked
 * On a failure: "imgserve_try: WHAT: rc=N (strerror): MESSAGE" on stderr,
 * exit 1; bad usage: exit 2. IMGSERVE_DEBUG=1 shows debug log lines. */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <dirent.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chainfs/backend.h"
#include "chainfs/imgserve.h"
#include "chainfs/log.h"
#include "chainfs/util.h"

static size_t read_size = 4u << 20; /* -b */
static unsigned pause_ms;           /* -w */
#define BACK_PIECE (192u << 10)

static int usage(void)
{
    fprintf(stderr, "usage: imgserve_try [-r|-R|-m|-H|-K|-k|-P N -C REF] [-b BYTES] [-w MS] STATE_DIR SIZE FORMAT:PATH...\n"
                    "       imgserve_try -S STATE_DIR\n");
    return 2;
}

static int fail(const char *what, long rc)
{
    fprintf(stderr, "imgserve_try: %s: rc=%ld (%s): %s\n", what, rc, strerror((int)-rc),
            cfs_backend_errmsg());
    return 1;
}

static int read_forward(struct cfs_imgserve *s, struct cfs_img *img, uint64_t size,
                        bool discard)
{
    struct cfs_img_stream *st;
    int rc = s->ops->stream_open(img, &st);
    if (rc < 0)
        return fail("stream_open", rc);
    char *buf = malloc(read_size);
    if (!buf)
        return fail("malloc", -ENOMEM);
    int ret = 0;
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < read_size ? (size_t)(size - off) : read_size;
        ssize_t r = s->ops->stream_read(st, buf, n, off);
        if (r < 0) {
            ret = fail("stream_read", r);
            break;
        }
        if ((size_t)r != n) {
            fprintf(stderr, "imgserve_try: short read %zd of %zu at %" PRIu64 "\n", r, n, off);
            ret = 1;
            break;
        }
        if (!discard && cfs_write_all(1, buf, n) < 0) {
            perror("imgserve_try: write");
            ret = 1;
            break;
        }
        off += n;
    }
    free(buf);
    s->ops->stream_close(st);
    return ret;
}

static int read_backward(struct cfs_imgserve *s, struct cfs_img *img, uint64_t size)
{
    struct cfs_img_stream *st;
    int rc = s->ops->stream_open(img, &st);
    if (rc < 0)
        return fail("stream_open", rc);
    char *all = malloc(size ? (size_t)size : 1);
    if (!all)
        return fail("malloc", -ENOMEM);
    int ret = 0;
    uint64_t end = size;
    while (end > 0) {
        uint64_t off = end > BACK_PIECE ? end - BACK_PIECE : 0;
        ssize_t r = s->ops->stream_read(st, all + off, (size_t)(end - off), off);
        if (r < 0) {
            ret = fail("stream_read", r);
            break;
        }
        end = off;
    }
    if (ret == 0 && cfs_write_all(1, all, (size_t)size) < 0) {
        perror("imgserve_try: write");
        ret = 1;
    }
    free(all);
    s->ops->stream_close(st);
    return ret;
}

struct par {
    struct cfs_imgserve *s;
    struct cfs_img *img;
    uint64_t size;
    int ref;
    unsigned seed;
    int ret;
};

static int check_read(struct par *a, struct cfs_img_stream *st, char *buf, char *want,
                      size_t n, uint64_t off)
{
    ssize_t r = a->s->ops->stream_read(st, buf, n, off);
    if (r < 0)
        return fail("stream_read", r);
    if ((size_t)r != n || pread(a->ref, want, n, (off_t)off) != (ssize_t)n ||
        memcmp(buf, want, n) != 0) {
        fprintf(stderr, "imgserve_try: %zu bytes at %" PRIu64 " differ from the reference\n",
                n, off);
        return 1;
    }
    return 0;
}

static void *par_main(void *arg)
{
    struct par *a = arg;
    struct cfs_img_stream *st;
    int rc = a->s->ops->stream_open(a->img, &st);
    if (rc < 0) {
        a->ret = fail("stream_open", rc);
        return NULL;
    }
    size_t bs = 1u << 20;
    char *buf = malloc(4u << 20), *want = malloc(4u << 20);
    if (!buf || !want) {
        a->ret = 1;
        goto out;
    }
    unsigned k = 0;
    for (uint64_t off = 0; off < a->size && !a->ret; k++) {
        if (k % 5 == 4) {
            uint64_t roff = (uint64_t)rand_r(&a->seed) * 4099 % a->size;
            size_t n = 1 + (size_t)rand_r(&a->seed) % (4u << 20);
            if (n > a->size - roff)
                n = (size_t)(a->size - roff);
            a->ret = check_read(a, st, buf, want, n, roff);
            continue;
        }
        size_t n = a->size - off < bs ? (size_t)(a->size - off) : bs;
        a->ret = check_read(a, st, buf, want, n, off);
        off += n;
    }
out:
    free(buf);
    free(want);
    a->s->ops->stream_close(st);
    return NULL;
}

static int read_parallel(struct cfs_imgserve *s, struct cfs_img *img, uint64_t size,
                         unsigned n, const char *ref_path)
{
    int ref = open(ref_path, O_RDONLY | O_CLOEXEC);
    if (ref < 0) {
        perror(ref_path);
        return 1;
    }
    struct par *a = calloc(n, sizeof(*a));
    pthread_t *t = calloc(n, sizeof(*t));
    int ret = 0;
    if (!a || !t)
        return fail("malloc", -ENOMEM);
    for (unsigned i = 0; i < n; i++) {
        a[i] = (struct par){.s = s, .img = img, .size = size, .ref = ref, .seed = i + 1};
        if (pthread_create(&t[i], NULL, par_main, &a[i]) != 0) {
            n = i;
            ret = 1;
            break;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        ret |= a[i].ret;
    }
    close(ref);
    free(a);
    free(t);
    if (ret == 0)
        printf("ok\n");
    return ret;
}

/* The pid of our one child (qemu-nbd, forked by the spawner thread). */
static pid_t our_child(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    pid_t found = 0;
    while (d && !found && (e = readdir(d))) {
        char path[300];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "re");
        if (f) {
            int pid;
            if (fscanf(f, "%d", &pid) == 1)
                found = pid;
            fclose(f);
        }
    }
    if (d)
        closedir(d);
    return found;
}

/* -K (IDLE false): one 1 MiB read at 0, read-ahead left in flight;
 * -k (IDLE true): the whole image read in 4 MiB reads, so that no read is
 * queued or running when qemu-nbd is stopped. */
static int stop_hung(struct cfs_imgserve *s, struct cfs_img *img, uint64_t size, bool idle)
{
    struct cfs_img_stream *st;
    int rc = s->ops->stream_open(img, &st);
    if (rc < 0)
        return fail("stream_open", rc);
    size_t bs = idle ? 4u << 20 : 1u << 20;
    char *buf = malloc(bs);
    if (!buf)
        return fail("malloc", -ENOMEM);
    uint64_t end = idle ? size : bs;
    for (uint64_t off = 0; off < end;) {
        size_t n = end - off < bs ? (size_t)(end - off) : bs;
        ssize_t r = s->ops->stream_read(st, buf, n, off);
        if (r < 0) {
            free(buf);
            return fail("stream_read", r);
        }
        off += n;
    }
    free(buf);
    if (pause_ms) {
        struct timespec ts = {.tv_sec = pause_ms / 1000,
                              .tv_nsec = (long)(pause_ms % 1000) * 1000000};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    pid_t q = our_child();
    if (q <= 0) {
        fprintf(stderr, "imgserve_try: no qemu-nbd child found\n");
        return 1;
    }
    kill(q, SIGSTOP);
    struct timespec a, z;
    clock_gettime(CLOCK_MONOTONIC, &a);
    s->ops->stream_close(st);
    s->ops->stop(img);
    clock_gettime(CLOCK_MONOTONIC, &z);
    printf("stopped in %ld ms\n",
           (long)((z.tv_sec - a.tv_sec) * 1000 + (z.tv_nsec - a.tv_nsec) / 1000000));
    return 0;
}

struct starter {
    struct cfs_imgserve *s;
    const struct cfs_img_spec *spec;
    struct cfs_img *img;
    int rc;
    char msg[1024];
};

static void *starter_main(void *arg)
{
    struct starter *st = arg;
    st->rc = st->s->ops->start(st->s, st->spec, &st->img);
    /* the message slot is thread-local: carry it over */
    snprintf(st->msg, sizeof(st->msg), "%s", cfs_backend_errmsg());
    return NULL;
}

static void errno_msg_restore(const struct starter *st)
{
    cfs_backend_set_errmsg("%s", st->msg);
}

int main(int argc, char **argv)
{
    unsigned par_n = 0;
    const char *ref_path = NULL;
    char mode = 'r';
    int opt;
    while ((opt = getopt(argc, argv, "rRmHKkSb:P:C:w:")) != -1) {
        if (opt == '?')
            return usage();
        if (opt == 'C') {
            ref_path = optarg;
            continue;
        }
        if (opt == 'P') {
            par_n = (unsigned)strtoul(optarg, NULL, 10);
            if (par_n == 0 || par_n > 64)
                return usage();
        }
        if (opt == 'w') {
            pause_ms = (unsigned)strtoul(optarg, NULL, 10);
            if (pause_ms > 60000)
                return usage();
            continue;
        }
        if (opt == 'b') {
            read_size = strtoul(optarg, NULL, 10);
            if (read_size == 0 || read_size > (256u << 20))
                return usage();
            continue;
        }
        mode = (char)opt;
    }
    cfs_log_init(false, getenv("IMGSERVE_DEBUG") != NULL);
    if (mode == 'S') {
        if (argc - optind != 1)
            return usage();
        struct cfs_imgserve *s = cfs_nbd_imgserve_new(argv[optind], NULL);
        if (!s)
            return fail("new", -ENOMEM);
        int rc = s->ops->sweep(s);
        s->ops->destroy(s);
        return rc < 0 ? fail("sweep", rc) : 0;
    }
    if (argc - optind < 3)
        return usage();
    const char *state_dir = argv[optind];
    char *endp;
    errno = 0;
    unsigned long long size = strtoull(argv[optind + 1], &endp, 10);
    if (errno || *endp || endp == argv[optind + 1])
        return usage();
    size_t n = (size_t)(argc - optind - 2);
    struct cfs_img_layer *layers = calloc(n, sizeof(*layers));
    char **paths = calloc(n, sizeof(char *));
    if (!layers || !paths)
        return fail("malloc", -ENOMEM);
    for (size_t i = 0; i < n; i++) {
        char *arg = argv[optind + 2 + (int)i];
        char *colon = strchr(arg, ':');
        if (!colon)
            return usage();
        *colon = '\0';
        /* a missing file stays as given (absolute), for the ENOENT check */
        paths[i] = realpath(colon + 1, NULL);
        if (!paths[i]) {
            char cwd[PATH_MAX];
            if (colon[1] == '/' || !getcwd(cwd, sizeof(cwd)))
                paths[i] = strdup(colon + 1);
            else if (asprintf(&paths[i], "%s/%s", cwd, colon + 1) < 0)
                paths[i] = NULL;
            if (!paths[i])
                return fail("malloc", -ENOMEM);
        }
        struct stat sb;
        layers[i].path = paths[i];
        layers[i].format = arg;
        layers[i].is_block = stat(paths[i], &sb) == 0 && S_ISBLK(sb.st_mode);
    }
    struct cfs_img_spec spec = {.layers = layers, .n_layers = n, .virtual_size = size,
                                .label = "imgserve_try"};

    /* SIGTERM/SIGINT for -H: taken by sigwait, blocked before any thread */
    sigset_t stopsigs;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGTERM);
    sigaddset(&stopsigs, SIGINT);
    sigaddset(&stopsigs, SIGUSR1);
    if (mode == 'H')
        sigprocmask(SIG_BLOCK, &stopsigs, NULL);

    struct cfs_imgserve *s = cfs_nbd_imgserve_new(state_dir, getenv("QEMU_NBD"));
    if (!s)
        return fail("new", -ENOMEM);
    /* started from a thread that ends before the reads, as a FUSE worker
     * that libfuse retires: the server must outlive it (PDEATHSIG follows
     * the thread that forked, so the fork must not happen there) */
    struct starter st = {.s = s, .spec = &spec};
    pthread_t starter_thread;
    int ret = 0;
    int rc = pthread_create(&starter_thread, NULL, starter_main, &st);
    if (rc != 0)
        return fail("pthread_create", -rc);
    pthread_join(starter_thread, NULL);
    rc = st.rc;
    struct cfs_img *img = st.img;
    if (rc < 0)
        errno_msg_restore(&st);
    if (rc < 0) {
        ret = fail("start", rc);
        goto out;
    }
    if (mode == 'K' || mode == 'k') {
        ret = stop_hung(s, img, size, mode == 'k');
        goto out; /* stopped */
    }
    if (mode == 'P') {
        ret = ref_path ? read_parallel(s, img, size, par_n, ref_path) : usage();
    } else if (mode == 'r') {
        ret = read_forward(s, img, size, false);
    } else if (mode == 'R') {
        ret = read_backward(s, img, size);
    } else if (mode == 'm') {
        const struct cfs_extent *runs;
        size_t nr;
        rc = s->ops->extents(img, &runs, &nr);
        if (rc < 0)
            ret = fail("extents", rc);
        for (size_t i = 0; rc == 0 && i < nr; i++)
            printf("%" PRIu64 " %" PRIu64 "\n", runs[i].off, runs[i].len);
    } else if (mode == 'H') {
        printf("ready\n");
        fflush(stdout);
        int sig = 0;
        sigwait(&stopsigs, &sig);
        if (sig == SIGUSR1)
            ret = read_forward(s, img, size, true);
    }
    s->ops->stop(img);
out:
    s->ops->destroy(s);
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
    free(layers);
    if (fflush(stdout) != 0)
        ret = 1;
    return ret;
}
