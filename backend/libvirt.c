/* libvirt.c — the real backend: the ops table of backend.h over one
 * libvirt connection. The only file that includes the libvirt headers.
 *
 * Threads: one event thread per backend runs libvirt's default event loop
 * (keepalive, close callback, domain events); the callbacks it runs only
 * forward to struct cfs_backend_events. A reconnect thread sleeps until
 * the close callback fires, then reopens the connection (with backoff),
 * resubscribes and announces connection(up=true) on the event thread.
 * Every op may run on any other thread, concurrently: each call gets a
 * connection to itself from a small pool (lv_conn says why); the event
 * connection carries no calls. While the event connection is down, ops
 * return -ENOTCONN.
 * libvirt errors are mapped to errno in lv_error() and libvirt's message
 * goes to cfs_backend_set_errmsg(); libvirt's own printing to stderr is
 * off. Only one libvirt backend per process (the event loop is global).
 *
 * Live chains come from the live XML (<backingStore index=...>) and sizes
 * from domstats with backing; a shut-off domain's chain is walked from the
 * image headers (qcow2.c), which no QEMU has open then. The offline commit
 * runs qemu-img, since libvirt has no API for it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "chainfs/backend.h"
#include "chainfs/util.h"
#include "domxml.h"
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
 * and any number of op threads. Lock order: only `lock`; it is never held
 * across a libvirt call that talks to the daemon. cb_ids and close_cb are
 * touched only by connect/destroy and the reconnect thread, never at the
 * same time. */
struct lv_backend {
    struct cfs_backend pub;
    char *uri;

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

    pthread_t event_thread;
    bool thread_running;
    atomic_bool quit;
    pthread_t reconnect_thread;
    bool reconnect_running;

    /* Which overlay each snapshot names, by domain UUID and snapshot name:
     * a snapshot's disks do not change, and fetching every snapshot's XML
     * on each re-read made re-reads grow with the number of snapshots. */
    pthread_mutex_t snap_lock;
    struct lv_snap_cache *snaps;
    size_t n_snaps;
};

/* An idle connection of the call pool (see lv_conn). */
struct lv_pooled {
    virConnectPtr conn;
    int64_t idle_since_ms;
};

struct lv_snap_cache {
    char uuid[VIR_UUID_STRING_BUFLEN];
    char *name;
    char **targets;   /* parallel NULL-terminated vectors */
    char **sources;
    bool seen;        /* listed by the current re-read */
};

static void lv_snap_cache_clear(struct lv_snap_cache *c);

/* ---- small helpers ------------------------------------------------------ */

static void lv_put(virConnectPtr c);
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

/* The one place libvirt errors become errno (backend.h's table). CONN, if
 * given, tells a dead connection apart from other failures. */
