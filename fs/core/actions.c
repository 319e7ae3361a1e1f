/* actions.c — part of the engine (see engine_int.h). */
#include "engine_int.h"
#include "chainfs/merge_plan.h"
#include "chainfs/snapdesc.h"

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
            job_new_locked(e, s, type);
            s->job.snapshot = cfs_xstrdup(snapshot);
            s->job.started = s->job.finished = now_s();
            s->job.error = cfs_xstrdup(msg);
            phase_step_locked(e, s, CFS_PHASE_FAILED);
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

/* The refusals mkdir and rmdir share, in this one order (then each its
 * own: mkdir EEXIST; rmdir no such snapshot ENOENT, ESTALE, a file used
 * elsewhere EBUSY, EOPNOTSUPP):
 *   1. ENOTCONN  libvirt is unreachable (the tree is stale)
 *   2. ENOENT    no such domain, no such disk
 *   3. EROFS     the disk takes no snapshots: read-only, shareable, no
 *                source; for mkdir also an active layer on a block device
 *                without overlay_dir (no place for the overlay)
 *   4. EBUSY     a job in progress on the disk: chainfs's own, or one
 *                chainfs did not start (external)
 * (Before these: mkdir's name check, EINVAL; and both ask whether the
 * domain answers, check_reachable.) 0 if none applies. DOM's disk DISK
 * is looked up here and left in *AT (the tree's; its state only found,
 * or with REFUSE_MAKE_STATE created, if the disk is there), whether
 * refused or not. Caller holds the tree lock; *WHY_BUF (caller frees) may
 * hold the text *WHY points to. */
enum { REFUSE_CREATING = 1, REFUSE_LIVE = 2, REFUSE_MAKE_STATE = 4,
       REFUSE_QUEUE = 8 /* rmdir: a chainfs merge in progress or deletions
                           queued is no refusal: queue (at->queue) */ };

/* How many numbered overlay names mkdir tries before EEXIST. */
#define OVERLAY_NAME_TRIES 100u

struct disk_at {
    struct cfs_domain *d;
    struct cfs_disk *dk;
    struct cfs_disk_state *s;
    bool queue;      /* REFUSE_QUEUE: the rmdir is to be queued */
};

static int disk_refusal(struct cfs_engine *e, const char *dom,
                        const char *disk, unsigned flags, struct disk_at *at,
                        const char **why, char **why_buf)
{
    at->queue = false;
    at->d = cfs_tree_find_domain(e->tree, dom);
    at->dk = at->d ? cfs_domain_find_disk(at->d, disk) : NULL;
    at->s = !at->dk ? NULL
            : flags & REFUSE_MAKE_STATE ? cfs_tree_disk_state(e->tree, dom, disk)
                                        : cfs_tree_find_disk_state(e->tree, dom, disk);
    const struct cfs_domain *d = at->d;
    const struct cfs_disk *dk = at->dk;
    const struct cfs_disk_state *s = at->s;
    bool creating = flags & REFUSE_CREATING;
    if (!(flags & REFUSE_LIVE) && e->tree->stale) {
        *why = "libvirt is unreachable (chainfs keeps reconnecting)";
        return -ENOTCONN;
    }
    if (!d || !dk) {
        *why = d ? "no such disk" : "no such domain";
        return -ENOENT;
    }
    if (dk->readonly || dk->shareable || (creating && dk->n_layers == 0)) {
        *why = dk->readonly ? "the disk is read-only"
               : dk->shareable ? "the disk is shareable" : "the disk has no source";
        return -EROFS;
    }
    if (creating && !e->overlay_dir &&
        (dk->layers[0].is_block ||
         (dk->layers[0].path && strncmp(dk->layers[0].path, "/dev/", 5) == 0))) {
        /* beside the active image would be /dev: never create files there */
        *why = "the disk's active layer is a block device (or in /dev), beside "
               "which no overlay is created; start chainfs with "
               "-o overlay_dir=DIR to give its overlays a directory";
        return -EROFS;
    }
    if (s && cfs_job_phase_in_progress(s->job.phase)) {
        const struct cfs_job_kind *k = cfs_job_kind(s->job.type);
        if ((flags & REFUSE_QUEUE) && k->chainfs && k->merge) {
            /* issue 8 §3.1: queued behind chainfs's own merge */
            at->queue = true;
            return 0;
        }
        *why = s->job.type == CFS_JOB_COPY ? "the disk is being copied"
                                           : "the disk has a job in progress";
        return -EBUSY;
    }
    if (s && s->external.type != CFS_JOB_NONE) {
        free(*why_buf);
        *why = *why_buf = cfs_xasprintf(
            "the disk has a %s job chainfs did not start (external); wait "
            "for it to end", cfs_job_type_to_string(s->external.type));
        return -EBUSY;
    }
    if (s && s->n_queue > 0) {
        if (flags & REFUSE_QUEUE) {
            at->queue = true; /* behind the deletions queued already */
            return 0;
        }
        *why = "deletions are queued on the disk (see job); wait for them";
        return -EBUSY;
    }
    const char *pulling = domain_busy_disk(e, dom, disk, true);
    if (pulling) {
        const struct cfs_disk_state *ps = cfs_tree_find_disk_state(e->tree, dom, pulling);
        if ((flags & REFUSE_QUEUE) && ps && cfs_job_phase_in_progress(ps->job.phase) &&
            ps->job.type == CFS_JOB_PULL) {
            /* chainfs's own pull on another disk, which runs alone on its
             * domain (§7.4): queued, dispatched once it has ended */
            at->queue = true;
            return 0;
        }
        free(*why_buf);
        *why = *why_buf = cfs_xasprintf(
            "a pull runs on disk %s of the domain, and chainfs starts "
            "nothing else on the domain until it ends (QEMU may crash when "
            "its block nodes are queried as a pull ends)", pulling);
        return -EBUSY;
    }
    return 0;
}

/* Whether a file is at PATH, a candidate overlay name: 1 or 0. With
 * local files lstat() says; otherwise the storage pool of libvirt's host
 * over its directory (issue 12 §1.2: libvirt takes over an existing
 * empty file as the overlay), -EOPNOTSUPP if none can tell (libvirt's
 * own check then stands: a non-empty file is refused with EEXIST). A
 * failed probe is never "no file": -errno and *MSG with libvirt's
 * message. */
static int overlay_taken(struct cfs_engine *e, bool local, const char *path,
                         char **msg)
{
    struct stat st;

    if (local) {
        if (lstat(path, &st) == 0)
            return 1;
        if (errno == ENOENT)
            return 0;
        /* EACCES, ELOOP, EIO...: not known to be free */
        int err = errno;
        *msg = cfs_xasprintf("cannot tell whether the overlay file %s exists: %s",
                             path, strerror(err));
        return -err;
    }
    if (!e->be->ops->file_exists)
        return -EOPNOTSUPP;
    int r = e->be->ops->file_exists(e->be, path);
    if (r < 0 && r != -EOPNOTSUPP)
        *msg = cfs_xasprintf("cannot tell whether the overlay file %s exists on "
                             "libvirt's host: %s", path, errmsg_or(strerror(-r)));
    return r < 0 ? r : r > 0;
}

/* The new overlay of DOM/DISK's snapshot NAME above the active layer
 * ACTIVE: in overlay_dir, else beside ACTIVE; the first free
 * "<dom>.<disk>.<name>[.N].qcow2" (a file already there is not ours to
 * overwrite: after a pull the active file keeps a merged snapshot's file
 * name, issue 8 §2.5), looked for as overlay_taken says (files not local:
 * through the storage pool, where one covers the directory); with local
 * files, room for it checked. 0 and *OVERLAY; or -errno and *MSG (callers
 * free both). */
int overlay_pick(struct cfs_engine *e, const char *dom, const char *disk,
                 const char *name, const char *active, char **overlay,
                 char **msg)
{
    *overlay = *msg = NULL;
    _cleanup_free_ char *dir = NULL;
    if (e->overlay_dir) {
        dir = cfs_xstrdup(e->overlay_dir);
    } else {
        _cleanup_free_ char *tmp = cfs_xstrdup(active);
        dir = cfs_xstrdup(dirname(tmp));
    }
    _cleanup_free_ char *file = cfs_overlay_filename(dom, disk, name);
    _cleanup_free_ char *path = cfs_xasprintf("%s/%s", dir, file);
    struct statvfs vfs;

    /* not local: the pool tells the names taken where one covers the
     * directory; libvirt checks the space (and, with no pool, the file) */
    bool local = engine_files_local(e);
    int taken = overlay_taken(e, local, path, msg);
    for (unsigned n = 2; taken == 1 && n <= OVERLAY_NAME_TRIES; n++) {
        free(file);
        free(path);
        file = cfs_overlay_filename_n(dom, disk, name, n);
        path = cfs_xasprintf("%s/%s", dir, file);
        taken = overlay_taken(e, local, path, msg);
    }
    if (taken == 1) {
        *msg = cfs_xasprintf("the overlay file %s already exists", path);
        return -EEXIST;
    }
    if (taken < 0 && taken != -EOPNOTSUPP)
        return taken;
    if (local && statvfs(dir, &vfs) < 0) {
        int r = -errno;
        *msg = cfs_xasprintf("overlay directory %s: %s", dir, strerror(errno));
        return r;
    }
    if (local && (uint64_t)vfs.f_bavail * vfs.f_frsize < OVERLAY_MIN_FREE) {
        *msg = cfs_xasprintf("overlay directory %s is full", dir);
        return -ENOSPC;
    }
    *overlay = TAKE_PTR(path);
    return 0;
}

int mkdir_disk_refusal(struct cfs_engine *e, const char *dom, const char *disk,
                       const char **why, char **why_buf)
{
    struct disk_at at;
    return disk_refusal(e, dom, disk, REFUSE_CREATING | REFUSE_MAKE_STATE, &at,
                        why, why_buf);
}

