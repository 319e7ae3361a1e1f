/* engine.c — see engine.h for the threads.
 *
 * Job state machine (per disk; docs/DESIGN.md draws it):
 *
 *   mkdir:   none/ended -> running(snapshot) -> completed | failed
 *   rmdir:   none/ended -> running --(READY, live active commit)--> ready
 *            ready --(pivot accepted)--> pivoting --(COMPLETED)--> clean-up
 *            running --(COMPLETED, intermediate/offline)--> clean-up
 *            clean-up --(TOP left the chain; file deleted; metadata
 *                        dropped; journal entry closed)--> completed
 *            running|ready|pivoting --(FAILED/CANCELED, or the job vanished
 *                        with TOP still in the chain)--> failed|canceled
 *
 * A "not ready" pivot goes back to ready and is retried on the next poll.
 * The journal entry is written before the commit starts and updated before
 * the pivot and before clean-up, so a restarted daemon knows what was
 * under way (recover_journal()).
 *
 * Threads: FUSE threads (reads; mkdir and rmdir), the engine thread
 * (drains the queue, lists domains, schedules polls and re-reads, marks
 * domains not responding), one worker per domain with work (every call
 * that can wait for that domain's QEMU: re-reads with statistics, job
 * polls, pivots, clean-up, recovery; see "domain workers"), and offline
 * merge workers. A stuck QEMU ties up its own domain's worker only.
 *
 * Lock order: e->qlock (the engine queue and every domain worker's queue
 * and state) and t->lock are never held together. The journal's own lock
 * may be taken with t->lock held. No backend call is made with any lock
 * held. */
#include "chainfs/engine.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "chainfs/journal.h"
#include "chainfs/log.h"
#include "chainfs/names.h"
#include "chainfs/render.h"

/* Free space below which mkdir says ENOSPC before asking libvirt: a new
 * qcow2 overlay needs its header, L1 table and refcount blocks. */
#define OVERLAY_MIN_FREE (4u << 20)
/* How long a vanished job may leave TOP in the chain before it counts as
 * failed (libvirt updates the XML shortly after the pivot). */
#define VANISH_GRACE_MS 5000
#define PIVOT_MAX_FAILURES 5
/* A domain whose libvirt call has not returned after this long is shown
 * as not responding (a stopped QEMU: libvirt gives up after 30 s). */
#define NOT_RESPONDING_MS 10000
/* Start-up reads every domain without statistics first (that never waits
 * for a QEMU; at most STARTUP_LIGHT_WAIT_MS in all), then in full. It
 * waits for the full reads at most STARTUP_READ_WAIT_MS, and for the
 * slowest one at most STARTUP_SLOW_FACTOR times as long as the others
 * took (at least STARTUP_SLOW_MIN_MS); a domain not read in full by then
 * shows sizes from stat() until its read comes in. */
#define STARTUP_LIGHT_WAIT_MS 10000
#define STARTUP_READ_WAIT_MS 2000
#define STARTUP_SLOW_FACTOR 3
#define STARTUP_SLOW_MIN_MS 250
/* mkdir and rmdir ask libvirt first, and refuse with ENOTCONN if it does
 * not answer within this long: the kernel holds snapshots/ locked while
 * they run, and a stopped libvirtd is only noticed by the keepalive (15 s
 * and more). */
#define LIBVIRT_ANSWER_MS 2000
/* The engine thread looks at the workers at least this often. */
#define ENGINE_TICK_MS 500
/* A domain worker with nothing to do for this long ends. */
#define WORKER_IDLE_MS 30000
/* At shut-down, workers get this long to finish the call they are in;
 * one stuck in libvirt after that is left behind (the process exits). */
#define WORKER_STOP_WAIT_MS 300
/* At shut-down, how long the engine thread may take to end. */
#define ENGINE_JOIN_WAIT_S 2

enum work_kind {
    WORK_REFRESH_DOMAIN,
    WORK_REFRESH_ALL,
    WORK_JOB_EVENT,
    WORK_OFFLINE_DONE,
    WORK_CONNECTION,
    WORK_JOURNAL_CLOSE,  /* errmsg holds the entry id */
    WORK_POLL_JOB,       /* one poll of the live job of dom/disk */
    WORK_RECOVER,        /* the libvirt half of recovering job_id of dom/disk */
    WORK_READ_LIGHT,     /* a read without statistics (start-up) */
};

struct work {
    enum work_kind kind;
    char *dom;
    char *disk;
    enum cfs_job_type type;
    enum cfs_job_event status;
    int err;
    char *errmsg;
    bool up;
    uint64_t job_id;
    struct work *next;
};

/* The worker of one domain: every call that may wait for the domain's
 * QEMU (statistics, job info, pivot, clean-up) runs here, one at a time,
 * so a stuck QEMU holds up its own domain only. Fields under e->qlock. */
struct dom_worker {
    struct cfs_engine *e;
    char *dom;
    struct work *head, *tail;
    pthread_cond_t cond;      /* work arrived, or stopping */
    pthread_t thread;
    int64_t busy_since_ms;    /* in a work item since; 0: idle */
    bool exited;              /* the thread has returned (join it) */
    struct dom_worker *next;
};

struct cfs_engine {
    char *overlay_dir;
    char *state_dir;
    bool keep_merged;
    unsigned refresh_ms;
    unsigned poll_ms;

    struct cfs_backend *be;
    struct cfs_journal *journal;
    int lock_fd;              /* flock on STATE_DIR/lock: one daemon per state_dir */
    struct cfs_tree *tree;
    struct {
        char *name;
        unsigned long seq;
    } *dom_seq;               /* per-domain change counters; tree lock */
    size_t n_dom_seq;
    uint64_t last_job_id;     /* tree lock */
    /* What `stale` stands for (tree lock): the backend said the connection
     * is down, or a call found libvirt not answering / the connection
     * dead before the backend noticed; cleared by the connection coming
     * back and by a listing that worked. */
    bool conn_down;
    bool conn_suspect;

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    struct work *qhead, *qtail;
    bool stopping;
    bool thread_started;
    bool threaded;            /* per-domain work goes to domain workers */
    pthread_t thread;
    unsigned offline_workers; /* guarded by qlock */
    struct dom_worker *workers; /* guarded by qlock */

