/* engine.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

#include <stdatomic.h>

#include "chainfs/nodes.h" /* CFS_OWN_DIR */

#include <malloc.h>

/* ---- work queue ----------------------------------------------------------- */

void work_free(struct work *w)
{
    free(w->dom);
    free(w->disk);
    free(w->errmsg);
    free(w);
}

void queue_push(struct cfs_engine *e, struct work *w)
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

struct work *work_new(enum work_kind kind, const char *dom,
                      const char *disk)
{
    struct work *w = cfs_xcalloc(1, sizeof(*w));
    w->kind = kind;
    w->dom = cfs_xstrdup(dom);
    w->disk = cfs_xstrdup(disk);
    return w;
}

/* A CLOCK_MONOTONIC deadline MS milliseconds from now. */
struct timespec deadline_in(int64_t ms)
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

/* ---- domain work -----------------------------------------------------------
 * The engine thread itself makes no call that can wait for one domain's
 * QEMU: it routes such work to that domain's queue, served by a bounded
 * pool of threads (issue 12: not one thread per domain), one item of a
 * domain at a time and in order, an event's or a job's work before the
 * timer's. A stuck QEMU ties up one libvirt call and one pool thread
 * (the pool grows by one meanwhile), and the engine thread marks the
 * domain as not responding. Without the engine thread (unit tests)
 * everything runs inline. */


