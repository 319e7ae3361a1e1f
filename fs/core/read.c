/* read.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

#include "chainfs/nodes.h"

/* ---- reads (FUSE threads; tree lock only) ------------------------------------------ */

/* The layer index of snapshot NAME as shown in snapshots/: not the base,
 * and not the one being merged away right now. Caller holds the lock. */
int visible_snapshot(struct cfs_tree *t, const struct cfs_domain *d,
                     const struct cfs_disk *disk, const char *name)
{
    int i = cfs_disk_find_snapshot(disk, name);
    if (i < 0)
        return -1;
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, d->name, disk->target);
    return cfs_layer_visible(disk, s, (size_t)i) ? i : -1;
}

/* What `job` and `wait` show for disk state S (may be NULL). Caller
 * holds the lock. */
static const struct cfs_job *shown_job(const struct cfs_disk_state *s)
{
    return s ? disk_shown_job(s) : NULL;
}

int view_resolve(struct cfs_engine *e, const struct cfs_path *p,
                 struct cfs_node_view *v)
{
    struct cfs_tree *t = e->tree;
    *v = (struct cfs_node_view){ .tree = t, .layer = -1,
                                 .default_bandwidth = e->commit_bandwidth,
                                 .images = engine_images(e),
                                 .quiesce = e->quiesce,
                                 .quiesce_timeout = e->quiesce_timeout,
                                 .metrics = &e->metrics,
                                 .conn_up = !t->stale };
    if (cfs_node_type(p->kind)->image && !v->images)
        return -ENOENT;
    if (p->kind == CFS_NODE_INVALID || p->kind >= CFS_NODE_KIND_MAX)
        return -ENOENT;
    /* the root and chainfs's own nodes (.chainfs) are no domain's */
    if (p->kind == CFS_NODE_ROOT || !p->dom[0])
        return 0;
    struct cfs_domain *d = cfs_tree_find_domain(t, p->dom);
    if (!d)
        return -ENOENT;
    v->dom = d;
    if (p->kind == CFS_NODE_DOMAIN)
        return 0;
    if (!p->disk[0]) {
        /* the domain's own nodes (issue 10): a snapshot is there while a
         * disk shows it */
        if (!p->snap[0])
            return 0;
        v->snap = p->snap;
        return cfs_dom_snapshot_visible(t, d, p->snap) ? 0 : -ENOENT;
    }
    struct cfs_disk *disk = cfs_domain_find_disk(d, p->disk);
    if (!disk)
        return -ENOENT;
    v->disk = disk;
    v->state = cfs_tree_find_disk_state(t, d->name, disk->target);
    v->job = shown_job(v->state);
    if (!p->snap[0])
        return 0;
    v->layer = visible_snapshot(t, d, disk, p->snap);
    return v->layer < 0 ? -ENOENT : 0;
}

int cfs_engine_getattr(struct cfs_engine *e, const struct cfs_path *p,
                       struct cfs_node_attr *out)
{
    memset(out, 0, sizeof(*out));
    const struct cfs_node_type *nt = cfs_node_type(p->kind);
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_node_view v;
    int r = view_resolve(e, p, &v);
    if (r == 0 && nt->dir) {
        /* 2, plus one ".." for every subdirectory */
        _cleanup_strv_ char **names = NULL;
        nt->list(&v, &names);
        out->is_dir = true;
        out->nlink = 2;
        for (char **n = names; n && *n; n++)
            if (cfs_node_type(cfs_node_child(p->kind, *n, strlen(*n)))->dir)
                out->nlink++;
    } else if (r == 0 && nt->image) {
        struct cfs_image_attr a;
        r = image_attr_locked(&v, &a);
        out->size = a.size;
        out->nlink = 1;
    } else if (r == 0) {
        _cleanup_buf_ struct cfs_buf b = {0};
        nt->render(&v, &b);
        out->size = b.len;
        out->nlink = 1;
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

int cfs_engine_readdir(struct cfs_engine *e, const struct cfs_path *p,
                       char ***names)
{
    *names = NULL;
    const struct cfs_node_type *nt = cfs_node_type(p->kind);
    if (p->kind != CFS_NODE_INVALID && !nt->dir)
        return -ENOTDIR;
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_node_view v;
    int r = view_resolve(e, p, &v);
    if (r == 0)
        nt->list(&v, names);
    pthread_mutex_unlock(&t->lock);
    return r;
}

int cfs_engine_read(struct cfs_engine *e, const struct cfs_path *p,
                    struct cfs_buf *out)
{
    const struct cfs_node_type *nt = cfs_node_type(p->kind);
    if (nt->dir)
        return -EISDIR;
    if (nt->image)
        return -EINVAL; /* served by cfs_engine_image_read, not rendered */
    struct cfs_tree *t = e->tree;
    pthread_mutex_lock(&t->lock);
    struct cfs_node_view v;
    int r = view_resolve(e, p, &v);
    if (r == 0)
        nt->render(&v, out);
    pthread_mutex_unlock(&t->lock);
    return r;
}

/* Whether DOM/DISK has work in progress: a job (chainfs's own, or one
 * chainfs did not start: external_check() broadcasts `changed` when it
 * ends) or deletions queued (issue 8 §3.5). Caller holds the lock. */
static bool disk_busy(const struct cfs_disk_state *s)
{
    return s && (cfs_job_phase_in_progress(s->job.phase) ||
                 s->external.type != CFS_JOB_NONE || s->n_queue > 0);
}

/* The domain's `wait` (issue 10): until no disk of DOM is busy, then the
 * domain's `job`. */
static int wait_domain(struct cfs_engine *e, const char *dom,
                       bool (*interrupted)(void *arg), void *arg,
                       struct cfs_buf *out)
{
    struct cfs_tree *t = e->tree;
    int r = 0;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        struct cfs_domain *d = cfs_tree_find_domain(t, dom);
        if (!d) {
            r = -ENOENT;
            break;
        }
        /* and the domain's last job group has ended (issue 10 §3.5: a
         * member between its disk's merges is not a job in progress) */
        const struct cfs_group *g = cfs_tree_domain_group(t, dom, NULL);
        bool busy = g && !cfs_group_phase_ended(g->phase);
        for (size_t i = 0; !busy && i < d->n_disks; i++)
            busy = disk_busy(cfs_tree_find_disk_state(t, dom, d->disks[i].target));
        if (!busy) {
            struct cfs_node_view v;
            struct cfs_path p = { .kind = CFS_NODE_DOM_WAIT };
            snprintf(p.dom, sizeof(p.dom), "%s", dom);
            r = view_resolve(e, &p, &v);
            if (r == 0)
                cfs_node_type(CFS_NODE_DOM_WAIT)->render(&v, out);
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

int cfs_engine_wait(struct cfs_engine *e, const char *dom, const char *disk,
                    bool (*interrupted)(void *arg), void *arg,
                    struct cfs_buf *out)
{
    if (!disk || !*disk)
        return wait_domain(e, dom, interrupted, arg, out);
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
        if (!disk_busy(s)) {
            struct cfs_node_view v = {
                .tree = t, .dom = d, .disk = cfs_domain_find_disk(d, disk),
                .state = s, .job = shown_job(s), .layer = -1,
                .default_bandwidth = e->commit_bandwidth };
            cfs_node_type(CFS_NODE_WAIT)->render(&v, out);
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
