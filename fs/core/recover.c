/* recover.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

/* ---- recovery ----------------------------------------------------------------- */

/* A mkdir that was under way (one disk, or a domain-level one of several,
 * design issue10 §2.5): libvirt either made every overlay the active
 * layer of its disk or did nothing (one call, all or none); the chains
 * tell which. A mkdir that died between the freeze and the thaw (phase
 * `frozen`) left the guest frozen: it is thawed (on the domain's worker,
 * bounded; a failure is retried as any owed thaw). */
static void recover_snapshot(struct cfs_engine *e, const struct cfs_journal_entry *en)
{
    if (cfs_streq(en->phase, "frozen")) {
        log_warn("recovery: %s: a mkdir of snapshot %s left the guest's "
                 "filesystems frozen (or maybe frozen: the daemon stopped "
                 "before its thaw); thawing them", en->domain, en->snapshot);
        /* the entry stays open until the thaw is done */
        owe_thaw_now(e, en->domain, "a mkdir died while the guest was frozen",
                     en->id);
    }
    /* the disks and their overlays: disks[i] <- made[i] (several), else
     * DISK <- TOP */
    size_t n = en->disks && en->n_made == cfs_strv_len(en->disks) && en->n_made > 0
                   ? en->n_made : 1;
    bool local = engine_files_local(e);
    size_t taken = 0;
    _cleanup_buf_ struct cfs_buf took = { 0 }, left = { 0 }, kept = { 0 };
    for (size_t i = 0; i < n; i++) {
        const char *disk = n > 1 ? en->disks[i] : en->disk;
        const char *top = n > 1 ? en->made[i].path : en->top;
        bool done = disk_has_layer(e, en->domain, disk, NULL, top);
        struct stat st;
        /* The overlay file may exist without the snapshot: the daemon
         * died between writing it and libvirt taking it, or libvirt is
         * still at it (a call outlives its caller). Deleting it could
         * pull a file from under QEMU; it is only named. */
        bool there = !done && top && (!local || lstat(top, &st) == 0);
        struct cfs_buf *b = done ? &took : &left;
        cfs_buf_printf(b, "%s%s", b->len ? ", " : "", disk);
        if (there)
            cfs_buf_printf(&kept, "%s%s", kept.len ? " " : "", top);
        taken += done;
    }
    if (n > 1 && taken > 0 && taken < n)
        log_err("recovery: %s: snapshot %s was taken on %s but not on %s, "
                "which one libvirt call cannot do: the chains were changed "
                "meanwhile by someone else; nothing deleted", en->domain,
                en->snapshot, took.data, left.data);
    else
        log_info("recovery: %s/%s: snapshot %s was %s", en->domain,
                 n > 1 ? took.len ? took.data : left.data : en->disk,
                 en->snapshot, taken ? "taken" : "not taken (nothing to undo)");
    if (kept.len)
        log_info("recovery: %s: snapshot %s: overlay file%s left in place, "
                 "remove once no chain uses %s%s: %s", en->domain, en->snapshot,
                 n > 1 ? "s" : "", n > 1 ? "them" : "it",
                 local ? "" : " (on the libvirt host)", kept.data);
}