    void (*invalidate)(void *opaque, const char *path);
    void *invalidate_opaque;
    int64_t last_refresh_ms;
    int64_t last_poll_ms;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_s(void) { return (int64_t)time(NULL); }

static const char *errmsg_or(const char *fallback)
{
    const char *m = cfs_backend_errmsg();
    return m && *m ? m : fallback;
}

/* ---- work queue ----------------------------------------------------------- */

static void work_free(struct work *w)
{
    free(w->dom);
    free(w->disk);
    free(w->errmsg);
    free(w);
}

static void queue_push(struct cfs_engine *e, struct work *w)
{
    pthread_mutex_lock(&e->qlock);
    if (e->qtail)
        e->qtail->next = w;
    else
        e->qhead = w;
    e->qtail = w;
    pthread_cond_signal(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
}

static struct work *queue_take_all(struct cfs_engine *e)
{
    pthread_mutex_lock(&e->qlock);
    struct work *w = e->qhead;
    e->qhead = e->qtail = NULL;
    pthread_mutex_unlock(&e->qlock);
    return w;
}

static struct work *work_new(enum work_kind kind, const char *dom,
                             const char *disk)
{
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = kind;
    w->dom = cfs_xstrdup(dom);
    w->disk = cfs_xstrdup(disk);
    return w;
}

/* A CLOCK_MONOTONIC deadline MS milliseconds from now. */
static struct timespec deadline_in(int64_t ms)
{
    return cfs_deadline_after(CLOCK_MONOTONIC, ms);
}

static void cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

/* ---- domain workers --------------------------------------------------------
 * The engine thread itself makes no call that can wait for one domain's
 * QEMU: it routes such work to that domain's worker (spawned on demand,
 * ending after WORKER_IDLE_MS without work). A worker does one item at a
 * time, so a stuck QEMU ties up one libvirt call and one thread, and the
 * engine thread marks the domain as not responding meanwhile. Without the
 * engine thread (unit tests) everything runs inline. */

static void process_work(struct cfs_engine *e, struct work *w);
static void tree_changed(struct cfs_engine *e);
static void conn_suspect(struct cfs_engine *e, bool suspect);

static bool work_per_domain(const struct work *w)
{
    switch (w->kind) {
    case WORK_REFRESH_DOMAIN:
    case WORK_JOB_EVENT:
    case WORK_OFFLINE_DONE:
    case WORK_POLL_JOB:
    case WORK_RECOVER:
    case WORK_READ_LIGHT:
        return true;
    default:
        return false;
    }
}

/* W would do nothing that O (same domain, queued before it and not
 * started yet) will not do. */
static bool work_covered(const struct work *o, const struct work *w)
{
    if (o->kind != w->kind)
        return false;
    return w->kind == WORK_REFRESH_DOMAIN ||
           (w->kind == WORK_POLL_JOB && cfs_streq(o->disk, w->disk));
}

static void *dom_worker_main(void *arg)
{
    struct dom_worker *dw = arg;
    struct cfs_engine *e = dw->e;
    int64_t idle_since = now_ms();

    pthread_mutex_lock(&e->qlock);
    for (;;) {
        if (!dw->head && !e->stopping) {
            if (now_ms() - idle_since >= WORKER_IDLE_MS)
                break;
            struct timespec ts = deadline_in(idle_since + WORKER_IDLE_MS - now_ms());
            pthread_cond_timedwait(&dw->cond, &e->qlock, &ts);
            continue;
        }
        if (e->stopping)
            break;
        struct work *w = dw->head;
        dw->head = w->next;
        if (!dw->head)
            dw->tail = NULL;
        w->next = NULL;
        dw->busy_since_ms = now_ms();
        pthread_mutex_unlock(&e->qlock);

        process_work(e, w);
        work_free(w);

        pthread_mutex_lock(&e->qlock);
        dw->busy_since_ms = 0;
        idle_since = now_ms();
        /* start-up waits for idle workers; the engine thread clears a
         * not-responding mark */
        pthread_cond_broadcast(&e->qcond);
    }
    while (dw->head) {
        struct work *w = dw->head;
        dw->head = w->next;
        work_free(w);
    }
    dw->tail = NULL;
    dw->exited = true;
    pthread_cond_broadcast(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return NULL;
}

/* The live worker of DOM, spawned if there is none; NULL if no thread
 * can be started. Caller holds qlock. */
static struct dom_worker *worker_get(struct cfs_engine *e, const char *dom)
{
    for (struct dom_worker *dw = e->workers; dw; dw = dw->next)
        if (!dw->exited && strcmp(dw->dom, dom) == 0)
            return dw;
    struct dom_worker *dw = cfs_xcalloc(1, sizeof(*dw));
    dw->e = e;
    dw->dom = cfs_xstrdup(dom);
    cond_init_monotonic(&dw->cond);
    int r = pthread_create(&dw->thread, NULL, dom_worker_main, dw);
    if (r != 0) {
        log_warn("cannot start a worker for domain %s: %s", dom, strerror(r));
        pthread_cond_destroy(&dw->cond);
        free(dw->dom);
        free(dw);
        return NULL;
    }
    dw->next = e->workers;
    e->workers = dw;
    return dw;
}

/* An engine whose workers were left inside libvirt calls at shut-down
 * (cfs_engine_free): never freed, and kept reachable. */
static struct cfs_engine *engine_left_behind __attribute__((used));

static void worker_free(struct dom_worker *dw)
{
    pthread_cond_destroy(&dw->cond);
    free(dw->dom);
    free(dw);
}

/* Carry out W (takes it): per-domain work goes to the domain's worker,
 * the rest (and everything without threads) runs here and now. */
static void route(struct cfs_engine *e, struct work *w)
{
    if (e->threaded && work_per_domain(w)) {
        pthread_mutex_lock(&e->qlock);
        if (e->stopping) {
            pthread_mutex_unlock(&e->qlock);
            work_free(w);
            return;
        }
        struct dom_worker *dw = worker_get(e, w->dom);
        if (dw) {
            bool covered = false;
            for (struct work *o = dw->head; o && !covered; o = o->next)
                covered = work_covered(o, w);
            if (covered) {
                work_free(w);
            } else {
                w->next = NULL;
                if (dw->tail)
                    dw->tail->next = w;
                else
                    dw->head = w;
                dw->tail = w;
                pthread_cond_signal(&dw->cond);
            }
            pthread_mutex_unlock(&e->qlock);
            return;
        }
        pthread_mutex_unlock(&e->qlock);
    }
    process_work(e, w);
    work_free(w);
}

/* Join the workers that ended (engine thread). */
static void reap_workers(struct cfs_engine *e)
{
    struct dom_worker *done = NULL;
    pthread_mutex_lock(&e->qlock);
    for (struct dom_worker **pp = &e->workers; *pp;) {
        struct dom_worker *dw = *pp;
        if (dw->exited) {
            *pp = dw->next;
            dw->next = done;
            done = dw;
        } else {
            pp = &dw->next;
        }
    }
    pthread_mutex_unlock(&e->qlock);
    while (done) {
        struct dom_worker *next = done->next;
        pthread_join(done->thread, NULL);
        worker_free(done);
        done = next;
    }
}

/* Stop every worker: each finishes the item it is in, drops the rest.
 * Returns the names of those still inside a call after
 * WORKER_STOP_WAIT_MS (detached and left in e->workers: they may still
 * touch the engine and the backend when their call returns). */
static char **stop_workers(struct cfs_engine *e)
{
    char **stuck = NULL;
    struct timespec ts = deadline_in(WORKER_STOP_WAIT_MS);
    pthread_mutex_lock(&e->qlock);
    for (struct dom_worker *dw = e->workers; dw; dw = dw->next)
        pthread_cond_signal(&dw->cond);
    for (;;) {
        bool all = true;
        for (struct dom_worker *dw = e->workers; dw; dw = dw->next)
            all = all && dw->exited;
        if (all || pthread_cond_timedwait(&e->qcond, &e->qlock, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&e->qlock);
    reap_workers(e);
    pthread_mutex_lock(&e->qlock);
    for (struct dom_worker *dw = e->workers; dw; dw = dw->next) {
        cfs_strv_push(&stuck, cfs_xstrdup(dw->dom));
        pthread_detach(dw->thread);
    }
    pthread_mutex_unlock(&e->qlock);
    return stuck;
}

/* Mark in the tree the domains whose worker has been inside one call for
 * NOT_RESPONDING_MS, and unmark the others (engine thread). */
static void mark_not_responding(struct cfs_engine *e)
{
    _cleanup_strv_ char **slow = NULL;
    _cleanup_strv_ char **news = NULL;
    _cleanup_strv_ char **back = NULL;
    int64_t t = now_ms();
    pthread_mutex_lock(&e->qlock);
    for (struct dom_worker *dw = e->workers; dw; dw = dw->next)
        if (!dw->exited && dw->busy_since_ms &&
            t - dw->busy_since_ms >= NOT_RESPONDING_MS)
            cfs_strv_push(&slow, cfs_xstrdup(dw->dom));
    pthread_mutex_unlock(&e->qlock);

    pthread_mutex_lock(&e->tree->lock);
    bool changed = false;
    for (size_t i = 0; i < e->tree->n_doms; i++) {
        struct cfs_domain *d = e->tree->doms[i];
        bool nr = cfs_strv_contains(slow, d->name);
        if (d->not_responding == nr)
            continue;
        d->not_responding = nr;
        cfs_strv_push(nr ? &news : &back, cfs_xstrdup(d->name));
        changed = true;
    }
    if (changed)
        tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    for (char **n = news; n && *n; n++)
        log_warn("domain %s is not responding (a libvirt call has not "
                 "returned for %d s; its QEMU may be stopped); showing its "
                 "last known state", *n, NOT_RESPONDING_MS / 1000);
    for (char **n = back; n && *n; n++)
        log_info("domain %s responds again", *n);
}

static void on_domain_changed(void *opaque, const char *dom)
{
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = WORK_REFRESH_DOMAIN;
    w->dom = cfs_xstrdup(dom);
    queue_push(opaque, w);
}

static void on_block_job(void *opaque, const char *dom, const char *disk,
                         enum cfs_job_type type, enum cfs_job_event status)
{
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = WORK_JOB_EVENT;
    w->dom = cfs_xstrdup(dom);
    w->disk = cfs_xstrdup(disk);
    w->type = type;
    w->status = status;
    queue_push(opaque, w);
}

static void update_stale(struct cfs_engine *e);

static void on_connection(void *opaque, bool up)
{
    struct cfs_engine *e = opaque;
    if (!up) {
        /* readers see `stale` now, whatever the engine thread is in */
        pthread_mutex_lock(&e->tree->lock);
        e->conn_down = true;
        update_stale(e);
        pthread_mutex_unlock(&e->tree->lock);
    }
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = WORK_CONNECTION;
    w->up = up;
    queue_push(opaque, w);
}

static const struct cfs_backend_events engine_events = {
    .domain_changed = on_domain_changed,
    .block_job = on_block_job,
    .connection = on_connection,
};

/* ---- the model ------------------------------------------------------------ */

static void invalidate(struct cfs_engine *e, const char *path)
{
    if (e->invalidate)
        e->invalidate(e->invalidate_opaque, path);
}

/* Per-domain change counters (caller holds the tree lock). A read of a
 * domain is installed only if the domain's counter did not move while it
 * was under way: a read that overlapped a newer change (mkdir's own
 * update, a re-read that already saw a pivot) may carry the older state,
 * and the tree must never go back in time. */
static unsigned long *dom_seq_slot(struct cfs_engine *e, const char *name)
{
    for (size_t i = 0; i < e->n_dom_seq; i++)
        if (strcmp(e->dom_seq[i].name, name) == 0)
            return &e->dom_seq[i].seq;
    e->dom_seq = cfs_xrealloc(e->dom_seq, (e->n_dom_seq + 1) * sizeof(*e->dom_seq));
    e->dom_seq[e->n_dom_seq].name = cfs_xstrdup(name);
    e->dom_seq[e->n_dom_seq].seq = 0;
    return &e->dom_seq[e->n_dom_seq++].seq;
}

/* Install D (a read of domain NAME, or NULL: it is gone) unless the
 * domain changed since BEFORE. Caller holds the tree lock. Returns false
 * (and frees D) if the read is outdated. */
static bool install_read(struct cfs_engine *e, const char *name,
                         unsigned long before, struct cfs_domain *d,
                         bool *removed)
{
    unsigned long *seq = dom_seq_slot(e, name);
    *removed = false;
    if (*seq != before) {
        cfs_domain_free(d);
        return false;
    }
    bool changed;
    if (d) {
        changed = cfs_tree_put_domain(e->tree, d);
    } else {
        changed = *removed = cfs_tree_remove_domain(e->tree, name);
    }
    if (changed)
        (*seq)++;
    return true;
}

/* Re-read one domain from the backend into the tree. */
static int refresh_domain(struct cfs_engine *e, const char *name)
{
    for (int tries = 0;; tries++) {
        struct cfs_domain *d = NULL;
        pthread_mutex_lock(&e->tree->lock);
        unsigned long before = *dom_seq_slot(e, name);
        pthread_mutex_unlock(&e->tree->lock);
        int r = e->be->ops->read_domain(e->be, name, &d);
        if (r < 0 && r != -ENOENT) {
            log_warn("reading domain %s: %s", name, errmsg_or(strerror(-r)));
            if (r == -ENOTCONN)
                conn_suspect(e, true);
            return r;
        }
        bool removed;
        pthread_mutex_lock(&e->tree->lock);
        bool installed = install_read(e, name, before, r == 0 ? d : NULL, &removed);
        pthread_mutex_unlock(&e->tree->lock);
        if (removed) {
            _cleanup_free_ char *p = cfs_xasprintf("/%s", name);
            log_debug("domain %s is gone", name);
            invalidate(e, p);
        }
        if (installed)
            return 0;
        if (tries >= 3) {
            /* changes keep coming: try again in a moment */
            on_domain_changed(e, name);
            return -EAGAIN;
        }
    }
}

/* Give the layers of NEW the sizes the tree already knows for the same
 * files; a layer the tree does not know keeps its stat() sizes, and
 * takes the virtual size of the layer below if it has none. */
static void carry_sizes(const struct cfs_domain *old, struct cfs_domain *new)
{
    for (size_t i = 0; i < new->n_disks; i++) {
        struct cfs_disk *nd = &new->disks[i];
        const struct cfs_disk *od = old ? cfs_domain_find_disk(old, nd->target) : NULL;
        for (size_t l = nd->n_layers; l-- > 0;) {
            struct cfs_layer *nl = &nd->layers[l];
            for (size_t k = 0; od && k < od->n_layers; k++) {
                const struct cfs_layer *ol = &od->layers[k];
                if (cfs_layer_same(ol, nl)) {
                    nl->virtual_size = ol->virtual_size;
                    nl->allocation = ol->allocation;
                    nl->physical = ol->physical;
                    break;
                }
            }
            if (!nl->virtual_size && l + 1 < nd->n_layers)
                nl->virtual_size = nd->layers[l + 1].virtual_size;
        }
    }
}

/* The one gate of every file operation on a path libvirt reported: does
 * this process see, at those paths, the files libvirt means (backend.h
 * files_local, decided once at connect)? When it does not, the engine
 * never opens, creates, stats or deletes such a file. */
static bool engine_files_local(struct cfs_engine *e)
{
    return !e->be->ops->files_local || e->be->ops->files_local(e->be, NULL);
}

/* The tree as it is right after a snapshot of DOM/DISK made OVERLAY the
 * active layer above ACTIVE (sizes of the new overlay from stat() when
 * FILES_LOCAL, else 0 until the next re-read). Caller holds the lock.
 * false if the tree no longer looks as it did before. */
static bool tree_push_overlay(struct cfs_tree *t, const char *dom,
                              const char *disk, const struct cfs_layer *active,
                              const char *overlay, const char *name,
                              bool files_local)
{
    struct cfs_domain *d = cfs_tree_find_domain(t, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    if (!dk || dk->n_layers == 0 || !cfs_layer_same(&dk->layers[0], active))
        return false;
    struct cfs_domain *copy = cfs_domain_dup(d);
    struct cfs_disk *cd = cfs_domain_find_disk(copy, disk);
    cd->layers = cfs_xrealloc(cd->layers, (cd->n_layers + 1) * sizeof(*cd->layers));
    memmove(&cd->layers[1], &cd->layers[0], cd->n_layers * sizeof(*cd->layers));
    cd->n_layers++;
    cd->is_block = false;
    cd->layers[0] = (struct cfs_layer){
        .path = cfs_xstrdup(overlay),
        .format = cfs_xstrdup("qcow2"),
        .virtual_size = cd->layers[1].virtual_size,
        .meta_name = cfs_xstrdup(name),
    };
    struct stat st;
    if (files_local && stat(overlay, &st) == 0) {
        cd->layers[0].allocation = (uint64_t)st.st_blocks * 512;
        cd->layers[0].physical = (uint64_t)st.st_size;
    }
    cfs_strv_push(&copy->snapshots, cfs_xstrdup(name));
    cfs_tree_put_domain(t, copy);
    return true;
}

/* Right after chainfs changed DOM's chain: a quick re-read without block
 * statistics (they cost more than the change itself) so the caller can
 * return with the tree showing the new chain, then the full re-read in
 * the background for the exact figures. */
static int lock_live(struct cfs_engine *e, const char *dom);

static void refresh_after_change(struct cfs_engine *e, const char *dom)
{
    if (lock_live(e, dom) < 0) {
        refresh_domain(e, dom);
        return;
    }
    pthread_mutex_unlock(&e->tree->lock);
    on_domain_changed(e, dom);
}

/* The chain as libvirt has it now, for mkdir and rmdir (and every change
 * after them): libvirt sends no event when someone else takes a snapshot
 * or stops the domain, and the tree may be up to a re-read period old.
 * Reads DOM (light), installs the read in the tree and returns 0 WITH THE
 * TREE LOCK HELD, so the caller checks and claims the disk on exactly
 * this read; or a negative errno, lock not held (-ENOENT: the domain is
 * gone, and gone from the tree). */
static int lock_live(struct cfs_engine *e, const char *dom)
{
    for (int tries = 0;; tries++) {
        struct cfs_domain *d = NULL;
        pthread_mutex_lock(&e->tree->lock);
        unsigned long before = *dom_seq_slot(e, dom);
        pthread_mutex_unlock(&e->tree->lock);
        int r = e->be->ops->read_domain_light
                    ? e->be->ops->read_domain_light(e->be, dom, &d)
                    : e->be->ops->read_domain(e->be, dom, &d);
        if (r < 0 && r != -ENOENT)
            return r;
        bool removed;
        pthread_mutex_lock(&e->tree->lock);
        if (d)
            carry_sizes(cfs_tree_find_domain(e->tree, dom), d);
        if (install_read(e, dom, before, d, &removed)) {
            if (r == 0)
                return 0;
            pthread_mutex_unlock(&e->tree->lock);
            if (removed) {
                _cleanup_free_ char *p = cfs_xasprintf("/%s", dom);
                invalidate(e, p);
            }
            return -ENOENT;
        }
        pthread_mutex_unlock(&e->tree->lock);
        /* another read was installed meanwhile (another disk's mkdir, an
         * event): read again; a read takes milliseconds */
        log_debug("%s: another read landed while reading the live chain; "
                  "reading again", dom);
        if (tries >= 10) {
            cfs_backend_set_errmsg("the domain's chain keeps changing");
            return -EAGAIN;
        }
    }
}

/* A read of DOM without block statistics (which never waits for its
 * QEMU), keeping the sizes the tree already knows. 1: installed, 0: a
 * newer change came first, or a negative errno. */
static int refresh_light(struct cfs_engine *e, const char *dom)
{
    struct cfs_domain *d = NULL;
    if (!e->be->ops->read_domain_light)
        return -EOPNOTSUPP;
    pthread_mutex_lock(&e->tree->lock);
    unsigned long before = *dom_seq_slot(e, dom);
    pthread_mutex_unlock(&e->tree->lock);
    int r = e->be->ops->read_domain_light(e->be, dom, &d);
    if (r < 0)
        return r;
    bool removed;
    pthread_mutex_lock(&e->tree->lock);
    carry_sizes(cfs_tree_find_domain(e->tree, dom), d);
    bool installed = install_read(e, dom, before, d, &removed);
    pthread_mutex_unlock(&e->tree->lock);
    return installed;
}

/* List the domains and re-read each (on its worker when threaded). */
static int refresh_all(struct cfs_engine *e)
{
    /* the counters before listing: a domain that libvirt did not list but
     * that an event re-read meanwhile (just defined) is not removed */
    _cleanup_strv_ char **known = NULL;
    _cleanup_free_ unsigned long *known_seq = NULL;
    pthread_mutex_lock(&e->tree->lock);
    known_seq = cfs_xcalloc(e->tree->n_doms + 1, sizeof(*known_seq));
    for (size_t i = 0; i < e->tree->n_doms; i++) {
        cfs_strv_push(&known, cfs_xstrdup(e->tree->doms[i]->name));
        known_seq[i] = *dom_seq_slot(e, e->tree->doms[i]->name);
    }
    pthread_mutex_unlock(&e->tree->lock);

    _cleanup_strv_ char **names = NULL;
    /* the next one is due refresh_ms from now, whether this one works */
    e->last_refresh_ms = now_ms();
    int r = e->be->ops->list_domains(e->be, &names);
    if (r < 0) {
        log_warn("listing domains: %s", errmsg_or(strerror(-r)));
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        return r;
    }
    conn_suspect(e, false);
    for (char **n = names; n && *n; n++)
        route(e, work_new(WORK_REFRESH_DOMAIN, *n, NULL));

    _cleanup_strv_ char **removed = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; known && known[i]; i++) {
        if (cfs_strv_contains(names, known[i]))
            continue;
        bool removed_one;
        if (install_read(e, known[i], known_seq[i], NULL, &removed_one) && removed_one)
            cfs_strv_push(&removed, cfs_xstrdup(known[i]));
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (char **n = removed; n && *n; n++) {
        _cleanup_free_ char *p = cfs_xasprintf("/%s", *n);
        invalidate(e, p);
    }
    e->last_refresh_ms = now_ms();
    return 0;
}

/* Something readers see changed: cached renderings (fuse_ops.c) are void
 * and `wait` readers look again. Caller holds tree->lock. */
static void tree_changed(struct cfs_engine *e)
{
    e->tree->generation++;
    pthread_cond_broadcast(&e->tree->changed);
}

/* tree->stale from conn_down and conn_suspect. Caller holds tree->lock. */
static void update_stale(struct cfs_engine *e)
{
    bool stale = e->conn_down || e->conn_suspect;
    if (e->tree->stale != stale) {
        e->tree->stale = stale;
        tree_changed(e);
    }
}

/* A call met a dead or silent libvirt (SUSPECT), or a listing worked. */
static void conn_suspect(struct cfs_engine *e, bool suspect)
{
    pthread_mutex_lock(&e->tree->lock);
    bool news = suspect && !e->conn_suspect && !e->conn_down;
    e->conn_suspect = suspect;
    update_stale(e);
    pthread_mutex_unlock(&e->tree->lock);
    if (news)
        log_err("libvirt does not answer (%s); serving the last known state",
                errmsg_or("connection lost"));
}

/* Before mkdir/rmdir call libvirt (the kernel holds snapshots/ locked
 * while they run): -EAGAIN if DOM is marked not responding (its QEMU
 * would keep them waiting), -ENOTCONN at once (and stale shown) if
 * libvirt does not answer within LIBVIRT_ANSWER_MS. WHY says which. */
static int check_reachable(struct cfs_engine *e, const char *dom,
                           const char **why)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    bool stuck = d && d->not_responding;
    pthread_mutex_unlock(&e->tree->lock);
    if (stuck) {
        *why = "the domain is not responding (a libvirt call on it has not "
               "returned; its QEMU may be stopped)";
        return -EAGAIN;
    }
    if (!e->be->ops->ping)
        return 0;
    int r = e->be->ops->ping(e->be, LIBVIRT_ANSWER_MS);
    /* an answer clears what an earlier failed call suspected */
    conn_suspect(e, r == -ENOTCONN);
    if (r != -ENOTCONN)
        return 0;
    *why = errmsg_or("libvirt does not answer");
    return r;
}

/* ---- journal helpers ------------------------------------------------------- */

static int journal_record(struct cfs_engine *e, const char *dom,
                          const char *disk, const struct cfs_job *job,
                          const char *phase)
{
    if (!job->journal_id)
        return 0;
    struct cfs_journal_entry en = {
        .id = job->journal_id,
        .domain = (char *)dom,
        .disk = (char *)disk,
        .snapshot = job->snapshot,
        .meta_name = job->meta_name,
        .top = job->top,
        .base = job->base,
        .type = job->type,
        .phase = (char *)phase,
        .created = job->started,
        .updated = now_s(),
        .error = job->error,
    };
    int r = cfs_journal_put(e->journal, &en);
    if (r < 0)
        log_err("journal: recording %s of %s/%s: %s", phase, dom, disk,
                strerror(-r));
    return r;
}

static void journal_close(struct cfs_engine *e, const char *id)
{
    if (!id)
        return;
    int r = cfs_journal_remove(e->journal, id);
    if (r < 0 && r != -ENOENT)
        log_err("journal: closing entry %s: %s", id, strerror(-r));
}

/* A copy of a disk's job, taken under the lock, for use without it. */
static bool job_snapshot(struct cfs_engine *e, const char *dom,
                         const char *disk, struct cfs_job *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool ok = s && cfs_job_state_in_progress(s->job.state);
    if (ok)
        cfs_job_copy(out, &s->job);
    pthread_mutex_unlock(&e->tree->lock);
    return ok;
}

/* A new job on disk state S: give it its number. Caller holds the lock. */
static void job_number(struct cfs_engine *e, struct cfs_disk_state *s)
{
    s->job.id = ++e->last_job_id;
}

static void set_job_state(struct cfs_engine *e, const char *dom,
                          const char *disk, uint64_t id,
                          enum cfs_job_state st)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (s && s->job.id == id && s->job.state != st) {
        s->job.state = st;
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
}

/* Whether file ID/PATH is in DOM/DISK's chain in the tree (ID may be
 * NULL: the path decides). */
static bool disk_has_layer(struct cfs_engine *e, const char *dom,
                           const char *disk, const struct cfs_file_id *id,
                           const char *path)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    bool found = cfs_disk_find_file(dk, id, path) >= 0;
    pthread_mutex_unlock(&e->tree->lock);
    return found;
}

static void set_starting(struct cfs_engine *e, const char *dom,
                         const char *disk, uint64_t id, bool starting)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (s && s->job.id == id)
        s->starting = starting;
    pthread_mutex_unlock(&e->tree->lock);
}

/* true while rmdir has claimed the disk but libvirt has not yet accepted
 * the commit: no job to be seen in libvirt yet, and that means nothing. */
static bool job_starting(struct cfs_engine *e, const char *dom,
                         const char *disk)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool starting = s && s->starting;
    pthread_mutex_unlock(&e->tree->lock);
    return starting;
}

/* ---- the end of a job -------------------------------------------------------- */

/* End job ID of DOM/DISK; a no-op if the disk has moved on to another
 * job meanwhile. */
static void job_end(struct cfs_engine *e, const char *dom, const char *disk,
                    uint64_t id, enum cfs_job_state st, const char *error,
                    bool partial)
{
    /* Close the journal entry first: whoever `wait`s for this job may
     * look at the journal as soon as the state changes. */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s0 = cfs_tree_disk_state(e->tree, dom, disk);
    bool ours = s0->job.id == id;
    _cleanup_free_ char *jid = ours ? cfs_xstrdup(s0->job.journal_id) : NULL;
    pthread_mutex_unlock(&e->tree->lock);
    if (!ours)
        return;
    journal_close(e, jid);

    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    if (s->job.id != id) {
        pthread_mutex_unlock(&e->tree->lock);
        return;
    }
    struct cfs_job *j = &s->job;
    j->state = st;
    j->finished = now_s();
    if (st == CFS_JOB_STATE_COMPLETED && j->end)
        j->cur = j->end;
    free(j->error);
    j->error = cfs_xstrdup(error);
    j->partial = partial;
    if (partial && j->top && !cfs_strv_contains(s->partial_tops, j->top))
        cfs_strv_push(&s->partial_tops, cfs_xstrdup(j->top));
    if (st == CFS_JOB_STATE_COMPLETED && j->top && s->partial_tops) {
        /* the overlay is gone: forget that it was partly merged */
        char **kept = NULL;
        for (char **p = s->partial_tops; *p; p++)
            if (strcmp(*p, j->top) != 0)
                cfs_strv_push(&kept, cfs_xstrdup(*p));
        cfs_strv_free(s->partial_tops);
        s->partial_tops = kept;
    }
    free(j->journal_id);
    j->journal_id = NULL;
    s->gone_since_ms = 0;
    s->pivot_failures = 0;
    s->starting = false;
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
}

/* A file as a job or a layer names it. */
struct file_ref {
    const struct cfs_file_id *id;
    const char *path;
};

/* Who else uses any of the N files FILES, as libvirt has every chain
 * right now (not the tree, which may lag): before a merge writes into a
 * file and before a merged file is deleted. Every disk of every domain
 * counts except EXCEPT_DISK of EXCEPT_DOM (both NULL: none excepted).
 * Returns 1, *USER ("domain D disk V", caller frees) and *WHICH (index
 * into FILES) if someone does; 0 if no one does; or a negative errno if
 * that cannot be told (then the files count as used; *USER says why). */
static int file_user_live(struct cfs_engine *e, const struct file_ref *files,
                          size_t n, const char *except_dom,
                          const char *except_disk, char **user, size_t *which)
{
    *user = NULL;
    _cleanup_strv_ char **names = NULL;
    int r = e->be->ops->list_domains(e->be, &names);
    if (r < 0) {
        *user = cfs_xasprintf("cannot list the domains: %s",
                              errmsg_or(strerror(-r)));
        return r;
    }
    for (char **dn = names; dn && *dn; dn++) {
        struct cfs_domain *d = NULL;
        r = e->be->ops->read_domain_light
                ? e->be->ops->read_domain_light(e->be, *dn, &d)
                : e->be->ops->read_domain(e->be, *dn, &d);
        if (r == -ENOENT)
            continue;
        if (r < 0) {
            *user = cfs_xasprintf("cannot read domain %s: %s", *dn,
                                  errmsg_or(strerror(-r)));
            return r;
        }
        bool self = except_dom && strcmp(*dn, except_dom) == 0;
        for (size_t i = 0; i < n && !*user && !(self && !except_disk); i++) {
            const struct cfs_disk *dk = cfs_domain_file_user(
                d, files[i].id, files[i].path, self ? except_disk : NULL);
            if (dk) {
                *user = cfs_xasprintf("domain %s disk %s", *dn, dk->target);
                *which = i;
            }
        }
        cfs_domain_free(d);
        if (*user)
            return 1;
    }
    return 0;
}

/* " (no space left on the filesystem of BASE)" when that is so, else "". */
static char *space_reason(struct cfs_engine *e, const char *base)
{
    if (!base || !engine_files_local(e))
        return cfs_xstrdup("");
    _cleanup_free_ char *tmp = cfs_xstrdup(base);
    struct statvfs vfs;
    if (statvfs(dirname(tmp), &vfs) == 0 &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < OVERLAY_MIN_FREE)
        return cfs_xasprintf(" (no space left on the filesystem of %s)", base);
    return cfs_xstrdup("");
}

static void job_fail(struct cfs_engine *e, const char *dom, const char *disk,
                     uint64_t id, enum cfs_job_state st, const char *why);

/* Remove the merged file TOP, which no chain uses, where its files are
 * not this machine's: through libvirt's storage-volume API when a pool
 * holds it, else it stays where it is and becomes the job's leftover. */
static void merged_remove_remote(struct cfs_engine *e, const char *dom,
                                 const char *disk, uint64_t id, const char *top)
{
    int r = e->be->ops->volume_delete ? e->be->ops->volume_delete(e->be, top)
                                      : -EOPNOTSUPP;
    if (r == 0) {
        log_info("%s/%s: deleted %s through libvirt's storage pool", dom, disk, top);
        return;
    }
    log_warn("%s/%s: %s is not a file of this machine; left in place, "
             "remove it on the libvirt host: %s", dom, disk, top,
             errmsg_or(strerror(-r)));
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    if (s->job.id == id) {
        free(s->job.leftover);
        s->job.leftover = cfs_xstrdup(top);
    }
    pthread_mutex_unlock(&e->tree->lock);
}

/* TOP has left DISK's chain in libvirt (a read just said so): drop it from
 * the tree's copy of the chain as well, whatever read the tree holds (one
 * built by a concurrent mkdir's push, or installed meanwhile, may still
 * have it), so that the snapshot does not show again in snapshots/ once
 * the job has ended. Caller holds the tree lock. */
static void tree_drop_layer(struct cfs_engine *e, const char *dom,
                            const char *disk, const struct cfs_file_id *id,
                            const char *path)
{
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    int i = dk ? cfs_disk_find_file(dk, id, path) : -1;
    if (i < 0 || dk->n_layers < 2)
        return;
    struct cfs_domain *copy = cfs_domain_dup(d);
    struct cfs_disk *cd = cfs_domain_find_disk(copy, disk);
    cfs_layer_clear(&cd->layers[i]);
    memmove(&cd->layers[i], &cd->layers[i + 1],
            (cd->n_layers - (size_t)i - 1) * sizeof(*cd->layers));
    cd->n_layers--;
    cfs_tree_put_domain(e->tree, copy);
    (*dom_seq_slot(e, dom))++;
}

enum finish_result {
    FINISH_DONE,         /* cleaned up, or not (any more) this job's to do */
    FINISH_TOP_IN_CHAIN, /* TOP is still in libvirt's chain */
    FINISH_CANNOT_TELL,  /* libvirt could not be read: ask again later */
};

/* The merge is over as far as libvirt is concerned. If TOP left the chain,
 * delete it (unless kept or still used anywhere), make libvirt's snapshot
 * metadata stop naming it (snapshot_forget: the snapshot's other disks keep
 * theirs), close the journal entry. FINISH_TOP_IN_CHAIN: libvirt may not
 * have updated the XML yet, or the merge did not complete; the caller
 * decides. */
static enum finish_result job_finish(struct cfs_engine *e, const char *dom,
                                     const char *disk, uint64_t id)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job))
        return FINISH_DONE;
    if (job.id != id || !job.top || job.type == CFS_JOB_SNAPSHOT) {
        cfs_job_clear(&job); /* not the job this was meant for */
        return FINISH_DONE;
    }

    /* Is TOP still in the disk's chain? Asked of libvirt and answered from
     * that read alone, not from the tree: a re-read installed in the tree
     * can be overtaken again and again by the reads of mkdir and rmdir on
     * the domain's other disks, and "cannot tell" must never pass for
     * "TOP is still there" (a running merge would be failed for it). */
    struct cfs_domain *live = NULL;
    pthread_mutex_lock(&e->tree->lock);
    unsigned long before = *dom_seq_slot(e, dom);
    pthread_mutex_unlock(&e->tree->lock);
    int r = e->be->ops->read_domain_light
                ? e->be->ops->read_domain_light(e->be, dom, &live)
                : e->be->ops->read_domain(e->be, dom, &live);
    if (r < 0 && r != -ENOENT) {
        cfs_job_clear(&job);
        return FINISH_CANNOT_TELL;
    }
    const struct cfs_disk *ldk = live ? cfs_domain_find_disk(live, disk) : NULL;
    bool disk_gone = !ldk;
    bool top_in_chain = ldk && cfs_disk_find_file(ldk, &job.top_id, job.top) >= 0;
    if (live && !top_in_chain) {
        /* the tree shows the chain without TOP before the job reads as
         * completed: `cat wait` then `ls snapshots/` must not see it (a
         * newer read installed meanwhile is without TOP as well) */
        bool removed;
        pthread_mutex_lock(&e->tree->lock);
        carry_sizes(cfs_tree_find_domain(e->tree, dom), live);
        install_read(e, dom, before, TAKE_PTR(live), &removed);
        tree_drop_layer(e, dom, disk, &job.top_id, job.top);
        pthread_mutex_unlock(&e->tree->lock);
    }
    cfs_domain_free(live);
    if (disk_gone) {
        /* TOP is in no chain only because its domain or disk went away:
         * that says nothing about the merge, so nothing is deleted */
        job_fail(e, dom, disk, id, CFS_JOB_STATE_FAILED,
                 "the domain or the disk disappeared during the merge; "
                 "nothing was deleted");
        cfs_job_clear(&job);
        return FINISH_DONE;
    }
    if (top_in_chain) {
        refresh_domain(e, dom);
        cfs_job_clear(&job);
        return FINISH_TOP_IN_CHAIN;
    }

    journal_record(e, dom, disk, &job, "cleanup");
    _cleanup_free_ char *user = NULL;
    size_t which;
    const struct file_ref top = { &job.top_id, job.top };
    bool used = !e->keep_merged &&
                file_user_live(e, &top, 1, NULL, NULL, &user, &which) != 0;

    if (e->keep_merged)
        log_info("%s/%s: merged %s into %s; keeping %s (keep_merged)", dom,
                 disk, job.snapshot, job.base, job.top);
    else if (used)
        log_warn("%s/%s: %s is still used (%s); not deleting it", dom,
                 disk, job.top, user);
    else if (!engine_files_local(e))
        merged_remove_remote(e, dom, disk, id, job.top);
    else if (unlink(job.top) < 0 && errno != ENOENT)
        log_warn("%s/%s: deleting %s: %s", dom, disk, job.top,
                 strerror(errno));

    if (job.meta_name) {
        r = e->be->ops->snapshot_forget(e->be, dom, disk, job.meta_name);
        if (r < 0 && r != -ENOENT)
            log_warn("%s/%s: dropping snapshot metadata %s: %s", dom, disk,
                     job.meta_name, errmsg_or(strerror(-r)));
    }
    log_info("%s/%s: snapshot %s merged into %s (%s)", dom, disk,
             job.snapshot, job.base, cfs_job_type_to_string(job.type));
    job_end(e, dom, disk, id, CFS_JOB_STATE_COMPLETED, NULL, false);
    refresh_domain(e, dom);
    cfs_job_clear(&job);
    return FINISH_DONE;
}

