/* job.c — following a job to its end.
 *
 * A job is an object on its disk's state (struct cfs_disk_state.job):
 * a number (id), a kind (cfs_job_kind(): what differs between a
 * snapshot, a commit, an active commit and an offline commit), a phase,
 * and the facts the engine learnt about it. Its one state is its phase;
 * job_set_phase() changes it (phase_step_locked(), its in-memory half,
 * is called directly under the lock for the edges that write no journal:
 * the claim, a refusal, a snapshot taken, running -> ready in a poll;
 * recovery loads a stored phase as it is). It checks the edge
 * against the table (cfs_job_phase_edge_allowed(), model.c; a refused
 * edge is logged as a bug and ignored), persists the journal entry before
 * the persisted edges (-> running, -> pivoting, -> cleanup; the journal's
 * `phase` is the phase's name), closes it before a terminal phase, logs
 * the edge (job_edge_locked, events.c: "job 7 ready: active-commit
 * vm1/vda snapshot s2 (was running)"), bumps the tree generation and
 * wakes `wait` readers.
 *
 * Phases and every allowed edge:
 *
 *   none -----> starting        mkdir or rmdir claimed the disk
 *   none -----> failed          a refusal, recorded as a failed job
 *   starting -> running         libvirt accepted the commit (or the
 *                               offline merge thread was started)
 *   starting -> completed       the snapshot was taken (mkdir)
 *   starting -> failed          refused, or (recovery) never started
 *   starting -> cleanup         (recovery) the merge was over already
 *   running --> ready           active commit: all copied, mirroring
 *   running --> cleanup         intermediate/offline: libvirt is done
 *   running --> failed | canceled
 *   ready ----> pivoting        pivot asked (auto, or `pivot` in ctl)
 *   ready ----> cleanup         the job ended with TOP out of the chain
 *   ready ----> failed | canceled   (canceled: `abort` in ctl)
 *   pivoting -> ready           not ready after all / refused: retried
 *   pivoting -> cleanup         pivoted: TOP left the chain
 *   pivoting -> failed
 *   pivoting -> canceled        an abort libvirt accepted while a pivot
 *                               was being asked for (the pivot fails)
 *   cleanup --> completed       TOP deleted (unless used/kept), metadata
 *                               dropped, journal entry closed
 *   cleanup --> failed          the domain or disk went away meanwhile
 *   ready ----> finishing       copy: `finish` asked (journal first;
 *                               issue 8, no step yet)
 *   finishing -> cleanup        the mirror ended, DEST out of the chain
 *   finishing -> failed         the call failed and the job is gone
 *
 * completed, failed and canceled are terminal: the disk's next job is a
 * new one (new id), born in none. Events and polls only feed facts in
 * (progress, ready, libvirt has no job, TOP left the chain) and then call
 * the step of the phase the job is in: running (poll_job), ready
 * (step_ready: pivot unless the disk holds it with `pivot manual`),
 * cleanup (job_finish). Recovery (recover.c) loads the stored phase and
 * steps from there.
 *
 * "Is this still my job": job_mine() on the tree, job_snapshot_mine() for
 * a copy (a disk may have moved on to a new job while a libvirt call was
 * made without the lock).
 *
 * What differs per kind (cfs_job_kind(), model.c): whether chainfs
 * starts it, whether it is a libvirt block job (events, polls, ctl
 * bandwidth), whether it merges TOP into BASE (finished = TOP left the
 * chain; clean-up deletes TOP and drops its snapshot metadata; partial =
 * BASE was written), whether it has ready and a pivot, whether ctl abort
 * can cancel it. A block job libvirt reports on a disk where chainfs has
 * none of its own (looked for after re-reads of a running domain, the
 * timer's at most every EXTERNAL_SCAN_MS, see external_scan(), and on
 * every block-job event for such a disk: external_check()) is kept
 * apart, in cfs_disk_state.external: shown with origin external, never
 * finished, failed, pivoted or cleaned up by chainfs; mkdir, rmdir and
 * ctl on the disk get EBUSY until it ends, and then the chain is re-read.
 *
 * ctl (actions.c, cfs_engine_ctl): abort (job_abort, then canceled; the
 * fact abort_requested makes a poll or event that sees the job gone say
 * canceled, not failed; if libvirt has no job any more the job ended on
 * its own: ENOENT, not canceled, and a poll finishes it), pivot (step_ready asked), pivot manual|auto
 * (cfs_disk_state.settings, mirrored in job.pivot_manual, written to
 * STATE_DIR/settings), bandwidth (job_set_bandwidth, then journaled in
 * the job's entry; recovery and a reconnect set it again).
 *
 * Threads: FUSE threads (reads; mkdir, rmdir and ctl), the engine thread
 * (drains the queue, lists domains, schedules polls and re-reads, marks
 * domains not responding), one worker per domain with work (every call
 * that can wait for that domain's QEMU: re-reads with statistics, job
 * polls, pivots, clean-up, recovery; see "domain workers"), and offline
 * merge threads (joined when the engine is freed). A stuck QEMU ties up
 * its own domain's worker only.
 *
 * Lock order: e->qlock (the engine queue and every domain worker's queue
 * and state) and t->lock are never held together. e->settings_lock
 * (STATE_DIR/settings, settings_save) is taken before t->lock, never
 * with t->lock or e->qlock held. The journal's own lock
 * may be taken with t->lock held (job_set_phase writes the journal
 * without it all the same, so that readers never wait for an fsync). No
 * backend call is made with any lock held. */
#include "engine_int.h"

/* ---- journal helpers ------------------------------------------------------- */

void job_journal_entry(const char *dom, const char *disk,
                       const struct cfs_job *job, const char *phase,
                       struct cfs_journal_entry *out)
{
    *out = (struct cfs_journal_entry){
        .id = job->journal_id,
        .domain = (char *)dom,
        .disk = (char *)disk,
        .snapshot = job->snapshot,
        .meta_name = job->meta_name,
        .top = job->top,
        .base = job->base,
        .type = job->type,
        .phase = (char *)phase,
        .created = job->started,
        .updated = now_s(),
        .error = job->error,
        .bandwidth = job->bandwidth,
        .disks = job->disks,
        /* issue 8's merges; empty for the jobs of earlier kinds */
        .direction = job->direction,
        .snapshots = job->snapshots,
        .meta_names = job->meta_names,
        .n_leaving = job->n_leaving,
        .leaving = job->leaving,
        .written = job->written,
        .bytes_commit = job->bytes_commit,
        .bytes_pull = job->bytes_pull,
        .bytes_copied = job->bytes_copied,
        .reason = job->reason,
        .survivor = job->survivor,
        .superseded = job->superseded,
        /* issue 8's copies */
        .dest = job->dest,
        .copy_mode = job->copy_mode,
        .manual = job->manual,
        .finish = job->finish,
        .n_made = job->n_made,
        .made = job->made,
        .n_copied = job->n_copied,
        .layer_meta = job->layer_meta,
        .n_old = job->n_old,
        .old_files = job->old_files,
        /* issue 10: a member of a job group */
        .group = job->group,
    };
}

