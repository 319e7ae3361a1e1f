/* util.c — allocation wrappers, string vectors, size/time formatting, the
 * growable text buffer, whole writes and directory fsync, and the thread-local backend error message slot
 * (cfs_backend_errmsg(), declared in backend.h).
 *
 * Owns no shared state: every function may be called from any thread. The
 * error message slot is per thread by construction (__thread). */
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "chainfs/backend.h"
#include "chainfs/util.h"

static _Noreturn void oom(size_t n)
{
    fprintf(stderr, "chainfs: out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *cfs_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *cfs_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *cfs_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

int cfs_state_dir_lock(const char *dir, int *fd, char **errmsg)
{
    _cleanup_free_ char *lock = cfs_xasprintf("%s/lock", dir);
    *fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*fd >= 0 && flock(*fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    int r = errno == EWOULDBLOCK ? -EBUSY : -errno;
    if (errmsg)
        *errmsg = r == -EBUSY
            ? cfs_xasprintf("state directory %s is in use by another chainfs", dir)
            : cfs_xasprintf("state directory %s: %s", dir, strerror(-r));
    return r;
}

char *cfs_xstrndup(const char *s, size_t n)
{
    char *r = cfs_xmalloc(n + 1);

    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

char *cfs_xstrdup(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        oom(strlen(s) + 1);
    return d;
}

char *cfs_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0)
        oom(0);
    return s;
}

uint64_t cfs_fnv1a(uint64_t h, const void *p, size_t len)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < len; i++) {
        h ^= c[i];
        h *= 1099511628211ULL;
    }
    return h;
}

uint64_t cfs_str_hash(const char *s)
{
    return cfs_fnv1a(CFS_FNV_OFFSET, s ? s : "", s ? strlen(s) : 0);
}

bool cfs_streq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

size_t cfs_strv_len(char *const *v)
{
    size_t n = 0;

    if (v)
        while (v[n])
            n++;
    return n;
}

char **cfs_strv_free(char **v)
{
    if (v) {
        for (char **p = v; *p; p++)
            free(*p);
        free(v);
    }
    return NULL;
}

bool cfs_strv_contains(char *const *v, const char *s)
{
    if (!v || !s)
        return false;
    for (; *v; v++)
        if (strcmp(*v, s) == 0)
            return true;
    return false;
}

void cfs_strv_push(char ***v, char *s)
{
    size_t n = cfs_strv_len(*v);

    *v = cfs_xrealloc(*v, (n + 2) * sizeof(char *));
    (*v)[n] = s;
    (*v)[n + 1] = NULL;
}

/* Units from KiB up; the value is rounded to one decimal, and moves to the
 * next unit when rounding would print "1024.0". Integer arithmetic only, so
 * the result never depends on floating-point rounding. */
void cfs_format_size(uint64_t bytes, char *out, size_t outlen)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };

    if (!out || outlen == 0)
        return;
    if (bytes < 1024) {
        snprintf(out, outlen, "%" PRIu64 "B", bytes);
        return;
    }

    unsigned k = 0; /* units[k] is 2^(10*(k+1)) */
    while (k + 1 < ELEMENTSOF(units) && bytes >> (10 * (k + 2)) != 0)
        k++;

    uint64_t tenths;
    for (;;) {
        unsigned shift = 10 * (k + 1);
        uint64_t whole = bytes >> shift;
        uint64_t rem = bytes & ((UINT64_C(1) << shift) - 1);
        /* rem < 2^60 at most, so rem * 10 fits in 64 bits */
        tenths = whole * 10 + ((rem * 10 + (UINT64_C(1) << (shift - 1))) >> shift);
        if (tenths < 10240 || k + 1 >= ELEMENTSOF(units))
            break;
        k++;
    }
    snprintf(out, outlen, "%" PRIu64 ".%" PRIu64 "%s", tenths / 10,
             tenths % 10, units[k]);
}

