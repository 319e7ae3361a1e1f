/* group.c — part of the engine (see engine_int.h): job groups, the
 * domain-level rmdir's one merge per disk (docs/design/issue10.md §3).
 *
 * A group lives in the tree (struct cfs_group, tree.h) with one member per
 * disk that had the snapshot's layer. A member's state follows its disk's
 * job: every phase change of a job whose `group` is set passes through
 * group_member_sync_locked() (from phase_step_locked() and the end of a
 * job), so the group's phase (cfs_group_phase(), pure) is always that of
 * its members. What the group adds to the members' own machinery:
 *
 *  - the hold (job.c, step_ready): an active commit of a member stays in
 *    ready while another member is queued or running; the member whose
 *    change ends the hold pivots every ready member in one pass;
 *  - the end (group_after_change): completed or failed closes the group's
 *    journal entry, partial rewrites it with the disks that remain
 *    (remaining[]); a member that ends while others are held asks for a
 *    poll of the held ones, which then pivot;
 *  - a merge of the snapshot on a member's disk that is not the member's
 *    own job (a disk-level rmdir on a disk a partial group names; a run
 *    of the queue that took a queued member's deletion in: issue 8 §3.2)
 *    ends that member's part too (other_groups_locked).
 *
 * Locks: the tree lock around the group; journal writes without it. */
#include "engine_int.h"

static void group_recompute_locked(struct cfs_group *g)
{
    enum cfs_group_phase p = cfs_group_phase(g->members, g->n_members);
    if (p == g->phase)
        return;
    g->phase = p;
    if (cfs_group_phase_ended(p)) {
        g->finished = now_s();
        g->end_recorded = false; /* a new end to journal */
    } else {
        g->finished = 0;
    }
}

/* Whether S's disk still has a deletion of group G queued. */
static bool queued_for(const struct cfs_disk_state *s, const struct cfs_group *g)
{
    for (size_t i = 0; i < s->n_queue; i++)
        if (cfs_streq(s->queue[i].group, g->id))
            return true;
    return false;
}

/* S's job just ended and removed (COMPLETED) or did not remove (failed,
 * canceled) the snapshots it names; a group of the domain other than the
 * job's own with one of those as its NAME and S's disk as a member is
 * told: a member whose queued deletion became part of that job (a run of
 * the queue, issue 8 §3.2), or one a partial group left on the disk that
 * a disk-level rmdir merged now. */
static void other_groups_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                                char ***touched)
{
    struct cfs_tree *t = e->tree;
    const struct cfs_job *j = &s->job;
    bool completed = j->phase == CFS_PHASE_COMPLETED;
    bool failed = (j->phase == CFS_PHASE_FAILED || j->phase == CFS_PHASE_CANCELED) &&
                  !j->superseded;
    if (!completed && !failed)
        return;
    for (size_t i = 0; i < t->n_groups; i++) {
        struct cfs_group *g = t->groups[i];
        if (!cfs_streq(g->dom, s->dom) || cfs_streq(g->id, j->group))
            continue;
        /* a revert keeps its own snapshot (the disk is at NAME's point
         * again: not merged) and discards only the later ones */
        bool named = (j->type != CFS_JOB_REVERT && cfs_streq(g->snapshot, j->snapshot)) ||
                     cfs_strv_contains(j->snapshots, g->snapshot);
        struct cfs_group_member *m = cfs_group_find_member(g, s->disk);
        if (!named || !m)
            continue;
        bool taken = m->state == CFS_MEMBER_QUEUED && !queued_for(s, g) &&
                     !cfs_group_phase_ended(g->phase);
        enum cfs_member_state to = m->state;
        if (completed && (taken || (g->phase == CFS_GROUP_PARTIAL &&
                                    m->state == CFS_MEMBER_FAILED)))
            to = CFS_MEMBER_DONE;
        else if (failed && taken)
            to = CFS_MEMBER_FAILED;
        else
            continue; /* not this job's business */
        m->state = to;
        free(m->error);
        m->error = to == CFS_MEMBER_FAILED ? cfs_xstrdup(j->error) : NULL;
        m->partial = to == CFS_MEMBER_FAILED && j->partial;
        group_recompute_locked(g);
        tree_changed(e);
        if (!cfs_strv_contains(*touched, g->id))
            cfs_strv_push(touched, cfs_xstrdup(g->id));
    }
}