int journal_record(struct cfs_engine *e, const char *dom,
                   const char *disk, const struct cfs_job *job,
                   const char *phase)
{
    if (!job->journal_id)
        return 0;
    struct cfs_journal_entry en;
    job_journal_entry(dom, disk, job, phase, &en);
    int r = cfs_journal_put(e->journal, &en);
    if (r < 0)
        log_err("journal: recording %s of %s/%s: %s", phase, dom, disk,
                strerror(-r));
    return r;
}

void journal_close(struct cfs_engine *e, const char *id)
{
    if (!id)
        return;
    int r = cfs_journal_remove(e->journal, id);
    if (r < 0 && r != -ENOENT)
        log_err("journal: closing entry %s: %s", id, strerror(-r));
}

/* A copy of a disk's job, taken under the lock, for use without it. */
bool job_snapshot(struct cfs_engine *e, const char *dom,
                  const char *disk, struct cfs_job *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool ok = s && cfs_job_phase_in_progress(s->job.phase);
    if (ok)
        cfs_job_copy(out, &s->job);
    pthread_mutex_unlock(&e->tree->lock);
    return ok;
}

/* A copy of job ID of DOM/DISK while it is in progress; false (and OUT
 * clear) if the disk has no job in progress or moved on to another. */
bool job_snapshot_mine(struct cfs_engine *e, const char *dom,
                       const char *disk, uint64_t id, struct cfs_job *out)
{
    if (!job_snapshot(e, dom, disk, out))
        return false;
    if (out->id == id)
        return true;
    cfs_job_clear(out);
    return false;
}

/* A new job on disk state S: give it its number. Caller holds the lock. */
void job_number(struct cfs_engine *e, struct cfs_disk_state *s)
{
    s->job.id = ++e->last_job_id;
}

/* S's job replaced by a new one of TYPE, in phase none, numbered; what
 * outlives jobs (the overlays partly merged, the settings) stays. Caller
 * holds the lock. */
void job_new_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                    enum cfs_job_type type)
{
    char **partial = TAKE_PTR(s->partial_tops);
    cfs_job_clear(&s->job);
    s->partial_tops = partial;
    s->gone_since_ms = 0;
    s->pivot_failures = 0;
    s->abort_requested = false;
    s->base_bytes = 0;
    s->job.type = type;
    s->job.pivot_manual = s->settings.pivot_manual;
    cfs_strv_push(&s->job.disks, cfs_xstrdup(s->disk));
    job_number(e, s);
}

/* The disk state of DOM/DISK if its job is still job ID, else NULL.
 * Caller holds the tree lock. */
struct cfs_disk_state *job_mine(struct cfs_engine *e, const char *dom,
                                const char *disk, uint64_t id)
{
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    return s && s->job.id == id ? s : NULL;
}

/* job_mine() under the tree lock: the disk state with the lock still
 * held (the caller unlocks), or NULL with the lock released. */
static struct cfs_disk_state *job_mine_lock(struct cfs_engine *e,
                                            const char *dom,
                                            const char *disk, uint64_t id)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (!s)
        pthread_mutex_unlock(&e->tree->lock);
    return s;
}

static bool phase_terminal(enum cfs_job_phase p)
{
    return p == CFS_PHASE_COMPLETED || p == CFS_PHASE_FAILED ||
           p == CFS_PHASE_CANCELED;
}

/* The edges whose new phase is written to the journal before it holds
 * (recovery steps from the phase stored). */
static bool phase_persisted(enum cfs_job_phase p)
{
    return p == CFS_PHASE_RUNNING || p == CFS_PHASE_PIVOTING ||
           p == CFS_PHASE_FINISHING || p == CFS_PHASE_CLEANUP;
}

/* The in-memory half of an edge: check it against the table, log it,
 * notify readers. Nothing is written. Caller holds the tree lock. */
bool phase_step_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                       enum cfs_job_phase to)
{
    enum cfs_job_phase from = s->job.phase;
    if (!cfs_job_phase_edge_allowed(from, to)) {
        log_err("bug: job %llu %s/%s: %s -> %s is not an allowed edge; ignored",
                (unsigned long long)s->job.id, s->dom, s->disk,
                cfs_job_phase_to_string(from), cfs_job_phase_to_string(to));
        return false;
    }
    s->job.phase = to;
    if (phase_terminal(to)) {
        free(s->job.journal_id);
        s->job.journal_id = NULL;
    }
    /* a member of a job group: the group follows (issue 10 §3.2) */
    group_member_sync_locked(e, s, NULL);
    job_edge_locked(e, s, from, to);
    tree_changed(e);
    return true;
}

/* Move job ID of DOM/DISK from phase FROM (CFS_PHASE_MAX: whatever it is
 * in) to TO, with BEFORE (may be NULL) run just before the step and
 * APPLY (may be NULL) just after it, under the same lock, so that a
 * reader woken by the change sees the job whole, and the step's log
 * line (job_edge_locked) sees what BEFORE set (a job's end: its error).
 * false if the job is not (any more) ID, not in FROM, or the edge is
 * not allowed. */
static bool phase_change(struct cfs_engine *e, const char *dom,
                         const char *disk, uint64_t id,
                         enum cfs_job_phase from, enum cfs_job_phase to,
                         void (*before)(struct cfs_disk_state *s, void *arg),
                         void (*apply)(struct cfs_disk_state *s, void *arg),
                         void *arg)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (!s || (from != CFS_PHASE_MAX && s->job.phase != from)) {
        pthread_mutex_unlock(&e->tree->lock);
        return false;
    }
    from = s->job.phase;
    if (from == to && phase_terminal(to)) {
        pthread_mutex_unlock(&e->tree->lock);
        return false; /* ended already */
    }
    if (from == to && !apply) {
        pthread_mutex_unlock(&e->tree->lock);
        return true;
    }
    if (from != to && !cfs_job_phase_edge_allowed(from, to)) {
        phase_step_locked(e, s, to); /* logs the bug */
        pthread_mutex_unlock(&e->tree->lock);
        return false;
    }
    struct cfs_job copy = {0};
    bool persist = from != to && s->job.journal_id && phase_persisted(to);
    bool close = from != to && s->job.journal_id && phase_terminal(to);
    if (persist || close)
        cfs_job_copy(&copy, &s->job);
    pthread_mutex_unlock(&e->tree->lock);

    /* the journal first: a crash after this finds the new phase (or no
     * entry for a job that ended), never an older one */
    if (persist)
        journal_record(e, dom, disk, &copy, cfs_job_phase_to_string(to));
    if (close)
        journal_close(e, copy.journal_id);
    cfs_job_clear(&copy);

    pthread_mutex_lock(&e->tree->lock);
    s = job_mine(e, dom, disk, id);
    bool ok = s && s->job.phase == from;
    if (ok && from != to && before)
        before(s, arg); /* the edge is allowed: the step below is taken */
    if (ok && from != to)
        ok = phase_step_locked(e, s, to);
    if (ok && apply) {
        apply(s, arg);
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    return ok;
}

