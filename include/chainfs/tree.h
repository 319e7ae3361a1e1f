/* tree.h — the in-memory state every read is served from: the domains
 * (with resolved snapshot names) and, per disk, the current or last job.
 *
 * One mutex guards it all; readers and writers take it for a few
 * microseconds, never across a libvirt call. The condition variable is
 * broadcast whenever a job changes state, for `wait`.
 * Lock order: engine queue lock and tree lock are never held together;
 * the journal's own lock may be taken inside the tree lock. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "chainfs/model.h"

/* A disk's settings, given through its ctl file; journaled
 * (STATE_DIR), so they outlive a daemon restart. */
struct cfs_disk_settings {
    bool pivot_manual;       /* active commits wait in ready for `pivot` */
    /* `merge NAME commit|pull`: snapshots whose next merge goes that way
     * (NULL-terminated names; a name is in at most one; `auto` in
     * neither). The merge that starts takes its snapshot's out. */
    char **merge_commit;
    char **merge_pull;
};

/* Per-disk bookkeeping that outlives the domain's re-reads. */
struct cfs_disk_state {
    char *dom;
    char *disk;
    struct cfs_job job;      /* current or last job */
    struct cfs_disk_settings settings;
    char **partial_tops;     /* overlays a failed merge partly wrote below */
    /* Facts about the current job (never a state: that is job.phase): */
    int64_t gone_since_ms;   /* libvirt has no job but TOP is still in the chain */
    int pivot_failures;      /* pivots refused for another reason than "not ready" */
    uint64_t base_bytes;     /* BASE's allocated bytes when the merge
                                started (0: unknown), to tell a partial one */
    bool abort_requested;    /* ctl abort asked libvirt to cancel the job */
    /* A libvirt block job on the disk that chainfs did not start
     * (origin external): type NONE when there is none. Shown by `job`
     * while chainfs has no job of its own in progress. */
    struct cfs_job external;
};

struct cfs_tree {
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* broadcast on every job state change */
    struct cfs_domain **doms;
    size_t n_doms;
    struct cfs_disk_state **states;
    size_t n_states;
    bool stale;               /* libvirt unreachable: last known state */
    unsigned long generation; /* bumped on every change */
};

struct cfs_tree *cfs_tree_new(void);
struct cfs_tree *cfs_tree_free(struct cfs_tree *t);

/* All below: caller holds t->lock. */
struct cfs_domain *cfs_tree_find_domain(struct cfs_tree *t, const char *name);
/* Install D (takes ownership; names are resolved here). Returns true if
 * anything visible changed. */
bool cfs_tree_put_domain(struct cfs_tree *t, struct cfs_domain *d);
bool cfs_tree_remove_domain(struct cfs_tree *t, const char *name);
/* The disk's state, created on first use. */
struct cfs_disk_state *cfs_tree_disk_state(struct cfs_tree *t, const char *dom,
                                           const char *disk);
struct cfs_disk_state *cfs_tree_find_disk_state(struct cfs_tree *t,
                                                const char *dom,
                                                const char *disk);
/* The first disk of any domain whose chain has file ID/PATH (same file
 * by cfs_file_same), leaving out disk EXCEPT_DISK of domain EXCEPT_DOM
 * (the whole of EXCEPT_DOM if EXCEPT_DISK is NULL); *DOM_OUT is its
 * domain. NULL if there is none. */
const struct cfs_disk *cfs_tree_file_user(struct cfs_tree *t,
                                          const struct cfs_file_id *id,
                                          const char *path,
                                          const char *except_dom,
                                          const char *except_disk,
                                          const struct cfs_domain **dom_out);
