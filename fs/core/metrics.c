/* metrics.c — the engine's job counters and MOUNTPOINT/.chainfs/
 * metrics.prom (metrics.h; docs/FILES.md lists every metric).
 *
 * The file is Prometheus text exposition format 0.0.4 as node_exporter's
 * textfile collector reads it where it stands: no timestamps, HELP and
 * TYPE before every family's samples, a family's samples together,
 * counters named *_total, label values escaped. A family with no sample
 * (no job of any type completed yet: no last duration) is left out
 * whole. */
#include "chainfs/metrics.h"

#include <string.h>

#ifndef CHAINFS_VERSION
#define CHAINFS_VERSION "unknown"
#endif

const enum cfs_job_type cfs_metrics_types[CFS_METRICS_N_TYPES] = {
    CFS_JOB_SNAPSHOT,       CFS_JOB_COMMIT,       CFS_JOB_ACTIVE_COMMIT,
    CFS_JOB_OFFLINE_COMMIT, CFS_JOB_PULL,         CFS_JOB_OFFLINE_PULL,
    CFS_JOB_COPY,           CFS_JOB_REVERT,
};

static bool counted_type(enum cfs_job_type t)
{
    for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++)
        if (cfs_metrics_types[i] == t)
            return true;
    return false;
}

bool cfs_metrics_is_merge(enum cfs_job_type t)
{
    return t == CFS_JOB_COMMIT || t == CFS_JOB_ACTIVE_COMMIT ||
           t == CFS_JOB_OFFLINE_COMMIT || t == CFS_JOB_PULL ||
           t == CFS_JOB_OFFLINE_PULL;
}

uint64_t cfs_metrics_merged_bytes(const struct cfs_job *job)
{
    if (job->direction == CFS_DIRECTION_PULL && job->bytes_copied)
        return job->bytes_copied;
    /* completed: all of it was copied (job_end sets cur to end just
     * after this edge) */
    return job->end > job->cur ? job->end : job->cur;
}

void cfs_metrics_job_edge(struct cfs_metrics *m, const struct cfs_job *job,
                          enum cfs_job_phase from, enum cfs_job_phase to,
                          int64_t now)
{
    enum cfs_job_type t = job->type;
    if (job->external || (unsigned)t >= CFS_JOB_TYPE_MAX || !counted_type(t))
        return;
    switch (to) {
    case CFS_PHASE_STARTING:
        if (from == CFS_PHASE_NONE)
            m->started[t]++;
        break;
    case CFS_PHASE_COMPLETED:
        m->completed[t]++;
        m->last_duration[t] = job->started > 0 && now >= job->started
                                  ? (double)(now - job->started) : 0;
        m->has_last[t] = true;
        if (cfs_metrics_is_merge(t))
            m->merged_bytes[t] += cfs_metrics_merged_bytes(job);
        break;
    case CFS_PHASE_FAILED:
        if (from == CFS_PHASE_NONE)
            m->refused[t]++;
        else
            m->failed[t]++;
        break;
    case CFS_PHASE_CANCELED:
        m->canceled[t]++;
        break;
    default:
        break;
    }
}

/* ---- the text format ------------------------------------------------------ */

