/* merge_plan.c — the direction and grouping of merges (design issue 8,
 * §2.2 and §3.2). Pure: it only reads what it is given. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/merge_plan.h"
#include "chainfs/util.h"

static const char *const mode_names[] = {
    [CFS_MERGE_AUTO] = "auto",
    [CFS_MERGE_COMMIT] = "commit",
    [CFS_MERGE_PULL] = "pull",
};

const char *cfs_merge_mode_to_string(enum cfs_merge_mode m)
{
    if ((unsigned)m >= ELEMENTSOF(mode_names))
        return NULL;
    return mode_names[m];
}

int cfs_merge_mode_from_string(const char *s, enum cfs_merge_mode *out)
{
    if (!s || !out)
        return -EINVAL;
    for (size_t i = 0; i < ELEMENTSOF(mode_names); i++)
        if (strcmp(s, mode_names[i]) == 0) {
            *out = (enum cfs_merge_mode)i;
            return 0;
        }
    return -EINVAL;
}

static const char *const kind_names[] = {
    [CFS_MERGE_KIND_COMMIT] = "commit",
    [CFS_MERGE_KIND_ACTIVE_COMMIT] = "active-commit",
    [CFS_MERGE_KIND_OFFLINE_COMMIT] = "offline-commit",
    [CFS_MERGE_KIND_PULL] = "pull",
    [CFS_MERGE_KIND_OFFLINE_PULL] = "offline-pull",
};

const char *cfs_merge_kind_to_string(enum cfs_merge_kind k)
{
    if ((unsigned)k >= ELEMENTSOF(kind_names))
        return NULL;
    return kind_names[k];
}

/* The one place a plan's kind becomes the engine's job type. */
static const enum cfs_job_type kind_job_types[] = {
    [CFS_MERGE_KIND_COMMIT] = CFS_JOB_COMMIT,
    [CFS_MERGE_KIND_ACTIVE_COMMIT] = CFS_JOB_ACTIVE_COMMIT,
    [CFS_MERGE_KIND_OFFLINE_COMMIT] = CFS_JOB_OFFLINE_COMMIT,
    [CFS_MERGE_KIND_PULL] = CFS_JOB_PULL,
    [CFS_MERGE_KIND_OFFLINE_PULL] = CFS_JOB_OFFLINE_PULL,
};

enum cfs_job_type cfs_merge_kind_job_type(enum cfs_merge_kind k)
{
    if ((unsigned)k >= ELEMENTSOF(kind_job_types))
        return CFS_JOB_NONE;
    return kind_job_types[k];
}

enum cfs_merge_direction cfs_merge_kind_direction(enum cfs_merge_kind k)
{
    switch (k) {
    case CFS_MERGE_KIND_COMMIT:
    case CFS_MERGE_KIND_ACTIVE_COMMIT:
    case CFS_MERGE_KIND_OFFLINE_COMMIT:
        return CFS_DIRECTION_COMMIT;
    case CFS_MERGE_KIND_PULL:
    case CFS_MERGE_KIND_OFFLINE_PULL:
        return CFS_DIRECTION_PULL;
    }
    return CFS_DIRECTION_NONE;
}

/* How a layer is named in a reason. */
static const char *layer_name(const struct cfs_merge_layer *layers, size_t n,
                              size_t i)
{
    if (layers[i].name)
        return layers[i].name;
    return i + 1 == n ? "the base image" : "an unnamed layer";
}

static uint64_t sum_alloc(const struct cfs_merge_layer *layers, size_t from,
                          size_t to)
{
    uint64_t s = 0;
    for (size_t i = from; i <= to; i++) {
        /* saturate: a bogus size must not wrap into a small cost */
        if (UINT64_MAX - s < layers[i].allocation)
            return UINT64_MAX;
        s += layers[i].allocation;
    }
    return s;
}

/* Why the run FIRST..LAST cannot be pulled (caller frees), NULL if it can.
 * A pull writes the active layer, removes layers 1..last+1 and makes the
 * active layer the overlay of snapshot last+1, which keeps its name only
 * through libvirt metadata (§2.5, step 1). */
static char *pull_refusal(const struct cfs_merge_layer *layers, size_t n,
                          size_t first, size_t last)
{
    if (first > 0)
        return cfs_xasprintf("%s is not the active layer and libvirt pulls "
                             "only into the active layer",
                             layer_name(layers, n, first));
    if (last + 2 >= n)
        return cfs_xasprintf("a pull would remove the base image");
    if (!layers[last + 1].snapshot)
        return cfs_xasprintf("a pull would remove %s, which is not a snapshot",
                             layer_name(layers, n, last + 1));
    if (!layers[last + 1].has_metadata)
        return cfs_xasprintf("%s has no libvirt metadata to carry its name",
                             layer_name(layers, n, last + 1));
    return NULL;
}

