/* libvirt.c — the real backend: the ops table of backend.h over one
 * libvirt connection. The only file that includes the libvirt headers.
 *
 * Threads: one event thread for every backend of the process (issue 12:
 * several hosts, one backend each) runs libvirt's default event loop
 * (keepalive, close callbacks, domain events); it is started by the first
 * connect and ends after the last destroy (lv_event_loop_ref/unref). The
 * callbacks it runs only forward to struct cfs_backend_events (each
 * backend's own), so one host's events never wait for another's. A reconnect thread sleeps until
 * the close callback fires, then reopens the connection (with backoff),
 * resubscribes and announces connection(up=true) on the event thread.
 * Every op may run on any other thread, concurrently: each call gets a
 * connection to itself from a small pool (lv_conn says why); the event
 * connection carries no calls. While the event connection is down, ops
 * return -ENOTCONN.
 * libvirt errors are mapped to errno in lv_error() and libvirt's message
 * goes to cfs_backend_set_errmsg(); libvirt's own printing to stderr is
 * off. A connect that finds libvirtd unreachable returns -ENOTCONN with
 * the reconnect armed: the caller keeps the backend (connection(up)
 * follows once it answers) or destroys it.
 *
 * Live chains come from the live XML (<backingStore index=...>) and sizes
 * from domstats with backing; a shut-off domain's chain is walked from the
 * image headers (qcow2.c), which no QEMU has open then. The offline commit
 * runs qemu-img, since libvirt has no API for it.
 *
 * All of that reading and writing of files by path is done only when the
 * daemon's paths are this process's paths (lv_files_local(), decided once
 * at connect, see lv_decide_locality()); otherwise libvirt creates the
 * overlays, chains and sizes are what libvirt reports, offline merges are
 * refused and merged files are deleted only through the storage-volume
 * API. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "chainfs/backend.h"
#include "chainfs/log.h"
#include "chainfs/strmap.h"
#include "chainfs/util.h"
#include "domxml.h"
#include "errmap.h"
#include "qcow2.h"

extern char **environ;

#define KEEPALIVE_INTERVAL 5
#define KEEPALIVE_COUNT 3
#define RECONNECT_DELAY_MIN_MS 250
#define RECONNECT_DELAY_MAX_MS 5000
/* An idle call connection (see lv_conn) unused this long is closed; at most
 * POOL_MAX_IDLE are kept. */
#define POOL_IDLE_MS 60000
/* At destroy, how long the reconnect thread may take to end. */
#define RECONNECT_JOIN_WAIT_S 2
#define POOL_MAX_IDLE 8
#define QEMU_IMG "qemu-img"
#define QEMU_IMG_ERR_MAX 4096

enum lv_event {
    LV_EV_LIFECYCLE,
    LV_EV_DEVICE_ADDED,
    LV_EV_DEVICE_REMOVED,
    LV_EV_DISK_CHANGE,
    LV_EV_BLOCK_JOB,
    LV_EV_MAX,
};

/* Threads: the event thread (libvirt's event loop, callbacks), the
 * reconnect thread (sleeps until the connection closes, then reopens it)
 * and any number of op threads. Lock order: `lock` is never held across a
 * libvirt call that talks to the daemon, nor while taking another lock;
 * a domain's definition lock (lv_def_lock) and snap_lock are, and are
 * never held together. cb_ids and close_cb are touched only by
 * connect/destroy and the reconnect thread, never at the same time. */
struct lv_backend {
    struct cfs_backend pub;
    char *uri;
    char *conn_uri;             /* virConnectGetURI at connect, or NULL */

    pthread_mutex_t lock;
    pthread_cond_t cond;        /* wakes the reconnect thread */
    virConnectPtr conn;         /* under lock; NULL while reconnecting */
    bool need_reconnect;        /* under lock; set by the close callback */
    bool stopping;              /* under lock; destroy has begun */
    int up_timer;               /* under lock; pending "up" event, or -1 */

    int cb_ids[LV_EV_MAX];
    bool close_cb;

    int ka_interval, ka_count;  /* keepalive of every connection */
    struct lv_pooled *pool;     /* under lock: idle call connections */
    size_t n_pool;

    const struct cfs_backend_events *ev;
    void *opaque;

    bool thread_running;        /* holds a reference on the event loop */
    bool start_down;            /* connect found libvirtd unreachable: the
                                   reconnect thread waits before its first
                                   try */
    pthread_t reconnect_thread;
    bool reconnect_running;

    /* Which overlay each snapshot names, by domain UUID and snapshot name:
     * a snapshot's disks do not change, and fetching every snapshot's XML
     * on each re-read made re-reads grow with the number of snapshots. */
    pthread_mutex_t snap_lock;
    struct lv_snap_cache *snaps;
    size_t n_snaps;

    /* The definition locks of the domains that have one taken or
     * awaited (under lock; see lv_def_lock). */
    struct lv_def_lock *def_locks;

    /* Locality, decided by the first connect (lv_decide_locality) and
     * never changed: files_local, why (for the log), and whether the
     * daemon runs as this process's user (then the overlay files this
     * process writes are the daemon's own). */
    bool files_local;
    bool daemon_is_us;
    char local_why[256];
    bool decided;
};

/* An idle connection of the call pool (see lv_conn). */
struct lv_pooled {
    virConnectPtr conn;
    int64_t idle_since_ms;
};

/* One domain's definition lock (lv_def_lock), by UUID: exists while
 * some thread holds or waits for it. */
struct lv_def_lock {
    struct lv_backend *b;
    char uuid[VIR_UUID_STRING_BUFLEN];
    pthread_mutex_t mutex;
    unsigned users;              /* under b->lock: holders and waiters */
    struct lv_def_lock *next;    /* under b->lock */
};

struct lv_snap_cache {
    char uuid[VIR_UUID_STRING_BUFLEN];
    char *name;
    char **targets;   /* parallel NULL-terminated vectors */
    char **sources;
    struct cfs_snap_info info; /* issue 10: its facts but `current`
                                  (which another snapshot's creation
                                  changes: asked once per re-read) */
    bool seen;        /* listed by the current re-read */
};

static void lv_snap_cache_clear(struct lv_snap_cache *c);

/* ---- small helpers ------------------------------------------------------ */

static void lv_put(virConnectPtr c);
struct lv_backend;
static void lv_owner_add(virConnectPtr c, struct lv_backend *b);
/* A call connection goes back to the pool (lv_conn). */
static void connp(virConnectPtr *c)
{
    if (*c)
        lv_put(*c);
}
static void domp(virDomainPtr *d)
{
    if (*d)
        virDomainFree(*d);
}
static void snapp(virDomainSnapshotPtr *s)
{
    if (*s)
        virDomainSnapshotFree(*s);
}
static void domxmlp(struct cfs_domxml *x)
{
    cfs_domxml_clear(x);
}
#define _cleanup_conn_ _cleanup_(connp)
#define _cleanup_dom_ _cleanup_(domp)
#define _cleanup_snap_ _cleanup_(snapp)
#define _cleanup_domxml_ _cleanup_(domxmlp)

static struct lv_backend *lv(struct cfs_backend *be)
{
    return (struct lv_backend *)be;
}

static void lv_silence(void *opaque _unused_, virErrorPtr err _unused_)
{
}

static bool msg_has(const char *msg, const char *needle)
{
    return msg && strcasestr(msg, needle);
}

/* Whether local paths A and B are one file: by identity (cfs_file_same
 * on st_dev + st_ino, a block device by its st_rdev) when both stat; when
 * either does not, only the very same path. cfs_file_same's own fallback
 * (canonical or lexically folded paths) is not used here: its callers
 * decide what qemu-img commit writes into, and a folded "x/.." can name
 * another file than the one stat() would follow. */
static bool lv_same_file(const char *a, const char *b)
{
    _cleanup_(cfs_file_id_clear) struct cfs_file_id ia = {0};
    _cleanup_(cfs_file_id_clear) struct cfs_file_id ib = {0};

    cfs_file_identify(&ia, a, true);
    cfs_file_identify(&ib, b, true);
    if (ia.known && ib.known)
        return cfs_file_same(&ia, a, &ib, b);
    return cfs_streq(a, b);
}

/* errmap.h mirrors libvirt's codes: check each against libvirt's own. */
#define SAME(ours, theirs) _Static_assert((int)(ours) == (int)(theirs), #theirs)
SAME(CFS_VERR_INTERNAL_ERROR, VIR_ERR_INTERNAL_ERROR);
SAME(CFS_VERR_NO_SUPPORT, VIR_ERR_NO_SUPPORT);
SAME(CFS_VERR_NO_CONNECT, VIR_ERR_NO_CONNECT);
SAME(CFS_VERR_INVALID_CONN, VIR_ERR_INVALID_CONN);
SAME(CFS_VERR_INVALID_ARG, VIR_ERR_INVALID_ARG);
SAME(CFS_VERR_OPERATION_FAILED, VIR_ERR_OPERATION_FAILED);
SAME(CFS_VERR_OPERATION_DENIED, VIR_ERR_OPERATION_DENIED);
SAME(CFS_VERR_SYSTEM_ERROR, VIR_ERR_SYSTEM_ERROR);
SAME(CFS_VERR_RPC, VIR_ERR_RPC);
SAME(CFS_VERR_NO_DOMAIN, VIR_ERR_NO_DOMAIN);
SAME(CFS_VERR_AUTH_FAILED, VIR_ERR_AUTH_FAILED);
SAME(CFS_VERR_NO_STORAGE_VOL, VIR_ERR_NO_STORAGE_VOL);
SAME(CFS_VERR_OPERATION_INVALID, VIR_ERR_OPERATION_INVALID);
SAME(CFS_VERR_CONFIG_UNSUPPORTED, VIR_ERR_CONFIG_UNSUPPORTED);
SAME(CFS_VERR_OPERATION_TIMEOUT, VIR_ERR_OPERATION_TIMEOUT);
SAME(CFS_VERR_AGENT_UNRESPONSIVE, VIR_ERR_AGENT_UNRESPONSIVE);
SAME(CFS_VERR_NO_DOMAIN_SNAPSHOT, VIR_ERR_NO_DOMAIN_SNAPSHOT);
SAME(CFS_VERR_ARGUMENT_UNSUPPORTED, VIR_ERR_ARGUMENT_UNSUPPORTED);
SAME(CFS_VERR_AUTH_CANCELLED, VIR_ERR_AUTH_CANCELLED);
SAME(CFS_VERR_BLOCK_COPY_ACTIVE, VIR_ERR_BLOCK_COPY_ACTIVE);
SAME(CFS_VERR_OPERATION_UNSUPPORTED, VIR_ERR_OPERATION_UNSUPPORTED);
SAME(CFS_VERR_RESOURCE_BUSY, VIR_ERR_RESOURCE_BUSY);
SAME(CFS_VERR_ACCESS_DENIED, VIR_ERR_ACCESS_DENIED);
SAME(CFS_VERR_STORAGE_VOL_EXIST, VIR_ERR_STORAGE_VOL_EXIST);
SAME(CFS_VERR_AUTH_UNAVAILABLE, VIR_ERR_AUTH_UNAVAILABLE);
SAME(CFS_VERR_NO_SERVER, VIR_ERR_NO_SERVER);
SAME(CFS_VERR_FROM_RPC, VIR_FROM_RPC);
SAME(CFS_VERR_FROM_REMOTE, VIR_FROM_REMOTE);
#undef SAME

static bool msg_is_lock(const char *msg)
{
    return cfs_lverr_msg_is_lock(msg);
}

static void dirp(DIR **d)
{
    if (*d)
        closedir(*d);
}

/* Which of A and B (a merge's top and base) some process has open without
 * the other: the domain's own QEMU has both open, a qemu-io, qemu-img or
 * backup tool holding one image, or the QEMU of another domain sharing it,
 * has only that one. Bit 0: A, bit 1: B. Scans /proc/PID/fd by file
 * identity, so it only means something for local images. */
static unsigned lv_local_lone_holders(const char *a, const char *b)
{
    _cleanup_(dirp) DIR *proc = opendir("/proc");
    struct stat sa, sb;
    struct dirent *pe;
    unsigned found = 0;

    if (!proc || stat(a, &sa) < 0 || stat(b, &sb) < 0)
        return 0;
    while ((pe = readdir(proc))) {
        _cleanup_free_ char *sub = NULL;
        struct dirent *fe;
        unsigned has = 0;
        int dfd;

        if (!isdigit((unsigned char)pe->d_name[0]) || atoi(pe->d_name) == getpid())
            continue;
        sub = cfs_xasprintf("%s/fd", pe->d_name);
        dfd = openat(dirfd(proc), sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
            continue;
        _cleanup_(dirp) DIR *fds = fdopendir(dfd);
        if (!fds) {
            close(dfd);
            continue;
        }
        while ((fe = readdir(fds))) {
            struct stat st;

            if (fe->d_name[0] == '.' || fstatat(dirfd(fds), fe->d_name, &st, 0) < 0)
                continue;
            if (st.st_dev == sa.st_dev && st.st_ino == sa.st_ino)
                has |= 1;
            if (st.st_dev == sb.st_dev && st.st_ino == sb.st_ino)
                has |= 2;
        }
        if (has == 1 || has == 2)
            found |= has;
    }
    return found;
}

/* R, with the current error message made to name the image when it is a
 * locking failure: IMAGE, or "IMAGE or OTHER" when either may be the one
 * (libvirt passes QEMU's message on without QEMU's hint that names the
 * file, and the lock QEMU names does not tell which image it was). */
static int lv_name_locked_image(int r, const char *image, const char *other)
{
    const char *msg = cfs_backend_errmsg();

    if (r != -EBUSY || !msg_is_lock(msg))
        return r;
    _cleanup_free_ char *copy = cfs_xstrdup(msg);
    cfs_backend_set_errmsg("image %s%s%s is in use by another process: %s", image,
                           other ? " or " : "", other ? other : "", copy);
    return r;
}

/* The one place libvirt errors become errno (backend.h's table, decided
 * in errmap.c). CONN, if given, tells a dead connection apart from other
 * failures; OP says what the call was (a pivot's "block copy still
 * active" means not ready). */
static int lv_error_op(virConnectPtr conn, enum cfs_lverr_op op)
{
    virErrorPtr e = virGetLastError();
    /* copied first: any further libvirt call resets the thread's error */
    struct cfs_lverr le = {
        .code = e ? e->code : VIR_ERR_INTERNAL_ERROR,
        .domain = e ? e->domain : VIR_FROM_NONE,
        .int1 = e ? e->int1 : 0,
    };
    _cleanup_free_ char *msg =
        cfs_xstrdup(e && e->message ? e->message : "unknown libvirt error");

    cfs_backend_set_errmsg("%s", msg);
    le.message = msg;
    le.conn_dead = conn && virConnectIsAlive(conn) != 1;
    return cfs_lverr_errno(&le, op);
}

static int lv_error(virConnectPtr conn)
{
    return lv_error_op(conn, CFS_LVERR_OP_ANY);
}

/* Which backend each call connection lent out (lv_conn) belongs to, so
 * that connp()/lv_put() give it back to that backend's pool: several
 * backends (hosts) live in one process. */
static pthread_mutex_t lv_owners_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lv_owner {
    virConnectPtr c;
    struct lv_backend *b;
} *lv_owners;
static size_t lv_n_owners;

static void lv_owner_add(virConnectPtr c, struct lv_backend *b)
{
    pthread_mutex_lock(&lv_owners_lock);
    lv_owners = cfs_xrealloc(lv_owners, (lv_n_owners + 1) * sizeof(*lv_owners));
    lv_owners[lv_n_owners++] = (struct lv_owner){ .c = c, .b = b };
    pthread_mutex_unlock(&lv_owners_lock);
}

/* The owner of C, forgotten; NULL if none (its backend was destroyed
 * while the call went on). */
static struct lv_backend *lv_owner_take(virConnectPtr c)
{
    struct lv_backend *b = NULL;

    pthread_mutex_lock(&lv_owners_lock);
    for (size_t i = 0; i < lv_n_owners; i++)
        if (lv_owners[i].c == c) {
            b = lv_owners[i].b;
            lv_owners[i] = lv_owners[--lv_n_owners];
            break;
        }
    if (!lv_n_owners) {
        free(lv_owners);
        lv_owners = NULL;
    }
    pthread_mutex_unlock(&lv_owners_lock);
    return b;
}

/* At destroy: connections of B still lent out are closed when given back. */
static void lv_owner_forget(struct lv_backend *b)
{
    pthread_mutex_lock(&lv_owners_lock);
    for (size_t i = 0; i < lv_n_owners; i++)
        if (lv_owners[i].b == b)
            lv_owners[i].b = NULL;
    pthread_mutex_unlock(&lv_owners_lock);
}

static int64_t lv_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Close every idle call connection. */
static void lv_pool_drain(struct lv_backend *b)
{
    struct lv_pooled *v;
    size_t n;

    pthread_mutex_lock(&b->lock);
    v = TAKE_PTR(b->pool);
    n = b->n_pool;
    b->n_pool = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++)
        virConnectClose(v[i].conn);
    free(v);
}