static void job_fail(struct cfs_engine *e, const char *dom, const char *disk,
                     uint64_t id, enum cfs_job_state st, const char *why)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job))
        return;
    if (job.id != id) {
        cfs_job_clear(&job);
        return;
    }
    refresh_domain(e, dom);
    /* A commit that got going has written part of TOP into BASE: BASE no
     * longer holds its old point in time (harmless, TOP still sits above
     * it), and info says so. */
    /* The progress last polled may be 0 if the copy failed before the
     * first poll; a base that grew since the start was written all the
     * same. */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *ds = cfs_tree_find_disk_state(e->tree, dom, disk);
    uint64_t base_before = ds ? ds->base_bytes : 0;
    pthread_mutex_unlock(&e->tree->lock);
    struct stat bst;
    bool base_grew = base_before && job.base && engine_files_local(e) &&
                     stat(job.base, &bst) == 0 &&
                     (uint64_t)bst.st_blocks * 512 > base_before;
    bool partial = job.type != CFS_JOB_SNAPSHOT && (job.cur > 0 || base_grew);
    _cleanup_free_ char *space = space_reason(e, job.base);
    _cleanup_free_ char *text = cfs_xasprintf("%s%s", why, space);
    log_err("%s/%s: merge of snapshot %s %s: %s", dom, disk, job.snapshot,
            st == CFS_JOB_STATE_CANCELED ? "canceled" : "failed", text);
    job_end(e, dom, disk, id, st, text, partial);
    cfs_job_clear(&job);
}

