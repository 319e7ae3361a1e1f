/* copy.c — part of the engine (see engine_int.h): the end of a `copy`
 * (issue 8 §1; docs/design/issue8.md §1.3-§1.7).
 *
 * A copy is a job of kind copy on its disk: TOP is the source (the
 * active layer when it started), DEST the destination, made[] every file
 * chainfs created for it (DEST first) with the dev/ino it had when made.
 * ctl starts it (actions.c, ctl_copy); polls and events follow it like an
 * active commit (running -> ready -> pivoting), and this file decides how
 * it ended:
 *
 *   DEST is the live top                 pivoted: cleanup (the persistent
 *                                        definition, snapshot metadata),
 *                                        completed; the old files are
 *                                        kept and named
 *   finishing, DEST out of the chain     `finish`: cleanup (qemu-img check
 *                                        of DEST), completed or failed
 *   anything else                        not (yet) over: the caller decides
 *                                        (poll_job: vanished -> failed)
 *
 * `copy DEST chain` also copies the frozen layers (a thread of its own,
 * bottom first, qemu-img convert -n into files made before the mirror
 * started, each journaled once done): the copy is ready only when the
 * mirror is and every copy is done; the snapshots follow their files at
 * the pivot.
 *
 * A copy that fails or is canceled before pivoting/finishing removes
 * the files it made, and only those: lstat() must give the recorded
 * dev/ino and a regular file, and no chain of any domain may name it
 * (file_user_live). Never a source file. */
#include "engine_int.h"

/* Whether DOM/DISK's live top (in D, a fresh read) is JOB's DEST. */
static bool dest_is_top(const struct cfs_disk *dk, const struct cfs_job *job)
{
    if (!dk || dk->n_layers == 0 || !job->dest)
        return false;
    const struct cfs_file_id *id = job->n_made > 0 ? &job->made[0].id : NULL;
    return cfs_file_same(id, job->dest, &dk->layers[0].id, dk->layers[0].path);
}

static bool dest_in_chain(const struct cfs_disk *dk, const struct cfs_job *job)
{
    if (!dk || !job->dest)
        return false;
    const struct cfs_file_id *id = job->n_made > 0 ? &job->made[0].id : NULL;
    return cfs_disk_find_file(dk, id, job->dest) >= 0;
}

/* Delete F, a file chainfs recorded (with its dev/ino) as its own to
 * delete, if it still is that file, no disk of any domain has it in its
 * chain (libvirt asked now, file_user_live) and no disk.raw reads it.
 * Unlinked through its parent directory after checking the name there
 * still is the same regular file; the directory is fsynced. Else it
 * stays, named in the log with the reason. LABEL ("dom" or "dom/disk")
 * and WHAT ("made for the copy, never used", ...) are for the log. */
void delete_recorded_file(struct cfs_engine *e, const char *label,
                          const struct cfs_job_file *f, const char *what)
{
    struct stat st;
    if (lstat(f->path, &st) < 0) {
        if (errno != ENOENT)
            log_warn("%s: %s: %s; not deleting it", label, f->path, strerror(errno));
        return;
    }
    if (!f->id.known || !S_ISREG(st.st_mode) || (uint64_t)st.st_dev != f->id.dev ||
        (uint64_t)st.st_ino != f->id.ino) {
        log_warn("%s: %s is not the file chainfs recorded (another file, a "
                 "symlink, or its identity was never recorded); left in place",
                 label, f->path);
        return;
    }
    _cleanup_free_ char *user = NULL;
    size_t which;
    const struct file_ref ref = { &f->id, f->path };
    int r = file_user_live(e, &ref, 1, NULL, NULL, &user, &which);
    if (r != 0) {
        log_warn("%s: %s left in place: %s %s", label, f->path,
                 r > 0 ? "used by" : "cannot tell whether a chain uses it:",
                 user ? user : "?");
        return;
    }
    _cleanup_free_ char *reader = NULL;
    pthread_mutex_lock(&e->tree->lock);
    bool read = reader_uses(e->tree, &f->id, f->path, &reader);
    pthread_mutex_unlock(&e->tree->lock);
    if (read) {
        log_warn("%s: %s left in place: %s", label, f->path, reader);
        return;
    }
    _cleanup_free_ char *tmp = cfs_xstrdup(f->path);
    _cleanup_free_ char *tmp2 = cfs_xstrdup(f->path);
    const char *dir = dirname(tmp);
    const char *base = basename(tmp2);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        log_warn("%s: %s: %s; not deleting %s", label, dir, strerror(errno), f->path);
        return;
    }
    struct stat st2;
    if (fstatat(dfd, base, &st2, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st2.st_mode) &&
        (uint64_t)st2.st_dev == f->id.dev && (uint64_t)st2.st_ino == f->id.ino) {
        if (unlinkat(dfd, base, 0) < 0)
            log_warn("%s: deleting %s: %s", label, f->path, strerror(errno));
        else
            log_info("%s: deleted %s (%s)", label, f->path, what);
    }
    cfs_fsync_dir(dfd);
    close(dfd);
}