/* A connection for one call, all to the caller until connp()/lv_put()
 * gives it back; -ENOTCONN while the event connection is down.
 *
 * Every call has a connection to itself: libvirt's client funnels the
 * traffic of one connection through whichever thread waits for a reply,
 * and two threads inside calls on one connection went wrong twice over.
 * While one call waited for a stopped QEMU, the others on that connection
 * waited up to a keepalive interval (5 s) each (issue 6 item 8); and when
 * the keepalive closed a connection under one call while another thread
 * was inside a call on it, that thread crashed in libvirt's event loop
 * (g_main_loop_quit) once libvirtd answered again (item 7). The events
 * have a connection of their own (b->conn), on which nothing is called. */
static int lv_conn(struct lv_backend *b, virConnectPtr *out)
{
    virConnectPtr c;
    int r;

    for (;;) {
        virConnectPtr old = NULL;
        int64_t t = lv_now_ms();

        pthread_mutex_lock(&b->lock);
        if (!b->conn || b->need_reconnect || b->stopping) {
            pthread_mutex_unlock(&b->lock);
            cfs_backend_set_errmsg("not connected to libvirt");
            return -ENOTCONN;
        }
        c = NULL;
        if (b->n_pool > 0) {
            struct lv_pooled *pc = &b->pool[--b->n_pool];

            if (t - pc->idle_since_ms > POOL_IDLE_MS)
                old = pc->conn;
            else
                c = pc->conn;
        }
        pthread_mutex_unlock(&b->lock);
        if (old) {
            virConnectClose(old);
            continue;
        }
        if (!c)
            break;
        if (virConnectIsAlive(c) == 1) {
            lv_owner_add(c, b);
            *out = c;
            return 0;
        }
        virConnectClose(c);
    }

    c = virConnectOpenAuth(b->uri, virConnectAuthPtrDefault, 0);
    if (!c) {
        r = lv_error(NULL);
        return r == -EIO ? -ENOTCONN : r;
    }
    (void)virConnectSetKeepAlive(c, b->ka_interval, b->ka_count);
    lv_owner_add(c, b);
    *out = c;
    return 0;
}

static void lv_put(virConnectPtr c)
{
    struct lv_backend *b = lv_owner_take(c);
    bool keep = false;

    if (b && virConnectIsAlive(c) == 1) {
        pthread_mutex_lock(&b->lock);
        keep = b->conn && !b->need_reconnect && !b->stopping &&
               b->n_pool < POOL_MAX_IDLE;
        if (keep) {
            b->pool = cfs_xrealloc(b->pool, (b->n_pool + 1) * sizeof(*b->pool));
            b->pool[b->n_pool++] = (struct lv_pooled){
                .conn = c,
                .idle_since_ms = lv_now_ms(),
            };
        }
        pthread_mutex_unlock(&b->lock);
    }
    if (!keep)
        virConnectClose(c);
}

static int lv_lookup(struct lv_backend *b, const char *name,
                     virConnectPtr *conn, virDomainPtr *dom)
{
    int r = lv_conn(b, conn);

    if (r < 0)
        return r;
    *dom = virDomainLookupByName(*conn, name);
    if (!*dom)
        return lv_error(*conn);
    return 0;
}

static enum cfs_dom_state lv_map_state(int state)
{
    switch (state) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED:
        return CFS_DOM_RUNNING;
    case VIR_DOMAIN_PAUSED:
        return CFS_DOM_PAUSED;
    case VIR_DOMAIN_SHUTOFF:
        return CFS_DOM_SHUTOFF;
    default:
        return CFS_DOM_OTHER;
    }
}

/* Every libvirt block job type as a distinct cfs_job_type. */
static enum cfs_job_type lv_map_job_type(int type)
{
    switch (type) {
    case VIR_DOMAIN_BLOCK_JOB_TYPE_PULL:
        return CFS_JOB_PULL;
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COPY:
        return CFS_JOB_COPY;
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT:
        return CFS_JOB_COMMIT;
    case VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
        return CFS_JOB_ACTIVE_COMMIT;
    case VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP:
        return CFS_JOB_BACKUP;
    default:
        return CFS_JOB_UNKNOWN;
    }
}

/* ---- events (event thread) ---------------------------------------------- */

static void lv_changed(struct lv_backend *b, virDomainPtr dom)
{
    if (b->ev && b->ev->domain_changed)
        b->ev->domain_changed(b->opaque, virDomainGetName(dom));
}

static int lv_on_lifecycle(virConnectPtr conn _unused_, virDomainPtr dom,
                           int event _unused_, int detail _unused_, void *opaque)
{
    lv_changed(opaque, dom);
    return 0;
}

static void lv_on_device(virConnectPtr conn _unused_, virDomainPtr dom,
                         const char *alias _unused_, void *opaque)
{
    lv_changed(opaque, dom);
}

static void lv_on_disk_change(virConnectPtr conn _unused_, virDomainPtr dom,
                              const char *old_src _unused_,
                              const char *new_src _unused_,
                              const char *alias _unused_, int reason _unused_,
                              void *opaque)
{
    lv_changed(opaque, dom);
}

static void lv_on_block_job(virConnectPtr conn _unused_, virDomainPtr dom,
                            const char *disk, int type, int status, void *opaque)
{
    struct lv_backend *b = opaque;
    enum cfs_job_event ev;

    switch (status) {
    case VIR_DOMAIN_BLOCK_JOB_COMPLETED:
        ev = CFS_JOB_EVENT_COMPLETED;
        break;
    case VIR_DOMAIN_BLOCK_JOB_FAILED:
        ev = CFS_JOB_EVENT_FAILED;
        break;
    case VIR_DOMAIN_BLOCK_JOB_CANCELED:
        ev = CFS_JOB_EVENT_CANCELED;
        break;
    case VIR_DOMAIN_BLOCK_JOB_READY:
        ev = CFS_JOB_EVENT_READY;
        break;
    default:
        return;
    }
    if (b->ev && b->ev->block_job)
        b->ev->block_job(b->opaque, virDomainGetName(dom), disk,
                         lv_map_job_type(type), ev);
}

static void lv_on_close(virConnectPtr conn _unused_, int reason _unused_,
                        void *opaque)
{
    struct lv_backend *b = opaque;

    pthread_mutex_lock(&b->lock);
    b->need_reconnect = true;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    if (b->ev && b->ev->connection)
        b->ev->connection(b->opaque, false);
}

/* Timer armed by the reconnect thread so that connection(up=true) runs on
 * the event thread like every other callback. */
static void lv_on_up_timer(int timer, void *opaque)
{
    struct lv_backend *b = opaque;
    bool fire;

    virEventRemoveTimeout(timer);
    pthread_mutex_lock(&b->lock);
    fire = b->up_timer == timer && !b->stopping;
    if (b->up_timer == timer)
        b->up_timer = -1;
    pthread_mutex_unlock(&b->lock);
    if (fire && b->ev && b->ev->connection)
        b->ev->connection(b->opaque, true);
}

/* The process's one event thread (every backend's), under lv_loop_lock:
 * started by the first reference, ended by the last. */
static pthread_mutex_t lv_loop_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned lv_loop_refs;
static pthread_t lv_loop_thread;
static atomic_bool lv_loop_quit;

static void *lv_event_loop(void *arg _unused_)
{
    while (!atomic_load(&lv_loop_quit))
        if (virEventRunDefaultImpl() < 0)
            break;
    return NULL;
}

static void lv_wake(int timer _unused_, void *opaque _unused_)
{
}

/* 0, or -errno (the thread could not start; message set). */
static int lv_event_loop_ref(void)
{
    int r = 0;

    pthread_mutex_lock(&lv_loop_lock);
    if (lv_loop_refs == 0) {
        atomic_store(&lv_loop_quit, false);
        r = pthread_create(&lv_loop_thread, NULL, lv_event_loop, NULL);
        if (r != 0)
            cfs_backend_set_errmsg("cannot start the libvirt event thread: %s",
                                   strerror(r));
    }
    if (r == 0)
        lv_loop_refs++;
    pthread_mutex_unlock(&lv_loop_lock);
    return -r;
}

/* Wait until the event thread has run everything it had begun: a
 * callback of a backend being destroyed (deregistered already) may be
 * running on the shared thread; after this none is. false if the thread
 * did not come round within 2 s (a callback blocked: the caller must not
 * free what callbacks use). */
struct lv_barrier {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void lv_barrier_cb(int timer, void *opaque)
{
    struct lv_barrier *w = opaque;

    virEventRemoveTimeout(timer);
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static bool lv_event_barrier(void)
{
    struct lv_barrier *w = cfs_xcalloc(1, sizeof(*w));
    struct timespec ts = cfs_deadline_after(CLOCK_REALTIME, 2000);
    bool done;

    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (virEventAddTimeout(0, lv_barrier_cb, w, NULL) < 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return true; /* no loop to wait for */
    }
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0)
            break;
    done = w->done;
    pthread_mutex_unlock(&w->lock);
    if (!done)
        return false; /* W stays: the timer may fire later */
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return true;
}

static void lv_event_loop_unref(void)
{
    pthread_mutex_lock(&lv_loop_lock);
    if (lv_loop_refs > 0 && --lv_loop_refs == 0) {
        int timer;

        atomic_store(&lv_loop_quit, true);
        /* adding a timer interrupts the poll the loop sleeps in */
        timer = virEventAddTimeout(0, lv_wake, NULL, NULL);
        pthread_join(lv_loop_thread, NULL);
        if (timer >= 0)
            virEventRemoveTimeout(timer);
    }
    pthread_mutex_unlock(&lv_loop_lock);
}

static pthread_once_t lv_global_once = PTHREAD_ONCE_INIT;
static int lv_global_ret;

static void lv_global_init(void)
{
    /* libvirt's event loop implementation is process-wide and must be
     * registered before the first connection is opened. */
    virSetErrorFunc(NULL, lv_silence);
    lv_global_ret = virEventRegisterDefaultImpl();
    cfs_domxml_init();
}

/* Subscribe to everything on CONN; ids go into b->cb_ids. */
static int lv_subscribe(struct lv_backend *b, virConnectPtr conn)
{
    static const struct {
        int id;
        virConnectDomainEventGenericCallback cb;
    } subs[LV_EV_MAX] = {
        [LV_EV_LIFECYCLE] = { VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                              VIR_DOMAIN_EVENT_CALLBACK(lv_on_lifecycle) },
        [LV_EV_DEVICE_ADDED] = { VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                 VIR_DOMAIN_EVENT_CALLBACK(lv_on_device) },
        [LV_EV_DEVICE_REMOVED] = { VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                   VIR_DOMAIN_EVENT_CALLBACK(lv_on_device) },
        [LV_EV_DISK_CHANGE] = { VIR_DOMAIN_EVENT_ID_DISK_CHANGE,
                                VIR_DOMAIN_EVENT_CALLBACK(lv_on_disk_change) },
        [LV_EV_BLOCK_JOB] = { VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                              VIR_DOMAIN_EVENT_CALLBACK(lv_on_block_job) },
    };

    if (virConnectRegisterCloseCallback(conn, lv_on_close, b, NULL) < 0)
        return lv_error(conn);
    b->close_cb = true;
    for (size_t i = 0; i < LV_EV_MAX; i++) {
        b->cb_ids[i] = virConnectDomainEventRegisterAny(conn, NULL, subs[i].id,
                                                        subs[i].cb, b, NULL);
        if (b->cb_ids[i] < 0)
            return lv_error(conn);
    }
    return 0;
}

static void lv_unsubscribe(struct lv_backend *b, virConnectPtr conn)
{
    for (size_t i = 0; i < LV_EV_MAX; i++) {
        if (b->cb_ids[i] >= 0)
            virConnectDomainEventDeregisterAny(conn, b->cb_ids[i]);
        b->cb_ids[i] = -1;
    }
    if (b->close_cb)
        virConnectUnregisterCloseCallback(conn, lv_on_close);
    b->close_cb = false;
}

static void lv_stop_event_thread(struct lv_backend *b)
{
    if (!b->thread_running)
        return;
    lv_event_loop_unref();
    b->thread_running = false;
}

/* ---- locality ------------------------------------------------------------ */

struct lv_sock {
    int fd;
    ino_t ino;
};

/* This process's AF_UNIX stream sockets, by fd and socket inode. */
static size_t lv_unix_sockets(struct lv_sock **out)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *de;
    size_t n = 0;

    *out = NULL;
    if (!dir)
        return 0;
    while ((de = readdir(dir))) {
        int fd = atoi(de->d_name), dom = 0, type = 0;
        socklen_t len = sizeof(int);
        struct stat st;

        if (de->d_name[0] == '.' || fd == dirfd(dir) || fstat(fd, &st) < 0 ||
            !S_ISSOCK(st.st_mode))
            continue;
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) < 0 || dom != AF_UNIX)
            continue;
        len = sizeof(int);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
            continue;
        *out = cfs_xrealloc(*out, (n + 1) * sizeof(**out));
        (*out)[n++] = (struct lv_sock){ .fd = fd, .ino = st.st_ino };
    }
    closedir(dir);
    return n;
}