void group_member_sync_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                              char ***touched)
{
    struct cfs_tree *t = e->tree;
    struct cfs_job *j = &s->job;
    /* once per end: from job_end (its error and partial set), not from
     * the phase step before it */
    if (touched)
        other_groups_locked(e, s, touched);
    if (!j->group)
        return;
    struct cfs_group *g = cfs_tree_find_group(t, j->group);
    struct cfs_group_member *m = cfs_group_find_member(g, s->disk);
    if (!m)
        return;
    m->job_id = j->id;
    enum cfs_member_state st = cfs_member_state_of_phase(j->phase);
    if (j->phase == CFS_PHASE_CANCELED && j->superseded)
        st = CFS_MEMBER_QUEUED; /* regrouped: its snapshot is queued again */
    m->state = st;
    if (st == CFS_MEMBER_FAILED || st == CFS_MEMBER_DONE) {
        free(m->error);
        m->error = cfs_xstrdup(st == CFS_MEMBER_FAILED ? j->error : NULL);
        m->partial = st == CFS_MEMBER_FAILED && j->partial;
    }
    group_recompute_locked(g);
    tree_changed(e);
    if (touched && !cfs_strv_contains(*touched, g->id))
        cfs_strv_push(touched, cfs_xstrdup(g->id));
}