#ifdef CHAINFS_TEST_HOOKS
/* Fault-injection tests start a live commit already slowed down to the
 * bytes/s written in STATE_DIR/commit-bandwidth (QEMU's rate limit from
 * the job's first byte: nothing to race); no file, unlimited. */
static void hook_set_commit_bandwidth(struct cfs_engine *e)
{
    _cleanup_free_ char *path = cfs_xasprintf("%s/commit-bandwidth", e->state_dir);
    unsigned long long bw = 0;
    FILE *f = fopen(path, "re");

    if (f) {
        if (fscanf(f, "%llu", &bw) != 1) {
            log_warn("test hook: %s holds no number; commit unlimited", path);
            bw = 0;
        }
        fclose(f);
    }
    __atomic_store_n(&e->be->commit_bandwidth, (uint64_t)bw, __ATOMIC_RELAXED);
}
#endif

/* ---- pivot ------------------------------------------------------------------- */

static void try_pivot(struct cfs_engine *e, const char *dom, const char *disk)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job))
        return;
    if (job.type != CFS_JOB_ACTIVE_COMMIT || job.state != CFS_JOB_STATE_READY) {
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0 || !pr.present || !pr.ready) {
        /* not ready after all (or libvirt is busy): the next poll retries */
        cfs_job_clear(&job);
        return;
    }

#ifdef CHAINFS_TEST_HOOKS
    /* Fault-injection tests hold the pivot while this file exists. */
    {
        _cleanup_free_ char *hold = cfs_xasprintf("%s/hold-pivot", e->state_dir);
        if (access(hold, F_OK) == 0) {
            cfs_job_clear(&job);
            return;
        }
    }
#endif

    journal_record(e, dom, disk, &job, "pivoting");
    set_job_state(e, dom, disk, job.id, CFS_JOB_STATE_PIVOTING);
    r = e->be->ops->job_pivot(e->be, dom, disk);
    if (r == -EAGAIN) {
        log_debug("%s/%s: pivot not ready yet, retrying", dom, disk);
        set_job_state(e, dom, disk, job.id, CFS_JOB_STATE_READY);
    } else if (r < 0) {
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
        int failures = ++s->pivot_failures;
        pthread_mutex_unlock(&e->tree->lock);
        log_warn("%s/%s: pivot refused (%d): %s", dom, disk, failures, msg);
        if (failures < PIVOT_MAX_FAILURES) {
            set_job_state(e, dom, disk, job.id, CFS_JOB_STATE_READY);
        } else {
            /* give up: end the mirror without pivoting, the chain stays */
            e->be->ops->job_abort(e->be, dom, disk);
            job_fail(e, dom, disk, job.id, CFS_JOB_STATE_FAILED, msg);
        }
    } else {
        log_debug("%s/%s: pivot accepted", dom, disk);
    }
    cfs_job_clear(&job);
}

/* ---- following jobs ---------------------------------------------------------- */

/* A block-job event. Events carry no job identity, and one may arrive
 * late: the CANCELED of a job someone aborted just before rmdir started
 * ours, the COMPLETED of the previous merge that a poll already finished.
 * So an event is applied only to a live commit of the same kind, and a
 * FAILED/CANCELED only when libvirt no longer has a job on the disk. */
static void handle_job_event(struct cfs_engine *e, const struct work *w)
{
    struct cfs_job job;
    if (!job_snapshot(e, w->dom, w->disk, &job)) {
        /* not ours, or already ended: the chain may still have changed */
        refresh_domain(e, w->dom);
        return;
    }
    log_debug("%s/%s: block job event %d (type %s) in state %s", w->dom,
              w->disk, (int)w->status, cfs_job_type_to_string(w->type),
              cfs_job_state_to_string(job.state));
    bool live_commit = job.type == CFS_JOB_COMMIT || job.type == CFS_JOB_ACTIVE_COMMIT;
    if (!live_commit || (w->type != CFS_JOB_NONE && w->type != job.type) ||
        job_starting(e, w->dom, w->disk)) {
        /* (while rmdir is still starting it, the poll after catches up) */
        log_debug("%s/%s: event is not for the job chainfs follows; ignored",
                  w->dom, w->disk);
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    switch (w->status) {
    case CFS_JOB_EVENT_READY:
        if (job.type == CFS_JOB_ACTIVE_COMMIT &&
            job.state == CFS_JOB_STATE_RUNNING) {
            pthread_mutex_lock(&e->tree->lock);
            struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, w->dom, w->disk);
            if (s->job.id == job.id) {
                s->job.state = CFS_JOB_STATE_READY;
                if (s->job.end)
                    s->job.cur = s->job.end;
                tree_changed(e);
            }
            pthread_mutex_unlock(&e->tree->lock);
            try_pivot(e, w->dom, w->disk);
        }
        break;
    case CFS_JOB_EVENT_COMPLETED:
        if (job_finish(e, w->dom, w->disk, job.id) != FINISH_DONE) {
            /* TOP still in the chain: a late event, or libvirt has not
             * updated the XML yet; the poll decides */
            pthread_mutex_lock(&e->tree->lock);
            struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, w->dom, w->disk);
            if (s->job.id == job.id && !s->gone_since_ms)
                s->gone_since_ms = now_ms();
            pthread_mutex_unlock(&e->tree->lock);
        }
        break;
    case CFS_JOB_EVENT_FAILED:
    case CFS_JOB_EVENT_CANCELED:
        if (e->be->ops->job_get(e->be, w->dom, w->disk, &pr) == 0 && pr.present) {
            log_debug("%s/%s: late event of an earlier job; ignored", w->dom,
                      w->disk);
            break;
        }
        if (w->status == CFS_JOB_EVENT_FAILED)
            job_fail(e, w->dom, w->disk, job.id, CFS_JOB_STATE_FAILED,
                     "libvirt reported the block job as failed");
        else
            job_fail(e, w->dom, w->disk, job.id, CFS_JOB_STATE_CANCELED,
                     "the block job was canceled outside chainfs");
        break;
    default:
        break;
    }
    cfs_job_clear(&job);
}

