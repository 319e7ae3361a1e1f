/* tree.c — see tree.h. Domains are kept in a plain array: a host has tens
 * of domains, not millions, and every lookup is a short strcmp walk. */
#include "chainfs/tree.h"

#include <sys/types.h>

#include "chainfs/log.h"
#include "chainfs/names.h"
#include "chainfs/nodes.h"
#include "chainfs/util.h"

struct cfs_tree *cfs_tree_new(void)
{
    struct cfs_tree *t = cfs_xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->changed, &ca);
    pthread_condattr_destroy(&ca);
    return t;
}

void cfs_queued_clear(struct cfs_queued *q)
{
    free(q->snapshot);
    free(q->meta_name);
    free(q->top);
    cfs_file_id_clear(&q->top_id);
    free(q->base);
    free(q->journal_id);
    free(q->waiting);
    free(q->group);
    *q = (struct cfs_queued){0};
}

void cfs_reader_clear(struct cfs_reader *r)
{
    free(r->snapshot);
    for (size_t i = 0; i < r->n_files; i++) {
        cfs_file_id_clear(&r->ids[i]);
        free(r->paths[i]);
    }
    free(r->ids);
    free(r->paths);
    free(r->comm);
    *r = (struct cfs_reader){0};
}

void cfs_returned_clear(struct cfs_returned *r)
{
    free(r->snapshot);
    free(r->reason);
    *r = (struct cfs_returned){0};
}

static void disk_state_free(struct cfs_disk_state *s)
{
    if (!s)
        return;
    free(s->dom);
    free(s->disk);
    cfs_job_clear(&s->job);
    cfs_strv_free(s->partial_tops);
    for (size_t i = 0; i < s->n_queue; i++)
        cfs_queued_clear(&s->queue[i]);
    free(s->queue);
    for (size_t i = 0; i < s->n_returned; i++)
        cfs_returned_clear(&s->returned[i]);
    free(s->returned);
    for (size_t i = 0; i < s->n_readers; i++)
        cfs_reader_clear(&s->readers[i]);
    free(s->readers);
    cfs_strv_free(s->settings.merge_commit);
    cfs_strv_free(s->settings.merge_pull);
    free(s);
}

struct cfs_tree *cfs_tree_free(struct cfs_tree *t)
{
    if (!t)
        return NULL;
    for (size_t i = 0; i < t->n_doms; i++)
        cfs_domain_free(t->doms[i]);
    free(t->doms);
    for (size_t i = 0; i < t->n_states; i++)
        disk_state_free(t->states[i]);
    free(t->states);
    for (size_t i = 0; i < t->n_groups; i++)
        cfs_group_free(t->groups[i]);
    free(t->groups);
    for (size_t i = 0; i < t->n_thaws; i++) {
        free(t->thaws[i].dom);
        free(t->thaws[i].error);
        cfs_strv_free(t->thaws[i].journal_ids);
    }
    free(t->thaws);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->changed);
    free(t);
    return NULL;
}

static ssize_t find_index(struct cfs_tree *t, const char *name)
{
    for (size_t i = 0; i < t->n_doms; i++)
        if (strcmp(t->doms[i]->name, name) == 0)
            return (ssize_t)i;
    return -1;
}

struct cfs_domain *cfs_tree_find_domain(struct cfs_tree *t, const char *name)
{
    ssize_t i = find_index(t, name);
    return i < 0 ? NULL : t->doms[i];
}

static bool layer_equal(const struct cfs_layer *a, const struct cfs_layer *b)
{
    return cfs_streq(a->path, b->path) && cfs_streq(a->format, b->format) &&
           a->index == b->index && a->id.known == b->id.known &&
           a->id.dev == b->id.dev && a->id.ino == b->id.ino &&
           cfs_streq(a->id.canonical, b->id.canonical) &&
           a->is_block == b->is_block && a->virtual_size == b->virtual_size &&
           a->allocation == b->allocation && a->physical == b->physical &&
           cfs_streq(a->meta_name, b->meta_name) &&
           cfs_streq(a->name, b->name) && a->name_source == b->name_source;
}