/* Take up what a previous daemon left in the journal. */
void recover_journal(struct cfs_engine *e)
{
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    if (cfs_journal_list(e->journal, &v, &n) < 0)
        return;
    /* issue 10: the job groups before their members (a member's change
     * updates its group) */
    _cleanup_strv_ char **groups = NULL;
    recover_groups_load(e, v, n, &groups);
    /* the queued rmdirs first (issue 8 §3): a job recovered below that
     * turns out failed returns them, one that completed dispatches them */
    for (size_t i = 0; i < n; i++)
        if (v[i].type == CFS_JOB_RMDIR)
            queue_load_entry(e, &v[i]);
    for (size_t i = 0; i < n; i++) {
        struct cfs_journal_entry *en = &v[i];
        if (en->type == CFS_JOB_RMDIR || en->type == CFS_JOB_GROUP)
            continue;
        if (en->type == CFS_JOB_REVERT) {
            /* issue 10 §4.3: back or forward, from the phase (and for
             * "switching" the persistent definition) */
            revert_recover(e, en);
            continue;
        }
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, en->domain, en->disk);
        bool followed = cfs_job_phase_in_progress(s->job.phase) &&
                        cfs_streq(s->job.journal_id, en->id);
        struct work *rw = NULL;
        if (followed && en->bandwidth) {
            /* a reconnect: libvirt (restarted) keeps the limit, but it
             * is set again all the same */
            rw = work_new(WORK_REAPPLY, en->domain, en->disk);
            rw->job_id = s->job.id;
        }
        pthread_mutex_unlock(&e->tree->lock);
        if (rw)
            route(e, rw);
        if (followed)
            continue; /* this daemon is on it already (a reconnect) */

        if (en->type == CFS_JOB_SNAPSHOT) {
            /* (a reconnect finds the entry of an owed thaw open: it is
             * being taken care of) */
            if (thaw_keeps(e, en->domain, en->id))
                continue;
            recover_snapshot(e, en);
            if (!cfs_streq(en->phase, "frozen"))
                journal_close(e, en->id);
            continue;
        }

        enum cfs_job_phase ph = cfs_job_phase_from_string(en->phase);
        if (ph == CFS_PHASE_MAX || ph == CFS_PHASE_NONE) {
            log_warn("recovery: %s/%s: entry %s has phase \"%s\", which this "
                     "version does not know; taken as running", en->domain,
                     en->disk, en->id, en->phase);
            ph = CFS_PHASE_RUNNING;
        }
        if (ph == CFS_PHASE_COMPLETED || ph == CFS_PHASE_FAILED ||
            ph == CFS_PHASE_CANCELED) {
            /* the job had ended; only closing the entry was left */
            log_info("recovery: %s/%s: merge of %s had ended (%s); entry closed",
                     en->domain, en->disk, en->snapshot, en->phase);
            journal_close(e, en->id);
            continue;
        }

        pthread_mutex_lock(&e->tree->lock);
        job_new_locked(e, s, en->type);
        /* the job libvirt has on the disk is this one, chainfs's own */
        cfs_job_clear(&s->external);
        /* the job is loaded in the phase stored: recover_merge steps
         * from there */
        s->job.phase = ph;
        s->job.bandwidth = en->bandwidth;
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
        /* issue 8's merge fields, as journaled (empty in entries of
         * earlier versions: the merge is then TOP into BASE, as before) */
        s->job.direction = en->direction;
        for (char **sn = en->snapshots; sn && *sn; sn++)
            cfs_strv_push(&s->job.snapshots, cfs_xstrdup(*sn));
        for (char **mn = en->meta_names; mn && *mn; mn++)
            cfs_strv_push(&s->job.meta_names, cfs_xstrdup(*mn));
        s->job.leaving = cfs_job_files_dup(en->leaving, en->n_leaving);
        s->job.n_leaving = s->job.leaving ? en->n_leaving : 0;
        s->job.written = cfs_xstrdup(en->written);
        s->job.bytes_commit = en->bytes_commit;
        s->job.bytes_pull = en->bytes_pull;
        s->job.bytes_copied = en->bytes_copied;
        s->job.reason = cfs_xstrdup(en->reason);
        s->job.survivor = cfs_xstrdup(en->survivor);
        s->job.superseded = en->superseded;
        /* issue 8's copies */
        s->job.dest = cfs_xstrdup(en->dest);
        s->job.copy_mode = en->copy_mode;
        s->job.manual = en->manual;
        s->job.finish = en->finish;
        s->job.made = cfs_job_files_dup(en->made, en->n_made);
        s->job.n_made = s->job.made ? en->n_made : 0;
        s->job.n_copied = en->n_copied;
        for (char **m = en->layer_meta; m && *m; m++)
            cfs_strv_push(&s->job.layer_meta, cfs_xstrdup(*m));
        s->job.old_files = cfs_job_files_dup(en->old_files, en->n_old);
        s->job.n_old = s->job.old_files ? en->n_old : 0;
        /* issue 10: a member of a job group (held in ready again until
         * the others are ready or ended) */
        s->job.group = cfs_xstrdup(en->group);
        group_member_sync_locked(e, s, NULL);
        /* the job is back in this daemon: "job N resumed (PHASE): ..."
         * (its end, later, is an edge like any other) */
        job_edge_locked(e, s, CFS_PHASE_NONE, ph);
        tree_changed(e);
        /* the disk is claimed now (a mkdir/rmdir sees the job); what
         * libvirt says of it is asked on the domain's worker */
        struct work *w = work_new(WORK_RECOVER, en->domain, en->disk);
        w->job_id = s->job.id;
        pthread_mutex_unlock(&e->tree->lock);
        route(e, w);
    }
    cfs_journal_entries_free(v, n);
    /* members whose own entries were closed already ended: done or not,
     * by their chains; a group all of whose members ended is journaled */
    recover_groups_settle(e, groups);
}