static int lv_error(virConnectPtr conn)
{
    virErrorPtr e = virGetLastError();
    /* copied first: any further libvirt call resets the thread's error */
    int code = e ? e->code : VIR_ERR_INTERNAL_ERROR;
    _cleanup_free_ char *msg =
        cfs_xstrdup(e && e->message ? e->message : "unknown libvirt error");

    cfs_backend_set_errmsg("%s", msg);

    if (conn && virConnectIsAlive(conn) != 1)
        return -ENOTCONN;
    switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_DOMAIN_SNAPSHOT:
        return -ENOENT;
    case VIR_ERR_ACCESS_DENIED:
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_AUTH_UNAVAILABLE:
        return -EACCES;
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_RPC:
        return -ENOTCONN;
    default:
        break;
    }
    if (msg_has(msg, "No space left"))
        return -ENOSPC;
    /* QEMU may not open a file: "Could not open '...': Permission denied" */
    if (msg_has(msg, "Permission denied"))
        return -EACCES;
    /* pivot before ready: "block job '...' not ready for pivot yet" */
    if (msg_has(msg, "not ready"))
        return -EAGAIN;
    /* abort/pivot without a job: "disk vda does not have an active block job" */
    if (msg_has(msg, "not have an active block job") ||
        msg_has(msg, "no active block job"))
        return -ENOENT;
    /* "disk 'vda' already in active block job" (OPERATION_UNSUPPORTED) */
    if (code == VIR_ERR_BLOCK_COPY_ACTIVE || msg_has(msg, "block job") ||
        msg_has(msg, "in use") || msg_has(msg, "already active"))
        return -EBUSY;
    /* "domain moment s1 already exists" (OPERATION_FAILED) */
    if (msg_has(msg, "exists"))
        return -EEXIST;
    /* "shared access for disk 'vdd' requires ..." (CONFIG_UNSUPPORTED) */
    if ((code == VIR_ERR_OPERATION_UNSUPPORTED ||
         code == VIR_ERR_CONFIG_UNSUPPORTED ||
         code == VIR_ERR_OPERATION_INVALID) &&
        (msg_has(msg, "read-only") || msg_has(msg, "readonly") ||
         msg_has(msg, "shareable") || msg_has(msg, "shared")))
        return -EROFS;
    /* "disk vdz not found in domain", "could not find image ... in chain" */
    if (code == VIR_ERR_INVALID_ARG &&
        (msg_has(msg, "not found") || msg_has(msg, "could not find")))
        return -ENOENT;
    return -EIO;
}

/* The one libvirt backend of the process (its event loop is global);
 * connp() returns connections to its pool. */
static struct lv_backend *lv_the_backend;

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
    *out = c;
    return 0;
}