void copy_delete_made(struct cfs_engine *e, const char *dom, const char *disk,
                      const struct cfs_job *job)
{
    if (!engine_files_local(e)) {
        for (size_t i = 0; i < job->n_made; i++)
            log_warn("%s/%s: %s (made for the copy) is not a file of this "
                     "machine; left in place", dom, disk, job->made[i].path);
        return;
    }
    _cleanup_free_ char *label = cfs_xasprintf("%s/%s", dom, disk);
    for (size_t i = 0; i < job->n_made; i++)
        delete_recorded_file(e, label, &job->made[i], "made for the copy, never used");
}

/* After a pivot (phase cleanup journaled): the persistent definition
 * names DEST, the snapshot metadata follows the new chain, the old files
 * are named. Each step idempotent (recovery repeats it). */
static void cleanup_pivot(struct cfs_engine *e, const char *dom,
                          const char *disk, uint64_t id,
                          const struct cfs_job *job)
{
    int r;
    /* §1.6 step 1: libvirt rewrites the persistent source only when it
     * named the live top; redefine only if it did not */
    _cleanup_free_ char *psrc = NULL;
    r = e->be->ops->persistent_source_get
            ? e->be->ops->persistent_source_get(e->be, dom, disk, &psrc)
            : -EOPNOTSUPP;
    if (r < 0) {
        log_warn("%s/%s: cannot read the persistent definition after the copy: %s",
                 dom, disk, errmsg_or(strerror(-r)));
    } else if (!psrc) {
        log_info("%s/%s: transient domain: no persistent definition to update",
                 dom, disk);
    } else {
        struct cfs_file_id pid = {0};
        cfs_file_identify(&pid, psrc, engine_files_local(e));
        const struct cfs_file_id *did = job->n_made > 0 ? &job->made[0].id : NULL;
        bool same = cfs_file_same(&pid, psrc, did, job->dest);
        cfs_file_id_clear(&pid);
        if (same) {
            log_info("%s/%s: libvirt's persistent definition names %s already",
                     dom, disk, job->dest);
        } else {
            r = e->be->ops->persistent_source_set(e->be, dom, disk, job->dest, "qcow2");
            if (r < 0)
                log_warn("%s/%s: the persistent definition still names %s, and "
                         "redefining it with %s failed: %s", dom, disk, psrc,
                         job->dest, errmsg_or(strerror(-r)));
            else
                log_info("%s/%s: persistent definition named %s; redefined "
                         "with %s", dom, disk, psrc, job->dest);
        }
    }

    /* §1.6 step 2: snapshot metadata. meta_name holds the metadata of the
     * source's active layer (shallow: retargeted to DEST); snapshots[]
     * every snapshot of the old chain (flatten: dropped, top first). */
    if (job->copy_mode == CFS_COPY_SHALLOW && job->meta_name) {
        r = e->be->ops->snapshot_retarget(e->be, dom, job->meta_name, disk, job->dest);
        if (r < 0 && r != -ENOENT)
            log_warn("%s/%s: retargeting snapshot metadata %s to %s: %s", dom,
                     disk, job->meta_name, job->dest, errmsg_or(strerror(-r)));
        else if (r == 0)
            log_info("%s/%s: snapshot %s now names %s", dom, disk,
                     job->meta_name, job->dest);
    } else if (job->copy_mode == CFS_COPY_FLATTEN) {
        for (char **m = job->snapshots; m && *m; m++) {
            bool other_disk = false;
            pthread_mutex_lock(&e->tree->lock);
            const struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
            for (size_t i = 0; d && i < d->n_disks; i++) {
                if (cfs_streq(d->disks[i].target, disk))
                    continue;
                for (size_t l = 0; l < d->disks[i].n_layers; l++)
                    if (cfs_streq(d->disks[i].layers[l].meta_name, *m))
                        other_disk = true;
            }
            pthread_mutex_unlock(&e->tree->lock);
            r = other_disk ? e->be->ops->snapshot_forget(e->be, dom, disk, *m)
                           : e->be->ops->snapshot_drop(e->be, dom, *m);
            if (r < 0 && r != -ENOENT)
                log_warn("%s/%s: dropping snapshot metadata %s after the "
                         "flattening copy: %s", dom, disk, *m, errmsg_or(strerror(-r)));
        }
    }

    /* chain: every snapshot names the copy of its layer, and its
     * <domain> copy the copy of the layer below (libvirt's own
     * snapshot-delete checks both) */
    for (size_t i = 0; job->copy_mode == CFS_COPY_CHAIN && job->layer_meta &&
                       i < job->n_made && job->layer_meta[i]; i++) {
        const char *m = job->layer_meta[i];
        if (!*m)
            continue;
        r = e->be->ops->snapshot_retarget(e->be, dom, m, disk, job->made[i].path);
        if (r < 0 && r != -ENOENT)
            log_warn("%s/%s: retargeting snapshot metadata %s to %s: %s", dom,
                     disk, m, job->made[i].path, errmsg_or(strerror(-r)));
        if (i + 1 < job->n_made && e->be->ops->snapshot_domain_source) {
            r = e->be->ops->snapshot_domain_source(e->be, dom, m, disk,
                                                   job->made[i + 1].path);
            if (r < 0 && r != -ENOENT)
                log_warn("%s/%s: snapshot %s's domain copy to %s: %s", dom, disk,
                         m, job->made[i + 1].path, errmsg_or(strerror(-r)));
        }
        log_info("%s/%s: snapshot %s now names %s", dom, disk, m, job->made[i].path);
    }

    /* §1.6 step 4: the old files are the user's */
    for (size_t i = 0; i < job->n_old; i++)
        log_info("%s/%s: old file kept (not in the chain any more): %s", dom,
                 disk, job->old_files[i].path);
    log_info("%s/%s: copied to %s (%s) and pivoted", dom, disk, job->dest,
             cfs_copy_mode_to_string(job->copy_mode));
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (s) {
        free(s->job.reason);
        s->job.reason = cfs_xasprintf("the disk runs on %s; old files kept", job->dest);
    }
    pthread_mutex_unlock(&e->tree->lock);
    /* the tree shows the new chain with the snapshots' new names before
     * the job reads as completed: `cat wait` then `ls snapshots/` must
     * not see a read taken between the pivot and the retarget */
    refresh_domain(e, dom);
    job_end(e, dom, disk, id, CFS_PHASE_COMPLETED, NULL, false);
}