/* A recovered job found running in libvirt: its bandwidth is the one
 * journaled (a restart, a reconnect must not lift a limit). */
static void reapply_bandwidth(struct cfs_engine *e, const char *dom,
                              const char *disk, const struct cfs_job *job,
                              const struct cfs_job_progress *pr)
{
    if (!job->bandwidth || pr->bandwidth == job->bandwidth ||
        !e->be->ops->job_set_bandwidth)
        return;
    int r = e->be->ops->job_set_bandwidth(e->be, dom, disk, job->bandwidth);
    if (r < 0)
        log_warn("recovery: %s/%s: cannot set the merge's bandwidth to %llu "
                 "bytes/s again: %s", dom, disk,
                 (unsigned long long)job->bandwidth, errmsg_or(strerror(-r)));
    else
        log_info("recovery: %s/%s: merge bandwidth set to %llu bytes/s again",
                 dom, disk, (unsigned long long)job->bandwidth);
}

/* After a reconnect: job ID of DOM/DISK keeps its bandwidth. */
void recover_bandwidth(struct cfs_engine *e, const char *dom,
                       const char *disk, uint64_t id)
{
    struct cfs_job job;
    if (!job_snapshot_mine(e, dom, disk, id, &job) ||
        !cfs_job_kind(job.type)->block_job || job.phase == CFS_PHASE_STARTING) {
        cfs_job_clear(&job);
        return;
    }
    /* the limit journaled (what was asked), not the one last polled */
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    if (cfs_journal_list(e->journal, &v, &n) == 0)
        for (size_t i = 0; i < n; i++)
            if (cfs_streq(v[i].id, job.journal_id))
                job.bandwidth = v[i].bandwidth;
    cfs_journal_entries_free(v, n);
    struct cfs_job_progress pr = {0};
    if (e->be->ops->job_get(e->be, dom, disk, &pr) == 0 && pr.present)
        reapply_bandwidth(e, dom, disk, &job, &pr);
    cfs_job_clear(&job);
}

/* The libvirt half of recovering merge ID of DOM/DISK (recover_journal
 * loaded it in the phase stored): the step of that phase. */