void cfs_format_time(int64_t t, char *out, size_t outlen)
{
    struct tm tm;
    time_t tt = (time_t)t;

    if (!out || outlen == 0)
        return;
    out[0] = '\0';
    if (t == 0 || !gmtime_r(&tt, &tm))
        return;
    if (strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        out[0] = '\0';
}

static void buf_reserve(struct cfs_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;

    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    b->data = cfs_xrealloc(b->data, cap);
    b->cap = cap;
}

void cfs_buf_put(struct cfs_buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void cfs_buf_put_escaped(struct cfs_buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (*p == '\n')
            cfs_buf_put(b, "\\n", 2);
        else if (*p == '\t')
            cfs_buf_put(b, "\\t", 2);
        else if (*p < 0x20 || *p == 0x7f)
            cfs_buf_printf(b, "\\x%02x", *p);
        else
            cfs_buf_put(b, (const char *)p, 1);
    }
}

void cfs_buf_printf(struct cfs_buf *b, const char *fmt, ...)
{
    va_list ap, aq;

    va_start(ap, fmt);
    va_copy(aq, ap);
    buf_reserve(b, 0);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(aq);
        b->data[b->len] = '\0';
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, aq);
    }
    va_end(aq);
    b->len += (size_t)n;
}

char *cfs_buf_steal(struct cfs_buf *b)
{
    char *s = b->data ? b->data : cfs_xstrdup("");

    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

void cfs_buf_free(struct cfs_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- backend error message (backend.h) ---------------------------------- */

static __thread char backend_errmsg[1024];

const char *cfs_backend_errmsg(void)
{
    return backend_errmsg;
}

void cfs_backend_set_errmsg(const char *fmt, ...)
{
    va_list ap;

    if (!fmt) {
        backend_errmsg[0] = '\0';
        return;
    }
    va_start(ap, fmt);
    if (vsnprintf(backend_errmsg, sizeof(backend_errmsg), fmt, ap) < 0)
        backend_errmsg[0] = '\0';
    va_end(ap);
}

int cfs_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int cfs_fsync_dir(int dirfd)
{
    if (fsync(dirfd) < 0 && errno != EINVAL && errno != ENOTSUP)
        return -errno;
    return 0;
}

struct timespec cfs_deadline_after(clockid_t clk, int64_t ms)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    if (ms < 0)
        ms = 0;
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int cfs_image_hold_writers(const char *path, int *fd, char **why)
{
    *fd = -1;
    *why = NULL;
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        *why = cfs_xasprintf("cannot open %s: %s", path, strerror(e));
        return -e;
    }
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                        .l_start = CFS_QEMU_LOCK_SHARED_WRITE, .l_len = 1 };
    if (fcntl(f, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        *why = cfs_xasprintf("Failed to get the shared \"write\" lock on %s: %s",
                             path, strerror(e));
        close(f);
        return (e == EAGAIN || e == EACCES) ? -EBUSY : -e;
    }
    struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = CFS_QEMU_LOCK_PERM_WRITE, .l_len = 1 };
    if (fcntl(f, F_OFD_GETLK, &q) == 0 && q.l_type != F_UNLCK) {
        *why = cfs_xasprintf("%s is open for writing by another process "
                             "(Failed to get \"write\" lock)", path);
        close(f);
        return -EBUSY;
    }
    *fd = f;
    return 0;
}

/* ---- bulk statistics (backend.h, issue 12 §2.2) -------------------------- */

void cfs_dom_summaries_free(struct cfs_dom_summary *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].name);
        for (size_t d = 0; d < v[i].n_disks; d++) {
            struct cfs_stats_disk *dk = &v[i].disks[d];
            free(dk->target);
            for (size_t l = 0; l < dk->n_layers; l++)
                free(dk->layers[l].path);
            free(dk->layers);
        }
        free(v[i].disks);
    }
    free(v);
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    /* the terminating NUL too: "ab","c" differs from "a","bc" */
    return cfs_fnv1a(h, s ? s : "", s ? strlen(s) + 1 : 1);
}

uint64_t cfs_dom_summary_fingerprint(const struct cfs_dom_summary *s)
{
    uint64_t h = CFS_FNV_OFFSET;
    uint32_t v = (uint32_t)s->state;
    h = cfs_fnv1a(h, &v, sizeof(v));
    h = fnv_str(h, s->uuid);
    v = (uint32_t)s->partial;
    h = cfs_fnv1a(h, &v, sizeof(v));
    for (size_t d = 0; d < s->n_disks; d++) {
        const struct cfs_stats_disk *dk = &s->disks[d];
        h = fnv_str(h, dk->target);
        for (size_t l = 0; l < dk->n_layers; l++) {
            h = fnv_str(h, dk->layers[l].path);
            v = dk->layers[l].index;
            h = cfs_fnv1a(h, &v, sizeof(v));
        }
        h = fnv_str(h, "/"); /* end of the disk's layers */
    }
    return h;
}

void cfs_malloc_trim(void)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&lock);
    malloc_trim(0);
    pthread_mutex_unlock(&lock);
}