static bool lv_same_inode(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Does process PID see this process's files at the same paths: the same
 * mount namespace and the same root? -1 if that cannot be read. */
static int lv_pid_shares_files(pid_t pid)
{
    char ns[64], root[64];
    struct stat st;

    snprintf(ns, sizeof(ns), "/proc/%d/ns/mnt", (int)pid);
    snprintf(root, sizeof(root), "/proc/%d/root", (int)pid);
    if (stat(ns, &st) < 0 || stat(root, &st) < 0)
        return -1;
    return lv_same_inode(ns, "/proc/self/ns/mnt") && lv_same_inode(root, "/");
}

/* The URI CONN is connected to (cfs_uri_remote()); true when it is
 * remote or unknown. */
static bool lv_uri_remote(virConnectPtr conn, char *why, size_t sz, bool *embed)
{
    _cleanup_free_ char *uri = virConnectGetURI(conn);

    *embed = false;
    if (!uri) {
        virResetLastError();
        snprintf(why, sz, "libvirt did not say which URI it connected to");
        return true;
    }
    return cfs_uri_remote(uri, why, sz, embed);
}

/* Decide whether the paths libvirt reports are this process's files: not
 * for a URI with a host or a network transport; for a local socket, only
 * if the daemon at the other end of the socket libvirt opened (the
 * sockets that are new since BEFORE; SO_PEERCRED gives its pid) shares
 * this process's mount namespace and root. A host UUID cannot tell: it
 * is random per daemon start where the machine has no DMI UUID. Whatever
 * cannot be told counts as not local: refusing a file operation is safe,
 * touching the wrong file is not. */
static void lv_decide_locality(struct lv_backend *b, virConnectPtr conn,
                               const struct lv_sock *before, size_t n_before)
{
    _cleanup_free_ struct lv_sock *after = NULL;
    size_t n_after = lv_unix_sockets(&after), peers = 0;
    char *why = b->local_why;
    size_t sz = sizeof(b->local_why);
    bool embed, same = true, us = true;
    int unknown = 0;
    pid_t pid = 0;

    b->decided = true;
    b->files_local = false;
    b->daemon_is_us = false;
    if (lv_uri_remote(conn, why, sz, &embed))
        return;
    if (embed) {
        b->files_local = b->daemon_is_us = true;
        snprintf(why, sz, "the driver runs inside this process (embed)");
        return;
    }
    for (size_t i = 0; i < n_after; i++) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        bool old = false;

        for (size_t j = 0; j < n_before && !old; j++)
            old = before[j].ino == after[i].ino;
        if (old || getsockopt(after[i].fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
            cred.pid <= 0)
            continue;
        peers++;
        pid = cred.pid;
        int r = lv_pid_shares_files(cred.pid);
        if (r < 0)
            unknown++;
        else if (!r)
            same = false;
        if (cred.uid != geteuid())
            us = false;
    }
    if (peers == 0) {
        snprintf(why, sz, "cannot find the libvirt daemon's socket to check its mount namespace");
    } else if (unknown) {
        snprintf(why, sz, "cannot read the mount namespace of the libvirt daemon (pid %d)", (int)pid);
    } else if (!same) {
        snprintf(why, sz, "the libvirt daemon (pid %d) runs in another mount namespace", (int)pid);
    } else {
        b->files_local = true;
        b->daemon_is_us = us;
        snprintf(why, sz, "the libvirt daemon (pid %d) shares this mount namespace%s",
                 (int)pid, us ? "" : ", as another user");
    }
}

static bool lv_files_local(struct cfs_backend *be, const char **why)
{
    struct lv_backend *b = lv(be);

    if (why)
        *why = b->local_why;
    return b->files_local;
}

/* Open the connection, turn keepalive on and subscribe to events. The
 * first open decides locality. */
static int lv_open(struct lv_backend *b, virConnectPtr *out)
{
    /* Several backends (hosts) may open their first connections at once:
     * the decision looks for the sockets new since BEFORE, so those over
     * a local socket (a URI without a host) decide one at a time. A URI
     * with a host is judged by the URI: no wait for another. */
    static pthread_mutex_t decide_lock = PTHREAD_MUTEX_INITIALIZER;
    char why[8];
    bool embed;
    bool serial = !b->decided &&
                  (!b->uri || !cfs_uri_remote(b->uri, why, sizeof(why), &embed));
    if (serial)
        pthread_mutex_lock(&decide_lock);
    _cleanup_free_ struct lv_sock *before = NULL;
    size_t n_before = b->decided ? 0 : lv_unix_sockets(&before);
    virConnectPtr conn;
    int r;

    conn = virConnectOpenAuth(b->uri, virConnectAuthPtrDefault, 0);
    if (!conn) {
        if (serial)
            pthread_mutex_unlock(&decide_lock);
        r = lv_error(NULL);
        return r == -EIO ? -ENOTCONN : r;
    }
    if (!b->decided)
        lv_decide_locality(b, conn, before, n_before);
    if (serial)
        pthread_mutex_unlock(&decide_lock);
    /* 1 means the server does not support keepalive: not an error */
    (void)virConnectSetKeepAlive(conn, b->ka_interval, b->ka_count);
    r = lv_subscribe(b, conn);
    if (r < 0) {
        lv_unsubscribe(b, conn);
        virConnectClose(conn);
        return r;
    }
    *out = conn;
    return 0;
}

static void lv_drop(struct lv_backend *b, virConnectPtr conn)
{
    if (!conn)
        return;
    lv_unsubscribe(b, conn);
    virConnectClose(conn);
}

static void lv_sleep_locked(struct lv_backend *b, unsigned ms)
{
    struct timespec ts = cfs_deadline_after(CLOCK_REALTIME, ms);

    if (!b->stopping)
        pthread_cond_timedwait(&b->cond, &b->lock, &ts);
}

/* Reconnect thread: after the close callback, drop the dead connection
 * and reopen until it works (backing off up to RECONNECT_DELAY_MAX_MS);
 * then announce connection(up=true) from the event thread. */
static void *lv_reconnect_loop(void *arg)
{
    struct lv_backend *b = arg;
    unsigned delay = RECONNECT_DELAY_MIN_MS;

    pthread_mutex_lock(&b->lock);
    for (;;) {
        virConnectPtr old, conn = NULL;
        int r;

        while (!b->stopping && !b->need_reconnect)
            pthread_cond_wait(&b->cond, &b->lock);
        if (b->start_down) {
            /* connect just failed: back off before the first try */
            b->start_down = false;
            lv_sleep_locked(b, delay);
        }
        if (b->stopping)
            break;
        old = TAKE_PTR(b->conn);
        pthread_mutex_unlock(&b->lock);

        lv_pool_drain(b);
        lv_drop(b, old);
        r = lv_open(b, &conn);
        _cleanup_free_ char *conn_uri = NULL;
        if (r == 0 && !(conn_uri = virConnectGetURI(conn)))
            virResetLastError();

        pthread_mutex_lock(&b->lock);
        if (r < 0) {
            lv_sleep_locked(b, delay);
            delay = delay * 2 > RECONNECT_DELAY_MAX_MS ? RECONNECT_DELAY_MAX_MS
                                                       : delay * 2;
            continue;
        }
        if (b->stopping) {
            pthread_mutex_unlock(&b->lock);
            lv_drop(b, conn);
            pthread_mutex_lock(&b->lock);
            break;
        }
        b->conn = conn;
        b->need_reconnect = false;
        delay = RECONNECT_DELAY_MIN_MS;
        if (!b->conn_uri)
            b->conn_uri = TAKE_PTR(conn_uri); /* the first connection's */
        /* the event thread runs the timer; it waits for b->lock, which
         * this thread holds without holding the event loop's own lock */
        b->up_timer = virEventAddTimeout(0, lv_on_up_timer, b, NULL);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

static int lv_start_reconnect_thread(struct lv_backend *b)
{
    int r = pthread_create(&b->reconnect_thread, NULL, lv_reconnect_loop, b);

    if (r != 0) {
        cfs_backend_set_errmsg("cannot start the libvirt reconnect thread: %s",
                               strerror(r));
        return -r;
    }
    b->reconnect_running = true;
    return 0;
}

static int lv_connect(struct cfs_backend *be, const struct cfs_backend_events *ev,
                      void *opaque)
{
    struct lv_backend *b = lv(be);
    virConnectPtr conn = NULL;
    int r;

    pthread_once(&lv_global_once, lv_global_init);
    if (lv_global_ret < 0)
        return lv_error(NULL);

    b->ev = ev;
    b->opaque = opaque;
    r = lv_event_loop_ref();
    if (r < 0)
        return r;
    b->thread_running = true;

    r = lv_open(b, &conn);
    if (r == -ENOTCONN) {
        /* unreachable: the reconnect thread goes on trying with its
         * back-off and says connection(up) when libvirtd answers; the
         * caller keeps the backend (several hosts) or destroys it. The
         * message of the failed open stays this thread's. */
        _cleanup_free_ char *msg = cfs_xstrdup(cfs_backend_errmsg());
        pthread_mutex_lock(&b->lock);
        b->need_reconnect = true;
        b->start_down = true;
        pthread_mutex_unlock(&b->lock);
        if (lv_start_reconnect_thread(b) < 0) {
            lv_stop_event_thread(b);
            return -EAGAIN;
        }
        cfs_backend_set_errmsg("%s", msg ? msg : "cannot reach libvirt");
        return -ENOTCONN;
    }
    if (r < 0) {
        lv_stop_event_thread(b);
        return r;
    }
    /* before any other thread can ask: it never changes afterwards */
    b->conn_uri = virConnectGetURI(conn);
    if (!b->conn_uri)
        virResetLastError();
    pthread_mutex_lock(&b->lock);
    b->conn = conn;
    pthread_mutex_unlock(&b->lock);

    r = lv_start_reconnect_thread(b);
    if (r < 0) {
        pthread_mutex_lock(&b->lock);
        conn = TAKE_PTR(b->conn);
        pthread_mutex_unlock(&b->lock);
        lv_drop(b, conn);
        lv_stop_event_thread(b);
        return r;
    }
    return 0;
}

static void lv_destroy(struct cfs_backend *be)
{
    struct lv_backend *b = lv(be);
    virConnectPtr conn;
    int timer;

    if (!b)
        return;
    pthread_mutex_lock(&b->lock);
    b->stopping = true;
    pthread_cond_broadcast(&b->cond);
    timer = b->up_timer;
    b->up_timer = -1;
    pthread_mutex_unlock(&b->lock);

    if (b->reconnect_running) {
        struct timespec ts;

        /* it may be inside virConnectOpenAuth() towards a libvirtd that
         * does not answer (stopped), with no keepalive yet to end it:
         * then it is left behind, and so is everything it may touch
         * (b stays allocated and reachable; the process is exiting) */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += RECONNECT_JOIN_WAIT_S;
        if (pthread_timedjoin_np(b->reconnect_thread, NULL, &ts) != 0) {
            pthread_detach(b->reconnect_thread);
            return;
        }
    }
    b->reconnect_running = false;
    if (timer >= 0)
        virEventRemoveTimeout(timer);

    pthread_mutex_lock(&b->lock);
    conn = TAKE_PTR(b->conn);
    pthread_mutex_unlock(&b->lock);
    lv_owner_forget(b);
    lv_pool_drain(b);
    lv_drop(b, conn);
    /* the event thread is shared (other hosts): a callback of ours it
     * began must be over before B goes */
    if (b->thread_running && !lv_event_barrier())
        return; /* left behind, reachable through the callback */
    lv_stop_event_thread(b);

    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->lock);
    for (size_t i = 0; i < b->n_snaps; i++)
        lv_snap_cache_clear(&b->snaps[i]);
    free(b->snaps);
    pthread_mutex_destroy(&b->snap_lock);
    free(b->uri);
    free(b->conn_uri);
    free(b);
}

/* ---- is libvirt there? ------------------------------------------------- */

/* One ping: shared by the caller, who may stop waiting, and the thread
 * making the call, which may never return while libvirtd is stopped. */
struct lv_ping {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    virConnectPtr conn;
    int refs;            /* under lock */
    bool done;           /* under lock */
    bool alive;          /* under lock, once done */
};

static void lv_ping_unref(struct lv_ping *p)
{
    bool last;

    pthread_mutex_lock(&p->lock);
    last = --p->refs == 0;
    pthread_mutex_unlock(&p->lock);
    if (!last)
        return;
    lv_put(p->conn);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void *lv_ping_thread(void *arg)
{
    struct lv_ping *p = arg;
    unsigned long version;
    /* a round trip to libvirtd; any answer, even an error, is one */
    bool alive = virConnectGetLibVersion(p->conn, &version) == 0 ||
                 virConnectIsAlive(p->conn) == 1;

    pthread_mutex_lock(&p->lock);
    p->done = true;
    p->alive = alive;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    lv_ping_unref(p);
    return NULL;
}

static int lv_ping(struct cfs_backend *be, unsigned timeout_ms)
{
    virConnectPtr conn = NULL;
    struct lv_ping *p;
    pthread_condattr_t ca;
    pthread_attr_t attr;
    pthread_t thread;
    struct timespec ts;
    bool done, alive;
    int r;

    r = lv_conn(lv(be), &conn);
    if (r < 0)
        return r;
    p = cfs_xcalloc(1, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    p->conn = conn;
    p->refs = 2;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    r = pthread_create(&thread, &attr, lv_ping_thread, p);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        p->refs = 1;
        lv_ping_unref(p);
        return 0; /* cannot tell: let the caller try */
    }

    ts = cfs_deadline_after(CLOCK_MONOTONIC, timeout_ms);
    pthread_mutex_lock(&p->lock);
    while (!p->done)
        if (pthread_cond_timedwait(&p->cond, &p->lock, &ts) == ETIMEDOUT)
            break;
    done = p->done;
    alive = p->alive;
    pthread_mutex_unlock(&p->lock);
    lv_ping_unref(p);
    if (!done) {
        cfs_backend_set_errmsg("libvirt did not answer within %u ms", timeout_ms);
        return -ENOTCONN;
    }
    if (!alive) {
        cfs_backend_set_errmsg("the connection to libvirt is lost");
        return -ENOTCONN;
    }
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

static int lv_list_domains(struct cfs_backend *be, char ***names)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    virDomainPtr *doms = NULL;
    char **v = NULL;
    int n, r;

    *names = NULL;
    r = lv_conn(lv(be), &conn);
    if (r < 0)
        return r;
    n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0)
        return lv_error(conn);
    v = cfs_xcalloc((size_t)n + 1, sizeof(*v));
    for (int i = 0; i < n; i++) {
        v[i] = cfs_xstrdup(virDomainGetName(doms[i]));
        virDomainFree(doms[i]);
    }
    free(doms);
    *names = v;
    return 0;
}

/* One layer of a domain's block statistics (block.K.* of domstats
 * --block --backing). false when record K has no name. The has_* say
 * which of the sizes libvirt gave. */
struct lv_block_stat {
    const char *name, *path;
    unsigned int index;
    unsigned long long cap, alloc, phys;
    bool has_cap, has_alloc;
};

static bool lv_block_stat(virTypedParameterPtr p, int np, unsigned int k,
                          struct lv_block_stat *bs)
{
    char key[64];

    *bs = (struct lv_block_stat){0};
    snprintf(key, sizeof(key), "block.%u.name", k);
    if (virTypedParamsGetString(p, np, key, &bs->name) != 1)
        return false;
    snprintf(key, sizeof(key), "block.%u.path", k);
    virTypedParamsGetString(p, np, key, &bs->path);
    snprintf(key, sizeof(key), "block.%u.backingIndex", k);
    virTypedParamsGetUInt(p, np, key, &bs->index);
    snprintf(key, sizeof(key), "block.%u.capacity", k);
    bs->has_cap = virTypedParamsGetULLong(p, np, key, &bs->cap) == 1;
    snprintf(key, sizeof(key), "block.%u.allocation", k);
    bs->has_alloc = virTypedParamsGetULLong(p, np, key, &bs->alloc) == 1;
    snprintf(key, sizeof(key), "block.%u.physical", k);
    virTypedParamsGetULLong(p, np, key, &bs->phys);
    return true;
}

/* Sizes from domstats --block --backing: a layer is matched by disk name
 * and backingIndex when both sides have one, else by path. MATCHED[d][l]
 * records which layers got their sizes this way. */
static void lv_fill_stats(virDomainPtr dom, struct cfs_domxml *x, bool **matched)
{
    virDomainPtr doms[2] = { dom, NULL };
    virDomainStatsRecordPtr *recs = NULL;
    struct cfs_domain *d = x->domain;
    unsigned int count = 0;
    int n;

    n = virDomainListGetStats(doms, VIR_DOMAIN_STATS_BLOCK, &recs,
                              VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING);
    if (n <= 0) {
        if (recs)
            virDomainStatsRecordListFree(recs);
        virResetLastError();
        return;
    }
    virTypedParamsGetUInt(recs[0]->params, recs[0]->nparams, "block.count", &count);

    for (unsigned int i = 0; i < count; i++) {
        struct lv_block_stat bs;

        if (!lv_block_stat(recs[0]->params, recs[0]->nparams, i, &bs) ||
            !bs.has_cap)
            continue;
        for (size_t di = 0; di < d->n_disks; di++) {
            struct cfs_disk *disk = &d->disks[di];

            if (!cfs_streq(disk->target, bs.name))
                continue;
            for (size_t li = 0; li < disk->n_layers; li++) {
                unsigned xi = x->disks[di].index[li];
                bool same = (xi && bs.index) ? xi == bs.index
                                             : cfs_streq(disk->layers[li].path, bs.path);

                if (!same || matched[di][li])
                    continue;
                disk->layers[li].virtual_size = bs.cap;
                disk->layers[li].allocation = bs.alloc;
                disk->layers[li].physical = bs.phys;
                matched[di][li] = true;
                break;
            }
        }
    }
    virDomainStatsRecordListFree(recs);
}

static struct lv_snap_cache *lv_snap_cache_find(struct lv_backend *b,
                                                const char *uuid,
                                                const char *name)
{
    for (size_t i = 0; i < b->n_snaps; i++)
        if (strcmp(b->snaps[i].uuid, uuid) == 0 &&
            strcmp(b->snaps[i].name, name) == 0)
            return &b->snaps[i];
    return NULL;
}

static void lv_snap_cache_clear(struct lv_snap_cache *c)
{
    free(c->name);
    cfs_strv_free(c->targets);
    cfs_strv_free(c->sources);
    cfs_snap_info_clear(&c->info);
}

/* Forget what is cached of snapshot NAME of domain UUID (its disks
 * changed, or it is gone and a later one of that name may name others). */
static void lv_snap_cache_drop(struct lv_backend *b, const char *uuid,
                               const char *name)
{
    struct lv_snap_cache *c = lv_snap_cache_find(b, uuid, name);

    if (!c)
        return;
    lv_snap_cache_clear(c);
    *c = b->snaps[--b->n_snaps];
}

/* Forget what is cached of snapshot NAME of domain UUID and of its
 * children: a metadata delete gives them NAME's parent (libvirt's
 * reparenting), which their cached facts do not know. */
static void lv_snap_cache_drop_family(struct lv_backend *b, const char *uuid,
                                      const char *name)
{
    _cleanup_free_ char *gone = cfs_xstrdup(name);

    lv_snap_cache_drop(b, uuid, gone);
    for (size_t i = b->n_snaps; i-- > 0;)
        if (strcmp(b->snaps[i].uuid, uuid) == 0 &&
            cfs_streq(b->snaps[i].info.parent, gone))
            lv_snap_cache_drop(b, uuid, b->snaps[i].name);
}

/* Forget every cached snapshot of domain UUID not seen by this re-read. */
static void lv_snap_cache_prune(struct lv_backend *b, const char *uuid)
{
    size_t j = 0;
    for (size_t i = 0; i < b->n_snaps; i++) {
        struct lv_snap_cache *c = &b->snaps[i];
        if (strcmp(c->uuid, uuid) == 0 && !c->seen) {
            lv_snap_cache_clear(c);
            continue;
        }
        c->seen = false;
        b->snaps[j++] = *c;
    }
    b->n_snaps = j;
}

/* Issue 12 §2.4: forget the cached snapshots of every domain whose UUID
 * is not in LISTED (a uuid -> anything map): undefined domains leave
 * nothing behind. One pass over the cache. */
static void lv_snap_cache_forget_unlisted(struct lv_backend *b,
                                          const struct cfs_strmap *listed)
{
    pthread_mutex_lock(&b->snap_lock);
    size_t j = 0;
    for (size_t i = 0; i < b->n_snaps; i++) {
        struct lv_snap_cache *c = &b->snaps[i];
        if (!cfs_strmap_get(listed, c->uuid)) {
            lv_snap_cache_clear(c);
            continue;
        }
        b->snaps[j++] = *c;
    }
    b->n_snaps = j;
    if (!j) {
        free(b->snaps);
        b->snaps = NULL;
    }
    pthread_mutex_unlock(&b->snap_lock);
}

/* Issue 12 §2.2: every domain, its state and its disks' layers with
 * their sizes, in one call (virConnectGetAllDomainStats). NOWAIT: a
 * domain whose job is held (a QEMU stuck in one) does not hold up the
 * call; libvirt then leaves out what needs the monitor, and the
 * summary is partial. */
static int lv_list_stats(struct cfs_backend *be, bool no_running_blocks,
                         struct cfs_dom_summary **out, size_t *n_out)
{
    struct lv_backend *b = lv(be);
    _cleanup_conn_ virConnectPtr conn = NULL;
    virDomainStatsRecordPtr *got = NULL, *act = NULL;
    *out = NULL;
    *n_out = 0;
    int r = lv_conn(b, &conn);
    if (r < 0)
        return r;
    unsigned int flags = VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING |
                         VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
    /* The listing is one call over every domain: libvirt collects them
     * at once, so a domain started or stopped meanwhile is still in it.
     * (Two calls, shut-off domains then running ones, left out a domain
     * destroyed between them, and the engine took it for undefined.)
     * NO_RUNNING_BLOCKS: that call asks only the state, and a second one
     * the block statistics of the shut-off domains (they query no QEMU);
     * a domain the two calls do not both call shut off is partial. */
    int n = virConnectGetAllDomainStats(
        conn, VIR_DOMAIN_STATS_STATE | (no_running_blocks ? 0 : VIR_DOMAIN_STATS_BLOCK),
        &got, flags);
    if (n < 0)
        return lv_error(conn);
    int m = 0;
    if (no_running_blocks) {
        m = virConnectGetAllDomainStats(conn, VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_BLOCK,
                                        &act, flags | VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE);
        if (m < 0) {
            virDomainStatsRecordListFree(got);
            return lv_error(conn);
        }
    }
    /* the shut-off domains' block records, by UUID */
    struct cfs_strmap *blocks = cfs_strmap_new();
    for (int i = 0; i < m; i++) {
        char uuid[VIR_UUID_STRING_BUFLEN];
        if (virDomainGetUUIDString(act[i]->dom, uuid) == 0)
            cfs_strmap_put(blocks, uuid, act[i]); /* the map copies keys */
    }
    struct cfs_dom_summary *v = cfs_xcalloc((size_t)n + 1, sizeof(*v));
    struct cfs_strmap *listed = cfs_strmap_new();
    for (int i = 0; i < n; i++) {
        virTypedParameterPtr p = got[i]->params;
        int np = got[i]->nparams;
        struct cfs_dom_summary *s = &v[i];
        s->name = cfs_xstrdup(virDomainGetName(got[i]->dom));
        if (virDomainGetUUIDString(got[i]->dom, s->uuid) < 0)
            s->uuid[0] = '\0';
        cfs_strmap_put(listed, s->uuid, s);
        int state = 0;
        virTypedParamsGetInt(p, np, "state.state", &state);
        s->state = lv_map_state(state);
        bool running = s->state != CFS_DOM_SHUTOFF;
        if (no_running_blocks) {
            virDomainStatsRecordPtr br =
                !running && s->uuid[0] ? cfs_strmap_get(blocks, s->uuid) : NULL;
            int bstate = 0;
            if (br)
                virTypedParamsGetInt(br->params, br->nparams, "state.state", &bstate);
            if (br && lv_map_state(bstate) == CFS_DOM_SHUTOFF) {
                p = br->params;
                np = br->nparams;
            } else {
                /* running, or started or stopped between the calls */
                s->partial = true;
                p = NULL;
                np = 0;
            }
        }
        unsigned int count = 0;
        if (!p || virTypedParamsGetUInt(p, np, "block.count", &count) != 1) {
            s->partial = s->partial || running;
            count = 0;
        }
        s->disks = cfs_xcalloc(count ? count : 1, sizeof(*s->disks));
        for (unsigned int k = 0; k < count; k++) {
            struct lv_block_stat bs;
            if (!lv_block_stat(p, np, k, &bs))
                continue;
            /* a running domain's allocation comes from its QEMU: none
             * means NOWAIT skipped the monitor (a job holds it) */
            if (running && !bs.has_alloc && bs.path)
                s->partial = true;
            /* the records come disk by disk, each disk's layers in
             * order, the active one first */
            struct cfs_stats_disk *sd = s->n_disks ? &s->disks[s->n_disks - 1] : NULL;
            if (!sd || !cfs_streq(sd->target, bs.name)) {
                sd = &s->disks[s->n_disks++];
                sd->target = cfs_xstrdup(bs.name);
            }
            sd->layers = cfs_xrealloc(sd->layers, (sd->n_layers + 1) * sizeof(*sd->layers));
            sd->layers[sd->n_layers++] = (struct cfs_stats_layer){
                .path = cfs_xstrdup(bs.path),
                .index = bs.index,
                .capacity = bs.cap,
                .allocation = bs.alloc,
                .physical = bs.phys,
            };
        }
        s->fingerprint = cfs_dom_summary_fingerprint(s);
    }
    cfs_strmap_free(blocks, NULL);
    virDomainStatsRecordListFree(got);
    if (act)
        virDomainStatsRecordListFree(act);
    lv_snap_cache_forget_unlisted(b, listed);
    cfs_strmap_free(listed, NULL);
    *out = v;
    *n_out = (size_t)n;
    return 0;
}

/* The name of DOM's current snapshot (caller frees), NULL if none or
 * libvirt cannot tell (then no snapshot shows as current). */
static char *lv_current_snapshot(virDomainPtr dom)
{
    virDomainSnapshotPtr cur = virDomainSnapshotCurrent(dom, 0);
    char *name;

    if (!cur) {
        virResetLastError(); /* VIR_ERR_NO_DOMAIN_SNAPSHOT: none */
        return NULL;
    }
    name = cfs_xstrdup(virDomainSnapshotGetName(cur));
    virDomainSnapshotFree(cur);
    return name;
}

/* Issue 12: which layer of a disk a snapshot's source names, without a
 * pass over the chain per snapshot: every layer under the keys
 * cfs_file_same() would match a path with no file identity against (its
 * canonical path, its folded path); a key two layers share maps to
 * LAYER_MANY (then the chain is scanned, as before). */
#define LAYER_MANY ((size_t)-1)

static void layer_key(struct cfs_strmap *m, const char *key, size_t l)
{
    size_t had;

    if (cfs_strmap_get_index(m, key, &had)) {
        if (had != l)
            cfs_strmap_set_index(m, key, LAYER_MANY);
        return;
    }
    cfs_strmap_add_index(m, key, l);
}

static struct cfs_strmap *layer_index(const struct cfs_disk *disk)
{
    struct cfs_strmap *m = cfs_strmap_new();

    for (size_t l = 0; l < disk->n_layers; l++) {
        const struct cfs_layer *ly = &disk->layers[l];
        _cleanup_free_ char *folded = cfs_path_fold(ly->path);

        if (ly->id.canonical)
            layer_key(m, ly->id.canonical, l);
        if (folded)
            layer_key(m, folded, l);
    }
    return m;
}

/* Give meta_name NAME to the layers of DISK that are SOURCE (a snapshot's
 * <source>, no file identity) and have none: cfs_file_same(layer, SOURCE)
 * is canonical == fold(SOURCE) or fold(path) == fold(SOURCE), which the
 * index answers (*IDX built on first use). */
static void lv_name_layer(struct cfs_disk *disk, struct cfs_strmap **idx,
                          const char *source, const char *name)
{
    _cleanup_free_ char *folded = cfs_path_fold(source);
    size_t l;

    if (!folded)
        return;
    if (!*idx)
        *idx = layer_index(disk);
    if (!cfs_strmap_get_index(*idx, folded, &l))
        return;
    if (l != LAYER_MANY) {
        if (!disk->layers[l].meta_name)
            disk->layers[l].meta_name = cfs_xstrdup(name);
        return;
    }
    for (l = 0; l < disk->n_layers; l++)
        if (!disk->layers[l].meta_name &&
            cfs_file_same(&disk->layers[l].id, disk->layers[l].path, NULL, source))
            disk->layers[l].meta_name = cfs_xstrdup(name);
}

/* The cache's entry of snapshot NAME of domain UUID by INDEX (name ->
 * position in b->snaps, taken before the loop), checked, else by a scan
 * (an entry moved since). */
static struct lv_snap_cache *lv_snap_cache_find_at(struct lv_backend *b,
                                                   const struct cfs_strmap *index,
                                                   const char *uuid, const char *name)
{
    size_t at;

    if (cfs_strmap_get_index(index, name, &at) && at < b->n_snaps &&
        strcmp(b->snaps[at].uuid, uuid) == 0 && strcmp(b->snaps[at].name, name) == 0)
        return &b->snaps[at];
    return lv_snap_cache_find(b, uuid, name);
}

/* meta_name of each layer, the domain's snapshot names and (issue 10)
 * their facts, snaps[]: from the cache, one XML fetch per snapshot not
 * cached yet, and one call for which one is current. Linear in the
 * domain's snapshots and layers (issue 12: a chain of 500 snapshots
 * chainfs made has 500 of each). */
static int lv_read_snapshots(struct lv_backend *b, virConnectPtr conn,
                             virDomainPtr dom, struct cfs_domain *d)
{
    virDomainSnapshotPtr *snaps = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    _cleanup_free_ char *current = NULL;
    int n;

    n = virDomainListAllSnapshots(dom, &snaps, 0);
    if (n < 0)
        return lv_error(conn);
    if (n > 0)
        current = lv_current_snapshot(dom);
    virDomainGetUUIDString(dom, uuid);
    pthread_mutex_lock(&b->snap_lock);
    if (n > 0)
        d->snaps = cfs_xcalloc((size_t)n, sizeof(*d->snaps));
    _cleanup_strmap_ struct cfs_strmap *names = cfs_strmap_new();
    for (int i = 0; i < n; i++) {
        cfs_strv_push(&d->snapshots, cfs_xstrdup(virDomainSnapshotGetName(snaps[i])));
        cfs_strmap_add_index(names, d->snapshots[i], (size_t)i);
    }
    _cleanup_strmap_ struct cfs_strmap *cached = cfs_strmap_new();
    for (size_t i = 0; i < b->n_snaps; i++)
        if (strcmp(b->snaps[i].uuid, uuid) == 0)
            cfs_strmap_add_index(cached, b->snaps[i].name, i);
    struct cfs_strmap **layer_idx = cfs_xcalloc(d->n_disks ? d->n_disks : 1,
                                                sizeof(*layer_idx));
    for (int i = 0; i < n; i++) {
        const char *name = d->snapshots[i];
        struct lv_snap_cache *c = lv_snap_cache_find_at(b, cached, uuid, name);

        /* the cached facts may be stale: C's parent is not among the
         * domain's snapshots any more (deleted behind our back, e.g. by
         * virsh: libvirt gave C another parent) */
        if (c && c->info.parent && !cfs_strmap_get_index(names, c->info.parent, NULL)) {
            lv_snap_cache_drop(b, uuid, name);
            c = NULL;
        }
        if (!c) {
            _cleanup_free_ char *xml = virDomainSnapshotGetXMLDesc(snaps[i], 0);
            struct cfs_snapxml sx;

            if (!xml || cfs_domxml_parse_snapshot(xml, &sx) < 0) {
                virResetLastError();
                /* not cached: tried again on the next re-read; its facts
                 * are its name alone meanwhile */
                d->snaps[d->n_snaps++] = (struct cfs_snap_info){
                    .name = cfs_xstrdup(name),
                    .current = cfs_streq(name, current),
                };
                continue;
            }
            b->snaps = cfs_xrealloc(b->snaps, (b->n_snaps + 1) * sizeof(*b->snaps));
            c = &b->snaps[b->n_snaps++];
            memset(c, 0, sizeof(*c));
            snprintf(c->uuid, sizeof(c->uuid), "%s", uuid);
            c->name = cfs_xstrdup(name);
            for (size_t k = 0; k < sx.n_disks; k++) {
                cfs_strv_push(&c->targets, cfs_xstrdup(sx.disks[k].target));
                cfs_strv_push(&c->sources, cfs_xstrdup(sx.disks[k].source));
            }
            c->info = (struct cfs_snap_info){
                .name = cfs_xstrdup(name),
                .parent = TAKE_PTR(sx.parent),
                .description = TAKE_PTR(sx.description),
                .created = sx.created,
                .n_disks = sx.n_all,
                .disks = TAKE_PTR(sx.all),
            };
            sx.n_all = 0;
            cfs_snapxml_clear(&sx);
        }
        c->seen = true;
        cfs_snap_info_copy(&d->snaps[d->n_snaps], &c->info);
        d->snaps[d->n_snaps++].current = cfs_streq(name, current);
        for (size_t k = 0; c->targets && c->targets[k]; k++) {
            struct cfs_disk *disk = cfs_domain_find_disk(d, c->targets[k]);

            if (disk && c->sources[k])
                lv_name_layer(disk, &layer_idx[disk - d->disks], c->sources[k], name);
        }
    }
    for (size_t k = 0; k < d->n_disks; k++)
        cfs_strmap_free(layer_idx[k], NULL);
    free(layer_idx);
    lv_snap_cache_prune(b, uuid);
    pthread_mutex_unlock(&b->snap_lock);
    for (int i = 0; i < n; i++)
        virDomainSnapshotFree(snaps[i]);
    free(snaps);
    return 0;
}

/* The one place a layer's sizes come from stat() of its image path (and,
 * through cfs_image_fill_sizes, its header): meaningful only where the
 * images are local files. FROM_LIBVIRT: domstats gave the layer's figures;
 * only its allocation is replaced, for a regular file: domstats'
 * allocation is QEMU's highest written offset of this run (0 for every
 * backing layer, raw or qcow2, and for an active layer not yet written),
 * not the data the layer holds, which for a file is st_blocks * 512 (what
 * a shut-off domain shows, and qemu-img's actual-size). A block device
 * keeps libvirt's figure. Otherwise every size is filled from the file;
 * PROBE: read the header for the virtual size. */
static void lv_fill_local_sizes(struct cfs_layer *l, bool from_libvirt, bool probe)
{
    struct stat st;

    if (!from_libvirt) {
        cfs_image_fill_sizes(l, probe);
        return;
    }
    if (!l->path || cfs_image_name_is_protocol(l->path))
        return;
    if (stat(l->path, &st) == 0 && S_ISREG(st.st_mode))
        l->allocation = (uint64_t)st.st_blocks * 512;
}

/* Refresh the active storage pool whose target directory is PATH's, so
 * that it knows a file libvirt made there for a snapshot. true if one was
 * refreshed. */
static bool lv_pool_refresh_dir(virConnectPtr conn, const char *path)
{
    _cleanup_free_ char *tmp = cfs_xstrdup(path);
    virStoragePoolPtr pool = virStoragePoolLookupByTargetPath(conn, dirname(tmp));
    bool done = false;

    if (pool) {
        done = virStoragePoolIsActive(pool) == 1 && virStoragePoolRefresh(pool, 0) == 0;
        virStoragePoolFree(pool);
    }
    virResetLastError();
    return done;
}

/* What libvirt's storage pools know of the image PATH, or -ENOENT. */
static int lv_volume_info(virConnectPtr conn, const char *path, struct cfs_volxml *out)
{
    virStorageVolPtr vol = virStorageVolLookupByPath(conn, path);
    _cleanup_free_ char *xml = vol ? virStorageVolGetXMLDesc(vol, 0) : NULL;
    int r = xml ? cfs_domxml_parse_volume(xml, out) : -ENOENT;

    if (vol)
        virStorageVolFree(vol);
    virResetLastError();
    return r;
}

/* A shut-off domain whose files are not local: its inactive XML may not
 * describe the chain below the active layer, and no header is read here.
 * Ask libvirt's storage pools instead: each layer's missing sizes, and
 * below the last layer its backing file, for as long as a pool holds the
 * image (a file no active pool has scanned ends the chain as shown).
 * true if the chain was cut at CFS_CHAIN_MAX layers with more below. One
 * storage-volume lookup per layer; the loop check is a scan per layer
 * added (O(n^2) compares, no call: a chain that deep remote is rare). */
static bool lv_complete_chain_from_pools(virConnectPtr conn, struct cfs_disk *disk,
                                         bool extend)
{
    for (size_t l = 0; l < disk->n_layers; l++) {
        _cleanup_(cfs_volxml_clear) struct cfs_volxml v = {0};
        struct cfs_layer *ly = &disk->layers[l];

        if (!ly->path || ly->is_block || lv_volume_info(conn, ly->path, &v) < 0)
            break;
        if (!ly->virtual_size) {
            ly->virtual_size = v.capacity;
            ly->allocation = v.allocation;
            ly->physical = v.physical;
        }
        if (v.format && (!ly->format || !*ly->format)) {
            free(ly->format);
            ly->format = cfs_xstrdup(v.format);
        }
        if (!extend || l + 1 != disk->n_layers || !v.backing ||
            cfs_image_name_is_protocol(v.backing))
            continue;
        if (disk->n_layers >= CFS_CHAIN_MAX)
            return true; /* cut: there is more below */
        for (size_t k = 0; k < disk->n_layers; k++)
            if (cfs_streq(disk->layers[k].path, v.backing))
                return false; /* a loop */
        disk->layers = cfs_xrealloc(disk->layers, (disk->n_layers + 1) * sizeof(*disk->layers));
        disk->layers[disk->n_layers++] = (struct cfs_layer){
            .path = TAKE_PTR(v.backing),
            .format = cfs_xstrdup(v.backing_format ? v.backing_format : ""),
        };
    }
    return false;
}

/* Domain XML -> struct cfs_domxml with full chains and sizes. LIVE: the
 * domain runs (chains and sizes come from libvirt only); otherwise chains
 * are completed from the image headers. FILES_LOCAL false: no file is
 * looked at; chains and sizes are what libvirt reports (CONN's storage
 * pools for a shut-off domain, when CONN is given). */
static void lv_complete_chains(virConnectPtr conn, virDomainPtr dom,
                               struct cfs_domxml *x, bool live, bool files_local)
{
    struct cfs_domain *d = x->domain;
    bool **matched = cfs_xcalloc(d->n_disks ? d->n_disks : 1, sizeof(*matched));
    size_t *listed = cfs_xcalloc(d->n_disks ? d->n_disks : 1, sizeof(*listed));

    for (size_t i = 0; i < d->n_disks; i++) {
        matched[i] = cfs_xcalloc(d->disks[i].n_layers, sizeof(**matched));
        listed[i] = d->disks[i].n_layers;
    }
    if (dom)
        lv_fill_stats(dom, x, matched);
    for (size_t i = 0; i < d->n_disks; i++) {
        struct cfs_disk *disk = &d->disks[i];

        bool cut = false;

        if (files_local && !live && !x->disks[i].chain_complete)
            cut = cfs_image_extend_chain(disk) == 1;
        if (!files_local && !live && conn)
            cut = lv_complete_chain_from_pools(conn, disk, !x->disks[i].chain_complete);
        if (cut)
            cfs_log(LOG_WARNING, "domain %s disk %s: backing chain cut at %u layers "
                    "(CFS_CHAIN_MAX); the layers below %s are not shown",
                    d->name ? d->name : "?", disk->target ? disk->target : "?",
                    CFS_CHAIN_MAX, disk->layers[disk->n_layers - 1].path);
        for (size_t l = 0; files_local && l < listed[i]; l++)
            lv_fill_local_sizes(&disk->layers[l], matched[i][l], !live);
        free(matched[i]);
    }
    free(matched);
    free(listed);
}

/* STATS: ask libvirt for the block statistics (domstats) of every layer;
 * without them, sizes come from stat() alone, which is much cheaper. */
static int lv_read_domain_common(struct cfs_backend *be, const char *name,
                                 struct cfs_domain **out, bool stats)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL;
    int state = VIR_DOMAIN_NOSTATE, reason, r;
    bool live;

    struct lv_backend *b = lv(be);
    *out = NULL;
    r = lv_lookup(b, name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainGetState(dom, &state, &reason, 0) < 0)
        return lv_error(conn);
    xml = virDomainGetXMLDesc(dom, 0);
    if (!xml)
        return lv_error(conn);
    r = cfs_domxml_parse(xml, &x);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", name);
        return -EIO;
    }
    live = virDomainIsActive(dom) == 1;
    x.domain->state = lv_map_state(state);
    x.domain->persistent = virDomainIsPersistent(dom) == 1;

    lv_complete_chains(conn, stats ? dom : NULL, &x, live, lv_files_local(be, NULL));
    /* the one place chainfs asks the file system which file each layer is
     * (on a remote connection: paths folded only, nothing asked) */
    cfs_domain_identify(x.domain, lv_files_local(be, NULL));
    r = lv_read_snapshots(b, conn, dom, x.domain);
    if (r < 0)
        return r;
    *out = TAKE_PTR(x.domain);
    return 0;
}