bool job_set_phase(struct cfs_engine *e, const char *dom, const char *disk,
                   uint64_t id, enum cfs_job_phase to)
{
    return phase_change(e, dom, disk, id, CFS_PHASE_MAX, to, NULL, NULL, NULL);
}

bool job_set_phase_from(struct cfs_engine *e, const char *dom,
                        const char *disk, uint64_t id,
                        enum cfs_job_phase from, enum cfs_job_phase to)
{
    return phase_change(e, dom, disk, id, from, to, NULL, NULL, NULL);
}

/* Whether file ID/PATH is in DOM/DISK's chain in the tree (ID may be
 * NULL: the path decides). */
bool disk_has_layer(struct cfs_engine *e, const char *dom,
                    const char *disk, const struct cfs_file_id *id,
                    const char *path)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    bool found = cfs_disk_find_file(dk, id, path) >= 0;
    pthread_mutex_unlock(&e->tree->lock);
    return found;
}

/* ---- the end of a job -------------------------------------------------------- */

struct end_args {
    enum cfs_job_phase st;
    const char *error;
    bool partial;
    struct cfs_engine *e;
    char **groups;       /* out: the job groups the end touched */
};

/* The end's facts, set before the terminal step: its log line carries
 * the error (libvirt's message) and whether the base was written. */
static void end_facts(struct cfs_disk_state *s, void *arg)
{
    const struct end_args *a = arg;
    struct cfs_job *j = &s->job;
    j->finished = now_s();
    if (a->st == CFS_PHASE_COMPLETED && j->end)
        j->cur = j->end;
    free(j->error);
    j->error = cfs_xstrdup(a->error);
    j->partial = a->partial;
}

static void end_apply(struct cfs_disk_state *s, void *arg)
{
    const struct end_args *a = arg;
    struct cfs_job *j = &s->job;
    if (a->partial && j->top && !cfs_strv_contains(s->partial_tops, j->top))
        cfs_strv_push(&s->partial_tops, cfs_xstrdup(j->top));
    /* a commit of a run (issue 8 §3.2) wrote every layer of it below */
    for (size_t i = 0; a->partial && j->direction == CFS_DIRECTION_COMMIT &&
                       i < j->n_leaving; i++)
        if (!cfs_strv_contains(s->partial_tops, j->leaving[i].path))
            cfs_strv_push(&s->partial_tops, cfs_xstrdup(j->leaving[i].path));
    if (a->st == CFS_PHASE_COMPLETED && j->top && s->partial_tops) {
        /* the overlay is gone: forget that it was partly merged */
        char **kept = NULL;
        for (char **p = s->partial_tops; *p; p++) {
            bool gone = strcmp(*p, j->top) == 0;
            for (size_t i = 0; j->direction == CFS_DIRECTION_COMMIT &&
                               i < j->n_leaving; i++)
                gone = gone || strcmp(*p, j->leaving[i].path) == 0;
            if (!gone)
                cfs_strv_push(&kept, cfs_xstrdup(*p));
        }
        cfs_strv_free(s->partial_tops);
        s->partial_tops = kept;
    }
    s->gone_since_ms = 0;
    s->pivot_failures = 0;
    s->abort_requested = false;
    /* the member's error and partial, now that the job holds them */
    struct end_args *out = arg;
    group_member_sync_locked(out->e, s, &out->groups);
}

/* End job ID of DOM/DISK in terminal phase ST; a no-op if the disk has
 * moved on to another job meanwhile. The journal entry is closed first:
 * whoever `wait`s for this job may look at the journal as soon as the
 * phase changes. */