static void lv_put(virConnectPtr c)
{
    struct lv_backend *b = lv_the_backend;
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

static int lv_map_job_type(int type)
{
    switch (type) {
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT:
        return CFS_JOB_COMMIT;
    case VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
        return CFS_JOB_ACTIVE_COMMIT;
    default:
        return CFS_JOB_NONE;
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
                         (enum cfs_job_type)lv_map_job_type(type), ev);
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

static void *lv_event_loop(void *arg)
{
    struct lv_backend *b = arg;

    while (!atomic_load(&b->quit))
        if (virEventRunDefaultImpl() < 0)
            break;
    return NULL;
}

static void lv_wake(int timer _unused_, void *opaque _unused_)
{
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
    int timer;

    if (!b->thread_running)
        return;
    atomic_store(&b->quit, true);
    /* adding a timer interrupts the poll the loop sleeps in */
    timer = virEventAddTimeout(0, lv_wake, NULL, NULL);
    pthread_join(b->event_thread, NULL);
    if (timer >= 0)
        virEventRemoveTimeout(timer);
    b->thread_running = false;
}

/* Open the connection, turn keepalive on and subscribe to events. */
static int lv_open(struct lv_backend *b, virConnectPtr *out)
{
    virConnectPtr conn;
    int r;

    conn = virConnectOpenAuth(b->uri, virConnectAuthPtrDefault, 0);
    if (!conn) {
        r = lv_error(NULL);
        return r == -EIO ? -ENOTCONN : r;
    }
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
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
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
        if (b->stopping)
            break;
        old = TAKE_PTR(b->conn);
        pthread_mutex_unlock(&b->lock);

        lv_pool_drain(b);
        lv_drop(b, old);
        r = lv_open(b, &conn);

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
        /* the event thread runs the timer; it waits for b->lock, which
         * this thread holds without holding the event loop's own lock */
        b->up_timer = virEventAddTimeout(0, lv_on_up_timer, b, NULL);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
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
    atomic_store(&b->quit, false);
    r = pthread_create(&b->event_thread, NULL, lv_event_loop, b);
    if (r != 0) {
        cfs_backend_set_errmsg("cannot start the libvirt event thread: %s",
                               strerror(r));
        return -r;
    }
    b->thread_running = true;

    r = lv_open(b, &conn);
    if (r < 0) {
        lv_stop_event_thread(b);
        return r;
    }
    pthread_mutex_lock(&b->lock);
    b->conn = conn;
    pthread_mutex_unlock(&b->lock);

    r = pthread_create(&b->reconnect_thread, NULL, lv_reconnect_loop, b);
    if (r != 0) {
        cfs_backend_set_errmsg("cannot start the libvirt reconnect thread: %s",
                               strerror(r));
        pthread_mutex_lock(&b->lock);
        conn = TAKE_PTR(b->conn);
        pthread_mutex_unlock(&b->lock);
        lv_drop(b, conn);
        lv_stop_event_thread(b);
        return -r;
    }
    b->reconnect_running = true;
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
    lv_pool_drain(b);
    lv_drop(b, conn);
    lv_stop_event_thread(b);

    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->lock);
    for (size_t i = 0; i < b->n_snaps; i++)
        lv_snap_cache_clear(&b->snaps[i]);
    free(b->snaps);
    pthread_mutex_destroy(&b->snap_lock);
    free(b->uri);
    if (lv_the_backend == b)
        lv_the_backend = NULL;
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

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
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
        virTypedParameterPtr p = recs[0]->params;
        int np = recs[0]->nparams;
        const char *name = NULL, *path = NULL;
        unsigned int index = 0;
        unsigned long long cap = 0, alloc = 0, phys = 0;
        char key[64];

        snprintf(key, sizeof(key), "block.%u.name", i);
        if (virTypedParamsGetString(p, np, key, &name) != 1)
            continue;
        snprintf(key, sizeof(key), "block.%u.path", i);
        virTypedParamsGetString(p, np, key, &path);
        snprintf(key, sizeof(key), "block.%u.backingIndex", i);
        virTypedParamsGetUInt(p, np, key, &index);
        snprintf(key, sizeof(key), "block.%u.capacity", i);
        if (virTypedParamsGetULLong(p, np, key, &cap) != 1)
            continue;
        snprintf(key, sizeof(key), "block.%u.allocation", i);
        virTypedParamsGetULLong(p, np, key, &alloc);
        snprintf(key, sizeof(key), "block.%u.physical", i);
        virTypedParamsGetULLong(p, np, key, &phys);

        for (size_t di = 0; di < d->n_disks; di++) {
            struct cfs_disk *disk = &d->disks[di];

            if (!cfs_streq(disk->target, name))
                continue;
            for (size_t li = 0; li < disk->n_layers; li++) {
                unsigned xi = x->disks[di].index[li];
                bool same = (xi && index) ? xi == index
                                          : cfs_streq(disk->layers[li].path, path);

                if (!same || matched[di][li])
                    continue;
                disk->layers[li].virtual_size = cap;
                disk->layers[li].allocation = alloc;
                disk->layers[li].physical = phys;
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

/* meta_name of each layer and the domain's snapshot names. */
static int lv_read_snapshots(struct lv_backend *b, virConnectPtr conn,
                             virDomainPtr dom, struct cfs_domain *d)
{
    virDomainSnapshotPtr *snaps = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    int n;

    n = virDomainListAllSnapshots(dom, &snaps, 0);
    if (n < 0)
        return lv_error(conn);
    virDomainGetUUIDString(dom, uuid);
    pthread_mutex_lock(&b->snap_lock);
    for (int i = 0; i < n; i++) {
        const char *name = virDomainSnapshotGetName(snaps[i]);
        struct lv_snap_cache *c = lv_snap_cache_find(b, uuid, name);

        cfs_strv_push(&d->snapshots, cfs_xstrdup(name));
        if (!c) {
            _cleanup_free_ char *xml = virDomainSnapshotGetXMLDesc(snaps[i], 0);
            struct cfs_snapxml sx;

            if (!xml || cfs_domxml_parse_snapshot(xml, &sx) < 0) {
                virResetLastError();
                virDomainSnapshotFree(snaps[i]);
                continue; /* not cached: tried again on the next re-read */
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
            cfs_snapxml_clear(&sx);
        }
        c->seen = true;
        for (size_t k = 0; c->targets && c->targets[k]; k++) {
            struct cfs_disk *disk = cfs_domain_find_disk(d, c->targets[k]);

            for (size_t l = 0; disk && l < disk->n_layers; l++)
                if (!disk->layers[l].meta_name &&
                    cfs_streq(disk->layers[l].path, c->sources[k]))
                    disk->layers[l].meta_name = cfs_xstrdup(name);
        }
        virDomainSnapshotFree(snaps[i]);
    }
    lv_snap_cache_prune(b, uuid);
    pthread_mutex_unlock(&b->snap_lock);
    free(snaps);
    return 0;
}

/* Domain XML -> struct cfs_domxml with full chains and sizes. LIVE: the
 * domain runs (chains and sizes come from libvirt only); otherwise chains
 * are completed from the image headers. */
static void lv_complete_chains(virDomainPtr dom, struct cfs_domxml *x, bool live)
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

        if (!live && !x->disks[i].chain_complete)
            (void)cfs_image_extend_chain(disk);
        for (size_t l = 0; l < listed[i]; l++)
            if (!matched[i][l])
                cfs_image_fill_sizes(&disk->layers[l], !live);
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

    lv_complete_chains(stats ? dom : NULL, &x, live);
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

/* Whether PATH is any layer of any disk in DOM's live XML. When that
 * cannot be told, it counts as used. */
static bool lv_path_in_domain(virDomainPtr dom, const char *path)
{
    _cleanup_free_ char *xml = virDomainGetXMLDesc(dom, 0);
    _cleanup_domxml_ struct cfs_domxml x = {0};

    if (!xml || cfs_domxml_parse(xml, &x) < 0)
        return true;
    return cfs_domain_uses_path(x.domain, path);
}

static int lv_snapshot_create(struct cfs_backend *be, const char *dom_name,
                              const char *disk, const char *name,
                              const char *overlay)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL, *snap_xml = NULL;
    unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY |
                         VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
    struct cfs_disk *d;
    struct stat st;
    uint64_t size;
    int r;

    if (lstat(overlay, &st) == 0) {
        cfs_backend_set_errmsg("overlay file '%s' already exists", overlay);
        return -EEXIST;
    }
    r = lv_lookup(lv(be), dom_name, &conn, &dom);
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
    d = cfs_domain_find_disk(x.domain, disk);
    if (!d || d->n_layers == 0) {
        cfs_backend_set_errmsg("domain '%s' has no disk '%s' with a file or block source",
                               dom_name, disk);
        return -ENOENT;
    }
    if (d->readonly || d->shareable) {
        cfs_backend_set_errmsg("disk '%s' of domain '%s' is %s", disk, dom_name,
                               d->readonly ? "read-only" : "shareable");
        return -EROFS;
    }

    /* The overlay is written here, as qemu-img would write it, and libvirt
     * takes it as it is: the snapshot call then takes 15-23 ms instead of
     * 25-45 ms with libvirt creating it through QEMU (two blockdev-create
     * jobs). Formats we do not write are left to libvirt. */
    bool made = false;
    if (overlay_size(&d->layers[0], &size) == 0) {
        r = cfs_image_create_overlay(overlay, d->layers[0].path,
                                     d->layers[0].format, size);
        if (r == -EEXIST) {
            cfs_backend_set_errmsg("overlay file '%s' already exists", overlay);
            return r;
        }
        if (r < 0 && r != -EINVAL) {
            cfs_backend_set_errmsg("cannot create the overlay file '%s': %s",
                                   overlay, strerror(-r));
            return r;
        }
        made = r == 0;
    }
    if (made)
        flags |= VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT;

    snap_xml = cfs_domxml_snapshot_xml(name, disk, overlay, x.targets);
    if (!snap_xml) {
        cfs_backend_set_errmsg("cannot build the snapshot XML");
        r = -EIO;
    } else {
        snap = virDomainSnapshotCreateXML(dom, snap_xml, flags);
        r = snap ? 0 : lv_error(conn);
    }
    /* ours to remove, unless libvirt took it after all (a failure after
     * the switch, e.g. saving the metadata): never a file in a chain */
    if (r < 0 && made && !lv_path_in_domain(dom, overlay))
        unlink(overlay);
    return r;
}

static int lv_snapshot_forget(struct cfs_backend *be, const char *dom_name,
                              const char *name)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_snap_ virDomainSnapshotPtr snap = NULL;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    snap = virDomainSnapshotLookupByName(dom, name, 0);
    if (!snap)
        return lv_error(conn);
    if (virDomainSnapshotDelete(snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0)
        return lv_error(conn);

    /* a snapshot of the same name made later may name another file */
    struct lv_backend *b = lv(be);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    virDomainGetUUIDString(dom, uuid);
    pthread_mutex_lock(&b->snap_lock);
    struct lv_snap_cache *c = lv_snap_cache_find(b, uuid, name);
    if (c)
        c->seen = false;
    for (size_t i = 0; i < b->n_snaps; i++)
        if (&b->snaps[i] != c && strcmp(b->snaps[i].uuid, uuid) == 0)
            b->snaps[i].seen = true;
    lv_snap_cache_prune(b, uuid);
    pthread_mutex_unlock(&b->snap_lock);
    return 0;
}

/* ---- live block jobs ---------------------------------------------------- */

static int lv_commit_start(struct cfs_backend *be, const char *dom_name,
                           const char *disk, const char *top, const char *base,
                           bool active)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    unsigned int flags = active ? VIR_DOMAIN_BLOCK_COMMIT_ACTIVE : 0;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainBlockCommit(dom, disk, base, top, 0, flags) < 0)
        return lv_error(conn);
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
    r = virDomainGetBlockJobInfo(dom, disk, &info,
                                 VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES);
    if (r < 0)
        return lv_error(conn);
    if (r == 0)
        return 0;
    out->present = true;
    out->type = lv_map_job_type(info.type);
    out->cur = info.cur;
    out->end = info.end;
    out->bandwidth = info.bandwidth;
    if (out->type == CFS_JOB_ACTIVE_COMMIT && info.cur == info.end) {
        _cleanup_free_ char *xml = virDomainGetXMLDesc(dom, 0);

        if (!xml)
            return lv_error(conn);
        (void)cfs_domxml_mirror_ready(xml, disk, &out->ready);
    }
    return 0;
}

static int lv_job_pivot(struct cfs_backend *be, const char *dom_name,
                        const char *disk)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainBlockJobAbort(dom, disk, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) < 0) {
        r = lv_error(conn);
        /* a job that exists but refuses to pivot is not ready yet */
        return r == -EBUSY ? -EAGAIN : r;
    }
    return 0;
}