static void refuse(struct cfs_merge_plan *p, size_t idx, int err, char *why)
{
    p->refused = cfs_xrealloc(p->refused,
                              (p->n_refused + 1) * sizeof(*p->refused));
    p->refused[p->n_refused++] =
        (struct cfs_merge_refusal){ .index = idx, .err = err, .reason = why };
}

/* The job of the run FIRST..LAST (every layer asked, a snapshot, not
 * shared; the layer below not shared). */
static void plan_run(const struct cfs_merge_layer *layers, size_t n,
                     const struct cfs_merge_env *env, size_t first,
                     size_t last, struct cfs_merge_plan *p)
{
    bool running = env->running;
    struct cfs_merge_job j = { .first = first, .last = last };
    char cs[32], ps[32];

    j.bytes_commit = sum_alloc(layers, first, last);
    if (first == 0) {
        /* last + 1 always exists: the base image is never in a run */
        j.bytes_pull = sum_alloc(layers, 1, last + 1);
        j.has_bytes_pull = true;
    }
    cfs_format_size(j.bytes_commit, cs, sizeof(cs));
    cfs_format_size(j.bytes_pull, ps, sizeof(ps));

    /* Overrides of the run's snapshots. The design keeps one per snapshot
     * but a run is one job: `commit` on any of them wins (it is always
     * possible and what chainfs did before issue 8); else `pull` on any of
     * them asks the run to pull. The first (topmost) one names it. */
    const char *commit_by = NULL, *pull_by = NULL;
    for (size_t i = first; i <= last; i++) {
        if (layers[i].mode == CFS_MERGE_COMMIT && !commit_by)
            commit_by = layer_name(layers, n, i);
        if (layers[i].mode == CFS_MERGE_PULL && !pull_by)
            pull_by = layer_name(layers, n, i);
    }

    _cleanup_free_ char *no_pull = pull_refusal(layers, n, first, last);
    /* the chain allows a pull but QEMU must not run one (§7.4) */
    _cleanup_free_ char *off = !no_pull && running && env->no_live_pull
        ? cfs_xasprintf("a live pull is off (%s)", env->no_live_pull) : NULL;
    if (commit_by) {
        j.pull = false;
        j.reason = pull_by
            ? cfs_xasprintf("commit: asked by merge %s commit (merge %s pull "
                            "in the same run is not followed)",
                            commit_by, pull_by)
            : cfs_xasprintf("commit: asked by merge %s commit", commit_by);
    } else if (pull_by && off) {
        j.pull = false;
        j.reason = cfs_xasprintf("commit: merge %s pull cannot run: %s",
                                 pull_by, off);
    } else if (pull_by && !no_pull) {
        /* forced: the cost figures still say what it costs */
        j.pull = true;
        j.reason = cfs_xasprintf("pull: asked by merge %s pull (pull %s, "
                                 "commit %s)", pull_by, ps, cs);
    } else if (pull_by) {
        /* ctl refused this at `merge` time; the chain changed since:
         * §2.2 "at dispatch a pull that no longer applies commits and says
         * why" */
        j.pull = false;
        j.reason = cfs_xasprintf("commit: merge %s pull no longer applies: %s",
                                 pull_by, no_pull);
    } else if (no_pull) {
        j.pull = false;
        j.reason = cfs_xasprintf("commit: %s", no_pull);
    } else if (off && j.bytes_pull < j.bytes_commit) {
        j.pull = false;
        j.reason = cfs_xasprintf("commit: %s; pull %s, commit %s", off, ps, cs);
    } else if (j.bytes_pull < j.bytes_commit) {
        j.pull = true;
        j.reason = cfs_xasprintf("pull: %s < %s", ps, cs);
    } else if (j.bytes_pull == j.bytes_commit) {
        j.pull = false;
        j.reason = cfs_xasprintf("commit: %s = %s (a tie commits)", cs, ps);
    } else {
        j.pull = false;
        j.reason = cfs_xasprintf("commit: %s < %s", cs, ps);
    }

    if (j.pull) {
        j.kind = running ? CFS_MERGE_KIND_PULL : CFS_MERGE_KIND_OFFLINE_PULL;
        j.top = 0;
        j.base = last + 2;
        j.written = 0;
        j.leave_first = 1;
        j.leave_last = last + 1;
    } else {
        j.kind = !running    ? CFS_MERGE_KIND_OFFLINE_COMMIT
                 : first == 0 ? CFS_MERGE_KIND_ACTIVE_COMMIT
                              : CFS_MERGE_KIND_COMMIT;
        j.top = first;
        j.base = last + 1;
        j.written = last + 1;
        j.leave_first = first;
        j.leave_last = last;
    }
    p->jobs = cfs_xrealloc(p->jobs, (p->n_jobs + 1) * sizeof(*p->jobs));
    p->jobs[p->n_jobs++] = j;
}