static bool work_per_domain(const struct work *w)
{
    switch (w->kind) {
    case WORK_REFRESH_DOMAIN:
    case WORK_JOB_EVENT:
    case WORK_OFFLINE_DONE:
    case WORK_POLL_JOB:
    case WORK_RECOVER:
    case WORK_REAPPLY:
    case WORK_READ_LIGHT:
    case WORK_DISPATCH:
    case WORK_THAW:
    case WORK_EXTERNAL_SCAN:
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
    return w->kind == WORK_REFRESH_DOMAIN || w->kind == WORK_EXTERNAL_SCAN ||
           ((w->kind == WORK_POLL_JOB || w->kind == WORK_DISPATCH) &&
            cfs_streq(o->disk, w->disk));
}

/* ---- the pool (issue 12 §2.2) ------------------------------------------- */

static void ready_unlink(struct cfs_engine *e, struct dom_worker *dw)
{
    if (!dw->ready)
        return;
    int k = dw->ready - 1;
    if (dw->rprev)
        dw->rprev->rnext = dw->rnext;
    else
        e->ready_head[k] = dw->rnext;
    if (dw->rnext)
        dw->rnext->rprev = dw->rprev;
    else
        e->ready_tail[k] = dw->rprev;
    dw->rprev = dw->rnext = NULL;
    dw->ready = 0;
    e->n_ready--;
}

/* Put DW (with work, no thread on it) in the ready list its head item
 * asks for: an event's or a job's before the timer's. */
static void ready_push(struct cfs_engine *e, struct dom_worker *dw)
{
    int want = dw->head && !dw->head->periodic ? 1 : 2;
    if (dw->ready == want)
        return;
    ready_unlink(e, dw);
    int k = want - 1;
    dw->rprev = e->ready_tail[k];
    dw->rnext = NULL;
    if (dw->rprev)
        dw->rprev->rnext = dw;
    else
        e->ready_head[k] = dw;
    e->ready_tail[k] = dw;
    dw->ready = want;
    e->n_ready++;
}

static struct dom_worker *ready_pop(struct cfs_engine *e)
{
    for (int k = 0; k < 2; k++) {
        struct dom_worker *dw = e->ready_head[k];
        if (dw) {
            ready_unlink(e, dw);
            return dw;
        }
    }
    return NULL;
}

static void dom_worker_free(struct dom_worker *dw)
{
    while (dw->head) {
        struct work *w = dw->head;
        dw->head = w->next;
        work_free(w);
    }
    free(dw->dom);
    free(dw);
}

static void *pool_main(void *arg)
{
    struct pool_thread *pt = arg;
    struct cfs_engine *e = pt->e;
    /* its lines name the host too (issue 12): recovery, job edges */
    cfs_log_set_context(e->host);
    int64_t idle_since = now_ms();

    pthread_mutex_lock(&e->qlock);
    for (;;) {
        if (e->stopping)
            break;
        struct dom_worker *dw = ready_pop(e);
        if (!dw) {
            if (now_ms() - idle_since >= WORKER_IDLE_MS) {
                if (e->n_pool > POOL_MIN)
                    break;
                idle_since = now_ms(); /* one of the POOL_MIN: stays */
            }
            struct timespec ts = deadline_in(idle_since + WORKER_IDLE_MS - now_ms());
            pthread_cond_timedwait(&e->pool_cond, &e->qlock, &ts);
            continue;
        }
        struct work *w = dw->head;
        dw->head = w->next;
        w->next = NULL;
        dw->running = true;
        pt->on = dw;
        pt->busy_since_ms = now_ms();
        e->n_idle--;
        pthread_mutex_unlock(&e->qlock);

        process_work(e, w);
        work_free(w);

        pthread_mutex_lock(&e->qlock);
        e->n_idle++;
        pt->on = NULL;
        pt->busy_since_ms = 0;
        dw->running = false;
        idle_since = now_ms();
        if (dw->head) {
            ready_push(e, dw);
            pthread_cond_signal(&e->pool_cond);
        } else {
            /* nothing of the domain is kept between its work */
            cfs_strmap_del(e->workers, dw->dom);
            dom_worker_free(dw);
        }
        /* start-up waits for the pool to be idle; the engine thread
         * clears a not-responding mark */
        pthread_cond_broadcast(&e->qcond);
    }
    e->n_idle--;
    e->n_pool--;
    pt->exited = true;
    pthread_cond_broadcast(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return NULL;
}

/* One more pool thread. Caller holds qlock. */
static void pool_spawn(struct cfs_engine *e)
{
    struct pool_thread *pt = cfs_xcalloc(1, sizeof(*pt));
    pt->e = e;
    int r = pthread_create(&pt->thread, NULL, pool_main, pt);
    if (r != 0) {
        log_warn("cannot start a worker thread: %s", strerror(r));
        free(pt);
        return;
    }
    pt->next = e->pool;
    e->pool = pt;
    e->n_pool++;
    e->n_idle++;
}

/* Enough threads for the ready work: an idle one for each domain ready,
 * up to POOL_MIN, plus one per thread held by one call for POOL_STUCK_MS,
 * at most POOL_MAX (a burst of reads, as at start-up, gets the threads at
 * once, not one per wake-up). Caller holds qlock. */
static void pool_grow(struct cfs_engine *e)
{
    if (e->stopping || e->n_idle >= e->n_ready)
        return;
    size_t stuck = 0;
    int64_t t = now_ms();
    for (struct pool_thread *pt = e->pool; pt; pt = pt->next)
        if (!pt->exited && pt->busy_since_ms && t - pt->busy_since_ms >= POOL_STUCK_MS)
            stuck++;
    size_t cap = POOL_MIN + stuck;
    if (cap > POOL_MAX)
        cap = POOL_MAX;
    while (e->n_pool < cap && e->n_idle < e->n_ready) {
        size_t before = e->n_pool;
        pool_spawn(e);
        if (e->n_pool == before)
            break; /* pthread_create failed: logged */
    }
}

/* An engine whose workers were left inside libvirt calls at shut-down
 * (cfs_engine_free): never freed, and kept reachable. */
static struct cfs_engine *engine_left_behind __attribute__((used));

/* Carry out W (takes it): per-domain work goes to the domain's queue,
 * served by the pool, the rest (and everything without threads) runs
 * here and now. */
void route(struct cfs_engine *e, struct work *w)
{
    if (e->threaded && work_per_domain(w)) {
        pthread_mutex_lock(&e->qlock);
        if (e->stopping) {
            pthread_mutex_unlock(&e->qlock);
            work_free(w);
            return;
        }
        struct dom_worker *dw = cfs_strmap_get(e->workers, w->dom);
        if (!dw) {
            dw = cfs_xcalloc(1, sizeof(*dw));
            dw->dom = cfs_xstrdup(w->dom);
            cfs_strmap_put(e->workers, w->dom, dw);
        }
        struct work *covered = NULL;
        for (struct work *o = dw->head; o && !covered; o = o->next)
            if (work_covered(o, w))
                covered = o;
        if (covered) {
            /* an event's re-read looks at every disk: so does the
             * queued one that stands for it */
            covered->periodic = covered->periodic && w->periodic;
            work_free(w);
        } else {
            /* an event's or a job's work goes before the timer's
             * (order among each kept) */
            struct work **pp = &dw->head;
            if (!w->periodic)
                while (*pp && !(*pp)->periodic)
                    pp = &(*pp)->next;
            else
                while (*pp)
                    pp = &(*pp)->next;
            w->next = *pp;
            *pp = w;
        }
        if (!dw->running) {
            ready_push(e, dw);
            pool_grow(e);
            pthread_cond_signal(&e->pool_cond);
        }
        pthread_mutex_unlock(&e->qlock);
        return;
    }
    process_work(e, w);
    work_free(w);
}

/* Join the offline merge threads that are done (ALL: every one, waiting
 * for those still merging). */
void reap_offline(struct cfs_engine *e, bool all)
{
    struct offline_thread *done = NULL;
    pthread_mutex_lock(&e->qlock);
    for (struct offline_thread **pp = &e->offline; *pp;) {
        struct offline_thread *ot = *pp;
        if (all || ot->done) {
            *pp = ot->next;
            ot->next = done;
            done = ot;
        } else {
            pp = &ot->next;
        }
    }
    pthread_mutex_unlock(&e->qlock);
    while (done) {
        struct offline_thread *next = done->next;
        pthread_join(done->thread, NULL);
        free(done->dom);
        free(done->disk);
        free(done);
        done = next;
    }
}

/* Join the pool threads that ended (engine thread), and grow the pool
 * when threads are held by stuck calls and work waits. */
static void reap_workers(struct cfs_engine *e)
{
    struct pool_thread *done = NULL;
    pthread_mutex_lock(&e->qlock);
    for (struct pool_thread **pp = &e->pool; *pp;) {
        struct pool_thread *pt = *pp;
        if (pt->exited) {
            *pp = pt->next;
            pt->next = done;
            done = pt;
        } else {
            pp = &pt->next;
        }
    }
    pool_grow(e);
    pthread_mutex_unlock(&e->qlock);
    while (done) {
        struct pool_thread *next = done->next;
        pthread_join(done->thread, NULL);
        free(done);
        done = next;
    }
}

static void drop_queue(void *opaque, const char *key, void *value)
{
    (void)opaque;
    (void)key;
    struct dom_worker *dw = value;
    /* one a stuck thread is on stays theirs (left behind with the engine) */
    if (!dw->running)
        dom_worker_free(dw);
}

/* Stop the pool: each thread finishes the item it is in; queued work is
 * dropped. Returns the names of the domains whose call has not returned
 * after WORKER_STOP_WAIT_MS (their threads detached and left in e->pool:
 * they may still touch the engine and the backend when the call
 * returns). */
static char **stop_workers(struct cfs_engine *e)
{
    char **stuck = NULL;
    struct timespec ts = deadline_in(WORKER_STOP_WAIT_MS);
    pthread_mutex_lock(&e->qlock);
    pthread_cond_broadcast(&e->pool_cond);
    for (;;) {
        bool all = true;
        for (struct pool_thread *pt = e->pool; pt; pt = pt->next)
            all = all && pt->exited;
        if (all || pthread_cond_timedwait(&e->qcond, &e->qlock, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&e->qlock);
    reap_workers(e);
    pthread_mutex_lock(&e->qlock);
    for (struct pool_thread *pt = e->pool; pt; pt = pt->next) {
        if (pt->on)
            cfs_strv_push(&stuck, cfs_xstrdup(pt->on->dom));
        pthread_detach(pt->thread);
    }
    if (!e->pool) {
        e->ready_head[0] = e->ready_head[1] = NULL;
        e->ready_tail[0] = e->ready_tail[1] = NULL;
        e->n_ready = 0;
        cfs_strmap_each(e->workers, drop_queue, NULL);
        cfs_strmap_free(e->workers, NULL);
        e->workers = NULL;
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
    for (struct pool_thread *pt = e->pool; pt; pt = pt->next)
        if (!pt->exited && pt->on && pt->busy_since_ms &&
            t - pt->busy_since_ms >= NOT_RESPONDING_MS)
            cfs_strv_push(&slow, cfs_xstrdup(pt->on->dom));
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

void on_domain_changed(void *opaque, const char *dom)
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
static int engine_start_read(struct cfs_engine *e, char **errmsg);
static void engine_refresh_tick(struct cfs_engine *e);

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

/* What the engine keeps per domain name, created on first use (caller
 * holds the tree lock). Issue 12 §2.5: a hash, not a walk. */
struct dom_info *dom_info_get(struct cfs_engine *e, const char *name)
{
    struct dom_info *i = cfs_strmap_get(e->dom_info, name);
    if (!i) {
        i = cfs_xcalloc(1, sizeof(*i));
        /* far from every counter before it: a read begun before a
         * forget never matches (each counter moves by one per change) */
        e->seq_fresh += 1UL << 24;
        i->seq = e->seq_fresh;
        cfs_strmap_put(e->dom_info, name, i);
    }
    return i;
}

/* Per-domain change counters (caller holds the tree lock). A read of a
 * domain is installed only if the domain's counter did not move while it
 * was under way: a read that overlapped a newer change (mkdir's own
 * update, a re-read that already saw a pivot) may carry the older state,
 * and the tree must never go back in time. The slot stays valid until
 * the domain is forgotten (the tree lock held meanwhile). */
unsigned long *dom_seq_slot(struct cfs_engine *e, const char *name)
{
    return &dom_info_get(e, name)->seq;
}

void forget_domain(struct cfs_engine *e, const char *name)
{
    if (cfs_tree_find_domain(e->tree, name))
        return;
    if (!cfs_tree_forget_domain(e->tree, name))
        return; /* a job of chainfs still has a state there */
    free(cfs_strmap_del(e->dom_info, name));
}

/* Install D (a read of domain NAME, or NULL: it is gone) unless the
 * domain changed since BEFORE. Caller holds the tree lock. Returns false
 * (and frees D) if the read is outdated. */
bool install_read(struct cfs_engine *e, const char *name,
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

const char *domain_busy_disk(struct cfs_engine *e, const char *dom,
                             const char *except, bool pull_only)
{
    const struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    for (size_t i = 0; d && i < d->n_disks; i++) {
        const char *t = d->disks[i].target;
        if (except && cfs_streq(t, except))
            continue;
        const struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, t);
        if (!s)
            continue;
        if (cfs_job_phase_in_progress(s->job.phase) &&
            (!pull_only || s->job.type == CFS_JOB_PULL))
            return t;
        if (pull_only && s->external.type == CFS_JOB_PULL)
            return t; /* someone's virsh blockpull: the same crash */
        if (!pull_only && s->external.type != CFS_JOB_NONE)
            return t;
    }
    return NULL;
}

/* Re-read one domain from the backend into the tree. While chainfs pulls
 * on it, without block statistics: they make QEMU 7.2 query its block
 * nodes, which crashes it when the pull ends meanwhile (design §7.4). */
int refresh_domain(struct cfs_engine *e, const char *name)
{
    for (int tries = 0;; tries++) {
        struct cfs_domain *d = NULL;
        pthread_mutex_lock(&e->tree->lock);
        unsigned long before = *dom_seq_slot(e, name);
        bool quiet = e->be->ops->read_domain_light &&
                     (domain_busy_disk(e, name, NULL, true) ||
                      cfs_strv_contains(e->startup_pull_doms, name));
        pthread_mutex_unlock(&e->tree->lock);
        int r = quiet ? e->be->ops->read_domain_light(e->be, name, &d)
                      : e->be->ops->read_domain(e->be, name, &d);
        if (r < 0 && r != -ENOENT) {
            log_warn("reading domain %s: %s", name, errmsg_or(strerror(-r)));
            /* the next refresh reads it again, whatever its statistics */
            pthread_mutex_lock(&e->tree->lock);
            dom_info_get(e, name)->have_fp = false;
            pthread_mutex_unlock(&e->tree->lock);
            if (r == -ENOTCONN)
                conn_suspect(e, true);
            return r;
        }
        bool removed;
        pthread_mutex_lock(&e->tree->lock);
        bool installed = install_read(e, name, before, r == 0 ? d : NULL, &removed);
        if (installed && r == 0)
            dom_info_get(e, name)->last_full_ms = now_ms();
        if (installed && r == -ENOENT)
            forget_domain(e, name);
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

/* The layer of OD that is NL, -1 if none: first where a chain changed by
 * one layer put it (as deep above the base as NL, or one more or one
 * less: a layer added or merged away between them), then anywhere
 * (issue 12: a pass over OD per layer made every re-read O(n^2)). */
static ssize_t same_layer_in(const struct cfs_disk *od, const struct cfs_disk *nd,
                             size_t l, const struct cfs_layer *nl)
{
    if (!od)
        return -1;
    size_t from_base = nd->n_layers - 1 - l; /* 0: NL is the base */
    const size_t tries[3] = { from_base, from_base + 1, from_base - 1 };
    for (size_t t = 0; t < 3; t++) {
        if (tries[t] >= od->n_layers) /* also from_base - 1 wrapped below 0 */
            continue;
        size_t k = od->n_layers - 1 - tries[t];
        if (cfs_layer_same(&od->layers[k], nl))
            return (ssize_t)k;
    }
    for (size_t k = 0; k < od->n_layers; k++)
        if (cfs_layer_same(&od->layers[k], nl))
            return (ssize_t)k;
    return -1;
}

/* Give the layers of NEW the sizes the tree already knows for the same
 * files; a layer the tree does not know keeps its stat() sizes, and
 * takes the virtual size of the layer below if it has none. */
void carry_sizes(const struct cfs_domain *old, struct cfs_domain *new)
{
    for (size_t i = 0; i < new->n_disks; i++) {
        struct cfs_disk *nd = &new->disks[i];
        const struct cfs_disk *od = old ? cfs_domain_find_disk(old, nd->target) : NULL;
        for (size_t l = nd->n_layers; l-- > 0;) {
            struct cfs_layer *nl = &nd->layers[l];
            ssize_t k = same_layer_in(od, nd, l, nl);
            if (k >= 0) {
                const struct cfs_layer *ol = &od->layers[k];
                nl->virtual_size = ol->virtual_size;
                nl->allocation = ol->allocation;
                nl->physical = ol->physical;
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
bool engine_files_local(struct cfs_engine *e)
{
    return !e->be->ops->files_local || e->be->ops->files_local(e->be, NULL);
}

/* The tree as it is right after a snapshot of DOM/DISK made OVERLAY the
 * active layer above ACTIVE (sizes of the new overlay from stat() when
 * FILES_LOCAL, else 0 until the next re-read). Caller holds the lock.
 * false if the tree no longer looks as it did before. */
bool tree_push_overlay(struct cfs_tree *t, const char *dom,
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

void refresh_after_change(struct cfs_engine *e, const char *dom)
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
int lock_live(struct cfs_engine *e, const char *dom)
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

/* Take a domain named as chainfs's own directory out of libvirt's list
 * NAMES (issue 11): it is not shown, so it is not read either. */
static void drop_own_name(struct cfs_engine *e, char **names)
{
    for (char **n = names; n && *n; n++) {
        if (!cfs_streq(*n, CFS_OWN_DIR))
            continue; /* every refresh lists every domain: no lock for them */
        pthread_mutex_lock(&e->tree->lock);
        bool own = cfs_tree_own_name(e->tree, *n); /* logs it once */
        pthread_mutex_unlock(&e->tree->lock);
        if (own) {
            free(*n);
            memmove(n, n + 1, (cfs_strv_len(n + 1) + 1) * sizeof(*n));
            n--;
        }
    }
}

/* Which block statistics the bulk call asks (issue 12 §2.2). Those of
 * shut-off domains only: a running domain's need its QEMU's monitor,
 * and NOWAIT skips only a domain whose job is held; a QEMU that is
 * stopped (SIGSTOP, a hung host) with no job held would keep the whole
 * call, and with it the engine thread, waiting. A running domain is
 * therefore partial in the listing and read on its own worker as before
 * (where a stuck QEMU marks it not responding and holds up nothing
 * else); and while a pull runs, its block statistics must not be asked
 * anyway (design §7.4). */
static const bool bulk_no_running_blocks = true;

/* Give the layers of D the sizes the bulk statistics S report (matched
 * by backingIndex when both have one, else by path). True if one
 * changed. */
static bool apply_summary_sizes(struct cfs_domain *d, const struct cfs_dom_summary *s)
{
    bool changed = false;
    for (size_t k = 0; k < s->n_disks; k++) {
        const struct cfs_stats_disk *sd = &s->disks[k];
        struct cfs_disk *dk = cfs_domain_find_disk(d, sd->target);
        for (size_t l = 0; dk && l < sd->n_layers; l++) {
            const struct cfs_stats_layer *sl = &sd->layers[l];
            for (size_t m = 0; m < dk->n_layers; m++) {
                struct cfs_layer *ly = &dk->layers[m];
                bool same = (ly->index && sl->index) ? ly->index == sl->index
                            : (l == 0 ? m == 0 : cfs_streq(ly->path, sl->path));
                if (!same)
                    continue;
                if (sl->capacity && ly->virtual_size != sl->capacity) {
                    ly->virtual_size = sl->capacity;
                    changed = true;
                }
                if (ly->allocation != sl->allocation || ly->physical != sl->physical) {
                    ly->allocation = sl->allocation;
                    ly->physical = sl->physical;
                    changed = true;
                }
                break;
            }
        }
    }
    return changed;
}

struct audit_cand {
    int64_t last_full_ms;
    size_t i;
};

static int audit_cmp(const void *a, const void *b)
{
    const struct audit_cand *x = a, *y = b;
    return x->last_full_ms < y->last_full_ms ? -1 : x->last_full_ms > y->last_full_ms;
}

static void collect_unlisted(void *opaque, const char *key, void *value)
{
    (void)value;
    struct { const struct cfs_strmap *listed; char ***out; } *c = opaque;
    if (!cfs_strmap_get(c->listed, key))
        cfs_strv_push(c->out, cfs_xstrdup(key));
}

/* What a listing's result R (0 or a negative errno) says of the
 * connection: a failure is logged, and ENOTCONN marks it suspect; a
 * success clears that. Returns R. */
static int listed(struct cfs_engine *e, int r)
{
    if (r < 0)
        log_warn("listing domains: %s", errmsg_or(strerror(-r)));
    if (r >= 0 || r == -ENOTCONN)
        conn_suspect(e, r < 0);
    return r;
}

/* Issue 12 §2.2: one bulk call for every domain; per domain, a full
 * re-read (on its worker) only if its fingerprint changed, its summary
 * is partial, or it is among the K longest not read in full for
 * audit_ms (K = n × refresh_ms / audit_ms, rounded up: every domain is
 * read in full about once per audit period). The others get their sizes
 * from the statistics, and a running one its look for an external job
 * when due (a running domain is partial as long as its block statistics
 * are not asked in bulk: bulk_no_running_blocks). Returns 1 when done, 0 to fall back to the listing, or a
 * negative errno. */
static int refresh_all_stats(struct cfs_engine *e, char **known,
                             unsigned long *known_seq)
{
    struct cfs_dom_summary *v = NULL;
    size_t n = 0;
    int r = e->be->ops->list_stats(e->be, bulk_no_running_blocks, &v, &n);
    if (r == -EOPNOTSUPP)
        return 0;
    if (listed(e, r) < 0)
        return r;
    int64_t t = now_ms();
    struct cfs_strmap *listed = cfs_strmap_new();
    bool *full = cfs_xcalloc(n + 1, sizeof(*full));
    bool *scan = cfs_xcalloc(n + 1, sizeof(*scan));
    struct audit_cand *cand = cfs_xcalloc(n + 1, sizeof(*cand));
    size_t n_cand = 0;
    size_t n_listed = 0;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < n; i++) {
        struct cfs_dom_summary *s = &v[i];
        if (cfs_streq(s->name, CFS_OWN_DIR) && cfs_tree_own_name(e->tree, s->name))
            continue;
        cfs_strmap_put(listed, s->name, s);
        n_listed++;
        struct dom_info *info = dom_info_get(e, s->name);
        struct cfs_domain *d = cfs_tree_find_domain(e->tree, s->name);
        full[i] = !d || !info->have_fp || info->fingerprint != s->fingerprint ||
                  s->partial;
        info->fingerprint = s->fingerprint;
        info->have_fp = true;
        if (full[i])
            continue;
        if (t - info->last_full_ms >= (int64_t)e->audit_ms)
            cand[n_cand++] = (struct audit_cand){ info->last_full_ms, i };
        /* sizes: a running domain's every layer, a shut-off one's active
         * one (the rest comes with its full reads) */
        struct cfs_domain *copy = cfs_domain_dup(d);
        if (apply_summary_sizes(copy, s)) {
            if (cfs_tree_put_domain(e->tree, copy))
                tree_changed(e);
        } else {
            cfs_domain_free(copy);
        }
        if (s->state != CFS_DOM_SHUTOFF && e->recovered) {
            bool due = !info->external_scan_ms ||
                       t - info->external_scan_ms >= EXTERNAL_SCAN_MS;
            for (size_t k = 0; !due && k < d->n_disks; k++) {
                const struct cfs_disk_state *ds =
                    cfs_tree_find_disk_state(e->tree, s->name, d->disks[k].target);
                due = ds && ds->external.type != CFS_JOB_NONE;
            }
            scan[i] = due;
        }
    }
    /* the audit: the K longest unread of those due */
    size_t k_max = ((size_t)n_listed * e->refresh_ms + e->audit_ms - 1) / e->audit_ms;
    if (k_max < 1)
        k_max = 1;
    qsort(cand, n_cand, sizeof(*cand), audit_cmp);
    for (size_t j = 0; j < n_cand && j < k_max; j++) {
        full[cand[j].i] = true;
        scan[cand[j].i] = false;
    }
    pthread_mutex_unlock(&e->tree->lock);

    for (size_t i = 0; i < n; i++) {
        if (full[i]) {
            struct work *w = work_new(WORK_REFRESH_DOMAIN, v[i].name, NULL);
            w->periodic = true;
            route(e, w);
        } else if (scan[i]) {
            struct work *w = work_new(WORK_EXTERNAL_SCAN, v[i].name, NULL);
            w->periodic = true;
            route(e, w);
        }
    }

    _cleanup_strv_ char **removed = NULL;
    _cleanup_strv_ char **unlisted = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; known && known[i]; i++) {
        if (cfs_strmap_get(listed, known[i]))
            continue;
        bool removed_one;
        if (install_read(e, known[i], known_seq[i], NULL, &removed_one) && removed_one)
            cfs_strv_push(&removed, cfs_xstrdup(known[i]));
    }
    /* what the engine keeps of names libvirt does not list (undefined,
     * or only ever asked about) goes, unless in the tree (an event's
     * read of a domain just defined) or held by a job */
    struct { const struct cfs_strmap *listed; char ***out; } c = { listed, &unlisted };
    cfs_strmap_each(e->dom_info, collect_unlisted, &c);
    for (char **u = unlisted; u && *u; u++)
        forget_domain(e, *u);
    pthread_mutex_unlock(&e->tree->lock);
    for (char **x = removed; x && *x; x++) {
        _cleanup_free_ char *p = cfs_xasprintf("/%s", *x);
        invalidate(e, p);
    }
    cfs_strmap_free(listed, NULL);
    free(full);
    free(scan);
    free(cand);
    cfs_dom_summaries_free(v, n);
    /* issue 12 §2.3: domains gone (or the listing shrank) leave free
     * heap behind in the middle of it; give its whole pages back, as
     * after every tenth round (what the reads of the round freed) */
    if (removed || n < e->last_listed || ++e->rounds_since_trim >= 10) {
        cfs_malloc_trim();
        e->rounds_since_trim = 0;
    }
    e->last_listed = n;
    e->last_refresh_ms = now_ms();
    return 1;
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
    if (e->be->ops->list_stats) {
        int rs = refresh_all_stats(e, known, known_seq);
        if (rs != 0)
            return rs < 0 ? rs : 0;
    }
    int r = e->be->ops->list_domains(e->be, &names);
    if (listed(e, r) < 0)
        return r;
    drop_own_name(e, names);
    for (char **n = names; n && *n; n++) {
        struct work *w = work_new(WORK_REFRESH_DOMAIN, *n, NULL);
        w->periodic = true;
        route(e, w);
    }

    _cleanup_strv_ char **removed = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; known && known[i]; i++) {
        if (cfs_strv_contains(names, known[i]))
            continue;
        bool removed_one;
        if (install_read(e, known[i], known_seq[i], NULL, &removed_one) && removed_one) {
            cfs_strv_push(&removed, cfs_xstrdup(known[i]));
            forget_domain(e, known[i]);
        }
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
void tree_changed(struct cfs_engine *e)
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
void conn_suspect(struct cfs_engine *e, bool suspect)
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
int check_reachable(struct cfs_engine *e, const char *dom,
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
    pthread_mutex_lock(&e->tree->lock);
    bool down = e->conn_down;
    pthread_mutex_unlock(&e->tree->lock);
    if (down) {
        /* the backend said so (or never connected, issue 12): no call */
        *why = "not connected to libvirt (reconnecting)";
        return -ENOTCONN;
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



/* After a re-read of a running domain: a look at every disk where
 * chainfs has no job of its own, for one chainfs did not start (a pull
 * sends no event until it ends). The timer's re-reads (PERIODIC) look at
 * most every EXTERNAL_SCAN_MS per domain, except at disks where one is
 * shown already (its progress and its end are followed at once). */
static void external_scan(struct cfs_engine *e, const char *dom, bool periodic)
{
    _cleanup_strv_ char **disks = NULL;
    int64_t t = now_ms();
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    bool running = d && d->state != CFS_DOM_SHUTOFF;
    bool all = false;
    if (running && e->recovered) { /* before recovery no disk is looked at */
        int64_t *last = &dom_info_get(e, dom)->external_scan_ms;
        all = !periodic || !*last || t - *last >= EXTERNAL_SCAN_MS;
        if (all)
            *last = t;
    }
    for (size_t i = 0; running && i < d->n_disks; i++) {
        struct cfs_disk_state *s =
            cfs_tree_find_disk_state(e->tree, dom, d->disks[i].target);
        bool shown = s && s->external.type != CFS_JOB_NONE;
        if ((!s || !cfs_job_phase_in_progress(s->job.phase)) && (all || shown))
            cfs_strv_push(&disks, cfs_xstrdup(d->disks[i].target));
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (char **k = disks; k && *k; k++)
        external_check(e, dom, *k);
}

void process_work(struct cfs_engine *e, struct work *w)
{
    switch (w->kind) {
    case WORK_POLL_JOB:
        poll_job(e, w->dom, w->disk);
        break;
    case WORK_RECOVER:
        recover_merge(e, w->dom, w->disk, w->job_id);
        break;
    case WORK_REAPPLY:
        recover_bandwidth(e, w->dom, w->disk, w->job_id);
        break;
    case WORK_DISPATCH:
        queue_dispatch(e, w->dom, w->disk);
        break;
    case WORK_THAW:
        thaw_retry(e, w->dom);
        break;
    case WORK_READ_LIGHT:
        if (refresh_light(e, w->dom) < 0)
            refresh_domain(e, w->dom);
        break;
    case WORK_REFRESH_DOMAIN:
        if (refresh_domain(e, w->dom) == 0)
            external_scan(e, w->dom, w->periodic);
        break;
    case WORK_EXTERNAL_SCAN:
        external_scan(e, w->dom, true);
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
        if (w->up && !e->recovered) {
            /* issue 12: started without a connection (several hosts) */
            log_info("connected to libvirt; reading everything");
            char *err = NULL;
            if (engine_start_read(e, &err) < 0) {
                log_err("%s; retried at the next refresh", err);
                free(err);
            }
        } else if (w->up) {
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
                if (o->kind == WORK_REFRESH_DOMAIN && strcmp(o->dom, w->dom) == 0) {
                    dup = true;
                    o->periodic = o->periodic && w->periodic;
                }
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
    thaw_poll(e, true);
    drain(e);
}

void cfs_engine_refresh(struct cfs_engine *e)
{
    refresh_all(e);
}

size_t cfs_engine_names_kept(struct cfs_engine *e)
{
    pthread_mutex_lock(&e->tree->lock);
    size_t n = cfs_strmap_size(e->dom_info);
    pthread_mutex_unlock(&e->tree->lock);
    return n;
}

static void *engine_thread(void *arg)
{
    struct cfs_engine *e = arg;
    cfs_log_set_context(e->host);
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
            engine_refresh_tick(e);
        thaw_poll(e, false);
        mark_not_responding(e);
        reap_workers(e);
        reap_offline(e, false);
    }
    return NULL;
}


/* ---- life cycle ----------------------------------------------------------------- */

int cfs_engine_new(const struct cfs_engine_config *cfg, struct cfs_backend *be,
                   struct cfs_engine **out, char **errmsg)
{
    struct cfs_engine *e = cfs_xcalloc(1, sizeof(*e));
    e->lock_fd = -1;
    e->host = cfs_xstrdup(cfg->host ? cfg->host : "");
    e->start_disconnected = cfg->start_disconnected;
    e->overlay_dir = cfs_xstrdup(cfg->overlay_dir);
    e->state_dir = cfs_xstrdup(cfg->state_dir);
    e->keep_merged = cfg->keep_merged;
    e->commit_bandwidth = cfg->bandwidth;
    e->live_pull = cfg->live_pull;
    e->quiesce = cfg->quiesce;
    e->quiesce_timeout = cfg->quiesce_timeout > CFS_QUIESCE_TIMEOUT_MAX
                             ? CFS_QUIESCE_TIMEOUT_MAX : cfg->quiesce_timeout;
    e->refresh_ms = cfg->refresh_ms ? cfg->refresh_ms : 3000;
    e->poll_ms = cfg->poll_ms ? cfg->poll_ms : 250;
    e->audit_ms = cfg->audit_ms ? cfg->audit_ms : 60000;
    e->dom_info = cfs_strmap_new();
    e->workers = cfs_strmap_new();
    e->be = be;
    e->tree = cfs_tree_new();
    pthread_mutex_init(&e->qlock, NULL);
    pthread_mutex_init(&e->srv_lock, NULL);
    pthread_cond_init(&e->srv_cond, NULL);
    pthread_mutex_init(&e->settings_lock, NULL);
    cond_init_monotonic(&e->qcond);
    cond_init_monotonic(&e->pool_cond);

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

    r = cfs_state_dir_lock(cfg->state_dir, &e->lock_fd, errmsg);
    if (r < 0) {
        e->be = NULL;
        cfs_engine_free(e);
        return r;
    }
    /* issue 9: ours from here; what a killed daemon of this state
     * directory left behind (servers, sockets) goes first */
    e->imgserve = cfg->imgserve;
    if (e->imgserve && e->imgserve->ops->sweep(e->imgserve) < 0)
        log_warn("disk.raw: cleaning up after the last run: %s",
                 errmsg_or("failed"));
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
        /* the domains with work queued or under way */
        size_t pending = cfs_strmap_size(e->workers);
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
static int startup_read_listed(struct cfs_engine *e)
{
    _cleanup_strv_ char **names = NULL;
    int r = e->be->ops->list_domains(e->be, &names);
    if (r < 0)
        return r;
    drop_own_name(e, names);
    for (char **n = names; n && *n; n++)
        route(e, work_new(WORK_READ_LIGHT, *n, NULL));
    workers_wait_idle(e, STARTUP_LIGHT_WAIT_MS, false);
    for (char **n = names; n && *n; n++)
        route(e, work_new(WORK_REFRESH_DOMAIN, *n, NULL));
    workers_wait_idle(e, STARTUP_READ_WAIT_MS, true);
    e->last_refresh_ms = now_ms();
    return 0;
}

/* Issue 12 §2.2: with the bulk statistics, one call lists every domain
 * with its sizes; each domain is then read once without statistics (no
 * call that waits for a QEMU), and the statistics give a shut-off one
 * its sizes: a full read, in one round instead of two. Running ones (no
 * statistics in the listing) are read in full after, as before. A
 * domain whose read did not come in in time shows up when it does. */
static int startup_read(struct cfs_engine *e)
{
    if (!e->be->ops->list_stats)
        return startup_read_listed(e);
    struct cfs_dom_summary *v = NULL;
    size_t n = 0;
    int r = e->be->ops->list_stats(e->be, bulk_no_running_blocks, &v, &n);
    if (r == -EOPNOTSUPP)
        return startup_read_listed(e);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++)
        if (!cfs_streq(v[i].name, CFS_OWN_DIR))
            route(e, work_new(WORK_READ_LIGHT, v[i].name, NULL));
    workers_wait_idle(e, STARTUP_LIGHT_WAIT_MS, false);
    /* the domains whose statistics the listing has not (running ones):
     * in full, waited for as before (a stuck QEMU holds up no start) */
    bool any_partial = false;
    for (size_t i = 0; i < n; i++)
        if (v[i].partial && !cfs_streq(v[i].name, CFS_OWN_DIR)) {
            route(e, work_new(WORK_REFRESH_DOMAIN, v[i].name, NULL));
            any_partial = true;
        }
    if (any_partial)
        workers_wait_idle(e, STARTUP_READ_WAIT_MS, true);
    int64_t t = now_ms();
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < n; i++) {
        struct cfs_domain *d = cfs_tree_find_domain(e->tree, v[i].name);
        if (!d)
            continue; /* not read yet (or gone): its read installs it */
        struct dom_info *info = dom_info_get(e, v[i].name);
        if (!v[i].partial) {
            struct cfs_domain *copy = cfs_domain_dup(d);
            if (apply_summary_sizes(copy, &v[i]))
                cfs_tree_put_domain(e->tree, copy);
            else
                cfs_domain_free(copy);
            info->fingerprint = v[i].fingerprint;
            info->have_fp = true;
        }
        info->last_full_ms = t;
    }
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    cfs_dom_summaries_free(v, n);
    cfs_malloc_trim(); /* what the start-up's reads freed */
    e->last_refresh_ms = now_ms();
    return 0;
}

/* ---- -o live_pull ---------------------------------------------------------- */

/* The first QEMU release whose block-stream leaves no childless filter
 * node behind at its end, where query-named-block-nodes crashes QEMU
 * until libvirt dismisses the job: 10.2.0 ("block: Drop detach_subchain
 * for bdrv_replace_node", QEMU issue #3149; docs/design/issue8.md §7.4). */
static const unsigned long long live_pull_min_qemu = 10002000;

static const char *const live_pull_names[] = {
    [CFS_LIVE_PULL_AUTO] = "auto",
    [CFS_LIVE_PULL_ON] = "on",
    [CFS_LIVE_PULL_OFF] = "off",
};

const char *cfs_live_pull_to_string(enum cfs_live_pull v)
{
    return (unsigned)v < ELEMENTSOF(live_pull_names) ? live_pull_names[v] : NULL;
}

int cfs_live_pull_from_string(const char *s, enum cfs_live_pull *out)
{
    for (size_t i = 0; s && i < ELEMENTSOF(live_pull_names); i++)
        if (cfs_streq(s, live_pull_names[i])) {
            *out = (enum cfs_live_pull)i;
            return 0;
        }
    return -EINVAL;
}

static const char *const quiesce_names[] = {
    [CFS_QUIESCE_TRY] = "try",
    [CFS_QUIESCE_REQUIRE] = "require",
    [CFS_QUIESCE_OFF] = "off",
};

const char *cfs_quiesce_to_string(enum cfs_quiesce v)
{
    return (unsigned)v < ELEMENTSOF(quiesce_names) ? quiesce_names[v] : NULL;
}

int cfs_quiesce_from_string(const char *s, enum cfs_quiesce *out)
{
    for (size_t i = 0; s && i < ELEMENTSOF(quiesce_names); i++)
        if (cfs_streq(s, quiesce_names[i])) {
            *out = (enum cfs_quiesce)i;
            return 0;
        }
    return -EINVAL;
}

/* e->no_live_pull from -o live_pull and the hypervisor's version. */
static void live_pull_decide(struct cfs_engine *e)
{
    free(e->no_live_pull);
    cfs_strv_free(e->startup_pull_doms);
    e->no_live_pull = NULL;
    if (e->live_pull == CFS_LIVE_PULL_ON) {
        log_info("live pull: on (-o live_pull=on): a running domain's merge "
                 "may pull; while it does, chainfs queries no block "
                 "statistics of the domain and starts nothing else on it");
        return;
    }
    if (e->live_pull == CFS_LIVE_PULL_OFF) {
        e->no_live_pull = cfs_xstrdup("-o live_pull=off");
        log_info("live pull: off (-o live_pull=off): running domains commit");
        return;
    }
    unsigned long long v = 0;
    int r = e->be->ops->hypervisor_version
                ? e->be->ops->hypervisor_version(e->be, &v)
                : -EOPNOTSUPP;
    if (r == 0 && v >= live_pull_min_qemu) {
        log_info("live pull: on (QEMU %llu.%llu.%llu)", v / 1000000,
                 v / 1000 % 1000, v % 1000);
        return;
    }
    e->no_live_pull =
        r == 0 ? cfs_xasprintf("QEMU %llu.%llu.%llu may crash when block "
                               "nodes are queried as a pull ends; "
                               "-o live_pull=on allows it",
                               v / 1000000, v / 1000 % 1000, v % 1000)
               : cfs_xasprintf("the QEMU version is unknown (%s); "
                               "-o live_pull=on allows it",
                               errmsg_or(strerror(-r)));
    log_info("live pull: off: %s", e->no_live_pull);
}

/* Everything cfs_engine_start does once connected: locality, live
 * pull, every domain read, the journal taken up. Called by
 * cfs_engine_start, or (issue 12, started without a connection) by the
 * engine thread when the connection first comes up. */
static int engine_start_read(struct cfs_engine *e, char **errmsg)
{
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
    live_pull_decide(e);
    /* overlay_dir names a directory of the libvirt host: only a local one
     * can be looked at here */
    struct stat od;
    if (e->overlay_dir && engine_files_local(e) &&
        (stat(e->overlay_dir, &od) < 0 || !S_ISDIR(od.st_mode))) {
        if (e->thread_started) {
            /* connected after a start without libvirt (issue 12): the
             * mount is up, the other hosts work; mkdir says it */
            log_err("overlay_dir %s is not a directory", e->overlay_dir);
        } else {
            if (errmsg)
                *errmsg = cfs_xasprintf("overlay_dir %s is not a directory",
                                        e->overlay_dir);
            return -ENOTDIR;
        }
    }
    /* a pull the journal has may end any moment: its domain is read
     * quietly from the first read on (recovery then tracks the job) */
    struct cfs_journal_entry *jv = NULL;
    size_t jn = 0;
    if (cfs_journal_list(e->journal, &jv, &jn) == 0)
        for (size_t i = 0; i < jn; i++)
            if (jv[i].type == CFS_JOB_PULL && jv[i].domain &&
                !cfs_strv_contains(e->startup_pull_doms, jv[i].domain))
                cfs_strv_push(&e->startup_pull_doms, cfs_xstrdup(jv[i].domain));
    cfs_journal_entries_free(jv, jn);
    /* the engine thread (a first connection after a start without one)
     * reads as after a reconnect */
    int r = e->threaded && !e->thread_started ? startup_read(e)
                                                   : refresh_all(e);
    if (r < 0) {
        if (errmsg)
            *errmsg = cfs_xasprintf("cannot list libvirt domains: %s",
                                    errmsg_or(strerror(-r)));
        return r;
    }
    settings_load(e);
    recover_journal(e);
    e->recovered = true;
    pthread_mutex_lock(&e->tree->lock);
    e->startup_pull_doms = cfs_strv_free(e->startup_pull_doms);
    pthread_mutex_unlock(&e->tree->lock);
    return 0;
}

/* The engine thread's periodic re-read; before the first connection
 * (issue 12) the start-up read is tried again instead, once the backend
 * is up (a failed one is retried here). */
static void engine_refresh_tick(struct cfs_engine *e)
{
    if (e->recovered) {
        refresh_all(e);
        return;
    }
    e->last_refresh_ms = now_ms();
    pthread_mutex_lock(&e->tree->lock);
    bool down = e->conn_down;
    pthread_mutex_unlock(&e->tree->lock);
    if (!down) {
        char *err = NULL;
        if (engine_start_read(e, &err) < 0) {
            log_err("%s", err);
            free(err);
        }
    }
}

static int engine_start(struct cfs_engine *e, bool thread, char **errmsg)
{
    e->threaded = thread;
    /* issue 12 §2.3: the pool's threads and libvirt's would each get a
     * malloc arena of their own (up to 8 per core), each keeping its
     * freed memory; two arenas hold the process's heap together */
    if (thread)
        mallopt(M_ARENA_MAX, 2);
    int r = e->be->ops->connect(e->be, &engine_events, e);
    if (r == -ENOTCONN && e->start_disconnected) {
        /* issue 12: one host of several down at start. The backend
         * connects with its back-off and says connection(up); until then
         * the tree is empty and stale and changes get ENOTCONN. */
        log_warn("cannot connect to libvirt: %s; starting without it "
                 "(stale), connecting in the background",
                 errmsg_or(strerror(-r)));
        pthread_mutex_lock(&e->tree->lock);
        e->conn_down = true;
        update_stale(e);
        pthread_mutex_unlock(&e->tree->lock);
        e->last_refresh_ms = now_ms();
    } else if (r < 0) {
        if (errmsg)
            *errmsg = cfs_xasprintf("cannot connect to libvirt: %s",
                                    errmsg_or(strerror(-r)));
        return r;
    } else {
        r = engine_start_read(e, errmsg);
        if (r < 0)
            return r;
    }
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

int cfs_engine_start(struct cfs_engine *e, bool thread, char **errmsg)
{
    /* the start-up's lines carry the host too (issue 12) */
    const char *caller = cfs_log_context();
    cfs_log_set_context(e->host);
    int r = engine_start(e, thread, errmsg);
    cfs_log_set_context(caller);
    return r;
}

/* The engines left behind by cfs_engine_free with a call that did not
 * return: with several hosts there may be more than one. */
static struct cfs_engine *engines_left_behind[64] __attribute__((used));
static atomic_size_t n_engines_left_behind;

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
        /* several hosts (issue 12): every such engine stays reachable */
        size_t k = atomic_fetch_add(&n_engines_left_behind, 1);
        if (k < ELEMENTSOF(engines_left_behind))
            engines_left_behind[k] = e;
        return NULL;
    }
    /* offline merges keep running to their end; wait for them (no one
     * starts another: the FUSE side is gone when the engine is freed).
     * A chain copy's qemu-img is stopped: the journal has the copy, and
     * the next start copies the layers left again. */
    pthread_mutex_lock(&e->qlock);
    for (struct offline_thread *ot = e->offline; ot; ot = ot->next)
        if (ot->dom)
            ot->cancel = 1;
    pthread_mutex_unlock(&e->qlock);
    reap_offline(e, true);
    images_stop_all(e);
    if (e->imgserve)
        e->imgserve->ops->destroy(e->imgserve);
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
    cfs_strmap_free(e->dom_info, free);
    pthread_mutex_destroy(&e->qlock);
    pthread_mutex_destroy(&e->settings_lock);
    pthread_mutex_destroy(&e->srv_lock);
    pthread_cond_destroy(&e->srv_cond);
    pthread_cond_destroy(&e->qcond);
    pthread_cond_destroy(&e->pool_cond);
    free(e->overlay_dir);
    free(e->state_dir);
    free(e->no_live_pull);
    free(e->host);
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

const char *cfs_engine_uri(struct cfs_engine *e)
{
    return e->be->ops->uri ? e->be->ops->uri(e->be) : NULL;
}

unsigned long cfs_engine_generation(struct cfs_engine *e)
{
    pthread_mutex_lock(&e->tree->lock);
    unsigned long g = e->tree->generation;
    pthread_mutex_unlock(&e->tree->lock);
    return g;
}