void job_end(struct cfs_engine *e, const char *dom, const char *disk,
             uint64_t id, enum cfs_job_phase st, const char *error,
             bool partial)
{
    struct end_args a = { st, error, partial, e, NULL };
    _cleanup_free_ char *what = NULL;
    bool superseded = false;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (s) {
        what = cfs_xstrdup(s->job.snapshot);
        superseded = s->job.superseded;
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (phase_change(e, dom, disk, id, CFS_PHASE_MAX, st, end_facts, end_apply, &a))
        queue_after_end(e, dom, disk, st, what, error, superseded);
    for (char **g = a.groups; g && *g; g++)
        group_after_change(e, *g);
    cfs_strv_free(a.groups);
}

/* Who else uses any of the N files FILES, as libvirt has every chain
 * right now (not the tree, which may lag): before a merge writes into a
 * file and before a merged file is deleted. Every disk of every domain
 * counts except EXCEPT_DISK of EXCEPT_DOM (both NULL: none excepted).
 * Returns 1, *USER ("domain D disk V", caller frees) and *WHICH (index
 * into FILES) if someone does; 0 if no one does; or a negative errno if
 * that cannot be told (then the files count as used; *USER says why). */
int file_user_live(struct cfs_engine *e, const struct file_ref *files,
                   size_t n, const char *except_dom,
                   const char *except_disk, char **user, size_t *which)
{
    *user = NULL;
    _cleanup_strv_ char **names = NULL;
    int r = e->be->ops->list_domains(e->be, &names);
    if (r < 0) {
        *user = cfs_xasprintf("cannot list the domains: %s",
                              errmsg_or(strerror(-r)));
        return r;
    }
    for (char **dn = names; dn && *dn; dn++) {
        struct cfs_domain *d = NULL;
        r = e->be->ops->read_domain_light
                ? e->be->ops->read_domain_light(e->be, *dn, &d)
                : e->be->ops->read_domain(e->be, *dn, &d);
        if (r == -ENOENT)
            continue;
        if (r < 0) {
            *user = cfs_xasprintf("cannot read domain %s: %s", *dn,
                                  errmsg_or(strerror(-r)));
            return r;
        }
        bool self = except_dom && strcmp(*dn, except_dom) == 0;
        for (size_t i = 0; i < n && !*user && !(self && !except_disk); i++) {
            const struct cfs_disk *dk = cfs_domain_file_user(
                d, files[i].id, files[i].path, self ? except_disk : NULL);
            if (dk) {
                *user = cfs_xasprintf("domain %s disk %s", *dn, dk->target);
                *which = i;
            }
        }
        cfs_domain_free(d);
        if (*user)
            return 1;
    }
    return 0;
}

/* " (no space left on the filesystem of BASE)" when that is so, else "". */
static char *space_reason(struct cfs_engine *e, const char *base)
{
    if (!base || !engine_files_local(e))
        return cfs_xstrdup("");
    _cleanup_free_ char *tmp = cfs_xstrdup(base);
    struct statvfs vfs;
    if (statvfs(dirname(tmp), &vfs) == 0 &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < OVERLAY_MIN_FREE)
        return cfs_xasprintf(" (no space left on the filesystem of %s)", base);
    return cfs_xstrdup("");
}


/* Remove the merged file TOP, which no chain uses, where its files are
 * not this machine's: through libvirt's storage-volume API when a pool
 * holds it, else it stays where it is and becomes the job's leftover. */
static void merged_remove_remote(struct cfs_engine *e, const char *dom,
                                 const char *disk, uint64_t id, const char *top)
{
    int r = e->be->ops->volume_delete ? e->be->ops->volume_delete(e->be, top)
                                      : -EOPNOTSUPP;
    if (r == 0) {
        log_info("%s/%s: deleted %s through libvirt's storage pool", dom, disk, top);
        return;
    }
    log_warn("%s/%s: %s is not a file of this machine; left in place, "
             "remove it on the libvirt host: %s", dom, disk, top,
             errmsg_or(strerror(-r)));
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (s) {
        free(s->job.leftover);
        s->job.leftover = cfs_xstrdup(top);
    }
    pthread_mutex_unlock(&e->tree->lock);
}

/* TOP has left DISK's chain in libvirt (a read just said so): drop it from
 * the tree's copy of the chain as well, whatever read the tree holds (one
 * built by a concurrent mkdir's push, or installed meanwhile, may still
 * have it), so that the snapshot does not show again in snapshots/ once
 * the job has ended. Caller holds the tree lock. */
static void tree_drop_layer(struct cfs_engine *e, const char *dom,
                            const char *disk, const struct cfs_file_id *id,
                            const char *path)
{
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    int i = dk ? cfs_disk_find_file(dk, id, path) : -1;
    if (i < 0 || dk->n_layers < 2)
        return;
    struct cfs_domain *copy = cfs_domain_dup(d);
    struct cfs_disk *cd = cfs_domain_find_disk(copy, disk);
    cfs_layer_clear(&cd->layers[i]);
    memmove(&cd->layers[i], &cd->layers[i + 1],
            (cd->n_layers - (size_t)i - 1) * sizeof(*cd->layers));
    cd->n_layers--;
    cfs_tree_put_domain(e->tree, copy);
    (*dom_seq_slot(e, dom))++;
}


/* Delete FILE, which left DISK's chain, unless kept or still used anywhere
 * (the same rules as a commit's TOP). */
static void merged_delete(struct cfs_engine *e, const char *dom,
                          const char *disk, uint64_t id,
                          const struct cfs_job_file *f)
{
    _cleanup_free_ char *user = NULL;
    size_t which;
    const struct file_ref ref = { &f->id, f->path };
    bool used = !e->keep_merged &&
                file_user_live(e, &ref, 1, NULL, NULL, &user, &which) != 0;
    if (e->keep_merged)
        log_info("%s/%s: keeping %s (keep_merged)", dom, disk, f->path);
    else if (used)
        log_warn("%s/%s: %s is still used (%s); not deleting it", dom, disk,
                 f->path, user);
    else if (!engine_files_local(e))
        merged_remove_remote(e, dom, disk, id, f->path);
    else if (unlink(f->path) < 0 && errno != ENOENT)
        log_warn("%s/%s: deleting %s: %s", dom, disk, f->path, strerror(errno));
}

/* Clean-up of a pull (issue 8 §2.4), phase cleanup journaled: the pulled
 * snapshot's metadata is dropped, the surviving one is retargeted to the
 * active layer (each step idempotent, for recovery), then the leaving
 * files are deleted under the usual rules, and only they. */
static void pull_cleanup(struct cfs_engine *e, const char *dom,
                         const char *disk, uint64_t id,
                         const struct cfs_job *job)
{
    int r;
    /* the run's snapshots, top down (issue 8 §2.4), or the one */
    char *one[2] = { job->meta_name, NULL };
    char **metas = job->meta_names ? job->meta_names : one;
    for (char **mp = metas; *mp; mp++) {
        const char *meta = *mp;
        if (!*meta)
            continue; /* a snapshot without libvirt metadata */
        /* §2.4 step 1: the whole metadata goes only when the snapshot
         * names no other disk of the domain; else this disk's part alone
         * (snapshot_forget, as a commit does) */
        bool other_disk = false;
        pthread_mutex_lock(&e->tree->lock);
        const struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
        for (size_t i = 0; d && i < d->n_disks; i++) {
            const struct cfs_disk *odk = &d->disks[i];
            if (cfs_streq(odk->target, disk))
                continue;
            for (size_t l = 0; l < odk->n_layers; l++)
                if (cfs_streq(odk->layers[l].meta_name, meta))
                    other_disk = true;
        }
        pthread_mutex_unlock(&e->tree->lock);
        if (other_disk) {
            r = e->be->ops->snapshot_forget(e->be, dom, disk, meta);
            if (r < 0 && r != -ENOENT)
                log_warn("%s/%s: dropping this disk from snapshot metadata %s: %s",
                         dom, disk, meta, errmsg_or(strerror(-r)));
        } else {
            r = e->be->ops->snapshot_drop(e->be, dom, meta);
            if (r < 0 && r != -ENOENT)
                log_warn("%s/%s: dropping snapshot metadata %s: %s", dom, disk,
                         meta, errmsg_or(strerror(-r)));
        }
    }
    if (job->survivor) {
        r = e->be->ops->snapshot_retarget(e->be, dom, job->survivor, disk,
                                          job->written ? job->written : job->top);
        if (r < 0)
            log_warn("%s/%s: retargeting snapshot metadata %s to %s: %s", dom,
                     disk, job->survivor, job->top, errmsg_or(strerror(-r)));
    }
    for (size_t i = 0; i < job->n_leaving; i++)
        merged_delete(e, dom, disk, id, &job->leaving[i]);

    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    struct stat st;
    /* §2.2: what the pull copied = growth of the written file's
     * allocation since rmdir (st_blocks; right even before QEMU flushes) */
    if (s && job->written && engine_files_local(e) &&
        stat(job->written, &st) == 0 && (uint64_t)st.st_blocks * 512 > s->base_bytes)
        s->job.bytes_copied = (uint64_t)st.st_blocks * 512 - s->base_bytes;
    pthread_mutex_unlock(&e->tree->lock);
    log_info("%s/%s: snapshot %s pulled into %s (%s)", dom, disk,
             job->snapshot, job->top, job->reason ? job->reason : "pull");
    /* the active layer now carries the survivor's name: read it before
     * the job reads as completed, so that `cat wait` then `ls snapshots/`
     * shows the new name (a commit's tree_drop_layer needs no re-read) */
    refresh_domain(e, dom);
    job_end(e, dom, disk, id, CFS_PHASE_COMPLETED, NULL, false);
}

/* Clean-up of a commit of a run (issue 8 §3.2), phase cleanup journaled:
 * every layer of the run left the chain; each is deleted under the rules
 * of a commit's TOP, and each snapshot's metadata stops naming this disk
 * (snapshot_forget, top down, as a commit of one does). */
static void run_cleanup(struct cfs_engine *e, const char *dom,
                        const char *disk, uint64_t id,
                        const struct cfs_job *job)
{
    for (size_t i = 0; i < job->n_leaving; i++)
        merged_delete(e, dom, disk, id, &job->leaving[i]);
    char *one[2] = { job->meta_name, NULL };
    char **metas = job->meta_names ? job->meta_names : one;
    for (char **mp = metas; *mp; mp++) {
        if (!**mp)
            continue;
        int r = e->be->ops->snapshot_forget(e->be, dom, disk, *mp);
        if (r < 0 && r != -ENOENT)
            log_warn("%s/%s: dropping snapshot metadata %s: %s", dom, disk,
                     *mp, errmsg_or(strerror(-r)));
    }
    _cleanup_free_ char *names = NULL;
    struct cfs_buf nb = {0};
    for (char **n = job->snapshots; n && *n; n++)
        cfs_buf_printf(&nb, "%s%s", n == job->snapshots ? "" : ", ", *n);
    names = cfs_buf_steal(&nb);
    log_info("%s/%s: snapshots %s merged into %s in one job (%s)", dom, disk,
             names && *names ? names : job->snapshot, job->base,
             cfs_job_type_to_string(job->type));
    job_end(e, dom, disk, id, CFS_PHASE_COMPLETED, NULL, false);
    refresh_domain(e, dom);
}

/* The merge is over as far as libvirt is concerned. If TOP left the chain,
 * delete it (unless kept or still used anywhere), make libvirt's snapshot
 * metadata stop naming it (snapshot_forget: the snapshot's other disks keep
 * theirs), close the journal entry. FINISH_TOP_IN_CHAIN: libvirt may not
 * have updated the XML yet, or the merge did not complete; the caller
 * decides. */
enum finish_result job_finish(struct cfs_engine *e, const char *dom,
                              const char *disk, uint64_t id)
{
    struct cfs_job job;
    if (!job_snapshot_mine(e, dom, disk, id, &job))
        return FINISH_DONE;
    if (job.type == CFS_JOB_COPY) {
        /* issue 8 §1: pivoted, finished, or not over (copy.c) */
        enum finish_result fr = copy_finish(e, dom, disk, id, &job);
        cfs_job_clear(&job);
        return fr;
    }
    if (!job.top || !cfs_job_kind(job.type)->merge) {
        cfs_job_clear(&job); /* not the job this was meant for */
        return FINISH_DONE;
    }

    /* Is TOP still in the disk's chain? Asked of libvirt and answered from
     * that read alone, not from the tree: a re-read installed in the tree
     * can be overtaken again and again by the reads of mkdir and rmdir on
     * the domain's other disks, and "cannot tell" must never pass for
     * "TOP is still there" (a running merge would be failed for it). */
    struct cfs_domain *live = NULL;
    pthread_mutex_lock(&e->tree->lock);
    unsigned long before = *dom_seq_slot(e, dom);
    pthread_mutex_unlock(&e->tree->lock);
    int r = e->be->ops->read_domain_light
                ? e->be->ops->read_domain_light(e->be, dom, &live)
                : e->be->ops->read_domain(e->be, dom, &live);
    if (r < 0 && r != -ENOENT) {
        cfs_job_clear(&job);
        return FINISH_CANNOT_TELL;
    }
    const struct cfs_disk *ldk = live ? cfs_domain_find_disk(live, disk) : NULL;
    bool disk_gone = !ldk;
    /* a pull: finished when every leaving file is out of the chain (TOP,
     * the active layer, stays) */
    bool by_leaving = job.n_leaving > 0;
    bool top_in_chain = false;
    if (by_leaving) {
        for (size_t i = 0; ldk && i < job.n_leaving; i++)
            if (cfs_disk_find_file(ldk, &job.leaving[i].id, job.leaving[i].path) >= 0)
                top_in_chain = true;
    } else {
        top_in_chain = ldk && cfs_disk_find_file(ldk, &job.top_id, job.top) >= 0;
    }
    if (live && !top_in_chain) {
        /* the tree shows the chain without TOP before the job reads as
         * completed: `cat wait` then `ls snapshots/` must not see it (a
         * newer read installed meanwhile is without TOP as well) */
        bool removed;
        pthread_mutex_lock(&e->tree->lock);
        carry_sizes(cfs_tree_find_domain(e->tree, dom), live);
        install_read(e, dom, before, TAKE_PTR(live), &removed);
        if (by_leaving)
            for (size_t i = 0; i < job.n_leaving; i++)
                tree_drop_layer(e, dom, disk, &job.leaving[i].id,
                                job.leaving[i].path);
        else
            tree_drop_layer(e, dom, disk, &job.top_id, job.top);
        pthread_mutex_unlock(&e->tree->lock);
    }
    cfs_domain_free(live);
    if (disk_gone) {
        /* TOP is in no chain only because its domain or disk went away:
         * that says nothing about the merge, so nothing is deleted */
        job_fail(e, dom, disk, id, CFS_PHASE_FAILED,
                 "the domain or the disk disappeared during the merge; "
                 "nothing was deleted");
        cfs_job_clear(&job);
        return FINISH_DONE;
    }
    if (top_in_chain) {
        refresh_domain(e, dom);
        cfs_job_clear(&job);
        return FINISH_TOP_IN_CHAIN;
    }

    if (!job_set_phase(e, dom, disk, id, CFS_PHASE_CLEANUP)) {
        cfs_job_clear(&job); /* ended meanwhile (abort, a failure) */
        return FINISH_DONE;
    }
    if (by_leaving && job.direction == CFS_DIRECTION_PULL) {
        pull_cleanup(e, dom, disk, id, &job);
        cfs_job_clear(&job);
        return FINISH_DONE;
    }
    if (by_leaving) {
        run_cleanup(e, dom, disk, id, &job);
        cfs_job_clear(&job);
        return FINISH_DONE;
    }
    _cleanup_free_ char *user = NULL;
    size_t which;
    const struct file_ref top = { &job.top_id, job.top };
    bool used = !e->keep_merged &&
                file_user_live(e, &top, 1, NULL, NULL, &user, &which) != 0;

    if (e->keep_merged)
        log_info("%s/%s: merged %s into %s; keeping %s (keep_merged)", dom,
                 disk, job.snapshot, job.base, job.top);
    else if (used)
        log_warn("%s/%s: %s is still used (%s); not deleting it", dom,
                 disk, job.top, user);
    else if (!engine_files_local(e))
        merged_remove_remote(e, dom, disk, id, job.top);
    else if (unlink(job.top) < 0 && errno != ENOENT)
        log_warn("%s/%s: deleting %s: %s", dom, disk, job.top,
                 strerror(errno));

    if (job.meta_name) {
        r = e->be->ops->snapshot_forget(e->be, dom, disk, job.meta_name);
        if (r < 0 && r != -ENOENT)
            log_warn("%s/%s: dropping snapshot metadata %s: %s", dom, disk,
                     job.meta_name, errmsg_or(strerror(-r)));
    }
    log_info("%s/%s: snapshot %s merged into %s (%s)", dom, disk,
             job.snapshot, job.base, cfs_job_type_to_string(job.type));
    job_end(e, dom, disk, id, CFS_PHASE_COMPLETED, NULL, false);
    refresh_domain(e, dom);
    cfs_job_clear(&job);
    return FINISH_DONE;
}

void job_fail(struct cfs_engine *e, const char *dom, const char *disk,
              uint64_t id, enum cfs_job_phase st, const char *why)
{
    struct cfs_job job;
    if (!job_snapshot_mine(e, dom, disk, id, &job))
        return;
    refresh_domain(e, dom);
    if (job.type == CFS_JOB_COPY) {
        /* §1.7: before the entry is closed (a kill in between is redone
         * by recovery), and only while QEMU can never have switched the
         * guest's writes to DEST: never after pivoting/finishing began */
        bool may_delete = job.phase == CFS_PHASE_STARTING ||
                          job.phase == CFS_PHASE_RUNNING ||
                          job.phase == CFS_PHASE_READY;
        /* chain: no qemu-img may still write the copies */
        if (job.copy_mode == CFS_COPY_CHAIN)
            copy_chain_stop(e, dom, disk, id);
        if (may_delete)
            copy_delete_made(e, dom, disk, &job);
        _cleanup_free_ char *text = cfs_xasprintf(
            "%s%s", why,
            may_delete ? "" : "; nothing deleted: the guest may have written to "
                              "the destination (both files kept)");
        /* logged by the end's edge: "job N failed: copy ..." */
        job_end(e, dom, disk, id, st, text, false);
        cfs_job_clear(&job);
        return;
    }
    /* A commit that got going has written part of TOP into BASE: BASE no
     * longer holds its old point in time (harmless, TOP still sits above
     * it), and info says so. */
    /* The progress last polled may be 0 if the copy failed before the
     * first poll; a base that grew since the start was written all the
     * same. */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *ds = cfs_tree_find_disk_state(e->tree, dom, disk);
    uint64_t base_before = ds ? ds->base_bytes : 0;
    pthread_mutex_unlock(&e->tree->lock);
    struct stat bst;
    bool base_grew = base_before && job.base && engine_files_local(e) &&
                     stat(job.base, &bst) == 0 &&
                     (uint64_t)bst.st_blocks * 512 > base_before;
    /* a pull is never partial: no snapshot's point in time changed */
    bool partial = cfs_job_kind(job.type)->merge &&
                   job.direction != CFS_DIRECTION_PULL && (job.cur > 0 || base_grew);
    _cleanup_free_ char *space = space_reason(e, job.base);
    _cleanup_free_ char *text = cfs_xasprintf("%s%s", why, space);
    /* logged by the end's edge: "job N failed: commit ... snapshot S" */
    job_end(e, dom, disk, id, st, text, partial);
    cfs_job_clear(&job);
}


/* ---- pivot ------------------------------------------------------------------- */

/* The step of phase ready: pivot, unless the disk holds its active
 * commits in ready (`pivot manual`) and the pivot was not ASKED for
 * (ctl `pivot`). 0, or -EAGAIN not ready yet (libvirt says so; the next
 * poll retries an automatic pivot), -ENOENT not (any more) job ID in
 * ready, or the pivot's error. */
static int pivot_ready(struct cfs_engine *e, const char *dom, const char *disk,
                       uint64_t id, bool asked)
{
    struct cfs_job job;
    if (!job_snapshot_mine(e, dom, disk, id, &job))
        return -ENOENT;
    if (!cfs_job_kind(job.type)->has_ready ||
        job.phase != CFS_PHASE_READY) {
        cfs_job_clear(&job);
        return -ENOENT;
    }
    /* a copy waits by its own `manual` word, other jobs by the disk's
     * `pivot manual` setting */
    bool hold = job.type == CFS_JOB_COPY ? job.manual : job.pivot_manual;
    if (hold && !asked) {
        cfs_job_clear(&job); /* held: `pivot` or `abort` in ctl */
        return 0;
    }
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0 || !pr.present || !pr.ready) {
        /* not ready after all (or libvirt is busy): the next poll retries */
        cfs_job_clear(&job);
        if (r < 0)
            return r;
        cfs_backend_set_errmsg(pr.present ? "libvirt does not report the job ready"
                                          : "libvirt reports no job on the disk");
        return -EAGAIN;
    }

    if (!job_set_phase_from(e, dom, disk, id, CFS_PHASE_READY,
                            CFS_PHASE_PIVOTING)) {
        cfs_job_clear(&job); /* someone else pivots, or it ended */
        return -EAGAIN;
    }
    r = e->be->ops->job_pivot(e->be, dom, disk);
    if (r == -EAGAIN) {
        log_debug("%s/%s: pivot not ready yet, retrying", dom, disk);
        job_set_phase_from(e, dom, disk, id, CFS_PHASE_PIVOTING, CFS_PHASE_READY);
    } else if (r < 0) {
        _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_disk_state *s = job_mine(e, dom, disk, id);
        int failures = s ? ++s->pivot_failures : PIVOT_MAX_FAILURES;
        pthread_mutex_unlock(&e->tree->lock);
        log_warn("%s/%s: pivot refused (%d): %s", dom, disk, failures, msg);
        if (failures < PIVOT_MAX_FAILURES) {
            job_set_phase_from(e, dom, disk, id, CFS_PHASE_PIVOTING, CFS_PHASE_READY);
        } else {
            /* give up: end the mirror without pivoting, the chain stays */
            e->be->ops->job_abort(e->be, dom, disk);
            job_fail(e, dom, disk, id, CFS_PHASE_FAILED, msg);
        }
    } else {
        log_debug("%s/%s: pivot accepted", dom, disk);
    }
    cfs_job_clear(&job);
    return r;
}