/* After `finish` (phase cleanup journaled): DEST is closed; judge it. */
static void cleanup_finish(struct cfs_engine *e, const char *dom,
                           const char *disk, uint64_t id,
                           const struct cfs_job *job)
{
    int r = e->be->ops->image_check
                ? e->be->ops->image_check(e->be, job->dest, "qcow2")
                : -EOPNOTSUPP;
    if (r < 0) {
        _cleanup_free_ char *text = cfs_xasprintf(
            "the copy ended without a pivot but %s does not check clean (kept): %s",
            job->dest, errmsg_or(strerror(-r)));
        /* logged by the end's edge: "job N failed: copy ..." */
        job_end(e, dom, disk, id, CFS_PHASE_FAILED, text, false);
        refresh_domain(e, dom);
        return;
    }
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (s) {
        free(s->job.reason);
        s->job.reason = cfs_xasprintf("point-in-time copy in %s; the disk stays on %s",
                                      job->dest, job->top);
    }
    pthread_mutex_unlock(&e->tree->lock);
    log_info("%s/%s: copy finished without a pivot: %s is a point-in-time "
             "copy (qemu-img check clean); the disk stays on %s", dom, disk,
             job->dest, job->top);
    job_end(e, dom, disk, id, CFS_PHASE_COMPLETED, NULL, false);
    refresh_domain(e, dom);
}

