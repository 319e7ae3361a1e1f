/* metrics.h — what MOUNTPOINT/.chainfs/metrics.prom shows (issue 11):
 * the engine's counters of jobs, and the render of the whole file in
 * Prometheus text exposition format 0.0.4 (docs/FILES.md lists every
 * metric).
 *
 * Which jobs count: chainfs's own jobs of a disk, each once, by type:
 * snapshot (a disk-level mkdir, and each disk of a domain-level one),
 * commit, active-commit, offline-commit, pull, offline-pull, copy,
 * revert. A job group (a domain-level rmdir) is not a job of its own:
 * each member merge counts on its disk. A queued rmdir is not a job
 * until its run starts (a merge); the queue is a gauge. A libvirt job
 * chainfs did not start (origin external) is no chainfs job: it is
 * counted apart (chainfs_external_jobs_running). A job taken up from
 * the journal at start counts when it ends (its start was another
 * daemon's).
 *
 * The counters are under the tree lock: job_edge_locked() (events.c)
 * counts under it, and the file is rendered under it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "chainfs/model.h"
#include "chainfs/tree.h"
#include "chainfs/util.h"

/* The job types chainfs runs (the values of the label `type`), in the
 * order they are shown. */
#define CFS_METRICS_N_TYPES 8
extern const enum cfs_job_type cfs_metrics_types[CFS_METRICS_N_TYPES];

struct cfs_metrics {
    /* by enum cfs_job_type */
    uint64_t started[CFS_JOB_TYPE_MAX];   /* none -> starting */
    uint64_t completed[CFS_JOB_TYPE_MAX]; /* -> completed */
    uint64_t failed[CFS_JOB_TYPE_MAX];    /* in progress -> failed */
    uint64_t canceled[CFS_JOB_TYPE_MAX];  /* -> canceled */
    uint64_t refused[CFS_JOB_TYPE_MAX];   /* none -> failed: refused
                                             before it started */
    /* the last completed job of the type: how long it took (s), and
     * whether there was one */
    double last_duration[CFS_JOB_TYPE_MAX];
    bool has_last[CFS_JOB_TYPE_MAX];
    uint64_t merged_bytes[CFS_JOB_TYPE_MAX]; /* copied by completed merges */
};

/* Whether type T is a merge (its completion adds to bytes merged). */
bool cfs_metrics_is_merge(enum cfs_job_type t);

/* What a completed merge JOB copied, in bytes: a forward merge's
 * measured growth of the file it wrote (bytes_copied) where it was
 * measured, else its progress total (`bytes` in `job`: libvirt's or
 * qemu-img's count of what it had to copy). */
uint64_t cfs_metrics_merged_bytes(const struct cfs_job *job);

/* Count JOB's edge FROM -> TO (its phase is TO already) at unix time
 * NOW. Jobs of origin external and the types chainfs does not run as a
 * disk's job are not counted. Caller holds the tree lock. */
void cfs_metrics_job_edge(struct cfs_metrics *m, const struct cfs_job *job,
                          enum cfs_job_phase from, enum cfs_job_phase to,
                          int64_t now);

/* The whole of metrics.prom into OUT: M's counters and gauges read from
 * tree T (jobs running, domains, layers, ...); CONN_UP: the libvirt
 * connection is up. Caller holds T's lock. */
void cfs_metrics_render(struct cfs_buf *out, const struct cfs_metrics *m,
                        const struct cfs_tree *t, bool conn_up);

/* Issue 12, several hosts: what one host's engine contributes, taken
 * under its tree's lock (cfs_metrics_sample), rendered without it. */
struct cfs_metrics_sample {
    struct cfs_metrics m;                 /* the counters, copied */
    bool conn_up;
    uint64_t running[CFS_JOB_TYPE_MAX];   /* jobs in progress by type */
    uint64_t domains, disks, layers, deepest, not_responding;
    uint64_t queued, readers, external, groups, thaws;
};
/* Caller holds T's lock. */
void cfs_metrics_sample(struct cfs_metrics_sample *s, const struct cfs_metrics *m,
                        const struct cfs_tree *t, bool conn_up);
/* The whole of metrics.prom from N hosts' samples S: HOSTS NULL (N 1)
 * is the one-host file, without host labels; else every series but
 * chainfs_build_info (the process's) is labelled host="HOSTS[i]", each
 * family's HELP and TYPE once, its samples host by host. */
void cfs_metrics_render_hosts(struct cfs_buf *out,
                              const struct cfs_metrics_sample *s,
                              const char *const *hosts, size_t n);