static bool disk_equal(const struct cfs_disk *a, const struct cfs_disk *b)
{
    if (!cfs_streq(a->target, b->target) || a->readonly != b->readonly ||
        a->shareable != b->shareable || a->is_block != b->is_block ||
        a->n_layers != b->n_layers)
        return false;
    for (size_t i = 0; i < a->n_layers; i++)
        if (!layer_equal(&a->layers[i], &b->layers[i]))
            return false;
    return true;
}

static bool domain_equal(const struct cfs_domain *a, const struct cfs_domain *b)
{
    if (!cfs_streq(a->name, b->name) || strcmp(a->uuid, b->uuid) != 0 ||
        a->state != b->state || a->persistent != b->persistent ||
        a->n_disks != b->n_disks)
        return false;
    for (size_t i = 0; i < a->n_disks; i++)
        if (!disk_equal(&a->disks[i], &b->disks[i]))
            return false;
    size_t na = cfs_strv_len(a->snapshots), nb = cfs_strv_len(b->snapshots);
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!cfs_streq(a->snapshots[i], b->snapshots[i]))
            return false;
    return true;
}

bool cfs_tree_own_name(struct cfs_tree *t, const char *name)
{
    if (!cfs_streq(name, CFS_OWN_DIR))
        return false;
    if (!t->own_name_logged)
        log_warn("domain %s is not shown: the name is chainfs's own "
                 "directory at the mount's root (metrics)", name);
    t->own_name_logged = true;
    return true;
}

bool cfs_tree_put_domain(struct cfs_tree *t, struct cfs_domain *d)
{
    /* issue 11: the root's entry of that name is chainfs's own
     * directory; a domain libvirt lets be called so is not shown */
    if (cfs_tree_own_name(t, d->name)) {
        cfs_domain_free(d);
        return false;
    }
    cfs_domain_resolve_names(d);
    ssize_t i = find_index(t, d->name);
    if (i >= 0) {
        /* the engine's mark outlives a re-read; the engine clears it */
        d->not_responding = t->doms[i]->not_responding;
        bool same = domain_equal(t->doms[i], d);
        cfs_domain_free(t->doms[i]);
        t->doms[i] = d;
        if (!same)
            t->generation++;
        return !same;
    }
    t->doms = cfs_xrealloc(t->doms, (t->n_doms + 1) * sizeof(*t->doms));
    t->doms[t->n_doms++] = d;
    t->generation++;
    return true;
}

bool cfs_tree_remove_domain(struct cfs_tree *t, const char *name)
{
    ssize_t i = find_index(t, name);
    if (i < 0)
        return false;
    cfs_domain_free(t->doms[i]);
    memmove(&t->doms[i], &t->doms[i + 1],
            (t->n_doms - (size_t)i - 1) * sizeof(*t->doms));
    t->n_doms--;
    t->generation++;
    return true;
}

struct cfs_disk_state *cfs_tree_find_disk_state(struct cfs_tree *t,
                                                const char *dom,
                                                const char *disk)
{
    for (size_t i = 0; i < t->n_states; i++)
        if (strcmp(t->states[i]->dom, dom) == 0 &&
            strcmp(t->states[i]->disk, disk) == 0)
            return t->states[i];
    return NULL;
}

struct cfs_disk_state *cfs_tree_disk_state(struct cfs_tree *t, const char *dom,
                                           const char *disk)
{
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, dom, disk);
    if (s)
        return s;
    s = cfs_xcalloc(1, sizeof(*s));
    s->dom = cfs_xstrdup(dom);
    s->disk = cfs_xstrdup(disk);
    t->states = cfs_xrealloc(t->states, (t->n_states + 1) * sizeof(*t->states));
    t->states[t->n_states++] = s;
    return s;
}