/* May layers[i] be in a run? If it is asked and may not, *WHY and *ERR say so. */
static bool runnable(const struct cfs_merge_layer *layers, size_t n, size_t i,
                     int *err, char **why)
{
    const struct cfs_merge_layer *l = &layers[i];

    if (!l->asked)
        return false;
    if (i + 1 == n || !l->snapshot) {
        /* dispatch resolved a queued name to a layer that is no snapshot
         * (the base image, or a layer chainfs does not show): nothing of
         * it can be merged; it is not there as a snapshot */
        *err = ENOENT;
        *why = cfs_xasprintf("%s is not a snapshot", layer_name(layers, n, i));
        return false;
    }
    if (l->shared_with) {
        /* the run would remove it from this chain and delete it */
        *err = EBUSY;
        *why = cfs_xasprintf("the snapshot's own layer, %s, is also in the "
                             "chain of %s", layer_name(layers, n, i),
                             l->shared_with);
        return false;
    }
    return true;
}

int cfs_merge_plan(const struct cfs_merge_layer *layers, size_t n,
                   bool running, struct cfs_merge_plan *out)
{
    const struct cfs_merge_env env = { .running = running };
    return cfs_merge_plan_env(layers, n, &env, out);
}

int cfs_merge_plan_env(const struct cfs_merge_layer *layers, size_t n,
                       const struct cfs_merge_env *env,
                       struct cfs_merge_plan *out)
{
    if (!out || !env || (n > 0 && !layers))
        return -EINVAL;

    struct cfs_merge_plan p = {0};
    size_t i = 0;
    while (i < n) {
        int err = 0;
        char *why = NULL;
        if (!runnable(layers, n, i, &err, &why)) {
            if (why)
                refuse(&p, i, err, why);
            i++;
            continue;
        }
        /* a maximal run of adjacent runnable snapshots, i..last */
        size_t first = i, last = i;
        while (last + 1 < n) {
            int e2 = 0;
            char *w2 = NULL;
            if (!runnable(layers, n, last + 1, &e2, &w2)) {
                free(w2); /* refused on its own turn */
                break;
            }
            last++;
        }
        i = last + 1;
        /* Both directions end with layers[last+1] changed: a commit writes
         * it, a pull removes it from the chain. If another chain has it,
         * the bottom snapshot of the run cannot be merged (as rmdir today);
         * the rest of the run still can, into the bottom one's layer,
         * which is not shared (it passed runnable()). */
        const struct cfs_merge_layer *below = &layers[last + 1];
        if (below->shared_with) {
            refuse(&p, last, EBUSY,
                   cfs_xasprintf("the layer to merge into, %s, is also in "
                                 "the chain of %s",
                                 layer_name(layers, n, last + 1),
                                 below->shared_with));
            if (last == first)
                continue;
            last--;
        }
        plan_run(layers, n, env, first, last, &p);
    }
    *out = p;
    return 0;
}

void cfs_merge_plan_clear(struct cfs_merge_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_jobs; i++)
        free(p->jobs[i].reason);
    for (size_t i = 0; i < p->n_refused; i++)
        free(p->refused[i].reason);
    free(p->jobs);
    free(p->refused);
    *p = (struct cfs_merge_plan){0};
}

int cfs_merge_mode_check(const struct cfs_merge_layer *layers, size_t n,
                         size_t idx, enum cfs_merge_mode mode, char **why)
{
    if (!layers || idx >= n || !why)
        return -EINVAL;
    *why = NULL;
    if (!cfs_merge_mode_to_string(mode)) {
        *why = cfs_xasprintf("unknown merge mode");
        return -EINVAL;
    }
    if (idx + 1 == n || !layers[idx].snapshot) {
        *why = cfs_xasprintf("%s is not a snapshot",
                             layer_name(layers, n, idx));
        return -ENOENT;
    }
    if (mode != CFS_MERGE_PULL)
        return 0;
    /* the pull of this snapshot alone: the run idx..idx */
    char *no = pull_refusal(layers, n, idx, idx);
    if (no) {
        *why = cfs_xasprintf("cannot pull %s: %s", layer_name(layers, n, idx),
                             no);
        free(no);
        return -EINVAL;
    }
    return 0;
}
