/* model.c — the plain values of model.h: enum names, destructors, deep
 * copies, lookups, and which file a path is (cfs_file_same(): the one
 * same-file test; cfs_domain_identify(): the one place that asks the
 * local file system).
 *
 * No shared state. The functions are thread-safe as far as their arguments
 * are: the caller holds whatever lock protects the values it passes. */
#include "chainfs/model.h"

#include <stdlib.h>
#include <sys/stat.h>

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
    [CFS_JOB_PULL] = "pull",
    [CFS_JOB_COPY] = "copy",
    [CFS_JOB_BACKUP] = "backup",
    [CFS_JOB_UNKNOWN] = "unknown",
    [CFS_JOB_OFFLINE_PULL] = "offline-pull",
    [CFS_JOB_RMDIR] = "rmdir",
    [CFS_JOB_REVERT] = "revert",
    [CFS_JOB_GROUP] = "group",
};

static const char *const merge_direction_names[CFS_DIRECTION_MAX] = {
    [CFS_DIRECTION_NONE] = "none",
    [CFS_DIRECTION_COMMIT] = "commit",
    [CFS_DIRECTION_PULL] = "pull",
};

static const char *const copy_mode_names[CFS_COPY_MODE_MAX] = {
    [CFS_COPY_NONE] = "none",
    [CFS_COPY_DEFAULT] = "default",
    [CFS_COPY_FLATTEN] = "flatten",
    [CFS_COPY_SHALLOW] = "shallow",
    [CFS_COPY_CHAIN] = "chain",
};

const char *cfs_copy_mode_to_string(enum cfs_copy_mode m)
{
    if ((int)m < 0 || m >= CFS_COPY_MODE_MAX)
        return "unknown";
    return copy_mode_names[m];
}

enum cfs_copy_mode cfs_copy_mode_from_string(const char *s)
{
    for (int i = CFS_COPY_FLATTEN; s && i < CFS_COPY_MODE_MAX; i++)
        if (strcmp(s, copy_mode_names[i]) == 0)
            return (enum cfs_copy_mode)i;
    return CFS_COPY_MODE_MAX;
}