enum finish_result copy_finish(struct cfs_engine *e, const char *dom,
                               const char *disk, uint64_t id,
                               const struct cfs_job *job)
{
    struct cfs_domain *live = NULL;
    int r = e->be->ops->read_domain_light
                ? e->be->ops->read_domain_light(e->be, dom, &live)
                : e->be->ops->read_domain(e->be, dom, &live);
    if (r < 0 && r != -ENOENT)
        return FINISH_CANNOT_TELL;
    const struct cfs_disk *ldk = live ? cfs_domain_find_disk(live, disk) : NULL;
    bool gone = !ldk;
    bool top = dest_is_top(ldk, job);
    bool in_chain = dest_in_chain(ldk, job);
    cfs_domain_free(live);
    if (gone) {
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the domain or the disk disappeared during the copy");
        return FINISH_DONE;
    }
    bool finishing = job->finish || job->phase == CFS_PHASE_FINISHING;
    if (finishing ? in_chain : !top)
        return FINISH_TOP_IN_CHAIN; /* not over (or not yet visible) */
    /* of two callers (the event, the ctl thread of `finish`; a late
     * event during the clean-up) one cleans up; a recovery finds the
     * flag clear and repeats a clean-up the previous daemon began */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    bool mine = s && !s->job.cleaning;
    if (mine)
        s->job.cleaning = true;
    pthread_mutex_unlock(&e->tree->lock);
    if (!mine)
        return FINISH_DONE;
    if (!job_set_phase_from(e, dom, disk, id, job->phase, CFS_PHASE_CLEANUP)) {
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, id);
        if (s)
            s->job.cleaning = false;
        pthread_mutex_unlock(&e->tree->lock);
        return FINISH_DONE; /* ended or moved on meanwhile */
    }
    if (finishing)
        cleanup_finish(e, dom, disk, id, job);
    else
        cleanup_pivot(e, dom, disk, id, job);
    return FINISH_DONE;
}

/* `finish` in ctl: JOB (a copy of DOM/DISK, a copy of the tree's) is
 * ready; journal the intent, end the mirror without a pivot, judge DEST.
 * 0 or a negative errno with *WHY. */
