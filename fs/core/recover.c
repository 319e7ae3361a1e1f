/* recover.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

/* ---- recovery ----------------------------------------------------------------- */

/* Take up what a previous daemon left in the journal. */
void recover_journal(struct cfs_engine *e)
{
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    if (cfs_journal_list(e->journal, &v, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct cfs_journal_entry *en = &v[i];
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, en->domain, en->disk);
        bool followed = cfs_job_phase_in_progress(s->job.phase) &&
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
        s->job.phase = CFS_PHASE_RUNNING;
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
void recover_merge(struct cfs_engine *e, const char *dom,
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
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the merge was interrupted and did not complete");
    }
    cfs_job_clear(&job);
}
