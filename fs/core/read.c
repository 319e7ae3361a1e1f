/* read.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

/* ---- reads (FUSE threads; tree lock only) ------------------------------------------ */

/* The layer index of snapshot NAME as shown in snapshots/: not the base,
 * and not the one being merged away right now. Caller holds the lock. */
int visible_snapshot(struct cfs_tree *t, const struct cfs_domain *d,
                     const struct cfs_disk *disk, const char *name)
{
    int i = cfs_disk_find_snapshot(disk, name);
    if (i < 0 || (size_t)i + 1 >= disk->n_layers)
        return -1;
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, d->name, disk->target);
    if (s && cfs_job_phase_in_progress(s->job.phase) &&
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
    const struct cfs_job *job = s ? disk_shown_job(s) : NULL;
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
        if (!s || !cfs_job_phase_in_progress(s->job.phase)) {
            cfs_render_job_text(out, s ? disk_shown_job(s) : NULL, t->stale);
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
