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
    _cleanup_strv_ char **groups = NULL;
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
            if (q->group && !cfs_strv_contains(groups, q->group))
                cfs_strv_push(&groups, cfs_xstrdup(q->group));
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
    /* a member of a job group that never started: failed (issue 10 §3.4) */
    for (char **g = groups; g && *g; g++)
        group_member_set(e, *g, disk, CFS_MEMBER_FAILED, reason);
    /* snapshots/ shows them again */
    _cleanup_free_ char *p = cfs_xasprintf("/%s/%s/snapshots", dom, disk);
    if (e->invalidate)
        e->invalidate(e->invalidate_opaque, p);
}

bool queue_return_group(struct cfs_engine *e, const char *dom, const char *disk,
                        const char *group, const char *reason)
{
    char **ids = NULL;
    _cleanup_free_ char *names = NULL;
    struct cfs_buf nb = {0};
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    for (size_t i = 0; s && i < s->n_queue; i++) {
        struct cfs_queued *q = &s->queue[i];
        if (!cfs_streq(q->group, group))
            continue;
        s->returned = cfs_xrealloc(s->returned, (s->n_returned + 1) *
                                                    sizeof(*s->returned));
        s->returned[s->n_returned++] = (struct cfs_returned){
            .snapshot = cfs_xstrdup(q->snapshot),
            .reason = cfs_xstrdup(reason),
        };
        cfs_buf_printf(&nb, "%s%s", nb.len ? ", " : "", q->snapshot);
        cfs_strv_push(&ids, cfs_xstrdup(q->journal_id));
    }
    size_t n = cfs_strv_len(ids);
    if (n) {
        queue_drop_locked(s, ids, n);
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    names = cfs_buf_steal(&nb);
    if (n == 0) {
        cfs_strv_free(ids);
        return false;
    }
    journal_close_all(e, ids, n);
    cfs_strv_free(ids);
    log_warn("%s/%s: queued deletion of %s returned to snapshots/: %s", dom,
             disk, names, reason);
    group_member_set(e, group, disk, CFS_MEMBER_FAILED, reason);
    _cleanup_free_ char *p = cfs_xasprintf("/%s/%s/snapshots", dom, disk);
    if (e->invalidate)
        e->invalidate(e->invalidate_opaque, p);
    return true;
}

void queue_after_end(struct cfs_engine *e, const char *dom, const char *disk,
                     enum cfs_job_phase st, const char *what, const char *error,
                     bool superseded)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool queued = s && s->n_queue > 0;
    pthread_mutex_unlock(&e->tree->lock);
    if (!queued)
        return;
    if (st != CFS_PHASE_COMPLETED && !(superseded && st == CFS_PHASE_CANCELED)) {
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
        .requeued = cfs_streq(en->phase, "requeued"),
        .group = cfs_xstrdup(en->group),
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
        /* (one that waits for a disk.raw reader is dispatched again by
         * the reader's release, issue 9 §3.2) */
        if (s->n_queue > 0 && !cfs_job_phase_in_progress(s->job.phase) &&
            !s->queue_waits_reader) {
            cfs_strv_push(&doms, cfs_xstrdup(s->dom));
            cfs_strv_push(&disks, cfs_xstrdup(s->disk));
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (size_t i = 0; doms && doms[i]; i++)
        route(e, work_new(WORK_DISPATCH, doms[i], disks[i]));
}

/* The files of JOB's snapshots, in the order of job->snapshots: a commit
 * of a run removes leaving[i] for snapshots[i]; a pull removes the active
 * layer's snapshot (TOP) and then leaving[0..] (the last of which is the
 * survivor's, not a snapshot of the run). */
static const char *job_snapshot_file(const struct cfs_job *job, size_t i,
                                     const struct cfs_file_id **id)
{
    if (job->direction == CFS_DIRECTION_PULL) {
        if (i == 0) {
            *id = &job->top_id;
            return job->top;
        }
        *id = i - 1 < job->n_leaving ? &job->leaving[i - 1].id : NULL;
        return i - 1 < job->n_leaving ? job->leaving[i - 1].path : job->top;
    }
    if (job->n_leaving > 0 && i < job->n_leaving) {
        *id = &job->leaving[i].id;
        return job->leaving[i].path;
    }
    *id = &job->top_id;
    return job->top;
}

/* The chain indices FIRST..LAST of the snapshots JOB removes, in DK as the
 * tree has it; false if its files are not found there. */
static bool job_run_span(const struct cfs_disk *dk, const struct cfs_job *job,
                         size_t *first, size_t *last)
{
    int t = cfs_disk_find_file(dk, &job->top_id, job->top);
    int b = cfs_disk_find_file(dk, NULL, job->base);
    if (t < 0 || b < 0 || b <= t)
        return false;
    if (job->direction == CFS_DIRECTION_PULL) {
        if (t != 0 || b < 2)
            return false;
        *first = 0;
        *last = (size_t)b - 2;
    } else {
        *first = (size_t)t;
        *last = (size_t)b - 1;
    }
    return true;
}

bool queue_regroup(struct cfs_engine *e, const char *dom, const char *disk)
{
    struct cfs_job job = {0};
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    const struct cfs_job_kind *k = s ? cfs_job_kind(s->job.type) : NULL;
    size_t first = 0, last = 0;
    bool adjacent = false;
    if (s && dk && s->n_queue > 0 && s->job.phase == CFS_PHASE_RUNNING &&
        k->chainfs && k->merge && k->block_job && k->abortable &&
        !s->job.superseded && !s->abort_requested &&
        job_run_span(dk, &s->job, &first, &last)) {
        for (size_t q = 0; q < s->n_queue && !adjacent; q++) {
            const struct cfs_queued *qe = &s->queue[q];
            int i = cfs_disk_find_snapshot(dk, qe->snapshot);
            if (i < 0 && !qe->requeued)
                i = cfs_disk_find_file(dk, &qe->top_id, qe->top);
            adjacent = i >= 0 && ((first > 0 && (size_t)i == first - 1) ||
                                  (size_t)i == last + 1);
        }
    }
    if (adjacent)
        cfs_job_copy(&job, &s->job);
    pthread_mutex_unlock(&e->tree->lock);
    if (!adjacent)
        return false;

    /* §3.3: only while it has done less than half (libvirt's figure now) */
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0 || !pr.present || pr.ready || (pr.end > 0 && pr.cur * 2 >= pr.end)) {
        log_debug("%s/%s: no regroup: the merge of %s is %s", dom, disk,
                  job.snapshot, r < 0 || !pr.present ? "not in libvirt"
                                : pr.ready ? "ready" : "half done or more");
        cfs_job_clear(&job);
        return false;
    }

    /* its snapshots queued again (front, by name only) and the job marked
     * superseded, in one journal rewrite before the abort: a restart then
     * finds both, and whatever libvirt did */
    size_t n_snap = job.snapshots ? cfs_strv_len(job.snapshots) : 1;
    struct cfs_queued *back = cfs_xcalloc(n_snap, sizeof(*back));
    struct cfs_journal_entry *puts = cfs_xcalloc(n_snap + 1, sizeof(*puts));
    struct cfs_job_file *tops = cfs_xcalloc(n_snap, sizeof(*tops));
    for (size_t i = 0; i < n_snap; i++) {
        const struct cfs_file_id *id = NULL;
        const char *file = job_snapshot_file(&job, i, &id);
        const char *meta = job.meta_names ? job.meta_names[i] : job.meta_name;
        back[i] = (struct cfs_queued){
            .snapshot = cfs_xstrdup(job.snapshots ? job.snapshots[i] : job.snapshot),
            .meta_name = meta && *meta ? cfs_xstrdup(meta) : NULL,
            .top = cfs_xstrdup(file),
            .base = cfs_xstrdup(job.base),
            .journal_id = cfs_journal_new_id(e->journal),
            .queued = now_s(),
            .requeued = true,
            .group = cfs_xstrdup(job.group),
        };
        if (id)
            cfs_file_id_copy(&back[i].top_id, id);
        tops[i] = (struct cfs_job_file){ .path = back[i].top, .id = back[i].top_id };
        puts[i] = (struct cfs_journal_entry){
            .id = back[i].journal_id, .domain = (char *)dom, .disk = (char *)disk,
            .snapshot = back[i].snapshot, .meta_name = back[i].meta_name,
            .top = back[i].top, .base = back[i].base, .type = CFS_JOB_RMDIR,
            .phase = (char *)"requeued", .created = back[i].queued,
            .updated = back[i].queued, .n_leaving = 1, .leaving = &tops[i],
            .group = back[i].group,
        };
    }
    job.superseded = true;
    job_journal_entry(dom, disk, &job, cfs_job_phase_to_string(job.phase),
                      &puts[n_snap]);
    r = cfs_journal_apply(e->journal, puts, n_snap + 1, NULL, 0);
    free(puts);
    free(tops);
    bool requeued = false;
    if (r == 0) {
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, job.id);
        if (s && s->job.phase == CFS_PHASE_RUNNING) {
            s->job.superseded = true;
            struct cfs_queued *nq =
                cfs_xcalloc(s->n_queue + n_snap, sizeof(*nq));
            memcpy(nq, back, n_snap * sizeof(*nq));
            if (s->n_queue)
                memcpy(nq + n_snap, s->queue, s->n_queue * sizeof(*nq));
            free(s->queue);
            s->queue = nq;
            s->n_queue += n_snap;
            tree_changed(e);
            requeued = true;
        }
        pthread_mutex_unlock(&e->tree->lock);
    } else {
        log_err("journal: regrouping the merge of %s on %s/%s: %s",
                job.snapshot, dom, disk, strerror(-r));
    }
    char **ids = cfs_xcalloc(n_snap, sizeof(*ids));
    for (size_t i = 0; i < n_snap; i++)
        ids[i] = requeued ? cfs_xstrdup(back[i].journal_id)
                          : TAKE_PTR(back[i].journal_id);
    if (!requeued) {
        /* the job moved on meanwhile, or the journal failed: undo */
        for (size_t i = 0; i < n_snap; i++)
            cfs_queued_clear(&back[i]);
        if (r == 0) {
            journal_close_all(e, ids, n_snap);
            job.superseded = false;
            journal_record(e, dom, disk, &job, cfs_job_phase_to_string(job.phase));
        }
        for (size_t i = 0; i < n_snap; i++)
            free(ids[i]);
        free(ids);
        free(back);
        cfs_job_clear(&job);
        return false;
    }
    free(back); /* its entries moved into the queue */

    log_info("%s/%s: regrouping: the merge of %s (%llu%%) is aborted to be "
             "merged again together with the deletions queued next to it",
             dom, disk, job.snapshot,
             pr.end ? (unsigned long long)(pr.cur * 100 / pr.end) : 0ULL);
    r = e->be->ops->job_abort(e->be, dom, disk);
    if (r == 0) {
        /* gone (libvirt's abort is synchronous). Canceled, and the union
         * next, if its layers are all still in the chain; a merge that
         * completed just before the abort reached it is finished as
         * usual (clean-up, metadata), and the requeued snapshots close as
         * already merged; libvirt unreadable now: the polls decide, as
         * for any job gone from libvirt (superseded: canceled, not
         * failed) */
        if (job_finish(e, dom, disk, job.id) == FINISH_TOP_IN_CHAIN)
            job_fail(e, dom, disk, job.id, CFS_PHASE_CANCELED, REGROUP_REASON);
    } else {
        /* it ended meanwhile (ENOENT), or libvirt refused: the job goes on
         * as it was, and its snapshots leave the queue again */
        log_info("%s/%s: no regroup: %s", dom, disk, errmsg_or(strerror(-r)));
        job.superseded = false;
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, job.id);
        if (s) {
            s->job.superseded = false;
            queue_drop_locked(s, ids, n_snap);
            tree_changed(e);
        }
        pthread_mutex_unlock(&e->tree->lock);
        journal_close_all(e, ids, n_snap);
        if (s)
            journal_record(e, dom, disk, &job, cfs_job_phase_to_string(job.phase));
        if (r == -ENOENT)
            route(e, work_new(WORK_POLL_JOB, dom, disk));
    }
    for (size_t i = 0; i < n_snap; i++)
        free(ids[i]);
    free(ids);
    cfs_job_clear(&job);
    return r == 0;
}