static int lv_read_domain(struct cfs_backend *be, const char *name,
                          struct cfs_domain **out)
{
    return lv_read_domain_common(be, name, out, true);
}

static int lv_read_domain_light(struct cfs_backend *be, const char *name,
                                struct cfs_domain **out)
{
    return lv_read_domain_common(be, name, out, false);
}

/* ---- snapshots ---------------------------------------------------------- */

/* The virtual size an overlay of TOP must have: what QEMU reports for it
 * (a qcow2 header's size; a raw file or device rounded up to 512 bytes).
 * -EINVAL when we do not read that format (libvirt creates the overlay). */
static int overlay_size(const struct cfs_layer *top, uint64_t *size)
{
    _cleanup_(cfs_image_info_clear) struct cfs_image_info info = {0};
    bool raw = cfs_streq(top->format, "raw");

    if (!raw && !cfs_streq(top->format, "qcow2"))
        return -EINVAL;
    int r = cfs_image_probe(top->path, top->format, &info);
    if (r < 0)
        return r;
    *size = raw ? (info.virtual_size + 511) / 512 * 512 : info.virtual_size;
    return 0;
}

/* ---- a domain's definition ---------------------------------------------- */

/* chainfs changes a domain's persistent definition in two ways: an
 * offline merge reads the inactive XML, edits one disk in it and defines
 * the result (lv_offline_commit), and a snapshot has libvirt rewrite the
 * disk's source itself (lv_snapshot_create; a shut-off domain's is the
 * definition, a running one's the live XML and the definition). Merges and
 * snapshots of different disks of one domain run at the same time, and a
 * define puts back every disk as it was in the XML it edited: one read
 * before another change was defined undoes that change (the other disk
 * then names the file its merge deleted, and the domain cannot start).
 * So each of them runs under the domain's definition lock, and an offline
 * merge reads the XML it edits under it, after its qemu-img work (which
 * takes long and touches only files of its own disk). The lock is per
 * domain, by UUID, not one for the backend: a snapshot of a running domain
 * waits for its QEMU, which may be stuck, and no other domain must wait
 * for that. Other programs changing the definition (virsh edit) are not
 * ours to hold back. */