int cfs_engine_mkdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name)
{
    if (!disk || !*disk)
        return dom_mkdir(e, dom, name);
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
    struct disk_at at;
    r = disk_refusal(e, dom, disk, REFUSE_CREATING | REFUSE_MAKE_STATE, &at,
                     &why, &live_why);
    struct cfs_domain *d = at.d;
    struct cfs_disk *dk = at.dk;
    struct cfs_disk_state *s = at.s;
    uint64_t id = 0;
    enum cfs_dom_state dom_state = d ? d->state : CFS_DOM_OTHER;
    if (r < 0) {
        /* refused */
    } else if (cfs_strv_contains(d->snapshots, name) ||
               cfs_disk_find_snapshot(dk, name) >= 0) {
        r = -EEXIST;
        why = "the domain already has a snapshot of that name";
    } else {
        job_new_locked(e, s, CFS_JOB_SNAPSHOT);
        s->job.snapshot = cfs_xstrdup(name);
        s->job.base = cfs_xstrdup(dk->layers[0].path);
        s->job.started = now_s();
        id = s->job.id;
        active.path = cfs_xstrdup(dk->layers[0].path);
        cfs_file_id_copy(&active.id, &dk->layers[0].id);
        phase_step_locked(e, s, CFS_PHASE_STARTING);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        return refuse(e, "mkdir", dom, disk, name, r, why);
    }

    _cleanup_free_ char *overlay = NULL;
    _cleanup_free_ char *msg = NULL;
    bool local = engine_files_local(e);
    r = overlay_pick(e, dom, disk, name, active.path, &overlay, &msg);
    if (r < 0) {
        /* refused below */
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
            /* quiesced as -o quiesce says (issue 10 §2.3): freeze, the
             * snapshot with chainfs's line in its description, thaw */
            _cleanup_free_ char *what = cfs_xasprintf("mkdir %s/%s/snapshots/%s",
                                                      dom, disk, name);
            const struct cfs_snapshot_disk sd = { .disk = disk, .overlay = overlay };
            const struct snap_take tk = {
                .dom = dom, .name = name, .what = what, .state = dom_state,
                .scope = CFS_SCOPE_DISK, .n = 1, .disks = &sd,
            };
            r = snapshot_quiesced(e, &tk, &intent, &msg);
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
        _cleanup_free_ char *text = cfs_xasprintf("mkdir %s: %s", name, msg);
        job_end(e, dom, disk, id, CFS_PHASE_FAILED, text, false);
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
    s = job_mine(e, dom, disk, id);
    if (s) {
        free(s->job.top);
        s->job.top = cfs_xstrdup(overlay);
        s->job.finished = now_s();
        phase_step_locked(e, s, CFS_PHASE_COMPLETED);
    }
    pthread_mutex_unlock(&e->tree->lock);
    log_info("mkdir %s/%s/snapshots/%s: new active layer %s", dom, disk, name,
             overlay);
    return 0;
}

struct offline_args {
    struct cfs_engine *e;
    char *dom, *disk, *top, *base;
    bool active;
    bool pull;     /* offline_pull of TOP (the active layer) onto BASE */
    uint64_t job_id;
    struct offline_thread *self;
};

static void *offline_worker(void *arg)
{
    struct offline_args *a = arg;
    struct cfs_engine *e = a->e;
    cfs_log_set_context(e->host);
    struct offline_thread *self = a->self;
    int r = a->pull ? e->be->ops->offline_pull(e->be, a->dom, a->disk, a->top,
                                               a->base)
                    : e->be->ops->offline_commit(e->be, a->dom, a->disk, a->top,
                                                 a->base, a->active);
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
    self->done = true;
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
/* Does OK, another disk's chain as the tree's last read has it, still
 * hold F? That read may be older than a deletion: a file deleted since
 * and a new one that got its inode number match by dev/ino. Where the
 * files are local, the layer's path is asked again; elsewhere (and when
 * in doubt) the match stands. The live check decides in the end
 * (shared_live). */
static bool tree_user_current(const struct cfs_disk *ok, const struct file_ref *f,
                              bool local)
{
    int i = cfs_disk_find_file(ok, f->id, f->path);
    if (!local || i < 0)
        return true;
    _cleanup_(cfs_file_id_clear) struct cfs_file_id now = {0};
    cfs_file_identify(&now, ok->layers[i].path, true);
    return cfs_file_same(&now, ok->layers[i].path, f->id, f->path);
}

static bool shared_in_tree(struct cfs_tree *t, const char *dom,
                           const char *disk, const struct cfs_layer *top,
                           const struct cfs_layer *base, bool local, char **why)
{
    const struct file_ref files[2] = { { &base->id, base->path },
                                       { &top->id, top->path } };
    for (size_t i = 0; i < 2; i++) {
        const struct cfs_domain *od = NULL;
        const struct cfs_disk *ok =
            cfs_tree_file_user(t, files[i].id, files[i].path, dom, disk, &od);
        if (ok && tree_user_current(ok, &files[i], local)) {
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

/* DISK's chain as merge_plan sees it, nothing asked (caller frees it and
 * *USERS, the strings its shared_with point to). Caller holds the tree
 * lock. */
static struct cfs_merge_layer *merge_layers(struct cfs_tree *t, const char *dom,
                                            const char *disk,
                                            const struct cfs_disk *dk,
                                            bool local, char ***users)
{
    size_t n = dk->n_layers;
    struct cfs_merge_layer *ml = cfs_xcalloc(n ? n : 1, sizeof(*ml));
    *users = cfs_xcalloc(n + 1, sizeof(**users));
    for (size_t i = 0, u = 0; i < n; i++) {
        const struct cfs_layer *l = &dk->layers[i];
        const struct cfs_domain *od = NULL;
        const struct cfs_disk *ok =
            cfs_tree_file_user(t, &l->id, l->path, dom, disk, &od);
        const char *user = NULL;
        const struct file_ref f = { &l->id, l->path };
        if (ok && tree_user_current(ok, &f, local))
            user = (*users)[u++] =
                cfs_xasprintf("domain %s disk %s", od->name, ok->target);
        /* §2.2: st_blocks of the file now; the tree's figure is that of
         * its last full read, older than the guest's latest writes */
        struct stat st;
        uint64_t alloc = local && stat(l->path, &st) == 0
                             ? (uint64_t)st.st_blocks * 512 : l->allocation;
        ml[i] = (struct cfs_merge_layer){
            .name = l->name,
            .allocation = alloc,
            .snapshot = l->name && i + 1 < n,
            .has_metadata = l->meta_name != NULL,
            .shared_with = user,
            .mode = CFS_MERGE_AUTO,
        };
    }
    return ml;
}

/* `merge NAME ...` of S's disk for snapshot NAME (ctl). */
static enum cfs_merge_mode merge_override(const struct cfs_disk_state *s,
                                          const char *name)
{
    if (!s || !name)
        return CFS_MERGE_AUTO;
    if (cfs_strv_contains(s->settings.merge_commit, name))
        return CFS_MERGE_COMMIT;
    if (cfs_strv_contains(s->settings.merge_pull, name))
        return CFS_MERGE_PULL;
    return CFS_MERGE_AUTO;
}

/* Take NAME out of *V (a NULL-terminated list); true if it was in. */
static bool strv_drop(char ***v, const char *name)
{
    bool found = false;
    size_t w = 0;
    for (size_t i = 0; *v && (*v)[i]; i++) {
        if (cfs_streq((*v)[i], name)) {
            free((*v)[i]);
            found = true;
        } else {
            (*v)[w++] = (*v)[i];
        }
    }
    if (*v)
        (*v)[w] = NULL;
    return found;
}

/* The merge of snapshot NAME starts: its override is used up. True if
 * there was one (the caller saves the settings). Caller holds the tree
 * lock. */
static bool merge_override_used(struct cfs_disk_state *s, const char *name)
{
    bool a = strv_drop(&s->settings.merge_commit, name);
    bool b = strv_drop(&s->settings.merge_pull, name);
    return a || b;
}

/* The cost rule of issue 8 §2.2 for the rmdir of the active snapshot of a
 * domain RUNNING or shut off: true, and *PLAN's one job, when it pulls.
 * Caller holds the tree lock. */
static bool plan_pull(struct cfs_engine *e, const char *dom, const char *disk,
                      const struct cfs_disk *dk, bool running, bool local,
                      struct cfs_merge_plan *plan)
{
    struct cfs_tree *t = e->tree;
    if (!running && !e->be->ops->offline_pull)
        return false;
    /* -o live_pull, and a pull runs alone on its domain (design §7.4) */
    const char *busy = running ? domain_busy_disk(e, dom, disk, false) : NULL;
    _cleanup_free_ char *alone = busy
        ? cfs_xasprintf("another disk of the domain (%s) has a job in "
                        "progress, and a pull runs alone on its domain", busy)
        : NULL;
    const struct cfs_merge_env env = {
        .running = running,
        .no_live_pull = e->no_live_pull ? e->no_live_pull : alone,
    };
    size_t n = dk->n_layers;
    char **users = NULL;
    struct cfs_merge_layer *ml = merge_layers(t, dom, disk, dk, local, &users);
    ml[0].asked = true;
    const struct cfs_disk_state *s = cfs_tree_find_disk_state(t, dom, disk);
    ml[0].mode = merge_override(s, ml[0].name);
    int r = cfs_merge_plan_env(ml, n, &env, plan);
    cfs_strv_free(users);
    free(ml);
    return r == 0 && plan->n_jobs == 1 && plan->jobs[0].pull &&
           plan->jobs[0].leave_last < n && plan->jobs[0].base < n;
}

/* A pull writes the active layer and removes LEAVING: refused if any other
 * disk (of this domain or another) has one of them in its chain, as
 * libvirt has every chain now. 0, or a negative errno and *WHY. */
static int pull_shared_live(struct cfs_engine *e, const char *dom,
                            const char *disk, const struct cfs_job *job,
                            char **why)
{
    size_t n = job->n_leaving + 1;
    struct file_ref *files = cfs_xcalloc(n, sizeof(*files));
    files[0] = (struct file_ref){ &job->top_id, job->top };
    for (size_t i = 0; i < job->n_leaving; i++)
        files[i + 1] = (struct file_ref){ &job->leaving[i].id, job->leaving[i].path };
    _cleanup_free_ char *user = NULL;
    size_t which = 0;
    int r = file_user_live(e, files, n, dom, disk, &user, &which);
    if (r > 0) {
        *why = cfs_xasprintf("%s, %s, is also in the chain of %s",
                             which == 0 ? "the layer the pull writes"
                                        : "a layer the pull removes",
                             cfs_file_display(files[which].id, files[which].path),
                             user);
        r = -EBUSY;
    } else if (r < 0) {
        *why = cfs_xasprintf("cannot tell whether the files of the merge are "
                             "used elsewhere: %s", user);
    }
    free(files);
    return r;
}

/* Start the merge JOB of DOM/DISK, claimed (phase starting) and
 * journaled: the offline thread, or libvirt's commit or pull. 0 once
 * started; else the job has ended failed and a negative errno. */
static int merge_launch(struct cfs_engine *e, const char *dom,
                        const char *disk, const struct cfs_job *job,
                        const char *top_ref, const char *base_ref, bool active)
{
    int r;
    if (job->type == CFS_JOB_OFFLINE_COMMIT || job->type == CFS_JOB_OFFLINE_PULL) {
        struct offline_args *a = cfs_xcalloc(1, sizeof(*a));
        *a = (struct offline_args){
            .e = e,
            .dom = cfs_xstrdup(dom),
            .disk = cfs_xstrdup(disk),
            .top = cfs_xstrdup(job->top),
            .base = cfs_xstrdup(job->base),
            .active = active,
            .pull = job->type == CFS_JOB_OFFLINE_PULL,
            .job_id = job->id,
        };
        /* running before the thread starts: it may be done at once */
        job_set_phase(e, dom, disk, job->id, CFS_PHASE_RUNNING);
        struct offline_thread *ot = cfs_xcalloc(1, sizeof(*ot));
        a->self = ot;
        /* listed before it runs: it marks itself done under the lock */
        pthread_mutex_lock(&e->qlock);
        r = -pthread_create(&ot->thread, NULL, offline_worker, a);
        if (r == 0) {
            ot->next = e->offline;
            e->offline = ot;
        }
        pthread_mutex_unlock(&e->qlock);
        if (r < 0) {
            free(ot);
            free(a->dom);
            free(a->disk);
            free(a->top);
            free(a->base);
            free(a);
            job_end(e, dom, disk, job->id, CFS_PHASE_FAILED, strerror(-r), false);
            return -EIO;
        }
        log_info("rmdir %s/%s/snapshots/%s: offline merge of %s into %s started",
                 dom, disk, job->snapshot, job->top, job->base);
        return 0;
    }

    r = job->type == CFS_JOB_PULL
            ? e->be->ops->pull_start(e->be, dom, disk, top_ref, base_ref,
                                     job->bandwidth)
            : e->be->ops->commit_start(e->be, dom, disk, top_ref, base_ref,
                                       job->type == CFS_JOB_ACTIVE_COMMIT,
                                       job->bandwidth);
    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        log_warn("rmdir %s/%s/snapshots/%s failed (%s): %s", dom, disk, job->snapshot,
                 strerror(-r), msg);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", job->snapshot, msg);
        job_end(e, dom, disk, job->id, CFS_PHASE_FAILED, text, false);
        return r;
    }
    job_set_phase(e, dom, disk, job->id, CFS_PHASE_RUNNING);
    log_info("rmdir %s/%s/snapshots/%s: %s of %s (%s) into %s (%s) started",
             dom, disk, job->snapshot, cfs_job_type_to_string(job->type), job->top,
             top_ref, job->base, base_ref);

    /* wake the engine thread so it starts polling right away */
    pthread_mutex_lock(&e->qlock);
    pthread_cond_signal(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return 0;
}

/* The deletions that came back (§3.4) are shown until the next rmdir
 * of the disk is accepted. Caller holds the tree lock. */
static void returned_clear_locked(struct cfs_disk_state *s)
{
    if (!s || s->n_returned == 0)
        return;
    for (size_t i = 0; i < s->n_returned; i++)
        cfs_returned_clear(&s->returned[i]);
    free(s->returned);
    s->returned = NULL;
    s->n_returned = 0;
}

/* issue 8 §3.1: rmdir of Q->snapshot behind the merge of DOM/DISK (or the
 * deletions queued there already): journaled, hidden, no libvirt call.
 * The entry's leaving[0] is TOP with its dev/ino (journal.h). */
static int rmdir_enqueue(struct cfs_engine *e, const char *dom,
                         const char *disk, struct cfs_queued *q)
{
    q->journal_id = cfs_journal_new_id(e->journal);
    struct cfs_job_file top = { .path = q->top, .id = q->top_id };
    struct cfs_journal_entry en = {
        .id = q->journal_id, .domain = (char *)dom, .disk = (char *)disk,
        .snapshot = q->snapshot, .meta_name = q->meta_name, .top = q->top,
        .base = q->base, .type = CFS_JOB_RMDIR,
        .phase = (char *)(q->requeued ? "requeued" : "queued"),
        .created = q->queued, .updated = q->queued,
        .n_leaving = 1, .leaving = &top, .group = q->group,
    };
    _cleanup_free_ char *name = cfs_xstrdup(q->snapshot);
    _cleanup_free_ char *id = cfs_xstrdup(q->journal_id);
    int r = cfs_journal_put(e->journal, &en);
    if (r < 0) {
        _cleanup_free_ char *why = cfs_xasprintf(
            "cannot write the journal in %s: %s", e->state_dir, strerror(-r));
        return refuse(e, "rmdir", dom, disk, q->snapshot, -EIO, why);
    }
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    bool twice = false;
    for (size_t i = 0; i < s->n_queue; i++)
        twice = twice || cfs_streq(s->queue[i].snapshot, q->snapshot);
    if (!twice) {
        returned_clear_locked(s);
        s->queue = cfs_xrealloc(s->queue, (s->n_queue + 1) * sizeof(*s->queue));
        s->queue[s->n_queue++] = *q;
        *q = (struct cfs_queued){0};
        tree_changed(e);
    }
    size_t n = s->n_queue;
    pthread_mutex_unlock(&e->tree->lock);
    if (twice) {
        /* a second rmdir of the same name raced with the first */
        journal_close(e, id);
        return refuse(e, "rmdir", dom, disk, name, -ENOENT,
                      "no such snapshot (its deletion is queued already)");
    }
    log_info("rmdir %s/%s/snapshots/%s: queued behind the disk's merge (%zu "
             "queued)", dom, disk, name, n);
    /* a no-op while the merge runs; starts it if the merge ended meanwhile */
    queue_push(e, work_new(WORK_DISPATCH, dom, disk));
    return 0;
}

/* The rest of a merge job rmdir claimed (S's job, its files set): the
 * end, start time, journal id and limit; the allocation of WRITTEN now
 * (to tell a partial merge and what it copied); phase starting (not in
 * libvirt until the start call returns, or the offline thread runs); a
 * copy into *OUT. Caller holds the tree lock. */
static void merge_job_begin_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                                   uint64_t end, const char *written,
                                   bool running, struct cfs_job *out)
{
    struct cfs_job *j = &s->job;
    j->end = end;
    j->started = now_s();
    j->journal_id = cfs_journal_new_id(e->journal);
    j->bandwidth = running ? e->commit_bandwidth : 0;
    struct stat st;
    s->base_bytes = engine_files_local(e) && written && stat(written, &st) == 0
                        ? (uint64_t)st.st_blocks * 512 : 0;
    phase_step_locked(e, s, CFS_PHASE_STARTING);
    cfs_job_copy(out, j);
}

/* How a member of a job group (issue 10 §3.1) differs from a plain
 * rmdir: CHECK_ONLY makes every check and claims nothing (0: it would
 * start or queue); GROUP (the group's journal id) goes into the job or
 * the queued entry, and the merge commits (a live pull runs alone on its
 * domain; design §0.8). */
struct rmdir_opts {
    const char *group;
    bool check_only;
};

/* Why a group member commits, for `job`. */
#define GROUP_REASON "commit: a member of a domain-level rmdir (a pull runs " \
                     "alone on its domain)"

static int rmdir_disk(struct cfs_engine *e, const char *dom, const char *disk,
                      const char *name, const struct rmdir_opts *o)
{
    int r = 0;
    const char *why = NULL;
    _cleanup_free_ char *why_buf = NULL;
    _cleanup_free_ char *top_ref = NULL, *base_ref = NULL;
    _cleanup_(cfs_layer_clear) struct cfs_layer seen_top = {0};
    _cleanup_(cfs_layer_clear) struct cfs_layer seen_base = {0};
    _cleanup_(cfs_file_id_clear) struct cfs_file_id base_id = {0};
    struct cfs_job job = {0};
    bool running = false, used_override = false;
    _cleanup_(cfs_merge_plan_clear) struct cfs_merge_plan plan = {0};
    _cleanup_(cfs_queued_clear) struct cfs_queued queued = {0};

    r = check_reachable(e, dom, &why);
    if (r < 0)
        return refuse(e, "rmdir", dom, disk, name, r, why);
    /* issue 9: a disk.raw just closed is released a moment later */
    readers_settle(e, 2000);

    /* What the user sees: the snapshot's layer and the layer below it. */
    pthread_mutex_lock(&e->tree->lock);
    struct disk_at at;
    r = disk_refusal(e, dom, disk, REFUSE_QUEUE, &at, &why, &why_buf);
    struct cfs_domain *d = at.d;
    struct cfs_disk *dk = at.dk;
    struct cfs_disk_state *s = at.s;
    int seen = dk ? visible_snapshot(e->tree, d, dk, name) : -1;
    if (r < 0) {
        /* refused */
    } else if (seen < 0) {
        r = -ENOENT;
        why = "no such snapshot";
    } else {
        seen_top.path = cfs_xstrdup(dk->layers[seen].path);
        cfs_file_id_copy(&seen_top.id, &dk->layers[seen].id);
        seen_top.meta_name = cfs_xstrdup(dk->layers[seen].meta_name);
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
    /* (lock_live just read libvirt: staleness was judged already) */
    r = disk_refusal(e, dom, disk, REFUSE_LIVE | REFUSE_MAKE_STATE | REFUSE_QUEUE,
                     &at, &why, &why_buf);
    d = at.d;
    dk = at.dk;
    s = at.s;
    int idx = dk ? cfs_disk_find_file(dk, &seen_top.id, seen_top.path) : -1;
    /* A pull in progress takes the layers below the active one out of the
     * chain before its clean-up hands their snapshot's identity to the
     * active file (§2.4): such a snapshot is still there, by name */
    bool pulled_away = false;
    for (size_t i = 0; r == 0 && at.queue && idx < 0 &&
                       s->job.direction == CFS_DIRECTION_PULL &&
                       i < s->job.n_leaving; i++)
        pulled_away = pulled_away ||
                      cfs_file_same(&s->job.leaving[i].id, s->job.leaving[i].path,
                                    &seen_top.id, seen_top.path);
    if (r < 0) {
        /* refused */
    } else if (pulled_away) {
        /* queued by name: dispatch finds it once the pull is done */
        queued = (struct cfs_queued){
            .snapshot = cfs_xstrdup(name),
            .meta_name = cfs_xstrdup(seen_top.meta_name),
            .top = cfs_xstrdup(seen_top.path),
            .base = cfs_xstrdup(seen_base.path),
            .queued = now_s(),
            .requeued = true,
            .group = cfs_xstrdup(o->group),
        };
        cfs_file_id_copy(&queued.top_id, &seen_top.id);
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
    } else if (shared_in_tree(e->tree, dom, disk, &dk->layers[idx],
                              &dk->layers[idx + 1], engine_files_local(e),
                              &why_buf)) {
        r = -EBUSY;
        why = why_buf;
    } else if (!at.queue &&
               (reader_uses(e->tree, &dk->layers[idx].id, dk->layers[idx].path,
                            &why_buf) ||
                reader_uses(e->tree, &dk->layers[idx + 1].id,
                            dk->layers[idx + 1].path, &why_buf))) {
        /* issue 9 §3.2: either direction writes or removes one of the
         * two (a commit writes the lower one, a pull removes it; the
         * snapshot's own layer leaves): an open disk.raw reads it. A
         * queued deletion waits for the reader instead (dispatch). */
        r = -EBUSY;
        why = why_buf;
    } else if (d->state == CFS_DOM_SHUTOFF && !engine_files_local(e)) {
        r = -EOPNOTSUPP;
        why = "the domain is shut off and its image files are not on this "
              "machine: an offline merge runs qemu-img on them and libvirt "
              "has no API for it; start the domain and rmdir again";
    } else if (o->check_only) {
        /* a group's first pass: it would start (or queue) */
    } else if (at.queue) {
        /* issue 8 §3.1: behind the disk's merge; no libvirt call */
        const struct cfs_layer *top = &dk->layers[idx];
        queued = (struct cfs_queued){
            .snapshot = cfs_xstrdup(name),
            .meta_name = cfs_xstrdup(top->meta_name),
            .top = cfs_xstrdup(top->path),
            .base = cfs_xstrdup(dk->layers[idx + 1].path),
            .queued = now_s(),
            .group = cfs_xstrdup(o->group),
        };
        cfs_file_id_copy(&queued.top_id, &top->id);
    } else if (idx == 0 && !o->group && plan_pull(e, dom, disk, dk, d->state != CFS_DOM_SHUTOFF,
                                     engine_files_local(e), &plan)) {
        /* issue 8 §2: the active layer stays and takes the identity of the
         * snapshot below; the layers between it and the new base leave
         * (live: a block pull; shut off: qemu-img rebase) */
        running = d->state != CFS_DOM_SHUTOFF;
        const struct cfs_merge_job *mj = &plan.jobs[0];
        const struct cfs_layer *act = &dk->layers[0];
        const struct cfs_layer *nb = &dk->layers[mj->base];
        job_new_locked(e, s, cfs_merge_kind_job_type(mj->kind));
        used_override = merge_override_used(s, name);
        struct cfs_job *j = &s->job;
        j->snapshot = cfs_xstrdup(name);
        cfs_strv_push(&j->snapshots, cfs_xstrdup(name));
        j->meta_name = cfs_xstrdup(act->meta_name);
        j->survivor = cfs_xstrdup(dk->layers[mj->leave_last].meta_name);
        j->top = cfs_xstrdup(act->path);
        cfs_file_id_copy(&j->top_id, &act->id);
        j->base = cfs_xstrdup(nb->path);
        cfs_file_id_copy(&base_id, &nb->id);
        j->n_leaving = mj->leave_last - mj->leave_first + 1;
        j->leaving = cfs_xcalloc(j->n_leaving, sizeof(*j->leaving));
        for (size_t i = 0; i < j->n_leaving; i++) {
            const struct cfs_layer *l = &dk->layers[mj->leave_first + i];
            j->leaving[i].path = cfs_xstrdup(l->path);
            cfs_file_id_copy(&j->leaving[i].id, &l->id);
        }
        j->direction = CFS_DIRECTION_PULL;
        j->written = cfs_xstrdup(act->path);
        j->bytes_commit = mj->bytes_commit;
        j->bytes_pull = mj->bytes_pull;
        j->reason = cfs_xstrdup(mj->reason);
        top_ref = layer_ref(disk, act);
        base_ref = layer_ref(disk, nb);
        merge_job_begin_locked(e, s, act->virtual_size, j->written, running, &job);
    } else {
        running = d->state != CFS_DOM_SHUTOFF;
        const struct cfs_layer *top = &dk->layers[idx];
        job_new_locked(e, s, !running ? CFS_JOB_OFFLINE_COMMIT
                             : idx == 0 ? CFS_JOB_ACTIVE_COMMIT : CFS_JOB_COMMIT);
        used_override = merge_override_used(s, name);
        struct cfs_job *j = &s->job;
        j->snapshot = cfs_xstrdup(name);
        j->meta_name = cfs_xstrdup(top->meta_name);
        j->top = cfs_xstrdup(top->path);
        cfs_file_id_copy(&j->top_id, &top->id);
        j->base = cfs_xstrdup(dk->layers[idx + 1].path);
        cfs_file_id_copy(&base_id, &dk->layers[idx + 1].id);
        top_ref = layer_ref(disk, top);
        base_ref = layer_ref(disk, &dk->layers[idx + 1]);
        if (o->group) {
            j->group = cfs_xstrdup(o->group);
            j->direction = CFS_DIRECTION_COMMIT;
            j->reason = cfs_xstrdup(GROUP_REASON);
            /* what the commit copies: TOP's data (no pull considered) */
            struct stat tst;
            j->bytes_commit = engine_files_local(e) && stat(top->path, &tst) == 0
                                  ? (uint64_t)tst.st_blocks * 512 : top->allocation;
        } else if (plan.n_jobs == 1 && !plan.jobs[0].pull && plan.jobs[0].first == 0) {
            /* the cost rule chose to commit the active layer: job says
             * why and what each direction would have copied */
            j->direction = CFS_DIRECTION_COMMIT;
            j->bytes_commit = plan.jobs[0].bytes_commit;
            j->bytes_pull = plan.jobs[0].bytes_pull;
            j->reason = cfs_xstrdup(plan.jobs[0].reason);
        }
        merge_job_begin_locked(e, s, top->virtual_size, j->base, running, &job);
    }
    if (r == 0 && !queued.snapshot && !o->check_only)
        returned_clear_locked(s); /* a new rmdir: the last returns are old */
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        return refuse(e, "rmdir", dom, disk, name, r, why);
    }
    if (o->check_only)
        return 0;
    if (queued.snapshot)
        return rmdir_enqueue(e, dom, disk, &queued);
    if (used_override)
        (void)settings_save(e); /* logged if it fails; harmless: kept */

    /* The disk is claimed; no one else may use either file, as libvirt
     * has every chain now (the tree may lag behind another domain). */
    r = job.direction == CFS_DIRECTION_PULL
            ? pull_shared_live(e, dom, disk, &job, &why_buf)
            : shared_live(e, dom, disk, &job, &base_id, &why_buf);
    if (r < 0) {
        log_warn("rmdir %s/%s/snapshots/%s refused (%s): %s", dom, disk, name,
                 strerror(-r), why_buf);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", name, why_buf);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
        cfs_job_clear(&job);
        return r;
    }

    /* durably record the intent before anything changes */
    if (journal_record(e, dom, disk, &job, "starting") < 0) {
        _cleanup_free_ char *text = cfs_xasprintf(
            "rmdir %s: cannot write the journal in %s", name, e->state_dir);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
        cfs_job_clear(&job);
        return -EIO;
    }

    r = merge_launch(e, dom, disk, &job, top_ref, base_ref, idx == 0);
    cfs_job_clear(&job);
    return r;
}

int cfs_engine_rmdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name)
{
    if (!disk || !*disk)
        return dom_rmdir(e, dom, name);
    const struct rmdir_opts o = {0};
    return rmdir_disk(e, dom, disk, name, &o);
}

/* ---- rmdir at the domain level: a job group (issue 10 §3) ------------------------- */

/* Log a domain-level refusal (each member's own refusal is logged and
 * shown in its disk's job by rmdir_disk). */
static int refuse_domain(const char *dom, const char *name, int err,
                         const char *why)
{
    log_warn("rmdir %s/snapshots/%s refused (%s): %s", dom, name,
             strerror(-err), why);
    return err;
}

int cfs_engine_rmdir_domain(struct cfs_engine *e, const char *dom,
                            const char *name)
{
    const char *why = NULL;
    int r = check_reachable(e, dom, &why);
    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        return refuse_domain(dom, name, r, why);
    }
    readers_settle(e, 2000);

    /* the members: every disk whose chain shows NAME's layer; the disks a
     * partial group of NAME merged already stay members, done */
    _cleanup_strv_ char **members = NULL;
    _cleanup_strv_ char **done = NULL;
    _cleanup_free_ char *meta = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    if (d && e->tree->stale) {
        pthread_mutex_unlock(&e->tree->lock);
        return refuse_domain(dom, name, -ENOTCONN,
                             "libvirt is unreachable (chainfs keeps reconnecting)");
    }
    for (size_t i = 0; d && i < d->n_disks; i++) {
        const struct cfs_disk *dk = &d->disks[i];
        int at = visible_snapshot(e->tree, d, dk, name);
        if (at >= 0) {
            cfs_strv_push(&members, cfs_xstrdup(dk->target));
            if (!meta && dk->layers[at].meta_name)
                meta = cfs_xstrdup(dk->layers[at].meta_name);
        }
    }
    struct cfs_group *old = d ? cfs_tree_domain_group(e->tree, dom, name) : NULL;
    for (size_t i = 0; old && old->phase == CFS_GROUP_PARTIAL && i < old->n_members; i++)
        if (old->members[i].state == CFS_MEMBER_DONE &&
            !cfs_strv_contains(members, old->members[i].disk))
            cfs_strv_push(&done, cfs_xstrdup(old->members[i].disk));
    pthread_mutex_unlock(&e->tree->lock);
    if (!d)
        return refuse_domain(dom, name, -ENOENT, "no such domain");
    if (!members)
        return refuse_domain(dom, name, -ENOENT,
                             "no such snapshot on any disk of the domain");

    /* every member checked first: one refused refuses the whole rmdir,
     * and nothing changed (each check logs and shows its disk's reason) */
    const struct rmdir_opts check = { .check_only = true };
    for (char **m = members; *m; m++) {
        r = rmdir_disk(e, dom, *m, name, &check);
        if (r < 0) {
            _cleanup_free_ char *text = cfs_xasprintf(
                "disk %s cannot be merged (see its job)", *m);
            return refuse_domain(dom, name, r, text);
        }
    }

    /* the group, in the tree and journaled before any member starts: a
     * member is held in ready until every other one is ready or ended */
    struct cfs_group *g = cfs_xcalloc(1, sizeof(*g));
    size_t n_members = cfs_strv_len(members), n_done = cfs_strv_len(done);
    *g = (struct cfs_group){
        .id = cfs_journal_new_id(e->journal),
        .dom = cfs_xstrdup(dom),
        .snapshot = cfs_xstrdup(name),
        .meta_name = TAKE_PTR(meta),
        .n_members = n_members + n_done,
        .phase = CFS_GROUP_RUNNING,
        .started = now_s(),
    };
    g->members = cfs_xcalloc(g->n_members, sizeof(*g->members));
    /* in the domain's disk order */
    size_t k = 0;
    pthread_mutex_lock(&e->tree->lock);
    d = cfs_tree_find_domain(e->tree, dom);
    for (size_t i = 0; d && i < d->n_disks; i++) {
        const char *t = d->disks[i].target;
        if (cfs_strv_contains(members, t) || cfs_strv_contains(done, t))
            g->members[k++] = (struct cfs_group_member){
                .disk = cfs_xstrdup(t),
                .state = cfs_strv_contains(done, t) ? CFS_MEMBER_DONE
                                                    : CFS_MEMBER_QUEUED,
            };
    }
    for (char **m = done; m && *m && k < g->n_members; m++) /* a disk gone since */
        if (!cfs_group_find_member(g, *m))
            g->members[k++] = (struct cfs_group_member){
                .disk = cfs_xstrdup(*m), .state = CFS_MEMBER_DONE };
    g->n_members = k;
    old = cfs_tree_domain_group(e->tree, dom, name);
    _cleanup_free_ char *old_id = old && cfs_group_phase_ended(old->phase)
                                      ? cfs_xstrdup(old->id) : NULL;
    pthread_mutex_unlock(&e->tree->lock);
    if (old && !old_id) {
        cfs_group_free(g);
        return refuse_domain(dom, name, -EBUSY,
                             "a domain-level rmdir of the snapshot is in progress");
    }
    /* its entry replaces the old partial one in one rewrite */
    r = group_journal_put(e, g, "running", old_id);
    if (r < 0) {
        _cleanup_free_ char *text = cfs_xasprintf(
            "cannot write the journal in %s: %s", e->state_dir, strerror(-r));
        cfs_group_free(g);
        return refuse_domain(dom, name, -EIO, text);
    }
    _cleanup_free_ char *id = cfs_xstrdup(g->id);
    pthread_mutex_lock(&e->tree->lock);
    cfs_tree_add_group(e->tree, g, NULL);
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    log_info("rmdir %s/snapshots/%s: one merge per disk (%zu: group %s)", dom,
             name, n_members, id);

    /* start (or queue) each member; one that fails to start is a failed
     * member, the others go on (design §3.4) */
    const struct rmdir_opts start = { .group = id };
    int first_err = 0;
    size_t started = 0;
    for (char **m = members; *m; m++) {
        int mr = rmdir_disk(e, dom, *m, name, &start);
        if (mr == 0) {
            started++;
            continue;
        }
        if (!first_err)
            first_err = mr;
        /* refused before its job was claimed: the member never started */
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", name, strerror(-mr));
        group_member_set(e, id, *m, CFS_MEMBER_FAILED, text);
    }
    group_after_change(e, id);
    return started ? 0 : first_err;
}

/* ---- the queue's dispatch (domain worker) ----------------------------------------- */

/* issue 8 §3.2: DOM/DISK has deletions queued and no job. Resolve each
 * against the live chain (by display name, then by file), plan the runs
 * (merge_plan), start the topmost run as one job: one journal rewrite
 * replaces its queued entries by the job's entry. The rest stays queued
 * until that job ends. */
void queue_dispatch(struct cfs_engine *e, const char *dom, const char *disk)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool todo = s && s->n_queue > 0 && !cfs_job_phase_in_progress(s->job.phase);
    bool busy = s && s->n_queue > 0 && cfs_job_phase_in_progress(s->job.phase);
    int64_t ended = s ? s->job.finished : 0;
    pthread_mutex_unlock(&e->tree->lock);
    if (busy)
        queue_regroup(e, dom, disk); /* §3.3 (its cancel dispatches) */
    if (!todo)
        return;

    /* libvirt may still list the job that just ended for a moment; a job
     * that stays is someone else's */
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r == 0 && pr.present) {
        if (now_s() - ended <= VANISH_GRACE_MS / 1000 + 1)
            return; /* the engine's next tick asks again */
        _cleanup_free_ char *why = cfs_xasprintf(
            "the disk has a %s job chainfs did not start (external)",
            cfs_job_type_to_string(pr.type));
        queue_return_all(e, dom, disk, why);
        return;
    }

    r = lock_live(e, dom);
    if (r == -ENOENT) {
        queue_return_all(e, dom, disk, "the domain disappeared");
        return;
    }
    if (r < 0) {
        log_info("%s/%s: cannot read the chain to dispatch the queued "
                 "deletions (%s); trying again", dom, disk,
                 errmsg_or(strerror(-r)));
        return;
    }
    /* tree lock held, on this read */
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (!s || s->n_queue == 0 || cfs_job_phase_in_progress(s->job.phase)) {
        pthread_mutex_unlock(&e->tree->lock);
        return;
    }
    /* a pull runs alone on its domain (design §7.4): chainfs's own pull
     * on another disk is waited for (the engine's tick asks again) */
    const char *pulling = d && d->state != CFS_DOM_SHUTOFF
                              ? domain_busy_disk(e, dom, disk, true) : NULL;
    const struct cfs_disk_state *ps =
        pulling ? cfs_tree_find_disk_state(e->tree, dom, pulling) : NULL;
    if (ps && cfs_job_phase_in_progress(ps->job.phase) &&
        ps->job.type == CFS_JOB_PULL) {
        pthread_mutex_unlock(&e->tree->lock);
        log_debug("%s/%s: the queue waits for the pull on disk %s", dom,
                  disk, pulling);
        return;
    }
    const char *stop = !dk ? "the disk disappeared"
                       : dk->readonly ? "the disk became read-only"
                       : s->external.type != CFS_JOB_NONE
                           ? "a job chainfs did not start runs on the disk"
                       : d->state == CFS_DOM_SHUTOFF && !engine_files_local(e)
                           ? "the domain is shut off and its image files are "
                             "not on this machine; start the domain and rmdir again"
                           : NULL;
    if (stop) {
        pthread_mutex_unlock(&e->tree->lock);
        queue_return_all(e, dom, disk, stop);
        return;
    }

    size_t n = dk->n_layers;
    bool local = engine_files_local(e);
    bool running = d->state != CFS_DOM_SHUTOFF;
    /* which layer each queued entry is now: its name first (a pull moved
     * it to another file), else its file */
    ssize_t *at = cfs_xcalloc(s->n_queue, sizeof(*at));
    char **users = NULL;
    struct cfs_merge_layer *ml = merge_layers(e->tree, dom, disk, dk, local, &users);
    char **gone = NULL;           /* entries already merged: closed */
    char **gone_groups = NULL;    /* the groups of those that are members */
    char **run_ids = NULL;        /* entries of the run dispatched now */
    struct cfs_returned *refused = NULL;
    size_t n_refused = 0;
    for (size_t q = 0; q < s->n_queue; q++) {
        const struct cfs_queued *qe = &s->queue[q];
        int i = cfs_disk_find_snapshot(dk, qe->snapshot);
        if (i < 0 && !qe->requeued)
            i = cfs_disk_find_file(dk, &qe->top_id, qe->top);
        at[q] = i;
        if (i < 0) {
            log_info("%s/%s: queued deletion of %s: the snapshot is gone from "
                     "the chain (already merged); entry closed", dom, disk,
                     qe->snapshot);
            cfs_strv_push(&gone, cfs_xstrdup(qe->journal_id));
            if (qe->group)
                cfs_strv_push(&gone_groups, cfs_xstrdup(qe->group));
        } else {
            ml[i].asked = true;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (ml[i].asked)
            ml[i].mode = merge_override(s, ml[i].name);
    /* issue 10: a member of a job group commits (design §0.8) */
    for (size_t q = 0; q < s->n_queue; q++)
        if (at[q] >= 0 && s->queue[q].group)
            ml[at[q]].mode = CFS_MERGE_COMMIT;
    /* -o live_pull, and a pull runs alone on its domain (design §7.4) */
    const char *other = running ? domain_busy_disk(e, dom, disk, false) : NULL;
    _cleanup_free_ char *alone = other
        ? cfs_xasprintf("another disk of the domain (%s) has a job in "
                        "progress, and a pull runs alone on its domain", other)
        : NULL;
    const struct cfs_merge_env env = {
        .running = running,
        .no_live_pull = e->no_live_pull ? e->no_live_pull : alone,
    };
    struct cfs_merge_plan plan = {0};
    cfs_merge_plan_env(ml, n, &env, &plan);
    /* the asked ones no job can remove come back, with the plan's reason */
    for (size_t k = 0; k < plan.n_refused; k++)
        for (size_t q = 0; q < s->n_queue; q++)
            if (at[q] == (ssize_t)plan.refused[k].index) {
                refused = cfs_xrealloc(refused, (n_refused + 1) * sizeof(*refused));
                refused[n_refused++] = (struct cfs_returned){
                    .snapshot = cfs_xstrdup(s->queue[q].journal_id),
                    .reason = cfs_xstrdup(plan.refused[k].reason),
                };
            }

    struct cfs_job job = {0};
    _cleanup_free_ char *top_ref = NULL, *base_ref = NULL;
    bool active = false, used_override = false;
    /* issue 9 §3.2: a run whose merge would write or remove a file an
     * open disk.raw reads waits (its entries say why), and the next run
     * that does not goes first; the last reader's release dispatches
     * again */
    for (size_t q = 0; q < s->n_queue; q++) {
        free(s->queue[q].waiting);
        s->queue[q].waiting = NULL;
    }
    s->queue_waits_reader = false;
    struct cfs_merge_job mj = {0};
    const char *reason = NULL;
    bool have_job = false;
    for (size_t k = 0; k < plan.n_jobs && !have_job; k++) {
        mj = plan.jobs[k];
        reason = mj.reason;
        if (!running && mj.pull && !e->be->ops->offline_pull) {
            /* no offline pull here: an offline commit, as below */
            mj.pull = false;
            mj.kind = CFS_MERGE_KIND_OFFLINE_COMMIT;
            mj.top = mj.first;
            mj.base = mj.written = mj.last + 1;
            mj.leave_first = mj.first;
            mj.leave_last = mj.last;
            reason = "commit: this connection has no offline pull";
        }
        if (!running && !mj.pull && mj.last > mj.first) {
            /* offline: qemu-img commit of one layer at a time (the
             * backend's offline_commit merges TOP into the layer right
             * below); the rest stays queued for the next dispatch */
            mj.last = mj.first;
            mj.top = mj.first;
            mj.base = mj.first + 1;
            mj.written = mj.base;
            mj.leave_first = mj.leave_last = mj.first;
            mj.bytes_commit = ml[mj.first].allocation;
            mj.bytes_pull = 0;
            reason = "commit: the domain is shut off; an offline merge takes "
                     "one layer at a time";
        }
        char *busy = NULL;
        const struct cfs_layer *w = &dk->layers[mj.written];
        bool held = reader_uses(e->tree, &w->id, w->path, &busy);
        for (size_t i = mj.leave_first; !held && i <= mj.leave_last; i++)
            held = reader_uses(e->tree, &dk->layers[i].id, dk->layers[i].path,
                               &busy);
        if (!held) {
            have_job = true;
            break;
        }
        for (size_t q = 0; q < s->n_queue; q++)
            if (at[q] >= (ssize_t)mj.first && at[q] <= (ssize_t)mj.last &&
                !s->queue[q].waiting)
                s->queue[q].waiting = cfs_xstrdup(busy);
        log_info("%s/%s: queued deletion of %s waits: %s", dom, disk,
                 dk->layers[mj.first].name ? dk->layers[mj.first].name : "-", busy);
        free(busy);
        s->queue_waits_reader = true;
        tree_changed(e);
    }
    if (have_job) {
        s->queue_waits_reader = false;
        const struct cfs_layer *top = &dk->layers[mj.top];
        const struct cfs_layer *base = &dk->layers[mj.base];
        job_new_locked(e, s, cfs_merge_kind_job_type(mj.kind));
        struct cfs_job *j = &s->job;
        j->snapshot = cfs_xstrdup(dk->layers[mj.first].name);
        j->meta_name = cfs_xstrdup(dk->layers[mj.first].meta_name);
        for (size_t i = mj.first; i <= mj.last; i++) {
            cfs_strv_push(&j->snapshots, cfs_xstrdup(dk->layers[i].name));
            cfs_strv_push(&j->meta_names, cfs_xstrdup(dk->layers[i].meta_name
                                                          ? dk->layers[i].meta_name : ""));
        }
        j->top = cfs_xstrdup(top->path);
        cfs_file_id_copy(&j->top_id, &top->id);
        j->base = cfs_xstrdup(base->path);
        j->n_leaving = mj.leave_last - mj.leave_first + 1;
        j->leaving = cfs_xcalloc(j->n_leaving, sizeof(*j->leaving));
        for (size_t i = 0; i < j->n_leaving; i++) {
            const struct cfs_layer *l = &dk->layers[mj.leave_first + i];
            j->leaving[i].path = cfs_xstrdup(l->path);
            cfs_file_id_copy(&j->leaving[i].id, &l->id);
        }
        j->direction = mj.pull ? CFS_DIRECTION_PULL : CFS_DIRECTION_COMMIT;
        j->written = cfs_xstrdup(dk->layers[mj.written].path);
        j->bytes_commit = mj.bytes_commit;
        j->bytes_pull = mj.bytes_pull;
        j->reason = cfs_xstrdup(reason);
        if (mj.pull)
            j->survivor = cfs_xstrdup(dk->layers[mj.leave_last].meta_name);
        /* the run holds a group's member: the job is that member */
        for (size_t q = 0; q < s->n_queue && !j->group; q++)
            if (s->queue[q].group && at[q] >= (ssize_t)mj.first &&
                at[q] <= (ssize_t)mj.last)
                j->group = cfs_xstrdup(s->queue[q].group);
        j->end = top->virtual_size;
        j->started = now_s();
        j->journal_id = cfs_journal_new_id(e->journal);
        j->bandwidth = running ? e->commit_bandwidth : 0;
        struct stat wst;
        s->base_bytes = local && stat(j->written, &wst) == 0
                            ? (uint64_t)wst.st_blocks * 512 : 0;
        top_ref = layer_ref(disk, top);
        base_ref = layer_ref(disk, base);
        active = mj.top == 0;
        for (size_t i = mj.first; i <= mj.last; i++)
            used_override = merge_override_used(s, dk->layers[i].name) || used_override;
        phase_step_locked(e, s, CFS_PHASE_STARTING);
        cfs_job_copy(&job, j);
        for (size_t q = 0; q < s->n_queue; q++)
            if (at[q] >= (ssize_t)mj.first && at[q] <= (ssize_t)mj.last)
                cfs_strv_push(&run_ids, cfs_xstrdup(s->queue[q].journal_id));
    }
    pthread_mutex_unlock(&e->tree->lock);
    cfs_merge_plan_clear(&plan);
    cfs_strv_free(users);
    free(ml);
    free(at);
    if (used_override)
        (void)settings_save(e); /* logged if it fails; harmless: kept */

    /* the queued entries no longer to do, and the refused ones back */
    size_t n_gone = cfs_strv_len(gone);
    if (n_gone > 0) {
        cfs_journal_apply(e->journal, NULL, 0, (const char *const *)gone, n_gone);
        pthread_mutex_lock(&e->tree->lock);
        s = cfs_tree_find_disk_state(e->tree, dom, disk);
        if (s)
            queue_drop_locked(s, gone, n_gone);
        tree_changed(e);
        pthread_mutex_unlock(&e->tree->lock);
    }
    for (char **g = gone_groups; g && *g; g++)
        group_member_set(e, *g, disk, CFS_MEMBER_DONE, NULL);
    cfs_strv_free(gone_groups);
    for (size_t k = 0; k < n_refused; k++) {
        /* (refused[k].snapshot holds the entry's id here) */
        _cleanup_free_ char *name = NULL;
        _cleanup_free_ char *rgroup = NULL;
        pthread_mutex_lock(&e->tree->lock);
        s = cfs_tree_find_disk_state(e->tree, dom, disk);
        for (size_t q = 0; s && q < s->n_queue; q++)
            if (cfs_streq(s->queue[q].journal_id, refused[k].snapshot)) {
                name = cfs_xstrdup(s->queue[q].snapshot);
                rgroup = cfs_xstrdup(s->queue[q].group);
                s->returned = cfs_xrealloc(s->returned, (s->n_returned + 1) *
                                                            sizeof(*s->returned));
                s->returned[s->n_returned++] = (struct cfs_returned){
                    .snapshot = cfs_xstrdup(name),
                    .reason = cfs_xstrdup(refused[k].reason),
                };
                queue_drop_locked(s, &refused[k].snapshot, 1);
                tree_changed(e);
                break;
            }
        pthread_mutex_unlock(&e->tree->lock);
        journal_close(e, refused[k].snapshot);
        if (name)
            log_warn("%s/%s: queued deletion of %s returned to snapshots/: %s",
                     dom, disk, name, refused[k].reason);
        group_member_set(e, rgroup, disk, CFS_MEMBER_FAILED, refused[k].reason);
        cfs_returned_clear(&refused[k]);
    }
    free(refused);
    cfs_strv_free(gone);
    if (!job.type) {
        cfs_strv_free(run_ids);
        return;
    }

    /* the disk is claimed; no one else may use the run's files, as libvirt
     * has every chain now */
    _cleanup_free_ char *why = NULL;
    _cleanup_free_ char *names = NULL;
    {
        struct cfs_buf nb = {0};
        for (char **p = job.snapshots; p && *p; p++)
            cfs_buf_printf(&nb, "%s%s", p == job.snapshots ? "" : ", ", *p);
        names = cfs_buf_steal(&nb);
    }
    if (job.direction == CFS_DIRECTION_PULL) {
        r = pull_shared_live(e, dom, disk, &job, &why);
    } else {
        size_t nf = job.n_leaving + 1;
        struct file_ref *files = cfs_xcalloc(nf, sizeof(*files));
        struct cfs_file_id wid = {0};
        cfs_file_identify(&wid, job.written, engine_files_local(e));
        files[0] = (struct file_ref){ &wid, job.written };
        for (size_t i = 0; i < job.n_leaving; i++)
            files[i + 1] = (struct file_ref){ &job.leaving[i].id, job.leaving[i].path };
        _cleanup_free_ char *user = NULL;
        size_t which = 0;
        r = file_user_live(e, files, nf, dom, disk, &user, &which);
        if (r > 0) {
            why = shared_why(&files[which], which == 0 ? 0 : 1, user);
            r = -EBUSY;
        } else if (r < 0) {
            why = cfs_xasprintf("cannot tell whether the files of the merge are "
                                "used elsewhere: %s", user);
        }
        cfs_file_id_clear(&wid);
        free(files);
    }
    if (r < 0) {
        log_warn("%s/%s: queued deletion of %s refused (%s): %s", dom, disk,
                 names, strerror(-r), why);
        _cleanup_free_ char *text = cfs_xasprintf("rmdir %s: %s", names, why);
        /* the run's entries are still queued: the failure returns them */
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
        cfs_strv_free(run_ids);
        cfs_job_clear(&job);
        return;
    }

    /* one rewrite: the run's queued entries become the job's entry */
    struct cfs_journal_entry en;
    job_journal_entry(dom, disk, &job, "starting", &en);
    size_t n_run = cfs_strv_len(run_ids);
    r = cfs_journal_apply(e->journal, &en, 1, (const char *const *)run_ids, n_run);
    if (r < 0) {
        log_err("journal: dispatching %s of %s/%s: %s", names, dom, disk,
                strerror(-r));
        _cleanup_free_ char *text = cfs_xasprintf(
            "rmdir %s: cannot write the journal in %s", names, e->state_dir);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED, text, false);
        cfs_strv_free(run_ids);
        cfs_job_clear(&job);
        return;
    }
    pthread_mutex_lock(&e->tree->lock);
    s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (s)
        queue_drop_locked(s, run_ids, n_run);
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    cfs_strv_free(run_ids);
    log_info("%s/%s: queued deletions dispatched: %s as one %s (%s)", dom, disk,
             names, cfs_job_type_to_string(job.type), job.reason);
    merge_launch(e, dom, disk, &job, top_ref, base_ref, active);
    cfs_job_clear(&job);
}

/* ---- the disks' settings (STATE_DIR/settings) ------------------------------------- */

/* STATE_DIR/settings holds every disk's ctl settings that differ from
 * the default, as one JSON object:
 *   {"version":1,"disks":[{"domain":"vm1","disk":"vda","pivot":"manual"}]}
 * written like the journal (a temporary file, fsync, rename, fsync of the
 * directory), read at start. */
#include <json-c/json.h>

#define SETTINGS_VERSION 1

static int settings_save_locked(struct cfs_engine *e);

/* One writer at a time (e->settings_lock, taken before the tree lock):
 * concurrent `pivot manual|auto` on different disks share .settings.tmp,
 * and the file is built from the tree under the same lock so the last
 * rename holds every setting made before it. */
int settings_save(struct cfs_engine *e)
{
    pthread_mutex_lock(&e->settings_lock);
    int r = settings_save_locked(e);
    pthread_mutex_unlock(&e->settings_lock);
    return r;
}

static int settings_save_locked(struct cfs_engine *e)
{
    json_object *o = json_object_new_object();
    json_object *arr = json_object_new_array();
    json_object_object_add(o, "version", json_object_new_int(SETTINGS_VERSION));
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_states; i++) {
        const struct cfs_disk_state *s = e->tree->states[i];
        const struct cfs_disk_settings *st = &s->settings;
        if (!st->pivot_manual && !st->merge_commit && !st->merge_pull)
            continue;
        json_object *d = json_object_new_object();
        json_object_object_add(d, "domain", json_object_new_string(s->dom));
        json_object_object_add(d, "disk", json_object_new_string(s->disk));
        json_object_object_add(d, "pivot", json_object_new_string(
                                   st->pivot_manual ? "manual" : "auto"));
        /* issue 8: {"NAME":"commit"|"pull"}, read by this version only
         * (an older one ignores the key) */
        json_object *m = json_object_new_object();
        for (char **p = st->merge_commit; p && *p; p++)
            json_object_object_add(m, *p, json_object_new_string("commit"));
        for (char **p = st->merge_pull; p && *p; p++)
            json_object_object_add(m, *p, json_object_new_string("pull"));
        json_object_object_add(d, "merge", m);
        json_object_array_add(arr, d);
    }
    pthread_mutex_unlock(&e->tree->lock);
    json_object_object_add(o, "disks", arr);
    _cleanup_free_ char *text = cfs_xasprintf(
        "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);

    _cleanup_free_ char *path = cfs_xasprintf("%s/settings", e->state_dir);
    _cleanup_free_ char *tmp = cfs_xasprintf("%s/.settings.tmp", e->state_dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0) {
        close(fd);
        goto fail;
    }
    close(fd);
    if (rename(tmp, path) < 0)
        goto fail;
    int dfd = open(e->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
fail:;
    int r = -errno;
    log_err("settings: cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    return r;
}

void settings_load(struct cfs_engine *e)
{
    _cleanup_free_ char *path = cfs_xasprintf("%s/settings", e->state_dir);
    if (access(path, F_OK) < 0)
        return;
    json_object *o = json_object_from_file(path);
    json_object *v, *arr;
    if (!o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "version", &v) ||
        json_object_get_int64(v) != SETTINGS_VERSION ||
        !json_object_object_get_ex(o, "disks", &arr) ||
        !json_object_is_type(arr, json_type_array)) {
        log_warn("settings: %s is not a settings file of this version; "
                 "every disk pivots automatically", path);
        json_object_put(o);
        return;
    }
    size_t n = json_object_array_length(arr);
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(arr, i);
        json_object *dom, *disk, *pivot;
        if (!json_object_is_type(d, json_type_object) ||
            !json_object_object_get_ex(d, "domain", &dom) ||
            !json_object_object_get_ex(d, "disk", &disk) ||
            !json_object_object_get_ex(d, "pivot", &pivot) ||
            !json_object_is_type(dom, json_type_string) ||
            !json_object_is_type(disk, json_type_string) ||
            !json_object_is_type(pivot, json_type_string)) {
            log_warn("settings: entry %zu of %s skipped (malformed)", i, path);
            continue;
        }
        struct cfs_disk_state *s = cfs_tree_disk_state(
            e->tree, json_object_get_string(dom), json_object_get_string(disk));
        s->settings.pivot_manual =
            strcmp(json_object_get_string(pivot), "manual") == 0;
        s->job.pivot_manual = s->settings.pivot_manual;
        log_info("settings: %s/%s: pivot %s", s->dom, s->disk,
                 s->settings.pivot_manual ? "manual" : "auto");
        json_object *merge;
        if (json_object_object_get_ex(d, "merge", &merge) &&
            json_object_is_type(merge, json_type_object)) {
            json_object_object_foreach(merge, snap, mode) {
                const char *m = json_object_is_type(mode, json_type_string)
                                    ? json_object_get_string(mode) : "";
                if (strcmp(m, "commit") != 0 && strcmp(m, "pull") != 0) {
                    log_warn("settings: %s/%s: merge %s: unknown direction "
                             "skipped", s->dom, s->disk, snap);
                    continue;
                }
                merge_override_used(s, snap);
                cfs_strv_push(m[0] == 'c' ? &s->settings.merge_commit
                                          : &s->settings.merge_pull,
                              cfs_xstrdup(snap));
                log_info("settings: %s/%s: merge %s %s", s->dom, s->disk,
                         snap, m);
            }
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    json_object_put(o);
}

/* ---- ctl (FUSE threads) ------------------------------------------------------------ */

/* Log a refused ctl command; a job in progress shows why in its error
 * line (until it ends: the end sets its own). */
static int ctl_refuse(struct cfs_engine *e, const char *dom, const char *disk,
                      const struct cfs_ctl_cmd *cmd, int err, const char *why)
{
    log_warn("ctl %s/%s: %s refused (%s): %s", dom, disk,
             cfs_ctl_op_to_string(cmd->op), strerror(-err), why);
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    if (s && cfs_job_phase_in_progress(s->job.phase)) {
        free(s->job.error);
        s->job.error = cfs_xasprintf("ctl %s refused: %s", cfs_ctl_op_to_string(cmd->op), why);
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    return err;
}

static int ctl_pivot_setting(struct cfs_engine *e, const char *dom,
                             const char *disk, bool manual)
{
    uint64_t ready_id = 0;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, disk);
    bool was = s->settings.pivot_manual;
    s->settings.pivot_manual = manual;
    s->job.pivot_manual = manual;
    if (!manual && s->job.phase == CFS_PHASE_READY)
        ready_id = s->job.id;
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    int r = settings_save(e);
    if (r < 0) {
        pthread_mutex_lock(&e->tree->lock);
        s = cfs_tree_disk_state(e->tree, dom, disk);
        s->settings.pivot_manual = was;
        s->job.pivot_manual = was;
        tree_changed(e);
        pthread_mutex_unlock(&e->tree->lock);
        return -EIO;
    }
    log_info("ctl %s/%s: pivot %s", dom, disk, manual ? "manual" : "auto");
    if (ready_id) {
        /* a job held in ready pivots now, on the domain's worker */
        route(e, work_new(WORK_POLL_JOB, dom, disk));
    }
    return 0;
}

/* `copy DEST chain`: the copy of layer L of the source chain, in DEST's
 * directory under L's own file name. Caller frees. */
static char *chain_target(const char *dest, const char *layer)
{
    _cleanup_free_ char *d = cfs_xstrdup(dest);
    _cleanup_free_ char *l = cfs_xstrdup(layer);
    return cfs_xasprintf("%s/%s", dirname(d), basename(l));
}

/* The refusals only `copy DEST chain` has (§1.1): every frozen layer a
 * qcow2 file; no target file exists, none is a layer of the chain, two
 * layers do not share a file name, DEST is not one of them. Caller
 * holds the tree lock. */
static int chain_refusal(const struct cfs_disk *dk, const char *dest,
                         const char **why, char **why_buf)
{
    for (size_t i = 1; i < dk->n_layers; i++) {
        const struct cfs_layer *l = &dk->layers[i];
        if (l->is_block || !cfs_streq(l->format, "qcow2")) {
            *why = *why_buf = cfs_xasprintf(
                "copy DEST chain copies qcow2 files; %s is %s", l->path,
                l->is_block ? "a block device" : l->format ? l->format : "of unknown format");
            return -EOPNOTSUPP;
        }
        _cleanup_free_ char *t = chain_target(dest, l->path);
        struct stat st;
        if (cfs_streq(t, dest) || lstat(t, &st) == 0 ||
            cfs_disk_find_file(dk, NULL, t) >= 0) {
            *why = *why_buf = cfs_xasprintf(
                "the copy of %s would be %s, which exists (or is DEST)", l->path, t);
            return -EEXIST;
        }
        for (size_t k = 1; k < i; k++) {
            _cleanup_free_ char *o = chain_target(dest, dk->layers[k].path);
            if (cfs_streq(o, t)) {
                *why = *why_buf = cfs_xasprintf(
                    "%s and %s have the same file name: their copies would "
                    "collide in DEST's directory", dk->layers[k].path, l->path);
                return -EEXIST;
            }
        }
    }
    return 0;
}

/* `copy DEST MODE [manual]` (issue 8 §1.1-§1.2): refusals first, in the
 * design's order, before anything changes; then DEST (and for `chain`
 * the frozen layers' copies, bottom first) made with O_EXCL, their
 * dev/ino journaled, and libvirt's block copy started. */
static int ctl_copy(struct cfs_engine *e, const char *dom, const char *disk,
                    const struct cfs_ctl_cmd *cmd)
{
    const char *why = NULL;
    _cleanup_free_ char *why_buf = NULL;
    const char *dest = cmd->dest;
    enum cfs_copy_mode mode = cmd->copy_mode;
    int r = check_reachable(e, dom, &why);
    if (r < 0)
        return ctl_refuse(e, dom, disk, cmd, r, why);

    /* the chain as libvirt has it now */
    r = lock_live(e, dom);
    if (r < 0) {
        why = why_buf = live_error(r);
        return ctl_refuse(e, dom, disk, cmd, r, why);
    }
    struct disk_at at;
    r = disk_refusal(e, dom, disk, REFUSE_LIVE | REFUSE_MAKE_STATE, &at, &why,
                     &why_buf);
    struct cfs_domain *d = at.d;
    struct cfs_disk *dk = at.dk;
    struct cfs_job job = {0};
    _cleanup_strv_ char **snaps = NULL;
    if (r == 0) {
        /* every layer above the base is a snapshot's */
        for (size_t i = 0; i + 1 < dk->n_layers; i++)
            cfs_strv_push(&snaps, cfs_xstrdup(dk->layers[i].name ? dk->layers[i].name
                                                                 : dk->layers[i].path));
    }
    if (r < 0) {
        /* refused (ENOTCONN, ENOENT, EROFS, EBUSY) */
    } else if (d->state == CFS_DOM_SHUTOFF) {
        r = -EOPNOTSUPP;
        why = "copy mirrors a running disk; the domain is shut off";
    } else if (!engine_files_local(e)) {
        r = -EOPNOTSUPP;
        why = "the image files are not on this machine, and chainfs creates "
              "the copy's destination itself";
    } else if (dk->n_layers == 0 || dk->layers[0].is_block) {
        r = -EOPNOTSUPP;
        why = "copy moves a disk whose active layer is a file";
    } else if (mode == CFS_COPY_DEFAULT && snaps) {
        struct cfs_buf lb = {0};
        for (char **n = snaps; *n; n++)
            cfs_buf_printf(&lb, "%s%s", n == snaps ? "" : ", ", *n);
        _cleanup_free_ char *list = cfs_buf_steal(&lb);
        r = -EBUSY;
        why = why_buf = cfs_xasprintf(
            "the disk has snapshots (%s), which a flat copy merges away; say "
            "`copy DEST flatten` to drop them, `copy DEST shallow` or "
            "`copy DEST chain` to keep them", list);
    } else if ((mode == CFS_COPY_SHALLOW || mode == CFS_COPY_CHAIN) &&
               dk->n_layers < 2) {
        r = -EINVAL;
        why = mode == CFS_COPY_SHALLOW
                  ? "a shallow copy needs a layer below the active one to share; "
                    "the disk has one layer (copy DEST)"
                  : "copy DEST chain moves a chain; the disk has one layer (copy DEST)";
    }
    if (r == 0) {
        _cleanup_free_ char *tmp = cfs_xstrdup(dest);
        const char *dir = dirname(tmp);
        struct stat st;
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            r = -ENOENT;
            why = why_buf = cfs_xasprintf("the destination's directory %s does not exist", dir);
        } else if (lstat(dest, &st) == 0) {
            r = -EEXIST;
            why = why_buf = cfs_xasprintf("%s exists; copy creates a new file", dest);
        } else if (cfs_disk_find_file(dk, NULL, dest) >= 0) {
            r = -EEXIST;
            why = "the destination is a layer of the disk";
        } else if (mode == CFS_COPY_CHAIN) {
            r = chain_refusal(dk, dest, &why, &why_buf);
        }
    }
    if (r == 0) {
        if (mode == CFS_COPY_DEFAULT)
            mode = CFS_COPY_FLATTEN;
        struct cfs_disk_state *s = at.s;
        job_new_locked(e, s, CFS_JOB_COPY);
        struct cfs_job *j = &s->job;
        const struct cfs_layer *act = &dk->layers[0];
        j->top = cfs_xstrdup(act->path);
        cfs_file_id_copy(&j->top_id, &act->id);
        j->base = cfs_xstrdup(dest);
        j->dest = cfs_xstrdup(dest);
        j->copy_mode = mode;
        j->manual = cmd->manual;
        j->pivot_manual = cmd->manual;
        j->meta_name = cfs_xstrdup(act->meta_name);
        /* flatten: every snapshot's metadata goes at the end, top first */
        for (size_t i = 0; mode == CFS_COPY_FLATTEN && i < dk->n_layers; i++)
            if (dk->layers[i].meta_name)
                cfs_strv_push(&j->snapshots, cfs_xstrdup(dk->layers[i].meta_name));
        /* the files that leave the chain at the pivot (kept, named) */
        j->n_old = mode == CFS_COPY_SHALLOW ? 1 : dk->n_layers;
        j->old_files = cfs_xcalloc(j->n_old, sizeof(*j->old_files));
        for (size_t i = 0; i < j->n_old; i++) {
            j->old_files[i].path = cfs_xstrdup(dk->layers[i].path);
            cfs_file_id_copy(&j->old_files[i].id, &dk->layers[i].id);
        }
        /* DEST (and the copies of the frozen layers: made[i] is layer
         * i's), with no identity until they exist */
        j->n_made = mode == CFS_COPY_CHAIN ? dk->n_layers : 1;
        j->made = cfs_xcalloc(j->n_made, sizeof(*j->made));
        j->made[0].path = cfs_xstrdup(dest);
        for (size_t i = 1; i < j->n_made; i++)
            j->made[i].path = chain_target(dest, dk->layers[i].path);
        if (mode == CFS_COPY_CHAIN) {
            for (size_t i = 0; i < dk->n_layers; i++)
                cfs_strv_push(&j->layer_meta, cfs_xstrdup(dk->layers[i].meta_name
                                                              ? dk->layers[i].meta_name : ""));
        }
        j->end = act->virtual_size;
        j->started = now_s();
        j->journal_id = cfs_journal_new_id(e->journal);
        j->bandwidth = e->commit_bandwidth;
        phase_step_locked(e, s, CFS_PHASE_STARTING);
        cfs_job_copy(&job, j);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0)
        return ctl_refuse(e, dom, disk, cmd, r, why);

    /* durably record the intent before anything is created: a daemon
     * killed now leaves an entry naming the files without an identity
     * (never deleted, named) */
    if (journal_record(e, dom, disk, &job, "starting") < 0) {
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED,
                "copy: cannot write the journal", false);
        cfs_job_clear(&job);
        return -EIO;
    }
    const bool shallow = job.copy_mode == CFS_COPY_SHALLOW ||
                         job.copy_mode == CFS_COPY_CHAIN;
    /* what each file is made like (its virtual size) and backs onto:
     * made[i] like layer i; DEST backs onto layer 1 (shallow) or its copy
     * (chain), a copy onto the copy below it; made bottom first */
    size_t n = job.n_made;
    char **like = cfs_xcalloc(n, sizeof(*like)), **like_fmt = cfs_xcalloc(n, sizeof(*like_fmt));
    char **back = cfs_xcalloc(n, sizeof(*back)), **back_fmt = cfs_xcalloc(n, sizeof(*back_fmt));
    bool changed = false;
    pthread_mutex_lock(&e->tree->lock);
    d = cfs_tree_find_domain(e->tree, dom);
    dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    if (!dk || dk->n_layers < n || (shallow && dk->n_layers < 2)) {
        changed = true;
    } else {
        for (size_t i = 0; i < n; i++) {
            like[i] = cfs_xstrdup(dk->layers[i].path);
            like_fmt[i] = cfs_xstrdup(dk->layers[i].format ? dk->layers[i].format : "qcow2");
            if (i + 1 < dk->n_layers && (i > 0 || shallow)) {
                bool copy_below = job.copy_mode == CFS_COPY_CHAIN;
                back[i] = cfs_xstrdup(copy_below ? job.made[i + 1].path
                                                 : dk->layers[i + 1].path);
                back_fmt[i] = cfs_xstrdup(dk->layers[i + 1].format ? dk->layers[i + 1].format
                                                                   : "qcow2");
            }
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    struct cfs_file_id *ids = cfs_xcalloc(n, sizeof(*ids));
    r = changed ? -ESTALE : 0;
    for (size_t k = 0; r == 0 && k < n; k++) {
        size_t i = n - 1 - k; /* n-1, ..., 1 (bottom first), then 0 (DEST) */
        r = e->be->ops->image_create
                ? e->be->ops->image_create(e->be, job.made[i].path, like[i], like_fmt[i],
                                           back[i], back_fmt[i], &ids[i])
                : -EOPNOTSUPP;
        if (r < 0)
            why_buf = cfs_xasprintf("%s: %s", job.made[i].path, errmsg_or(strerror(-r)));
    }
    for (size_t i = 0; i < n; i++) {
        free(like[i]);
        free(like_fmt[i]);
        free(back[i]);
        free(back_fmt[i]);
    }
    free(like);
    free(like_fmt);
    free(back);
    free(back_fmt);
    /* the identities, journaled: the only files a failure may delete */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, job.id);
    if (s && s->job.n_made == n) {
        for (size_t i = 0; i < n; i++) {
            cfs_file_id_clear(&s->job.made[i].id);
            cfs_file_id_copy(&s->job.made[i].id, &ids[i]);
        }
        cfs_job_clear(&job);
        cfs_job_copy(&job, &s->job);
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (size_t i = 0; i < n; i++)
        cfs_file_id_clear(&ids[i]);
    free(ids);
    if (r < 0) {
        const char *msg = r == -ESTALE ? "the disk's chain changed" : why_buf;
        log_warn("ctl %s/%s: copy to %s refused (%s): %s", dom, disk, dest,
                 strerror(-r), msg);
        _cleanup_free_ char *text = cfs_xasprintf("copy %s: %s", dest, msg);
        /* the files made so far go (phase starting: nothing in libvirt) */
        job_fail(e, dom, disk, job.id, CFS_PHASE_FAILED, text);
        cfs_job_clear(&job);
        return r;
    }
    if (journal_record(e, dom, disk, &job, "starting") < 0) {
        copy_delete_made(e, dom, disk, &job);
        job_end(e, dom, disk, job.id, CFS_PHASE_FAILED,
                "copy: cannot write the journal", false);
        cfs_job_clear(&job);
        return -EIO;
    }

    r = e->be->ops->copy_start
            ? e->be->ops->copy_start(e->be, dom, disk, dest, shallow, job.bandwidth)
            : -EOPNOTSUPP;
    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        log_warn("ctl %s/%s: copy to %s failed (%s): %s", dom, disk, dest,
                 strerror(-r), msg);
        _cleanup_free_ char *text = cfs_xasprintf("copy %s: %s", dest, msg);
        /* nothing of it in libvirt: the files go (job_fail, phase starting) */
        job_fail(e, dom, disk, job.id, CFS_PHASE_FAILED, text);
        cfs_job_clear(&job);
        return r;
    }
    job_set_phase(e, dom, disk, job.id, CFS_PHASE_RUNNING);
    log_info("ctl %s/%s: copy of %s to %s (%s%s) started", dom, disk, job.top,
             dest, cfs_copy_mode_to_string(job.copy_mode),
             job.manual ? ", manual" : "");
    /* chain: the frozen layers are copied while the mirror runs */
    if (job.copy_mode == CFS_COPY_CHAIN && copy_chain_start(e, dom, disk, job.id) < 0) {
        e->be->ops->job_abort(e->be, dom, disk);
        job_fail(e, dom, disk, job.id, CFS_PHASE_FAILED,
                 "cannot start the thread that copies the frozen layers");
        cfs_job_clear(&job);
        return -EIO;
    }
    cfs_job_clear(&job);
    pthread_mutex_lock(&e->qlock);
    pthread_cond_signal(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return 0;
}

/* `merge NAME commit|pull|auto`: checked against the chain as the tree
 * has it (ENOENT no such snapshot, EINVAL a pull the chain does not allow,
 * EOPNOTSUPP a live pull that is off), kept in the disk's settings. */
static int ctl_merge_setting(struct cfs_engine *e, const char *dom,
                             const char *disk, const struct cfs_ctl_cmd *cmd)
{
    const char *name = cmd->name;
    enum cfs_merge_mode mode = cmd->merge_mode;
    _cleanup_free_ char *why = NULL;
    int r = 0;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    int idx = dk ? visible_snapshot(e->tree, d, dk, name) : -1;
    if (idx < 0) {
        r = -ENOENT;
        why = cfs_xasprintf("no snapshot %s in snapshots/", name);
    } else {
        char **users = NULL;
        struct cfs_merge_layer *ml = merge_layers(e->tree, dom, disk, dk,
                                                  engine_files_local(e), &users);
        r = cfs_merge_mode_check(ml, dk->n_layers, (size_t)idx, mode, &why);
        cfs_strv_free(users);
        free(ml);
        if (r == 0 && mode == CFS_MERGE_PULL && d->state != CFS_DOM_SHUTOFF &&
            e->no_live_pull) {
            r = -EOPNOTSUPP;
            why = cfs_xasprintf("the domain runs and a live pull is off (%s)",
                                e->no_live_pull);
        }
    }
    struct cfs_disk_state *s = r == 0 ? cfs_tree_disk_state(e->tree, dom, disk) : NULL;
    enum cfs_merge_mode was = merge_override(s, name);
    if (s) {
        merge_override_used(s, name);
        if (mode != CFS_MERGE_AUTO)
            cfs_strv_push(mode == CFS_MERGE_COMMIT ? &s->settings.merge_commit
                                                   : &s->settings.merge_pull,
                          cfs_xstrdup(name));
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0)
        return ctl_refuse(e, dom, disk, cmd, r, why);

    r = settings_save(e);
    if (r < 0) {
        pthread_mutex_lock(&e->tree->lock);
        s = cfs_tree_disk_state(e->tree, dom, disk);
        merge_override_used(s, name);
        if (was != CFS_MERGE_AUTO)
            cfs_strv_push(was == CFS_MERGE_COMMIT ? &s->settings.merge_commit
                                                  : &s->settings.merge_pull,
                          cfs_xstrdup(name));
        tree_changed(e);
        pthread_mutex_unlock(&e->tree->lock);
        return -EIO;
    }
    log_info("ctl %s/%s: merge %s %s", dom, disk, name,
             cfs_merge_mode_to_string(mode));
    return 0;
}

int cfs_engine_ctl(struct cfs_engine *e, const char *dom, const char *disk,
                   const struct cfs_ctl_cmd *cmd)
{
    if (cmd->op == CFS_CTL_REVERT) /* a disk's, or the domain's (issue 10) */
        return revert_ctl(e, dom, disk && *disk ? disk : NULL, cmd);
    if (!disk || !*disk)
        return dom_ctl(e, dom, cmd);
    if (cmd->op == CFS_CTL_COPY)
        return ctl_copy(e, dom, disk, cmd);

    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    bool stale = e->tree->stale;
    struct cfs_disk_state *s = dk ? cfs_tree_disk_state(e->tree, dom, disk) : NULL;
    struct cfs_job job = {0};
    bool ours = s && cfs_job_phase_in_progress(s->job.phase);
    enum cfs_job_type external = s ? s->external.type : CFS_JOB_NONE;
    size_t queued = s ? s->n_queue : 0;
    if (ours)
        cfs_job_copy(&job, &s->job);
    pthread_mutex_unlock(&e->tree->lock);

    if (!dk) {
        cfs_job_clear(&job);
        return ctl_refuse(e, dom, disk, cmd, -ENOENT, d ? "no such disk" : "no such domain");
    }
    if (cmd->op == CFS_CTL_PIVOT_MANUAL || cmd->op == CFS_CTL_PIVOT_AUTO) {
        cfs_job_clear(&job);
        return ctl_pivot_setting(e, dom, disk, cmd->op == CFS_CTL_PIVOT_MANUAL);
    }
    if (cmd->op == CFS_CTL_MERGE) {
        cfs_job_clear(&job);
        return ctl_merge_setting(e, dom, disk, cmd);
    }
    _cleanup_free_ char *why_buf = NULL;
    int r = 0;
    const char *why = NULL;
    const struct cfs_job_kind *k = cfs_job_kind(job.type);
    if (stale) {
        r = -ENOTCONN;
        why = "libvirt is unreachable (chainfs keeps reconnecting)";
    } else if (!ours && external != CFS_JOB_NONE) {
        r = -EBUSY;
        why = why_buf = cfs_xasprintf(
            "the disk's %s job was not started by chainfs (external); "
            "chainfs does not steer it", cfs_job_type_to_string(external));
    } else if (!ours && cmd->op == CFS_CTL_ABORT && queued > 0) {
        /* between two merges of the queue: `abort` returns the queue */
        queue_return_all(e, dom, disk, "aborted through ctl");
        log_info("ctl %s/%s: abort done (the queued deletions returned)", dom, disk);
        return 0;
    } else if (!ours) {
        r = -ENOENT;
        why = "the disk has no job in progress";
    } else if (job.phase == CFS_PHASE_STARTING) {
        r = -EAGAIN;
        why = "the job is starting; try again";
    } else if (job.phase == CFS_PHASE_CLEANUP || job.phase == CFS_PHASE_FINISHING ||
               (job.phase == CFS_PHASE_PIVOTING && cmd->op != CFS_CTL_PIVOT)) {
        r = -EBUSY;
        why = "the job is past its end (pivoting, finishing or cleaning up)";
    }
    if (r < 0) {
        cfs_job_clear(&job);
        return ctl_refuse(e, dom, disk, cmd, r, why);
    }

    switch (cmd->op) {
    case CFS_CTL_PIVOT:
        if (!k->has_ready) {
            r = -EINVAL;
            why = "only an active commit or a copy pivots";
        } else if (job.phase == CFS_PHASE_RUNNING) {
            r = -EAGAIN;
            why = "the active commit is not ready yet";
        } else if (job.phase == CFS_PHASE_PIVOTING) {
            r = -EAGAIN;
            why = "the pivot is under way";
        } else {
            r = step_ready(e, dom, disk, job.id, true);
            if (r == -ENOENT) {
                r = -EAGAIN;
                why = "the job is no longer ready";
            } else if (r < 0) {
                why = why_buf = cfs_xstrdup(errmsg_or(strerror(-r)));
            }
        }
        break;
    case CFS_CTL_FINISH:
        r = copy_ctl_finish(e, dom, disk, &job, &why_buf);
        why = why_buf;
        break;
    case CFS_CTL_ABORT:
        if (!k->abortable) {
            r = -EBUSY;
            why = job.type == CFS_JOB_OFFLINE_COMMIT
                      ? "an offline merge (qemu-img commit) cannot be canceled "
                        "safely; wait for it to end"
                      : "this job cannot be canceled";
            break;
        }
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, job.id);
        if (s)
            s->abort_requested = true;
        pthread_mutex_unlock(&e->tree->lock);
        r = e->be->ops->job_abort(e->be, dom, disk);
        if (r < 0) {
            pthread_mutex_lock(&e->tree->lock);
            s = job_mine(e, dom, disk, job.id);
            if (s)
                s->abort_requested = false;
            pthread_mutex_unlock(&e->tree->lock);
            if (r == -ENOENT) {
                /* libvirt has no job: it ended (completed, pivoted or
                 * failed) before the abort reached it. Not canceled: a
                 * poll on the domain's worker finishes it as usual
                 * (clean-up of a completed merge included). */
                why = "the job ended meanwhile";
                route(e, work_new(WORK_POLL_JOB, dom, disk));
                break;
            }
            if (r == -ENOTCONN)
                conn_suspect(e, true);
            why = why_buf = cfs_xstrdup(errmsg_or(strerror(-r)));
            break;
        }
        /* the job is gone: the chain is as it was (TOP still in it) */
        job_fail(e, dom, disk, job.id, CFS_PHASE_CANCELED, "aborted through ctl");
        r = 0;
        break;
    case CFS_CTL_BANDWIDTH:
        if (!k->block_job) {
            r = -EINVAL;
            why = "an offline merge (qemu-img commit) has no bandwidth limit";
            break;
        }
        r = e->be->ops->job_set_bandwidth
                ? e->be->ops->job_set_bandwidth(e->be, dom, disk, cmd->bandwidth)
                : -EOPNOTSUPP;
        if (r < 0) {
            if (r == -ENOTCONN)
                conn_suspect(e, true);
            why = why_buf = cfs_xstrdup(errmsg_or(strerror(-r)));
            break;
        }
        pthread_mutex_lock(&e->tree->lock);
        s = job_mine(e, dom, disk, job.id);
        struct cfs_job copy = {0};
        if (s) {
            s->job.bandwidth = cmd->bandwidth;
            tree_changed(e);
            cfs_job_copy(&copy, &s->job);
        }
        pthread_mutex_unlock(&e->tree->lock);
        /* journaled: a restarted daemon sets it again */
        if (copy.journal_id)
            journal_record(e, dom, disk, &copy, cfs_job_phase_to_string(copy.phase));
        cfs_job_clear(&copy);
        log_info("ctl %s/%s: bandwidth %llu bytes/s", dom, disk,
                 (unsigned long long)cmd->bandwidth);
        break;
    default:
        r = -EINVAL;
        why = "unknown command";
        break;
    }
    cfs_job_clear(&job);
    if (r < 0)
        return ctl_refuse(e, dom, disk, cmd, r, why);
    /* the one line for a command done (bandwidth logs its own above) */
    if (cmd->op != CFS_CTL_BANDWIDTH)
        log_info("ctl %s/%s: %s done", dom, disk, cfs_ctl_op_to_string(cmd->op));
    return 0;
}
