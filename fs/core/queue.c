/* queue.c — part of the engine (see engine_int.h): the rmdirs queued
 * behind a disk's merge (docs/design/issue8.md §3).
 *
 * An rmdir on a disk where chainfs merges (or where deletions are queued
 * already) journals an entry of type rmdir, phase queued, and joins the
 * disk's queue (cfs_disk_state.queue): hidden from snapshots/, no libvirt
 * call (actions.c, cfs_engine_rmdir). When the disk's job ends
 * (queue_after_end, from job_end) a completed one is followed by a
 * dispatch on the domain's worker (actions.c, queue_dispatch: the run of
 * adjacent queued layers at the top becomes one job); a failed or
 * canceled one returns the whole queue to snapshots/ with the reason
 * (cfs_disk_state.returned, shown by `job`). The engine thread also asks
 * for a dispatch of every disk whose queue waits without a job
 * (queue_poll): after recovery, after a dispatch that could not read
 * libvirt, after a race with the end of a job.
 *
 * Locks: the tree lock around the queue; journal writes without it. */
#include "engine_int.h"

void queue_drop_locked(struct cfs_disk_state *s, char *const *ids, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < s->n_queue; i++) {
        bool drop = false;
        for (size_t j = 0; j < n && !drop; j++)
            drop = cfs_streq(s->queue[i].journal_id, ids[j]);
        if (drop)
            cfs_queued_clear(&s->queue[i]);
        else
            s->queue[k++] = s->queue[i];
    }
    s->n_queue = k;
    if (k == 0) {
        free(s->queue);
        s->queue = NULL;
    }
}

/* Close the journal entries IDS[0..N) in one rewrite (each on its own if
 * one of them is not open any more). */
static void journal_close_all(struct cfs_engine *e, char **ids, size_t n)
{
    if (n == 0)
        return;
    int r = cfs_journal_apply(e->journal, NULL, 0, (const char *const *)ids, n);
    if (r == -ENOENT) {
        for (size_t i = 0; i < n; i++)
            journal_close(e, ids[i]);
    } else if (r < 0) {
        log_err("journal: closing %zu queued entries: %s", n, strerror(-r));
    }
}

void queue_return_all(struct cfs_engine *e, const char *dom, const char *disk,
                      const char *reason)
{
    char **ids = NULL;
    size_t n = 0;
    _cleanup_free_ char *names = NULL;
    struct cfs_buf nb = {0};
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (s && s->n_queue > 0) {
        ids = cfs_xcalloc(s->n_queue, sizeof(*ids));
        s->returned = cfs_xrealloc(s->returned, (s->n_returned + s->n_queue) *
                                                    sizeof(*s->returned));
        for (size_t i = 0; i < s->n_queue; i++) {
            struct cfs_queued *q = &s->queue[i];
            s->returned[s->n_returned++] = (struct cfs_returned){
                .snapshot = cfs_xstrdup(q->snapshot),
                .reason = cfs_xstrdup(reason),
            };
            cfs_buf_printf(&nb, "%s%s", i ? ", " : "", q->snapshot);
            ids[n++] = TAKE_PTR(q->journal_id);
            cfs_queued_clear(q);
        }
        free(s->queue);
        s->queue = NULL;
        s->n_queue = 0;
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    names = cfs_buf_steal(&nb);
    if (n == 0) {
        free(ids);
        return;
    }
    journal_close_all(e, ids, n);
    log_warn("%s/%s: queued deletion of %s returned to snapshots/: %s", dom,
             disk, names, reason);
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    /* snapshots/ shows them again */
    _cleanup_free_ char *p = cfs_xasprintf("/%s/%s/snapshots", dom, disk);
    if (e->invalidate)
        e->invalidate(e->invalidate_opaque, p);
}

void queue_after_end(struct cfs_engine *e, const char *dom, const char *disk,
                     enum cfs_job_phase st, const char *what, const char *error)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool queued = s && s->n_queue > 0;
    pthread_mutex_unlock(&e->tree->lock);
    if (!queued)
        return;
    if (st != CFS_PHASE_COMPLETED) {
        /* §3.4: what was queued behind a merge that did not happen comes
         * back; the user decides (no automatic retry) */
        _cleanup_free_ char *why = cfs_xasprintf(
            "the merge of %s %s: %s", what ? what : "the snapshot before",
            st == CFS_PHASE_CANCELED ? "was canceled" : "failed",
            error && *error ? error : "no reason given");
        queue_return_all(e, dom, disk, why);
        return;
    }
    /* on the domain's worker, through the engine's queue (never inline:
     * the caller may be in the middle of the job's clean-up) */
    queue_push(e, work_new(WORK_DISPATCH, dom, disk));
}

void queue_load_entry(struct cfs_engine *e, const struct cfs_journal_entry *en)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, en->domain, en->disk);
    for (size_t i = 0; i < s->n_queue; i++)
        if (cfs_streq(s->queue[i].journal_id, en->id)) {
            pthread_mutex_unlock(&e->tree->lock);
            return; /* a reconnect: it is queued already */
        }
    s->queue = cfs_xrealloc(s->queue, (s->n_queue + 1) * sizeof(*s->queue));
    struct cfs_queued *q = &s->queue[s->n_queue++];
    *q = (struct cfs_queued){
        .snapshot = cfs_xstrdup(en->snapshot),
        .meta_name = cfs_xstrdup(en->meta_name),
        .top = cfs_xstrdup(en->top),
        .base = cfs_xstrdup(en->base),
        .journal_id = cfs_xstrdup(en->id),
        .queued = en->created,
    };
    if (en->n_leaving > 0)
        cfs_file_id_copy(&q->top_id, &en->leaving[0].id);
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    log_info("recovery: %s/%s: deletion of %s is queued; dispatched once the "
             "disk has no job", en->domain, en->disk, en->snapshot);
}

void queue_poll(struct cfs_engine *e)
{
    _cleanup_strv_ char **doms = NULL;
    _cleanup_strv_ char **disks = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_states; i++) {
        struct cfs_disk_state *s = e->tree->states[i];
        if (s->n_queue > 0 && !cfs_job_phase_in_progress(s->job.phase)) {
            cfs_strv_push(&doms, cfs_xstrdup(s->dom));
            cfs_strv_push(&disks, cfs_xstrdup(s->disk));
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (size_t i = 0; doms && doms[i]; i++)
        route(e, work_new(WORK_DISPATCH, doms[i], disks[i]));
}