int copy_ctl_finish(struct cfs_engine *e, const char *dom, const char *disk,
                    const struct cfs_job *job, char **why)
{
    if (job->type != CFS_JOB_COPY) {
        *why = cfs_xstrdup("only a copy finishes (abort cancels other jobs)");
        return -EINVAL;
    }
    if (job->copy_mode == CFS_COPY_SHALLOW) {
        *why = cfs_xstrdup("a shallow copy cannot finish: DEST would back onto "
                           "the live chain's frozen layers, which later merges "
                           "rewrite; pivot, or abort");
        return -EINVAL;
    }
    if (job->phase == CFS_PHASE_RUNNING) {
        *why = cfs_xstrdup("the copy is not ready yet");
        return -EAGAIN;
    }
    if (job->phase != CFS_PHASE_READY) {
        *why = cfs_xasprintf("the copy is %s", cfs_job_phase_to_string(job->phase));
        return -EBUSY;
    }
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, job->id);
    bool ok = s && s->job.phase == CFS_PHASE_READY;
    if (ok)
        s->job.finish = true;
    pthread_mutex_unlock(&e->tree->lock);
    /* the journal first (phase finishing, finish true): a daemon killed
     * during the abort call asks it again */
    if (!ok || !job_set_phase_from(e, dom, disk, job->id, CFS_PHASE_READY,
                                   CFS_PHASE_FINISHING)) {
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, job->id);
        if (s && s->job.phase == CFS_PHASE_READY)
            s->job.finish = false;
        pthread_mutex_unlock(&e->tree->lock);
        *why = cfs_xstrdup("the copy is no longer ready (pivoting, or it ended)");
        return -EAGAIN;
    }
    int r = e->be->ops->job_abort(e->be, dom, disk);
    if (r < 0 && r != -ENOENT) {
        /* the mirror may still run: the poll finds out (a job still there
         * goes on being followed in finishing; abort again with finish) */
        *why = cfs_xstrdup(errmsg_or(strerror(-r)));
        log_warn("ctl %s/%s: finish: the abort call failed: %s", dom, disk, *why);
        route(e, work_new(WORK_POLL_JOB, dom, disk));
        return r;
    }
    struct cfs_job now;
    if (!job_snapshot_mine(e, dom, disk, job->id, &now))
        return 0;
    enum finish_result fr = copy_finish(e, dom, disk, job->id, &now);
    if (fr == FINISH_TOP_IN_CHAIN)
        job_fail(e, dom, disk, job->id, CFS_PHASE_FAILED,
                 "finish: libvirt ended the mirror but DEST is still in the chain");
    cfs_job_clear(&now);
    return 0;
}

/* ---- chain: the frozen layers' copies ------------------------------------- */

/* The format of file PATH in DOM/DISK's chain as the tree has it
 * ("qcow2" if not found). Caller frees. */
static char *layer_format(struct cfs_engine *e, const char *dom,
                          const char *disk, const char *path)
{
    char *fmt = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    int i = cfs_disk_find_file(dk, NULL, path);
    if (i >= 0 && dk->layers[i].format)
        fmt = cfs_xstrdup(dk->layers[i].format);
    pthread_mutex_unlock(&e->tree->lock);
    return fmt ? fmt : cfs_xstrdup("qcow2");
}

struct chain_args {
    struct cfs_engine *e;
    struct offline_thread *self;
};

/* Copies the layers not copied yet, bottom first (made[n_made - 1], the
 * base's copy, first), each journaled once done; then asks for a poll
 * (the mirror may be ready: pivot). Quits without a word when canceled
 * (whoever canceled ends the job); a failure aborts the mirror and fails
 * the copy (its files are removed). */