static struct lv_def_lock *lv_def_lock(struct lv_backend *b, virDomainPtr dom)
{
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    struct lv_def_lock *l;

    /* local (the handle carries it): fails only for a bad handle, which
     * then shares the lock of "" */
    if (virDomainGetUUIDString(dom, uuid) < 0)
        virResetLastError();
    pthread_mutex_lock(&b->lock);
    for (l = b->def_locks; l && strcmp(l->uuid, uuid) != 0; l = l->next)
        ;
    if (!l) {
        l = cfs_xcalloc(1, sizeof(*l));
        l->b = b;
        memcpy(l->uuid, uuid, sizeof(l->uuid));
        pthread_mutex_init(&l->mutex, NULL);
        l->next = b->def_locks;
        b->def_locks = l;
    }
    l->users++;
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_lock(&l->mutex);
    return l;
}

static void lv_def_unlock(struct lv_def_lock *l)
{
    struct lv_backend *b;
    struct lv_def_lock **p;

    if (!l)
        return;
    b = l->b;
    pthread_mutex_unlock(&l->mutex);
    pthread_mutex_lock(&b->lock);
    if (--l->users == 0) {
        for (p = &b->def_locks; *p != l; p = &(*p)->next)
            ;
        *p = l->next;
        pthread_mutex_destroy(&l->mutex);
        free(l);
    }
    pthread_mutex_unlock(&b->lock);
}

static void lv_def_unlockp(struct lv_def_lock **l)
{
    lv_def_unlock(*l);
    *l = NULL;
}

/* Which of PATHS[0..N-1], local files, some disk of DOM's live XML uses
 * as a layer, by file identity (dev/ino), not by spelling (a bit per
 * path; all of them when the XML cannot be read: then every file counts
 * as used). */
static void lv_paths_in_domain(virDomainPtr dom, size_t n, const char *const *paths,
                               bool *used)
{
    _cleanup_free_ char *xml = virDomainGetXMLDesc(dom, 0);
    _cleanup_domxml_ struct cfs_domxml x = {0};
    bool known = xml && cfs_domxml_parse(xml, &x) == 0;

    if (known)
        cfs_domain_identify(x.domain, true);
    for (size_t i = 0; i < n; i++) {
        struct cfs_file_id id = {0};

        if (!known) {
            used[i] = true;
            continue;
        }
        cfs_file_identify(&id, paths[i], true);
        used[i] = cfs_domain_file_user(x.domain, &id, paths[i], NULL) != NULL;
        cfs_file_id_clear(&id);
    }
}

/* One snapshot NAME of the N disks SD[i] (design issue10 §2.1, §2.3 step
 * 5): one virDomainSnapshotCreateXML(DISK_ONLY | ATOMIC [| REUSE_EXT])
 * with every other disk of the domain snapshot='no'. A running domain's
 * disks switch in one QMP transaction, a shut-off one's in one
 * definition save: all or nothing. snapshot_create is the case N = 1. */
static int lv_snapshot_take(struct cfs_backend *be, const char *dom_name,
                            const char *name, size_t n,
                            const struct cfs_snapshot_disk *sd,
                            const char *description)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL, *snap_xml = NULL;
    _cleanup_free_ const char **targets = NULL, **overlays = NULL;
    _cleanup_free_ bool *made = NULL, *used = NULL;
    unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY |
                         VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
    struct lv_backend *b = lv(be);
    bool local = lv_files_local(be, NULL);
    size_t n_made = 0;
    struct stat st;
    int r;

    if (!name || !*name || n == 0 || !sd) {
        cfs_backend_set_errmsg("a snapshot needs a name and at least one disk");
        return -EINVAL;
    }
    targets = cfs_xcalloc(n, sizeof(*targets));
    overlays = cfs_xcalloc(n, sizeof(*overlays));
    made = cfs_xcalloc(n, sizeof(*made));
    used = cfs_xcalloc(n, sizeof(*used));
    for (size_t i = 0; i < n; i++) {
        targets[i] = sd[i].disk;
        overlays[i] = sd[i].overlay;
        if (!targets[i] || !*targets[i] || !overlays[i] || !*overlays[i]) {
            cfs_backend_set_errmsg("every disk of snapshot %s needs a target and an overlay path",
                                   name);
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (cfs_streq(targets[i], targets[j]) || cfs_streq(overlays[i], overlays[j])) {
                cfs_backend_set_errmsg("snapshot %s names disk %s or overlay %s twice",
                                       name, targets[i], overlays[i]);
                return -EINVAL;
            }
        /* not local: libvirt itself refuses an existing file ("already
         * exists") */
        if (local && lstat(overlays[i], &st) == 0) {
            cfs_backend_set_errmsg("overlay file '%s' of disk %s already exists",
                                   overlays[i], targets[i]);
            return -EEXIST;
        }
    }
    r = lv_lookup(b, dom_name, &conn, &dom);
    if (r < 0)
        return r;

    /* a name libvirt already has is refused by libvirt itself (EEXIST) */
    xml = virDomainGetXMLDesc(dom, 0);
    if (!xml)
        return lv_error(conn);
    r = cfs_domxml_parse(xml, &x);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
        return -EIO;
    }
    for (size_t i = 0; i < n; i++) {
        const struct cfs_disk *d = cfs_domain_find_disk(x.domain, targets[i]);

        for (size_t k = 0; k < x.domain->n_unsnappable; k++)
            if (cfs_streq(x.domain->unsnappable[k].target, targets[i])) {
                cfs_backend_set_errmsg("disk '%s' of domain '%s' cannot have a snapshot: %s",
                                       targets[i], dom_name, x.domain->unsnappable[k].why);
                return -EROFS;
            }
        if (!d || d->n_layers == 0) {
            cfs_backend_set_errmsg("domain '%s' has no disk '%s' with a file or block source",
                                   dom_name, targets[i]);
            return -ENOENT;
        }
    }

    /* The overlays are written here, as qemu-img would write them, and
     * libvirt takes them as they are: the snapshot call then takes 15-23
     * ms instead of 25-45 ms with libvirt creating them through QEMU (two
     * blockdev-create jobs per disk). Formats we do not write are left to
     * libvirt, and so is every overlay where the daemon's files are not
     * ours or are not ours to own: a session daemon of another user, whose
     * QEMU could not open a file this process owns. REUSE_EXT is for all
     * disks of the call or none: when one overlay is not ours to write,
     * libvirt writes them all. */
    bool ours = local && b->daemon_is_us;
    for (size_t i = 0; ours && i < n; i++) {
        const struct cfs_disk *d = cfs_domain_find_disk(x.domain, targets[i]);
        uint64_t size;

        if (overlay_size(&d->layers[0], &size) < 0) {
            ours = false;
            break;
        }
        r = cfs_image_create_overlay(overlays[i], d->layers[0].path,
                                     d->layers[0].format, size);
        if (r == -EINVAL) {
            ours = false;
            break;
        }
        if (r < 0) {
            if (r == -EEXIST)
                cfs_backend_set_errmsg("overlay file '%s' of disk %s already exists",
                                       overlays[i], targets[i]);
            else
                cfs_backend_set_errmsg("cannot create the overlay file '%s' of disk %s: %s",
                                       overlays[i], targets[i], strerror(-r));
            for (size_t j = 0; j < i; j++)
                unlink(overlays[j]);
            return r;
        }
        made[i] = true;
        n_made++;
    }
    if (!ours) {
        for (size_t i = 0; i < n; i++)
            if (made[i])
                unlink(overlays[i]);
        memset(made, 0, n * sizeof(*made));
        n_made = 0;
    }
    if (n_made)
        flags |= VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT;

    snap_xml = cfs_domxml_snapshot_xml_multi(name, n, targets, overlays, description,
                                             x.targets);
    if (!snap_xml) {
        cfs_backend_set_errmsg("cannot build the snapshot XML");
        r = -EIO;
    } else {
        struct lv_def_lock *lk = lv_def_lock(b, dom);

        snap = virDomainSnapshotCreateXML(dom, snap_xml, flags);
        r = snap ? 0 : lv_error(conn);
        lv_def_unlock(lk);
    }
    if (r < 0) {
        /* which disk failed, where libvirt's text names its overlay (a
         * QEMU error names the file, not the disk) */
        const char *msg = cfs_backend_errmsg();
        size_t which = n;

        for (size_t i = 0; i < n && which == n; i++)
            if (msg && strstr(msg, overlays[i]))
                which = i;
        /* a lock failure names no file: the one overlay, or the one
         * libvirt's text names; of several, which is not known */
        if (which < n || n == 1)
            r = lv_name_locked_image(r, overlays[which < n ? which : 0], NULL);
        if (which < n && n > 1) {
            _cleanup_free_ char *copy = cfs_xstrdup(cfs_backend_errmsg());
            cfs_backend_set_errmsg("disk %s: %s", targets[which], copy);
        }
    }
    /* ours to remove, unless libvirt took one after all (a failure after
     * the switch, e.g. saving the metadata): never a file in a chain */
    if (r < 0 && n_made) {
        lv_paths_in_domain(dom, n, overlays, used);
        for (size_t i = 0; i < n; i++)
            if (made[i] && !used[i])
                unlink(overlays[i]);
    }
    /* remote: the pools of the new files learn of them (chains of shut-off
     * domains are read from the pools) */
    for (size_t i = 0; r == 0 && !local && i < n; i++)
        (void)lv_pool_refresh_dir(conn, overlays[i]);
    return r;
}

static int lv_snapshot_create(struct cfs_backend *be, const char *dom_name,
                              const char *disk, const char *name,
                              const char *overlay)
{
    const struct cfs_snapshot_disk one = { .disk = disk, .overlay = overlay };

    return lv_snapshot_take(be, dom_name, name, 1, &one, NULL);
}

static int lv_snapshot_create_multi(struct cfs_backend *be, const char *dom_name,
                                    const char *name, size_t n,
                                    const struct cfs_snapshot_disk *disks,
                                    const char *description)
{
    return lv_snapshot_take(be, dom_name, name, n, disks, description);
}

/* Whether some disk of snapshot SX still names a layer of that disk's
 * chain in X. */
static bool lv_snap_names_a_layer(const struct cfs_snapxml *sx,
                                  const struct cfs_domxml *x, bool files_local)
{
    for (size_t k = 0; k < sx->n_disks; k++) {
        const struct cfs_disk *disk = cfs_domain_find_disk(x->domain, sx->disks[k].target);

        for (size_t l = 0; disk && l < disk->n_layers; l++)
            if (files_local ? lv_same_file(disk->layers[l].path, sx->disks[k].source)
                            : cfs_streq(disk->layers[l].path, sx->disks[k].source))
                return true;
    }
    return false;
}

/* DISK's layer of snapshot NAME was merged away. libvirt keeps a
 * snapshot's metadata as a whole (one <domainsnapshot> for all its
 * disks), so: the snapshot XML is rewritten with DISK snapshot='no' and
 * redefined (VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE: it stays listed, keeps
 * its parent, creation time, <domain> copy and, without _CREATE_CURRENT,
 * whether it is the current snapshot); when no disk of it names a layer
 * still in a chain any more, the metadata goes (METADATA_ONLY).
 * The snapshot's XML is read, edited and redefined (or deleted) under
 * snap_lock: two disks of one snapshot forgotten at the same time (a job
 * group's members ending together, design issue10 §3.6) must not both
 * edit the XML as it was before either change, or the second redefine
 * puts the first disk back. The domain's chains are read before: a
 * forget does not change them. */