static void family(struct cfs_buf *b, const char *name, const char *type,
                   const char *help)
{
    cfs_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the format wants it: \ " and newline escaped. */
static void label_value(struct cfs_buf *b, const char *v)
{
    for (const char *c = v; *c; c++) {
        if (*c == '\\')
            cfs_buf_printf(b, "\\\\");
        else if (*c == '"')
            cfs_buf_printf(b, "\\\"");
        else if (*c == '\n')
            cfs_buf_printf(b, "\\n");
        else
            cfs_buf_printf(b, "%c", *c);
    }
}

static void sample_u(struct cfs_buf *b, const char *name, uint64_t v)
{
    cfs_buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void sample_type_u(struct cfs_buf *b, const char *name,
                          enum cfs_job_type t, uint64_t v)
{
    cfs_buf_printf(b, "%s{type=\"%s\"} %llu\n", name,
                   cfs_job_type_to_string(t), (unsigned long long)v);
}

/* A counter family by type, every type chainfs runs. */
static void by_type(struct cfs_buf *b, const char *name, const char *type,
                    const char *help, const uint64_t *v)
{
    family(b, name, type, help);
    for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++)
        sample_type_u(b, name, cfs_metrics_types[i], v[cfs_metrics_types[i]]);
}

void cfs_metrics_render(struct cfs_buf *out, const struct cfs_metrics *m,
                        const struct cfs_tree *t, bool conn_up)
{
    /* from the tree, now */
    uint64_t running[CFS_JOB_TYPE_MAX] = {0};
    uint64_t disks = 0, layers = 0, deepest = 0, not_responding = 0;
    uint64_t queued = 0, readers = 0, external = 0, groups = 0;
    for (size_t i = 0; i < t->n_doms; i++) {
        const struct cfs_domain *d = t->doms[i];
        not_responding += d->not_responding;
        disks += d->n_disks;
        for (size_t k = 0; k < d->n_disks; k++) {
            layers += d->disks[k].n_layers;
            if (d->disks[k].n_layers > deepest)
                deepest = d->disks[k].n_layers;
        }
    }
    for (size_t i = 0; i < t->n_states; i++) {
        const struct cfs_disk_state *s = t->states[i];
        if (cfs_job_phase_in_progress(s->job.phase) &&
            (unsigned)s->job.type < CFS_JOB_TYPE_MAX)
            running[s->job.type]++;
        if (s->external.type != CFS_JOB_NONE)
            external++;
        queued += s->n_queue;
        readers += s->n_readers;
    }
    for (size_t i = 0; i < t->n_groups; i++)
        groups += !cfs_group_phase_ended(t->groups[i]->phase);

    family(out, "chainfs_build_info", "gauge",
           "Always 1; the label version is chainfs's version.");
    cfs_buf_printf(out, "chainfs_build_info{version=\"");
    label_value(out, CHAINFS_VERSION);
    cfs_buf_printf(out, "\"} 1\n");

    family(out, "chainfs_libvirt_up", "gauge",
           "1 if the connection to libvirt is up, 0 if what the mount shows "
           "is the last known state (stale).");
    sample_u(out, "chainfs_libvirt_up", conn_up ? 1 : 0);

    family(out, "chainfs_domains", "gauge", "Domains shown at the mount's root.");
    sample_u(out, "chainfs_domains", t->n_doms);
    family(out, "chainfs_domains_not_responding", "gauge",
           "Domains whose libvirt call has not returned for 10 s or more.");
    sample_u(out, "chainfs_domains_not_responding", not_responding);
    family(out, "chainfs_disks", "gauge", "Disks shown, of every domain.");
    sample_u(out, "chainfs_disks", disks);
    family(out, "chainfs_layers", "gauge",
           "Image files in the backing chains of every disk shown (active "
           "layer and base included).");
    sample_u(out, "chainfs_layers", layers);
    family(out, "chainfs_chain_depth_max", "gauge",
           "Layers in the deepest backing chain of any disk (0: no disk).");
    sample_u(out, "chainfs_chain_depth_max", deepest);

    by_type(out, "chainfs_jobs_running", "gauge",
            "chainfs's jobs in progress (starting to cleanup), by type.", running);
    by_type(out, "chainfs_jobs_started_total", "counter",
            "Jobs chainfs started, by type.", m->started);
    by_type(out, "chainfs_jobs_completed_total", "counter",
            "Jobs that completed, by type.", m->completed);
    by_type(out, "chainfs_jobs_failed_total", "counter",
            "Jobs that failed after they started, by type.", m->failed);
    by_type(out, "chainfs_jobs_canceled_total", "counter",
            "Jobs that were canceled (abort in ctl, a merge regrouped), by type.",
            m->canceled);
    by_type(out, "chainfs_jobs_refused_total", "counter",
            "mkdir, rmdir and ctl commands refused before a job started "
            "(shown as a failed job in the disk's job file), by type.",
            m->refused);

    bool any_last = false;
    for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++)
        any_last |= m->has_last[cfs_metrics_types[i]];
    if (any_last) {
        family(out, "chainfs_job_last_duration_seconds", "gauge",
               "How long the last completed job of the type took, start to "
               "end.");
        for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++) {
            enum cfs_job_type ty = cfs_metrics_types[i];
            if (m->has_last[ty])
                cfs_buf_printf(out, "chainfs_job_last_duration_seconds{type=\"%s\"} %.0f\n",
                               cfs_job_type_to_string(ty), m->last_duration[ty]);
        }
    }

    family(out, "chainfs_merged_bytes_total", "counter",
           "Bytes copied by the merges that completed (an rmdir's commit or "
           "pull), by type.");
    for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++)
        if (cfs_metrics_is_merge(cfs_metrics_types[i]))
            sample_type_u(out, "chainfs_merged_bytes_total", cfs_metrics_types[i],
                          m->merged_bytes[cfs_metrics_types[i]]);

    family(out, "chainfs_rmdirs_queued", "gauge",
           "rmdirs queued behind a merge of their disk.");
    sample_u(out, "chainfs_rmdirs_queued", queued);
    family(out, "chainfs_job_groups_running", "gauge",
           "Domain-level rmdirs (job groups) not ended.");
    sample_u(out, "chainfs_job_groups_running", groups);
    family(out, "chainfs_disk_raw_readers", "gauge",
           "snapshots/NAME/disk.raw files open now.");
    sample_u(out, "chainfs_disk_raw_readers", readers);
    family(out, "chainfs_external_jobs_running", "gauge",
           "libvirt block jobs chainfs did not start, running on a disk shown.");
    sample_u(out, "chainfs_external_jobs_running", external);
    family(out, "chainfs_thaws_owed", "gauge",
           "Domains whose guest filesystems chainfs froze and could not thaw "
           "yet (retried).");
    sample_u(out, "chainfs_thaws_owed", t->n_thaws);
}