/* The step of phase ready, with the rule of job groups first (issue 10
 * §3.3): a member holds in ready while another member of its group is
 * queued or running (`pivot` in ctl, ASKED, pivots it all the same);
 * once none is, every member in ready is pivoted in one pass, in the
 * domain's disk order. A pivot changes nothing the guest sees; the hold
 * makes sure no disk pivots while another could still fail before its
 * own pivot. */
int step_ready(struct cfs_engine *e, const char *dom, const char *disk,
               uint64_t id, bool asked)
{
    _cleanup_free_ char *group = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    if (s && s->job.phase == CFS_PHASE_READY && !asked)
        group = cfs_xstrdup(s->job.group);
    pthread_mutex_unlock(&e->tree->lock);
    if (!group)
        return pivot_ready(e, dom, disk, id, asked);

    _cleanup_strv_ char **ready = NULL;
    _cleanup_free_ uint64_t *ids = NULL;
    if (group_holds(e, group, disk, &ready, &ids)) {
        log_debug("%s/%s: ready; held until every disk of its group is "
                  "ready or has ended", dom, disk);
        return 0;
    }
    int r = -ENOENT;
    bool self = false;
    for (size_t i = 0; ready && ready[i]; i++) {
        int rr = pivot_ready(e, dom, ready[i], ids[i], false);
        if (cfs_streq(ready[i], disk)) {
            r = rr;
            self = true;
        }
    }
    if (!self)
        r = pivot_ready(e, dom, disk, id, false);
    return r;
}