static void handle_offline_done(struct cfs_engine *e, const struct work *w)
{
    if (w->err < 0)
        job_fail(e, w->dom, w->disk, w->job_id, CFS_JOB_STATE_FAILED,
                 w->errmsg ? w->errmsg : strerror(-w->err));
    else if (job_finish(e, w->dom, w->disk, w->job_id) != FINISH_DONE)
        job_fail(e, w->dom, w->disk, w->job_id, CFS_JOB_STATE_FAILED,
                 "the merged layer is still in the chain after the merge");
}

/* One poll of a live job: progress, the ready fallback, a vanished job. */
static void poll_job(struct cfs_engine *e, const char *dom, const char *disk)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job))
        return;
    if ((job.type != CFS_JOB_COMMIT && job.type != CFS_JOB_ACTIVE_COMMIT) ||
        job_starting(e, dom, disk)) {
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0) {
        /* A domain that stopped or went away has no job any more (libvirt
         * refuses to ask); anything else, e.g. a lost connection, is
         * passing: keep following. */
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
        bool stopped = !e->tree->stale && (!d || d->state == CFS_DOM_SHUTOFF);
        pthread_mutex_unlock(&e->tree->lock);
        if (r == -ENOTCONN || !stopped) {
            cfs_job_clear(&job);
            return;
        }
        pr.present = false;
    }
    if (pr.present) {
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
        if (s->job.id != job.id) {
            pthread_mutex_unlock(&e->tree->lock);
            cfs_job_clear(&job);
            return;
        }
        if (s->job.cur != pr.cur || s->job.end != pr.end ||
            s->job.bandwidth != pr.bandwidth) {
            s->job.cur = pr.cur;
            s->job.end = pr.end;
            s->job.bandwidth = pr.bandwidth;
            tree_changed(e);
        }
        s->gone_since_ms = 0;
        bool to_ready = pr.ready && s->job.state == CFS_JOB_STATE_RUNNING &&
                        job.type == CFS_JOB_ACTIVE_COMMIT;
        if (to_ready) {
            s->job.state = CFS_JOB_STATE_READY;
            tree_changed(e);
        }
        bool retry = s->job.state == CFS_JOB_STATE_READY;
        pthread_mutex_unlock(&e->tree->lock);
        if (retry)
            try_pivot(e, dom, disk);
        cfs_job_clear(&job);
        return;
    }

    /* libvirt has no job: finished (maybe the event was missed) or died;
     * when libvirt cannot be read now, the next poll asks again */
    if (job_finish(e, dom, disk, job.id) != FINISH_TOP_IN_CHAIN) {
        cfs_job_clear(&job);
        return;
    }
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    if (s->job.id != job.id) {
        pthread_mutex_unlock(&e->tree->lock);
        cfs_job_clear(&job);
        return;
    }
    if (!s->gone_since_ms)
        s->gone_since_ms = now_ms();
    bool expired = now_ms() - s->gone_since_ms > VANISH_GRACE_MS ||
                   job.state == CFS_JOB_STATE_RUNNING;
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    bool running = d && d->state != CFS_DOM_SHUTOFF;
    pthread_mutex_unlock(&e->tree->lock);
    /* A running copy that disappears with TOP in place did not complete
     * (QEMU died, the domain was destroyed, someone aborted it). After a
     * pivot, give libvirt a moment to update the XML. */
    if (expired)
        job_fail(e, dom, disk, job.id, CFS_JOB_STATE_FAILED,
                 running ? "the block job ended without completing"
                         : "the domain stopped during the merge");
    cfs_job_clear(&job);
}

static bool any_live_job(struct cfs_engine *e, char ***doms, char ***disks)
{
    bool any = false;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_states; i++) {
        struct cfs_disk_state *s = e->tree->states[i];
        if (!cfs_job_state_in_progress(s->job.state))
            continue;
        if (s->job.type != CFS_JOB_COMMIT && s->job.type != CFS_JOB_ACTIVE_COMMIT)
            continue;
        any = true;
        if (doms) {
            cfs_strv_push(doms, cfs_xstrdup(s->dom));
            cfs_strv_push(disks, cfs_xstrdup(s->disk));
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    return any;
}

static void poll_jobs(struct cfs_engine *e)
{
    _cleanup_strv_ char **doms = NULL;
    _cleanup_strv_ char **disks = NULL;
    if (!any_live_job(e, &doms, &disks))
        return;
    for (size_t i = 0; doms && doms[i]; i++)
        route(e, work_new(WORK_POLL_JOB, doms[i], disks[i]));
    e->last_poll_ms = now_ms();
}

static void recover_journal(struct cfs_engine *e);
static void recover_merge(struct cfs_engine *e, const char *dom,
                          const char *disk, uint64_t id);

static void process_work(struct cfs_engine *e, struct work *w)
{
    switch (w->kind) {
    case WORK_POLL_JOB:
        poll_job(e, w->dom, w->disk);
        break;
    case WORK_RECOVER:
        recover_merge(e, w->dom, w->disk, w->job_id);
        break;
    case WORK_READ_LIGHT:
        if (refresh_light(e, w->dom) < 0)
            refresh_domain(e, w->dom);
        break;
    case WORK_REFRESH_DOMAIN:
        refresh_domain(e, w->dom);
        break;
    case WORK_REFRESH_ALL:
        refresh_all(e);
        break;
    case WORK_JOB_EVENT:
        handle_job_event(e, w);
        refresh_domain(e, w->dom);
        break;
    case WORK_OFFLINE_DONE:
        handle_offline_done(e, w);
        break;
    case WORK_JOURNAL_CLOSE:
        journal_close(e, w->errmsg);
        break;
    case WORK_CONNECTION:
        pthread_mutex_lock(&e->tree->lock);
        e->conn_down = !w->up;
        update_stale(e);
        pthread_mutex_unlock(&e->tree->lock);
        if (w->up) {
            log_info("libvirt connection is back; re-reading everything");
            refresh_all(e);
            recover_journal(e);
        } else {
            log_err("lost the libvirt connection; serving the last known state");
        }
        break;
    }
}

static void drain(struct cfs_engine *e)
{
    struct work *w = queue_take_all(e);
    /* Coalesce: many events for one domain need one re-read. */
    while (w) {
        struct work *next = w->next;
        bool dup = false;
        if (w->kind == WORK_REFRESH_DOMAIN)
            for (struct work *o = next; o && !dup; o = o->next)
                dup = o->kind == WORK_REFRESH_DOMAIN && strcmp(o->dom, w->dom) == 0;
        w->next = NULL;
        if (dup)
            work_free(w);
        else
            route(e, w);
        w = next;
    }
}

void cfs_engine_run_pending(struct cfs_engine *e)
{
    drain(e);
    poll_jobs(e);
    drain(e);
}

static void *engine_thread(void *arg)
{
    struct cfs_engine *e = arg;
    for (;;) {
        bool live = any_live_job(e, NULL, NULL);
        int64_t wait_ms = live ? e->poll_ms : e->refresh_ms;
        if (wait_ms > ENGINE_TICK_MS)
            wait_ms = ENGINE_TICK_MS;
        pthread_mutex_lock(&e->qlock);
        if (!e->qhead && !e->stopping) {
            struct timespec ts = deadline_in(wait_ms);
            pthread_cond_timedwait(&e->qcond, &e->qlock, &ts);
        }
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->qlock);
        if (stop)
            break;
        drain(e);
        int64_t t = now_ms();
        if (t - e->last_poll_ms >= e->poll_ms)
            poll_jobs(e);
        if (t - e->last_refresh_ms >= e->refresh_ms)
            refresh_all(e);
        mark_not_responding(e);
        reap_workers(e);
    }
    return NULL;
}

/* ---- recovery ----------------------------------------------------------------- */

/* Take up what a previous daemon left in the journal. */
static void recover_journal(struct cfs_engine *e)
{
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    if (cfs_journal_list(e->journal, &v, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct cfs_journal_entry *en = &v[i];
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, en->domain, en->disk);
        bool followed = cfs_job_state_in_progress(s->job.state) &&
                        cfs_streq(s->job.journal_id, en->id);
        pthread_mutex_unlock(&e->tree->lock);
        if (followed)
            continue; /* this daemon is on it already (a reconnect) */

        if (en->type == CFS_JOB_SNAPSHOT) {
            /* a mkdir that was under way: libvirt either made the overlay
             * the active layer or did nothing; the chain tells which */
            bool done = disk_has_layer(e, en->domain, en->disk, NULL, en->top);
            struct stat st;
            /* The overlay file may exist without the snapshot: the daemon
             * died between writing it and libvirt taking it, or libvirt
             * is still at it (a call outlives its caller). Deleting it
             * could pull a file from under QEMU; it is only named. */
            bool local = engine_files_local(e);
            bool left = !done && en->top && (!local || lstat(en->top, &st) == 0);
            log_info("recovery: %s/%s: snapshot %s was %s%s%s", en->domain,
                     en->disk, en->snapshot,
                     done ? "taken" : "not taken (nothing to undo)",
                     !left ? ""
                     : local ? "; its overlay file was left in place, remove it "
                               "once no chain uses it: "
                             : "; its overlay file may be left on the libvirt "
                               "host, remove it there once no chain uses it: ",
                     left ? en->top : "");
            journal_close(e, en->id);
            continue;
        }

        pthread_mutex_lock(&e->tree->lock);
        cfs_job_clear(&s->job);
        s->job.type = en->type;
        /* always resume as running: a poll finds out whether the copy is
         * ready (and pivots), and a pivot that was in flight when the
         * previous daemon died either happened or is simply asked again */
        s->job.state = CFS_JOB_STATE_RUNNING;
        s->job.snapshot = cfs_xstrdup(en->snapshot);
        s->job.meta_name = cfs_xstrdup(en->meta_name);
        s->job.top = cfs_xstrdup(en->top);
        s->job.base = cfs_xstrdup(en->base);
        /* which file TOP is, from the chain as last read (the journal
         * keeps the path only) */
        struct cfs_domain *rd = cfs_tree_find_domain(e->tree, en->domain);
        struct cfs_disk *rdk = rd ? cfs_domain_find_disk(rd, en->disk) : NULL;
        int ti = cfs_disk_find_file(rdk, NULL, en->top);
        if (ti >= 0)
            cfs_file_id_copy(&s->job.top_id, &rdk->layers[ti].id);
        s->job.started = en->created;
        s->job.journal_id = cfs_xstrdup(en->id);
        s->starting = false;
        s->base_bytes = 0;
        job_number(e, s);
        tree_changed(e);
        /* the disk is claimed now (a mkdir/rmdir sees the job); what
         * libvirt says of it is asked on the domain's worker */
        struct work *w = work_new(WORK_RECOVER, en->domain, en->disk);
        w->job_id = s->job.id;
        pthread_mutex_unlock(&e->tree->lock);
        route(e, w);
    }
    cfs_journal_entries_free(v, n);
}

/* The libvirt half of recovering merge ID of DOM/DISK (recover_journal
 * claimed the disk for it). */