const struct cfs_disk *cfs_tree_file_user(struct cfs_tree *t,
                                          const struct cfs_file_id *id,
                                          const char *path,
                                          const char *except_dom,
                                          const char *except_disk,
                                          const struct cfs_domain **dom_out)
{
    for (size_t i = 0; i < t->n_doms; i++) {
        bool self = except_dom && strcmp(t->doms[i]->name, except_dom) == 0;
        const struct cfs_disk *dk = cfs_domain_file_user(
            t->doms[i], id, path, self ? except_disk : NULL);
        if (dk && !(self && !except_disk)) {
            if (dom_out)
                *dom_out = t->doms[i];
            return dk;
        }
    }
    return NULL;
}

/* ---- job groups (issue 10 §3.2) ------------------------------------------------ */

static const char *const member_state_names[CFS_MEMBER_STATE_MAX] = {
    [CFS_MEMBER_QUEUED] = "queued",
    [CFS_MEMBER_RUNNING] = "running",
    [CFS_MEMBER_READY] = "ready",
    [CFS_MEMBER_PIVOTING] = "pivoting",
    [CFS_MEMBER_DONE] = "done",
    [CFS_MEMBER_FAILED] = "failed",
};

static const char *const group_phase_names[CFS_GROUP_PHASE_MAX] = {
    [CFS_GROUP_RUNNING] = "running",
    [CFS_GROUP_PIVOTING] = "pivoting",
    [CFS_GROUP_COMPLETED] = "completed",
    [CFS_GROUP_PARTIAL] = "partial",
    [CFS_GROUP_FAILED] = "failed",
};

const char *cfs_member_state_to_string(enum cfs_member_state s)
{
    return (unsigned)s < CFS_MEMBER_STATE_MAX ? member_state_names[s] : "unknown";
}

const char *cfs_group_phase_to_string(enum cfs_group_phase p)
{
    return (unsigned)p < CFS_GROUP_PHASE_MAX ? group_phase_names[p] : "unknown";
}

enum cfs_group_phase cfs_group_phase(const struct cfs_group_member *m, size_t n)
{
    size_t done = 0, failed = 0;
    bool pivoting = false;
    for (size_t i = 0; i < n; i++) {
        if (m[i].state == CFS_MEMBER_DONE)
            done++;
        else if (m[i].state == CFS_MEMBER_FAILED)
            failed++;
        else if (m[i].state == CFS_MEMBER_PIVOTING)
            pivoting = true;
    }
    if (done + failed < n)
        return pivoting ? CFS_GROUP_PIVOTING : CFS_GROUP_RUNNING;
    if (failed == 0)
        return CFS_GROUP_COMPLETED;
    return done == 0 ? CFS_GROUP_FAILED : CFS_GROUP_PARTIAL;
}

enum cfs_member_state cfs_member_state_of_phase(enum cfs_job_phase p)
{
    switch (p) {
    case CFS_PHASE_NONE:
        return CFS_MEMBER_QUEUED;
    case CFS_PHASE_READY:
        return CFS_MEMBER_READY;
    case CFS_PHASE_PIVOTING:
        return CFS_MEMBER_PIVOTING;
    case CFS_PHASE_COMPLETED:
        return CFS_MEMBER_DONE;
    case CFS_PHASE_FAILED:
    case CFS_PHASE_CANCELED:
        return CFS_MEMBER_FAILED;
    default:
        return CFS_MEMBER_RUNNING; /* starting, running, finishing, cleanup */
    }
}

struct cfs_group *cfs_group_free(struct cfs_group *g)
{
    if (!g)
        return NULL;
    free(g->id);
    free(g->dom);
    free(g->snapshot);
    free(g->meta_name);
    for (size_t i = 0; i < g->n_members; i++) {
        free(g->members[i].disk);
        free(g->members[i].error);
    }
    free(g->members);
    free(g);
    return NULL;
}

struct cfs_group_member *cfs_group_find_member(struct cfs_group *g,
                                               const char *disk)
{
    for (size_t i = 0; g && disk && i < g->n_members; i++)
        if (strcmp(g->members[i].disk, disk) == 0)
            return &g->members[i];
    return NULL;
}