static void *chain_worker(void *arg)
{
    struct chain_args *a = arg;
    struct cfs_engine *e = a->e;
    cfs_log_set_context(e->host);
    struct offline_thread *self = a->self;
    const char *dom = self->dom, *disk = self->disk;
    uint64_t id = self->job_id;
    free(a);
    bool all_done = false;
    for (;;) {
        struct cfs_job job;
        if (!job_snapshot_mine(e, dom, disk, id, &job))
            break;
        if (copy_layers_done(&job)) {
            all_done = true;
            cfs_job_clear(&job);
            break;
        }
        size_t k = job.n_made - 1 - job.n_copied; /* next layer, from the bottom */
        if (k < 1 || k >= job.n_old) {
            cfs_job_clear(&job);
            break;
        }
        const char *src = job.old_files[k].path;
        const char *dst = job.made[k].path;
        const char *back = k + 1 < job.n_made ? job.made[k + 1].path : NULL;
        _cleanup_free_ char *fmt = layer_format(e, dom, disk, src);
        _cleanup_free_ char *bfmt = back ? layer_format(e, dom, disk, job.old_files[k + 1].path)
                                         : NULL;
        log_info("%s/%s: copying %s into %s (layer %zu of %zu, bottom first)", dom,
                 disk, src, dst, job.n_copied + 1, job.n_made - 1);
        int r = e->be->ops->image_copy_data
                    ? e->be->ops->image_copy_data(e->be, src, dst, fmt, back, bfmt,
                                                  job.bandwidth, &self->cancel)
                    : -EOPNOTSUPP;
        if (self->cancel) {
            cfs_job_clear(&job);
            break;
        }
        if (r < 0) {
            _cleanup_free_ char *text = cfs_xasprintf(
                "copying %s into %s: %s", src, dst, errmsg_or(strerror(-r)));
            /* logged by the job's end (job_fail below) */
            int ar = e->be->ops->job_abort(e->be, dom, disk);
            if (ar < 0 && ar != -ENOENT)
                log_warn("%s/%s: ending the mirror after the failed copy: %s", dom,
                         disk, errmsg_or(strerror(-ar)));
            job_fail(e, dom, disk, id, CFS_PHASE_FAILED, text);
            cfs_job_clear(&job);
            break;
        }
        /* journaled: a restart copies only what is left */
        struct cfs_job now = {0};
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = job_mine(e, dom, disk, id);
        bool mine = s && cfs_job_phase_in_progress(s->job.phase);
        if (mine) {
            s->job.n_copied = job.n_copied + 1;
            tree_changed(e);
            cfs_job_copy(&now, &s->job);
        }
        pthread_mutex_unlock(&e->tree->lock);
        if (mine && now.journal_id)
            journal_record(e, dom, disk, &now, cfs_job_phase_to_string(now.phase));
        cfs_job_clear(&now);
        cfs_job_clear(&job);
        if (!mine)
            break;
    }
    if (all_done) {
        log_info("%s/%s: every frozen layer is copied; the mirror pivots once ready",
                 dom, disk);
        route(e, work_new(WORK_POLL_JOB, dom, disk));
    }
    pthread_mutex_lock(&e->qlock);
    self->done = true;
    pthread_mutex_unlock(&e->qlock);
    return NULL;
}

int copy_chain_start(struct cfs_engine *e, const char *dom, const char *disk,
                     uint64_t id)
{
    struct offline_thread *ot = cfs_xcalloc(1, sizeof(*ot));
    ot->dom = cfs_xstrdup(dom);
    ot->disk = cfs_xstrdup(disk);
    ot->job_id = id;
    struct chain_args *a = cfs_xcalloc(1, sizeof(*a));
    a->e = e;
    a->self = ot;
    /* listed before it runs: it marks itself done under the lock */
    pthread_mutex_lock(&e->qlock);
    int r = -pthread_create(&ot->thread, NULL, chain_worker, a);
    if (r == 0) {
        ot->next = e->offline;
        e->offline = ot;
    }
    pthread_mutex_unlock(&e->qlock);
    if (r < 0) {
        free(a);
        free(ot->dom);
        free(ot->disk);
        free(ot);
    }
    return r;
}

void copy_chain_stop(struct cfs_engine *e, const char *dom, const char *disk,
                     uint64_t id)
{
    for (;;) {
        bool running = false;
        pthread_mutex_lock(&e->qlock);
        for (struct offline_thread *ot = e->offline; ot; ot = ot->next) {
            if (!ot->dom || ot->done || ot->job_id != id || !cfs_streq(ot->dom, dom) ||
                !cfs_streq(ot->disk, disk) || pthread_equal(ot->thread, pthread_self()))
                continue;
            ot->cancel = 1;
            running = true;
        }
        pthread_mutex_unlock(&e->qlock);
        if (!running)
            return;
        /* its qemu-img is killed within 50 ms */
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}