static int lv_snapshot_forget(struct cfs_backend *be, const char *dom_name,
                              const char *disk, const char *name)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    _cleanup_snap_ virDomainSnapshotPtr redefined = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_(cfs_snapxml_clear) struct cfs_snapxml sx = {0};
    _cleanup_free_ char *snap_xml = NULL, *new_xml = NULL, *dom_xml = NULL;
    struct lv_backend *b = lv(be);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    bool named;
    int r;

    r = lv_lookup(b, dom_name, &conn, &dom);
    if (r < 0)
        return r;
    snap = virDomainSnapshotLookupByName(dom, name, 0);
    if (!snap)
        return lv_error(conn);
    dom_xml = virDomainGetXMLDesc(dom, 0);
    if (!dom_xml)
        return lv_error(conn);
    if (cfs_domxml_parse(dom_xml, &x) < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
        return -EIO;
    }
    lv_complete_chains(conn, NULL, &x, virDomainIsActive(dom) == 1,
                       lv_files_local(be, NULL));
    virDomainGetUUIDString(dom, uuid);

    pthread_mutex_lock(&b->snap_lock);
    /* _SECURE: a redefine must not lose the <domain> copy's secrets */
    snap_xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    if (!snap_xml) {
        r = lv_error(conn);
        goto out;
    }
    r = cfs_domxml_snapshot_drop_disk(snap_xml, disk, &new_xml);
    if ((r < 0 && r != -ENOENT) ||
        cfs_domxml_parse_snapshot(new_xml ? new_xml : snap_xml, &sx) < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of snapshot %s of domain %s",
                               name, dom_name);
        r = -EIO;
        goto out;
    }
    named = lv_snap_names_a_layer(&sx, &x, lv_files_local(be, NULL));
    if (!named) {
        if (virDomainSnapshotDelete(snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0)
            r = lv_error(conn);
        else
            r = 0;
        /* no re-read caches the old disk list after the change; its
         * children took its parent */
        lv_snap_cache_drop_family(b, uuid, name);
    } else if (new_xml) {
        redefined = virDomainSnapshotCreateXML(dom, new_xml,
                                               VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE);
        r = redefined ? 0 : lv_error(conn);
        lv_snap_cache_drop(b, uuid, name);
    } else {
        r = 0; /* DISK was not in it: nothing to change */
    }
out:
    pthread_mutex_unlock(&b->snap_lock);
    return r;
}

/* Metadata-only delete of snapshot NAME (design issue8 §2.4 step 1). */
static int lv_snapshot_drop(struct cfs_backend *be, const char *dom_name,
                            const char *name)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    struct lv_backend *b = lv(be);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    int r;

    r = lv_lookup(b, dom_name, &conn, &dom);
    if (r < 0)
        return r;
    snap = virDomainSnapshotLookupByName(dom, name, 0);
    if (!snap)
        return lv_error(conn);
    virDomainGetUUIDString(dom, uuid);
    /* under snap_lock: no re-read caches the snapshot meanwhile */
    pthread_mutex_lock(&b->snap_lock);
    r = virDomainSnapshotDelete(snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0
            ? lv_error(conn)
            : 0;
    /* its children took its parent */
    lv_snap_cache_drop_family(b, uuid, name);
    pthread_mutex_unlock(&b->snap_lock);
    return r;
}

/* Redefine snapshot NAME with DISK's <disks> source NEW_SOURCE (design
 * issue8 §2.4 step 2; probe 2 of scripts/probe/issue8.sh). */
/* Redefine snapshot NAME of DOM_NAME with REWRITE applied to its XML
 * (_SECURE: a redefine must not lose the <domain> copy's secrets) for
 * DISK and NEW_SOURCE; WHAT says, for -ENOENT, what REWRITE did not find.
 * The read, the edit and the redefine under snap_lock: no other change
 * of NAME's metadata is lost between them (design issue10 §3.6), and no
 * re-read caches the old disk list after the change (the entry is
 * dropped and fetched again). Without
 * _CREATE_CURRENT an existing snapshot keeps its current flag. */
static int lv_snapshot_rewrite(struct cfs_backend *be, const char *dom_name,
                               const char *name, const char *disk,
                               const char *new_source,
                               int (*rewrite)(const char *, const char *,
                                              const char *, char **),
                               const char *what)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    _cleanup_snap_ virDomainSnapshotPtr redefined = NULL;
    _cleanup_free_ char *snap_xml = NULL, *new_xml = NULL;
    struct lv_backend *b = lv(be);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    int r;

    r = lv_lookup(b, dom_name, &conn, &dom);
    if (r < 0)
        return r;
    snap = virDomainSnapshotLookupByName(dom, name, 0);
    if (!snap)
        return lv_error(conn);
    virDomainGetUUIDString(dom, uuid);
    /* read, edit and redefine under snap_lock: a concurrent forget or
     * rewrite of NAME must not be undone by an XML read before it */
    pthread_mutex_lock(&b->snap_lock);
    snap_xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    if (!snap_xml) {
        r = lv_error(conn);
        goto out;
    }
    r = rewrite(snap_xml, disk, new_source, &new_xml);
    if (r == -ENOENT) {
        cfs_backend_set_errmsg("snapshot %s of domain %s %s %s", name, dom_name,
                               what, disk);
        goto out;
    }
    if (r < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of snapshot %s of domain %s",
                               name, dom_name);
        r = -EIO;
        goto out;
    }
    redefined = virDomainSnapshotCreateXML(dom, new_xml,
                                           VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE);
    r = redefined ? 0 : lv_error(conn);
    lv_snap_cache_drop(b, uuid, name);
out:
    pthread_mutex_unlock(&b->snap_lock);
    return r;
}

static int lv_snapshot_retarget(struct cfs_backend *be, const char *dom_name,
                                const char *name, const char *disk,
                                const char *new_source)
{
    if (!new_source || !*new_source) {
        cfs_backend_set_errmsg("a snapshot needs a source to name");
        return -EINVAL;
    }
    return lv_snapshot_rewrite(be, dom_name, name, disk, new_source,
                               cfs_domxml_snapshot_retarget,
                               "names no file for disk");
}

static int lv_snapshot_domain_source(struct cfs_backend *be, const char *dom_name,
                                     const char *name, const char *disk,
                                     const char *new_source)
{
    return lv_snapshot_rewrite(be, dom_name, name, disk, new_source,
                               cfs_domxml_snapshot_domain_source,
                               "has no file disk in its domain copy:");
}

/* Redefine snapshot NAME with DISKS[i]'s external source NEW_SOURCES[i]
 * (issue 10, revert), made libvirt's current snapshot with MAKE_CURRENT
 * (_REDEFINE | _CURRENT: qemuSnapshotSetCurrent rewrites the old current
 * one's metadata). The XML is read, edited and redefined under snap_lock,
 * so that no other change of NAME's metadata (a forget of another disk)
 * is lost between the read and the redefine. */
static int lv_snapshot_retarget_multi(struct cfs_backend *be, const char *dom_name,
                                      const char *name, size_t n,
                                      const char *const *disks,
                                      const char *const *new_sources,
                                      bool make_current)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    _cleanup_snap_ virDomainSnapshotPtr redefined = NULL;
    _cleanup_free_ char *xml = NULL;
    struct lv_backend *b = lv(be);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    unsigned flags = VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
    int r = 0;

    if (!name || n == 0 || !disks || !new_sources) {
        cfs_backend_set_errmsg("a retarget needs a snapshot and at least one disk");
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        if (!disks[i] || !new_sources[i] || !*new_sources[i]) {
            cfs_backend_set_errmsg("a snapshot needs a source to name");
            return -EINVAL;
        }
    r = lv_lookup(b, dom_name, &conn, &dom);
    if (r < 0)
        return r;
    snap = virDomainSnapshotLookupByName(dom, name, 0);
    if (!snap)
        return lv_error(conn);
    virDomainGetUUIDString(dom, uuid);
    pthread_mutex_lock(&b->snap_lock);
    /* _SECURE: a redefine must not lose the <domain> copy's secrets */
    xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    if (!xml)
        r = lv_error(conn);
    for (size_t i = 0; r == 0 && i < n; i++) {
        _cleanup_free_ char *edited = NULL;

        r = cfs_domxml_snapshot_retarget(xml, disks[i], new_sources[i], &edited);
        if (r == -ENOENT) {
            cfs_backend_set_errmsg("snapshot %s of domain %s names no file for disk %s",
                                   name, dom_name, disks[i]);
        } else if (r < 0) {
            cfs_backend_set_errmsg("cannot parse the XML of snapshot %s of domain %s",
                                   name, dom_name);
            r = -EIO;
        } else {
            free(xml);
            xml = TAKE_PTR(edited);
        }
    }
    if (r == 0) {
        if (make_current)
            flags |= VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
        redefined = virDomainSnapshotCreateXML(dom, xml, flags);
        r = redefined ? 0 : lv_error(conn);
        lv_snap_cache_drop(b, uuid, name);
    }
    pthread_mutex_unlock(&b->snap_lock);
    return r;
}

/* ---- the guest agent (issue 10) ----------------------------------------- */

/* libvirt's wait for DOM's agent, for every later agent call (design
 * issue10 §0.5: the default is forever; the call takes no job and
 * returns at once even while an agent command waits). */
static int lv_agent_set_timeout(struct cfs_backend *be, const char *dom_name,
                                int seconds)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r;

    if (seconds <= 0) {
        cfs_backend_set_errmsg("an agent timeout of %d seconds is not a bound", seconds);
        return -EINVAL;
    }
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainAgentSetResponseTimeout(dom, seconds, 0) < 0)
        return lv_error_op(conn, CFS_LVERR_OP_AGENT);
    return 0;
}

/* Freeze or thaw every filesystem of the guest (no mount points: all). */
static int lv_agent_fs(struct cfs_backend *be, const char *dom_name, bool thaw,
                       unsigned *n)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r;

    if (n)
        *n = 0;
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    r = thaw ? virDomainFSThaw(dom, NULL, 0, 0) : virDomainFSFreeze(dom, NULL, 0, 0);
    if (r < 0)
        return lv_error_op(conn, CFS_LVERR_OP_AGENT);
    if (n)
        *n = (unsigned)r;
    return 0;
}

/* ---- live block jobs ---------------------------------------------------- */

/* The file of layer REF of DISK: REF itself when it is a path, else
 * ("vda[N]", libvirt's notation) the layer with index N in DOM's live XML
 * (REF again when that cannot be read). Caller frees. */
static char *lv_layer_path(virDomainPtr dom, const char *disk, const char *ref)
{
    _cleanup_free_ char *xml = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    const char *br = strchr(ref, '[');

    if (ref[0] == '/' || !br)
        return cfs_xstrdup(ref);
    xml = virDomainGetXMLDesc(dom, 0);
    if (!xml || cfs_domxml_parse(xml, &x) < 0) {
        virResetLastError();
        return cfs_xstrdup(ref);
    }
    unsigned idx = (unsigned)strtoul(br + 1, NULL, 10);
    for (size_t i = 0; i < x.domain->n_disks; i++) {
        const struct cfs_disk *d = &x.domain->disks[i];

        for (size_t l = 0; cfs_streq(d->target, disk) && l < d->n_layers; l++)
            if (x.disks[i].index[l] == idx)
                return cfs_xstrdup(d->layers[l].path);
    }
    return cfs_xstrdup(ref);
}

static int lv_commit_start(struct cfs_backend *be, const char *dom_name,
                           const char *disk, const char *top, const char *base,
                           bool active, uint64_t bandwidth)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    unsigned int flags = active ? VIR_DOMAIN_BLOCK_COMMIT_ACTIVE : 0;
    int r;

    if (bandwidth > 0)
        flags |= VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES;
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainBlockCommit(dom, disk, base, top, bandwidth, flags) < 0) {
        r = lv_error(conn);
        if (r != -EBUSY || !msg_is_lock(cfs_backend_errmsg()))
            return r;
        /* QEMU says 'Failed to get "write" lock' both when BASE and when
         * TOP is held by another process, and libvirt drops QEMU's hint
         * that names it: look for the holder, else name both */
        _cleanup_free_ char *top_path = lv_layer_path(dom, disk, top);
        _cleanup_free_ char *base_path = lv_layer_path(dom, disk, base);
        switch (lv_files_local(be, NULL) ? lv_local_lone_holders(top_path, base_path) : 0) {
        case 1:
            return lv_name_locked_image(r, top_path, NULL);
        case 2:
            return lv_name_locked_image(r, base_path, NULL);
        default:
            return lv_name_locked_image(r, base_path, top_path);
        }
    }
    return 0;
}

/* Whether REF (a path or "vda[N]") names the active layer of DISK in the
 * live XML X: 1 yes, 0 no, -1 DISK is not in X (libvirt's call will say
 * so). */
static int lv_is_active_layer(const struct cfs_domxml *x, const char *disk,
                              const char *ref, bool files_local)
{
    const char *br = strchr(ref, '[');

    for (size_t i = 0; i < x->domain->n_disks; i++) {
        const struct cfs_disk *d = &x->domain->disks[i];

        if (!cfs_streq(d->target, disk))
            continue;
        if (d->n_layers == 0)
            return 0;
        if (ref[0] != '/' && br) {
            char *end = NULL;
            unsigned long idx = strtoul(br + 1, &end, 10);

            size_t len = (size_t)(br - ref);

            return len == strlen(disk) && strncmp(ref, disk, len) == 0 &&
                   end && strcmp(end, "]") == 0 && x->disks[i].index[0] == idx;
        }
        return files_local ? lv_same_file(d->layers[0].path, ref)
                           : cfs_streq(d->layers[0].path, ref);
    }
    return -1;
}

/* A pull into the active layer with BASE kept (design issue8 §2.1):
 * virDomainBlockRebase without _COPY is qemuDomainBlockPullCommon. No
 * _RELATIVE: the new backing string is BASE's absolute path. */
static int lv_pull_start(struct cfs_backend *be, const char *dom_name,
                         const char *disk, const char *top, const char *base,
                         uint64_t bandwidth)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    unsigned int flags = 0;
    int r;

    if (!top || !*top || !base || !*base) {
        cfs_backend_set_errmsg("a pull needs the active layer and a base");
        return -EINVAL;
    }
    if (bandwidth > 0)
        flags |= VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES;
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    /* libvirt has no top for a pull: it always writes the active layer.
     * Check it is still the one the caller planned for (a shut-off
     * domain is left to libvirt's own refusal). */
    if (virDomainIsActive(dom) == 1) {
        _cleanup_free_ char *xml = virDomainGetXMLDesc(dom, 0);
        _cleanup_domxml_ struct cfs_domxml x = {0};

        if (!xml)
            return lv_error(conn);
        if (cfs_domxml_parse(xml, &x) < 0) {
            cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
            return -EIO;
        }
        if (lv_is_active_layer(&x, disk, top, lv_files_local(be, NULL)) == 0) {
            cfs_backend_set_errmsg("%s is not the active layer of disk %s of domain %s: a pull writes only into the active layer",
                                   top, disk, dom_name);
            return -EINVAL;
        }
    }
    if (virDomainBlockRebase(dom, disk, base, (unsigned long)bandwidth, flags) < 0) {
        r = lv_error(conn);
        if (r != -EBUSY || !msg_is_lock(cfs_backend_errmsg()))
            return r;
        /* as lv_commit_start: QEMU's lock refusal names no image */
        _cleanup_free_ char *top_path = lv_layer_path(dom, disk, top);
        _cleanup_free_ char *base_path = lv_layer_path(dom, disk, base);
        switch (lv_files_local(be, NULL) ? lv_local_lone_holders(top_path, base_path) : 0) {
        case 1:
            return lv_name_locked_image(r, top_path, NULL);
        case 2:
            return lv_name_locked_image(r, base_path, NULL);
        default:
            return lv_name_locked_image(r, base_path, top_path);
        }
    }
    return 0;
}

static int lv_job_get(struct cfs_backend *be, const char *dom_name,
                      const char *disk, struct cfs_job_progress *out)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    virDomainBlockJobInfo info = {0};
    int r;

    *out = (struct cfs_job_progress){0};
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    /* BANDWIDTH_BYTES: info.bandwidth in bytes/s (MiB/s without it) */
    r = virDomainGetBlockJobInfo(dom, disk, &info,
                                 VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES);
    if (r < 0)
        return lv_error_op(conn, CFS_LVERR_OP_JOB);
    if (r == 0)
        return 0;
    out->present = true;
    out->type = lv_map_job_type(info.type);
    out->cur = info.cur;
    out->end = info.end;
    out->bandwidth = info.bandwidth;
    /* A copy has a ready phase as an active commit has. Ready is
     * libvirt's word (<mirror ready='yes'>), not cur == end: a ready
     * mirror copying a fresh guest write is short of its end for a moment
     * and still ready (libvirt pivots it). */
    if (out->type == CFS_JOB_ACTIVE_COMMIT || out->type == CFS_JOB_COPY) {
        _cleanup_free_ char *xml = virDomainGetXMLDesc(dom, 0);

        if (!xml)
            return lv_error(conn);
        (void)cfs_domxml_mirror_ready(xml, disk, &out->ready);
    }
    return 0;
}

/* The block-job calls that only act (no answer but success): each looks
 * the domain up, makes its call, and maps libvirt's error; OP says which
 * call (a pivot's "not ready yet" is told apart). */