/* ---- following jobs ---------------------------------------------------------- */

/* Fact: the active commit reached ready (all copied, mirroring). */
static void ready_apply(struct cfs_disk_state *s, void *arg)
{
    (void)arg;
    if (s->job.end)
        s->job.cur = s->job.end;
}

static void job_went_ready(struct cfs_engine *e, const char *dom,
                           const char *disk, uint64_t id)
{
    phase_change(e, dom, disk, id, CFS_PHASE_RUNNING, CFS_PHASE_READY,
                 NULL, ready_apply, NULL);
}

/* Fact: libvirt has no job and TOP is still in the chain. The job failed
 * (WHY), or was canceled: by someone else (CANCELED), or by ctl abort
 * (then it is canceled whatever libvirt said). */
static void job_vanished_failed(struct cfs_engine *e, const char *dom,
                                const char *disk, uint64_t id,
                                const char *why, bool canceled)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = job_mine(e, dom, disk, id);
    bool aborted = s && s->abort_requested;
    bool regrouped = s && s->job.superseded;
    pthread_mutex_unlock(&e->tree->lock);
    if (regrouped)
        job_fail(e, dom, disk, id, CFS_PHASE_CANCELED, REGROUP_REASON);
    else if (aborted)
        job_fail(e, dom, disk, id, CFS_PHASE_CANCELED, "aborted through ctl");
    else
        job_fail(e, dom, disk, id,
                 canceled ? CFS_PHASE_CANCELED : CFS_PHASE_FAILED, why);
}