static void recover_merge(struct cfs_engine *e, const char *dom,
                          const char *disk, uint64_t id)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job) || job.id != id) {
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    int r = -ENOENT;
    if (job.type == CFS_JOB_COMMIT || job.type == CFS_JOB_ACTIVE_COMMIT)
        r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r == 0 && pr.present) {
        /* poll_job takes it from here, pivot included */
        log_info("recovery: %s/%s: merge of %s still running; following it",
                 dom, disk, job.snapshot);
    } else if (job_finish(e, dom, disk, id) == FINISH_DONE) {
        log_info("recovery: %s/%s: merge of %s had finished; cleaned up",
                 dom, disk, job.snapshot);
    } else {
        log_info("recovery: %s/%s: merge of %s did not finish; marked failed",
                 dom, disk, job.snapshot);
        job_fail(e, dom, disk, id, CFS_JOB_STATE_FAILED,
                 "the merge was interrupted and did not complete");
    }
    cfs_job_clear(&job);
}

/* ---- life cycle ----------------------------------------------------------------- */

int cfs_engine_new(const struct cfs_engine_config *cfg, struct cfs_backend *be,
                   struct cfs_engine **out, char **errmsg)
{
    struct cfs_engine *e = cfs_xcalloc(1, sizeof(*e));
    e->lock_fd = -1;
    e->overlay_dir = cfs_xstrdup(cfg->overlay_dir);
    e->state_dir = cfs_xstrdup(cfg->state_dir);
    e->keep_merged = cfg->keep_merged;
    e->refresh_ms = cfg->refresh_ms ? cfg->refresh_ms : 3000;
    e->poll_ms = cfg->poll_ms ? cfg->poll_ms : 250;
    e->be = be;
    e->tree = cfs_tree_new();
    pthread_mutex_init(&e->qlock, NULL);
    cond_init_monotonic(&e->qcond);

    _cleanup_strv_ char **warnings = NULL;
    int r = cfs_journal_open(cfg->state_dir, &e->journal, &warnings);
    if (r < 0) {
        if (errmsg)
            *errmsg = cfs_xasprintf("state directory %s: %s", cfg->state_dir,
                                    strerror(-r));
        e->be = NULL; /* the caller still owns it */
        cfs_engine_free(e);
        return r;
    }
    for (char **w = warnings; w && *w; w++)
        log_warn("%s", *w);

    _cleanup_free_ char *lock = cfs_xasprintf("%s/lock", cfg->state_dir);
    e->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (e->lock_fd < 0 || flock(e->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        r = errno == EWOULDBLOCK ? -EBUSY : -errno;
        if (errmsg)
            *errmsg = r == -EBUSY
                ? cfs_xasprintf("state directory %s is in use by another "
                                "chainfs", cfg->state_dir)
                : cfs_xasprintf("state directory %s: %s", cfg->state_dir,
                                strerror(-r));
        e->be = NULL;
        cfs_engine_free(e);
        return r;
    }
    *out = e;
    return 0;
}

/* Wait until the domain workers have nothing left to do, at most
 * LIMIT_MS. ADAPTIVE: once some have finished, wait for the rest at most
 * STARTUP_SLOW_FACTOR times as long as that took (STARTUP_SLOW_MIN_MS at
 * least): a stuck QEMU must not hold up the start. */
static void workers_wait_idle(struct cfs_engine *e, int64_t limit_ms,
                              bool adaptive)
{
    int64_t start = now_ms();
    int64_t limit = limit_ms;
    size_t last_pending = SIZE_MAX;
    pthread_mutex_lock(&e->qlock);
    for (;;) {
        size_t pending = 0;
        for (struct dom_worker *dw = e->workers; dw; dw = dw->next)
            if (!dw->exited && (dw->head || dw->busy_since_ms))
                pending++;
        int64_t t = now_ms() - start;
        if (adaptive && last_pending != SIZE_MAX && pending < last_pending) {
            int64_t soft = STARTUP_SLOW_FACTOR * t;
            if (soft < STARTUP_SLOW_MIN_MS)
                soft = STARTUP_SLOW_MIN_MS;
            limit = soft < limit_ms ? soft : limit_ms;
        }
        last_pending = pending;
        if (!pending || t >= limit)
            break;
        struct timespec ts = deadline_in(limit - t < 50 ? limit - t : 50);
        pthread_cond_timedwait(&e->qcond, &e->qlock, &ts);
    }
    pthread_mutex_unlock(&e->qlock);
}

/* Start-up with threads: every domain in the tree quickly (no
 * statistics), then in full, each on its own worker, so that a stuck
 * QEMU delays nothing (see STARTUP_READ_WAIT_MS). */
static int startup_read(struct cfs_engine *e)
{
    _cleanup_strv_ char **names = NULL;
    int r = e->be->ops->list_domains(e->be, &names);
    if (r < 0)
        return r;
    for (char **n = names; n && *n; n++)
        route(e, work_new(WORK_READ_LIGHT, *n, NULL));
    workers_wait_idle(e, STARTUP_LIGHT_WAIT_MS, false);
    for (char **n = names; n && *n; n++)
        route(e, work_new(WORK_REFRESH_DOMAIN, *n, NULL));
    workers_wait_idle(e, STARTUP_READ_WAIT_MS, true);
    e->last_refresh_ms = now_ms();
    return 0;
}

int cfs_engine_start(struct cfs_engine *e, bool thread, char **errmsg)
{
    int r = e->be->ops->connect(e->be, &engine_events, e);
    if (r < 0) {
        if (errmsg)
            *errmsg = cfs_xasprintf("cannot connect to libvirt: %s",
                                    errmsg_or(strerror(-r)));
        return r;
    }
    const char *why = "the backend's own";
    if (e->be->ops->files_local)
        (void)e->be->ops->files_local(e->be, &why);
    if (engine_files_local(e))
        log_info("image files: local (%s)", why);
    else
        log_info("image files: not on this machine (%s): libvirt creates the "
                 "overlays, merged files are deleted only through a libvirt "
                 "storage pool (else listed as leftover in job), offline merges "
                 "are refused", why);
    /* overlay_dir names a directory of the libvirt host: only a local one
     * can be looked at here */
    struct stat od;
    if (e->overlay_dir && engine_files_local(e) &&
        (stat(e->overlay_dir, &od) < 0 || !S_ISDIR(od.st_mode))) {
        if (errmsg)
            *errmsg = cfs_xasprintf("overlay_dir %s is not a directory",
                                    e->overlay_dir);
        return -ENOTDIR;
    }
    e->threaded = thread;
    r = thread ? startup_read(e) : refresh_all(e);
    if (r < 0) {
        if (errmsg)
            *errmsg = cfs_xasprintf("cannot list libvirt domains: %s",
                                    errmsg_or(strerror(-r)));
        return r;
    }
    recover_journal(e);
    if (thread) {
        r = -pthread_create(&e->thread, NULL, engine_thread, e);
        if (r < 0) {
            if (errmsg)
                *errmsg = cfs_xasprintf("cannot start the engine thread: %s",
                                        strerror(-r));
            return r;
        }
        e->thread_started = true;
    }
    return 0;
}

struct cfs_engine *cfs_engine_free(struct cfs_engine *e)
{
    if (!e)
        return NULL;
    pthread_mutex_lock(&e->qlock);
    e->stopping = true;
    pthread_cond_broadcast(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    /* the engine thread makes no call that waits for a QEMU, but its
     * listing waits for a libvirtd that stopped answering until the
     * keepalive gives up */
    bool engine_stuck = false;
    if (e->thread_started) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ENGINE_JOIN_WAIT_S;
        if (pthread_timedjoin_np(e->thread, NULL, &ts) != 0) {
            pthread_detach(e->thread);
            engine_stuck = true;
            log_warn("the engine thread is inside a libvirt call that has not "
                     "returned; exiting without waiting for it");
        }
    }
    _cleanup_strv_ char **stuck = stop_workers(e);
    if (stuck || engine_stuck) {
        /* Their calls still use the backend and the engine: both stay
         * allocated (reachable from here), and the process exits with the
         * calls unanswered. Nothing is lost: the journal has every change
         * under way. */
        for (char **n = stuck; n && *n; n++)
            log_warn("domain %s: a libvirt call has not returned; exiting "
                     "without waiting for it", *n);
        engine_left_behind = e;
        return NULL;
    }
    /* offline merges keep running to their end; wait for them */
    for (;;) {
        pthread_mutex_lock(&e->qlock);
        unsigned n = e->offline_workers;
        pthread_mutex_unlock(&e->qlock);
        if (!n)
            break;
        usleep(50 * 1000);
    }
    if (e->be)
        e->be->ops->destroy(e->be);
    for (struct work *w = queue_take_all(e); w;) {
        struct work *next = w->next;
        work_free(w);
        w = next;
    }
    cfs_journal_free(e->journal);
    if (e->lock_fd >= 0)
        close(e->lock_fd);
    cfs_tree_free(e->tree);
    for (size_t i = 0; i < e->n_dom_seq; i++)
        free(e->dom_seq[i].name);
    free(e->dom_seq);
    pthread_mutex_destroy(&e->qlock);
    pthread_cond_destroy(&e->qcond);
    free(e->overlay_dir);
    free(e->state_dir);
    free(e);
    return NULL;
}

void cfs_engine_set_invalidate(struct cfs_engine *e,
                               void (*cb)(void *opaque, const char *path),
                               void *opaque)
{
    e->invalidate = cb;
    e->invalidate_opaque = opaque;
}

struct cfs_tree *cfs_engine_tree(struct cfs_engine *e) { return e->tree; }

unsigned long cfs_engine_generation(struct cfs_engine *e)
{
    pthread_mutex_lock(&e->tree->lock);
    unsigned long g = e->tree->generation;
    pthread_mutex_unlock(&e->tree->lock);
    return g;
}

/* ---- reads (FUSE threads; tree lock only) ------------------------------------------ */

/* The layer index of snapshot NAME as shown in snapshots/: not the base,
 * and not the one being merged away right now. Caller holds the lock. */
static int visible_snapshot(struct cfs_tree *t, const struct cfs_domain *d,
                            const struct cfs_disk *disk, const char *name)
{
    int i = cfs_disk_find_snapshot(disk, name);
    if (i < 0 || (size_t)i + 1 >= disk->n_layers)
        return -1;
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, d->name, disk->target);
    if (s && cfs_job_state_in_progress(s->job.state) &&
        s->job.type != CFS_JOB_SNAPSHOT &&
        cfs_file_same(&s->job.top_id, s->job.top, &disk->layers[i].id,
                      disk->layers[i].path))
        return -1;
    return i;
}

/* Resolve P to its domain/disk/layer; caller holds the lock. */
static int resolve(struct cfs_tree *t, const struct cfs_path *p,
                   struct cfs_domain **dp, struct cfs_disk **diskp, int *idx)
{
    *dp = NULL;
    *diskp = NULL;
    *idx = -1;
    if (p->kind == CFS_NODE_ROOT)
        return 0;
    struct cfs_domain *d = cfs_tree_find_domain(t, p->dom);
    if (!d)
        return -ENOENT;
    *dp = d;
    if (p->kind == CFS_NODE_DOMAIN)
        return 0;
    struct cfs_disk *disk = cfs_domain_find_disk(d, p->disk);
    if (!disk)
        return -ENOENT;
    *diskp = disk;
    if (p->kind != CFS_NODE_SNAPSHOT && p->kind != CFS_NODE_INFO &&
        p->kind != CFS_NODE_INFO_JSON)
        return 0;
    *idx = visible_snapshot(t, d, disk, p->snap);
    return *idx < 0 ? -ENOENT : 0;
}

/* Render file P; caller holds the lock and resolved it. */
static void render_locked(struct cfs_tree *t, const struct cfs_path *p,
                          const struct cfs_domain *d,
                          const struct cfs_disk *disk, int idx,
                          struct cfs_buf *out)
{
    struct cfs_disk_state *s =
        disk ? cfs_tree_find_disk_state(t, d->name, disk->target) : NULL;
    const struct cfs_job *job = s ? &s->job : NULL;
    bool partial = false;
    if (idx >= 0 && s)
        partial = cfs_strv_contains(s->partial_tops, disk->layers[idx].path);
    switch (p->kind) {
    case CFS_NODE_CHAIN:
        cfs_render_chain_text(out, d, disk, t->stale);
        break;
    case CFS_NODE_CHAIN_JSON:
        cfs_render_chain_json(out, d, disk, t->stale);
        break;
    case CFS_NODE_JOB:
    case CFS_NODE_WAIT:
        cfs_render_job_text(out, job, t->stale);
        break;
    case CFS_NODE_JOB_JSON:
        cfs_render_job_json(out, job, t->stale);
        break;
    case CFS_NODE_INFO:
        cfs_render_info_text(out, d, disk, idx, partial);
        break;
    case CFS_NODE_INFO_JSON:
        cfs_render_info_json(out, d, disk, idx, partial);
        break;
    default:
        break;
    }
}