void cfs_tree_add_group(struct cfs_tree *t, struct cfs_group *g, char **old_id)
{
    if (old_id)
        *old_id = NULL;
    for (size_t i = 0; i < t->n_groups;) {
        struct cfs_group *o = t->groups[i];
        bool same = cfs_streq(o->dom, g->dom) && cfs_streq(o->snapshot, g->snapshot);
        /* a group of the domain that completed or failed is of no more
         * use once a newer one is shown (a partial one is: its snapshot's
         * info says so) */
        bool done = cfs_streq(o->dom, g->dom) &&
                    (o->phase == CFS_GROUP_COMPLETED || o->phase == CFS_GROUP_FAILED);
        if (!same && !done) {
            i++;
            continue;
        }
        if (same && old_id && !*old_id)
            *old_id = TAKE_PTR(o->id);
        cfs_group_free(o);
        memmove(&t->groups[i], &t->groups[i + 1],
                (t->n_groups - i - 1) * sizeof(*t->groups));
        t->n_groups--;
    }
    t->groups = cfs_xrealloc(t->groups, (t->n_groups + 1) * sizeof(*t->groups));
    t->groups[t->n_groups++] = g;
    t->generation++;
}

struct cfs_group *cfs_tree_find_group(struct cfs_tree *t, const char *id)
{
    for (size_t i = 0; id && i < t->n_groups; i++)
        if (cfs_streq(t->groups[i]->id, id))
            return t->groups[i];
    return NULL;
}

struct cfs_group *cfs_tree_domain_group(struct cfs_tree *t, const char *dom,
                                        const char *name)
{
    for (size_t i = t->n_groups; i > 0; i--) {
        struct cfs_group *g = t->groups[i - 1];
        if (cfs_streq(g->dom, dom) && (!name || cfs_streq(g->snapshot, name)))
            return g;
    }
    return NULL;
}

void cfs_tree_remove_group(struct cfs_tree *t, const char *id)
{
    for (size_t i = 0; id && i < t->n_groups; i++)
        if (cfs_streq(t->groups[i]->id, id)) {
            cfs_group_free(t->groups[i]);
            memmove(&t->groups[i], &t->groups[i + 1],
                    (t->n_groups - i - 1) * sizeof(*t->groups));
            t->n_groups--;
            t->generation++;
            return;
        }
}

struct cfs_thaw_owed *cfs_tree_find_thaw(struct cfs_tree *t, const char *dom)
{
    for (size_t i = 0; dom && i < t->n_thaws; i++)
        if (strcmp(t->thaws[i].dom, dom) == 0)
            return &t->thaws[i];
    return NULL;
}

struct cfs_thaw_owed *cfs_tree_owe_thaw(struct cfs_tree *t, const char *dom,
                                        int64_t since, const char *error)
{
    struct cfs_thaw_owed *o = cfs_tree_find_thaw(t, dom);
    if (!o) {
        t->thaws = cfs_xrealloc(t->thaws, (t->n_thaws + 1) * sizeof(*t->thaws));
        o = &t->thaws[t->n_thaws++];
        *o = (struct cfs_thaw_owed){ .dom = cfs_xstrdup(dom), .since = since };
    }
    if (error) {
        free(o->error);
        o->error = cfs_xstrdup(error);
    }
    t->generation++;
    return o;
}

bool cfs_tree_drop_thaw(struct cfs_tree *t, const char *dom,
                        char ***journal_ids)
{
    struct cfs_thaw_owed *o = cfs_tree_find_thaw(t, dom);
    if (!o)
        return false;
    if (journal_ids)
        *journal_ids = TAKE_PTR(o->journal_ids);
    cfs_strv_free(o->journal_ids);
    free(o->dom);
    free(o->error);
    *o = t->thaws[--t->n_thaws];
    if (t->n_thaws == 0) {
        free(t->thaws);
        t->thaws = NULL;
    }
    t->generation++;
    return true;
}
