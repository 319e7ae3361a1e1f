/* actions.c — part of the engine (see engine_int.h). */
#include "engine_int.h"

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
        if (!cfs_job_phase_in_progress(s->job.phase)) {
            char **partial = TAKE_PTR(s->partial_tops);
            cfs_job_clear(&s->job);
            s->partial_tops = partial;
            s->job.type = type;
            s->job.phase = CFS_PHASE_FAILED;
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
        if (cfs_job_phase_in_progress(s->job.phase)) {
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
            s->job.phase = CFS_PHASE_RUNNING;
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
        s->job.phase = CFS_PHASE_FAILED;
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
    s->job.phase = CFS_PHASE_COMPLETED;
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
    } else if (s && cfs_job_phase_in_progress(s->job.phase)) {
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
    } else if (cfs_job_phase_in_progress(s->job.phase)) {
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
        j->phase = CFS_PHASE_RUNNING;
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
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
        cfs_job_clear(&job);
        return r;
    }

    /* durably record the intent before anything changes */
    if (journal_record(e, dom, disk, &job, "starting") < 0) {
        set_starting(e, dom, disk, job.id, false);
        _cleanup_free_ char *text = cfs_xasprintf(
            "rmdir %s: cannot write the journal in %s", name, e->state_dir);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
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
            job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, strerror(-r), false);
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
                                 job.type == CFS_JOB_ACTIVE_COMMIT,
                                 e->commit_bandwidth);
    set_starting(e, dom, disk, job.id, false);
    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        log_warn("rmdir %s/%s/snapshots/%s failed (%s): %s", dom, disk, name,
                 strerror(-r), msg);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", name, msg);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
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