int cfs_engine_getattr(struct cfs_engine *e, const struct cfs_path *p,
                       struct cfs_node_attr *out)
{
    memset(out, 0, sizeof(*out));
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_domain *d;
    struct cfs_disk *disk;
    int idx;
    int r = resolve(t, p, &d, &disk, &idx);
    if (r == 0) {
        if (cfs_node_is_file(p->kind)) {
            _cleanup_buf_ struct cfs_buf b = {0};
            render_locked(t, p, d, disk, idx, &b);
            out->size = b.len;
            out->nlink = 1;
        } else {
            out->is_dir = true;
            out->nlink = 2;
            if (p->kind == CFS_NODE_ROOT)
                out->nlink += t->n_doms;
            else if (p->kind == CFS_NODE_DOMAIN)
                out->nlink += d->n_disks;
            else if (p->kind == CFS_NODE_DISK)
                out->nlink += 1;
            else if (p->kind == CFS_NODE_SNAPDIR)
                out->nlink += disk->n_layers ? disk->n_layers - 1 : 0;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

int cfs_engine_readdir(struct cfs_engine *e, const struct cfs_path *p,
                       char ***names)
{
    *names = NULL;
    if (cfs_node_is_file(p->kind))
        return -ENOTDIR;
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_domain *d;
    struct cfs_disk *disk;
    int idx;
    int r = resolve(t, p, &d, &disk, &idx);
    if (r < 0)
        goto out;
    switch (p->kind) {
    case CFS_NODE_ROOT:
        for (size_t i = 0; i < t->n_doms; i++)
            cfs_strv_push(names, cfs_xstrdup(t->doms[i]->name));
        break;
    case CFS_NODE_DOMAIN:
        for (size_t i = 0; i < d->n_disks; i++)
            cfs_strv_push(names, cfs_xstrdup(d->disks[i].target));
        break;
    case CFS_NODE_DISK:
        for (const char *const *n = cfs_disk_entries; *n; n++)
            cfs_strv_push(names, cfs_xstrdup(*n));
        break;
    case CFS_NODE_SNAPDIR:
        /* oldest first, as they were taken */
        for (size_t i = disk->n_layers; i-- > 0;) {
            const char *n = disk->layers[i].name;
            if (n && visible_snapshot(t, d, disk, n) == (int)i)
                cfs_strv_push(names, cfs_xstrdup(n));
        }
        break;
    case CFS_NODE_SNAPSHOT:
        for (const char *const *n = cfs_snapshot_entries; *n; n++)
            cfs_strv_push(names, cfs_xstrdup(*n));
        break;
    default:
        r = -ENOTDIR;
    }
out:
    pthread_mutex_unlock(&t->lock);
    return r;
}

int cfs_engine_read(struct cfs_engine *e, const struct cfs_path *p,
                    struct cfs_buf *out)
{
    if (!cfs_node_is_file(p->kind))
        return -EISDIR;
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_domain *d;
    struct cfs_disk *disk;
    int idx;
    int r = resolve(t, p, &d, &disk, &idx);
    if (r == 0)
        render_locked(t, p, d, disk, idx, out);
    pthread_mutex_unlock(&t->lock);
    return r;
}

int cfs_engine_wait(struct cfs_engine *e, const char *dom, const char *disk,
                    bool (*interrupted)(void *arg), void *arg,
                    struct cfs_buf *out)
{
    struct cfs_tree *t = e->tree;
    int r = 0;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        struct cfs_domain *d = cfs_tree_find_domain(t, dom);
        if (!d || !cfs_domain_find_disk(d, disk)) {
            r = -ENOENT;
            break;
        }
        struct cfs_disk_state *s = cfs_tree_find_disk_state(t, dom, disk);
        if (!s || !cfs_job_state_in_progress(s->job.state)) {
            cfs_render_job_text(out, s ? &s->job : NULL, t->stale);
            break;
        }
        if (interrupted && interrupted(arg)) {
            r = -EINTR;
            break;
        }
        struct timespec ts = deadline_in(100);
        pthread_cond_timedwait(&t->changed, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

/* ---- mkdir / rmdir (FUSE threads) ------------------------------------------------ */

/* Why lock_live() failed, for a refusal. Caller frees. */
static char *live_error(int r)
{
    if (r == -ENOENT)
        return cfs_xstrdup("no such domain");
    if (r == -ENOTCONN)
        return cfs_xasprintf("libvirt is unreachable (chainfs keeps reconnecting): %s",
                             errmsg_or(strerror(-r)));
    return cfs_xasprintf("cannot read the disk's chain from libvirt: %s",
                         errmsg_or(strerror(-r)));
}

/* Record a refusal or failure on the disk's job file, unless a job is in
 * progress there (its own state must not be overwritten). */
static void note_failure(struct cfs_engine *e, const char *dom,
                         const char *disk, enum cfs_job_type type,
                         const char *snapshot, const char *msg)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    if (d && cfs_domain_find_disk(d, disk)) {
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
        if (!cfs_job_state_in_progress(s->job.state)) {
            char **partial = TAKE_PTR(s->partial_tops);
            cfs_job_clear(&s->job);
            s->partial_tops = partial;
            s->job.type = type;
            s->job.state = CFS_JOB_STATE_FAILED;
            s->job.snapshot = cfs_xstrdup(snapshot);
            s->job.started = s->job.finished = now_s();
            s->job.error = cfs_xstrdup(msg);
            job_number(e, s);
            tree_changed(e);
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
}

/* Log a refusal and show it in the disk's job file (note_failure leaves
 * a job in progress alone, so an EBUSY does not clobber the job it met). */
static int refuse(struct cfs_engine *e, const char *op, const char *dom,
                  const char *disk, const char *name, int err,
                  const char *why)
{
    log_warn("%s %s/%s/snapshots/%s refused (%s): %s", op, dom, disk, name,
             strerror(-err), why);
    if (err == -ENOTCONN)
        conn_suspect(e, true);
    _cleanup_free_ char *msg = cfs_xasprintf("%s %s: %s", op, name, why);
    note_failure(e, dom, disk,
                 strcmp(op, "mkdir") == 0 ? CFS_JOB_SNAPSHOT : CFS_JOB_COMMIT,
                 name, msg);
    return err;
}

int cfs_engine_mkdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name)
{
    int r = cfs_name_validate(name);
    if (r < 0)
        return refuse(e, "mkdir", dom, disk, name, r,
                      r == -ENAMETOOLONG
                          ? "name longer than 255 bytes"
                          : "a snapshot name is 1 to 64 characters of "
                            "[A-Za-z0-9._-] and does not start with '.' or '-'");
    const char *unreachable = NULL;
    r = check_reachable(e, dom, &unreachable);
    if (r < 0)
        return refuse(e, "mkdir", dom, disk, name, r, unreachable);

    /* Claim the disk on the chain as libvirt has it now (the new overlay
     * goes above the layer that is active now, whatever the tree showed):
     * the job file shows the snapshot being taken, and a concurrent mkdir
     * or rmdir on the disk gets EBUSY. */
    _cleanup_(cfs_layer_clear) struct cfs_layer active = {0};
    _cleanup_free_ char *live_why = NULL;
    const char *why = NULL;
    r = lock_live(e, dom);
    if (r < 0) {
        why = live_why = live_error(r);
        return refuse(e, "mkdir", dom, disk, name, r, why);
    }
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    if (e->tree->stale) {
        r = -ENOTCONN;
        why = "libvirt is unreachable (chainfs keeps reconnecting)";
    } else if (!d || !dk) {
        r = -ENOENT;
        why = d ? "no such disk" : "no such domain";
    } else if (dk->readonly || dk->shareable || dk->n_layers == 0) {
        r = -EROFS;
        why = dk->readonly ? "the disk is read-only"
              : dk->shareable ? "the disk is shareable" : "the disk has no source";
    } else if (!e->overlay_dir &&
               (dk->layers[0].is_block ||
                (dk->layers[0].path && strncmp(dk->layers[0].path, "/dev/", 5) == 0))) {
        /* beside the active image would be /dev: never create files there */
        r = -EROFS;
        why = "the disk's active layer is a block device (or in /dev), beside "
              "which no overlay is created; start chainfs with "
              "-o overlay_dir=DIR to give its overlays a directory";
    } else {
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
        if (cfs_job_state_in_progress(s->job.state)) {
            r = -EBUSY;
            why = "the disk has a job in progress";
        } else if (cfs_strv_contains(d->snapshots, name) ||
                   cfs_disk_find_snapshot(dk, name) >= 0) {
            r = -EEXIST;
            why = "the domain already has a snapshot of that name";
        } else {
            char **partial = TAKE_PTR(s->partial_tops);
            cfs_job_clear(&s->job);
            s->partial_tops = partial;
            s->job.type = CFS_JOB_SNAPSHOT;
            s->job.state = CFS_JOB_STATE_RUNNING;
            s->job.snapshot = cfs_xstrdup(name);
            s->job.base = cfs_xstrdup(dk->layers[0].path);
            s->job.started = now_s();
            job_number(e, s);
            active.path = cfs_xstrdup(dk->layers[0].path);
            cfs_file_id_copy(&active.id, &dk->layers[0].id);
            tree_changed(e);
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        return refuse(e, "mkdir", dom, disk, name, r, why);
    }

    _cleanup_free_ char *dir = NULL;
    if (e->overlay_dir) {
        dir = cfs_xstrdup(e->overlay_dir);
    } else {
        _cleanup_free_ char *tmp = cfs_xstrdup(active.path);
        dir = cfs_xstrdup(dirname(tmp));
    }
    _cleanup_free_ char *file = cfs_overlay_filename(dom, disk, name);
    _cleanup_free_ char *overlay = cfs_xasprintf("%s/%s", dir, file);
    _cleanup_free_ char *msg = NULL;
    struct statvfs vfs;
    struct stat st;

    /* not local: libvirt checks the file and the space itself */
    bool local = engine_files_local(e);
    if (local && lstat(overlay, &st) == 0) {
        r = -EEXIST;
        msg = cfs_xasprintf("the overlay file %s already exists", overlay);
    } else if (local && statvfs(dir, &vfs) < 0) {
        r = -errno;
        msg = cfs_xasprintf("overlay directory %s: %s", dir, strerror(errno));
    } else if (local && (uint64_t)vfs.f_bavail * vfs.f_frsize < OVERLAY_MIN_FREE) {
        r = -ENOSPC;
        msg = cfs_xasprintf("overlay directory %s is full", dir);
    } else {
        /* durably record the intent before the chain changes */
        struct cfs_job intent = {
            .type = CFS_JOB_SNAPSHOT,
            .snapshot = (char *)name,
            .top = overlay,
            .base = active.path,
            .started = now_s(),
        };
        intent.journal_id = cfs_journal_new_id(e->journal);
        r = journal_record(e, dom, disk, &intent, "starting");
        if (r < 0) {
            msg = cfs_xasprintf("cannot write the journal in %s: %s",
                                e->state_dir, strerror(-r));
            r = -EIO;
        } else {
            r = e->be->ops->snapshot_create(e->be, dom, disk, name, overlay);
            if (r < 0)
                msg = cfs_xstrdup(errmsg_or(strerror(-r)));
            /* closing the entry is not on the caller's path: the engine
             * thread does it (a crash before then is harmless, recovery
             * looks at the chain) */
            struct work *w = cfs_xcalloc(1, sizeof(*w));
            w->kind = WORK_JOURNAL_CLOSE;
            w->errmsg = TAKE_PTR(intent.journal_id);
            queue_push(e, w);
        }
        free(intent.journal_id);
    }

    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true); /* before the close callback says so */
        /* release the claim, then record why */
        log_warn("mkdir %s/%s/snapshots/%s failed (%s): %s", dom, disk, name,
                 strerror(-r), msg);
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
        s->job.state = CFS_JOB_STATE_FAILED;
        pthread_mutex_unlock(&e->tree->lock);
        _cleanup_free_ char *text = cfs_xasprintf("mkdir %s: %s", name, msg);
        note_failure(e, dom, disk, CFS_JOB_SNAPSHOT, name, text);
        return r;
    }

    /* mkdir returns once the overlay is the active layer: show it now
     * (libvirt sends no event for a snapshot). Re-reading the domain costs
     * as much as the snapshot itself, so the new overlay is put in place
     * here and the full re-read follows in the background; a re-read that
     * was in flight meanwhile starts over (refresh_domain). Readers stay
     * consistent: fuse_ops.c serves an open() what the stat() before it
     * saw. */
    pthread_mutex_lock(&e->tree->lock);
    (*dom_seq_slot(e, dom))++;
    bool pushed = tree_push_overlay(e->tree, dom, disk, &active, overlay, name,
                                    local);
    pthread_mutex_unlock(&e->tree->lock);
    if (pushed)
        on_domain_changed(e, dom); /* the exact figures, in the background */
    else
        refresh_after_change(e, dom);
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    s->job.state = CFS_JOB_STATE_COMPLETED;
    free(s->job.top);
    s->job.top = cfs_xstrdup(overlay);
    s->job.finished = now_s();
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    log_info("mkdir %s/%s/snapshots/%s: new active layer %s", dom, disk, name,
             overlay);
    return 0;
}

struct offline_args {
    struct cfs_engine *e;
    char *dom, *disk, *top, *base;
    bool active;
    uint64_t job_id;
};

static void *offline_worker(void *arg)
{
    struct offline_args *a = arg;
    struct cfs_engine *e = a->e;
    int r = e->be->ops->offline_commit(e->be, a->dom, a->disk, a->top, a->base,
                                       a->active);
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = WORK_OFFLINE_DONE;
    w->dom = a->dom;
    w->disk = a->disk;
    w->job_id = a->job_id;
    w->err = r;
    if (r < 0)
        w->errmsg = cfs_xstrdup(errmsg_or(strerror(-r)));
    free(a->top);
    free(a->base);
    free(a);
    if (e->thread_started) {
        queue_push(e, w);
    } else {
        /* unit tests without the engine thread */
        process_work(e, w);
        work_free(w);
    }
    pthread_mutex_lock(&e->qlock);
    e->offline_workers--;
    pthread_mutex_unlock(&e->qlock);
    return NULL;
}

/* How libvirt is to name layer L of DISK in a commit: "vda[N]" by the
 * index the live XML gave it (what the chain is now, not what a path
 * string matched some time ago), else its path. Caller frees. */
static char *layer_ref(const char *disk, const struct cfs_layer *l)
{
    return l->index ? cfs_xasprintf("%s[%u]", disk, l->index)
                    : cfs_xstrdup(l->path);
}

/* A merge of TOP into BASE writes BASE and deletes TOP: it is refused if
 * any other disk (of this domain or another) has either in its chain. */
static const char *const merge_file_role[2] = { "the layer to merge into",
                                                "the snapshot's own layer" };

static char *shared_why(const struct file_ref *f, size_t which,
                        const char *user)
{
    return cfs_xasprintf("%s, %s, is also in the chain of %s",
                         merge_file_role[which],
                         cfs_file_display(f->id, f->path), user);
}

/* From the tree; caller holds the lock. *WHY set (caller frees) if so. */
static bool shared_in_tree(struct cfs_tree *t, const char *dom,
                           const char *disk, const struct cfs_layer *top,
                           const struct cfs_layer *base, char **why)
{
    const struct file_ref files[2] = { { &base->id, base->path },
                                       { &top->id, top->path } };
    for (size_t i = 0; i < 2; i++) {
        const struct cfs_domain *od = NULL;
        const struct cfs_disk *ok =
            cfs_tree_file_user(t, files[i].id, files[i].path, dom, disk, &od);
        if (ok) {
            _cleanup_free_ char *user =
                cfs_xasprintf("domain %s disk %s", od->name, ok->target);
            *why = shared_why(&files[i], i, user);
            return true;
        }
    }
    return false;
}

/* The same, asked of libvirt for every domain now. Returns 0 if no one
 * else uses either file, else a negative errno (-EBUSY: used) and *WHY. */
static int shared_live(struct cfs_engine *e, const char *dom,
                       const char *disk, const struct cfs_job *job,
                       const struct cfs_file_id *base_id, char **why)
{
    const struct file_ref files[2] = { { base_id, job->base },
                                       { &job->top_id, job->top } };
    _cleanup_free_ char *user = NULL;
    size_t which = 0;
    int r = file_user_live(e, files, 2, dom, disk, &user, &which);
    if (r == 0)
        return 0;
    if (r > 0) {
        *why = shared_why(&files[which], which, user);
        return -EBUSY;
    }
    *why = cfs_xasprintf("cannot tell whether the files of the merge are "
                         "used elsewhere: %s", user);
    return r;
}

int cfs_engine_rmdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name)
{
    int r = 0;
    const char *why = NULL;
    _cleanup_free_ char *why_buf = NULL;
    _cleanup_free_ char *top_ref = NULL, *base_ref = NULL;
    _cleanup_(cfs_layer_clear) struct cfs_layer seen_top = {0};
    _cleanup_(cfs_layer_clear) struct cfs_layer seen_base = {0};
    _cleanup_(cfs_file_id_clear) struct cfs_file_id base_id = {0};
    struct cfs_job job = {0};
    bool running = false;

    r = check_reachable(e, dom, &why);
    if (r < 0)
        return refuse(e, "rmdir", dom, disk, name, r, why);

    /* What the user sees: the snapshot's layer and the layer below it. */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    struct cfs_disk_state *s = dk ? cfs_tree_find_disk_state(e->tree, dom, disk) : NULL;
    int seen = dk ? visible_snapshot(e->tree, d, dk, name) : -1;
    if (e->tree->stale) {
        r = -ENOTCONN;
        why = "libvirt is unreachable (chainfs keeps reconnecting)";
    } else if (!d || !dk) {
        r = -ENOENT;
        why = d ? "no such disk" : "no such domain";
    } else if (s && cfs_job_state_in_progress(s->job.state)) {
        r = -EBUSY;
        why = "the disk has a job in progress";
    } else if (seen < 0) {
        r = -ENOENT;
        why = "no such snapshot";
    } else {
        seen_top.path = cfs_xstrdup(dk->layers[seen].path);
        cfs_file_id_copy(&seen_top.id, &dk->layers[seen].id);
        seen_base.path = cfs_xstrdup(dk->layers[seen + 1].path);
        cfs_file_id_copy(&seen_base.id, &dk->layers[seen + 1].id);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0)
        return refuse(e, "rmdir", dom, disk, name, r, why);

    /* The chain as libvirt has it now: the same two files, one above the
     * other, wherever they sit in it; the domain's state from it too. */
    r = lock_live(e, dom);
    if (r < 0) {
        why = why_buf = live_error(r);
        return refuse(e, "rmdir", dom, disk, name, r, why);
    }
    d = cfs_tree_find_domain(e->tree, dom);
    dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    s = dk ? cfs_tree_disk_state(e->tree, dom, disk) : NULL;
    int idx = dk ? cfs_disk_find_file(dk, &seen_top.id, seen_top.path) : -1;
    if (!d || !dk) {
        r = -ENOENT;
        why = d ? "no such disk" : "no such domain";
    } else if (cfs_job_state_in_progress(s->job.state)) {
        r = -EBUSY;
        why = "the disk has a job in progress";
    } else if (idx < 0 || (size_t)idx + 1 >= dk->n_layers) {
        r = -ENOENT;
        why = why_buf = cfs_xasprintf(
            "the snapshot's layer %s is no longer in the disk's chain "
            "(changed outside chainfs)",
            cfs_file_display(&seen_top.id, seen_top.path));
    } else if (!cfs_layer_same(&dk->layers[idx + 1], &seen_base)) {
        r = -ESTALE;
        why = why_buf = cfs_xasprintf(
            "the layer below the snapshot is now %s, not %s as listed (the "
            "chain changed outside chainfs); look again",
            cfs_file_display(&dk->layers[idx + 1].id, dk->layers[idx + 1].path),
            cfs_file_display(&seen_base.id, seen_base.path));
    } else if (dk->readonly || dk->shareable) {
        r = -EROFS;
        why = dk->readonly ? "the disk is read-only" : "the disk is shareable";
    } else if (shared_in_tree(e->tree, dom, disk, &dk->layers[idx],
                              &dk->layers[idx + 1], &why_buf)) {
        r = -EBUSY;
        why = why_buf;
    } else if (d->state == CFS_DOM_SHUTOFF && !engine_files_local(e)) {
        r = -EOPNOTSUPP;
        why = "the domain is shut off and its image files are not on this "
              "machine: an offline merge runs qemu-img on them and libvirt "
              "has no API for it; start the domain and rmdir again";
    } else {
        running = d->state != CFS_DOM_SHUTOFF;
        const struct cfs_layer *top = &dk->layers[idx];
        char **partial = TAKE_PTR(s->partial_tops);
        cfs_job_clear(&s->job);
        s->partial_tops = partial;
        s->gone_since_ms = 0;
        s->pivot_failures = 0;
        struct cfs_job *j = &s->job;
        j->type = !running ? CFS_JOB_OFFLINE_COMMIT
                  : idx == 0 ? CFS_JOB_ACTIVE_COMMIT : CFS_JOB_COMMIT;
        j->state = CFS_JOB_STATE_RUNNING;
        j->snapshot = cfs_xstrdup(name);
        j->meta_name = cfs_xstrdup(top->meta_name);
        j->top = cfs_xstrdup(top->path);
        cfs_file_id_copy(&j->top_id, &top->id);
        j->base = cfs_xstrdup(dk->layers[idx + 1].path);
        cfs_file_id_copy(&base_id, &dk->layers[idx + 1].id);
        top_ref = layer_ref(disk, top);
        base_ref = layer_ref(disk, &dk->layers[idx + 1]);
        j->end = top->virtual_size;
        j->started = now_s();
        j->journal_id = cfs_journal_new_id(e->journal);
        job_number(e, s);
        struct stat bst;
        s->base_bytes = engine_files_local(e) && stat(j->base, &bst) == 0
                            ? (uint64_t)bst.st_blocks * 512 : 0;
        /* a live commit is not in libvirt until commit_start returns */
        s->starting = running;
        cfs_job_copy(&job, j);
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        return refuse(e, "rmdir", dom, disk, name, r, why);
    }

    /* The disk is claimed; no one else may use either file, as libvirt
     * has every chain now (the tree may lag behind another domain). */
    r = shared_live(e, dom, disk, &job, &base_id, &why_buf);
    if (r < 0) {
        log_warn("rmdir %s/%s/snapshots/%s refused (%s): %s", dom, disk, name,
                 strerror(-r), why_buf);
        set_starting(e, dom, disk, job.id, false);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", name, why_buf);
        job_end(e, dom, disk, job.id, CFS_JOB_STATE_FAILED, text, false);
        cfs_job_clear(&job);
        return r;
    }

    /* durably record the intent before anything changes */
    if (journal_record(e, dom, disk, &job, "starting") < 0) {
        set_starting(e, dom, disk, job.id, false);
        _cleanup_free_ char *text = cfs_xasprintf(
            "rmdir %s: cannot write the journal in %s", name, e->state_dir);
        job_end(e, dom, disk, job.id, CFS_JOB_STATE_FAILED, text, false);
        cfs_job_clear(&job);
        return -EIO;
    }

    if (job.type == CFS_JOB_OFFLINE_COMMIT) {
        struct offline_args *a = cfs_xcalloc(1, sizeof(*a));
        *a = (struct offline_args){
            .e = e,
            .dom = cfs_xstrdup(dom),
            .disk = cfs_xstrdup(disk),
            .top = cfs_xstrdup(job.top),
            .base = cfs_xstrdup(job.base),
            .active = idx == 0,
            .job_id = job.id,
        };
        pthread_mutex_lock(&e->qlock);
        e->offline_workers++;
        pthread_mutex_unlock(&e->qlock);
        pthread_t th;
        r = -pthread_create(&th, NULL, offline_worker, a);
        if (r < 0) {
            pthread_mutex_lock(&e->qlock);
            e->offline_workers--;
            pthread_mutex_unlock(&e->qlock);
            free(a->dom);
            free(a->disk);
            free(a->top);
            free(a->base);
            free(a);
            job_end(e, dom, disk, job.id, CFS_JOB_STATE_FAILED, strerror(-r), false);
            cfs_job_clear(&job);
            return -EIO;
        }
        pthread_detach(th);
        journal_record(e, dom, disk, &job, "running");
        log_info("rmdir %s/%s/snapshots/%s: offline merge of %s into %s started",
                 dom, disk, name, job.top, job.base);
        cfs_job_clear(&job);
        return 0;
    }

#ifdef CHAINFS_TEST_HOOKS
    hook_set_commit_bandwidth(e);
#endif
    r = e->be->ops->commit_start(e->be, dom, disk, top_ref, base_ref,
                                 job.type == CFS_JOB_ACTIVE_COMMIT);
    set_starting(e, dom, disk, job.id, false);
    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        log_warn("rmdir %s/%s/snapshots/%s failed (%s): %s", dom, disk, name,
                 strerror(-r), msg);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", name, msg);
        job_end(e, dom, disk, job.id, CFS_JOB_STATE_FAILED, text, false);
        cfs_job_clear(&job);
        return r;
    }
    journal_record(e, dom, disk, &job, "running");
    log_info("rmdir %s/%s/snapshots/%s: %s of %s (%s) into %s (%s) started",
             dom, disk, name, cfs_job_type_to_string(job.type), job.top,
             top_ref, job.base, base_ref);
    cfs_job_clear(&job);

    /* wake the engine thread so it starts polling right away */
    pthread_mutex_lock(&e->qlock);
    pthread_cond_signal(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return 0;
}