static const char *const job_phase_names[CFS_PHASE_MAX] = {
    [CFS_PHASE_NONE] = "none",
    [CFS_PHASE_STARTING] = "starting",
    [CFS_PHASE_RUNNING] = "running",
    [CFS_PHASE_READY] = "ready",
    [CFS_PHASE_PIVOTING] = "pivoting",
    [CFS_PHASE_FINISHING] = "finishing",
    [CFS_PHASE_CLEANUP] = "cleanup",
    [CFS_PHASE_COMPLETED] = "completed",
    [CFS_PHASE_FAILED] = "failed",
    [CFS_PHASE_CANCELED] = "canceled",
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

const char *cfs_job_phase_to_string(enum cfs_job_phase s)
{
    return lookup(job_phase_names, ELEMENTSOF(job_phase_names), (int)s);
}

const char *cfs_name_source_to_string(enum cfs_name_source s)
{
    return lookup(name_source_names, ELEMENTSOF(name_source_names), (int)s);
}

const char *cfs_merge_direction_to_string(enum cfs_merge_direction d)
{
    return lookup(merge_direction_names, ELEMENTSOF(merge_direction_names),
                  (int)d);
}

enum cfs_merge_direction cfs_merge_direction_from_string(const char *s)
{
    /* "none" is not a direction one stores: absent means none */
    for (int i = CFS_DIRECTION_NONE + 1; i < CFS_DIRECTION_MAX; i++)
        if (cfs_streq(merge_direction_names[i], s))
            return (enum cfs_merge_direction)i;
    return CFS_DIRECTION_MAX;
}

enum cfs_job_type cfs_job_type_from_string(const char *s)
{
    for (int i = CFS_JOB_NONE + 1; i < CFS_JOB_TYPE_MAX; i++)
        if (cfs_streq(job_type_names[i], s))
            return (enum cfs_job_type)i;
    return CFS_JOB_TYPE_MAX;
}

bool cfs_job_phase_in_progress(enum cfs_job_phase s)
{
    return s == CFS_PHASE_STARTING || s == CFS_PHASE_RUNNING ||
           s == CFS_PHASE_READY || s == CFS_PHASE_PIVOTING ||
           s == CFS_PHASE_FINISHING || s == CFS_PHASE_CLEANUP;
}

enum cfs_job_phase cfs_job_phase_from_string(const char *s)
{
    for (int i = 0; i < CFS_PHASE_MAX; i++)
        if (cfs_streq(job_phase_names[i], s))
            return (enum cfs_job_phase)i;
    return CFS_PHASE_MAX;
}

/* The allowed edges (job.c's top comment draws them). A new job is born
 * in NONE; the terminal phases have no way out (the next job is a new
 * one). */
#define E(f, t) [CFS_PHASE_##f][CFS_PHASE_##t] = true
static const bool phase_edges[CFS_PHASE_MAX][CFS_PHASE_MAX] = {
    E(NONE, STARTING),        /* mkdir or rmdir claimed the disk */
    E(NONE, FAILED),          /* a refusal, recorded as a failed job */
    E(STARTING, RUNNING),     /* libvirt accepted the commit */
    E(STARTING, COMPLETED),   /* the snapshot was taken */
    E(STARTING, CLEANUP),     /* recovery: the merge is over already */
    E(STARTING, FAILED),      /* refused, or never started */
    E(RUNNING, READY),        /* active commit: all copied, mirroring */
    E(RUNNING, CLEANUP),      /* intermediate/offline: libvirt is done */
    E(RUNNING, FAILED),
    E(RUNNING, CANCELED),
    E(READY, PIVOTING),       /* pivot asked of libvirt */
    E(READY, CLEANUP),        /* the job ended with TOP out of the chain */
    E(READY, FAILED),
    E(READY, CANCELED),       /* abort: the mirror ends, the chain stays */
    E(PIVOTING, READY),       /* not ready after all, or refused: retried */
    E(PIVOTING, CLEANUP),     /* pivoted: TOP left the chain */
    E(PIVOTING, FAILED),
    E(PIVOTING, CANCELED),    /* an abort libvirt accepted while a pivot was
                                 being asked for: the pivot then fails and
                                 the job was canceled */
    E(READY, FINISHING),      /* copy: `finish` asked (journal first) */
    E(FINISHING, CLEANUP),    /* libvirt has no job and DEST is not in the
                                 live chain: judge DEST (qemu-img check) */
    E(FINISHING, FAILED),     /* the abort failed and the job is gone, or
                                 DEST is still in the chain */
    E(CLEANUP, COMPLETED),
    E(CLEANUP, FAILED),       /* the domain or disk went away meanwhile */
};
#undef E

bool cfs_job_phase_edge_allowed(enum cfs_job_phase from, enum cfs_job_phase to)
{
    if ((int)from < 0 || from >= CFS_PHASE_MAX || (int)to < 0 || to >= CFS_PHASE_MAX)
        return false;
    return phase_edges[from][to];
}

/* The kinds of job (rows: enum cfs_job_type; docs/design/issue8.md §1.3,
 * §2.3 for pull, offline-pull and copy). */
static const struct cfs_job_kind job_kinds[CFS_JOB_TYPE_MAX] = {
    [CFS_JOB_NONE] = { .type = CFS_JOB_NONE, .starts = "-" },
    [CFS_JOB_SNAPSHOT] = {
        .type = CFS_JOB_SNAPSHOT, .chainfs = true,
        .starts = "mkdir: an external disk-only snapshot (snapshot_create)",
    },
    [CFS_JOB_COMMIT] = {
        .type = CFS_JOB_COMMIT, .chainfs = true, .block_job = true,
        .merge = true, .abortable = true,
        .starts = "rmdir of a lower layer: a live block commit",
    },
    [CFS_JOB_ACTIVE_COMMIT] = {
        .type = CFS_JOB_ACTIVE_COMMIT, .chainfs = true, .block_job = true,
        .merge = true, .has_ready = true, .abortable = true,
        .starts = "rmdir of the active layer: a live active commit + pivot",
    },
    [CFS_JOB_OFFLINE_COMMIT] = {
        .type = CFS_JOB_OFFLINE_COMMIT, .chainfs = true, .merge = true,
        .starts = "rmdir on a shut-off domain: qemu-img commit in a thread",
    },
    [CFS_JOB_PULL] = {
        .type = CFS_JOB_PULL, .chainfs = true, .block_job = true,
        .merge = true, .abortable = true,
        .starts = "rmdir of the active layer when pulling copies less: "
                  "a live block pull (forward merge)",
    },
    [CFS_JOB_OFFLINE_PULL] = {
        .type = CFS_JOB_OFFLINE_PULL, .chainfs = true, .merge = true,
        .starts = "the same on a shut-off domain: qemu-img rebase in a thread",
    },
    [CFS_JOB_COPY] = {
        .type = CFS_JOB_COPY, .chainfs = true, .block_job = true,
        .has_ready = true, .abortable = true,
        .starts = "`copy DEST MODE` in ctl: a block copy + pivot (or finish)",
    },
    [CFS_JOB_RMDIR] = {
        .type = CFS_JOB_RMDIR, .chainfs = true,
        .starts = "rmdir while a merge of the disk runs: queued, then merged "
                  "as part of a run (one commit or pull)",
    },
    [CFS_JOB_REVERT] = {
        .type = CFS_JOB_REVERT, .chainfs = true,
        .starts = "`revert NAME [force]` in ctl: new overlays on NAME's "
                  "frozen layers, one define (shut-off domain)",
    },
    [CFS_JOB_GROUP] = {
        .type = CFS_JOB_GROUP, .chainfs = true,
        .starts = "rmdir in <dom>/snapshots/: one merge per disk, pivoted "
                  "together (journal only)",
    },
    [CFS_JOB_BACKUP] = { .type = CFS_JOB_BACKUP, .block_job = true, .starts = "-" },
    [CFS_JOB_UNKNOWN] = { .type = CFS_JOB_UNKNOWN, .block_job = true, .starts = "-" },
};

const struct cfs_job_kind *cfs_job_kind(enum cfs_job_type t)
{
    if ((int)t < 0 || t >= CFS_JOB_TYPE_MAX)
        t = CFS_JOB_UNKNOWN;
    return &job_kinds[t];
}

/* ---- destructors ---------------------------------------------------------- */

void cfs_layer_clear(struct cfs_layer *l)
{
    if (!l)
        return;
    free(l->path);
    cfs_file_id_clear(&l->id);
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
    free(d->name_slots);
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
    for (size_t i = 0; i < d->n_snaps; i++)
        cfs_snap_info_clear(&d->snaps[i]);
    free(d->snaps);
    for (size_t i = 0; i < d->n_unsnappable; i++) {
        free(d->unsnappable[i].target);
        free(d->unsnappable[i].why);
    }
    free(d->unsnappable);
    free(d);
    return NULL;
}

void cfs_snap_info_clear(struct cfs_snap_info *s)
{
    if (!s)
        return;
    free(s->name);
    free(s->parent);
    free(s->description);
    for (size_t i = 0; i < s->n_disks; i++) {
        free(s->disks[i].target);
        free(s->disks[i].snapshot);
        free(s->disks[i].source);
    }
    free(s->disks);
    *s = (struct cfs_snap_info){ 0 };
}

static char *strdup_or_null(const char *s)
{
    return s ? cfs_xstrdup(s) : NULL;
}

void cfs_snap_info_copy(struct cfs_snap_info *dst, const struct cfs_snap_info *src)
{
    *dst = *src;
    dst->name = strdup_or_null(src->name);
    dst->parent = strdup_or_null(src->parent);
    dst->description = strdup_or_null(src->description);
    dst->disks = NULL;
    if (src->n_disks) {
        dst->disks = cfs_xcalloc(src->n_disks, sizeof(*dst->disks));
        for (size_t i = 0; i < src->n_disks; i++) {
            dst->disks[i].target = strdup_or_null(src->disks[i].target);
            dst->disks[i].snapshot = strdup_or_null(src->disks[i].snapshot);
            dst->disks[i].source = strdup_or_null(src->disks[i].source);
        }
    }
}

const struct cfs_snap_info *cfs_domain_find_snap(const struct cfs_domain *d,
                                                 const char *name)
{
    for (size_t i = 0; d && name && i < d->n_snaps; i++)
        if (d->snaps[i].name && strcmp(d->snaps[i].name, name) == 0)
            return &d->snaps[i];
    return NULL;
}

void cfs_job_clear(struct cfs_job *j)
{
    if (!j)
        return;
    free(j->snapshot);
    free(j->meta_name);
    free(j->top);
    cfs_file_id_clear(&j->top_id);
    free(j->base);
    free(j->error);
    free(j->journal_id);
    free(j->leftover);
    cfs_strv_free(j->disks);
    cfs_strv_free(j->snapshots);
    cfs_strv_free(j->meta_names);
    cfs_job_files_free(j->leaving, j->n_leaving);
    free(j->written);
    free(j->reason);
    free(j->survivor);
    free(j->dest);
    cfs_strv_free(j->layer_meta);
    cfs_job_files_free(j->made, j->n_made);
    cfs_job_files_free(j->old_files, j->n_old);
    free(j->group);
    *j = (struct cfs_job){ 0 };
}

void cfs_job_file_clear(struct cfs_job_file *f)
{
    if (!f)
        return;
    free(f->path);
    cfs_file_id_clear(&f->id);
    *f = (struct cfs_job_file){ 0 };
}

void cfs_job_files_free(struct cfs_job_file *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        cfs_job_file_clear(&v[i]);
    free(v);
}

struct cfs_job_file *cfs_job_files_dup(const struct cfs_job_file *v, size_t n)
{
    if (!v || n == 0)
        return NULL;
    struct cfs_job_file *d = cfs_xcalloc(n, sizeof(*d));
    for (size_t i = 0; i < n; i++) {
        d[i].path = cfs_xstrdup(v[i].path);
        cfs_file_id_copy(&d[i].id, &v[i].id);
    }
    return d;
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
    cfs_file_id_copy(&dst->id, &src->id);
    dst->format = cfs_xstrdup(src->format);
    dst->meta_name = cfs_xstrdup(src->meta_name);
    dst->name = cfs_xstrdup(src->name);
}

static void disk_copy(struct cfs_disk *dst, const struct cfs_disk *src)
{
    *dst = *src;
    dst->target = cfs_xstrdup(src->target);
    dst->layers = NULL;
    dst->name_slots = NULL;
    dst->name_cap = 0;
    dst->name_of = NULL;
    dst->name_n = 0;
    if (src->n_layers == 0 || !src->layers) {
        dst->n_layers = 0;
        return;
    }
    dst->layers = cfs_xcalloc(src->n_layers, sizeof(*dst->layers));
    for (size_t i = 0; i < src->n_layers; i++)
        layer_copy(&dst->layers[i], &src->layers[i]);
    dst->name_slots = NULL;
    dst->name_cap = 0;
    dst->name_of = NULL;
    dst->name_n = 0;
    if (src->name_slots && src->name_of == src->layers && src->name_n == src->n_layers) {
        dst->name_slots = cfs_xmalloc(src->name_cap * sizeof(*dst->name_slots));
        memcpy(dst->name_slots, src->name_slots, src->name_cap * sizeof(*dst->name_slots));
        dst->name_cap = src->name_cap;
        dst->name_of = dst->layers;
        dst->name_n = dst->n_layers;
    }
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
    n->snaps = NULL;
    if (d->n_snaps) {
        n->snaps = cfs_xcalloc(d->n_snaps, sizeof(*n->snaps));
        for (size_t i = 0; i < d->n_snaps; i++)
            cfs_snap_info_copy(&n->snaps[i], &d->snaps[i]);
    }
    n->unsnappable = NULL;
    if (d->n_unsnappable) {
        n->unsnappable = cfs_xcalloc(d->n_unsnappable, sizeof(*n->unsnappable));
        for (size_t i = 0; i < d->n_unsnappable; i++) {
            n->unsnappable[i].target = strdup_or_null(d->unsnappable[i].target);
            n->unsnappable[i].why = strdup_or_null(d->unsnappable[i].why);
        }
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
    cfs_file_id_copy(&dst->top_id, &src->top_id);
    dst->base = cfs_xstrdup(src->base);
    dst->error = cfs_xstrdup(src->error);
    dst->journal_id = cfs_xstrdup(src->journal_id);
    dst->leftover = cfs_xstrdup(src->leftover);
    dst->disks = NULL;
    for (char **d = src->disks; d && *d; d++)
        cfs_strv_push(&dst->disks, cfs_xstrdup(*d));
    dst->snapshots = NULL;
    for (char **s = src->snapshots; s && *s; s++)
        cfs_strv_push(&dst->snapshots, cfs_xstrdup(*s));
    dst->meta_names = NULL;
    for (char **s = src->meta_names; s && *s; s++)
        cfs_strv_push(&dst->meta_names, cfs_xstrdup(*s));
    dst->leaving = cfs_job_files_dup(src->leaving, src->n_leaving);
    dst->n_leaving = dst->leaving ? src->n_leaving : 0;
    dst->written = cfs_xstrdup(src->written);
    dst->reason = cfs_xstrdup(src->reason);
    dst->survivor = cfs_xstrdup(src->survivor);
    dst->dest = cfs_xstrdup(src->dest);
    dst->layer_meta = NULL;
    for (char **m = src->layer_meta; m && *m; m++)
        cfs_strv_push(&dst->layer_meta, cfs_xstrdup(*m));
    dst->made = cfs_job_files_dup(src->made, src->n_made);
    dst->n_made = dst->made ? src->n_made : 0;
    dst->old_files = cfs_job_files_dup(src->old_files, src->n_old);
    dst->n_old = dst->old_files ? src->n_old : 0;
    dst->group = cfs_xstrdup(src->group);
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

void cfs_disk_unindex_names(struct cfs_disk *disk)
{
    free(disk->name_slots);
    disk->name_slots = NULL;
    disk->name_cap = 0;
    disk->name_of = NULL;
    disk->name_n = 0;
}

void cfs_disk_index_names(struct cfs_disk *disk)
{
    size_t cap = 16;

    cfs_disk_unindex_names(disk);
    while (cap < 2 * disk->n_layers)
        cap *= 2;
    disk->name_slots = cfs_xcalloc(cap, sizeof(*disk->name_slots));
    disk->name_cap = cap;
    for (size_t i = 0; i < disk->n_layers; i++) {
        const char *n = disk->layers[i].name;

        if (!n)
            continue;
        size_t k = cfs_str_hash(n) & (cap - 1);
        while (disk->name_slots[k]) {
            if (strcmp(disk->layers[disk->name_slots[k] - 1].name, n) == 0)
                break; /* a duplicate (not made by names.c): the first stays */
            k = (k + 1) & (cap - 1);
        }
        if (!disk->name_slots[k])
            disk->name_slots[k] = i + 1;
    }
    disk->name_of = disk->layers;
    disk->name_n = disk->n_layers;
}

int cfs_disk_find_snapshot(const struct cfs_disk *disk, const char *name)
{
    if (!disk || !name)
        return -1;
    if (disk->name_slots && disk->name_of == disk->layers &&
        disk->name_n == disk->n_layers) {
        size_t mask = disk->name_cap - 1;

        for (size_t k = cfs_str_hash(name) & mask; disk->name_slots[k]; k = (k + 1) & mask) {
            size_t i = disk->name_slots[k] - 1;

            if (i < disk->n_layers && disk->layers[i].name &&
                strcmp(disk->layers[i].name, name) == 0)
                return (int)i;
        }
        return -1;
    }
    for (size_t i = 0; i < disk->n_layers; i++)
        if (disk->layers[i].name && strcmp(disk->layers[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* ---- file identity -------------------------------------------------------------- */

void cfs_file_id_clear(struct cfs_file_id *id)
{
    if (!id)
        return;
    free(id->canonical);
    *id = (struct cfs_file_id){ 0 };
}

void cfs_file_id_copy(struct cfs_file_id *dst, const struct cfs_file_id *src)
{
    *dst = *src;
    dst->canonical = cfs_xstrdup(src->canonical);
}

char *cfs_path_fold(const char *path)
{
    if (!path)
        return NULL;
    /* protocol names (nbd:..., rbd:pool/img) are not file paths */
    if (path[0] != '/')
        return cfs_xstrdup(path);
    size_t len = strlen(path);
    char *out = cfs_xmalloc(len + 2);
    size_t o = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        const char *end = strchrnul(p, '/');
        size_t n = (size_t)(end - p);
        if (n == 0 || (n == 1 && p[0] == '.')) {
            /* "//" or "/./": nothing */
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* the '/' before the dropped component */
        } else {
            out[o++] = '/';
            memcpy(out + o, p, n);
            o += n;
        }
        p = end;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return out;
}

/* stat() and realpath() of one file. A file that is not there (yet) is
 * named by its directory's real path and its own name. */
void cfs_file_identify(struct cfs_file_id *id, const char *path, bool local)
{
    cfs_file_id_clear(id);
    if (!local || !path || path[0] != '/') {
        id->canonical = cfs_path_fold(path);
        return;
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        id->known = true;
        id->dev = S_ISBLK(st.st_mode) ? (uint64_t)st.st_rdev : (uint64_t)st.st_dev;
        id->ino = S_ISBLK(st.st_mode) ? 0 : (uint64_t)st.st_ino;
    }
    char *real = realpath(path, NULL);
    if (real) {
        id->canonical = real;
        return;
    }
    _cleanup_free_ char *folded = cfs_path_fold(path);
    char *slash = strrchr(folded, '/');
    if (slash && slash != folded) {
        *slash = '\0';
        _cleanup_free_ char *dir = realpath(folded, NULL);
        *slash = '/';
        if (dir) {
            id->canonical = cfs_xasprintf("%s%s", dir, slash);
            return;
        }
    }
    id->canonical = TAKE_PTR(folded);
}

/* Issue 12: the real path of the directory last seen, for a chain whose
 * layers share a directory (realpath() is an lstat and a readlink per
 * path component: 1,000 layers were ~12,000 system calls per re-read). */
struct dir_cache {
    char *dir;      /* as spelled (folded), NULL: none yet */
    char *real;     /* its realpath(), NULL if that failed */
};

/* cfs_file_identify(ID, PATH, true) for a PATH that is not a symbolic link
 * itself: dev and ino from one lstat(), the canonical path from the
 * directory's cached real path and the name. false (nothing set) where
 * that does not apply; the caller then asks cfs_file_identify. */
static bool identify_in_dir(struct cfs_file_id *id, const char *path, struct dir_cache *dc)
{
    struct stat st;

    if (!path || path[0] != '/')
        return false;
    _cleanup_free_ char *folded = cfs_path_fold(path);
    char *slash = strrchr(folded, '/');
    const char *base = slash + 1;

    if (slash == folded || !*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return false;
    /* folding "x/.." without the file system is only right without
     * symbolic links on the way: the spelling must be folded already */
    if (strcmp(folded, path) != 0)
        return false;
    if (lstat(path, &st) < 0 || S_ISLNK(st.st_mode))
        return false;
    *slash = '\0';
    if (!dc->dir || strcmp(dc->dir, folded) != 0) {
        free(dc->dir);
        free(dc->real);
        dc->dir = cfs_xstrdup(folded);
        dc->real = realpath(folded, NULL);
    }
    if (!dc->real)
        return false;
    cfs_file_id_clear(id);
    id->known = true;
    id->dev = S_ISBLK(st.st_mode) ? (uint64_t)st.st_rdev : (uint64_t)st.st_dev;
    id->ino = S_ISBLK(st.st_mode) ? 0 : (uint64_t)st.st_ino;
    id->canonical = strcmp(dc->real, "/") == 0 ? cfs_xasprintf("/%s", base)
                                               : cfs_xasprintf("%s/%s", dc->real, base);
    return true;
}

void cfs_domain_identify(struct cfs_domain *d, bool local)
{
    struct dir_cache dc = {0};

    for (size_t i = 0; d && i < d->n_disks; i++)
        for (size_t j = 0; j < d->disks[i].n_layers; j++) {
            struct cfs_layer *l = &d->disks[i].layers[j];

            if (!local || !identify_in_dir(&l->id, l->path, &dc))
                cfs_file_identify(&l->id, l->path, local);
        }
    free(dc.dir);
    free(dc.real);
}

bool cfs_file_same(const struct cfs_file_id *a, const char *path_a,
                   const struct cfs_file_id *b, const char *path_b)
{
    if (a && b && a->known && b->known)
        return a->dev == b->dev && a->ino == b->ino;
    if (!path_a || !path_b)
        return false;
    if (strcmp(path_a, path_b) == 0)
        return true;
    _cleanup_free_ char *fa = cfs_path_fold(path_a);
    _cleanup_free_ char *fb = cfs_path_fold(path_b);
    const char *ca = a && a->canonical ? a->canonical : fa;
    const char *cb = b && b->canonical ? b->canonical : fb;
    /* a canonical path (symlinks resolved) against a folded one: either
     * spelling of one side may be the one the other side has */
    return strcmp(ca, cb) == 0 || strcmp(fa, fb) == 0 ||
           strcmp(ca, fb) == 0 || strcmp(fa, cb) == 0;
}

const char *cfs_file_display(const struct cfs_file_id *id, const char *path)
{
    return id && id->canonical ? id->canonical : path;
}

int cfs_disk_find_file(const struct cfs_disk *disk,
                       const struct cfs_file_id *id, const char *path)
{
    for (size_t i = 0; disk && i < disk->n_layers; i++)
        if (cfs_file_same(&disk->layers[i].id, disk->layers[i].path, id, path))
            return (int)i;
    return -1;
}

const struct cfs_disk *cfs_domain_file_user(const struct cfs_domain *d,
                                            const struct cfs_file_id *id,
                                            const char *path,
                                            const char *except_disk)
{
    for (size_t i = 0; d && i < d->n_disks; i++) {
        if (except_disk && cfs_streq(d->disks[i].target, except_disk))
            continue;
        if (cfs_disk_find_file(&d->disks[i], id, path) >= 0)
            return &d->disks[i];
    }
    return NULL;
}

bool cfs_domain_uses_path(const struct cfs_domain *d, const char *path)
{
    return path && cfs_domain_file_user(d, NULL, path, NULL) != NULL;
}