void group_member_set(struct cfs_engine *e, const char *group,
                      const char *disk, enum cfs_member_state st,
                      const char *error)
{
    if (!group)
        return;
    _cleanup_free_ char *id = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_group *g = cfs_tree_find_group(e->tree, group);
    struct cfs_group_member *m = cfs_group_find_member(g, disk);
    if (m && m->state != CFS_MEMBER_DONE && m->state != CFS_MEMBER_FAILED) {
        m->state = st;
        free(m->error);
        m->error = cfs_xstrdup(error);
        group_recompute_locked(g);
        tree_changed(e);
        id = cfs_xstrdup(g->id);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (id)
        group_after_change(e, id);
}

/* The group's journal entry as it stands (pointers into G and the
 * arrays the caller frees: *DISKS, *REMAINING). */
static void group_entry(const struct cfs_group *g, const char *phase,
                        char ***disks, char ***remaining,
                        struct cfs_journal_entry *out)
{
    *disks = NULL;
    *remaining = NULL;
    for (size_t i = 0; i < g->n_members; i++) {
        cfs_strv_push(disks, cfs_xstrdup(g->members[i].disk));
        if (g->members[i].state != CFS_MEMBER_DONE)
            cfs_strv_push(remaining, cfs_xstrdup(g->members[i].disk));
    }
    const char *err = NULL;
    for (size_t i = 0; i < g->n_members && !err; i++)
        if (g->members[i].state == CFS_MEMBER_FAILED)
            err = g->members[i].error;
    *out = (struct cfs_journal_entry){
        .id = g->id, .domain = g->dom,
        .disk = g->n_members ? g->members[0].disk : (char *)"-",
        .snapshot = g->snapshot, .meta_name = g->meta_name,
        .top = (char *)"-", .base = (char *)"-",
        .type = CFS_JOB_GROUP, .phase = (char *)phase,
        .created = g->started, .updated = now_s(),
        .error = (char *)err, .disks = *disks, .remaining = *remaining,
    };
}

int group_journal_put(struct cfs_engine *e, const struct cfs_group *g,
                      const char *phase, const char *replaces)
{
    char **disks, **remaining;
    struct cfs_journal_entry en;
    group_entry(g, phase, &disks, &remaining, &en);
    const char *rm[1] = { replaces };
    int r = cfs_journal_apply(e->journal, &en, 1, rm, replaces ? 1 : 0);
    if (r == -ENOENT) /* the old entry was closed meanwhile */
        r = cfs_journal_put(e->journal, &en);
    cfs_strv_free(disks);
    cfs_strv_free(remaining);
    if (r < 0)
        log_err("journal: recording group %s of %s (%s): %s", g->snapshot,
                g->dom, phase, strerror(-r));
    return r;
}

void group_after_change(struct cfs_engine *e, const char *group)
{
    if (!group)
        return;
    _cleanup_strv_ char **ready = NULL;
    _cleanup_free_ char *dom = NULL, *name = NULL, *id = NULL;
    _cleanup_free_ char *remaining = NULL;
    struct cfs_group *copy = NULL;
    enum cfs_group_phase phase = CFS_GROUP_RUNNING;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_group *g = cfs_tree_find_group(e->tree, group);
    if (!g) {
        pthread_mutex_unlock(&e->tree->lock);
        return;
    }
    dom = cfs_xstrdup(g->dom);
    name = cfs_xstrdup(g->snapshot);
    id = cfs_xstrdup(g->id);
    phase = g->phase;
    bool record = cfs_group_phase_ended(g->phase) && !g->end_recorded;
    if (record) {
        g->end_recorded = true;
        /* a copy for the journal write, made without the lock */
        copy = cfs_xcalloc(1, sizeof(*copy));
        *copy = (struct cfs_group){
            .id = cfs_xstrdup(g->id), .dom = cfs_xstrdup(g->dom),
            .snapshot = cfs_xstrdup(g->snapshot),
            .meta_name = cfs_xstrdup(g->meta_name),
            .n_members = g->n_members, .phase = g->phase,
            .started = g->started, .finished = g->finished,
        };
        copy->members = cfs_xcalloc(g->n_members ? g->n_members : 1,
                                    sizeof(*copy->members));
        struct cfs_buf rb = {0};
        for (size_t i = 0; i < g->n_members; i++) {
            copy->members[i] = (struct cfs_group_member){
                .disk = cfs_xstrdup(g->members[i].disk),
                .state = g->members[i].state,
                .error = cfs_xstrdup(g->members[i].error),
            };
            if (g->members[i].state != CFS_MEMBER_DONE)
                cfs_buf_printf(&rb, "%s%s", rb.len ? " " : "", g->members[i].disk);
        }
        remaining = cfs_buf_steal(&rb);
    } else if (!cfs_group_phase_ended(g->phase)) {
        /* members held in ready: polled now, they pivot if nothing holds
         * them any more */
        for (size_t i = 0; i < g->n_members; i++)
            if (g->members[i].state == CFS_MEMBER_READY)
                cfs_strv_push(&ready, cfs_xstrdup(g->members[i].disk));
    }
    pthread_cond_broadcast(&e->tree->changed);
    pthread_mutex_unlock(&e->tree->lock);

    for (char **d = ready; d && *d; d++)
        queue_push(e, work_new(WORK_POLL_JOB, dom, *d));
    if (!copy)
        return;
    if (phase == CFS_GROUP_PARTIAL) {
        group_journal_put(e, copy, "partial", NULL);
        log_warn("rmdir %s/snapshots/%s: partially merged: the merge failed on "
                 "%s (the snapshot's layer remains there; rmdir again merges "
                 "only that)", dom, name, remaining && *remaining ? remaining : "-");
    } else {
        journal_close(e, id);
        if (phase == CFS_GROUP_COMPLETED)
            log_info("rmdir %s/snapshots/%s: every disk merged", dom, name);
        else
            log_warn("rmdir %s/snapshots/%s: the merge failed on every disk "
                     "(%s)", dom, name, remaining ? remaining : "-");
    }
    cfs_group_free(copy);
}

bool group_holds(struct cfs_engine *e, const char *group, const char *disk,
                 char ***ready, uint64_t **ready_ids)
{
    bool hold = false;
    size_t n = 0;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_group *g = cfs_tree_find_group(e->tree, group);
    for (size_t i = 0; g && i < g->n_members; i++) {
        const struct cfs_group_member *m = &g->members[i];
        if (cfs_streq(m->disk, disk))
            continue;
        if (m->state == CFS_MEMBER_QUEUED || m->state == CFS_MEMBER_RUNNING)
            hold = true;
    }
    if (!hold && g && ready) {
        *ready_ids = cfs_xcalloc(g->n_members + 1, sizeof(**ready_ids));
        for (size_t i = 0; i < g->n_members; i++)
            if (g->members[i].state == CFS_MEMBER_READY) {
                cfs_strv_push(ready, cfs_xstrdup(g->members[i].disk));
                (*ready_ids)[n++] = g->members[i].job_id;
            }
    }
    pthread_mutex_unlock(&e->tree->lock);
    return hold;
}

/* ---- <dom>/ctl: pivot, abort (design §3.3) ------------------------------------- */

int group_ctl(struct cfs_engine *e, const char *dom, const struct cfs_ctl_cmd *cmd)
{
    if (cmd->op != CFS_CTL_PIVOT && cmd->op != CFS_CTL_ABORT)
        return -ENOSYS;
    const char *op = cfs_ctl_op_to_string(cmd->op);
    _cleanup_free_ char *id = NULL, *name = NULL;
    _cleanup_strv_ char **disks = NULL;
    size_t n = 0;
    uint64_t *ids = NULL;
    enum cfs_member_state *states = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_group *g = cfs_tree_domain_group(e->tree, dom, NULL);
    if (g && !cfs_group_phase_ended(g->phase)) {
        id = cfs_xstrdup(g->id);
        name = cfs_xstrdup(g->snapshot);
        n = g->n_members;
        ids = cfs_xcalloc(n ? n : 1, sizeof(*ids));
        states = cfs_xcalloc(n ? n : 1, sizeof(*states));
        for (size_t i = 0; i < n; i++) {
            cfs_strv_push(&disks, cfs_xstrdup(g->members[i].disk));
            ids[i] = g->members[i].job_id;
            states[i] = g->members[i].state;
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (!id) {
        log_warn("ctl %s: %s refused (%s): no domain-level rmdir is in progress",
                 dom, op, strerror(ENOENT));
        return -ENOENT;
    }

    int r = 0, first_err = 0;
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        if (cmd->op == CFS_CTL_PIVOT) {
            if (states[i] != CFS_MEMBER_READY)
                continue;
            int pr = step_ready(e, dom, disks[i], ids[i], true);
            if (pr == 0)
                done++;
            else if (!first_err)
                first_err = pr;
            continue;
        }
        if (states[i] == CFS_MEMBER_QUEUED) {
            _cleanup_free_ char *why = cfs_xasprintf(
                "the rmdir of %s was aborted through %s/ctl", name, dom);
            if (queue_return_group(e, dom, disks[i], id, why))
                done++;
            continue;
        }
        if (states[i] == CFS_MEMBER_DONE || states[i] == CFS_MEMBER_FAILED)
            continue;
        const struct cfs_ctl_cmd abort_cmd = { .op = CFS_CTL_ABORT };
        int ar = cfs_engine_ctl(e, dom, disks[i], &abort_cmd);
        if (ar == 0)
            done++;
        else if (!first_err)
            first_err = ar;
    }
    free(ids);
    free(states);
    if (done == 0) {
        r = first_err ? first_err : -EAGAIN;
        log_warn("ctl %s: %s of the rmdir of %s refused (%s): %s", dom, op, name,
                 strerror(-r), cmd->op == CFS_CTL_PIVOT && !first_err
                     ? "no disk of the group is ready"
                     : "no disk's merge could be stopped (see each disk's job)");
        return r;
    }
    log_info("ctl %s: %s of the rmdir of %s: %zu disk%s", dom, op, name, done,
             done == 1 ? "" : "s");
    return 0;
}

/* ---- recovery (recover.c calls these) ------------------------------------------ */

void recover_groups_load(struct cfs_engine *e, const struct cfs_journal_entry *v,
                         size_t n, char ***loaded)
{
    for (size_t i = 0; i < n; i++) {
        const struct cfs_journal_entry *en = &v[i];
        if (en->type != CFS_JOB_GROUP)
            continue;
        bool partial = cfs_streq(en->phase, "partial");
        struct cfs_group *g = cfs_xcalloc(1, sizeof(*g));
        *g = (struct cfs_group){
            .id = cfs_xstrdup(en->id),
            .dom = cfs_xstrdup(en->domain),
            .snapshot = cfs_xstrdup(en->snapshot),
            .meta_name = cfs_xstrdup(en->meta_name),
            .started = en->created,
        };
        char *one[2] = { en->disk, NULL };
        char **disks = en->disks ? en->disks : one;
        g->n_members = cfs_strv_len(disks);
        g->members = cfs_xcalloc(g->n_members ? g->n_members : 1, sizeof(*g->members));
        for (size_t k = 0; k < g->n_members; k++) {
            bool remains = cfs_strv_contains(en->remaining, disks[k]);
            /* running: a member with no entry of its own is judged by
             * its chain once the members are loaded (settle) */
            g->members[k] = (struct cfs_group_member){
                .disk = cfs_xstrdup(disks[k]),
                .state = !remains ? CFS_MEMBER_DONE
                         : partial ? CFS_MEMBER_FAILED : CFS_MEMBER_QUEUED,
                .error = remains && partial ? cfs_xstrdup(en->error) : NULL,
            };
        }
        g->phase = cfs_group_phase(g->members, g->n_members);
        if (partial && g->phase != CFS_GROUP_PARTIAL)
            g->phase = CFS_GROUP_PARTIAL; /* as journaled: nothing to redo */
        g->end_recorded = partial;
        if (cfs_group_phase_ended(g->phase))
            g->finished = en->updated;
        pthread_mutex_lock(&e->tree->lock);
        bool have = cfs_tree_find_group(e->tree, en->id) != NULL;
        if (!have) {
            cfs_tree_add_group(e->tree, g, NULL);
            tree_changed(e);
        }
        pthread_mutex_unlock(&e->tree->lock);
        if (have) {
            cfs_group_free(g); /* a reconnect: followed already */
            continue;
        }
        cfs_strv_push(loaded, cfs_xstrdup(en->id));
        log_info("recovery: %s/snapshots/%s: domain-level rmdir (group %s, %s) "
                 "taken up", en->domain, en->snapshot, en->id, en->phase);
    }
}

void recover_groups_settle(struct cfs_engine *e, char **loaded)
{
    _cleanup_strv_ char **touched = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_groups; i++) {
        struct cfs_group *g = e->tree->groups[i];
        /* only the groups this recovery took up: one this daemon runs
         * may have a member not claimed yet */
        if (!cfs_strv_contains(loaded, g->id) ||
            (cfs_group_phase_ended(g->phase) && g->end_recorded))
            continue;
        struct cfs_domain *d = cfs_tree_find_domain(e->tree, g->dom);
        for (size_t k = 0; k < g->n_members; k++) {
            struct cfs_group_member *m = &g->members[k];
            if (m->state != CFS_MEMBER_QUEUED || m->job_id)
                continue;
            struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, g->dom, m->disk);
            bool queued = false;
            for (size_t q = 0; s && q < s->n_queue; q++)
                queued = queued || cfs_streq(s->queue[q].group, g->id);
            bool job = s && cfs_streq(s->job.group, g->id) &&
                       cfs_job_phase_in_progress(s->job.phase);
            if (queued || job)
                continue;
            /* its entry was closed before the daemon stopped, or never
             * written: its chain says whether it merged */
            struct cfs_disk *dk = d ? cfs_domain_find_disk(d, m->disk) : NULL;
            bool remains = dk && cfs_disk_find_snapshot(dk, g->snapshot) >= 0;
            m->state = remains ? CFS_MEMBER_FAILED : CFS_MEMBER_DONE;
            if (remains)
                m->error = cfs_xstrdup("the merge did not complete before chainfs "
                                       "stopped");
            log_info("recovery: %s/%s: member of the rmdir of %s %s", g->dom,
                     m->disk, g->snapshot, remains ? "did not merge (failed)"
                                                   : "had merged");
        }
        enum cfs_group_phase p = cfs_group_phase(g->members, g->n_members);
        if (p != g->phase) {
            g->phase = p;
            if (cfs_group_phase_ended(p)) {
                g->finished = now_s();
                g->end_recorded = false;
            }
        }
        cfs_strv_push(&touched, cfs_xstrdup(g->id));
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (char **t = touched; t && *t; t++)
        group_after_change(e, *t);
}
