/* model.c — the plain values of model.h: enum names, destructors, deep
 * copies and lookups.
 *
 * No shared state. The functions are thread-safe as far as their arguments
 * are: the caller holds whatever lock protects the values it passes. */
#include "chainfs/model.h"
#include "chainfs/util.h"

/* The *_to_string() functions never return NULL: a value outside the enum
 * is "unknown", so a renderer can print the result unconditionally. */

static const char *const dom_state_names[CFS_DOM_STATE_MAX] = {
    [CFS_DOM_SHUTOFF] = "shutoff",
    [CFS_DOM_RUNNING] = "running",
    [CFS_DOM_PAUSED] = "paused",
    [CFS_DOM_OTHER] = "other",
};

static const char *const job_type_names[CFS_JOB_TYPE_MAX] = {
    [CFS_JOB_NONE] = "none",
    [CFS_JOB_SNAPSHOT] = "snapshot",
    [CFS_JOB_COMMIT] = "commit",
    [CFS_JOB_ACTIVE_COMMIT] = "active-commit",
    [CFS_JOB_OFFLINE_COMMIT] = "offline-commit",
};

static const char *const job_state_names[CFS_JOB_STATE_MAX] = {
    [CFS_JOB_STATE_NONE] = "none",
    [CFS_JOB_STATE_RUNNING] = "running",
    [CFS_JOB_STATE_READY] = "ready",
    [CFS_JOB_STATE_PIVOTING] = "pivoting",
    [CFS_JOB_STATE_COMPLETED] = "completed",
    [CFS_JOB_STATE_FAILED] = "failed",
    [CFS_JOB_STATE_CANCELED] = "canceled",
};

static const char *const name_source_names[CFS_NAME_SOURCE_MAX] = {
    [CFS_NAME_NONE] = "-",
    [CFS_NAME_METADATA] = "libvirt-metadata",
    [CFS_NAME_CHAINFS] = "chainfs",
    [CFS_NAME_FILENAME] = "filename",
};

static const char *lookup(const char *const *table, size_t n, int v)
{
    if (v < 0 || (size_t)v >= n || !table[v])
        return "unknown";
    return table[v];
}

const char *cfs_dom_state_to_string(enum cfs_dom_state s)
{
    return lookup(dom_state_names, ELEMENTSOF(dom_state_names), (int)s);
}

const char *cfs_job_type_to_string(enum cfs_job_type t)
{
    return lookup(job_type_names, ELEMENTSOF(job_type_names), (int)t);
}

const char *cfs_job_state_to_string(enum cfs_job_state s)
{
    return lookup(job_state_names, ELEMENTSOF(job_state_names), (int)s);
}

const char *cfs_name_source_to_string(enum cfs_name_source s)
{
    return lookup(name_source_names, ELEMENTSOF(name_source_names), (int)s);
}

bool cfs_job_state_in_progress(enum cfs_job_state s)
{
    return s == CFS_JOB_STATE_RUNNING || s == CFS_JOB_STATE_READY ||
           s == CFS_JOB_STATE_PIVOTING;
}

/* ---- destructors ---------------------------------------------------------- */

void cfs_layer_clear(struct cfs_layer *l)
{
    if (!l)
        return;
    free(l->path);
    free(l->format);
    free(l->meta_name);
    free(l->name);
    *l = (struct cfs_layer){ 0 };
}

void cfs_disk_clear(struct cfs_disk *d)
{
    if (!d)
        return;
    free(d->target);
    for (size_t i = 0; i < d->n_layers; i++)
        cfs_layer_clear(&d->layers[i]);
    free(d->layers);
    *d = (struct cfs_disk){ 0 };
}

struct cfs_domain *cfs_domain_free(struct cfs_domain *d)
{
    if (!d)
        return NULL;
    free(d->name);
    for (size_t i = 0; i < d->n_disks; i++)
        cfs_disk_clear(&d->disks[i]);
    free(d->disks);
    cfs_strv_free(d->snapshots);
    free(d);
    return NULL;
}

