/* merge_plan.h — which merges delete the snapshots asked of one disk, and
 * in which direction (issue 8, docs/design/issue8.md §2.2, §3.2).
 *
 * Pure: no libvirt, no files, no locks, no clock. The caller (rmdir and the
 * queue's dispatch) describes the disk's chain as it is now and what was
 * asked; the plan says which jobs to run, topmost first. Thread-safe. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chainfs/model.h"

/* `merge NAME commit|pull|auto` in ctl, kept per snapshot. */
enum cfs_merge_mode {
    CFS_MERGE_AUTO = 0,   /* by cost */
    CFS_MERGE_COMMIT,
    CFS_MERGE_PULL,
};

/* "auto", "commit", "pull"; NULL for a value out of range. */
const char *cfs_merge_mode_to_string(enum cfs_merge_mode m);
/* 0 and *OUT set, or -EINVAL for anything but the three words. */
int cfs_merge_mode_from_string(const char *s, enum cfs_merge_mode *out);

/* One layer of the chain, [0] the active layer, [n-1] the base image. */
struct cfs_merge_layer {
    const char *name;        /* display name; NULL for the base image */
    uint64_t allocation;     /* bytes of data in the file (cfs_layer.allocation) */
    bool snapshot;           /* a snapshot chainfs shows and may merge
                                (never the base image) */
    bool has_metadata;       /* libvirt snapshot metadata names this layer
                                (cfs_layer.meta_name != NULL) */
    const char *shared_with; /* NULL, or who else has this file in a chain
                                ("domain web disk vdb"): kept, never
                                written, never removed */
    bool asked;              /* its deletion is asked (rmdir, queued) */
    enum cfs_merge_mode mode;/* override from `merge NAME ...` */
};

/* What a job is; the engine maps it onto its cfs_job_type. */
enum cfs_merge_kind {
    CFS_MERGE_KIND_COMMIT,          /* live commit of lower layers */
    CFS_MERGE_KIND_ACTIVE_COMMIT,   /* live commit of the active layer, pivot */
    CFS_MERGE_KIND_OFFLINE_COMMIT,  /* qemu-img commit -d -b, domain shut off */
    CFS_MERGE_KIND_PULL,            /* live pull into the active layer */
    CFS_MERGE_KIND_OFFLINE_PULL,    /* qemu-img rebase, domain shut off */
};

/* "commit", "active-commit", "offline-commit", "pull", "offline-pull"
 * (the job kinds' names in job/job.json); NULL out of range. */
const char *cfs_merge_kind_to_string(enum cfs_merge_kind k);
/* The engine's job type for a plan's kind (the one mapping:
 * CFS_MERGE_KIND_PULL -> CFS_JOB_PULL, ...); CFS_JOB_NONE out of range.
 * cfs_job_type_to_string() of it is cfs_merge_kind_to_string(K). */
enum cfs_job_type cfs_merge_kind_job_type(enum cfs_merge_kind k);
/* CFS_DIRECTION_COMMIT or _PULL; CFS_DIRECTION_NONE out of range. */
enum cfs_merge_direction cfs_merge_kind_direction(enum cfs_merge_kind k);

struct cfs_merge_job {
    enum cfs_merge_kind kind;
    bool pull;               /* direction: true pull, false commit */
    /* The run: the snapshots this job removes are layers[first..last]. */
    size_t first, last;
    /* libvirt's arguments as chain indices ("vda[N]" of those layers).
     * commit: top = first, base = last + 1 (written).
     * pull:   top = 0 (written), base = last + 2 (the new backing). */
    size_t top, base;
    size_t written;          /* the one file the job writes */
    /* Files that leave the chain: commit first..last, pull 1..last+1
     * (layer 0 stays and becomes the overlay of snapshot last+1). */
    size_t leave_first, leave_last;
    /* What each direction would copy (§2.2): C = sum alloc(first..last);
     * P = sum alloc(1..last+1), only when the run holds the active layer
     * (has_bytes_pull; otherwise there is no pull and bytes_pull is 0). */
    uint64_t bytes_commit, bytes_pull;
    bool has_bytes_pull;
    char *reason;            /* why this direction, e.g. "pull: 4.0MiB <
                                200.1MiB" (for job / job.json) */
};

/* An asked snapshot no job removes: it goes back to snapshots/ with ERR. */
struct cfs_merge_refusal {
    size_t index;            /* layers[index] */
    int err;                 /* positive errno: ENOENT, EBUSY */
    char *reason;
};

struct cfs_merge_plan {
    size_t n_jobs;
    struct cfs_merge_job *jobs;          /* topmost run first */
    size_t n_refused;
    struct cfs_merge_refusal *refused;   /* by index, top first */
};

/* Plan the deletion of every asked snapshot of a chain of N layers, on a
 * domain RUNNING or shut off. Adjacent asked snapshots form one run, one
 * job (each byte copied once). 0 with *OUT filled (free with
 * cfs_merge_plan_clear; n == 0 gives an empty plan), -EINVAL if LAYERS
 * is NULL with n > 0 or OUT is NULL (then *OUT is untouched). */
int cfs_merge_plan(const struct cfs_merge_layer *layers, size_t n,
                   bool running, struct cfs_merge_plan *out);

/* Where the plan runs. */
struct cfs_merge_env {
    bool running;             /* the domain runs: live jobs */
    /* Running: why a live pull may not run, NULL if it may. QEMU 7.2
     * crashes when block nodes are queried as a block-stream job ends
     * (docs/design/issue8.md §7.4); -o live_pull decides. A run that
     * would pull commits instead and its reason says why. */
    const char *no_live_pull;
};

/* cfs_merge_plan() with ENV; cfs_merge_plan() is ENV { running, NULL }. */
int cfs_merge_plan_env(const struct cfs_merge_layer *layers, size_t n,
                       const struct cfs_merge_env *env,
                       struct cfs_merge_plan *out);

void cfs_merge_plan_clear(struct cfs_merge_plan *p);

/* ctl `merge NAME MODE` for layers[idx]: 0 if it may be kept, else a
 * negative errno and *WHY (caller frees): -ENOENT if layers[idx] is not a
 * snapshot, -EINVAL for `pull` on a snapshot that is not the active one,
 * whose lower layer is the base image, or whose lower snapshot has no
 * libvirt metadata to carry its name. */
int cfs_merge_mode_check(const struct cfs_merge_layer *layers, size_t n,
                         size_t idx, enum cfs_merge_mode mode, char **why);
