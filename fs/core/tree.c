/* tree.c — see tree.h. Domains and disk states are kept in plain
 * arrays (readers walk them), each with a hash index by name, and a file
 * index answers "who uses this file" (issue 12 §2.5): a host may have a
 * thousand domains, and no lookup walks them all. */
#include "chainfs/tree.h"

#include <inttypes.h>
#include <stdio.h>
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
    t->dom_index = cfs_strmap_new();
    t->state_index = cfs_strmap_new();
    t->file_index = cfs_strmap_new();
    return t;
}

/* ---- indexes ---------------------------------------------------------------- */

static inline void *pos_value(size_t i) { return (void *)(uintptr_t)(i + 1); }
static inline ssize_t value_pos(void *v) { return v ? (ssize_t)((uintptr_t)v - 1) : -1; }

/* The users of one file key: (domain, disk) per layer that has it. */
struct file_ref {
    const struct cfs_domain *d;
    size_t disk;
};
struct file_refs {
    size_t n, cap;
    struct file_ref *v;
};

static void file_refs_free(void *p)
{
    struct file_refs *r = p;
    if (r)
        free(r->v);
    free(r);
}

/* The keys under which a layer (or a looked-up file) is indexed, so that
 * every pair cfs_file_same() calls the same file shares one: "i:" dev:ino
 * when known; "r:" the path as given; "c:" the canonical path and "c:"
 * the folded path (cfs_file_same compares either spelling of one side
 * with either of the other's). Returns the number of keys set in K (up
 * to 4; caller frees them). */
static size_t file_keys(const struct cfs_file_id *id, const char *path,
                        char *k[4])
{
    size_t n = 0;
    if (id && id->known)
        k[n++] = cfs_xasprintf("i:%" PRIu64 ":%" PRIu64, id->dev, id->ino);
    if (path) {
        _cleanup_free_ char *fold = cfs_path_fold(path);
        k[n++] = cfs_xasprintf("r:%s", path);
        if (id && id->canonical && !cfs_streq(id->canonical, fold))
            k[n++] = cfs_xasprintf("c:%s", id->canonical);
        k[n++] = cfs_xasprintf("c:%s", fold);
    }
    return n;
}

static void file_index_domain(struct cfs_tree *t, const struct cfs_domain *d,
                              bool add)
{
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t l = 0; l < d->disks[i].n_layers; l++) {
            const struct cfs_layer *ly = &d->disks[i].layers[l];
            char *k[4];
            size_t nk = file_keys(&ly->id, ly->path, k);
            for (size_t j = 0; j < nk; j++) {
                struct file_refs *r = cfs_strmap_get(t->file_index, k[j]);
                if (add) {
                    if (!r) {
                        r = cfs_xcalloc(1, sizeof(*r));
                        cfs_strmap_put(t->file_index, k[j], r);
                    }
                    if (r->n && r->v[r->n - 1].d == d && r->v[r->n - 1].disk == i) {
                        free(k[j]);
                        continue; /* the same disk's other layer, same file */
                    }
                    if (r->n == r->cap) {
                        r->cap = r->cap ? 2 * r->cap : 2;
                        r->v = cfs_xrealloc(r->v, r->cap * sizeof(*r->v));
                    }
                    r->v[r->n++] = (struct file_ref){ d, i };
                } else if (r) {
                    for (size_t m = 0; m < r->n;) {
                        if (r->v[m].d == d)
                            r->v[m] = r->v[--r->n];
                        else
                            m++;
                    }
                    if (!r->n)
                        file_refs_free(cfs_strmap_del(t->file_index, k[j]));
                }
                free(k[j]);
            }
        }
}

static char *state_key(const char *dom, const char *disk)
{
    return cfs_xasprintf("s:%s\x1f%s", dom, disk);
}

/* The state index also lists, under "d:" DOM, the disks of DOM that
 * have a state (a NULL-terminated vector): forgetting a domain finds
 * its states without a walk over all of them. */
static char ***dom_disks(struct cfs_tree *t, const char *dom, bool create)
{
    _cleanup_free_ char *k = cfs_xasprintf("d:%s", dom);
    char ***v = cfs_strmap_get(t->state_index, k);
    if (!v && create) {
        v = cfs_xcalloc(1, sizeof(*v));
        cfs_strmap_put(t->state_index, k, v);
    }
    return v;
}

static void dom_disks_drop(struct cfs_tree *t, const char *dom)
{
    _cleanup_free_ char *k = cfs_xasprintf("d:%s", dom);
    char ***v = cfs_strmap_del(t->state_index, k);
    if (v)
        cfs_strv_free(*v);
    free(v);
}

/* Free the state index's values: positions are not pointers. */
static void state_index_value_free(void *opaque, const char *key, void *value)
{
    (void)opaque;
    if (key[0] == 'd') {
        char ***v = value;
        cfs_strv_free(*v);
        free(v);
    }
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
    cfs_strmap_free(t->dom_index, NULL);
    cfs_strmap_each(t->state_index, state_index_value_free, NULL);
    cfs_strmap_free(t->state_index, NULL);
    cfs_strmap_free(t->file_index, file_refs_free);
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
    return value_pos(cfs_strmap_get(t->dom_index, name));
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
        file_index_domain(t, t->doms[i], false);
        cfs_domain_free(t->doms[i]);
        t->doms[i] = d;
        file_index_domain(t, d, true);
        if (!same)
            t->generation++;
        return !same;
    }
    t->doms = cfs_xrealloc(t->doms, (t->n_doms + 1) * sizeof(*t->doms));
    cfs_strmap_put(t->dom_index, d->name, pos_value(t->n_doms));
    t->doms[t->n_doms++] = d;
    file_index_domain(t, d, true);
    t->generation++;
    return true;
}