void recover_merge(struct cfs_engine *e, const char *dom,
                   const char *disk, uint64_t id)
{
    struct cfs_job job;
    if (!job_snapshot_mine(e, dom, disk, id, &job)) {
        cfs_job_clear(&job);
        return;
    }
    const struct cfs_job_kind *k = cfs_job_kind(job.type);
    struct cfs_job_progress pr = {0};
    int r = -ENOENT;
    if (k->block_job && job.phase != CFS_PHASE_CLEANUP)
        r = e->be->ops->job_get(e->be, dom, disk, &pr);
    bool live = r == 0 && pr.present &&
                ((enum cfs_job_type)pr.type == job.type || pr.type == CFS_JOB_NONE);
    if (r == 0 && pr.present && !live) {
        /* a job of another kind: not ours; ours is over */
        log_warn("recovery: %s/%s: libvirt has a %s job on the disk, not the "
                 "%s chainfs recorded", dom, disk,
                 cfs_job_type_to_string(pr.type), cfs_job_type_to_string(job.type));
    }

    if (live) {
        reapply_bandwidth(e, dom, disk, &job, &pr);
        switch (job.phase) {
        case CFS_PHASE_STARTING:
            /* libvirt accepted the commit just before the daemon died */
            job_set_phase(e, dom, disk, id, CFS_PHASE_RUNNING);
            break;
        case CFS_PHASE_PIVOTING:
            /* the pivot did not happen (the job is still there) */
            job_set_phase(e, dom, disk, id, CFS_PHASE_READY);
            break;
        case CFS_PHASE_FINISHING: {
            /* a copy's `finish` whose abort call did not end the mirror
             * (or was never made): ask again, then judge DEST */
            int ar = e->be->ops->job_abort(e->be, dom, disk);
            if (ar < 0 && ar != -ENOENT) {
                log_warn("recovery: %s/%s: finish of the copy to %s: the abort "
                         "call failed: %s; followed", dom, disk, job.dest,
                         errmsg_or(strerror(-ar)));
                break;
            }
            if (job_finish(e, dom, disk, id) == FINISH_TOP_IN_CHAIN)
                job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                         "finish: the mirror ended with DEST still in the chain");
            cfs_job_clear(&job);
            return;
        }
        default:
            break;
        }
        /* chain: the frozen layers not copied yet are copied again
         * (qemu-img convert -n rewrites the same bytes) */
        if (job.type == CFS_JOB_COPY && job.copy_mode == CFS_COPY_CHAIN &&
            !copy_layers_done(&job) && copy_chain_start(e, dom, disk, id) < 0)
            log_err("recovery: %s/%s: cannot start copying the frozen layers again",
                    dom, disk);
        /* the poll takes it from here: ready (held if pivot manual),
         * pivot, clean-up */
        log_info("recovery: %s/%s: %s %s still %s; following it", dom, disk,
                 job.type == CFS_JOB_COPY ? "copy to" : "merge of",
                 job.type == CFS_JOB_COPY ? job.dest : job.snapshot,
                 cfs_job_phase_to_string(job.phase));
        cfs_job_clear(&job);
        return;
    }

    /* libvirt has no job of ours (or could not be asked): TOP out of the
     * chain means the merge is over, and clean-up finishes it */
    enum finish_result fr = job_finish(e, dom, disk, id);
    if (fr == FINISH_DONE) {
        log_info("recovery: %s/%s: %s %s had finished; cleaned up", dom, disk,
                 job.type == CFS_JOB_COPY ? "copy to" : "merge of",
                 job.type == CFS_JOB_COPY ? job.dest : job.snapshot);
    } else if (fr == FINISH_CANNOT_TELL) {
        /* libvirt cannot be read now: the polls ask again */
        log_info("recovery: %s/%s: cannot read the chain now; the %s %s "
                 "is followed", dom, disk,
                 job.type == CFS_JOB_COPY ? "copy to" : "merge of",
                 job.type == CFS_JOB_COPY ? job.dest : job.snapshot);
        if (job.phase == CFS_PHASE_STARTING || job.phase == CFS_PHASE_PIVOTING)
            job_set_phase(e, dom, disk, id, job.phase == CFS_PHASE_STARTING
                                                ? CFS_PHASE_RUNNING
                                                : CFS_PHASE_READY);
    } else if (job.superseded) {
        /* §3.3: aborted to be regrouped; its snapshots are queued again */
        log_info("recovery: %s/%s: merge of %s was regrouped; its snapshots "
                 "are queued again", dom, disk, job.snapshot);
        job_fail(e, dom, disk, id, CFS_PHASE_CANCELED, REGROUP_REASON);
    } else if (job.phase == CFS_PHASE_STARTING && job.type == CFS_JOB_COPY) {
        log_info("recovery: %s/%s: copy to %s never started", dom, disk, job.dest);
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the copy was interrupted before libvirt started it");
    } else if (job.type == CFS_JOB_COPY) {
        log_info("recovery: %s/%s: copy to %s ended without a pivot; marked "
                 "failed", dom, disk, job.dest);
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the copy ended without a pivot (domain stopped, or canceled "
                 "outside chainfs)");
    } else if (job.phase == CFS_PHASE_STARTING) {
        log_info("recovery: %s/%s: merge of %s never started; nothing was "
                 "written", dom, disk, job.snapshot);
        job_end(e, dom, disk, id, CFS_PHASE_FAILED,
                "the merge was interrupted before libvirt started it; "
                "nothing was written", false);
    } else {
        log_info("recovery: %s/%s: merge of %s did not finish; marked failed",
                 dom, disk, job.snapshot);
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the merge was interrupted and did not complete");
    }
    cfs_job_clear(&job);
}