static int lv_job_abort(struct cfs_backend *be, const char *dom_name,
                        const char *disk)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    if (virDomainBlockJobAbort(dom, disk, 0) < 0)
        return lv_error(conn);
    return 0;
}

/* ---- offline commit ----------------------------------------------------- */

static void fdp(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

/* Run qemu-img with ARGV (no shell). Its stderr becomes the error
 * message; -ENOSPC if it ran out of space, -EIO for any other failure. */
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
    return msg_has(err, "No space left") ? -ENOSPC : -EIO;
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    if (cfs_streq(a, b))
        return true;
    if (stat(a, &sa) < 0 || stat(b, &sb) < 0)
        return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
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

static int lv_offline_commit(struct cfs_backend *be, const char *dom_name,
                             const char *disk_target, const char *top,
                             const char *base, bool active)
{
    _cleanup_conn_ virConnectPtr conn = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    _cleanup_domxml_ struct cfs_domxml x = {0};
    _cleanup_free_ char *xml = NULL, *new_xml = NULL, *top_backing = NULL;
    struct cfs_image_info info = {0};
    struct cfs_disk *disk;
    const struct cfs_layer *t, *bl;
    size_t i;
    int r;

    r = lv_lookup(lv(be), dom_name, &conn, &dom);
    if (r < 0)
        return r;
    r = virDomainIsActive(dom);
    if (r < 0)
        return lv_error(conn);
    if (r > 0) {
        cfs_backend_set_errmsg("domain '%s' is not shut off", dom_name);
        return -EBUSY;
    }
    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!xml)
        return lv_error(conn);
    r = cfs_domxml_parse(xml, &x);
    if (r < 0) {
        cfs_backend_set_errmsg("cannot parse the XML of domain %s", dom_name);
        return -EIO;
    }
    disk = cfs_domain_find_disk(x.domain, disk_target);
    if (!disk) {
        cfs_backend_set_errmsg("domain '%s' has no disk '%s'", dom_name, disk_target);
        return -ENOENT;
    }
    lv_complete_chains(NULL, &x, false);

    for (i = 0; i < disk->n_layers; i++)
        if (cfs_streq(disk->layers[i].path, top))
            break;
    if (i == disk->n_layers) {
        cfs_backend_set_errmsg("'%s' is not in the chain of disk '%s'", top, disk_target);
        return -ENOENT;
    }
    if (i + 1 >= disk->n_layers || !cfs_streq(disk->layers[i + 1].path, base)) {
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
    cfs_image_info_clear(&info);
    if (!top_backing || !same_file(top_backing, base)) {
        cfs_backend_set_errmsg("the backing file of '%s' is '%s', not '%s'", top,
                               top_backing ? top_backing : "(none)", base);
        return -EINVAL;
    }

    {
        char *argv[] = { QEMU_IMG, "commit", "-q", "-d", "-f",
                         (char *)fmt_or(t->format, "qcow2"), (char *)top, NULL };
        r = lv_run_qemu_img(argv);
        if (r < 0)
            return r;
    }

    if (active) {
        r = cfs_domxml_set_disk_source(xml, disk_target, base,
                                       fmt_or(bl->format, "raw"), bl->is_block,
                                       &new_xml);
        if (r < 0) {
            cfs_backend_set_errmsg("cannot rewrite the XML of domain %s", dom_name);
            return -EIO;
        }
        return lv_define(conn, new_xml);
    }

    {
        const struct cfs_layer *above = &disk->layers[i - 1];
        char *argv[] = { QEMU_IMG, "rebase", "-q", "-u",
                         "-f", (char *)fmt_or(above->format, "qcow2"),
                         "-b", (char *)base,
                         "-F", (char *)fmt_or(bl->format, "raw"),
                         (char *)above->path, NULL };
        bool changed = false;

        r = lv_run_qemu_img(argv);
        if (r < 0)
            return r;
        /* a chain written into the inactive XML (libvirt does that after
         * a live snapshot) would still name TOP: let libvirt re-probe */
        r = cfs_domxml_drop_backing_store(xml, disk_target, &new_xml, &changed);
        if (r < 0 || !changed)
            return 0;
        return lv_define(conn, new_xml);
    }
}

/* ---- construction ------------------------------------------------------- */

static const struct cfs_backend_ops lv_ops = {
    .name = "libvirt",
    .connect = lv_connect,
    .destroy = lv_destroy,
    .list_domains = lv_list_domains,
    .read_domain = lv_read_domain,
    .read_domain_light = lv_read_domain_light,
    .snapshot_create = lv_snapshot_create,
    .snapshot_forget = lv_snapshot_forget,
    .commit_start = lv_commit_start,
    .job_get = lv_job_get,
    .job_pivot = lv_job_pivot,
    .job_abort = lv_job_abort,
    .offline_commit = lv_offline_commit,
    .ping = lv_ping,
};

struct cfs_backend *cfs_libvirt_backend_new(const char *uri)
{
    struct lv_backend *b = cfs_xcalloc(1, sizeof(*b));

    b->pub.ops = &lv_ops;
    lv_the_backend = b;
    b->pub.priv = b;
    b->uri = cfs_xstrdup(uri);
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->snap_lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    b->up_timer = -1;
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