/* ---- jobs chainfs did not start ---------------------------------------------- */

/* Look at DOM/DISK's block job in libvirt when chainfs has none of its
 * own in progress there: one is shown as what it is (origin external) and
 * keeps mkdir/rmdir away; when it ends, the disk's new chain is read. */
void external_check(struct cfs_engine *e, const char *dom, const char *disk)
{
    if (!e->recovered)
        return; /* a job in the journal is chainfs's own, not external */
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, disk);
    bool ours = s && cfs_job_phase_in_progress(s->job.phase);
    bool had = s && s->external.type != CFS_JOB_NONE;
    pthread_mutex_unlock(&e->tree->lock);
    if (ours)
        return;
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0 && r != -ENOENT)
        return; /* cannot tell now; the next event or poll asks again */
    bool present = r == 0 && pr.present;
    if (!present && !had)
        return;
    pthread_mutex_lock(&e->tree->lock);
    s = cfs_tree_disk_state(e->tree, dom, disk);
    if (present && !had && cfs_job_kind(s->job.type)->chainfs &&
        (enum cfs_job_type)pr.type == s->job.type &&
        now_s() - s->job.finished <= VANISH_GRACE_MS / 1000 + 1) {
        /* chainfs's own job, just ended here, not yet gone from libvirt */
        pthread_mutex_unlock(&e->tree->lock);
        return;
    }
    if (cfs_job_phase_in_progress(s->job.phase)) {
        pthread_mutex_unlock(&e->tree->lock);
        return; /* chainfs started one meanwhile: that one is ours */
    }
    struct cfs_job *x = &s->external;
    if (present) {
        enum cfs_job_type type = pr.type == CFS_JOB_NONE ? CFS_JOB_UNKNOWN : pr.type;
        enum cfs_job_phase ph = pr.ready ? CFS_PHASE_READY : CFS_PHASE_RUNNING;
        if (!had) {
            cfs_job_clear(x);
            x->started = now_s();
            log_info("%s/%s: a block job chainfs did not start (external, "
                     "type %s) runs on the disk", dom, disk,
                     cfs_job_type_to_string(type));
        }
        if (!had || x->type != type || x->phase != ph || x->cur != pr.cur ||
            x->end != pr.end || x->bandwidth != pr.bandwidth) {
            x->type = type;
            x->phase = ph;
            x->cur = pr.cur;
            x->end = pr.end;
            x->bandwidth = pr.bandwidth;
            x->external = true;
            tree_changed(e);
        }
    } else {
        log_info("%s/%s: the external %s job ended; reading the new chain",
                 dom, disk, cfs_job_type_to_string(x->type));
        cfs_job_clear(x);
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (!present)
        refresh_domain(e, dom);
}

/* ---- following jobs ---------------------------------------------------------- */

/* A block-job event. Events carry no job identity, and one may arrive
 * late: the CANCELED of a job someone aborted just before rmdir started
 * ours, the COMPLETED of the previous merge that a poll already finished.
 * So an event is applied only to a live commit of the same kind, and a
 * FAILED/CANCELED only when libvirt no longer has a job on the disk. An
 * event on a disk where chainfs has no job of its own is a look at that
 * disk (a job chainfs did not start). */