enum lv_job_call {
    LV_JOB_PIVOT,
    LV_JOB_ABORT,
    LV_JOB_SET_SPEED,
};

static int lv_job_call(struct cfs_backend *be, const char *dom_name,
                       const char *disk, enum lv_job_call call,
                       uint64_t bandwidth)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    enum cfs_lverr_op op = CFS_LVERR_OP_JOB;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    switch (call) {
    case LV_JOB_PIVOT:
        /* "block copy still active: block job '...' not ready for pivot
         * yet" (VIR_ERR_BLOCK_COPY_ACTIVE) is -EAGAIN; an image another
         * process holds (-EBUSY) will not become ready by waiting */
        op = CFS_LVERR_OP_PIVOT;
        r = virDomainBlockJobAbort(dom, disk, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT);
        break;
    case LV_JOB_ABORT:
        r = virDomainBlockJobAbort(dom, disk, 0);
        break;
    case LV_JOB_SET_SPEED:
        /* no job: "disk vda does not have an active block job"
         * (VIR_ERR_INVALID_ARG), a stopped domain:
         * VIR_ERR_OPERATION_INVALID; both -ENOENT */
        r = virDomainBlockJobSetSpeed(dom, disk, bandwidth,
                                      VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES);
        break;
    default:
        return -EINVAL;
    }
    return r < 0 ? lv_error_op(conn, op) : 0;
}

static int lv_job_pivot(struct cfs_backend *be, const char *dom_name,
                        const char *disk)
{
    return lv_job_call(be, dom_name, disk, LV_JOB_PIVOT, 0);
}

static int lv_job_abort(struct cfs_backend *be, const char *dom_name,
                        const char *disk)
{
    return lv_job_call(be, dom_name, disk, LV_JOB_ABORT, 0);
}

static int lv_job_set_bandwidth(struct cfs_backend *be, const char *dom_name,
                                const char *disk, uint64_t bandwidth)
{
    return lv_job_call(be, dom_name, disk, LV_JOB_SET_SPEED, bandwidth);
}

/* ---- offline commit ----------------------------------------------------- */

static void fdp(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

/* The image named by qemu-img's locking hint ("Is another process using
 * the image [NAME]?") in ERR, made absolute against the directory of
 * IMAGE (the file qemu-img was given: a backing file's relative name is
 * relative to it); IMAGE itself when the hint is missing. */
static char *qemu_img_locked_image(const char *err, const char *image)
{
    const char *p = strstr(err, "using the image [");
    const char *end;

    if (!p)
        return cfs_xstrdup(image);
    p += strlen("using the image [");
    end = strchr(p, ']');
    if (!end || end == p)
        return cfs_xstrdup(image);
    int len = (int)(end - p);
    const char *slash = strrchr(image, '/');
    if (*p == '/' || !slash)
        return cfs_xasprintf("%.*s", len, p);
    return cfs_xasprintf("%.*s/%.*s", (int)(slash - image), image, len, p);
}

/* Run qemu-img with ARGV (no shell); the image it works on is the last
 * argument. Its stderr becomes the error message; -ENOSPC if it ran out
 * of space, -EBUSY if another process holds an image (QEMU's locking;
 * the message names that image), -EIO for any other failure. */
static int lv_run_qemu_img(char *const argv[])
{
    _cleanup_(fdp) int rfd = -1;
    _cleanup_(fdp) int wfd = -1;
    posix_spawn_file_actions_t fa;
    char err[QEMU_IMG_ERR_MAX];
    size_t len = 0;
    pid_t pid;
    int pipefd[2], status, r;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    rfd = pipefd[0];
    wfd = pipefd[1];

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, wfd, STDERR_FILENO);
    r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        cfs_backend_set_errmsg("cannot run %s: %s", argv[0], strerror(r));
        return -r;
    }
    close(wfd);
    wfd = -1;

    for (;;) {
        ssize_t n;

        if (len + 1 >= sizeof(err)) {
            char sink[512];
            n = read(rfd, sink, sizeof(sink));
        } else {
            n = read(rfd, err + len, sizeof(err) - 1 - len);
            if (n > 0)
                len += (size_t)n;
        }
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
    }
    err[len] = '\0';
    while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' '))
        err[--len] = '\0';

    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            cfs_backend_set_errmsg("waitpid(%s): %s", argv[0], strerror(errno));
            return -EIO;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;

    if (len)
        cfs_backend_set_errmsg("%s", err);
    else
        cfs_backend_set_errmsg("%s %s failed (status %d)", argv[0], argv[1], status);
    if (msg_is_lock(err)) {
        size_t n = 0;

        while (argv[n + 1])
            n++;
        _cleanup_free_ char *image = qemu_img_locked_image(err, argv[n]);
        return lv_name_locked_image(-EBUSY, image, NULL);
    }
    /* qemu-img reports on stderr only: its text is all there is */
    return msg_has(err, "No space left") ? -ENOSPC : -EIO;
}

/* S with every NEEDLE replaced by WITH. Caller frees. */
static char *str_replace_all(const char *s, const char *needle, const char *with)
{
    struct cfs_buf b = {0};
    size_t nl = strlen(needle);
    const char *p;

    if (!nl)
        return cfs_xstrdup(s);
    while ((p = strstr(s, needle))) {
        cfs_buf_put(&b, s, (size_t)(p - s));
        cfs_buf_put(&b, with, strlen(with));
        s = p + nl;
    }
    cfs_buf_put(&b, s, strlen(s));
    return cfs_buf_steal(&b);
}

static const char *fmt_or(const char *fmt, const char *dflt)
{
    return fmt && *fmt ? fmt : dflt;
}

static int lv_define(virConnectPtr conn, const char *xml)
{
    virDomainPtr d = virDomainDefineXML(conn, xml);

    if (!d)
        return lv_error(conn);
    virDomainFree(d);
    return 0;
}

/* The definition after an offline merge of TOP into BASE (BL, its layer)
 * on disk DISK_TARGET: an active commit's disk now has BASE as its source;
 * after a middle one, a chain written into the inactive XML (libvirt does
 * that after a live snapshot) would still name TOP: it goes, and libvirt
 * probes the chain again. Edits the inactive XML as it is now, read and
 * defined under the domain's definition lock (see lv_def_lock): the XML
 * lv_offline_commit read before its qemu-img work may predate another
 * disk's change. */
static int lv_offline_redefine(struct lv_backend *b, virConnectPtr conn,
                               virDomainPtr dom, const char *dom_name,
                               const char *disk_target, const char *top,
                               const char *base, const struct cfs_layer *bl,
                               bool active)
{
    _cleanup_(lv_def_unlockp) struct lv_def_lock *lk = lv_def_lock(b, dom);
    (void)lk; /* held until return: clang calls it unused otherwise */
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL, *new_xml = NULL;
    const struct cfs_disk *disk;
    const char *src;
    bool changed = false;
    int r;

    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!xml)
        return lv_error(conn);
    if (!active) {
        r = cfs_domxml_drop_backing_store(xml, disk_target, &new_xml, &changed);
        if (r < 0 || !changed)
            return 0;
        return lv_define(conn, new_xml);
    }
    /* the disk is the engine's alone while it merges; a source other
     * than TOP now was set by someone else, and is not ours to undo */
    if (cfs_domxml_parse(xml, &x) < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
        return -EIO;
    }
    disk = cfs_domain_find_disk(x.domain, disk_target);
    src = disk && disk->n_layers > 0 ? disk->layers[0].path : NULL;
    if (!src || !lv_same_file(src, top)) {
        cfs_backend_set_errmsg("the definition of disk '%s' of domain '%s' changed during "
                               "the merge: its source is now '%s', not '%s'", disk_target,
                               dom_name, src ? src : "(none)", top);
        return -EBUSY;
    }
    r = cfs_domxml_set_disk_source(xml, disk_target, base, fmt_or(bl->format, "raw"),
                                   bl->is_block, &new_xml);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot rewrite the XML of domain %s", dom_name);
        return -EIO;
    }
    return lv_define(conn, new_xml);
}

/* The start of an offline merge of DISK_TARGET of the shut-off domain
 * DOM_NAME: the connection, the domain, its inactive XML (*XML) parsed
 * into *X with every chain completed from the image headers, and the disk
 * in it (*DISK). 0, or a negative errno with the backend's message. */
static int lv_offline_open(struct cfs_backend *be, const char *dom_name,
                           const char *disk_target, virConnectPtr *conn,
                           virDomainPtr *dom, char **xml, struct cfs_domxml *x,
                           struct cfs_disk **disk)
{
    int r;

    if (!lv_files_local(be, NULL)) {
        cfs_backend_set_errmsg("an offline merge runs qemu-img on the image files, and "
                               "they are not on this machine (%s); libvirt has no API "
                               "for it: start the domain and rmdir again",
                               lv(be)->local_why);
        return -EOPNOTSUPP;
    }
    r = lv_lookup(lv(be), dom_name, conn, dom);
    if (r < 0)
        return r;
    r = virDomainIsActive(*dom);
    if (r < 0)
        return lv_error(*conn);
    if (r > 0) {
        cfs_backend_set_errmsg("domain '%s' is not shut off", dom_name);
        return -EBUSY;
    }
    *xml = virDomainGetXMLDesc(*dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!*xml)
        return lv_error(*conn);
    if (cfs_domxml_parse(*xml, x) < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
        return -EIO;
    }
    *disk = cfs_domain_find_disk(x->domain, disk_target);
    if (!*disk) {
        cfs_backend_set_errmsg("domain '%s' has no disk '%s'", dom_name, disk_target);
        return -ENOENT;
    }
    lv_complete_chains(NULL, NULL, x, false, true);
    return 0;
}

static int lv_offline_commit(struct cfs_backend *be, const char *dom_name,
                             const char *disk_target, const char *top,
                             const char *base, bool active)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL, *top_backing = NULL;
    struct cfs_image_info info = {0};
    struct cfs_disk *disk;
    const struct cfs_layer *t, *bl;
    size_t i;
    int r;

    r = lv_offline_open(be, dom_name, disk_target, &conn, &dom, &xml, &x, &disk);
    if (r < 0)
        return r;

    for (i = 0; i < disk->n_layers; i++)
        if (cfs_file_same(NULL, disk->layers[i].path, NULL, top))
            break;
    if (i == disk->n_layers) {
        cfs_backend_set_errmsg("'%s' is not in the chain of disk '%s'", top, disk_target);
        return -ENOENT;
    }
    if (i + 1 >= disk->n_layers ||
        !cfs_file_same(NULL, disk->layers[i + 1].path, NULL, base)) {
        cfs_backend_set_errmsg("'%s' is not the backing file of '%s'", base, top);
        return -EINVAL;
    }
    if (active != (i == 0)) {
        cfs_backend_set_errmsg("'%s' is %sthe active layer of disk '%s'", top,
                               active ? "not " : "", disk_target);
        return -EINVAL;
    }
    t = &disk->layers[i];
    bl = &disk->layers[i + 1];

    /* The image header is what qemu-img commit follows: it must agree. */
    r = cfs_image_probe(top, t->format, &info);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot read the header of '%s': %s", top, strerror(-r));
        return r;
    }
    if (info.backing)
        top_backing = cfs_image_resolve_backing(top, info.backing);
    /* The two-file commit names BASE's format itself: only as TOP's
     * header declares it (an undeclared raw keeps QEMU's probing guard),
     * and only when BASE does not grow (QEMU zero-fills a grown BASE only
     * when it sees what lies below BASE; here it would not). */
    bool two_files = info.backing_format && cfs_streq(info.backing_format, bl->format);
    uint64_t top_size = info.virtual_size;
    cfs_image_info_clear(&info);
    if (!top_backing || !lv_same_file(top_backing, base)) {
        cfs_backend_set_errmsg("the backing file of '%s' is '%s', not '%s'", top,
                               top_backing ? top_backing : "(none)", base);
        return -EINVAL;
    }
    if (two_files) {
        r = cfs_image_probe(base, bl->format, &info);
        two_files = r == 0 && info.virtual_size >= top_size;
        cfs_image_info_clear(&info);
    }

    {
        /* TOP and BASE only (O(1) in the chain's depth), by the names just
         * checked (TOP probed, BASE the same file as TOP's backing), or
         * TOP's name, and QEMU opens the chain below it */
        struct cfs_layer tl = *t, bl2 = *bl;
        tl.path = (char *)top;
        bl2.path = (char *)base;
        _cleanup_free_ char *json = two_files ? cfs_image_commit_json(&tl, &bl2) : NULL;
        char *argv_json[] = { QEMU_IMG, "commit", "-q", "-d", json, NULL };
        char *argv[] = { QEMU_IMG, "commit", "-q", "-d", "-f",
                         (char *)fmt_or(t->format, "qcow2"), (char *)top, NULL };

        r = lv_run_qemu_img(json ? argv_json : argv);
        if (r < 0 && json) {
            /* QEMU's message quotes the json: name; the file is TOP */
            _cleanup_free_ char *msg = str_replace_all(cfs_backend_errmsg(), json, top);
            cfs_backend_set_errmsg("%s", msg);
        }
        if (r < 0)
            return r;
    }

    if (!active) {
        const struct cfs_layer *above = &disk->layers[i - 1];
        char *argv[] = { QEMU_IMG, "rebase", "-q", "-u",
                         "-f", (char *)fmt_or(above->format, "qcow2"),
                         "-b", (char *)base,
                         "-F", (char *)fmt_or(bl->format, "raw"),
                         (char *)above->path, NULL };

        r = lv_run_qemu_img(argv);
        if (r < 0)
            return r;
    }
    return lv_offline_redefine(lv(be), conn, dom, dom_name, disk_target, top,
                               base, bl, active);
}

/* ---- copy (issue 8 §1) --------------------------------------------------- */

static int lv_image_create(struct cfs_backend *be, const char *path,
                           const char *like, const char *like_format,
                           const char *backing, const char *backing_format,
                           struct cfs_file_id *id)
{
    struct cfs_layer l = { .path = (char *)like, .format = (char *)like_format };
    struct stat st;
    uint64_t size;
    int r;

    if (!lv_files_local(be, NULL)) {
        cfs_backend_set_errmsg("chainfs creates the copy's destination itself, and the "
                               "image files are not on this machine (%s)",
                               lv(be)->local_why);
        return -EOPNOTSUPP;
    }
    if (!path || path[0] != '/') {
        cfs_backend_set_errmsg("the destination must be an absolute path");
        return -EINVAL;
    }
    r = overlay_size(&l, &size);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot read the virtual size of %s (%s): %s", like,
                               like_format ? like_format : "?", strerror(-r));
        return r;
    }
    r = cfs_image_create(path, backing, backing ? fmt_or(backing_format, "raw") : NULL,
                         size, &st);
    if (r == -EEXIST) {
        cfs_backend_set_errmsg("'%s' already exists", path);
        return r;
    }
    if (r < 0) {
        cfs_backend_set_errmsg("cannot create '%s': %s", path, strerror(-r));
        return r;
    }
    if (id) {
        cfs_file_identify(id, path, true);
        /* the file this call made, whatever the path names by now */
        id->known = true;
        id->dev = (uint64_t)st.st_dev;
        id->ino = (uint64_t)st.st_ino;
    }
    return 0;
}

static int lv_copy_start(struct cfs_backend *be, const char *dom_name,
                         const char *disk, const char *dest, bool shallow,
                         uint64_t bandwidth)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_free_ char *xml = NULL;
    virTypedParameter param = {0};
    unsigned int flags = VIR_DOMAIN_BLOCK_COPY_REUSE_EXT |
                         VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
    int r;

    if (!dest || dest[0] != '/') {
        cfs_backend_set_errmsg("the destination must be an absolute path");
        return -EINVAL;
    }
    if (shallow)
        flags |= VIR_DOMAIN_BLOCK_COPY_SHALLOW;
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    xml = cfs_domxml_copy_dest_xml(dest, "qcow2");
    if (!xml) {
        cfs_backend_set_errmsg("cannot build the copy destination XML");
        return -EIO;
    }
    if (bandwidth > 0) {
        snprintf(param.field, sizeof(param.field), "%s",
                 VIR_DOMAIN_BLOCK_COPY_BANDWIDTH);
        param.type = VIR_TYPED_PARAM_ULLONG;
        param.value.ul = bandwidth;
    }
    if (virDomainBlockCopy(dom, disk, xml, bandwidth > 0 ? &param : NULL,
                           bandwidth > 0 ? 1 : 0, flags) < 0) {
        r = lv_error(conn);
        if (r != -EBUSY || !msg_is_lock(cfs_backend_errmsg()))
            return r;
        return lv_name_locked_image(r, dest, NULL);
    }
    return 0;
}

/* qemu-img convert in a child that dies with this process (prctl
 * PDEATHSIG: posix_spawn cannot set it), polled so that *CANCEL can kill
 * it. Its stderr (the first QEMU_IMG_ERR_MAX bytes) is the message. */