bool cfs_tree_remove_domain(struct cfs_tree *t, const char *name)
{
    ssize_t i = find_index(t, name);
    if (i < 0)
        return false;
    file_index_domain(t, t->doms[i], false);
    cfs_strmap_del(t->dom_index, name);
    cfs_domain_free(t->doms[i]);
    t->doms[i] = t->doms[--t->n_doms];
    if ((size_t)i < t->n_doms)
        cfs_strmap_put(t->dom_index, t->doms[i]->name, pos_value((size_t)i));
    if (!t->n_doms) {
        free(t->doms);
        t->doms = NULL;
    }
    t->generation++;
    return true;
}

struct cfs_disk_state *cfs_tree_find_disk_state(struct cfs_tree *t,
                                                const char *dom,
                                                const char *disk)
{
    _cleanup_free_ char *k = state_key(dom, disk);
    ssize_t i = value_pos(cfs_strmap_get(t->state_index, k));
    return i < 0 ? NULL : t->states[i];
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
    _cleanup_free_ char *k = state_key(dom, disk);
    cfs_strmap_put(t->state_index, k, pos_value(t->n_states));
    t->states[t->n_states++] = s;
    cfs_strv_push(dom_disks(t, dom, true), cfs_xstrdup(disk));
    return s;
}

/* A disk state that holds nothing but history: no job in progress, no
 * queued or returned rmdir, no reader, nothing a failed merge left to
 * clean, and no setting of the user's (`pivot manual`, `merge NAME ...`:
 * a transient domain that shuts off and starts again, or a domain
 * defined again, keeps them, and the saved settings are written from
 * these states). */
static bool disk_state_idle(const struct cfs_disk_state *s)
{
    return !cfs_job_phase_in_progress(s->job.phase) &&
           s->external.type == CFS_JOB_NONE && !s->n_queue &&
           !s->n_returned && !s->n_readers && !s->queue_waits_reader &&
           !s->partial_tops && !s->settings.pivot_manual &&
           !s->settings.merge_commit && !s->settings.merge_pull;
}

bool cfs_tree_forget_domain(struct cfs_tree *t, const char *name)
{
    bool all = true;
    char ***disks = dom_disks(t, name, false);
    _cleanup_strv_ char **kept = NULL;
    for (char **dk = disks ? *disks : NULL; dk && *dk; dk++) {
        _cleanup_free_ char *k = state_key(name, *dk);
        ssize_t i = value_pos(cfs_strmap_get(t->state_index, k));
        if (i < 0)
            continue;
        struct cfs_disk_state *s = t->states[i];
        if (!disk_state_idle(s)) {
            all = false;
            cfs_strv_push(&kept, cfs_xstrdup(*dk));
            continue;
        }
        cfs_strmap_del(t->state_index, k);
        disk_state_free(s);
        t->states[i] = t->states[--t->n_states];
        if ((size_t)i < t->n_states) {
            _cleanup_free_ char *k2 = state_key(t->states[i]->dom, t->states[i]->disk);
            cfs_strmap_put(t->state_index, k2, pos_value((size_t)i));
        }
    }
    dom_disks_drop(t, name);
    for (char **dk = kept; dk && *dk; dk++)
        cfs_strv_push(dom_disks(t, name, true), cfs_xstrdup(*dk));
    if (!t->n_states) {
        free(t->states);
        t->states = NULL;
    }
    for (size_t i = 0; i < t->n_groups;) {
        struct cfs_group *g = t->groups[i];
        if (!cfs_streq(g->dom, name)) {
            i++;
            continue;
        }
        if (!cfs_group_phase_ended(g->phase)) {
            all = false;
            i++;
            continue;
        }
        cfs_group_free(g);
        memmove(&t->groups[i], &t->groups[i + 1],
                (t->n_groups - i - 1) * sizeof(*t->groups));
        t->n_groups--;
    }
    if (cfs_tree_find_thaw(t, name))
        all = false;
    return all;
}

const struct cfs_disk *cfs_tree_file_user(struct cfs_tree *t,
                                          const struct cfs_file_id *id,
                                          const char *path,
                                          const char *except_dom,
                                          const char *except_disk,
                                          const struct cfs_domain **dom_out)
{
    /* the candidates from the index, each checked by cfs_file_same's
     * own rule; of those, the first in the order a walk over doms and
     * their disks would meet them */
    char *k[4];
    size_t nk = file_keys(id, path, k);
    ssize_t best_dom = -1;
    size_t best_disk = 0;
    for (size_t j = 0; j < nk; j++) {
        const struct file_refs *r = cfs_strmap_get(t->file_index, k[j]);
        for (size_t m = 0; r && m < r->n; m++) {
            const struct cfs_domain *d = r->v[m].d;
            size_t di = r->v[m].disk;
            ssize_t pos = find_index(t, d->name);
            if (pos < 0 || t->doms[pos] != d)
                continue;
            if (best_dom >= 0 && (pos > best_dom || (pos == best_dom && di >= best_disk)))
                continue;
            bool self = except_dom && strcmp(d->name, except_dom) == 0;
            if (self && (!except_disk || cfs_streq(d->disks[di].target, except_disk)))
                continue;
            if (cfs_disk_find_file(&d->disks[di], id, path) < 0)
                continue;
            best_dom = pos;
            best_disk = di;
        }
    }
    for (size_t j = 0; j < nk; j++)
        free(k[j]);
    if (best_dom < 0)
        return NULL;
    if (dom_out)
        *dom_out = t->doms[best_dom];
    return &t->doms[best_dom]->disks[best_disk];
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