void handle_job_event(struct cfs_engine *e, const struct work *w)
{
    struct cfs_job job;
    if (!job_snapshot(e, w->dom, w->disk, &job)) {
        /* not ours, or already ended: the chain may still have changed */
        external_check(e, w->dom, w->disk);
        refresh_domain(e, w->dom);
        return;
    }
    log_debug("%s/%s: block job event %d (type %s) in state %s", w->dom,
              w->disk, (int)w->status, cfs_job_type_to_string(w->type),
              cfs_job_phase_to_string(job.phase));
    if (!cfs_job_kind(job.type)->block_job ||
        (w->type != CFS_JOB_NONE && w->type != job.type) ||
        job.phase == CFS_PHASE_STARTING) {
        /* (while rmdir is still starting it, the poll after catches up) */
        log_debug("%s/%s: event is not for the job chainfs follows; ignored",
                  w->dom, w->disk);
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    switch (w->status) {
    case CFS_JOB_EVENT_READY:
        if (cfs_job_kind(job.type)->has_ready &&
            job.phase == CFS_PHASE_RUNNING && copy_layers_done(&job)) {
            job_went_ready(e, w->dom, w->disk, job.id);
            step_ready(e, w->dom, w->disk, job.id, false);
        }
        break;
    case CFS_JOB_EVENT_COMPLETED:
        if (job_finish(e, w->dom, w->disk, job.id) != FINISH_DONE) {
            /* TOP still in the chain: a late event, or libvirt has not
             * updated the XML yet; the poll decides */
            pthread_mutex_lock(&e->tree->lock);
            struct cfs_disk_state *s = job_mine(e, w->dom, w->disk, job.id);
            if (s && !s->gone_since_ms)
                s->gone_since_ms = now_ms();
            pthread_mutex_unlock(&e->tree->lock);
        }
        break;
    case CFS_JOB_EVENT_FAILED:
    case CFS_JOB_EVENT_CANCELED:
        if (e->be->ops->job_get(e->be, w->dom, w->disk, &pr) == 0 && pr.present) {
            log_debug("%s/%s: late event of an earlier job; ignored", w->dom,
                      w->disk);
            break;
        }
        if (job.type == CFS_JOB_COPY && job.phase == CFS_PHASE_FINISHING) {
            /* libvirt reports a finish as CANCELED (design §0.1): DEST
             * decides */
            if (job_finish(e, w->dom, w->disk, job.id) == FINISH_TOP_IN_CHAIN)
                job_fail(e, w->dom, w->disk, job.id, CFS_PHASE_FAILED,
                         "finish: the mirror ended with DEST still in the chain");
            break;
        }
        job_vanished_failed(e, w->dom, w->disk, job.id,
                            w->status == CFS_JOB_EVENT_FAILED
                                ? "libvirt reported the block job as failed"
                                : "the block job was canceled outside chainfs",
                            w->status == CFS_JOB_EVENT_CANCELED);
        break;
    default:
        break;
    }
    cfs_job_clear(&job);
}

void handle_offline_done(struct cfs_engine *e, const struct work *w)
{
    if (w->err < 0)
        job_fail(e, w->dom, w->disk, w->job_id, CFS_PHASE_FAILED,
                 w->errmsg ? w->errmsg : strerror(-w->err));
    else if (job_finish(e, w->dom, w->disk, w->job_id) != FINISH_DONE)
        job_fail(e, w->dom, w->disk, w->job_id, CFS_PHASE_FAILED,
                 "the merged layer is still in the chain after the merge");
}

/* One poll of a live job: progress, the ready fallback, a vanished job;
 * then the step of the phase it is in. A disk with a job chainfs did not
 * start is looked at (external_check). */
void poll_job(struct cfs_engine *e, const char *dom, const char *disk)
{
    struct cfs_job job;
    if (!job_snapshot(e, dom, disk, &job)) {
        external_check(e, dom, disk);
        return;
    }
    if (!cfs_job_kind(job.type)->block_job || job.phase == CFS_PHASE_STARTING ||
        job.phase == CFS_PHASE_CLEANUP) {
        cfs_job_clear(&job);
        return;
    }
    struct cfs_job_progress pr = {0};
    int r = e->be->ops->job_get(e->be, dom, disk, &pr);
    if (r < 0) {
        /* A domain that stopped or went away has no job any more (libvirt
         * refuses to ask); anything else, e.g. a lost connection, is
         * passing: keep following. */
        pthread_mutex_lock(&e->tree->lock);
        struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
        bool stopped = !e->tree->stale && (!d || d->state == CFS_DOM_SHUTOFF);
        pthread_mutex_unlock(&e->tree->lock);
        if (r == -ENOTCONN || !stopped) {
            cfs_job_clear(&job);
            return;
        }
        pr.present = false;
    }
    if (pr.present) {
        struct cfs_disk_state *s = job_mine_lock(e, dom, disk, job.id);
        if (!s) {
            cfs_job_clear(&job);
            return;
        }
        if (s->job.cur != pr.cur || s->job.end != pr.end ||
            s->job.bandwidth != pr.bandwidth) {
            s->job.cur = pr.cur;
            s->job.end = pr.end;
            s->job.bandwidth = pr.bandwidth;
            tree_changed(e);
        }
        s->gone_since_ms = 0;
        /* a chain copy is ready once its frozen copies are done too */
        bool to_ready = pr.ready && s->job.phase == CFS_PHASE_RUNNING &&
                        cfs_job_kind(job.type)->has_ready &&
                        copy_layers_done(&s->job);
        if (to_ready)
            phase_step_locked(e, s, CFS_PHASE_READY);
        bool ready = s->job.phase == CFS_PHASE_READY;
        pthread_mutex_unlock(&e->tree->lock);
        if (ready)
            step_ready(e, dom, disk, job.id, false);
        cfs_job_clear(&job);
        return;
    }

    /* libvirt has no job: finished (maybe the event was missed) or died;
     * when libvirt cannot be read now, the next poll asks again */
    if (job_finish(e, dom, disk, job.id) != FINISH_TOP_IN_CHAIN) {
        cfs_job_clear(&job);
        return;
    }
    struct cfs_disk_state *s = job_mine_lock(e, dom, disk, job.id);
    if (!s) {
        cfs_job_clear(&job);
        return;
    }
    if (!s->gone_since_ms)
        s->gone_since_ms = now_ms();
    bool expired = now_ms() - s->gone_since_ms > VANISH_GRACE_MS ||
                   job.phase == CFS_PHASE_RUNNING || s->abort_requested;
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    bool running = d && d->state != CFS_DOM_SHUTOFF;
    pthread_mutex_unlock(&e->tree->lock);
    /* A running copy that disappears with TOP in place did not complete
     * (QEMU died, the domain was destroyed, someone aborted it). After a
     * pivot, give libvirt a moment to update the XML. */
    if (expired)
        job_vanished_failed(e, dom, disk, job.id,
                            running ? "the block job ended without completing"
                                    : "the domain stopped during the merge",
                            false);
    cfs_job_clear(&job);
}

bool any_live_job(struct cfs_engine *e, char ***doms, char ***disks)
{
    bool any = false;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_states; i++) {
        struct cfs_disk_state *s = e->tree->states[i];
        bool ours = cfs_job_phase_in_progress(s->job.phase) &&
                    cfs_job_kind(s->job.type)->block_job;
        bool external = !cfs_job_phase_in_progress(s->job.phase) &&
                        s->external.type != CFS_JOB_NONE;
        if (!ours && !external)
            continue;
        any = true;
        if (doms) {
            cfs_strv_push(doms, cfs_xstrdup(s->dom));
            cfs_strv_push(disks, cfs_xstrdup(s->disk));
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    return any;
}

void poll_jobs(struct cfs_engine *e)
{
    _cleanup_strv_ char **doms = NULL;
    _cleanup_strv_ char **disks = NULL;
    /* deletions queued on a disk without a job: dispatch them */
    queue_poll(e);
    if (!any_live_job(e, &doms, &disks))
        return;
    for (size_t i = 0; doms && doms[i]; i++)
        route(e, work_new(WORK_POLL_JOB, doms[i], disks[i]));
    e->last_poll_ms = now_ms();
}