void cfs_job_clear(struct cfs_job *j)
{
    if (!j)
        return;
    free(j->snapshot);
    free(j->meta_name);
    free(j->top);
    free(j->base);
    free(j->error);
    free(j->journal_id);
    free(j->leftover);
    *j = (struct cfs_job){ 0 };
}

struct cfs_job *cfs_job_free(struct cfs_job *j)
{
    if (!j)
        return NULL;
    cfs_job_clear(j);
    free(j);
    return NULL;
}

/* ---- deep copies ------------------------------------------------------------ */

static void layer_copy(struct cfs_layer *dst, const struct cfs_layer *src)
{
    *dst = *src;
    dst->path = cfs_xstrdup(src->path);
    dst->format = cfs_xstrdup(src->format);
    dst->meta_name = cfs_xstrdup(src->meta_name);
    dst->name = cfs_xstrdup(src->name);
}

static void disk_copy(struct cfs_disk *dst, const struct cfs_disk *src)
{
    *dst = *src;
    dst->target = cfs_xstrdup(src->target);
    dst->layers = NULL;
    if (src->n_layers == 0 || !src->layers) {
        dst->n_layers = 0;
        return;
    }
    dst->layers = cfs_xcalloc(src->n_layers, sizeof(*dst->layers));
    for (size_t i = 0; i < src->n_layers; i++)
        layer_copy(&dst->layers[i], &src->layers[i]);
}

struct cfs_domain *cfs_domain_dup(const struct cfs_domain *d)
{
    if (!d)
        return NULL;

    struct cfs_domain *n = cfs_xmalloc(sizeof(*n));
    *n = *d;
    n->name = cfs_xstrdup(d->name);
    n->disks = NULL;
    n->snapshots = NULL;
    if (d->n_disks > 0 && d->disks) {
        n->disks = cfs_xcalloc(d->n_disks, sizeof(*n->disks));
        for (size_t i = 0; i < d->n_disks; i++)
            disk_copy(&n->disks[i], &d->disks[i]);
    } else {
        n->n_disks = 0;
    }
    if (d->snapshots) {
        size_t len = cfs_strv_len(d->snapshots);
        n->snapshots = cfs_xcalloc(len + 1, sizeof(char *));
        for (size_t i = 0; i < len; i++)
            n->snapshots[i] = cfs_xstrdup(d->snapshots[i]);
    }
    return n;
}

void cfs_job_copy(struct cfs_job *dst, const struct cfs_job *src)
{
    if (!src) {
        *dst = (struct cfs_job){ 0 };
        return;
    }
    *dst = *src;
    dst->snapshot = cfs_xstrdup(src->snapshot);
    dst->meta_name = cfs_xstrdup(src->meta_name);
    dst->top = cfs_xstrdup(src->top);
    dst->base = cfs_xstrdup(src->base);
    dst->error = cfs_xstrdup(src->error);
    dst->journal_id = cfs_xstrdup(src->journal_id);
    dst->leftover = cfs_xstrdup(src->leftover);
}

/* ---- lookups ------------------------------------------------------------------ */

struct cfs_disk *cfs_domain_find_disk(const struct cfs_domain *d,
                                      const char *target)
{
    if (!d || !target)
        return NULL;
    for (size_t i = 0; i < d->n_disks; i++)
        if (cfs_streq(d->disks[i].target, target))
            return &d->disks[i];
    return NULL;
}

int cfs_disk_find_snapshot(const struct cfs_disk *disk, const char *name)
{
    if (!disk || !name)
        return -1;
    for (size_t i = 0; i < disk->n_layers; i++)
        if (disk->layers[i].name && strcmp(disk->layers[i].name, name) == 0)
            return (int)i;
    return -1;
}

bool cfs_domain_uses_path(const struct cfs_domain *d, const char *path)
{
    if (!d || !path)
        return false;
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t j = 0; j < d->disks[i].n_layers; j++)
            if (cfs_streq(d->disks[i].layers[j].path, path))
                return true;
    return false;
}