static int lv_image_copy_data(struct cfs_backend *be, const char *src,
                              const char *dst, const char *format,
                              const char *backing, const char *backing_format,
                              uint64_t bandwidth, const volatile int *cancel)
{
    char rate[32], err[QEMU_IMG_ERR_MAX];
    char *argv[16];
    size_t n = 0, len = 0;
    int pipefd[2], status = 0;
    pid_t pid, parent = getpid();

    if (!lv_files_local(be, NULL)) {
        cfs_backend_set_errmsg("%s is not on this machine (%s)", dst, lv(be)->local_why);
        return -EOPNOTSUPP;
    }
    argv[n++] = QEMU_IMG;
    argv[n++] = "convert";
    argv[n++] = "-n";
    argv[n++] = "-f";
    argv[n++] = (char *)fmt_or(format, "qcow2");
    argv[n++] = "-O";
    argv[n++] = (char *)fmt_or(format, "qcow2");
    if (backing) {
        argv[n++] = "-B";
        argv[n++] = (char *)backing;
        argv[n++] = "-F";
        argv[n++] = (char *)fmt_or(backing_format, "qcow2");
    }
    if (bandwidth > 0) {
        snprintf(rate, sizeof(rate), "%llu", (unsigned long long)bandwidth);
        argv[n++] = "-r";
        argv[n++] = rate;
    }
    argv[n++] = (char *)src;
    argv[n++] = (char *)dst;
    argv[n] = NULL;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int r = -errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return r;
    }
    if (pid == 0) {
        /* the child: async-signal-safe calls only */
        int nul = open("/dev/null", O_RDWR);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (nul >= 0) {
            dup2(nul, STDIN_FILENO);
            dup2(nul, STDOUT_FILENO);
        }
        dup2(pipefd[1], STDERR_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(pipefd[1]);
    fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
    bool killed = false;
    for (;;) {
        ssize_t rd;
        do {
            char sink[512];
            if (len + 1 < sizeof(err)) {
                rd = read(pipefd[0], err + len, sizeof(err) - 1 - len);
                if (rd > 0)
                    len += (size_t)rd;
            } else {
                rd = read(pipefd[0], sink, sizeof(sink));
            }
        } while (rd > 0);
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            close(pipefd[0]);
            cfs_backend_set_errmsg("waitpid(qemu-img): %s", strerror(errno));
            return -EIO;
        }
        if (!killed && cancel && *cancel) {
            kill(pid, SIGKILL);
            killed = true;
        }
        struct timespec ts = { 0, 50 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    close(pipefd[0]);
    err[len] = '\0';
    while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' '))
        err[--len] = '\0';
    if (killed) {
        cfs_backend_set_errmsg("qemu-img convert into %s canceled", dst);
        return -ECANCELED;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (len)
            cfs_backend_set_errmsg("%s", err);
        else
            cfs_backend_set_errmsg("qemu-img convert %s %s failed (status %d)", src, dst,
                                   status);
        return msg_has(err, "No space left") ? -ENOSPC : -EIO;
    }
    if (!cfs_streq(fmt_or(format, "qcow2"), "raw")) {
        /* A convert killed earlier (with the daemon: PDEATHSIG) into this
         * same file may have left clusters allocated that nothing refers
         * to; this convert rewrote the data, and the leaks go now, before
         * the copy is pivoted onto. Corruption fails the copy (exit 2). */
        char *chk[] = { QEMU_IMG, "check", "-q", "-r", "leaks", "-f",
                        (char *)fmt_or(format, "qcow2"), (char *)dst, NULL };
        int c = lv_run_qemu_img(chk);
        if (c < 0)
            return c == -EBUSY || c == -ENOSPC ? -EIO : c;
    }
    int fd = open(dst, O_RDONLY | O_CLOEXEC);
    int r = fd < 0 ? -errno : fsync(fd) < 0 ? -errno : 0;
    if (fd >= 0)
        close(fd);
    if (r < 0)
        cfs_backend_set_errmsg("fsync %s: %s", dst, strerror(-r));
    return r;
}

static int lv_image_check(struct cfs_backend *be, const char *path,
                          const char *format)
{
    if (!lv_files_local(be, NULL)) {
        cfs_backend_set_errmsg("%s is not on this machine (%s)", path, lv(be)->local_why);
        return -EOPNOTSUPP;
    }
    char *argv[] = { QEMU_IMG, "check", "-q", "-f", (char *)fmt_or(format, "qcow2"),
                     (char *)path, NULL };
    int r = lv_run_qemu_img(argv);
    /* exit 2 (corruptions), 3 (leaks) and 1 (cannot check) all fail */
    return r == -EBUSY || r == -ENOSPC ? -EIO : r;
}

/* The inactive XML of DOM, parsed (X) and as text (*XML); 1 when DOM is
 * persistent, 0 when transient (nothing filled), or -errno. */
static int lv_inactive_xml(virConnectPtr conn, virDomainPtr dom, char **xml,
                           struct cfs_domxml *x)
{
    int p = virDomainIsPersistent(dom);

    if (p < 0)
        return lv_error(conn);
    if (p == 0)
        return 0;
    *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!*xml)
        return lv_error(conn);
    if (cfs_domxml_parse(*xml, x) < 0) {
        cfs_backend_set_errmsg("cannot parse the persistent XML of the domain");
        return -EIO;
    }
    return 1;
}

static int lv_persistent_source_get(struct cfs_backend *be, const char *dom_name,
                                    const char *disk, char **path)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_free_ char *xml = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    int r;

    *path = NULL;
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    r = lv_inactive_xml(conn, dom, &xml, &x);
    if (r <= 0)
        return r;
    const struct cfs_disk *d = cfs_domain_find_disk(x.domain, disk);
    if (!d) {
        cfs_backend_set_errmsg("the persistent definition of domain '%s' has no disk '%s'",
                               dom_name, disk);
        return -ENOENT;
    }
    if (d->n_layers > 0)
        *path = cfs_xstrdup(d->layers[0].path);
    return 0;
}

/* Redefine DOM's persistent definition with DISKS[i]'s source PATHS[i]
 * (a file of FORMATS[i], "qcow2" when NULL) and no <backingStore>: one
 * define, the inactive XML read and defined under the domain's
 * definition lock (see lv_def_lock: a concurrent offline merge or
 * snapshot of another disk must not be undone by an XML read before it).
 * REFUSE_RUNNING: -EBUSY for an active domain (issue 10's revert). */
static int lv_persistent_define(struct cfs_backend *be, const char *dom_name,
                                size_t n, const char *const *disks,
                                const char *const *paths,
                                const char *const *formats, bool refuse_running)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_free_ char *xml = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_(lv_def_unlockp) struct lv_def_lock *lk = NULL;
    int r;

    if (n == 0 || !disks || !paths) {
        cfs_backend_set_errmsg("no disk to define");
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!disks[i] || !paths[i] || !*paths[i]) {
            cfs_backend_set_errmsg("every disk to define needs a target and a source");
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (cfs_streq(disks[i], disks[j])) {
                cfs_backend_set_errmsg("disk %s is named twice", disks[i]);
                return -EINVAL;
            }
    }
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    lk = lv_def_lock(lv(be), dom);
    if (refuse_running) {
        int active = virDomainIsActive(dom);

        if (active < 0)
            return lv_error(conn);
        if (active) {
            cfs_backend_set_errmsg("domain '%s' is running: a new definition would only "
                                   "apply at its next start", dom_name);
            return -EBUSY;
        }
    }
    r = lv_inactive_xml(conn, dom, &xml, &x);
    if (r < 0)
        return r;
    if (r == 0) {
        cfs_backend_set_errmsg("domain '%s' is transient: it has no persistent definition",
                               dom_name);
        return -ENOENT;
    }
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *edited = NULL;

        if (!cfs_domain_find_disk(x.domain, disks[i])) {
            cfs_backend_set_errmsg("the persistent definition of domain '%s' has no disk '%s'",
                                   dom_name, disks[i]);
            return -ENOENT;
        }
        r = cfs_domxml_set_disk_source(xml, disks[i], paths[i],
                                       fmt_or(formats ? formats[i] : NULL, "qcow2"),
                                       false, &edited);
        if (r < 0) {
            cfs_backend_set_errmsg("cannot rewrite the XML of domain %s", dom_name);
            return -EIO;
        }
        free(xml);
        xml = TAKE_PTR(edited);
    }
    return lv_define(conn, xml);
}

static int lv_persistent_source_set(struct cfs_backend *be, const char *dom_name,
                                    const char *disk, const char *path,
                                    const char *format)
{
    return lv_persistent_define(be, dom_name, 1, &disk, &path, &format, false);
}

static int lv_persistent_sources_set(struct cfs_backend *be, const char *dom_name,
                                     size_t n, const char *const *disks,
                                     const char *const *paths,
                                     const char *const *formats)
{
    return lv_persistent_define(be, dom_name, n, disks, paths, formats, true);
}

/* Offline forward merge (issue 8 §2): `qemu-img rebase` in safe mode
 * copies into TOP every cluster its new backing BASE shows differently
 * from the old chain (what the layers between held), then points TOP's
 * header at BASE. Interrupted, TOP holds only data the chain showed
 * already and still backs onto the old layers: nothing changed for the
 * guest, and rmdir again starts over. */
static int lv_offline_pull(struct cfs_backend *be, const char *dom_name,
                           const char *disk_target, const char *top,
                           const char *base)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL;
    struct cfs_disk *disk;
    size_t b;
    int r;

    r = lv_offline_open(be, dom_name, disk_target, &conn, &dom, &xml, &x, &disk);
    if (r < 0)
        return r;
    if (disk->n_layers < 3 || !cfs_file_same(NULL, disk->layers[0].path, NULL, top)) {
        cfs_backend_set_errmsg("'%s' is not the active layer of disk '%s' over a "
                               "chain of three layers or more", top, disk_target);
        return -EINVAL;
    }
    for (b = 2; b < disk->n_layers; b++)
        if (cfs_file_same(NULL, disk->layers[b].path, NULL, base))
            break;
    if (b == disk->n_layers) {
        cfs_backend_set_errmsg("'%s' is not two or more layers below '%s' in the "
                               "chain of disk '%s'", base, top, disk_target);
        return -EINVAL;
    }
    {
        char *argv[] = { QEMU_IMG, "rebase", "-q",
                         "-f", (char *)fmt_or(disk->layers[0].format, "qcow2"),
                         "-b", (char *)base,
                         "-F", (char *)fmt_or(disk->layers[b].format, "raw"),
                         (char *)top, NULL };
        r = lv_run_qemu_img(argv);
        if (r < 0)
            return r;
    }
    /* a chain written into the inactive XML would still name the layers
     * that left: libvirt re-probes it (the XML edited is read again under
     * the domain's definition lock, see lv_def_lock) */
    return lv_offline_redefine(lv(be), conn, dom, dom_name, disk_target, top,
                               base, &disk->layers[b], false);
}

/* ---- storage volumes --------------------------------------------------- */

/* Delete PATH through the storage pool that holds it. A file libvirt made
 * for a snapshot is unknown to its pool until the pool is refreshed: the
 * pool whose target directory is PATH's is refreshed once before giving
 * up. -ENOENT if no pool holds it. */
static int lv_volume_delete(struct cfs_backend *be, const char *path)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    virStorageVolPtr vol;
    int r = lv_conn(lv(be), &conn);

    if (r < 0)
        return r;
    vol = virStorageVolLookupByPath(conn, path);
    if (!vol) {
        virResetLastError();
        if (lv_pool_refresh_dir(conn, path))
            vol = virStorageVolLookupByPath(conn, path);
    }
    if (!vol) {
        virResetLastError();
        cfs_backend_set_errmsg("no active storage pool of libvirt holds %s", path);
        return -ENOENT;
    }
    r = virStorageVolDelete(vol, 0) < 0 ? lv_error(conn) : 0;
    virStorageVolFree(vol);
    return r;
}

/* Whether a volume is at PATH: 1 if so, 0 if libvirt says "no storage
 * vol with matching path", -errno (and the message) for any other
 * failure. */
static int lv_volume_at(virConnectPtr conn, const char *path)
{
    virStorageVolPtr vol = virStorageVolLookupByPath(conn, path);

    if (vol) {
        virStorageVolFree(vol);
        return 1;
    }
    if (virGetLastErrorCode() != VIR_ERR_NO_STORAGE_VOL)
        return lv_error(conn);
    virResetLastError();
    return 0;
}

/* Whether libvirt's host has a file at PATH (a candidate overlay name,
 * for files that are not local: libvirt would take over an empty file
 * there as the overlay). A volume already known is one; otherwise the
 * active pool whose target directory is PATH's is refreshed (a file put
 * there behind libvirt's back becomes a volume) and asked again. 1, 0,
 * -EOPNOTSUPP if no active pool has that directory (cannot tell), or
 * -errno with libvirt's message: a failure is never "no file". */
static int lv_file_exists(struct cfs_backend *be, const char *path)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_free_ char *tmp = cfs_xstrdup(path);
    const char *dir = dirname(tmp);
    virStoragePoolPtr pool;
    int r = lv_conn(lv(be), &conn);

    if (r < 0)
        return r;
    r = lv_volume_at(conn, path);
    if (r != 0)
        return r;
    pool = virStoragePoolLookupByTargetPath(conn, dir);
    if (!pool) {
        int code = virGetLastErrorCode();
        if (code != VIR_ERR_NO_STORAGE_POOL && code != VIR_ERR_NO_SUPPORT)
            return lv_error(conn);
        virResetLastError();
        cfs_backend_set_errmsg("no storage pool of libvirt has the target "
                               "directory %s", dir);
        return -EOPNOTSUPP;
    }
    r = virStoragePoolIsActive(pool);
    if (r == 0) {
        cfs_backend_set_errmsg("the storage pool of libvirt over %s is not "
                               "active", dir);
        r = -EOPNOTSUPP;
    } else if (r < 0 || virStoragePoolRefresh(pool, 0) < 0) {
        r = lv_error(conn);
    } else {
        r = lv_volume_at(conn, path);
    }
    virStoragePoolFree(pool);
    return r;
}

static int lv_hypervisor_version(struct cfs_backend *be, unsigned long long *ver)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    unsigned long v = 0;
    int r = lv_conn(lv(be), &conn);
    if (r < 0)
        return r;
    if (virConnectGetVersion(conn, &v) < 0)
        return lv_error(conn);
    *ver = v;
    return 0;
}

static const char *lv_uri(struct cfs_backend *be)
{
    struct lv_backend *b = lv(be);
    const char *uri;

    /* set at connect, or by the first connection of a backend that
     * started without one (then under the lock) */
    pthread_mutex_lock(&b->lock);
    uri = b->conn_uri;
    pthread_mutex_unlock(&b->lock);
    return uri;
}

/* ---- construction ------------------------------------------------------- */

static const struct cfs_backend_ops lv_ops = {
    .name = "libvirt",
    .connect = lv_connect,
    .destroy = lv_destroy,
    .list_domains = lv_list_domains,
    .list_stats = lv_list_stats,
    .read_domain = lv_read_domain,
    .read_domain_light = lv_read_domain_light,
    .snapshot_create = lv_snapshot_create,
    .snapshot_create_multi = lv_snapshot_create_multi,
    .snapshot_forget = lv_snapshot_forget,
    .snapshot_drop = lv_snapshot_drop,
    .snapshot_retarget = lv_snapshot_retarget,
    .snapshot_domain_source = lv_snapshot_domain_source,
    .commit_start = lv_commit_start,
    .pull_start = lv_pull_start,
    .image_create = lv_image_create,
    .copy_start = lv_copy_start,
    .image_check = lv_image_check,
    .image_copy_data = lv_image_copy_data,
    .persistent_source_get = lv_persistent_source_get,
    .persistent_source_set = lv_persistent_source_set,
    .persistent_sources_set = lv_persistent_sources_set,
    .snapshot_retarget_multi = lv_snapshot_retarget_multi,
    .agent_set_timeout = lv_agent_set_timeout,
    .agent_fs = lv_agent_fs,
    .job_set_bandwidth = lv_job_set_bandwidth,
    .job_get = lv_job_get,
    .job_pivot = lv_job_pivot,
    .job_abort = lv_job_abort,
    .offline_commit = lv_offline_commit,
    .offline_pull = lv_offline_pull,
    .files_local = lv_files_local,
    .volume_delete = lv_volume_delete,
    .file_exists = lv_file_exists,
    .ping = lv_ping,
    .hypervisor_version = lv_hypervisor_version,
    .uri = lv_uri,
};

struct cfs_backend *cfs_libvirt_backend_new(const char *uri)
{
    struct lv_backend *b = cfs_xcalloc(1, sizeof(*b));

    b->pub.ops = &lv_ops;
    b->pub.priv = b;
    b->uri = cfs_xstrdup(uri);
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->snap_lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    b->up_timer = -1;
    snprintf(b->local_why, sizeof(b->local_why), "not connected yet");
    b->ka_interval = KEEPALIVE_INTERVAL;
    b->ka_count = KEEPALIVE_COUNT;
    for (size_t i = 0; i < LV_EV_MAX; i++)
        b->cb_ids[i] = -1;
    return &b->pub;
}

void cfs_libvirt_backend_set_keepalive(struct cfs_backend *be, int interval,
                                       int count)
{
    struct lv_backend *b = lv(be);

    b->ka_interval = interval;
    b->ka_count = count;
}
